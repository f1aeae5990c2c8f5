//! The `calibrate` and `quantize` stages end to end: the real binary exports a tiny random
//! GPT-2 (and Llama), calibrates it on a corpus through ONNX Runtime, writes INT8 models, and
//! this file checks the numbers against its own naive forward pass.
//!
//! | rule                                                     | checked against                                            |
//! |----------------------------------------------------------|------------------------------------------------------------|
//! | per-tensor min / max / absmax, element and sample counts  | a naive f64 GPT-2 forward here that records every MatMul input, over the same windows (1e-4 of the tensor's range) |
//! | the percentile range                                     | the sorted activations of the naive forward (within one histogram bin) |
//! | the entropy search                                       | a naive KL implementation here, on synthetic histograms (every divergence to 1e-9, the same threshold); known shapes: uniform keeps every bin, a far outlier is clipped |
//! | `calibration.cache`                                      | parsed here: header per method and `trt_version`, hex floats bit-equal to the JSON scales, same order |
//! | the static model's contents                              | int8 weights and per-column scales quantized here from the checkpoint (bit-equal), activation scales equal to the calibration's, zero points 0, `axis = 1` |
//! | static and dynamic INT8 logits, 40 prompts of 1–60 tokens | fp32 logits within 0.5 of their standard deviation (max |Δ|); and, far tighter, a naive fake-quantized forward here (int8 weights per column, activations with the calibration's scales or `DynamicQuantizeLinear`'s): 90% of prompts within 1e-3 of its distance from fp32 |
//! | coverage of GPT-2 (L = 2)                                | exactly 4L + 1 = 9 of 6L + 1 = 13 MatMuls quantized, 2L = 4 attention MatMuls float; the written file counted here; ONNX Runtime ran 9 integer kernels; an fp16 export (float16 arithmetic) refused, named |
//! | coverage of Llama (L = 2)                                | 7L + 1 = 15 of 9L + 1 = 19 quantized; 2L attention float   |
//! | `exclude`                                                | `logits` drops the output projection; `blk.1.*` a whole layer; an unmatched pattern is an error |
//! | a Gemm (`transB = 1`, `alpha`, `beta`, `C`), both schemes | its fake-quantized product computed here (1e-4), and not the float one |
//! | a `decoder` dep, both schemes                            | the INT8 decoder's logits over the prompt in one step equal the INT8 prefill's (1e-4 of their std); static also token by token (its scales are fixed, dynamic ones are per step); its counts equal the prefill's |
//! | bad input                                                | no `calibration` dep; a calibration without a needed tensor (named); one of another model; `dynamic` with a calibration |

use std::collections::BTreeMap;
use std::fs;

use crate::support;
use crate::support::reference::{self, Rng, Weights, random_weights_scaled};
use crate::support::workspace::Workspace;
use prost::Message;
use serde_json::{Value, json};
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::model::{ModelConfig, RopeLayout};
use tr118::runtime::SessionOptions;

const SAMPLES: usize = 6;
const SEQ_LEN: usize = 12;
const CORPUS_TOKENS: usize = 200;

/// Quantized logits against fp32: max |Δ| over the fp32 logits' standard deviation. A tiny
/// random model (d = 16, weights of std 0.25) is far more sensitive to rounding than a
/// trained one: here static INT8 reaches 0.44 and dynamic 0.15 of the std on some prompts.
const INT8_VS_FP32: f64 = 0.5;
/// ONNX Runtime's INT8 logits against the naive fake-quantized forward, as a share of how far
/// the fake-quantized forward is from fp32 (about 1e-6 when they agree).
pub(super) const INT8_VS_FAKE_QUANT: f64 = 1e-3;
/// Prompts compared with the fake-quantized forward. ONNX Runtime's f32 activations and the
/// naive f64 ones differ by ~1e-7, so now and then a value sits on the other side of a
/// rounding boundary and one prompt moves by one quantization step (1 of 40 here, for each
/// scheme); a wrong scale, axis or zero point would move every prompt. So 90% must agree.
pub(super) const PROMPTS: usize = 40;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

pub(super) fn gpt2() -> ModelConfig {
    support::reference::gpt2(64, 2, 16, 64)
}

pub(super) fn corpus_ids(vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(118);
    (0..CORPUS_TOKENS).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// A workspace with `model.gguf`, `tokenizer.json`, `corpus.txt`, `lib/<ort>`, and the
/// export stage (prefill, external data so every path that resolves it is exercised).
pub(super) fn workspace(cfg: &ModelConfig, w: &Weights) -> Workspace {
    let ws = Workspace::new("tr118-quantize-");
    let tensors = reference::writer_tensors(cfg, w);
    write_gguf(&ws.path("model.gguf"), cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    let words: Vec<String> = corpus_ids(cfg.vocab_size).iter().map(|i| format!("t{i}")).collect();
    ws.write("corpus.txt", words.join(" "));
    let lib = support::ort_library();
    ws.write("lib/libonnxruntime.so", fs::read(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display())));
    ws
}

pub(super) const EXPORT: &str = r#"
[stages.export]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill"]
tokenizer = false
external_data = true
"#;

pub(super) fn calibrate_stage(name: &str, fields: &str) -> String {
    format!(
        "[stages.{name}]\nkind = \"calibrate\"\n\
         deps = {{ model = \"out/export/prefill\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"lib/libonnxruntime.so\" }}\n\
         samples = {SAMPLES}\nseq_len = {SEQ_LEN}\nseed = 3\n{fields}\n"
    )
}

pub(super) fn quantize_stage(name: &str, scheme: &str, calibration: Option<&str>, fields: &str) -> String {
    let cal = calibration.map_or(String::new(), |c| format!(", calibration = \"{c}\""));
    format!(
        "[stages.{name}]\nkind = \"quantize\"\n\
         deps = {{ model = \"out/export/prefill\", runtime = \"lib/libonnxruntime.so\"{cal} }}\n\
         scheme = \"{scheme}\"\n{fields}\n"
    )
}

pub(super) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

// ---------------------------------------------------------------------------------------
// The naive GPT-2 forward: every MatMul input recorded, optionally fake-quantized
// ---------------------------------------------------------------------------------------

/// Which activation a MatMul input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    Ln1(usize),
    QScaled(usize),
    K(usize),
    Probs(usize),
    V(usize),
    Ctx(usize),
    Ln2(usize),
    Gelu(usize),
    LnF,
}

impl Role {
    /// The graph's order: per layer the qkv input, the score MatMul's two inputs, the context
    /// MatMul's two, the output projection's, the MLP's two; then the final norm.
    pub(super) fn all(layers: usize) -> Vec<Role> {
        let mut out = Vec::new();
        for l in 0..layers {
            out.extend([Role::Ln1(l), Role::QScaled(l), Role::K(l), Role::Probs(l), Role::V(l), Role::Ctx(l), Role::Ln2(l), Role::Gelu(l)]);
        }
        out.push(Role::LnF);
        out
    }

