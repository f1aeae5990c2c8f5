//! The `perplexity` kind: one backend's perplexity over a corpus, by sliding windows.
//!
//! ```toml
//! [[backends]]
//! name = "ort-cpu"
//! provider = "cpu"
//!
//! [stages.perplexity]
//! kind = "perplexity"
//! matrix = ["backend"]                 # required: one node per backend
//! deps = { model = "out/export/prefill", tokenizer = "out/export/tokenizer.json",
//!          corpus = "data/wiki.txt", runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! context = 1024                       # tokens a window holds (default 1024)
//! stride = 512                         # how far windows move (default context / 2)
//! max_tokens = 50000                   # score only the corpus's first N tokens (default: all)
//! strip = true                         # drop `<doc …>` / `</doc>` lines (default true)
//! batch = 1                            # windows per forward pass (default 1)
//! ```
//!
//! `model` is an export variant directory holding `model.onnx` (or a `.onnx` file); `runtime`
//! is the ONNX Runtime library, else `ORT_DYLIB_PATH` (declare `facets = ["ort"]` so that a
//! changed library reruns the node).
//!
//! The windows are Hugging Face's sliding-window perplexity: the whole text is tokenised
//! once (no special tokens added); windows begin at `0, stride, 2·stride, …` and hold
//! `tokens[begin .. min(begin + context, N)]`; the last window is the one that reaches `N`.
//! A window scores only the targets the previous window did not: the last `end − prev_end`
//! positions, never its own first position (which nothing in the window predicts). So with
//! `stride < context` every token but the corpus's first is scored exactly once, each with at
//! least `context − stride` tokens of left context; with `stride = context` the first token of
//! each window goes unscored, as in Hugging Face's recipe. The NLL of target `t` is
//! `−log_softmax(logits[t − 1])[token[t]]`, in f64.
//!
//! Outputs `perplexity.json` ([`crate::artifact::perplexity::Perplexity`]) and `perplexity.csv`
//! (one row of the same scalar fields):
//!
//! | field            | meaning                                                                |
//! |------------------|------------------------------------------------------------------------|
//! | `backend`, `precision`, `provider` | the backend as declared                              |
//! | `capability`     | what really ran (runtime version, library digest, providers offered)  |
//! | `context`, `stride`, `batch` | the windowing                                              |
//! | `corpus_tokens`  | tokens of the corpus after stripping and `max_tokens`                  |
//! | `windows`, `tokens_scored` | windows run, targets scored                                  |
//! | `mean_nll`, `ppl`| mean negative log-likelihood (nats) and `exp(mean_nll)`               |
//! | `vocab_size`, `ln_vocab`, `uniform_ppl` | the sanity line: a model that knew nothing scores `ppl = vocab_size` |
//! | `status`, `reason` | `ok`, or `degraded` with why; a degraded result has null numbers    |
//!
//! No timing: a perplexity is a function of the model, the corpus and the runtime, and the
//! node's key says so — no machine facet. A tokens-per-second figure would be a fact about the
//! machine that ran it, shown for every machine the cached result is shared with, and would
//! make every rerun a different file, so that the gate and the report behind it could never
//! be cache hits when the perplexity comes out the same. Throughput is the `sweep` kind's, whose
//! stages declare the machine facets; the wall time of the scoring is in the node's log.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::perplexity::Perplexity as Report;
use crate::backend::{self, BackendError, BackendSpec};
use crate::pipeline::NodeSpec;

pub(crate) struct Perplexity;

const FIELDS: &[&str] = &["context", "stride", "max_tokens", "strip", "batch"];

/// The file names of the kind's implied outputs.
pub(crate) const JSON_OUT: &str = "perplexity.json";
pub(crate) const CSV_OUT: &str = "perplexity.csv";

