//! The `export` stage end to end: the real binary turns tiny random checkpoints (GGUF, Hugging
//! Face single-file and sharded; GPT-2, and Llama with grouped-query attention in both RoPE
//! layouts) into ONNX files, ONNX Runtime runs them, and their logits are compared with the
//! naive f64 forward pass of `support/reference.rs`, which shares no code with the exporter.
//!
//! What each export is checked against:
//!
//! | check                                            | against                                   | bound                  |
//! |--------------------------------------------------|-------------------------------------------|------------------------|
//! | prefill logits of one sequence                   | reference                                 | 1e-4 abs               |
//! | decoder, one token a step from past = 0          | reference and the prefill logits          | 1e-4 abs               |
//! | decoder, whole prompt then one more token        | reference of prompt + token               | 1e-4 abs               |
//! | right-padded batch of two (prefill and decoder)  | each sequence's reference, unpadded positions | 1e-4 abs           |
//! | `fp16`: every check above                        | fp32 reference                            | 1e-2 × max \|logit\| (decoder vs prefill: 1e-4 abs) |
//! | `fp16`: prefill, and a decode step after the prompt | reference with f16-rounded weights     | at least 1e-4 × max \|logit\|: float16 arithmetic |
//! | `fp16` graph types (GPT-2 and Llama)             | weights and `MatMul`s float16; LayerNorm, RMSNorm, softmax and the interface float32 | exact |
//! | `export.json`                                    | the files (sizes, blake3), the config, the parameter count | exact  |
//! | `decoder_fixed`: a right-padded batch of two, the prompt then one token a step until the buffer is full | reference (at the positions the padding leaves), and `decoder`'s logits and cache | 1e-4 abs |
//! | `decoder_fixed`: buffer positions a step does not write | the past fed in (a sentinel where nothing was ever written) | bit for bit |
//! | `decoder_fixed` interface                        | `max_length` a fixed dimension of the mask and every cache tensor, in the file and in ONNX Runtime | exact |
//!
//! Then the cache (a second `make` is a hit; `precision` reruns only the export; an export
//! without `decoder_fixed` keeps the config it had before the variant), bad input
//! (each error names the file, tensor or field, and leaves nothing under `out/export/`), and
//! the tokenizer written from a GGUF's vocabulary.
//!
//! Weights are scaled (std 0.25 rather than the 0.02 of initialisation) so that logits spread
//! over several units; [`reference_of`] asserts the spread, so a graph that dropped a
//! layer, a head or a rotation could not pass by comparing near-zero numbers.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::support;
use crate::support::reference::{self, Weights, gpt2, random_weights_scaled};
use crate::support::workspace::{Run, Workspace};
use ndarray::ArrayD;
use serde_json::Value;
use tr118::model::dtype::DType;
use tr118::model::gguf::{GgufHeader, MetaValue};
use tr118::model::write::{Tensor, write_gguf, write_hf};
use tr118::model::{Arch, ModelConfig, RopeLayout};
use tr118::onnx::edit::Model;
use tr118::onnx::proto::{GraphProto, ValueInfoProto};
use tr118::onnx::{BOOL, FLOAT, FLOAT16, INT64};
use tr118::runtime::{Decoder, Feed, Session, SessionOptions, TensorData};

/// Logits of an fp32 export against the f64 reference.
const TOL: f64 = 1e-4;
/// Logits of an `fp16` export against the f64 reference, as a fraction of the largest |logit|.
/// Float16 keeps 11 significant bits, a rounding of up to 2⁻¹¹ ≈ 4.9e-4 at each of the
/// dozens of ops between the embedding and the logits; the test models land at 0.6e-3 to
/// 2.7e-3.
const FP16_MAX: f64 = 1e-2;
/// An `fp16` export is at least this fraction of the largest |logit| away from float32
/// arithmetic on the same float16-rounded weights: float16 arithmetic puts it at 0.4e-3 to
/// 1.2e-3, while float32 arithmetic stays within [`TOL`] (under 3e-5 of these scales).
const FP16_MIN: f64 = 1e-4;
/// Standard deviation of the random weights (norm weights are 1 ± this).
const WEIGHT_STD: f64 = 0.25;
/// The prompt every model is run on, and one token to decode after it.
const PROMPT: [u32; 7] = [5, 17, 2, 41, 17, 9, 30];
const NEXT: u32 = 11;

// ---------------------------------------------------------------------------------------
// The harness (`support/workspace.rs`) and the pipeline of one export.
// ---------------------------------------------------------------------------------------

fn workspace() -> Workspace {
    Workspace::new("tr118-export-")
}

/// A pipeline of one `export` stage named `export` over `checkpoint`, plus `fields`.
fn export_pipeline(checkpoint: &str, fields: &str) -> String {
    format!("[stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"{checkpoint}\" }}\n{fields}\n")
}

// ---------------------------------------------------------------------------------------
// Models: configs, random weights, checkpoints on disk.
// ---------------------------------------------------------------------------------------

fn gpt2_config() -> ModelConfig {
    gpt2(64, 2, 16, 16)
}

/// 4 query heads over 2 key/value heads of size 8.
fn llama_config(layout: RopeLayout, tied: bool) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 61,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        d_model: 32,
        d_ff: 48,
        n_ctx: 64,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: layout,
        tied_embeddings: tied,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// A model and its weights, as the reference sees them.
struct Case {
    name: &'static str,
    cfg: ModelConfig,
    weights: Weights,
}

impl Case {
    /// `seed`s here are multiples of ten: `support::reference::Rng` gives seeds `2k` and
    /// `2k + 1` the same stream.
    fn new(name: &'static str, cfg: ModelConfig, seed: u64) -> Case {
        let weights = random_weights_scaled(&cfg, seed, WEIGHT_STD);
        Case { name, cfg, weights }
    }

    /// The weights as writer tensors, in the architecture's order.
    fn tensors(&self) -> Vec<Tensor> {
        reference::writer_tensors(&self.cfg, &self.weights)
    }

