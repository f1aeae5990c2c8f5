//! TensorRT through `trtexec`: finding it, the command line of a plan build, and reading back
//! what it printed and exported.
//!
//! TensorRT has no C API and no Rust binding that builds, so plans are built by NVIDIA's own
//! command-line builder. This module is pure: it makes argument lists and parses text; the
//! `trt_build` stage kind runs the process.
//!
//! ## Finding `trtexec`
//!
//! `TRTEXEC`, when set and not empty, is an absolute path to the binary or a command name
//! looked up on `PATH`; otherwise `trtexec` is looked up on `PATH`. An environment variable
//! rather than a pipeline field, because where TensorRT is installed is a fact of the machine,
//! not of the study: a field would put an absolute path into every key and make the pipeline
//! unportable. What a build depends on is the binary itself, which enters keys through the
//! `trtexec` facet (its blake3 digest, see [`crate::facets`]), never its location.
//!
//! ## The command line ([`BuildCommand::args`])
//!
//! | flag                                   | why                                                      |
//! |----------------------------------------|----------------------------------------------------------|
//! | `--onnx=<model>`                       | the export's prefill model (external data beside it)    |
//! | `--saveEngine=<plan>`                  | the plan is the product                                  |
//! | `--fp16`                               | fp16: lets TensorRT pick FP16 kernels                    |
//! | `--int8 [--fp16] --calib=<cache>`      | int8 with the calibration cache's scales; `--fp16` (`also_fp16`) lets layers without an INT8 kernel fall back to FP16 rather than FP32 |
//! | `--noTF32`                             | only with `tf32 = false`: TensorRT runs FP32 layers as TF32 on Ampere and later by default, which is not IEEE FP32 |
//! | `--minShapes --optShapes --maxShapes`  | one group per optimisation profile, every dynamic input, dimensions from the declared profiles; `trtexec` reads each repeated group as one more profile |
//! | `--memPoolSize=workspace:<MiB>`        | only with `workspace_mib`: caps the builder's scratch memory (a bare number is MiB) |
//! | `--timingCacheFile=<file>`             | reuses kernel timings across rebuilds                    |
//! | `--exportLayerInfo=<layers.json>`      | the engine inspector's per-layer JSON, for the precision census |
//! | `--profilingVerbosity=detailed`        | without it the layer information holds names only       |
//! | `--skipInference`                      | a build node measures the build; latency is the sweeps' job, on their own terms |
//!
//! `--verbose` is never passed: its output is megabytes of tactic timings that nothing reads.
//! The flags are those of TensorRT 8.4 and later (`--memPoolSize` and `--skipInference`
//! appeared in 8.4).
//!
//! ## Reading back
//!
//! - The version ([`parse_version`]): `[I] TensorRT version: 10.3.0`, else the banner
//!   `&&&& RUNNING TensorRT.trtexec [TensorRT v100300]`, whose number is
//!   `major·10000 + minor·100 + patch` from TensorRT 10 on and `major·1000 + minor·100 + patch`
//!   before (`v8601` is 8.6.1).
//! - The builder's own time ([`parse_engine_build_seconds`]): `[I] Engine built in 12.3 sec.`
//! - No usable GPU ([`no_gpu_line`]): CUDA's messages for no device or an unusable driver. A
//!   build that fails for that reason cannot run here; any other failure is a failure.
//! - The layer information ([`parse_layer_info`]), the engine inspector's JSON as the
//!   TensorRT Developer Guide documents it (section "Engine Inspector",
//!   `IEngineInspector::getEngineInformation(LayerInformationFormat::kJSON)`):
//!
//!   ```json
//!   { "Layers": [ { "Name": "…", "LayerType": "CaskConvolution",
//!                   "Inputs":  [ { "Name": "…", "Location": "Device", "Dimensions": [16,512,28,28],
//!                                  "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format" } ],
//!                   "Outputs": [ … ], "TacticValue": "0x…", … } ],
//!     "Bindings": [ "input", "output" ] }
//!   ```
//!
//! A tensor's type is read from the words of its `Format/Datatype` ([`datatype_of`]): `INT8` /
//! `Int8` is int8, `FP16` / `Half` fp16, `FP32` / `Float` fp32, anything else (`Int32`, `Int64`,
//! `Bool`, `BF16`, `FP8`) other. A layer's precision ([`Layer::precision`]) is the narrowest
//! of int8 < fp16 < fp32 among its inputs — the data it computes on — or among its outputs
//! when no input has one of those types (a gather of integer ids), else other. So a reformat
//! that quantises FP32 to INT8 is an FP32 layer and the layer that consumes the INT8 tensor is
//! an INT8 one. Layers TensorRT hands to Myelin (`LayerType` `Myelin`, names like
//! `{ForeignNode[…]}`) show only the region's boundary tensors: INT8 work inside such a region
//! is invisible to this census, and a plan whose INT8 work is all inside one reads as having
//! no INT8 layer.

