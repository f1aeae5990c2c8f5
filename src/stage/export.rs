//! The `export` kind: a checkpoint in, ONNX models out.
//!
//! ```toml
//! [stages.export]
//! kind = "export"
//! deps = { checkpoint = "out/fetch-model/model.gguf" }
//! variants = ["prefill", "decoder"]   # default; also "decoder_fixed" and "hf"
//! precision = "fp32"                  # or "fp16" (float16 weights and arithmetic)
//! max_length = 2048                   # decoder_fixed only: the cache capacity
//! opset = 17
//! external_data = "auto"              # or true / false
//! tokenizer = true                    # write tokenizer.json beside the models
//! ```
//!
//! Outputs: one directory per variant (`prefill/model.onnx`, and `model.onnx.data` with
//! external data), `tokenizer.json` when asked for, and `export.json`, the export manifest:
//! per variant the export time, file size, opset, inputs, outputs, dynamic axes,
//! initializer count and bytes, external data and the content digest. The tokenizer comes
//! from a `tokenizer` dep (a `tokenizer.json`), the checkpoint's own (`tokenizer.json` in
//! a Hugging Face directory, or the GGUF's embedded vocabulary).
//!
//! `fp16` models compute in float16, with the normalisations and the softmax in float32 and
//! the same float32 interface as `fp32` ones: strongly typed TensorRT (TensorRT for RTX)
//! takes each layer's precision from the graph, so the file decides what a plan computes in
//! (see [`crate::export`] for where the casts go).
//!
//! `decoder_fixed` is a decoder whose cache is a buffer of `max_length` positions, for CUDA
//! graphs (see [`crate::export`]). `max_length` defaults to the checkpoint's context length,
//! at most 4096, and may not exceed it; its `export.json` entry has `max_length` too. At
//! `fp16` it is ONNX Runtime's fused graph (GroupQueryAttention, skip-norms; see
//! [`crate::export::fused`]). The lowered config holds `max_length` (`null` for the default, which
//! the checkpoint, itself in the key, decides) only when `variants` lists `decoder_fixed`, so
//! the key of an export without it is what it was before the variant existed.
//!
//! The `hf` variant is not ONNX: `hf/` is a Hugging Face directory (`config.json`,
//! `model.safetensors`, and `tokenizer.json` with `tokenizer_config.json` when a tokenizer is
//! written) holding the same weights, for PyTorch backends (see [`crate::export::hf`]). Its
//! `export.json` entry has `variant`, `precision`, `file`, `export_ms`, `file_bytes` (all its
//! files) and `digest` (blake3 of the files in `files` order) as the ONNX entries do, plus
//! `files` (name and bytes of each), `architecture`, `dtype`, `tensor_count` and `parameters`.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::export as artifact;
use crate::export::{self, ExportOptions, Precision, Variant};
use crate::model::gguf::GgufHeader;
use crate::model::{Checkpoint, Format};
use crate::pipeline::NodeSpec;
use crate::tokenizer::{self, GgufVocab};

pub(crate) struct Export;

const FIELDS: &[&str] = &["variants", "precision", "opset", "external_data", "tokenizer", "max_length"];

/// Every variant a pipeline may ask for: the ONNX ones of [`Variant`], then the Hugging Face
/// directory.
const VARIANTS: &[&str] = &["prefill", "decoder", "decoder_fixed", export::hf::VARIANT];

/// The lowered config, every default filled in.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    /// Names of [`VARIANTS`], in the stage's order.
    variants: Vec<String>,
    precision: Precision,
    opset: i64,
    external_data: ExternalData,
    /// Whether to write `tokenizer.json`.
    tokenizer: bool,
    /// Present only when `variants` lists `decoder_fixed`, and then null when unset (the
    /// model's context length): absent and null are different keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_length: Option<Option<u64>>,
}

