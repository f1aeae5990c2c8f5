//! INT8 recipes beyond plain per-tensor INT8: SmoothQuant's migration, per-token dynamic
//! activations and the sensitivity pass that picks what stays float, through the real binary
//! on tiny random models, each against a naive computation here.
//!
//! | rule                                                   | checked against                                           |
//! |--------------------------------------------------------|-----------------------------------------------------------|
//! | smoothing leaves the fp32 model's function unchanged   | the naive f64 forward of the original weights (Llama and GPT-2): max |Δ logit| ≤ 1e-4 |
//! | the factors follow the paper                           | `γ'_j = γ_j · max_n |W[n, j]|^(1−α) / max|X_j|^α` computed here from the checkpoint and the calibration's channel maxima (1e-5) |
//! | what is smoothed and why not                           | Llama: both norms of each layer, the SwiGLU product, the final norm; the attention output is not (made by a `Reshape`). GPT-2: both LayerNorms; not the GELU output, nor the tied head |
//! | per-token dynamic activations                          | a naive forward quantizing each token's row here (scaled to ±127, shifted, `DynamicQuantizeLinear`, scaled back): 90% of prompts within 1e-3 of its distance from fp32 (all agree to ~4e-7) |
//! | the sensitivity ranking                                | a brute force here: each weight MatMul quantized alone in the naive forward, KL(float ‖ quantized) over the same windows; same order, values within 10% |
//! | the search                                             | the fewest float ops that meet the target: `k` meets, `k − 1` misses, and the written model leaves exactly those float |
//! | a `decoder` dep with smoothing and per-token activations | the decoder holds the prefill's migrated weights (bit-equal, not the checkpoint's) and its one-step logits equal the prefill's (1e-4 of their std) |
//! | bad recipes                                            | `smooth_alpha` outside (0, 1], without a calibration; `per_token` with `static`; an unknown `sensitivity` key (with a suggestion); `sensitivity` without a corpus or a target |

use serde_json::Value;

use crate::quantize::{self as q, Quant, Role};
use crate::support::reference::{self, Weights, random_weights_scaled};
use tr118::model::{ModelConfig, RopeLayout};

/// The most smoothing may move an fp32 logit.
const SMOOTH_TOLERANCE: f64 = 1e-4;

fn calibrated(cfg: &ModelConfig, w: &Weights, stages: &str) -> crate::support::workspace::Workspace {
    let ws = q::workspace(cfg, w);
    ws.pipeline(&format!("{}\n{}\n{stages}", q::EXPORT, q::calibrate_stage("calibrate", "method = \"minmax\"")));
    ws
}

/// The row of `calibration.json` whose consumers' weights include `weight`.
fn tensor_feeding<'a>(cal: &'a Value, weight: &str) -> &'a Value {
    cal["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["consumers"].as_array().unwrap().iter().any(|c| c["weight"] == weight))
        .unwrap_or_else(|| panic!("no calibrated tensor feeds `{weight}`"))
}

/// The largest |W[n, j]| over the output rows `n` of `[out, in]` weights, for input channel `j`.
fn column_max(ws: &[&(Vec<usize>, Vec<f32>)], j: usize) -> f64 {
    ws.iter().flat_map(|(shape, v)| (0..shape[0]).map(move |n| f64::from(v[n * shape[1] + j].abs()))).fold(0.0, f64::max)
}