    fn param_count(&self) -> u64 {
        self.cfg.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    fn write_gguf(&self, path: &Path, extra: &[(&str, MetaValue)]) {
        write_gguf(path, &self.cfg, &self.tensors(), |_| DType::F32, extra).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn write_hf(&self, dir: &Path, shards: usize) {
        write_hf(dir, &self.cfg, &self.tensors(), DType::F32, shards).unwrap_or_else(|e| panic!("write {}: {e}", dir.display()));
    }

    /// Reference logits `[seq][vocab]`, checked to be O(1) and spread out.
    fn reference(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        reference_of(&self.cfg, &self.weights, tokens, self.name)
    }
}

fn reference_of(cfg: &ModelConfig, w: &Weights, tokens: &[u32], what: &str) -> Vec<Vec<f32>> {
    let logits = reference::forward(cfg, w, tokens);
    for (t, row) in logits.iter().enumerate() {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(std > 0.5, "{what}: reference logits at position {t} have std {std}: too flat for a comparison to mean anything");
        assert!(max < 50.0, "{what}: reference logits at position {t} reach {max}: not O(1)");
    }
    // Different positions must see different contexts, or attention is not being tested.
    let (a, b) = (&logits[0], &logits[logits.len() - 1]);
    let moved = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.1, "{what}: first and last positions give the same logits");
    logits
}

/// Weights as a `fp16` export stores them: rounded through float16.
fn rounded_to_f16(w: &Weights) -> Weights {
    w.iter().map(|(k, (s, v))| (k.clone(), (s.clone(), v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()))).collect()
}

// ---------------------------------------------------------------------------------------
// ONNX Runtime
// ---------------------------------------------------------------------------------------

fn session(model: &Path) -> Session {
    assert!(model.is_file(), "`{}` was not exported", model.display());
    // One thread: test binaries already run in parallel on small machines.
    let opts = SessionOptions { intra_threads: Some(1), ..SessionOptions::default() };
    support::ort().session(model, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// Max |got[b, t, :] - want[t]| over `t < want.len()`.
fn max_diff(got: &ArrayD<f32>, b: usize, want: &[Vec<f32>]) -> f64 {
    let vocab = got.shape()[2];
    let mut worst = 0.0f64;
    for (t, row) in want.iter().enumerate() {
        assert_eq!(row.len(), vocab, "vocabulary of the logits");
        for (v, &w) in row.iter().enumerate() {
            let g = got[[b, t, v]];
            assert!(g.is_finite(), "logit [{b}, {t}, {v}] is {g}");
            worst = worst.max((f64::from(g) - f64::from(w)).abs());
        }
    }
    worst
}

#[track_caller]
fn assert_within(diff: f64, tol: f64, what: &str) {
    assert!(diff <= tol, "{what}: max abs diff {diff:.3e} exceeds {tol:.0e}");
    eprintln!("{what}: max abs diff {diff:.2e}");
}

fn ids_i64(tokens: &[u32]) -> Vec<i64> {
    tokens.iter().map(|&t| i64::from(t)).collect()
}

/// Runs every numerical check on the `prefill` and `decoder` exports under `out/<node>/`.
fn check_exports(ws: &Workspace, node: &str, cfg: &ModelConfig, w: &Weights, tol: f64, what: &str) {
    let mut tokens = PROMPT.to_vec();
    tokens.push(NEXT);
    let want = reference_of(cfg, w, &tokens, what);
    let prompt_want = &want[..PROMPT.len()];

    // Prefill, one sequence.
    let mut prefill = session(&ws.path(&format!("out/{node}/prefill/model.onnx")));
    let n = PROMPT.len();
    let logits = prefill.run_prefill(&ids_i64(&PROMPT), &vec![1; n], 1, n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits.shape(), [1, n, cfg.vocab_size]);
    assert_within(max_diff(&logits, 0, prompt_want), tol, &format!("{what}: prefill"));
    let prefill_rows: Vec<Vec<f32>> = (0..n).map(|t| (0..cfg.vocab_size).map(|v| logits[[0, t, v]]).collect()).collect();

    // Decoder, one token a step from an empty cache.
    let model = ws.path(&format!("out/{node}/decoder/model.onnx"));
    let mut dec = Decoder::new(session(&model)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((dec.n_layer(), dec.n_kv_head(), dec.head_dim()), (cfg.n_layer, cfg.n_kv_head, cfg.head_dim()), "decoder cache interface");
    let mut cache = dec.empty_cache(1).unwrap();
    let (mut worst, mut vs_prefill) = (0.0f64, 0.0f64);
    for (t, &id) in tokens.iter().enumerate() {
        let step = dec.step(&mut cache, &[i64::from(id)], 1).unwrap_or_else(|e| panic!("step {t}: {e}"));
        assert_eq!(step.shape(), [1, 1, cfg.vocab_size]);
        worst = worst.max(max_diff(&step, 0, &want[t..=t]));
        if t < n {
            vs_prefill = vs_prefill.max(max_diff(&step, 0, &prefill_rows[t..=t]));
        }
    }
    assert_eq!(cache.past_len(), tokens.len());
    let (k, v) = cache.layer(cfg.n_layer - 1).unwrap();
    assert_eq!(k.shape(), [1, cfg.n_kv_head, tokens.len(), cfg.head_dim()]);
    assert_eq!(v.shape(), k.shape());
    assert_within(worst, tol, &format!("{what}: decoder token by token"));
    assert_within(vs_prefill, TOL, &format!("{what}: decoder token by token vs prefill"));

    // Decoder, the whole prompt at once, then one more token.
    let mut cache = dec.empty_cache(1).unwrap();
    let first = dec.step(&mut cache, &ids_i64(&PROMPT), n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.shape(), [1, n, cfg.vocab_size]);
    let then = dec.step(&mut cache, &[i64::from(NEXT)], 1).unwrap_or_else(|e| panic!("{e}"));
    let worst = max_diff(&first, 0, prompt_want).max(max_diff(&then, 0, &want[n..]));
    assert_within(worst, tol, &format!("{what}: decoder prompt then one token"));

    // A right-padded batch: the prompt and a shorter sequence, padding with a real token id
    // so that a leak would change numbers.
    let short: [u32; 4] = [33, 2, 2, 50];
    let short_want = reference_of(cfg, w, &short, what);
    let pad = 7i64;
    let mut ids = ids_i64(&PROMPT);
    ids.extend(ids_i64(&short));
    ids.extend(std::iter::repeat_n(pad, n - short.len()));
    let mut mask = vec![1i64; n + short.len()];
    mask.extend(std::iter::repeat_n(0, n - short.len()));
    let batch = prefill.run_prefill(&ids, &mask, 2, n).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.shape(), [2, n, cfg.vocab_size]);
    let worst = max_diff(&batch, 0, prompt_want).max(max_diff(&batch, 1, &short_want));
    assert_within(worst, tol, &format!("{what}: prefill padded batch"));

    // The same batch through the decoder model with an empty cache, then one more token for
    // each sequence with the padding still in the cache, fed by hand (the decode step never
    // pads). The mask must hide the padded entries: what the short sequence sees cannot
    // depend on the pad id. Its next position is 7, not 4, so it has no plain reference.
    let mut raw = session(&model);
    let (logits, next) = decode_padded(&mut raw, cfg, &short, pad, true);
    let worst = max_diff(&logits, 0, prompt_want).max(max_diff(&logits, 1, &short_want));
    assert_within(worst, tol, &format!("{what}: decoder padded batch"));
    assert_within(max_diff(&next, 0, &want[n..]), tol, &format!("{what}: decoder padded batch, next token"));
    let (_, other_pad) = decode_padded(&mut raw, cfg, &short, 23, true);
    let row = |a: &ArrayD<f32>| vec![(0..cfg.vocab_size).map(|v| a[[1, 0, v]]).collect::<Vec<f32>>()];
    assert_within(max_diff(&other_pad, 1, &row(&next)), 1e-6, &format!("{what}: masked padding, pad id 7 vs 23"));
    // Unmasked, the padding does reach the next token: the check above can fail.
    let (_, seen_7) = decode_padded(&mut raw, cfg, &short, 7, false);
    let (_, seen_23) = decode_padded(&mut raw, cfg, &short, 23, false);
    let leak = max_diff(&seen_7, 1, &row(&seen_23));
    assert!(leak > 1e-3, "{what}: unmasked padding changes the next token's logits by only {leak:.1e}");
}

/// Through the `decoder` model fed by hand: the prompt and `short` right-padded with `pad`
/// from an empty cache, then [`NEXT`] for both with the mask over past + new tokens hiding
/// the padding (or not, with `mask_padding` false). Returns the logits of both calls.
fn decode_padded(raw: &mut Session, cfg: &ModelConfig, short: &[u32], pad: i64, mask_padding: bool) -> (ArrayD<f32>, ArrayD<f32>) {
    let n = PROMPT.len();
    let mut ids = ids_i64(&PROMPT);
    ids.extend(ids_i64(short));
    ids.extend(std::iter::repeat_n(pad, n - short.len()));
    let mut mask = vec![1i64; n + short.len()];
    mask.extend(std::iter::repeat_n(0, n - short.len()));
    let names: Vec<String> = (0..cfg.n_layer).flat_map(|i| [format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")]).collect();
    let (shape, past_shape) = ([2, n], [2, cfg.n_kv_head, 0, cfg.head_dim()]);
    let mut feeds = vec![
        Feed { name: "input_ids", shape: &shape, data: TensorData::I64(&ids) },
        Feed { name: "attention_mask", shape: &shape, data: TensorData::I64(&mask) },
    ];
    for name in &names {
        feeds.push(Feed { name, shape: &past_shape, data: TensorData::F32(&[]) });
    }
    let mut outputs: BTreeMap<String, ArrayD<f32>> = raw.run(&feeds).unwrap_or_else(|e| panic!("{e}")).into_iter().collect();
    assert_eq!(outputs.len(), 1 + 2 * cfg.n_layer, "outputs of the decoder");
    let first = outputs.remove("logits").expect("a `logits` output");
    assert_eq!(first.shape(), [2, n, cfg.vocab_size]);

    let next_ids = [i64::from(NEXT); 2];
    let mut next_mask: Vec<i64> = mask[..n].to_vec();
    next_mask.push(1);
    next_mask.extend(if mask_padding { mask[n..].to_vec() } else { vec![1; n] });
    next_mask.push(1);
    let pasts: Vec<(String, Vec<f32>)> = (0..cfg.n_layer)
        .flat_map(|i| [(i, "key"), (i, "value")])
        .map(|(i, kind)| {
            let present = &outputs[&format!("present.{i}.{kind}")];
            assert_eq!(present.shape(), [2, cfg.n_kv_head, n, cfg.head_dim()], "`present.{i}.{kind}`");
            (format!("past_key_values.{i}.{kind}"), present.iter().copied().collect())
        })
        .collect();
    let (shape, mask_shape, past_shape) = ([2, 1], [2, n + 1], [2, cfg.n_kv_head, n, cfg.head_dim()]);
    let mut feeds = vec![
        Feed { name: "input_ids", shape: &shape, data: TensorData::I64(&next_ids) },
        Feed { name: "attention_mask", shape: &mask_shape, data: TensorData::I64(&next_mask) },
    ];
    for (name, data) in &pasts {
        feeds.push(Feed { name, shape: &past_shape, data: TensorData::F32(data) });
    }
    let mut outputs: BTreeMap<String, ArrayD<f32>> = raw.run(&feeds).unwrap_or_else(|e| panic!("{e}")).into_iter().collect();
    let next = outputs.remove("logits").expect("a `logits` output");
    assert_eq!(next.shape(), [2, 1, cfg.vocab_size]);
    (first, next)
}

// ---------------------------------------------------------------------------------------
// The export manifest
// ---------------------------------------------------------------------------------------

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|s| s.as_str().expect("a string").to_string()).collect()
}

/// blake3 of the files, one after the other.
fn blake3_of(paths: &[PathBuf]) -> String {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(&fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())));
    }
    h.finalize().to_hex().to_string()
}

