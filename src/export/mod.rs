//! Checkpoint → ONNX for the GPT-2 and Llama families, without Python; and the same weights
//! as a Hugging Face directory for PyTorch ([`hf`], the `hf` variant).
//!
//! Three ONNX variants share one graph builder ([`transformer`]):
//!
//! | variant   | inputs                                                        | outputs |
//! |-----------|---------------------------------------------------------------|---------|
//! | `prefill` | `input_ids` [batch, sequence], `attention_mask` [batch, sequence] | `logits` [batch, sequence, vocab] |
//! | `decoder` | the same, `attention_mask` over past + new tokens, and `past_key_values.N.key`/`.value` [batch, kv_heads, past_sequence, head_dim] (past may be 0) | `logits`, `present.N.key`/`.value` [batch, kv_heads, total_sequence, head_dim] |
//! | `decoder_fixed` | `input_ids`, `attention_mask` [batch, max_length] over the whole buffer, `past_length` [1], and `past_key_values.N.key`/`.value` [batch, kv_heads, max_length, head_dim] | `logits`, `present.N.key`/`.value` [batch, kv_heads, max_length, head_dim] |
//!
//! Batch and sequence axes are dynamic. Positions are `past .. past + sequence`, so a
//! padded batch must be padded on the right; the attention mask hides padded keys.
//!
//! `decoder_fixed` is the decoder for CUDA graphs: a replayed decode step must have the same
//! shapes every step, so the cache is a buffer of a fixed capacity `max_length` (a fixed
//! dimension in the graph, not a symbolic one) rather than one that grows. `past_length`
//! says how many positions are filled, the same for the whole batch, and the step writes its
//! keys and values at `past_length .. past_length + sequence`, in place where the runtime
//! binds past and present to one buffer. `next_token` is the argmax of each row's last
//! logits, so a runtime that keeps the logits on the device copies one id per row to the host
//! each step. It is built from ONNX Runtime's fused operators ([`fused`]): GroupQueryAttention
//! over a float16 cache at fp16, explicit attention over a float32 one at fp32.

//! Layout decisions:
//! - Linear weights are stored transposed (`[in, out]`) so every projection is a plain
//!   `MatMul`; tied embeddings are stored once and transposed in the graph for the output
//!   projection.
//! - RoPE is applied in the "half" layout (`x[i]` with `x[i + hd/2]`). A GGUF checkpoint,
//!   whose converter permuted Q and K rows for the interleaved layout, has those rows
//!   permuted back at export: attention scores are invariant under a permutation applied to
//!   both Q and K, so the model is the same function with one RoPE implementation.
//! - Attention masks use `Where(allowed, scores, lowest)` rather than an additive bias, so a
//!   fully masked (padding) row cannot turn into NaN.
//! - `fp16` computes in float16: every weight is stored as float16 (half the file) and the
//!   projections, attention products, activations, RoPE and residual adds run on float16,
//!   because TensorRT for RTX builds strongly typed networks, taking each layer's precision
//!   from the graph's types rather than from builder flags: a graph of float16 weights cast
//!   to float32 would give a float32 plan. The numerically sensitive parts run in float32
//!   between explicit `Cast`s, as mixed-precision model builders (ONNX Runtime GenAI's)
//!   place them: LayerNorm and RMSNorm (input and weights cast to float32, the result cast
//!   back; RMSNorm's `x·x` overflows float16 where SmolLM2's activations reach |x| ≈ 3,300),
//!   the RoPE angles, and the attention mask and softmax (scores cast to float32, masked with
//!   float32's lowest value, probabilities cast back for the value product). The interface
//!   does not change: int64 ids and mask, float32 `logits`, and a float32 cache (`past_*`
//!   cast to float16 on the way in, `present.*` to float32 on the way out), so every runtime
//!   and the KV-cache code run either precision alike.
//! - Models whose weights exceed protobuf's 2 GiB limit are written with external data
//!   (`model.onnx.data` beside `model.onnx`); `external_data = true` forces it.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::{Checkpoint, ModelError};
use crate::onnx::{self, WriteOptions};

pub(crate) mod fused;
pub(crate) mod hf;
pub(crate) mod transformer;

use transformer::Cache;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Prefill,
    Decoder,
    /// A decoder over a cache of fixed capacity ([`ExportOptions::max_length`]).
    DecoderFixed,
}

impl Variant {
    pub(crate) fn parse(s: &str) -> Option<Variant> {
        match s {
            "prefill" => Some(Variant::Prefill),
            "decoder" => Some(Variant::Decoder),
            "decoder_fixed" => Some(Variant::DecoderFixed),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Variant::Prefill => "prefill",
            Variant::Decoder => "decoder",
            Variant::DecoderFixed => "decoder_fixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
}

impl Precision {
    pub(crate) fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" => Some(Precision::Fp32),
            "fp16" => Some(Precision::Fp16),
            _ => None,
        }
    }
}

pub struct ExportOptions {
    pub variant: Variant,
    pub precision: Precision,
    pub opset: i64,
    /// `None`: only when the weights exceed protobuf's limit.
    pub external_data: Option<bool>,
    /// The cache capacity of `decoder_fixed`; `None`: the model's context length, at most
    /// [`DEFAULT_MAX_LENGTH`]. Other variants ignore it.
    pub max_length: Option<usize>,
}

