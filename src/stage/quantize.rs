//! The `quantize` kind: an INT8 ONNX model that ONNX Runtime's CPU provider runs, and a record
//! of what in it is INT8, counted rather than assumed.
//!
//! ```toml
//! [stages.quantize-static]
//! kind = "quantize"
//! deps = { model = "out/export/prefill", calibration = "out/calibrate/calibration.json",
//!          runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! scheme = "static"          # QDQ with the calibration's activation scales
//! per_channel = true         # one weight scale per output column (default true)
//! exclude = []               # glob patterns over node, output and weight names, e.g. ["logits"]
//!
//! [stages.quantize-dynamic]
//! kind = "quantize"
//! deps = { model = "out/export/prefill", runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! scheme = "dynamic"         # activations quantized at run time; no calibration
//! per_token = false          # dynamic only: one scale per token instead of per tensor
//!
//! # A recipe: SmoothQuant's migration, per-token activations, and the fewest MatMuls left
//! # float that keep the perplexity change on held-out windows within `target`.
//! [stages.quantize-smooth]
//! kind = "quantize"
//! deps = { model = "out/export/prefill", calibration = "out/calibrate/calibration.json",
//!          tokenizer = "out/export/tokenizer.json", corpus = "out/corpus/wiki.utf8",
//!          runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! scheme = "dynamic"
//! per_token = true
//! smooth_alpha = 0.5         # SmoothQuant's migration strength, in (0, 1]; needs a calibration
//! sensitivity = { target = 0.01, samples = 8, seq_len = 128, seed = 0, skip = 16384, strip = true }
//!
//! # A backend that runs one, here as the inline axis of a perplexity stage for that model:
//! [stages.perplexity-int8-static]
//! kind = "perplexity"
//! matrix = { backend = [{ name = "onnxruntime-cpu-int8-static", provider = "cpu", precision = "int8", threads = 2 }] }
//! deps = { model = "out/quantize-static/prefill", tokenizer = "out/export/tokenizer.json",
//!          corpus = "out/corpus/wiki.utf8", runtime = "out/ort/libonnxruntime.so.1.31.1" }
//! ```
//!
//! `model` is the fp32 `prefill` export (a directory holding `model.onnx`, or the file);
//! `calibration` is a `calibrate` stage's `calibration.json`, required by `static` and by
//! `smooth_alpha`, and refused by a plain `dynamic` (which reads none; the dep would only
//! rerun it needlessly); `runtime` is the
//! ONNX Runtime library (else `ORT_DYLIB_PATH`), used to check which kernels really run.
//! The rewrites themselves, the data types and the quantization axes are documented in
//! [`crate::quant::rewrite`]; `exclude` patterns (`*`, `?`) match a MatMul/Gemm's node name,
//! its output tensor (`logits` is the output projection) or its weight initializer
//! (`blk.0.ffn_down.weight`); a pattern that matches nothing is an error.
//!
//! `per_token` (dynamic only) quantizes each row of an activation with its own symmetric int8
//! scale, `max |x| / 127`, computed at run time ([`crate::quant::rewrite`]).
//!
//! `smooth_alpha` first migrates the activations' outlier channels into the weights
//! (SmoothQuant, [`crate::quant::smooth`]) using the calibration's per-channel maxima; the
//! migrated fp32 model must compute the source's logits (checked in ONNX Runtime, the node
//! fails otherwise), and a static rewrite takes a smoothed activation's scale from its exact
//! range after migration.
//!
//! `sensitivity` chooses what stays float by data ([`crate::quant::sensitivity`]): each
//! MatMul quantized alone is ranked by the KL divergence it adds on `samples` windows of
//! `seq_len` tokens of `corpus` (never the first `skip` tokens: keep the gate's text out;
//! `strip` drops document markers as `calibrate` does), and the fewest most sensitive ones
//! are left float so that the whole model's perplexity change on those windows is at most
//! `target`. Their weights join `exclude`. Needs `tokenizer` and `corpus` deps.
//!
//! A static calibration must have been made on this very model (its `model_digest`), and
//! must hold every activation the rewrite quantizes; otherwise the node fails naming the
//! tensor.
//!
//! With a `decoder` dep (the fp32 `decoder` export) the same rewrite is applied to the decoder,
//! written to `decoder/`, so a backend running these models has both variants and joins the
//! generate sweeps. A static decoder takes its activation scales from the prefill's
//! calibration: the decoder computes every weight MatMul's input exactly as the prefill does,
//! so each of its MatMuls gets the scale of the prefill MatMul with the same weight
//! initializer. Its quantized ops are counted from the written file (`decoder` in
//! `quantize.json`: `matmul_total`, `quantized`, `verified`, `left_float`).
//!
//! Outputs: `prefill/` (`model.onnx`, and `model.onnx.data` when the source model had
//! external data: the same layout as an export's `prefill/`, so a backend's `model` dep can
//! point at it; the tokenizer is the export's) and `quantize.json`:
//!
//! | field            | meaning                                                                |
//! |------------------|------------------------------------------------------------------------|
//! | `scheme`, `per_channel`, `exclude` | as configured; `exclude` gains the weights the sensitivity pass left float |
//! | `activations`, `weights` | the data types and granularity, in words                       |
//! | `matmul_total`   | MatMul/Gemm nodes of the source model                                  |
//! | `quantized`      | how many were rewritten                                                |
//! | `verified`       | how many of those the written file, read back, really holds as INT8    |
//! | `ops[]`          | per quantized op: `name`, `op`, `output`, `activation`, `weight`, `weight_int8`, `k`, `n`, `activation_scale` (static), `verified` |
//! | `left_float[]`   | per op left in float: `name`, `op`, `output`, `reason`                 |
//! | `written`        | counted from the written file: `ops` (op type → nodes), `int8_initializers`, `int8_initializer_bytes`, `float_matmuls`, `verified` |
//! | `ran_integer`    | whether ONNX Runtime ran exactly `verified` integer MatMul kernels: every quantized op, after its fusions, really multiplies in INT8 |
//! | `ort`            | one 4-token prefill on ONNX Runtime's CPU provider (default optimisations, 1 thread) under its profiler: `kernels` (op → nodes that ran, after ONNX Runtime's fusions), `integer_matmul_kernels`, `float_matmul_kernels`, `runtime_version` |
//! | `calibration`    | the calibration read (static, or smoothing): `method`, `cache_header`, `model_digest`; null without one |
//! | `per_token`      | as configured                                                          |
//! | `smooth`         | with `smooth_alpha`: `alpha`, `smoothed[]` (`activation`, `folded_into`, `consumers`, `channels`, `absmax_before`, `absmax_after`, `s_min`, `s_max`), `unsmoothed[]` (`activation`, `consumers`, `reason`), `max_logit_diff`, `max_abs_logit`, `check_tokens` |
//! | `sensitivity`    | with `sensitivity`: `metric`, `target`, `samples`, `seq_len`, `sample_starts`, `float_nll`, `ranking[]` (`name`, `weight`, `kl`, `ppl_change`, most sensitive first), `steps[]` (`float_ops`, `ppl_change`, `meets`), `exclude` (the weights left float), `elapsed_s` |
//! | `source_digest`  | the source model's digest                                              |
//! | `file_bytes`, `data_bytes` | the written model's size                                     |
//! | `decoder`        | with a `decoder` dep: its `matmul_total`, `quantized`, `verified`, `left_float`, sizes |
//! | `elapsed_s`      | wall time of the node: rewrites, writes, read-backs and the ONNX Runtime check |

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::quantize::{self as artifact, CalibrationRef};
use crate::onnx::edit::{self, Model};
use crate::pipeline::NodeSpec;
use crate::quant;
use crate::quant::calibrate::Calibration;
use crate::quant::rewrite::{self, Options, Scheme};

