//! `runtime = "torch"` backends through the real binary: the Python worker, its protocol, and
//! what a machine without torch (or without Python) records.
//!
//! | check | against |
//! |---|---|
//! | a worker whose Python has no torch | a degraded record per scenario × rep and a degraded perplexity, each with the worker's reason |
//! | a Python that cannot be started | degraded, naming the interpreter and `TR118_PYTHON` |
//! | the `torch` facet | another torch version reruns the torch backend's nodes and nothing else |
//! | tr118's side of the protocol | exchanges recorded from the real worker (`tests/fixtures/torch-worker/`), replayed by a fake worker that checks every request against the recording: the records carry the recorded latencies, TTFTs and ids |
//! | the worker on a tiny model (where a Python with torch and transformers exists) | ONNX Runtime on the same weights: logits, generated ids, perplexity |
//!
//! The last check needs torch: it runs with `TR118_TEST_PYTHON` or `/opt/venv-torch/bin/python`
//! and says it skipped otherwise. The recordings are made with
//! `TR118_TEST_PYTHON=… TR118_RECORD_DEVICE=cuda cargo test --release --test suite torch::record -- --ignored`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support;
use crate::support::reference::{self, Rng};
use crate::support::workspace::Workspace;
use tr118::measure::RunRecord;
use tr118::model::dtype::DType;
use tr118::model::write::write_hf;
use tr118::model::{ModelConfig, RopeLayout};

fn config() -> ModelConfig {
    ModelConfig { vocab_size: 41, ..reference::tiny_llama(RopeLayout::Half) }
}

fn corpus_ids() -> Vec<u32> {
    let mut rng = Rng::new(5);
    (0..64).map(|_| (rng.next_u64() % config().vocab_size as u64) as u32).collect()
}

const SCENARIOS: &str = "scenarios = [{ name = \"one\", batch = 1, prompt_tokens = 5, new_tokens = 4 }, { name = \"two\", batch = 2, prompt_tokens = 3, new_tokens = 3 }]\nwarmup = 1\nreps = 2\n";

