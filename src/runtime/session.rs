//! A session over one ONNX file: options, execution providers, the model's declared inputs
//! and outputs, a generic f32 run and the prefill call (`input_ids` → `logits`).
//!
//! ## Where tensors live
//!
//! A plain ONNX Runtime run takes host tensors and returns host tensors: with the CUDA or
//! TensorRT provider it uploads every input and downloads every output, each run. A GPU study
//! must not time those copies, so a session can run through ONNX Runtime's I/O binding
//! ([`SessionOptions::io_binding`], on by default with an accelerator):
//!
//! | run                                   | inputs                         | outputs                               |
//! |---------------------------------------|--------------------------------|---------------------------------------|
//! | [`Session::run`], [`Session::run_prepared`] | host, uploaded by the run | host                                  |
//! | [`Session::run_prepared_on_device`]   | on the device since [`Session::prefill_inputs_on_device`] | left on the device ([`DeviceTensor`]) |
//! | the same with [`SessionOptions::cuda_graph`] | fixed device buffers, one set per input shape | fixed device buffers; a CUDA graph replayed |
//! | [`super::Decoder`] steps with binding | ids, mask, positions from the host; the cache where the previous step left it | logits to the host, the cache left on the device |
//! | the same, a fixed-capacity cache (resident) | ids, mask, `past_length` copied into fixed buffers; the cache buffers | the cache written in place, `next_token` copied to the host; a CUDA graph per step length with [`SessionOptions::cuda_graph`] |
//!
//! On a CPU session "the device" is host memory, and the bound paths compute exactly what the
//! plain ones do, which is how the tests check them without a GPU.
//!
//! ## CUDA graphs
//!
//! ONNX Runtime's CUDA provider can capture a run in a CUDA graph and replay it, which removes
//! the per-kernel launch cost. It replays only what it captured: the same kernels on the same
//! addresses and shapes. So a graph is kept per prefill input shape (`batch × seq`), with
//! input and output buffers allocated once for that shape and a graph id of its own (the run
//! option `gpu_graph_id`); [`Session::prefill_inputs_on_device`] copies new ids into those
//! buffers before the clock. Every shape captures a graph of its own, kept as long as the
//! session: a loop over many lengths (uncached generation) belongs on a session without
//! `cuda_graph`. The steps of a resident fixed-capacity decoder capture graphs of their own
//! (see [`super::Decoder`]). Every other run of such a session (the plain paths, a growing
//! decoder's steps) passes `gpu_graph_id = -1`, which keeps it out of capture: a concatenating
//! cache grows every step, so no such step has a fixed shape to capture.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayD, ArrayViewD};
use ort::ep::{CUDA, ExecutionProviderDispatch, TensorRT};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{AutoDevicePolicy, SessionBuilder};
use ort::session::{IoBinding, RunOptions, SessionInputValue, SessionOutputs};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType, TensorRef, ValueType};
use serde::Serialize;

use super::{OptLevel, Provider, Runtime, RuntimeError};
use crate::diag::ticked;

/// How to open a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionOptions {
    /// Execution providers in order of preference. ONNX Runtime always keeps the CPU provider
    /// as the last resort for nodes the others do not take, so `cpu` in this list is implied
    /// and needs no registration; `[]` and `[cpu]` are the same session.
    pub providers: Vec<Provider>,
    /// Threads within one operator; `None` is ONNX Runtime's default (one per physical core).
    pub intra_threads: Option<usize>,
    pub opt_level: OptLevel,
    /// The GPU for `cuda` and `tensorrt`.
    pub device_id: u32,
    /// Builder options for the `tensorrt` provider.
    pub tensorrt: TrtOptions,
    /// Run through ONNX Runtime's I/O binding, so that the decoder's key/value cache and a
    /// timed prefill's outputs stay in device memory (see the module doc). `None`: on when an
    /// accelerator (`cuda`, `tensorrt`) is registered, off for the CPU alone, where binding
    /// saves nothing; `Some(true)` on a CPU session runs the bound code paths on host memory.
    pub io_binding: Option<bool>,
    /// Capture prefill runs in CUDA graphs, one per input shape
    /// ([`Session::run_prepared_on_device`]). Needs the `cuda` provider alone, I/O binding, and
    /// a model whose compute nodes all run on CUDA; decode steps are never captured.
    pub cuda_graph: bool,
}

/// How ONNX Runtime's TensorRT provider builds its engines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrtOptions {
    /// Let TensorRT choose FP16 kernels.
    pub fp16: bool,
    /// INT8 with this calibration table (TensorRT's calibration cache format).
    pub int8_calibration_table: Option<PathBuf>,
    /// Keep built engines here, so a second session does not rebuild them.
    pub engine_cache: Option<PathBuf>,
    /// Optimisation profiles in the shape-spec syntax `trtexec` shares with the provider
    /// (`input_ids:1x1,attention_mask:1x1`; several profiles repeat the input names), as the
    /// `trt_build` stage derives them. Without them the provider builds an engine for the
    /// shapes it first sees and rebuilds whenever a run goes outside them.
    pub profile_shapes: Option<crate::trt::ShapeSpecs>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            providers: vec![Provider::Cpu],
            intra_threads: None,
            opt_level: OptLevel::All,
            device_id: 0,
            tensorrt: TrtOptions::default(),
            io_binding: None,
            cuda_graph: false,
        }
    }
}

impl SessionOptions {
    pub fn with_providers(mut self, providers: impl Into<Vec<Provider>>) -> Self {
        self.providers = providers.into();
        self
    }
}

/// Model inputs built ahead of a run ([`Session::prefill_inputs`]), in the element types the
/// model declares; from [`Session::prefill_inputs_on_device`], also on the session's device.
#[derive(Debug)]
pub struct PreparedInputs {
    /// Host tensors, for [`Session::run_prepared`].
    values: Vec<(String, DynValue)>,
    /// The output to read back.
    logits: String,
    /// What [`Session::run_prepared_on_device`] runs; `None` for inputs left in host memory
    /// ([`Session::prefill_inputs`], or any preparation on a CPU session without binding).
    device: Option<DeviceRun>,
}

