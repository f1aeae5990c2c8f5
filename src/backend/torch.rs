//! The `torch` runtime: PyTorch and `transformers` in a Python worker that tr118 starts,
//! speaking to it over stdin/stdout, one JSON object per line each way. The worker ships in
//! the binary ([`WORKER_SOURCE`], `python/tr118_worker.py` in the repository) and runs under
//! `$TR118_PYTHON`, else `python3`; its protocol is documented in `docs/torch-worker.md`.
//!
//! The worker loads the export's Hugging Face directory (`{model}/hf`: the same weights the
//! ONNX models hold) on `cpu` or `cuda:{device_id}`, eager or through `torch.compile`
//! (`dynamic=False`; a static key/value cache for compiled decoding), and times its own
//! loops, synchronising CUDA at each end, so that the pipe between the processes is never
//! inside a measurement. Logits for perplexity and logit diffs come back through a file in
//! a scratch directory (float32, little-endian, row-major), and NLL is computed from them by
//! the same code as for every other backend.
//!
//! A worker that cannot start (no Python), or that answers `unavailable` (torch or
//! transformers not importable, no CUDA device), makes the backend
//! [`BackendError::Unavailable`]: a degraded result with the worker's reason. The worker's
//! stderr is kept (the last lines) and quoted in errors.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ndarray::{ArrayD, ArrayViewD};
use serde_json::{Map, Value, json};

use super::workload::Generation;
use super::{Backend, BackendError, BackendSpec, Capability, DecodeCache, Prepared, TokenIds, probe};
use crate::runtime::Provider;

/// The worker program, as shipped in the repository.
pub(crate) const WORKER_SOURCE: &str = include_str!("../../python/tr118_worker.py");
/// The protocol version this side speaks; `hello` must answer the same.
pub(crate) const PROTOCOL: u64 = 1;
/// A file to append the exchange to (`> request`, `< answer`, one line each).
pub(crate) const RECORD_ENV: &str = "TR118_TORCH_RECORD";
const STDERR_LINES: usize = 40;
/// Lines of the worker's stderr quoted in an error.
const STDERR_IN_ERRORS: usize = 3;

/// A running worker process.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    next_id: u64,
    scratch: PathBuf,
    record: Option<std::fs::File>,
}

