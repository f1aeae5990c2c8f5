//! The decode step of a `decoder` model: new token ids and the key/value cache in, logits and
//! the grown cache out.
//!
//! The interface is read from the session, not assumed. It must declare:
//!
//! | input                              | shape                                   |
//! |------------------------------------|-----------------------------------------|
//! | `input_ids`                        | [batch, new_len], i64 or i32            |
//! | `attention_mask` (optional)        | [batch, past_len + new_len]             |
//! | `position_ids` (optional)          | [batch, new_len]                        |
//! | `past_key_values.N.key` / `.value` | [batch, n_kv_head, past_len, head_dim], f32, for N in 0..n_layer |
//!
//! | output                             | shape                                   |
//! |------------------------------------|-----------------------------------------|
//! | `logits` (or the only non-cache output) | [batch, new_len, vocab], f32       |
//! | `present.N.key` / `.value`         | [batch, n_kv_head, past_len + new_len, head_dim] |
//!
//! `n_kv_head` and `head_dim` must be fixed in the model (they size the empty cache); batch and
//! lengths are dynamic. A first step with an empty cache (`past_len` 0) is the prefill.
//!
//! ## A fixed-capacity cache
//!
//! A model with a `past_length` input (the export's `decoder_fixed` variant) keeps its cache in
//! buffers of a fixed `max_length` positions, axis 2 of `past_key_values.N.*`, which the model
//! fixes: `attention_mask` is `[batch, max_length]` (1 for the positions filled so far and the
//! new ones), `past_length` `[1]` says how many are filled, and `present.N.*` is the buffer
//! with the new positions written, the same shape as the past. Every step of a batch size then
//! has the same shapes. The empty cache is zeros; a step that would not fit is refused, and so
//! is a step of several tokens into a cache that is not empty (the fp16 export's attention
//! operator reads every multi-token step as a first prompt). The cache may be f32 or f16 (the
//! fused fp16 export's). A model that returns `next_token` (each row's argmax of its last
//! logits) lets [`Decoder::step_greedy`] copy one id per row to the host instead of logits.
//!
//! With I/O binding such a cache is *resident*: the decoder allocates its buffers once per batch
//! size on the session's device, with buffers for the mask, `past_length` and `next_token`, and
//! per step length a buffer for the ids and one for the logits, all bound once. Each layer's
//! buffer is bound as both its past input and its present output, so a step writes its new
//! positions in place and nothing else moves. A step copies its ids, mask and `past_length`
//! into their buffers and runs the binding; on a session with
//! [`super::SessionOptions::cuda_graph`] each step length of each batch size has a CUDA graph
//! of its own (`gpu_graph_id`), captured by ONNX Runtime on its first runs and replayed after,
//! which the fixed addresses make valid. [`Decoder::empty_cache`] of a batch size hands out
//! the same buffers again (a cache of that size from before is then refused), so every
//! generation after the first replays the graphs.
//!
//! ## Where the cache lives
//!
//! Without I/O binding ([`super::SessionOptions::io_binding`]) a step is a plain run: ONNX
//! Runtime returns every output in host memory, so on a GPU each step downloads the whole
//! grown cache and the next uploads it again, `2 × n_layer × batch × n_kv_head × past_len ×
//! head_dim × 4` bytes each way. With binding (the default on CUDA and TensorRT) a step binds
//! `input_ids`, `attention_mask` and `position_ids` from host memory, the past from the
//! cache's tensors where the previous step left them, `present.*` to the provider's device
//! and `logits` to host memory, which the greedy loop reads in place. Only the ids in and the
//! logits out cross the bus. A growing cache cannot be captured in a CUDA graph (its shapes
//! change every step); a resident fixed-capacity one (above) can, and moves only the ids.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use ndarray::{ArrayD, ArrayViewD};
use ort::memory::{AllocationDevice, Allocator};
use ort::session::{IoBinding, RunOptions, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorElementType};

use super::RuntimeError;
use super::session::{Session, f32_view, host_f32, int_value, is_on_host, value_shape};
use crate::diag::ticked;

/// The session's names for one layer's cache.
#[derive(Debug, Clone, Default)]
struct LayerNames {
    past_key: Option<String>,
    past_value: Option<String>,
    present_key: Option<String>,
    present_value: Option<String>,
}