pub(crate) mod rtx;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::onnx::signature::{SigDim, TensorSig};

/// The environment variable that points at `trtexec`.
pub(crate) const TRTEXEC_ENV: &str = "TRTEXEC";

/// At most this many INT8 layer names are listed; the count is always complete.
pub(crate) const MAX_LISTED_LAYERS: usize = 50;

/// Why `trtexec` cannot be run.
/// A degraded node's reason, in its `build.json` and in the report: directories and paths
/// inside the workspace (a virtual environment's `bin/` on `PATH`) are named relative to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotFound {
    #[error("`{program}`{from_env} not found on PATH (TensorRT is not installed); looked in: {}", searched_list(.searched))]
    NotOnPath { program: String, from_env: FromEnv, searched: Vec<PathBuf> },
    #[error("`TRTEXEC` names `{}`, which is not an executable file; set it to the absolute path of `trtexec` or unset it", crate::paths::shown(std::path::Path::new(.value)))]
    BadEnv { value: String },
}

/// Whether the program name came from `TRTEXEC`; displays as a note when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FromEnv(pub bool);

impl fmt::Display for FromEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 { write!(f, " (from `{TRTEXEC_ENV}`)") } else { Ok(()) }
    }
}

fn searched_list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "nothing (PATH is empty)".into();
    }
    dirs.iter().map(|d| crate::paths::shown(d)).collect::<Vec<_>>().join(", ")
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && crate::digest::is_executable(&m))
}

/// `trtexec` as this process's environment finds it.
pub(crate) fn locate() -> Result<PathBuf, NotFound> {
    locate_with(std::env::var_os(TRTEXEC_ENV).as_deref(), std::env::var_os("PATH").as_deref())
}

/// [`locate`] with the values of `TRTEXEC` and `PATH` given.
pub(crate) fn locate_with(trtexec: Option<&OsStr>, path: Option<&OsStr>) -> Result<PathBuf, NotFound> {
    let from_env = trtexec.filter(|v| !v.is_empty());
    let program = from_env.map_or_else(|| "trtexec".to_string(), |v| v.to_string_lossy().into_owned());
    if from_env.is_some() && program.contains('/') {
        let p = PathBuf::from(&program);
        return if p.is_absolute() && is_executable_file(&p) { Ok(p) } else { Err(NotFound::BadEnv { value: program }) };
    }
    let searched: Vec<PathBuf> = path.map(|p| std::env::split_paths(p).filter(|d| !d.as_os_str().is_empty()).collect()).unwrap_or_default();
    searched.iter().map(|d| d.join(&program)).find(|c| is_executable_file(c)).ok_or(NotFound::NotOnPath {
        program,
        from_env: FromEnv(from_env.is_some()),
        searched,
    })
}

/// Problems with profiles against a model, or with what `trtexec` wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrtError {
    #[error("profile {profile} names dimension `{name}`, which no input of the model has; its dynamic dimensions are {}{}", ticked(.known), suggestion(.name, .known))]
    UnknownDimension { profile: usize, name: String, known: Vec<String> },
    #[error("profile {profile} gives no size for dimension `{dim}` of input `{input}`")]
    MissingDimension { profile: usize, dim: String, input: String },
    #[error("input `{input}` has an unnamed dynamic dimension (axis {axis}); profiles size dimensions by name")]
    UnnamedDimension { input: String, axis: usize },
    #[error("the model has dynamic inputs ({}) but no `profiles` are declared; TensorRT needs their sizes", .inputs.join(", "))]
    NoProfiles { inputs: Vec<String> },
    #[error("input name `{0}` cannot be written in a shape spec (it holds `,` or `:`)")]
    UnwritableName(String),
    #[error("bad layer information: {0}")]
    LayerInfo(String),
}

fn ticked(names: &[String]) -> String {
    if names.is_empty() { "none".into() } else { crate::diag::ticked(names) }
}

