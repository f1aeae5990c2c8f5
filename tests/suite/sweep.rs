//! The `sweep` stage end to end: the real binary exports a tiny random Llama and times it in
//! every mode through ONNX Runtime.
//!
//! | check                                                   | against                                           |
//! |---------------------------------------------------------|---------------------------------------------------|
//! | ids generated with the KV cache, without it, per batch row | greedy decoding with the naive f64 forward (`support::reference`), written here |
//! | each record's fields                                     | the scenario (tokens, batch), each other (throughput = tokens / latency, TPOT from TTFT) |
//! | a `cuda` backend on the CPU-only library                 | a degraded record per scenario × rep with the provider named, null timings; a cache hit |
//! | a mode without its variant's dep, a misspelt scenario field | exit 2 naming the variant, the field with its line |
//! | `stats` over a real CPU sweep and a degraded `cuda` one   | the records' own means; the degraded backend's rows: rate 1, no numbers, its reason with the count |

use std::fs;
use std::sync::OnceLock;

use crate::support;
use crate::support::reference::{self, Rng, Weights, random_weights_scaled};
use crate::support::workspace::Workspace;
use tr118::measure::RunRecord;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::model::{ModelConfig, RopeLayout};

fn config() -> ModelConfig {
    ModelConfig { vocab_size: 41, ..reference::tiny_llama(RopeLayout::Interleaved) }
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    // Large enough weights that the logits are far apart: greedy choices do not hinge on the
    // last bits of float rounding.
    W.get_or_init(|| random_weights_scaled(&config(), 11, 0.5))
}

fn corpus_ids() -> Vec<u32> {
    let mut rng = Rng::new(5);
    (0..64).map(|_| (rng.next_u64() % config().vocab_size as u64) as u32).collect()
}

/// A workspace with the checkpoint, tokenizer, corpus and ONNX Runtime; returns the library's
/// path relative to the root.
fn workspace() -> (Workspace, String) {
    let ws = Workspace::new("tr118-sweep-");
    let cfg = config();
    let tensors = reference::writer_tensors(&cfg, weights());
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    let words: Vec<String> = corpus_ids().iter().map(|i| format!("t{i}")).collect();
    ws.write("corpus.txt", format!("<doc id=\"1\">\n{}\n</doc>\n", words.join(" ")));
    let lib = support::ort_library();
    let rel = format!("lib/{}", lib.file_name().unwrap().to_string_lossy());
    fs::create_dir_all(ws.path("lib")).unwrap();
    fs::copy(lib, ws.path(&rel)).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    (ws, rel)
}

/// Backends, an export of `variants` and a sweep over `modes` with `fields`.
fn pipeline(lib: &str, backends: &str, variants: &str, modes: &str, fields: &str) -> String {
    let deps =
        if variants.contains("decoder") { "prefill = \"out/export/prefill\", decoder = \"out/export/decoder\"" } else { "prefill = \"out/export/prefill\"" };
    format!(
        "{backends}\n[stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"model.gguf\" }}\nvariants = {variants}\ntokenizer = false\n\n\
         [stages.sweep]\nkind = \"sweep\"\nmatrix = {{ backend = \"backend\", mode = {modes} }}\nmode = \"{{matrix.mode}}\"\n\
         deps = {{ {deps}, tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\" }}\n{fields}\n"
    )
}

const CPU: &str = "[[backends]]\nname = \"cpu\"\nthreads = 1\n";

fn records(ws: &Workspace, node: &str) -> Vec<RunRecord> {
    let text = fs::read_to_string(ws.path(&format!("out/{node}/runs.jsonl"))).unwrap_or_else(|e| panic!("{node}: {e}"));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{node}: {e}: {l}"))).collect()
}

/// Greedy decoding with the naive forward: each new token is the argmax (lowest id on ties)
/// of the last position's logits over everything so far.
fn reference_greedy(prompt: &[u32], new_tokens: usize) -> Vec<i64> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..new_tokens {
        let logits = reference::forward(&config(), weights(), &seq);
        let last = logits.last().unwrap();
        let next = (0..last.len()).fold(0, |best, i| if last[i] > last[best] { i } else { best });
        out.push(next as i64);
        seq.push(next as u32);
    }
    out
}

