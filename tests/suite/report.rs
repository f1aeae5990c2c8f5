//! The `report` stage end to end: run records written here go through the real `stats` stage;
//! every other artifact (perplexity, gate, logits, export, calibration, quantize, TensorRT
//! builds, sweep summaries) is a fixture written here in its kind's schema and declared as a
//! plain-file dep of the report; an artifact with a type in [`tr118::artifact`] is written
//! from that type, so the fixture cannot drift from what its stage writes.
//!
//! The fixture study has a baseline (`ort-cpu`), a backend that could not run at all
//! (`ort-cuda`: every run degraded), an INT8 backend with counted coverage that fails the
//! accuracy gate (`ort-int8`), a TensorRT fp16 plan that is degraded (no `trtexec`) and an
//! int8 plan that built.
//!
//! | rule                                                               | checked against                                  |
//! |--------------------------------------------------------------------|--------------------------------------------------|
//! | every section heading, in Markdown and HTML                        | the list of sections                             |
//! | no `NaN`, `None`, `null`, `inf`, `undefined` anywhere              | every word of both files                         |
//! | table numbers are the fixture's                                     | means and intervals computed here from the latencies with the published t quantile; perplexities, counts and shares formatted here |
//! | every degraded reason with its count                               | the degraded records written                     |
//! | the HTML is well formed and self-contained                         | a tag-balance checker here; no external reference |
//! | the charts are there, with data                                    | one `<svg>` per chart; a dot per ok run, a bar per scenario with ok runs |
//! | the INT8 recipes: recipe, coverage, PPL change, prefill speed-up    | the geometric mean of the per-scenario latency ratios computed here; one labelled point per INT8 backend in the trade-off chart |
//! | a template that does not parse, or names an undefined variable     | the failure names the template file and line     |
//! | editing a template reruns only the report; nothing changed hits    | the `--json` records                             |
//! | a dep of the wrong kind, an unknown dep name                       | the error names the file and a missing field; the diagnostic the dep |

use std::collections::BTreeMap;

use crate::support::workspace::Workspace;
use serde_json::{Value, json};
use tr118::artifact::calibration;
use tr118::artifact::export;
use tr118::artifact::gate;
use tr118::artifact::logit_diff;
use tr118::artifact::perplexity::Perplexity;
use tr118::artifact::quantize;
use tr118::artifact::sweep;
use tr118::artifact::trt_build;
use tr118::backend::Capability;
use tr118::measure::sampler::SamplerOverhead;
use tr118::measure::{Resources, RunEnv, RunRecord};

/// t(0.975, 4), scipy.stats.t.ppf(0.975, 4).
const T_975_4: f64 = 2.7764451051977987;

const SECTIONS: &[&str] = &[
    "Abstract",
    "Key findings",
    "Limitations",
    "Methodology",
    "Environment",
    "Sanity checks",
    "Results",
    "Accuracy gate",
    "Export and build overhead",
    "Reproducibility",
];

const CUDA_REASON: &str = "CUDA provider not available: no CUDA-capable device is detected";
const TRT_REASON: &str = "`trtexec` not found: searched PATH and TENSORRT_HOME";

/// Latencies (ms) by backend, mode, scenario: five repetitions each.
fn latencies() -> Vec<(&'static str, &'static str, &'static str, [f64; 5])> {
    vec![
        ("ort-cpu", "prefill", "short", [10.0, 10.2, 9.8, 10.1, 9.9]),
        ("ort-cpu", "prefill", "long", [40.0, 41.0, 39.0, 40.5, 39.5]),
        ("ort-int8", "prefill", "short", [7.0, 7.1, 6.9, 7.05, 6.95]),
        ("ort-int8", "prefill", "long", [25.0, 26.0, 24.0, 25.5, 24.5]),
        ("ort-cpu", "generate", "short", [80.0, 82.0, 78.0, 81.0, 79.0]),
        ("ort-cpu", "generate", "long", [160.0, 164.0, 156.0, 162.0, 158.0]),
        ("ort-int8", "generate", "short", [60.0, 61.0, 59.0, 60.5, 59.5]),
        ("ort-int8", "generate", "long", [120.0, 123.0, 117.0, 121.0, 119.0]),
    ]
}

/// The mean of a fixture's five latencies, as a sweep summary holds it.
fn mean_latency(backend: &str, mode: &str, scenario: &str) -> Option<f64> {
    latencies().into_iter().find(|(b, m, s, _)| *b == backend && *m == mode && *s == scenario).map(|(_, _, _, l)| l.iter().sum::<f64>() / 5.0)
}

fn shape(scenario: &str) -> (usize, usize) {
    if scenario == "short" { (1, 8) } else { (4, 32) }
}

fn env() -> RunEnv {
    RunEnv {
        cpu: "Test CPU @ 3.0GHz".into(),
        os: "linux 6.1".into(),
        host: "bench-1".into(),
        runtime: "onnxruntime".into(),
        runtime_version: "1.31.1".into(),
        gpu: None,
        gpu_driver: None,
    }
}

