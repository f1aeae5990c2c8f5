//! Environment facets: facts about the machine that a stage declares as part of its key,
//! because its outputs depend on them (a latency depends on the CPU model; a build on an
//! environment variable). Only declared facets enter a key, so a cache stays shareable
//! across machines for every stage that does not depend on the machine.
//!
//! | facet       | value                                              |
//! |-------------|----------------------------------------------------|
//! | `cpu`       | CPU model name from `/proc/cpuinfo`                |
//! | `cpus`      | logical CPUs available to this process             |
//! | `os`        | operating system and kernel release                |
//! | `arch`      | instruction set architecture                       |
//! | `host`      | host name                                          |
//! | `ort`       | ONNX Runtime at `ORT_DYLIB_PATH`: version and blake3 of the library, then each provider library beside it (`libonnxruntime_providers_*`) by name and blake3, `1.31.1 5f0c…; libonnxruntime_providers_cuda.so 8a1d…; libonnxruntime_providers_shared.so 03b2…`; or `<none>` |
//! | `gpu`       | the GPU models NVML sees (distinct names, sorted) and the driver, `NVIDIA H200; driver 550.54.15`, or `<none>` |
//! | `trtexec`   | TensorRT's `trtexec` as `TRTEXEC` / `PATH` find it: blake3 of the binary, or `<none>` |
//! | `torch`     | the torch worker's Python (`TR118_PYTHON`, else `python3`): its version and those of torch and transformers, `python 3.12.3; torch 2.11.0+cu130; transformers 5.17.0`; a package that is missing reads `<none>` |
//! | `env:NAME`  | the variable's value, or `<unset>`                 |
//!
//! A study that fetches ONNX Runtime as an asset gets the library's digest into its keys as
//! an input; `ort` covers a library the user points at instead. Provider libraries are named
//! by file name, never by path: the directory is wherever the machine keeps ONNX Runtime.
//!
//! `gpu` names models, not how many there are or at which index: NVML's indices are not
//! CUDA's (`CUDA_VISIBLE_DEVICES` renumbers one and not the other), and a node built on a
//! machine of eight H200s is the node built on one. `trtexec` is the binary's digest, never
//! its path, so that a cache is shared by machines that install TensorRT in different places.
//!
//! This module names facets, checks them and says what their values mean; it knows no
//! runtime. The three that name software (`ort`, `trtexec`, `torch`) are read by
//! [`crate::backend::software`], which knows ONNX Runtime, TensorRT and the torch worker and
//! which the reader of a facet hands in ([`Software`]): the arrow runs from the backends to
//! the facets, never back.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use crate::diag;

const KNOWN: &[&str] = &["cpu", "cpus", "os", "arch", "host", "ort", "gpu", "trtexec", "torch"];

pub(crate) struct FacetError {
    pub message: String,
    pub help: Option<String>,
}

/// Whether facets `names` tell one machine from another (`cpu`, `gpu` or `host`): a
/// measurement keyed by them is not mistaken for another machine's.
pub(crate) fn name_a_machine(names: &[String]) -> bool {
    names.iter().any(|f| matches!(f.as_str(), "cpu" | "gpu" | "host"))
}

/// Checks a facet name as written in a pipeline.
pub(crate) fn check_name(name: &str) -> Result<(), FacetError> {
    if KNOWN.contains(&name) {
        return Ok(());
    }
    if let Some(var) = name.strip_prefix("env:") {
        if !var.is_empty() && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Ok(());
        }
        return Err(FacetError { message: format!("facet `{name}` names no valid environment variable"), help: None });
    }
    Err(FacetError {
        message: format!("unknown facet `{name}`"),
        help: diag::suggest(name, KNOWN.iter().copied()).or_else(|| Some(format!("facets are {}, or `env:NAME`", diag::ticked(KNOWN.iter())))),
    })
}

/// Reads the facets that name software a backend runs (`ort`, `trtexec`, `torch`): only the
/// modules that run it know how, and they depend on this one, so whoever reads facets hands
/// [`crate::backend::software::read_facet`] in.
pub(crate) type Software = fn(&str) -> String;

/// The current value of a facet, the software ones read by `software`; machine facts are read
/// once per process.
pub(crate) fn value(name: &str, software: Software) -> String {
    if let Some(var) = name.strip_prefix("env:") {
        return std::env::var(var).unwrap_or_else(|_| "<unset>".to_string());
    }
    static CACHE: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.entry(name.to_string()).or_insert_with(|| read(name, software)).clone()
}

/// The values of `names`, by name.
pub(crate) fn values(names: &[String], software: Software) -> BTreeMap<String, String> {
    names.iter().map(|n| (n.clone(), value(n, software))).collect()
}

fn read(name: &str, software: Software) -> String {
    match name {
        "cpu" => cpu_model(),
        "cpus" => std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
        "os" => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            format!("{} {}", std::env::consts::OS, release.trim()).trim().to_string()
        }
        "arch" => std::env::consts::ARCH.to_string(),
        "gpu" => gpu(),
        "ort" | "trtexec" | "torch" => software(name),
        "host" => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "<unknown>".to_string()),
        _ => "<unknown>".to_string(),
    }
}

/// The `gpu` facet of this machine, from NVML.
fn gpu() -> String {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return gpu_value(&[], None) };
    let count = nvml.device_count().unwrap_or(0);
    let names: Vec<String> = (0..count).filter_map(|i| nvml.device_by_index(i).ok()?.name().ok()).collect();
    gpu_value(&names, nvml.sys_driver_version().ok().as_deref())
}

/// The `gpu` facet's text for GPUs of `names` under `driver`: each model once, sorted.
pub(crate) fn gpu_value(names: &[String], driver: Option<&str>) -> String {
    let models: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    if models.is_empty() {
        return "<none>".to_string();
    }
    let models = models.into_iter().collect::<Vec<_>>().join(", ");
    format!("{models}; driver {}", driver.unwrap_or("<unknown>"))
}

/// The CPU model as the kernel reports it.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "<unknown>".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_names_each_model_once_with_the_driver() {
        let h200 = "NVIDIA H200".to_string();
        let a100 = "NVIDIA A100-SXM4-80GB".to_string();
        assert_eq!(gpu_value(&[], Some("550.54.15")), "<none>");
        assert_eq!(gpu_value(std::slice::from_ref(&h200), Some("550.54.15")), "NVIDIA H200; driver 550.54.15");
        assert_eq!(gpu_value(&[h200.clone(), h200.clone()], Some("550.54.15")), "NVIDIA H200; driver 550.54.15");
        assert_eq!(gpu_value(&[h200, a100], None), "NVIDIA A100-SXM4-80GB, NVIDIA H200; driver <unknown>");
    }

    #[test]
    fn gpu_and_trtexec_are_facets() {
        assert!(check_name("gpu").is_ok());
        assert!(check_name("trtexec").is_ok());
        assert_eq!(check_name("gpu0").err().and_then(|e| e.help).as_deref(), Some("did you mean `gpu`?"));
    }
}
