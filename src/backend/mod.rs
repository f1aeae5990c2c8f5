//! Backends: the things a study compares. A backend is declared once in the pipeline,
//!
//! ```toml
//! [[backends]]
//! name = "onnxruntime-cpu"
//! runtime = "onnxruntime"
//! provider = "cpu"          # cpu | cuda | tensorrt
//! model = "out/export"      # the models it runs: a directory with `prefill/` and `decoder/`
//! precision = "fp32"        # fp32 | fp16 | int8: which model it runs, and its accuracy threshold
//! threads = 2               # intra-op threads (default: ONNX Runtime's)
//! opt_level = "all"         # disable | basic | extended | layout | all
//! device_id = 0
//! trt_fp16 = false          # TensorRT builder flags
//! trt_int8_calibration_table = "out/calibrate/calibration.cache"
//! trt_engine_cache = "cache/trt-engines"
//! trt_profile_min_shapes = "input_ids:1x1,attention_mask:1x1"     # optimisation profile:
//! trt_profile_opt_shapes = "input_ids:1x27,attention_mask:1x27"   # all three or none, in the
//! trt_profile_max_shapes = "input_ids:4x512,attention_mask:4x512" # syntax of `trtexec`
//! cuda_graph = false        # CUDA graphs for prefill and resident decode steps (`cuda` only)
//! io_binding = true         # ONNX Runtime's I/O binding (default: on with an accelerator)
//! ```
//!
//! A `torch` backend runs the same weights through PyTorch and `transformers`, in a Python
//! worker that tr118 starts and speaks to over a line protocol ([`torch`],
//! `docs/torch-worker.md`):
//!
//! ```toml
//! [[backends]]
//! name = "torch-compile"
//! runtime = "torch"
//! provider = "cuda"          # cpu | cuda: the torch device (`cuda:{device_id}`)
//! model = "out/export"       # runs `{model}/hf`, the export's Hugging Face directory
//! compile = "inductor"       # torch.compile's backend; absent: eager
//! compile_mode = "reduce-overhead"   # torch.compile's mode (default | reduce-overhead | max-autotune | …)
//! ```
//!
//! Each backend's models are `prefill` and `decoder` paths, which stages reach as
//! `{matrix.backend.prefill}` and `{matrix.backend.decoder}`. Unless the backend names them,
//! they are derived from `model` when the pipeline is loaded ([`derived_fields`]):
//! `{model}/prefill` and `{model}/decoder` for ONNX Runtime, `{model}/hf` for both on torch.
//! A torch backend also gets the facet `torch` (the worker's Python, torch and transformers
//! versions) into its nodes' keys, so installing or upgrading torch reruns them and nothing
//! else.
//!
//! The TensorRT fields mirror the `trt_build` stage's plans: the same calibration cache (in
//! TensorRT's own format, so `trt_int8_use_native_calibration_table` is set), and the same
//! profiles (`build.json`'s `shapes` are these strings). A `tensorrt` backend's calibration
//! table is a dep of each of its nodes ([`implied_deps`]): a workspace path, whose content is
//! in their keys.
//!
//! and `[[backends]]` is the matrix axis `backend`: a stage with `matrix = ["backend"]` has
//! one node per backend, whose key holds that backend's whole declaration and nothing of the
//! others — editing one backend reruns only its nodes.
//!
//! Opening a backend never falls back: a provider that is not there is
//! [`BackendError::Unavailable`], which stages turn into a degraded result with the reason.
//! Opening also probes what really runs ([`probe`]): one tiny prefill under ONNX Runtime's
//! profiler fills [`Capability::providers_assigned`], and a requested accelerator that ran no
//! node is [`Capability::degradation`], for the stage to report the same way.
//!
//! | module       | holds                                                                   |
//! |--------------|-------------------------------------------------------------------------|
//! | here         | [`BackendSpec`], the [`Backend`] trait and its backend-neutral [`Prepared`] inputs and [`DecodeCache`], [`open`] |
//! | `ort`        | the `onnxruntime` runtime: a session or a decoder; the only code that looks inside those two |
//! | [`torch`]    | the `torch` and `tensorrt-rtx` runtimes: a Python worker that times itself |
//! | [`probe`]    | what really ran (ONNX Runtime's profile), the GPU and CPU facts beside it |
//! | [`workload`] | the timing loops that drive a backend, one per sweep mode               |
//! | `software`   | the facets that name a backend's software (`ort`, `trtexec`, `torch`)  |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ndarray::{ArrayD, ArrayViewD};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::runtime::{self, KvCache, OptLevel, PreparedInputs, Provider, RuntimeError, SessionOptions, TrtOptions};