fn record(backend: &str, mode: &str, scenario: &str, rep: usize, latency: Option<f64>) -> RunRecord {
    let (batch, prompt) = shape(scenario);
    let generate = mode == "generate";
    let tokens = if generate { batch * 8 } else { batch * prompt };
    RunRecord {
        backend: backend.into(),
        provider: if backend == "ort-cuda" { "cuda" } else { "cpu" }.into(),
        precision: if backend == "ort-int8" { "int8" } else { "fp32" }.into(),
        mode: mode.into(),
        scenario: scenario.into(),
        batch,
        prompt_tokens: prompt,
        new_tokens: if generate { 8 } else { 0 },
        rep,
        status: if latency.is_some() { "ok" } else { "degraded" }.into(),
        reason: latency.is_none().then(|| CUDA_REASON.into()),
        latency_ms: latency,
        ttft_ms: latency.filter(|_| generate).map(|l| l / 4.0),
        tpot_ms: latency.filter(|_| generate).map(|l| (l - l / 4.0) / 7.0),
        tokens,
        throughput: latency.map(|l| tokens as f64 * 1000.0 / l),
        output_digest: None,
        resources: Resources { samples: 4, rss_peak_mib: latency.map(|_| 512.0 + rep as f64), cpu_util: latency.map(|_| 1.8), ..Resources::default() },
        env: env(),
    }
}

fn jsonl(records: &[RunRecord]) -> String {
    records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
}

fn capability_of(provider: &str) -> Capability {
    Capability {
        runtime: "onnxruntime".into(),
        runtime_version: "1.31.1".into(),
        library_digest: "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3".into(),
        providers_offered: vec!["CPUExecutionProvider".into()],
        provider_requested: provider.into(),
        providers_assigned: [("CPUExecutionProvider".to_string(), 120)].into(),
        cpu_model: "Test CPU @ 3.0GHz".into(),
        cpu_logical_threads: 2,
        threads: Some(2),
        gpu: None,
        worker: None,
    }
}

fn perplexity(backend: &str, precision: &str, ppl: Option<f64>) -> Perplexity {
    let ok = ppl.is_some();
    Perplexity {
        backend: backend.into(),
        precision: precision.into(),
        provider: if backend == "ort-cuda" { "cuda" } else { "cpu" }.into(),
        capability: ok.then(|| capability_of("cpu")),
        context: 512,
        stride: 256,
        batch: 1,
        corpus_tokens: 16384,
        windows: ok.then_some(63),
        tokens_scored: ok.then_some(16383),
        mean_nll: ppl.map(f64::ln),
        ppl,
        vocab_size: ok.then_some(49152),
        ln_vocab: ok.then(|| 49152f64.ln()),
        uniform_ppl: ok.then_some(49152.0),
        status: if ok { "ok" } else { "degraded" }.into(),
        reason: (!ok).then(|| CUDA_REASON.into()),
    }
}

fn sweep(backend: &str, mode: &str, ok: bool) -> sweep::Sweep {
    let scenarios: Vec<sweep::ScenarioSummary> = ["short", "long"]
        .iter()
        .map(|s| {
            let (batch, prompt) = shape(s);
            sweep::ScenarioSummary {
                scenario: sweep::Scenario { name: s.to_string(), batch, prompt_tokens: prompt, new_tokens: 8 },
                n_ok: if ok { 5 } else { 0 },
                n_degraded: if ok { 0 } else { 5 },
                mean_latency_ms: mean_latency(backend, mode, s).filter(|_| ok),
                output_ids: None,
                outputs_consistent: (mode == "generate" && ok).then_some(true),
            }
        })
        .collect();
    sweep::Sweep {
        backend: backend.into(),
        provider: if backend == "ort-cuda" { "cuda" } else { "cpu" }.into(),
        precision: if backend == "ort-int8" { "int8" } else { "fp32" }.into(),
        mode: mode.into(),
        model: if backend == "ort-int8" { "fixtures/quantize-static/prefill/model.onnx" } else { "out/export/prefill/model.onnx" }.into(),
        capability: ok.then(|| capability_of("cpu")),
        warmup: 3,
        reps: 5,
        sample_interval_ms: 10,
        scenarios,
        sampler: ok.then(|| SamplerOverhead {
            interval_ms: 10.0,
            samples: 40,
            cpu_time_ms: 1.2,
            wall_ms: 400.0,
            cpu_share: 0.003,
            mean_sample_us: 15.0,
            ..SamplerOverhead::default()
        }),
        harness: ok.then_some(sweep::Harness { iterations: 10, loop_ms: 300.0, measured_ms: 299.0, overhead_per_iteration_us: 12.5 }),
        status: if ok { "ok" } else { "degraded" }.into(),
        reason: (!ok).then(|| format!("10 of 10 runs degraded: {CUDA_REASON}")),
    }
}