    /// `(weight of the consuming op, input index)` as `calibration.json` must list it.
    pub(super) fn consumer(self) -> (Option<String>, usize) {
        match self {
            Role::Ln1(l) => (Some(format!("blk.{l}.attn_qkv.weight")), 0),
            Role::Ctx(l) => (Some(format!("blk.{l}.attn_output.weight")), 0),
            Role::Ln2(l) => (Some(format!("blk.{l}.ffn_up.weight")), 0),
            Role::Gelu(l) => (Some(format!("blk.{l}.ffn_down.weight")), 0),
            Role::LnF => (Some("token_embd.weight".into()), 0),
            Role::QScaled(_) | Role::Probs(_) => (None, 0),
            Role::K(_) | Role::V(_) => (None, 1),
        }
    }

    /// Values of the tensor for `seq` tokens.
    fn elements(self, cfg: &ModelConfig, seq: usize) -> usize {
        match self {
            Role::Probs(_) => cfg.n_head * seq * seq,
            Role::Gelu(_) => seq * cfg.d_ff,
            _ => seq * cfg.d_model,
        }
    }
}

/// How the forward treats the inputs of weight MatMuls.
pub(super) enum Quant<'a> {
    Float,
    /// Symmetric int8 with these scales.
    Static(&'a BTreeMap<Role, f32>),
    /// `DynamicQuantizeLinear`: uint8 with a zero point from the tensor's own range.
    Dynamic,
    /// `DynamicQuantizeLinear` at this one input, the others float.
    DynamicOnly(Role),
    /// Per token: rows brought to one range, then `DynamicQuantizeLinear` (see `fake_per_token`).
    PerToken,
}

/// `round half to even(x / s)` clamped to int8, times `s`; in f32 as `QuantizeLinear` computes.
fn fake_static(x: f64, s: f32) -> f64 {
    f64::from(((x as f32) / s).round_ties_even().clamp(-128.0, 127.0) * s)
}

/// `DynamicQuantizeLinear` then dequantization, over a whole tensor, in f32 as the op computes.
pub(super) fn fake_dynamic(rows: &mut [Vec<f64>]) {
    let (mut lo, mut hi) = (0f32, 0f32);
    for v in rows.iter().flatten() {
        lo = lo.min(*v as f32);
        hi = hi.max(*v as f32);
    }
    let scale = (hi - lo) / 255.0;
    if scale == 0.0 {
        return;
    }
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0);
    for v in rows.iter_mut().flatten() {
        let q = ((*v as f32) / scale).round_ties_even() + zp;
        *v = f64::from((q.clamp(0.0, 255.0) - zp) * scale);
    }
}

/// Per-token dynamic quantization as the rewrite computes it, in f32: each row scaled to a
/// largest magnitude of 127 (`· 127 / r`, `r = max(max |x|, 1e-8)`) and shifted by 128 into
/// `[1, 255]`, the whole tensor through `DynamicQuantizeLinear`, the shift taken off and each
/// row scaled back by `r / 127`.
fn fake_per_token(rows: &mut [Vec<f64>]) {
    let ranges: Vec<f32> = rows.iter().map(|r| r.iter().fold(0f32, |m, v| m.max((*v as f32).abs())).max(1e-8)).collect();
    for (r, &range) in rows.iter_mut().zip(&ranges) {
        let inverse = 127.0f32 / range;
        r.iter_mut().for_each(|v| *v = f64::from((*v as f32) * inverse + 128.0));
    }
    fake_dynamic(rows);
    for (r, &range) in rows.iter_mut().zip(&ranges) {
        let factor = f64::from(range / 127.0);
        r.iter_mut().for_each(|v| *v = (*v - 128.0) * factor);
    }
}

/// Symmetric int8 of each row (an output channel) of a `[out, in]` weight, dequantized.
pub(super) fn fake_weight(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        let row = &values[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        for c in 0..cols {
            out[r * cols + c] = (row[c] / s).round_ties_even().clamp(-127.0, 127.0) * s;
        }
    }
    out
}

/// The weights of every quantized MatMul fake-quantized; the embeddings' lookup keeps floats.
pub(super) fn fake_weights(cfg: &ModelConfig, w: &Weights) -> Weights {
    let mut q = w.clone();
    for (name, (shape, values)) in w {
        let matmul =
            name.ends_with("attn_qkv.weight") || name.ends_with("attn_output.weight") || name.ends_with("ffn_up.weight") || name.ends_with("ffn_down.weight");
        if matmul {
            q.insert(name.clone(), (shape.clone(), fake_weight(values, shape[0], shape[1])));
        }
    }
    let (shape, values) = &w["token_embd.weight"];
    q.insert("lm_head".into(), (shape.clone(), fake_weight(values, cfg.vocab_size, cfg.d_model)));
    q
}

pub(super) struct Forward {
    pub(super) logits: Vec<Vec<f64>>,
    observed: BTreeMap<Role, Vec<f64>>,
}