impl Worker {
    /// Starts the worker under [`python`]. A Python that cannot be started is `Unavailable`.
    pub(crate) fn start() -> Result<Worker, BackendError> {
        let scratch = probe::scratch_dir("torch")?;
        let script = scratch.join("tr118_worker.py");
        std::fs::write(&script, WORKER_SOURCE).map_err(|e| BackendError::Failed(format!("writing `{}`: {e}", script.display())))?;
        // `load_plan` imports TensorRT for RTX's helper from beside the worker.
        let helper = scratch.join(crate::trt::rtx::HELPER_NAME);
        std::fs::write(&helper, crate::trt::rtx::HELPER_SOURCE).map_err(|e| BackendError::Failed(format!("writing `{}`: {e}", helper.display())))?;
        let python = crate::python::interpreter();
        let spawned = Command::new(&python).arg("-u").arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                probe::remove_scratch_dir(&scratch);
                return Err(BackendError::Unavailable(format!(
                    "cannot start the torch worker with `{}`: {e}; set {} to a Python with torch and transformers",
                    crate::paths::relative_text(&python),
                    crate::python::ENV
                )));
            }
        };
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err(BackendError::Failed("the torch worker's pipes were not set up".into()));
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        let sink = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let record = match std::env::var_os(RECORD_ENV) {
            None => None,
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| BackendError::Failed(format!("opening `{}` ({RECORD_ENV}): {e}", Path::new(&path).display())))?,
            ),
        };
        Ok(Worker { child, stdin, stdout: BufReader::new(stdout), stderr: tail, next_id: 1, scratch, record })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines the worker wrote to stderr that are not progress bars or warnings
    /// (a reason is read in a report's table: the traceback's end is what says why).
    pub(crate) fn stderr_tail(&self, n: usize) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let useful: Vec<&String> = lines
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.contains('\r') && !l.starts_with('W') && !l.contains("Warning") && !l.contains("warnings.warn"))
            .collect();
        useful[useful.len().saturating_sub(n)..].iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | ")
    }

    /// Sends one request and reads its answer. `ok: false` with `unavailable` is
    /// [`BackendError::Unavailable`]; with `error`, or a worker that exits or answers out of
    /// turn, [`BackendError::Failed`].
    pub(crate) fn call(&mut self, op: &str, mut req: Map<String, Value>) -> Result<Map<String, Value>, BackendError> {
        let id = self.next_id;
        self.next_id += 1;
        req.insert("id".into(), json!(id));
        req.insert("op".into(), json!(op));
        let mut line = serde_json::to_string(&req).map_err(|e| BackendError::Failed(e.to_string()))?;
        line.push('\n');
        if let Some(r) = &mut self.record {
            let _ = write!(r, "> {line}");
        }
        if let Err(e) = self.stdin.write_all(line.as_bytes()).and_then(|()| self.stdin.flush()) {
            return Err(self.gone(op, &format!("writing to it failed: {e}")));
        }
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(0) => return Err(self.gone(op, "it closed its output")),
            Err(e) => return Err(self.gone(op, &format!("reading its answer failed: {e}"))),
            Ok(_) => {}
        }
        if let Some(r) = &mut self.record {
            let _ = writeln!(r, "< {}", answer.trim_end());
        }
        let mut resp: Map<String, Value> = serde_json::from_str(answer.trim())
            .map_err(|e| BackendError::Failed(format!("the torch worker answered `{op}` with a line that is not a JSON object ({e}): {:?}", answer.trim())))?;
        if resp.get("id").and_then(Value::as_u64) != Some(id) {
            return Err(BackendError::Failed(format!("the torch worker answered request {id} (`{op}`) with id {}", resp.get("id").unwrap_or(&Value::Null))));
        }
        if resp.get("ok").and_then(Value::as_bool) == Some(true) {
            resp.remove("id");
            resp.remove("ok");
            return Ok(resp);
        }
        if let Some(reason) = resp.get("unavailable").and_then(Value::as_str) {
            // A degraded reason: it names the interpreter, maybe inside the workspace.
            return Err(BackendError::Unavailable(crate::paths::relative_text(reason)));
        }
        let error = resp.get("error").and_then(Value::as_str).unwrap_or("an error without a message");
        let tail = self.stderr_tail(STDERR_IN_ERRORS);
        Err(BackendError::Failed(if tail.is_empty() {
            format!("torch worker, `{op}`: {error}")
        } else {
            format!("torch worker, `{op}`: {error} (stderr: {tail})")
        }))
    }

    fn gone(&mut self, op: &str, what: &str) -> BackendError {
        // Give the stderr thread a moment to collect the traceback of a dying worker.
        let status = (0..50).find_map(|_| match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => {
                std::thread::sleep(Duration::from_millis(10));
                None
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let tail = self.stderr_tail(STDERR_IN_ERRORS);
        let status = status.unwrap_or_else(|| "still running".into());
        BackendError::Failed(if tail.is_empty() {
            format!("the torch worker stopped during `{op}` ({what}; {status})")
        } else {
            format!("the torch worker stopped during `{op}` ({what}; {status}); stderr: {tail}")
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"id\": 0, \"op\": \"shutdown\"}\n");
        let _ = self.stdin.flush();
        let exited = (0..100).any(|_| {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        probe::remove_scratch_dir(&self.scratch);
    }
}

/// A torch backend: a worker with the model loaded.
pub(crate) struct TorchBackend {
    spec: BackendSpec,
    capability: Capability,
    worker: Worker,
}

/// Starts a worker, checks its protocol and loads `model` (a Hugging Face directory) as
/// `spec` says.
pub(crate) fn open(spec: &BackendSpec, model: &Path) -> Result<Box<dyn Backend>, BackendError> {
    if !model.join("config.json").is_file() {
        return Err(BackendError::Failed(format!(
            "`{}` is not a Hugging Face model directory (no `config.json`): torch backends run an export's `hf` variant (`variants = [\"prefill\", \"decoder\", \"hf\"]`)",
            model.display()
        )));
    }
    let mut worker = Worker::start()?;
    let hello = hello(&mut worker)?;
    let device = match spec.provider {
        Provider::Cuda => format!("cuda:{}", spec.device_id),
        _ => "cpu".to_string(),
    };
    let mut load = Map::new();
    load.insert("model".into(), json!(model));
    load.insert("device".into(), json!(device));
    load.insert("precision".into(), json!(spec.precision));
    if let Some(backend) = &spec.compile {
        load.insert("compile".into(), json!({ "backend": backend, "mode": spec.compile_mode }));
    }
    let loaded = worker.call("load", load)?;
    let s = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut offered = vec!["cpu".to_string()];
    if hello.get("devices").and_then(Value::as_array).is_some_and(|d| !d.is_empty()) {
        offered.push("cuda".into());
    }
    let parameters = loaded.get("parameters").and_then(Value::as_u64).unwrap_or(0) as usize;
    let assigned: BTreeMap<String, usize> = loaded
        .get("parameter_devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|d| (d.to_string(), parameters))
        .collect();
    let capability = Capability {
        runtime: "torch".into(),
        runtime_version: s(&hello, "torch"),
        // What runs is the worker program under that torch: its digest stands for the library.
        library_digest: blake3::hash(WORKER_SOURCE.as_bytes()).to_hex().to_string(),
        providers_offered: offered,
        providers_assigned: assigned,
        worker: Some(json!({ "hello": hello, "load": loaded })),
        ..Capability::machine(spec)
    };
    Ok(Box::new(TorchBackend { spec: spec.clone(), capability, worker }))
}

/// Opens a `tensorrt-rtx` backend over a plan: `model` is a `trt_build` node's `plan` output
/// (`out/<node>/plan`, holding `model.plan`), the plan file, or the node's directory; the
/// node's `build.json` is read from beside `plan/`. The library and the
/// bindings are those the plan was built with, as its `build.json` names them: a plan is
/// rebuilt when they change, so they reach the keys of this backend's nodes through it.
///
/// The worker's `load_plan` has the library judge the plan before anything else (no torch
/// needed): a machine with no usable GPU, or a GPU the plan is not for, is `Unavailable` with
/// the library's own words; a plan from another version of the library is an error. Only then
/// does it load the plan, with torch's CUDA tensors as its buffers.
pub(crate) fn open_plan(spec: &BackendSpec, model: &Path) -> Result<Box<dyn Backend>, BackendError> {
    let plan = if model.is_file() {
        model.to_path_buf()
    } else if model.join("model.plan").is_file() {
        model.join("model.plan")
    } else {
        model.join("plan/model.plan")
    };
    // `out/<node>/plan/model.plan` and `out/<node>/build.json`.
    let build = plan.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("build.json");
    let failed = BackendError::Failed;
    let text = std::fs::read(&build).map_err(|e| {
        failed(format!("`{}` has no `build.json` beside it ({e}): a `tensorrt-rtx` backend runs plans built by a `trt_build` stage", plan.display()))
    })?;
    let built: Value = serde_json::from_slice(&text).map_err(|e| failed(format!("`{}`: {e}", build.display())))?;
    if built["builder"] != "tensorrt-rtx" {
        return Err(failed(format!("`{}` was not built by TensorRT for RTX (builder {})", plan.display(), built["builder"])));
    }
    if built["status"] != "ok" {
        let reason = built["reason"].as_str().unwrap_or("no reason given");
        return Err(BackendError::Unavailable(format!("its plan `{}` was not built: {reason}", plan.display())));
    }
    let library = PathBuf::from(built["library"].as_str().unwrap_or_default());
    let bindings: Vec<PathBuf> = built["bindings"].as_array().into_iter().flatten().filter_map(Value::as_str).map(PathBuf::from).collect();
    let mut worker = Worker::start()?;
    let hello = hello(&mut worker)?;
    let mut load = Map::new();
    // The worker runs in the workspace: the plan by the name people read in a reason.
    load.insert("plan".into(), json!(crate::paths::shown(&plan)));
    load.insert("library".into(), json!(library));
    load.insert("bindings".into(), json!(bindings));
    load.insert("device".into(), json!(format!("cuda:{}", spec.device_id)));
    let loaded = worker.call("load_plan", load)?;
    let capability = Capability {
        runtime: "tensorrt-rtx".into(),
        runtime_version: loaded.get("version").and_then(Value::as_str).unwrap_or_default().to_string(),
        library_digest: built["library_digest"].as_str().unwrap_or_default().to_string(),
        providers_offered: vec!["cuda".into()],
        providers_assigned: BTreeMap::from([("cuda".to_string(), 1)]),
        worker: Some(json!({ "hello": hello, "load": loaded })),
        ..Capability::machine(spec)
    };
    Ok(Box::new(TorchBackend { spec: spec.clone(), capability, worker }))
}

/// The worker's `hello`, its interpreter shown relative to the workspace, its protocol checked.
fn hello(worker: &mut Worker) -> Result<Map<String, Value>, BackendError> {
    let mut hello = worker.call("hello", Map::new())?;
    // The interpreter is named in every result the backend produces: a virtual environment
    // inside the workspace by its path relative to it (see [`crate::paths`]).
    if let Some(Value::String(exe)) = hello.get_mut("executable") {
        *exe = crate::paths::shown(Path::new(exe.as_str()));
    }
    let protocol = hello.get("protocol").and_then(Value::as_u64);
    if protocol != Some(PROTOCOL) {
        return Err(BackendError::Failed(format!("the torch worker speaks protocol {protocol:?}; this tr118 speaks {PROTOCOL}")));
    }
    Ok(hello)
}

fn num(m: &Map<String, Value>, k: &str) -> Result<f64, BackendError> {
    m.get(k).and_then(Value::as_f64).ok_or_else(|| BackendError::Failed(format!("the torch worker's answer has no number `{k}`")))
}

/// A time the worker measured, in seconds: a negative, NaN or absurd one is an error.
fn secs(m: &Map<String, Value>, k: &str) -> Result<Duration, BackendError> {
    let s = num(m, k)?;
    Duration::try_from_secs_f64(s).map_err(|_| BackendError::Failed(format!("the torch worker's answer has `{k}` = {s}, which is not a duration")))
}

fn ids_of(m: &Map<String, Value>, expected: usize) -> Result<Vec<i64>, BackendError> {
    let ids: Vec<i64> = m.get("ids").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_i64).collect();
    if ids.len() != expected {
        return Err(BackendError::Failed(format!("the torch worker returned {} generated ids, expected {expected}", ids.len())));
    }
    Ok(ids)
}

impl TorchBackend {
    fn prefill_request(&self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Map<String, Value>, BackendError> {
        check_prefill(ids, mask, batch, seq)?;
        let mut req = Map::new();
        req.insert("ids".into(), json!(ids));
        req.insert("batch".into(), json!(batch));
        req.insert("seq".into(), json!(seq));
        if mask.iter().any(|&m| m != 1) {
            req.insert("mask".into(), json!(mask));
        }
        Ok(req)
    }

    /// A prefill whose logits come back through a file in the worker's scratch directory.
    fn logits(&mut self, mut req: Map<String, Value>) -> Result<ArrayD<f32>, BackendError> {
        let path = self.worker.scratch.join("logits.f32");
        req.insert("logits".into(), json!(path));
        let resp = self.worker.call("prefill", req)?;
        let shape: Vec<usize> = resp.get("shape").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_u64).map(|d| d as usize).collect();
        let bytes = std::fs::read(&path).map_err(|e| BackendError::Failed(format!("reading the torch worker's logits `{}`: {e}", path.display())))?;
        let _ = std::fs::remove_file(&path);
        let n: usize = shape.iter().product();
        if shape.len() != 3 || bytes.len() != n * 4 {
            return Err(BackendError::Failed(format!("the torch worker's logits are {} bytes for shape {shape:?}", bytes.len())));
        }
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ArrayD::from_shape_vec(shape, values).map_err(|e| BackendError::Failed(e.to_string()))
    }
}

fn check_prefill(ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<(), BackendError> {
    if ids.len() != batch * seq || mask.len() != ids.len() {
        return Err(BackendError::Failed(format!(
            "a prefill of {batch} × {seq} needs {} ids and mask values, got {} and {}",
            batch * seq,
            ids.len(),
            mask.len()
        )));
    }
    Ok(())
}

/// The ids of inputs a torch backend prepared; ONNX Runtime values are an error.
fn token_ids(inputs: &Prepared) -> Result<&TokenIds, BackendError> {
    inputs.token_ids().ok_or_else(|| BackendError::Failed("a torch backend was handed ONNX Runtime inputs".into()))
}

fn no_cache() -> BackendError {
    BackendError::Failed("a torch backend keeps its key/value cache in its worker: it runs whole generations, not single steps".into())
}

impl Backend for TorchBackend {
    fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    fn capability(&self) -> &Capability {
        &self.capability
    }

    fn prefill(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<ArrayD<f32>, BackendError> {
        let req = self.prefill_request(ids, mask, batch, seq)?;
        self.logits(req)
    }

    fn new_cache(&self, _batch: usize) -> Result<DecodeCache, BackendError> {
        Err(no_cache())
    }

    fn decode_step_with(
        &mut self,
        _cache: &mut DecodeCache,
        _ids: &[i64],
        _new_len: usize,
        _f: &mut dyn FnMut(ArrayViewD<'_, f32>),
    ) -> Result<(), BackendError> {
        Err(no_cache())
    }

    fn prefill_inputs(&self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Prepared, BackendError> {
        check_prefill(ids, mask, batch, seq)?;
        Ok(Prepared::from_ids(TokenIds { ids: ids.to_vec(), mask: mask.to_vec(), batch, seq }))
    }

    fn run_prefill_inputs(&mut self, inputs: &Prepared, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), BackendError> {
        let TokenIds { ids, mask, batch, seq } = token_ids(inputs)?;
        let logits = self.prefill(ids, mask, *batch, *seq)?;
        f(logits.view());
        Ok(())
    }

    fn supports(&self, _mode: &str) -> Result<(), BackendError> {
        // One Hugging Face model runs every mode.
        Ok(())
    }

    fn timed_prefill(&mut self, inputs: &Prepared) -> Result<Duration, BackendError> {
        let TokenIds { ids, mask, batch, seq } = token_ids(inputs)?;
        let req = self.prefill_request(ids, mask, *batch, *seq)?;
        let resp = self.worker.call("prefill", req)?;
        secs(&resp, "latency_s")
    }

    fn timed_generate(&mut self, prompt: &[i64], batch: usize, new_tokens: usize, cached: bool) -> Result<Generation, BackendError> {
        let seq = prompt.len() / batch.max(1);
        let mut req = Map::new();
        req.insert("ids".into(), json!(prompt));
        req.insert("batch".into(), json!(batch));
        req.insert("seq".into(), json!(seq));
        req.insert("new_tokens".into(), json!(new_tokens));
        req.insert("cache".into(), json!(cached));
        let resp = self.worker.call("generate", req)?;
        Ok(Generation { ids: ids_of(&resp, batch * new_tokens)?, ttft: secs(&resp, "ttft_s")?, total: secs(&resp, "total_s")? })
    }

    fn process_id(&self) -> Option<u32> {
        Some(self.worker.pid())
    }
}
