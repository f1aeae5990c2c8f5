//! The `logit_diff` kind: how far one backend's logits are from a reference's, prompt by
//! prompt.
//!
//! ```toml
//! [[backends]]
//! name = "cpu-fp16"
//! precision = "fp16"
//!
//! [stages.logit_diff]
//! kind = "logit_diff"
//! matrix = ["backend"]
//! deps = { model = "out/export-{matrix.backend.precision}/prefill", reference_model = "out/export-fp32/prefill",
//!          tokenizer = "out/export-fp32/tokenizer.json", runtime = "ort/libonnxruntime.so.1.31.1" }
//! prompts = ["The capital of France is"]   # default: four fixed English prompts
//! ```
//!
//! ## The reference
//!
//! The reference is not another backend's node: it is the `reference_model` dep (the fp32
//! export) run inside this node by ONNX Runtime's CPU provider with its default options. That
//! keeps each node self-contained — its key holds its own backend and the reference's files,
//! and nothing of the other backends — and makes the reference the same for every backend.
//! `model` and `reference_model` are an ONNX file, or a directory holding `model.onnx` or
//! `prefill/model.onnx` (an `export` stage's variant directory or its whole output).
//!
//! Each prompt is tokenised with the `tokenizer` dep (special tokens added as the tokenizer
//! says) and run alone, batch 1, no padding, through the backend ([`crate::backend::open`],
//! which also probes what really ran) and through the reference.
//!
//! ## Outputs
//!
//! `logit_diff.json`: `backend` (name), `backend_spec`, `status` (`ok` | `degraded`),
//! `reason` (why degraded, else null), `model`, `reference` (`model`, `provider`),
//! `capability` (the backend's [`crate::backend::Capability`], `providers_assigned`
//! included; null when the backend did not open), `prompts` (per prompt: `prompt`, `tokens`,
//! `last_token` and `all_positions`), `overall` (`last_token`, `all_positions`). Each
//! `last_token`/`all_positions` holds `mean_abs_diff`, `max_abs_diff` and
//! `argmax_agreement_rate` (the share of positions, or of prompts for the overall last
//! token, whose top logit is the same token); a prompt's `last_token` also holds `argmax`
//! and `reference_argmax`. Overall means are over all logits, so every position weighs the
//! same. A degraded node has the same shape with every number null.
//!
//! `logit_diff.csv`: one row per prompt and an `overall` row: `backend,prompt,tokens,
//! last_mean_abs_diff,last_max_abs_diff,last_argmax_agreement_rate,all_mean_abs_diff,
//! all_max_abs_diff,all_argmax_agreement_rate`; a null number is an empty cell.

use std::io::Write;
use std::path::Path;

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::logit_diff::{self as artifact, Diff, LastToken, Overall, PromptDiff, Reference};
use crate::backend::{self, BackendError, BackendSpec};
use crate::pipeline::NodeSpec;
use crate::runtime::{self, SessionOptions};

pub(crate) struct LogitDiff;

const FIELDS: &[&str] = &["prompts"];

/// The lowered config: the matrix's backend as declared, and the prompts, the defaults filled in.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    backend: Value,
    prompts: Vec<String>,
}

/// Prompts when the stage names none: short, plain English, different in shape.
pub(crate) const DEFAULT_PROMPTS: [&str; 4] =
    ["The capital of France is", "Once upon a time, there was a little girl who", "def fibonacci(n):", "The quick brown fox jumps over the lazy dog because"];

const REQUIRED_DEPS: &[(&str, &str)] = &[
    ("model", "the backend's model: an ONNX file or an export directory"),
    ("reference_model", "the fp32 export the backend is compared with"),
    ("tokenizer", "a tokenizer.json"),
];