/// GPT-2 on `tokens` at positions `0..`, f64; `wq` replaces the MatMul weights (and holds
/// `lm_head`) when quantizing. Loops are written out, index by index, as in
/// `support::reference`.
#[allow(clippy::needless_range_loop)]
pub(super) fn forward(cfg: &ModelConfig, w: &Weights, wq: Option<&Weights>, quant: &Quant<'_>, tokens: &[u32]) -> Forward {
    let (d, heads, hd, seq) = (cfg.d_model, cfg.n_head, cfg.d_model / cfg.n_head, tokens.len());
    let eps = f64::from(cfg.norm_eps);
    let get = |name: &str| &w[name].1;
    let mat = |name: &str| &wq.unwrap_or(w)[name].1;
    let mut observed = BTreeMap::new();
    let feed = |role: Role, rows: &mut Vec<Vec<f64>>, observed: &mut BTreeMap<Role, Vec<f64>>| {
        observed.insert(role, rows.iter().flatten().copied().collect::<Vec<f64>>());
        match quant {
            Quant::Float => {}
            Quant::Static(scales) => rows.iter_mut().flatten().for_each(|v| *v = fake_static(*v, scales[&role])),
            Quant::Dynamic => fake_dynamic(rows),
            Quant::DynamicOnly(only) if *only == role => fake_dynamic(rows),
            Quant::DynamicOnly(_) => {}
            Quant::PerToken => fake_per_token(rows),
        }
    };
    let linear = |x: &[Vec<f64>], name: &str, bias: &str, rows: usize, cols: usize| -> Vec<Vec<f64>> {
        x.iter().map(|xt| reference::matvec(mat(name), rows, cols, xt).iter().zip(get(bias)).map(|(a, b)| a + f64::from(*b)).collect()).collect()
    };
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .enumerate()
        .map(|(t, &tok)| {
            (0..d).map(|i| f64::from(get("token_embd.weight")[tok as usize * d + i]) + f64::from(get("position_embd.weight")[t * d + i])).collect()
        })
        .collect();
    for l in 0..cfg.n_layer {
        let n = |s: &str| format!("blk.{l}.{s}");
        let mut h: Vec<Vec<f64>> = x.iter().map(|xt| reference::layer_norm(xt, get(&n("attn_norm.weight")), Some(get(&n("attn_norm.bias"))), eps)).collect();
        feed(Role::Ln1(l), &mut h, &mut observed);
        let qkv = linear(&h, &n("attn_qkv.weight"), &n("attn_qkv.bias"), 3 * d, d);
        let scale = f64::from(1.0 / (hd as f32).sqrt());
        let (mut qs, mut ks, mut vs, mut probs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut ctx = vec![vec![0.0; d]; seq];
        for hh in 0..heads {
            let q = |t: usize| &qkv[t][hh * hd..(hh + 1) * hd];
            let k = |t: usize| &qkv[t][d + hh * hd..d + (hh + 1) * hd];
            let v = |t: usize| &qkv[t][2 * d + hh * hd..2 * d + (hh + 1) * hd];
            for t in 0..seq {
                qs.extend(q(t).iter().map(|a| a * scale));
                ks.extend(k(t).iter().copied());
                vs.extend(v(t).iter().copied());
                let scores: Vec<f64> = (0..=t).map(|s| q(t).iter().zip(k(s)).map(|(a, b)| a * scale * b).sum()).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for s in 0..seq {
                    let p = if s <= t { (scores[s] - max).exp() / sum } else { 0.0 };
                    probs.push(p);
                    if s <= t {
                        for i in 0..hd {
                            ctx[t][hh * hd + i] += p * v(s)[i];
                        }
                    }
                }
            }
        }
        observed.insert(Role::QScaled(l), qs);
        observed.insert(Role::K(l), ks);
        observed.insert(Role::Probs(l), probs);
        observed.insert(Role::V(l), vs);
        feed(Role::Ctx(l), &mut ctx, &mut observed);
        let o = linear(&ctx, &n("attn_output.weight"), &n("attn_output.bias"), d, d);
        x.iter_mut().zip(&o).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
        let mut h2: Vec<Vec<f64>> = x.iter().map(|xt| reference::layer_norm(xt, get(&n("ffn_norm.weight")), Some(get(&n("ffn_norm.bias"))), eps)).collect();
        feed(Role::Ln2(l), &mut h2, &mut observed);
        let up = linear(&h2, &n("ffn_up.weight"), &n("ffn_up.bias"), cfg.d_ff, d);
        let mut g: Vec<Vec<f64>> = up.iter().map(|r| r.iter().map(|&a| reference::gelu_tanh(a)).collect()).collect();
        feed(Role::Gelu(l), &mut g, &mut observed);
        let down = linear(&g, &n("ffn_down.weight"), &n("ffn_down.bias"), d, cfg.d_ff);
        x.iter_mut().zip(&down).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    let mut lnf: Vec<Vec<f64>> = x.iter().map(|xt| reference::layer_norm(xt, get("output_norm.weight"), Some(get("output_norm.bias")), eps)).collect();
    feed(Role::LnF, &mut lnf, &mut observed);
    let head = wq.map_or(get("token_embd.weight"), |q| &q["lm_head"].1);
    let logits = lnf.iter().map(|h| reference::matvec(head, cfg.vocab_size, d, h)).collect();
    Forward { logits, observed }
}

/// The sample windows a calibration says it ran, checked against the corpus.
fn windows(cal: &Value, ids: &[u32]) -> Vec<Vec<u32>> {
    let starts: Vec<usize> = cal["sample_starts"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
    assert_eq!(starts.len(), SAMPLES);
    assert!(starts.iter().all(|&s| s + SEQ_LEN <= ids.len()), "windows inside the corpus: {starts:?}");
    starts.iter().map(|&s| ids[s..s + SEQ_LEN].to_vec()).collect()
}

/// `calibration.json`'s tensors keyed by role, after checking they are exactly the MatMul
/// inputs of the graph, in its order, with the right consumers.
fn tensors_by_role(cfg: &ModelConfig, cal: &Value) -> BTreeMap<Role, Value> {
    let tensors = cal["tensors"].as_array().unwrap();
    let roles = Role::all(cfg.n_layer);
    assert_eq!(tensors.len(), roles.len(), "8L + 1 MatMul inputs: {}", tensors.iter().map(|t| t["name"].to_string()).collect::<Vec<_>>().join(", "));
    roles
        .iter()
        .zip(tensors)
        .map(|(&role, t)| {
            let consumers = t["consumers"].as_array().unwrap();
            assert_eq!(consumers.len(), 1, "{role:?}: {t}");
            let (weight, input) = role.consumer();
            assert_eq!(consumers[0]["op"], "MatMul");
            assert_eq!(consumers[0]["input"], input, "{role:?}: {t}");
            assert_eq!(consumers[0]["weight"].as_str().map(str::to_string), weight, "{role:?}: {t}");
            (role, t.clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------

#[test]
fn calibration_statistics_match_the_naive_forward_over_the_same_windows() {
    let cfg = gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = workspace(&cfg, &w);
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}",
        calibrate_stage("minmax", "method = \"minmax\""),
        calibrate_stage("pct", "method = \"percentile\"\npercentile = 99.0")
    ));
    ws.make_ok();
    let ids = corpus_ids(cfg.vocab_size);
    let cal = ws.json("out/minmax/calibration.json");
    assert_eq!(cal["method"], "minmax");
    assert_eq!(cal["corpus_tokens"], CORPUS_TOKENS);
    assert!(cal["bins"].is_null());
    let runs: Vec<Forward> = windows(&cal, &ids).iter().map(|win| forward(&cfg, &w, None, &Quant::Float, win)).collect();
    for (role, t) in tensors_by_role(&cfg, &cal) {
        let values: Vec<f64> = runs.iter().flat_map(|r| r.observed[&role].iter().copied()).collect();
        assert_eq!(values.len(), role.elements(&cfg, SEQ_LEN) * SAMPLES, "{role:?}: the naive forward's count");
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let absmax = lo.abs().max(hi.abs());
        let tol = 1e-4 * absmax.max(1e-3);
        eprintln!("{role:?} `{}`: min {lo:.6} max {hi:.6} (stage {} {})", t["name"], t["min"], t["max"]);
        assert!((f(&t["min"]) - lo).abs() <= tol, "{role:?}: min {} vs reference {lo}", t["min"]);
        assert!((f(&t["max"]) - hi).abs() <= tol, "{role:?}: max {} vs reference {hi}", t["max"]);
        assert!((f(&t["absmax"]) - absmax).abs() <= tol, "{role:?}: absmax {} vs reference {absmax}", t["absmax"]);
        assert_eq!(t["amax"], t["absmax"], "minmax keeps the whole range");
        assert_eq!(f(&t["scale"]) as f32, f(&t["amax"]) as f32 / 127.0);
        assert_eq!(t["samples"], SAMPLES);
        assert_eq!(t["elements"], values.len(), "{role:?}");
        assert_eq!(t["method"], "minmax");
    }
    // The attention probabilities of masked (future) keys are exactly 0.
    let roles = tensors_by_role(&cfg, &cal);
    assert_eq!(f(&roles[&Role::Probs(0)]["min"]), 0.0);

    // Percentile: the upper edge of the histogram bin holding the reference's 99th percentile.
    let pct = ws.json("out/pct/calibration.json");
    assert_eq!(pct["sample_starts"], cal["sample_starts"], "same seed, same windows");
    assert_eq!(pct["percentile"], 99.0);
    for (role, t) in tensors_by_role(&cfg, &pct) {
        let mut mags: Vec<f64> = runs.iter().flat_map(|r| r.observed[&role].iter().map(|v| v.abs())).collect();
        mags.sort_by(f64::total_cmp);
        let rank = (0.99 * mags.len() as f64).ceil() as usize;
        let want = mags[rank - 1];
        let bin = f(&t["absmax"]) / 2048.0;
        let amax = f(&t["amax"]);
        assert!(amax >= want - bin && amax <= want + 2.0 * bin, "{role:?}: amax {amax} vs the 99th percentile {want} (bin {bin})");
        assert!(amax <= f(&t["absmax"]) * (1.0 + 1e-6));
    }
}

#[test]
fn the_calibration_cache_parses_back_to_the_json_scales() {
    let cfg = gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = workspace(&cfg, &w);
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}\n{}",
        calibrate_stage("entropy", ""),
        calibrate_stage("minmax", "method = \"minmax\"\ntrt_version = \"10.3.0\""),
        calibrate_stage("pct", "method = \"percentile\"")
    ));
    ws.make_ok();
    for (stage, header) in [("entropy", "TRT-8601-EntropyCalibration2"), ("minmax", "TRT-100300-MinMaxCalibration"), ("pct", "TRT-8601-LegacyCalibration")] {
        let cal = ws.json(&format!("out/{stage}/calibration.json"));
        let text = String::from_utf8(ws.read(&format!("out/{stage}/calibration.cache"))).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(header), "{stage}");
        assert_eq!(cal["cache_header"], header);
        let tensors = cal["tensors"].as_array().unwrap();
        let entries: Vec<(&str, &str)> = lines.map(|l| l.rsplit_once(": ").unwrap_or_else(|| panic!("{stage}: `{l}` is not `name: hex`"))).collect();
        assert_eq!(entries.len(), tensors.len(), "{stage}: one line per tensor");
        for ((name, hex), t) in entries.iter().zip(tensors) {
            assert_eq!(*name, t["name"].as_str().unwrap(), "{stage}: same order as the JSON");
            assert_eq!(hex.len(), 8, "{stage}: `{hex}`");
            let scale = f32::from_bits(u32::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{stage}: `{hex}`: {e}")));
            assert_eq!(scale, f(&t["scale"]) as f32, "{stage} `{name}`: cache {hex} vs JSON {}", t["scale"]);
            assert!(scale > 0.0 && scale.is_normal());
            assert_eq!(scale, f(&t["amax"]) as f32 / 127.0);
        }
    }
    // Entropy: the range ends on a bin edge between bin 128 and the whole histogram.
    let cal = ws.json("out/entropy/calibration.json");
    assert_eq!(cal["bins"], 2048);
    for t in cal["tensors"].as_array().unwrap() {
        let bins = t["entropy_bins"].as_u64().unwrap() as f64;
        assert!((128.0..=2048.0).contains(&bins), "{t}");
        let edge = bins * f(&t["absmax"]) / 2048.0;
        assert!((f(&t["amax"]) - edge).abs() <= 1e-6 * edge, "{t}");
    }
}

/// The entropy search written out plainly: for each candidate, the reference distribution
/// with the outliers folded into its last bin, the candidate quantized into 128 levels by
/// explicit bin ranges and expanded over non-empty bins, both normalised, KL summed.
fn naive_divergences(counts: &[u64]) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 128..=counts.len() {
        let outliers: u64 = counts[i..].iter().sum();
        let mut p: Vec<f64> = counts[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += outliers as f64;
        let mut q = vec![0.0f64; i];
        for level in 0..128 {
            // Bins whose index j satisfies level ≤ j·128/i < level + 1.
            let members: Vec<usize> = (0..i).filter(|&j| ((j * 128) as f64 / i as f64).floor() as usize == level).collect();
            let total: f64 = members.iter().map(|&j| counts[j] as f64).sum();
            let nonzero = members.iter().filter(|&&j| counts[j] > 0).count();
            for &j in &members {
                if counts[j] > 0 {
                    q[j] = total / nonzero as f64;
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let mut kl = 0.0;
        for j in 0..i {
            if p[j] > 0.0 {
                kl += if q[j] == 0.0 { f64::INFINITY } else { (p[j] / ps) * ((p[j] / ps) / (q[j] / qs)).ln() };
            }
        }
        out.push(kl);
    }
    out
}

#[test]
fn the_entropy_search_matches_a_naive_kl_on_synthetic_histograms() {
    use tr118::quant::calibrate::{BINS, Histogram, entropy_amax, entropy_divergences};
    let mut rng = Rng::new(5);
    let mut gaussian = vec![0u64; BINS];
    for _ in 0..200_000 {
        let b = (rng.normal().abs() * 150.0) as usize;
        gaussian[b.min(BINS - 1)] += 1;
    }
    let mut laplace_with_outlier = vec![0u64; BINS];
    for _ in 0..100_000 {
        let b = (-rng.uniform().ln() * 60.0) as usize;
        laplace_with_outlier[b.min(BINS - 2)] += 1;
    }
    laplace_with_outlier[BINS - 1] = 1;
    let sparse: Vec<u64> = (0..BINS).map(|j| if j % 7 == 0 { (j as u64 % 13) + 1 } else { 0 }).collect();
    let uniform = vec![10u64; BINS];
    for (name, counts) in [("gaussian", &gaussian), ("laplace+outlier", &laplace_with_outlier), ("sparse", &sparse), ("uniform", &uniform)] {
        let want = naive_divergences(counts);
        let got = entropy_divergences(counts);
        assert_eq!(got.len(), want.len(), "{name}: candidates 128..=2048");
        for ((i, g), w) in got.iter().zip(&want) {
            let same = (g.is_infinite() && w.is_infinite()) || (g - w).abs() <= 1e-9 * w.abs().max(1e-12);
            assert!(same, "{name}: KL at {i} bins: {g} vs naive {w}");
        }
        let best = want.iter().enumerate().fold((0, f64::INFINITY), |b, (k, &v)| if v <= b.1 { (k, v) } else { b });
        let h = Histogram { range: 2048.0, counts: counts.clone() };
        let (amax, bins, kl) = entropy_amax(&h);
        assert_eq!(bins, best.0 + 128, "{name}: threshold (the last minimum)");
        assert_eq!(amax, bins as f32, "{name}: amax = bins × width (width 1 here)");
        assert!((kl - best.1).abs() <= 1e-9 * best.1.max(1e-12));
        eprintln!("{name}: {bins} bins kept, KL {kl:.3e}");
    }
    // Known shapes: a uniform histogram loses nothing by keeping every bin; one far outlier
    // among a narrow distribution is clipped, the range ending near the distribution's tail.
    assert_eq!(entropy_amax(&Histogram { range: 2048.0, counts: uniform.clone() }).1, BINS);
    assert_eq!(naive_divergences(&uniform)[BINS - 128], 0.0);
    let (_, bins, _) = entropy_amax(&Histogram { range: 2048.0, counts: laplace_with_outlier.clone() });
    assert!((300..1200).contains(&bins), "clipped well below the outlier at 2047, above the bulk: {bins}");
}

// ---------------------------------------------------------------------------------------
// Quantized models
// ---------------------------------------------------------------------------------------

/// Logits `[seq][vocab]` of one prompt through ONNX Runtime.
pub(super) fn ort_logits(model: &std::path::Path, ids: &[u32]) -> Vec<Vec<f64>> {
    let mut s = support::ort().session(model, &SessionOptions::default()).unwrap_or_else(|e| panic!("open {}: {e}", model.display()));
    let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    let logits = s.run_prefill(&ids, &vec![1; ids.len()], 1, ids.len()).unwrap_or_else(|e| panic!("run {}: {e}", model.display()));
    let vocab = logits.shape()[2];
    (0..ids.len()).map(|t| (0..vocab).map(|v| f64::from(logits[[0, t, v]])).collect()).collect()
}

pub(super) fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

pub(super) fn std_dev(a: &[Vec<f64>]) -> f64 {
    let n = a.iter().map(Vec::len).sum::<usize>() as f64;
    let mean = a.iter().flatten().sum::<f64>() / n;
    (a.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// An initializer's raw bytes, inline or from the external data file beside `model`.
pub(super) fn initializer_bytes(model: &std::path::Path, t: &tr118::onnx::proto::TensorProto) -> Vec<u8> {
    if let Some(raw) = &t.raw_data {
        return raw.clone();
    }
    let get = |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone()).unwrap();
    let data = fs::read(model.with_file_name(get("location"))).unwrap();
    let (offset, length): (usize, usize) = (get("offset").parse().unwrap(), get("length").parse().unwrap());
    data[offset..offset + length].to_vec()
}

#[test]
fn the_static_model_holds_the_naive_int8_weights_and_the_calibration_scales() {
    let cfg = gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = workspace(&cfg, &w);
    let cal_path = "out/calibrate/calibration.json";
    ws.pipeline(&format!("{EXPORT}\n{}\n{}", calibrate_stage("calibrate", ""), quantize_stage("static", "static", Some(cal_path), "")));
    ws.make_ok();
    let cal = ws.json(cal_path);
    let report = ws.json("out/static/quantize.json");
    let path = ws.path("out/static/prefill/model.onnx");
    let g = tr118::onnx::proto::ModelProto::decode(fs::read(&path).unwrap().as_slice()).unwrap().graph.unwrap();
    let init = |n: &str| g.initializer.iter().find(|t| t.name.as_deref() == Some(n)).unwrap_or_else(|| panic!("no initializer `{n}`"));
    let consumer =
        |t: &str, op: &str| g.node.iter().find(|n| n.op_type.as_deref() == Some(op) && n.input[0] == t).unwrap_or_else(|| panic!("no {op} of `{t}`")).clone();
    let f32s = |t: &tr118::onnx::proto::TensorProto| -> Vec<f32> {
        initializer_bytes(&path, t).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    for op in report["ops"].as_array().unwrap() {
        let (k, n) = (op["k"].as_u64().unwrap() as usize, op["n"].as_u64().unwrap() as usize);
        let (shape, values) = &w[op["weight"].as_str().unwrap()];
        assert_eq!(shape, &vec![n, k], "{op}: a checkpoint weight is [out, in]");
        let q = init(op["weight_int8"].as_str().unwrap());
        assert_eq!((q.data_type, q.dims.clone()), (Some(3), vec![k as i64, n as i64]), "{op}");
        let stored: Vec<i8> = initializer_bytes(&path, q).into_iter().map(|b| b as i8).collect();
        let dq = consumer(op["weight_int8"].as_str().unwrap(), "DequantizeLinear");
        assert_eq!(dq.attribute.iter().find(|a| a.name.as_deref() == Some("axis")).and_then(|a| a.i), Some(1), "{op}: per output column");
        let scales = f32s(init(&dq.input[1]));
        assert_eq!(scales.len(), n);
        assert!(initializer_bytes(&path, init(&dq.input[2])).iter().all(|&z| z == 0), "{op}: zero points are 0");
        for o in 0..n {
            let row = &values[o * k..(o + 1) * k];
            let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            assert_eq!(scales[o], s, "{op}: scale of channel {o}");
            for i in 0..k {
                let want = (row[i] / s).round_ties_even().clamp(-127.0, 127.0) as i8;
                assert_eq!(stored[i * n + o], want, "{op}: W[{i}, {o}]");
            }
        }
        // The activation: QuantizeLinear → DequantizeLinear with the calibration's scale.
        let activation = op["activation"].as_str().unwrap();
        let t = cal["tensors"].as_array().unwrap().iter().find(|t| t["name"] == activation).unwrap();
        let q = consumer(activation, "QuantizeLinear");
        assert_eq!(f32s(init(&q.input[1])), vec![f(&t["scale"]) as f32], "{op}");
        let zp = init(&q.input[2]);
        assert_eq!((zp.data_type, initializer_bytes(&path, zp)), (Some(3), vec![0u8]), "{op}: int8, zero point 0");
        assert_eq!(f(&op["activation_scale"]) as f32, f(&t["scale"]) as f32);
    }
    // Each op has a QuantizeLinear of its own (ONNX Runtime fuses only dedicated pairs).
    let quantize_nodes = g.node.iter().filter(|n| n.op_type.as_deref() == Some("QuantizeLinear")).count();
    assert_eq!(quantize_nodes, report["quantized"].as_u64().unwrap() as usize);
}

#[test]
fn quantized_models_compute_the_fake_quantized_network_and_stay_near_fp32() {
    let cfg = gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = workspace(&cfg, &w);
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}\n{}",
        calibrate_stage("calibrate", "method = \"minmax\""),
        quantize_stage("static", "static", Some("out/calibrate/calibration.json"), ""),
        quantize_stage("dynamic", "dynamic", None, "")
    ));
    ws.make_ok();
    let cal = ws.json("out/calibrate/calibration.json");
    let scales: BTreeMap<Role, f32> = tensors_by_role(&cfg, &cal).into_iter().map(|(r, t)| (r, f(&t["scale"]) as f32)).collect();
    let wq = fake_weights(&cfg, &w);
    let ids = corpus_ids(cfg.vocab_size);
    let fp32 = ws.path("out/export/prefill/model.onnx");
    // 40 prompts of 1 to 60 tokens.
    let prompts: Vec<&[u32]> = (0..PROMPTS).map(|i| &ids[i * 3..i * 3 + 1 + (i * 7) % 60]).collect();
    for (scheme, quant) in [("static", Quant::Static(&scales)), ("dynamic", Quant::Dynamic)] {
        let (mut exact, mut worst) = (0usize, 0f64);
        for prompt in &prompts {
            let float = ort_logits(&fp32, prompt);
            let reference = forward(&cfg, &w, None, &Quant::Float, prompt).logits;
            let spread = std_dev(&reference);
            assert!(max_abs_diff(&float, &reference) < 1e-4 * spread, "the fp32 export is the naive network");
            let int8 = ort_logits(&ws.path(&format!("out/{scheme}/prefill/model.onnx")), prompt);
            let fake = forward(&cfg, &w, Some(&wq), &quant, prompt).logits;
            let (vs_fp32, fake_vs_fp32, vs_fake) = (max_abs_diff(&int8, &float), max_abs_diff(&fake, &reference), max_abs_diff(&int8, &fake));
            assert!(vs_fp32 > 1e-5, "{scheme}: the INT8 model computes exactly the fp32 one: nothing was quantized");
            assert!(
                vs_fp32 <= INT8_VS_FP32 * spread,
                "{scheme}, {} tokens: max |Δ| {vs_fp32} vs fp32 is over {INT8_VS_FP32} of the logits' std {spread}",
                prompt.len()
            );
            worst = worst.max(vs_fp32 / spread);
            exact += usize::from(vs_fake <= INT8_VS_FAKE_QUANT * fake_vs_fp32);
        }
        eprintln!("{scheme}: worst max |Δ| vs fp32 {worst:.3} of the logits' std; {exact} of {PROMPTS} prompts compute the fake-quantized forward");
        assert!(exact >= PROMPTS * 9 / 10, "{scheme}: only {exact} of {PROMPTS} prompts match the fake-quantized forward");
    }
}

// ---------------------------------------------------------------------------------------
// Coverage and `exclude`
// ---------------------------------------------------------------------------------------

/// Counted from the written file, independently of the stage: MatMuls fed by int8 weights
/// through `DequantizeLinear`, `MatMulInteger`s over int8 weights, float MatMuls left.
fn count_written(path: &std::path::Path) -> (usize, usize, usize) {
    let bytes = fs::read(path).unwrap();
    let g = tr118::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
    let int8: std::collections::HashSet<&str> = g.initializer.iter().filter(|t| t.data_type == Some(3)).filter_map(|t| t.name.as_deref()).collect();
    let made_by = |t: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == t));
    let (mut qdq, mut integer, mut float) = (0, 0, 0);
    for n in &g.node {
        match n.op_type.as_deref() {
            Some("MatMul") => {
                let dq_int8 = made_by(&n.input[1]).is_some_and(|p| p.op_type.as_deref() == Some("DequantizeLinear") && int8.contains(p.input[0].as_str()));
                if dq_int8 { qdq += 1 } else { float += 1 }
            }
            Some("MatMulInteger") if int8.contains(n.input[1].as_str()) => integer += 1,
            _ => {}
        }
    }
    (qdq, integer, float)
}

fn left_float_reasons(report: &Value) -> Vec<String> {
    report["left_float"].as_array().unwrap().iter().map(|f| f["reason"].as_str().unwrap().to_string()).collect()
}

#[test]
fn gpt2_coverage_is_exactly_its_weight_matmuls_and_exclude_removes_what_it_names() {
    let cfg = gpt2();
    let l = cfg.n_layer;
    let ws = workspace(&cfg, &random_weights_scaled(&cfg, 7, 0.25));
    let cal = Some("out/calibrate/calibration.json");
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}\n{}\n{}\n{}\n{}",
        calibrate_stage("calibrate", ""),
        quantize_stage("static", "static", cal, ""),
        quantize_stage("dynamic", "dynamic", None, ""),
        quantize_stage("no-head", "static", cal, "exclude = [\"logits\"]"),
        quantize_stage("no-layer1", "dynamic", None, "exclude = [\"blk.1.*\"]"),
        quantize_stage("per-tensor", "static", cal, "per_channel = false")
    ));
    ws.make_ok();

    // An fp16 export multiplies in float16: refused before anything is written, naming it.
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write("tr118.toml", text.clone() + "[stages.export16]\nkind = \"export\"\ndeps = { checkpoint = \"model.gguf\" }\nvariants = [\"prefill\"]\ntokenizer = false\nprecision = \"fp16\"\n\n\
         [stages.fp16]\nkind = \"quantize\"\ndeps = { model = \"out/export16/prefill\", runtime = \"lib/libonnxruntime.so\" }\nscheme = \"dynamic\"\n");
    ws.tr(&["make", "fp16"]).code(1).stderr_has("out/export16/prefill/model.onnx` computes in float16").stderr_has("quantize the fp32 export");
    ws.write("tr118.toml", text);
    for (stage, scheme, quantized, excluded) in [
        ("static", "static", 4 * l + 1, 0),
        ("dynamic", "dynamic", 4 * l + 1, 0),
        ("no-head", "static", 4 * l, 1),
        ("no-layer1", "dynamic", 4 * l + 1 - 4, 4),
        ("per-tensor", "static", 4 * l + 1, 0),
    ] {
        let r = ws.json(&format!("out/{stage}/quantize.json"));
        eprintln!("{stage}: {} of {} quantized; ONNX Runtime ran {}", r["quantized"], r["matmul_total"], r["ort"]["kernels"]);
        assert_eq!(r["scheme"], scheme);
        assert_eq!(r["matmul_total"], 6 * l + 1, "{stage}: 4L weight + 1 output projection + 2L attention MatMuls");
        assert_eq!(r["quantized"], quantized, "{stage}");
        assert_eq!(r["verified"], quantized, "{stage}: every quantized op found in the written file");
        assert!(r["ops"].as_array().unwrap().iter().all(|o| o["verified"] == true), "{stage}");
        let reasons = left_float_reasons(&r);
        assert_eq!(reasons.len(), 2 * l + excluded, "{stage}: {reasons:?}");
        assert_eq!(reasons.iter().filter(|x| x.starts_with("activation × activation")).count(), 2 * l, "{stage}: {reasons:?}");
        assert_eq!(reasons.iter().filter(|x| x.contains("`exclude` pattern")).count(), excluded, "{stage}: {reasons:?}");
        assert_eq!(r["written"]["float_matmuls"], 6 * l + 1 - quantized, "{stage}");
        assert_eq!(r["ort"]["integer_matmul_kernels"], quantized, "{stage}: ONNX Runtime multiplied each quantized op in INT8");
        assert_eq!(r["ran_integer"], true, "{stage}");

        let (qdq, integer, float) = count_written(&ws.path(&format!("out/{stage}/prefill/model.onnx")));
        if scheme == "static" {
            assert_eq!((qdq, integer), (quantized, 0), "{stage}: counted here");
        } else {
            assert_eq!((qdq, integer), (0, quantized), "{stage}: counted here");
        }
        assert_eq!(float, 6 * l + 1 - quantized, "{stage}: float MatMuls counted here");
    }

    let no_head = ws.json("out/no-head/quantize.json");
    let head = no_head["left_float"].as_array().unwrap().iter().find(|f| f["output"] == "logits").expect("the output projection is left float");
    assert_eq!(head["reason"], "excluded by `exclude` pattern `logits`");
    let per_tensor = ws.json("out/per-tensor/quantize.json");
    assert_eq!(per_tensor["per_channel"], false);
    assert!(per_tensor["weights"].as_str().unwrap().contains("per tensor"));

    // The tied embedding's transposed copy replaced the `Transpose`; the table itself stays
    // for the lookup, the other float weights are gone.
    let bytes = fs::read(ws.path("out/static/prefill/model.onnx")).unwrap();
    let g = tr118::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
    let init = |n: &str| g.initializer.iter().find(|t| t.name.as_deref() == Some(n));
    assert_eq!(init("token_embd.weight").and_then(|t| t.data_type), Some(1));
    assert_eq!(init("token_embd.weight_transposed_int8").map(|t| t.dims.clone()), Some(vec![cfg.d_model as i64, cfg.vocab_size as i64]));
    assert!(init("blk.0.attn_qkv.weight").is_none(), "a quantized weight's float copy is dropped");
    assert!(!g.node.iter().any(|n| n.op_type.as_deref() == Some("Transpose") && n.input.first().map(String::as_str) == Some("token_embd.weight")));
    assert!(ws.path("out/static/prefill/model.onnx.data").is_file(), "external data in, external data out");
}