/// Checks `out/<node>/export.json` against the files beside it; returns it.
fn check_manifest(ws: &Workspace, node: &str, case: &Case, precision: &str, external: bool) -> Value {
    let m = ws.json(&format!("out/{node}/export.json"));
    let cfg = &case.cfg;
    let config = &m["checkpoint"]["config"];
    for (field, want) in [
        ("vocab_size", cfg.vocab_size),
        ("n_layer", cfg.n_layer),
        ("n_head", cfg.n_head),
        ("n_kv_head", cfg.n_kv_head),
        ("d_model", cfg.d_model),
        ("d_ff", cfg.d_ff),
    ] {
        assert_eq!(config[field].as_u64(), Some(want as u64), "checkpoint.config.{field} in {m:#}");
    }
    assert_eq!(config["tied_embeddings"].as_bool(), Some(cfg.tied_embeddings), "checkpoint.config.tied_embeddings");

    let variants = m["variants"].as_array().unwrap_or_else(|| panic!("`variants` is not a list: {m:#}"));
    assert_eq!(variants.iter().map(|v| v["variant"].as_str().unwrap_or("?")).collect::<Vec<_>>(), ["prefill", "decoder"]);
    let weights = cfg.expected_tensors().len() as u64;
    let bytes_per = if precision == "fp16" { 2 } else { 4 };
    for v in variants {
        let name = v["variant"].as_str().unwrap();
        let what = format!("{}: export.json `{name}`", case.name);
        let dir = ws.path(&format!("out/{node}/{name}"));
        let model = dir.join("model.onnx");
        let data = dir.join("model.onnx.data");

        assert_eq!(v["file"], "model.onnx", "{what}");
        assert_eq!(v["precision"], precision, "{what}");
        assert_eq!(v["opset"].as_i64(), Some(17), "{what}");
        let ms = v["export_ms"].as_f64().unwrap_or(-1.0);
        assert!(ms > 0.0 && ms < 60_000.0, "{what}: export_ms {ms}");
        assert_eq!(v["file_bytes"].as_u64(), Some(fs::metadata(&model).unwrap().len()), "{what}: file_bytes");
        assert_eq!(v["external_data"].as_bool(), Some(external), "{what}: external_data");
        assert_eq!(data.exists(), external, "{what}: `model.onnx.data` exists");
        let data_bytes = if external { fs::metadata(&data).unwrap().len() } else { 0 };
        assert_eq!(v["data_bytes"].as_u64(), Some(data_bytes), "{what}: data_bytes");

        let mut inputs = vec!["input_ids".to_string(), "attention_mask".to_string()];
        let mut outputs = vec!["logits".to_string()];
        let mut axes = vec!["batch", "sequence"];
        if name == "decoder" {
            for i in 0..cfg.n_layer {
                inputs.extend([format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")]);
                outputs.extend([format!("present.{i}.key"), format!("present.{i}.value")]);
            }
            axes.extend(["past_sequence", "total_sequence"]);
        }
        assert_eq!(strings(&v["inputs"]), inputs, "{what}: inputs");
        assert_eq!(strings(&v["outputs"]), outputs, "{what}: outputs");
        assert_eq!(strings(&v["dynamic_axes"]), axes, "{what}: dynamic_axes");

        // Every weight is stored once (tied embeddings included) at its precision; the rest
        // are small shape and scalar constants of at most 32 bytes each.
        let count = v["initializer_count"].as_u64().unwrap_or(0);
        let init_bytes = v["initializer_bytes"].as_u64().unwrap_or(0);
        assert!(count >= weights, "{what}: {count} initializers for {weights} weights");
        let weight_bytes = case.param_count() * bytes_per;
        assert!(
            init_bytes >= weight_bytes && init_bytes - weight_bytes <= 32 * (count - weights),
            "{what}: initializer_bytes {init_bytes} for {} parameters at {bytes_per} bytes ({weight_bytes}) and {} constants",
            case.param_count(),
            count - weights
        );
        if external {
            let file = v["file_bytes"].as_u64().unwrap();
            assert!(file + data_bytes >= weight_bytes, "{what}: {file} + {data_bytes} bytes cannot hold {weight_bytes} bytes of weights");
            assert!(4 * file < weight_bytes, "{what}: `model.onnx` is {file} bytes: the weights ({weight_bytes} bytes) are not in the data file");
        } else {
            assert!(v["file_bytes"].as_u64().unwrap() > weight_bytes, "{what}: the model file is smaller than its weights");
        }

        let digest = v["digest"].as_str().unwrap_or("");
        assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{what}: digest `{digest}`");
        let files = if external { vec![model.clone(), data.clone()] } else { vec![model.clone()] };
        assert_eq!(digest, blake3_of(&files), "{what}: digest is blake3 of the model file (then its data)");
    }
    m
}

/// Opens both exports under `out/<node>/` and checks the interface they declare: the names
/// the manifest lists, the cache's fixed axes, the vocabulary.
fn check_interface(ws: &Workspace, node: &str, case: &Case) {
    let cfg = &case.cfg;
    let m = ws.json(&format!("out/{node}/export.json"));
    for v in m["variants"].as_array().unwrap() {
        let name = v["variant"].as_str().unwrap();
        let what = format!("{}: `{node}/{name}`", case.name);
        let (inputs, outputs) = (strings(&v["inputs"]), strings(&v["outputs"]));
        let s = session(&ws.path(&format!("out/{node}/{name}/model.onnx")));
        assert_eq!(s.inputs().iter().map(|i| i.name.clone()).collect::<Vec<_>>(), inputs, "{what}: the model's inputs");
        // The graph declares the cache outputs before `logits` (they are made first); the
        // order of outputs means nothing to a caller, who reads them by name.
        let mut declared: Vec<String> = s.outputs().iter().map(|o| o.name.clone()).collect();
        declared.sort();
        let mut listed = outputs.clone();
        listed.sort();
        assert_eq!(declared, listed, "{what}: the model's outputs");
        if name == "decoder" {
            let past = s.input("past_key_values.0.key").unwrap();
            assert_eq!((past.fixed(1), past.fixed(3)), (Some(cfg.n_kv_head as u64), Some(cfg.head_dim() as u64)), "{what}: {past}");
        }
        let logits = s.output("logits").unwrap();
        assert_eq!(logits.fixed(2), Some(cfg.vocab_size as u64), "{what}: {logits}");
    }
}

/// Writes `case` as a checkpoint with `write`, exports it with the binary, checks everything.
fn export_and_check(case: &Case, checkpoint: &str, write: impl FnOnce(&Workspace)) {
    let ws = workspace();
    write(&ws);
    ws.pipeline(&export_pipeline(checkpoint, "tokenizer = false"));
    let m = ws.make_ok();
    assert_eq!(m.ran(), ["export"], "{}", m.run);
    assert_eq!(ws.files("out/export"), ["decoder/model.onnx", "export.json", "prefill/model.onnx"], "{}: exactly the declared outputs", case.name);
    check_manifest(&ws, "export", case, "fp32", false);
    check_interface(&ws, "export", case);
    for variant in ["prefill", "decoder"] {
        check_types(&ws.path(&format!("out/export/{variant}/model.onnx")), &case.cfg, FLOAT);
    }
    check_exports(&ws, "export", &case.cfg, &case.weights, TOL, case.name);
}

// ---------------------------------------------------------------------------------------
// 1. Every checkpoint layout against the reference
// ---------------------------------------------------------------------------------------

#[test]
fn gpt2_gguf_matches_the_reference() {
    let case = Case::new("gpt2 gguf", gpt2_config(), 10);
    export_and_check(&case, "model.gguf", |ws| case.write_gguf(&ws.path("model.gguf"), &[]));
}

#[test]
fn gpt2_safetensors_single_file_matches_the_reference() {
    let case = Case::new("gpt2 safetensors", gpt2_config(), 20);
    export_and_check(&case, "hf", |ws| case.write_hf(&ws.path("hf"), 1));
}

#[test]
fn gpt2_safetensors_sharded_matches_the_reference() {
    let case = Case::new("gpt2 safetensors sharded", gpt2_config(), 30);
    export_and_check(&case, "hf", |ws| {
        case.write_hf(&ws.path("hf"), 3);
        assert!(ws.path("hf/model.safetensors.index.json").is_file(), "a sharded checkpoint has an index");
    });
}

/// GGUF rows of Q and K are in the interleaved RoPE layout; the exporter permutes them back.
#[test]
fn llama_gguf_interleaved_rope_gqa_matches_the_reference() {
    let case = Case::new("llama gguf", llama_config(RopeLayout::Interleaved, true), 40);
    export_and_check(&case, "model.gguf", |ws| case.write_gguf(&ws.path("model.gguf"), &[]));
}

#[test]
fn llama_safetensors_half_rope_gqa_untied_matches_the_reference() {
    let case = Case::new("llama safetensors", llama_config(RopeLayout::Half, false), 50);
    export_and_check(&case, "hf", |ws| case.write_hf(&ws.path("hf"), 2));
}

// ---------------------------------------------------------------------------------------
// 2. Precision and external data
// ---------------------------------------------------------------------------------------

/// The element type of every tensor in `g`: graph inputs and initializers as declared, each
/// node's outputs from its op and its inputs' types (the exporter writes no `value_info`).
fn element_types(g: &GraphProto) -> HashMap<String, i32> {
    let declared = |v: &ValueInfoProto| v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.elem_type);
    let mut types: HashMap<String, i32> = g.input.iter().map(|v| (v.name.clone().unwrap_or_default(), declared(v).expect("a typed input"))).collect();
    types.extend(g.initializer.iter().map(|t| (t.name.clone().unwrap_or_default(), t.data_type.expect("a typed initializer"))));
    for node in &g.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let input = |i: usize| node.input.get(i).and_then(|n| types.get(n)).copied();
        let t = match op {
            "Cast" => node.attribute.iter().find(|a| a.name.as_deref() == Some("to")).and_then(|a| a.i).map(|t| t as i32),
            "Shape" | "ArgMax" => Some(INT64),
            "LessOrEqual" | "And" => Some(BOOL),
            "Where" => input(1),
            _ => input(0),
        };
        let t = t.unwrap_or_else(|| panic!("node `{}` ({op}): the type of its output is unknown", node.name.as_deref().unwrap_or("?")));
        types.extend(node.output.iter().map(|o| (o.clone(), t)));
    }
    types
}