/// Inputs that are on the device before a timed run.
#[derive(Debug)]
enum DeviceRun {
    /// Inputs bound (ONNX Runtime copies a host tensor to the device when it is bound, so the
    /// upload happens here, before any clock); `logits` bound to device memory.
    Bound(Box<IoBinding>),
    /// The CUDA graph of this input shape, whose fixed input buffers hold this preparation's
    /// values for as long as `generation` is the slot's.
    Graph { session: u64, shape: (usize, usize), generation: u64 },
}

/// A run's output left where ONNX Runtime put it: device memory on a CUDA or TensorRT session,
/// host memory on the CPU.
#[derive(Debug)]
pub struct DeviceTensor {
    name: String,
    value: DynValue,
}

impl DeviceTensor {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> Vec<usize> {
        value_shape(&self.value).iter().map(|&d| d.max(0) as usize).collect()
    }

    /// Whether the data is in host memory (a CPU session), as opposed to on a GPU.
    pub fn is_on_host(&self) -> bool {
        is_on_host(&self.value)
    }

    /// A host copy: a device-to-host transfer on a GPU. For checks, outside any timed region.
    /// A graph replay or a later run of the same prepared inputs overwrites the tensor this
    /// reads, so read it before running them again.
    pub fn to_host(&self) -> Result<ArrayD<f32>, RuntimeError> {
        host_f32(&self.name, &self.value)
    }
}

/// The CUDA graph of one prefill input shape: buffers allocated once, bound once, reused by
/// every run of that shape, so the captured graph's addresses stay valid.
struct GraphSlot {
    /// `gpu_graph_id`: its own per shape.
    id: i32,
    run_options: RunOptions,
    binding: IoBinding,
    /// The device input buffers, in `binding`: [`Session::prefill_inputs_on_device`] copies
    /// into them.
    inputs: Vec<(String, DynTensor)>,
    /// Bumped by each preparation, which overwrites `inputs`: an older [`PreparedInputs`] of
    /// this shape no longer describes what the buffers hold.
    generation: u64,
}

/// A session's CUDA graphs, by prefill shape `(batch, seq)`.
#[derive(Default)]
struct Graphs {
    slots: BTreeMap<(usize, usize), GraphSlot>,
    /// The last id handed out. Ids start at 1: 0 is what a run without the option gets, so no
    /// run could replay a graph by omission.
    last_id: i32,
}

impl Graphs {
    /// A new graph id, and the run options that select it.
    fn next(&mut self, model: &Path) -> Result<(i32, RunOptions), RuntimeError> {
        let graph_err = |message: String| RuntimeError::CudaGraph { model: model.to_path_buf(), message };
        let id = self.last_id + 1;
        let mut options = RunOptions::new().map_err(|e| graph_err(format!("creating run options: {}", e.message())))?;
        options.set(GPU_GRAPH_ID, id.to_string()).map_err(|e| graph_err(format!("setting `{GPU_GRAPH_ID}`: {}", e.message())))?;
        self.last_id = id;
        Ok((id, options))
    }
}

/// Sessions are numbered so that inputs prepared by one are refused by another.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One dimension of a declared input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    /// Decided per run; the model's name for it (`batch`, `past_sequence_length`) if it has one.
    Dynamic(Option<String>),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic(Some(name)) => f.write_str(name),
            Dim::Dynamic(None) => f.write_str("?"),
        }
    }
}

/// A declared input or output of a model, as ONNX Runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoSpec {
    pub name: String,
    /// `f32`, `f16`, `i64`, …; `sequence`, `map` or `optional` for non-tensors.
    pub dtype: String,
    /// Empty for non-tensors.
    pub dims: Vec<Dim>,
}