fn trt_build(precision: &str, built: bool) -> trt_build::TrtBuild {
    trt_build::TrtBuild {
        builder: "trtexec".into(),
        precision: precision.into(),
        status: if built { "ok" } else { "degraded" }.into(),
        reason: (!built).then(|| TRT_REASON.into()),
        flags: vec![],
        command: vec!["trtexec".into(), "--onnx=out/export/prefill/model.onnx".into()],
        trtexec: built.then(|| "/opt/tensorrt/bin/trtexec".into()),
        library: None,
        library_digest: None,
        bindings: vec![],
        python: None,
        trt_version: built.then(|| "10.3.0".into()),
        gpu: "<none>".into(),
        model: "out/export/prefill/model.onnx".into(),
        calibration: (precision == "int8").then(|| "out/calibrate/calibration.cache".into()),
        dynamic_inputs: BTreeMap::new(),
        profiles: vec![],
        shapes: vec![],
        also_fp16: false,
        tf32: true,
        workspace_mib: None,
        timing_cache: None,
        built: if built {
            trt_build::Built {
                build_s: Some(95.3),
                engine_build_s: Some(88.1),
                peak_build_mib: None,
                plan_bytes: Some(180_000_000),
                n_layers: Some(175),
                layers_by_precision: Some(trt_build::ByPrecision { fp32: 10, fp16: 40, int8: 120, other: 5 }),
                int8_layers: None,
                output_dtypes: None,
                int8_verified: Some(true),
                fp16_verified: None,
            }
        } else {
            trt_build::Built::default()
        },
    }
}

fn quantize() -> quantize::Quantize {
    let left: Vec<quantize::FloatOp> = (0..30)
        .map(|i| quantize::FloatOp {
            name: format!("blk.{i}.ffn_down"),
            op: "MatMul".into(),
            output: format!("h{i}"),
            reason: "excluded by `*ffn_down*`".into(),
        })
        .collect();
    quantize::Quantize {
        scheme: quantize::Scheme::Static,
        per_channel: true,
        per_token: false,
        smooth: None,
        sensitivity: None,
        exclude: vec!["*ffn_down*".into()],
        activations: "int8 per tensor, from the calibration".into(),
        weights: "int8 per channel".into(),
        matmul_total: 211,
        quantized: 181,
        verified: 181,
        ops: vec![],
        left_float: left,
        decoder: Some(quantize::Decoder {
            source_digest: "ab".into(),
            matmul_total: 211,
            quantized: 181,
            verified: 181,
            left_float: vec![],
            file_bytes: 1,
            data_bytes: 0,
        }),
        elapsed_s: 12.5,
        written: quantize::Written { ops: BTreeMap::new(), int8_initializers: 181, int8_initializer_bytes: 100, float_matmuls: 30, verified: 181 },
        ran_integer: true,
        ort: quantize::OrtKernels {
            runtime_version: "1.31.1".into(),
            opt_level: "all".into(),
            tokens: 4,
            kernels: BTreeMap::new(),
            integer_matmul_kernels: 181,
            float_matmul_kernels: 30,
        },
        calibration: Some(quantize::CalibrationRef {
            method: "percentile".into(),
            cache_header: "TRT-8601-EntropyCalibration2".into(),
            model_digest: "cd".into(),
        }),
        source_digest: "ef".into(),
        file_bytes: 150_000_000,
        data_bytes: 0,
    }
}

