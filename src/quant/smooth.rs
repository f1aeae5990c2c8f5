//! SmoothQuant's scale migration (Xiao et al., "SmoothQuant: Accurate and Efficient
//! Post-Training Quantization for Large Language Models", ICML 2023): move the activations'
//! outlier channels into the weights, where per-channel INT8 absorbs them, before quantizing.
//!
//! For an activation `X` (`[…, K]`) that only weight MatMuls read (`Y_i = X · W_i`), and a
//! positive factor `s_j` per channel `j`:
//!
//! ```text
//! Y_i = (X · diag(s)⁻¹) · (diag(s) · W_i)
//! ```
//!
//! with `s_j = max|X_j|^α / max_i max_n |W_i[j, n]|^(1 − α)` (1 where either is 0, clamped to
//! `[1e-5, 1e5]`): `α = 1` moves all of the range into the weights, `α = 0` none. The channel
//! maxima `max|X_j|` are the calibration's (`channel_absmax`). `X · diag(s)⁻¹` costs nothing at
//! run time: the factor is folded into what makes `X`:
//!
//! | `X` is made by                                             | folded into                       |
//! |------------------------------------------------------------|-----------------------------------|
//! | `Mul(x, γ)`, γ a 1-D initializer of `K` values (RMSNorm)   | `γ / s`                            |
//! | `LayerNormalization(x, γ, β)` (GPT-2)                      | `γ / s`, `β / s`                   |
//! | `Mul(a, U)`, `U` a weight MatMul's output (Llama's SwiGLU down-projection input, `silu(gate) · up`) | the columns of `U`'s weight, `/ s` |
//!
//! Each folded-into tensor and each scaled weight must be read by nothing else (a tied
//! embedding, read by the `Gather` too, stays as it is), and every reader of `X` must be one of
//! the scaled MatMuls. An activation that fits none of this is left unsmoothed, with the
//! reason (attention's output, made by a `Reshape`; GPT-2's down-projection input, made by
//! GELU, which no per-channel factor passes through).
//!
//! The migrated float model computes what the original does, up to float rounding:
//! [`max_logit_diff`] measures it in ONNX Runtime and the `quantize` stage refuses more than
//! [`LOGIT_TOLERANCE`] of the logits' scale (`max(1, max |logit|)`). The edits are keyed by initializer name, so the same migration applies
//! to a decoder export of the same weights ([`Migration::apply`]).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::QuantError;
use super::calibrate::Calibration;
use super::graph::{self, Site};
use crate::onnx::FLOAT;
use crate::onnx::edit::Model;
use crate::onnx::proto::TensorProto;
use crate::runtime::{Runtime, SessionOptions};
use std::path::Path;

/// The most a migrated fp32 model's logits may move before a quantization reads it: max |Δ|
/// over `max(1, max |logit|)`. Float32 rounding of the rescaled weights moves SmolLM2's logits
/// (up to ~30) by ~1e-4 at α = 0.8, a relative 1e-5; a wrong factor moves them by whole units.
pub(crate) const LOGIT_TOLERANCE: f32 = 1e-4;
const S_MIN: f32 = 1e-5;
const S_MAX: f32 = 1e5;

/// One smoothed activation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Smoothed {
    pub activation: String,
    /// What the factor was folded into, in words: ``norm `blk.0.attn_norm.weight` ``.
    pub folded_into: String,
    /// The MatMul/Gemm nodes reading the activation, whose weights took the factor.
    pub consumers: Vec<String>,
    pub channels: usize,
    /// `max_j max|X_j|` before and `max_j max|X_j| / s_j` after.
    pub absmax_before: f32,
    pub absmax_after: f32,
    pub s_min: f32,
    pub s_max: f32,
}

/// An activation read by a weight MatMul that stays as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unsmoothed {
    pub activation: String,
    pub consumers: Vec<String>,
    pub reason: String,
}

/// A migration: what it did and, by initializer name, the values it writes.
#[derive(Debug, Clone)]
pub struct Migration {
    pub alpha: f32,
    pub smoothed: Vec<Smoothed>,
    pub unsmoothed: Vec<Unsmoothed>,
    /// Initializer → its new float32 values (same dims).
    pub edits: BTreeMap<String, Vec<f32>>,
    /// Smoothed activation → its factors `s`.
    pub factors: HashMap<String, Vec<f32>>,
}

