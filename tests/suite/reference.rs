//! Self-checks of the reference forward pass in `support/reference.rs`: it is the yardstick
//! for exporters and runtimes, so it is checked against values worked out by hand here, and
//! against its own symmetries (RoPE at position 0, GQA with duplicated heads, causality).

use crate::support::reference::{self, Weights, forward, gelu_tanh, random_weights, random_weights_scaled, rope, tiny_gpt2, tiny_llama};
use tr118::model::{Arch, ModelConfig, RopeLayout};

fn set(w: &mut Weights, name: &str, values: &[f32]) {
    let entry = w.get_mut(name).unwrap_or_else(|| panic!("no `{name}`"));
    assert_eq!(entry.1.len(), values.len(), "`{name}`");
    entry.1 = values.to_vec();
}

fn zero(w: &mut Weights, name: &str) {
    let entry = w.get_mut(name).unwrap_or_else(|| panic!("no `{name}`"));
    entry.1.iter_mut().for_each(|v| *v = 0.0);
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

/// A one-layer Llama with d = head size = 2 and one head, for sums that fit on paper.
fn llama_2d() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 3,
        n_layer: 1,
        n_head: 1,
        n_kv_head: 1,
        d_model: 2,
        d_ff: 2,
        n_ctx: 8,
        norm_eps: 1e-6,
        rope_theta: 10000.0,
        rope_layout: RopeLayout::Interleaved,
        tied_embeddings: false,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn rms2(x: [f64; 2], eps: f64) -> [f64; 2] {
    let r = ((x[0] * x[0] + x[1] * x[1]) / 2.0 + eps).sqrt();
    [x[0] / r, x[1] / r]
}

fn ln2(x: [f64; 2], eps: f64) -> [f64; 2] {
    let m = (x[0] + x[1]) / 2.0;
    let var = ((x[0] - m).powi(2) + (x[1] - m).powi(2)) / 2.0;
    let r = (var + eps).sqrt();
    [(x[0] - m) / r, (x[1] - m) / r]
}

/// Logits of a 2-d hidden state against a 3 × 2 output matrix.
fn project(out: [[f64; 2]; 3], h: [f64; 2]) -> Vec<f64> {
    out.iter().map(|r| r[0] * h[0] + r[1] * h[1]).collect()
}

#[test]
fn rope_at_position_zero_is_identity() {
    for layout in [RopeLayout::Interleaved, RopeLayout::Half] {
        let x = vec![0.3, -1.2, 2.5, 0.7, -0.1, 4.0];
        let mut y = x.clone();
        rope(&mut y, 0, 10000.0, layout);
        assert_eq!(x, y, "{layout:?}");
    }
}

#[test]
fn rope_pair_i_turns_by_theta_to_the_minus_2i_over_hd() {
    // hd = 4, theta = 100: pair 0 turns by pos rad, pair 1 by pos · 100^(-1/2) = pos / 10.
    let pos = 3;
    let mut x = vec![0.0, 0.0, 1.0, 0.0];
    rope(&mut x, pos, 100.0, RopeLayout::Interleaved);
    let a = 0.3f64;
    let want = [0.0, 0.0, a.cos(), a.sin()];
    assert!(x.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "interleaved: {x:?}");

    // Half pairs x[1] with x[3].
    let mut x = vec![0.0, 1.0, 0.0, 0.0];
    rope(&mut x, pos, 100.0, RopeLayout::Half);
    let want = [0.0, a.cos(), 0.0, a.sin()];
    assert!(x.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "half: {x:?}");
}

#[test]
fn rope_layouts_are_one_permutation_apart() {
    // Interleaved pair (2i, 2i+1) is half pair (i, i + hd/2).
    let hd = 8;
    let x: Vec<f64> = (0..hd).map(|i| (i as f64 * 0.37).sin() + 0.1 * i as f64).collect();
    let mut inter = x.clone();
    rope(&mut inter, 5, 500.0, RopeLayout::Interleaved);
    let mut half = vec![0.0; hd];
    for i in 0..hd / 2 {
        half[i] = x[2 * i];
        half[i + hd / 2] = x[2 * i + 1];
    }
    rope(&mut half, 5, 500.0, RopeLayout::Half);
    for i in 0..hd / 2 {
        assert!((inter[2 * i] - half[i]).abs() < 1e-12 && (inter[2 * i + 1] - half[i + hd / 2]).abs() < 1e-12, "pair {i}");
    }
}

#[test]
fn activations_are_gpt2_gelu_new_and_silu() {
    assert_eq!(gelu_tanh(0.0), 0.0);
    assert!((gelu_tanh(1.0) - 0.841_191_990_608_276_8).abs() < 1e-12, "{}", gelu_tanh(1.0));
    assert!((gelu_tanh(-1.0) + 0.158_808_009_391_723_2).abs() < 1e-12, "{}", gelu_tanh(-1.0));
    // The exact erf GELU gives 1.954_499_7 at 2; the approximation 1.954_597_7.
    assert!((gelu_tanh(2.0) - 1.954_597_694_087_775).abs() < 1e-12, "{}", gelu_tanh(2.0));
    assert!((reference::silu(1.0) - 0.731_058_578_630_004_9).abs() < 1e-12);
    assert_eq!(reference::silu(0.0), 0.0);
}

#[test]
fn zero_queries_attend_uniformly_to_the_prefix() {
    // Wq = 0 makes every score 0, so position t averages v over 0..=t. With Wv = Wo = I and a
    // silent MLP the layer adds mean(rms(x_s)) to x_t.
    let cfg = llama_2d();
    let mut w = random_weights_scaled(&cfg, 7, 0.5);
    let embd = [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
    let out = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
    set(&mut w, "token_embd.weight", &[1.0, 0.0, 0.0, 2.0, 3.0, 1.0]);
    set(&mut w, "blk.0.attn_norm.weight", &[1.0, 1.0]);
    zero(&mut w, "blk.0.attn_q.weight");
    set(&mut w, "blk.0.attn_v.weight", &[1.0, 0.0, 0.0, 1.0]);
    set(&mut w, "blk.0.attn_output.weight", &[1.0, 0.0, 0.0, 1.0]);
    zero(&mut w, "blk.0.ffn_down.weight");
    set(&mut w, "output_norm.weight", &[1.0, 1.0]);
    set(&mut w, "output.weight", &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);

    let tokens = [0u32, 2, 1];
    let got = forward(&cfg, &w, &tokens);
    let eps = f64::from(cfg.norm_eps);
    let h: Vec<[f64; 2]> = tokens.iter().map(|&t| rms2(embd[t as usize], eps)).collect();
    for t in 0..tokens.len() {
        let x = embd[tokens[t] as usize];
        let n = (t + 1) as f64;
        let mean = [h[..=t].iter().map(|v| v[0]).sum::<f64>() / n, h[..=t].iter().map(|v| v[1]).sum::<f64>() / n];
        let want = project(out, rms2([x[0] + mean[0], x[1] + mean[1]], eps));
        assert_close(&got[t], &want, 1e-6, &format!("position {t}"));
    }
}

#[test]
fn two_token_attention_matches_a_hand_computation() {
    // Wq = Wk = Wv = Wo = I: q_t = k_t = RoPE(rms(x_t), t), v_t = rms(x_t). At position 1 the
    // query turns by 1 rad (pair 0, theta^0), the scores are q·k / sqrt(2).
    for layout in [RopeLayout::Interleaved, RopeLayout::Half] {
        let mut cfg = llama_2d();
        cfg.rope_layout = layout;
        let mut w = random_weights_scaled(&cfg, 11, 0.5);
        let embd = [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
        let out = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
        set(&mut w, "token_embd.weight", &[1.0, 0.0, 0.0, 2.0, 3.0, 1.0]);
        set(&mut w, "blk.0.attn_norm.weight", &[1.0, 1.0]);
        for m in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            set(&mut w, &format!("blk.0.{m}.weight"), &[1.0, 0.0, 0.0, 1.0]);
        }
        zero(&mut w, "blk.0.ffn_down.weight");
        set(&mut w, "output_norm.weight", &[1.0, 1.0]);
        set(&mut w, "output.weight", &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);

        let got = forward(&cfg, &w, &[0, 2]);
        let eps = f64::from(cfg.norm_eps);
        let (x0, x1) = (embd[0], embd[2]);
        let (h0, h1) = (rms2(x0, eps), rms2(x1, eps));
        let (s, c) = 1f64.sin_cos();
        let q1 = [h1[0] * c - h1[1] * s, h1[0] * s + h1[1] * c];
        let k1 = q1;
        let scale = 1.0 / 2f64.sqrt();
        let s10 = (q1[0] * h0[0] + q1[1] * h0[1]) * scale;
        let s11 = (q1[0] * k1[0] + q1[1] * k1[1]) * scale;
        let (p0, p1) = (s10.exp() / (s10.exp() + s11.exp()), s11.exp() / (s10.exp() + s11.exp()));
        let att1 = [p0 * h0[0] + p1 * h1[0], p0 * h0[1] + p1 * h1[1]];

        let want0 = project(out, rms2([x0[0] + h0[0], x0[1] + h0[1]], eps));
        let want1 = project(out, rms2([x1[0] + att1[0], x1[1] + att1[1]], eps));
        assert_close(&got[0], &want0, 1e-6, &format!("{layout:?} position 0"));
        assert_close(&got[1], &want1, 1e-6, &format!("{layout:?} position 1"));
    }
}

#[test]
fn gpt2_fused_qkv_rows_are_q_then_k_then_v() {
    // One head, d = 2. The q rows are 0 (uniform attention), the v rows are I: position t gains
    // mean(LN(x_s)) over s ≤ t plus the v bias. Were the blocks read in another order, v would
    // be the zero or the random block.
    let cfg = ModelConfig { arch: Arch::Gpt2, n_kv_head: 1, n_head: 1, tied_embeddings: true, ..llama_2d() };
    let mut w = random_weights_scaled(&cfg, 3, 0.5);
    let wte = [[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]];
    set(&mut w, "token_embd.weight", &[1.0, 0.0, 0.0, 2.0, 3.0, 1.0]);
    let wpe: Vec<f32> = (0..cfg.n_ctx * 2).map(|i| 0.1 * i as f32).collect();
    set(&mut w, "position_embd.weight", &wpe);
    set(&mut w, "blk.0.attn_norm.weight", &[1.0, 1.0]);
    zero(&mut w, "blk.0.attn_norm.bias");
    let mut qkv = vec![0.0f32; 12];
    qkv[4..8].copy_from_slice(&[0.7, -0.4, 0.2, 0.9]); // k: anything
    qkv[8..12].copy_from_slice(&[1.0, 0.0, 0.0, 1.0]); // v: identity
    set(&mut w, "blk.0.attn_qkv.weight", &qkv);
    set(&mut w, "blk.0.attn_qkv.bias", &[0.0, 0.0, 0.5, -0.5, 0.25, -0.125]);
    set(&mut w, "blk.0.attn_output.weight", &[1.0, 0.0, 0.0, 1.0]);
    zero(&mut w, "blk.0.attn_output.bias");
    zero(&mut w, "blk.0.ffn_down.weight");
    zero(&mut w, "blk.0.ffn_down.bias");
    set(&mut w, "output_norm.weight", &[1.0, 1.0]);
    zero(&mut w, "output_norm.bias");

    let tokens = [2u32, 0, 1];
    let got = forward(&cfg, &w, &tokens);
    let eps = f64::from(cfg.norm_eps);
    let x: Vec<[f64; 2]> = tokens
        .iter()
        .enumerate()
        .map(|(t, &tok)| {
            let e = wte[tok as usize];
            [e[0] + f64::from(wpe[2 * t]), e[1] + f64::from(wpe[2 * t + 1])]
        })
        .collect();
    let h: Vec<[f64; 2]> = x.iter().map(|&v| ln2(v, eps)).collect();
    for t in 0..tokens.len() {
        let n = (t + 1) as f64;
        let mean = [h[..=t].iter().map(|v| v[0]).sum::<f64>() / n, h[..=t].iter().map(|v| v[1]).sum::<f64>() / n];
        let y = [x[t][0] + mean[0] + 0.25, x[t][1] + mean[1] - 0.125];
        let want = project(wte, ln2(y, eps));
        assert_close(&got[t], &want, 1e-6, &format!("position {t}"));
    }
}

#[test]
fn gpt2_with_silent_branches_is_embedding_plus_position() {
    let cfg = tiny_gpt2();
    let mut w = random_weights_scaled(&cfg, 5, 0.3);
    for l in 0..cfg.n_layer {
        for t in ["attn_output.weight", "attn_output.bias", "ffn_down.weight", "ffn_down.bias"] {
            zero(&mut w, &format!("blk.{l}.{t}"));
        }
    }
    let tokens = [3u32, 16, 0, 7];
    let got = forward(&cfg, &w, &tokens);
    let d = cfg.d_model;
    let wte = &w["token_embd.weight"].1;
    let wpe = &w["position_embd.weight"].1;
    let (g, b) = (&w["output_norm.weight"].1, &w["output_norm.bias"].1);
    for (t, &tok) in tokens.iter().enumerate() {
        let x: Vec<f64> = (0..d).map(|i| f64::from(wte[tok as usize * d + i]) + f64::from(wpe[t * d + i])).collect();
        let mean = x.iter().sum::<f64>() / d as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let h: Vec<f64> = (0..d).map(|i| (x[i] - mean) / (var + 1e-5).sqrt() * f64::from(g[i]) + f64::from(b[i])).collect();
        let want: Vec<f64> = (0..cfg.vocab_size).map(|v| (0..d).map(|i| f64::from(wte[v * d + i]) * h[i]).sum()).collect();
        assert_close(&got[t], &want, 1e-6, &format!("position {t}"));
    }
}

#[test]
fn gqa_with_duplicated_kv_heads_equals_mha() {
    for layout in [RopeLayout::Interleaved, RopeLayout::Half] {
        let gqa = tiny_llama(layout);
        let mha = ModelConfig { n_kv_head: gqa.n_head, ..gqa.clone() };
        let wg = random_weights_scaled(&gqa, 21, 0.3);
        let mut wm = wg.clone();
        let (hd, d, group) = (gqa.head_dim(), gqa.d_model, gqa.n_head / gqa.n_kv_head);
        for l in 0..gqa.n_layer {
            for m in ["attn_k", "attn_v"] {
                let name = format!("blk.{l}.{m}.weight");
                let small = &wg[&name].1;
                let mut big = Vec::with_capacity(mha.n_kv_head * hd * d);
                for head in 0..mha.n_kv_head {
                    let src = head / group;
                    big.extend_from_slice(&small[src * hd * d..(src + 1) * hd * d]);
                }
                wm.insert(name, (vec![mha.n_kv_head * hd, d], big));
            }
        }
        let tokens = [1u32, 5, 18, 2, 9, 9, 0];
        let a = forward(&gqa, &wg, &tokens);
        let b = forward(&mha, &wm, &tokens);
        for t in 0..tokens.len() {
            let want: Vec<f64> = b[t].iter().map(|&v| f64::from(v)).collect();
            assert_close(&a[t], &want, 1e-9, &format!("{layout:?} position {t}"));
        }
    }
}

#[test]
fn later_tokens_do_not_change_earlier_logits() {
    for cfg in [tiny_gpt2(), tiny_llama(RopeLayout::Interleaved), tiny_llama(RopeLayout::Half)] {
        let w = random_weights_scaled(&cfg, 9, 0.3);
        let a = forward(&cfg, &w, &[4, 1, 8, 3]);
        let b = forward(&cfg, &w, &[4, 1, 8, 12]);
        assert_eq!(a[..3], b[..3], "{:?}", cfg.arch);
        assert_ne!(a[3], b[3], "{:?}: the last token must matter", cfg.arch);
    }
}

#[test]
fn random_weights_cover_every_tensor_with_the_right_scale() {
    for cfg in [tiny_gpt2(), tiny_llama(RopeLayout::Half)] {
        let w = random_weights(&cfg, 1);
        let expected = cfg.expected_tensors();
        assert_eq!(w.len(), expected.len());
        for (name, shape) in &expected {
            let (s, v) = &w[name];
            assert_eq!(s, shape, "`{name}`");
            assert_eq!(v.len(), shape.iter().product::<usize>(), "`{name}`");
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n).sqrt();
            if name.ends_with("norm.weight") {
                assert!((mean - 1.0).abs() < 0.05, "`{name}` mean {mean}");
            } else if v.len() >= 128 {
                assert!(mean.abs() < 0.01 && (std - 0.02).abs() < 0.006, "`{name}` mean {mean} std {std}");
            }
        }
        assert_eq!(w, random_weights(&cfg, 1), "the same seed gives the same weights");
        assert_ne!(w, random_weights(&cfg, 2), "another seed gives other weights");
        // The logits of a forward pass are finite.
        let logits = forward(&cfg, &w, &[0, 1, 2]);
        assert!(logits.iter().flatten().all(|v| v.is_finite()));
        assert_eq!(logits[0].len(), cfg.vocab_size);
    }
}