/// The exported model at `path` computes in `compute` (float32 or float16): every weight is
/// stored in it and every `MatMul` multiplies in it, while the normalisations and the softmax
/// run in float32 and the interface is the same at every precision.
fn check_types(path: &Path, cfg: &ModelConfig, compute: i32) {
    let model = Model::load(path).unwrap_or_else(|e| panic!("{e}"));
    let g = model.graph();
    let types = element_types(g);
    let what = path.display();
    let weights: Vec<String> = cfg.expected_tensors().into_iter().map(|(name, _)| name).collect();
    for t in &g.initializer {
        let name = t.name.as_deref().unwrap_or("");
        if weights.iter().any(|w| w == name) {
            assert_eq!(t.data_type, Some(compute), "{what}: weight `{name}`");
        }
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &g.node {
        let op = node.op_type.as_deref().unwrap_or("");
        let inputs: Vec<i32> = node.input.iter().map(|n| types[n]).collect();
        let name = node.name.as_deref().unwrap_or("?");
        match op {
            "MatMul" => assert_eq!(inputs, [compute, compute], "{what}: `{name}` multiplies"),
            "LayerNormalization" => assert_eq!(inputs, [FLOAT; 3], "{what}: `{name}` normalises"),
            // RMSNorm's mean of squares, and the attention softmax.
            "ReduceMean" | "Softmax" => assert_eq!(inputs[0], FLOAT, "{what}: `{name}`"),
            _ => continue,
        }
        *count.entry(op).or_default() += 1;
    }
    // Four projections a GPT-2 layer, seven a Llama layer; two in attention; the output head.
    let (l, norms) = (cfg.n_layer, 2 * cfg.n_layer + 1);
    let (matmuls, norm) = match cfg.arch {
        Arch::Gpt2 => (6 * l + 1, "LayerNormalization"),
        Arch::Llama => (9 * l + 1, "ReduceMean"),
    };
    assert_eq!(count, BTreeMap::from([("MatMul", matmuls), ("Softmax", l), (norm, norms)]), "{what}: ops checked");
    for v in g.input.iter().chain(&g.output) {
        let name = v.name.as_deref().unwrap_or("");
        let want = if ["input_ids", "attention_mask", "past_length", "next_token"].contains(&name) { INT64 } else { FLOAT };
        assert_eq!(types[name], want, "{what}: interface tensor `{name}`");
    }
}

/// Max |logit - reference| over `t < want.len()`, and the largest |reference logit|.
fn error_and_scale(got: &ArrayD<f32>, want: &[Vec<f32>]) -> (f64, f64) {
    let scale = want.iter().flatten().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    (max_diff(got, 0, want), scale)
}

/// The `fp16` exports under `out/<node>/`: typed for float16 arithmetic, every numerical check
/// within float16's error of the fp32 reference, and that error not the one rounding the
/// weights alone makes.
fn check_fp16(ws: &Workspace, node: &str, case: &Case) {
    let cfg = &case.cfg;
    for variant in ["prefill", "decoder"] {
        check_types(&ws.path(&format!("out/{node}/{variant}/model.onnx")), cfg, FLOAT16);
    }
    let mut tokens = PROMPT.to_vec();
    tokens.push(NEXT);
    let exact = case.reference(&tokens);
    let rounded = reference_of(cfg, &rounded_to_f16(&case.weights), &tokens, &format!("{} (rounded weights)", case.name));
    let n = PROMPT.len();

    let mut prefill = session(&ws.path(&format!("out/{node}/prefill/model.onnx")));
    let logits = prefill.run_prefill(&ids_i64(&tokens), &vec![1; n + 1], 1, n + 1).unwrap_or_else(|e| panic!("{e}"));
    let mut dec = Decoder::new(session(&ws.path(&format!("out/{node}/decoder/model.onnx")))).unwrap_or_else(|e| panic!("{e}"));
    let mut cache = dec.empty_cache(1).unwrap();
    dec.step(&mut cache, &ids_i64(&PROMPT), n).unwrap_or_else(|e| panic!("{e}"));
    let step = dec.step(&mut cache, &[i64::from(NEXT)], 1).unwrap_or_else(|e| panic!("{e}"));
    for (what, got, from) in [("prefill", &logits, 0), ("decode step after the prompt", &step, n)] {
        let (err, scale) = error_and_scale(got, &exact[from..]);
        let (vs_rounded, _) = error_and_scale(got, &rounded[from..]);
        eprintln!(
            "{}, {what}: vs fp32 reference {err:.2e} ({:.2e} of the logit scale {scale:.2}); vs rounded weights {vs_rounded:.2e} ({:.2e})",
            case.name,
            err / scale,
            vs_rounded / scale
        );
        assert!(err <= FP16_MAX * scale, "{}, {what}: {err:.2e} from the fp32 reference, over {FP16_MAX:.0e} of the logit scale {scale:.2}", case.name);
        assert!(
            vs_rounded >= FP16_MIN * scale,
            "{}, {what}: only {vs_rounded:.2e} from float32 arithmetic on the rounded weights, under {FP16_MIN:.0e} of the logit scale {scale:.2}: the arithmetic is not float16",
            case.name
        );
    }
    let scale = exact.iter().flatten().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    check_exports(ws, node, cfg, &case.weights, FP16_MAX * scale, case.name);
}

/// Wide enough that weights, not graph structure, make up most of the file.
fn wide_llama() -> ModelConfig {
    ModelConfig { d_model: 64, n_head: 8, n_kv_head: 2, d_ff: 192, vocab_size: 97, ..llama_config(RopeLayout::Interleaved, false) }
}

fn three_exports() -> String {
    [("fp32", ""), ("fp16", "precision = \"fp16\"\n"), ("external", "external_data = true\n")]
        .map(|(name, field)| format!("[stages.{name}]\nkind = \"export\"\ndeps = {{ checkpoint = \"model.gguf\" }}\ntokenizer = false\n{field}\n"))
        .concat()
}

#[test]
fn fp16_halves_the_file_and_computes_in_fp16() {
    let case = Case::new("llama fp16", wide_llama(), 60);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&three_exports());
    ws.make_ok();

    let fp32 = check_manifest(&ws, "fp32", &case, "fp32", false);
    let fp16 = check_manifest(&ws, "fp16", &case, "fp16", false);
    assert_eq!(ws.files("out/fp16"), ["decoder/model.onnx", "export.json", "prefill/model.onnx"]);
    for (i, variant) in ["prefill", "decoder"].iter().enumerate() {
        let (a, b) = (&fp32["variants"][i], &fp16["variants"][i]);
        let ratio = b["file_bytes"].as_f64().unwrap() / a["file_bytes"].as_f64().unwrap();
        eprintln!("fp16/fp32 file size, {variant}: {ratio:.3}");
        assert!((0.45..=0.56).contains(&ratio), "{variant}: the fp16 file is {ratio:.3} of the fp32 one");
        // The same initializers: every weight at two bytes instead of four, and so is each
        // layer's attention scale, the one float scalar of a Llama graph outside the float32
        // parts (RMSNorm's epsilon, the mask's lowest value and RoPE's frequencies stay float32).
        assert_eq!(a["initializer_count"], b["initializer_count"], "{variant}");
        let saved = a["initializer_bytes"].as_u64().unwrap() - b["initializer_bytes"].as_u64().unwrap();
        assert_eq!(saved, 2 * case.param_count() + 2 * case.cfg.n_layer as u64, "{variant}: bytes saved by fp16");
    }
    check_fp16(&ws, "fp16", &case);
}

#[test]
fn fp16_gpt2_computes_in_fp16_with_layer_norm_in_fp32() {
    let case = Case::new("gpt2 fp16", gpt2_config(), 80);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false\nprecision = \"fp16\""));
    ws.make_ok();
    check_manifest(&ws, "export", &case, "fp16", false);
    check_fp16(&ws, "export", &case);
}

#[test]
fn external_data_goes_beside_the_model() {
    let case = Case::new("llama external data", wide_llama(), 70);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&three_exports());
    ws.make_ok();

    assert_eq!(ws.files("out/external"), ["decoder/model.onnx", "decoder/model.onnx.data", "export.json", "prefill/model.onnx", "prefill/model.onnx.data"]);
    check_manifest(&ws, "external", &case, "fp32", true);
}

/// ONNX Runtime infers shapes while it loads a model, before external data is read, so the
/// small shape constants (`Reshape` shapes, `Unsqueeze` axes) must stay inline, as `onnx`'s
/// own `convert_model_to_external_data` keeps every tensor under 1 KiB.
#[test]
fn external_data_model_loads_and_matches_the_reference() {
    let case = Case::new("llama external data", wide_llama(), 70);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&three_exports());
    ws.make_ok();
    check_interface(&ws, "external", &case);
    check_exports(&ws, "external", &case.cfg, &case.weights, TOL, "llama external data");
}