#[test]
fn cached_and_uncached_generation_produce_the_reference_greedy_tokens() {
    let (ws, lib) = workspace();
    let scenarios = "scenarios = [{ name = \"one\", batch = 1, prompt_tokens = 5, new_tokens = 7 }, { name = \"two\", batch = 2, prompt_tokens = 4, new_tokens = 6 }]\nwarmup = 1\nreps = 2\n";
    ws.write("tr118.toml", pipeline(&lib, CPU, "[\"prefill\", \"decoder\"]", "[\"generate\", \"generate_uncached\"]", scenarios));
    ws.make_ok();

    let ids = corpus_ids();
    let want_one = vec![reference_greedy(&ids[..5], 7)];
    let want_two = vec![reference_greedy(&ids[..4], 6), reference_greedy(&ids[4..8], 6)];
    // A model stuck on one token would agree with any decoding loop, right or wrong.
    let distinct: std::collections::BTreeSet<i64> = want_one.iter().chain(&want_two).flatten().copied().collect();
    assert!(distinct.len() >= 4, "the reference generates too few distinct tokens to tell loops apart: {distinct:?}");
    for mode in ["generate", "generate_uncached"] {
        let sweep = ws.json(&format!("out/sweep/cpu/{mode}/sweep.json"));
        assert_eq!(sweep["status"], "ok", "{mode}: {sweep}");
        for (i, want) in [want_one.clone(), want_two.clone()].iter().enumerate() {
            let sc = &sweep["scenarios"][i];
            let got: Vec<Vec<i64>> = serde_json::from_value(sc["output_ids"].clone()).unwrap();
            assert_eq!(&got, want, "{mode}, scenario {}: generated ids vs the reference's greedy decoding", sc["name"]);
            assert_eq!(sc["outputs_consistent"], true, "{mode}: {sc}");
        }
        // Every repetition of a scenario generated the same ids, and both modes agree.
        let recs = records(&ws, &format!("sweep/cpu/{mode}"));
        assert_eq!(recs.len(), 4);
        assert!(recs.windows(2).all(|w| w[0].scenario != w[1].scenario || w[0].output_digest == w[1].output_digest));
    }
    let digests = |mode: &str| records(&ws, &format!("sweep/cpu/{mode}")).into_iter().map(|r| r.output_digest).collect::<Vec<_>>();
    assert_eq!(digests("generate"), digests("generate_uncached"));
}