pub(crate) struct Quantize;

const FIELDS: &[&str] = &["scheme", "per_channel", "per_token", "exclude", "smooth_alpha", "sensitivity"];
const SENSITIVITY_FIELDS: &[&str] = &["target", "samples", "seq_len", "seed", "skip", "strip"];

pub(crate) const JSON_OUT: &str = "quantize.json";
pub(crate) const MODEL_DIR: &str = "prefill";
pub(crate) const DECODER_DIR: &str = "decoder";

/// The lowered config.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    scheme: Scheme,
    per_channel: bool,
    per_token: bool,
    exclude: Vec<String>,
    smooth_alpha: Option<f32>,
    sensitivity: Option<SensitivityConfig>,
    /// Whether the stage has a `decoder` dep (and so a `decoder/` output).
    decoder: bool,
}

/// The `sensitivity` table.
#[derive(Debug, Serialize, Deserialize)]
struct SensitivityConfig {
    /// The relative perplexity change the selection must meet on its windows.
    target: f64,
    samples: usize,
    seq_len: usize,
    seed: u64,
    /// Tokens at the start of the corpus no window touches (kept for the gate).
    skip: usize,
    strip: bool,
}

fn lower_sensitivity(v: &Value, errors: &mut Vec<LowerError>) -> Option<SensitivityConfig> {
    let Value::Object(t) = v else {
        errors.push(LowerError::on("sensitivity", format!("`sensitivity` must be a table, found {v}"), Some("sensitivity = { target = 0.01 }".into())));
        return None;
    };
    let before = errors.len();
    for key in t.keys().filter(|k| !SENSITIVITY_FIELDS.contains(&k.as_str())) {
        let help = crate::diag::suggest(key, SENSITIVITY_FIELDS.iter().copied())
            .or_else(|| Some(format!("the keys are {}", crate::diag::ticked(SENSITIVITY_FIELDS.iter()))));
        errors.push(LowerError { field: vec!["sensitivity".into(), key.clone()], message: format!("unknown key `{key}` in `sensitivity`"), help });
    }
    let at = |k: &str| vec!["sensitivity".to_string(), k.to_string()];
    let target = match t.get("target").map(|v| (v, v.as_f64())) {
        Some((_, Some(x))) if x > 0.0 && x.is_finite() => x,
        Some((v, _)) => {
            errors.push(LowerError {
                field: at("target"),
                message: format!("`target` must be a relative perplexity change above 0 (0.01 is 1%), found {v}"),
                help: None,
            });
            0.0
        }
        None => {
            errors.push(LowerError {
                field: at("target"),
                message: "`sensitivity` needs a `target`: the relative perplexity change to meet (0.01 is 1%)".into(),
                help: None,
            });
            0.0
        }
    };
    let count = |k: &str, default: u64, min: u64, errors: &mut Vec<LowerError>| match t.get(k) {
        None => default,
        Some(v) => match v.as_u64() {
            Some(n) if n >= min => n,
            _ => {
                errors.push(LowerError { field: at(k), message: format!("`{k}` must be an integer of at least {min}, found {v}"), help: None });
                default
            }
        },
    };
    let samples = count("samples", 8, 1, errors) as usize;
    let seq_len = count("seq_len", 128, 2, errors) as usize;
    let seed = count("seed", 0, 0, errors);
    let skip = count("skip", 0, 0, errors) as usize;
    let strip = match t.get("strip") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            errors.push(LowerError { field: at("strip"), message: format!("`strip` must be true or false, found {v}"), help: None });
            true
        }
    };
    (errors.len() == before).then_some(SensitivityConfig { target, samples, seq_len, seed, skip, strip })
}