fn suggestion(name: &str, known: &[String]) -> String {
    crate::diag::suggest(name, known.iter().map(String::as_str)).map_or(String::new(), |s| format!("; {s}"))
}

/// The precision a plan is built for, with what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanPrecision {
    Fp32,
    Fp16,
    /// Post-training quantisation with a TensorRT calibration cache; `also_fp16` lets layers
    /// without an INT8 kernel fall back to FP16.
    Int8 {
        calibration: PathBuf,
        also_fp16: bool,
    },
}

/// One optimisation profile: dimension name → `[min, opt, max]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile(pub BTreeMap<String, [u64; 3]>);

/// One profile as shape specs, `input_ids:1x1,attention_mask:1x1` — the syntax of `trtexec`'s
/// `--minShapes` and of ONNX Runtime's `trt_profile_min_shapes` alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeSpecs {
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// The shape specs of every profile for the model's dynamic inputs, in the model's input
/// order. Every dynamic dimension must be sized by every profile, and every name a profile
/// uses must be a dynamic dimension of some input.
pub fn profile_shapes(inputs: &[TensorSig], profiles: &[Profile]) -> Result<Vec<ShapeSpecs>, TrtError> {
    let dynamic: Vec<&TensorSig> = inputs.iter().filter(|i| i.is_dynamic()).collect();
    let mut known: Vec<String> = Vec::new();
    for input in &dynamic {
        if input.name.contains([',', ':']) {
            return Err(TrtError::UnwritableName(input.name.clone()));
        }
        for (axis, d) in input.dims.iter().enumerate() {
            match d {
                SigDim::Named(n) if !known.contains(n) => known.push(n.clone()),
                SigDim::Unnamed => return Err(TrtError::UnnamedDimension { input: input.name.clone(), axis }),
                _ => {}
            }
        }
    }
    if profiles.is_empty() && !dynamic.is_empty() {
        let inputs = dynamic.iter().map(|i| format!("`{}`: {}", i.name, i.dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(" × "))).collect();
        return Err(TrtError::NoProfiles { inputs });
    }
    let mut out = Vec::with_capacity(profiles.len());
    for (p, profile) in profiles.iter().enumerate() {
        if let Some(name) = profile.0.keys().find(|k| !known.contains(k)) {
            return Err(TrtError::UnknownDimension { profile: p, name: name.clone(), known: known.clone() });
        }
        let spec = |which: usize| -> Result<String, TrtError> {
            let mut parts = Vec::with_capacity(dynamic.len());
            for input in &dynamic {
                let mut sizes = Vec::with_capacity(input.dims.len());
                for d in &input.dims {
                    sizes.push(match d {
                        SigDim::Fixed(n) => *n,
                        SigDim::Named(name) => match profile.0.get(name) {
                            Some(v) => v[which],
                            None => return Err(TrtError::MissingDimension { profile: p, dim: name.clone(), input: input.name.clone() }),
                        },
                        SigDim::Unnamed => unreachable!("rejected above"),
                    });
                }
                parts.push(format!("{}:{}", input.name, sizes.iter().map(u64::to_string).collect::<Vec<_>>().join("x")));
            }
            Ok(parts.join(","))
        };
        out.push(ShapeSpecs { min: spec(0)?, opt: spec(1)?, max: spec(2)? });
    }
    Ok(out)
}

/// Parses a shape spec (`name:1x2,other:3`) into names and sizes, as `trtexec` and ONNX
/// Runtime's TensorRT provider read it.
pub(crate) fn parse_shape_spec(spec: &str) -> Result<Vec<(String, Vec<u64>)>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let Some((name, dims)) = part.rsplit_once(':') else {
            return Err(format!("`{part}` is not `name:dims` (e.g. `input_ids:1x128`)"));
        };
        if name.is_empty() {
            return Err(format!("`{part}` has no input name"));
        }
        let sizes: Result<Vec<u64>, _> = dims.split('x').map(str::parse::<u64>).collect();
        match sizes {
            Ok(s) if !s.is_empty() => out.push((name.to_string(), s)),
            _ => return Err(format!("`{dims}` in `{part}` is not sizes joined by `x` (e.g. `1x128`)")),
        }
    }
    Ok(out)
}

