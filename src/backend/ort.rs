//! The `onnxruntime` runtime: a backend over one ONNX Runtime session, a prefill model or a
//! decoder with its key/value cache. What it prepares and caches ([`runtime::PreparedInputs`],
//! [`KvCache`]) travels through the [`Backend`] trait inside the opaque [`Prepared`] and
//! [`DecodeCache`]; only this module looks at the values inside.

use std::path::Path;
use std::time::Duration;

use ndarray::{ArrayD, ArrayViewD};

use super::{Backend, BackendError, BackendSpec, Cache, Capability, DecodeCache, Inputs, Prepared, TokenIds, probe, workload};
use crate::runtime::{self, Decoder, KvCache, Session};

// One per backend, made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Model {
    Prefill(Session),
    Decoder(Decoder),
}

/// ONNX Runtime with the backend's provider and options.
pub(crate) struct OrtBackend {
    spec: BackendSpec,
    capability: Capability,
    model: Model,
}

fn not_a_prefill() -> BackendError {
    BackendError::Failed("the model has key/value cache inputs: a timed prefill runs the `prefill` export".into())
}

fn not_a_decoder() -> BackendError {
    BackendError::Failed("the model has no key/value cache inputs: decode steps need the `decoder` export".into())
}

impl Backend for OrtBackend {
    fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    fn capability(&self) -> &Capability {
        &self.capability
    }

    fn prefill(&mut self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<ArrayD<f32>, BackendError> {
        match &mut self.model {
            Model::Prefill(s) => Ok(s.run_prefill(ids, mask, batch, seq)?),
            Model::Decoder(d) => {
                if mask.iter().any(|&m| m != 1) {
                    return Err(BackendError::Failed("a padded prefill needs the `prefill` export".into()));
                }
                let mut cache = d.empty_cache(batch)?;
                Ok(d.step(&mut cache, ids, seq)?)
            }
        }
    }

    fn new_cache(&self, batch: usize) -> Result<DecodeCache, BackendError> {
        match &self.model {
            Model::Decoder(d) => Ok(DecodeCache(Cache::Ort(d.empty_cache(batch)?))),
            Model::Prefill(_) => Err(not_a_decoder()),
        }
    }

    fn decode_step_with(&mut self, cache: &mut DecodeCache, ids: &[i64], new_len: usize, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), BackendError> {
        match &mut self.model {
            Model::Decoder(d) => Ok(d.step_with(cache.ort(), ids, new_len, f)?),
            Model::Prefill(_) => Err(not_a_decoder()),
        }
    }

    /// Through [`Decoder::step_greedy`]: on a resident cache only the ids cross to the host.
    fn decode_step_greedy(&mut self, cache: &mut DecodeCache, ids: &[i64], new_len: usize, next: &mut Vec<i64>) -> Result<(), BackendError> {
        match &mut self.model {
            Model::Decoder(d) => Ok(d.step_greedy(cache.ort(), ids, new_len, next)?),
            Model::Prefill(_) => Err(not_a_decoder()),
        }
    }

    fn prefill_inputs(&self, ids: &[i64], mask: &[i64], batch: usize, seq: usize) -> Result<Prepared, BackendError> {
        match &self.model {
            // On an accelerator the inputs are bound (uploaded) here, before any clock.
            Model::Prefill(s) if s.io_binding() => Ok(Prepared(Inputs::Ort(s.prefill_inputs_on_device(ids, mask, batch, seq)?))),
            Model::Prefill(s) => Ok(Prepared(Inputs::Ort(s.prefill_inputs(ids, mask, batch, seq)?))),
            Model::Decoder(_) => Err(not_a_prefill()),
        }
    }

    fn timed_prefill(&mut self, inputs: &Prepared) -> Result<Duration, BackendError> {
        match (&mut self.model, &inputs.0) {
            // Up to the logits on the device, synchronised: nothing is copied back inside the
            // clock, as torch times a forward pass.
            (Model::Prefill(s), Inputs::Ort(inputs)) if s.io_binding() => {
                let start = std::time::Instant::now();
                s.run_prepared_on_device(inputs)?;
                Ok(start.elapsed())
            }
            _ => workload::prefill(self, inputs),
        }
    }

    fn run_prefill_inputs(&mut self, inputs: &Prepared, f: &mut dyn FnMut(ArrayViewD<'_, f32>)) -> Result<(), BackendError> {
        match (&mut self.model, &inputs.0) {
            (Model::Prefill(s), Inputs::Ort(inputs)) => Ok(s.run_prepared(inputs, f)?),
            (Model::Prefill(s), Inputs::Ids(TokenIds { ids, mask, batch, seq })) => Ok(s.run_prepared(&s.prefill_inputs(ids, mask, *batch, *seq)?, f)?),
            (Model::Decoder(_), _) => Err(not_a_prefill()),
        }
    }
}

/// Opens `spec` over the model file `model` (a prefill model: ids → logits) with the ONNX
/// Runtime library at `library`, and probes it: the session's first run is one tiny prefill
/// under the profiler, which fills [`Capability::providers_assigned`]. A requested accelerator
/// that ran nothing is not an error here; [`Capability::degradation`] says so.
pub(super) fn open(spec: &BackendSpec, model: &Path, library: &Path) -> Result<Box<dyn Backend>, BackendError> {
    let rt = runtime::init(Some(library))?;
    let info = rt.info();
    let dir = probe::scratch_dir("probe")?;
    let probed = rt.profiled_session(model, &spec.session_options(), &dir.join("profile")).map_err(BackendError::from).and_then(|mut session| {
        if session.input("past_key_values.0.key").is_some() {
            let mut decoder = Decoder::new(session)?;
            probe::decoder_providers_assigned(&mut decoder).map(|assigned| (Model::Decoder(decoder), assigned))
        } else {
            probe::providers_assigned(&mut session).map(|assigned| (Model::Prefill(session), assigned))
        }
    });
    probe::remove_scratch_dir(&dir);
    let (model, providers_assigned) = probed?;
    let capability = Capability {
        runtime: "onnxruntime".into(),
        runtime_version: info.version.clone(),
        library_digest: info.digest.to_hex(),
        providers_offered: info.providers.clone(),
        providers_assigned,
        ..Capability::machine(spec)
    };
    Ok(Box::new(OrtBackend { spec: spec.clone(), capability, model }))
}

impl DecodeCache {
    /// The ONNX Runtime cache inside: the only kind there is, so far.
    fn ort(&mut self) -> &mut KvCache {
        let Cache::Ort(cache) = &mut self.0;
        cache
    }
}
