//! Graph rewrites that make an fp32 model INT8, and the check that reads the result back.
//!
//! ## `static`: QDQ
//!
//! For each quantized MatMul/Gemm (activation A × weight W, see [`super::graph`]):
//!
//! ```text
//! A ─ QuantizeLinear(s_a, 0) ─ DequantizeLinear(s_a, 0) ─┐
//!                                                         MatMul ─ Y      (the original node, inputs replaced)
//! W_int8 ─────── DequantizeLinear(s_w, 0, axis = 1) ─────┘
//! ```
//!
//! - Activations are **int8, symmetric, per tensor**: zero point 0 and the scale
//!   `amax / 127` of the calibration, the same numbers a TensorRT engine gets from the cache.
//!   ONNX Runtime's CPU provider fuses `DequantizeLinear → MatMul` with int8 (S8S8) or uint8
//!   (U8S8) activations into `MatMulIntegerToFloat` (or `QLinearMatMul` where a
//!   `QuantizeLinear` follows); ONNX Runtime's quantization guide recommends S8S8 in QDQ form
//!   as the first choice on x86-64, and it was the faster of the two here (AVX-512 VNNI).
//! - Every quantized op gets a `QuantizeLinear → DequantizeLinear` pair of its own, and the
//!   pair its own scale and zero-point initializers, even where ops share an activation
//!   (Llama's q/k/v projections read one tensor). ONNX Runtime 1.31 fuses
//!   `DequantizeLinear → MatMul` into `MatMulIntegerToFloat` only when the pair is dedicated
//!   to that MatMul: with one `QuantizeLinear` shared by three consumers (whether they share
//!   one `DequantizeLinear` or each have their own) all three ran as float `MatMul` behind
//!   `DequantizeLinear` kernels, and identical pairs that share initializers are merged back
//!   into one by its common-subexpression elimination. Found by counting the kernels in its
//!   profile (see [`super::ort_kernels`]): on SmolLM2-135M a shared `QuantizeLinear` left 150
//!   of 211 quantized MatMuls in float. Quantizing one activation three times costs
//!   `O(sequence · d)`, nothing next to the products. For the same reason a weight shared by
//!   several ops gets copies of its scale and zero point per op.
//! - Weights are **int8, symmetric, zero point 0**, `[K, N]` as the op multiplies by them;
//!   with `per_channel` (the default) one scale per output column, `max |W[:, n]| / 127`,
//!   which is `axis = 1` of `DequantizeLinear`; otherwise one scale for the tensor. Values
//!   are rounded half to even (as `QuantizeLinear` rounds) into `[-127, 127]`. A weight the
//!   graph transposes (a tied embedding used as the output projection) is stored transposed
//!   once more, as `[K, N]`. A `Gemm` with `transB = 1` gets `transB = 0` and a `[K, N]` weight.
//!
//! ## `dynamic`
//!
//! ```text
//! A ─ DynamicQuantizeLinear ─ (A_u8, s_a, z_a) ─ MatMulInteger(A_u8, W_int8, z_a, 0) ─ Cast(float) ─ Mul ─ Y
//!                                                                           s_a · s_w ─┘
//! ```
//!
//! Standard ONNX ops only (so any runtime can run the file); ONNX Runtime's CPU provider fuses
//! the chain into its `DynamicQuantizeMatMul` kernel (com.microsoft), which is the op its own
//! `quantize_dynamic` ends up with. `DynamicQuantizeLinear` makes uint8 with a zero point
//! computed per run; weights are as for `static`. A `Gemm`'s `alpha` is folded into `s_w` and
//! its `C` added after, times `beta`.
//!
//! ### `per_token`
//!
//! One range per row of A (a token) instead of one per tensor, from standard ops around the
//! same fused kernel:
//!
//! ```text
//! r = max(ReduceMax(|A|, axis −1), 1e-8)                         ([…, 1], once per activation)
//! A' = A · (127 / r) + 128                                        (every row within [1, 255])
//! A' ─ DynamicQuantizeLinear ─ MatMulInteger ─ Cast ─ Mul(s_a' · s_w) ─ Add(−128 · Σ_k W) ─ Mul(r / 127) ─ Y
//! ```
//!
//! Each row spans the whole 8-bit range, so a token with an outlier channel no longer
//! coarsens every other token's grid. The shift by 128 puts `DynamicQuantizeLinear`'s range
//! at `[0, 255]`: rows in `[−127, 127]` as they are would make its zero point 127.5, a
//! rounding tie that one float evaluation order breaks up and another down, a whole step
//! apart. `−128 · Σ_k W[k, n]` (of the dequantized weight) takes the shift back out, as a
//! constant `Add` that ONNX Runtime fuses into the kernel as its bias.
//!
//! Why not a per-row scale straight into `MatMulIntegerToFloat`: that kernel reads A's scale
//! as one number, and ONNX Runtime 1.31's fusion of `MatMulInteger → Cast → Mul(Mul(s_a,
//! s_w))` into it does not check that the scale is one: a per-row `s_a` fused that way
//! silently takes the first token's scale for every row (found by comparing optimisation
//! levels against a naive forward). Unfused, `MatMulInteger` with int8 A ran 3.5× slower than
//! fp32 here. The form above keeps every scale the fused kernel sees a scalar.
//!
//! ## What stays float
//!
//! MatMuls whose inputs are both activations (attention), whose weight is not an initializer
//! (Llama's RoPE frequencies), whose names match an `exclude` pattern, and Gemms with
//! `transA = 1`, each with its reason. Nodes and initializers that only fed quantized weights
//! (the `Transpose` of a tied embedding) are removed; an initializer with another consumer
//! (the embedding table's `Gather`) stays.
//!
//! ## Verification
//!
//! [`verify`] reads the written file back and checks each op the rewrite claims: the node
//! that produces the op's output has int8 weights behind a `DequantizeLinear` and an
//! activation behind `QuantizeLinear → DequantizeLinear` (static), or is the `Mul` at the end
//! of `DynamicQuantizeLinear → MatMulInteger → Cast` over an int8 initializer (dynamic).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::QuantError;
use super::calibrate::Calibration;
use super::graph::{self, Site, Weight, attr};
use crate::onnx::edit::{INT8, Model, UINT8, element_count};
use crate::onnx::proto::{AttributeProto, ModelProto, NodeProto, TensorProto};
use crate::onnx::{FLOAT, attr_i};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Static,
    Dynamic,
}

