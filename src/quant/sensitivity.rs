//! Mixed precision chosen by data: which MatMuls cost the most accuracy in INT8, and the
//! fewest to keep in float so the whole model meets a target.
//!
//! 1. **Reference.** The float model (after any smoothing) runs over the sample windows; its
//!    next-token log-probabilities and its mean NLL are kept.
//! 2. **Ranking.** For each MatMul the rewrite would quantize, a model with *that one alone*
//!    quantized (every other op float) runs over the same windows; its sensitivity is the
//!    mean KL divergence `KL(float ‖ one quantized)` of the next-token distributions over
//!    every position, a logit error that is never negative and far less noisy than a
//!    perplexity difference on a few windows. The ranking is by that divergence, largest
//!    first (ties by graph order).
//! 3. **Search.** With the `k` most sensitive left in float and the rest quantized, the
//!    relative perplexity change `exp(NLL_k − NLL_float) − 1` on the windows; the smallest `k`
//!    that meets `target` is found by bisection over `k` (the change is taken to fall as `k`
//!    grows; `k` = every op is the float model and meets any target). Every evaluated `k` is
//!    recorded.
//!
//! Each one-op and each searched model is written beside hard links to the float model's
//! external data, so a model costs its INT8 weights on disk, not the whole network.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::QuantError;
use super::calibrate::Calibration;
use super::rewrite::{self, Options};
use crate::onnx::edit::{self, Model};
use crate::runtime::{Runtime, SessionOptions};

/// One op's cost when quantized alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ranked {
    pub name: String,
    pub weight: String,
    /// Mean `KL(float ‖ this op quantized)` per position, nats.
    pub kl: f64,
    /// Relative perplexity change with this op alone quantized.
    pub ppl_change: f64,
}

/// One evaluated point of the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// The most sensitive ops left in float.
    pub float_ops: usize,
    pub ppl_change: f64,
    pub meets: bool,
}

/// What the pass found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sensitivity {
    pub metric: String,
    /// The target relative perplexity change.
    pub target: f64,
    pub samples: usize,
    pub seq_len: usize,
    /// The first token of each window in the corpus.
    pub sample_starts: Vec<usize>,
    pub float_nll: f64,
    /// Most sensitive first.
    pub ranking: Vec<Ranked>,
    pub steps: Vec<Step>,
    /// Ops left in float by the search, by weight initializer (the names a decoder export
    /// of the same weights shares), most sensitive first.
    pub exclude: Vec<String>,
    pub elapsed_s: f64,
}

/// Next-token log-probabilities of one window: `[positions][vocab]`, flattened.
struct LogProbs {
    vocab: usize,
    values: Vec<f32>,
}

/// Mean NLL of each window's next tokens and, against `reference`, the mean KL. Each window
/// runs alone (batch 1, as the gate's perplexity runs): a dynamic scale is the whole input
/// tensor's, so windows batched together would share one and score another model.
fn evaluate(rt: &Runtime, model: &Path, windows: &[Vec<i64>], reference: Option<&[LogProbs]>) -> Result<(f64, f64, Vec<LogProbs>), QuantError> {
    let mut session = rt.session(model, &SessionOptions::default())?;
    let (mut nll, mut kl, mut n) = (0f64, 0f64, 0usize);
    let mut kept = Vec::new();
    for (w, ids) in windows.iter().enumerate() {
        let s = ids.len();
        let logits = session.run_prefill(ids, &vec![1; s], 1, s)?;
        let vocab = *logits.shape().last().unwrap_or(&0);
        let flat = logits.as_slice().ok_or_else(|| QuantError::Other("the logits are not contiguous".into()))?;
        let mut lp = Vec::with_capacity((s - 1) * vocab);
        for t in 0..s - 1 {
            let row = &flat[t * vocab..(t + 1) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            let target = ids[t + 1] as usize;
            if target >= vocab {
                return Err(QuantError::Other(format!(
                    "token id {target} is outside the model's vocabulary of {vocab}: the tokenizer does not match the model"
                )));
            }
            nll += lse - row[target] as f64;
            n += 1;
            let start = lp.len();
            lp.extend(row.iter().map(|&x| (x as f64 - lse) as f32));
            if let Some(r) = reference {
                let p = &r[w].values[t * r[w].vocab..(t + 1) * r[w].vocab];
                kl += p.iter().zip(&lp[start..]).map(|(&lp_ref, &lq)| (lp_ref as f64).exp() * (lp_ref as f64 - lq as f64)).sum::<f64>();
            }
        }
        if reference.is_none() {
            kept.push(LogProbs { vocab, values: lp });
        }
    }
    Ok((nll / n as f64, kl / n as f64, kept))
}

/// Writes the rewrite of `base` under `opts` to `dir/model.onnx`, sharing `base`'s data.
fn write_variant(base: &Model, opts: &Options, cal: Option<&Calibration>, dir: &Path) -> Result<std::path::PathBuf, QuantError> {
    let (proto, _) = rewrite::quantize(base, opts, cal)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| QuantError::Other(format!("creating `{}`: {e}", dir.display())))?;
    let dest = dir.join("model.onnx");
    edit::save_sharing_data(&proto, &dest, base)?;
    Ok(dest)
}