impl Kind for Quantize {
    const NAME: &'static str = "quantize";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "quantize", "onnxruntime", "tokenizer"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let scheme = match f.get("scheme") {
            Some(Value::String(s)) if Scheme::parse(s).is_some() => Scheme::parse(s),
            None => {
                errors.push(LowerError::on("scheme", "a `quantize` stage needs `scheme = \"static\"` or `\"dynamic\"`".into(), None));
                None
            }
            Some(v) => {
                let help = v.as_str().and_then(|s| crate::diag::suggest(s, ["static", "dynamic"])).or(Some("`static` or `dynamic`".into()));
                let shown = v.as_str().map_or_else(|| v.to_string(), |s| format!("`{s}`"));
                errors.push(LowerError::on("scheme", format!("unknown scheme {shown}"), help));
                None
            }
        };
        let per_channel = super::bool_field(f, "per_channel", true, &mut errors);
        let per_token = super::bool_field(f, "per_token", false, &mut errors);
        let smooth_alpha = match f.get("smooth_alpha") {
            None => None,
            Some(v) => match v.as_f64() {
                Some(a) if a > 0.0 && a <= 1.0 => Some(a as f32),
                _ => {
                    errors.push(LowerError::on(
                        "smooth_alpha",
                        format!("`smooth_alpha` must be a number in (0, 1], found {v}"),
                        Some("SmoothQuant's migration strength: 0.5 splits each channel's range evenly between activation and weight".into()),
                    ));
                    None
                }
            },
        };
        let sensitivity = f.get("sensitivity").and_then(|v| lower_sensitivity(v, &mut errors));
        if f.get("sensitivity").is_some() {
            for dep in ["tokenizer", "corpus"] {
                if !cx.deps.iter().any(|d| d == dep) {
                    errors.push(LowerError {
                        field: vec!["deps".into()],
                        message: format!("`sensitivity` needs a dep named `{dep}`: it ranks the MatMuls on windows of a text"),
                        help: Some("deps = { ..., tokenizer = \"out/export/tokenizer.json\", corpus = \"out/corpus/wiki.utf8\" }".into()),
                    });
                }
            }
        }
        let exclude: Vec<String> = match f.get("exclude") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v.as_str() {
                    Some(s) if !s.is_empty() => Some(s.to_string()),
                    _ => {
                        errors.push(LowerError {
                            field: vec!["exclude".into(), i.to_string()],
                            message: format!("an `exclude` pattern must be a non-empty string, found {v}"),
                            help: None,
                        });
                        None
                    }
                })
                .collect(),
            Some(v) => {
                errors.push(LowerError::on("exclude", format!("`exclude` must be a list of name patterns, found {v}"), Some("exclude = [\"logits\"]".into())));
                Vec::new()
            }
        };
        if !cx.deps.iter().any(|d| d == "model") {
            errors.push(LowerError {
                field: vec!["deps".into()],
                message: "a `quantize` stage needs a dep named `model` (the fp32 `prefill` export)".into(),
                help: Some("deps = { model = \"out/export/prefill\", calibration = \"out/calibrate/calibration.json\" }".into()),
            });
        }
        let has_calibration = cx.deps.iter().any(|d| d == "calibration");
        match scheme.map(Scheme::name) {
            Some("static") if !has_calibration => errors.push(LowerError {
                field: vec!["deps".into()],
                message: "`scheme = \"static\"` needs a dep named `calibration` (a `calibrate` stage's `calibration.json`)".into(),
                help: Some("deps = { model = \"out/export/prefill\", calibration = \"out/calibrate/calibration.json\" }".into()),
            }),
            Some("static") if per_token => errors.push(LowerError::on(
                "per_token",
                "`per_token` applies to `scheme = \"dynamic\"`: a static scale is fixed before the tokens are seen".into(),
                Some("remove it, or use `scheme = \"dynamic\"`".into()),
            )),
            _ if smooth_alpha.is_some() && !has_calibration => errors.push(LowerError {
                field: vec!["deps".into()],
                message: "`smooth_alpha` needs a dep named `calibration`: the migration divides by each channel's range, which calibration measures".into(),
                help: Some("deps = { model = \"out/export/prefill\", calibration = \"out/calibrate/calibration.json\" }".into()),
            }),
            Some("dynamic") if has_calibration && smooth_alpha.is_none() => errors.push(LowerError {
                field: vec!["deps".into()],
                message: "`scheme = \"dynamic\"` quantizes activations at run time and reads no calibration (unless `smooth_alpha` migrates its ranges)".into(),
                help: Some("remove the `calibration` dep: it would only rerun this node when the calibration changes".into()),
            }),
            _ => {}
        }
        let Some(scheme) = scheme.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let decoder = cx.deps.iter().any(|d| d == "decoder");
        Ok(serde_json::to_value(Config { scheme, per_channel, per_token, exclude, smooth_alpha, sensitivity, decoder }).expect("a config is JSON"))
    }

    fn implied_outs(&self, config: &Value) -> Vec<(String, String)> {
        let mut outs = vec![("model".into(), format!("{MODEL_DIR}/")), ("report".into(), JSON_OUT.into())];
        if Config::deserialize(config).is_ok_and(|c| c.decoder) {
            outs.push(("decoder".into(), format!("{DECODER_DIR}/")));
        }
        outs
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let started = std::time::Instant::now();
        let Config { scheme, per_channel, per_token, exclude, smooth_alpha, sensitivity, decoder: _ } =
            Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let mut opts = Options { scheme, per_channel, exclude, per_token, only: None };
        let dep = |name: &str| cx.deps.get(name).and_then(|p| p.first()).map(|p| cx.root.join(p));
        let model_path = super::onnx_file(&dep("model").ok_or_else(|| StageError::NoDep("model".into()))?)?;
        let source = Model::load(&model_path).map_err(|e| e.to_string())?;
        // Quantised activations are float32 in and out (`QuantizeLinear`, `DynamicQuantizeLinear`).
        if let Some(name) = quant::graph::float16_matmul(&source) {
            return Err(format!(
                "`{}` computes in float16 (`{name}` multiplies a float16 weight): INT8 quantization starts from a float32 model; quantize the fp32 export",
                crate::paths::shown(&model_path)
            )
            .into());
        }
        let source_digest = source.digest().map_err(|e| e.to_string())?;

        let calibration: Option<Calibration> = match dep("calibration") {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(StageError::io("reading calibration", &path))?;
                let cal: Calibration =
                    serde_json::from_str(&text).map_err(|e| format!("calibration `{}` is not a `calibrate` stage's calibration.json: {e}", path.display()))?;
                if cal.model_digest != source_digest {
                    return Err(format!(
                        "calibration `{}` was made on another model (digest {}, this model's is {}): its tensor ranges do not describe `{}`; calibrate this model",
                        path.display(),
                        short(&cal.model_digest),
                        short(&source_digest),
                        model_path.display()
                    ).into());
                }
                Some(cal)
            }
            None => None,
        };
        let library = crate::backend::library(dep("runtime").as_deref()).map_err(|e| e.to_string())?;
        let rt = crate::runtime::init(Some(&library)).map_err(|e| e.to_string())?;

        // The float model the rewrite starts from: the source, or its migration; written
        // with external data when the sensitivity pass makes one-op copies of it.
        let migration = match smooth_alpha {
            Some(alpha) => {
                let cal = calibration.as_ref().ok_or(quant::QuantError::NoCalibration).map_err(|e| e.to_string())?;
                let m = quant::smooth::plan(&source, cal, alpha).map_err(|e| e.to_string())?;
                let _ = writeln!(cx.log, "smoothing (alpha {alpha}): {} activations migrated, {} left", m.smoothed.len(), m.unsmoothed.len());
                Some(m)
            }
            None => None,
        };
        let migrated = migration.as_ref().map(|m| m.apply(&source)).transpose().map_err(|e| e.to_string())?;
        let float_dir = cx.scratch.join("float");
        let base = if migrated.is_some() || sensitivity.is_some() {
            let from = migrated.as_ref().unwrap_or(&source);
            std::fs::create_dir_all(&float_dir).map_err(StageError::io("creating", &float_dir))?;
            let path = float_dir.join("model.onnx");
            edit::save(from.proto.clone(), &path, from, true).map_err(|e| e.to_string())?;
            Model::load(&path).map_err(|e| e.to_string())?
        } else {
            source.clone()
        };
        let smooth = match &migration {
            Some(m) => {
                let (diff, scale, tokens) = quant::smooth::max_logit_diff(rt, &model_path, &base.path).map_err(|e| e.to_string())?;
                let _ = writeln!(cx.log, "smoothing: fp32 logits (max |logit| {scale:.3}) move by at most {diff:.3e} over {tokens} tokens");
                if diff > quant::smooth::LOGIT_TOLERANCE * scale.max(1.0) {
                    return Err(format!(
                        "smoothing changed the fp32 model's logits by up to {diff:.3e} (over {tokens} tokens, max |logit| {scale:.3}), more than {:e} of max(1, max |logit|): the migration is not an identity on this graph",
                        quant::smooth::LOGIT_TOLERANCE
                    )
                    .into());
                }
                Some(artifact::Smooth {
                    alpha: m.alpha,
                    smoothed: m.smoothed.clone(),
                    unsmoothed: m.unsmoothed.clone(),
                    max_logit_diff: diff,
                    max_abs_logit: scale,
                    check_tokens: tokens,
                })
            }
            None => None,
        };
        let calibration = match (&migration, calibration) {
            (Some(m), Some(cal)) => Some(m.calibration(&cal)),
            (_, cal) => cal,
        };
        let cal_ref = calibration.as_ref().map(|c| CalibrationRef {
            method: c.method.clone(),
            cache_header: c.cache_header.clone(),
            model_digest: c.model_digest.clone(),
        });

        let sensitivity = match sensitivity {
            Some(sc) => {
                let tokenizer = dep("tokenizer").ok_or_else(|| StageError::NoDep("tokenizer".into()))?;
                let corpus = dep("corpus").ok_or_else(|| StageError::NoDep("corpus".into()))?;
                let ids = super::corpus::corpus_ids(&corpus, &tokenizer, sc.strip)?;
                if ids.len() < sc.skip + sc.seq_len {
                    return Err(format!(
                        "the corpus `{}` has {} tokens, fewer than `sensitivity.skip` + `seq_len` ({} + {})",
                        corpus.display(),
                        ids.len(),
                        sc.skip,
                        sc.seq_len
                    )
                    .into());
                }
                let starts: Vec<usize> =
                    super::corpus::sample_starts(ids.len() - sc.skip, sc.seq_len, sc.samples, sc.seed).into_iter().map(|s| s + sc.skip).collect();
                let windows: Vec<Vec<i64>> = starts.iter().map(|&s| ids[s..s + sc.seq_len].iter().map(|&t| i64::from(t)).collect()).collect();
                let scratch = cx.scratch.join("sensitivity");
                let pass = quant::sensitivity::Pass {
                    rt,
                    base: &base,
                    opts: &opts,
                    calibration: calibration.as_ref(),
                    windows: &windows,
                    sample_starts: &starts,
                    target: sc.target,
                    scratch: &scratch,
                };
                let found = quant::sensitivity::run(&pass, cx.log).map_err(|e| format!("the sensitivity pass: {e}"))?;
                let _ = std::fs::remove_dir_all(&scratch);
                let _ = writeln!(cx.log, "sensitivity: {} of {} ops left in float to meet {}", found.exclude.len(), found.ranking.len(), sc.target);
                opts.exclude.extend(found.exclude.iter().cloned());
                Some(found)
            }
            None => None,
        };

        let (proto, mut rewrite) = rewrite::quantize(&base, &opts, calibration.as_ref()).map_err(|e| e.to_string())?;
        let _ = writeln!(
            cx.log,
            "{}: {} of {} MatMul/Gemm quantized, {} left float",
            scheme.name(),
            rewrite.quantized.len(),
            rewrite.matmul_total,
            rewrite.left_float.len()
        );
        let dir = cx.root.join(&cx.outs["model"]);
        let dest = dir.join("model.onnx");
        let external = !source.external_files().map_err(|e| e.to_string())?.is_empty();
        let saved = edit::save(proto, &dest, &base, external).map_err(|e| e.to_string())?;
        drop(base);
        let _ = std::fs::remove_dir_all(&float_dir);

        // Count from the file, not from the rewrite's own bookkeeping.
        let back = Model::load(&dest).map_err(|e| format!("reading back the written model: {e}"))?;
        let written = rewrite::verify(&back, scheme, &mut rewrite);
        let _ = writeln!(
            cx.log,
            "read back: {} of {} quantized ops verified; {} float MatMul/Gemm",
            written.verified,
            rewrite.quantized.len(),
            written.float_matmuls
        );

        let profile_dir = cx.scratch.join("profile");
        std::fs::create_dir_all(&profile_dir).map_err(StageError::io("creating", &profile_dir))?;
        let ort = quant::ort_kernels(rt, &dest, &profile_dir).map_err(|e| format!("running the quantized model in ONNX Runtime: {e}"))?;
        let _ = writeln!(
            cx.log,
            "ONNX Runtime {}: {} integer and {} float MatMul kernels ran: {:?}",
            ort.runtime_version, ort.integer_matmul_kernels, ort.float_matmul_kernels, ort.kernels
        );

        let decoder = match dep("decoder") {
            Some(path) => Some(quantize_decoder(&path, &source, migration.as_ref(), &opts, calibration.as_ref(), &cx.root.join(&cx.outs["decoder"]), cx.log)?),
            None => None,
        };

        let (activations, weights) = describe(scheme, opts.per_channel, opts.per_token);
        let report = artifact::Quantize {
            scheme,
            per_channel: opts.per_channel,
            per_token: opts.per_token,
            exclude: opts.exclude.clone(),
            activations,
            weights,
            matmul_total: rewrite.matmul_total,
            quantized: rewrite.quantized.len(),
            verified: written.verified,
            ops: rewrite.quantized,
            left_float: rewrite.left_float,
            ran_integer: ort.integer_matmul_kernels == written.verified,
            written,
            ort,
            calibration: cal_ref,
            smooth,
            sensitivity,
            source_digest,
            file_bytes: saved.onnx_bytes,
            data_bytes: saved.data_bytes,
            decoder,
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        super::output::write_json(&cx.root.join(&cx.outs["report"]), &report)?;
        Ok(Outcome::Ok)
    }
}