mod ort;
pub mod probe;
pub(crate) mod software;
pub(crate) mod torch;
pub mod workload;

use workload::Generation;

pub(crate) use probe::{GpuInfo, cpu_logical_threads, gpu_info};

/// A backend as declared, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendSpec {
    pub name: String,
    pub runtime: Runtime,
    pub provider: Provider,
    pub precision: String,
    pub threads: Option<usize>,
    pub opt_level: OptLevel,
    pub device_id: u32,
    pub trt_fp16: bool,
    pub trt_int8_calibration_table: Option<String>,
    pub trt_engine_cache: Option<String>,
    /// The directory of the models this backend runs (an export's or a quantization's output,
    /// with `prefill/` and `decoder/` inside). Stages reach it as `{matrix.backend.model}` in
    /// their deps, so it is a declared input of every node that runs the backend.
    pub model: Option<String>,
    /// `trt_profile_min_shapes`, `…_opt_…`, `…_max_…`, checked to name the same inputs in the
    /// same order with min ≤ opt ≤ max.
    pub trt_profile_shapes: Option<crate::trt::ShapeSpecs>,
    /// torch.compile's backend (`inductor`, `cudagraphs`, …); `None` runs eager.
    pub compile: Option<String>,
    /// torch.compile's mode (`default`, `reduce-overhead`, `max-autotune`, …).
    pub compile_mode: Option<String>,
    /// The prefill and decoder models (see [`derived_fields`]).
    pub prefill: Option<String>,
    pub decoder: Option<String>,
    /// Facets this backend's nodes add to their stage's.
    pub facets: Vec<String>,
    /// CUDA graphs (a prefill graph per input shape, a decode graph per step length of a
    /// resident fixed-capacity cache); the `cuda` provider only.
    pub cuda_graph: bool,
    /// ONNX Runtime's I/O binding; `None`: its default (on with an accelerator). On the CPU it
    /// runs the same bound paths a GPU does, the resident fixed-capacity cache included.
    pub io_binding: Option<bool>,
}

const FIELDS: &[&str] = &[
    "name",
    "runtime",
    "provider",
    "precision",
    "threads",
    "opt_level",
    "device_id",
    "trt_fp16",
    "trt_int8_calibration_table",
    "trt_engine_cache",
    "model",
    "trt_profile_min_shapes",
    "trt_profile_opt_shapes",
    "trt_profile_max_shapes",
    "compile",
    "compile_mode",
    "prefill",
    "decoder",
    "facets",
    "cuda_graph",
    "io_binding",
];

/// What runs a backend's models, as a backend's `runtime` names it (and as it serialises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    OnnxRuntime,
    Torch,
    /// TensorRT for RTX plans, run by the torch worker's TensorRT helper.
    TensorRtRtx,
}

