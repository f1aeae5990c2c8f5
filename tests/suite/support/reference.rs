//! A naive reference forward pass for GPT-2 and Llama, for checking exported models and
//! runtimes against something that shares no code with them.
//!
//! Deliberately plain: one sequence, positions `0..seq` (or given ones, for a sequence with
//! gaps), no cache, f64 everywhere, loops written out. Weights come as a map from canonical
//! tensor name (see `tr118::model`) to `(shape, row-major f32 values)`; a linear layer's
//! weight is `[out, in]`, so `y = W x`.
//!
//! GPT-2: learned positions; pre-LayerNorm (with bias) blocks; fused `attn_qkv` whose rows are
//! q, then k, then v; causal softmax attention scaled by `1/sqrt(head_dim)`; MLP with the tanh
//! approximation of GELU (`gelu_new`); final LayerNorm; output projection `output.weight` or,
//! tied, `token_embd.weight`.
//!
//! Llama: RMSNorm `w · x / sqrt(mean(x²) + eps)`; RoPE on q and k with base `rope_theta` in
//! either [`RopeLayout`]; grouped-query attention (query head `h` reads key/value head
//! `h / (n_head / n_kv_head)`); SwiGLU MLP `down(silu(gate x) · up x)`; final RMSNorm.

use std::collections::BTreeMap;

use tr118::model::{Arch, ModelConfig, RopeLayout};

/// Canonical tensor name → (shape, row-major values).
pub type Weights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Logits `[seq][vocab]` for `tokens` at positions `0..tokens.len()`.
pub fn forward(cfg: &ModelConfig, w: &Weights, tokens: &[u32]) -> Vec<Vec<f32>> {
    let positions: Vec<usize> = (0..tokens.len()).collect();
    forward_at(cfg, w, tokens, &positions)
}

