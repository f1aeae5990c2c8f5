//! `sweep.json`: the summary the `sweep` stage ([`crate::stage::sweep`]) writes beside
//! `runs.jsonl` (whose lines are [`crate::measure::RunRecord`]s), and the report reads.
//!
//! Like `perplexity.json`, it is written straight from the struct, so its keys come out in the
//! order of the fields below; a scenario's own fields come first in its summary.

use serde::{Deserialize, Serialize};

use crate::backend::Capability;
use crate::measure::sampler::SamplerOverhead;

/// `sweep.json`: one backend × mode, every scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub backend: String,
    /// The provider and precision as declared.
    pub provider: String,
    pub precision: String,
    pub mode: String,
    /// The model file, workspace-relative.
    pub model: String,
    /// What really ran; `None` when the backend did not open.
    pub capability: Option<Capability>,
    pub warmup: usize,
    pub reps: usize,
    pub sample_interval_ms: u64,
    /// In the stage's order.
    pub scenarios: Vec<ScenarioSummary>,
    /// The resource sampler's own cost; `None` when nothing was measured.
    pub sampler: Option<SamplerOverhead>,
    pub harness: Option<Harness>,
    /// `ok`, or `degraded` with a [`Sweep::reason`].
    pub status: String,
    pub reason: Option<String>,
}

/// One scenario: a batch of prompts and how many tokens to generate. It is also a field of the
/// stage's lowered config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
}

/// One scenario's repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    #[serde(flatten)]
    pub scenario: Scenario,
    pub n_ok: usize,
    pub n_degraded: usize,
    pub mean_latency_ms: Option<f64>,
    /// Generate modes: the ids the first ok repetition generated, one row per sequence.
    pub output_ids: Option<Vec<Vec<i64>>>,
    /// Generate modes: whether every ok repetition generated the same ids.
    pub outputs_consistent: Option<bool>,
}

/// What the loop around the measurements cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Harness {
    /// Timed repetitions that ran.
    pub iterations: usize,
    /// Wall time of the timed repetitions' loop, sampling and bookkeeping included.
    pub loop_ms: f64,
    /// The part of it inside the clocks.
    pub measured_ms: f64,
    /// `(loop − measured) / iterations`.
    pub overhead_per_iteration_us: f64,
}
