//! Reproducibility: the command that remakes the report, and the digest of every artifact it
//! read.

use serde_json::{Value, json};

use crate::report::{Inputs, ReportError};

pub(super) fn reproducibility(inputs: &Inputs) -> Result<Value, ReportError> {
    let mut artifacts = Vec::new();
    for (dep, paths) in &inputs.deps {
        for p in paths {
            let full = inputs.root.join(p);
            let read = |e: std::io::Error| ReportError::Read { path: p.clone(), message: e.to_string() };
            // A directory's digest is its canonical listing's, as the cache computes it.
            let (digest, bytes) = if full.is_dir() {
                let mut entries = Vec::new();
                for f in crate::digest::list_files(&full).map_err(read)? {
                    let path = full.join(&f);
                    let (digest, size) = crate::digest::hash_file(&path).map_err(read)?;
                    let exec = std::fs::metadata(&path).map(|m| crate::digest::is_executable(&m)).map_err(read)?;
                    entries.push(crate::digest::TreeEntry { path: f, digest, size, exec });
                }
                let tree = crate::digest::Tree { entries };
                (tree.digest(), tree.size())
            } else {
                crate::digest::hash_file(&full).map_err(read)?
            };
            artifacts.push(json!({ "dep": dep, "path": p, "digest": digest.to_hex(), "bytes": bytes }));
        }
    }
    let pipeline = inputs.paths("pipeline").first().map(|p| -> Result<Value, ReportError> {
        let bytes = std::fs::read(inputs.root.join(p)).map_err(|e| ReportError::Read { path: p.clone(), message: e.to_string() })?;
        Ok(json!({ "path": p, "digest": crate::digest::Digest::of_bytes(&bytes).to_hex() }))
    });
    let pipeline = pipeline.transpose()?;
    let file = pipeline.as_ref().and_then(|p| p["path"].as_str()).map(str::to_string);
    let command = match file.as_deref() {
        Some("tr118.toml") => format!("tr118 make {}", inputs.node),
        Some(f) => format!("tr118 -f {f} make {}", inputs.node),
        None => format!("tr118 make {}", inputs.node),
    };
    Ok(json!({ "command": command, "pipeline": pipeline, "tool_version": crate::VERSION, "artifacts": artifacts }))
}