/// Logits `[seq][vocab]` for `tokens` at `positions` (increasing, with gaps where a cache holds
/// masked entries): each token attends to itself and the tokens before it in the list.
pub fn forward_at(cfg: &ModelConfig, w: &Weights, tokens: &[u32], positions: &[usize]) -> Vec<Vec<f32>> {
    assert_eq!(tokens.len(), positions.len(), "a position for every token");
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "positions {positions:?} do not increase");
    let d = cfg.d_model;
    let hd = cfg.head_dim();
    let eps = f64::from(cfg.norm_eps);
    let seq = tokens.len();
    assert!(seq > 0, "no tokens");
    let gpt2 = cfg.arch == Arch::Gpt2;

    let token_embd = get(w, "token_embd.weight", &[cfg.vocab_size, d]);
    let mut x: Vec<Vec<f64>> = Vec::with_capacity(seq);
    for (&tok, &t) in tokens.iter().zip(positions) {
        let tok = tok as usize;
        assert!(tok < cfg.vocab_size, "token {tok} is outside the vocabulary of {}", cfg.vocab_size);
        let mut row: Vec<f64> = (0..d).map(|i| f64::from(token_embd[tok * d + i])).collect();
        if gpt2 {
            assert!(t < cfg.n_ctx, "position {t} is beyond n_ctx {}", cfg.n_ctx);
            let pos = get(w, "position_embd.weight", &[cfg.n_ctx, d]);
            for i in 0..d {
                row[i] += f64::from(pos[t * d + i]);
            }
        }
        x.push(row);
    }

    for l in 0..cfg.n_layer {
        let name = |s: &str| format!("blk.{l}.{s}");
        if gpt2 {
            let norm_w = get(w, &name("attn_norm.weight"), &[d]);
            let norm_b = get(w, &name("attn_norm.bias"), &[d]);
            let qkv_w = get(w, &name("attn_qkv.weight"), &[3 * d, d]);
            let qkv_b = get(w, &name("attn_qkv.bias"), &[3 * d]);
            let mut q = Vec::new();
            let mut k = Vec::new();
            let mut v = Vec::new();
            for xt in &x {
                let h = layer_norm(xt, norm_w, Some(norm_b), eps);
                let mut qkv = matvec(qkv_w, 3 * d, d, &h);
                add(&mut qkv, qkv_b);
                q.push(qkv[0..d].to_vec());
                k.push(qkv[d..2 * d].to_vec());
                v.push(qkv[2 * d..3 * d].to_vec());
            }
            let att = attention(&q, &k, &v, cfg.n_head, cfg.n_head, hd);
            let o_w = get(w, &name("attn_output.weight"), &[d, d]);
            let o_b = get(w, &name("attn_output.bias"), &[d]);
            for t in 0..seq {
                let mut o = matvec(o_w, d, d, &att[t]);
                add(&mut o, o_b);
                add_to(&mut x[t], &o);
            }

            let norm_w = get(w, &name("ffn_norm.weight"), &[d]);
            let norm_b = get(w, &name("ffn_norm.bias"), &[d]);
            let up_w = get(w, &name("ffn_up.weight"), &[cfg.d_ff, d]);
            let up_b = get(w, &name("ffn_up.bias"), &[cfg.d_ff]);
            let down_w = get(w, &name("ffn_down.weight"), &[d, cfg.d_ff]);
            let down_b = get(w, &name("ffn_down.bias"), &[d]);
            for xt in x.iter_mut() {
                let h = layer_norm(xt, norm_w, Some(norm_b), eps);
                let mut u = matvec(up_w, cfg.d_ff, d, &h);
                add(&mut u, up_b);
                let g: Vec<f64> = u.iter().map(|&a| gelu_tanh(a)).collect();
                let mut y = matvec(down_w, d, cfg.d_ff, &g);
                add(&mut y, down_b);
                add_to(xt, &y);
            }
        } else {
            let (nh, nkv) = (cfg.n_head, cfg.n_kv_head);
            let theta = f64::from(cfg.rope_theta);
            let norm_w = get(w, &name("attn_norm.weight"), &[d]);
            let q_w = get(w, &name("attn_q.weight"), &[nh * hd, d]);
            let k_w = get(w, &name("attn_k.weight"), &[nkv * hd, d]);
            let v_w = get(w, &name("attn_v.weight"), &[nkv * hd, d]);
            let mut q = Vec::new();
            let mut k = Vec::new();
            let mut v = Vec::new();
            for (&t, xt) in positions.iter().zip(&x) {
                let h = rms_norm(xt, norm_w, eps);
                let mut qt = matvec(q_w, nh * hd, d, &h);
                let mut kt = matvec(k_w, nkv * hd, d, &h);
                for head in 0..nh {
                    rope(&mut qt[head * hd..(head + 1) * hd], t, theta, cfg.rope_layout);
                }
                for head in 0..nkv {
                    rope(&mut kt[head * hd..(head + 1) * hd], t, theta, cfg.rope_layout);
                }
                q.push(qt);
                k.push(kt);
                v.push(matvec(v_w, nkv * hd, d, &h));
            }
            let att = attention(&q, &k, &v, nh, nkv, hd);
            let o_w = get(w, &name("attn_output.weight"), &[d, nh * hd]);
            for t in 0..seq {
                let o = matvec(o_w, d, nh * hd, &att[t]);
                add_to(&mut x[t], &o);
            }

            let norm_w = get(w, &name("ffn_norm.weight"), &[d]);
            let gate_w = get(w, &name("ffn_gate.weight"), &[cfg.d_ff, d]);
            let up_w = get(w, &name("ffn_up.weight"), &[cfg.d_ff, d]);
            let down_w = get(w, &name("ffn_down.weight"), &[d, cfg.d_ff]);
            for xt in x.iter_mut() {
                let h = rms_norm(xt, norm_w, eps);
                let gate = matvec(gate_w, cfg.d_ff, d, &h);
                let up = matvec(up_w, cfg.d_ff, d, &h);
                let mut act = vec![0.0; cfg.d_ff];
                for i in 0..cfg.d_ff {
                    act[i] = silu(gate[i]) * up[i];
                }
                let y = matvec(down_w, d, cfg.d_ff, &act);
                add_to(xt, &y);
            }
        }
    }

    let out_norm_w = get(w, "output_norm.weight", &[d]);
    let out_w = if cfg.tied_embeddings { token_embd } else { get(w, "output.weight", &[cfg.vocab_size, d]) };
    let mut logits = Vec::with_capacity(seq);
    for xt in &x {
        let h = if gpt2 { layer_norm(xt, out_norm_w, Some(get(w, "output_norm.bias", &[d])), eps) } else { rms_norm(xt, out_norm_w, eps) };
        let row = matvec(out_w, cfg.vocab_size, d, &h);
        logits.push(row.into_iter().map(|v| v as f32).collect());
    }
    logits
}

