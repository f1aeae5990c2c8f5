//! The decoder-only transformer graph, for GPT-2 and Llama, every ONNX variant.
//! See the parent module for the layout decisions.

use crate::model::{Arch, Checkpoint, ModelError, RopeLayout};
use crate::onnx::{self, Dim, FLOAT, FLOAT16, Graph, INT64, attr_f, attr_i, attr_ints, dyn_dim};

use super::{ExportOptions, Precision};

/// The graph and what the export manifest says about its interface.
pub(crate) struct Built<'a> {
    pub graph: Graph<'a>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub dynamic_axes: Vec<String>,
}

/// The KV cache of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cache {
    /// `prefill`: no cache.
    None,
    /// `decoder`: the past, then the new tokens, concatenated.
    Growing,
    /// `decoder_fixed`: a buffer of `max_length` positions, the new tokens written in place.
    Fixed { max_length: usize },
}

/// How a checkpoint tensor is laid out in the file.
#[derive(Clone, Copy)]
pub(super) enum Layout {
    AsIs,
    /// `[out, in]` → `[in, out]` for `MatMul`.
    Transposed,
    /// Q or K of an interleaved-RoPE checkpoint: rows permuted to the half layout within
    /// each of `heads` heads, then transposed.
    RopeTransposed {
        heads: usize,
    },
}

