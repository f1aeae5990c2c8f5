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
//! has the same shapes. The empty cache is zeros; a step that would not fit is refused.
//! Present tensors stay ONNX Runtime values and are fed back as the next step's past without
//! a copy through Rust.
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
//! logits out cross the bus.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ndarray::{ArrayD, ArrayViewD};
use ort::session::{IoBinding, SessionInputValue};
use ort::value::{DynValue, Tensor};

use super::session::{Session, f32_view, host_f32, int_value, is_on_host, ticked, value_shape};
use super::RuntimeError;

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
    /// `max_length` of a fixed-capacity cache (see the module doc); `None` for a growing one.
    capacity: Option<usize>,
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
    /// (key, value) per layer, `[batch, n_kv_head, past_len, head_dim]` each.
    layers: Vec<(DynValue, DynValue)>,
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
        let (k, v) = self.layers.get(i).ok_or_else(|| RuntimeError::BadInput(format!("the cache has {} layers, not {}", self.layers.len(), i + 1)))?;
        let filled = |x: ArrayD<f32>| x.slice_axis(ndarray::Axis(2), ndarray::Slice::from(0..self.past_len)).to_owned();
        Ok((filled(host_f32(&format!("key of layer {i}"), k)?), filled(host_f32(&format!("value of layer {i}"), v)?)))
    }

    /// Whether every tensor of the cache is in host memory: always on a CPU session, and on a
    /// GPU only when the steps were plain runs (no I/O binding) or none has run yet.
    pub fn is_on_host(&self) -> bool {
        self.layers.iter().all(|(k, v)| is_on_host(k) && is_on_host(v))
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
            return Err(session.interface_error("has no `past_key_values.N.key` inputs: it is not a decoder model (prefill models run through `Session::run_prefill`)".into()));
        }
        let mut layers = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            let l = names.get(&i).cloned().unwrap_or_default();
            let need = |x: Option<String>, what: String| x.ok_or_else(|| session.interface_error(format!("has no `{what}` (it has cache tensors for {} layers)", names.len())));
            layers.push([
                need(l.past_key, format!("past_key_values.{i}.key"))?,
                need(l.past_value, format!("past_key_values.{i}.value"))?,
                need(l.present_key, format!("present.{i}.key"))?,
                need(l.present_value, format!("present.{i}.value"))?,
            ]);
        }

        let first = session.input(&layers[0][0]).expect("resolved from the session's inputs");
        if first.dtype != "f32" || first.dims.len() != 4 {
            return Err(session.interface_error(format!("`{first}`: the cache must be f32 [batch, n_kv_head, past_len, head_dim]")));
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
        let logits = if session.output("logits").is_some() {
            "logits".to_string()
        } else {
            let rest: Vec<&str> = session.outputs().iter().map(|s| s.name.as_str()).filter(|n| cache_slot(n, "present.").is_none()).collect();
            match rest.as_slice() {
                [only] => only.to_string(),
                _ => return Err(session.interface_error(format!("has no `logits` output; its other outputs are {}", ticked(&rest)))),
            }
        };
        let binding = if session.io_binding() { Some(session.new_binding()?) } else { None };
        Ok(Decoder { session, has_mask, has_positions, layers, logits, capacity, n_kv_head: n_kv_head as usize, head_dim: head_dim as usize, binding })
    }

    /// Whether steps run through I/O binding, leaving the cache on the session's device.
    pub fn io_binding(&self) -> bool {
        self.binding.is_some()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
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
        let positions = self.capacity.unwrap_or(0);
        let shape = vec![batch, self.n_kv_head, positions, self.head_dim];
        let zeros = batch * self.n_kv_head * positions * self.head_dim;
        let empty = || {
            Tensor::<f32>::from_array((shape.clone(), vec![0.0; zeros]))
                .map(|t| t.into_dyn())
                .map_err(|e| RuntimeError::BadInput(format!("creating an empty cache: {}", e.message())))
        };
        let layers = (0..self.layers.len()).map(|_| Ok((empty()?, empty()?))).collect::<Result<_, RuntimeError>>()?;
        Ok(KvCache { batch, past_len: 0, layers })
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
        let batch = cache.batch;
        if new_len == 0 || batch == 0 || input_ids.len() != batch * new_len {
            return Err(RuntimeError::BadInput(format!(
                "a step of {new_len} tokens for a batch of {batch} needs {} ids, got {}",
                batch * new_len,
                input_ids.len()
            )));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(RuntimeError::BadInput(format!("the cache has {} layers; the model has {}", cache.layers.len(), self.layers.len())));
        }
        let total = cache.past_len + new_len;
        let model = self.session.model.clone();
        if let Some(capacity) = self.capacity
            && total > capacity
        {
            return Err(RuntimeError::BadInput(format!(
                "{} positions in the cache and {new_len} new do not fit its capacity of {capacity} (the `decoder_fixed` export's `max_length`)",
                cache.past_len
            )));
        }
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
                    outputs.remove(name).ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })
                };
                let logits = take(&self.logits)?;
                let grown = self.layers.iter().map(|names| Ok((take(&names[2])?, take(&names[3])?))).collect::<Result<Vec<_>, RuntimeError>>()?;
                (logits, grown)
            }
            Some(binding) => {
                let bind_err = |what: &str, name: &str, e: ort::Error| RuntimeError::Run { model: model.clone(), message: format!("binding {what} `{name}`: {}", e.message()) };
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
                        outputs.remove(name).ok_or_else(|| RuntimeError::Run { model: model.clone(), message: format!("output `{name}` is missing from the results") })
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
