//! The `export` stage's `hf` variant: a Hugging Face directory holding the weights the ONNX
//! variants run, for PyTorch backends.
//!
//! | check                                                   | against                                  | bound    |
//! |---------------------------------------------------------|------------------------------------------|----------|
//! | Llama (Q4_1 GGUF, interleaved RoPE, GQA, tied) → `hf/` → ONNX again | the first export's prefill logits | 1e-5 abs |
//! | the same, both prefills                                 | naive f64 forward of the dequantised weights | 1e-4 abs |
//! | GPT-2 (Hugging Face original layout, untied) → `hf/` → ONNX again | the same two                | 1e-5, 1e-4 |
//! | `config.json`, safetensors names and types, `export.json` | what transformers reads; the files' sizes and blake3 | exact |
//! | `precision = "fp16"`                                    | float16-rounded weights, stored as float32 | exact  |
//! | `transformers` loads `hf/` (when a Python has it)       | ONNX Runtime on the prefill export       | 1e-4 abs |
//! | `variants` listing `hf` twice, or an unknown name       | a diagnostic naming it                   |          |
//!
//! The round trip reads `hf/` with tr118's own Hugging Face reader, which shares no code with
//! the writer but the tensor-name table, and compares logits, so a layout mistake in the writer
//! (an un-permuted Q/K, an untransposed Conv1D, a wrong `rope_theta`) changes numbers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::reference::{self, Weights, gpt2, random_weights_scaled};
use crate::support::workspace::Workspace;
use ndarray::ArrayD;
use serde_json::{Value, json};
use tr118::model::dtype::{DType, decode};
use tr118::model::write::{Tensor, encode, write_gguf, write_hf};
use tr118::model::{Arch, Checkpoint, ModelConfig, RopeLayout};
use tr118::runtime::{Session, SessionOptions};

/// Two fp32 ONNX exports of the same weights, one through `hf/`.
const TOL_ROUND_TRIP: f64 = 1e-5;
/// An fp32 export against the f64 reference, as in `tests/suite/export.rs`.
const TOL_REFERENCE: f64 = 1e-4;
/// PyTorch (`transformers`) against ONNX Runtime.
const TOL_TORCH: f64 = 1e-4;
/// Standard deviation of the random weights: logits spread over several units.
const WEIGHT_STD: f64 = 0.25;
/// Prompts of at least two tokens (so that attention over positions is exercised), every id
/// below both vocabularies.
const PROMPTS: [&[u32]; 3] = [&[5, 17, 2, 41, 17, 9, 30], &[1, 33, 33, 60, 8], &[12, 0]];

/// 4 query heads over 2 key/value heads of size 8; widths multiples of 32 for Q4_1 blocks;
/// `rope_theta` away from every default, so a `config.json` that lost it changes the logits.
fn llama_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 61,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        d_model: 32,
        d_ff: 64,
        n_ctx: 64,
        norm_eps: 1e-5,
        rope_theta: 50000.0,
        rope_layout: RopeLayout::Interleaved,
        tied_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

fn gpt2_config() -> ModelConfig {
    ModelConfig { tied_embeddings: false, bos_token_id: Some(0), eos_token_id: Some(0), ..gpt2(64, 2, 16, 16) }
}

/// A model, its weights as the reference sees them, and how its checkpoint is written.
struct Case {
    name: &'static str,
    cfg: ModelConfig,
    weights: Weights,
    /// The checkpoint's path in the workspace, as the pipeline names it.
    checkpoint: &'static str,
}

impl Case {
    /// The Llama as a GGUF whose matrices are Q4_1, as llama.cpp quantises (norms stay f32):
    /// the reference gets the dequantised values, which are all the GGUF holds.
    fn llama_q4_1(seed: u64) -> Case {
        let cfg = llama_config();
        let mut weights = random_weights_scaled(&cfg, seed, WEIGHT_STD);
        for (shape, v) in weights.values_mut() {
            if shape.len() == 2 {
                *v = decode(DType::Q4_1, &encode(DType::Q4_1, v).unwrap(), v.len()).unwrap();
            }
        }
        Case { name: "llama q4_1 gguf", cfg, weights, checkpoint: "model.gguf" }
    }

