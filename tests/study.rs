//! A reduced study end to end through `tr118 make report`: a tiny random Llama exported by the
//! binary, two CPU backends (one with its own INT8 model) and a degraded CUDA one, through
//! perplexity, the gate, logit diffs, prefill and KV-cached sweeps, statistics and the report
//! — the default study's shape on a model that runs in milliseconds.
//!
//! | rule                                                        | checked against                                  |
//! |-------------------------------------------------------------|--------------------------------------------------|
//! | the whole study builds and the report covers every backend  | the report's own text: each backend, the degraded reason |
//! | nothing changed: nothing reruns                              | the `--json` records: every node a hit           |
//! | one backend edited: exactly its nodes, the gate, the stats and the report rerun | the set of nodes that ran, written out here |

mod support;

use std::collections::BTreeSet;
use std::fs;

use support::reference::{Rng, random_weights_scaled, tiny_llama};
use support::workspace::Workspace;
use tr118::model::RopeLayout;
use tr118::model::dtype::DType;
use tr118::model::write::{Tensor, write_gguf};

const BACKENDS: &str = r#"
[[backends]]
name = "cpu"
threads = 1
model = "out/export"

[[backends]]
name = "cpu-int8"
precision = "int8"
threads = 1
model = "out/quantize"

[[backends]]
name = "gpu"
provider = "cuda"
model = "out/export"
"#;

fn study(lib: &str) -> String {
    let common = format!("tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\"");
    format!(
        r#"{BACKENDS}
[stages.export]
kind = "export"
deps = {{ checkpoint = "model.gguf" }}
tokenizer = false

[stages.quantize]
kind = "quantize"
deps = {{ model = "out/export/prefill", decoder = "out/export/decoder", runtime = "{lib}" }}
scheme = "dynamic"

[stages.perplexity]
kind = "perplexity"
matrix = ["backend"]
deps = {{ model = "{{matrix.backend.model}}/prefill", {common} }}
context = 16

[stages.accuracy]
kind = "gate"
deps = {{ results = "out/perplexity/*/perplexity.json" }}
reference = "cpu"

[stages.sweep]
kind = "sweep"
matrix = {{ backend = "backend", mode = ["prefill", "generate"] }}
mode = "{{matrix.mode}}"
deps = {{ prefill = "{{matrix.backend.model}}/prefill", decoder = "{{matrix.backend.model}}/decoder", {common} }}
scenarios = [{{ name = "short", prompt_tokens = 4, new_tokens = 3 }}, {{ name = "batch", batch = 2, prompt_tokens = 6, new_tokens = 2 }}]
warmup = 1
reps = 3

[stages.stats]
kind = "stats"
deps = {{ runs = "out/sweep/*/*/runs.jsonl" }}
baseline = "cpu"

[stages.report]
kind = "report"
title = "A reduced study"
deps = {{ stats = "out/stats/stats.json", runs = "out/sweep/*/*/runs.jsonl", sweeps = "out/sweep/*/*/sweep.json", perplexity = "out/perplexity/*/perplexity.json", gate = "out/accuracy/gate.json", export = "out/export/export.json", quantize = "out/quantize/quantize.json" }}
"#
    )
}

fn workspace() -> Workspace {
    let ws = Workspace::new("tr118-study-");
    let cfg = tiny_llama(RopeLayout::Interleaved);
    let w = random_weights_scaled(&cfg, 3, 0.5);
    let tensors: Vec<Tensor> = cfg.expected_tensors().into_iter().map(|(name, shape)| Tensor { data: w[&name].1.clone(), name, shape }).collect();
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    let mut rng = Rng::new(9);
    let words: Vec<String> = (0..80).map(|_| format!("t{}", rng.next_u64() % cfg.vocab_size as u64)).collect();
    ws.write("corpus.txt", words.join(" "));
    let lib = support::ort_library();
    ws.write("lib/libonnxruntime.so", fs::read(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display())));
    ws.write("tr118.toml", study("lib/libonnxruntime.so"));
    ws
}

#[test]
fn a_reduced_study_reports_and_an_edited_backend_reruns_only_its_own_nodes() {
    let ws = workspace();
    let first = ws.make_ok();
    assert_eq!(first.status("report"), "ok", "{}", first.run);
    let report = String::from_utf8(ws.read("out/report/report.md")).unwrap();
    for backend in ["cpu", "cpu-int8", "gpu"] {
        assert!(report.contains(&format!("| {backend} ")) || report.contains(&format!("{backend} (")), "the report names `{backend}`");
    }
    assert!(report.contains("execution provider `cuda` is not available"), "the degraded reason is in the report");
    assert!(ws.read("out/report/report.html").windows(4).any(|w| w == b"<svg"), "the HTML has its charts");

    let again = ws.make_ok();
    assert!(again.ran().is_empty(), "nothing changed, yet {:?} ran\n{}", again.ran(), again.run);

    // Edit one backend: `cpu-int8` gets two threads.
    let toml = fs::read_to_string(ws.path("tr118.toml")).unwrap();
    let edited = toml.replacen("precision = \"int8\"\nthreads = 1", "precision = \"int8\"\nthreads = 2", 1);
    assert_ne!(toml, edited);
    ws.write("tr118.toml", edited);
    ws.tr(&["why", "sweep/cpu-int8/prefill"]).code(0).stdout_has("threads").stdout_has("1 → 2");
    let after = ws.make_ok();
    let ran: BTreeSet<String> = after.ran().into_iter().collect();
    let want: BTreeSet<String> =
        ["perplexity/cpu-int8", "accuracy", "sweep/cpu-int8/prefill", "sweep/cpu-int8/generate", "stats", "report"].into_iter().map(String::from).collect();
    assert_eq!(ran, want, "{}", after.run);
}