/// Writes every fixture and the pipeline; `extra` is appended to the report's deps.
fn study(ws: &Workspace, report_extra: &str) {
    let mut by_file: BTreeMap<String, Vec<RunRecord>> = BTreeMap::new();
    for (backend, mode, scenario, lat) in latencies() {
        for (rep, l) in lat.iter().enumerate() {
            by_file.entry(format!("{backend}-{mode}")).or_default().push(record(backend, mode, scenario, rep, Some(*l)));
        }
    }
    for mode in ["prefill", "generate"] {
        for scenario in ["short", "long"] {
            for rep in 0..5 {
                by_file.entry(format!("ort-cuda-{mode}")).or_default().push(record("ort-cuda", mode, scenario, rep, None));
            }
        }
    }
    for (name, records) in &by_file {
        ws.write(&format!("fixtures/runs/{name}.jsonl"), jsonl(records));
    }
    let w = |rel: &str, v: &Value| ws.write(rel, serde_json::to_string_pretty(v).unwrap());
    // As the stage writes it: straight from the struct.
    let ppl = |rel: &str, p: Perplexity| ws.write(rel, serde_json::to_string_pretty(&p).unwrap());
    ppl("fixtures/perplexity/ort-cpu/perplexity.json", perplexity("ort-cpu", "fp32", Some(16.9234)));
    ppl("fixtures/perplexity/ort-int8/perplexity.json", perplexity("ort-int8", "int8", Some(17.7696)));
    ppl("fixtures/perplexity/ort-cuda/perplexity.json", perplexity("ort-cuda", "fp32", None));
    let line = |backend: &str, precision: &str, ppl: Option<f64>, rel_delta: Option<f64>, threshold: f64, pass: Option<bool>| gate::Backend {
        backend: backend.into(),
        precision: precision.into(),
        status: if ppl.is_some() { "ok" } else { "degraded" }.into(),
        reason: ppl.is_none().then(|| CUDA_REASON.into()),
        ppl,
        rel_delta,
        threshold: Some(threshold),
        pass,
    };
    let gate = gate::Gate {
        reference: "ort-cpu".into(),
        reference_ppl: Some(16.9234),
        thresholds: [("fp32", 0.001), ("fp16", 0.005), ("int8", 0.02)].into_iter().map(|(p, t)| (p.to_string(), t)).collect(),
        status: "ok".into(),
        reason: None,
        failed: vec!["ort-int8".into()],
        backends: vec![
            line("ort-cpu", "fp32", Some(16.9234), Some(0.0), 0.001, Some(true)),
            line("ort-cuda", "fp32", None, None, 0.001, None),
            line("ort-int8", "int8", Some(17.7696), Some(0.05), 0.02, Some(false)),
        ],
    };
    w("fixtures/gate.json", &serde_json::to_value(&gate).unwrap());
    let diff = |m: f64, x: f64, r: f64| logit_diff::Diff { mean_abs_diff: Some(m), max_abs_diff: Some(x), argmax_agreement_rate: Some(r) };
    let logits = |backend: &str, ok: bool| logit_diff::LogitDiff {
        backend: backend.into(),
        backend_spec: json!({ "name": backend }),
        status: if ok { "ok" } else { "degraded" }.into(),
        reason: (!ok).then(|| CUDA_REASON.into()),
        model: "m".into(),
        reference: logit_diff::Reference { model: "r".into(), provider: "cpu".into() },
        capability: ok.then(|| capability_of("cpu")),
        prompts: if ok { vec![logit_diff::PromptDiff::empty("The capital of France is", 5)] } else { vec![] },
        overall: if ok {
            logit_diff::Overall { last_token: diff(0.0123, 0.25, 1.0), all_positions: diff(0.0101, 0.61, 0.9375) }
        } else {
            logit_diff::Overall::default()
        },
    };
    // As the stage writes it: straight from the struct.
    let logit = |rel: &str, d: logit_diff::LogitDiff| ws.write(rel, serde_json::to_string_pretty(&d).unwrap());
    logit("fixtures/logits/ort-int8/logit_diff.json", logits("ort-int8", true));
    logit("fixtures/logits/ort-cuda/logit_diff.json", logits("ort-cuda", false));
    let variant = |v: tr118::export::Variant, ms: f64, bytes: u64| {
        export::Variant::Onnx(export::ExportReport {
            variant: v,
            precision: tr118::export::Precision::Fp32,
            file: format!("out/export/{}/model.onnx", v.name()),
            opset: 17,
            export_ms: ms,
            file_bytes: bytes,
            data_bytes: 0,
            external_data: false,
            initializer_count: 272,
            initializer_bytes: 538_000_000,
            node_count: 1850,
            inputs: vec!["input_ids".into(), "attention_mask".into()],
            outputs: vec!["logits".into()],
            dynamic_axes: vec!["batch".into(), "sequence".into()],
            max_length: None,
            digest: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        })
    };
    let config = tr118::model::ModelConfig {
        arch: tr118::model::Arch::Llama,
        vocab_size: 49152,
        n_layer: 30,
        n_head: 9,
        n_kv_head: 3,
        d_model: 576,
        d_ff: 1536,
        n_ctx: 2048,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: tr118::model::RopeLayout::Interleaved,
        tied_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let manifest = export::Export {
        checkpoint: export::Checkpoint { path: "out/model/model.gguf".into(), format: tr118::model::Format::Gguf, config },
        tool: "tr118 0.1.0".into(),
        variants: vec![variant(tr118::export::Variant::Prefill, 1234.5, 540_000_000), variant(tr118::export::Variant::Decoder, 1500.0, 541_000_000)],
        tokenizer: Some("embedded in the GGUF".into()),
    };
    w("fixtures/export/export.json", &serde_json::to_value(&manifest).unwrap());
    let calibration = calibration::Calibration {
        method: "percentile".into(),
        percentile: Some(99.999),
        bins: Some(2048),
        levels: 128,
        samples: 32,
        seq_len: 256,
        seed: 0,
        corpus_tokens: 16384,
        sample_starts: vec![0; 32],
        model_file: "model.onnx".into(),
        model_digest: "cd".into(),
        runtime_version: "1.31.1".into(),
        cache_header: "TRT-8601-EntropyCalibration2".into(),
        elapsed_s: 41.2,
        tensors: vec![],
    };
    // As the stage writes it: straight from the struct.
    ws.write("fixtures/calibrate/calibration.json", serde_json::to_string_pretty(&calibration).unwrap());
    // As the stage writes it: straight from the struct.
    ws.write("fixtures/quantize-static/quantize.json", serde_json::to_string_pretty(&quantize()).unwrap());
    // As the stage writes it: straight from the struct.
    let trt = |rel: &str, b: trt_build::TrtBuild| ws.write(rel, serde_json::to_string_pretty(&b).unwrap());
    trt("fixtures/trt_build/fp16/build.json", trt_build("fp16", false));
    trt("fixtures/trt_build/int8/build.json", trt_build("int8", true));
    // As the stage writes it: straight from the struct.
    let sw = |rel: &str, s: sweep::Sweep| ws.write(rel, serde_json::to_string_pretty(&s).unwrap());
    sw("fixtures/sweep/ort-cpu/prefill/sweep.json", sweep("ort-cpu", "prefill", true));
    sw("fixtures/sweep/ort-cpu/generate/sweep.json", sweep("ort-cpu", "generate", true));
    sw("fixtures/sweep/ort-cuda/prefill/sweep.json", sweep("ort-cuda", "prefill", false));
    sw("fixtures/sweep/ort-int8/prefill/sweep.json", sweep("ort-int8", "prefill", true));

    let runs: Vec<String> = by_file.keys().map(|k| format!("\"fixtures/runs/{k}.jsonl\"")).collect();
    ws.pipeline(&format!(
        r#"
[stages.stats]
kind = "stats"
deps = {{ runs = [{runs}] }}
baseline = "ort-cpu"

[stages.report]
kind = "report"
title = "Fixture study"
deps = {{ stats = "out/stats/stats.json", runs = [{runs}],
         sweeps = ["fixtures/sweep/ort-cpu/prefill/sweep.json", "fixtures/sweep/ort-cpu/generate/sweep.json", "fixtures/sweep/ort-cuda/prefill/sweep.json", "fixtures/sweep/ort-int8/prefill/sweep.json"],
         perplexity = ["fixtures/perplexity/ort-cpu/perplexity.json", "fixtures/perplexity/ort-int8/perplexity.json", "fixtures/perplexity/ort-cuda/perplexity.json"],
         gate = "fixtures/gate.json",
         logits = ["fixtures/logits/ort-int8/logit_diff.json", "fixtures/logits/ort-cuda/logit_diff.json"],
         export = "fixtures/export/export.json", calibration = "fixtures/calibrate/calibration.json",
         quantize = "fixtures/quantize-static/quantize.json",
         trt = ["fixtures/trt_build/fp16/build.json", "fixtures/trt_build/int8/build.json"],
         pipeline = "tr118.toml"{report_extra} }}
"#,
        runs = runs.join(", ")
    ));
}

fn read(ws: &Workspace, rel: &str) -> String {
    String::from_utf8(ws.read(rel)).unwrap()
}

/// Mean and Student t 95% interval of five values, computed here.
fn mean_ci(x: &[f64; 5]) -> (f64, f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = T_975_4 * var.sqrt() / n.sqrt();
    (mean, mean - half, mean + half)
}

/// `mean [lo, hi]` with the decimals of two significant digits of the half-width.
fn estimate_text(x: &[f64; 5]) -> String {
    let (mean, lo, hi) = mean_ci(x);
    let half = (hi - lo) / 2.0;
    let d = (1 - half.log10().floor() as i64).max(0) as usize;
    format!("{mean:.d$} [{lo:.d$}, {hi:.d$}]")
}

/// Words that would mean an undefined number leaked into the text.
fn leaked_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| ["NaN", "nan", "None", "null", "inf", "Infinity", "undefined"].contains(w))
        .map(str::to_string)
        .collect()
}

