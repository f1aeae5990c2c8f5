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
//! `calibration` is a `calibrate` stage's `calibration.json`, required by `static` and refused
//! by `dynamic` (which reads none; the dep would only rerun it needlessly); `runtime` is the
//! ONNX Runtime library (else `ORT_DYLIB_PATH`), used to check which kernels really run.
//! The rewrites themselves, the data types and the quantization axes are documented in
//! [`crate::quant::rewrite`]; `exclude` patterns (`*`, `?`) match a MatMul/Gemm's node name,
//! its output tensor (`logits` is the output projection) or its weight initializer
//! (`blk.0.ffn_down.weight`); a pattern that matches nothing is an error.
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
//! | `scheme`, `per_channel`, `exclude` | as configured                                        |
//! | `activations`, `weights` | the data types and granularity, in words                       |
//! | `matmul_total`   | MatMul/Gemm nodes of the source model                                  |
//! | `quantized`      | how many were rewritten                                                |
//! | `verified`       | how many of those the written file, read back, really holds as INT8    |
//! | `ops[]`          | per quantized op: `name`, `op`, `output`, `activation`, `weight`, `weight_int8`, `k`, `n`, `activation_scale` (static), `verified` |
//! | `left_float[]`   | per op left in float: `name`, `op`, `output`, `reason`                 |
//! | `written`        | counted from the written file: `ops` (op type → nodes), `int8_initializers`, `int8_initializer_bytes`, `float_matmuls`, `verified` |
//! | `ran_integer`    | whether ONNX Runtime ran exactly `verified` integer MatMul kernels: every quantized op, after its fusions, really multiplies in INT8 |
//! | `ort`            | one 4-token prefill on ONNX Runtime's CPU provider (default optimisations, 1 thread) under its profiler: `kernels` (op → nodes that ran, after ONNX Runtime's fusions), `integer_matmul_kernels`, `float_matmul_kernels`, `runtime_version` |
//! | `calibration`    | static: the calibration's `method`, `cache_header`, `model_digest`; null for dynamic |
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

const FIELDS: &[&str] = &["scheme", "per_channel", "exclude"];

pub(crate) const JSON_OUT: &str = "quantize.json";
pub(crate) const MODEL_DIR: &str = "prefill";
pub(crate) const DECODER_DIR: &str = "decoder";

/// The lowered config.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    scheme: Scheme,
    per_channel: bool,
    exclude: Vec<String>,
    /// Whether the stage has a `decoder` dep (and so a `decoder/` output).
    decoder: bool,
}

impl Kind for Quantize {
    const NAME: &'static str = "quantize";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "quantize", "onnxruntime"].into()
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
            Some("dynamic") if has_calibration => errors.push(LowerError {
                field: vec!["deps".into()],
                message: "`scheme = \"dynamic\"` quantizes activations at run time and reads no calibration".into(),
                help: Some("remove the `calibration` dep: it would only rerun this node when the calibration changes".into()),
            }),
            _ => {}
        }
        let Some(scheme) = scheme.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let decoder = cx.deps.iter().any(|d| d == "decoder");
        Ok(serde_json::to_value(Config { scheme, per_channel, exclude, decoder }).expect("a config is JSON"))
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
        let Config { scheme, per_channel, exclude, decoder: _ } = Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let opts = Options { scheme, per_channel, exclude };
        let dep = |name: &str| cx.deps.get(name).and_then(|p| p.first()).map(|p| cx.root.join(p));
        let model_path = super::onnx_file(&dep("model").ok_or_else(|| StageError::NoDep("model".into()))?)?;
        let model = Model::load(&model_path).map_err(|e| e.to_string())?;
        // Quantised activations are float32 in and out (`QuantizeLinear`, `DynamicQuantizeLinear`).
        if let Some(name) = quant::graph::float16_matmul(&model) {
            return Err(format!(
                "`{}` computes in float16 (`{name}` multiplies a float16 weight): INT8 quantization starts from a float32 model; quantize the fp32 export",
                crate::paths::shown(&model_path)
            )
            .into());
        }
        let source_digest = model.digest().map_err(|e| e.to_string())?;

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

        let (proto, mut rewrite) = rewrite::quantize(&model, &opts, calibration.as_ref()).map_err(|e| e.to_string())?;
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
        let external = !model.external_files().map_err(|e| e.to_string())?.is_empty();
        let saved = edit::save(proto, &dest, &model, external).map_err(|e| e.to_string())?;

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

        let library = crate::backend::library(dep("runtime").as_deref()).map_err(|e| e.to_string())?;
        let rt = crate::runtime::init(Some(&library)).map_err(|e| e.to_string())?;
        let profile_dir = cx.scratch.join("profile");
        std::fs::create_dir_all(&profile_dir).map_err(StageError::io("creating", &profile_dir))?;
        let ort = quant::ort_kernels(rt, &dest, &profile_dir).map_err(|e| format!("running the quantized model in ONNX Runtime: {e}"))?;
        let _ = writeln!(
            cx.log,
            "ONNX Runtime {}: {} integer and {} float MatMul kernels ran: {:?}",
            ort.runtime_version, ort.integer_matmul_kernels, ort.float_matmul_kernels, ort.kernels
        );

        let decoder = match dep("decoder") {
            Some(path) => Some(quantize_decoder(&path, &model, &opts, calibration.as_ref(), &cx.root.join(&cx.outs["decoder"]), cx.log)?),
            None => None,
        };

        let (activations, weights) = describe(scheme, opts.per_channel);
        let report = artifact::Quantize {
            scheme,
            per_channel: opts.per_channel,
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
            calibration: calibration.map(|c| CalibrationRef { method: c.method, cache_header: c.cache_header, model_digest: c.model_digest }),
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
    opts: &Options,
    calibration: Option<&Calibration>,
    dir: &std::path::Path,
    log: &mut std::fs::File,
) -> Result<artifact::Decoder, String> {
    let source = super::onnx_file(path)?;
    let model = Model::load(&source).map_err(|e| e.to_string())?;
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
        source_digest: model.digest().map_err(|e| e.to_string())?,
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

fn describe(scheme: Scheme, per_channel: bool) -> (String, String) {
    let activations = match scheme {
        Scheme::Static => "int8 symmetric (zero point 0), per tensor, scale from the calibration",
        Scheme::Dynamic => "uint8 with zero point, per tensor, computed at run time by DynamicQuantizeLinear",
    };
    let weights = if per_channel {
        "int8 symmetric (zero point 0), per output channel (axis 1 of the [K, N] weight)"
    } else {
        "int8 symmetric (zero point 0), per tensor"
    };
    (activations.into(), weights.into())
}