/// A workspace with a tiny Llama as a Hugging Face directory (`model-hf/`), its ONNX export
/// (`out/export/`), a tokenizer, a corpus and ONNX Runtime.
fn workspace(prefix: &str) -> (Workspace, String) {
    let ws = Workspace::new(prefix);
    let cfg = config();
    let w = reference::random_weights_scaled(&cfg, 11, 0.5);
    let tensors = reference::writer_tensors(&cfg, &w);
    write_hf(&ws.path("model-hf"), &cfg, &tensors, DType::F32, 1).unwrap_or_else(|e| panic!("write hf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    let words: Vec<String> = corpus_ids().iter().map(|i| format!("t{i}")).collect();
    ws.write("corpus.txt", format!("{}\n", words.join(" ")));
    let lib = support::ort_library();
    let rel = format!("lib/{}", lib.file_name().unwrap().to_string_lossy());
    fs::create_dir_all(ws.path("lib")).unwrap();
    fs::copy(lib, ws.path(&rel)).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    (ws, rel)
}

/// A torch backend on `provider` over `model-hf`, an ONNX Runtime backend on the export, and
/// sweeps of both in `modes`; `more` adds stages.
fn pipeline(lib: &str, provider: &str, modes: &str, more: &str) -> String {
    format!(
        "[[backends]]\nname = \"ort\"\nthreads = 1\nmodel = \"out/export\"\n\n\
         [[backends]]\nname = \"torch\"\nruntime = \"torch\"\nprovider = \"{provider}\"\nprefill = \"model-hf\"\ndecoder = \"model-hf\"\n\n\
         [stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"model-hf\" }}\nvariants = [\"prefill\", \"decoder\"]\ntokenizer = false\n\n\
         [stages.sweep]\nkind = \"sweep\"\nmatrix = {{ backend = \"backend\", mode = {modes} }}\nmode = \"{{matrix.mode}}\"\n\
         deps = {{ prefill = \"{{matrix.backend.prefill}}\", decoder = \"{{matrix.backend.decoder}}\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\" }}\n{SCENARIOS}\n{more}"
    )
}

const PERPLEXITY: &str = "[stages.perplexity]\nkind = \"perplexity\"\nmatrix = [\"backend\"]\n\
    deps = { model = \"{matrix.backend.prefill}\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"LIB\" }\ncontext = 16\nstride = 8\n";

const LOGITS: &str = "[stages.logits]\nkind = \"logit_diff\"\nmatrix = [\"backend\"]\n\
    deps = { model = \"{matrix.backend.prefill}\", reference_model = \"out/export/prefill\", tokenizer = \"tokenizer.json\", runtime = \"LIB\" }\nprompts = [\"t1 t2 t3 t4 t5 t6\", \"t9 t8 t7\"]\n";

fn records(ws: &Workspace, node: &str) -> Vec<RunRecord> {
    let text = fs::read_to_string(ws.path(&format!("out/{node}/runs.jsonl"))).unwrap_or_else(|e| panic!("{node}: {e}"));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{node}: {e}: {l}"))).collect()
}

/// An executable `python` in the workspace: `body` is a shell script.
fn fake_python(ws: &Workspace, name: &str, body: &str) -> PathBuf {
    let path = ws.path(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&path, perms).unwrap();
    path
}

/// The system Python without site-packages: torch can never be imported there. The `torch`
/// facet's probe (`-c …`) answers `versions`.
fn python_without_torch(ws: &Workspace, name: &str, versions: &str) -> PathBuf {
    fake_python(ws, name, &format!("if [ \"$1\" = \"-c\" ]; then echo '{versions}'; exit 0; fi\nexec python3 -S \"$@\""))
}

#[test]
fn a_worker_without_torch_is_degraded_with_its_reason_and_torch_appearing_reruns_only_torch_nodes() {
    let (ws, lib) = workspace("tr118-torch-missing-");
    let python = python_without_torch(&ws, "py-a", "python 3.11; torch <none>; transformers <none>");
    let ws = ws.env("TR118_PYTHON", &python);
    ws.write("tr118.toml", pipeline(&lib, "cuda", "[\"prefill\", \"generate\"]", &PERPLEXITY.replace("LIB", &lib)));
    let first = ws.make_ok();
    for mode in ["prefill", "generate"] {
        let node = format!("sweep/torch/{mode}");
        assert_eq!(first.status(&node), "degraded", "{}", first.run);
        let recs = records(&ws, &node);
        assert_eq!(recs.len(), 4, "2 scenarios × 2 reps");
        for r in &recs {
            assert_eq!(r.status, "degraded", "{r:?}");
            let reason = r.reason.as_deref().unwrap_or("");
            assert!(reason.contains("torch is not importable by") && reason.contains("No module named 'torch'"), "the worker's own reason: {reason}");
            assert!(r.latency_ms.is_none() && r.throughput.is_none(), "no number for a run that did not happen: {r:?}");
        }
        assert_eq!(first.status(&format!("sweep/ort/{mode}")), "ok", "{}", first.run);
    }
    let ppl = ws.json("out/perplexity/torch/perplexity.json");
    assert_eq!(ppl["status"], "degraded", "{ppl}");
    assert!(ppl["reason"].as_str().unwrap_or("").contains("torch is not importable"), "{ppl}");
    assert!(ppl["ppl"].is_null(), "{ppl}");

    // The same environment: everything is a hit.
    let second = ws.make_ok();
    assert!(second.ran().is_empty(), "nothing changed, nothing runs: {:?}", second.ran());

    // Another torch (here: a Python whose packages report other versions) reruns the torch
    // backend's nodes, and only those.
    let other = python_without_torch(&ws, "py-b", "python 3.11; torch 9.9.9; transformers 9.9.9");
    let ws = ws.env("TR118_PYTHON", &other);
    let third = ws.make_ok();
    let mut ran = third.ran();
    ran.sort();
    assert_eq!(ran, vec!["perplexity/torch", "sweep/torch/generate", "sweep/torch/prefill"], "{}", third.run);
}

#[test]
fn a_python_that_cannot_start_is_degraded_naming_it() {
    let (ws, lib) = workspace("tr118-torch-nopython-");
    let ws = ws.env("TR118_PYTHON", "/nonexistent/python3");
    ws.write("tr118.toml", pipeline(&lib, "cpu", "[\"prefill\"]", ""));
    let run = ws.make_ok();
    assert_eq!(run.status("sweep/torch/prefill"), "degraded", "{}", run.run);
    let r = &records(&ws, "sweep/torch/prefill")[0];
    let reason = r.reason.as_deref().unwrap_or("");
    assert!(reason.contains("cannot start the torch worker with `/nonexistent/python3`") && reason.contains("TR118_PYTHON"), "{reason}");
}

#[test]
fn a_torch_backend_field_that_is_wrong_is_named() {
    let (ws, lib) = workspace("tr118-torch-fields-");
    let bad = pipeline(&lib, "tensorrt", "[\"prefill\"]", "").replace("runtime = \"torch\"", "runtime = \"torch\"\ncompile_mode = \"fast\"");
    ws.write("tr118.toml", &bad);
    ws.tr(&["make"]).code(2).stderr_has("a torch backend runs on `cpu` or `cuda`").stderr_has("`compile_mode` needs `compile`");
    // (what a line of the ORT backend or the torch one becomes, the error that names it)
    let ort = "threads = 1";
    let torch = "runtime = \"torch\"";
    for (line, with, error) in [
        (ort, "threads = 1\ncompile = \"inductor\"", "`compile` is torch.compile's; this backend runs on `onnxruntime`"),
        (ort, "threads = 1\nio_binding = \"yes\"", "`io_binding` must be true or false, found \"yes\""),
        (torch, "runtime = \"torch\"\nio_binding = true", "`io_binding` is ONNX Runtime's; this backend runs on `torch`"),
        (ort, "threads = 1\nprovider = \"cuda\"\ncuda_graph = true\nio_binding = false", "`cuda_graph` needs `io_binding`"),
        (torch, "runtime = \"pytorch\"", "unknown runtime `pytorch`"),
    ] {
        ws.write("tr118.toml", pipeline(&lib, "cpu", "[\"prefill\"]", "").replace(line, with));
        ws.tr(&["make"]).code(2).stderr_has(error);
    }
}

// --- recorded exchanges ------------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch-worker")
}

/// `> request` / `< answer` pairs of a recording.
fn exchange(path: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|pair| {
            let req = pair[0].strip_prefix("> ").unwrap_or_else(|| panic!("{}: expected a request: {}", path.display(), pair[0]));
            let resp = pair.get(1).and_then(|l| l.strip_prefix("< ")).unwrap_or_else(|| panic!("{}: a request without its answer", path.display()));
            (serde_json::from_str(req).unwrap(), serde_json::from_str(resp).unwrap())
        })
        .collect()
}