impl Scheme {
    pub(crate) fn parse(s: &str) -> Option<Scheme> {
        match s {
            "static" => Some(Scheme::Static),
            "dynamic" => Some(Scheme::Dynamic),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scheme::Static => "static",
            Scheme::Dynamic => "dynamic",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub scheme: Scheme,
    pub per_channel: bool,
    /// Glob patterns over node names, output names and weight initializer names.
    pub exclude: Vec<String>,
    /// Dynamic only: one 8-bit range per token (row of A) instead of one per tensor (see
    /// `per_token` in the module doc).
    pub per_token: bool,
    /// When set, only these MatMul/Gemm nodes (by name) are quantized and every other one is
    /// left float without a recorded reason: the sensitivity pass's one-op models.
    pub only: Option<HashSet<String>>,
}

/// A MatMul/Gemm the rewrite quantized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizedOp {
    pub name: String,
    pub op: String,
    pub output: String,
    pub activation: String,
    pub weight: String,
    /// The int8 initializer written for the weight.
    pub weight_int8: String,
    pub k: usize,
    pub n: usize,
    /// Static: the activation's scale from the calibration.
    pub activation_scale: Option<f32>,
    /// Whether [`verify`] found the op quantized in the written file.
    pub verified: bool,
}

/// A MatMul/Gemm left in float, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatOp {
    pub name: String,
    pub op: String,
    pub output: String,
    pub reason: String,
}

/// What the rewrite did, before verification.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    pub matmul_total: usize,
    pub quantized: Vec<QuantizedOp>,
    pub left_float: Vec<FloatOp>,
}