impl IoSpec {
    fn from_ort(name: &str, ty: &ValueType) -> IoSpec {
        match ty {
            ValueType::Tensor { ty, shape, dimension_symbols } => {
                let dims = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if d >= 0 {
                            Dim::Fixed(d as u64)
                        } else {
                            let sym = dimension_symbols.get(i).filter(|s| !s.is_empty());
                            Dim::Dynamic(sym.cloned())
                        }
                    })
                    .collect();
                IoSpec { name: name.to_string(), dtype: ty.to_string(), dims }
            }
            ValueType::Sequence(_) => IoSpec { name: name.to_string(), dtype: "sequence".into(), dims: Vec::new() },
            ValueType::Map { .. } => IoSpec { name: name.to_string(), dtype: "map".into(), dims: Vec::new() },
            ValueType::Optional(_) => IoSpec { name: name.to_string(), dtype: "optional".into(), dims: Vec::new() },
        }
    }

    /// The dimension's size when the model fixes it.
    pub fn fixed(&self, axis: usize) -> Option<u64> {
        match self.dims.get(axis) {
            Some(Dim::Fixed(n)) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for IoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}[", self.name, self.dtype)?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Borrowed tensor data for [`Session::run`].
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    I64(&'a [i64]),
    I32(&'a [i32]),
}

/// One named input for [`Session::run`], row-major.
#[derive(Debug, Clone, Copy)]
pub struct Feed<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: TensorData<'a>,
}

/// An open ONNX Runtime session.
pub struct Session {
    pub(super) inner: ort::session::Session,
    pub(super) model: PathBuf,
    providers: Vec<Provider>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    /// [`SessionOptions::io_binding`], resolved.
    io_binding: bool,
    /// Where outputs that stay on the device are bound: the accelerator's memory, or host
    /// memory on a CPU session.
    device_memory: MemoryInfo<'static>,
    host_memory: MemoryInfo<'static>,
    /// With [`SessionOptions::cuda_graph`]: `gpu_graph_id = -1`, for every run that is not a
    /// prefill graph's (without it a run would be captured as graph 0).
    uncaptured: Option<RunOptions>,
    /// `Some` with [`SessionOptions::cuda_graph`].
    graphs: Option<Mutex<Graphs>>,
    id: u64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model)
            .field("providers", &self.providers)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("io_binding", &self.io_binding)
            .field("cuda_graph", &self.graphs.is_some())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens `model` with `options`. A non-CPU provider that does not register, or whose
    /// session fails to build while the CPU alone opens the model, is
    /// [`RuntimeError::ProviderUnavailable`]; the session is never quietly created on the CPU
    /// instead.
    pub fn session(&self, model: &Path, options: &SessionOptions) -> Result<Session, RuntimeError> {
        self.open_session(model, options, None)
    }

    /// [`Self::session`] with ONNX Runtime's profiler on: every run until
    /// [`Session::end_profiling`] is recorded, node by node, in a JSON file whose name starts
    /// with `prefix` (ONNX Runtime appends a timestamp and `.json`).
    pub(crate) fn profiled_session(&self, model: &Path, options: &SessionOptions, prefix: &Path) -> Result<Session, RuntimeError> {
        self.open_session(model, options, Some(prefix))
    }

    fn open_session(&self, model: &Path, options: &SessionOptions, profile: Option<&Path>) -> Result<Session, RuntimeError> {
        if !model.is_file() {
            return Err(RuntimeError::ModelNotFound { path: model.to_path_buf() });
        }
        let session_err = |message: String| RuntimeError::Session { model: model.to_path_buf(), message };
        let ort_err = |context: &'static str| move |e: ort::Error<SessionBuilder>| session_err(format!("{context}: {}", e.message()));

        let mut builder = ort::session::Session::builder(&self.env).map_err(|e| session_err(e.to_string()))?;
        builder = builder.with_optimization_level(options.opt_level.to_ort()).map_err(ort_err("setting the optimisation level"))?;
        if let Some(n) = options.intra_threads {
            builder = builder.with_intra_threads(n).map_err(ort_err("setting intra-op threads"))?;
        }
        if let Some(prefix) = profile {
            builder = builder.with_profiling(prefix).map_err(ort_err("enabling profiling"))?;
        }

        let accelerators: Vec<Provider> = options.providers.iter().copied().filter(|p| *p != Provider::Cpu).collect();
        if options.cuda_graph {
            let graph_err = |message: String| RuntimeError::CudaGraph { model: model.to_path_buf(), message };
            if accelerators != [Provider::Cuda] {
                let on: Vec<&str> = accelerators.iter().map(|p| p.name()).chain(["cpu"]).collect();
                return Err(graph_err(format!("`cuda_graph` needs the `cuda` provider alone, and this session's providers are {}", on.join(", "))));
            }
            if options.io_binding == Some(false) {
                return Err(graph_err("`cuda_graph` needs `io_binding`: a graph replays on the addresses it captured, which only bound buffers keep".into()));
            }
        }
        if accelerators.is_empty() {
            // `ort` asks for automatic device selection "for efficiency" (an NPU when one is
            // registered); a CPU session must stay on the CPU.
            builder = builder.with_auto_device(AutoDevicePolicy::PreferCPU).map_err(ort_err("selecting the CPU device"))?;
        }
        for &p in &accelerators {
            builder = self.register(builder, p, options)?;
        }

        let inner = match builder.commit_from_file(model) {
            Ok(inner) => inner,
            Err(e) if !accelerators.is_empty() => {
                // A provider can register and still fail when the session is built (no device,
                // a TensorRT engine that does not build). If the CPU alone opens the model, the
                // provider is what cannot run here.
                let cpu_only = SessionOptions { providers: vec![Provider::Cpu], io_binding: None, cuda_graph: false, ..options.clone() };
                let on: Vec<&str> = accelerators.iter().map(|p| p.name()).collect();
                if self.session(model, &cpu_only).is_err() {
                    return Err(session_err(format!("{} (providers: {}, cpu)", e.message(), on.join(", "))));
                }
                // ONNX Runtime refuses graph capture for a model with control flow or with
                // compute nodes off the CUDA provider. If the same providers open the model
                // without it, that is what failed: a setting to change, not a missing device.
                if options.cuda_graph && self.session(model, &SessionOptions { cuda_graph: false, ..options.clone() }).is_ok() {
                    return Err(RuntimeError::CudaGraph {
                        model: model.to_path_buf(),
                        message: format!("ONNX Runtime cannot capture it: {}", e.message().trim()),
                    });
                }
                return Err(self.unavailable(accelerators[0], format!("the model does not open with {}: {}", on.join(", "), e.message().trim())));
            }
            Err(e) => return Err(session_err(e.message().to_string())),
        };
        let inputs = inner.inputs().iter().map(|o| IoSpec::from_ort(o.name(), o.dtype())).collect();
        let outputs = inner.outputs().iter().map(|o| IoSpec::from_ort(o.name(), o.dtype())).collect();
        let memory = |device: AllocationDevice, id: i32| {
            let name = device.as_str().to_string();
            MemoryInfo::new(device, id, AllocatorType::Device, MemoryType::Default)
                .map_err(|e| session_err(format!("describing {name} memory: {}", e.message())))
        };
        let host_memory = memory(AllocationDevice::CPU, 0)?;
        // The CUDA and TensorRT providers both allocate through CUDA on `device_id`.
        let device_memory = if accelerators.is_empty() {
            host_memory.clone()
        } else {
            let id = i32::try_from(options.device_id).map_err(|_| session_err(format!("device id {} is out of range", options.device_id)))?;
            memory(AllocationDevice::CUDA, id)?
        };
        let (uncaptured, graphs) = if options.cuda_graph {
            let mut run = RunOptions::new().map_err(|e| session_err(format!("creating run options: {}", e.message())))?;
            run.set(GPU_GRAPH_ID, "-1").map_err(|e| session_err(format!("setting `{GPU_GRAPH_ID}`: {}", e.message())))?;
            (Some(run), Some(Mutex::new(Graphs::default())))
        } else {
            (None, None)
        };
        let io_binding = options.io_binding.unwrap_or(!accelerators.is_empty()) || options.cuda_graph;
        let mut providers = accelerators;
        providers.push(Provider::Cpu);
        Ok(Session {
            inner,
            model: model.to_path_buf(),
            providers,
            inputs,
            outputs,
            io_binding,
            device_memory,
            host_memory,
            uncaptured,
            graphs,
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// A degraded node's reason, so it names the library and what ONNX Runtime said (which
    /// names provider libraries beside it by their absolute paths) relative to the workspace:
    /// the reason is in results that later keys hash.
    fn unavailable(&self, provider: Provider, reason: String) -> RuntimeError {
        RuntimeError::ProviderUnavailable {
            provider,
            version: self.info.version.clone(),
            path: PathBuf::from(crate::paths::shown(&self.info.path)),
            available: self.info.providers.clone(),
            reason: crate::paths::relative_text(&reason),
        }
    }

    fn register(&self, builder: SessionBuilder, p: Provider, options: &SessionOptions) -> Result<SessionBuilder, RuntimeError> {
        let device_id = options.device_id;
        let unavailable = |reason: String| self.unavailable(p, reason);
        let device = i32::try_from(device_id).map_err(|_| unavailable(format!("device id {device_id} is out of range")))?;
        let ep: ExecutionProviderDispatch = match p {
            Provider::Cuda => cuda_provider(device, options.cuda_graph).build(),
            Provider::TensorRt => tensorrt_provider(device, &options.tensorrt).build(),
            Provider::Cpu => return Ok(builder),
        };
        // `error_on_failure`: without it `ort` logs the failure and carries on, and the
        // session runs on the CPU under a CUDA label.
        let builder = builder.with_execution_providers([ep.error_on_failure()]).map_err(|e| unavailable(e.message().trim().to_string()))?;
        if !self.info.has_provider(p.ort_name()) {
            return Err(unavailable(format!("the library does not list `{}`", p.ort_name())));
        }
        Ok(builder)
    }
}

/// The run option that selects a CUDA graph: `-1` keeps a run out of capture.
const GPU_GRAPH_ID: &str = "gpu_graph_id";

/// ONNX Runtime's CUDA provider on `device`, capturing graphs when asked to. TF32 is off:
/// ONNX Runtime turns it on by default, which rounds fp32 matrix products to a 10-bit mantissa
/// (logits 1e-2 away from the CPU's on SmolLM2, seen on an H200); an fp32 backend computes in
/// fp32, as the torch worker does.
fn cuda_provider(device: i32, cuda_graph: bool) -> CUDA {
    let cuda = CUDA::default().with_device_id(device).with_tf32(false);
    if cuda_graph { cuda.with_cuda_graph(true) } else { cuda }
}

/// ONNX Runtime's TensorRT provider configured from `trt`.
fn tensorrt_provider(device: i32, trt: &TrtOptions) -> TensorRT {
    let mut ep = TensorRT::default().with_device_id(device).with_fp16(trt.fp16);
    if let Some(table) = &trt.int8_calibration_table {
        ep = ep.with_int8(true).with_int8_calibration_table_name(table.display()).with_int8_use_native_calibration_table(true);
    }
    if let Some(dir) = &trt.engine_cache {
        ep = ep.with_engine_cache(true).with_engine_cache_path(dir.display());
    }
    if let Some(p) = &trt.profile_shapes {
        ep = ep.with_profile_min_shapes(&p.min).with_profile_opt_shapes(&p.opt).with_profile_max_shapes(&p.max);
    }
    ep
}

impl Session {
    /// Stops the profiler of a [`Runtime::profiled_session`] and returns the profile's path.
    /// Later runs are not profiled.
    pub(crate) fn end_profiling(&mut self) -> Result<PathBuf, RuntimeError> {
        self.inner
            .end_profiling()
            .map(PathBuf::from)
            .map_err(|e| RuntimeError::Run { model: self.model.clone(), message: format!("ending profiling: {}", e.message()) })
    }

    /// The providers registered for this session, in order, ending with `cpu`.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Whether runs go through I/O binding ([`SessionOptions::io_binding`], resolved).
    pub fn io_binding(&self) -> bool {
        self.io_binding
    }

    /// Whether prefill runs on the device are captured in CUDA graphs.
    pub fn cuda_graph(&self) -> bool {
        self.graphs.is_some()
    }

    /// An accelerator is registered: "the device" is not host memory.
    fn on_accelerator(&self) -> bool {
        self.providers.len() > 1
    }

    fn run_error(&self, message: String) -> RuntimeError {
        RuntimeError::Run { model: self.model.clone(), message }
    }

    /// A plain run (host tensors in and out), kept out of CUDA graph capture.
    pub(super) fn run_values<'s>(&'s mut self, values: Vec<(Cow<'_, str>, SessionInputValue<'_>)>) -> Result<SessionOutputs<'s>, RuntimeError> {
        let run = match &self.uncaptured {
            Some(options) => self.inner.run_with_options(values, options),
            None => self.inner.run(values),
        };
        run.map_err(|e| RuntimeError::Run { model: self.model.clone(), message: e.message().to_string() })
    }

    /// Runs `binding`, kept out of CUDA graph capture.
    pub(super) fn run_bound<'b>(&'b mut self, binding: &'b IoBinding) -> Result<SessionOutputs<'b>, RuntimeError> {
        let run = match &self.uncaptured {
            Some(options) => self.inner.run_binding_with_options(binding, options),
            None => self.inner.run_binding(binding),
        };
        run.map_err(|e| RuntimeError::Run { model: self.model.clone(), message: e.message().to_string() })
    }

    /// Runs `binding` as the CUDA graph of `graph` (its `gpu_graph_id`), or, without one, kept
    /// out of capture; returns once the device has finished.
    pub(super) fn run_graph(&mut self, binding: &IoBinding, graph: Option<&RunOptions>) -> Result<(), RuntimeError> {
        let run = match graph.or(self.uncaptured.as_ref()) {
            Some(options) => self.inner.run_binding_with_options(binding, options).map(drop),
            None => self.inner.run_binding(binding).map(drop),
        };
        run.map_err(|e| self.run_error(e.message().to_string()))?;
        // A replay returns as soon as the graph is launched on some builds: wait for the device.
        binding.synchronize_outputs().map_err(|e| self.run_error(format!("synchronising: {}", e.message())))
    }

    /// The run options of a new CUDA graph (its own `gpu_graph_id`), or `None` on a session
    /// without [`SessionOptions::cuda_graph`].
    pub(super) fn new_graph(&self) -> Result<Option<RunOptions>, RuntimeError> {
        let Some(graphs) = &self.graphs else { return Ok(None) };
        let (_, options) = graphs.lock().unwrap_or_else(|p| p.into_inner()).next(&self.model)?;
        Ok(Some(options))
    }

    /// An allocator of the session's device memory (host memory on a CPU session).
    pub(super) fn device_allocator(&self) -> Result<Allocator, RuntimeError> {
        Allocator::new(&self.inner, self.device_memory.clone()).map_err(|e| self.run_error(format!("creating the device allocator: {}", e.message())))
    }

    pub(super) fn new_binding(&self) -> Result<IoBinding, RuntimeError> {
        self.inner.create_binding().map_err(|e| self.run_error(format!("creating an I/O binding: {}", e.message())))
    }

    /// Where outputs that stay on the device are bound.
    pub(super) fn device_memory(&self) -> &MemoryInfo<'static> {
        &self.device_memory
    }

    /// Host memory, for outputs the caller reads.
    pub(super) fn host_memory(&self) -> &MemoryInfo<'static> {
        &self.host_memory
    }

    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    pub fn input(&self, name: &str) -> Option<&IoSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&IoSpec> {
        self.outputs.iter().find(|s| s.name == name)
    }

    pub(super) fn interface_error(&self, message: String) -> RuntimeError {
        RuntimeError::Interface { model: self.model.clone(), message }
    }

    /// Runs the model on `feeds`, one per declared input, and returns every output in the
    /// model's order, as f32: float16 outputs widened, integer ones (`next_token`) as their
    /// values.
    pub fn run(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        for f in feeds {
            if self.input(f.name).is_none() {
                return Err(self.interface_error(format!("has no input `{}`; its inputs are {}", f.name, self.list_inputs())));
            }
            let len = match f.data {
                TensorData::F32(d) => d.len(),
                TensorData::F16(d) => d.len(),
                TensorData::I64(d) => d.len(),
                TensorData::I32(d) => d.len(),
            };
            if f.shape.iter().product::<usize>() != len {
                return Err(RuntimeError::BadInput(format!(
                    "input `{}`: shape {:?} needs {} values, got {len}",
                    f.name,
                    f.shape,
                    f.shape.iter().product::<usize>()
                )));
            }
        }
        let missing: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).filter(|n| !feeds.iter().any(|f| f.name == *n)).collect();
        if !missing.is_empty() {
            return Err(RuntimeError::BadInput(format!("`{}` needs inputs that were not given: {}", self.model.display(), ticked(&missing))));
        }

        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(feeds.len());
        for f in feeds {
            let v: SessionInputValue<'_> = match f.data {
                TensorData::F32(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
                TensorData::F16(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
                TensorData::I64(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
                TensorData::I32(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
            }
            .map_err(|e| RuntimeError::BadInput(format!("input `{}`: {}", f.name, e.message())))?;
            values.push((Cow::Borrowed(f.name), v));
        }
        let names: Vec<String> = self.outputs.iter().map(|s| s.name.clone()).collect();
        let model = self.model.clone();
        let mut outputs = self.run_values(values)?;
        let mut result = Vec::with_capacity(names.len());
        for name in names {
            let value = outputs
                .remove(name.as_str())
                .ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })?;
            result.push((name.clone(), f32_array(&model, &name, &value)?));
        }
        Ok(result)
    }

    /// The prefill call: `batch × seq` token ids (row-major), their attention mask (1 = token,
    /// 0 = padding) → logits `[batch, seq, vocab]`. Feeds `attention_mask` and `position_ids`
    /// only where the model declares them; positions count the unpadded tokens before each one
    /// (`cumsum(mask) - 1`, 0 under padding), as Hugging Face's generation does.
    pub fn run_prefill(&mut self, input_ids: &[i64], attention_mask: &[i64], batch: usize, seq: usize) -> Result<ArrayD<f32>, RuntimeError> {
        let inputs = self.prefill_inputs(input_ids, attention_mask, batch, seq)?;
        let mut logits = None;
        self.run_prepared(&inputs, &mut |view| logits = Some(view.to_owned()))?;
        Ok(logits.expect("run_prepared calls back once on success"))
    }

    /// The inputs of [`Self::run_prefill`], built and checked once, so that a timed loop runs
    /// the model on them with nothing else inside the clock.
    pub fn prefill_inputs(&self, input_ids: &[i64], attention_mask: &[i64], batch: usize, seq: usize) -> Result<PreparedInputs, RuntimeError> {
        let n = batch * seq;
        if batch == 0 || seq == 0 {
            return Err(RuntimeError::BadInput(format!("prefill needs at least one token (batch {batch}, sequence {seq})")));
        }
        if input_ids.len() != n || attention_mask.len() != n {
            return Err(RuntimeError::BadInput(format!(
                "prefill of batch {batch} × sequence {seq} needs {n} ids and {n} mask values, got {} and {}",
                input_ids.len(),
                attention_mask.len()
            )));
        }
        let unknown: Vec<&str> =
            self.inputs.iter().map(|s| s.name.as_str()).filter(|n| !matches!(*n, "input_ids" | "attention_mask" | "position_ids")).collect();
        if !unknown.is_empty() {
            let hint = if unknown.iter().any(|n| n.starts_with("past_key_values.")) { "; a model with a key/value cache runs through `Decoder`" } else { "" };
            return Err(self.interface_error(format!(
                "prefill feeds `input_ids`, `attention_mask` and `position_ids`, but the model also needs {}{hint}",
                ticked(&unknown)
            )));
        }
        let ids_spec =
            self.input("input_ids").ok_or_else(|| self.interface_error(format!("has no `input_ids` input; its inputs are {}", self.list_inputs())))?;
        let logits = self.logits_name()?;

        let shape = vec![batch, seq];
        let mut values = vec![("input_ids".to_string(), int_value(&self.model, ids_spec, shape.clone(), input_ids)?)];
        match self.input("attention_mask") {
            Some(spec) => values.push(("attention_mask".into(), int_value(&self.model, spec, shape.clone(), attention_mask)?)),
            None if attention_mask.contains(&0) => {
                return Err(self.interface_error("the batch is padded, but the model has no `attention_mask` input to say where".into()));
            }
            None => {}
        }
        if let Some(spec) = self.input("position_ids") {
            let mut positions = Vec::with_capacity(n);
            for row in attention_mask.chunks(seq) {
                let mut seen = 0i64;
                for &m in row {
                    seen += i64::from(m != 0);
                    positions.push((seen - 1).max(0));
                }
            }
            values.push(("position_ids".into(), int_value(&self.model, spec, shape, &positions)?));
        }
        Ok(PreparedInputs { values, logits, device: None })
    }

    /// [`Self::prefill_inputs`], also placed on the session's device for
    /// [`Self::run_prepared_on_device`]: bound through I/O binding (ONNX Runtime uploads a
    /// host tensor when it is bound, so the upload happens here, before any clock), with the
    /// logits bound to device memory; with [`SessionOptions::cuda_graph`], copied into the
    /// input buffers of the CUDA graph of this `batch × seq` shape. That graph's buffers hold
    /// one preparation at a time: preparing the same shape again makes the earlier inputs
    /// refuse to run. A CPU session without binding needs nothing more than host inputs.
    pub fn prefill_inputs_on_device(&self, input_ids: &[i64], attention_mask: &[i64], batch: usize, seq: usize) -> Result<PreparedInputs, RuntimeError> {
        let mut inputs = self.prefill_inputs(input_ids, attention_mask, batch, seq)?;
        let PreparedInputs { values, logits, device } = &mut inputs;
        *device = if self.graphs.is_some() {
            Some(self.prepare_graph(values, logits, batch, seq)?)
        } else if self.io_binding {
            let mut binding = self.new_binding()?;
            for (name, value) in values.iter() {
                binding.bind_input(name.as_str(), value).map_err(|e| self.run_error(format!("binding input `{name}`: {}", e.message())))?;
            }
            binding
                .bind_output_to_device(logits.as_str(), &self.device_memory)
                .map_err(|e| self.run_error(format!("binding output `{logits}`: {}", e.message())))?;
            // The upload of a bound input is asynchronous: wait for it here, so that none is
            // left to finish inside the timed run.
            binding.synchronize_inputs().map_err(|e| self.run_error(format!("copying the inputs to the device: {}", e.message())))?;
            Some(DeviceRun::Bound(Box::new(binding)))
        } else if self.on_accelerator() {
            return Err(RuntimeError::BadInput(format!(
                "`{}` runs on {} with `io_binding` off, so its inputs cannot be bound on the device: a timed run would include their upload and the logits' download; open the session with `io_binding` on (the default for {})",
                self.model.display(),
                self.providers[0],
                self.providers[0]
            )));
        } else {
            None
        };
        Ok(inputs)
    }

    /// Runs the model on prepared inputs and hands `f` a view of the logits, still in ONNX
    /// Runtime's memory: a caller that needs one row (the last position's argmax) copies
    /// nothing else. A plain run: host inputs in, host logits out, never a CUDA graph.
    pub fn run_prepared(&mut self, inputs: &PreparedInputs, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), RuntimeError> {
        let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs.values.iter().map(|(n, v)| (Cow::Borrowed(n.as_str()), v.into())).collect();
        let model = self.model.clone();
        let mut outputs = self.run_values(values)?;
        let name = inputs.logits.as_str();
        let logits =
            outputs.remove(name).ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })?;
        f(f32_view(&model, name, &logits)?);
        Ok(())
    }

    /// The timed prefill of a GPU study: runs inputs from [`Self::prefill_inputs_on_device`],
    /// leaves the logits there, and returns once the device has finished (the way PyTorch
    /// times a forward pass up to `torch.cuda.synchronize()`). Nothing is copied to the host;
    /// [`DeviceTensor::to_host`] does that afterwards, outside the clock.
    ///
    /// With [`SessionOptions::cuda_graph`] the run replays the graph of its input shape; the
    /// first run of a shape also does ONNX Runtime's warm-up and capture runs, so it belongs
    /// to the warm-up. On a CPU session without binding this is the plain run; on an
    /// accelerator, inputs from [`Self::prefill_inputs`] (host memory) are refused.
    pub fn run_prepared_on_device(&mut self, inputs: &PreparedInputs) -> Result<DeviceTensor, RuntimeError> {
        let name = inputs.logits.as_str();
        let missing = |model: &Path| RuntimeError::Run { model: model.to_path_buf(), message: format!("output `{name}` is missing from the results") };
        let value = match &inputs.device {
            None if self.on_accelerator() => {
                return Err(RuntimeError::BadInput(format!(
                    "these inputs of `{}` are in host memory: prepare them with `prefill_inputs_on_device` to run them on {}",
                    self.model.display(),
                    self.providers[0]
                )));
            }
            None => {
                // A CPU session: host memory is the device, and the plain run leaves the
                // logits where the CPU provider wrote them.
                let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs.values.iter().map(|(n, v)| (Cow::Borrowed(n.as_str()), v.into())).collect();
                self.run_values(values)?.remove(name)
            }
            Some(DeviceRun::Bound(binding)) => {
                let value = self.run_bound(binding)?.remove(name);
                // Explicit, not left to the run's own end-of-run synchronisation: the clock
                // stops when the device is done, whatever the run options say.
                binding.synchronize_outputs().map_err(|e| self.run_error(format!("synchronising: {}", e.message())))?;
                value
            }
            Some(DeviceRun::Graph { session, shape, generation }) => {
                // GPU only: CPU sessions refuse `cuda_graph`, so no CPU test reaches this arm.
                if *session != self.id {
                    return Err(RuntimeError::BadInput(format!("these inputs were prepared by another session than `{}`'s", self.model.display())));
                }
                let graphs = self.graphs.as_mut().expect("graph inputs come from a session with graphs").get_mut().unwrap_or_else(|p| p.into_inner());
                let slot = graphs.slots.get(shape).expect("a graph preparation creates its slot");
                if slot.generation != *generation {
                    return Err(RuntimeError::BadInput(format!(
                        "inputs of shape {}×{} were prepared again since these were: the CUDA graph's input buffers now hold the later ones; prepare these again before running them",
                        shape.0, shape.1
                    )));
                }
                let value = self
                    .inner
                    .run_binding_with_options(&slot.binding, &slot.run_options)
                    .map_err(|e| RuntimeError::Run { model: self.model.clone(), message: format!("CUDA graph {}: {}", slot.id, e.message()) })?
                    .remove(name);
                // A replay returns from ONNX Runtime as soon as the graph is launched on some
                // builds: wait for the device explicitly.
                slot.binding
                    .synchronize_outputs()
                    .map_err(|e| RuntimeError::Run { model: self.model.clone(), message: format!("synchronising CUDA graph {}: {}", slot.id, e.message()) })?;
                value
            }
        };
        let value = value.ok_or_else(|| missing(&self.model))?;
        Ok(DeviceTensor { name: name.to_string(), value })
    }

    /// The CUDA graph slot of prefill shape `batch × seq`, created on first use, with `values`
    /// copied into its input buffers. GPU only (see [`SessionOptions::cuda_graph`]).
    fn prepare_graph(&self, values: &[(String, DynValue)], logits: &str, batch: usize, seq: usize) -> Result<DeviceRun, RuntimeError> {
        let graph_err = |message: String| RuntimeError::CudaGraph { model: self.model.clone(), message };
        let mut graphs = self.graphs.as_ref().expect("called with graphs on").lock().unwrap_or_else(|p| p.into_inner());
        let shape = (batch, seq);
        if !graphs.slots.contains_key(&shape) {
            let allocator =
                Allocator::new(&self.inner, self.device_memory.clone()).map_err(|e| graph_err(format!("creating the device allocator: {}", e.message())))?;
            let mut binding = self.new_binding()?;
            let mut inputs = Vec::with_capacity(values.len());
            for (name, host) in values {
                let host = host.view().downcast::<DynTensorValueType>().map_err(|e| graph_err(format!("input `{name}`: {}", e.message())))?;
                let dims: Vec<i64> = host.shape().iter().copied().collect();
                let buffer = DynTensor::new(&allocator, *host.data_type(), dims)
                    .map_err(|e| graph_err(format!("allocating input `{name}` on the device: {}", e.message())))?;
                binding.bind_input(name.as_str(), &buffer).map_err(|e| graph_err(format!("binding input `{name}`: {}", e.message())))?;
                inputs.push((name.clone(), buffer));
            }
            // The output buffer too is allocated once: its address is part of the graph.
            let vocab = self.output(logits).and_then(|spec| spec.fixed(2)).ok_or_else(|| {
                graph_err(format!("output `{logits}` must have a fixed vocabulary size (axis 2) for its buffer to be allocated before capture"))
            })?;
            let out = DynTensor::new(&allocator, TensorElementType::Float32, vec![batch as i64, seq as i64, vocab as i64])
                .map_err(|e| graph_err(format!("allocating output `{logits}` on the device: {}", e.message())))?;
            binding.bind_output(logits, out).map_err(|e| graph_err(format!("binding output `{logits}`: {}", e.message())))?;
            let (id, run_options) = graphs.next(&self.model)?;
            graphs.slots.insert(shape, GraphSlot { id, run_options, binding, inputs, generation: 0 });
        }
        let slot = graphs.slots.get_mut(&shape).expect("inserted above");
        for ((name, host), (_, buffer)) in values.iter().zip(slot.inputs.iter_mut()) {
            let host = host.view().downcast::<DynTensorValueType>().map_err(|e| graph_err(format!("input `{name}`: {}", e.message())))?;
            // A synchronous copy into the buffer the graph reads: done before any clock.
            host.copy_into(buffer).map_err(|e| graph_err(format!("copying input `{name}` to the device: {}", e.message())))?;
        }
        slot.generation += 1;
        Ok(DeviceRun::Graph { session: self.id, shape, generation: slot.generation })
    }

    /// `logits`, or the only output there is.
    pub(super) fn logits_name(&self) -> Result<String, RuntimeError> {
        if self.output("logits").is_some() {
            return Ok("logits".into());
        }
        match self.outputs.as_slice() {
            [only] => Ok(only.name.clone()),
            _ => Err(self.interface_error(format!(
                "has no `logits` output; its outputs are {}",
                ticked(&self.outputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
            ))),
        }
    }

    fn list_inputs(&self) -> String {
        ticked(&self.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>())
    }
}