/// A session over a `decoder` model, with its cache interface resolved.
#[derive(Debug)]
pub struct Decoder {
    session: Session,
    has_mask: bool,
    has_positions: bool,
    /// (past key, past value, present key, present value) per layer.
    layers: Vec<[String; 4]>,
    logits: String,
    /// Whether the model returns `next_token`, the argmax of each row's last logits.
    has_next_token: bool,
    /// The cache's element type: f32, or f16 (the fused fp16 `decoder_fixed`).
    cache_type: TensorElementType,
    /// `max_length` of a fixed-capacity cache (see the module doc); `None` for a growing one.
    capacity: Option<usize>,
    /// A fixed-capacity cache run through I/O binding: its buffers, by batch size (a lock, as
    /// [`Self::empty_cache`] takes `&self`).
    resident: Option<Mutex<Resident>>,
    n_kv_head: usize,
    head_dim: usize,
    /// `Some` when the session runs through I/O binding; cleared after every step, so that it
    /// keeps no step's tensors alive into the next.
    binding: Option<IoBinding>,
}

/// The key/value cache of one batch of sequences, all of the same length.
#[derive(Debug)]
pub struct KvCache {
    batch: usize,
    past_len: usize,
    /// (key, value) per layer, `[batch, n_kv_head, past_len, head_dim]` each; empty for a
    /// resident cache, whose buffers the decoder keeps.
    layers: Vec<(DynValue, DynValue)>,
    /// `Some(generation)` for a resident cache: the decoder's buffers of this batch size, as
    /// long as no later [`Decoder::empty_cache`] of that size has reset them.
    resident: Option<u64>,
}

/// The buffers of a fixed-capacity cache that stays where the session computes, and of the
/// inputs and outputs of its steps: allocated once per batch size and bound once per step
/// length, so that every step of a shape runs on the same addresses — which a replayed CUDA
/// graph needs, and which spares every step an allocation.
struct Resident {
    allocator: Allocator,
    batches: BTreeMap<usize, ResidentBatch>,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shapes: Vec<(usize, Vec<usize>)> = self.batches.iter().map(|(b, r)| (*b, r.slots.keys().copied().collect())).collect();
        f.debug_struct("Resident").field("batches_and_step_lengths", &shapes).finish_non_exhaustive()
    }
}

struct ResidentBatch {
    /// (key, value) per layer, `[batch, n_kv_head, max_length, head_dim]`: each bound as both
    /// the layer's past input and its present output, so a step writes its new positions in
    /// place (the fused operator's shared buffer; `ScatterElements` leaves the rest as it is).
    layers: Vec<(DynTensor, DynTensor)>,
    mask: DynTensor,
    past_length: DynTensor,
    /// `next_token` on the device, and the host tensor it is copied into.
    next_token: Option<(DynTensor, DynTensor)>,
    /// By step length: the ids and logits buffers, the binding, and the CUDA graph's run
    /// options on a session with graphs.
    slots: BTreeMap<usize, Slot>,
    /// Bumped by every [`Decoder::empty_cache`] of this batch size.
    generation: u64,
}

struct Slot {
    ids: DynTensor,
    logits: DynTensor,
    binding: IoBinding,
    graph: Option<RunOptions>,
}

impl KvCache {
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Tokens already in the cache.
    pub fn past_len(&self) -> usize {
        self.past_len
    }

    /// A host copy of layer `i`'s key and value, `[batch, n_kv_head, past_len, head_dim]` (of a
    /// fixed-capacity cache, the positions filled so far): a device-to-host transfer when the
    /// cache is on a GPU. For tests and diagnostics, never inside a timed loop.
    pub fn layer(&self, i: usize) -> Result<(ArrayD<f32>, ArrayD<f32>), RuntimeError> {
        if self.resident.is_some() {
            return Err(RuntimeError::BadInput("the decoder keeps this cache's buffers: read them with `Decoder::cache_layer`".into()));
        }
        let (k, v) = self.layers.get(i).ok_or_else(|| RuntimeError::BadInput(format!("the cache has {} layers, not {}", self.layers.len(), i + 1)))?;
        let filled = |x: ArrayD<f32>| x.slice_axis(ndarray::Axis(2), ndarray::Slice::from(0..self.past_len)).to_owned();
        Ok((filled(host_f32(&format!("key of layer {i}"), k)?), filled(host_f32(&format!("value of layer {i}"), v)?)))
    }

    /// Whether every tensor of the cache is in host memory: always on a CPU session, and on a
    /// GPU only when the steps were plain runs (no I/O binding) or none has run yet. A
    /// resident cache's buffers are the decoder's ([`Decoder::is_resident_on_host`]).
    pub fn is_on_host(&self) -> bool {
        self.resident.is_none() && self.layers.iter().all(|(k, v)| is_on_host(k) && is_on_host(v))
    }