/// Tensor names are unique in a graph; new ones get a numeric suffix if they would clash.
struct Names {
    taken: HashSet<String>,
}

impl Names {
    fn new(model: &ModelProto) -> Names {
        let mut taken = HashSet::new();
        if let Some(g) = &model.graph {
            for n in &g.node {
                taken.extend(n.input.iter().cloned());
                taken.extend(n.output.iter().cloned());
                taken.extend(n.name.iter().cloned());
            }
            taken.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
            taken.extend(g.input.iter().filter_map(|v| v.name.clone()));
            taken.extend(g.output.iter().filter_map(|v| v.name.clone()));
        }
        Names { taken }
    }

    fn fresh(&mut self, want: String) -> String {
        let mut name = want.clone();
        let mut i = 1;
        while self.taken.contains(&name) {
            name = format!("{want}_{i}");
            i += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

fn node(name: String, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name),
        op_type: Some(op.to_string()),
        attribute,
        domain: None,
    }
}

fn tensor(name: &str, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto { dims, data_type: Some(data_type), name: Some(name.to_string()), raw_data: Some(raw), ..Default::default() }
}

fn f32_tensor(name: &str, dims: Vec<i64>, v: &[f32]) -> TensorProto {
    tensor(name, dims, FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// The rows of activation `a` (`[…, K]`) brought to one range, in standard ops:
/// `r = max(max_k |a|, 1e-8)` per row (`[…, 1]`), `a · (127 / r) + 128` (every row within
/// `[1, 255]`, its largest magnitude at 1 or 255) and the factor `r / 127` that scales a
/// product of it back. Returns `(shifted, factor)`.
fn normalize_rows(names: &mut Names, inits: &mut Vec<TensorProto>, pre: &mut Vec<NodeProto>, a: &str, opset: i64) -> (String, String) {
    let c = |names: &mut Names, inits: &mut Vec<TensorProto>, what: &str, v: f32| {
        let n = names.fresh(format!("{a}_per_token_{what}"));
        inits.push(f32_tensor(&n, vec![], &[v]));
        n
    };
    let (eps, levels) = (c(names, inits, "epsilon", 1e-8), c(names, inits, "levels", 127.0));
    let mut step = |names: &mut Names, op: &str, what: &str, inputs: &[&str], attrs: Vec<AttributeProto>| {
        let out = names.fresh(format!("{a}_per_token_{what}"));
        pre.push(node(names.fresh(format!("{a}_per_token_{what}_{op}")), op, inputs, &[&out], attrs));
        out
    };
    let abs = step(names, "Abs", "abs", &[a], vec![]);
    let amax = if opset >= 18 {
        let axes = names.fresh(format!("{a}_per_token_axes"));
        inits.push(tensor(&axes, vec![1], crate::onnx::INT64, (-1i64).to_le_bytes().to_vec()));
        step(names, "ReduceMax", "amax", &[&abs, &axes], vec![attr_i("keepdims", 1)])
    } else {
        step(names, "ReduceMax", "amax", &[&abs], vec![crate::onnx::attr_ints("axes", &[-1]), attr_i("keepdims", 1)])
    };
    let range = step(names, "Max", "range", &[&amax, &eps], vec![]);
    let inverse = step(names, "Div", "inverse", &[&levels, &range], vec![]);
    let normalized = step(names, "Mul", "normalized", &[a, &inverse], vec![]);
    let shift = c(names, inits, "shift", SHIFT);
    let shifted = step(names, "Add", "shifted", &[&normalized, &shift], vec![]);
    let factor = step(names, "Div", "factor", &[&range, &levels], vec![]);
    (shifted, factor)
}

/// What per-token rows are shifted by: `[−127, 127]` becomes `[1, 255]`, so
/// `DynamicQuantizeLinear`'s range starts at 0 and its zero point is exactly 0. (Rows in
/// `[−127, 127]` as they are would put the zero point at 127.5, a rounding tie that one
/// float evaluation order breaks up and another down, a whole step apart.)
const SHIFT: f32 = 128.0;

/// Symmetric int8 of a `[k, n]` matrix: values and one scale per column (or one in all).
pub(crate) fn quantize_weight(values: &[f32], k: usize, n: usize, per_channel: bool) -> (Vec<i8>, Vec<f32>) {
    let mut amax = vec![0f32; if per_channel { n } else { 1 }];
    for (i, &v) in values.iter().enumerate() {
        let c = if per_channel { i % n } else { 0 };
        amax[c] = amax[c].max(v.abs());
    }
    // A column of zeros gets scale 1: any scale reproduces it exactly, and 0 would divide.
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 }).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = scales[if per_channel { i % n } else { 0 }];
            (v / s).round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    debug_assert_eq!(values.len(), k * n);
    (q, scales)
}

/// The int8 weight of one `(initializer, transposed)`, written once however many ops share it.
struct QuantWeight {
    int8: String,
    scale: String,
    zero_point: String,
    /// `Σ_k q[k, n] · s[n]` per column: the dequantized weight's column sums.
    column_sums: Vec<f32>,
    /// Ops that use it so far.
    uses: usize,
}

/// The weight's scale and zero point for one more op: the first op uses the originals, every
/// later one gets copies under new names, so that no two `DequantizeLinear` nodes are
/// identical (see the module doc).
fn own_copies(names: &mut Names, inits: &mut Vec<TensorProto>, site: &str, qw: &mut QuantWeight) -> (String, String) {
    qw.uses += 1;
    if qw.uses == 1 {
        return (qw.scale.clone(), qw.zero_point.clone());
    }
    let copy = |inits: &mut Vec<TensorProto>, from: &str, to: String| {
        let mut t = inits.iter().find(|t| t.name.as_deref() == Some(from)).expect("the weight's tensors were made first").clone();
        t.name = Some(to.clone());
        inits.push(t);
        to
    };
    let scale = names.fresh(format!("{site}_weight_scale"));
    let zp = names.fresh(format!("{site}_weight_zero_point"));
    (copy(inits, &qw.scale, scale), copy(inits, &qw.zero_point, zp))
}

/// Rewrites `model` per `opts`. Static needs `calibration` and fails naming the first
/// activation it lacks.
pub fn quantize(model: &Model, opts: &Options, calibration: Option<&Calibration>) -> Result<(ModelProto, Rewrite), QuantError> {
    let opset = model.proto.opset_import.iter().find(|o| o.domain.as_deref().unwrap_or("").is_empty()).and_then(|o| o.version).unwrap_or(0);
    if opset < 13 {
        return Err(QuantError::Opset(opset));
    }
    let sites = graph::sites(model);
    let mut matched: HashSet<&str> = HashSet::new();
    let mut plan: Vec<(Site, Weight)> = Vec::new();
    let mut left_float = Vec::new();
    for site in &sites {
        let weight_name = site.weight.as_ref().ok().map(|w| w.initializer.as_str());
        let hit = opts
            .exclude
            .iter()
            .find(|p| [Some(site.name.as_str()), Some(site.output.as_str()), weight_name].into_iter().flatten().any(|n| graph::glob_match(p, n)));
        if let Some(p) = hit {
            matched.insert(p.as_str());
        }
        let float = |reason: String| FloatOp { name: site.name.clone(), op: site.op.clone(), output: site.output.clone(), reason };
        if opts.only.as_ref().is_some_and(|only| !only.contains(&site.name)) {
            left_float.push(float("not in the sensitivity pass's set".into()));
            continue;
        }
        match (&site.weight, hit) {
            (Err(reason), _) => left_float.push(float(reason.clone())),
            (Ok(_), Some(p)) => left_float.push(float(format!("excluded by `exclude` pattern `{p}`"))),
            (Ok(w), None) => plan.push((site.clone(), w.clone())),
        }
    }
    let unmatched: Vec<String> = opts.exclude.iter().filter(|p| !matched.contains(p.as_str())).cloned().collect();
    if !unmatched.is_empty() {
        let example = sites.iter().find_map(|s| s.weight.as_ref().ok().map(|w| w.initializer.clone())).unwrap_or_default();
        return Err(QuantError::UnmatchedExclude { patterns: unmatched, example });
    }
    let mut scales: HashMap<String, f32> = HashMap::new();
    if opts.scheme == Scheme::Static {
        let cal = calibration.ok_or(QuantError::NoCalibration)?;
        for (site, _) in &plan {
            let a = site.activation_a().expect("planned sites have an activation A");
            let t = cal.tensor(a).ok_or_else(|| QuantError::MissingTensor { tensor: a.to_string(), node: site.name.clone(), op: site.op.clone() })?;
            if !(t.scale.is_finite() && t.scale > 0.0) {
                return Err(QuantError::BadScale { tensor: a.to_string(), scale: t.scale });
            }
            scales.insert(a.to_string(), t.scale);
        }
    }

    let mut proto = model.proto.clone();
    let mut names = Names::new(&proto);
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut weights: HashMap<(String, bool), QuantWeight> = HashMap::new();
    // Nodes to insert before node i, and replacements of node i.
    let mut before: BTreeMap<usize, Vec<NodeProto>> = BTreeMap::new();
    let mut replace: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut quantized = Vec::new();
    let mut via: HashSet<String> = HashSet::new();
    let mut old_weights: HashSet<String> = HashSet::new();
    let graph = model.graph();
    // Per token: each activation's rows normalized once, `(shifted rows, row factor)`.
    let mut per_token: HashMap<String, (String, String)> = HashMap::new();

    for (site, w) in &plan {
        let a = site.activation_a().expect("planned sites have an activation A").to_string();
        let key = (w.initializer.clone(), w.transposed);
        if !weights.contains_key(&key) {
            let values = graph::weight_values(model, w).map_err(|m| QuantError::Weight { weight: w.initializer.clone(), message: m })?;
            let (q, s) = quantize_weight(&values, w.k, w.n, opts.per_channel);
            let base = if w.transposed { format!("{}_transposed", w.initializer) } else { w.initializer.clone() };
            let int8 = names.fresh(format!("{base}_int8"));
            let scale = names.fresh(format!("{base}_scale"));
            let zero_point = names.fresh(format!("{base}_zero_point"));
            let dims = if opts.per_channel { vec![w.n as i64] } else { vec![] };
            new_inits.push(tensor(&int8, vec![w.k as i64, w.n as i64], INT8, q.iter().map(|&v| v as u8).collect()));
            new_inits.push(f32_tensor(&scale, dims.clone(), &s));
            new_inits.push(tensor(&zero_point, dims, INT8, vec![0u8; s.len()]));
            let column_sums = (0..w.n)
                .map(|c| (0..w.k).map(|r| f64::from(q[r * w.n + c]) * f64::from(s[if opts.per_channel { c } else { 0 }])).sum::<f64>() as f32)
                .collect();
            weights.insert(key.clone(), QuantWeight { int8, scale, zero_point, column_sums, uses: 0 });
        }
        let qw = weights.get_mut(&key).expect("made above");
        via.extend(w.via.iter().cloned());
        old_weights.insert(w.initializer.clone());
        let original = &graph.node[site.index];
        let mut pre = Vec::new();
        let mut activation_scale = None;
        match opts.scheme {
            Scheme::Static => {
                let s_a = scales[&a];
                activation_scale = Some(s_a);
                // A pair of its own, with initializers of its own: see the module doc.
                let p = &site.name;
                let (sc, zp) = (names.fresh(format!("{p}_input_scale")), names.fresh(format!("{p}_input_zero_point")));
                new_inits.push(f32_tensor(&sc, vec![], &[s_a]));
                new_inits.push(tensor(&zp, vec![], INT8, vec![0]));
                let (a_q, a_dq) = (names.fresh(format!("{p}_input_int8")), names.fresh(format!("{p}_input_dequantized")));
                pre.push(node(names.fresh(format!("{p}_input_QuantizeLinear")), "QuantizeLinear", &[&a, &sc, &zp], &[&a_q], vec![]));
                pre.push(node(names.fresh(format!("{p}_input_DequantizeLinear")), "DequantizeLinear", &[&a_q, &sc, &zp], &[&a_dq], vec![]));
                let w_dq = names.fresh(format!("{p}_weight_dequantized"));
                let axis = if opts.per_channel { vec![attr_i("axis", 1)] } else { vec![] };
                let (w_scale, w_zp) = own_copies(&mut names, &mut new_inits, p, qw);
                pre.push(node(names.fresh(format!("{p}_weight_DequantizeLinear")), "DequantizeLinear", &[&qw.int8, &w_scale, &w_zp], &[&w_dq], axis));
                let mut op = original.clone();
                op.input[0] = a_dq;
                op.input[1] = w_dq;
                if site.op == "Gemm" {
                    op.attribute.retain(|x| x.name.as_deref() != Some("transB"));
                }
                replace.insert(site.index, vec![op]);
            }
            Scheme::Dynamic => {
                let p = &site.name;
                // Per token: the rows brought to one range first (shared by the ops reading
                // `a`), quantized per tensor, and the product scaled back row by row.
                let (input, rows) = if opts.per_token {
                    let (normalized, factor) = match per_token.get(&a) {
                        Some(made) => made.clone(),
                        None => {
                            let made = normalize_rows(&mut names, &mut new_inits, &mut pre, &a, opset);
                            per_token.insert(a.clone(), made.clone());
                            made
                        }
                    };
                    (normalized, Some(factor))
                } else {
                    (a.clone(), None)
                };
                let (aq, asc, azp) =
                    (names.fresh(format!("{p}_input_uint8")), names.fresh(format!("{p}_input_scale")), names.fresh(format!("{p}_input_zero_point")));
                pre.push(node(names.fresh(format!("{p}_DynamicQuantizeLinear")), "DynamicQuantizeLinear", &[&input], &[&aq, &asc, &azp], vec![]));
                let int32 = names.fresh(format!("{p}_int32"));
                let mut nodes =
                    vec![node(names.fresh(format!("{p}_MatMulInteger")), "MatMulInteger", &[&aq, &qw.int8, &azp, &qw.zero_point], &[&int32], vec![])];
                let as_float = names.fresh(format!("{p}_float"));
                nodes.push(node(names.fresh(format!("{p}_Cast")), "Cast", &[&int32], &[&as_float], vec![attr_i("to", i64::from(FLOAT))]));
                // Gemm's alpha scales the product: fold it into the weight's scale.
                let alpha = if site.op == "Gemm" { attr(original, "alpha").and_then(|x| x.f).unwrap_or(1.0) } else { 1.0 };
                let w_scale = if alpha == 1.0 {
                    qw.scale.clone()
                } else {
                    let t = new_inits.iter().find(|t| t.name.as_deref() == Some(qw.scale.as_str())).expect("the weight's scale was just made");
                    let s: Vec<f32> =
                        t.raw_data.as_deref().unwrap_or_default().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * alpha).collect();
                    let name = names.fresh(format!("{p}_weight_scale_alpha"));
                    new_inits.push(f32_tensor(&name, t.dims.clone(), &s));
                    name
                };
                let c = original.input.get(2).filter(|c| !c.is_empty() && site.op == "Gemm").cloned();
                let product = if c.is_some() { names.fresh(format!("{p}_product")) } else { site.output.clone() };
                let scale = names.fresh(format!("{p}_scale"));
                nodes.push(node(names.fresh(format!("{p}_scale_Mul")), "Mul", &[&asc, &w_scale], &[&scale], vec![]));
                let scaled = if rows.is_some() { names.fresh(format!("{p}_shifted_product")) } else { product.clone() };
                nodes.push(node(names.fresh(format!("{p}_output_Mul")), "Mul", &[&as_float, &scale], &[&scaled], vec![]));
                if let Some(factor) = rows {
                    // (a_n + 128) · W − 128 · Σ_k W[k, ·] = a_n · W; the correction is a
                    // constant `Add`, which ONNX Runtime fuses into the product as its bias.
                    let correction = names.fresh(format!("{p}_shift_correction"));
                    let values: Vec<f32> = qw.column_sums.iter().map(|c| -SHIFT * alpha * c).collect();
                    new_inits.push(f32_tensor(&correction, vec![values.len() as i64], &values));
                    let normalized = names.fresh(format!("{p}_normalized_product"));
                    nodes.push(node(names.fresh(format!("{p}_shift_Add")), "Add", &[&scaled, &correction], &[&normalized], vec![]));
                    nodes.push(node(names.fresh(format!("{p}_rows_Mul")), "Mul", &[&normalized, &factor], &[&product], vec![]));
                }
                if let Some(c) = c {
                    let beta = attr(original, "beta").and_then(|x| x.f).unwrap_or(1.0);
                    let bias = if beta == 1.0 {
                        c
                    } else {
                        let b = names.fresh(format!("{p}_beta"));
                        new_inits.push(f32_tensor(&b, vec![], &[beta]));
                        let scaled = names.fresh(format!("{p}_bias"));
                        nodes.push(node(names.fresh(format!("{p}_bias_Mul")), "Mul", &[&c, &b], &[&scaled], vec![]));
                        scaled
                    };
                    nodes.push(node(names.fresh(format!("{p}_bias_Add")), "Add", &[&product, &bias], &[&site.output], vec![]));
                }
                replace.insert(site.index, nodes);
            }
        }
        before.entry(site.index).or_default().extend(pre);
        quantized.push(QuantizedOp {
            name: site.name.clone(),
            op: site.op.clone(),
            output: site.output.clone(),
            activation: a,
            weight: w.initializer.clone(),
            weight_int8: qw.int8.clone(),
            k: w.k,
            n: w.n,
            activation_scale,
            verified: false,
        });
    }