/// An integer input (ids, mask, positions) in the element type the model declares.
pub(super) fn int_value(model: &Path, spec: &IoSpec, shape: Vec<usize>, data: &[i64]) -> Result<DynValue, RuntimeError> {
    let made = match spec.dtype.as_str() {
        "i64" => Tensor::from_array((shape, data.to_vec())).map(|t| t.into_dyn()),
        "i32" => {
            let narrowed: Result<Vec<i32>, _> = data.iter().map(|&v| i32::try_from(v)).collect();
            let narrowed = narrowed.map_err(|_| RuntimeError::BadInput(format!("input `{}` is i32 and a value does not fit", spec.name)))?;
            Tensor::from_array((shape, narrowed)).map(|t| t.into_dyn())
        }
        other => {
            return Err(RuntimeError::Interface {
                model: model.to_path_buf(),
                message: format!("input `{}` is {other}; token ids, masks and positions are fed as i64 or i32", spec.name),
            });
        }
    };
    made.map_err(|e| RuntimeError::BadInput(format!("input `{}`: {}", spec.name, e.message())))
}

/// A tensor's dimensions as ONNX Runtime reports them.
pub(super) fn value_shape(value: &DynValue) -> Vec<i64> {
    value.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default()
}

/// Whether a tensor's data is in host memory.
pub(super) fn is_on_host(value: &DynValue) -> bool {
    match value.view().downcast::<DynTensorValueType>() {
        Ok(t) => t.memory_info().is_cpu_accessible(),
        Err(_) => true,
    }
}

