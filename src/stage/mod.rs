//! Stage kinds: the registry behind one trait. The engine knows nothing about what a stage
//! does; it asks its kind to validate the stage's own fields ([`StageKind::lower`]) and to
//! run one node ([`StageKind::run`]) with its inputs in place and its outputs to write.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::pipeline::NodeSpec;

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

/// What a kind sees of one node when it validates the node's kind-specific fields.
pub struct LowerCx<'a> {
    pub node: &'a str,
    /// The stage's kind-specific fields, with load-time placeholders resolved.
    pub fields: &'a serde_json::Map<String, Value>,
    pub deps: &'a [String],
    pub outs: &'a [String],
    /// The node's matrix values (a `backend` axis value is the backend's whole declaration).
    pub matrix: &'a BTreeMap<String, Value>,
}

/// A problem with one kind-specific field.
#[derive(Debug)]
pub struct LowerError {
    /// The field, as a path below the stage table (`["cmd", "2"]`).
    pub field: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl LowerError {
    /// A problem with the field at `field`, a path below the stage table.
    pub fn at(field: Vec<String>, message: String, help: Option<String>) -> LowerError {
        LowerError { field, message, help }
    }

    /// A problem with the top-level field `field`.
    pub fn on(field: &str, message: String, help: Option<String>) -> LowerError {
        LowerError { field: vec![field.to_string()], message, help }
    }
}

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

/// How a node that ran to completion came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Completed, but could not do what was asked (no GPU, a provider missing); cached with
    /// its reason, never passed off as a real result.
    Degraded(String),
}

/// What a kind gets to run one node.
pub struct RunCx<'a> {
    pub node: &'a NodeSpec,
    /// The workspace root; every path below is relative to it and commands run in it.
    pub root: &'a Path,
    /// Dep name → paths of the inputs, each materialised and verified.
    pub deps: &'a BTreeMap<String, Vec<String>>,
    /// Out name → where the node must write that output (a fresh staging path).
    pub outs: &'a BTreeMap<String, PathBuf>,
    /// A scratch directory private to this run, removed afterwards.
    pub scratch: &'a Path,
    pub log: &'a mut File,
}

/// One kind of stage. Implementations are stateless; one static instance each.
pub trait StageKind: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The implementation sets ([`crate::implementation::SETS`]) whose code makes this
    /// node's results; their versions enter its key. Besides the kind's own set and the
    /// shared `stage` set, a node that runs a backend names its runtime's set only.
    fn implementation(&self, node: &crate::pipeline::NodeSpec) -> Vec<&'static str>;
    /// The kind-specific fields a stage table of this kind may have.
    fn fields(&self) -> &'static [&'static str];
    /// Whether the kind's fields keep `{matrix.*}` and `{params.*}` as placeholders, to be
    /// resolved at run time from the node's matrix and params. A kind whose fields are
    /// templates (like `cmd`'s argv) says yes, so a changed param shows up in `why` as the
    /// param, not as every argument it was spliced into.
    fn keeps_placeholders(&self) -> bool {
        false
    }
    /// Whether [`Self::lower`] looks at the node's matrix values, so that it must run for
    /// every node rather than once per stage.
    fn reads_matrix(&self) -> bool {
        false
    }
    /// Whether every node of the kind is a measurement, to run alone on its device (as a
    /// stage's `timing = true` asks).
    fn timing(&self) -> bool {
        false
    }
    /// Outputs the kind always writes, given its config: `(name, path)`, a trailing `/`
    /// for a directory. They are declared for the node beside any `outs` of the stage.
    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Validates one node's kind-specific fields into the config that enters its key.
    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>>;
    /// Runs one node. `Err` is a failure: nothing is cached.
    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, String>;
}

/// The implementation sets of a node that runs its `backend` matrix value: the backend
/// dispatch and the set of the code that runs the backend's runtime
/// ([`crate::backend::Runtime::implementation_set`]; `onnxruntime` when it names none).
pub(crate) fn backend_sets(node: &NodeSpec) -> [&'static str; 2] {
    let runtime = node.matrix.get("backend").and_then(|b| b.get("runtime")).and_then(Value::as_str).and_then(crate::backend::Runtime::from_name);
    ["backend", runtime.unwrap_or(crate::backend::Runtime::OnnxRuntime).implementation_set()]
}

/// The backend a per-backend node runs: its `backend` matrix value, validated. Problems are
/// reported at the stage's `matrix`, naming the backend and the field.
pub(crate) fn backend_of(cx: &LowerCx<'_>, kind: &str) -> Result<crate::backend::BackendSpec, Vec<LowerError>> {
    let Some(v) = cx.matrix.get("backend") else {
        return Err(vec![LowerError {
            field: vec!["matrix".into()],
            message: format!("a `{kind}` stage runs once per backend, but its node has no `backend` axis"),
            help: Some("declare `[[backends]]` and add `matrix = [\"backend\"]` to the stage".into()),
        }]);
    };
    crate::backend::BackendSpec::from_value(v).map_err(|problems| {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
        problems
            .into_iter()
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

pub(crate) fn lookup(name: &str) -> Option<&'static dyn StageKind> {
    REGISTRY.iter().copied().find(|k| k.name() == name)
}