    let g = proto.graph.as_mut().expect("load checks the graph");
    let old_nodes = std::mem::take(&mut g.node);
    for (i, n) in old_nodes.into_iter().enumerate() {
        if let Some(pre) = before.remove(&i) {
            g.node.extend(pre);
        }
        match replace.remove(&i) {
            Some(nodes) => g.node.extend(nodes),
            None => g.node.push(n),
        }
    }
    g.initializer.extend(new_inits);
    remove_dead(g, &via, &old_weights);
    let rewrite = Rewrite { matmul_total: sites.len(), quantized, left_float };
    Ok((proto, rewrite))
}

/// Drops the nodes in `via` and the initializers in `weights` that nothing reads any more.
fn remove_dead(g: &mut crate::onnx::proto::GraphProto, via: &HashSet<String>, weights: &HashSet<String>) {
    loop {
        let used: HashSet<&str> =
            g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).chain(g.output.iter().filter_map(|o| o.name.as_deref())).collect();
        let dead: Vec<usize> = g
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| n.name.as_deref().is_some_and(|name| via.contains(name)) && n.output.iter().all(|o| !used.contains(o.as_str())))
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            break;
        }
        for i in dead.into_iter().rev() {
            g.node.remove(i);
        }
    }
    let used: HashSet<String> = g.node.iter().flat_map(|n| n.input.iter().cloned()).chain(g.output.iter().filter_map(|o| o.name.clone())).collect();
    g.initializer.retain(|t| t.name.as_deref().is_none_or(|n| !weights.contains(n) || used.contains(n)));
}

