//! `logit_diff.json`: what the `logit_diff` stage ([`crate::stage::logit_diff`]) writes and the
//! report reads.
//!
//! Like `perplexity.json`, it is written straight from the struct, so its keys come out in the
//! order of the fields below, and its backend spec's keys in the order of
//! [`crate::backend::BackendSpec`]'s fields. The stage writes the spec as that type; a reader,
//! which has no use for it, reads it back as plain JSON (the default `S`), so the spec's types
//! need not read back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::Capability;

/// `logit_diff.json`: one backend's logits against the reference's; `S` is the backend spec's
/// type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitDiff<S = Value> {
    /// The backend's name.
    pub backend: String,
    pub backend_spec: S,
    /// `ok`, or `degraded` with a [`LogitDiff::reason`]; a degraded result has null numbers.
    pub status: String,
    pub reason: Option<String>,
    /// The backend's model file.
    pub model: String,
    pub reference: Reference,
    /// What really ran; `None` when the backend did not open.
    pub capability: Option<Capability>,
    pub prompts: Vec<PromptDiff>,
    pub overall: Overall,
}

/// What the backend is compared with: ONNX Runtime's CPU provider on the fp32 export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub model: String,
    pub provider: String,
}

/// Differences over a set of logits; `None` where the backend did not run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub mean_abs_diff: Option<f64>,
    pub max_abs_diff: Option<f64>,
    /// The share of positions (of prompts, for the overall last token) whose top logit is the
    /// reference's.
    pub argmax_agreement_rate: Option<f64>,
}

/// A prompt's last position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastToken {
    #[serde(flatten)]
    pub diff: Diff,
    pub argmax: Option<usize>,
    pub reference_argmax: Option<usize>,
}

/// One prompt, run alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptDiff {
    pub prompt: String,
    pub tokens: usize,
    pub last_token: LastToken,
    pub all_positions: Diff,
}

impl PromptDiff {
    /// A prompt that did not run: every number `None`.
    pub fn empty(prompt: &str, tokens: usize) -> PromptDiff {
        PromptDiff { prompt: prompt.to_string(), tokens, last_token: LastToken::default(), all_positions: Diff::default() }
    }
}

/// Every prompt together; means are over all logits, so every position weighs the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overall {
    pub last_token: Diff,
    pub all_positions: Diff,
}