/// From opset 18 `ReduceMean` takes its axes as an input, which the RMSNorm graph follows.
#[test]
fn opset_18_export_matches_the_reference_and_16_is_refused() {
    let case = Case::new("llama opset 18", llama_config(RopeLayout::Interleaved, false), 90);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false\nopset = 18"));
    ws.make_ok();
    let m = ws.json("out/export/export.json");
    let opsets: Vec<i64> = m["variants"].as_array().unwrap().iter().map(|v| v["opset"].as_i64().unwrap_or(0)).collect();
    assert_eq!(opsets, [18, 18]);
    check_exports(&ws, "export", &case.cfg, &case.weights, TOL, "llama opset 18");

    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false\nopset = 16"));
    ws.tr(&["make"]).diag(5, "`opset` must be an integer of at least 17, found 16");
}

// ---------------------------------------------------------------------------------------
// 3. The fixed-capacity decoder
// ---------------------------------------------------------------------------------------

/// Capacity of the `decoder_fixed` exports under test: the prompt, then one token a step until
/// the buffer is full (GPT-2's `n_ctx` is 16 too).
const MAX_LENGTH: usize = 16;
/// What the cache buffers hold before anything is written: no key or value is exactly 7.0, so
/// a write where none belongs, or a lost one, shows.
const SENTINEL: f32 = 7.0;

/// A pipeline of two exports of `model.gguf`: `export` with `decoder_fixed`, and `plain` with
/// the default variants.
fn fixed_pipeline() -> String {
    format!(
        "{}\n[stages.plain]\nkind = \"export\"\ndeps = {{ checkpoint = \"model.gguf\" }}\ntokenizer = false\n",
        export_pipeline("model.gguf", &format!("tokenizer = false\nvariants = [\"prefill\", \"decoder\", \"decoder_fixed\"]\nmax_length = {MAX_LENGTH}"))
    )
}