#[test]
fn every_repetition_is_a_record_whose_numbers_agree_with_each_other() {
    let (ws, lib) = workspace();
    let fields = "scenarios = [{ name = \"short\", prompt_tokens = 3, new_tokens = 4 }, { name = \"wide\", batch = 3, prompt_tokens = 6, new_tokens = 2 }]\nwarmup = 1\nreps = 3\nsample_interval_ms = 1\n";
    ws.write("tr118.toml", pipeline(&lib, CPU, "[\"prefill\", \"decoder\"]", "[\"prefill\", \"generate\"]", fields));
    ws.make_ok();

    for mode in ["prefill", "generate"] {
        let recs = records(&ws, &format!("sweep/cpu/{mode}"));
        assert_eq!(recs.len(), 6, "{mode}: 2 scenarios × 3 reps");
        for (i, r) in recs.iter().enumerate() {
            let ctx = format!("{mode} record {i}: {r:?}");
            assert_eq!((r.backend.as_str(), r.mode.as_str(), r.status.as_str()), ("cpu", mode, "ok"), "{ctx}");
            assert_eq!(r.rep, i % 3, "{ctx}");
            assert_eq!(r.scenario, if i < 3 { "short" } else { "wide" }, "{ctx}");
            let (batch, prompt, new) = if i < 3 { (1, 3, 4) } else { (3, 6, 2) };
            assert_eq!((r.batch, r.prompt_tokens, r.new_tokens), (batch, prompt, new), "{ctx}");
            let latency = r.latency_ms.unwrap();
            assert!(latency > 0.0, "{ctx}");
            let tokens = if mode == "prefill" { batch * prompt } else { batch * new };
            assert_eq!(r.tokens, tokens, "{ctx}");
            let throughput = r.throughput.unwrap();
            assert!((throughput - tokens as f64 / (latency / 1e3)).abs() < 1e-6 * throughput, "{ctx}");
            if mode == "prefill" {
                assert!(r.ttft_ms.is_none() && r.tpot_ms.is_none() && r.output_digest.is_none(), "{ctx}");
            } else {
                let ttft = r.ttft_ms.unwrap();
                assert!(ttft > 0.0 && ttft < latency, "{ctx}");
                let tpot = r.tpot_ms.unwrap();
                assert!((tpot - (latency - ttft) / (new - 1) as f64).abs() < 1e-9, "{ctx}");
                assert_eq!(r.output_digest.as_ref().map(String::len), Some(64), "{ctx}");
            }
            assert!(r.resources.samples >= 2, "a sample at each end of the repetition: {ctx}");
            assert!(r.resources.rss_peak_mib.is_some_and(|m| m > 1.0), "{ctx}");
            assert!(r.resources.gpu_power_mean_w.is_none(), "no GPU is sampled for a CPU backend: {ctx}");
            assert!(!r.env.cpu.is_empty() && r.env.runtime_version.starts_with("1."), "{ctx}");
        }
        let sweep = ws.json(&format!("out/sweep/cpu/{mode}/sweep.json"));
        assert_eq!(sweep["capability"]["provider_requested"], "cpu", "{sweep}");
        assert_eq!(sweep["harness"]["iterations"], 6, "{sweep}");
        assert!(sweep["sampler"]["samples"].as_u64().unwrap() >= 12, "{sweep}");
        let mean: f64 = recs[..3].iter().map(|r| r.latency_ms.unwrap()).sum::<f64>() / 3.0;
        assert!((sweep["scenarios"][0]["mean_latency_ms"].as_f64().unwrap() - mean).abs() < 1e-9, "{sweep}");
    }
}

#[test]
fn an_unavailable_backend_gets_a_degraded_record_per_repetition_with_its_reason() {
    let (ws, lib) = workspace();
    let backends = "[[backends]]\nname = \"gpu\"\nprovider = \"cuda\"\n";
    let fields = "scenarios = [{ name = \"a\", prompt_tokens = 3 }, { name = \"b\", batch = 2, prompt_tokens = 3 }]\nreps = 4\n";
    ws.write("tr118.toml", pipeline(&lib, backends, "[\"prefill\"]", "[\"prefill\"]", fields));
    let first = ws.make_ok();
    let rec = first.record("sweep/gpu/prefill");
    assert_eq!(rec.status, "degraded", "{}", first.run);
    assert!(rec.detail.as_deref().unwrap_or("").contains("8 of 8 runs degraded"), "{rec:?}");

    let recs = records(&ws, "sweep/gpu/prefill");
    assert_eq!(recs.len(), 8);
    for r in &recs {
        assert_eq!(r.status, "degraded");
        assert!(r.reason.as_deref().unwrap_or("").contains("cuda"), "the reason names the provider: {r:?}");
        assert!(r.latency_ms.is_none() && r.throughput.is_none() && r.ttft_ms.is_none(), "no number for a run that did not happen: {r:?}");
        assert_eq!(r.tokens, 0);
    }
    let sweep = ws.json("out/sweep/gpu/prefill/sweep.json");
    assert_eq!(sweep["status"], "degraded");
    assert_eq!(sweep["scenarios"][1]["n_degraded"], 4);

    let second = ws.make_ok();
    assert_eq!(second.record("sweep/gpu/prefill").cache, "hit", "{}", second.run);
    assert_eq!(second.status("sweep/gpu/prefill"), "degraded");
}

#[test]
fn a_mode_without_its_export_variant_is_an_error_naming_the_variant() {
    let (ws, lib) = workspace();
    ws.write("tr118.toml", pipeline(&lib, CPU, "[\"prefill\"]", "[\"generate\"]", "scenarios = [{ name = \"a\", prompt_tokens = 3 }]\n"));
    let run = ws.tr(&["make"]);
    run.code(2).stderr_has("mode `generate` runs the `decoder` export, but the stage has no dep named `decoder`");
}

