//! The `perplexity` and `gate` stages end to end: the real binary exports a tiny random Llama,
//! scores a corpus with it through ONNX Runtime, and gates the backends against each other.
//!
//! | check                                                   | against                                           |
//! |---------------------------------------------------------|---------------------------------------------------|
//! | mean NLL for several (context, stride, batch, max_tokens) | NLL of the naive f64 forward (`support::reference`) over windows computed here, 1e-5 relative |
//! | a `cuda` backend on the CPU-only library                | degraded, with the provider named, null numbers; a cache hit stays degraded |
//! | the gate                                                | same model passes, fp16 under a tight threshold fails, degraded is `pass = null`; `fail_on_gate` exits 1 |
//! | editing one backend's `threads`                         | reruns that backend's node and the gate, nothing else |
//! | a rerun that scores the same writes the same bytes (no timing in the result) | the file, the gate a cache hit |
//!
//! The tokenizer is a word-level `tokenizer.json` written here (`t0` … `t{V-1}` → id), so the
//! test knows the corpus's token ids without trusting the stage's tokenisation.

use std::fs;
use std::sync::OnceLock;

use crate::support;
use crate::support::reference::{self, Rng, Weights, random_weights_scaled};
use crate::support::workspace::Workspace;
use serde_json::json;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::model::{Arch, ModelConfig, RopeLayout};

/// Mean NLL of the stage against the f64 reference.
const REL_TOL: f64 = 1e-5;
/// Corpus length in tokens.
const CORPUS_TOKENS: usize = 47;

// ---------------------------------------------------------------------------------------
// The model, tokenizer, corpus and runtime of every workspace
// ---------------------------------------------------------------------------------------

fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 37,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        d_model: 32,
        d_ff: 48,
        n_ctx: 64,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        // GGUF stores Llama with interleaved rotary pairs (llama.cpp's layout).
        rope_layout: RopeLayout::Interleaved,
        tied_embeddings: false,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| random_weights_scaled(&config(), 40, 0.25))
}

/// The corpus's token ids: seeded, every id possible.
fn corpus_ids() -> Vec<u32> {
    let mut rng = Rng::new(70);
    (0..CORPUS_TOKENS).map(|_| (rng.next_u64() % config().vocab_size as u64) as u32).collect()
}

/// The ids as words, split over two Wikipedia-extract documents whose `<doc>` lines the stage
/// must drop.
fn corpus_text(ids: &[u32]) -> String {
    let words: Vec<String> = ids.iter().map(|i| format!("t{i}")).collect();
    let (a, b) = words.split_at(20);
    format!("<doc id=\"1\" title=\"A\">\n{}\n{}\n</doc>\n<doc id=\"2\" title=\"B\">\n{}\n</doc>\n", a[..9].join(" "), a[9..].join(" "), b.join(" "))
}

/// A workspace with `model.gguf`, `tokenizer.json`, `corpus.txt` and `lib/<ort library>`.
/// Returns it and the library's path relative to the root.
fn workspace() -> (Workspace, String) {
    let ws = Workspace::new("tr118-ppl-");
    let cfg = config();
    let tensors = reference::writer_tensors(&cfg, weights());
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    ws.write("corpus.txt", corpus_text(&corpus_ids()));
    let lib = support::ort_library();
    let rel = format!("lib/{}", lib.file_name().unwrap().to_string_lossy());
    fs::create_dir_all(ws.path("lib")).unwrap();
    fs::copy(lib, ws.path(&rel)).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    (ws, rel)
}

/// Export stages `export-fp32` and `export-fp16` (prefill only, no tokenizer).
const EXPORTS: &str = r#"
[stages.export-fp32]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill"]
tokenizer = false

[stages.export-fp16]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill"]
precision = "fp16"
tokenizer = false
"#;

/// A perplexity stage `name` over the backend axis, with `fields`; each backend runs the
/// export of its `precision` (which every backend here declares, for the placeholder).
fn ppl_stage(name: &str, lib: &str, fields: &str) -> String {
    format!(
        "[stages.{name}]\nkind = \"perplexity\"\nmatrix = [\"backend\"]\n\
         deps = {{ model = \"out/export-{{matrix.backend.precision}}/prefill\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\" }}\n{fields}\n"
    )
}

// ---------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------