/// The names of the cache inputs, layer by layer, key before value; `present.*` follow them.
fn past_names(cfg: &ModelConfig) -> Vec<String> {
    (0..cfg.n_layer).flat_map(|i| [format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value")]).collect()
}

/// One call of a `decoder` or `decoder_fixed` model fed by hand: `ids` `[batch, seq]`, `mask`
/// `[batch, mask.len() / batch]`, `past_length` where the model takes it, and the cache in
/// [`past_names`] order, `[batch, kv_heads, positions, head_dim]`. Returns the logits and
/// the `present.*` tensors in the same order, for the next call's past.
fn run_cached(
    s: &mut Session,
    cfg: &ModelConfig,
    ids: &[i64],
    batch: usize,
    mask: &[i64],
    past_length: Option<i64>,
    past: &[Vec<f32>],
) -> (ArrayD<f32>, Vec<Vec<f32>>) {
    let (logits, _, presents) = run_cached_as(s, cfg, ids, batch, mask, past_length, past, false);
    (logits, presents)
}

/// [`run_cached`], the cache fed as float16 when `f16` (values exactly representable there),
/// also returning `next_token` where the model has it.
#[allow(clippy::too_many_arguments)]
fn run_cached_as(
    s: &mut Session,
    cfg: &ModelConfig,
    ids: &[i64],
    batch: usize,
    mask: &[i64],
    past_length: Option<i64>,
    past: &[Vec<f32>],
    f16: bool,
) -> (ArrayD<f32>, Option<ArrayD<f32>>, Vec<Vec<f32>>) {
    let (kv, hd) = (cfg.n_kv_head, cfg.head_dim());
    let names = past_names(cfg);
    let ids_shape = [batch, ids.len() / batch];
    let mask_shape = [batch, mask.len() / batch];
    let past_shape = [batch, kv, past[0].len() / (batch * kv * hd), hd];
    let length = [past_length.unwrap_or(0)];
    let mut feeds = vec![
        Feed { name: "input_ids", shape: &ids_shape, data: TensorData::I64(ids) },
        Feed { name: "attention_mask", shape: &mask_shape, data: TensorData::I64(mask) },
    ];
    if past_length.is_some() {
        feeds.push(Feed { name: "past_length", shape: &[1], data: TensorData::I64(&length) });
    }
    let halves: Vec<Vec<half::f16>> = if f16 { past.iter().map(|p| p.iter().map(|&x| half::f16::from_f32(x)).collect()).collect() } else { Vec::new() };
    for (i, (name, data)) in names.iter().zip(past).enumerate() {
        let data = if f16 { TensorData::F16(&halves[i]) } else { TensorData::F32(data) };
        feeds.push(Feed { name, shape: &past_shape, data });
    }
    let mut outputs: BTreeMap<String, ArrayD<f32>> = s.run(&feeds).unwrap_or_else(|e| panic!("{e}")).into_iter().collect();
    let logits = outputs.remove("logits").expect("a `logits` output");
    let next = outputs.remove("next_token");
    assert_eq!(logits.shape(), [batch, ids_shape[1], cfg.vocab_size]);
    let presents = names
        .iter()
        .map(|name| {
            let present = name.replace("past_key_values", "present");
            let t = outputs.remove(&present).unwrap_or_else(|| panic!("no `{present}` output"));
            assert_eq!(&t.shape()[..2], [batch, kv], "`{present}`");
            assert_eq!(t.shape()[3], hd, "`{present}`");
            t.iter().copied().collect()
        })
        .collect();
    (logits, next, presents)
}

/// Max |got[b, h, p, :] - want[b, h, p, :]| over positions `p` in `positions`; `got` and `want`
/// are `[batch, kv_heads, *, head_dim]` with `got_len` and `want_len` positions.
fn cache_diff(got: &[f32], got_len: usize, want: &[f32], want_len: usize, positions: std::ops::Range<usize>, hd: usize) -> f64 {
    let rows = got.len() / (got_len * hd);
    assert_eq!(rows, want.len() / (want_len * hd), "batch × kv_heads of both caches");
    let mut worst = 0.0f64;
    for r in 0..rows {
        for p in positions.clone() {
            for i in 0..hd {
                let (g, w) = (got[(r * got_len + p) * hd + i], want[(r * want_len + p) * hd + i]);
                worst = worst.max((f64::from(g) - f64::from(w)).abs());
            }
        }
    }
    worst
}

/// Exports `case` with `decoder_fixed` beside `decoder`, checks its interface, then decodes a
/// right-padded batch of two — the prompt, and a shorter sequence padded to its length —
/// through both, step by step until the fixed buffer is full, carrying each call's `present.*`
/// into the next call's past. Every step's logits are checked against the reference (the short
/// sequence's new tokens sit at positions after its padding, which the reference is given)
/// and against the `decoder`'s; every buffer position outside the step's writes must come back
/// bit for bit as it went in. Returns the largest differences: (vs reference, vs decoder).
fn check_fixed(case: &Case) -> (f64, f64) {
    let cfg = &case.cfg;
    let (kv, hd, m) = (cfg.n_kv_head, cfg.head_dim(), MAX_LENGTH);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&fixed_pipeline());
    let made = ws.make_ok();

    // The variant leaves the config, and so the key, of an export without it as it was.
    let config = |node: &str| {
        let key = made.record(node).key.as_deref().unwrap().to_string();
        ws.json(&format!("cache/actions/{key}.json"))["stage_key"]["config"].clone()
    };
    let plain = serde_json::json!({ "variants": ["prefill", "decoder"], "precision": "fp32", "opset": 17, "external_data": "auto", "tokenizer": false });
    assert_eq!(config("plain"), plain, "the config of an export without `decoder_fixed`");
    assert_eq!(config("export")["max_length"], MAX_LENGTH);

    // The manifest, and the interface ONNX Runtime sees: every cache axis fixed.
    let what = format!("{}: `decoder_fixed`", case.name);
    let entry = ws.json("out/export/export.json")["variants"][2].clone();
    let model = ws.path("out/export/decoder_fixed/model.onnx");
    assert_eq!(entry["variant"], "decoder_fixed", "{what}");
    assert_eq!(entry["max_length"], MAX_LENGTH, "{what}");
    let mut inputs = vec!["input_ids".to_string(), "attention_mask".to_string(), "past_length".to_string()];
    inputs.extend(past_names(cfg));
    let outputs: Vec<String> =
        ["logits".to_string(), "next_token".to_string()].into_iter().chain(past_names(cfg).iter().map(|n| n.replace("past_key_values", "present"))).collect();
    assert_eq!(strings(&entry["inputs"]), inputs, "{what}: inputs");
    assert_eq!(strings(&entry["outputs"]), outputs, "{what}: outputs");
    assert_eq!(strings(&entry["dynamic_axes"]), ["batch", "sequence"], "{what}: dynamic_axes");
    assert_eq!(entry["digest"].as_str(), Some(blake3_of(std::slice::from_ref(&model)).as_str()), "{what}: digest");
    check_fused_ops(&model, cfg, false);

    let sig = tr118::onnx::signature::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let dims = |list: &[tr118::onnx::signature::TensorSig], name: &str| {
        list.iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{what}: no `{name}` in the signature"))
            .dims
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let cache_dims = ["batch".to_string(), kv.to_string(), m.to_string(), hd.to_string()];
    assert_eq!(dims(&sig.inputs, "input_ids"), ["batch", "sequence"], "{what}");
    assert_eq!(dims(&sig.inputs, "attention_mask"), ["batch".to_string(), m.to_string()], "{what}");
    assert_eq!(dims(&sig.inputs, "past_length"), ["1"], "{what}");
    assert_eq!(dims(&sig.outputs, "logits"), ["batch".to_string(), "sequence".to_string(), cfg.vocab_size.to_string()], "{what}");
    for name in past_names(cfg) {
        assert_eq!(dims(&sig.inputs, &name), cache_dims, "{what}: `{name}`");
        let present = name.replace("past_key_values", "present");
        assert_eq!(dims(&sig.outputs, &present), cache_dims, "{what}: `{present}`");
    }
    let mut fixed = session(&model);
    for spec in [fixed.input("attention_mask"), fixed.input("past_key_values.0.key"), fixed.output("present.0.value")] {
        let spec = spec.expect("declared");
        let axis = if spec.name == "attention_mask" { 1 } else { 2 };
        assert_eq!(spec.fixed(axis), Some(m as u64), "{what}: ONNX Runtime sees {spec}");
    }

    // The batch: the prompt, and `short` padded with a real token id.
    let n = PROMPT.len();
    let short: [u32; 4] = [33, 2, 2, 50];
    let steps: Vec<u32> = (0..(m - n) as u32).map(|i| (NEXT + 13 * i) % 61).collect();
    let long_tokens: Vec<u32> = PROMPT.iter().chain(&steps).copied().collect();
    let short_tokens: Vec<u32> = short.iter().chain(&steps).copied().collect();
    let short_positions: Vec<usize> = (0..short.len()).chain(n..m).collect();
    let want = [case.reference(&long_tokens), reference::forward_at(cfg, &case.weights, &short_tokens, &short_positions)];
    // The reference row of each sequence's token at buffer position `p`, if it has one there.
    let row_of = |b: usize, p: usize| if b == 0 { Some(p) } else { short_positions.iter().position(|&q| q == p) };

    let mut decoder = session(&ws.path("out/export/decoder/model.onnx"));
    let elements = 2 * kv * m * hd;
    let mut past = vec![vec![SENTINEL; elements]; 2 * cfg.n_layer];
    let mut grown = vec![Vec::new(); 2 * cfg.n_layer];
    let mut mask = vec![0i64; 2 * m];
    let mut ids = ids_i64(&PROMPT);
    ids.extend(ids_i64(&short));
    ids.extend(std::iter::repeat_n(7, n - short.len()));
    for (b, len) in [(0, n), (1, short.len())] {
        mask[b * m..b * m + len].fill(1);
    }
    let (mut vs_reference, mut vs_decoder, mut cache_vs_decoder) = (0.0f64, 0.0f64, 0.0f64);
    let mut past_len = 0;
    for step in 0..=steps.len() {
        let seq = ids.len() / 2;
        let written = past_len..past_len + seq;
        let (logits, next, present) = run_cached_as(&mut fixed, cfg, &ids, 2, &mask, Some(past_len as i64), &past, false);
        assert_next_token(next.as_ref(), &logits, &what);
        let grown_mask: Vec<i64> = (0..2).flat_map(|b| mask[b * m..b * m + written.end].to_vec()).collect();
        let (plain_logits, plain_present) = run_cached(&mut decoder, cfg, &ids, 2, &grown_mask, None, &grown);
        for b in 0..2 {
            for (t, p) in written.clone().enumerate() {
                let Some(r) = row_of(b, p) else { continue };
                let one = |a: &ArrayD<f32>| ArrayD::from_shape_fn(vec![1, 1, cfg.vocab_size], |i| a[[b, t, i[2]]]);
                vs_reference = vs_reference.max(max_diff(&one(&logits), 0, &want[b][r..=r]));
                let plain_row = vec![(0..cfg.vocab_size).map(|v| plain_logits[[b, t, v]]).collect::<Vec<f32>>()];
                vs_decoder = vs_decoder.max(max_diff(&one(&logits), 0, &plain_row));
            }
        }
        for (i, (after, before)) in present.iter().zip(&past).enumerate() {
            let name = &past_names(cfg)[i];
            assert_eq!(after.len(), elements, "{what}: `{name}` keeps its capacity");
            for (e, (a, b)) in after.iter().zip(before).enumerate() {
                let p = e / hd % m;
                if !written.contains(&p) {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}, step {step}: `{name}` element {e} (position {p}) was not written but changed");
                } else {
                    assert_ne!(*a, SENTINEL, "{what}, step {step}: `{name}` position {p} was not written");
                }
                if p >= written.end {
                    assert_eq!(*a, SENTINEL, "{what}, step {step}: `{name}` position {p} is past the filled part");
                }
            }
            cache_vs_decoder = cache_vs_decoder.max(cache_diff(after, m, &plain_present[i], written.end, 0..written.end, hd));
        }
        past = present;
        grown = plain_present;
        past_len = written.end;
        if let Some(&next) = steps.get(step) {
            ids = vec![i64::from(next); 2];
            mask[past_len] = 1;
            mask[m + past_len] = 1;
        }
    }
    assert_eq!(past_len, m, "{what}: the buffer is full");
    assert_within(vs_reference, TOL, &format!("{what}: padded batch, prompt then one token a step, vs reference"));
    assert_within(vs_decoder, TOL, &format!("{what}: the same vs `decoder`"));
    assert_within(cache_vs_decoder, TOL, &format!("{what}: its cache vs `decoder`'s"));
    (vs_reference, vs_decoder)
}

/// `next_token` is the argmax of each row's last logits, ties to the lowest id.
#[track_caller]
fn assert_next_token(next: Option<&ArrayD<f32>>, logits: &ArrayD<f32>, what: &str) {
    let next = next.unwrap_or_else(|| panic!("{what}: no `next_token` output"));
    let (batch, seq) = (logits.shape()[0], logits.shape()[1]);
    assert_eq!(next.shape(), [batch, 1], "{what}: `next_token`");
    for b in 0..batch {
        let row: Vec<f32> = (0..logits.shape()[2]).map(|v| logits[[b, seq - 1, v]]).collect();
        let best = row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
        assert_eq!(next[[b, 0]], best as f32, "{what}: `next_token` of row {b}");
    }
}

#[test]
fn decoder_fixed_gpt2_matches_the_reference_and_the_decoder() {
    check_fixed(&Case::new("gpt2 decoder_fixed", gpt2_config(), 180));
}

#[test]
fn decoder_fixed_llama_matches_the_reference_and_the_decoder() {
    check_fixed(&Case::new("llama decoder_fixed", llama_config(RopeLayout::Interleaved, false), 190));
}

/// The `decoder_fixed` graph at `path` is ONNX Runtime's fused one: skip-norms and a packed
/// QKV projection at both precisions; GroupQueryAttention with no softmax at fp16, the rotary
/// embedding operator and an explicit softmax at fp32; SiLU as one `QuickGelu`. The interface
/// is int64 but for `logits` (float32) and the cache (float16 at fp16).
fn check_fused_ops(path: &Path, cfg: &ModelConfig, fp16: bool) {
    let what = path.display();
    let model = Model::load(path).unwrap_or_else(|e| panic!("{e}"));
    let g = model.graph();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &g.node {
        let op = node.op_type.as_deref().unwrap_or("");
        *ops.entry(op).or_default() += 1;
        if ["GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization", "SkipLayerNormalization", "QuickGelu", "FastGelu"].contains(&op) {
            assert_eq!(node.domain.as_deref(), Some("com.microsoft"), "{what}: {op}'s domain");
        }
    }
    let (skip, first) = match cfg.arch {
        Arch::Gpt2 => ("SkipLayerNormalization", "LayerNormalization"),
        Arch::Llama => ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"),
    };
    let l = cfg.n_layer;
    let count = |op: &str| ops.get(op).copied().unwrap_or(0);
    assert_eq!((count(skip), count(first)), (2 * l, 1), "{what}: {ops:?}");
    // Q, K and V from one projection, then the output, the MLP's and the head; at fp32 the
    // attention's two products besides.
    let mlp = if cfg.arch == Arch::Gpt2 { 2 } else { 3 };
    let attention = if fp16 { 0 } else { 2 };
    assert_eq!(count("MatMul"), (2 + mlp + attention) * l + 1, "{what}: {ops:?}");
    let rope = if cfg.arch == Arch::Llama && !fp16 { 2 * l } else { 0 };
    let (gqa, softmax) = if fp16 { (l, 0) } else { (0, l) };
    assert_eq!((count("GroupQueryAttention"), count("Softmax"), count("RotaryEmbedding")), (gqa, softmax, rope), "{what}: {ops:?}");
    let silu = if cfg.arch == Arch::Llama { l } else { 0 };
    assert_eq!((count("QuickGelu"), count("Sigmoid")), (silu, 0), "{what}: {ops:?}");
    let declared = |v: &ValueInfoProto| v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).and_then(|t| t.elem_type);
    for v in g.input.iter().chain(&g.output) {
        let name = v.name.as_deref().unwrap_or("");
        let want = match name {
            "input_ids" | "attention_mask" | "past_length" | "next_token" => INT64,
            "logits" => FLOAT,
            _ if fp16 => FLOAT16,
            _ => FLOAT,
        };
        assert_eq!(declared(v), Some(want), "{what}: interface tensor `{name}`");
    }
}