impl Serialize for Runtime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Runtime {
    pub(crate) const ALL: [Runtime; 3] = [Runtime::OnnxRuntime, Runtime::Torch, Runtime::TensorRtRtx];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::OnnxRuntime => "onnxruntime",
            Runtime::Torch => "torch",
            Runtime::TensorRtRtx => "tensorrt-rtx",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The implementation set ([`crate::implementation::SETS`]) whose code runs this
    /// runtime's models, and so enters the keys of the nodes that run them. TensorRT for RTX
    /// plans run in the torch worker's helper (`python/tr118_trt.py`, `src/trt/rtx.rs`),
    /// which the `torch` set holds.
    pub(crate) fn implementation_set(self) -> &'static str {
        match self {
            Runtime::OnnxRuntime => "onnxruntime",
            Runtime::Torch | Runtime::TensorRtRtx => "torch",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
const TORCH_COMPILE_MODES: &[&str] = &["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"];

/// Fields a `[[backends]]` entry gets when the pipeline is loaded, unless it sets them:
/// `prefill` and `decoder` from `model` (`{model}/prefill` and `{model}/decoder` for ONNX
/// Runtime; `{model}/hf` for both on torch, whose worker loads the export's Hugging Face
/// directory), and the facet `torch` for torch backends. They are part of the backend's value,
/// so they are part of every key that holds it.
pub(crate) fn derived_fields(v: &Value) -> Vec<(String, Value)> {
    let Some(t) = v.as_object() else { return Vec::new() };
    // An unknown runtime is an error when the backend is parsed; here it derives nothing more
    // than ONNX Runtime would.
    let runtime = t.get("runtime").and_then(Value::as_str).and_then(Runtime::from_name).unwrap_or(Runtime::OnnxRuntime);
    let torch = runtime == Runtime::Torch;
    // A TensorRT for RTX plan runs in the torch worker, on a GPU the plan may not support.
    let worker_facets: &[&str] = match runtime {
        Runtime::Torch => &["torch"],
        Runtime::TensorRtRtx => &["torch", "gpu"],
        Runtime::OnnxRuntime => &[],
    };
    let mut out = Vec::new();
    if let Some(model) = t.get("model").and_then(Value::as_str).filter(|_| runtime != Runtime::TensorRtRtx) {
        let model = model.trim_end_matches('/');
        for variant in ["prefill", "decoder"] {
            if !t.contains_key(variant) {
                let dir = if torch { "hf" } else { variant };
                out.push((variant.to_string(), Value::String(format!("{model}/{dir}"))));
            }
        }
    }
    // A `facets` that is not a list is an error of the backend's; it is left as written.
    let Some(mut facets) = t.get("facets").map_or(Some(Vec::new()), |f| f.as_array().cloned()) else { return out };
    let before = facets.len();
    for f in worker_facets {
        if !facets.iter().any(|x| x == f) {
            facets.push(Value::String((*f).into()));
        }
    }
    if facets.len() > before {
        out.push(("facets".into(), Value::Array(facets)));
    }
    out
}

/// Files a backend's sessions read besides its models, as `(dep name, path)`: the INT8
/// calibration table of a `tensorrt` backend (the only provider that reads it). Every node
/// whose `backend` is this one gets them as deps, beside those its stage declares, so their
/// digests are in its key and editing the table reruns exactly the nodes that read it.
pub(crate) fn implied_deps(v: &Value) -> Vec<(String, String)> {
    let Some(t) = v.as_object() else { return Vec::new() };
    if t.get("provider").and_then(Value::as_str) != Some("tensorrt") {
        return Vec::new();
    }
    t.get("trt_int8_calibration_table").and_then(Value::as_str).map(|p| vec![(CALIBRATION_TABLE_DEP.to_string(), p.to_string())]).unwrap_or_default()
}

/// The name under which a node gets its backend's calibration table ([`implied_deps`]).
pub(crate) const CALIBRATION_TABLE_DEP: &str = "trt_int8_calibration_table";

pub(crate) const PRECISIONS: &[&str] = &["fp32", "fp16", "int8"];

impl BackendSpec {
    /// Validates a `[[backends]]` table (as JSON). Errors are `(field, message)`.
    pub fn from_value(v: &Value) -> Result<BackendSpec, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let Some(t) = v.as_object() else {
            return Err(vec![(String::new(), "a backend is a table with a `name`".into())]);
        };
        for k in t.keys() {
            if !FIELDS.contains(&k.as_str()) {
                let help = crate::diag::suggest(k, FIELDS.iter().copied()).map_or(String::new(), |h| format!("; {h}"));
                errors.push((k.clone(), format!("unknown backend field `{k}`{help}")));
            }
        }
        let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
        let name = s("name").unwrap_or_default();
        let runtime_name = s("runtime").unwrap_or_else(|| "onnxruntime".into());
        let runtime = Runtime::from_name(&runtime_name).unwrap_or_else(|| {
            let help = crate::diag::suggest(&runtime_name, Runtime::ALL.map(Runtime::name)).map_or(String::new(), |h| format!("; {h}"));
            errors.push(("runtime".into(), format!("unknown runtime `{runtime_name}`; backends run on `onnxruntime`, `torch` or `tensorrt-rtx`{help}")));
            Runtime::OnnxRuntime
        });
        let torch = runtime == Runtime::Torch;
        let provider = match s("provider").as_deref().unwrap_or("cpu").parse::<Provider>() {
            Ok(p) => p,
            Err(e) => {
                errors.push(("provider".into(), e.to_string()));
                Provider::Cpu
            }
        };
        let precision = s("precision").unwrap_or_else(|| "fp32".into());
        if !PRECISIONS.contains(&precision.as_str()) {
            errors.push(("precision".into(), format!("unknown precision `{precision}`; one of fp32, fp16, int8")));
        }
        let threads = match t.get("threads") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(n as usize),
                _ => {
                    errors.push(("threads".into(), format!("`threads` must be a positive integer, found {v}")));
                    None
                }
            },
        };
        let opt_level = match s("opt_level").as_deref().unwrap_or("all").parse::<OptLevel>() {
            Ok(o) => o,
            Err(e) => {
                errors.push(("opt_level".into(), e.to_string()));
                OptLevel::All
            }
        };
        let device_id = t.get("device_id").and_then(Value::as_u64).unwrap_or(0) as u32;
        let trt_fp16 = t.get("trt_fp16").and_then(Value::as_bool).unwrap_or(false);
        let trt_profile_shapes = profile_shapes(&s("trt_profile_min_shapes"), &s("trt_profile_opt_shapes"), &s("trt_profile_max_shapes"), &mut errors);
        let (compile, compile_mode) = (s("compile"), s("compile_mode"));
        if torch {
            if provider == Provider::TensorRt {
                errors.push(("provider".into(), "a torch backend runs on `cpu` or `cuda`; TensorRT is the `onnxruntime` runtime's `tensorrt` provider".into()));
            }
            if precision == "int8" {
                errors.push(("precision".into(), "a torch backend runs `fp32` or `fp16`; INT8 models are ONNX Runtime's".into()));
            }
            if let Some(m) = &compile_mode {
                if compile.is_none() {
                    errors.push(("compile_mode".into(), "`compile_mode` needs `compile` (torch.compile's backend, e.g. `inductor`)".into()));
                } else if !TORCH_COMPILE_MODES.contains(&m.as_str()) {
                    let help = crate::diag::suggest(m, TORCH_COMPILE_MODES.iter().copied()).map_or(String::new(), |h| format!("; {h}"));
                    errors.push(("compile_mode".into(), format!("unknown torch.compile mode `{m}`; one of {}{help}", TORCH_COMPILE_MODES.join(", "))));
                }
            }
        } else {
            for field in ["compile", "compile_mode"] {
                if t.contains_key(field) {
                    errors.push((field.into(), format!("`{field}` is torch.compile's; this backend runs on `{runtime}` (set `runtime = \"torch\"`)")));
                }
            }
        }
        if let Some(table) = s("trt_int8_calibration_table")
            && let Err(e) = crate::paths::check_rel_path(&table, "`trt_int8_calibration_table`")
        {
            // It is an input of the backend's nodes (see `implied_deps`): a workspace path.
            errors.push(("trt_int8_calibration_table".into(), e));
        }
        if runtime == Runtime::TensorRtRtx {
            if provider != Provider::Cuda {
                errors.push(("provider".into(), "a `tensorrt-rtx` backend runs its plans on `cuda`".into()));
            }
            for variant in ["prefill", "decoder"] {
                if !t.contains_key(variant) {
                    errors.push((
                        variant.into(),
                        format!("a `tensorrt-rtx` backend names its `{variant}` plan: a `trt_build` node's directory, such as `out/trt_build/fp16`"),
                    ));
                }
            }
        }
        let cuda_graph = t.get("cuda_graph").and_then(Value::as_bool).unwrap_or(false);
        if cuda_graph && (torch || provider != Provider::Cuda) {
            errors.push(("cuda_graph".into(), "`cuda_graph` is ONNX Runtime's CUDA provider's (`runtime = \"onnxruntime\"`, `provider = \"cuda\"`); torch.compile's CUDA graphs are `compile_mode = \"reduce-overhead\"`".into()));
        }
        let io_binding = match t.get("io_binding") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                errors.push(("io_binding".into(), format!("`io_binding` must be true or false, found {v}")));
                None
            }
        };
        if io_binding.is_some() && runtime != Runtime::OnnxRuntime {
            errors.push(("io_binding".into(), format!("`io_binding` is ONNX Runtime's; this backend runs on `{runtime}`")));
        }
        if cuda_graph && io_binding == Some(false) {
            errors.push((
                "io_binding".into(),
                "`cuda_graph` needs `io_binding`: a graph replays on the addresses it captured, which only bound buffers keep".into(),
            ));
        }
        let facets: Vec<String> = match t.get("facets") {
            None => Vec::new(),
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(v) => {
                errors.push(("facets".into(), format!("`facets` must be a list of facet names, found {v}")));
                Vec::new()
            }
        };
        for f in &facets {
            if let Err(e) = crate::facets::check_name(f) {
                errors.push(("facets".into(), e.message));
            }
        }
        if errors.is_empty() {
            Ok(BackendSpec {
                name,
                runtime,
                provider,
                precision,
                threads,
                opt_level,
                device_id,
                trt_fp16,
                trt_int8_calibration_table: s("trt_int8_calibration_table"),
                trt_engine_cache: s("trt_engine_cache"),
                model: s("model"),
                trt_profile_shapes,
                compile,
                compile_mode,
                prefill: s("prefill"),
                decoder: s("decoder"),
                facets,
                cuda_graph,
                io_binding,
            })
        } else {
            Err(errors)
        }
    }

    pub(crate) fn session_options(&self) -> SessionOptions {
        SessionOptions {
            providers: vec![self.provider],
            intra_threads: self.threads,
            opt_level: self.opt_level,
            device_id: self.device_id,
            tensorrt: TrtOptions {
                fp16: self.trt_fp16,
                int8_calibration_table: self.trt_int8_calibration_table.as_ref().map(PathBuf::from),
                engine_cache: self.trt_engine_cache.as_ref().map(PathBuf::from),
                profile_shapes: self.trt_profile_shapes.clone(),
            },
            // Unless the backend says: the runtime's default, on for an accelerator, so that the
            // decoder's cache stays on the device between steps.
            io_binding: self.io_binding,
            cuda_graph: self.cuda_graph,
        }
    }
}

