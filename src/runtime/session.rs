//! A session over one ONNX file: options, execution providers, the model's declared inputs
//! and outputs, a generic f32 run and the prefill call (`input_ids` → `logits`).

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use ort::ep::{CUDA, ExecutionProviderDispatch, TensorRT};
use ort::session::SessionInputValue;
use ort::session::builder::{AutoDevicePolicy, SessionBuilder};
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, ValueType};
use serde::Serialize;

use super::{OptLevel, Provider, Runtime, RuntimeError};

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
        SessionOptions { providers: vec![Provider::Cpu], intra_threads: None, opt_level: OptLevel::All, device_id: 0, tensorrt: TrtOptions::default() }
    }
}

impl SessionOptions {
    pub fn with_providers(mut self, providers: impl Into<Vec<Provider>>) -> Self {
        self.providers = providers.into();
        self
    }
}

/// Model inputs built ahead of a run ([`Session::prefill_inputs`]), in the element types the
/// model declares.
#[derive(Debug)]
pub struct PreparedInputs {
    values: Vec<(String, DynValue)>,
    /// The output to read back.
    logits: String,
}

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
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.model)
            .field("providers", &self.providers)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
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
    pub fn profiled_session(&self, model: &Path, options: &SessionOptions, prefix: &Path) -> Result<Session, RuntimeError> {
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
                let cpu_only = SessionOptions { providers: vec![Provider::Cpu], ..options.clone() };
                let on: Vec<&str> = accelerators.iter().map(|p| p.name()).collect();
                return Err(match self.session(model, &cpu_only) {
                    Ok(_) => self.unavailable(accelerators[0], format!("the model does not open with {}: {}", on.join(", "), e.message().trim())),
                    Err(_) => session_err(format!("{} (providers: {}, cpu)", e.message(), on.join(", "))),
                });
            }
            Err(e) => return Err(session_err(e.message().to_string())),
        };
        let inputs = inner.inputs().iter().map(|o| IoSpec::from_ort(o.name(), o.dtype())).collect();
        let outputs = inner.outputs().iter().map(|o| IoSpec::from_ort(o.name(), o.dtype())).collect();
        let mut providers = accelerators;
        providers.push(Provider::Cpu);
        Ok(Session { inner, model: model.to_path_buf(), providers, inputs, outputs })
    }

    fn unavailable(&self, provider: Provider, reason: String) -> RuntimeError {
        RuntimeError::ProviderUnavailable {
            provider,
            version: self.info.version.clone(),
            path: self.info.path.clone(),
            available: self.info.providers.clone(),
            reason,
        }
    }

    fn register(&self, builder: SessionBuilder, p: Provider, options: &SessionOptions) -> Result<SessionBuilder, RuntimeError> {
        let device_id = options.device_id;
        let unavailable = |reason: String| self.unavailable(p, reason);
        let device = i32::try_from(device_id).map_err(|_| unavailable(format!("device id {device_id} is out of range")))?;
        let ep: ExecutionProviderDispatch = match p {
            Provider::Cuda => CUDA::default().with_device_id(device).build(),
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
    pub fn model(&self) -> &Path {
        &self.model
    }

    /// Stops the profiler of a [`Runtime::profiled_session`] and returns the profile's path.
    /// Later runs are not profiled.
    pub fn end_profiling(&mut self) -> Result<PathBuf, RuntimeError> {
        self.inner
            .end_profiling()
            .map(PathBuf::from)
            .map_err(|e| RuntimeError::Run { model: self.model.clone(), message: format!("ending profiling: {}", e.message()) })
    }

    /// The providers registered for this session, in order, ending with `cpu`.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
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
    /// model's order. Outputs must be f32.
    pub fn run(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<(String, ArrayD<f32>)>, RuntimeError> {
        for f in feeds {
            if self.input(f.name).is_none() {
                return Err(self.interface_error(format!("has no input `{}`; its inputs are {}", f.name, self.list_inputs())));
            }
            let len = match f.data {
                TensorData::F32(d) => d.len(),
                TensorData::I64(d) => d.len(),
                TensorData::I32(d) => d.len(),
            };
            if f.shape.iter().product::<usize>() != len {
                return Err(RuntimeError::BadInput(format!("input `{}`: shape {:?} needs {} values, got {len}", f.name, f.shape, f.shape.iter().product::<usize>())));
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
                TensorData::I64(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
                TensorData::I32(d) => TensorRef::from_array_view((f.shape, d)).map(Into::into),
            }
            .map_err(|e| RuntimeError::BadInput(format!("input `{}`: {}", f.name, e.message())))?;
            values.push((Cow::Borrowed(f.name), v));
        }
        let names: Vec<String> = self.outputs.iter().map(|s| s.name.clone()).collect();
        let model = self.model.clone();
        let mut outputs = self.inner.run(values).map_err(|e| RuntimeError::Run { model: model.clone(), message: e.message().to_string() })?;
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
            return Err(self.interface_error(format!("prefill feeds `input_ids`, `attention_mask` and `position_ids`, but the model also needs {}{hint}", ticked(&unknown))));
        }
        let ids_spec = self.input("input_ids").ok_or_else(|| self.interface_error(format!("has no `input_ids` input; its inputs are {}", self.list_inputs())))?;
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
        Ok(PreparedInputs { values, logits })
    }

    /// Runs the model on prepared inputs and hands `f` a view of the logits, still in ONNX
    /// Runtime's memory: a caller that needs one row (the last position's argmax) copies
    /// nothing else.
    pub fn run_prepared(&mut self, inputs: &PreparedInputs, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), RuntimeError> {
        let values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = inputs.values.iter().map(|(n, v)| (Cow::Borrowed(n.as_str()), v.into())).collect();
        let model = self.model.clone();
        let mut outputs = self.inner.run(values).map_err(|e| RuntimeError::Run { model: model.clone(), message: e.message().to_string() })?;
        let name = inputs.logits.as_str();
        let logits = outputs.remove(name).ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })?;
        f(f32_view(&model, name, &logits)?);
        Ok(())
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

/// A result tensor as an owned f32 array.
pub(super) fn f32_array(model: &Path, name: &str, value: &DynValue) -> Result<ArrayD<f32>, RuntimeError> {
    f32_view(model, name, value).map(|v| v.to_owned())
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
    value
        .try_extract_array::<f32>()
        .map_err(|e| RuntimeError::Run { model: model.to_path_buf(), message: format!("reading output `{name}`: {}", e.message()) })
}

pub(super) fn ticked(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
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
        for (key, value) in [("trt_profile_min_shapes", "input_ids:1x1"), ("trt_profile_opt_shapes", "input_ids:1x27"), ("trt_profile_max_shapes", "input_ids:4x512")] {
            assert!(text.contains(&format!("\"{key}\": \"{value}\"")), "{key} = {value} missing from {text}");
        }
        assert!(!options_text(&TrtOptions::default()).contains("trt_profile"), "no profile, no profile options");
    }

    #[test]
    fn int8_with_a_table_uses_tensorrt_native_calibration_format() {
        let trt = TrtOptions { int8_calibration_table: Some("out/calibrate/calibration.cache".into()), ..TrtOptions::default() };
        let text = options_text(&trt);
        for (key, value) in [("trt_int8_enable", "true"), ("trt_int8_use_native_calibration_table", "true"), ("trt_int8_calibration_table_name", "out/calibrate/calibration.cache")] {
            assert!(text.contains(&format!("\"{key}\": \"{value}\"")), "{key} = {value} missing from {text}");
        }
    }
}