    /// GPT-2 as a Hugging Face directory in the original upload's layout (bare names, mask
    /// buffers, Conv1D weights `[in, out]`).
    fn gpt2_hf(seed: u64) -> Case {
        let cfg = gpt2_config();
        let weights = random_weights_scaled(&cfg, seed, WEIGHT_STD);
        Case { name: "gpt2 hf", cfg, weights, checkpoint: "source" }
    }

    fn tensors(&self) -> Vec<Tensor> {
        reference::writer_tensors(&self.cfg, &self.weights)
    }

    fn write(&self, ws: &Workspace) {
        let path = ws.path(self.checkpoint);
        let written = match self.cfg.arch {
            Arch::Llama => write_gguf(
                &path,
                &self.cfg,
                &self.tensors(),
                |t| {
                    if t.shape.len() == 2 { DType::Q4_1 } else { DType::F32 }
                },
                &[],
            ),
            Arch::Gpt2 => write_hf(&path, &self.cfg, &self.tensors(), DType::F32, 1),
        };
        written.unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn param_count(&self) -> u64 {
        self.cfg.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    /// Reference logits `[seq][vocab]`, checked to be spread out and to move with position.
    fn reference(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let logits = reference::forward(&self.cfg, &self.weights, tokens);
        spread_out(&logits, self.name);
        logits
    }
}

/// Asserts that logits are O(1), spread over several units, and differ between the first and
/// last positions: a comparison of near-constant numbers would prove nothing.
fn spread_out(logits: &[Vec<f32>], what: &str) {
    for (t, row) in logits.iter().enumerate() {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(std > 0.5 && std < 50.0, "{what}: reference logits at position {t} have std {std}");
    }
    let moved = logits[0].iter().zip(&logits[logits.len() - 1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.1, "{what}: first and last positions give the same logits");
}

fn workspace() -> Workspace {
    Workspace::new("tr118-export-hf-")
}

/// An export of `checkpoint` with `fields`, named `stage`.
fn export_stage(stage: &str, checkpoint: &str, fields: &str) -> String {
    format!("[stages.{stage}]\nkind = \"export\"\ndeps = {{ checkpoint = \"{checkpoint}\" }}\n{fields}\n")
}

/// `case` exported with `variants = ["prefill", "hf"]` as `export`, and `out/export/hf`
/// exported again to a prefill as `again`.
fn export_twice(case: &Case) -> Workspace {
    let ws = workspace();
    case.write(&ws);
    ws.pipeline(&format!(
        "{}\n{}",
        export_stage("export", case.checkpoint, "variants = [\"prefill\", \"hf\"]\ntokenizer = false"),
        export_stage("again", "out/export/hf", "variants = [\"prefill\"]\ntokenizer = false"),
    ));
    let m = ws.make_ok();
    assert_eq!(m.ran(), ["again", "export"], "{}", m.run);
    ws
}

fn session(model: &Path) -> Session {
    assert!(model.is_file(), "`{}` was not exported", model.display());
    // One thread: test binaries already run in parallel on small machines.
    let opts = SessionOptions { intra_threads: Some(1), ..SessionOptions::default() };
    support::ort().session(model, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Prefill logits `[seq][vocab]` of one sequence.
fn prefill(s: &mut Session, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let logits: ArrayD<f32> = s.run_prefill(&ids, &vec![1; ids.len()], 1, ids.len()).unwrap_or_else(|e| panic!("{e}"));
    let vocab = logits.shape()[2];
    (0..tokens.len()).map(|t| (0..vocab).map(|v| logits[[0, t, v]]).collect()).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len(), "positions");
    let mut worst = 0.0f64;
    for (ra, rb) in a.iter().zip(b) {
        assert_eq!(ra.len(), rb.len(), "vocabulary");
        for (x, y) in ra.iter().zip(rb) {
            assert!(x.is_finite() && y.is_finite(), "{x} vs {y}");
            worst = worst.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    worst
}

#[track_caller]
fn assert_within(diff: f64, tol: f64, what: &str) {
    assert!(diff <= tol, "{what}: max abs diff {diff:.3e} exceeds {tol:.0e}");
    eprintln!("{what}: max abs diff {diff:.2e}");
}

fn blake3_of(paths: &[PathBuf]) -> String {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())));
    }
    h.finalize().to_hex().to_string()
}

/// The safetensors header of `path`: tensor name → (dtype, shape).
fn safetensors_entries(path: &Path) -> Vec<(String, String, Vec<usize>)> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (tensors, _) = tr118::model::safetensors::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tensors.into_values().map(|t| (t.name, t.dtype, t.shape)).collect()
}

/// The `hf` entry of `out/export/export.json`, checked against the files of `out/export/hf/`.
fn check_manifest_entry(ws: &Workspace, case: &Case, files: &[&str], precision: &str) -> Value {
    let m = ws.json("out/export/export.json");
    let entry = m["variants"].as_array().unwrap().iter().find(|v| v["variant"] == "hf").cloned();
    let entry = entry.unwrap_or_else(|| panic!("{}: no `hf` entry in export.json: {m:#}", case.name));
    let dir = ws.path("out/export/hf");
    let listed: Vec<(String, u64)> =
        entry["files"].as_array().unwrap().iter().map(|f| (f["name"].as_str().unwrap().to_string(), f["bytes"].as_u64().unwrap())).collect();
    let want: Vec<(String, u64)> = files.iter().map(|f| (f.to_string(), fs::metadata(dir.join(f)).unwrap().len())).collect();
    assert_eq!(listed, want, "{}: `files` of the hf entry", case.name);
    assert_eq!(entry["file_bytes"].as_u64(), Some(want.iter().map(|(_, b)| b).sum()), "{}: file_bytes", case.name);
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    assert_eq!(entry["digest"].as_str(), Some(blake3_of(&paths).as_str()), "{}: digest is blake3 of the files in order", case.name);
    assert_eq!(entry["precision"], precision);
    assert_eq!(entry["file"], "model.safetensors");
    assert_eq!(entry["dtype"], "F32");
    assert_eq!(entry["parameters"].as_u64(), Some(case.param_count()));
    assert_eq!(entry["tensor_count"].as_u64(), Some(case.cfg.expected_tensors().len() as u64));
    let ms = entry["export_ms"].as_f64().unwrap_or(-1.0);
    assert!(ms > 0.0 && ms < 60_000.0, "export_ms {ms}");
    entry
}

/// The round trip: both prefills agree with each other and with the reference, prompt by
/// prompt.
fn check_round_trip(ws: &Workspace, case: &Case) {
    let mut first = session(&ws.path("out/export/prefill/model.onnx"));
    let mut again = session(&ws.path("out/again/prefill/model.onnx"));
    let (mut between, mut to_reference) = (0.0f64, 0.0f64);
    for prompt in PROMPTS {
        let want = case.reference(prompt);
        let (a, b) = (prefill(&mut first, prompt), prefill(&mut again, prompt));
        between = between.max(max_diff(&a, &b));
        to_reference = to_reference.max(max_diff(&a, &want)).max(max_diff(&b, &want));
    }
    assert_within(between, TOL_ROUND_TRIP, &format!("{}: prefill vs prefill through hf/", case.name));
    assert_within(to_reference, TOL_REFERENCE, &format!("{}: both prefills vs reference", case.name));
}

// ---------------------------------------------------------------------------------------
// 1. Round trips through tr118's own reader
// ---------------------------------------------------------------------------------------

#[test]
fn llama_q4_1_gguf_through_hf_gives_the_same_logits() {
    let case = Case::llama_q4_1(10);
    let cfg = &case.cfg;
    // Un-permuting Q and K is not a no-op for this model: with a head size of 2 the row
    // order would be the identity; and the model computed with its rows read in the half
    // layout, as a writer that skipped the step would leave them, is another function.
    assert!(cfg.head_dim() > 2 && cfg.n_head > 1 && cfg.n_kv_head > 1, "{cfg:?}");
    let skipped = ModelConfig { rope_layout: RopeLayout::Half, ..cfg.clone() };
    let wrong = reference::forward(&skipped, &case.weights, PROMPTS[0]);
    let off = max_diff(&wrong, &case.reference(PROMPTS[0]));
    assert!(off > 1000.0 * TOL_REFERENCE, "skipping the un-permutation moves the logits by only {off:.1e}");

    let ws = export_twice(&case);
    assert_eq!(ws.files("out/export"), ["export.json", "hf/config.json", "hf/model.safetensors", "prefill/model.onnx"]);

    let config = ws.json("out/export/hf/config.json");
    for (field, want) in [
        ("architectures", json!(["LlamaForCausalLM"])),
        ("model_type", json!("llama")),
        ("vocab_size", json!(61)),
        ("hidden_size", json!(32)),
        ("intermediate_size", json!(64)),
        ("num_hidden_layers", json!(2)),
        ("num_attention_heads", json!(4)),
        ("num_key_value_heads", json!(2)),
        ("head_dim", json!(8)),
        ("max_position_embeddings", json!(64)),
        ("rms_norm_eps", json!(1e-5)),
        ("rope_theta", json!(50000.0)),
        ("rope_parameters", json!({ "rope_type": "default", "rope_theta": 50000.0 })),
        ("hidden_act", json!("silu")),
        ("attention_bias", json!(false)),
        ("mlp_bias", json!(false)),
        ("tie_word_embeddings", json!(true)),
        ("bos_token_id", json!(1)),
        ("eos_token_id", json!(2)),
        ("dtype", json!("float32")),
        ("torch_dtype", json!("float32")),
    ] {
        assert_eq!(config[field], want, "config.json `{field}`: {config:#}");
    }

    // Tied: no `lm_head.weight`; every tensor float32, under the names transformers loads.
    let entries = safetensors_entries(&ws.path("out/export/hf/model.safetensors"));
    assert!(entries.iter().all(|(_, dtype, _)| dtype == "F32"), "{entries:?}");
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(!names.contains(&"lm_head.weight"), "{names:?}");
    assert!(names.contains(&"model.embed_tokens.weight") && names.contains(&"model.layers.1.self_attn.k_proj.weight"), "{names:?}");
    assert_eq!(entries.len(), cfg.expected_tensors().len());
    let entry = check_manifest_entry(&ws, &case, &["config.json", "model.safetensors"], "fp32");
    assert_eq!(entry["architecture"], "LlamaForCausalLM");

    // Read back as Hugging Face: the half layout, every field of the config kept.
    let again = ws.json("out/again/export.json");
    let read: ModelConfig = serde_json::from_value(again["checkpoint"]["config"].clone()).unwrap();
    assert_eq!(read, ModelConfig { rope_layout: RopeLayout::Half, ..cfg.clone() });
    assert_eq!(again["checkpoint"]["format"], "safetensors");

    check_round_trip(&ws, &case);
}

#[test]
fn gpt2_hf_through_hf_gives_the_same_logits() {
    let case = Case::gpt2_hf(20);
    let ws = export_twice(&case);
    assert_eq!(ws.files("out/export"), ["export.json", "hf/config.json", "hf/model.safetensors", "prefill/model.onnx"]);

    let config = ws.json("out/export/hf/config.json");
    for (field, want) in [
        ("architectures", json!(["GPT2LMHeadModel"])),
        ("model_type", json!("gpt2")),
        ("vocab_size", json!(64)),
        ("n_embd", json!(16)),
        ("n_layer", json!(2)),
        ("n_head", json!(2)),
        ("n_inner", json!(64)),
        ("n_positions", json!(16)),
        ("layer_norm_epsilon", json!(1e-5)),
        ("activation_function", json!("gelu_new")),
        ("tie_word_embeddings", json!(false)),
        ("dtype", json!("float32")),
    ] {
        assert_eq!(config[field], want, "config.json `{field}`: {config:#}");
    }

    // `save_pretrained`'s names: the `transformer.` prefix, an untied `lm_head.weight`, no
    // mask buffers (the source had them), Conv1D weights `[in, out]`.
    let entries = safetensors_entries(&ws.path("out/export/hf/model.safetensors"));
    let shape_of = |name: &str| entries.iter().find(|(n, _, _)| n == name).map(|(_, _, s)| s.clone());
    assert_eq!(shape_of("transformer.h.0.attn.c_attn.weight"), Some(vec![16, 48]));
    assert_eq!(shape_of("transformer.h.1.mlp.c_fc.weight"), Some(vec![16, 64]));
    assert_eq!(shape_of("lm_head.weight"), Some(vec![64, 16]));
    assert!(entries.iter().all(|(n, dtype, _)| dtype == "F32" && !n.ends_with(".attn.bias")), "{entries:?}");
    assert_eq!(entries.len(), case.cfg.expected_tensors().len());
    let entry = check_manifest_entry(&ws, &case, &["config.json", "model.safetensors"], "fp32");
    assert_eq!(entry["architecture"], "GPT2LMHeadModel");

    check_round_trip(&ws, &case);
}

/// ONNX `fp16` stores float16 weights; `hf/` holds the same rounded values as float32, so
/// that PyTorch runs the very weights the ONNX models hold.
#[test]
fn fp16_export_writes_the_rounded_weights_as_float32() {
    let case = Case::gpt2_hf(30);
    let ws = workspace();
    case.write(&ws);
    ws.pipeline(&export_stage("export", case.checkpoint, "variants = [\"hf\"]\nprecision = \"fp16\"\ntokenizer = false"));
    ws.make_ok();
    assert_eq!(ws.files("out/export"), ["export.json", "hf/config.json", "hf/model.safetensors"]);
    check_manifest_entry(&ws, &case, &["config.json", "model.safetensors"], "fp16");
    assert_eq!(ws.json("out/export/hf/config.json")["dtype"], "float32");

    let ck = Checkpoint::open(&ws.path("out/export/hf")).unwrap_or_else(|e| panic!("{e}"));
    let mut rounded_any = false;
    for (name, (_, original)) in &case.weights {
        let got = ck.load(name).unwrap_or_else(|e| panic!("{e}"));
        let want: Vec<f32> = original.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert!(got == want, "`{name}` does not hold the float16-rounded weights");
        rounded_any |= want != *original;
    }
    assert!(rounded_any, "rounding through float16 changed no weight: the check above proves nothing");
}

// ---------------------------------------------------------------------------------------
// 2. transformers loads the directory
// ---------------------------------------------------------------------------------------

/// Loads `argv[1]` with `AutoModelForCausalLM` and `AutoTokenizer`, prints JSON: the class,
/// loading info, `argv[2]` tokenized, and the logits of each id list of `argv[3]`.
const TORCH_SCRIPT: &str = r#"
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, text, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.set_num_threads(1)
model, info = AutoModelForCausalLM.from_pretrained(
    model_dir, local_files_only=True, torch_dtype=torch.float32, output_loading_info=True
)
model.eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
with torch.no_grad():
    logits = [model(torch.tensor([ids], dtype=torch.long)).logits[0].tolist() for ids in prompts]
print(json.dumps({
    "class": type(model).__name__,
    "dtype": str(next(model.parameters()).dtype),
    "missing": sorted(info.get("missing_keys", [])),
    "unexpected": sorted(info.get("unexpected_keys", [])),
    "mismatched": [str(m) for m in info.get("mismatched_keys", [])],
    "encoded": tokenizer(text, add_special_tokens=False)["input_ids"],
    "logits": logits,
}))
"#;

/// A Python that imports `torch` and `transformers`: `$TR118_TEST_PYTHON`, then
/// `/opt/venv-torch/bin/python`, then `python3`.
fn torch_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("TR118_TEST_PYTHON").map(PathBuf::from).into_iter().chain(["/opt/venv-torch/bin/python".into(), "python3".into()]);
    candidates.into_iter().find(|p| Command::new(p).args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success()))
}