#[test]
fn a_bad_sweep_field_is_named_with_its_line_and_a_suggestion() {
    let (ws, lib) = workspace();
    let fields = "scenarios = [{ name = \"a\", prompt_tokns = 3 }]\nreps = 0\n";
    ws.write("tr118.toml", pipeline(&lib, CPU, "[\"prefill\"]", "[\"prefill\", \"decode\"]", fields));
    let run = ws.tr(&["make"]);
    run.code(2)
        .stderr_has("prompt_tokns")
        .stderr_has("did you mean `prompt_tokens`")
        .stderr_has("`reps` must be an integer ≥ 1")
        .stderr_has("unknown sweep mode `decode`");
    let text = fs::read_to_string(ws.path("tr118.toml")).unwrap();
    let line = text.lines().position(|l| l.starts_with("scenarios")).unwrap() + 1;
    run.stderr_has(&format!("tr118.toml:{line}:"));
}

#[test]
fn a_corpus_shorter_than_the_largest_scenario_is_an_error_naming_it() {
    let (ws, lib) = workspace();
    ws.write("tr118.toml", pipeline(&lib, CPU, "[\"prefill\"]", "[\"prefill\"]", "scenarios = [{ name = \"big\", batch = 8, prompt_tokens = 20 }]\n"));
    ws.tr(&["make"]).code(1).stderr_has("corpus.txt").stderr_has("needs 160");
}

#[test]
fn stats_over_real_sweeps_tabulate_a_degraded_backend_with_its_reason_and_rate() {
    let (ws, lib) = workspace();
    let backends = format!("{CPU}\n[[backends]]\nname = \"gpu\"\nprovider = \"cuda\"\n");
    let fields = "scenarios = [{ name = \"a\", prompt_tokens = 3, new_tokens = 3 }, { name = \"b\", batch = 2, prompt_tokens = 5, new_tokens = 2 }]\nwarmup = 0\nreps = 3\n";
    let mut toml = pipeline(&lib, &backends, "[\"prefill\", \"decoder\"]", "[\"prefill\", \"generate\"]", fields);
    toml.push_str("\n[stages.stats]\nkind = \"stats\"\ndeps = { runs = \"out/sweep/*/*/runs.jsonl\" }\nbaseline = \"cpu\"\n");
    ws.write("tr118.toml", toml);
    ws.make_ok();

    let csv = fs::read_to_string(ws.path("out/stats/summary.csv")).unwrap();
    let rows = support::csv_rows(&csv).unwrap();
    // 2 backends × 2 modes × (2 scenarios + overall).
    assert_eq!(rows.len(), 12, "{csv}");
    for row in &rows {
        let col = |name: &str| row.get(name).unwrap_or_else(|| panic!("no column `{name}`: {row:?}"));
        let (backend, mode, scenario) = (col("backend"), col("mode"), col("scenario"));
        let ctx = format!("{backend}/{mode}/{scenario}: {row:?}");
        let n_total: usize = col("n_total").parse().unwrap();
        assert_eq!(n_total, if scenario == "overall" { 6 } else { 3 }, "{ctx}");
        if backend == "gpu" {
            assert_eq!(col("n_ok"), "0", "{ctx}");
            assert_eq!(col("degraded_rate").parse::<f64>().unwrap(), 1.0, "{ctx}");
            assert!(col("latency_mean_ms").is_empty(), "{ctx}");
            assert!(col("reasons").contains("cuda") && col("reasons").contains(&format!("({n_total})")), "{ctx}");
        } else {
            assert_eq!(*col("n_ok"), n_total.to_string(), "{ctx}");
            assert_eq!(col("degraded_rate").parse::<f64>().unwrap(), 0.0, "{ctx}");
            // The mean is of the records the sweep wrote.
            let recs = records(&ws, &format!("sweep/cpu/{mode}"));
            let own: Vec<f64> = recs.iter().filter(|r| scenario == "overall" || r.scenario == **scenario).map(|r| r.latency_ms.unwrap()).collect();
            let mean = own.iter().sum::<f64>() / own.len() as f64;
            let got: f64 = col("latency_mean_ms").parse().unwrap();
            assert!((got - mean).abs() <= 1e-9 * mean, "{ctx}: mean {got} vs {mean}");
        }
        for cell in row.values() {
            assert!(!["NaN", "nan", "None", "inf"].contains(&cell.as_str()), "{ctx}");
        }
    }
}