/// Everything one plan build is made of. Paths are as `trtexec` will see them: relative to the
/// directory it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCommand {
    pub onnx: PathBuf,
    pub plan: PathBuf,
    pub layers: PathBuf,
    pub precision: PlanPrecision,
    /// `false` forbids TF32 for FP32 layers (`--noTF32`); TensorRT allows it by default.
    pub tf32: bool,
    pub shapes: Vec<ShapeSpecs>,
    pub workspace_mib: Option<u64>,
    pub timing_cache: Option<PathBuf>,
}

impl BuildCommand {
    /// The arguments after the program name, in a fixed order (see the module docs).
    pub fn args(&self) -> Vec<String> {
        let p = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
        let mut a = vec![p("onnx", &self.onnx), p("saveEngine", &self.plan)];
        match &self.precision {
            PlanPrecision::Fp32 => {}
            PlanPrecision::Fp16 => a.push("--fp16".into()),
            PlanPrecision::Int8 { calibration, also_fp16 } => {
                a.push("--int8".into());
                if *also_fp16 {
                    a.push("--fp16".into());
                }
                a.push(p("calib", calibration));
            }
        }
        if !self.tf32 {
            a.push("--noTF32".into());
        }
        for s in &self.shapes {
            a.push(format!("--minShapes={}", s.min));
            a.push(format!("--optShapes={}", s.opt));
            a.push(format!("--maxShapes={}", s.max));
        }
        if let Some(mib) = self.workspace_mib {
            a.push(format!("--memPoolSize=workspace:{mib}"));
        }
        if let Some(t) = &self.timing_cache {
            a.push(p("timingCacheFile", t));
        }
        a.push(p("exportLayerInfo", &self.layers));
        a.push("--profilingVerbosity=detailed".into());
        a.push("--skipInference".into());
        a
    }
}

/// TensorRT's version as `trtexec` prints it (see the module docs).
pub(crate) fn parse_version(log: &str) -> Option<String> {
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once("TensorRT version: ") {
            let v = rest.split_whitespace().next().unwrap_or("");
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    let (_, rest) = log.split_once("[TensorRT v")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    Some(if n >= 100_000 {
        format!("{}.{}.{}", n / 10_000, n / 100 % 100, n % 100)
    } else if n >= 1_000 {
        format!("{}.{}.{}", n / 1_000, n / 100 % 10, n % 100)
    } else {
        format!("v{n}")
    })
}

/// The builder's own build time, `Engine built in N sec.`, in seconds.
pub(crate) fn parse_engine_build_seconds(log: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once("Engine built in ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CUDA's messages for a machine where no GPU can be used, lowercased.
const NO_GPU: &[&str] = &["no cuda-capable device", "cudaerrornodevice", "cuda initialization failure", "cuda driver version is insufficient"];

/// The first line of `log` saying there is no usable GPU, if any.
pub(crate) fn no_gpu_line(log: &str) -> Option<&str> {
    let says_so = |l: &&str| {
        let lower = l.to_lowercase();
        NO_GPU.iter().any(|p| lower.contains(p))
    };
    log.lines().find(says_so).map(str::trim)
}

/// The last `n` lines of `log`.
pub(crate) fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A tensor's element type, as far as a precision census cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Int8,
    Fp16,
    Fp32,
    Other,
}

/// The type a `Format/Datatype` string describes (see the module docs).
pub(crate) fn datatype_of(format: &str) -> DataType {
    let lower = format.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    if words.contains(&"int8") {
        DataType::Int8
    } else if words.iter().any(|w| *w == "fp16" || *w == "half") {
        DataType::Fp16
    } else if words.iter().any(|w| *w == "fp32" || *w == "float") {
        DataType::Fp32
    } else {
        DataType::Other
    }
}

/// One input or output of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// `Format/Datatype`, when the layer information has it.
    pub format: Option<String>,
}

impl TensorInfo {
    pub(crate) fn dtype(&self) -> DataType {
        self.format.as_deref().map_or(DataType::Other, datatype_of)
    }
}

/// One layer of a built plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub layer_type: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

impl Layer {
    /// The narrowest of int8 < fp16 < fp32 among the inputs, else among the outputs, else other.
    pub(crate) fn precision(&self) -> DataType {
        let narrowest = |ts: &[TensorInfo]| ts.iter().map(TensorInfo::dtype).filter(|d| *d != DataType::Other).min();
        narrowest(&self.inputs).or_else(|| narrowest(&self.outputs)).unwrap_or(DataType::Other)
    }
}

/// The layer information of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub layers: Vec<Layer>,
    pub bindings: Vec<String>,
}