fn written_initializer(model: &std::path::Path, name: &str) -> Vec<f32> {
    use prost::Message;
    let proto = tr118::onnx::proto::ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let t = proto.graph.as_ref().unwrap().initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no `{name}`"));
    q::initializer_bytes(model, t).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn smoothing_is_an_identity(cfg: &ModelConfig, seed: u64, smoothed: &[&str], unsmoothed: &[&str]) {
    let w = random_weights_scaled(cfg, seed, 0.25);
    let ws = calibrated(cfg, &w, &q::quantize_stage("smoothed", "dynamic", Some("out/calibrate/calibration.json"), "smooth_alpha = 0.5\nexclude = [\"*\"]"));
    ws.make_ok();
    let r = ws.json("out/smoothed/quantize.json");
    assert_eq!(r["quantized"], 0, "everything excluded: the written model is the migrated float one");
    let s = &r["smooth"];
    let folded: Vec<&str> = s["smoothed"].as_array().unwrap().iter().map(|x| x["folded_into"].as_str().unwrap()).collect();
    assert_eq!(folded.len(), smoothed.len(), "{folded:?}");
    for (got, want) in folded.iter().zip(smoothed) {
        assert!(got.contains(want), "{got} should name {want}");
    }
    let reasons: Vec<&str> = s["unsmoothed"].as_array().unwrap().iter().map(|x| x["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), unsmoothed.len(), "{reasons:?}");
    for (got, want) in reasons.iter().zip(unsmoothed) {
        assert!(got.contains(want), "{got} should say {want}");
    }
    assert!(s["max_logit_diff"].as_f64().unwrap() <= 1e-4, "{s}");

    let model = ws.path("out/smoothed/prefill/model.onnx");
    let ids: Vec<u32> = q::corpus_ids(cfg.vocab_size)[..24].to_vec();
    let want: Vec<Vec<f64>> = reference::forward(cfg, &w, &ids).into_iter().map(|r| r.into_iter().map(f64::from).collect()).collect();
    let got = q::ort_logits(&model, &ids);
    let d = q::max_abs_diff(&got, &want);
    eprintln!("{:?}: smoothed fp32 vs the naive forward of the original weights: max |Δ| {d:.2e}", cfg.arch);
    assert!(d <= SMOOTH_TOLERANCE, "{d}");

    // The first layer's attention norm took γ / s with s from the channel maxima and the
    // q/k/v (or qkv) weights, as the paper defines it.
    let cal = ws.json("out/calibrate/calibration.json");
    let consumers: Vec<&str> = match cfg.arch {
        tr118::model::Arch::Llama => vec!["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"],
        _ => vec!["blk.0.attn_qkv.weight"],
    };
    let act: Vec<f64> = tensor_feeding(&cal, consumers[0])["channel_absmax"].as_array().unwrap().iter().map(q::f).collect();
    assert_eq!(act.len(), cfg.d_model);
    let weights: Vec<&(Vec<usize>, Vec<f32>)> = consumers.iter().map(|c| &w[*c]).collect();
    let gamma = &w["blk.0.attn_norm.weight"].1;
    let written = written_initializer(&model, "blk.0.attn_norm.weight");
    let mut moved = 0.0f64;
    for j in 0..cfg.d_model {
        let s = act[j].sqrt() / column_max(&weights, j).sqrt();
        let want = f64::from(gamma[j]) / s;
        assert!((f64::from(written[j]) - want).abs() <= 1e-5 * want.abs().max(1e-3), "channel {j}: γ' {} vs {want}", written[j]);
        moved = moved.max((f64::from(written[j]) - f64::from(gamma[j])).abs());
    }
    assert!(moved > 1e-2, "the migration moved γ by at most {moved}");
}

#[test]
fn smoothing_leaves_a_llama_unchanged_and_follows_the_papers_factors() {
    let cfg = reference::tiny_llama(RopeLayout::Interleaved);
    // Per layer: the attention norm, the MLP norm, the SwiGLU product (into `up`'s columns);
    // then the final norm (an untied head). Per layer the attention output is left.
    let mut smoothed = Vec::new();
    for _ in 0..cfg.n_layer {
        smoothed.extend(["attn_norm.weight", "ffn_norm.weight", "ffn_up.weight"]);
    }
    smoothed.push("output_norm.weight");
    let unsmoothed = vec!["no scale or weight to fold"; cfg.n_layer];
    smoothing_is_an_identity(&cfg, 9, &smoothed, &unsmoothed);
}

#[test]
fn smoothing_leaves_a_gpt2_unchanged_and_skips_gelu_and_the_tied_head() {
    let cfg = q::gpt2();
    let mut smoothed = Vec::new();
    let mut unsmoothed = Vec::new();
    for _ in 0..cfg.n_layer {
        smoothed.extend(["attn_norm.weight", "ffn_norm.weight"]);
        unsmoothed.extend(["no scale or weight to fold", "no scale or weight to fold"]);
    }
    unsmoothed.push("tied embedding");
    smoothing_is_an_identity(&cfg, 7, &smoothed, &unsmoothed);
}

#[test]
fn per_token_activations_compute_the_naive_per_token_network() {
    let cfg = q::gpt2();
    let w = random_weights_scaled(&cfg, 7, 0.25);
    let ws = q::workspace(&cfg, &w);
    ws.pipeline(&format!("{}\n{}", q::EXPORT, q::quantize_stage("token", "dynamic", None, "per_token = true")));
    ws.make_ok();
    let r = ws.json("out/token/quantize.json");
    assert_eq!(r["per_token"], true);
    assert_eq!(r["verified"], 4 * cfg.n_layer + 1, "{}", r["written"]);
    assert_eq!(r["ort"]["integer_matmul_kernels"], 4 * cfg.n_layer + 1, "{}", r["ort"]["kernels"]);
    let fq = q::fake_weights(&cfg, &w);
    let ids = q::corpus_ids(cfg.vocab_size);
    let model = ws.path("out/token/prefill/model.onnx");
    let mut agree = 0;
    for p in 0..q::PROMPTS {
        let prompt = &ids[p..p + 1 + p % 40];
        let fp32 = q::forward(&cfg, &w, None, &Quant::Float, prompt).logits;
        let fake = q::forward(&cfg, &w, Some(&fq), &Quant::PerToken, prompt).logits;
        let got = q::ort_logits(&model, prompt);
        let (off, scale) = (q::max_abs_diff(&got, &fake), q::max_abs_diff(&fake, &fp32));
        assert!(scale > 1e-6, "the fake-quantized forward differs from fp32");
        if off <= q::INT8_VS_FAKE_QUANT * scale {
            agree += 1;
        }
    }
    assert!(agree * 10 >= q::PROMPTS * 9, "{agree} of {} prompts match the naive per-token forward", q::PROMPTS);
}

/// KL(p ‖ q) of two logit rows, in nats.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    let lse = |r: &[f64]| {
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + r.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    let (lp, lq) = (lse(p), lse(q));
    p.iter().zip(q).map(|(a, b)| (a - lp).exp() * ((a - lp) - (b - lq))).sum()
}

/// The weight each input role's MatMul multiplies by.
fn weight_of(role: Role) -> String {
    role.consumer().0.expect("a weight MatMul")
}

/// `w` with only `role`'s weight fake-quantized (and `lm_head` float unless it is the head).
fn fake_one(cfg: &ModelConfig, w: &Weights, role: Role) -> Weights {
    let all = q::fake_weights(cfg, w);
    let mut one = w.clone();
    one.insert("lm_head".into(), w["token_embd.weight"].clone());
    match role {
        Role::LnF => {
            one.insert("lm_head".into(), all["lm_head"].clone());
        }
        _ => {
            let name = weight_of(role);
            one.insert(name.clone(), all[&name].clone());
        }
    }
    one
}

#[test]
fn the_sensitivity_ranking_matches_a_brute_force_and_the_search_keeps_the_fewest_float() {
    let cfg = q::gpt2();
    let w = random_weights_scaled(&cfg, 7, 1.0);
    let ws = q::workspace(&cfg, &w);
    let auto = |target: &str| {
        format!(
            "{}\n[stages.auto]\nkind = \"quantize\"\n\
             deps = {{ model = \"out/export/prefill\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"lib/libonnxruntime.so\" }}\n\
             scheme = \"dynamic\"\nsensitivity = {{ target = {target}, samples = 4, seq_len = 16, seed = 5, skip = 40 }}\n",
            q::EXPORT
        )
    };
    ws.pipeline(&auto("0.002"));
    ws.make_ok();
    let r = ws.json("out/auto/quantize.json");
    let sens = &r["sensitivity"];
    let ids = q::corpus_ids(cfg.vocab_size);
    let starts: Vec<usize> = sens["sample_starts"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
    assert_eq!(starts.len(), 4);
    assert!(starts.iter().all(|&s| s >= 40 && s + 16 <= ids.len()), "windows after `skip`: {starts:?}");
    let windows: Vec<&[u32]> = starts.iter().map(|&s| &ids[s..s + 16]).collect();

    // Brute force: each weight MatMul quantized alone in the naive forward.
    let float: Vec<Vec<Vec<f64>>> = windows.iter().map(|win| q::forward(&cfg, &w, None, &Quant::Float, win).logits).collect();
    let roles: Vec<Role> = Role::all(cfg.n_layer).into_iter().filter(|r| r.consumer().0.is_some()).collect();
    let mut naive: Vec<(String, f64)> = roles
        .iter()
        .map(|&role| {
            let wq = fake_one(&cfg, &w, role);
            let (mut total, mut n) = (0.0, 0);
            for (win, f) in windows.iter().zip(&float) {
                let got = q::forward(&cfg, &w, Some(&wq), &Quant::DynamicOnly(role), win).logits;
                for t in 0..win.len() - 1 {
                    total += kl(&f[t], &got[t]);
                    n += 1;
                }
            }
            (weight_of(role), total / n as f64)
        })
        .collect();
    naive.sort_by(|a, b| b.1.total_cmp(&a.1));
    let ranking: Vec<(String, f64)> = sens["ranking"].as_array().unwrap().iter().map(|x| (x["weight"].as_str().unwrap().to_string(), q::f(&x["kl"]))).collect();
    eprintln!("ranking (tr118 vs brute force):");
    for (a, b) in ranking.iter().zip(&naive) {
        eprintln!("  {:<24} {:.4e}   {:<24} {:.4e}", a.0, a.1, b.0, b.1);
    }
    assert_eq!(ranking.len(), naive.len());
    for (a, b) in ranking.iter().zip(&naive) {
        assert_eq!(a.0, b.0, "same order");
        assert!((a.1 - b.1).abs() <= 0.1 * b.1, "{}: KL {} vs brute force {}", a.0, a.1, b.1);
    }

    // The search: the chosen k meets the target, k − 1 misses it, and exactly those ops are
    // float in the written model.
    let target = q::f(&sens["target"]);
    let steps: Vec<(usize, f64, bool)> =
        sens["steps"].as_array().unwrap().iter().map(|s| (s["float_ops"].as_u64().unwrap() as usize, q::f(&s["ppl_change"]), s["meets"] == true)).collect();
    let k = sens["exclude"].as_array().unwrap().len();
    eprintln!("target {target}: {k} float; steps {steps:?}");
    assert!(k > 0 && k < ranking.len(), "the target should need some but not all ops float: pick another target ({steps:?})");
    let at = |k: usize| steps.iter().find(|s| s.0 == k).unwrap_or_else(|| panic!("k = {k} not evaluated: {steps:?}"));
    assert!(at(k).2 && at(k).1 <= target);
    assert!(!at(k - 1).2 && at(k - 1).1 > target);
    let float: Vec<&str> =
        r["left_float"].as_array().unwrap().iter().filter(|x| x["reason"].as_str().unwrap().contains("exclude")).map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(float.len(), k, "{float:?}");
    let excluded: Vec<&str> = sens["exclude"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(excluded, ranking[..k].iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), "the k most sensitive, by weight");
}

#[test]
fn bad_recipes_are_clear_errors() {
    let cfg = q::gpt2();
    let ws = q::workspace(&cfg, &random_weights_scaled(&cfg, 7, 0.25));
    let cal = Some("out/calibrate/calibration.json");
    let cases: Vec<(String, &str)> = vec![
        (q::quantize_stage("x", "dynamic", cal, "smooth_alpha = 1.5"), "`smooth_alpha` must be a number in (0, 1], found 1.5"),
        (q::quantize_stage("x", "dynamic", cal, "smooth_alpha = 0"), "`smooth_alpha` must be a number in (0, 1], found 0"),
        (q::quantize_stage("x", "dynamic", None, "smooth_alpha = 0.5"), "`smooth_alpha` needs a dep named `calibration`"),
        (q::quantize_stage("x", "static", cal, "per_token = true"), "`per_token` applies to `scheme = \"dynamic\"`"),
        (q::quantize_stage("x", "dynamic", None, "sensitivity = { target = 0.01 }"), "`sensitivity` needs a dep named `tokenizer`"),
        (q::quantize_stage("x", "dynamic", None, "sensitivity = { target = 0.01, sample = 4 }"), "unknown key `sample` in `sensitivity`"),
        (q::quantize_stage("x", "dynamic", None, "sensitivity = { samples = 4 }"), "`sensitivity` needs a `target`"),
        (q::quantize_stage("x", "dynamic", None, "exclude = [\"blk.9.*\"]"), "match no MatMul/Gemm"),
    ];
    for (stage, message) in cases {
        ws.pipeline(&format!("{}\n{}\n{stage}", q::EXPORT, q::calibrate_stage("calibrate", "method = \"minmax\"")));
        let run = ws.tr(&["make", "x"]);
        run.stderr_has(message);
        assert_ne!(run.code, Some(0), "{stage}");
    }
}

#[test]
fn a_smoothed_per_token_decoder_takes_the_prefills_migration_and_computes_its_logits() {
    let cfg = reference::tiny_llama(RopeLayout::Interleaved);
    let w = random_weights_scaled(&cfg, 9, 0.25);
    let ws = q::workspace(&cfg, &w);
    let both = q::EXPORT.replace("variants = [\"prefill\"]", "variants = [\"prefill\", \"decoder\"]");
    let stage = q::quantize_stage("recipe", "dynamic", Some("out/calibrate/calibration.json"), "per_token = true\nsmooth_alpha = 0.5")
        .replace("deps = { model = \"out/export/prefill\",", "deps = { model = \"out/export/prefill\", decoder = \"out/export/decoder\",");
    ws.pipeline(&format!("{both}\n{}\n{stage}", q::calibrate_stage("calibrate", "method = \"minmax\"")));
    ws.make_ok();
    let r = ws.json("out/recipe/quantize.json");
    assert_eq!(r["decoder"]["quantized"], r["quantized"], "{r}");
    assert_eq!(r["decoder"]["verified"], r["quantized"], "{r}");
    // The decoder holds the prefill's migrated weights, not the checkpoint's.
    for name in ["blk.0.attn_norm.weight", "blk.1.ffn_norm.weight"] {
        let prefill = written_initializer(&ws.path("out/recipe/prefill/model.onnx"), name);
        let decoder = written_initializer(&ws.path("out/recipe/decoder/model.onnx"), name);
        assert_eq!(prefill, decoder, "{name}");
        assert_ne!(decoder, w[name].1, "{name} was migrated");
    }
    // The prompt in one step: the same rows as the prefill, so the same per-token ranges.
    let ids = q::corpus_ids(cfg.vocab_size);
    let prefill = q::ort_logits(&ws.path("out/recipe/prefill/model.onnx"), &ids[..9]);
    let session = crate::support::ort().session(&ws.path("out/recipe/decoder/model.onnx"), &tr118::runtime::SessionOptions::default()).unwrap();
    let mut decoder = tr118::runtime::Decoder::new(session).unwrap();
    let prompt: Vec<i64> = ids[..9].iter().map(|&i| i64::from(i)).collect();
    let mut cache = decoder.empty_cache(1).unwrap();
    let logits = decoder.step(&mut cache, &prompt, 9).unwrap();
    let rows: Vec<Vec<f64>> =
        logits.outer_iter().flat_map(|b| b.outer_iter().map(|r| r.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>()).collect::<Vec<_>>()).collect();
    let diff = q::max_abs_diff(&rows, &prefill);
    assert!(diff <= 1e-4 * q::std_dev(&prefill), "one 9-token decoder step differs from the prefill by {diff}");
}
