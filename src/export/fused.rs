//! The `decoder_fixed` variant: a decoder over a cache of fixed capacity, built from ONNX
//! Runtime's fused operators as ONNX Runtime GenAI's model builder lays out its decoders, so
//! that a decode step is a few large kernels rather than many small ones: replayed as a CUDA
//! graph, a step costs about as many microseconds as it has kernels.
//!
//! Per layer:
//!
//! | step | GPT-2 | Llama |
//! |------|-------|-------|
//! | norm (the first layer) | `LayerNormalization` | `SimplifiedLayerNormalization` |
//! | norm + residual add    | `SkipLayerNormalization` (with the previous projection's bias) | `SkipSimplifiedLayerNormalization` |
//! | Q, K and V             | one `MatMul` (+ bias) into packed QKV | one `MatMul` into packed QKV (the three weights concatenated) |
//! | attention, fp16        | `GroupQueryAttention` | `GroupQueryAttention` with its fused rotary embedding |
//! | attention, fp32        | `Split`, explicit attention (below) | `Split`, `RotaryEmbedding` on Q and K, explicit attention |
//! | MLP                    | `MatMul`, `FastGelu` (the tanh approximation, with the bias), `MatMul` | `MatMul`s, `QuickGelu` with α = 1 (SiLU), `Mul`, `MatMul` |
//!
//! **fp16.** `GroupQueryAttention` reads and writes the cache in place: `present.N.*` is the
//! same `[batch, kv_heads, max_length, head_dim]` buffer as `past_key_values.N.*`, so a
//! runtime binds both to one device buffer (ONNX Runtime's `past_present_share_buffer`), and
//! on a runtime that gives present its own buffer, present is past with the new positions
//! written. The operator takes the valid length of each row rather than a mask (`seqlens_k`,
//! the filled positions plus the new ones, minus one), so at fp16 `attention_mask` must be a
//! prefix of ones in every row: `past_length + sequence` of them, the same for the whole
//! batch, which is how a greedy loop fills it. The operator's total length, which picks its
//! phase, comes from shapes alone: a prompt (`sequence` > 1) is a first prompt into the empty
//! buffer, a single token a decode step over the whole buffer, so every decode step of a batch
//! size has the same shapes and constants, as a replayed CUDA graph needs. A step of several
//! tokens after a non-empty buffer is therefore not this variant's (`runtime::Decoder` refuses
//! it at both precisions). Positions past the filled ones are nobody's: on a present buffer of
//! its own the operator may leave zeros there. The cache is float16, the buffer the operator
//! works in. The first norm accumulates in float32 (`stash_type` 1); ONNX Runtime's CUDA
//! skip-norms accumulate in float16, each term divided by the hidden size first, as GenAI's
//! float16 graphs run them (its CPU kernels in float32).
//!
//! **fp32.** ONNX Runtime's CUDA `GroupQueryAttention` is float16 and bfloat16 only, so
//! attention is explicit over the whole buffer: the new keys and values written at
//! `past_length .. past_length + sequence` by `ScatterElements` (every other position of
//! `present` is `past`'s, bit for bit), query `i` seeing key `j` where `attention_mask[b, j]`
//! is 1 and `j <= past_length + i`, masked with `Where` and float32's lowest value. Any mask
//! works, padding included. The cache is float32.
//!
//! At both precisions the rotary angles are computed at export in double precision and stored
//! as `cos`/`sin` tables of `max_length` rows; positions are `past_length` plus a range over
//! the sequence axis, so no shape depends on a tensor's values. The interface: int64
//! `input_ids`, `attention_mask` `[batch, max_length]` and `past_length` `[1]`, the cache,
//! float32 `logits`, and `next_token` `[batch, 1]`, the argmax of each row's last logits.

use crate::model::{Arch, Checkpoint, ModelError, RopeLayout};
use crate::onnx::{self, Dim, FLOAT, FLOAT16, INT32, INT64, attr_f, attr_i, dyn_dim};

use super::transformer::{Builder, Built, Layout, f16_bytes, f32_bytes, relayout};
use super::{ExportOptions, Precision};