fn tensors(layer: &serde_json::Map<String, Value>, key: &str, at: &str) -> Result<Vec<TensorInfo>, TrtError> {
    let Some(v) = layer.get(key) else { return Ok(Vec::new()) };
    let Some(items) = v.as_array() else {
        return Err(TrtError::LayerInfo(format!("{at}: `{key}` is not a list")));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.as_object().ok_or_else(|| TrtError::LayerInfo(format!("{at}: `{key}[{i}]` is not an object")))?;
            Ok(TensorInfo {
                name: t.get("Name").and_then(Value::as_str).unwrap_or_default().to_string(),
                format: t.get("Format/Datatype").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// Parses the engine inspector's JSON (the file `--exportLayerInfo` writes).
pub fn parse_layer_info(text: &str) -> Result<LayerInfo, TrtError> {
    let bad = |m: String| TrtError::LayerInfo(m);
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let layers = v.get("Layers").and_then(Value::as_array).ok_or_else(|| bad("no `Layers` list at the top level".into()))?;
    let mut out = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let at = format!("layer {i}");
        let Some(l) = l.as_object() else {
            return Err(bad(format!("{at} is not an object: the plan was built without `--profilingVerbosity=detailed`, so only layer names are known")));
        };
        out.push(Layer {
            name: l.get("Name").and_then(Value::as_str).unwrap_or_default().to_string(),
            layer_type: l.get("LayerType").and_then(Value::as_str).unwrap_or("unknown").to_string(),
            inputs: tensors(l, "Inputs", &at)?,
            outputs: tensors(l, "Outputs", &at)?,
        });
    }
    let bindings = v.get("Bindings").and_then(Value::as_array).map(|b| b.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default();
    Ok(LayerInfo { layers: out, bindings })
}

/// Layers counted by precision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByPrecision {
    pub fp32: usize,
    pub fp16: usize,
    pub int8: usize,
    pub other: usize,
}

/// The INT8 layers of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Int8Layers {
    pub count: usize,
    /// The first [`MAX_LISTED_LAYERS`] names, in plan order.
    pub names: Vec<String>,
    /// `LayerType` → INT8 layers of that type.
    pub by_type: BTreeMap<String, usize>,
}

/// How a network output leaves the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputType {
    pub dtype: DataType,
    pub format: Option<String>,
}

/// What the layer information says about a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerSummary {
    pub n_layers: usize,
    pub layers_by_precision: ByPrecision,
    pub int8_layers: Int8Layers,
    /// Network output → its type, from the last layer that writes it; `None` when no layer
    /// lists it.
    pub output_dtypes: BTreeMap<String, Option<OutputType>>,
}

/// Counts the layers of `info` by precision and finds the types of `outputs`.
pub fn summarise(info: &LayerInfo, outputs: &[String]) -> LayerSummary {
    let mut by = ByPrecision::default();
    let mut int8 = Int8Layers::default();
    for l in &info.layers {
        match l.precision() {
            DataType::Fp32 => by.fp32 += 1,
            DataType::Fp16 => by.fp16 += 1,
            DataType::Other => by.other += 1,
            DataType::Int8 => {
                by.int8 += 1;
                int8.count += 1;
                if int8.names.len() < MAX_LISTED_LAYERS {
                    int8.names.push(l.name.clone());
                }
                *int8.by_type.entry(l.layer_type.clone()).or_default() += 1;
            }
        }
    }
    let output_dtypes = outputs
        .iter()
        .map(|name| {
            let found = info.layers.iter().rev().flat_map(|l| l.outputs.iter()).find(|t| &t.name == name);
            (name.clone(), found.map(|t| OutputType { dtype: t.dtype(), format: t.format.clone() }))
        })
        .collect();
    LayerSummary { n_layers: info.layers.len(), layers_by_precision: by, int8_layers: int8, output_dtypes }
}