/// The three `trt_profile_*_shapes` fields: all or none, each a shape spec, the same inputs in
/// the same order, min ≤ opt ≤ max.
fn profile_shapes(min: &Option<String>, opt: &Option<String>, max: &Option<String>, errors: &mut Vec<(String, String)>) -> Option<crate::trt::ShapeSpecs> {
    let fields = [("trt_profile_min_shapes", min), ("trt_profile_opt_shapes", opt), ("trt_profile_max_shapes", max)];
    let given: Vec<&str> = fields.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k).collect();
    if given.is_empty() {
        return None;
    }
    if given.len() < 3 {
        let absent: Vec<String> = fields.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| format!("`{k}`")).collect();
        errors.push((absent[0].trim_matches('`').to_string(), format!("a TensorRT profile needs min, opt and max shapes; {} missing", absent.join(" and "))));
        return None;
    }
    let mut parsed = Vec::with_capacity(3);
    for (k, v) in fields {
        match crate::trt::parse_shape_spec(v.as_deref().unwrap_or_default()) {
            Ok(p) => parsed.push(p),
            Err(e) => errors.push((k.to_string(), e)),
        }
    }
    let [lo, mid, hi] = parsed.as_slice() else { return None };
    let names = |p: &[(String, Vec<u64>)]| p.iter().map(|(n, d)| (n.clone(), d.len())).collect::<Vec<_>>();
    if names(lo) != names(mid) || names(mid) != names(hi) {
        errors.push(("trt_profile_opt_shapes".into(), "min, opt and max shapes must name the same inputs, in the same order, with the same ranks".into()));
        return None;
    }
    for ((name, a), ((_, b), (_, c))) in lo.iter().zip(mid.iter().zip(hi)) {
        if a.iter().zip(b).zip(c).any(|((a, b), c)| a > b || b > c) {
            errors.push(("trt_profile_opt_shapes".into(), format!("input `{name}`: shapes must satisfy min ≤ opt ≤ max in every dimension")));
            return None;
        }
    }
    Some(crate::trt::ShapeSpecs { min: min.clone()?, opt: opt.clone()?, max: max.clone()? })
}