impl Kind for LogitDiff {
    const NAME: &'static str = "logit_diff";
    const FIELDS: &'static [&'static str] = FIELDS;
    const READS_MATRIX: bool = true;

    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str> {
        let mut sets = vec!["stage", "logit_diff", "tokenizer"];
        sets.extend(super::backend_sets(node));
        sets
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let prompts: Vec<String> = match cx.fields.get("prompts") {
            None => DEFAULT_PROMPTS.iter().map(|p| p.to_string()).collect(),
            Some(Value::Array(a)) if !a.is_empty() => {
                let mut out = Vec::new();
                for (i, v) in a.iter().enumerate() {
                    match v.as_str() {
                        Some(s) if !s.is_empty() => out.push(s.to_string()),
                        _ => errors.push(LowerError {
                            field: vec!["prompts".into(), i.to_string()],
                            message: format!("a prompt must be a non-empty string, found {v}"),
                            help: None,
                        }),
                    }
                }
                out
            }
            Some(v) => {
                errors.push(LowerError {
                    field: vec!["prompts".into()],
                    message: format!("`prompts` must be a non-empty list of strings, found {v}"),
                    help: None,
                });
                Vec::new()
            }
        };
        let backend = match super::backend_of(cx, "logit_diff") {
            Ok(_) => cx.matrix["backend"].clone(),
            Err(errs) => {
                errors.extend(errs);
                Value::Null
            }
        };
        for (dep, what) in REQUIRED_DEPS {
            if !cx.deps.iter().any(|d| d == dep) {
                errors.push(LowerError {
                    field: vec!["deps".into()],
                    message: format!("a `logit_diff` stage needs a dep named `{dep}` ({what})"),
                    help: Some("deps = { model = \"out/export-fp16/prefill\", reference_model = \"out/export-fp32/prefill\", tokenizer = \"out/export-fp32/tokenizer.json\" }".into()),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(serde_json::to_value(Config { backend, prompts }).expect("a config is JSON"))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("report".into(), "logit_diff.json".into()), ("table".into(), "logit_diff.csv".into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        // The config holds the backend for the key; the node holds it validated.
        let Config { prompts, .. } = Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let spec = BackendSpec::clone(cx.node.backend.as_deref().ok_or(StageError::NoBackend)?);
        let dep = |name: &str| cx.deps.get(name).and_then(|p| p.first()).map(|p| cx.root.join(p));
        let model = super::backend_model(&spec, &dep("model").ok_or_else(|| StageError::NoDep("model".into()))?)?;
        let reference_model = super::onnx_file(&dep("reference_model").ok_or_else(|| StageError::NoDep("reference_model".into()))?)?;
        let tokenizer_path = dep("tokenizer").ok_or_else(|| StageError::NoDep("tokenizer".into()))?;
        let library = backend::library(dep("runtime").as_deref()).map_err(|e| e.to_string())?;

        let tokenizer = crate::tokenizer::load_tokenizer_json(&tokenizer_path).map_err(|e| e.to_string())?;
        let mut encoded = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let enc = tokenizer.encode(p.as_str(), true).map_err(|e| format!("tokenising {p:?} with `{}`: {e}", tokenizer_path.display()))?;
            let ids: Vec<i64> = enc.get_ids().iter().map(|&id| i64::from(id)).collect();
            if ids.is_empty() {
                return Err(format!("prompt {p:?} has no tokens under `{}`", tokenizer_path.display()).into());
            }
            encoded.push(ids);
        }

        let rel = |p: &Path| p.strip_prefix(cx.root).unwrap_or(p).display().to_string();
        let mut report = artifact::LogitDiff {
            backend: spec.name.clone(),
            backend_spec: spec.clone(),
            status: "ok".into(),
            reason: None,
            model: rel(&model),
            reference: Reference { model: rel(&reference_model), provider: "cpu".into() },
            capability: None,
            prompts: prompts.iter().zip(&encoded).map(|(p, ids)| PromptDiff::empty(p, ids.len())).collect(),
            overall: Overall::default(),
        };

        let outcome = match backend::open(&spec, &model, &library) {
            Err(BackendError::Unavailable(reason)) => Outcome::Degraded(reason),
            Err(BackendError::Failed(e)) => return Err(e.into()),
            Ok(mut b) => {
                report.capability = Some(b.capability().clone());
                let _ = writeln!(cx.log, "backend `{}`: providers assigned {:?}", spec.name, b.capability().providers_assigned);
                match b.capability().degradation() {
                    Some(reason) => Outcome::Degraded(reason),
                    None => {
                        let rt = runtime::init(Some(&library)).map_err(|e| e.to_string())?;
                        let mut reference = rt.session(&reference_model, &SessionOptions::default()).map_err(|e| e.to_string())?;
                        let mut totals = Totals::default();
                        for (row, ids) in report.prompts.iter_mut().zip(&encoded) {
                            let mask = vec![1i64; ids.len()];
                            let got = b.prefill(ids, &mask, 1, ids.len()).map_err(|e| e.to_string())?;
                            let want = reference.run_prefill(ids, &mask, 1, ids.len()).map_err(|e| e.to_string())?;
                            *row = compare(&row.prompt, &got, &want, &mut totals)?;
                        }
                        report.overall = totals.overall(report.prompts.len());
                        Outcome::Ok
                    }
                }
            }
        };
        if let Outcome::Degraded(reason) = &outcome {
            let _ = writeln!(cx.log, "degraded: {reason}");
            report.status = "degraded".into();
            report.reason = Some(reason.clone());
        }

        let bytes = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(cx.root.join(&cx.outs["report"]), bytes).map_err(|e| format!("writing logit_diff.json: {e}"))?;
        std::fs::write(cx.root.join(&cx.outs["table"]), csv(&report)).map_err(|e| format!("writing logit_diff.csv: {e}"))?;
        Ok(outcome)
    }
}

/// Running sums over every prompt.
#[derive(Default)]
struct Totals {
    last_sum: f64,
    last_n: usize,
    last_max: f64,
    last_agree: usize,
    all_sum: f64,
    all_n: usize,
    all_max: f64,
    all_agree: usize,
    positions: usize,
}

impl Totals {
    fn overall(&self, prompts: usize) -> Overall {
        let rate = |k: usize, n: usize| if n == 0 { None } else { Some(k as f64 / n as f64) };
        Overall {
            last_token: Diff {
                mean_abs_diff: rate_f(self.last_sum, self.last_n),
                max_abs_diff: Some(self.last_max),
                argmax_agreement_rate: rate(self.last_agree, prompts),
            },
            all_positions: Diff {
                mean_abs_diff: rate_f(self.all_sum, self.all_n),
                max_abs_diff: Some(self.all_max),
                argmax_agreement_rate: rate(self.all_agree, self.positions),
            },
        }
    }
}

fn rate_f(sum: f64, n: usize) -> Option<f64> {
    if n == 0 { None } else { Some(sum / n as f64) }
}

/// The first index of the largest value; NaN never wins.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// One prompt's logits `[1, seq, vocab]` from the backend (`got`) and the reference (`want`).
fn compare(prompt: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, totals: &mut Totals) -> Result<PromptDiff, String> {
    if got.shape() != want.shape() || got.ndim() != 3 || got.shape()[0] != 1 {
        return Err(format!("prompt {prompt:?}: the backend's logits are {:?} but the reference's are {:?}", got.shape(), want.shape()));
    }
    let (seq, vocab) = (got.shape()[1], got.shape()[2]);
    let (g, w) = (got.as_slice().map(<[f32]>::to_vec), want.as_slice().map(<[f32]>::to_vec));
    let (g, w) = (g.unwrap_or_else(|| got.iter().copied().collect()), w.unwrap_or_else(|| want.iter().copied().collect()));
    let (mut sum, mut max, mut agree) = (0.0f64, 0.0f64, 0usize);
    let (mut last_sum, mut last_max) = (0.0f64, 0.0f64);
    let mut last_argmax = (0, 0);
    for t in 0..seq {
        let (gr, wr) = (&g[t * vocab..(t + 1) * vocab], &w[t * vocab..(t + 1) * vocab]);
        let (mut row_sum, mut row_max) = (0.0f64, 0.0f64);
        for (a, b) in gr.iter().zip(wr) {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            row_sum += d;
            // NaN counts as the worst difference there is.
            row_max = if d.is_nan() { f64::INFINITY } else { row_max.max(d) };
        }
        sum += row_sum;
        max = max.max(row_max);
        let (ag, aw) = (argmax(gr), argmax(wr));
        agree += usize::from(ag == aw);
        if t + 1 == seq {
            (last_sum, last_max, last_argmax) = (row_sum, row_max, (ag, aw));
        }
    }
    let last_agrees = last_argmax.0 == last_argmax.1;
    totals.last_sum += last_sum;
    totals.last_n += vocab;
    totals.last_max = totals.last_max.max(last_max);
    totals.last_agree += usize::from(last_agrees);
    totals.all_sum += sum;
    totals.all_n += seq * vocab;
    totals.all_max = totals.all_max.max(max);
    totals.all_agree += agree;
    totals.positions += seq;
    Ok(PromptDiff {
        prompt: prompt.to_string(),
        tokens: seq,
        last_token: LastToken {
            diff: Diff {
                mean_abs_diff: Some(last_sum / vocab as f64),
                max_abs_diff: Some(last_max),
                argmax_agreement_rate: Some(if last_agrees { 1.0 } else { 0.0 }),
            },
            argmax: Some(last_argmax.0),
            reference_argmax: Some(last_argmax.1),
        },
        all_positions: Diff {
            mean_abs_diff: Some(sum / (seq * vocab) as f64),
            max_abs_diff: Some(max),
            argmax_agreement_rate: Some(agree as f64 / seq as f64),
        },
    })
}

/// `logit_diff.csv`.
fn csv(report: &artifact::LogitDiff<BackendSpec>) -> String {
    let mut out = String::from(
        "backend,prompt,tokens,last_mean_abs_diff,last_max_abs_diff,last_argmax_agreement_rate,all_mean_abs_diff,all_max_abs_diff,all_argmax_agreement_rate\n",
    );
    let num = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let row = |out: &mut String, prompt: &str, tokens: String, last: &Diff, all: &Diff| {
        out.push_str(&format!(
            "{},{},{tokens},{},{},{},{},{},{}\n",
            super::output::csv_field(&report.backend),
            super::output::csv_field(prompt),
            num(last.mean_abs_diff),
            num(last.max_abs_diff),
            num(last.argmax_agreement_rate),
            num(all.mean_abs_diff),
            num(all.max_abs_diff),
            num(all.argmax_agreement_rate)
        ));
    };
    for p in &report.prompts {
        row(&mut out, &p.prompt, p.tokens.to_string(), &p.last_token.diff, &p.all_positions);
    }
    let tokens: usize = report.prompts.iter().map(|p| p.tokens).sum();
    row(&mut out, "overall", tokens.to_string(), &report.overall.last_token, &report.overall.all_positions);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn diff_of_known_logits() {
        // Two positions, vocabulary 3.
        let want = ArrayD::from_shape_vec(IxDyn(&[1, 2, 3]), vec![1.0, 2.0, 3.0, 0.0, 5.0, 1.0]).unwrap();
        let got = ArrayD::from_shape_vec(IxDyn(&[1, 2, 3]), vec![1.5, 2.0, 3.0, 0.0, 4.0, 4.5]).unwrap();
        let mut totals = Totals::default();
        let d = compare("p", &got, &want, &mut totals).unwrap();
        assert_eq!(d.last_token.diff.max_abs_diff, Some(3.5));
        assert_eq!(d.last_token.diff.mean_abs_diff, Some(4.5 / 3.0));
        assert_eq!((d.last_token.argmax, d.last_token.reference_argmax), (Some(2), Some(1)));
        assert_eq!(d.last_token.diff.argmax_agreement_rate, Some(0.0));
        assert_eq!(d.all_positions.mean_abs_diff, Some(5.0 / 6.0));
        assert_eq!(d.all_positions.argmax_agreement_rate, Some(0.5));
        let o = totals.overall(1);
        assert_eq!(o.all_positions.max_abs_diff, Some(3.5));
        assert_eq!(o.last_token.argmax_agreement_rate, Some(0.0));
    }

    #[test]
    fn shapes_that_differ_are_an_error() {
        let a = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 3]));
        let b = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 4]));
        assert!(compare("p", &a, &b, &mut Totals::default()).is_err());
    }
}