/// A float tensor (f32, or f16 widened) wherever it lives, as an owned host f32 array: a
/// device-to-host copy when it is on a GPU.
pub(super) fn host_f32(name: &str, value: &DynValue) -> Result<ArrayD<f32>, RuntimeError> {
    let read_err = |message: String| RuntimeError::BadInput(format!("reading `{name}`: {message}"));
    if is_on_host(value) {
        return widened(value).map_err(read_err);
    }
    let tensor = value.view().downcast::<DynTensorValueType>().map_err(|e| read_err(e.message().to_string()))?;
    let host = tensor.to(AllocationDevice::CPU, 0).map_err(|e| read_err(format!("copying it to the host: {}", e.message())))?;
    widened(&host.into_dyn()).map_err(read_err)
}

/// A host tensor of f32, f16, i64 or i32 as f32 (ids are exact below 2²⁴).
fn widened(value: &DynValue) -> Result<ArrayD<f32>, String> {
    let err = |e: ort::Error| e.message().to_string();
    match value.dtype().tensor_type() {
        Some(TensorElementType::Float16) => value.try_extract_array::<half::f16>().map(|v| v.mapv(f32::from)).map_err(err),
        Some(TensorElementType::Int64) => value.try_extract_array::<i64>().map(|v| v.mapv(|x| x as f32)).map_err(err),
        Some(TensorElementType::Int32) => value.try_extract_array::<i32>().map(|v| v.mapv(|x| x as f32)).map_err(err),
        _ => value.try_extract_array::<f32>().map(|v| v.to_owned()).map_err(err),
    }
}

