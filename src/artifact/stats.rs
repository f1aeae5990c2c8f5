//! `stats.json`: what the `stats` stage ([`crate::stage::stats`]) writes and the report reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `scenario` of the rows that pool every scenario of a backend × mode.
pub const OVERALL: &str = "overall";

/// `stats.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// `ok`, or `degraded` with a [`Stats::reason`].
    pub status: String,
    pub reason: Option<String>,
    /// The backend the others are compared with; none, no comparisons.
    pub baseline: Option<String>,
    pub alpha: f64,
    /// Each statistic's definition, in words, by name.
    pub methods: BTreeMap<String, String>,
    /// One per `runs` file, in the dep's order.
    pub inputs: Vec<Input>,
    /// One per backend × mode with degraded runs.
    pub degraded: Vec<Degraded>,
    /// Columns [`crate::stage::stats::SUMMARY_COLUMNS`].
    pub summary: Table,
    /// Columns [`crate::stage::stats::COMPARISON_COLUMNS`].
    pub comparisons: Table,
}

/// One `runs` file and its record counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub path: String,
    pub records: usize,
    pub ok: usize,
    pub degraded: usize,
}

/// A backend × mode's degraded runs, all scenarios together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    pub backend: String,
    pub mode: String,
    pub n_degraded: usize,
    pub n_total: usize,
    /// Most frequent first, then by text.
    pub reasons: Vec<Reason>,
}

/// A degraded reason and how many runs gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub reason: String,
    pub count: usize,
}

/// A table as the CSV beside it has it: its columns, and each row's cells by column (`null`
/// where undefined).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}