/// Checks that `path` starts like a TensorRT calibration cache: `TRT-<version>-<calibrator>`.
pub(crate) fn check_calibration_cache(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read calibration cache `{}`: {e}", path.display()))?;
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first).trim().to_string();
    let mut parts = first.splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("TRT"), Some(v), Some(calibrator)) if !v.is_empty() && !calibrator.is_empty() => Ok(first),
        _ => Err(format!(
            "`{}` is not a TensorRT calibration cache: its first line is `{}`, expected `TRT-<version>-<calibrator>` such as `TRT-8601-EntropyCalibration2`",
            path.display(),
            first.chars().take(60).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str, dims: &[&str]) -> TensorSig {
        let dims = dims
            .iter()
            .map(|d| match d.parse::<u64>() {
                Ok(n) => SigDim::Fixed(n),
                Err(_) if *d == "?" => SigDim::Unnamed,
                Err(_) => SigDim::Named(d.to_string()),
            })
            .collect();
        TensorSig { name: name.into(), elem_type: Some(7), dims }
    }

    fn profile(dims: &[(&str, [u64; 3])]) -> Profile {
        Profile(dims.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn every_dynamic_input_gets_its_sizes_and_fixed_dims_stay_fixed() {
        let inputs = [
            sig("input_ids", &["batch", "sequence"]),
            sig("attention_mask", &["batch", "sequence"]),
            sig("scale", &["4"]),
            sig("kv", &["batch", "2", "past", "8"]),
        ];
        let p = profile(&[("batch", [1, 1, 4]), ("sequence", [1, 27, 512]), ("past", [0, 64, 448])]);
        let shapes = profile_shapes(&inputs, &[p]).unwrap();
        assert_eq!(
            shapes,
            vec![ShapeSpecs {
                min: "input_ids:1x1,attention_mask:1x1,kv:1x2x0x8".into(),
                opt: "input_ids:1x27,attention_mask:1x27,kv:1x2x64x8".into(),
                max: "input_ids:4x512,attention_mask:4x512,kv:4x2x448x8".into(),
            }]
        );
    }

    #[test]
    fn a_profile_naming_no_dimension_is_an_error_with_a_suggestion() {
        let inputs = [sig("input_ids", &["batch", "sequence"])];
        let e = profile_shapes(&inputs, &[profile(&[("batch", [1, 1, 4]), ("sequenc", [1, 2, 3])])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "profile 0 names dimension `sequenc`, which no input of the model has; its dynamic dimensions are `batch`, `sequence`; did you mean `sequence`?"
        );
        let e = profile_shapes(&inputs, &[profile(&[("batch", [1, 1, 4])])]).unwrap_err();
        assert_eq!(e, TrtError::MissingDimension { profile: 0, dim: "sequence".into(), input: "input_ids".into() });
        let e = profile_shapes(&inputs, &[]).unwrap_err();
        assert!(e.to_string().contains("`input_ids`: batch × sequence"), "{e}");
        let e = profile_shapes(&[sig("x", &["?"])], &[profile(&[])]).unwrap_err();
        assert_eq!(e, TrtError::UnnamedDimension { input: "x".into(), axis: 0 });
    }

    #[test]
    fn a_static_model_needs_no_profile() {
        assert_eq!(profile_shapes(&[sig("x", &["1", "3"])], &[]).unwrap(), Vec::new());
    }

    #[test]
    fn shape_specs_parse_back() {
        assert_eq!(
            parse_shape_spec("input_ids:1x1,attention_mask:4x512").unwrap(),
            vec![("input_ids".into(), vec![1, 1]), ("attention_mask".into(), vec![4, 512])]
        );
        assert!(parse_shape_spec("input_ids=1x1").unwrap_err().contains("not `name:dims`"));
        assert!(parse_shape_spec("input_ids:1xa").unwrap_err().contains("not sizes"));
        assert!(parse_shape_spec(":1").is_err());
    }

    #[test]
    fn a_path_in_trtexec_env_must_be_an_absolute_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("trtexec");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let mut perm = std::fs::metadata(&exe).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&exe, perm).unwrap();
        assert_eq!(locate_with(Some(exe.as_os_str()), None).unwrap(), exe);
        assert_eq!(locate_with(None, Some(dir.path().as_os_str())).unwrap(), exe);
        assert_eq!(locate_with(Some(OsStr::new("bin/trtexec")), None).unwrap_err(), NotFound::BadEnv { value: "bin/trtexec".into() });
        let missing = locate_with(Some(OsStr::new("")), Some(OsStr::new("/nonexistent-a:/nonexistent-b"))).unwrap_err();
        assert_eq!(missing.to_string(), "`trtexec` not found on PATH (TensorRT is not installed); looked in: /nonexistent-a, /nonexistent-b");
        let named = locate_with(Some(OsStr::new("trtexec-10")), None).unwrap_err();
        assert_eq!(named.to_string(), "`trtexec-10` (from `TRTEXEC`) not found on PATH (TensorRT is not installed); looked in: nothing (PATH is empty)");
    }

    #[test]
    fn a_file_that_is_not_executable_is_not_trtexec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trtexec"), "not a program").unwrap();
        assert!(locate_with(None, Some(dir.path().as_os_str())).is_err());
    }

    #[test]
    fn format_strings_name_their_type_by_whole_words() {
        assert_eq!(datatype_of("Row major linear INT8 format"), DataType::Int8);
        assert_eq!(datatype_of("Thirty-two wide channel vectorized row major Int8 format."), DataType::Int8);
        assert_eq!(datatype_of("Channel major FP16 format where channel % 8 == 0"), DataType::Fp16);
        assert_eq!(datatype_of("Half"), DataType::Fp16);
        assert_eq!(datatype_of("Row major linear FP32"), DataType::Fp32);
        assert_eq!(datatype_of("Float"), DataType::Fp32);
        // `UInt8` is not INT8, and an index type is not a precision.
        assert_eq!(datatype_of("Row major linear UInt8 format"), DataType::Other);
        assert_eq!(datatype_of("Row major linear Int64 format"), DataType::Other);
        assert_eq!(datatype_of("Row major linear BF16 format"), DataType::Other);
    }

    #[test]
    fn a_layer_is_as_narrow_as_its_narrowest_input() {
        let t = |f: &str| TensorInfo { name: "t".into(), format: Some(f.into()) };
        let layer = |i: Vec<TensorInfo>, o: Vec<TensorInfo>| Layer { name: "l".into(), layer_type: "x".into(), inputs: i, outputs: o };
        let (fp32, fp16, int8, int64) =
            (t("Row major linear FP32"), t("Row major linear FP16 format"), t("Row major linear INT8 format"), t("Row major linear Int64"));
        // A quantising reformat computes on FP32; its consumer on INT8.
        assert_eq!(layer(vec![fp32.clone()], vec![int8.clone()]).precision(), DataType::Fp32);
        assert_eq!(layer(vec![int8.clone()], vec![fp32.clone()]).precision(), DataType::Int8);
        assert_eq!(layer(vec![fp32.clone(), fp16.clone()], vec![fp32.clone()]).precision(), DataType::Fp16);
        // A gather of integer ids takes its type from what it writes.
        assert_eq!(layer(vec![int64.clone()], vec![fp16]).precision(), DataType::Fp16);
        assert_eq!(layer(vec![int64.clone()], vec![int64]).precision(), DataType::Other);
        assert_eq!(layer(vec![TensorInfo { name: "t".into(), format: None }], vec![]).precision(), DataType::Other);
    }

    #[test]
    fn the_version_is_read_from_the_version_line_or_the_banner() {
        let log = "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx\n[08/01/2024-10:00:00] [I] TensorRT version: 10.3.0\n";
        assert_eq!(parse_version(log).as_deref(), Some("10.3.0"));
        assert_eq!(parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec").as_deref(), Some("10.3.0"));
        assert_eq!(parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec").as_deref(), Some("8.6.1"));
        assert_eq!(parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8401] # trtexec").as_deref(), Some("8.4.1"));
        assert_eq!(parse_version("[I] Building an engine"), None);
    }

    #[test]
    fn build_time_and_no_gpu_lines_are_found() {
        assert_eq!(parse_engine_build_seconds("[I] Engine built in 12.5314 sec.\n"), Some(12.5314));
        assert_eq!(parse_engine_build_seconds("[I] Engine built"), None);
        let log = "[I] === Device Information ===\nCuda failure: no CUDA-capable device is detected\nAborted (core dumped)\n";
        assert_eq!(no_gpu_line(log), Some("Cuda failure: no CUDA-capable device is detected"));
        assert_eq!(no_gpu_line("[E] [TRT] ModelImporter.cpp:771: ERROR: input_ids:232 In function importInput"), None);
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }

    #[test]
    fn calibration_caches_are_recognised_by_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.cache");
        std::fs::write(&good, "TRT-100300-EntropyCalibration2\ninput_ids: 3c010a14\n").unwrap();
        assert_eq!(check_calibration_cache(&good).unwrap(), "TRT-100300-EntropyCalibration2");
        let bad = dir.path().join("bad.cache");
        std::fs::write(&bad, "{\"tensors\": {}}\n").unwrap();
        assert!(check_calibration_cache(&bad).unwrap_err().contains("is not a TensorRT calibration cache"));
    }
}