#[test]
fn transformers_loads_hf_and_matches_onnx_runtime() {
    let Some(python) = torch_python() else {
        eprintln!("skipped: no python with torch and transformers (set TR118_TEST_PYTHON)");
        return;
    };
    for case in [Case::llama_q4_1(40), Case::gpt2_hf(50)] {
        let ws = workspace();
        case.write(&ws);
        // A word-level tokenizer (`t7` is id 7), so that the ids of a text are known here.
        ws.write("tokenizer.json", support::word_tokenizer_json(case.cfg.vocab_size));
        ws.pipeline(&format!(
            "[stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"{}\", tokenizer = \"tokenizer.json\" }}\nvariants = [\"prefill\", \"hf\"]\n",
            case.checkpoint
        ));
        ws.make_ok();
        let hf = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
        check_manifest_entry(&ws, &case, &hf, "fp32");
        assert_eq!(ws.read("out/export/hf/tokenizer.json"), ws.read("out/export/tokenizer.json"), "the tokenizer is copied as written");

        ws.write("load.py", TORCH_SCRIPT);
        let text = PROMPTS[0].iter().map(|t| format!("t{t}")).collect::<Vec<_>>().join(" ");
        let out = Command::new(&python)
            .arg(ws.path("load.py"))
            .arg(ws.path("out/export/hf"))
            .arg(&text)
            .arg(serde_json::to_string(&PROMPTS).unwrap())
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .env("HF_HOME", ws.path("hf-home"))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: transformers failed:\n{stderr}", case.name);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got: Value =
            stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no JSON from the script:\n{stdout}\n{stderr}"));

        let class = if case.cfg.arch == Arch::Llama { "LlamaForCausalLM" } else { "GPT2LMHeadModel" };
        assert_eq!(got["class"], class, "{}", case.name);
        assert_eq!(got["dtype"], "torch.float32", "{}", case.name);
        for key in ["missing", "unexpected", "mismatched"] {
            assert_eq!(got[key], json!([]), "{}: {key} keys when loading; stderr:\n{stderr}", case.name);
        }
        assert_eq!(got["encoded"], json!(PROMPTS[0]), "{}: AutoTokenizer on {text:?}", case.name);

        let mut ort = session(&ws.path("out/export/prefill/model.onnx"));
        let (mut to_ort, mut to_reference) = (0.0f64, 0.0f64);
        for (i, prompt) in PROMPTS.iter().enumerate() {
            let torch: Vec<Vec<f32>> = serde_json::from_value(got["logits"][i].clone()).unwrap_or_else(|e| panic!("logits {i}: {e}"));
            to_ort = to_ort.max(max_diff(&torch, &prefill(&mut ort, prompt)));
            to_reference = to_reference.max(max_diff(&torch, &case.reference(prompt)));
        }
        assert_within(to_ort, TOL_TORCH, &format!("{}: transformers vs ONNX Runtime", case.name));
        assert_within(to_reference, TOL_REFERENCE, &format!("{}: transformers vs reference", case.name));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn hf_listed_twice_or_misspelled_is_named() {
    let ws = workspace();
    Case::gpt2_hf(60).write(&ws);
    // Line 4 holds `variants`.
    let pipeline = |variants: &str| export_stage("export", "source", &format!("variants = {variants}\ntokenizer = false"));

    ws.pipeline(&pipeline("[\"hf\", \"prefill\", \"hf\"]"));
    ws.tr(&["make", "--json"]).diag(4, "variant `hf` is listed twice");
    // Too far from any name for a "did you mean"; the help lists them all.
    ws.pipeline(&pipeline("[\"prefill\", \"hg\"]"));
    ws.tr(&["make", "--json"]).diag(4, "unknown variant `hg`").stderr_has("help: variants are \"prefill\", \"decoder\", \"decoder_fixed\", \"hf\"");
    assert_eq!(ws.files("out"), Vec::<String>::new());
}