/// Checks that `doc` is well formed: every tag closed in order, attributes quoted, entities
/// known, void elements self-closed. Returns the element names in document order.
fn well_formed(doc: &str) -> Result<Vec<String>, String> {
    const VOID: &[&str] = &["meta", "br", "hr", "img", "link", "input", "col", "area", "base", "source", "wbr"];
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let bytes = doc.as_bytes();
    let mut i = 0;
    let line = |at: usize| doc[..at].matches('\n').count() + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'<' if doc[i..].starts_with("<!--") => i += doc[i..].find("-->").ok_or("unclosed comment")? + 3,
            b'<' if doc[i..].starts_with("<!DOCTYPE") => i += doc[i..].find('>').ok_or("unclosed doctype")? + 1,
            b'<' => {
                let end = i + doc[i..].find('>').ok_or_else(|| format!("line {}: unclosed tag", line(i)))?;
                let tag = &doc[i + 1..end];
                if let Some(name) = tag.strip_prefix('/') {
                    let name = name.trim();
                    match stack.pop() {
                        Some(open) if open == name => {}
                        other => return Err(format!("line {}: `</{name}>` closes {other:?}", line(i))),
                    }
                } else {
                    let self_closing = tag.ends_with('/');
                    let body = tag.trim_end_matches('/');
                    let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
                    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                        return Err(format!("line {}: bad tag `<{tag}>`", line(i)));
                    }
                    // Attributes: name="value", values without `<` or a bare `&`.
                    let mut rest = body[name.len()..].trim_start();
                    while !rest.is_empty() {
                        let eq = rest.find('=').ok_or_else(|| format!("line {}: attribute without a value in `<{tag}>`", line(i)))?;
                        let after = &rest[eq + 1..];
                        let quote = after
                            .chars()
                            .next()
                            .filter(|c| *c == '"' || *c == '\'')
                            .ok_or_else(|| format!("line {}: unquoted attribute in `<{tag}>`", line(i)))?;
                        let close = after[1..].find(quote).ok_or_else(|| format!("line {}: unterminated attribute in `<{tag}>`", line(i)))?;
                        check_text(&after[1..1 + close]).map_err(|e| format!("line {}: {e}", line(i)))?;
                        rest = after[close + 2..].trim_start();
                    }
                    if VOID.contains(&name.as_str()) && !self_closing {
                        return Err(format!("line {}: void element `<{name}>` is not self-closed", line(i)));
                    }
                    seen.push(name.clone());
                    if !self_closing {
                        stack.push(name);
                    }
                }
                i = end + 1;
            }
            _ => {
                let end = doc[i..].find('<').map_or(doc.len(), |k| i + k);
                check_text(&doc[i..end]).map_err(|e| format!("line {}: {e}", line(i)))?;
                i = end;
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements at the end: {stack:?}"));
    }
    Ok(seen)
}