impl<'a> Builder<'_, 'a> {
    /// The concatenation, along the output axis, of the checkpoint's `[out, in]` projections
    /// `parts`: one `[in, Σ out]` `MatMul` weight, in the compute type.
    fn packed_weight(&mut self, name: &str, parts: &[(String, Layout)]) -> Result<String, ModelError> {
        let mut shapes = Vec::with_capacity(parts.len());
        for (part, _) in parts {
            let t = self.ck.tensor(part).ok_or_else(|| ModelError::Tensor { path: self.ck.path.clone(), tensor: part.clone(), message: "missing".into() })?;
            shapes.push(t.shape.clone());
        }
        let rows = shapes[0][1];
        if let Some((part, shape)) = parts.iter().map(|(p, _)| p).zip(&shapes).find(|(_, s)| s.len() != 2 || s[1] != rows) {
            return Err(ModelError::Tensor {
                path: self.ck.path.clone(),
                tensor: part.clone(),
                message: format!("has shape {shape:?}; packed with `{}` it needs {rows} inputs", parts[0].0),
            });
        }
        let cols: usize = shapes.iter().map(|s| s[0]).sum();
        let (ck, fp16) = (self.ck, self.fp16);
        let parts = parts.to_vec();
        let producer: onnx::Producer<'a> = Box::new(move || {
            let mut packed = vec![0f32; rows * cols];
            let mut at = 0;
            for ((part, layout), shape) in parts.iter().zip(&shapes) {
                // `[in, out]` after the layout; its columns go to `at .. at + out`.
                let v = relayout(ck.load(part).map_err(|e| e.to_string())?, shape, *layout);
                let out = shape[0];
                for r in 0..rows {
                    packed[r * cols + at..r * cols + at + out].copy_from_slice(&v[r * out..(r + 1) * out]);
                }
                at += out;
            }
            Ok(if fp16 { f16_bytes(&packed) } else { f32_bytes(&packed) })
        });
        Ok(self.g.init(name, &[rows as i64, cols as i64], if fp16 { FLOAT16 } else { FLOAT }, producer))
    }

    /// A table `[rows, cols]` computed at export, in the compute type.
    fn table(&mut self, name: &str, rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64 + 'a) -> String {
        let fp16 = self.fp16;
        let producer: onnx::Producer<'a> = Box::new(move || {
            let v: Vec<f32> = (0..rows * cols).map(|i| f(i / cols, i % cols) as f32).collect();
            Ok(if fp16 { f16_bytes(&v) } else { f32_bytes(&v) })
        });
        self.g.init(name, &[rows as i64, cols as i64], if fp16 { FLOAT16 } else { FLOAT }, producer)
    }

    /// ONNX Runtime's rotary embedding of `x` `[batch, sequence, heads · head_dim]` (half
    /// layout), positions from `offset` (`[1]`) on, angles from the `cos`/`sin` tables.
    fn rotary(&mut self, x: &str, offset: &str, cos: &str, sin: &str, heads: usize) -> String {
        let out = self.g.name("rotary");
        self.g.op_ms("RotaryEmbedding", &[x, offset, cos, sin], &[&out], vec![attr_i("interleaved", 0), attr_i("num_heads", heads as i64)]);
        out
    }

    /// The first layer's norm: `x` normalised, without a residual to add.
    fn first_norm(&mut self, x: &str, prefix: &str, eps: f32) -> Result<String, ModelError> {
        let w = self.weight(&format!("{prefix}.weight"), Layout::AsIs)?;
        let eps = attr_f("epsilon", eps);
        Ok(if self.ck.config.arch == Arch::Gpt2 {
            let b = self.weight(&format!("{prefix}.bias"), Layout::AsIs)?;
            self.g.op("LayerNormalization", &[x, &w, &b], vec![attr_i("axis", -1), eps, attr_i("stash_type", 1)])
        } else {
            self.g.op("SimplifiedLayerNormalization", &[x, &w], vec![attr_i("axis", -1), eps, attr_i("stash_type", 1)])
        })
    }

    /// `input + skip (+ bias)` normalised, and that sum (the residual stream after it).
    fn skip_norm(&mut self, input: &str, skip: &str, bias: Option<&str>, prefix: &str, eps: f32) -> Result<(String, String), ModelError> {
        let w = self.weight(&format!("{prefix}.weight"), Layout::AsIs)?;
        let (normed, sum) = (self.g.name("normed"), self.g.name("residual"));
        if self.ck.config.arch == Arch::Gpt2 {
            let b = self.weight(&format!("{prefix}.bias"), Layout::AsIs)?;
            let inputs: Vec<&str> = [input, skip, &w, &b].into_iter().chain(bias).collect();
            self.g.op_ms("SkipLayerNormalization", &inputs, &[&normed, "", "", &sum], vec![attr_f("epsilon", eps)]);
        } else {
            self.g.op_ms("SkipSimplifiedLayerNormalization", &[input, skip, &w], &[&normed, "", "", &sum], vec![attr_f("epsilon", eps)]);
        }
        Ok((normed, sum))
    }
}

