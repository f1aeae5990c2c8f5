//! The facets that name software a backend runs: `ort`, `trtexec` and `torch`. What they
//! mean, and every other facet, is [`crate::facets`]'s; reading these three needs ONNX
//! Runtime, TensorRT and the torch worker, which live here and below, so the caller that
//! reads facets hands [`read_facet`] to [`crate::facets::value`].

/// The value of the facet `name` if it names a backend's software; `<unknown>` otherwise.
pub(crate) fn read_facet(name: &str) -> String {
    match name {
        "ort" => match crate::runtime::probe(None) {
            Ok(info) => {
                let mut v = format!("{} {}", info.version, info.digest.short());
                for (name, digest) in crate::runtime::provider_libraries(&info.path) {
                    v.push_str(&format!("; {name} {}", digest.map_or_else(|| "<unreadable>".to_string(), |d| d.short())));
                }
                v
            }
            // The reason is for people (`tr118 make` says it); the key only needs to know.
            Err(_) => "<none>".to_string(),
        },
        "trtexec" => match crate::trt::locate().ok().and_then(|p| crate::digest::hash_file(&p).ok()) {
            Some((digest, _)) => format!("trtexec {}", digest.short()),
            None => "<none>".to_string(),
        },
        "torch" => torch(),
        _ => "<unknown>".to_string(),
    }
}

/// The `torch` facet: package metadata only, which takes milliseconds where importing torch
/// takes seconds.
fn torch() -> String {
    const PROBE: &str = "import platform\nfrom importlib import metadata\ndef v(n):\n    try:\n        return metadata.version(n)\n    except Exception:\n        return '<none>'\nprint(f'python {platform.python_version()}; torch {v(\"torch\")}; transformers {v(\"transformers\")}')";
    let python = crate::python::interpreter();
    match std::process::Command::new(&python).args(["-c", PROBE]).stderr(std::process::Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        // A key holds this: a virtual environment inside the workspace is named relative to it.
        _ => format!("<no python: {}>", crate::paths::relative_text(&python)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facets;

    #[test]
    fn the_gpu_facet_agrees_with_nvml() {
        // Independent of the facet's code path: the backend probe reads device 0 through NVML.
        match crate::backend::gpu_info(0) {
            None => assert_eq!(facets::value("gpu", read_facet), "<none>"),
            Some(info) => {
                let v = facets::value("gpu", read_facet);
                assert!(v.contains(&info.name) && v.ends_with(&format!("driver {}", info.driver_version)), "{v} vs {info:?}");
            }
        }
    }

    #[test]
    fn only_software_facets_are_read_here() {
        for machine in ["cpu", "os", "gpu", "host", "env:HOME"] {
            assert_eq!(read_facet(machine), "<unknown>");
        }
    }
}