/// Applies the prefill's rewrite to the decoder at `path`, writing `dir/model.onnx`. A static
/// decoder's activation scales are the prefill's, matched by weight initializer (module doc).
fn quantize_decoder(
    path: &std::path::Path,
    prefill: &Model,
    migration: Option<&quant::smooth::Migration>,
    opts: &Options,
    calibration: Option<&Calibration>,
    dir: &std::path::Path,
    log: &mut std::fs::File,
) -> Result<artifact::Decoder, String> {
    let source = super::onnx_file(path)?;
    let model = Model::load(&source).map_err(|e| e.to_string())?;
    let source_digest = model.digest().map_err(|e| e.to_string())?;
    // The same weights under the same names: the prefill's migration applies as it is.
    let model = match migration {
        Some(m) => m.apply(&model).map_err(|e| format!("decoder: {e}"))?,
        None => model,
    };
    let calibration = calibration.map(|cal| rekey_by_weight(cal, prefill, &model));
    let (proto, mut rewrite) = rewrite::quantize(&model, opts, calibration.as_ref()).map_err(|e| format!("decoder `{}`: {e}", source.display()))?;
    let dest = dir.join("model.onnx");
    let external = !model.external_files().map_err(|e| e.to_string())?.is_empty();
    let saved = edit::save(proto, &dest, &model, external).map_err(|e| e.to_string())?;
    let back = Model::load(&dest).map_err(|e| format!("reading back the written decoder: {e}"))?;
    let written = rewrite::verify(&back, opts.scheme, &mut rewrite);
    let _ = writeln!(
        log,
        "decoder: {} of {} MatMul/Gemm quantized, {} verified in the written file",
        rewrite.quantized.len(),
        rewrite.matmul_total,
        written.verified
    );
    Ok(artifact::Decoder {
        source_digest,
        matmul_total: rewrite.matmul_total,
        quantized: rewrite.quantized.len(),
        verified: written.verified,
        left_float: rewrite.left_float,
        file_bytes: saved.onnx_bytes,
        data_bytes: saved.data_bytes,
    })
}

