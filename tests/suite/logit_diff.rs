//! The `logit_diff` stage and the backend capability probe, end to end: the real binary
//! exports a tiny random GPT-2 (fp32 and fp16), then compares each backend's logits with the
//! fp32 reference on prompts tokenised by a small word-level tokenizer written here.
//!
//! | rule                                                    | checked against                                   |
//! |---------------------------------------------------------|---------------------------------------------------|
//! | the same model differs by nothing                       | 0 (< 1e-6), argmax agreement 1                    |
//! | the probe puts every node on the CPU, and counts them   | the ONNX graph's nodes (optimisations off)        |
//! | fp16 differs a little, and by the right amount          | both ONNX files run here through `tr118::runtime` |
//! | `cuda` where the library has no CUDA is degraded        | the record, the JSON (null numbers), the CSV      |
//! | a `logit_diff` stage without a backend axis             | a pipeline error                                  |

use std::fs;
use std::path::Path;

use crate::support;
use crate::support::reference::{gpt2, random_weights_scaled};
use crate::support::workspace::Workspace;
use prost::Message;
use serde_json::Value;
use tr118::model::ModelConfig;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::runtime::SessionOptions;

/// Words of the tokenizer, id = position; everything else is `[UNK]` (0).
const WORDS: &[&str] = &["[UNK]", "the", "capital", "of", "france", "is", "a", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "and"];
const PROMPTS: [&str; 3] = ["the capital of france is", "a cat sat on the mat", "the dog ran far away and the cat sat"];

fn config() -> ModelConfig {
    gpt2(64, 2, 16, 32)
}

/// A word-level tokenizer.json whose vocabulary is the model's: [`WORDS`], then filler.
fn tokenizer_json(vocab_size: usize) -> String {
    let mut vocab = serde_json::Map::new();
    for i in 0..vocab_size {
        let word = WORDS.get(i).map_or_else(|| format!("filler{i}"), |w| w.to_string());
        vocab.insert(word, Value::from(i));
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": { "type": "Lowercase" },
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]" }
    })
    .to_string()
}

/// The ids the tokenizer above gives `prompt`, computed without it.
fn ids_of(prompt: &str) -> Vec<i64> {
    prompt.split_whitespace().map(|w| WORDS.iter().position(|x| *x == w.to_lowercase()).unwrap_or(0) as i64).collect()
}

/// A workspace with `model.gguf` (random weights, std 0.25 so logits spread over units) and
/// `tokenizer.json`, and a pipeline that exports it as fp32 and fp16 prefill models; the
/// binary runs with `ORT_DYLIB_PATH` set to the test's library.
fn workspace(stages: &str) -> Workspace {
    let ws = Workspace::new("tr118-logit-diff-").env("ORT_DYLIB_PATH", support::ort_library());
    let cfg = config();
    let weights = random_weights_scaled(&cfg, 30, 0.25);
    let tensors = crate::support::reference::writer_tensors(&cfg, &weights);
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).expect("write model.gguf");
    fs::write(ws.path("tokenizer.json"), tokenizer_json(cfg.vocab_size)).expect("write tokenizer.json");
    let exports = r#"
[stages.export32]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill"]
tokenizer = false

[stages.export16]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill"]
precision = "fp16"
tokenizer = false
"#;
    fs::write(ws.path("tr118.toml"), format!("{stages}\n{exports}")).expect("write tr118.toml");
    ws
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The `[[backends]]` and a `diff` stage comparing `model` with the fp32 export.
fn diff_stage(backends: &str, model: &str) -> String {
    format!(
        r#"{backends}
[stages.diff]
kind = "logit_diff"
matrix = ["backend"]
deps = {{ model = "{model}", reference_model = "out/export32/prefill", tokenizer = "tokenizer.json" }}
prompts = {prompts:?}
"#,
        prompts = PROMPTS
    )
}