/// The tensor's values, checked against the shape the architecture needs.
fn get<'a>(w: &'a Weights, name: &str, shape: &[usize]) -> &'a [f32] {
    let (s, v) = w.get(name).unwrap_or_else(|| panic!("reference: weights lack `{name}`"));
    assert_eq!(s.as_slice(), shape, "reference: `{name}` has shape {s:?}, expected {shape:?}");
    assert_eq!(v.len(), shape.iter().product::<usize>(), "reference: `{name}` has {} values for shape {shape:?}", v.len());
    v
}

/// `y = W x` for `W` of `rows × cols`, row-major.
pub fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    assert_eq!(x.len(), cols);
    let mut y = vec![0.0; rows];
    for r in 0..rows {
        let mut acc = 0.0;
        for c in 0..cols {
            acc += f64::from(w[r * cols + c]) * x[c];
        }
        y[r] = acc;
    }
    y
}

fn add(y: &mut [f64], b: &[f32]) {
    for i in 0..y.len() {
        y[i] += f64::from(b[i]);
    }
}

fn add_to(y: &mut [f64], x: &[f64]) {
    for i in 0..y.len() {
        y[i] += x[i];
    }
}

/// `(x - mean) / sqrt(var + eps) · w + b`, with the biased variance.
pub fn layer_norm(x: &[f64], w: &[f32], b: Option<&[f32]>, eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mut mean = 0.0;
    for &v in x {
        mean += v;
    }
    mean /= n;
    let mut var = 0.0;
    for &v in x {
        var += (v - mean) * (v - mean);
    }
    var /= n;
    let inv = 1.0 / (var + eps).sqrt();
    let mut y = vec![0.0; x.len()];
    for i in 0..x.len() {
        y[i] = (x[i] - mean) * inv * f64::from(w[i]) + b.map_or(0.0, |b| f64::from(b[i]));
    }
    y
}