    /// Whether the decoder keeps this cache's buffers (a fixed capacity with I/O binding).
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }
}

impl Decoder {
    /// Resolves the cache interface of `session` (see the module doc), or says what is missing.
    pub fn new(session: Session) -> Result<Decoder, RuntimeError> {
        let mut names: BTreeMap<usize, LayerNames> = BTreeMap::new();
        let mut unknown = Vec::new();
        let (mut has_ids, mut has_mask, mut has_positions, mut has_past_length) = (false, false, false, false);
        for spec in session.inputs() {
            match spec.name.as_str() {
                "input_ids" => has_ids = true,
                "attention_mask" => has_mask = true,
                "position_ids" => has_positions = true,
                "past_length" => has_past_length = true,
                n => match cache_slot(n, "past_key_values.") {
                    Some((i, true)) => names.entry(i).or_default().past_key = Some(n.to_string()),
                    Some((i, false)) => names.entry(i).or_default().past_value = Some(n.to_string()),
                    None => unknown.push(n),
                },
            }
        }
        if !unknown.is_empty() {
            return Err(session.interface_error(format!(
                "decoder inputs are `input_ids`, `attention_mask`, `position_ids`, `past_length` and `past_key_values.N.key`/`.value`; the model also needs {}",
                ticked(&unknown)
            )));
        }
        if !has_ids {
            return Err(session.interface_error("has no `input_ids` input".into()));
        }
        for spec in session.outputs() {
            match cache_slot(&spec.name, "present.") {
                Some((i, true)) => names.entry(i).or_default().present_key = Some(spec.name.clone()),
                Some((i, false)) => names.entry(i).or_default().present_value = Some(spec.name.clone()),
                None => {}
            }
        }
        if names.is_empty() {
            return Err(session.interface_error(
                "has no `past_key_values.N.key` inputs: it is not a decoder model (prefill models run through `Session::run_prefill`)".into(),
            ));
        }
        let mut layers = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            let l = names.get(&i).cloned().unwrap_or_default();
            let need = |x: Option<String>, what: String| {
                x.ok_or_else(|| session.interface_error(format!("has no `{what}` (it has cache tensors for {} layers)", names.len())))
            };
            layers.push([
                need(l.past_key, format!("past_key_values.{i}.key"))?,
                need(l.past_value, format!("past_key_values.{i}.value"))?,
                need(l.present_key, format!("present.{i}.key"))?,
                need(l.present_value, format!("present.{i}.value"))?,
            ]);
        }