#[test]
fn llama_coverage_leaves_attention_float() {
    let cfg = reference::tiny_llama(RopeLayout::Interleaved);
    let l = cfg.n_layer;
    let ws = workspace(&cfg, &random_weights_scaled(&cfg, 9, 0.25));
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}\n{}",
        calibrate_stage("calibrate", ""),
        quantize_stage("static", "static", Some("out/calibrate/calibration.json"), ""),
        quantize_stage("dynamic", "dynamic", None, "")
    ));
    ws.make_ok();
    let cal = ws.json("out/calibrate/calibration.json");
    // Per layer: the attention norm's output (q, k, v read it), q and k after RoPE, the
    // probabilities, v, the context, the MLP norm's output (gate, up), the MLP product;
    // then the final norm.
    assert_eq!(cal["tensors"].as_array().unwrap().len(), 8 * l + 1);
    let shared = cal["tensors"].as_array().unwrap().iter().find(|t| t["consumers"].as_array().unwrap().len() == 3).expect("q, k, v share one input");
    assert!(shared["consumers"].as_array().unwrap().iter().all(|c| c["weight"].as_str().unwrap().starts_with("blk.0.attn_")));
    let ids = corpus_ids(cfg.vocab_size);
    let fp32 = ort_logits(&ws.path("out/export/prefill/model.onnx"), &ids[..20]);
    for scheme in ["static", "dynamic"] {
        let r = ws.json(&format!("out/{scheme}/quantize.json"));
        assert_eq!(r["matmul_total"], 9 * l + 1, "7L weight + 1 output + 2L attention");
        assert_eq!(r["quantized"], 7 * l + 1);
        assert_eq!(r["verified"], 7 * l + 1);
        assert_eq!(r["ort"]["integer_matmul_kernels"], 7 * l + 1, "{scheme}: {}", r["ort"]["kernels"]);
        let reasons = left_float_reasons(&r);
        assert_eq!(reasons.len(), 2 * l, "{reasons:?}");
        assert_eq!(reasons.iter().filter(|x| x.starts_with("activation × activation")).count(), 2 * l, "{reasons:?}");
        let int8 = ort_logits(&ws.path(&format!("out/{scheme}/prefill/model.onnx")), &ids[..20]);
        let (d, s) = (max_abs_diff(&int8, &fp32), std_dev(&fp32));
        eprintln!("llama {scheme}: max |Δ| vs fp32 {d:.4} ({:.3} of std)", d / s);
        assert!(d > 1e-5 && d <= INT8_VS_FP32 * s, "{scheme}: {d} vs std {s}");
    }
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn a_static_scheme_without_a_calibration_dep_is_refused_at_load() {
    let cfg = gpt2();
    let ws = workspace(&cfg, &random_weights_scaled(&cfg, 7, 0.25));
    ws.pipeline(&format!("{EXPORT}\n{}", quantize_stage("static", "static", None, "")));
    let run = ws.tr(&["make"]);
    run.code(2).stderr_has("`scheme = \"static\"` needs a dep named `calibration`");
    ws.pipeline(&format!(
        "{EXPORT}\n{}\n{}",
        calibrate_stage("calibrate", ""),
        quantize_stage("dynamic", "dynamic", Some("out/calibrate/calibration.json"), "")
    ));
    ws.tr(&["make"]).code(2).stderr_has("reads no calibration");
}

