//! What quantization sees of a graph: its matrix products, which of their inputs are weights
//! and which are activations, and why a product stays in float.
//!
//! A tensor is *constant* when it is an initializer or every input of the node that makes it
//! is constant (so `Transpose(token_embd.weight)` is constant and `Shape(x)` is not). An input
//! of a MatMul/Gemm that is not constant is an *activation*: calibration observes every
//! one of them.
//!
//! A MatMul/Gemm is quantizable when its second input (B) is a *weight*: a 2-D float
//! initializer, reached directly or through `Transpose` (perm `[1, 0]`), `Cast` to float
//! (an fp16 export's weights) or `Identity`; and its first input (A) is an activation. The
//! weight is described as the `[K, N]` matrix the op multiplies by (`Gemm`'s `transB`
//! folded in), so its columns are the op's output channels.

use std::collections::{HashMap, HashSet};

use crate::onnx::edit::Model;
use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto};
use crate::onnx::{FLOAT, FLOAT16};

/// One MatMul or Gemm node of the graph.
#[derive(Debug, Clone)]
pub struct Site {
    /// Its index in the graph's node list.
    pub index: usize,
    /// The node's name; `<op>_<index>` for a node without one.
    pub name: String,
    pub op: String,
    /// The tensor it produces (its first output).
    pub output: String,
    /// Inputs computed at run time: `(input index, tensor)`.
    pub activations: Vec<(usize, String)>,
    /// The weight, or why the op cannot be quantized as activation × weight.
    pub weight: Result<Weight, String>,
}

/// A weight as the op consumes it: `[k, n]`, `n` output channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    /// The initializer whose values these are.
    pub initializer: String,
    /// Whether the `[k, n]` matrix is the initializer transposed.
    pub transposed: bool,
    pub k: usize,
    pub n: usize,
    /// Nodes between the initializer and the op (`Transpose`, `Cast`), which a rewrite
    /// that feeds the op directly leaves without a consumer.
    pub via: Vec<String>,
}

impl Site {
    /// The op's first input (A) when it is an activation.
    pub(crate) fn activation_a(&self) -> Option<&str> {
        self.activations.iter().find(|(i, _)| *i == 0).map(|(_, t)| t.as_str())
    }
}

pub(crate) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

pub(crate) fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

/// Every tensor whose value does not depend on the graph's inputs.
pub(crate) fn constant_tensors(graph: &GraphProto) -> HashSet<String> {
    let mut constant: HashSet<String> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    // Nodes are topologically sorted in a valid model, so one pass settles every tensor.
    for node in &graph.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let random = op.starts_with("Random") || op == "Multinomial";
        if !random && node.input.iter().all(|i| i.is_empty() || constant.contains(i)) {
            constant.extend(node.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    constant
}

/// Tensor → the index of the node that produces it.
pub(crate) fn producers(graph: &GraphProto) -> HashMap<&str, usize> {
    let mut out = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for o in &node.output {
            out.insert(o.as_str(), i);
        }
    }
    out
}

pub(crate) fn node_name(node: &NodeProto, index: usize) -> String {
    match node.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{}_{index}", node.op_type.as_deref().unwrap_or("node")),
    }
}

/// Every MatMul and Gemm of `model`'s graph, in graph order.
pub fn sites(model: &Model) -> Vec<Site> {
    let graph = model.graph();
    let constant = constant_tensors(graph);
    let producer = producers(graph);
    let mut out = Vec::new();
    for (index, node) in graph.node.iter().enumerate() {
        let op = node.op_type.as_deref().unwrap_or("");
        if !matches!(op, "MatMul" | "Gemm") || node.domain.as_deref().is_some_and(|d| !d.is_empty()) {
            continue;
        }
        let input = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
        let activations: Vec<(usize, String)> =
            (0..2).filter(|&i| !input(i).is_empty() && !constant.contains(input(i))).map(|i| (i, input(i).to_string())).collect();
        let (a_const, b_const) = (constant.contains(input(0)), constant.contains(input(1)));
        let weight = if !a_const && !b_const {
            Err("activation × activation: both inputs are computed at run time (as in attention)".to_string())
        } else if a_const {
            Err("input A is constant: only input B is quantized as a weight".to_string())
        } else if op == "Gemm" && attr_int(node, "transA").unwrap_or(0) != 0 {
            Err("Gemm with `transA = 1`".to_string())
        } else {
            let trans_b = op == "Gemm" && attr_int(node, "transB").unwrap_or(0) != 0;
            resolve_weight(model, &producer, input(1), trans_b)
        };
        out.push(Site {
            index,
            name: node_name(node, index),
            op: op.to_string(),
            output: node.output.first().cloned().unwrap_or_default(),
            activations,
            weight,
        });
    }
    out
}