        let first = session.input(&layers[0][0]).expect("resolved from the session's inputs");
        let cache_type = match first.dtype.as_str() {
            "f32" => TensorElementType::Float32,
            "f16" => TensorElementType::Float16,
            _ => TensorElementType::Bool,
        };
        if cache_type == TensorElementType::Bool || first.dims.len() != 4 {
            return Err(session.interface_error(format!("`{first}`: the cache must be f32 or f16 [batch, n_kv_head, past_len, head_dim]")));
        }
        let (Some(n_kv_head), Some(head_dim)) = (first.fixed(1), first.fixed(3)) else {
            return Err(session.interface_error(format!("`{first}`: the number of key/value heads (axis 1) and the head size (axis 3) must be fixed")));
        };
        let capacity = match (has_past_length, first.fixed(2)) {
            (false, _) => None,
            (true, Some(n)) if n > 0 && has_mask => Some(n as usize),
            (true, _) => {
                return Err(session.interface_error(format!(
                    "has a `past_length` input, so its cache has a fixed capacity: `{first}` must fix axis 2 (`max_length`) and the model must take an `attention_mask`"
                )));
            }
        };
        let has_next_token = session.output(NEXT_TOKEN).is_some();
        let logits = if session.output("logits").is_some() {
            "logits".to_string()
        } else {
            let rest: Vec<&str> =
                session.outputs().iter().map(|s| s.name.as_str()).filter(|n| cache_slot(n, "present.").is_none() && *n != NEXT_TOKEN).collect();
            match rest.as_slice() {
                [only] => only.to_string(),
                _ => return Err(session.interface_error(format!("has no `logits` output; its other outputs are {}", ticked(&rest)))),
            }
        };
        let binding = if session.io_binding() { Some(session.new_binding()?) } else { None };
        let resident = match (capacity, &binding) {
            (Some(_), Some(_)) => Some(Mutex::new(Resident { allocator: session.device_allocator()?, batches: BTreeMap::new() })),
            _ => None,
        };
        Ok(Decoder {
            session,
            has_mask,
            has_positions,
            layers,
            logits,
            has_next_token,
            cache_type,
            capacity,
            resident,
            n_kv_head: n_kv_head as usize,
            head_dim: head_dim as usize,
            binding,
        })
    }

    /// Whether the model returns `next_token` (the fixed-capacity exports do), so a greedy
    /// step copies one id per row to the host instead of a row of logits.
    pub fn has_next_token(&self) -> bool {
        self.has_next_token
    }

    /// Layer `i` of `cache` as host copies (see [`KvCache::layer`]), wherever its buffers are.
    pub fn cache_layer(&self, cache: &KvCache, i: usize) -> Result<(ArrayD<f32>, ArrayD<f32>), RuntimeError> {
        let (Some(generation), Some(resident)) = (cache.resident, &self.resident) else { return cache.layer(i) };
        let resident = resident.lock().unwrap_or_else(|p| p.into_inner());
        let batch = resident_batch(&resident, cache.batch, generation)?;
        let (k, v) = batch.layers.get(i).ok_or_else(|| RuntimeError::BadInput(format!("the cache has {} layers, not {}", batch.layers.len(), i + 1)))?;
        let filled = |x: ArrayD<f32>| x.slice_axis(ndarray::Axis(2), ndarray::Slice::from(0..cache.past_len)).to_owned();
        let host = |name: String, t: &DynTensor| {
            let copy = t.to(AllocationDevice::CPU, 0).map_err(|e| RuntimeError::BadInput(format!("copying the {name} to the host: {}", e.message())))?;
            host_f32(&name, &copy.into_dyn())
        };
        Ok((filled(host(format!("key of layer {i}"), k)?), filled(host(format!("value of layer {i}"), v)?)))
    }

    /// Whether the resident buffers are in host memory (a CPU session).
    pub fn is_resident_on_host(&self) -> bool {
        self.resident.is_some() && self.session.device_memory().allocation_device() == AllocationDevice::CPU
    }

    /// Whether steps run through I/O binding, leaving the cache on the session's device.
    pub fn io_binding(&self) -> bool {
        self.binding.is_some()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }

    pub fn n_kv_head(&self) -> usize {
        self.n_kv_head
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The positions a fixed-capacity cache holds; `None` for a growing cache.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// A cache holding nothing yet, for `batch` sequences. Its tensors are empty host tensors
    /// even on a GPU: bound as inputs, ONNX Runtime copies their zero bytes to the device, so
    /// no zero-size device allocation of ours is ever needed. A fixed-capacity cache is its
    /// buffers, zeros, of `max_length` positions.
    pub fn empty_cache(&self, batch: usize) -> Result<KvCache, RuntimeError> {
        if batch == 0 {
            return Err(RuntimeError::BadInput("a cache needs a batch of at least one sequence".into()));
        }
        if let Some(resident) = &self.resident {
            let mut resident = resident.lock().unwrap_or_else(|p| p.into_inner());
            let resident = &mut *resident;
            let generation = match resident.batches.get_mut(&batch) {
                // The buffers of this batch size are reused, so that the CUDA graphs captured on
                // them stay valid; what they hold past the filled positions is never attended.
                Some(b) => {
                    b.generation += 1;
                    b.generation
                }
                None => {
                    let b = self.allocate_batch(&resident.allocator, batch)?;
                    resident.batches.insert(batch, b);
                    0
                }
            };
            return Ok(KvCache { batch, past_len: 0, layers: Vec::new(), resident: Some(generation) });
        }
        let shape = vec![batch, self.n_kv_head, self.capacity.unwrap_or(0), self.head_dim];
        let layers =
            (0..self.layers.len()).map(|_| Ok((zeros(self.cache_type, &shape)?, zeros(self.cache_type, &shape)?))).collect::<Result<_, RuntimeError>>()?;
        Ok(KvCache { batch, past_len: 0, layers, resident: None })
    }

    /// The buffers of a resident cache of `batch` sequences: the cache zeroed once (so no
    /// position a mask hides holds a NaN), the mask, `past_length` and `next_token`.
    fn allocate_batch(&self, allocator: &Allocator, batch: usize) -> Result<ResidentBatch, RuntimeError> {
        let capacity = self.capacity.expect("a resident cache has a fixed capacity");
        let alloc = |what: &str, ty: TensorElementType, shape: &[usize]| {
            DynTensor::new(allocator, ty, shape.iter().map(|&d| d as i64).collect::<Vec<i64>>())
                .map_err(|e| self.run_error(format!("allocating {what} on the device: {}", e.message())))
        };
        let shape = [batch, self.n_kv_head, capacity, self.head_dim];
        let empty = zeros(self.cache_type, &shape)?;
        let empty = empty.view().downcast::<DynTensorValueType>().map_err(|e| self.run_error(e.message().to_string()))?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, names) in self.layers.iter().enumerate() {
            let mut pair = Vec::with_capacity(2);
            for name in &names[..2] {
                let mut buffer = alloc(&format!("`{name}`"), self.cache_type, &shape)?;
                empty.copy_into(&mut buffer).map_err(|e| self.run_error(format!("zeroing the cache of layer {i}: {}", e.message())))?;
                pair.push(buffer);
            }
            let v = pair.pop().expect("two buffers");
            layers.push((pair.pop().expect("two buffers"), v));
        }
        let int = |name: &str| int_type(self.session.input(name).or_else(|| self.session.output(name)).expect("resolved from the session"));
        let mask = alloc("`attention_mask`", int("attention_mask"), &[batch, capacity])?;
        let past_length = alloc("`past_length`", int("past_length"), &[1])?;
        let next_token = if self.has_next_token {
            let ty = int(NEXT_TOKEN);
            let host = DynTensor::new(&Allocator::default(), ty, vec![batch as i64, 1])
                .map_err(|e| self.run_error(format!("allocating `{NEXT_TOKEN}` on the host: {}", e.message())))?;
            Some((alloc(&format!("`{NEXT_TOKEN}`"), ty, &[batch, 1])?, host))
        } else {
            None
        };
        Ok(ResidentBatch { layers, mask, past_length, next_token, slots: BTreeMap::new(), generation: 0 })
    }

    fn run_error(&self, message: String) -> RuntimeError {
        RuntimeError::Run { model: self.session.model.clone(), message }
    }

    /// Feeds `new_len` more tokens per sequence (`input_ids` is `[batch, new_len]`, row-major)
    /// after what `cache` holds; returns logits `[batch, new_len, vocab]` and grows the cache.
    /// Every position is attended (no padding); positions continue from `cache.past_len()`.
    pub fn step(&mut self, cache: &mut KvCache, input_ids: &[i64], new_len: usize) -> Result<ArrayD<f32>, RuntimeError> {
        let mut logits = None;
        self.step_with(cache, input_ids, new_len, &mut |view| logits = Some(view.to_owned()))?;
        Ok(logits.expect("step_with calls back once on success"))
    }

    /// [`Self::step`], handing `f` a view of the logits in ONNX Runtime's memory instead of a
    /// copy: a greedy loop reads one row per sequence of a `[batch, new_len, vocab]` tensor.
    pub fn step_with(&mut self, cache: &mut KvCache, input_ids: &[i64], new_len: usize, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), RuntimeError> {
        self.check_step(cache, input_ids, new_len)?;
        if cache.resident.is_some() {
            return self.step_resident(cache, input_ids, new_len, Want::Logits(f));
        }
        self.step_values(cache, input_ids, new_len, f)
    }

    /// A greedy step: [`Self::step`], keeping only each row's argmax of its last logits, ties
    /// to the lowest id, in `next` (cleared first). A resident cache's model returns it
    /// (`next_token`) and only those ids cross to the host; otherwise it is read from the logits
    /// in place.
    pub fn step_greedy(&mut self, cache: &mut KvCache, input_ids: &[i64], new_len: usize, next: &mut Vec<i64>) -> Result<(), RuntimeError> {
        self.check_step(cache, input_ids, new_len)?;
        if cache.resident.is_some() && self.has_next_token {
            return self.step_resident(cache, input_ids, new_len, Want::Tokens(next));
        }
        self.step_with(cache, input_ids, new_len, &mut |logits| super::last_argmax(logits, next))
    }

    fn check_step(&self, cache: &KvCache, input_ids: &[i64], new_len: usize) -> Result<(), RuntimeError> {
        let batch = cache.batch;
        if new_len == 0 || batch == 0 || input_ids.len() != batch * new_len {
            return Err(RuntimeError::BadInput(format!(
                "a step of {new_len} tokens for a batch of {batch} needs {} ids, got {}",
                batch * new_len,
                input_ids.len()
            )));
        }
        if cache.resident.is_none() && cache.layers.len() != self.layers.len() {
            return Err(RuntimeError::BadInput(format!("the cache has {} layers; the model has {}", cache.layers.len(), self.layers.len())));
        }
        if let Some(capacity) = self.capacity {
            if cache.past_len + new_len > capacity {
                return Err(RuntimeError::BadInput(format!(
                    "{} positions in the cache and {new_len} new do not fit its capacity of {capacity} (the `decoder_fixed` export's `max_length`)",
                    cache.past_len
                )));
            }
            if new_len > 1 && cache.past_len > 0 {
                return Err(RuntimeError::BadInput(format!(
                    "a step of {new_len} tokens after {} in the cache: a fixed-capacity cache takes several tokens only into an empty cache (the fp16 export's attention operator reads a multi-token step as a first prompt), then one a step",
                    cache.past_len
                )));
            }
        }
        Ok(())
    }

    /// A step of a resident cache: the step's ids, mask and `past_length` copied into their
    /// buffers, the run bound to the buffers of this step length (replaying its CUDA graph on a
    /// session with graphs), then `next_token` or the logits copied to the host.
    fn step_resident(&mut self, cache: &mut KvCache, input_ids: &[i64], new_len: usize, want: Want<'_>) -> Result<(), RuntimeError> {
        let (batch, total) = (cache.batch, cache.past_len + new_len);
        let capacity = self.capacity.expect("a resident cache has a fixed capacity");
        let model = self.session.model.clone();
        let err = |message: String| RuntimeError::Run { model: model.clone(), message };
        let spec = |name: &str| self.session.input(name).expect("resolved from the session's inputs");
        let ids = int_value(&model, spec("input_ids"), vec![batch, new_len], input_ids)?;
        let mask: Vec<i64> = (0..batch).flat_map(|_| (0..capacity).map(|j| i64::from(j < total))).collect();
        let mask = int_value(&model, spec("attention_mask"), vec![batch, capacity], &mask)?;
        let past_length = int_value(&model, spec("past_length"), vec![1], &[cache.past_len as i64])?;

        let resident = self.resident.as_mut().expect("a resident cache comes from a resident decoder").get_mut().unwrap_or_else(|p| p.into_inner());
        let b = resident.batches.get_mut(&batch).ok_or_else(|| RuntimeError::BadInput(format!("this decoder has no cache of batch {batch}")))?;
        if Some(b.generation) != cache.resident {
            return Err(stale_cache(batch));
        }
        if !b.slots.contains_key(&new_len) {
            let slot = new_slot(&self.session, &resident.allocator, b, &self.layers, &self.logits, batch, new_len)?;
            b.slots.insert(new_len, slot);
        }
        let slot = b.slots.get_mut(&new_len).expect("inserted above");
        for (name, host, buffer) in
            [("input_ids", &ids, &mut slot.ids), ("attention_mask", &mask, &mut b.mask), ("past_length", &past_length, &mut b.past_length)]
        {
            let host = host.view().downcast::<DynTensorValueType>().map_err(|e| err(format!("input `{name}`: {}", e.message())))?;
            host.copy_into(buffer).map_err(|e| err(format!("copying input `{name}` to the device: {}", e.message())))?;
        }
        self.session.run_graph(&slot.binding, slot.graph.as_ref())?;
        cache.past_len = total;
        match want {
            Want::Tokens(next) => {
                let (device, host) = b.next_token.as_mut().expect("asked for tokens only when the model returns them");
                device.copy_into(&mut *host).map_err(|e| err(format!("copying `{NEXT_TOKEN}` to the host: {}", e.message())))?;
                let (_, ids) = host.try_extract_tensor::<i64>().map_err(|e| err(format!("reading `{NEXT_TOKEN}`: {}", e.message())))?;
                next.clear();
                next.extend_from_slice(ids);
            }
            Want::Logits(f) => {
                let host = slot.logits.to(AllocationDevice::CPU, 0).map_err(|e| err(format!("copying `{}` to the host: {}", self.logits, e.message())))?;
                let host = host.into_dyn();
                f(f32_view(&model, &self.logits, &host)?);
            }
        }
        Ok(())
    }

    /// A step of a cache whose tensors the caller holds: plain runs, or bound with ONNX
    /// Runtime allocating each step's present tensors.
    fn step_values(&mut self, cache: &mut KvCache, input_ids: &[i64], new_len: usize, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), RuntimeError> {
        let batch = cache.batch;
        let total = cache.past_len + new_len;
        let model = self.session.model.clone();
        // The mask's length: the cache's capacity, or everything so far.
        let width = self.capacity.unwrap_or(total);

        // The new tokens' inputs, one code path for both ways of running.
        let spec = |name: &str| self.session.input(name).expect("resolved from the session's inputs");
        let mut fed: Vec<(&'static str, DynValue)> = Vec::with_capacity(4);
        fed.push(("input_ids", int_value(&model, spec("input_ids"), vec![batch, new_len], input_ids)?));
        if self.has_mask {
            let mask: Vec<i64> = (0..batch).flat_map(|_| (0..width).map(|j| i64::from(j < total))).collect();
            fed.push(("attention_mask", int_value(&model, spec("attention_mask"), vec![batch, width], &mask)?));
        }
        if self.capacity.is_some() {
            fed.push(("past_length", int_value(&model, spec("past_length"), vec![1], &[cache.past_len as i64])?));
        }
        if self.has_positions {
            let positions: Vec<i64> = (0..batch).flat_map(|_| (cache.past_len..total).map(|p| p as i64)).collect();
            fed.push(("position_ids", int_value(&model, spec("position_ids"), vec![batch, new_len], &positions)?));
        }

        let (logits, grown) = match self.binding.as_mut() {
            None => {
                let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(fed.len() + 2 * self.layers.len());
                values.extend(fed.iter().map(|(n, v)| (Cow::Borrowed(*n), v.into())));
                for (names, (k, v)) in self.layers.iter().zip(&cache.layers) {
                    values.push((Cow::Borrowed(names[0].as_str()), k.into()));
                    values.push((Cow::Borrowed(names[1].as_str()), v.into()));
                }
                let mut outputs = self.session.run_values(values)?;
                let mut take = |name: &str| {
                    outputs
                        .remove(name)
                        .ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })
                };
                let logits = take(&self.logits)?;
                let grown = self.layers.iter().map(|names| Ok((take(&names[2])?, take(&names[3])?))).collect::<Result<Vec<_>, RuntimeError>>()?;
                (logits, grown)
            }
            Some(binding) => {
                let bind_err = |what: &str, name: &str, e: ort::Error| RuntimeError::Run {
                    model: model.clone(),
                    message: format!("binding {what} `{name}`: {}", e.message()),
                };
                for (name, value) in &fed {
                    binding.bind_input(*name, value).map_err(|e| bind_err("input", name, e))?;
                }
                for (names, (k, v)) in self.layers.iter().zip(&cache.layers) {
                    // The previous step's present tensors, on the device where it left them: ONNX
                    // Runtime binds a tensor already on the right device as it is, without a copy.
                    binding.bind_input(names[0].as_str(), k).map_err(|e| bind_err("input", &names[0], e))?;
                    binding.bind_input(names[1].as_str(), v).map_err(|e| bind_err("input", &names[1], e))?;
                }
                // Outputs bound to a device, not to buffers: the cache grows each step, so ONNX
                // Runtime allocates each present tensor at its new size.
                binding.bind_output_to_device(self.logits.as_str(), self.session.host_memory()).map_err(|e| bind_err("output", &self.logits, e))?;
                for names in &self.layers {
                    binding.bind_output_to_device(names[2].as_str(), self.session.device_memory()).map_err(|e| bind_err("output", &names[2], e))?;
                    binding.bind_output_to_device(names[3].as_str(), self.session.device_memory()).map_err(|e| bind_err("output", &names[3], e))?;
                }
                let run = self.session.run_bound(binding).and_then(|mut outputs| {
                    let mut take = |name: &str| {
                        outputs
                            .remove(name)
                            .ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })
                    };
                    let logits = take(&self.logits)?;
                    let grown = self.layers.iter().map(|names| Ok((take(&names[2])?, take(&names[3])?))).collect::<Result<Vec<_>, RuntimeError>>()?;
                    Ok((logits, grown))
                });
                // The binding would otherwise hold this step's past until the next step rebinds,
                // and keep its present tensors as buffers to write the next step's into.
                binding.clear();
                run?
            }
        };

        let expected = [batch as i64, self.n_kv_head as i64, width as i64, self.head_dim as i64];
        for (names, (k, v)) in self.layers.iter().zip(&grown) {
            for (name, x) in [(&names[2], k), (&names[3], v)] {
                let shape = value_shape(x);
                if shape != expected {
                    return Err(RuntimeError::Interface {
                        model: model.clone(),
                        message: format!("output `{name}` has shape {shape:?}; after {total} tokens the cache should be {expected:?}"),
                    });
                }
            }
        }
        cache.layers = grown;
        cache.past_len = total;
        f(f32_view(&model, &self.logits, &logits)?);
        Ok(())
    }
}

