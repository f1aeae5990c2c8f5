//! ONNX Runtime: the library, probed before anything trusts it; sessions over ONNX files; a
//! prefill call and a decode step with a key/value cache.
//!
//! ## The library is an input like any other
//!
//! tr118 never links ONNX Runtime. The shared library comes from the PyPI wheel
//! `onnxruntime==1.31.1` (`onnxruntime/capi/libonnxruntime.so.1.31.1`; `onnxruntime-gpu` for
//! CUDA and TensorRT) and is loaded at run time through `ort`'s `load-dynamic` feature. Which
//! file that is comes from, in order: the path a caller passes, then `ORT_DYLIB_PATH`. There is
//! no search of the system library path: a benchmark must know which binary it measured.
//!
//! `ort` panics when the file is missing or older than the C API it was built for, so
//! [`probe`] opens the file itself first and turns every way it can be wrong into a
//! [`RuntimeError`] that names the file, what was found, and how to get the right one:
//!
//! | check                                  | error                                 |
//! |----------------------------------------|---------------------------------------|
//! | the file exists                        | [`RuntimeError::LibraryNotFound`]     |
//! | it loads as a shared library           | [`RuntimeError::NotALibrary`]         |
//! | it exports `OrtGetApiBase`             | [`RuntimeError::NotOnnxRuntime`]      |
//! | `GetVersionString` ≥ 1.[`ort::MINOR_VERSION`] | [`RuntimeError::TooOld`]       |
//! | it serves that API version (`GetApi`)  | [`RuntimeError::TooOld`]              |
//!
//! Only then does [`init`] hand the path to `ort`, once per process: ONNX Runtime and `ort`
//! both keep process-wide state, so a second, different library is an error
//! ([`RuntimeError::AlreadyLoaded`]), never a silent reuse of the first.
//!
//! [`RuntimeInfo`] is what a stage's key needs of the library: its version, its blake3
//! digest, and the execution providers it was built with. The path is for people only.
//!
//! ## Execution providers never fall back silently
//!
//! ONNX Runtime's habit is to fall back to the CPU when an accelerator cannot be registered;
//! `ort` registers providers that way unless told otherwise. Here every requested non-CPU
//! provider is registered with `error_on_failure`, and a provider that does not register is
//! [`RuntimeError::ProviderUnavailable`]: a value the engine turns into a *degraded* node
//! with that sentence as its reason. So is a provider that registers but whose session then
//! fails to build (no device, a TensorRT engine that does not build) while the CPU alone
//! opens the model. Nodes that ONNX Runtime's partitioner places on the CPU inside a CUDA
//! session (shape arithmetic, unsupported operators) are normal and not reported here.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod decoder;
mod library;
pub(crate) mod profile;
mod session;

pub use decoder::{Decoder, KvCache};
pub use library::{ORT_DYLIB_ENV, PINNED_VERSION, Runtime, RuntimeInfo, current, init, library_path, probe, provider_libraries, required_version};
pub use session::{DeviceTensor, Dim, Feed, IoSpec, PreparedInputs, Session, SessionOptions, TensorData, TrtOptions};

/// The argmax of the last position of each sequence of `logits` (`[batch, len, vocab]`), into
/// `out` (cleared first).
pub(crate) fn last_argmax(logits: ndarray::ArrayViewD<'_, f32>, out: &mut Vec<i64>) {
    out.clear();
    if logits.ndim() != 3 || logits.shape()[1] == 0 {
        return;
    }
    let last = logits.shape()[1] - 1;
    for row in logits.axis_iter(ndarray::Axis(0)) {
        let row = row.index_axis_move(ndarray::Axis(0), last);
        let mut best = (0usize, f32::NEG_INFINITY);
        for (i, &v) in row.iter().enumerate() {
            if v > best.1 {
                best = (i, v);
            }
        }
        out.push(best.0 as i64);
    }
}

/// How to obtain a library that works, appended to every library error.
const FETCH_HINT: &str = "run `scripts/fetch-ort.sh`, which fetches `onnxruntime==1.31.1` from PyPI and prints the \
     library's path, and set `ORT_DYLIB_PATH` to it (for CUDA or TensorRT, the same file from `onnxruntime-gpu==1.31.1`)";

/// An execution provider, as a pipeline names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl Provider {
    pub(crate) const ALL: [Provider; 3] = [Provider::Cpu, Provider::Cuda, Provider::TensorRt];

    /// The name in pipelines and reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
        }
    }

    /// The name ONNX Runtime uses (`GetAvailableProviders`, logs).
    pub fn ort_name(self) -> &'static str {
        use ort::ep::ExecutionProvider;
        match self {
            Provider::Cpu => ort::ep::CPU::NAME,
            Provider::Cuda => ort::ep::CUDA::NAME,
            Provider::TensorRt => ort::ep::TensorRT::NAME,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Provider::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names = Provider::ALL.map(Provider::name);
            let mut msg = format!("unknown execution provider `{s}` (expected one of {})", names.join(", "));
            if let Some(help) = crate::diag::suggest(s, names) {
                msg.push_str("; ");
                msg.push_str(&help);
            }
            msg
        })
    }
}