/// The fp16 `decoder_fixed` (ONNX Runtime's fused operators, see `export::fused`), exported
/// beside the fp16 `decoder`: its graph is the fused one (one `GroupQueryAttention` a layer
/// and no `Softmax`, skip-norms, a float16 cache), and a batch of two unpadded sequences,
/// the prompt then one token a step until the buffer is full, matches the fp32 reference and
/// the fp16 `decoder` within float16's error at every step; `next_token` is each row's argmax
/// and buffer positions a step does not write come back bit for bit. Returns the largest
/// errors as fractions of the logit scale: (vs reference, vs decoder).
fn check_fixed_fp16(case: &Case) -> (f64, f64) {
    let cfg = &case.cfg;
    let (kv, hd, m) = (cfg.n_kv_head, cfg.head_dim(), MAX_LENGTH);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&export_pipeline(
        "model.gguf",
        &format!("tokenizer = false\nprecision = \"fp16\"\nvariants = [\"decoder\", \"decoder_fixed\"]\nmax_length = {MAX_LENGTH}"),
    ));
    ws.make_ok();
    let what = format!("{}: fp16 `decoder_fixed`", case.name);
    let entry = ws.json("out/export/export.json")["variants"][1].clone();
    assert_eq!((entry["variant"].as_str(), entry["precision"].as_str()), (Some("decoder_fixed"), Some("fp16")), "{what}");
    let mut inputs = vec!["input_ids".to_string(), "attention_mask".to_string(), "past_length".to_string()];
    inputs.extend(past_names(cfg));
    assert_eq!(strings(&entry["inputs"]), inputs, "{what}: inputs");
    let path = ws.path("out/export/decoder_fixed/model.onnx");

    check_fused_ops(&path, cfg, true);

    // Two unpadded sequences, then one token a step, each row its own.
    let n = PROMPT.len();
    let other: Vec<u32> = PROMPT.iter().map(|t| (t * 7 + 3) % cfg.vocab_size as u32).collect();
    let steps: [Vec<u32>; 2] = [0, 1].map(|b| (0..(m - n) as u32).map(|i| (NEXT + 13 * i + 5 * b) % 61).collect());
    let rows = [PROMPT.to_vec(), other];
    let want: Vec<Vec<Vec<f32>>> = (0..2).map(|b| case.reference(&rows[b].iter().chain(&steps[b]).copied().collect::<Vec<u32>>())).collect();
    let scale = want.iter().flatten().flatten().fold(0.0f64, |s, v| s.max(f64::from(v.abs())));

    let mut fixed = session(&path);
    let mut decoder = session(&ws.path("out/export/decoder/model.onnx"));
    let elements = 2 * kv * m * hd;
    let mut past = vec![vec![SENTINEL; elements]; 2 * cfg.n_layer];
    let mut grown = vec![Vec::new(); 2 * cfg.n_layer];
    let mut ids: Vec<i64> = rows.iter().flat_map(|r| ids_i64(r)).collect();
    let (mut vs_reference, mut vs_decoder) = (0.0f64, 0.0f64);
    let mut past_len = 0;
    for step in 0..=(m - n) {
        let seq = ids.len() / 2;
        let written = past_len..past_len + seq;
        let mask: Vec<i64> = (0..2).flat_map(|_| (0..m).map(|p| i64::from(p < written.end))).collect();
        let (logits, next, present) = run_cached_as(&mut fixed, cfg, &ids, 2, &mask, Some(past_len as i64), &past, true);
        assert_next_token(next.as_ref(), &logits, &format!("{what}, step {step}"));
        let grown_mask = vec![1i64; 2 * written.end];
        let (plain, plain_present) = run_cached(&mut decoder, cfg, &ids, 2, &grown_mask, None, &grown);
        for b in 0..2 {
            let one = |a: &ArrayD<f32>| ArrayD::from_shape_fn(vec![1, seq, cfg.vocab_size], |i| a[[b, i[1], i[2]]]);
            vs_reference = vs_reference.max(max_diff(&one(&logits), 0, &want[b][written.clone()]));
            let plain_rows: Vec<Vec<f32>> = (0..seq).map(|t| (0..cfg.vocab_size).map(|v| plain[[b, t, v]]).collect()).collect();
            vs_decoder = vs_decoder.max(max_diff(&one(&logits), 0, &plain_rows));
        }
        for (i, (after, before)) in present.iter().zip(&past).enumerate() {
            let name = &past_names(cfg)[i];
            assert_eq!(after.len(), elements, "{what}: `{name}` keeps its capacity");
            for (e, (a, b)) in after.iter().zip(before).enumerate() {
                // Positions past the filled ones are nobody's: on a buffer of its own, as here,
                // the operator leaves them as it finds them or zero.
                let p = e / hd % m;
                if p < written.start {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what}, step {step}: `{name}` element {e} (position {p}) was not written but changed");
                } else if written.contains(&p) {
                    assert_ne!(*a, SENTINEL, "{what}, step {step}: `{name}` position {p} was not written");
                }
            }
        }
        past = present;
        grown = plain_present;
        past_len = written.end;
        if let (Some(&a), Some(&b)) = (steps[0].get(step), steps[1].get(step)) {
            ids = vec![i64::from(a), i64::from(b)];
        }
    }
    assert_eq!(past_len, m, "{what}: the buffer is full");
    let (vs_reference, vs_decoder) = (vs_reference / scale, vs_decoder / scale);
    eprintln!("{what}: vs the fp32 reference {vs_reference:.2e} of the logit scale {scale:.2}; vs the fp16 `decoder` {vs_decoder:.2e}");
    assert!(vs_reference <= FP16_MAX, "{what}: {vs_reference:.2e} of the logit scale from the fp32 reference, over {FP16_MAX:.0e}");
    assert!(vs_decoder <= FP16_MAX, "{what}: {vs_decoder:.2e} of the logit scale from the fp16 `decoder`, over {FP16_MAX:.0e}");
    (vs_reference, vs_decoder)
}

/// A Llama whose head size GroupQueryAttention's fused rotary embedding takes (a multiple of 16).
fn fused_llama() -> ModelConfig {
    ModelConfig { d_model: 64, n_head: 4, n_kv_head: 2, d_ff: 96, ..llama_config(RopeLayout::Interleaved, false) }
}

#[test]
fn decoder_fixed_fp16_gpt2_runs_fused_operators_and_matches_the_reference_and_the_decoder() {
    check_fixed_fp16(&Case::new("gpt2", gpt2_config(), 210));
}

#[test]
fn decoder_fixed_fp16_llama_runs_fused_operators_and_matches_the_reference_and_the_decoder() {
    check_fixed_fp16(&Case::new("llama", fused_llama(), 220));
}

#[test]
fn decoder_fixed_bad_max_length_names_the_field() {
    let ws = workspace();
    Case::new("gpt2", gpt2_config(), 200).write_gguf(&ws.path("model.gguf"), &[]);
    let pipeline = |fields: &str| export_pipeline("model.gguf", &format!("tokenizer = false\nvariants = [\"decoder_fixed\"]\n{fields}"));
    for (fields, line, message) in [
        ("max_length = 0", 6, "`max_length` must be a positive integer, found 0"),
        ("max_length = \"16\"", 6, "`max_length` must be a positive integer, found \"16\""),
    ] {
        ws.pipeline(&pipeline(fields));
        ws.tr(&["make", "--json"]).diag(line, message);
    }
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false\nmax_length = 8"));
    ws.tr(&["make", "--json"]).diag(5, "`max_length` is the cache capacity of the `decoder_fixed` variant, which `variants` does not list");
    assert_eq!(ws.files("out"), Vec::<String>::new());

    // Only the checkpoint knows its context length: the export itself refuses a longer buffer.
    ws.pipeline(&pipeline("max_length = 17"));
    export_fails(&ws).stderr_has("`max_length` 17 is beyond the model's context length 16");

    // Nor its head size, which the fp16 variant's fused rotary embedding constrains.
    Case::new("llama", llama_config(RopeLayout::Interleaved, false), 200).write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&pipeline("precision = \"fp16\""));
    export_fails(&ws).stderr_has("needs a head size that is a multiple of 16; this model's is 8");
}

// ---------------------------------------------------------------------------------------
// 4. The cache
// ---------------------------------------------------------------------------------------