/// Nodes of the ONNX graph ONNX Runtime keeps as nodes with optimisations off (it turns
/// `Constant`s into initializers).
fn graph_nodes(model: &Path) -> usize {
    let bytes = fs::read(model).expect("read the model");
    let proto = tr118::onnx::proto::ModelProto::decode(bytes.as_slice()).expect("decode the model");
    proto.graph.expect("a graph").node.iter().filter(|n| n.op_type.as_deref() != Some("Constant")).count()
}

#[test]
fn identical_model_differs_by_nothing_and_every_node_runs_on_the_cpu() {
    let backends = r#"
[[backends]]
name = "cpu"
threads = 1

[[backends]]
name = "cpu-noopt"
threads = 1
opt_level = "disable"
"#;
    let ws = workspace(&diff_stage(backends, "out/export32/prefill"));
    let m = ws.make();
    assert_eq!(m.run.code, Some(0), "{}", m.run.stderr);
    assert_eq!((m.status("diff/cpu"), m.status("diff/cpu-noopt")), ("ok", "ok"), "{}", m.run.stderr);

    let graph = graph_nodes(&ws.path("out/export32/prefill/model.onnx"));
    for backend in ["cpu", "cpu-noopt"] {
        let report = ws.json(&format!("out/diff/{backend}/logit_diff.json"));
        assert_eq!(report["status"], "ok");
        assert_eq!(report["backend"], backend);
        assert_eq!(report["prompts"].as_array().unwrap().len(), PROMPTS.len());
        for p in report["prompts"].as_array().unwrap() {
            for part in ["last_token", "all_positions"] {
                assert!(f(&p[part]["max_abs_diff"]) < 1e-6, "{backend} {part}: {p}");
                assert!(f(&p[part]["mean_abs_diff"]) < 1e-6, "{backend} {part}: {p}");
                assert_eq!(f(&p[part]["argmax_agreement_rate"]), 1.0);
            }
            assert_eq!(p["last_token"]["argmax"], p["last_token"]["reference_argmax"]);
        }
        assert!(f(&report["overall"]["all_positions"]["max_abs_diff"]) < 1e-6);
        assert_eq!(f(&report["overall"]["last_token"]["argmax_agreement_rate"]), 1.0);

        let cap = &report["capability"];
        assert_eq!(cap["provider_requested"], "cpu");
        let assigned = cap["providers_assigned"].as_object().unwrap();
        assert_eq!(assigned.keys().collect::<Vec<_>>(), ["CPUExecutionProvider"], "{cap}");
        let n = assigned["CPUExecutionProvider"].as_u64().unwrap() as usize;
        assert!(n > 0);
        if backend == "cpu-noopt" {
            assert_eq!(n, graph, "with optimisations off every graph node runs once");
        } else {
            assert!(n <= graph, "fusions only remove nodes: {n} > {graph}");
        }
        assert!(cap["gpu"].is_null(), "no GPU here: {cap}");
        assert!(cap["cpu_logical_threads"].as_u64().unwrap() >= 1);

        let csv = fs::read_to_string(ws.path(&format!("out/diff/{backend}/logit_diff.csv"))).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 1 + PROMPTS.len() + 1, "header, one row per prompt, overall:\n{csv}");
        assert!(lines[0].starts_with("backend,prompt,tokens,last_mean_abs_diff"));
        assert!(lines.last().unwrap().starts_with(&format!("{backend},overall,")));
    }
}