#[test]
fn a_calibration_without_a_needed_tensor_fails_naming_it() {
    let cfg = gpt2();
    let ws = workspace(&cfg, &random_weights_scaled(&cfg, 7, 0.25));
    ws.pipeline(&format!("{EXPORT}\n{}", calibrate_stage("calibrate", "method = \"minmax\"")));
    ws.make_ok();
    let mut cal = ws.json("out/calibrate/calibration.json");
    let tensors = cal["tensors"].as_array_mut().unwrap();
    let dropped = tensors.remove(tensors.len() - 1);
    let name = dropped["name"].as_str().unwrap().to_string();
    ws.write("partial.json", serde_json::to_vec(&cal).unwrap());
    let mut other = ws.json("out/calibrate/calibration.json");
    other["model_digest"] = json!("0".repeat(64));
    ws.write("other.json", serde_json::to_vec(&other).unwrap());
    ws.pipeline(&format!("{EXPORT}\n{}", quantize_stage("static", "static", Some("partial.json"), "")));
    let run = ws.tr(&["make"]);
    run.code(1).stderr_has(&format!("no entry for tensor `{name}`"));
    run.stderr_has("input A of MatMul");

    ws.pipeline(&format!("{EXPORT}\n{}", quantize_stage("static", "static", Some("other.json"), "")));
    ws.tr(&["make"]).code(1).stderr_has("was made on another model");

    ws.pipeline(&format!("{EXPORT}\n{}", quantize_stage("dynamic", "dynamic", None, "exclude = [\"lm_head\"]")));
    ws.tr(&["make"]).code(1).stderr_has("`exclude` pattern(s) `lm_head` match no MatMul/Gemm");
}

