//! `calibration.json`: what the `calibrate` stage ([`crate::stage::calibrate`]) writes and the
//! `quantize` stage and the report read.
//!
//! Like `perplexity.json`, it is written straight from the struct, so its keys come out in the
//! order of the fields below. The numerics that fill it are [`crate::quant::calibrate`]'s.

use serde::{Deserialize, Serialize};

/// One consumer of an observed tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub node: String,
    pub op: String,
    /// Which input of the node the tensor is.
    pub input: usize,
    /// The node's weight initializer, when its other input is one.
    pub weight: Option<String>,
}

/// One tensor of `calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorCalibration {
    pub name: String,
    pub consumers: Vec<Consumer>,
    pub min: f32,
    pub max: f32,
    pub absmax: f32,
    /// The chosen range: values beyond `±amax` saturate.
    pub amax: f32,
    /// `amax / 127`.
    pub scale: f32,
    /// The scale as the cache writes it.
    pub scale_hex: String,
    pub method: String,
    /// Samples the tensor was seen in.
    pub samples: usize,
    pub elements: u64,
    /// Entropy: bins kept and the divergence there. Null for the other methods.
    pub entropy_bins: Option<usize>,
    pub entropy_kl: Option<f64>,
    /// `max |x|` of each channel (the last axis) over every sample, for a tensor that feeds a
    /// weight: what SmoothQuant's migration ([`crate::quant::smooth`]) divides by. Empty for
    /// the others.
    #[serde(default)]
    pub channel_absmax: Vec<f32>,
}

/// `calibration.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub method: String,
    pub percentile: Option<f64>,
    /// Histogram bins (null for `minmax`) and INT8 magnitude levels.
    pub bins: Option<usize>,
    pub levels: usize,
    pub samples: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub corpus_tokens: usize,
    /// The first token of each sample window, in the order they ran.
    pub sample_starts: Vec<usize>,
    /// The model's file name and digest ([`crate::onnx::edit::Model::digest`]).
    pub model_file: String,
    pub model_digest: String,
    pub runtime_version: String,
    pub cache_header: String,
    pub elapsed_s: f64,
    /// In the order the graph first uses them.
    pub tensors: Vec<TensorCalibration>,
}

impl Calibration {
    pub fn tensor(&self, name: &str) -> Option<&TensorCalibration> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