/// What the pass runs on.
pub(crate) struct Pass<'a> {
    pub rt: &'a Runtime,
    /// The float model, on disk, its weights external data.
    pub base: &'a Model,
    /// The rewrite every candidate model is made with.
    pub opts: &'a Options,
    pub calibration: Option<&'a Calibration>,
    /// Token windows, batch 1 each.
    pub windows: &'a [Vec<i64>],
    /// Where each window starts in the corpus (recorded, not read).
    pub sample_starts: &'a [usize],
    /// The relative perplexity change to meet.
    pub target: f64,
    /// Where candidate models are written.
    pub scratch: &'a Path,
}

/// The pass (module doc).
pub(crate) fn run(pass: &Pass<'_>, log: &mut dyn Write) -> Result<Sensitivity, QuantError> {
    let Pass { rt, base, opts, calibration: cal, windows, sample_starts, target, scratch } = *pass;
    let started = std::time::Instant::now();
    let (float_nll, _, reference) = evaluate(rt, &base.path, windows, None)?;
    let _ = writeln!(log, "sensitivity: float NLL {float_nll:.5} over {} windows", windows.len());
    let (_, plan) = rewrite::quantize(base, opts, cal)?;
    let mut ranking = Vec::with_capacity(plan.quantized.len());
    for (i, op) in plan.quantized.iter().enumerate() {
        let one = Options { only: Some(HashSet::from([op.name.clone()])), ..opts.clone() };
        let path = write_variant(base, &one, cal, &scratch.join("one"))?;
        let (nll, kl, _) = evaluate(rt, &path, windows, Some(&reference))?;
        let ppl_change = (nll - float_nll).exp() - 1.0;
        let _ = writeln!(log, "  [{}/{}] {} ({}): KL {kl:.3e}, PPL {:+.4}%", i + 1, plan.quantized.len(), op.name, op.weight, ppl_change * 100.0);
        ranking.push(Ranked { name: op.name.clone(), weight: op.weight.clone(), kl, ppl_change });
    }
    // Stable: equal divergences keep graph order.
    ranking.sort_by(|a, b| b.kl.total_cmp(&a.kl));

    let mut steps: Vec<Step> = Vec::new();
    let mut at = |k: usize, steps: &mut Vec<Step>| -> Result<bool, QuantError> {
        if let Some(s) = steps.iter().find(|s| s.float_ops == k) {
            return Ok(s.meets);
        }
        let mut exclude = opts.exclude.clone();
        exclude.extend(ranking[..k].iter().map(|r| r.weight.clone()));
        let path = write_variant(base, &Options { exclude, ..opts.clone() }, cal, &scratch.join("search"))?;
        let (nll, _, _) = evaluate(rt, &path, windows, None)?;
        let ppl_change = (nll - float_nll).exp() - 1.0;
        let meets = ppl_change <= target;
        let _ = writeln!(log, "  {k} most sensitive in float: PPL {:+.4}% ({})", ppl_change * 100.0, if meets { "meets" } else { "misses" });
        steps.push(Step { float_ops: k, ppl_change, meets });
        Ok(meets)
    };
    let n = ranking.len();
    let chosen = if n == 0 || at(0, &mut steps)? {
        0
    } else {
        // at(lo) misses, at(hi) meets (every op float is the float model).
        let (mut lo, mut hi) = (0, n);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if at(mid, &mut steps)? { hi = mid } else { lo = mid }
        }
        hi
    };
    steps.sort_by_key(|s| s.float_ops);
    let exclude = ranking[..chosen].iter().map(|r| r.weight.clone()).collect();
    Ok(Sensitivity {
        metric: "mean KL(float ‖ quantized) of next-token distributions per position".into(),
        target,
        samples: windows.len(),
        seq_len: windows.first().map_or(0, Vec::len),
        sample_starts: sample_starts.to_vec(),
        float_nll,
        ranking,
        steps,
        exclude,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