/// What a resident step hands back.
enum Want<'a> {
    Tokens(&'a mut Vec<i64>),
    Logits(&'a mut dyn FnMut(ArrayViewD<'_, f32>)),
}

/// The buffers of steps of `new_len` tokens on the resident cache `b`, bound once: the ids and
/// the logits of their own, the cache, mask, `past_length` and `next_token` of the batch. The
/// step copies its ids in before every run.
fn new_slot(
    session: &Session,
    allocator: &Allocator,
    b: &mut ResidentBatch,
    layers: &[[String; 4]],
    logits: &str,
    batch: usize,
    new_len: usize,
) -> Result<Slot, RuntimeError> {
    let err = |message: String| RuntimeError::Run { model: session.model.clone(), message };
    let vocab = session
        .output(logits)
        .and_then(|spec| spec.fixed(2))
        .ok_or_else(|| session.interface_error(format!("output `{logits}` must have a fixed vocabulary size (axis 2) for its buffer to be allocated once")))?;
    let ids_type = int_type(session.input("input_ids").expect("resolved from the session's inputs"));
    let ids = DynTensor::new(allocator, ids_type, vec![batch as i64, new_len as i64])
        .map_err(|e| err(format!("allocating `input_ids` on the device: {}", e.message())))?;
    let mut out = DynTensor::new(allocator, TensorElementType::Float32, vec![batch as i64, new_len as i64, vocab as i64])
        .map_err(|e| err(format!("allocating `{logits}` on the device: {}", e.message())))?;
    let mut binding = session.new_binding()?;
    let bind_err = |what: &str, name: &str, e: ort::Error| err(format!("binding {what} `{name}`: {}", e.message()));
    binding.bind_input("input_ids", &ids).map_err(|e| bind_err("input", "input_ids", e))?;
    binding.bind_input("attention_mask", &b.mask).map_err(|e| bind_err("input", "attention_mask", e))?;
    binding.bind_input("past_length", &b.past_length).map_err(|e| bind_err("input", "past_length", e))?;
    binding.bind_output(logits, &mut out).map_err(|e| bind_err("output", logits, e))?;
    if let Some((device, _)) = b.next_token.as_mut() {
        binding.bind_output(NEXT_TOKEN, device).map_err(|e| bind_err("output", NEXT_TOKEN, e))?;
    }
    // Past and present of a layer are one buffer: the step writes its positions in place.
    for (names, (k, v)) in layers.iter().zip(b.layers.iter_mut()) {
        binding.bind_input(names[0].as_str(), &*k).map_err(|e| bind_err("input", &names[0], e))?;
        binding.bind_input(names[1].as_str(), &*v).map_err(|e| bind_err("input", &names[1], e))?;
        binding.bind_output(names[2].as_str(), k).map_err(|e| bind_err("output", &names[2], e))?;
        binding.bind_output(names[3].as_str(), v).map_err(|e| bind_err("output", &names[3], e))?;
    }
    Ok(Slot { ids, logits: out, binding, graph: session.new_graph()? })
}