fn check_text(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(k) = rest.find('&') {
        let after = &rest[k + 1..];
        let semi = after.find(';').ok_or("a bare `&`")?;
        let entity = &after[..semi];
        let known = ["amp", "lt", "gt", "quot", "apos"].contains(&entity)
            || entity.strip_prefix("#x").is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            || entity.strip_prefix('#').is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        if !known {
            return Err(format!("unknown entity `&{entity};`"));
        }
        rest = &after[semi + 1..];
    }
    Ok(())
}

/// The `<svg>` elements of `html`, each from its start tag to its end tag.
fn svgs(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = start + rest[start..].find("</svg>").expect("an unclosed svg") + "</svg>".len();
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

/// The `<svg>` whose title is `title`.
fn svg_titled<'a>(html: &'a str, title: &str) -> &'a str {
    svgs(html).into_iter().find(|s| s.contains(&format!("<title>{title}</title>"))).unwrap_or_else(|| panic!("no chart titled {title:?}"))
}

/// The colours of the backends, as the charts write them: the baseline first, then by name.
const BASELINE_COLOR: &str = "#4E79A7";
const CUDA_COLOR: &str = "#F28E2B";
const INT8_COLOR: &str = "#E15759";

fn count_filled(svg: &str, element: &str, color: &str) -> usize {
    svg.split('<').filter(|e| e.starts_with(element) && e.contains(&format!("fill=\"{color}\""))).count()
}

