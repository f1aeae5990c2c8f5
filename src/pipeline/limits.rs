//! Bounds on what a pipeline may ask for, each checked before anything is allocated for it,
//! so that a typo or a hostile file fails in milliseconds with a diagnostic instead of
//! growing until the machine runs out of memory.
//!
//! | limit                 | default  | where it is set                                  |
//! |-----------------------|----------|--------------------------------------------------|
//! | pipeline file size    | 16 MiB   | fixed: the file cannot raise its own read limit  |
//! | nodes after expansion | 100,000  | `[limits] max_nodes = N` in the pipeline         |
//! | a `cmd` `timeout`     | 30 days  | fixed: longer is a typo, and overflows a deadline |
//!
//! The node limit is counted from each stage's axis lengths, with checked arithmetic, before
//! the stage's matrix is expanded. `[limits]` never enters a key: raising a limit reruns
//! nothing.

use super::fields::Fields;
use super::source::{FieldPath, Source};
use crate::diag::Diagnostic;

/// The most bytes read from a pipeline file; a larger file (or `/dev/zero`) is refused.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;

/// Nodes a pipeline may expand to unless `[limits] max_nodes` says otherwise. A node costs a
/// few kilobytes while loading and planning, so this is a few hundred megabytes at most.
pub(crate) const DEFAULT_MAX_NODES: u64 = 100_000;

/// The longest `timeout` a `cmd` stage may ask for, in seconds.
pub(crate) const MAX_TIMEOUT_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// The `[limits]` table, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_nodes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_nodes: DEFAULT_MAX_NODES }
    }
}

impl Limits {
    /// Reads `[limits]`; an unknown field or a bad value is reported at its position and
    /// the default kept.
    pub(crate) fn from_table(table: Option<&toml::Table>, src: &Source, diags: &mut Vec<Diagnostic>) -> Limits {
        let mut limits = Limits::default();
        let Some(table) = table else { return limits };
        let mut f = Fields::new(table, vec!["limits".to_string()], src, diags);
        if let Some(v) = f.get("max_nodes") {
            match v.as_integer().and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0) {
                Some(n) => limits.max_nodes = n,
                None => {
                    let p = f.child("max_nodes");
                    f.error(&p, format!("`max_nodes` must be a positive integer, found {v}"), Some(format!("the default is {DEFAULT_MAX_NODES}")));
                }
            }
        }
        f.finish();
        limits
    }
}

/// Nodes a matrix expands to: the product of its axes' lengths, `None` past `u64::MAX`.
pub(crate) fn node_count(axis_lengths: impl IntoIterator<Item = usize>) -> Option<u64> {
    axis_lengths.into_iter().try_fold(1u64, |n, len| n.checked_mul(u64::try_from(len).ok()?))
}

/// What is left of the node limit as stages are expanded one after another.
pub(crate) struct NodeBudget {
    pub limit: u64,
    pub used: u64,
}

impl NodeBudget {
    pub(crate) fn new(limits: &Limits) -> NodeBudget {
        NodeBudget { limit: limits.max_nodes, used: 0 }
    }

    /// Takes the nodes of stage `stage`, whose axes have `lengths` values, or says why not,
    /// at `at`. A refused stage takes nothing, so the stages after it are judged on their own.
    pub(crate) fn take(&mut self, stage: &str, lengths: &[usize], at: &FieldPath, src: &Source) -> Result<(), Diagnostic> {
        let count = node_count(lengths.iter().copied());
        let shape = if lengths.len() > 1 { format!(" ({})", lengths.iter().map(usize::to_string).collect::<Vec<_>>().join(" × ")) } else { String::new() };
        let limit = self.limit;
        let total = count.and_then(|c| c.checked_add(self.used));
        let message = match (count, total) {
            (Some(c), Some(t)) if c <= limit && t <= limit => {
                self.used = t;
                return Ok(());
            }
            (None, _) => format!("stage `{stage}` expands to more than {} nodes{shape}, over the limit of {limit}", u64::MAX),
            (Some(c), _) if c > limit => format!("stage `{stage}` expands to {c} nodes{shape}, over the limit of {limit}"),
            (Some(c), t) => {
                let t = t.map_or_else(|| format!("more than {}", u64::MAX), |t| t.to_string());
                format!("stage `{stage}` expands to {c} nodes{shape}, bringing the pipeline to {t}, over the limit of {limit}")
            }
        };
        // `max_nodes` is a TOML integer: past `i64::MAX` no limit can admit the stage.
        let help = match total.filter(|n| i64::try_from(*n).is_ok()) {
            Some(n) => format!("shrink the matrix, or raise the limit at the top of the pipeline: `[limits]` with `max_nodes = {n}`"),
            None => "shrink the matrix: no limit can admit that many nodes".to_string(),
        };
        Err(src.diag(at, message, Some(help)))
    }
}
