//! `build.json`: what the `trt_build` stage ([`crate::stage::trt_build`]) writes, with either
//! builder (`trtexec` or TensorRT for RTX), and the report reads.
//!
//! Like `perplexity.json`, it is written straight from the struct, so its keys come out in the
//! order of the fields below, [`Built`]'s after [`TrtBuild::timing_cache`]. The stage's module
//! doc has the table of what each field means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::trt::{ByPrecision, Int8Layers, OutputType, Profile, ShapeSpecs};

/// `build.json`: one TensorRT plan, built or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrtBuild {
    /// `trtexec` or `tensorrt-rtx`.
    pub builder: String,
    pub precision: String,
    /// `ok`, or `degraded` with a [`TrtBuild::reason`].
    pub status: String,
    pub reason: Option<String>,
    /// Problems with a plan that built.
    pub flags: Vec<String>,
    pub command: Vec<String>,
    pub trtexec: Option<String>,
    pub library: Option<String>,
    /// TensorRT for RTX: blake3 of `libtensorrt_rtx.so.1`, and the bindings offered to the helper.
    pub library_digest: Option<String>,
    pub bindings: Vec<String>,
    pub python: Option<String>,
    pub trt_version: Option<String>,
    pub gpu: String,
    pub model: String,
    pub calibration: Option<String>,
    pub dynamic_inputs: BTreeMap<String, Vec<String>>,
    pub profiles: Vec<Profile>,
    pub shapes: Vec<ShapeSpecs>,
    pub also_fp16: bool,
    pub tf32: bool,
    pub workspace_mib: Option<u64>,
    pub timing_cache: Option<String>,
    #[serde(flatten)]
    pub built: Built,
}

/// What a plan that was built measures; every field `None` until then.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Built {
    pub build_s: Option<f64>,
    pub engine_build_s: Option<f64>,
    pub peak_build_mib: Option<f64>,
    pub plan_bytes: Option<u64>,
    pub n_layers: Option<usize>,
    pub layers_by_precision: Option<ByPrecision>,
    pub int8_layers: Option<Int8Layers>,
    pub output_dtypes: Option<BTreeMap<String, Option<OutputType>>>,
    pub int8_verified: Option<bool>,
    pub fp16_verified: Option<bool>,
}