#[test]
fn a_study_renders_every_section_with_the_fixture_numbers_and_no_undefined_words() {
    let ws = Workspace::new("tr118-report-");
    study(&ws, "");
    let m = ws.make_ok();
    assert_eq!(m.status("report"), "ok", "{}", m.run);
    let md = read(&ws, "out/report/report.md");
    let html = read(&ws, "out/report/report.html");

    for s in SECTIONS {
        assert!(md.contains(&format!("\n## {s}\n")), "report.md lacks the section `{s}`");
        assert!(html.contains(&format!(">{s}</h2>")), "report.html lacks the section `{s}`");
    }
    for (name, text) in [("report.md", &md), ("report.html", &html)] {
        let leaked = leaked_words(text);
        assert!(leaked.is_empty(), "{name} holds {leaked:?}");
    }

    // Means and intervals, computed here from the latencies written.
    for (backend, mode, scenario, lat) in latencies() {
        let text = estimate_text(&lat);
        let row = md.lines().find(|l| l.starts_with(&format!("| {scenario} | {backend} | 5 / 5 | "))).map(str::to_string);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with(&format!("| {scenario} | {backend} | 5 / 5 | "))).collect();
        assert!(rows.iter().any(|r| r.contains(&text)), "{backend} {mode} {scenario}: no row with {text}: {row:?}");
        assert!(html.contains(&text), "report.html lacks {text}");
    }
    assert_eq!(estimate_text(&[10.0, 10.2, 9.8, 10.1, 9.9]), "10.00 [9.80, 10.20]");

    // The INT8 recipes: the sweep of ort-int8 ran the quantize-static model; its speed-up is
    // the geometric mean over scenarios of ort-cpu's mean prefill latency over its own.
    let ratios: Vec<f64> =
        ["short", "long"].iter().map(|s| mean_latency("ort-cpu", "prefill", s).unwrap() / mean_latency("ort-int8", "prefill", s).unwrap()).collect();
    let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / 2.0).exp();
    let (lo, hi) = (ratios[0].min(ratios[1]), ratios[0].max(ratios[1]));
    let recipe_row =
        format!("| ort-int8 | static, per-tensor activations; float: `*ffn_down*` | 181 of 211 | 17.77 | 0.0500 | **FAIL** | {geo:.2}× | {lo:.2}–{hi:.2}× |");
    assert!(md.contains("\n### INT8 recipes\n"), "report.md lacks the INT8 recipes");
    assert!(md.contains(&recipe_row), "report.md lacks {recipe_row}");
    assert!(html.contains(&format!("{geo:.2}×")), "report.html lacks the speed-up {geo:.2}");
    let tradeoff = svg_titled(&html, "INT8 recipes: perplexity change against prefill speed-up over ort-cpu");
    assert_eq!(tradeoff.matches("<circle").count(), 1, "one point per INT8 backend");
    assert!(tradeoff.contains("ort-int8"), "the point is labelled: {tradeoff}");
    assert!(tradeoff.contains(&format!("stroke=\"{INT8_COLOR}\"")), "the point has ort-int8's colour: {tradeoff}");

    // Perplexity, gate, coverage, layers, sizes: the fixture's numbers.
    for needle in [
        "| ort-cpu | fp32 | ok | 16.92 |",
        "| ort-int8 | int8 | ok | 17.77 |",
        "| 49,152 | yes | 16,383 |",
        "| ort-int8 | int8 | 17.77 | 0.0500 | 0.02 | **FAIL** |",
        "| ort-cpu | fp32 | 16.92 | 0 | 0.001 | pass |",
        "| fixtures/quantize-static | static | 211 | 181 | 181 | 85.8% | 30 | 181 | 30 | yes |",
        "| int8 | ok | 175 | 10 | 40 | 120 | 5 | yes | 10.3.0 | 172 MiB |",
        "| 1,850 | 272 (513 MiB) | 515 MiB |",
        "| 0.0123 | 0.250 | 100% | 0.0101 | 0.610 | 93.8% |",
    ] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    // Every degraded reason with its count: 10 runs per mode of the CUDA backend.
    let row = format!("| latency | ort-cuda (prefill, generate) | {CUDA_REASON} | 20 of 20 runs |");
    assert!(md.contains(&row), "report.md lacks {row:?}");
    assert!(md.contains(&format!("| TensorRT | fp16 plan | {} |", TRT_REASON.replace('|', "\\|"))), "the degraded plan's reason");
    assert!(md.contains("| INT8 | fixtures/quantize-static (static) | left in float: excluded by `*ffn_down*` | 30 of 211 MatMuls |"));
    // The backend without an ok run keeps its summary line and is named, not tabulated, below.
    assert!(md.contains("| ort-cuda | cuda | fp32 | 0 / 10 | — | — | — | — | 100% |"), "the degraded backend's summary");
    assert_eq!(md.matches("for want of a single ok run in this mode: ort-cuda (").count(), 2);
    assert!(!md.lines().any(|l| l.starts_with("| short | ort-cuda |")), "no empty rows for the degraded backend");
    // Findings: the fastest backend per mode with its interval and change against the baseline.
    let int8_prefill: Vec<f64> = latencies().iter().filter(|l| l.0 == "ort-int8" && l.1 == "prefill").flat_map(|l| l.3).collect();
    let cpu_prefill: Vec<f64> = latencies().iter().filter(|l| l.0 == "ort-cpu" && l.1 == "prefill").flat_map(|l| l.3).collect();
    let pct = 100.0 * (int8_prefill.iter().sum::<f64>() - cpu_prefill.iter().sum::<f64>()) / cpu_prefill.iter().sum::<f64>();
    let finding = md.lines().find(|l| l.starts_with("- Prefill: ort-int8 has the lowest mean latency")).unwrap_or_else(|| panic!("no prefill finding\n{md}"));
    assert!(finding.contains(&format!("Against the baseline ort-cpu: {pct:+.1}% pooled")), "{finding}");
    assert!(finding.contains("per scenario -37.5% to -30.0%, significant in 2 of 2"), "{finding}");
    assert!(finding.contains("fastest in 2 of 2 scenarios"), "{finding}");
    assert!(md.contains("Accuracy gate: 1 of 3 backends pass against ort-cpu; failing: ort-int8 (int8 relative PPL change 0.0500 > 0.02)"));
    assert!(md.contains("No measurement at all from ort-cuda: every run degraded"));
    assert!(md.contains("TensorRT fp16 plan: not built here: `trtexec` not found"));
    // A built plan is named by its node: a study builds one per precision for each exported graph.
    assert!(md.contains("- TensorRT int8 plan (fixtures/trt_build/int8): built, 175 layers (120 INT8, 40 FP16, 10 FP32)."), "{md}");
    // Environment and reproducibility.
    for needle in ["| OS | linux 6.1 |", "| CPU | Test CPU @ 3.0GHz |", "| ONNX Runtime | 1.31.1 |", "| TensorRT | 10.3.0 |"] {
        assert!(md.contains(needle), "report.md lacks {needle:?}");
    }
    let pipeline_digest = blake3::hash(&ws.read("tr118.toml")).to_hex().to_string();
    assert!(md.contains(&format!("Pipeline `tr118.toml`, blake3 `{pipeline_digest}`")), "the pipeline's digest");
    assert!(md.contains("tr118 make report\n"), "the command");
    assert!(md.contains("| perplexity | `fixtures/perplexity/ort-int8/perplexity.json` |"), "every artifact's path");

    // The HTML: well formed, self-contained, with its charts.
    let elements = well_formed(&html).unwrap_or_else(|e| panic!("report.html is not well formed: {e}"));
    for external in ["<link", "<script", "src=\"", "url("] {
        assert!(!html.contains(external), "report.html refers outside itself: {external}");
    }
    let charts = svgs(&html);
    assert_eq!(charts.len(), 8, "a degraded-rate chart, latency, throughput and distribution per mode, the INT8 trade-off");
    assert_eq!(elements.iter().filter(|e| *e == "svg").count(), 8);
    for svg in &charts {
        assert!(svg.contains("<title>"), "a chart without a title");
        assert!(svg.contains("<text"), "a chart without labels");
    }
    for mode in ["Prefill", "Generate (KV cache)"] {
        // Two scenarios with ok runs per backend, and a legend swatch each; the CUDA backend has no bar.
        let latency = svg_titled(&html, &format!("{mode}: mean latency per scenario"));
        assert_eq!(count_filled(latency, "rect", BASELINE_COLOR), 3, "{mode}: baseline bars and swatch");
        assert_eq!(count_filled(latency, "rect", INT8_COLOR), 3, "{mode}: int8 bars and swatch");
        assert_eq!(count_filled(latency, "rect", CUDA_COLOR), 0, "{mode}: the CUDA backend has no bars");
        assert!(latency.contains("mean latency (ms)"), "{mode}: the axis unit");
        // One dot per ok run: 2 scenarios × 5 repetitions per backend.
        let dist = svg_titled(&html, &format!("{mode}: latency distribution per scenario"));
        assert_eq!(count_filled(dist, "circle", BASELINE_COLOR), 10, "{mode}: a dot per baseline run");
        assert_eq!(count_filled(dist, "circle", INT8_COLOR), 10, "{mode}: a dot per int8 run");
    }
    // The degraded rate: the CUDA backend at 100% in both modes.
    let degraded = svg_titled(&html, "Degraded runs per mode");
    assert_eq!(count_filled(degraded, "rect", CUDA_COLOR), 3, "two bars and a swatch");
    assert!(degraded.contains("100%"));

    // The Markdown's charts are files beside it.
    let plots = ws.files("out/report/plots");
    assert_eq!(plots.len(), 8, "{plots:?}");
    for p in &plots {
        assert!(md.contains(&format!("(plots/{p})")), "report.md does not show {p}");
    }

    // Nothing changed: a cache hit.
    let again = ws.make_ok();
    assert_eq!(again.ran(), Vec::<String>::new());
    assert!(again.hits().contains(&"report".to_string()));
}

