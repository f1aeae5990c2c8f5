//! The `calibrate` kind: INT8 ranges of a model's activations, from the fp32 `prefill` export
//! run over samples of a corpus.
//!
//! ```toml
//! [stages.calibrate]
//! kind = "calibrate"
//! deps = { model = "out/export/prefill", tokenizer = "out/export/tokenizer.json",
//!          corpus = "out/calibration/tiny.utf8", runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! method = "entropy"        # minmax | percentile | entropy (default, TensorRT's EntropyCalibration2)
//! percentile = 99.99        # with method = "percentile" (default 99.99)
//! samples = 64              # calibration windows (default 64)
//! seq_len = 256             # tokens per window (default 256)
//! seed = 0                  # which windows (default 0)
//! strip = true              # drop `<doc …>` / `</doc>` lines of the corpus (default true)
//! trt_version = "8.6.1"     # the TensorRT the cache's header names (default 8.6.1)
//! ```
//!
//! `model` is an export variant directory holding `model.onnx` (or a `.onnx` file); `runtime`
//! is the ONNX Runtime library, else `ORT_DYLIB_PATH`.
//!
//! The corpus is tokenised whole (no special tokens added); each sample is `seq_len`
//! consecutive tokens starting at a position drawn uniformly from `0 ..= N − seq_len` by a
//! SplitMix64 generator seeded with `seed` (windows may overlap). Every sample runs alone
//! (batch 1, attention mask all ones) through a copy of the model whose graph also outputs
//! the inputs of every MatMul/Gemm ([`crate::quant::observe`]), on ONNX Runtime's CPU provider
//! with its default optimisations. The numerics (two passes for the histogram methods, the
//! entropy search, the cache format and the version string) are documented in
//! [`crate::quant::calibrate`].
//!
//! ## Which method
//!
//! The default is `entropy` because it is TensorRT's calibrator and what its cache names.
//! It is not always the best choice for ONNX Runtime's static INT8. On SmolLM2-135M
//! (`bench/int8.sh`: 32 windows of 256 TinyStories tokens; perplexity on the first 4096
//! tokens of the wiki corpus, fp32 16.92), quantizing every weight MatMul scored PPL 499.3
//! with `entropy`, 41.4 with `minmax` and 24.6 with `percentile = 99.999`. The inputs of the
//! MLP down-projections (SwiGLU products) reach |x| ≈ 3325 while most of their values are
//! below 1; the entropy search keeps a median 12% of their range and saturates the outliers
//! that carry the signal. For such a model use `percentile`, or keep `*ffn_down*` in float
//! with `quantize`'s `exclude` (PPL 19.3 with `percentile = 99.999`).
//!
//! Outputs:
//!
//! `calibration.cache`: TensorRT's calibration cache, `TRT-<version>-<algorithm>` then
//! `<tensor>: <hex of the float32 scale>` per tensor, in the order of `calibration.json`.
//!
//! `calibration.json` ([`crate::quant::calibrate::Calibration`]):
//!
//! | field            | meaning                                                                |
//! |------------------|------------------------------------------------------------------------|
//! | `method`, `percentile` | how `amax` was chosen                                            |
//! | `bins`, `levels` | histogram bins (null for `minmax`), INT8 magnitude levels (128)        |
//! | `samples`, `seq_len`, `seed`, `corpus_tokens`, `sample_starts` | the samples, exactly  |
//! | `model_file`, `model_digest` | the model calibrated: blake3 of `model.onnx` then its external data; `quantize` refuses a calibration of another model |
//! | `runtime_version`| ONNX Runtime that ran the samples                                      |
//! | `cache_header`   | the cache's first line                                                 |
//! | `elapsed_s`      | wall time of the forward passes and statistics                         |
//! | `tensors[]`      | per tensor, in the order the graph first uses it: `name`, `consumers` (`node`, `op`, `input` index, `weight` initializer of the op when it has one), `min`, `max`, `absmax`, `amax` (the chosen range), `scale` (`amax / 127`), `scale_hex` (as in the cache), `method`, `samples` (samples it was seen in), `elements` (values seen), `entropy_bins` and `entropy_kl` (entropy only: bins kept, divergence there) |