/// Hugging Face's sliding-window recipe, written out independently of the stage: for each
/// window, labels are the window's tokens with all but the last `end - prev_end` masked, and
/// logits at `i - 1` predict label `i`. Returns (mean NLL, targets scored, windows).
fn reference_nll(ids: &[u32], context: usize, stride: usize) -> (f64, usize, usize) {
    let cfg = config();
    let (mut total, mut count, mut windows) = (0.0f64, 0usize, 0usize);
    let mut prev_end = 0;
    for begin in (0..ids.len()).step_by(stride) {
        let end = (begin + context).min(ids.len());
        let trg_len = end - prev_end;
        let window = &ids[begin..end];
        let logits = reference::forward(&cfg, weights(), window);
        windows += 1;
        let labels: Vec<Option<u32>> = window.iter().enumerate().map(|(i, &t)| (i >= window.len() - trg_len).then_some(t)).collect();
        for i in 1..window.len() {
            let Some(label) = labels[i] else { continue };
            let row: Vec<f64> = logits[i - 1].iter().map(|&x| f64::from(x)).collect();
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
            total += lse - row[label as usize];
            count += 1;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
    }
    (total / count as f64, count, windows)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn perplexity_matches_the_reference_forward_over_sliding_windows() {
    let (ws, lib) = workspace();
    // (stage, context, stride, batch, max_tokens)
    let cases: &[(&str, usize, usize, usize, Option<usize>)] = &[
        ("overlap", 8, 4, 1, None),
        ("uneven", 8, 3, 1, None),
        ("disjoint", 8, 8, 1, None),
        ("long", 16, 5, 1, None),
        ("batched", 8, 3, 3, None),
        ("capped", 12, 6, 2, Some(30)),
        ("whole", 64, 32, 1, None),
    ];
    let mut toml = String::from("[[backends]]\nname = \"cpu\"\nprecision = \"fp32\"\nthreads = 1\n");
    toml.push_str(EXPORTS);
    for (name, context, stride, batch, max) in cases {
        let max = max.map_or(String::new(), |m| format!("max_tokens = {m}\n"));
        toml.push_str(&ppl_stage(name, &lib, &format!("context = {context}\nstride = {stride}\nbatch = {batch}\n{max}")));
    }
    ws.write("tr118.toml", toml);
    ws.make_ok();

    let ids = corpus_ids();
    for (name, context, stride, _batch, max) in cases {
        let ids = &ids[..max.unwrap_or(ids.len())];
        let (want, scored, windows) = reference_nll(ids, *context, *stride);
        let got = ws.json(&format!("out/{name}/cpu/perplexity.json"));
        assert_eq!(got["status"], "ok", "{name}: {got}");
        assert_eq!(got["corpus_tokens"], ids.len(), "{name}");
        assert_eq!(got["tokens_scored"], scored, "{name}: targets scored");
        assert_eq!(got["windows"], windows, "{name}: windows");
        let nll = got["mean_nll"].as_f64().unwrap();
        let rel = (nll - want).abs() / want;
        eprintln!("{name}: mean NLL {nll:.8} vs reference {want:.8} (rel {rel:.1e}), {scored} targets in {windows} windows");
        assert!(rel <= REL_TOL, "{name}: mean NLL {nll} vs reference {want}: relative difference {rel:.2e}");
        assert!((got["ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-9 * nll.exp());
        assert_eq!(got["vocab_size"], config().vocab_size);
        assert_eq!(got["uniform_ppl"].as_f64(), Some(config().vocab_size as f64));
        assert_eq!(got["capability"]["provider_requested"], "cpu");
        let csv = fs::read_to_string(ws.path(&format!("out/{name}/cpu/perplexity.csv"))).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "{name}: header and one row\n{csv}");
        assert!(lines[0].starts_with("backend,precision,provider,"), "{csv}");
        assert!(lines[1].starts_with("cpu,fp32,cpu,"), "{csv}");
    }
    // With overlapping windows every token but the first is scored; with disjoint ones, each
    // window's first token is lost (the recipe's known edge).
    assert_eq!(reference_nll(&ids, 8, 4).1, ids.len() - 1);
    assert_eq!(reference_nll(&ids, 8, 8).1, ids.len() - ids.len().div_ceil(8));
}

#[test]
fn an_unavailable_provider_is_degraded_with_its_reason_and_cached_as_such() {
    let (ws, lib) = workspace();
    let mut toml = String::from("[[backends]]\nname = \"gpu\"\nprovider = \"cuda\"\nprecision = \"fp32\"\n");
    toml.push_str(EXPORTS);
    toml.push_str(&ppl_stage("perplexity", &lib, "context = 8"));
    ws.write("tr118.toml", toml);

    let first = ws.make_ok();
    let rec = first.record("perplexity/gpu");
    assert_eq!(rec.status, "degraded", "{}", first.run);
    assert!(rec.detail.as_deref().unwrap_or("").contains("cuda"), "reason names the provider: {rec:?}");
    let got = ws.json("out/perplexity/gpu/perplexity.json");
    assert_eq!(got["status"], "degraded");
    assert!(got["reason"].as_str().unwrap().contains("cuda"), "{got}");
    for field in ["ppl", "mean_nll", "tokens_scored", "windows", "vocab_size"] {
        assert!(got[field].is_null(), "a degraded result has no `{field}`: {got}");
    }

    let second = ws.make_ok();
    let rec = second.record("perplexity/gpu");
    assert_eq!(rec.cache, "hit", "{}", second.run);
    assert_eq!(rec.status, "degraded", "{}", second.run);
    assert!(rec.detail.as_deref().unwrap_or("").contains("cuda"), "{rec:?}");
}

/// Backends `ref` and `same` (fp32, one model), `half` (the fp16 export), `gpu` (cuda).
fn gate_pipeline(lib: &str, same_threads: usize, fail_on_gate: bool) -> String {
    let mut toml = format!(
        "[[backends]]\nname = \"ref\"\nprecision = \"fp32\"\nthreads = 1\n\n\
         [[backends]]\nname = \"same\"\nprecision = \"fp32\"\nthreads = {same_threads}\n\n\
         [[backends]]\nname = \"half\"\nprecision = \"fp16\"\nthreads = 1\n\n\
         [[backends]]\nname = \"gpu\"\nprovider = \"cuda\"\nprecision = \"fp32\"\n"
    );
    toml.push_str(EXPORTS);
    toml.push_str(&ppl_stage("perplexity", lib, "context = 16\nstride = 8"));
    toml.push_str(&format!(
        "[stages.gate]\nkind = \"gate\"\ndeps = {{ results = \"out/perplexity/*/perplexity.json\" }}\n\
         reference = \"ref\"\nthresholds = {{ fp16 = 1e-9 }}\nfail_on_gate = {fail_on_gate}\n"
    ));
    toml
}

#[test]
fn the_gate_passes_equal_backends_fails_a_distant_one_and_leaves_degraded_ones_undecided() {
    let (ws, lib) = workspace();
    ws.write("tr118.toml", gate_pipeline(&lib, 2, false));
    let m = ws.make_ok();
    assert_eq!(m.record("gate").status, "ok", "{}", m.run);

    let gate = ws.json("out/gate/gate.json");
    let ppl = |b: &str| ws.json(&format!("out/perplexity/{b}/perplexity.json"))["ppl"].as_f64().unwrap();
    let row = |b: &str| gate["backends"].as_array().unwrap().iter().find(|r| r["backend"] == b).unwrap_or_else(|| panic!("no `{b}` in {gate}")).clone();
    assert_eq!(gate["status"], "ok", "{gate}");
    assert_eq!(gate["reference_ppl"].as_f64(), Some(ppl("ref")));
    assert_eq!(gate["thresholds"], json!({ "fp32": 1e-3, "fp16": 1e-9, "int8": 2e-2 }));

    for b in ["ref", "same"] {
        let r = row(b);
        assert_eq!(r["pass"], true, "{r}");
        assert_eq!(r["threshold"].as_f64(), Some(1e-3));
        assert!(r["rel_delta"].as_f64().unwrap() <= 1e-6, "{r}");
    }
    let half = row("half");
    let want = (ppl("half") - ppl("ref")).abs() / ppl("ref");
    assert_eq!(half["pass"], false, "{half}");
    assert!((half["rel_delta"].as_f64().unwrap() - want).abs() <= 1e-12, "{half} vs {want}");
    assert!(want > 1e-9 && want < 1e-2, "fp16 should move the PPL a little: {want}");
    let gpu = row("gpu");
    assert_eq!(gpu["status"], "degraded");
    assert!(gpu["pass"].is_null(), "{gpu}");
    assert!(gpu["reason"].as_str().unwrap().contains("cuda"), "{gpu}");
    assert_eq!(gate["failed"], json!(["half"]));
    let csv = fs::read_to_string(ws.path("out/gate/gate.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "header and four backends\n{csv}");
    assert!(csv.lines().any(|l| l.starts_with("half,fp16,ok,,") && l.ends_with(",false")), "{csv}");

    // `fail_on_gate` turns the failure into a failed node, naming the backend.
    ws.write("tr118.toml", gate_pipeline(&lib, 2, true));
    let m = ws.make();
    assert_eq!(m.run.code, Some(1), "{}", m.run);
    let rec = m.record("gate");
    assert_eq!(rec.status, "failed", "{}", m.run);
    assert!(rec.detail.as_deref().unwrap_or("").contains("`half`"), "{rec:?}");
}

#[test]
fn a_missing_reference_degrades_the_gate() {
    let (ws, lib) = workspace();
    let toml = gate_pipeline(&lib, 1, false).replace("reference = \"ref\"", "reference = \"gpu\"");
    ws.write("tr118.toml", toml);
    let m = ws.make_ok();
    let rec = m.record("gate");
    assert_eq!(rec.status, "degraded", "{}", m.run);
    assert!(rec.detail.as_deref().unwrap_or("").contains("`gpu` is degraded"), "{rec:?}");
    let gate = ws.json("out/gate/gate.json");
    assert!(gate["backends"].as_array().unwrap().iter().all(|r| r["pass"].is_null()), "{gate}");
}

#[test]
fn editing_a_backend_reruns_only_its_perplexity_node_and_the_gate() {
    let (ws, lib) = workspace();
    ws.write("tr118.toml", gate_pipeline(&lib, 2, false));
    ws.make_ok();
    ws.write("tr118.toml", gate_pipeline(&lib, 1, false));
    let m = ws.make_ok();
    assert_eq!(m.misses(), ["gate", "perplexity/same"], "{}", m.run);
}

#[test]
fn a_perplexity_that_reruns_and_scores_the_same_is_the_same_file_and_the_gate_a_hit() {
    let (ws, lib) = workspace();
    ws.write("tr118.toml", gate_pipeline(&lib, 2, false));
    ws.make_ok();
    let before = ws.read("out/perplexity/ref/perplexity.json");
    let result: serde_json::Value = serde_json::from_slice(&before).unwrap();
    for field in ["elapsed_s", "tokens_per_s"] {
        assert!(result.get(field).is_none(), "a timing is no part of a perplexity result (no machine facet in its key): {result}");
    }

    // Rerun every perplexity node (a stage version bump): the same inputs score the same.
    let toml = gate_pipeline(&lib, 2, false).replace("[stages.perplexity]\n", "[stages.perplexity]\nversion = 1\n");
    ws.write("tr118.toml", toml);
    let m = ws.make_ok();
    assert_eq!(m.ran(), ["perplexity/gpu", "perplexity/half", "perplexity/ref", "perplexity/same"], "{}", m.run);
    assert_eq!(ws.read("out/perplexity/ref/perplexity.json"), before, "the rerun wrote other bytes");
    assert_eq!(m.record("gate").cache, "hit", "the gate's inputs are the same bytes: early cutoff\n{}", m.run);
}

#[test]
fn a_perplexity_stage_without_a_backend_axis_is_an_error_naming_the_fix() {
    let (ws, lib) = workspace();
    let toml = format!("{EXPORTS}{}", ppl_stage("perplexity", &lib, "").replace("matrix = [\"backend\"]\n", "").replace("{matrix.backend.precision}", "fp32"));
    ws.write("tr118.toml", toml);
    let m = ws.make();
    assert_eq!(m.run.code, Some(2), "{}", m.run);
    assert!(m.run.stderr.contains("no `backend` axis") && m.run.stderr.contains("matrix = [\"backend\"]"), "{}", m.run);

    let toml = format!("[[backends]]\nname = \"x\"\nprecision = \"fp32\"\nthreads = 0\n{EXPORTS}{}", ppl_stage("perplexity", &lib, "stride = 2000"));
    ws.write("tr118.toml", toml);
    let m = ws.make();
    assert_eq!(m.run.code, Some(2), "{}", m.run);
    assert!(m.run.stderr.contains("backend `x`, field `threads`"), "{}", m.run);
    assert!(m.run.stderr.contains("`stride` (2000) is larger than `context` (1024)"), "{}", m.run);
}