const MD_MINIMAL: &str = "# {{ title }}\n\n{% for f in findings %}- {{ f }}\n{% endfor %}";
const HTML_MINIMAL: &str = "<html><body><h1>{{ title }}</h1></body></html>\n";

#[test]
fn editing_a_template_reruns_only_the_report() {
    let ws = Workspace::new("tr118-report-");
    ws.write("mytemplates/report.md.j2", MD_MINIMAL);
    ws.write("mytemplates/report.html.j2", HTML_MINIMAL);
    study(&ws, ", templates = \"mytemplates\"");
    let first = ws.make_ok();
    assert_eq!(first.ran(), vec!["report".to_string(), "stats".to_string()]);
    assert!(read(&ws, "out/report/report.md").starts_with("# Fixture study\n"));

    ws.write("mytemplates/report.md.j2", format!("{MD_MINIMAL}\nEdited.\n"));
    let second = ws.make_ok();
    assert_eq!(second.ran(), vec!["report".to_string()]);
    assert_eq!(second.hits(), vec!["stats".to_string()]);
    assert!(read(&ws, "out/report/report.md").ends_with("Edited.\n"));
}

#[test]
fn a_template_error_names_the_template_file_and_line() {
    let ws = Workspace::new("tr118-report-");
    ws.write("mytemplates/report.md.j2", "# {{ title }}\n\n{% for f in findings %}\n- {{ f }}\n");
    ws.write("mytemplates/report.html.j2", HTML_MINIMAL);
    study(&ws, ", templates = \"mytemplates\"");
    let m = ws.make();
    m.run.code(1);
    assert!(m.run.stderr.contains("`mytemplates/report.md.j2` line 4"), "a syntax error at the end of the file\n{}", m.run);
    assert!(m.run.stderr.contains("syntax error"), "{}", m.run);

    // Strict mode: a misspelt name is an error, not an empty string.
    ws.write("mytemplates/report.md.j2", "# {{ title }}\n{{ findngs }}\n");
    let m = ws.make();
    m.run.code(1);
    assert!(m.run.stderr.contains("`mytemplates/report.md.j2` line 2"), "{}", m.run);
    assert!(m.run.stderr.contains("undefined value, in `{{ findngs }}`"), "{}", m.run);

    // A template missing from the directory is named.
    std::fs::remove_file(ws.path("mytemplates/report.html.j2")).unwrap();
    ws.write("mytemplates/report.md.j2", MD_MINIMAL);
    let m = ws.make();
    m.run.code(1);
    assert!(m.run.stderr.contains("no `report.html.j2`"), "{}", m.run);
}

#[test]
fn an_artifact_of_the_wrong_kind_or_an_unknown_dep_is_named() {
    let ws = Workspace::new("tr118-report-");
    study(&ws, "");
    // The gate dep pointed at a perplexity result.
    let toml =
        String::from_utf8(ws.read("tr118.toml")).unwrap().replace("gate = \"fixtures/gate.json\"", "gate = \"fixtures/perplexity/ort-cpu/perplexity.json\"");
    ws.pipeline(&toml);
    let m = ws.make();
    m.run.code(1);
    assert!(m.run.stderr.contains("`fixtures/perplexity/ort-cpu/perplexity.json`: the `gate` dep should be a `gate` stage's `gate.json`"), "{}", m.run);
    assert!(m.run.stderr.contains("missing field `reference`"), "{}", m.run);

    // A perplexity dep pointed at the gate.
    ws.pipeline(
        &toml
            .replace("gate = \"fixtures/perplexity/ort-cpu/perplexity.json\"", "gate = \"fixtures/gate.json\"")
            .replace("perplexity = [\"fixtures/perplexity/ort-cpu/perplexity.json\"", "perplexity = [\"fixtures/gate.json\""),
    );
    let m = ws.make();
    m.run.code(1);
    assert!(m.run.stderr.contains("`fixtures/gate.json`: the `perplexity` dep should be a `perplexity` node's `perplexity.json`"), "{}", m.run);
    assert!(m.run.stderr.contains("missing field `backend`"), "{}", m.run);

    ws.pipeline(&toml.replace("gate = \"fixtures/perplexity/ort-cpu/perplexity.json\"", "gaet = \"fixtures/gate.json\""));
    let run = ws.tr(&["make"]);
    run.code(2);
    assert!(run.stderr.contains("a `report` stage has no dep `gaet`") && run.stderr.contains("gate"), "{run}");
}