/// Little-endian bytes of `v`, as ONNX `raw_data` wants them.
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for chunk in v.chunks(4096) {
        for x in chunk {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

pub(super) fn f16_bytes(v: &[f32]) -> Vec<u8> {
    use rayon::prelude::*;
    v.par_chunks(1 << 16).map(|c| c.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()).collect::<Vec<_>>().concat()
}

pub(super) fn relayout(v: Vec<f32>, shape: &[usize], layout: Layout) -> Vec<f32> {
    match layout {
        Layout::AsIs => v,
        Layout::Transposed => crate::model::transpose(&v, shape[0], shape[1]),
        Layout::RopeTransposed { heads } => {
            let (rows, cols) = (shape[0], shape[1]);
            crate::model::transpose(&crate::model::interleaved_to_half_rows(&v, heads, cols), rows, cols)
        }
    }
}

pub(super) struct Builder<'g, 'a> {
    pub(super) g: &'g mut Graph<'a>,
    pub(super) ck: &'a Checkpoint,
    /// Weights, activations and arithmetic in float16, but for the float32 islands
    /// ([`Builder::cast_f32`]): the normalisations and the softmax.
    pub(super) fp16: bool,
    pub(super) opset: i64,
}

impl<'a> Builder<'_, 'a> {
    /// A checkpoint tensor as an initializer, in the compute type.
    pub(super) fn weight(&mut self, name: &str, layout: Layout) -> Result<String, ModelError> {
        let t = self.ck.tensor(name).ok_or_else(|| ModelError::Tensor { path: self.ck.path.clone(), tensor: name.to_string(), message: "missing".into() })?;
        let shape = t.shape.clone();
        let dims: Vec<i64> = match layout {
            Layout::AsIs => shape.iter().map(|&d| d as i64).collect(),
            _ => vec![shape[1] as i64, shape[0] as i64],
        };
        let ck = self.ck;
        let owned = name.to_string();
        let fp16 = self.fp16;
        let producer: onnx::Producer<'a> = Box::new(move || {
            let v = ck.load(&owned).map_err(|e| e.to_string())?;
            let v = relayout(v, &shape, layout);
            Ok(if fp16 { f16_bytes(&v) } else { f32_bytes(&v) })
        });
        Ok(self.g.init(name, &dims, self.compute_type(), producer))
    }

    /// A normalisation's weight or bias: stored as every weight is, used in float32.
    fn norm_weight(&mut self, name: &str) -> Result<String, ModelError> {
        let w = self.weight(name, Layout::AsIs)?;
        Ok(self.cast_f32(&w))
    }

    fn compute_type(&self) -> i32 {
        if self.fp16 { FLOAT16 } else { FLOAT }
    }

    /// `x` (in the compute type) cast to float32 for a numerically sensitive step; `x` itself
    /// in an fp32 graph.
    fn cast_f32(&mut self, x: &str) -> String {
        if self.fp16 { self.g.op("Cast", &[x], vec![attr_i("to", FLOAT as i64)]) } else { x.to_string() }
    }

    /// `x` (float32) cast back to the compute type.
    fn cast_compute(&mut self, x: &str) -> String {
        if self.fp16 { self.g.op("Cast", &[x], vec![attr_i("to", FLOAT16 as i64)]) } else { x.to_string() }
    }

    /// A scalar constant in the compute type.
    fn scalar(&mut self, v: f32) -> String {
        if self.fp16 { self.g.scalar_f16(v) } else { self.g.scalar_f32(v) }
    }

    /// Computes `x` (in the compute type) with `f` in float32, returning the result in the
    /// compute type.
    fn in_f32(&mut self, x: &str, f: impl FnOnce(&mut Self, &str) -> Result<String, ModelError>) -> Result<String, ModelError> {
        let x32 = self.cast_f32(x);
        let y = f(self, &x32)?;
        Ok(self.cast_compute(&y))
    }

    pub(super) fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.g.op(op, inputs, vec![])
    }

    pub(super) fn linear(&mut self, x: &str, w: &str, b: Option<&str>) -> String {
        let y = self.op("MatMul", &[x, w]);
        match b {
            Some(b) => self.op("Add", &[&y, b]),
            None => y,
        }
    }

    /// LayerNorm, in float32 whatever the compute type.
    pub(super) fn layer_norm(&mut self, x: &str, prefix: &str, eps: f32) -> Result<String, ModelError> {
        self.in_f32(x, |b, x| {
            let w = b.norm_weight(&format!("{prefix}.weight"))?;
            let bias = b.norm_weight(&format!("{prefix}.bias"))?;
            Ok(b.g.op("LayerNormalization", &[x, &w, &bias], vec![attr_i("axis", -1), attr_f("epsilon", eps)]))
        })
    }

    /// RMSNorm, in float32 whatever the compute type: `x·x` of a Llama's residual stream
    /// overflows float16 (SmolLM2's activations reach |x| ≈ 3,300; float16 ends at 65,504).
    pub(super) fn rms_norm(&mut self, x: &str, name: &str, eps: f32) -> Result<String, ModelError> {
        self.in_f32(x, |b, x| b.rms_norm_f32(x, name, eps))
    }

    fn rms_norm_f32(&mut self, x: &str, name: &str, eps: f32) -> Result<String, ModelError> {
        let w = self.norm_weight(name)?;
        let sq = self.op("Mul", &[x, x]);
        let mean = if self.opset >= 18 {
            let axes = self.g.const_i64(&[-1]);
            self.g.op("ReduceMean", &[&sq, &axes], vec![attr_i("keepdims", 1)])
        } else {
            self.g.op("ReduceMean", &[&sq], vec![attr_ints("axes", &[-1]), attr_i("keepdims", 1)])
        };
        let eps = self.g.scalar_f32(eps);
        let var = self.op("Add", &[&mean, &eps]);
        let rms = self.op("Sqrt", &[&var]);
        let normed = self.op("Div", &[x, &rms]);
        Ok(self.op("Mul", &[&normed, &w]))
    }

    /// Which keys each query may see: key `j` of row `b` where `mask[b, j]` is 1 and `j` is at
    /// most the query's position; `[B, 1, 1, S, T]` booleans, as [`Self::attention`] takes
    /// them. `one` and `zero` are the constants `[1]` and `[0]`.
    pub(super) fn allowed(&mut self, positions: &str, key_pos: &str, mask: &str, one: &str, zero: &str) -> String {
        let q_col = self.op("Unsqueeze", &[positions, one]);
        let k_row = self.op("Unsqueeze", &[key_pos, zero]);
        let causal = self.op("LessOrEqual", &[&k_row, &q_col]);
        let mask_bool = self.g.op("Cast", &[mask], vec![attr_i("to", onnx::BOOL as i64)]);
        let axes = self.g.const_i64(&[1, 2, 3]);
        let keys_ok = self.op("Unsqueeze", &[&mask_bool, &axes]);
        self.op("And", &[&causal, &keys_ok])
    }

    /// `[B, S, heads·hd]` → `[B, heads, S, hd]`.
    pub(super) fn split_heads(&mut self, x: &str, heads: usize, hd: usize) -> String {
        let shape = self.g.const_i64(&[0, 0, heads as i64, hd as i64]);
        let r = self.op("Reshape", &[x, &shape]);
        self.g.op("Transpose", &[&r], vec![attr_ints("perm", &[0, 2, 1, 3])])
    }

    /// Half-layout RoPE on `[B, H, S, hd]` with `cos`/`sin` of shape `[S, hd]`.
    fn rope(&mut self, x: &str, cos: &str, sin: &str, hd: usize) -> String {
        let axis = self.g.const_i64(&[-1]);
        let (z, mid, end) = (self.g.const_i64(&[0]), self.g.const_i64(&[(hd / 2) as i64]), self.g.const_i64(&[hd as i64]));
        let x1 = self.op("Slice", &[x, &z, &mid, &axis]);
        let x2 = self.op("Slice", &[x, &mid, &end, &axis]);
        let neg = self.op("Neg", &[&x2]);
        let rotated = self.g.op("Concat", &[&neg, &x1], vec![attr_i("axis", -1)]);
        let a = self.op("Mul", &[x, cos]);
        let b = self.op("Mul", &[&rotated, sin]);
        self.op("Add", &[&a, &b])
    }

    /// Grouped-query attention. `q` is `[B, H, S, hd]`, `k`/`v` are `[B, KV, T, hd]`,
    /// `allowed` is `[B, 1, 1, S, T]`, `lowest` a float32 scalar; returns `[B, S, H·hd]`.
    /// The mask and softmax run in float32: the scores' exponentials are where float16's
    /// range and precision run out first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(&mut self, q: &str, k: &str, v: &str, allowed: &str, lowest: &str, heads: usize, kv: usize, hd: usize) -> String {
        let group = heads / kv;
        let q5_shape = self.g.const_i64(&[0, kv as i64, group as i64, -1, hd as i64]);
        let q5 = self.op("Reshape", &[q, &q5_shape]);
        let ax2 = self.g.const_i64(&[2]);
        let k5 = self.op("Unsqueeze", &[k, &ax2]);
        let v5 = self.op("Unsqueeze", &[v, &ax2]);
        let kt = self.g.op("Transpose", &[&k5], vec![attr_ints("perm", &[0, 1, 2, 4, 3])]);
        let scale = self.scalar(1.0 / (hd as f32).sqrt());
        let qs = self.op("Mul", &[&q5, &scale]);
        let scores = self.op("MatMul", &[&qs, &kt]);
        let scores = self.cast_f32(&scores);
        let masked = self.op("Where", &[allowed, &scores, lowest]);
        let probs = self.g.op("Softmax", &[&masked], vec![attr_i("axis", -1)]);
        let probs = self.cast_compute(&probs);
        let ctx = self.op("MatMul", &[&probs, &v5]);
        let h4_shape = self.g.const_i64(&[0, heads as i64, -1, hd as i64]);
        let ctx4 = self.op("Reshape", &[&ctx, &h4_shape]);
        let bshd = self.g.op("Transpose", &[&ctx4], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let flat = self.g.const_i64(&[0, 0, (heads * hd) as i64]);
        self.op("Reshape", &[&bshd, &flat])
    }

    /// The cache of one layer, in the compute type, and written to the float32 output
    /// `present`: `past` (a float32 graph input) followed by `new` along the sequence axis or,
    /// given `slots` (each element of `new`'s sequence position, in `new`'s shape), `past` with
    /// `new` written at those positions and everything else as it was.
    pub(super) fn cache(&mut self, past: &str, new: &str, present: &str, slots: Option<&str>) -> String {
        let past = self.cast_compute(past);
        let (op, inputs) = match slots {
            None => ("Concat", vec![past.as_str(), new]),
            Some(slots) => ("ScatterElements", vec![past.as_str(), slots, new]),
        };
        if !self.fp16 {
            self.g.op_into(op, &inputs, &[present], vec![attr_i("axis", 2)]);
            return present.to_string();
        }
        let all = self.g.op(op, &inputs, vec![attr_i("axis", 2)]);
        self.g.op_into("Cast", &[&all], &[present], vec![attr_i("to", FLOAT as i64)]);
        all
    }
}