impl Kind for Perplexity {
    const NAME: &'static str = "perplexity";
    const FIELDS: &'static [&'static str] = FIELDS;
    const READS_MATRIX: bool = true;

    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str> {
        let mut sets = vec!["stage", "perplexity", "tokenizer"];
        sets.extend(super::backend_sets(node));
        sets
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let context = super::positive_field(f, "context", Some(1024), &mut errors).unwrap_or(1024);
        if context < 2 {
            errors.push(LowerError::on("context", "`context` must be at least 2: a window of one token predicts nothing".into(), None));
        }
        let stride = super::positive_field(f, "stride", Some((context / 2).max(1)), &mut errors).unwrap_or(1);
        if stride > context {
            errors.push(LowerError::on(
                "stride",
                format!("`stride` ({stride}) is larger than `context` ({context}): tokens between windows would never be scored"),
                Some(format!("use a stride of at most {context}")),
            ));
        }
        let max_tokens = super::positive_field(f, "max_tokens", None, &mut errors);
        let strip = super::bool_field(f, "strip", true, &mut errors);
        let batch = super::positive_field(f, "batch", Some(1), &mut errors).unwrap_or(1);

        for (dep, what) in [("model", "an export variant directory or a .onnx file"), ("tokenizer", "a tokenizer.json"), ("corpus", "a UTF-8 text file")] {
            if !cx.deps.iter().any(|d| d == dep) {
                errors.push(LowerError {
                    field: vec!["deps".into()],
                    message: format!("a `perplexity` stage needs a dep named `{dep}` ({what})"),
                    help: Some("deps = { model = \"out/export/prefill\", tokenizer = \"out/export/tokenizer.json\", corpus = \"data/corpus.txt\" }".into()),
                });
            }
        }
        if let Err(errs) = super::backend_of(cx, "perplexity") {
            errors.extend(errs);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(json!({ "context": context, "stride": stride, "max_tokens": max_tokens, "strip": strip, "batch": batch }))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("result".into(), JSON_OUT.into()), ("csv".into(), CSV_OUT.into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let c = &cx.node.config;
        let settings = Windowing {
            context: c["context"].as_u64().unwrap_or(1024) as usize,
            stride: c["stride"].as_u64().unwrap_or(512) as usize,
            batch: c["batch"].as_u64().unwrap_or(1) as usize,
        };
        let spec = cx.node.backend.clone().ok_or(StageError::NoBackend)?;
        let dep = |name: &str| cx.deps.get(name).and_then(|p| p.first()).map(|p| cx.root.join(p));
        let model = super::backend_model(&spec, &dep("model").ok_or_else(|| StageError::NoDep("model".into()))?)?;
        let tokenizer_path = dep("tokenizer").ok_or_else(|| StageError::NoDep("tokenizer".into()))?;
        let corpus_path = dep("corpus").ok_or_else(|| StageError::NoDep("corpus".into()))?;

        let mut ids = super::corpus::corpus_ids(&corpus_path, &tokenizer_path, c["strip"].as_bool().unwrap_or(true))?;
        if let Some(max) = c["max_tokens"].as_u64() {
            ids.truncate(max as usize);
        }
        let _ = writeln!(cx.log, "corpus `{}`: {} tokens; context {}, stride {}", corpus_path.display(), ids.len(), settings.context, settings.stride);
        if ids.len() < 2 {
            return Err(format!("the corpus `{}` has {} token(s); perplexity needs at least 2", corpus_path.display(), ids.len()).into());
        }

        let mut report = new_report(&spec, &settings, ids.len());
        let library = backend::library(dep("runtime").as_deref()).map_err(|e| e.to_string())?;
        let outcome = match score(&spec, &model, &library, &ids, &settings, &mut report, cx.log) {
            Ok(()) => Outcome::Ok,
            Err(BackendError::Unavailable(reason)) => {
                let _ = writeln!(cx.log, "degraded: {reason}");
                degrade(&mut report, reason.clone());
                Outcome::Degraded(reason)
            }
            Err(BackendError::Failed(e)) => return Err(e.into()),
        };
        // Straight from the struct, not through `to_value`: the keys stay in field order.
        super::output::write_json(&cx.root.join(&cx.outs["result"]), &report)?;
        write_csv(&cx.root.join(&cx.outs["csv"]), &csv_row(&report))?;
        Ok(outcome)
    }
}

/// How a corpus is cut into windows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windowing {
    pub context: usize,
    pub stride: usize,
    pub batch: usize,
}

/// One window: the tokens `begin..end` go through the model; targets `first_target..end`
/// are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub begin: usize,
    pub end: usize,
    pub first_target: usize,
}

