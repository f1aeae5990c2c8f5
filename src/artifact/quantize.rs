//! `quantize.json`: what the `quantize` stage ([`crate::stage::quantize`]) writes and the
//! report reads.
//!
//! Like `perplexity.json`, it is written straight from the struct, so its keys come out in the
//! order of the fields below (and of [`QuantizedOp`], [`FloatOp`] and [`Written`], the rewrite's
//! own records).

use serde::{Deserialize, Serialize};

pub use crate::quant::OrtKernels;
pub use crate::quant::rewrite::{FloatOp, QuantizedOp, Scheme, Written};
pub use crate::quant::sensitivity::{Ranked, Sensitivity, Step};
pub use crate::quant::smooth::{Smoothed, Unsmoothed};

/// SmoothQuant's migration of the float model before quantization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Smooth {
    pub alpha: f32,
    pub smoothed: Vec<Smoothed>,
    pub unsmoothed: Vec<Unsmoothed>,
    /// Max |Δ| of the migrated fp32 model's logits against the source's, in ONNX Runtime.
    pub max_logit_diff: f32,
    /// The source's largest |logit| over the same tokens: the scale the difference is judged by.
    pub max_abs_logit: f32,
    pub check_tokens: usize,
}

/// `quantize.json`: one INT8 rewrite of a prefill model (and of its decoder, if any).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quantize {
    pub scheme: Scheme,
    pub per_channel: bool,
    /// Dynamic: one activation scale per token instead of per tensor.
    pub per_token: bool,
    /// Name patterns left in float.
    pub exclude: Vec<String>,
    /// How activations and weights are quantized, in words.
    pub activations: String,
    pub weights: String,
    /// MatMul/Gemm nodes of the source, those rewritten, and those found rewritten in the
    /// written file.
    pub matmul_total: usize,
    pub quantized: usize,
    pub verified: usize,
    pub ops: Vec<QuantizedOp>,
    pub left_float: Vec<FloatOp>,
    /// The decoder's rewrite, when the stage has a `decoder` dep.
    pub decoder: Option<Decoder>,
    /// Wall time of the node: rewrites, writes, read-backs and the ONNX Runtime check.
    pub elapsed_s: f64,
    pub written: Written,
    /// Whether ONNX Runtime ran an integer kernel for every verified op.
    pub ran_integer: bool,
    pub ort: OrtKernels,
    /// The calibration a `static` rewrite took its scales from.
    pub calibration: Option<CalibrationRef>,
    /// SmoothQuant's migration, when `smooth_alpha` is set.
    pub smooth: Option<Smooth>,
    /// The sensitivity pass, when `sensitivity` is set: its ranking and the ops it left float.
    pub sensitivity: Option<Sensitivity>,
    pub source_digest: String,
    pub file_bytes: u64,
    pub data_bytes: u64,
}

/// What the decoder's rewrite did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decoder {
    pub source_digest: String,
    pub matmul_total: usize,
    pub quantized: usize,
    pub verified: usize,
    pub left_float: Vec<FloatOp>,
    pub file_bytes: u64,
    pub data_bytes: u64,
}

/// The calibration a `static` rewrite read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationRef {
    pub method: String,
    pub cache_header: String,
    pub model_digest: String,
}