#[test]
fn recorded_exchanges_replay_into_the_records_they_measured() {
    let mut found = 0;
    for entry in fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        found += 1;
        let pairs = exchange(&path);
        // The pipeline the recording was made with: its device is in the `load` request.
        let device = pairs.iter().find(|(q, _)| q["op"] == "load").map(|(q, _)| q["device"].as_str().unwrap().to_string()).unwrap();
        let provider = if device.starts_with("cuda") { "cuda" } else { "cpu" };
        let (ws, lib) = workspace("tr118-torch-replay-");
        let replay = fixtures().join("replay.py");
        let python = fake_python(&ws, "py-replay", &format!("exec python3 -S {} {} \"$@\"", replay.display(), path.display()));
        let ws = ws.env("TR118_PYTHON", &python);
        ws.write("tr118.toml", pipeline(&lib, provider, "[\"prefill\", \"generate\"]", ""));
        let run = ws.make_ok();
        let name = path.file_name().unwrap().to_string_lossy().to_string();

        // Each worker process replays its part of the recording in order: prefill's, then
        // generate's (the sweeps run one at a time, in id order).
        let answers: Vec<&serde_json::Value> = pairs.iter().filter(|(q, _)| q["op"] == "prefill" || q["op"] == "generate").map(|(_, a)| a).collect();
        let mut next = answers.iter();
        for mode in ["prefill", "generate"] {
            let node = format!("sweep/torch/{mode}");
            assert_eq!(run.status(&node), "ok", "{name}: {}", run.run);
            let recs = records(&ws, &node);
            // Warm-up answers come first in each scenario and leave no record.
            for (scenario, reps) in [("one", 2), ("two", 2)] {
                next.next().unwrap_or_else(|| panic!("{name}: the recording ends early"));
                for rep in 0..reps {
                    let a = next.next().unwrap_or_else(|| panic!("{name}: the recording ends early"));
                    let r = recs.iter().find(|r| r.scenario == scenario && r.rep == rep).unwrap();
                    let ctx = format!("{name}, {mode}/{scenario}/{rep}: {r:?} vs {a}");
                    // The worker's seconds, to the nanosecond a `Duration` holds.
                    let ms = |v: Option<f64>, key: &str| (v.unwrap() - a[key].as_f64().unwrap() * 1e3).abs() <= 1e-6;
                    if mode == "prefill" {
                        assert!(ms(r.latency_ms, "latency_s"), "{ctx}");
                    } else {
                        assert!(ms(r.latency_ms, "total_s") && ms(r.ttft_ms, "ttft_s"), "{ctx}");
                    }
                }
            }
            let sweep = ws.json(&format!("out/{node}/sweep.json"));
            let worker = &sweep["capability"]["worker"];
            let hello = &pairs.iter().find(|(q, _)| q["op"] == "hello").unwrap().1;
            assert_eq!(worker["hello"]["torch"], hello["torch"], "{name}: {sweep}");
            assert_eq!(sweep["capability"]["runtime"], "torch", "{name}");
            if mode == "generate" {
                // The ids of each scenario's first repetition, row by row.
                let generate: Vec<&serde_json::Value> = pairs.iter().filter(|(q, _)| q["op"] == "generate").map(|(_, a)| a).collect();
                let first_rep = &generate[1]["ids"];
                let want: Vec<i64> = first_rep.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                let got: Vec<Vec<i64>> = serde_json::from_value(sweep["scenarios"][0]["output_ids"].clone()).unwrap();
                assert_eq!(got, vec![want], "{name}");
            }
        }
    }
    assert!(found > 0, "no recordings in {}", fixtures().display());
}