/// Builds the graph of one variant, whose cache is `cache`.
pub(crate) fn build<'a>(ck: &'a Checkpoint, opts: &ExportOptions, cache: Cache) -> Result<Built<'a>, ModelError> {
    if let Cache::Fixed { max_length } = cache {
        return super::fused::build(ck, opts, max_length);
    }
    let c = &ck.config;
    let (d, hd, heads, kv) = (c.d_model, c.head_dim(), c.n_head, c.n_kv_head);
    let mut graph = Graph::new(&format!("{:?}-{}", c.arch, opts.variant.name()).to_lowercase());
    let mut b = Builder { g: &mut graph, ck, fp16: opts.precision == Precision::Fp16, opset: opts.opset };

    let (batch, seq) = (dyn_dim("batch"), dyn_dim("sequence"));
    let (past_seq, total) = match cache {
        Cache::Growing => (dyn_dim("past_sequence"), dyn_dim("total_sequence")),
        _ => (seq.clone(), seq.clone()),
    };
    let ids = b.g.input("input_ids", INT64, &[batch.clone(), seq.clone()]);
    let mask = b.g.input("attention_mask", INT64, &[batch.clone(), total.clone()]);
    let mut inputs = vec![ids.clone(), mask.clone()];
    let mut pasts = Vec::new();
    if cache != Cache::None {
        for i in 0..c.n_layer {
            let dims = [batch.clone(), Dim::Fixed(kv as i64), past_seq.clone(), Dim::Fixed(hd as i64)];
            let k = b.g.input(&format!("past_key_values.{i}.key"), FLOAT, &dims);
            let v = b.g.input(&format!("past_key_values.{i}.value"), FLOAT, &dims);
            inputs.extend([k.clone(), v.clone()]);
            pasts.push((k, v));
        }
    }

    // Positions past .. past + S, and which keys each query may see.
    let one_d = b.g.const_i64(&[1]);
    let ids_shape = b.op("Shape", &[&ids]);
    let s_1d = b.g.op("Gather", &[&ids_shape, &one_d], vec![attr_i("axis", 0)]);
    let zero = b.g.const_i64(&[0]);
    let seq_len = b.op("Squeeze", &[&s_1d, &zero]);
    let past_len = if cache == Cache::Growing {
        let two = b.g.const_i64(&[2]);
        let shape = b.op("Shape", &[&pasts[0].0]);
        let p = b.g.op("Gather", &[&shape, &two], vec![attr_i("axis", 0)]);
        b.op("Squeeze", &[&p, &zero])
    } else {
        b.g.scalar_i64(0)
    };
    let total_len = b.op("Add", &[&past_len, &seq_len]);
    let step = b.g.scalar_i64(1);
    let scalar_zero = b.g.scalar_i64(0);
    let positions = b.op("Range", &[&past_len, &total_len, &step]);
    let key_pos = b.op("Range", &[&scalar_zero, &total_len, &step]);
    let allowed = b.allowed(&positions, &key_pos, &mask, &one_d, &zero);
    // Float32 at every precision: the mask is applied to scores already cast to float32.
    let lowest = b.g.scalar_f32(f32::MIN);

    let tok = b.weight("token_embd.weight", Layout::AsIs)?;
    let mut x = b.g.op("Gather", &[&tok, &ids], vec![attr_i("axis", 0)]);
    let mut rope = None;
    if c.arch == Arch::Gpt2 {
        let pos_table = b.weight("position_embd.weight", Layout::AsIs)?;
        let pe = b.g.op("Gather", &[&pos_table, &positions], vec![attr_i("axis", 0)]);
        x = b.op("Add", &[&x, &pe]);
    } else {
        // Angles in float32 whatever the compute type: float16 cannot tell position 2049
        // from 2050. An outer product by `Mul`, so that every `MatMul` is the model's own.
        let inv_freq: Vec<f32> = (0..hd / 2).map(|i| c.rope_theta.powf(-(2.0 * i as f32) / hd as f32)).collect();
        let inv = b.g.const_f32(inv_freq);
        let pos_f = b.g.op("Cast", &[&positions], vec![attr_i("to", FLOAT as i64)]);
        let pos_col = b.op("Unsqueeze", &[&pos_f, &one_d]);
        let inv_row = b.op("Unsqueeze", &[&inv, &zero]);
        let freqs = b.op("Mul", &[&pos_col, &inv_row]);
        let f2 = b.g.op("Concat", &[&freqs, &freqs], vec![attr_i("axis", -1)]);
        let (cos, sin) = (b.op("Cos", &[&f2]), b.op("Sin", &[&f2]));
        rope = Some((b.cast_compute(&cos), b.cast_compute(&sin)));
    }
    let qk_layout = match c.rope_layout {
        RopeLayout::Interleaved if c.arch == Arch::Llama => |h: usize| Layout::RopeTransposed { heads: h },
        _ => |_h: usize| Layout::Transposed,
    };

    // Declared first so the model lists its outputs as the manifest does: logits, then the cache.
    b.g.output("logits", FLOAT, &[batch.clone(), seq.clone(), Dim::Fixed(c.vocab_size as i64)]);
    let mut outputs = vec!["logits".to_string()];
    // `i` names the layer's tensors as well as picking its cache inputs.
    #[allow(clippy::needless_range_loop)]
    for i in 0..c.n_layer {
        let p = format!("blk.{i}");
        let (q, k, v);
        let h = if c.arch == Arch::Gpt2 {
            b.layer_norm(&x, &format!("{p}.attn_norm"), c.norm_eps)?
        } else {
            b.rms_norm(&x, &format!("{p}.attn_norm.weight"), c.norm_eps)?
        };
        if c.arch == Arch::Gpt2 {
            let w = b.weight(&format!("{p}.attn_qkv.weight"), Layout::Transposed)?;
            let bias = b.weight(&format!("{p}.attn_qkv.bias"), Layout::AsIs)?;
            let qkv = b.linear(&h, &w, Some(&bias));
            let split = b.g.const_i64(&[d as i64, d as i64, d as i64]);
            let parts = b.g.op_n("Split", &[&qkv, &split], 3, vec![attr_i("axis", -1)]);
            q = b.split_heads(&parts[0], heads, hd);
            k = b.split_heads(&parts[1], heads, hd);
            v = b.split_heads(&parts[2], heads, hd);
        } else {
            let (cos, sin) = rope.clone().expect("llama has rope");
            let wq = b.weight(&format!("{p}.attn_q.weight"), qk_layout(heads))?;
            let wk = b.weight(&format!("{p}.attn_k.weight"), qk_layout(kv))?;
            let wv = b.weight(&format!("{p}.attn_v.weight"), Layout::Transposed)?;
            let (qp, kp, vp) = (b.linear(&h, &wq, None), b.linear(&h, &wk, None), b.linear(&h, &wv, None));
            let (qh, kh) = (b.split_heads(&qp, heads, hd), b.split_heads(&kp, kv, hd));
            q = b.rope(&qh, &cos, &sin, hd);
            k = b.rope(&kh, &cos, &sin, hd);
            v = b.split_heads(&vp, kv, hd);
        }
        let (k_all, v_all) = if cache != Cache::None {
            let (pk, pv) = &pasts[i];
            let (ok, ov) = (format!("present.{i}.key"), format!("present.{i}.value"));
            let (k_all, v_all) = (b.cache(pk, &k, &ok, None), b.cache(pv, &v, &ov, None));
            let dims = [batch.clone(), Dim::Fixed(kv as i64), total.clone(), Dim::Fixed(hd as i64)];
            b.g.output(&ok, FLOAT, &dims);
            b.g.output(&ov, FLOAT, &dims);
            outputs.extend([ok, ov]);
            (k_all, v_all)
        } else {
            (k, v)
        };
        let attn = b.attention(&q, &k_all, &v_all, &allowed, &lowest, heads, kv, hd);
        let wo = b.weight(&format!("{p}.attn_output.weight"), Layout::Transposed)?;
        let bo = if c.arch == Arch::Gpt2 { Some(b.weight(&format!("{p}.attn_output.bias"), Layout::AsIs)?) } else { None };
        let proj = b.linear(&attn, &wo, bo.as_deref());
        x = b.op("Add", &[&x, &proj]);

        let h2 = if c.arch == Arch::Gpt2 {
            b.layer_norm(&x, &format!("{p}.ffn_norm"), c.norm_eps)?
        } else {
            b.rms_norm(&x, &format!("{p}.ffn_norm.weight"), c.norm_eps)?
        };
        let ffn = if c.arch == Arch::Gpt2 {
            let wu = b.weight(&format!("{p}.ffn_up.weight"), Layout::Transposed)?;
            let bu = b.weight(&format!("{p}.ffn_up.bias"), Layout::AsIs)?;
            let up = b.linear(&h2, &wu, Some(&bu));
            let act = gelu_tanh(&mut b, &up);
            let wd = b.weight(&format!("{p}.ffn_down.weight"), Layout::Transposed)?;
            let bd = b.weight(&format!("{p}.ffn_down.bias"), Layout::AsIs)?;
            b.linear(&act, &wd, Some(&bd))
        } else {
            let wg = b.weight(&format!("{p}.ffn_gate.weight"), Layout::Transposed)?;
            let wu = b.weight(&format!("{p}.ffn_up.weight"), Layout::Transposed)?;
            let wd = b.weight(&format!("{p}.ffn_down.weight"), Layout::Transposed)?;
            let gate = b.linear(&h2, &wg, None);
            let sig = b.op("Sigmoid", &[&gate]);
            let silu = b.op("Mul", &[&gate, &sig]);
            let up = b.linear(&h2, &wu, None);
            let prod = b.op("Mul", &[&silu, &up]);
            b.linear(&prod, &wd, None)
        };
        x = b.op("Add", &[&x, &ffn]);
    }
    let xf = if c.arch == Arch::Gpt2 { b.layer_norm(&x, "output_norm", c.norm_eps)? } else { b.rms_norm(&x, "output_norm.weight", c.norm_eps)? };
    let head = if c.tied_embeddings { b.g.op("Transpose", &[&tok], vec![attr_ints("perm", &[1, 0])]) } else { b.weight("output.weight", Layout::Transposed)? };
    if b.fp16 {
        let logits = b.op("MatMul", &[&xf, &head]);
        b.g.op_into("Cast", &[&logits], &["logits"], vec![attr_i("to", FLOAT as i64)]);
    } else {
        b.g.op_into("MatMul", &[&xf, &head], &["logits"], vec![]);
    }

    let mut dynamic_axes = vec!["batch".to_string(), "sequence".to_string()];
    if cache == Cache::Growing {
        dynamic_axes.extend(["past_sequence".to_string(), "total_sequence".to_string()]);
    }
    Ok(Built { graph, inputs, outputs, dynamic_axes })
}

/// GPT-2's `gelu_new`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
fn gelu_tanh(b: &mut Builder<'_, '_>, x: &str) -> String {
    let c1 = b.scalar(0.044715);
    let c2 = b.scalar((2.0 / std::f32::consts::PI).sqrt());
    let half = b.scalar(0.5);
    let one = b.scalar(1.0);
    let x2 = b.op("Mul", &[x, x]);
    let x3 = b.op("Mul", &[&x2, x]);
    let t = b.op("Mul", &[&x3, &c1]);
    let inner = b.op("Add", &[x, &t]);
    let scaled = b.op("Mul", &[&inner, &c2]);
    let th = b.op("Tanh", &[&scaled]);
    let onep = b.op("Add", &[&th, &one]);
    let hx = b.op("Mul", &[x, &half]);
    b.op("Mul", &[&hx, &onep])
}