#[test]
fn fp16_differs_a_little_and_by_what_the_runtime_says() {
    let backends = "[[backends]]\nname = \"cpu-fp16\"\nprecision = \"fp16\"\nthreads = 1\n";
    let ws = workspace(&diff_stage(backends, "out/export16/prefill"));
    let m = ws.make();
    assert_eq!(m.run.code, Some(0), "{}", m.run.stderr);
    assert_eq!(m.status("diff/cpu-fp16"), "ok");
    let report = ws.json("out/diff/cpu-fp16/logit_diff.json");

    // The same numbers, computed here from the two ONNX files.
    let opts = SessionOptions { intra_threads: Some(1), ..SessionOptions::default() };
    let mut s32 = support::ort().session(&ws.path("out/export32/prefill/model.onnx"), &opts).unwrap();
    let mut s16 = support::ort().session(&ws.path("out/export16/prefill/model.onnx"), &opts).unwrap();
    let (mut all_max, mut largest) = (0.0f64, 0.0f64);
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let ids = ids_of(prompt);
        let mask = vec![1; ids.len()];
        let want = s32.run_prefill(&ids, &mask, 1, ids.len()).unwrap();
        let got = s16.run_prefill(&ids, &mask, 1, ids.len()).unwrap();
        let vocab = want.shape()[2];
        let (w, g) = (want.iter().copied().collect::<Vec<f32>>(), got.iter().copied().collect::<Vec<f32>>());
        let diffs: Vec<f64> = w.iter().zip(&g).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).collect();
        let max = diffs.iter().copied().fold(0.0, f64::max);
        let last = &diffs[diffs.len() - vocab..];
        let last_max = last.iter().copied().fold(0.0, f64::max);
        let last_mean = last.iter().sum::<f64>() / vocab as f64;
        largest = w.iter().fold(largest, |m, v| m.max(f64::from(v.abs())));

        let p = &report["prompts"][i];
        assert_eq!(p["prompt"], *prompt);
        assert_eq!(p["tokens"].as_u64(), Some(ids.len() as u64), "the stage tokenises as the tokenizer says");
        let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{prompt:?} {what}: stage {a}, here {b}");
        close(f(&p["all_positions"]["max_abs_diff"]), max, "all-position max");
        close(f(&p["last_token"]["max_abs_diff"]), last_max, "last-token max");
        close(f(&p["last_token"]["mean_abs_diff"]), last_mean, "last-token mean");
        all_max = all_max.max(max);
    }
    let overall = f(&report["overall"]["all_positions"]["max_abs_diff"]);
    assert!((overall - all_max).abs() <= 1e-6 + 1e-4 * all_max, "overall {overall}, here {all_max}");
    assert!(largest > 1.0, "logits spread over units ({largest}), so a diff of 0 would mean something");
    assert!(overall > 0.0, "fp16 weights change the logits");
    assert!(overall < 1e-2 * largest, "fp16 moves logits by {overall}, more than 1% of the largest ({largest})");
}

#[test]
fn cuda_backend_without_cuda_is_degraded_with_the_reason() {
    let backends = "[[backends]]\nname = \"gpu\"\nprovider = \"cuda\"\n";
    let ws = workspace(&diff_stage(backends, "out/export32/prefill"));
    let m = ws.make();
    assert_eq!(m.run.code, Some(0), "a degraded node is not a failure: {}", m.run.stderr);
    assert_eq!(m.status("diff/gpu"), "degraded");
    let detail = m.record("diff/gpu").detail.as_deref().unwrap_or("");
    assert!(detail.contains("`cuda` is not available"), "{detail}");

    let report = ws.json("out/diff/gpu/logit_diff.json");
    assert_eq!(report["status"], "degraded");
    assert_eq!(report["reason"], detail);
    for p in report["prompts"].as_array().unwrap() {
        assert!(p["last_token"]["max_abs_diff"].is_null() && p["all_positions"]["mean_abs_diff"].is_null(), "{p}");
        assert!(p["tokens"].as_u64().unwrap() > 0);
    }
    assert!(report["overall"]["last_token"]["mean_abs_diff"].is_null());
    let csv = fs::read_to_string(ws.path("out/diff/gpu/logit_diff.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().ends_with(",,,,,,"), "null numbers are empty cells:\n{csv}");
}

#[test]
fn logit_diff_without_a_backend_axis_is_a_pipeline_error() {
    let stage = r#"
[stages.diff]
kind = "logit_diff"
deps = { model = "out/export32/prefill", reference_model = "out/export32/prefill", tokenizer = "tokenizer.json" }
"#;
    let ws = workspace(stage);
    let m = ws.make();
    assert_eq!(m.run.code, Some(2), "{}", m.run.stderr);
    assert!(m.run.stderr.contains("a `logit_diff` stage runs once per backend"), "{}", m.run.stderr);
}