/// The windows over `n` tokens (see the module docs).
pub(crate) fn windows(n: usize, context: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < n {
        let end = (begin + context).min(n);
        // The last `end - prev_end` positions are new; position `begin` has no prediction.
        let first_target = prev_end.max(begin + 1);
        out.push(Window { begin, end, first_target });
        prev_end = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    out
}

/// A report with the backend and the windowing, and no numbers yet.
fn new_report(spec: &BackendSpec, w: &Windowing, corpus_tokens: usize) -> Report {
    Report {
        backend: spec.name.clone(),
        precision: spec.precision.clone(),
        provider: spec.provider.name().to_string(),
        capability: None,
        context: w.context,
        stride: w.stride,
        batch: w.batch,
        corpus_tokens,
        windows: None,
        tokens_scored: None,
        mean_nll: None,
        ppl: None,
        vocab_size: None,
        ln_vocab: None,
        uniform_ppl: None,
        status: "ok".into(),
        reason: None,
    }
}

/// No number of a run that did not happen survives.
fn degrade(r: &mut Report, reason: String) {
    (r.windows, r.tokens_scored, r.vocab_size) = (None, None, None);
    (r.mean_nll, r.ppl, r.ln_vocab, r.uniform_ppl) = (None, None, None, None);
    r.status = "degraded".into();
    r.reason = Some(reason);
}

/// The line of `perplexity.csv`: the scalar fields of `perplexity.json`.
fn csv_row(r: &Report) -> Vec<(&'static str, String)> {
    let n = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    let u = |v: Option<usize>| v.map_or(String::new(), |x| x.to_string());
    vec![
        ("backend", r.backend.clone()),
        ("precision", r.precision.clone()),
        ("provider", r.provider.clone()),
        ("runtime_version", r.capability.as_ref().map_or(String::new(), |c| c.runtime_version.clone())),
        ("context", r.context.to_string()),
        ("stride", r.stride.to_string()),
        ("batch", r.batch.to_string()),
        ("corpus_tokens", r.corpus_tokens.to_string()),
        ("windows", u(r.windows)),
        ("tokens_scored", u(r.tokens_scored)),
        ("mean_nll", n(r.mean_nll)),
        ("ppl", n(r.ppl)),
        ("vocab_size", u(r.vocab_size)),
        ("ln_vocab", n(r.ln_vocab)),
        ("uniform_ppl", n(r.uniform_ppl)),
        ("status", r.status.clone()),
        ("reason", r.reason.clone().unwrap_or_default()),
    ]
}

/// Runs every window through the backend and fills the report's numbers.
fn score(
    spec: &BackendSpec,
    model: &Path,
    library: &Path,
    ids: &[u32],
    w: &Windowing,
    report: &mut Report,
    log: &mut std::fs::File,
) -> Result<(), BackendError> {
    let mut backend = backend::open(spec, model, library)?;
    report.capability = Some(backend.capability().clone());
    let all = windows(ids.len(), w.context, w.stride);
    let start = Instant::now();
    let (mut total, mut scored, mut vocab) = (0.0f64, 0usize, 0usize);
    for group in all.chunks(w.batch.max(1)) {
        let seq = group.iter().map(|x| x.end - x.begin).max().unwrap_or(0);
        let mut input = Vec::with_capacity(group.len() * seq);
        let mut mask = Vec::with_capacity(group.len() * seq);
        for win in group {
            let len = win.end - win.begin;
            input.extend(ids[win.begin..win.end].iter().map(|&t| i64::from(t)));
            // Right padding: causal attention keeps it out of every real position.
            input.extend(std::iter::repeat_n(0, seq - len));
            mask.extend(std::iter::repeat_n(1, len));
            mask.extend(std::iter::repeat_n(0, seq - len));
        }
        let logits = backend.prefill(&input, &mask, group.len(), seq)?;
        let shape = logits.shape().to_vec();
        if shape.len() != 3 || shape[0] != group.len() || shape[1] != seq {
            return Err(BackendError::Failed(format!("the model returned logits of shape {shape:?}, expected [{}, {seq}, vocab]", group.len())));
        }
        vocab = shape[2];
        for (b, win) in group.iter().enumerate() {
            for (t, &id) in ids.iter().enumerate().take(win.end).skip(win.first_target) {
                let target = id as usize;
                if target >= vocab {
                    return Err(BackendError::Failed(format!(
                        "token id {target} is outside the model's vocabulary of {vocab}: the tokenizer does not match the model"
                    )));
                }
                let pos = t - 1 - win.begin;
                let row = (0..vocab).map(|v| f64::from(logits[[b, pos, v]]));
                let max = row.clone().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.map(|x| (x - max).exp()).sum::<f64>().ln();
                let nll = lse - f64::from(logits[[b, pos, target]]);
                if !nll.is_finite() {
                    return Err(BackendError::Failed(format!("the NLL of token {t} is {nll}: the model's logits are not finite")));
                }
                total += nll;
                scored += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mean = total / scored as f64;
    let rate = if elapsed > 0.0 { scored as f64 / elapsed } else { 0.0 };
    let _ = writeln!(log, "{} windows, {scored} targets, mean NLL {mean:.6}, ppl {:.4} in {elapsed:.2}s ({rate:.1} targets/s)", all.len(), mean.exp());
    report.windows = Some(all.len());
    report.tokens_scored = Some(scored);
    report.mean_nll = Some(mean);
    report.ppl = Some(mean.exp());
    report.vocab_size = Some(vocab);
    report.ln_vocab = Some((vocab as f64).ln());
    report.uniform_ppl = Some(vocab as f64);
    Ok(())
}

fn write_csv(path: &Path, row: &[(&'static str, String)]) -> Result<(), String> {
    super::output::write_csv_rows(path, &[row.to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_but_the_first_is_scored_once_when_windows_overlap() {
        for (n, context, stride) in [(10, 4, 2), (11, 4, 3), (9, 4, 1), (3, 8, 4)] {
            let mut seen = vec![0; n];
            for w in windows(n, context, stride) {
                for count in &mut seen[w.first_target..w.end] {
                    *count += 1;
                }
            }
            assert_eq!(seen[0], 0);
            assert!(seen[1..].iter().all(|&c| c == 1), "{n} {context} {stride}: {seen:?}");
        }
    }
}