/// The first MatMul/Gemm that computes in float16 — its weight a float16 initializer reached
/// without a `Cast` to float — by name; `None` for a model that multiplies in float32.
pub(crate) fn float16_matmul(model: &Model) -> Option<String> {
    let graph = model.graph();
    let is_cast = |name: &String| graph.node.iter().enumerate().any(|(i, n)| n.op_type.as_deref() == Some("Cast") && node_name(n, i) == *name);
    sites(model).into_iter().find_map(|site| {
        let w = site.weight.as_ref().ok()?;
        let t = model.initializer(&w.initializer)?;
        (t.data_type == Some(FLOAT16) && !w.via.iter().any(is_cast)).then_some(site.name)
    })
}

/// Follows `tensor` back through Transpose/Cast/Identity to a 2-D float initializer.
fn resolve_weight(model: &Model, producer: &HashMap<&str, usize>, tensor: &str, transposed: bool) -> Result<Weight, String> {
    let graph = model.graph();
    let mut via = Vec::new();
    let mut transposed = transposed;
    let mut current = tensor.to_string();
    loop {
        if let Some(t) = model.initializer(&current) {
            if t.dims.len() != 2 {
                return Err(format!("weight `{current}` has {} dims; only 2-D weights are quantized", t.dims.len()));
            }
            if !matches!(t.data_type, Some(FLOAT) | Some(FLOAT16)) {
                return Err(format!("weight `{current}` has data type {}, not float", t.data_type.unwrap_or(0)));
            }
            let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
            let (k, n) = if transposed { (c, r) } else { (r, c) };
            return Ok(Weight { initializer: current, transposed, k, n, via });
        }
        let Some(&i) = producer.get(current.as_str()) else {
            return Err(format!("weight `{current}` is neither an initializer nor computed by a node"));
        };
        let node = &graph.node[i];
        let op = node.op_type.as_deref().unwrap_or("");
        match op {
            "Transpose" => {
                let perm = attr(node, "perm").map(|a| a.ints.clone());
                if !matches!(perm.as_deref(), None | Some([1, 0])) {
                    return Err(format!("weight is transposed with perm {:?} by `{}`", perm.unwrap_or_default(), node_name(node, i)));
                }
                transposed = !transposed;
            }
            "Cast" if attr_int(node, "to") == Some(i64::from(FLOAT)) => {}
            "Identity" => {}
            _ => return Err(format!("weight is computed by `{op}` (node `{}`), not stored as an initializer", node_name(node, i))),
        }
        via.push(node_name(node, i));
        current = node.input.first().cloned().unwrap_or_default();
    }
}

/// The weight's `[k, n]` values, row-major.
pub(crate) fn weight_values(model: &Model, w: &Weight) -> Result<Vec<f32>, String> {
    let t = model.initializer(&w.initializer).ok_or_else(|| format!("no initializer `{}`", w.initializer))?;
    let v = model.f32_values(t).map_err(|e| e.to_string())?;
    Ok(if w.transposed { crate::model::transpose(&v, w.n, w.k) } else { v })
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("logits", "logits"));
        assert!(!glob_match("logit", "logits"));
        assert!(glob_match("blk.0.*", "blk.0.ffn_down.weight"));
        assert!(!glob_match("blk.0.*", "blk.10.ffn_down.weight"));
        assert!(glob_match("*ffn_down*", "blk.3.ffn_down.weight"));
        assert!(glob_match("blk.?.attn_q*", "blk.7.attn_q.weight"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acbd"));
        assert!(glob_match("a*b*", "acbd"));
    }
}
