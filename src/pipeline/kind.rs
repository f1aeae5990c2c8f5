//! What a stage kind is: the one interface through which the pipeline loader validates a
//! stage's own fields and the engine runs a node. The kinds themselves live in `stage`; the
//! loader is handed them ([`super::Pipeline::load`]), so that this module knows none of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::NodeSpec;
use crate::backend::BackendSpec;

/// What a kind sees of one node when it validates the node's kind-specific fields.
pub struct LowerCx<'a> {
    pub node: &'a str,
    /// The stage's kind-specific fields, with load-time placeholders resolved.
    pub fields: &'a serde_json::Map<String, Value>,
    pub deps: &'a [String],
    pub outs: &'a [String],
    /// The node's matrix values (a `backend` axis value is the backend's whole declaration).
    pub matrix: &'a BTreeMap<String, Value>,
    /// The `backend` matrix value read as a backend, or its problems as `(field, message)`;
    /// `None` when the node has no `backend` axis.
    pub backend: Option<Result<&'a BackendSpec, &'a [(String, String)]>>,
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
    pub(crate) fn at(field: Vec<String>, message: String, help: Option<String>) -> LowerError {
        LowerError { field, message, help }
    }

    /// A problem with the top-level field `field`.
    pub(crate) fn on(field: &str, message: String, help: Option<String>) -> LowerError {
        LowerError { field: vec![field.to_string()], message, help }
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

/// Why a node's run failed; nothing of it is cached. One message each, which the engine prints
/// after "`node` failed:".
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A dep the kind reads is not among the node's inputs (lowering checks that the stage
    /// declares it; a pattern may still match nothing).
    #[error("no `{0}` dep")]
    NoDep(String),
    /// The node's `backend` matrix value is missing or did not validate; lowering refuses
    /// such nodes for the kinds that run backends.
    #[error("the node has no valid `backend` matrix value")]
    NoBackend,
    /// Reading, writing or creating a file or directory failed.
    #[error("{doing} `{}`: {source}", crate::paths::shown(path))]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
    /// Anything else, in the kind's own words.
    #[error("{0}")]
    Other(String),
}

impl StageError {
    /// A failed file operation: `doing` is what was being done (`reading corpus`).
    pub fn io(doing: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StageError {
        let path = path.into();
        move |source| StageError::Io { doing, path, source }
    }
}

impl From<String> for StageError {
    fn from(message: String) -> StageError {
        StageError::Other(message)
    }
}

impl From<&str> for StageError {
    fn from(message: &str) -> StageError {
        StageError::Other(message.to_string())
    }
}

/// One kind of stage, as its implementation writes it: what the kind is, as constants, and what
/// it does, as methods. Implementations are stateless, one static instance each; the loader and
/// the engine hold them as [`StageKind`] objects.
pub trait Kind: Send + Sync + 'static {
    /// The name a stage table's `kind` gives.
    const NAME: &'static str;
    /// The kind-specific fields a stage table of this kind may have.
    const FIELDS: &'static [&'static str];
    /// Whether the kind's fields keep `{matrix.*}` and `{params.*}` as placeholders, to be
    /// resolved at run time from the node's matrix and params. A kind whose fields are
    /// templates (like `cmd`'s argv) says yes, so a changed param shows up in `why` as the
    /// param, not as every argument it was spliced into.
    const KEEPS_PLACEHOLDERS: bool = false;
    /// Whether [`Self::lower`] looks at the node's matrix values, so that it must run for
    /// every node rather than once per stage.
    const READS_MATRIX: bool = false;
    /// Whether every node of the kind is a measurement, to run alone on its device (as a
    /// stage's `timing = true` asks).
    const TIMING: bool = false;

    /// The implementation sets ([`crate::implementation::SETS`]) whose code makes this
    /// node's results; their versions enter its key. Besides the kind's own set and the
    /// shared `stage` set, a node that runs a backend names its runtime's set only.
    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str>;
    /// Outputs the kind always writes, given its config: `(name, path)`, a trailing `/`
    /// for a directory. They are declared for the node beside any `outs` of the stage.
    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Validates one node's kind-specific fields into the config that enters its key.
    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>>;
    /// Runs one node. `Err` is a failure: nothing is cached.
    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError>;
}

/// A [`Kind`] as an object: its constants as methods, so that kinds of every type can sit in
/// one registry and on every [`NodeSpec`].
pub trait StageKind: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fields(&self) -> &'static [&'static str];
    fn keeps_placeholders(&self) -> bool;
    fn reads_matrix(&self) -> bool;
    fn timing(&self) -> bool;
    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str>;
    fn implied_outs(&self, config: &Value) -> Vec<(String, String)>;
    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>>;
    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError>;
}

impl<K: Kind> StageKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn fields(&self) -> &'static [&'static str] {
        K::FIELDS
    }
    fn keeps_placeholders(&self) -> bool {
        K::KEEPS_PLACEHOLDERS
    }
    fn reads_matrix(&self) -> bool {
        K::READS_MATRIX
    }
    fn timing(&self) -> bool {
        K::TIMING
    }
    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str> {
        Kind::implementation(self, node)
    }
    fn implied_outs(&self, config: &Value) -> Vec<(String, String)> {
        Kind::implied_outs(self, config)
    }
    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        Kind::lower(self, cx)
    }
    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        Kind::run(self, cx)
    }
}