/// The factor `s_j` of one channel (module doc).
pub fn factor(act_max: f32, weight_max: f32, alpha: f32) -> f32 {
    if act_max <= 0.0 || weight_max <= 0.0 || !act_max.is_finite() || !weight_max.is_finite() {
        return 1.0;
    }
    (act_max.powf(alpha) / weight_max.powf(1.0 - alpha)).clamp(S_MIN, S_MAX)
}

/// Where an activation's factor can be folded.
enum Fold {
    /// 1-D initializers divided by `s` (γ, and β for LayerNorm).
    Vectors(Vec<String>),
    /// The producing MatMul's weight: its output columns divided by `s`.
    Columns(graph::Weight),
}

/// Plans the migration of `model` with the calibration's channel maxima (module doc).
pub fn plan(model: &Model, cal: &Calibration, alpha: f32) -> Result<Migration, QuantError> {
    if !(alpha > 0.0 && alpha <= 1.0) {
        return Err(QuantError::Other(format!("smoothing `alpha` is {alpha}; it must be in (0, 1]")));
    }
    let g = model.graph();
    let sites = graph::sites(model);
    let producer = graph::producers(g);
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for input in n.input.iter().filter(|s| !s.is_empty()) {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let outputs: Vec<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let read_once = |t: &str| readers.get(t).is_some_and(|r| r.len() == 1) && !outputs.contains(&t);
    // A weight is private to its site when the initializer and every node between it and the
    // site have that one reader.
    let private = |w: &graph::Weight| {
        let mut chain: Vec<&str> = vec![w.initializer.as_str()];
        for name in &w.via {
            if let Some(n) = g.node.iter().enumerate().find(|(i, n)| graph::node_name(n, *i) == *name).map(|(_, n)| n) {
                chain.extend(n.output.iter().map(String::as_str));
            }
        }
        chain.iter().all(|t| read_once(t))
    };

    // Group the quantizable sites by their activation A.
    let mut groups: Vec<(String, Vec<&Site>)> = Vec::new();
    for site in &sites {
        let (Some(a), Ok(_)) = (site.activation_a(), &site.weight) else { continue };
        match groups.iter_mut().find(|(t, _)| t == a) {
            Some((_, v)) => v.push(site),
            None => groups.push((a.to_string(), vec![site])),
        }
    }

    let mut m = Migration { alpha, smoothed: Vec::new(), unsmoothed: Vec::new(), edits: BTreeMap::new(), factors: HashMap::new() };
    for (a, group) in groups {
        let consumers: Vec<String> = group.iter().map(|s| s.name.clone()).collect();
        let leave = |m: &mut Migration, reason: String| m.unsmoothed.push(Unsmoothed { activation: a.clone(), consumers: consumers.clone(), reason });
        let weights: Vec<&graph::Weight> = group.iter().filter_map(|s| s.weight.as_ref().ok()).collect();
        let k = weights[0].k;
        let group_nodes: Vec<usize> = group.iter().map(|s| s.index).collect();
        if let Some(other) = readers.get(a.as_str()).into_iter().flatten().find(|i| !group_nodes.contains(i)) {
            let n = &g.node[*other];
            leave(&mut m, format!("also read by `{}` ({})", graph::node_name(n, *other), n.op_type.as_deref().unwrap_or("")));
            continue;
        }
        if outputs.contains(&a.as_str()) {
            leave(&mut m, "a graph output".into());
            continue;
        }
        if let Some(s) = group.iter().find(|s| !s.weight.as_ref().is_ok_and(private)) {
            let w = s.weight.as_ref().map(|w| w.initializer.clone()).unwrap_or_default();
            leave(&mut m, format!("weight `{w}` of `{}` is read by other nodes too (a tied embedding)", s.name));
            continue;
        }
        let Some(&p) = producer.get(a.as_str()) else {
            leave(&mut m, "not computed by a node".into());
            continue;
        };
        let node = &g.node[p];
        let is_vector = |t: &str| model.initializer(t).is_some_and(|i| i.dims == [k as i64] && i.data_type == Some(FLOAT)) && read_once(t);
        let fold = match node.op_type.as_deref().unwrap_or("") {
            "LayerNormalization" => {
                let vs: Vec<String> = node.input.iter().skip(1).filter(|t| !t.is_empty()).cloned().collect();
                if !vs.is_empty() && vs.iter().all(|t| is_vector(t)) { Some(Fold::Vectors(vs)) } else { None }
            }
            "Mul" => {
                let vector = node.input.iter().find(|t| is_vector(t)).cloned();
                let column = || {
                    node.input.iter().find_map(|t| {
                        let up = sites.iter().find(|s| s.output == *t)?;
                        let w = up.weight.as_ref().ok()?;
                        (w.n == k && read_once(t) && private(w)).then(|| w.clone())
                    })
                };
                match vector {
                    Some(v) => Some(Fold::Vectors(vec![v])),
                    None => column().map(Fold::Columns),
                }
            }
            _ => None,
        };
        let Some(fold) = fold else {
            leave(
                &mut m,
                format!("made by `{}` ({}): no scale or weight to fold a factor into", graph::node_name(node, p), node.op_type.as_deref().unwrap_or("")),
            );
            continue;
        };
        let t = cal.tensor(&a).ok_or_else(|| QuantError::MissingTensor { tensor: a.clone(), node: consumers[0].clone(), op: group[0].op.clone() })?;
        if t.channel_absmax.len() != k {
            return Err(QuantError::Other(format!(
                "the calibration has {} channel maxima for tensor `{a}`, which has {k} channels: recalibrate with this version (smoothing needs per-channel maxima)",
                t.channel_absmax.len()
            )));
        }
        // The weights' row maxima, over every consumer.
        let mut w_max = vec![0f32; k];
        let mut values = Vec::new();
        for w in &weights {
            let v = current(model, &m.edits, w)?;
            for (i, x) in v.iter().enumerate() {
                let r = i / w.n;
                w_max[r] = w_max[r].max(x.abs());
            }
            values.push(v);
        }
        let s: Vec<f32> = t.channel_absmax.iter().zip(&w_max).map(|(&x, &w)| factor(x, w, alpha)).collect();
        for (w, v) in weights.iter().zip(values) {
            let scaled: Vec<f32> = v.iter().enumerate().map(|(i, x)| x * s[i / w.n]).collect();
            m.edits.insert(w.initializer.clone(), stored_layout(scaled, w));
        }
        let folded_into = match &fold {
            Fold::Vectors(vs) => {
                for name in vs {
                    let init = model.initializer(name).expect("checked above");
                    let v = model.f32_values(init)?;
                    m.edits.insert(name.clone(), v.iter().zip(&s).map(|(x, f)| x / f).collect());
                }
                format!("{} {}", if vs.len() == 1 { "scale" } else { "scale and bias" }, crate::diag::ticked(vs.iter()))
            }
            Fold::Columns(w) => {
                let v = current(model, &m.edits, w)?;
                let scaled: Vec<f32> = v.iter().enumerate().map(|(i, x)| x / s[i % w.n]).collect();
                m.edits.insert(w.initializer.clone(), stored_layout(scaled, w));
                format!("the output columns of `{}`", w.initializer)
            }
        };
        let absmax_after = t.channel_absmax.iter().zip(&s).map(|(x, f)| x / f).fold(0f32, f32::max);
        m.smoothed.push(Smoothed {
            activation: a.clone(),
            folded_into,
            consumers,
            channels: k,
            absmax_before: t.channel_absmax.iter().copied().fold(0f32, f32::max),
            absmax_after,
            s_min: s.iter().copied().fold(f32::INFINITY, f32::min),
            s_max: s.iter().copied().fold(0f32, f32::max),
        });
        m.factors.insert(a, s);
    }
    Ok(m)
}

/// A weight's `[k, n]` values with the edits planned so far (SwiGLU's up-projection takes
/// the factor of the norm before it in its rows and the down-projection's in its columns).
fn current(model: &Model, edits: &BTreeMap<String, Vec<f32>>, w: &graph::Weight) -> Result<Vec<f32>, QuantError> {
    match edits.get(&w.initializer) {
        Some(v) if w.transposed => Ok(crate::model::transpose(v, w.n, w.k)),
        Some(v) => Ok(v.clone()),
        None => graph::weight_values(model, w).map_err(|message| QuantError::Weight { weight: w.initializer.clone(), message }),
    }
}

/// `[k, n]` values as the initializer stores them.
fn stored_layout(kn: Vec<f32>, w: &graph::Weight) -> Vec<f32> {
    if w.transposed { crate::model::transpose(&kn, w.k, w.n) } else { kn }
}

impl Migration {
    /// `model` with the migration's initializers replaced (inline float32). Every edited
    /// initializer must exist there with as many values.
    pub fn apply(&self, model: &Model) -> Result<Model, QuantError> {
        let mut out = model.clone();
        let g = out.proto.graph.as_mut().expect("load checks the graph");
        let mut done = 0;
        for t in &mut g.initializer {
            let Some(values) = t.name.as_deref().and_then(|n| self.edits.get(n)) else { continue };
            let name = t.name.clone().unwrap_or_default();
            if crate::onnx::edit::element_count(t) != values.len() || t.data_type != Some(FLOAT) {
                return Err(QuantError::Other(format!(
                    "`{}`: initializer `{name}` is not the float32 tensor of {} values the migration was planned on",
                    model.path.display(),
                    values.len()
                )));
            }
            *t = TensorProto {
                name: Some(name),
                dims: t.dims.clone(),
                data_type: Some(FLOAT),
                raw_data: Some(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
                ..Default::default()
            };
            done += 1;
        }
        if done != self.edits.len() {
            let missing: Vec<&String> = self.edits.keys().filter(|k| model.initializer(k).is_none()).collect();
            return Err(QuantError::Other(format!(
                "`{}` has no initializer {}: it is not the model the migration was planned on",
                model.path.display(),
                crate::diag::ticked(missing.iter())
            )));
        }
        Ok(out)
    }

    /// The calibration of the migrated model: each smoothed activation's range is its exact
    /// maximum after migration, `max_j max|X_j| / s_j` (its channel maxima divided by `s`); the
    /// other tensors keep theirs.
    pub fn calibration(&self, cal: &Calibration) -> Calibration {
        let mut out = cal.clone();
        for t in &mut out.tensors {
            let Some(s) = self.factors.get(&t.name) else { continue };
            t.channel_absmax = t.channel_absmax.iter().zip(s).map(|(x, f)| x / f).collect();
            let amax = t.channel_absmax.iter().copied().fold(0f32, f32::max).max(super::calibrate::MIN_AMAX);
            t.absmax = amax;
            t.amax = amax;
            t.scale = super::calibrate::scale_of(amax);
            t.scale_hex = super::calibrate::scale_hex(t.scale);
            t.method = "minmax after smoothing".into();
        }
        out
    }
}

/// Max |Δ| between the logits of two float models of one graph over the same tokens (a
/// fixed spread of ids across the vocabulary); returns it, the largest |logit| of `a`, and
/// the token count.
pub(crate) fn max_logit_diff(rt: &Runtime, a: &Path, b: &Path) -> Result<(f32, f32, usize), QuantError> {
    const TOKENS: usize = 64;
    let options = SessionOptions::default();
    let mut first = rt.session(a, &options)?;
    let vocab = *first.run_prefill(&[0], &[1], 1, 1)?.shape().last().unwrap_or(&1);
    let ids: Vec<i64> = (0..TOKENS).map(|i| ((i * 7919 + 11) % vocab.max(1)) as i64).collect();
    let mask = vec![1; TOKENS];
    let la = first.run_prefill(&ids, &mask, 1, TOKENS)?;
    drop(first);
    let lb = rt.session(b, &options)?.run_prefill(&ids, &mask, 1, TOKENS)?;
    let diff = la.iter().zip(lb.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = la.iter().map(|x| x.abs()).fold(0f32, f32::max);
    Ok((diff, scale, TOKENS))
}

#[cfg(test)]
mod tests {
    use super::factor;

    #[test]
    fn factors_follow_the_paper() {
        // s = a^α / w^(1-α)
        assert!((factor(16.0, 4.0, 0.5) - 2.0).abs() < 1e-6);
        assert!((factor(16.0, 4.0, 1.0) - 16.0).abs() < 1e-6);
        assert_eq!(factor(0.0, 4.0, 0.5), 1.0);
        assert_eq!(factor(3.0, 0.0, 0.5), 1.0);
        assert_eq!(factor(1e30, 1e-30, 0.9), 1e5);
    }
}
