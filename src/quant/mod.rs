//! INT8: calibration statistics, quantized ONNX models, and proof of what was quantized.
//!
//! | module        | holds                                                                     |
//! |---------------|---------------------------------------------------------------------------|
//! | [`graph`]     | a graph's MatMul/Gemm ops, their weights and activations, why one stays float |
//! | [`calibrate`] | statistics, minmax / percentile / entropy ranges, TensorRT's calibration cache |
//! | [`observe`]   | running a model with its MatMul inputs as extra outputs, over calibration samples |
//! | [`rewrite`]   | static (QDQ) and dynamic INT8 rewrites, and the read-back check          |
//!
//! The `calibrate` and `quantize` stage kinds ([`crate::stage::calibrate`],
//! [`crate::stage::quantize`]) drive these. Nothing here trusts itself: a quantized model's
//! INT8 coverage is counted by reading the written file back ([`rewrite::verify`]) and by
//! asking ONNX Runtime which kernels ran ([`ort_kernels`], through
//! [`crate::runtime::profile::kernels_per_op`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::onnx::edit::EditError;
use crate::runtime::{Runtime, RuntimeError, SessionOptions};

pub mod calibrate;
pub mod graph;
pub(crate) mod observe;
pub mod rewrite;
pub mod sensitivity;
pub mod smooth;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Model(#[from] EditError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the model's opset is {0}; per-channel `DequantizeLinear` needs opset 13 or later (export with `opset = 17`)")]
    Opset(i64),
    #[error("a `static` scheme needs a calibration: add a `calibration` dep (a `calibrate` stage's `calibration.json`)")]
    NoCalibration,
    #[error(
        "the calibration has no entry for tensor `{tensor}`, input A of {op} `{node}`; \
         calibrate this model (its MatMul/Gemm inputs are what calibration observes)"
    )]
    MissingTensor { tensor: String, node: String, op: String },
    #[error("the calibration's scale of tensor `{tensor}` is {scale}; a scale must be a positive finite number")]
    BadScale { tensor: String, scale: f32 },
    #[error("weight `{weight}`: {message}")]
    Weight { weight: String, message: String },
    #[error(
        "`exclude` pattern(s) {} match no MatMul/Gemm node, output or weight name (weights are named like `{example}`, the output projection's output is `logits`)",
        crate::diag::ticked(.patterns.iter())
    )]
    UnmatchedExclude { patterns: Vec<String>, example: String },
    #[error("tensor `{tensor}` is a graph input: calibration observes computed activations only")]
    GraphInput { tensor: String },
    #[error("tensor `{tensor}` holds a non-finite value ({value}) in calibration sample {sample}")]
    NonFinite { tensor: String, value: f32, sample: usize },
    #[error("{0}")]
    Other(String),
}

/// Kernels ONNX Runtime runs for integer matrix products.
pub(crate) const INTEGER_MATMUL_KERNELS: &[&str] = &["MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm"];
/// Kernels for float ones.
pub(crate) const FLOAT_MATMUL_KERNELS: &[&str] = &["MatMul", "Gemm", "FusedMatMul", "FusedGemm"];

/// What ONNX Runtime ran for one prefill of a model: kernels by op, after its own fusions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrtKernels {
    pub runtime_version: String,
    pub opt_level: String,
    /// The prefill's tokens (id 0, batch 1).
    pub tokens: usize,
    /// Op type of each kernel that ran → distinct nodes.
    pub kernels: BTreeMap<String, usize>,
    /// Nodes that ran one of [`INTEGER_MATMUL_KERNELS`].
    pub integer_matmul_kernels: usize,
    /// Nodes that ran one of [`FLOAT_MATMUL_KERNELS`].
    pub float_matmul_kernels: usize,
}

/// Runs one short prefill of `model` on the CPU under ONNX Runtime's profiler, with its
/// default optimisations, and counts the kernels that ran. `profile_dir` receives the
/// profile (removed afterwards).
pub(crate) fn ort_kernels(rt: &Runtime, model: &Path, profile_dir: &Path) -> Result<OrtKernels, QuantError> {
    const TOKENS: usize = 4;
    let options = SessionOptions { intra_threads: Some(1), ..SessionOptions::default() };
    let mut session = rt.profiled_session(model, &options, &profile_dir.join("kernels"))?;
    let run = session.run_prefill(&[0; TOKENS], &[1; TOKENS], 1, TOKENS).map(|_| ());
    let profile: PathBuf = session.end_profiling()?;
    run?;
    let text = std::fs::read_to_string(&profile).map_err(|e| QuantError::Other(format!("reading the profile `{}`: {e}", profile.display())))?;
    let _ = std::fs::remove_file(&profile);
    let kernels = crate::runtime::profile::kernels_per_op(&text).map_err(|e| QuantError::Other(format!("the profile `{}`: {e}", profile.display())))?;
    let count = |set: &[&str]| kernels.iter().filter(|(k, _)| set.contains(&k.as_str())).map(|(_, n)| n).sum();
    Ok(OrtKernels {
        runtime_version: rt.info().version.clone(),
        opt_level: options.opt_level.name().into(),
        tokens: TOKENS,
        integer_matmul_kernels: count(INTEGER_MATMUL_KERNELS),
        float_matmul_kernels: count(FLOAT_MATMUL_KERNELS),
        kernels,
    })
}