/// What attention needs besides Q, K and V: the fused operator's lengths (float16), or the
/// explicit path's mask, the lowest score and where the new keys go (float32).
enum Lengths {
    Gqa { seqlens_k: String, total: String },
    Explicit { allowed: String, lowest: String, slots: String },
}

/// Builds the `decoder_fixed` of `ck` (see the module doc).
pub(crate) fn build<'a>(ck: &'a Checkpoint, opts: &ExportOptions, max_length: usize) -> Result<Built<'a>, ModelError> {
    let c = &ck.config;
    let (hd, heads, kv) = (c.head_dim(), c.n_head, c.n_kv_head);
    let fp16 = opts.precision == Precision::Fp16;
    let mut graph = onnx::Graph::new(&format!("{:?}-{}", c.arch, opts.variant.name()).to_lowercase());
    let mut b = Builder { g: &mut graph, ck, fp16, opset: opts.opset };
    let gpt2 = c.arch == Arch::Gpt2;
    let cache_type = if fp16 { FLOAT16 } else { FLOAT };

    let (batch, seq, capacity) = (dyn_dim("batch"), dyn_dim("sequence"), Dim::Fixed(max_length as i64));
    let ids = b.g.input("input_ids", INT64, &[batch.clone(), seq.clone()]);
    let mask = b.g.input("attention_mask", INT64, &[batch.clone(), capacity.clone()]);
    let past_length = b.g.input("past_length", INT64, &[Dim::Fixed(1)]);
    let mut inputs = vec![ids.clone(), mask.clone(), past_length.clone()];
    let cache_dims = [batch.clone(), Dim::Fixed(kv as i64), capacity.clone(), Dim::Fixed(hd as i64)];
    let mut pasts = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let k = b.g.input(&format!("past_key_values.{i}.key"), cache_type, &cache_dims);
        let v = b.g.input(&format!("past_key_values.{i}.value"), cache_type, &cache_dims);
        inputs.extend([k.clone(), v.clone()]);
        pasts.push((k, v));
    }

    let (zero, one) = (b.g.const_i64(&[0]), b.g.const_i64(&[1]));
    let (zero_scalar, one_scalar) = (b.g.scalar_i64(0), b.g.scalar_i64(1));
    let ids_shape = b.op("Shape", &[&ids]);
    let seq_len = b.g.op("Gather", &[&ids_shape, &one_scalar], vec![attr_i("axis", 0)]);
    // Positions `past_length + 0 .. sequence`: a range over the sequence axis plus a value, so
    // no shape in the graph depends on a tensor's values, as a replayed CUDA graph needs.
    let offsets = b.op("Range", &[&zero_scalar, &seq_len, &one_scalar]);
    let positions = b.op("Add", &[&offsets, &past_length]);
    let lengths = if fp16 {
        // What GroupQueryAttention takes instead of the mask: each row's valid length minus
        // one, and the total length, which picks the operator's phase. A prompt into the empty
        // buffer (`sequence` > 1) is its first prompt, of total length `sequence`; a decode
        // step (`sequence` = 1) has the buffer's length, a constant, so every step replays one
        // CUDA graph. Both from shapes alone, computed on the host where ONNX Runtime wants them.
        let filled = b.g.op("ReduceSum", &[&mask, &one], vec![attr_i("keepdims", 0)]);
        let last = b.op("Sub", &[&filled, &one_scalar]);
        let seqlens_k = b.g.op("Cast", &[&last], vec![attr_i("to", INT32 as i64)]);
        let single = b.op("Equal", &[&seq_len, &one_scalar]);
        let capacity_scalar = b.g.scalar_i64(max_length as i64);
        let total64 = b.op("Where", &[&single, &capacity_scalar, &seq_len]);
        let total = b.g.op("Cast", &[&total64], vec![attr_i("to", INT32 as i64)]);
        Lengths::Gqa { seqlens_k, total }
    } else {
        // Query `i` sees key `j` where the mask has it and `j <= past_length + i`.
        let capacity_scalar = b.g.scalar_i64(max_length as i64);
        let key_pos = b.op("Range", &[&zero_scalar, &capacity_scalar, &one_scalar]);
        let allowed = b.allowed(&positions, &key_pos, &mask, &one, &zero);
        let lowest = b.g.scalar_f32(f32::MIN);
        // Where each new key and value goes: its position, for every element of `[B, KV, S, hd]`.
        let b_1d = b.g.op("Gather", &[&ids_shape, &zero], vec![attr_i("axis", 0)]);
        let rest = b.g.const_i64(&[kv as i64, 1, hd as i64]);
        let slots_shape = b.g.op("Concat", &[&b_1d, &rest], vec![attr_i("axis", 0)]);
        let column = b.g.const_i64(&[1, 1, -1, 1]);
        let pos4 = b.op("Reshape", &[&positions, &column]);
        let slots = b.op("Expand", &[&pos4, &slots_shape]);
        Lengths::Explicit { allowed, lowest, slots }
    };

    let tok = b.weight("token_embd.weight", Layout::AsIs)?;
    let mut x = b.g.op("Gather", &[&tok, &ids], vec![attr_i("axis", 0)]);
    let mut rotary = None;
    if gpt2 {
        let table = b.weight("position_embd.weight", Layout::AsIs)?;
        let pe = b.g.op("Gather", &[&table, &positions], vec![attr_i("axis", 0)]);
        x = b.op("Add", &[&x, &pe]);
    } else {
        let (theta, half) = (f64::from(c.rope_theta), hd / 2);
        let angle = move |p: usize, i: usize| p as f64 * theta.powf(-(2.0 * i as f64) / hd as f64);
        let cos = b.table("rotary_cos", max_length, half, move |p, i| angle(p, i).cos());
        let sin = b.table("rotary_sin", max_length, half, move |p, i| angle(p, i).sin());
        rotary = Some((cos, sin));
    }
    let qk_layout = |h: usize| match c.rope_layout {
        RopeLayout::Interleaved if !gpt2 => Layout::RopeTransposed { heads: h },
        _ => Layout::Transposed,
    };

    b.g.output("logits", FLOAT, &[batch.clone(), seq.clone(), Dim::Fixed(c.vocab_size as i64)]);
    b.g.output("next_token", INT64, &[batch.clone(), Dim::Fixed(1)]);
    let mut outputs = vec!["logits".to_string(), "next_token".to_string()];
    let eps = c.norm_eps;
    // The residual stream and what the previous block adds to it (with its bias, on GPT-2).
    let mut residual = x.clone();
    let mut pending: Option<(String, Option<String>)> = None;
    for (i, (past_k, past_v)) in pasts.iter().enumerate() {
        let p = format!("blk.{i}");
        let h = match pending.take() {
            None => b.first_norm(&residual, &format!("{p}.attn_norm"), eps)?,
            Some((add, bias)) => {
                let (h, sum) = b.skip_norm(&add, &residual, bias.as_deref(), &format!("{p}.attn_norm"), eps)?;
                residual = sum;
                h
            }
        };
        let qkv = if gpt2 {
            let w = b.weight(&format!("{p}.attn_qkv.weight"), Layout::Transposed)?;
            let bias = b.weight(&format!("{p}.attn_qkv.bias"), Layout::AsIs)?;
            b.linear(&h, &w, Some(&bias))
        } else {
            let parts = [("attn_q", qk_layout(heads)), ("attn_k", qk_layout(kv)), ("attn_v", Layout::Transposed)];
            let parts: Vec<(String, Layout)> = parts.iter().map(|(n, l)| (format!("{p}.{n}.weight"), *l)).collect();
            let w = b.packed_weight(&format!("{p}.attn_qkv.weight"), &parts)?;
            b.linear(&h, &w, None)
        };
        let (present_k, present_v) = (format!("present.{i}.key"), format!("present.{i}.value"));
        let attn = match &lengths {
            Lengths::Gqa { seqlens_k, total } => {
                let attn = b.g.name("attn");
                let mut attrs = vec![attr_i("num_heads", heads as i64), attr_i("kv_num_heads", kv as i64)];
                let mut gqa_inputs: Vec<&str> = vec![&qkv, "", "", past_k, past_v, seqlens_k, total];
                if let Some((cos, sin)) = &rotary {
                    attrs.extend([attr_i("do_rotary", 1), attr_i("rotary_interleaved", 0)]);
                    gqa_inputs.extend([cos.as_str(), sin.as_str()]);
                }
                b.g.op_ms("GroupQueryAttention", &gqa_inputs, &[&attn, &present_k, &present_v], attrs);
                attn
            }
            Lengths::Explicit { allowed, lowest, slots } => {
                let sizes = b.g.const_i64(&[(heads * hd) as i64, (kv * hd) as i64, (kv * hd) as i64]);
                let parts = b.g.op_n("Split", &[&qkv, &sizes], 3, vec![attr_i("axis", -1)]);
                let (mut q, mut k) = (parts[0].clone(), parts[1].clone());
                if let Some((cos, sin)) = &rotary {
                    q = b.rotary(&q, &past_length, cos, sin, heads);
                    k = b.rotary(&k, &past_length, cos, sin, kv);
                }
                let (q, k, v) = (b.split_heads(&q, heads, hd), b.split_heads(&k, kv, hd), b.split_heads(&parts[2], kv, hd));
                let k_all = b.cache(past_k, &k, &present_k, Some(slots));
                let v_all = b.cache(past_v, &v, &present_v, Some(slots));
                b.attention(&q, &k_all, &v_all, allowed, lowest, heads, kv, hd)
            }
        };
        b.g.output(&present_k, cache_type, &cache_dims);
        b.g.output(&present_v, cache_type, &cache_dims);
        outputs.extend([present_k, present_v]);
        let wo = b.weight(&format!("{p}.attn_output.weight"), Layout::Transposed)?;
        let proj = b.op("MatMul", &[&attn, &wo]);
        let proj_bias = if gpt2 { Some(b.weight(&format!("{p}.attn_output.bias"), Layout::AsIs)?) } else { None };
        let (h2, sum) = b.skip_norm(&proj, &residual, proj_bias.as_deref(), &format!("{p}.ffn_norm"), eps)?;
        residual = sum;
        pending = Some(if gpt2 {
            let wu = b.weight(&format!("{p}.ffn_up.weight"), Layout::Transposed)?;
            let bu = b.weight(&format!("{p}.ffn_up.bias"), Layout::AsIs)?;
            let up = b.op("MatMul", &[&h2, &wu]);
            let act = b.g.name("gelu");
            b.g.op_ms("FastGelu", &[&up, &bu], &[&act], vec![]);
            let wd = b.weight(&format!("{p}.ffn_down.weight"), Layout::Transposed)?;
            let bd = b.weight(&format!("{p}.ffn_down.bias"), Layout::AsIs)?;
            (b.op("MatMul", &[&act, &wd]), Some(bd))
        } else {
            let wg = b.weight(&format!("{p}.ffn_gate.weight"), Layout::Transposed)?;
            let wu = b.weight(&format!("{p}.ffn_up.weight"), Layout::Transposed)?;
            let wd = b.weight(&format!("{p}.ffn_down.weight"), Layout::Transposed)?;
            let gate = b.op("MatMul", &[&h2, &wg]);
            // SiLU as one kernel: x·sigmoid(1·x).
            let silu = b.g.name("silu");
            b.g.op_ms("QuickGelu", &[&gate], &[&silu], vec![attr_f("alpha", 1.0)]);
            let up = b.op("MatMul", &[&h2, &wu]);
            let prod = b.op("Mul", &[&silu, &up]);
            (b.op("MatMul", &[&prod, &wd]), None)
        });
    }
    let (add, bias) = pending.expect("a model has at least one layer");
    let (xf, _) = b.skip_norm(&add, &residual, bias.as_deref(), "output_norm", eps)?;
    let head =
        if c.tied_embeddings { b.g.op("Transpose", &[&tok], vec![onnx::attr_ints("perm", &[1, 0])]) } else { b.weight("output.weight", Layout::Transposed)? };
    if fp16 {
        let logits16 = b.op("MatMul", &[&xf, &head]);
        b.g.op_into("Cast", &[&logits16], &["logits"], vec![attr_i("to", FLOAT as i64)]);
    } else {
        b.g.op_into("MatMul", &[&xf, &head], &["logits"], vec![]);
    }
    next_token(b.g, "logits");

    Ok(Built { graph, inputs, outputs, dynamic_axes: vec!["batch".into(), "sequence".into()] })
}

/// The output `next_token` `[batch, 1]`: the argmax of each row's last `logits` (`[batch,
/// sequence, vocab]`, float32), ties to the lowest id, as greedy decoding takes it. A runtime
/// that keeps the logits on the device then copies one id per row to the host each step.
fn next_token(g: &mut onnx::Graph<'_>, logits: &str) {
    let (start, end, axis) = (g.const_i64(&[-1]), g.const_i64(&[i64::MAX]), g.const_i64(&[1]));
    let last = g.op("Slice", &[logits, &start, &end, &axis], vec![]);
    g.op_into("ArgMax", &[&last], &["next_token"], vec![attr_i("axis", -1), attr_i("keepdims", 0), attr_i("select_last_index", 0)]);
}