/// ONNX Runtime's graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptLevel {
    /// No graph rewrites: the graph as exported.
    Disable,
    /// Constant folding, redundant node elimination.
    Basic,
    /// Also fusions (GELU, LayerNorm, attention, MatMul+Add) for the CPU and CUDA providers.
    Extended,
    /// Also memory layout changes.
    Layout,
    /// Everything ONNX Runtime offers; its own default.
    #[default]
    All,
}

impl OptLevel {
    pub const ALL: [OptLevel; 5] = [OptLevel::Disable, OptLevel::Basic, OptLevel::Extended, OptLevel::Layout, OptLevel::All];

    pub(crate) fn name(self) -> &'static str {
        match self {
            OptLevel::Disable => "disable",
            OptLevel::Basic => "basic",
            OptLevel::Extended => "extended",
            OptLevel::Layout => "layout",
            OptLevel::All => "all",
        }
    }

    fn to_ort(self) -> ort::session::builder::GraphOptimizationLevel {
        use ort::session::builder::GraphOptimizationLevel as G;
        match self {
            OptLevel::Disable => G::Disable,
            OptLevel::Basic => G::Level1,
            OptLevel::Extended => G::Level2,
            OptLevel::Layout => G::Level3,
            OptLevel::All => G::All,
        }
    }
}

impl fmt::Display for OptLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for OptLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        OptLevel::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            let names = OptLevel::ALL.map(OptLevel::name);
            let mut msg = format!("unknown optimisation level `{s}` (expected one of {})", names.join(", "));
            if let Some(help) = crate::diag::suggest(s, names) {
                msg.push_str("; ");
                msg.push_str(&help);
            }
            msg
        })
    }
}

/// Everything that can go wrong between a library path and a tensor of logits.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no ONNX Runtime library was given and `ORT_DYLIB_PATH` is not set; {}", FETCH_HINT)]
    NoLibrary,
    #[error("ONNX Runtime library `{path}` does not exist; {}", FETCH_HINT)]
    LibraryNotFound { path: PathBuf },
    #[error("`{path}` is not a loadable shared library ({reason}); {}", FETCH_HINT)]
    NotALibrary { path: PathBuf, reason: String },
    #[error("`{path}` is a shared library but not ONNX Runtime: it does not export `OrtGetApiBase`; {}", FETCH_HINT)]
    NotOnnxRuntime { path: PathBuf },
    #[error("ONNX Runtime `{path}` is version {found}, but tr118 is built against its C API {required} and needs that version or newer; {}", FETCH_HINT)]
    TooOld { path: PathBuf, found: String, required: String },
    #[error("ONNX Runtime `{path}` reports version `{found}`, which is not `MAJOR.MINOR.PATCH`")]
    BadVersion { path: PathBuf, found: String },
    #[error("ONNX Runtime is already loaded from `{loaded}`; this process cannot load `{requested}` as well (run it in a separate `tr118` process)")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error(
        "execution provider `{provider}` is not available: ONNX Runtime {version} at `{path}` offers {}: {reason}",
        .available.join(", ")
    )]
    ProviderUnavailable { provider: Provider, version: String, path: PathBuf, available: Vec<String>, reason: String },
    #[error("model `{path}` does not exist")]
    ModelNotFound { path: PathBuf },
    #[error("ONNX Runtime cannot open `{model}`: {message}")]
    Session { model: PathBuf, message: String },
    /// The model's inputs or outputs are not what the call feeds or reads.
    #[error("`{model}`: {message}")]
    Interface { model: PathBuf, message: String },
    /// The caller's tensors do not fit together (lengths, batch, sequence).
    #[error("{0}")]
    BadInput(String),
    #[error("running `{model}` failed: {message}")]
    Run { model: PathBuf, message: String },
    /// `cuda_graph` asked for where ONNX Runtime cannot capture: a setting to change, not a
    /// missing device.
    #[error("`{model}`: {message}; open it with `cuda_graph` off")]
    CudaGraph { model: PathBuf, message: String },
    #[error("ONNX Runtime: {context}: {message}")]
    Ort { context: String, message: String },
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl RuntimeError {
    /// The stage cannot run *here* (an accelerator this library or machine lacks): the node is
    /// degraded with this error's text as its reason rather than failed.
    pub fn is_degradation(&self) -> bool {
        matches!(self, RuntimeError::ProviderUnavailable { .. })
    }
}