/// `external_data`: `true`, `false`, or `"auto"` (the exporter decides by size).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(untagged)]
enum ExternalData {
    Set(bool),
    Auto(Auto),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auto {
    Auto,
}

/// `"a", "b", "c"`.
fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

impl Kind for Export {
    const NAME: &'static str = "export";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "export", "tokenizer"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let variants: Vec<String> = match f.get("variants") {
            None => vec!["prefill".into(), "decoder".into()],
            Some(Value::Array(a)) if !a.is_empty() => a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect(),
            Some(_) => {
                errors.push(LowerError::on("variants", format!("`variants` must be a non-empty list of {}", quoted(VARIANTS)), None));
                Vec::new()
            }
        };
        for (i, v) in variants.iter().enumerate() {
            let field = vec!["variants".into(), i.to_string()];
            if !VARIANTS.contains(&v.as_str()) {
                let help = crate::diag::suggest(v, VARIANTS.iter().copied()).or_else(|| Some(format!("variants are {}", quoted(VARIANTS))));
                errors.push(LowerError { field, message: format!("unknown variant `{v}`"), help });
            } else if variants[..i].contains(v) {
                errors.push(LowerError { field, message: format!("variant `{v}` is listed twice"), help: None });
            }
        }
        let name = f.get("precision").and_then(Value::as_str).unwrap_or("fp32");
        let precision = Precision::parse(name);
        if precision.is_none() {
            errors.push(LowerError::on("precision", format!("unknown precision `{name}`"), Some("`fp32` or `fp16`".into())));
        }
        let opset = match f.get("opset") {
            None => 17,
            Some(v) => match v.as_i64() {
                Some(o) if o >= 17 => o,
                _ => {
                    errors.push(LowerError::on("opset", format!("`opset` must be an integer of at least 17, found {v}"), None));
                    17
                }
            },
        };
        let external = match f.get("external_data") {
            None => ExternalData::Auto(Auto::Auto),
            Some(Value::Bool(b)) => ExternalData::Set(*b),
            Some(Value::String(s)) if s == "auto" => ExternalData::Auto(Auto::Auto),
            Some(v) => {
                errors.push(LowerError::on("external_data", format!("`external_data` must be true, false or \"auto\", found {v}"), None));
                ExternalData::Auto(Auto::Auto)
            }
        };
        let tokenizer = super::bool_field(f, "tokenizer", true, &mut errors);
        let fixed = variants.iter().any(|v| v == Variant::DecoderFixed.name());
        let max_length = super::positive_field(f, "max_length", None, &mut errors);
        if !fixed && f.contains_key("max_length") {
            errors.push(LowerError::on(
                "max_length",
                "`max_length` is the cache capacity of the `decoder_fixed` variant, which `variants` does not list".into(),
                Some("add \"decoder_fixed\" to `variants`, or remove `max_length`".into()),
            ));
        }
        if !cx.deps.iter().any(|d| d == "checkpoint") {
            errors.push(LowerError {
                field: vec!["deps".into()],
                message: "an `export` stage needs a dep named `checkpoint` (a .gguf file or a Hugging Face directory)".into(),
                help: Some("deps = { checkpoint = \"out/fetch-model/model.gguf\" }".into()),
            });
        }
        let Some(precision) = precision.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let config = Config { variants, precision, opset, external_data: external, tokenizer, max_length: fixed.then_some(max_length) };
        Ok(serde_json::to_value(config).expect("a config is JSON"))
    }

    fn implied_outs(&self, config: &Value) -> Vec<(String, String)> {
        let Ok(config) = Config::deserialize(config) else { return Vec::new() };
        let mut outs: Vec<(String, String)> = config.variants.iter().map(|v| (v.clone(), format!("{v}/"))).collect();
        if config.tokenizer {
            outs.push(("tokenizer".into(), "tokenizer.json".into()));
        }
        outs.push(("manifest".into(), "export.json".into()));
        outs
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let ck_path = cx.deps.get("checkpoint").and_then(|p| p.first()).ok_or_else(|| StageError::NoDep("checkpoint".into()))?;
        let ck = Checkpoint::open(&cx.root.join(ck_path)).map_err(|e| e.to_string())?;
        let _ = writeln!(cx.log, "checkpoint `{ck_path}`: {:?} {:?}, {} layers, d={}", ck.format, ck.config.arch, ck.config.n_layer, ck.config.d_model);
        let precision = config.precision;
        let external = match config.external_data {
            ExternalData::Set(b) => Some(b),
            ExternalData::Auto(_) => None,
        };
        // The tokenizer first: the `hf` directory takes a copy of it.
        let tokenizer_path = cx.outs.get("tokenizer").map(|dest| cx.root.join(dest));
        let tokenizer = match &tokenizer_path {
            Some(dest) => Some(write_tokenizer(&ck, cx.deps.get("tokenizer").and_then(|p| p.first()).map(|p| cx.root.join(p)).as_deref(), dest)?),
            None => None,
        };
        let mut reports = Vec::new();
        for v in config.variants.iter().map(String::as_str) {
            let dir = cx.root.join(&cx.outs[v]);
            let report = if v == export::hf::VARIANT {
                let report = export::hf::export_hf(&ck, precision, tokenizer_path.as_deref(), &dir).map_err(|e| e.to_string())?;
                let _ = writeln!(cx.log, "{v}: {} bytes in {:.0} ms", report.file_bytes, report.export_ms);
                artifact::Variant::Hf(report)
            } else {
                let variant = Variant::parse(v).ok_or_else(|| format!("unknown variant `{v}`"))?;
                let opts = ExportOptions {
                    variant,
                    precision,
                    opset: config.opset,
                    external_data: external,
                    max_length: config.max_length.flatten().map(|n| n as usize),
                };
                let report = export::export(&ck, &opts, &dir.join("model.onnx")).map_err(|e| e.to_string())?;
                let _ = writeln!(cx.log, "{v}: {} bytes in {:.0} ms", report.file_bytes + report.data_bytes, report.export_ms);
                artifact::Variant::Onnx(report)
            };
            reports.push(report);
        }
        let manifest = artifact::Export {
            checkpoint: artifact::Checkpoint { path: ck_path.clone(), format: ck.format, config: ck.config.clone() },
            tool: format!("tr118 {}", crate::VERSION),
            variants: reports,
            tokenizer,
        };
        // Through a JSON value, so every object's keys are sorted, as they always were.
        let value = serde_json::to_value(&manifest).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())?;
        std::fs::write(cx.root.join(&cx.outs["manifest"]), bytes).map_err(|e| format!("writing export.json: {e}"))?;
        Ok(Outcome::Ok)
    }
}