/// A result tensor as an owned f32 array: f32 as it is, f16 widened, integer outputs
/// (`next_token`) as their values.
pub(super) fn f32_array(model: &Path, name: &str, value: &DynValue) -> Result<ArrayD<f32>, RuntimeError> {
    match value.dtype().tensor_type() {
        Some(TensorElementType::Float16 | TensorElementType::Int64 | TensorElementType::Int32) => {
            widened(value).map_err(|message| RuntimeError::Run { model: model.to_path_buf(), message: format!("reading output `{name}`: {message}") })
        }
        _ => f32_view(model, name, value).map(|v| v.to_owned()),
    }
}

/// A result tensor as an f32 view, or why it is not one.
pub(super) fn f32_view<'v>(model: &Path, name: &str, value: &'v DynValue) -> Result<ArrayViewD<'v, f32>, RuntimeError> {
    match value.dtype().tensor_type() {
        Some(TensorElementType::Float32) => {}
        other => {
            let ty = other.map_or_else(|| "not a tensor".to_string(), |t| t.to_string());
            return Err(RuntimeError::Interface { model: model.to_path_buf(), message: format!("output `{name}` is {ty}; tr118 reads f32 outputs") });
        }
    }
    value.try_extract_array::<f32>().map_err(|e| RuntimeError::Run { model: model.to_path_buf(), message: format!("reading output `{name}`: {}", e.message()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trt::ShapeSpecs;

    /// The provider's options as `ort` holds them (its `Debug` lists the key/value map).
    fn options_text(trt: &TrtOptions) -> String {
        format!("{:?}", tensorrt_provider(0, trt))
    }

    #[test]
    fn profile_shapes_reach_the_tensorrt_provider_under_its_option_names() {
        let trt = TrtOptions {
            profile_shapes: Some(ShapeSpecs { min: "input_ids:1x1".into(), opt: "input_ids:1x27".into(), max: "input_ids:4x512".into() }),
            ..TrtOptions::default()
        };
        let text = options_text(&trt);
        for (key, value) in
            [("trt_profile_min_shapes", "input_ids:1x1"), ("trt_profile_opt_shapes", "input_ids:1x27"), ("trt_profile_max_shapes", "input_ids:4x512")]
        {
            assert!(text.contains(&format!("\"{key}\": \"{value}\"")), "{key} = {value} missing from {text}");
        }
        assert!(!options_text(&TrtOptions::default()).contains("trt_profile"), "no profile, no profile options");
    }

    #[test]
    fn cuda_graph_reaches_the_cuda_provider_under_its_option_name() {
        let text = format!("{:?}", cuda_provider(1, true));
        assert!(text.contains("\"enable_cuda_graph\": \"true\"") && text.contains("\"device_id\": \"1\""), "{text}");
        assert!(!format!("{:?}", cuda_provider(0, false)).contains("enable_cuda_graph"), "no graphs, no graph option");
    }

    #[test]
    fn int8_with_a_table_uses_tensorrt_native_calibration_format() {
        let trt = TrtOptions { int8_calibration_table: Some("out/calibrate/calibration.cache".into()), ..TrtOptions::default() };
        let text = options_text(&trt);
        for (key, value) in [
            ("trt_int8_enable", "true"),
            ("trt_int8_use_native_calibration_table", "true"),
            ("trt_int8_calibration_table_name", "out/calibrate/calibration.cache"),
        ] {
            assert!(text.contains(&format!("\"{key}\": \"{value}\"")), "{key} = {value} missing from {text}");
        }
    }
}