/// A host tensor of zeros of the cache's element type.
fn zeros(ty: TensorElementType, shape: &[usize]) -> Result<DynValue, RuntimeError> {
    let n = shape.iter().product::<usize>();
    let made = match ty {
        TensorElementType::Float16 => Tensor::<half::f16>::from_array((shape.to_vec(), vec![half::f16::ZERO; n])).map(|t| t.into_dyn()),
        _ => Tensor::<f32>::from_array((shape.to_vec(), vec![0.0f32; n])).map(|t| t.into_dyn()),
    };
    made.map_err(|e| RuntimeError::BadInput(format!("creating an empty cache: {}", e.message())))
}

/// The element type of an integer input or output (ids, mask, `past_length`, `next_token`).
fn int_type(spec: &super::session::IoSpec) -> TensorElementType {
    if spec.dtype == "i32" { TensorElementType::Int32 } else { TensorElementType::Int64 }
}

/// The output holding each row's argmax of its last logits.
const NEXT_TOKEN: &str = "next_token";

fn resident_batch(resident: &Resident, batch: usize, generation: u64) -> Result<&ResidentBatch, RuntimeError> {
    let b = resident.batches.get(&batch).ok_or_else(|| RuntimeError::BadInput(format!("this decoder has no cache of batch {batch}")))?;
    if b.generation != generation {
        return Err(stale_cache(batch));
    }
    Ok(b)
}

fn stale_cache(batch: usize) -> RuntimeError {
    RuntimeError::BadInput(format!(
        "this cache of batch {batch} was reset by a later `empty_cache({batch})`: the decoder keeps one fixed-capacity cache per batch size on the device"
    ))
}

/// `past_key_values.3.key` → `(3, true)`; `.value` → `false`.
fn cache_slot(name: &str, prefix: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix(prefix)?;
    let (layer, kind) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    match kind {
        "key" => Some((layer, true)),
        "value" => Some((layer, false)),
        _ => None,
    }
}
