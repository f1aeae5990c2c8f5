//! Watching a model's activations: the inputs of every MatMul/Gemm, made graph outputs of a
//! copy of the model, run over calibration samples.
//!
//! The copy ([`observing_copy`]) is the model with one extra graph output per observed
//! tensor (type float, shape left to the runtime), written beside hard links to the
//! original's external data so that its locations still resolve and no weight is rewritten.
//! ONNX Runtime keeps graph outputs intact through its fusions, so the copy computes what the
//! original does and hands the intermediate tensors back.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use super::QuantError;
use super::calibrate::{self, Consumer, Histogram, Method, Stats, TensorCalibration};
use super::graph;
use crate::onnx::FLOAT;
use crate::onnx::edit::{self, Model};
use crate::onnx::proto::{TypeProto, TypeProtoTensor, ValueInfoProto};
use crate::runtime::{Feed, Runtime, SessionOptions, TensorData};

/// A tensor calibration observes and the ops that read it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observed {
    pub name: String,
    pub consumers: Vec<Consumer>,
}

/// The activation inputs of every MatMul/Gemm, in the order the graph first uses them.
pub(crate) fn observed_tensors(model: &Model) -> Vec<Observed> {
    let mut out: Vec<Observed> = Vec::new();
    for site in graph::sites(model) {
        let weight = site.weight.as_ref().ok().map(|w| w.initializer.clone());
        for (input, name) in &site.activations {
            let consumer = Consumer { node: site.name.clone(), op: site.op.clone(), input: *input, weight: if *input == 0 { weight.clone() } else { None } };
            match out.iter_mut().find(|o| &o.name == name) {
                Some(o) => o.consumers.push(consumer),
                None => out.push(Observed { name: name.clone(), consumers: vec![consumer] }),
            }
        }
    }
    out
}

/// Writes `model` with `tensors` added as graph outputs to `dest` (see the module doc).
pub(crate) fn observing_copy(model: &Model, tensors: &[Observed], dest: &Path) -> Result<(), QuantError> {
    let mut proto = model.proto.clone();
    let g = proto.graph.as_mut().expect("load checks the graph");
    for t in tensors {
        if g.input.iter().any(|i| i.name.as_deref() == Some(t.name.as_str())) {
            return Err(QuantError::GraphInput { tensor: t.name.clone() });
        }
        if g.output.iter().any(|o| o.name.as_deref() == Some(t.name.as_str())) {
            continue;
        }
        g.output.push(ValueInfoProto {
            name: Some(t.name.clone()),
            r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: Some(FLOAT), shape: None }) }),
        });
    }
    edit::save_sharing_data(&proto, dest, model)?;
    Ok(())
}

/// What a pass hands each sample's observed tensors to: `(sample index, tensors)`.
type Visit<'a> = dyn FnMut(usize, Vec<&ndarray::ArrayD<f32>>) -> Result<(), QuantError> + 'a;

/// Runs the observing copy at `copy` over `samples` (token ids, batch 1 each) and turns the
/// statistics into one [`TensorCalibration`] per tensor. Histogram methods run every sample
/// twice (see [`super::calibrate`]).
pub(crate) fn calibrate(
    rt: &Runtime,
    copy: &Path,
    tensors: &[Observed],
    samples: &[Vec<i64>],
    method: Method,
    log: &mut dyn Write,
) -> Result<Vec<TensorCalibration>, QuantError> {
    let mut session = rt.session(copy, &SessionOptions::default())?;
    let has_positions = session.input("position_ids").is_some();
    let unknown: Vec<String> =
        session.inputs().iter().map(|s| s.name.clone()).filter(|n| !matches!(n.as_str(), "input_ids" | "attention_mask" | "position_ids")).collect();
    if !unknown.is_empty() {
        return Err(QuantError::Other(format!(
            "`{}` needs inputs {} besides `input_ids`, `attention_mask` and `position_ids`: calibrate a `prefill` export",
            copy.display(),
            crate::diag::ticked(unknown.iter())
        )));
    }
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    // One pass: hands each sample's outputs, in `names` order, to `visit`.
    let mut pass = |visit: &mut Visit<'_>| -> Result<(), QuantError> {
        for (s, ids) in samples.iter().enumerate() {
            let n = ids.len();
            let mask = vec![1i64; n];
            let positions: Vec<i64> = (0..n as i64).collect();
            let shape = [1, n];
            let mut feeds = vec![Feed { name: "input_ids", shape: &shape, data: TensorData::I64(ids) }];
            if session.input("attention_mask").is_some() {
                feeds.push(Feed { name: "attention_mask", shape: &shape, data: TensorData::I64(&mask) });
            }
            if has_positions {
                feeds.push(Feed { name: "position_ids", shape: &shape, data: TensorData::I64(&positions) });
            }
            let outputs = session.run(&feeds)?;
            let by_name: std::collections::HashMap<&str, &ndarray::ArrayD<f32>> = outputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let arrays = names
                .iter()
                .map(|n| by_name.get(n).copied().ok_or_else(|| QuantError::Other(format!("the observing model did not return tensor `{n}`"))))
                .collect::<Result<Vec<_>, _>>()?;
            visit(s, arrays)?;
        }
        Ok(())
    };

    let mut stats = vec![Stats::default(); tensors.len()];
    let feeds_weight: Vec<bool> = tensors.iter().map(|t| t.consumers.iter().any(|c| c.weight.is_some())).collect();
    pass(&mut |s, arrays| {
        stats.par_iter_mut().zip(arrays.par_iter()).zip(names.par_iter()).zip(feeds_weight.par_iter()).try_for_each(|(((st, a), name), &channels)| {
            st.add(a.iter()).map_err(|i| QuantError::NonFinite { tensor: name.to_string(), value: a.iter().nth(i).copied().unwrap_or(f32::NAN), sample: s })?;
            if channels {
                st.add_channels(a.iter(), a.shape().last().copied().unwrap_or(0));
            }
            Ok(())
        })
    })?;
    let _ = writeln!(log, "pass 1: min/max of {} tensors over {} samples", tensors.len(), samples.len());

    let mut hists: Vec<Histogram> = stats.iter().map(|s| Histogram::new(s.absmax())).collect();
    if method.needs_histogram() {
        pass(&mut |_, arrays| {
            hists.par_iter_mut().zip(arrays.par_iter()).for_each(|(h, a)| h.add(a.iter()));
            Ok(())
        })?;
        let _ = writeln!(log, "pass 2: {}-bin histograms of |x|", calibrate::BINS);
    }

    let results = tensors
        .par_iter()
        .zip(stats.par_iter())
        .zip(hists.par_iter())
        .map(|((t, st), h)| {
            let absmax = st.absmax();
            let (amax, entropy_bins, entropy_kl) = match method {
                Method::MinMax => (absmax, None, None),
                Method::Percentile(p) => (calibrate::percentile_amax(h, p), None, None),
                Method::Entropy => {
                    let (amax, bins, kl) = calibrate::entropy_amax(h);
                    (amax, Some(bins), Some(kl))
                }
            };
            let scale = calibrate::scale_of(amax);
            TensorCalibration {
                name: t.name.clone(),
                consumers: t.consumers.clone(),
                min: st.min,
                max: st.max,
                absmax,
                amax: amax.max(calibrate::MIN_AMAX),
                scale,
                scale_hex: calibrate::scale_hex(scale),
                method: method.name().into(),
                samples: st.samples,
                elements: st.elements,
                entropy_bins,
                entropy_kl: entropy_kl.filter(|k| k.is_finite()),
                channel_absmax: st.channels.clone(),
            }
        })
        .collect();
    Ok(results)
}
