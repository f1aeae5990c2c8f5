//! `gate.json`: what the `gate` stage ([`crate::stage::gate`]) writes and the report reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `gate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The backend every other is compared with.
    pub reference: String,
    /// `None` when the reference has no perplexity (the gate is then degraded).
    pub reference_ppl: Option<f64>,
    /// Relative perplexity change allowed, by precision.
    pub thresholds: BTreeMap<String, f64>,
    /// `ok`, or `degraded` with a [`Gate::reason`].
    pub status: String,
    pub reason: Option<String>,
    /// The backends over their threshold.
    pub failed: Vec<String>,
    /// One per perplexity result, sorted by backend.
    pub backends: Vec<Backend>,
}

/// One backend's line of the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub backend: String,
    pub precision: String,
    /// `ok` or `degraded`, as its perplexity result.
    pub status: String,
    pub reason: Option<String>,
    pub ppl: Option<f64>,
    pub rel_delta: Option<f64>,
    pub threshold: Option<f64>,
    /// `None` when the backend is degraded or there is nothing to compare with.
    pub pass: Option<bool>,
}