#[test]
fn second_make_is_a_hit_and_precision_reruns_only_export() {
    let case = Case::new("gpt2 cache", gpt2_config(), 100);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[]);
    let pipeline = |precision: &str| {
        format!(
            "{}\n[stages.other]\ncmd = [\"sh\", \"-c\", \"echo other > $0\", \"{{outs.note}}\"]\nouts = {{ note = \"note.txt\" }}\n",
            export_pipeline("model.gguf", &format!("tokenizer = false\nprecision = \"{precision}\""))
        )
    };
    ws.pipeline(&pipeline("fp32"));
    let first = ws.make_ok();
    assert_eq!(first.ran(), ["export", "other"], "{}", first.run);
    let digests = |m: &Value| m["variants"].as_array().unwrap().iter().map(|v| v["digest"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let fp32 = digests(&ws.json("out/export/export.json"));

    let second = ws.make_ok();
    assert_eq!(second.ran(), Vec::<String>::new(), "{}", second.run);
    assert_eq!(second.hits(), ["export", "other"], "{}", second.run);

    ws.pipeline(&pipeline("fp16"));
    let third = ws.make_ok();
    assert_eq!(third.ran(), ["export"], "{}", third.run);
    assert_eq!(third.hits(), ["other"], "{}", third.run);
    assert_eq!(third.record("export").reason.as_deref(), Some("field `precision` changed fp32 → fp16"), "{}", third.run);
    let m = ws.json("out/export/export.json");
    assert_eq!(m["variants"][0]["precision"], "fp16");
    let fp16 = digests(&m);
    assert!(fp16.iter().zip(&fp32).all(|(a, b)| a != b), "fp16 digests {fp16:?} equal the fp32 ones");

    // Back to fp32: the first export, from the cache.
    ws.pipeline(&pipeline("fp32"));
    let fourth = ws.make_ok();
    assert_eq!(fourth.ran(), Vec::<String>::new(), "{}", fourth.run);
    assert!(fourth.record("export").restored, "the fp32 files are put back\n{}", fourth.run);
    assert!(!fourth.record("other").restored, "{}", fourth.run);
    assert_eq!(digests(&ws.json("out/export/export.json")), fp32);
    assert_eq!(blake3_of(&[ws.path("out/export/prefill/model.onnx")]), fp32[0], "the fp32 model is back in out/");

    // New weights in the same file: the export reruns, the other stage does not.
    let before = fs::read(ws.path("model.gguf")).unwrap();
    Case::new("gpt2 cache, new weights", gpt2_config(), 110).write_gguf(&ws.path("model.gguf"), &[]);
    assert_ne!(fs::read(ws.path("model.gguf")).unwrap(), before, "the new weights are different");
    let fifth = ws.make_ok();
    assert_eq!(fifth.ran(), ["export"], "{}", fifth.run);
    assert_ne!(digests(&ws.json("out/export/export.json")), fp32);
}

// ---------------------------------------------------------------------------------------
// 5. Bad input
// ---------------------------------------------------------------------------------------

/// A failed export: exit 1, nothing of it under `out/export/`; returns stderr.
#[track_caller]
fn export_fails(ws: &Workspace) -> Run {
    let m = ws.make();
    m.run.code(1);
    assert_eq!(m.record("export").status, "failed", "{}", m.run);
    assert_eq!(ws.files("out/export"), Vec::<String>::new(), "a failed export left files in out/export/\n{}", m.run);
    m.run
}

#[test]
fn truncated_gguf_fails_naming_the_file_and_tensor() {
    let case = Case::new("gpt2 truncated", gpt2_config(), 120);
    let ws = workspace();
    let path = ws.path("model.gguf");
    case.write_gguf(&path, &[]);
    let bytes = fs::read(&path).unwrap();
    let header = GgufHeader::parse(&bytes).unwrap();
    let cut = bytes.len() / 2;
    assert!((header.data_offset as usize) < cut, "the cut falls in the tensor data");
    // The first tensor, in file order, whose data runs past the cut.
    let first_lost = header.tensors.iter().find(|t| header.data_offset + t.offset + 4 * t.n_elements() > cut as u64).map(|t| t.name.clone()).unwrap();
    fs::write(&path, &bytes[..cut]).unwrap();
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false"));
    export_fails(&ws).stderr_has("model.gguf").stderr_has(&format!("tensor `{first_lost}`")).stderr_has("truncated");

    // Cut inside the header: the file is still named.
    fs::write(&path, &bytes[..40]).unwrap();
    export_fails(&ws).stderr_has("model.gguf").stderr_has("truncated");
}

#[test]
fn tensor_of_the_wrong_shape_is_named() {
    let case = Case::new("gpt2 wrong shape", gpt2_config(), 130);
    let ws = workspace();
    let mut tensors = case.tensors();
    let t = tensors.iter_mut().find(|t| t.name == "blk.1.ffn_up.weight").unwrap();
    t.shape = vec![63, 16];
    t.data.truncate(63 * 16);
    write_gguf(&ws.path("model.gguf"), &case.cfg, &tensors, |_| DType::F32, &[]).unwrap();
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false"));
    export_fails(&ws).stderr_has("model.gguf").stderr_has("tensor `blk.1.ffn_up.weight`").stderr_has("[63, 16]").stderr_has("[64, 16]");
}

#[test]
fn unknown_architecture_is_named() {
    let case = Case::new("mamba", gpt2_config(), 140);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &[("general.architecture", MetaValue::String("mamba".into()))]);
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false"));
    export_fails(&ws).stderr_has("model.gguf").stderr_has("architecture").stderr_has("`mamba`");
}

#[test]
fn export_without_a_checkpoint_dep_is_a_pipeline_error() {
    let ws = workspace();
    fs::write(ws.path("model.gguf"), b"not read").unwrap();
    ws.pipeline("[stages.export]\nkind = \"export\"\ndeps = { model = \"model.gguf\" }\ntokenizer = false\n");
    let run = ws.tr(&["make", "--json"]);
    run.diag(3, "`checkpoint`");
    assert_eq!(ws.files("out"), Vec::<String>::new());

    ws.pipeline("[stages.export]\nkind = \"export\"\ntokenizer = false\n");
    let run = ws.tr(&["make", "--json"]);
    run.diag(1, "`checkpoint`");
    assert_eq!(ws.files("out"), Vec::<String>::new());
}

#[test]
fn misspelled_variant_suggests_the_right_one() {
    let ws = workspace();
    Case::new("gpt2", gpt2_config(), 150).write_gguf(&ws.path("model.gguf"), &[]);
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false\nvariants = [\"prefil\"]"));
    let run = ws.tr(&["make", "--json"]);
    run.diag(5, "unknown variant `prefil`").stderr_has("did you mean `prefill`");
    assert_eq!(ws.files("out"), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// 6. The tokenizer
// ---------------------------------------------------------------------------------------

/// A byte-level BPE of 16 tokens that spells "hello world" in four:
/// `hello`, `Ġw`, `or`, `ld` (ids 12 to 15).
const TOKENS: [&str; 16] = ["<|endoftext|>", "h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "llo", "hello", "Ġw", "or", "ld"];
const MERGES: [&str; 7] = ["h e", "l l", "ll o", "he llo", "Ġ w", "o r", "l d"];

fn tokenizer_metadata() -> Vec<(&'static str, MetaValue)> {
    let strings = |v: &[&str]| MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect());
    let types = (0..TOKENS.len()).map(|i| MetaValue::I32(if i == 0 { 3 } else { 1 })).collect();
    vec![
        ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&TOKENS)),
        ("tokenizer.ggml.merges", strings(&MERGES)),
        ("tokenizer.ggml.token_type", MetaValue::Array(types)),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(0)),
    ]
}

/// GPT-2 with `vocab` rows of embedding and a width (24) that no vocabulary here equals.
fn gpt2_with_vocab(vocab: usize) -> ModelConfig {
    ModelConfig { vocab_size: vocab, d_model: 24, n_head: 3, n_kv_head: 3, ..gpt2_config() }
}

#[test]
fn gguf_vocabulary_becomes_a_tokenizer_json_that_round_trips() {
    let case = Case::new("gpt2 with tokenizer", gpt2_with_vocab(TOKENS.len()), 160);
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &tokenizer_metadata());
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = true"));
    ws.make_ok();
    assert_eq!(ws.files("out/export"), ["decoder/model.onnx", "export.json", "prefill/model.onnx", "tokenizer.json"]);
    assert_eq!(ws.json("out/export/export.json")["tokenizer"], "embedded in the GGUF");

    let tok = tokenizers::Tokenizer::from_file(ws.path("out/export/tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tok.get_vocab_size(true), TOKENS.len());
    let ids = tok.encode("hello world", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, [12, 13, 14, 15], "\"hello world\" in the merged tokens");
    for text in ["hello world", "world hello", "old row"] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "round trip through {ids:?}");
    }

    // The tokenizer's ids drive the exported model like any others.
    let mut prefill = session(&ws.path("out/export/prefill/model.onnx"));
    let logits = prefill.run_prefill(&ids_i64(&ids), &vec![1; ids.len()], 1, ids.len()).unwrap_or_else(|e| panic!("{e}"));
    assert_within(max_diff(&logits, 0, &case.reference(&ids)), TOL, "gpt2 with tokenizer: prefill of \"hello world\"");
}

#[test]
fn tokenizer_and_model_vocabulary_mismatch_names_both_numbers() {
    // The model says 20 (`gpt2.vocab_size`, 20 embedding rows); the tokenizer has 16.
    let case = Case::new("gpt2 vocab mismatch", gpt2_with_vocab(20), 170);
    let ws = workspace();
    let mut meta = tokenizer_metadata();
    meta.push(("gpt2.vocab_size", MetaValue::U32(20)));
    case.write_gguf(&ws.path("model.gguf"), &meta);
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = true"));
    export_fails(&ws).stderr_has("model.gguf").stderr_has("the tokenizer has 16 tokens but the model's vocabulary has 20");

    // Without the tokenizer the same checkpoint exports.
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = false"));
    ws.make_ok();
    assert_eq!(ws.files("out/export"), ["decoder/model.onnx", "export.json", "prefill/model.onnx"]);

    // Without `gpt2.vocab_size` the token list sets the vocabulary, as in llama.cpp, and the
    // embedding of 20 rows is the tensor that disagrees.
    let ws = workspace();
    case.write_gguf(&ws.path("model.gguf"), &tokenizer_metadata());
    ws.pipeline(&export_pipeline("model.gguf", "tokenizer = true"));
    export_fails(&ws).stderr_has("model.gguf").stderr_has("tensor `token_embd.weight`").stderr_has("[20, 24]").stderr_has("[16, 24]");
}