#[test]
fn generation_through_a_fixed_capacity_decoder_gives_the_reference_tokens() {
    let (ws, lib) = workspace();
    // `resident`: the same decoder through I/O binding, its cache kept in buffers of the
    // decoder's, written in place, only `next_token` read back, as on a GPU.
    let backends = "[[backends]]\nname = \"growing\"\nthreads = 1\nmodel = \"out/export\"\n\n\
                    [[backends]]\nname = \"fixed\"\nthreads = 1\nmodel = \"out/export\"\ndecoder = \"out/export/decoder_fixed\"\n\n\
                    [[backends]]\nname = \"resident\"\nthreads = 1\nio_binding = true\nmodel = \"out/export\"\ndecoder = \"out/export/decoder_fixed\"\n";
    let text = |scenarios: &str| {
        format!(
            "{backends}\n[stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"model.gguf\" }}\nvariants = [\"prefill\", \"decoder\", \"decoder_fixed\"]\nmax_length = 16\ntokenizer = false\n\n\
             [stages.sweep]\nkind = \"sweep\"\nmatrix = {{ backend = \"backend\", mode = [\"generate\"] }}\nmode = \"{{matrix.mode}}\"\n\
             deps = {{ prefill = \"{{matrix.backend.prefill}}\", decoder = \"{{matrix.backend.decoder}}\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"{lib}\" }}\n{scenarios}\nwarmup = 1\nreps = 2\n"
        )
    };
    ws.write(
        "tr118.toml",
        text(
            "scenarios = [{ name = \"one\", batch = 1, prompt_tokens = 5, new_tokens = 7 }, { name = \"two\", batch = 2, prompt_tokens = 4, new_tokens = 6 }]",
        ),
    );
    ws.make_ok();
    let ids = corpus_ids();
    let want = [vec![reference_greedy(&ids[..5], 7)], vec![reference_greedy(&ids[..4], 6), reference_greedy(&ids[4..8], 6)]];
    for backend in ["fixed", "resident"] {
        let sweep = ws.json(&format!("out/sweep/{backend}/generate/sweep.json"));
        assert_eq!(sweep["status"], "ok", "{sweep}");
        for (i, want) in want.iter().enumerate() {
            let got: Vec<Vec<i64>> = serde_json::from_value(sweep["scenarios"][i]["output_ids"].clone()).unwrap();
            assert_eq!(&got, want, "{backend}, scenario {i}: the fixed-capacity decoder's ids vs the reference's greedy decoding");
        }
    }
    let digests = |b: &str| records(&ws, &format!("sweep/{b}/generate")).into_iter().map(|r| r.output_digest).collect::<Vec<_>>();
    assert_eq!(digests("fixed"), digests("growing"));
    assert_eq!(digests("resident"), digests("growing"));

    // A scenario longer than the capacity (12 + 8 > 16): the fixed backend's runs are degraded
    // with the reason, as any scenario a backend cannot run; the growing one runs it.
    ws.write("tr118.toml", text("scenarios = [{ name = \"long\", batch = 1, prompt_tokens = 12, new_tokens = 8 }]"));
    let make = ws.make();
    make.run.code(0);
    assert_eq!(make.status("sweep/fixed/generate"), "degraded");
    assert_eq!(make.status("sweep/resident/generate"), "degraded");
    assert!(
        make.record("sweep/fixed/generate").detail.as_deref().unwrap_or_default().contains("16 positions in the cache and 1 new do not fit its capacity of 16"),
        "{:?}",
        make.record("sweep/fixed/generate")
    );
    assert_eq!(make.status("sweep/growing/generate"), "ok");
}