// --- the real worker -----------------------------------------------------------------------

/// A Python with torch and transformers: `TR118_TEST_PYTHON`, else `/opt/venv-torch/bin/python`.
fn torch_python() -> Option<String> {
    let candidates = [std::env::var("TR118_TEST_PYTHON").ok(), Some("/opt/venv-torch/bin/python".to_string())];
    candidates
        .into_iter()
        .flatten()
        .find(|p| std::process::Command::new(p).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success()))
}

/// Records the sweep exchange of the real worker into the fixtures, on `TR118_RECORD_DEVICE`.
#[test]
#[ignore = "records a fixture; needs a Python with torch"]
fn record_the_worker_exchange() {
    let python = torch_python().expect("set TR118_TEST_PYTHON to a Python with torch and transformers");
    let device = std::env::var("TR118_RECORD_DEVICE").unwrap_or_else(|_| "cpu".into());
    let (ws, lib) = workspace("tr118-torch-record-");
    let out = fixtures().join(format!("sweep-{}.txt", std::env::var("TR118_RECORD_NAME").unwrap_or_else(|_| device.clone())));
    let _ = fs::remove_file(&out);
    let ws = ws.env("TR118_PYTHON", &python).env("TR118_TORCH_RECORD", &out);
    ws.write("tr118.toml", pipeline(&lib, &device, "[\"prefill\", \"generate\"]", ""));
    let run = ws.make_ok();
    assert_eq!(run.status("sweep/torch/generate"), "ok", "{}", run.run);
    eprintln!("recorded {}", out.display());
}

#[test]
fn the_worker_agrees_with_onnx_runtime_on_the_same_weights() {
    let Some(python) = torch_python() else {
        eprintln!("skipped: no python with torch and transformers (set TR118_TEST_PYTHON)");
        return;
    };
    let (ws, lib) = workspace("tr118-torch-real-");
    let ws = ws.env("TR118_PYTHON", &python);
    // A compiled backend too (dynamo's `eager` backend: traced, no code generation, quick on
    // a CPU), which decodes through the static cache.
    let compiled = "[[backends]]\nname = \"traced\"\nruntime = \"torch\"\ncompile = \"eager\"\nprefill = \"model-hf\"\ndecoder = \"model-hf\"\n";
    let more = format!("{}\n{}\n{compiled}", PERPLEXITY.replace("LIB", &lib), LOGITS.replace("LIB", &lib));
    ws.write("tr118.toml", pipeline(&lib, "cpu", "[\"prefill\", \"generate\", \"generate_uncached\"]", &more));
    let run = ws.make_ok();
    for node in ["sweep/torch/prefill", "sweep/torch/generate", "sweep/torch/generate_uncached", "perplexity/torch", "logits/torch", "sweep/traced/generate"] {
        assert_eq!(run.status(node), "ok", "{node}: {}", run.run);
    }
    let traced = ws.json("out/sweep/traced/generate/sweep.json");
    assert_eq!(traced["capability"]["worker"]["load"]["static_cache"], true, "{traced}");
    // Logits of the worker against ONNX Runtime's on the export of the same weights.
    let diff = ws.json("out/logits/torch/logit_diff.json");
    let max = diff["overall"]["all_positions"]["max_abs_diff"].as_f64().unwrap();
    assert!(max < 1e-4, "torch vs ONNX Runtime logits: max |Δ| {max}: {diff}");
    assert_eq!(diff["overall"]["all_positions"]["argmax_agreement_rate"], 1.0, "{diff}");
    // Perplexity from the worker's logits, by the same code.
    let (a, b) = (ws.json("out/perplexity/torch/perplexity.json"), ws.json("out/perplexity/ort/perplexity.json"));
    let (pa, pb) = (a["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!((pa - pb).abs() < 1e-4 * pb, "torch {pa} vs ONNX Runtime {pb}");
    // Greedy generation: the same ids as ONNX Runtime's, cached and not.
    let ids = |node: &str| {
        ws.json(&format!("out/sweep/{node}/sweep.json"))["scenarios"].as_array().unwrap().iter().map(|s| s["output_ids"].clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids("torch/generate"), ids("ort/generate"));
    assert_eq!(ids("torch/generate_uncached"), ids("ort/generate"));
    assert_eq!(ids("traced/generate"), ids("ort/generate"), "decoding through the static cache");
    // The worker's process is the one sampled.
    let r = &records(&ws, "sweep/torch/generate")[0];
    assert!(r.resources.rss_peak_mib.is_some_and(|m| m > 100.0), "the worker's RSS (torch is loaded there): {r:?}");
}
