//! The reduced study: the default study's shape on a tiny random Llama that runs in
//! milliseconds — two CPU backends (one with its own INT8 model) and a degraded CUDA one,
//! through export, quantize, perplexity, the gate, logit diffs, prefill and KV-cached sweeps,
//! statistics and the report. [`workspace_with`] adds backends and stages for tests that need more kinds.

use std::fs;

use super::reference::{Rng, random_weights_scaled, tiny_llama};
use super::workspace::Workspace;
use tr118::model::RopeLayout;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;

pub const BACKENDS: &str = r#"
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

/// The pipeline, with `extra` appended (backends or stages).
pub fn pipeline(lib: &str, extra: &str) -> String {
    let common = format!("tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\"");
    format!(
        r#"{BACKENDS}
[stages.export]
kind = "export"
deps = {{ checkpoint = "model.gguf" }}
variants = ["prefill", "decoder", "hf"]
tokenizer = false

[stages.quantize]
kind = "quantize"
deps = {{ model = "out/export/prefill", decoder = "out/export/decoder", runtime = "{lib}" }}
scheme = "dynamic"

[stages.perplexity]
kind = "perplexity"
matrix = ["backend"]
deps = {{ model = "{{matrix.backend.prefill}}", {common} }}
context = 16

[stages.accuracy]
kind = "gate"
deps = {{ results = "out/perplexity/*/perplexity.json" }}
reference = "cpu"

[stages.logits]
kind = "logit_diff"
matrix = ["backend"]
deps = {{ model = "{{matrix.backend.prefill}}", reference_model = "out/export/prefill", tokenizer = "tokenizer.json", runtime = "{lib}" }}
prompts = ["t1 t2 t3", "t4 t5"]

[stages.sweep]
kind = "sweep"
matrix = {{ backend = "backend", mode = ["prefill", "generate"] }}
mode = "{{matrix.mode}}"
deps = {{ prefill = "{{matrix.backend.prefill}}", decoder = "{{matrix.backend.decoder}}", {common} }}
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
deps = {{ stats = "out/stats/stats.json", runs = "out/sweep/*/*/runs.jsonl", sweeps = "out/sweep/*/*/sweep.json", perplexity = "out/perplexity/*/perplexity.json", gate = "out/accuracy/gate.json", logits = "out/logits/*/logit_diff.json", export = "out/export/export.json", quantize = "out/quantize/quantize.json" }}
{extra}
"#
    )
}

/// The reduced study in a new workspace whose directory starts with `prefix`.
pub fn workspace(prefix: &str) -> Workspace {
    workspace_with(prefix, "")
}

/// [`workspace`] with `extra` appended to the pipeline.
pub fn workspace_with(prefix: &str, extra: &str) -> Workspace {
    let ws = Workspace::new(prefix);
    let cfg = tiny_llama(RopeLayout::Interleaved);
    let w = random_weights_scaled(&cfg, 3, 0.5);
    let tensors = super::reference::writer_tensors(&cfg, &w);
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", super::word_tokenizer_json(cfg.vocab_size));
    let mut rng = Rng::new(9);
    let words: Vec<String> = (0..80).map(|_| format!("t{}", rng.next_u64() % cfg.vocab_size as u64)).collect();
    ws.write("corpus.txt", words.join(" "));
    let lib = super::ort_library();
    ws.write("lib/libonnxruntime.so", fs::read(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display())));
    ws.write("tr118.toml", pipeline("lib/libonnxruntime.so", extra));
    ws
}