/// Writes `tokenizer.json` from the first source that has one; returns where it came from.
fn write_tokenizer(ck: &Checkpoint, dep: Option<&Path>, dest: &Path) -> Result<String, String> {
    if let Some(src) = dep {
        std::fs::copy(src, dest).map_err(|e| format!("copying tokenizer `{}`: {e}", src.display()))?;
        return Ok(format!("dep `{}`", src.display()));
    }
    if let Some(header) = &ck.gguf
        && header.get_str("tokenizer.ggml.model").is_some()
    {
        let vocab = gguf_vocab(header).map_err(|e| format!("`{}`: {e}", ck.path.display()))?;
        let json = tokenizer::gguf_tokenizer_json(&vocab, Some(ck.config.vocab_size)).map_err(|e| format!("`{}`: {e}", ck.path.display()))?;
        std::fs::write(dest, json).map_err(|e| format!("writing tokenizer.json: {e}"))?;
        return Ok("embedded in the GGUF".into());
    }
    if ck.format == Format::Safetensors {
        let dir = if ck.path.is_dir() { ck.path.clone() } else { ck.path.parent().map(Path::to_path_buf).unwrap_or_default() };
        let src = dir.join("tokenizer.json");
        if src.exists() {
            std::fs::copy(&src, dest).map_err(|e| format!("copying `{}`: {e}", src.display()))?;
            return Ok("checkpoint directory".into());
        }
    }
    Err(format!("`{}` has no tokenizer tr118 can use: add a `tokenizer` dep (a tokenizer.json) or set `tokenizer = false`", ck.path.display()))
}

/// The `tokenizer.ggml.*` metadata of a GGUF file.
fn gguf_vocab(h: &GgufHeader) -> Result<GgufVocab, String> {
    let strings = |key: &str| -> Result<Vec<String>, String> {
        h.get_array(key)
            .ok_or_else(|| format!("metadata `{key}` is missing"))?
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| format!("metadata `{key}` holds a non-string")))
            .collect()
    };
    Ok(GgufVocab {
        model: h.get_str("tokenizer.ggml.model").unwrap_or_default().to_string(),
        pre: h.get_str("tokenizer.ggml.pre").map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: if h.get("tokenizer.ggml.merges").is_some() { strings("tokenizer.ggml.merges")? } else { Vec::new() },
        token_types: h.get_array("tokenizer.ggml.token_type").map(|a| a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect()),
        bos: h.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos: h.get_u64("tokenizer.ggml.eos_token_id").map(|v| v as u32),
    })
}