/// `w · x / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let mut ms = 0.0;
    for &v in x {
        ms += v * v;
    }
    ms /= x.len() as f64;
    let inv = 1.0 / (ms + eps).sqrt();
    let mut y = vec![0.0; x.len()];
    for i in 0..x.len() {
        y[i] = x[i] * inv * f64::from(w[i]);
    }
    y
}

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
pub fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// `x · sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Rotates one head `x` (length `hd`) to position `pos`. Pair `i < hd/2` turns by
/// `pos · theta^(-2i/hd)`; the pair is `(x[2i], x[2i+1])` (interleaved) or `(x[i], x[i+hd/2])`
/// (half).
pub fn rope(x: &mut [f64], pos: usize, theta: f64, layout: RopeLayout) {
    let hd = x.len();
    assert!(hd.is_multiple_of(2), "RoPE needs an even head size, got {hd}");
    for i in 0..hd / 2 {
        let freq = theta.powf(-2.0 * i as f64 / hd as f64);
        let angle = pos as f64 * freq;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::Half => (i, i + hd / 2),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

/// Causal multi-head attention. `q[t]` holds `n_head` heads of `hd`, `k[t]` and `v[t]` hold
/// `n_kv_head`; query head `h` reads key/value head `h / (n_head / n_kv_head)`. Returns the
/// heads concatenated per position.
pub fn attention(q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>], n_head: usize, n_kv_head: usize, hd: usize) -> Vec<Vec<f64>> {
    assert!(n_head.is_multiple_of(n_kv_head), "{n_head} query heads cannot share {n_kv_head} key/value heads evenly");
    let group = n_head / n_kv_head;
    let scale = 1.0 / (hd as f64).sqrt();
    let seq = q.len();
    let mut out = vec![vec![0.0; n_head * hd]; seq];
    for t in 0..seq {
        for h in 0..n_head {
            let kvh = h / group;
            let qh = &q[t][h * hd..(h + 1) * hd];
            let mut scores = vec![0.0; t + 1];
            for s in 0..=t {
                let kh = &k[s][kvh * hd..(kvh + 1) * hd];
                let mut dot = 0.0;
                for i in 0..hd {
                    dot += qh[i] * kh[i];
                }
                scores[s] = dot * scale;
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            for s in 0..=t {
                let p = scores[s] / sum;
                let vh = &v[s][kvh * hd..(kvh + 1) * hd];
                for i in 0..hd {
                    out[t][h * hd + i] += p * vh[i];
                }
            }
        }
    }
    out
}

/// xorshift64*: small, seeded, good enough for test weights.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // One splitmix64 step spreads neighbouring seeds apart; a zero state would stay zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Every tensor of `cfg.expected_tensors()`, random: norm weights `1 + N(0, 0.02²)`,
/// everything else `N(0, 0.02²)`, as GPT-2 and Llama initialise.
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Weights {
    random_weights_scaled(cfg, seed, 0.02)
}

/// [`random_weights`] with standard deviation `std`: larger values make every part of the
/// network visible in the logits.
pub fn random_weights_scaled(cfg: &ModelConfig, seed: u64, std: f64) -> Weights {
    let mut rng = Rng::new(seed);
    let mut w = Weights::new();
    for (name, shape) in cfg.expected_tensors() {
        let n: usize = shape.iter().product();
        let is_norm_weight = name.ends_with("norm.weight");
        let values = (0..n)
            .map(|_| {
                let r = rng.normal() * std;
                (if is_norm_weight { 1.0 + r } else { r }) as f32
            })
            .collect();
        w.insert(name, (shape, values));
    }
    w
}

/// `w` as the GGUF writer's tensors, in the architecture's order.
pub fn writer_tensors(cfg: &ModelConfig, w: &Weights) -> Vec<tr118::model::write::Tensor> {
    cfg.expected_tensors().into_iter().map(|(name, shape)| tr118::model::write::Tensor { data: w[&name].1.clone(), name, shape }).collect()
}

/// A tied GPT-2 of 2 heads and a 4× MLP: the shape of every GPT-2 the tests build.
pub fn gpt2(vocab_size: usize, n_layer: usize, d_model: usize, n_ctx: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Gpt2,
        vocab_size,
        n_layer,
        n_head: 2,
        n_kv_head: 2,
        d_model,
        d_ff: 4 * d_model,
        n_ctx,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: RopeLayout::Half,
        tied_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// A GPT-2 of 2 layers, 2 heads, d = 8: small enough to read, big enough to have structure.
pub fn tiny_gpt2() -> ModelConfig {
    gpt2(17, 2, 8, 16)
}

/// A Llama of 2 layers, 4 query heads sharing 2 key/value heads, head size 4.
pub fn tiny_llama(layout: RopeLayout) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 19,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        d_model: 16,
        d_ff: 24,
        n_ctx: 32,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: layout,
        tied_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}