/// The largest default capacity of `decoder_fixed`: two buffers of a long-context model's
/// full context would take more memory than a benchmark needs.
pub(crate) const DEFAULT_MAX_LENGTH: usize = 4096;

/// What the study's report tabulates about one exported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    pub variant: Variant,
    pub precision: Precision,
    pub file: String,
    pub opset: i64,
    pub export_ms: f64,
    pub file_bytes: u64,
    pub data_bytes: u64,
    pub external_data: bool,
    pub initializer_count: usize,
    pub initializer_bytes: u64,
    pub node_count: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub dynamic_axes: Vec<String>,
    /// The cache capacity, for `decoder_fixed` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// blake3 of the model file followed by its external data, if any.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Write(String),
    #[error("opset {0} is not supported; use 17 or later")]
    Opset(i64),
    #[error("`max_length` {max_length} is beyond the model's context length {n_ctx}; use at most {n_ctx}")]
    MaxLength { max_length: usize, n_ctx: usize },
    #[error(
        "the fp16 `decoder_fixed` runs ONNX Runtime's GroupQueryAttention with its fused rotary embedding, which needs a head size that is a multiple of 16; this model's is {0}: export `decoder_fixed` with `precision = \"fp32\"`"
    )]
    FusedHeadDim(usize),
    #[error("`max_length` must be at least 1")]
    ZeroMaxLength,
}

/// Exports one variant of `ck` to `path` (a `.onnx` file; external data goes beside it).
pub fn export(ck: &Checkpoint, opts: &ExportOptions, path: &Path) -> Result<ExportReport, ExportError> {
    if opts.opset < 17 {
        return Err(ExportError::Opset(opts.opset));
    }
    let cache = match opts.variant {
        Variant::Prefill => Cache::None,
        Variant::Decoder => Cache::Growing,
        Variant::DecoderFixed => Cache::Fixed { max_length: fixed_capacity(ck, opts)? },
    };
    let t0 = Instant::now();
    let built = transformer::build(ck, opts, cache)?;
    let weights = onnx::initializer_bytes(&built.graph);
    let external = opts.external_data.unwrap_or(weights > onnx::PROTOBUF_LIMIT - (64 << 20));
    let write = WriteOptions {
        opset: opts.opset,
        external_data: external,
        producer_version: crate::VERSION.to_string(),
        metadata: vec![
            ("tr118.arch".into(), format!("{:?}", ck.config.arch).to_lowercase()),
            ("tr118.variant".into(), opts.variant.name().into()),
            ("tr118.source".into(), ck.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        ],
    };
    let summary = onnx::write_model(built.graph, path, &write).map_err(ExportError::Write)?;
    let export_ms = (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let mut files = vec![path.to_path_buf()];
    if external {
        files.push(path.with_file_name(format!("{}.data", path.file_name().unwrap_or_default().to_string_lossy())));
    }
    let digest = digest_files(&files)?;
    Ok(ExportReport {
        variant: opts.variant,
        precision: opts.precision,
        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        opset: opts.opset,
        export_ms,
        file_bytes: summary.onnx_bytes,
        data_bytes: summary.data_bytes,
        external_data: summary.external_data,
        initializer_count: summary.initializer_count,
        initializer_bytes: summary.initializer_bytes,
        node_count: summary.node_count,
        inputs: built.inputs,
        outputs: built.outputs,
        dynamic_axes: built.dynamic_axes,
        max_length: match cache {
            Cache::Fixed { max_length } => Some(max_length),
            _ => None,
        },
        digest,
    })
}

/// The capacity of a `decoder_fixed` export of `ck`: positions past the model's context are
/// not the model's (GPT-2 has no position embedding for them).
fn fixed_capacity(ck: &Checkpoint, opts: &ExportOptions) -> Result<usize, ExportError> {
    let hd = ck.config.head_dim();
    if opts.precision == Precision::Fp16 && ck.config.arch == crate::model::Arch::Llama && !hd.is_multiple_of(16) {
        return Err(ExportError::FusedHeadDim(hd));
    }
    let n_ctx = ck.config.n_ctx;
    match opts.max_length {
        None => Ok(n_ctx.min(DEFAULT_MAX_LENGTH)),
        Some(0) => Err(ExportError::ZeroMaxLength),
        Some(max_length) if max_length > n_ctx => Err(ExportError::MaxLength { max_length, n_ctx }),
        Some(max_length) => Ok(max_length),
    }
}

/// blake3 of `paths`' contents, one after the other: a variant's digest.
fn digest_files(paths: &[std::path::PathBuf]) -> Result<String, ExportError> {
    let mut hasher = blake3::Hasher::new();
    for p in paths {
        // Read, not mapped: a mapping would count the whole written file as resident.
        std::fs::File::open(p)
            .and_then(|f| hasher.update_reader(std::io::BufReader::with_capacity(1 << 20, f)).map(|_| ()))
            .map_err(|e| ExportError::Write(format!("hashing `{}`: {e}", p.display())))?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}