/// The prefill's calibration renamed for `other`: each of `other`'s MatMul activations takes
/// the entry of the prefill activation that feeds the same weight initializer. Activations
/// with no such counterpart keep no entry, and a static rewrite names them.
fn rekey_by_weight(cal: &Calibration, prefill: &Model, other: &Model) -> Calibration {
    use std::collections::HashMap;
    let by_weight: HashMap<(String, bool), String> = quant::graph::sites(prefill)
        .into_iter()
        .filter_map(|s| {
            let a = s.activation_a()?.to_string();
            s.weight.ok().map(|w| ((w.initializer, w.transposed), a))
        })
        .collect();
    let mut renamed = cal.clone();
    renamed.tensors = quant::graph::sites(other)
        .into_iter()
        .filter_map(|s| {
            let a = s.activation_a()?.to_string();
            let w = s.weight.ok()?;
            let source = by_weight.get(&(w.initializer, w.transposed))?;
            let mut t = cal.tensor(source)?.clone();
            t.name = a;
            Some(t)
        })
        .collect();
    renamed
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn describe(scheme: Scheme, per_channel: bool, per_token: bool) -> (String, String) {
    let activations = match (scheme, per_token) {
        (Scheme::Static, _) => "int8 symmetric (zero point 0), per tensor, scale from the calibration",
        (Scheme::Dynamic, false) => "uint8 with zero point, per tensor, computed at run time by DynamicQuantizeLinear",
        (Scheme::Dynamic, true) => {
            "uint8, per token: each row scaled to ±127 and shifted into [1, 255], then DynamicQuantizeLinear; the shift and the row's range taken back out of the product"
        }
    };
    let weights = if per_channel {
        "int8 symmetric (zero point 0), per output channel (axis 1 of the [K, N] weight)"
    } else {
        "int8 symmetric (zero point 0), per tensor"
    };
    (activations.into(), weights.into())
}