use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::onnx::edit::Model;
use crate::pipeline::NodeSpec;
use crate::quant::calibrate::{self, Calibration, Method};
use crate::quant::observe;

pub(crate) struct Calibrate;

const FIELDS: &[&str] = &["method", "percentile", "samples", "seq_len", "seed", "strip", "trt_version"];
const METHODS: [&str; 3] = ["minmax", "percentile", "entropy"];

pub(crate) const JSON_OUT: &str = "calibration.json";
pub(crate) const CACHE_OUT: &str = "calibration.cache";

/// The lowered config, every default filled in.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    /// One of [`METHODS`].
    method: String,
    /// Set for `percentile` only, null otherwise.
    percentile: Option<f64>,
    samples: u64,
    seq_len: u64,
    seed: u64,
    strip: bool,
    trt_version: String,
}

impl Kind for Calibrate {
    const NAME: &'static str = "calibrate";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "calibrate", "tokenizer", "onnxruntime"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let method = match f.get("method") {
            None => "entropy".to_string(),
            Some(Value::String(s)) if METHODS.contains(&s.as_str()) => s.clone(),
            Some(v) => {
                let help = v.as_str().and_then(|s| crate::diag::suggest(s, METHODS)).or(Some("one of `minmax`, `percentile`, `entropy`".into()));
                let shown = v.as_str().map_or_else(|| v.to_string(), |s| format!("`{s}`"));
                errors.push(LowerError::on("method", format!("unknown calibration method {shown}"), help));
                "entropy".to_string()
            }
        };
        let percentile = match f.get("percentile") {
            None if method == "percentile" => Some(99.99),
            None => None,
            Some(_) if method != "percentile" => {
                errors.push(LowerError::on(
                    "percentile",
                    format!("`percentile` applies to `method = \"percentile\"`, not `{method}`"),
                    Some("remove it, or set `method = \"percentile\"`".into()),
                ));
                None
            }
            Some(v) => match v.as_f64() {
                Some(p) if p > 0.0 && p <= 100.0 => Some(p),
                _ => {
                    errors.push(LowerError::on("percentile", format!("`percentile` must be a number in (0, 100], found {v}"), None));
                    None
                }
            },
        };
        let samples = super::positive_field(f, "samples", Some(64), &mut errors).unwrap_or(64);
        let seq_len = super::positive_field(f, "seq_len", Some(256), &mut errors).unwrap_or(256);
        let seed = match f.get("seed") {
            None => 0,
            Some(v) => v.as_u64().unwrap_or_else(|| {
                errors.push(LowerError::on("seed", format!("`seed` must be a non-negative integer, found {v}"), None));
                0
            }),
        };
        let strip = super::bool_field(f, "strip", true, &mut errors);
        let trt_version = match f.get("trt_version") {
            None => "8.6.1".to_string(),
            Some(Value::String(s)) => {
                if let Err(e) = calibrate::trt_version_code(s) {
                    errors.push(LowerError::on("trt_version", format!("`trt_version` {e}"), Some("e.g. \"8.6.1\" or \"10.3.0\"".into())));
                }
                s.clone()
            }
            Some(v) => {
                errors.push(LowerError::on("trt_version", format!("`trt_version` must be a string like \"8.6.1\", found {v}"), None));
                String::new()
            }
        };
        for (dep, what) in
            [("model", "the fp32 `prefill` export directory or a .onnx file"), ("tokenizer", "a tokenizer.json"), ("corpus", "a UTF-8 text file")]
        {
            if !cx.deps.iter().any(|d| d == dep) {
                errors.push(LowerError {
                    field: vec!["deps".into()],
                    message: format!("a `calibrate` stage needs a dep named `{dep}` ({what})"),
                    help: Some(
                        "deps = { model = \"out/export/prefill\", tokenizer = \"out/export/tokenizer.json\", corpus = \"out/calibration/tiny.utf8\" }".into(),
                    ),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(serde_json::to_value(Config { method, percentile, samples, seq_len, seed, strip, trt_version }).expect("a config is JSON"))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("calibration".into(), JSON_OUT.into()), ("cache".into(), CACHE_OUT.into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let c = Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let method = match (c.method.as_str(), c.percentile) {
            ("minmax", _) => Method::MinMax,
            ("percentile", Some(p)) => Method::Percentile(p),
            ("percentile", None) => return Err("the lowered config has `method = \"percentile\"` and no `percentile`".into()),
            _ => Method::Entropy,
        };
        let (samples, seq_len, seed) = (c.samples as usize, c.seq_len as usize, c.seed);
        let version_code = calibrate::trt_version_code(&c.trt_version)?;
        let dep = |name: &str| cx.deps.get(name).and_then(|p| p.first()).map(|p| cx.root.join(p));
        let model_path = super::onnx_file(&dep("model").ok_or_else(|| StageError::NoDep("model".into()))?)?;
        let tokenizer_path = dep("tokenizer").ok_or_else(|| StageError::NoDep("tokenizer".into()))?;
        let corpus_path = dep("corpus").ok_or_else(|| StageError::NoDep("corpus".into()))?;

        let ids = super::corpus::corpus_ids(&corpus_path, &tokenizer_path, c.strip)?;
        let ids = ids.as_slice();
        if ids.len() < seq_len {
            return Err(format!(
                "the corpus `{}` has {} tokens, fewer than `seq_len` ({seq_len}): use a longer corpus or a shorter `seq_len`",
                corpus_path.display(),
                ids.len()
            )
            .into());
        }
        let starts = super::corpus::sample_starts(ids.len(), seq_len, samples, seed);
        let windows: Vec<Vec<i64>> = starts.iter().map(|&s| ids[s..s + seq_len].iter().map(|&t| i64::from(t)).collect()).collect();
        let _ = writeln!(cx.log, "corpus `{}`: {} tokens; {samples} samples of {seq_len} tokens, seed {seed}", corpus_path.display(), ids.len());

        let model = Model::load(&model_path).map_err(|e| e.to_string())?;
        let tensors = observe::observed_tensors(&model);
        if tensors.is_empty() {
            return Err(format!("`{}` has no MatMul/Gemm with an activation input: nothing to calibrate", model_path.display()).into());
        }
        let copy = cx.scratch.join("observe").join("model.onnx");
        std::fs::create_dir_all(copy.parent().expect("a file in a directory")).map_err(StageError::io("creating", &copy))?;
        observe::observing_copy(&model, &tensors, &copy).map_err(|e| e.to_string())?;
        let _ = writeln!(cx.log, "observing {} tensors (inputs of MatMul/Gemm) of `{}`", tensors.len(), model_path.display());

        let library = crate::backend::library(dep("runtime").as_deref()).map_err(|e| e.to_string())?;
        let rt = crate::runtime::init(Some(&library)).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let results = observe::calibrate(rt, &copy, &tensors, &windows, method, cx.log).map_err(|e| e.to_string())?;
        let elapsed_s = t0.elapsed().as_secs_f64();
        let header = calibrate::cache_header(version_code, method.trt_algorithm());
        let record = Calibration {
            method: method.name().into(),
            percentile: match method {
                Method::Percentile(p) => Some(p),
                _ => None,
            },
            bins: method.needs_histogram().then_some(calibrate::BINS),
            levels: calibrate::LEVELS,
            samples,
            seq_len,
            seed,
            corpus_tokens: ids.len(),
            sample_starts: starts,
            model_file: model_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            model_digest: model.digest().map_err(|e| e.to_string())?,
            runtime_version: rt.info().version.clone(),
            cache_header: header.clone(),
            elapsed_s,
            tensors: results,
        };
        let entries: Vec<(String, f32)> = record.tensors.iter().map(|t| (t.name.clone(), t.scale)).collect();
        let cache_path = cx.root.join(&cx.outs["cache"]);
        std::fs::write(&cache_path, calibrate::cache_text(&header, &entries)).map_err(StageError::io("writing", &cache_path))?;
        super::output::write_json(&cx.root.join(&cx.outs["calibration"]), &record)?;
        let _ = writeln!(cx.log, "{} tensors calibrated ({}) in {elapsed_s:.2}s; cache header `{header}`", record.tensors.len(), method.name());
        Ok(Outcome::Ok)
    }
}