/// What really ran, recorded beside every result a backend produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    pub runtime: String,
    pub runtime_version: String,
    /// blake3 of the runtime library.
    pub library_digest: String,
    /// Execution providers the library was built with.
    pub providers_offered: Vec<String>,
    /// The provider the backend asked for.
    pub provider_requested: String,
    /// ONNX Runtime's provider name → nodes that ran there in the probe's prefill.
    pub providers_assigned: BTreeMap<String, usize>,
    pub cpu_model: String,
    /// Logical CPUs this process may use.
    pub cpu_logical_threads: usize,
    /// Intra-op threads asked for; `None` is ONNX Runtime's default.
    pub threads: Option<usize>,
    /// The backend's GPU (`device_id`) when NVML can see one, whatever the provider.
    pub gpu: Option<GpuInfo>,
    /// A torch backend's worker: what its `hello` and `load` answered (versions, device,
    /// parameters, whether it compiled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<Value>,
}

impl Capability {
    /// What every runtime records alike for `spec`: the provider it asked for, this machine's
    /// CPU, the threads asked for and the GPU of `device_id`; the runtime's own fields empty,
    /// for the caller to fill (`Capability { runtime: …, ..Capability::machine(spec) }`).
    fn machine(spec: &BackendSpec) -> Capability {
        Capability {
            runtime: String::new(),
            runtime_version: String::new(),
            library_digest: String::new(),
            providers_offered: Vec::new(),
            provider_requested: spec.provider.name().into(),
            providers_assigned: BTreeMap::new(),
            cpu_model: crate::facets::cpu_model(),
            cpu_logical_threads: cpu_logical_threads(),
            threads: spec.threads,
            gpu: gpu_info(spec.device_id),
            worker: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run here (a provider or a device is missing): a degraded result.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        if e.is_degradation() { BackendError::Unavailable(e.to_string()) } else { BackendError::Failed(e.to_string()) }
    }
}

/// The inputs of one prefill, built before a timed run by the backend that runs them
/// ([`Backend::prefill_inputs`]). What is inside is that backend's business: ONNX Runtime
/// values (bound to the device or not) for ONNX Runtime's backend, token ids for a backend that
/// builds its tensors itself ([`TokenIds`]).
pub struct Prepared(Inputs);

enum Inputs {
    Ort(PreparedInputs),
    Ids(TokenIds),
}

/// A prefill's token ids, as a backend that builds its own tensors keeps them until its run
/// (the torch worker builds them on its device before its clock starts).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenIds {
    /// `batch × seq`, row-major.
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl Prepared {
    pub(crate) fn from_ids(ids: TokenIds) -> Prepared {
        Prepared(Inputs::Ids(ids))
    }

    /// The token ids, when these inputs are ids rather than a runtime's values.
    pub(crate) fn token_ids(&self) -> Option<&TokenIds> {
        match &self.0 {
            Inputs::Ids(ids) => Some(ids),
            Inputs::Ort(_) => None,
        }
    }
}

/// A decoder's key/value cache over a run of decode steps: made by [`Backend::new_cache`],
/// handed back to the same backend's steps, opaque to everyone else. Only ONNX Runtime
/// decodes step by step here; a torch backend keeps its cache in its worker.
pub struct DecodeCache(Cache);

enum Cache {
    Ort(KvCache),
}

/// An opened backend over one model: a prefill model (ids → logits) or a decoder with a
/// key/value cache.
pub trait Backend {
    fn spec(&self) -> &BackendSpec;
    fn capability(&self) -> &Capability;
    /// Logits `[batch, seq, vocab]` of one forward pass over `ids` (`batch × seq`). On a
    /// decoder model this is one step from an empty cache, which computes the same thing.
    fn prefill(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<ArrayD<f32>, BackendError>;
    /// An empty key/value cache for `batch` sequences (decoder models only).
    fn new_cache(&self, batch: usize) -> Result<DecodeCache, BackendError>;
    /// Appends `new_len` tokens per sequence to `cache` and returns their logits
    /// `[batch, new_len, vocab]` (decoder models only).
    fn decode_step(&mut self, cache: &mut DecodeCache, ids: &[i64], new_len: usize) -> Result<ArrayD<f32>, BackendError> {
        let mut logits = None;
        self.decode_step_with(cache, ids, new_len, &mut |view| logits = Some(view.to_owned()))?;
        Ok(logits.expect("decode_step_with calls back once on success"))
    }
    /// [`Self::decode_step`], handing `f` the logits in place instead of a copy.
    fn decode_step_with(&mut self, cache: &mut DecodeCache, ids: &[i64], new_len: usize, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), BackendError>;
    /// A greedy step: each row's argmax of its last logits into `next` (cleared first).
    fn decode_step_greedy(&mut self, cache: &mut DecodeCache, ids: &[i64], new_len: usize, next: &mut Vec<i64>) -> Result<(), BackendError> {
        self.decode_step_with(cache, ids, new_len, &mut |logits| runtime::last_argmax(logits, next))
    }
    /// The inputs of a prefill, built before a timed run (prefill models only).
    fn prefill_inputs(&self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Prepared, BackendError>;
    /// Runs prepared prefill inputs, handing `f` the logits in place.
    fn run_prefill_inputs(&mut self, inputs: &Prepared, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), BackendError>;
    /// Whether the opened model can run sweep mode `mode` (`prefill`, `generate`,
    /// `generate_uncached`); the error says why not.
    fn supports(&self, mode: &str) -> Result<(), BackendError> {
        if mode == "generate" { self.new_cache(1).map(|_| ()) } else { self.prefill_inputs(&[0], &[1], 1, 1).map(|_| ()) }
    }
    /// The latency of one prefill: a monotonic clock around exactly the run
    /// ([`workload::prefill`]). A backend that runs elsewhere times itself.
    fn timed_prefill(&mut self, inputs: &Prepared) -> Result<Duration, BackendError> {
        workload::prefill(self, inputs)
    }
    /// One timed greedy generation, with the key/value cache (`cached`) or a full forward
    /// pass per token ([`workload`]).
    fn timed_generate(&mut self, prompt: &[i64], batch: usize, new_tokens: usize, cached: bool) -> Result<Generation, BackendError> {
        if cached { workload::generate_cached(self, prompt, batch, new_tokens) } else { workload::generate_uncached(self, prompt, batch, new_tokens) }
    }
    /// The process doing the work, when it is not this one: the sampler reads its memory and
    /// CPU time.
    fn process_id(&self) -> Option<u32> {
        None
    }
}

/// Opens `spec` over `model`: for ONNX Runtime a model file, opened with the library at
/// `library` and probed ([`ort::open`]); for torch the Hugging Face directory its worker loads
/// ([`torch::open`]; `library` is not used).
pub fn open(spec: &BackendSpec, model: &Path, library: &Path) -> Result<Box<dyn Backend>, BackendError> {
    match spec.runtime {
        Runtime::Torch => torch::open(spec, model),
        Runtime::TensorRtRtx => torch::open_plan(spec, model),
        Runtime::OnnxRuntime => ort::open(spec, model, library),
    }
}

/// The ONNX Runtime library a stage uses: its `runtime` dep, else `ORT_DYLIB_PATH`.
pub(crate) fn library(dep: Option<&Path>) -> Result<PathBuf, BackendError> {
    match dep {
        Some(p) => Ok(p.to_path_buf()),
        None => runtime::library_path(None).map_err(|e| BackendError::Failed(e.to_string())),
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tensorrt_flags_reach_the_session_options() {
        let spec = BackendSpec::from_value(&json!({
            "name": "trt-int8", "provider": "tensorrt", "precision": "int8", "trt_fp16": true,
            "trt_int8_calibration_table": "out/calibrate/calibration.cache", "trt_engine_cache": "cache/trt"
        }))
        .unwrap();
        let o = spec.session_options();
        assert_eq!(o.providers, vec![Provider::TensorRt]);
        assert!(o.tensorrt.fp16);
        assert_eq!(o.tensorrt.int8_calibration_table.as_deref(), Some(Path::new("out/calibrate/calibration.cache")));
        assert_eq!(o.tensorrt.engine_cache.as_deref(), Some(Path::new("cache/trt")));
    }

    #[test]
    fn tensorrt_profiles_reach_the_session_options() {
        let spec = BackendSpec::from_value(&json!({
            "name": "trt", "provider": "tensorrt",
            "trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1",
            "trt_profile_opt_shapes": "input_ids:1x27,attention_mask:1x27",
            "trt_profile_max_shapes": "input_ids:4x512,attention_mask:4x512",
        }))
        .unwrap();
        let p = spec.session_options().tensorrt.profile_shapes.expect("profile shapes");
        assert_eq!(
            (p.min.as_str(), p.opt.as_str(), p.max.as_str()),
            ("input_ids:1x1,attention_mask:1x1", "input_ids:1x27,attention_mask:1x27", "input_ids:4x512,attention_mask:4x512")
        );
        assert_eq!(BackendSpec::from_value(&json!({"name": "trt", "provider": "tensorrt"})).unwrap().session_options().tensorrt.profile_shapes, None);
    }

    #[test]
    fn tensorrt_profiles_are_all_or_nothing_and_ordered() {
        let errors = |v: Value| BackendSpec::from_value(&v).unwrap_err();
        let e = errors(json!({"name": "t", "trt_profile_min_shapes": "x:1"}));
        assert_eq!(e[0].0, "trt_profile_opt_shapes");
        assert!(e[0].1.contains("`trt_profile_opt_shapes` and `trt_profile_max_shapes` missing"), "{}", e[0].1);
        let e = errors(json!({"name": "t", "trt_profile_min_shapes": "x:4", "trt_profile_opt_shapes": "x:2", "trt_profile_max_shapes": "x:8"}));
        assert!(e[0].1.contains("min ≤ opt ≤ max"), "{}", e[0].1);
        let e = errors(json!({"name": "t", "trt_profile_min_shapes": "x:1", "trt_profile_opt_shapes": "y:2", "trt_profile_max_shapes": "x:8"}));
        assert!(e[0].1.contains("same inputs"), "{}", e[0].1);
        let e = errors(json!({"name": "t", "trt_profile_min_shapes": "x=1", "trt_profile_opt_shapes": "x:2", "trt_profile_max_shapes": "x:8"}));
        assert_eq!(e[0].0, "trt_profile_min_shapes");
    }

    #[test]
    fn a_misspelt_backend_field_is_named_with_a_suggestion() {
        let errors = BackendSpec::from_value(&json!({"name": "x", "provder": "cpu"})).unwrap_err();
        assert_eq!(errors[0].0, "provder");
        assert!(errors[0].1.contains("did you mean `provider`"), "{}", errors[0].1);
    }
}
