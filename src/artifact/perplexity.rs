//! `perplexity.json`: what the `perplexity` stage ([`crate::stage::perplexity`]) writes and the
//! `gate` stage and the report read.
//!
//! Unlike the other artifacts, this one is written straight from the struct, not through
//! [`serde_json::to_value`]: its keys (and those of its [`Capability`]) come out in the order
//! of the fields below, as they always have, so that order is part of the file's bytes.

use serde::{Deserialize, Serialize};

use crate::backend::Capability;

/// `perplexity.json`: one backend's perplexity over a corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// The backend as declared.
    pub backend: String,
    pub precision: String,
    pub provider: String,
    /// What really ran; `None` when the backend could not be opened.
    pub capability: Option<Capability>,
    /// The windowing.
    pub context: usize,
    pub stride: usize,
    pub batch: usize,
    /// Tokens of the corpus after stripping and `max_tokens`.
    pub corpus_tokens: usize,
    /// Windows run, targets scored.
    pub windows: Option<usize>,
    pub tokens_scored: Option<usize>,
    /// Mean negative log-likelihood (nats) and `exp(mean_nll)`.
    pub mean_nll: Option<f64>,
    pub ppl: Option<f64>,
    /// The sanity line: a model that knew nothing scores `ppl = vocab_size`.
    pub vocab_size: Option<usize>,
    pub ln_vocab: Option<f64>,
    pub uniform_ppl: Option<f64>,
    /// `ok`, or `degraded` with a [`Perplexity::reason`]; a degraded result has null numbers.
    pub status: String,
    pub reason: Option<String>,
}