// ---------------------------------------------------------------------------------------
// Gemm (the exporter writes MatMul + Add; other exporters write Gemm)
// ---------------------------------------------------------------------------------------

#[test]
fn a_gemm_with_transposed_weight_alpha_and_beta_computes_its_fake_quantized_product() {
    use tr118::onnx::{Dim, FLOAT, Graph, WriteOptions, attr_f, attr_i, write_model};
    use tr118::quant::calibrate::{Calibration, Consumer, TensorCalibration};
    use tr118::quant::rewrite::{Options, Scheme, quantize, verify};
    use tr118::runtime::{Feed, TensorData};

    let (rows, k, n, alpha, beta) = (5usize, 8usize, 6usize, 0.5f32, 2.0f32);
    let mut rng = Rng::new(21);
    let mut normal = |count: usize| -> Vec<f32> { (0..count).map(|_| rng.normal() as f32).collect() };
    let (w, c, x) = (normal(n * k), normal(n), normal(rows * k));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemm.onnx");
    let mut g = Graph::new("gemm");
    let input = g.input("x", FLOAT, &[Dim::Param("rows".into()), Dim::Fixed(k as i64)]);
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let (wb, cb) = (bytes(&w), bytes(&c));
    let wi = g.init("w", &[n as i64, k as i64], FLOAT, Box::new(move || Ok(wb)));
    let ci = g.init("c", &[n as i64], FLOAT, Box::new(move || Ok(cb)));
    g.op_into("Gemm", &[&input, &wi, &ci], &["y"], vec![attr_i("transB", 1), attr_f("alpha", alpha), attr_f("beta", beta)]);
    g.output("y", FLOAT, &[Dim::Param("rows".into()), Dim::Fixed(n as i64)]);
    write_model(g, &path, &WriteOptions { opset: 17, external_data: false, producer_version: "t".into(), metadata: vec![] }).unwrap();

    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tensor = TensorCalibration {
        name: "x".into(),
        consumers: vec![Consumer { node: "Gemm".into(), op: "Gemm".into(), input: 0, weight: Some("w".into()) }],
        min: -amax,
        max: amax,
        absmax: amax,
        amax,
        scale: amax / 127.0,
        scale_hex: String::new(),
        method: "minmax".into(),
        samples: 1,
        elements: x.len() as u64,
        entropy_bins: None,
        entropy_kl: None,
        channel_absmax: vec![],
    };
    let cal = Calibration {
        method: "minmax".into(),
        percentile: None,
        bins: None,
        levels: 128,
        samples: 1,
        seq_len: rows,
        seed: 0,
        corpus_tokens: rows,
        sample_starts: vec![0],
        model_file: "gemm.onnx".into(),
        model_digest: String::new(),
        runtime_version: String::new(),
        cache_header: String::new(),
        elapsed_s: 0.0,
        tensors: vec![tensor],
    };
    // The naive result: per output channel (a row of the stored [n, k] weight) int8 weights.
    let wq = fake_weight(&w, n, k);
    let expect = |xs: &[f64]| -> Vec<f64> {
        let mut y = vec![0.0; rows * n];
        for r in 0..rows {
            for o in 0..n {
                let dot: f64 = (0..k).map(|i| xs[r * k + i] * f64::from(wq[o * k + i])).sum();
                y[r * n + o] = f64::from(alpha) * dot + f64::from(beta) * f64::from(c[o]);
            }
        }
        y
    };
    let float_y: Vec<f64> = (0..rows * n)
        .map(|j| {
            let (r, o) = (j / n, j % n);
            f64::from(alpha) * (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i])).sum::<f64>() + f64::from(beta) * f64::from(c[o])
        })
        .collect();
    let model = tr118::onnx::edit::Model::load(&path).unwrap();
    for scheme in [Scheme::Static, Scheme::Dynamic] {
        let opts = Options { scheme, per_channel: true, exclude: vec![], per_token: false, only: None };
        let (proto, mut rewrite) = quantize(&model, &opts, Some(&cal)).unwrap();
        assert_eq!((rewrite.matmul_total, rewrite.quantized.len()), (1, 1), "{scheme:?}");
        let out = dir.path().join(format!("{scheme:?}.onnx"));
        tr118::onnx::edit::save(proto, &out, &model, false).unwrap();
        let written = verify(&tr118::onnx::edit::Model::load(&out).unwrap(), scheme, &mut rewrite);
        assert_eq!(written.verified, 1, "{scheme:?}: the Gemm is found quantized in the file");
        let mut s = support::ort().session(&out, &SessionOptions::default()).unwrap();
        let y = s.run(&[Feed { name: "x", shape: &[rows, k], data: TensorData::F32(&x) }]).unwrap().remove(0).1;
        let xs: Vec<f64> = match scheme {
            Scheme::Static => x.iter().map(|&v| fake_static(f64::from(v), amax / 127.0)).collect(),
            Scheme::Dynamic => {
                let mut m: Vec<Vec<f64>> = vec![x.iter().map(|&v| f64::from(v)).collect()];
                fake_dynamic(&mut m);
                m.remove(0)
            }
        };
        let want = expect(&xs);
        let got: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
        let vs_fake = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let vs_float = got.iter().zip(&float_y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("Gemm {scheme:?}: max |Δ| vs the fake-quantized product {vs_fake:.2e}, vs float {vs_float:.2e}");
        assert!(vs_fake < 1e-4, "{scheme:?}: {vs_fake}");
        assert!(vs_float > 1e-4, "{scheme:?}: the output is the float product: nothing was quantized");
    }
}

