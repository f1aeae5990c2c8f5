//! Stage kinds: one implementation of [`Kind`] per kind, and the registry of them. The
//! engine knows nothing about what a stage does; it asks its kind to validate the stage's own
//! fields ([`StageKind::lower`]) and to run one node ([`StageKind::run`]) with its inputs in
//! place and its outputs to write. The trait is the pipeline's ([`crate::pipeline::kind`]):
//! the loader validates through it and is handed [`registry`] by its caller.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::pipeline::NodeSpec;
pub(crate) use crate::pipeline::kind::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError, StageKind};

pub(crate) mod calibrate;
pub(crate) mod cmd;
pub(crate) mod corpus;
pub(crate) mod export;
pub(crate) mod fetch;
pub(crate) mod gate;
pub(crate) mod logit_diff;
pub(crate) mod output;
pub(crate) mod perplexity;
pub(crate) mod quantize;
pub(crate) mod report;
pub(crate) mod stats;
pub(crate) mod sweep;
pub(crate) mod trt_build;

/// A positive integer field of a stage table, or `default` when absent; a bad value is
/// reported at the field.
pub(crate) fn positive_field(f: &serde_json::Map<String, Value>, name: &str, default: Option<u64>, errors: &mut Vec<LowerError>) -> Option<u64> {
    match f.get(name) {
        None => default,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                errors.push(LowerError::on(name, format!("`{name}` must be a positive integer, found {v}"), None));
                default
            }
        },
    }
}

/// A boolean field of a stage table, or `default` when absent.
pub(crate) fn bool_field(f: &serde_json::Map<String, Value>, name: &str, default: bool, errors: &mut Vec<LowerError>) -> bool {
    match f.get(name) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errors.push(LowerError::on(name, format!("`{name}` must be a boolean, found {v}"), None));
            default
        }
    }
}

/// The implementation sets of a node that runs its `backend` matrix value: the backend
/// dispatch and the set of the code that runs the backend's runtime
/// ([`crate::backend::Runtime::implementation_set`]), read from the backend the pipeline
/// validated (`onnxruntime` for a node without one, which lowering refuses anyway).
pub(crate) fn backend_sets(node: &NodeSpec) -> [&'static str; 2] {
    let runtime = node.backend.as_ref().map_or(crate::backend::Runtime::OnnxRuntime, |b| b.runtime);
    ["backend", runtime.implementation_set()]
}

/// The backend a per-backend node runs: its `backend` matrix value, as the pipeline validated
/// it. Problems are reported at the stage's `matrix`, naming the backend and the field.
pub(crate) fn backend_of<'a>(cx: &LowerCx<'a>, kind: &str) -> Result<&'a crate::backend::BackendSpec, Vec<LowerError>> {
    let Some(parsed) = cx.backend else {
        return Err(vec![LowerError {
            field: vec!["matrix".into()],
            message: format!("a `{kind}` stage runs once per backend, but its node has no `backend` axis"),
            help: Some("declare `[[backends]]` and add `matrix = [\"backend\"]` to the stage".into()),
        }]);
    };
    parsed.map_err(|problems| {
        let name = cx.matrix.get("backend").and_then(|v| v.get("name")).and_then(Value::as_str).unwrap_or("?");
        problems
            .iter()
            .map(|(field, message)| {
                let at = if field.is_empty() { String::new() } else { format!(", field `{field}`") };
                LowerError { field: vec!["matrix".into()], message: format!("backend `{name}`{at}: {message}"), help: None }
            })
            .collect()
    })
}

/// The ONNX file a `model` dep names: the file itself, or `model.onnx` / `prefill/model.onnx`
/// below a directory (an `export` stage's variant directory or its whole output).
pub(crate) fn onnx_file(path: &Path) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for candidate in [path.join("model.onnx"), path.join("prefill").join("model.onnx")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!("`{}` is neither an ONNX file nor a directory with `model.onnx` or `prefill/model.onnx`", path.display()))
}

/// The model a backend runs from a dep: the ONNX file for ONNX Runtime ([`onnx_file`]); for
/// torch the dep itself, the Hugging Face directory its worker loads, and for TensorRT for RTX
/// the `trt_build` node's directory (both checked when the backend opens).
pub(crate) fn backend_model(spec: &crate::backend::BackendSpec, path: &Path) -> Result<PathBuf, String> {
    if spec.runtime == crate::backend::Runtime::OnnxRuntime { onnx_file(path) } else { Ok(path.to_path_buf()) }
}

static REGISTRY: &[&dyn StageKind] = &[
    &cmd::Cmd,
    &fetch::Fetch,
    &export::Export,
    &perplexity::Perplexity,
    &gate::Gate,
    &logit_diff::LogitDiff,
    &sweep::Sweep,
    &stats::Stats,
    &calibrate::Calibrate,
    &quantize::Quantize,
    &trt_build::TrtBuild,
    &report::Report,
];

/// Every registered kind.
pub(crate) fn registry() -> &'static [&'static dyn StageKind] {
    REGISTRY
}