/// What the written graph holds, counted from the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Written {
    /// Op type → nodes.
    pub ops: BTreeMap<String, usize>,
    pub int8_initializers: usize,
    pub int8_initializer_bytes: u64,
    /// MatMul/Gemm nodes still multiplying float by float weights or activations.
    pub float_matmuls: usize,
    /// Quantized ops found as claimed.
    pub verified: usize,
}

/// Reads the written model `back` and marks each op of `rewrite` that it really holds.
pub fn verify(back: &Model, scheme: Scheme, rewrite: &mut Rewrite) -> Written {
    let g = back.graph();
    let producer = graph::producers(g);
    let inits: HashMap<&str, &TensorProto> = g.initializer.iter().filter_map(|t| t.name.as_deref().map(|n| (n, t))).collect();
    let made_by = |tensor: &str, op: &str| producer.get(tensor).map(|&i| &g.node[i]).filter(|n| n.op_type.as_deref() == Some(op));
    let int8_init = |tensor: &str, k: usize, n: usize| {
        inits.get(tensor).is_some_and(|t| t.data_type == Some(INT8) && t.dims == [k as i64, n as i64] && element_count(t) == k * n)
    };
    let mut written = Written::default();
    for n in &g.node {
        *written.ops.entry(n.op_type.clone().unwrap_or_default()).or_default() += 1;
    }
    for t in &g.initializer {
        if matches!(t.data_type, Some(INT8) | Some(UINT8)) {
            written.int8_initializers += 1;
            written.int8_initializer_bytes += element_count(t) as u64;
        }
    }
    let mut integer_outputs: HashSet<&str> = HashSet::new();
    for op in &mut rewrite.quantized {
        op.verified = match scheme {
            Scheme::Static => made_by(&op.output, &op.op).is_some_and(|mm| {
                let a_ok = made_by(&mm.input[0], "DequantizeLinear").and_then(|dq| made_by(&dq.input[0], "QuantizeLinear")).is_some_and(|q| {
                    q.input[0] == op.activation && q.input.get(2).and_then(|z| inits.get(z.as_str())).is_some_and(|z| z.data_type == Some(INT8))
                });
                let w_ok = made_by(&mm.input[1], "DequantizeLinear").is_some_and(|dq| int8_init(&dq.input[0], op.k, op.n));
                a_ok && w_ok
            }),
            Scheme::Dynamic => {
                let end = made_by(&op.output, "Add").and_then(|add| made_by(&add.input[0], "Mul")).or_else(|| made_by(&op.output, "Mul"));
                // Per token the product is `Mul(Add(Mul(Cast, scale), correction), row factor)`.
                let end = end.map(|mul| made_by(&mul.input[0], "Add").and_then(|add| made_by(&add.input[0], "Mul")).unwrap_or(mul));
                end.and_then(|mul| made_by(&mul.input[0], "Cast")).and_then(|cast| made_by(&cast.input[0], "MatMulInteger")).is_some_and(|mi| {
                    // Per token, `DynamicQuantizeLinear` reads `Add(Mul(activation, 127 / row range), 128)`.
                    let reads_activation = |d: &NodeProto| {
                        d.input[0] == op.activation
                            || made_by(&d.input[0], "Add").and_then(|add| made_by(&add.input[0], "Mul")).is_some_and(|m| m.input[0] == op.activation)
                    };
                    int8_init(&mi.input[1], op.k, op.n) && made_by(&mi.input[0], "DynamicQuantizeLinear").is_some_and(reads_activation)
                })
            }
        };
        if op.verified {
            written.verified += 1;
            integer_outputs.insert(op.output.as_str());
        }
    }
    written.float_matmuls = g
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_deref(), Some("MatMul") | Some("Gemm")))
        .filter(|n| {
            // A MatMul of a verified static op multiplies dequantized int8: not float.
            !(scheme == Scheme::Static && n.output.first().is_some_and(|o| integer_outputs.contains(o.as_str())))
        })
        .count();
    written
}

#[cfg(test)]
mod tests {
    use super::quantize_weight;

    #[test]
    fn per_channel_weights_use_each_columns_range() {
        // [k = 2, n = 3]; no quotient is a rounding tie.
        let w = [0.9, -0.5, 0.0, -2.0, 0.2, 0.0];
        let (q, s) = quantize_weight(&w, 2, 3, true);
        assert_eq!(s, vec![2.0 / 127.0, 0.5 / 127.0, 1.0]);
        assert_eq!(q, vec![57, -127, 0, -127, 51, 0]);
        let (q, s) = quantize_weight(&w, 2, 3, false);
        assert_eq!(s, vec![2.0 / 127.0]);
        assert_eq!(q, vec![57, -32, 0, -127, 13, 0]);
    }
}