#[test]
fn a_quantized_decoder_computes_what_the_quantized_prefill_computes() {
    let cfg = gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = workspace(&cfg, &w);
    let both = EXPORT.replace("variants = [\"prefill\"]", "variants = [\"prefill\", \"decoder\"]");
    let with_decoder =
        |stage: String| stage.replace("deps = { model = \"out/export/prefill\",", "deps = { model = \"out/export/prefill\", decoder = \"out/export/decoder\",");
    ws.pipeline(&format!(
        "{both}\n{}\n{}\n{}",
        calibrate_stage("calibrate", "method = \"minmax\""),
        with_decoder(quantize_stage("static", "static", Some("out/calibrate/calibration.json"), "")),
        with_decoder(quantize_stage("dynamic", "dynamic", None, ""))
    ));
    ws.make_ok();
    let ids = corpus_ids(cfg.vocab_size);
    let prompt: Vec<i64> = ids[..9].iter().map(|&i| i64::from(i)).collect();
    for scheme in ["static", "dynamic"] {
        let report = ws.json(&format!("out/{scheme}/quantize.json"));
        assert_eq!(report["decoder"]["quantized"], report["quantized"], "{scheme}: {report}");
        assert_eq!(report["decoder"]["verified"], report["quantized"], "{scheme}: {report}");
        assert!(report["elapsed_s"].as_f64().is_some_and(|t| t > 0.0), "{scheme}: the node's time is recorded: {report}");
        let prefill = ort_logits(&ws.path(&format!("out/{scheme}/prefill/model.onnx")), &ids[..9]);
        let session = support::ort().session(&ws.path(&format!("out/{scheme}/decoder/model.onnx")), &SessionOptions::default()).unwrap();
        let mut decoder = tr118::runtime::Decoder::new(session).unwrap();
        let rows_of = |l: &ndarray::ArrayD<f32>| -> Vec<Vec<f64>> {
            l.outer_iter().flat_map(|b| b.outer_iter().map(|r| r.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>()).collect::<Vec<_>>()).collect()
        };
        // All 9 tokens in one step: the same input as the prefill's, under either scheme.
        let mut cache = decoder.empty_cache(1).unwrap();
        let whole = rows_of(&decoder.step(&mut cache, &prompt, 9).unwrap());
        let diff = max_abs_diff(&whole, &prefill);
        assert!(diff <= 1e-4 * std_dev(&prefill), "{scheme}: one 9-token step of the INT8 decoder differs from the INT8 prefill by {diff}");
        if scheme == "dynamic" {
            // Dynamic scales come from each step's own activations: token-by-token steps
            // compute another (equally valid) quantization.
            continue;
        }
        // Static scales are fixed: 5 tokens, then one at a time, give the same logits.
        let mut cache = decoder.empty_cache(1).unwrap();
        let mut rows = rows_of(&decoder.step(&mut cache, &prompt[..5], 5).unwrap());
        for &id in &prompt[5..] {
            rows.extend(rows_of(&decoder.step(&mut cache, &[id], 1).unwrap()));
        }
        let diff = max_abs_diff(&rows, &prefill);
        assert!(diff <= 1e-4 * std_dev(&prefill), "{scheme}: the INT8 decoder's logits differ from the INT8 prefill's by {diff}");
    }
}
