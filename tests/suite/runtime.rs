//! The ONNX Runtime layer against the real library: the probe, sessions, prefill, the decode
//! step and execution providers, on tiny models written as protobuf bytes by the test itself;
//! then I/O binding and CUDA graphs on a tiny Llama exported by tr118, against the naive
//! reference forward of `support/reference.rs`.
//!
//! The library comes from `ORT_DYLIB_PATH`, else `scripts/fetch-ort.sh` fetches the pinned
//! `onnxruntime==1.31.1` from PyPI once; a test never skips for want of it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support;
use crate::support::onnx::{Dim, FLOAT, Graph, INT64, attr_int, tensor_f32, tensor_i64};
use crate::support::reference::{self, Rng, Weights, random_weights_scaled};
use tempfile::TempDir;
use tr118::export::{self, ExportOptions, Precision, Variant};
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::model::{Checkpoint, ModelConfig, RopeLayout};
use tr118::runtime::{self, Decoder, Feed, IoSpec, KvCache, Provider, Runtime, RuntimeError, SessionOptions, TensorData};

const PINNED_LIBRARY: &str = "libonnxruntime.so.1.31.1";

fn library() -> Option<PathBuf> {
    Some(support::ort_library().to_path_buf())
}

/// The process's runtime, or `None` (skip) when the library is absent outside CI.
fn rt() -> Option<&'static Runtime> {
    let path = library()?;
    Some(runtime::init(Some(&path)).unwrap_or_else(|e| panic!("loading ONNX Runtime: {e}")))
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, bytes).expect("write a test model");
    path
}

fn tempdir() -> TempDir {
    tempfile::Builder::new().prefix("tr118-runtime-").tempdir().expect("create a temp dir")
}

/// `y = x + b`, x: f32[n, 3], b an initializer.
fn add_model() -> Vec<u8> {
    Graph::new()
        .input("x", FLOAT, &[Dim::Named("n"), Dim::Fixed(3)])
        .initializer(tensor_f32("b", &[3], &[10.0, 20.0, 30.0]))
        .node("Add", &["x", "b"], &["y"], &[])
        .output("y", FLOAT, &[Dim::Named("n"), Dim::Fixed(3)])
        .model(17)
}

const PREFILL_VOCAB: usize = 4;

/// A prefill-shaped model: `logits[b, s, v] = table[id, v] · mask + 100 · position`, where
/// `table[i, v] = 10 i + v`. Mask and positions are declared only when `full`.
fn prefill_model(full: bool) -> Vec<u8> {
    let v = PREFILL_VOCAB as i64;
    let table: Vec<f32> = (0..v * v).map(|k| (10 * (k / v) + k % v) as f32).collect();
    let mut g = Graph::new().input("input_ids", INT64, &[Dim::Named("batch"), Dim::Named("seq")]).initializer(tensor_f32("table", &[v, v], &table)).node(
        "Gather",
        &["table", "input_ids"],
        &["embedded"],
        &[attr_int("axis", 0)],
    );
    if full {
        g = g
            .input("attention_mask", INT64, &[Dim::Named("batch"), Dim::Named("seq")])
            .input("position_ids", INT64, &[Dim::Named("batch"), Dim::Named("seq")])
            .initializer(tensor_i64("last_axis", &[1], &[2]))
            .initializer(tensor_f32("hundred", &[], &[100.0]))
            .node("Cast", &["attention_mask"], &["mask_f"], &[attr_int("to", FLOAT)])
            .node("Unsqueeze", &["mask_f", "last_axis"], &["mask3"], &[])
            .node("Mul", &["embedded", "mask3"], &["masked"], &[])
            .node("Cast", &["position_ids"], &["pos_f"], &[attr_int("to", FLOAT)])
            .node("Mul", &["pos_f", "hundred"], &["pos100"], &[])
            .node("Unsqueeze", &["pos100", "last_axis"], &["pos3"], &[])
            .node("Add", &["masked", "pos3"], &["logits"], &[]);
    } else {
        g = g.node("Identity", &["embedded"], &["logits"], &[]);
    }
    g.output("logits", FLOAT, &[Dim::Named("batch"), Dim::Named("seq"), Dim::Fixed(v)]).model(17)
}

const HD: usize = 2;
const DECODER_VOCAB: usize = 3;

/// A one-layer decoder with a real cache interface. The new key of each token is its id
/// repeated over the head; the value is its negation. The logits expose everything fed:
/// `logits[b, j, v] = id + 100 · position + Σ(cached keys of row b) + 10000 · Σ(mask row b) + v`.
fn decoder_model() -> Vec<u8> {
    let batch = Dim::Named("batch");
    let seq = Dim::Named("seq");
    let past = Dim::Named("past_seq");
    let total = Dim::Named("total_seq");
    let hd = HD as i64;
    Graph::new()
        .input("input_ids", INT64, &[batch, seq])
        .input("attention_mask", INT64, &[batch, total])
        .input("position_ids", INT64, &[batch, seq])
        .input("past_key_values.0.key", FLOAT, &[batch, Dim::Fixed(1), past, Dim::Fixed(hd)])
        .input("past_key_values.0.value", FLOAT, &[batch, Dim::Fixed(1), past, Dim::Fixed(hd)])
        .initializer(tensor_i64("axes_1_3", &[2], &[1, 3]))
        .initializer(tensor_i64("head_shape", &[4], &[1, 1, 1, hd]))
        .initializer(tensor_i64("axes_1_2_3", &[3], &[1, 2, 3]))
        .initializer(tensor_i64("axis_1", &[1], &[1]))
        .initializer(tensor_i64("axis_2", &[1], &[2]))
        .initializer(tensor_i64("axis_3", &[1], &[3]))
        .initializer(tensor_f32("hundred", &[], &[100.0]))
        .initializer(tensor_f32("ten_thousand", &[], &[10000.0]))
        .initializer(tensor_f32("vocab_ramp", &[DECODER_VOCAB as i64], &[0.0, 1.0, 2.0]))
        .node("Cast", &["input_ids"], &["ids_f"], &[attr_int("to", FLOAT)])
        .node("Cast", &["position_ids"], &["pos_f"], &[attr_int("to", FLOAT)])
        .node("Cast", &["attention_mask"], &["mask_f"], &[attr_int("to", FLOAT)])
        .node("Unsqueeze", &["ids_f", "axes_1_3"], &["ids4"], &[])
        .node("Expand", &["ids4", "head_shape"], &["k_new"], &[])
        .node("Neg", &["k_new"], &["v_new"], &[])
        .node("Concat", &["past_key_values.0.key", "k_new"], &["present.0.key"], &[attr_int("axis", 2)])
        .node("Concat", &["past_key_values.0.value", "v_new"], &["present.0.value"], &[attr_int("axis", 2)])
        .node("ReduceSum", &["present.0.key", "axes_1_2_3"], &["key_sum4"], &[attr_int("keepdims", 1)])
        .node("Squeeze", &["key_sum4", "axis_3"], &["key_sum"], &[])
        .node("ReduceSum", &["mask_f", "axis_1"], &["mask_sum2"], &[attr_int("keepdims", 1)])
        .node("Unsqueeze", &["mask_sum2", "axis_2"], &["mask_sum"], &[])
        .node("Mul", &["mask_sum", "ten_thousand"], &["mask_term"], &[])
        .node("Mul", &["pos_f", "hundred"], &["pos100"], &[])
        .node("Add", &["ids_f", "pos100"], &["token_term2"], &[])
        .node("Unsqueeze", &["token_term2", "axis_2"], &["token_term"], &[])
        .node("Add", &["token_term", "key_sum"], &["t1"], &[])
        .node("Add", &["t1", "mask_term"], &["t2"], &[])
        .node("Add", &["t2", "vocab_ramp"], &["logits"], &[])
        .output("logits", FLOAT, &[batch, seq, Dim::Fixed(DECODER_VOCAB as i64)])
        .output("present.0.key", FLOAT, &[batch, Dim::Fixed(1), total, Dim::Fixed(hd)])
        .output("present.0.value", FLOAT, &[batch, Dim::Fixed(1), total, Dim::Fixed(hd)])
        .model(17)
}

// ---------------------------------------------------------------------------------------
// The probe
// ---------------------------------------------------------------------------------------

#[test]
fn probe_reports_the_pinned_version_and_providers() {
    let Some(path) = library() else { return };
    let info = runtime::probe(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.version, runtime::PINNED_VERSION);
    assert!(info.has_provider("CPUExecutionProvider"), "{:?}", info.providers);
    assert_eq!(info.path, fs::canonicalize(&path).unwrap());
    let (digest, _) = tr118::digest::hash_file(&path).unwrap();
    assert_eq!(info.digest, digest);
    assert!(!info.build_info.is_empty());

    let rt = rt().expect("the library was found above");
    assert_eq!(rt.info(), &info, "init reports what the probe saw");
}

#[test]
fn probe_of_a_missing_file_names_it_and_the_fix() {
    let err = runtime::probe(Some(Path::new("/nonexistent/libonnxruntime.so.1.31.1"))).unwrap_err();
    assert!(matches!(err, RuntimeError::LibraryNotFound { .. }), "{err:?}");
    let text = err.to_string();
    for needle in ["`/nonexistent/libonnxruntime.so.1.31.1` does not exist", "onnxruntime==1.31.1", "ORT_DYLIB_PATH", "scripts/fetch-ort.sh"] {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
}

#[test]
fn probe_of_a_file_that_is_not_a_library_says_so() {
    let dir = tempdir();
    let path = write(&dir, "libonnxruntime.so", b"this is not an ELF file\n");
    let err = runtime::probe(Some(&path)).unwrap_err();
    assert!(matches!(err, RuntimeError::NotALibrary { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains("not a loadable shared library"), "{text}");

    let err = runtime::probe(Some(dir.path())).unwrap_err();
    assert!(matches!(err, RuntimeError::NotALibrary { .. }), "a directory: {err:?}");
}

#[test]
fn probe_of_a_library_without_the_ort_entry_point_is_not_onnx_runtime() {
    // Any shared library that is not ONNX Runtime will do; the C math library is everywhere.
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ];
    let Some(libm) = candidates.iter().map(Path::new).find(|p| p.is_file()) else {
        eprintln!("note: skipped, no libm.so.6 in the usual places");
        return;
    };
    let err = runtime::probe(Some(libm)).unwrap_err();
    assert!(matches!(err, RuntimeError::NotOnnxRuntime { .. }), "{err:?}");
    assert!(err.to_string().contains("does not export `OrtGetApiBase`"), "{err}");
}

#[test]
fn a_second_library_in_one_process_is_an_error() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let other = write(&dir, PINNED_LIBRARY, b"another file");
    let err = runtime::init(Some(&other)).unwrap_err();
    assert!(matches!(err, RuntimeError::AlreadyLoaded { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&rt.info().path.display().to_string()) && text.contains(&other.display().to_string()), "{text}");
    // The same file again is the same runtime.
    let again = runtime::init(Some(&rt.info().path)).unwrap();
    assert!(std::ptr::eq(rt, again));
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

#[test]
fn an_add_model_computes_its_sum() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "add.onnx", &add_model());
    let mut session = rt.session(&model, &SessionOptions { intra_threads: Some(1), ..SessionOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(session.providers(), [Provider::Cpu]);
    let x = [1.0f32, 2.0, 3.0, -1.0, -2.0, -3.5];
    let out = session.run(&[Feed { name: "x", shape: &[2, 3], data: TensorData::F32(&x) }]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "y");
    assert_eq!(out[0].1.shape(), [2, 3]);
    assert_eq!(out[0].1.iter().copied().collect::<Vec<f32>>(), [11.0, 22.0, 33.0, 9.0, 18.0, 26.5]);
}

#[test]
fn a_session_lists_inputs_and_outputs_with_symbolic_dims() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "decoder.onnx", &decoder_model());
    let session = rt.session(&model, &SessionOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let inputs: Vec<String> = session.inputs().iter().map(IoSpec::to_string).collect();
    assert_eq!(
        inputs,
        [
            "input_ids: i64[batch, seq]",
            "attention_mask: i64[batch, total_seq]",
            "position_ids: i64[batch, seq]",
            "past_key_values.0.key: f32[batch, 1, past_seq, 2]",
            "past_key_values.0.value: f32[batch, 1, past_seq, 2]",
        ]
    );
    let outputs: Vec<String> = session.outputs().iter().map(IoSpec::to_string).collect();
    assert_eq!(outputs, ["logits: f32[batch, seq, 3]", "present.0.key: f32[batch, 1, total_seq, 2]", "present.0.value: f32[batch, 1, total_seq, 2]"]);
    let json = serde_json::to_value(&session.inputs()[3]).unwrap();
    assert_eq!(json, serde_json::json!({"name": "past_key_values.0.key", "dtype": "f32", "dims": ["batch", 1, "past_seq", 2]}));
}

#[test]
fn every_optimisation_level_opens_and_runs() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "add.onnx", &add_model());
    for level in runtime::OptLevel::ALL {
        let mut s = rt.session(&model, &SessionOptions { opt_level: level, ..SessionOptions::default() }).unwrap_or_else(|e| panic!("{level}: {e}"));
        let out = s.run(&[Feed { name: "x", shape: &[1, 3], data: TensorData::F32(&[0.0, 0.0, 1.0]) }]).unwrap();
        assert_eq!(out[0].1.as_slice().unwrap(), [10.0, 20.0, 31.0], "{level}");
    }
}

#[test]
fn a_missing_or_corrupt_model_is_an_error_not_a_panic() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let err = rt.session(&dir.path().join("absent.onnx"), &SessionOptions::default()).unwrap_err();
    assert!(matches!(err, RuntimeError::ModelNotFound { .. }), "{err:?}");
    let corrupt = write(&dir, "corrupt.onnx", b"\x08\x08garbage that is not a model");
    let err = rt.session(&corrupt, &SessionOptions::default()).unwrap_err();
    assert!(matches!(err, RuntimeError::Session { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.onnx"), "{err}");
}

#[test]
fn run_names_unknown_and_missing_inputs() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "add.onnx", &add_model());
    let mut s = rt.session(&model, &SessionOptions::default()).unwrap();
    let err = s.run(&[Feed { name: "z", shape: &[1], data: TensorData::F32(&[0.0]) }]).unwrap_err();
    assert!(err.to_string().contains("has no input `z`; its inputs are `x`"), "{err}");
    let err = s.run(&[]).unwrap_err();
    assert!(err.to_string().contains("not given: `x`"), "{err}");
    let err = s.run(&[Feed { name: "x", shape: &[2, 3], data: TensorData::F32(&[0.0]) }]).unwrap_err();
    assert!(matches!(err, RuntimeError::BadInput(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Prefill and decode
// ---------------------------------------------------------------------------------------

#[test]
fn prefill_feeds_mask_and_positions_that_skip_padding() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "prefill.onnx", &prefill_model(true));
    let mut s = rt.session(&model, &SessionOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    // Row 0 is left-padded by one.
    let ids = [0i64, 3, 1, 2, 2, 0];
    let mask = [0i64, 1, 1, 1, 1, 1];
    let logits = s.run_prefill(&ids, &mask, 2, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits.shape(), [2, 3, PREFILL_VOCAB]);
    let positions = [[0, 0, 1], [0, 1, 2]];
    for b in 0..2 {
        for j in 0..3 {
            for v in 0..PREFILL_VOCAB {
                let id = ids[b * 3 + j] as f32;
                let want = (10.0 * id + v as f32) * mask[b * 3 + j] as f32 + 100.0 * positions[b][j] as f32;
                assert_eq!(logits[[b, j, v]], want, "[{b}, {j}, {v}]");
            }
        }
    }
}

#[test]
fn prefill_without_a_mask_input_refuses_a_padded_batch() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "prefill-ids-only.onnx", &prefill_model(false));
    let mut s = rt.session(&model, &SessionOptions::default()).unwrap();
    let logits = s.run_prefill(&[1, 2], &[1, 1], 1, 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits.as_slice().unwrap(), [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0]);
    let err = s.run_prefill(&[1, 2], &[0, 1], 1, 2).unwrap_err();
    assert!(err.to_string().contains("no `attention_mask` input"), "{err}");
    let err = s.run_prefill(&[1, 2, 3], &[1, 1], 1, 2).unwrap_err();
    assert!(matches!(err, RuntimeError::BadInput(_)), "{err:?}");
}

#[test]
fn decode_steps_grow_the_cache_and_continue_positions() {
    decode_steps_check(Some(false));
}

/// The same closed-form check with every step run through I/O binding on the CPU: the bound
/// code path (inputs from the host, the cache fed back where the last step left it, outputs
/// bound to memory) must feed the model exactly what the plain path feeds it.
#[test]
fn bound_decode_steps_grow_the_cache_and_continue_positions() {
    decode_steps_check(Some(true));
}

fn decode_steps_check(io_binding: Option<bool>) {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "decoder.onnx", &decoder_model());
    let session = rt.session(&model, &SessionOptions { io_binding, ..SessionOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
    let mut dec = Decoder::new(session).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dec.io_binding(), io_binding == Some(true));
    assert_eq!((dec.n_layer(), dec.n_kv_head(), dec.head_dim()), (1, 1, HD));

    let mut cache = dec.empty_cache(2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache.past_len(), 0);
    // Prefill through the decoder: two tokens per row.
    let logits = dec.step(&mut cache, &[1, 2, 3, 4], 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits.shape(), [2, 2, DECODER_VOCAB]);
    assert_eq!(cache.past_len(), 2);
    let expect = |id: f32, pos: f32, key_sum: f32, total: f32, v: usize| id + 100.0 * pos + key_sum + 10000.0 * total + v as f32;
    for v in 0..DECODER_VOCAB {
        assert_eq!(logits[[0, 0, v]], expect(1.0, 0.0, 2.0 * 3.0, 2.0, v));
        assert_eq!(logits[[0, 1, v]], expect(2.0, 1.0, 2.0 * 3.0, 2.0, v));
        assert_eq!(logits[[1, 1, v]], expect(4.0, 1.0, 2.0 * 7.0, 2.0, v));
    }

    // One more token per row.
    let logits = dec.step(&mut cache, &[5, 6], 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(logits.shape(), [2, 1, DECODER_VOCAB]);
    assert_eq!(cache.past_len(), 3);
    for v in 0..DECODER_VOCAB {
        assert_eq!(logits[[0, 0, v]], expect(5.0, 2.0, 2.0 * 8.0, 3.0, v));
        assert_eq!(logits[[1, 0, v]], expect(6.0, 2.0, 2.0 * 13.0, 3.0, v));
    }
    let (k, v) = cache.layer(0).unwrap();
    assert_eq!(k.shape(), [2, 1, 3, HD]);
    assert_eq!(k.iter().copied().collect::<Vec<f32>>(), [1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 3.0, 3.0, 4.0, 4.0, 6.0, 6.0]);
    assert!(k.iter().zip(v.iter()).all(|(a, b)| *a == -*b), "values are the negated keys");

    // A third step feeds back a cache that was itself fed back once.
    let logits = dec.step(&mut cache, &[7, 8], 1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cache.past_len(), 4);
    for v in 0..DECODER_VOCAB {
        assert_eq!(logits[[0, 0, v]], expect(7.0, 3.0, 2.0 * 15.0, 4.0, v));
        assert_eq!(logits[[1, 0, v]], expect(8.0, 3.0, 2.0 * 21.0, 4.0, v));
    }

    let err = dec.step(&mut cache, &[1, 2, 3], 1).unwrap_err();
    assert!(matches!(err, RuntimeError::BadInput(_)), "{err:?}");
}

#[test]
fn a_prefill_model_is_not_a_decoder() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "prefill.onnx", &prefill_model(true));
    let session = rt.session(&model, &SessionOptions::default()).unwrap();
    let err = Decoder::new(session).unwrap_err();
    assert!(err.to_string().contains("not a decoder model"), "{err}");

    let model = write(&dir, "decoder.onnx", &decoder_model());
    let mut session = rt.session(&model, &SessionOptions::default()).unwrap();
    let err = session.run_prefill(&[1], &[1], 1, 1).unwrap_err();
    assert!(err.to_string().contains("runs through `Decoder`"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Execution providers
// ---------------------------------------------------------------------------------------

#[test]
fn an_accelerator_the_library_lacks_is_unavailable_not_cpu() {
    let Some(rt) = rt() else { return };
    if rt.info().has_provider("CUDAExecutionProvider") {
        eprintln!("note: skipped, this library was built with CUDA");
        return;
    }
    let dir = tempdir();
    let model = write(&dir, "add.onnx", &add_model());
    for provider in [Provider::Cuda, Provider::TensorRt] {
        let options = SessionOptions::default().with_providers([provider, Provider::Cpu]);
        let err = rt.session(&model, &options).unwrap_err();
        assert!(err.is_degradation(), "{provider}: {err:?}");
        assert!(matches!(&err, RuntimeError::ProviderUnavailable { provider: p, .. } if *p == provider), "{err:?}");
        let text = err.to_string();
        for needle in [format!("execution provider `{provider}` is not available"), "CPUExecutionProvider".to_string(), runtime::PINNED_VERSION.to_string()] {
            assert!(text.contains(&needle), "`{needle}` not in: {text}");
        }
    }
}

#[test]
fn a_provider_library_beside_the_runtime_is_in_the_ort_facet() {
    // ONNX Runtime where a machine keeps it, outside the workspace, as `ORT_DYLIB_PATH` names it.
    let system = tempdir();
    let lib = system.path().join(PINNED_LIBRARY);
    fs::copy(support::ort_library(), &lib).unwrap();
    let ws = support::workspace::Workspace::new("tr118-ort-facet-").env(runtime::ORT_DYLIB_ENV, &lib);
    ws.write("tr118.toml", "[stages.s]\ncmd = [\"sh\", \"-c\", \"echo ran > $0\", \"{outs.o}\"]\nouts = { o = \"o.txt\" }\nfacets = [\"ort\"]\n");
    let first = ws.make_ok();
    assert_eq!(first.ran(), ["s"], "{}", first.run);

    // The shared provider library appears: the facet moves, by the file's name and digest.
    let shared = system.path().join("libonnxruntime_providers_shared.so");
    fs::write(&shared, b"provider, first build").unwrap();
    let digest = |bytes: &[u8]| blake3::hash(bytes).to_hex()[..12].to_string();
    let m = ws.make_ok();
    assert_eq!(m.ran(), ["s"], "{}", m.run);
    let reason = m.record("s").reason.as_deref().unwrap().to_string();
    let named = format!("; libonnxruntime_providers_shared.so {}", digest(b"provider, first build"));
    assert!(reason.contains("environment facet `ort` changed") && reason.contains(&named), "{reason}");
    assert!(!reason.contains(&system.path().display().to_string()), "the facet names no directory: {reason}");
    assert_eq!(ws.make_ok().ran(), Vec::<String>::new());

    // Its content changes: the facet moves again.
    fs::write(&shared, b"provider, second build").unwrap();
    let m = ws.make_ok();
    assert_eq!(m.ran(), ["s"], "{}", m.run);
    let reason = m.record("s").reason.as_deref().unwrap().to_string();
    assert!(reason.contains(&format!("{named} → ")) && reason.contains(&digest(b"provider, second build")), "{reason}");
}

#[test]
fn provider_names_parse_with_suggestions() {
    assert_eq!("tensorrt".parse::<Provider>(), Ok(Provider::TensorRt));
    let err = "cdua".parse::<Provider>().unwrap_err();
    assert!(err.contains("did you mean `cuda`?"), "{err}");
    assert_eq!(Provider::Cuda.ort_name(), "CUDAExecutionProvider");
    assert_eq!(serde_json::to_string(&Provider::TensorRt).unwrap(), "\"tensorrt\"");
}

/// Run on a GPU machine with `onnxruntime-gpu==1.31.1` as `ORT_DYLIB_PATH` and the CUDA 13
/// libraries on `LD_LIBRARY_PATH`: `cargo test --release --test suite runtime:: -- --ignored`.
#[test]
#[ignore = "needs onnxruntime-gpu and a GPU"]
fn cuda_sessions_run_on_the_gpu_and_tensorrt_is_used_or_unavailable() {
    let rt = rt().expect("a GPU test needs ORT_DYLIB_PATH");
    assert!(rt.info().has_provider("CUDAExecutionProvider"), "not a GPU build: {:?}", rt.info().providers);
    let dir = tempdir();
    let model = write(&dir, "add.onnx", &add_model());
    let x = [1.0f32, 2.0, 3.0];
    let feeds = [Feed { name: "x", shape: &[1, 3], data: TensorData::F32(&x) }];

    let mut cuda = rt.session(&model, &SessionOptions::default().with_providers([Provider::Cuda])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cuda.providers(), [Provider::Cuda, Provider::Cpu]);
    assert_eq!(cuda.run(&feeds).unwrap()[0].1.as_slice().unwrap(), [11.0, 22.0, 33.0]);

    let dec_model = write(&dir, "decoder.onnx", &decoder_model());
    let mut dec = Decoder::new(rt.session(&dec_model, &SessionOptions::default().with_providers([Provider::Cuda])).unwrap()).unwrap();
    let mut cache = dec.empty_cache(1).unwrap();
    dec.step(&mut cache, &[3, 4], 2).unwrap();
    let logits = dec.step(&mut cache, &[5], 1).unwrap();
    assert_eq!(logits[[0, 0, 0]], 5.0 + 200.0 + 2.0 * 12.0 + 30000.0);

    match rt.session(&model, &SessionOptions::default().with_providers([Provider::TensorRt, Provider::Cuda])) {
        Ok(mut trt) => assert_eq!(trt.run(&feeds).unwrap()[0].1.as_slice().unwrap(), [11.0, 22.0, 33.0]),
        Err(e) => {
            assert!(e.is_degradation(), "{e:?}");
            eprintln!("tensorrt: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// I/O binding and CUDA graphs on a real export
//
// The tiny Llama of the test support (the sweep test's: vocabulary 41, weights of std 0.5,
// so greedy choices do not hinge on rounding), exported by tr118's exporter and checked
// against the naive f64 forward of `support/reference.rs`, which shares no code with it.
//
// The `gpu_` tests are ignored by default. On a machine with a GPU, `onnxruntime-gpu==1.31.1`
// and the CUDA 13 libraries (cuBLAS, cuDNN 9, cudart) on `LD_LIBRARY_PATH`, run them with:
//
//   ORT_DYLIB_PATH=/path/to/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \
//     cargo test --release --test suite runtime::gpu_ -- --ignored --nocapture
//
// Each prints what it compares and the largest difference it saw.
// ---------------------------------------------------------------------------------------

fn llama_config() -> ModelConfig {
    ModelConfig { vocab_size: 41, ..reference::tiny_llama(RopeLayout::Interleaved) }
}

fn llama_weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| random_weights_scaled(&llama_config(), 11, 0.5))
}

/// The tiny Llama's `variant` export under `dir`, from a GGUF written there.
fn export_llama(dir: &TempDir, variant: Variant) -> PathBuf {
    export_model(dir, &llama_config(), llama_weights(), variant, Precision::Fp32)
}

/// `variant` of `cfg` with `weights` at `precision`, under `dir`, from a GGUF written there.
fn export_model(dir: &TempDir, cfg: &ModelConfig, weights: &Weights, variant: Variant, precision: Precision) -> PathBuf {
    let gguf = dir.path().join("model.gguf");
    if !gguf.is_file() {
        let tensors = reference::writer_tensors(cfg, weights);
        write_gguf(&gguf, cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    }
    let ck = Checkpoint::open(&gguf).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join(format!("{}-{precision:?}", variant.name())).join("model.onnx");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let opts = ExportOptions { variant, precision, opset: 17, external_data: Some(false), max_length: None };
    export::export(&ck, &opts, &path).unwrap_or_else(|e| panic!("export {}: {e}", variant.name()));
    path
}

/// Prompts of `batch` rows of `len` tokens, distinct per row.
fn prompts(batch: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(5);
    (0..batch).map(|_| (0..len).map(|_| (rng.next_u64() % llama_config().vocab_size as u64) as u32).collect()).collect()
}

/// Argmax, lowest id on ties: the same rule as the sweep's greedy loop.
fn argmax(row: impl Iterator<Item = f32>) -> usize {
    let row: Vec<f32> = row.collect();
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// Greedy decoding with the naive forward: the ids, and each step's last-position logits.
fn reference_greedy(prompt: &[u32], new_tokens: usize) -> (Vec<i64>, Vec<Vec<f32>>) {
    let (mut seq, mut ids, mut rows) = (prompt.to_vec(), Vec::new(), Vec::new());
    for _ in 0..new_tokens {
        let logits = reference::forward(&llama_config(), llama_weights(), &seq);
        let last = logits.last().unwrap().clone();
        let next = argmax(last.iter().copied());
        ids.push(next as i64);
        seq.push(next as u32);
        rows.push(last);
    }
    (ids, rows)
}

/// What one greedy decode through a [`Decoder`] saw: ids per row, each step's last-position
/// logits per row (`[step][row][vocab]`), and the cache at the end.
struct Decoded {
    ids: Vec<Vec<i64>>,
    logits: Vec<Vec<Vec<f32>>>,
    cache: KvCache,
    /// Every layer's (key, value), filled positions, as host copies (`Decoder::cache_layer`).
    layers: Vec<(ndarray::ArrayD<f32>, ndarray::ArrayD<f32>)>,
}

/// The whole prompt in one step from an empty cache, then one token a step, reading the
/// logits in place through `step_with` as the sweep's loop does.
fn decode(dec: &mut Decoder, prompts: &[Vec<u32>], new_tokens: usize) -> Decoded {
    let batch = prompts.len();
    let mut cache = dec.empty_cache(batch).unwrap_or_else(|e| panic!("{e}"));
    let mut ids = vec![Vec::new(); batch];
    let mut logits = Vec::new();
    let mut feed: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
    let mut len = prompts[0].len();
    for step in 0..new_tokens {
        let mut rows = Vec::new();
        dec.step_with(&mut cache, &feed, len, &mut |view| {
            let last = view.shape()[1] - 1;
            rows = (0..batch).map(|b| (0..view.shape()[2]).map(|v| view[[b, last, v]]).collect()).collect();
        })
        .unwrap_or_else(|e| panic!("step {step}: {e}"));
        feed = rows.iter().map(|r: &Vec<f32>| argmax(r.iter().copied()) as i64).collect();
        for (b, &t) in feed.iter().enumerate() {
            ids[b].push(t);
        }
        logits.push(rows);
        len = 1;
    }
    let layers = (0..dec.n_layer()).map(|i| dec.cache_layer(&cache, i).unwrap_or_else(|e| panic!("{e}"))).collect();
    Decoded { ids, logits, cache, layers }
}

/// Max |a - b| over every step, row and logit.
fn max_logit_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f64 {
    assert_eq!(a.len(), b.len(), "steps");
    let mut worst = 0.0f64;
    for (sa, sb) in a.iter().zip(b) {
        for (ra, rb) in sa.iter().zip(sb) {
            assert_eq!(ra.len(), rb.len(), "vocabulary");
            for (x, y) in ra.iter().zip(rb) {
                assert!(x.is_finite() && y.is_finite(), "a logit is not finite");
                worst = worst.max((f64::from(*x) - f64::from(*y)).abs());
            }
        }
    }
    worst
}

/// Max |a - b| between two decodes' caches, layer by layer, through `Decoder::cache_layer`'s
/// host copies.
fn max_cache_diff(a: &Decoded, b: &Decoded) -> f64 {
    assert_eq!((a.cache.batch(), a.cache.past_len()), (b.cache.batch(), b.cache.past_len()));
    assert_eq!(a.layers.len(), b.layers.len(), "layers");
    let mut worst = 0.0f64;
    for (i, ((ka, va), (kb, vb))) in a.layers.iter().zip(&b.layers).enumerate() {
        assert_eq!(ka.shape(), kb.shape(), "layer {i}");
        assert_eq!(va.shape(), vb.shape(), "layer {i}");
        for (x, y) in ka.iter().chain(va.iter()).zip(kb.iter().chain(vb.iter())) {
            worst = worst.max((f64::from(*x) - f64::from(*y)).abs());
        }
    }
    worst
}

/// The reference's ids and logits for every row of `prompts`, `[step][row][vocab]`.
fn reference_decode(prompts: &[Vec<u32>], new_tokens: usize) -> (Vec<Vec<i64>>, Vec<Vec<Vec<f32>>>) {
    let per_row: Vec<(Vec<i64>, Vec<Vec<f32>>)> = prompts.iter().map(|p| reference_greedy(p, new_tokens)).collect();
    let ids = per_row.iter().map(|(ids, _)| ids.clone()).collect();
    let logits = (0..new_tokens).map(|s| per_row.iter().map(|(_, rows)| rows[s].clone()).collect()).collect();
    (ids, logits)
}

fn llama_decoder(rt: &Runtime, model: &Path, options: SessionOptions) -> Decoder {
    let options = SessionOptions { intra_threads: Some(1), ..options };
    Decoder::new(rt.session(model, &options).unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn bound_greedy_decoding_matches_plain_runs_and_the_reference() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = export_llama(&dir, Variant::Decoder);
    let cfg = llama_config();
    let mut plain = llama_decoder(rt, &model, SessionOptions { io_binding: Some(false), ..SessionOptions::default() });
    let mut bound = llama_decoder(rt, &model, SessionOptions { io_binding: Some(true), ..SessionOptions::default() });
    assert!(!plain.io_binding() && bound.io_binding());
    assert!(!llama_decoder(rt, &model, SessionOptions::default()).io_binding(), "binding is off by default on the CPU");

    let new_tokens = 6;
    for (batch, len) in [(1, 5), (2, 4)] {
        let prompts = prompts(batch, len);
        let (want_ids, want_logits) = reference_decode(&prompts, new_tokens);
        let distinct: std::collections::BTreeSet<i64> = want_ids.iter().flatten().copied().collect();
        assert!(distinct.len() >= 3, "the reference generates too few distinct tokens to tell decoders apart: {distinct:?}");

        let p = decode(&mut plain, &prompts, new_tokens);
        let b = decode(&mut bound, &prompts, new_tokens);
        assert_eq!(p.ids, want_ids, "batch {batch}: plain steps vs the reference's greedy ids");
        assert_eq!(b.ids, want_ids, "batch {batch}: bound steps vs the reference's greedy ids");
        let vs_ref = max_logit_diff(&b.logits, &want_logits);
        let vs_plain = max_logit_diff(&b.logits, &p.logits);
        let cache = max_cache_diff(&b, &p);
        eprintln!("batch {batch}: bound vs reference logits {vs_ref:.2e}, bound vs plain logits {vs_plain:.2e}, caches {cache:.2e}");
        assert!(vs_ref <= 1e-4, "batch {batch}: bound logits vs the reference: {vs_ref:.3e}");
        assert!(vs_plain <= 1e-6, "batch {batch}: bound vs plain logits: {vs_plain:.3e}");
        assert!(cache <= 1e-6, "batch {batch}: bound vs plain cache: {cache:.3e}");
        assert_eq!(b.cache.past_len(), len + new_tokens - 1);
        assert!(b.cache.is_on_host(), "a CPU session's cache is in host memory");
        let (k, _) = b.cache.layer(cfg.n_layer - 1).unwrap();
        assert_eq!(k.shape(), [batch, cfg.n_kv_head, len + new_tokens - 1, cfg.head_dim()]);
    }
}

#[test]
fn a_fixed_capacity_cache_decodes_as_the_growing_one_and_refuses_to_overflow() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let growing = export_llama(&dir, Variant::Decoder);
    let fixed = export_llama(&dir, Variant::DecoderFixed);
    let cfg = llama_config();
    let mut reference = llama_decoder(rt, &growing, SessionOptions::default());
    assert_eq!(reference.capacity(), None);
    let new_tokens = 6;
    for io_binding in [Some(false), Some(true)] {
        let mut dec = llama_decoder(rt, &fixed, SessionOptions { io_binding, ..SessionOptions::default() });
        // The export's default capacity: the model's context length.
        assert_eq!(dec.capacity(), Some(cfg.n_ctx), "{io_binding:?}");
        for (batch, len) in [(1, 5), (2, 4)] {
            let prompts = prompts(batch, len);
            let (want_ids, want_logits) = reference_decode(&prompts, new_tokens);
            let f = decode(&mut dec, &prompts, new_tokens);
            let g = decode(&mut reference, &prompts, new_tokens);
            assert_eq!(f.ids, want_ids, "{io_binding:?}, batch {batch}: greedy ids vs the reference");
            let (vs_ref, vs_growing, cache) = (max_logit_diff(&f.logits, &want_logits), max_logit_diff(&f.logits, &g.logits), max_cache_diff(&f, &g));
            eprintln!("{io_binding:?}, batch {batch}: fixed vs reference {vs_ref:.2e}, vs growing {vs_growing:.2e}, caches {cache:.2e}");
            assert!(vs_ref <= 1e-4, "fixed vs the reference: {vs_ref:.3e}");
            // Float32 both, but different operators: the fixed graph's rotary embedding reads
            // angles tabulated at export, the growing one computes them in the graph.
            assert!(vs_growing <= 1e-5, "fixed vs growing logits: {vs_growing:.3e}");
            assert!(cache <= 1e-5, "fixed vs growing cache: {cache:.3e}");
            assert_eq!(f.cache.past_len(), len + new_tokens - 1);
        }
        // A step past the capacity is refused before anything runs, naming it.
        let mut cache = dec.empty_cache(1).unwrap();
        dec.step(&mut cache, &vec![1; cfg.n_ctx - 1], cfg.n_ctx - 1).unwrap_or_else(|e| panic!("{e}"));
        let err = dec.step(&mut cache, &[1, 2], 2).unwrap_err().to_string();
        assert!(err.contains(&format!("31 positions in the cache and 2 new do not fit its capacity of {}", cfg.n_ctx)), "{err}");
        assert_eq!(cache.past_len(), cfg.n_ctx - 1, "a refused step leaves the cache as it was");
        dec.step(&mut cache, &[1], 1).unwrap_or_else(|e| panic!("the last position still fits: {e}"));
        // Several tokens go only into an empty cache.
        let mut cache = dec.empty_cache(1).unwrap();
        dec.step(&mut cache, &[1, 2], 2).unwrap_or_else(|e| panic!("{e}"));
        let err = dec.step(&mut cache, &[3, 4], 2).unwrap_err().to_string();
        assert!(err.contains("a step of 2 tokens after 2 in the cache: a fixed-capacity cache takes several tokens only into an empty cache"), "{err}");

        // With binding the decoder keeps the cache: steps write it in place, and a new cache
        // of a batch size resets the one before it.
        assert_eq!(cache.is_resident(), io_binding == Some(true), "{io_binding:?}");
        if cache.is_resident() {
            assert!(dec.is_resident_on_host(), "a CPU session's buffers are host memory");
            let fresh = dec.empty_cache(1).unwrap();
            let err = dec.step(&mut cache, &[5], 1).unwrap_err().to_string();
            assert!(err.contains("this cache of batch 1 was reset by a later `empty_cache(1)`"), "{err}");
            assert!(cache.layer(0).unwrap_err().to_string().contains("read them with `Decoder::cache_layer`"));
            assert_eq!(dec.cache_layer(&fresh, 0).unwrap().0.shape(), [1, cfg.n_kv_head, 0, cfg.head_dim()]);
        }
    }
}

/// A greedy decode through `Decoder::step_greedy`, as the sweep runs it: the ids per row.
fn decode_greedy(dec: &mut Decoder, prompts: &[Vec<u32>], new_tokens: usize) -> Vec<Vec<i64>> {
    let batch = prompts.len();
    let mut cache = dec.empty_cache(batch).unwrap_or_else(|e| panic!("{e}"));
    let mut ids = vec![Vec::new(); batch];
    let mut feed: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
    let (mut len, mut next) = (prompts[0].len(), Vec::new());
    for step in 0..new_tokens {
        dec.step_greedy(&mut cache, &feed, len, &mut next).unwrap_or_else(|e| panic!("step {step}: {e}"));
        assert_eq!(next.len(), batch, "step {step}: one id per row");
        for (b, &t) in next.iter().enumerate() {
            ids[b].push(t);
        }
        feed = next.clone();
        len = 1;
    }
    ids
}

/// A Llama whose head size the fp16 export's fused rotary embedding takes (a multiple of 16).
fn fused_config() -> ModelConfig {
    ModelConfig { d_model: 64, d_ff: 48, vocab_size: 41, ..reference::tiny_llama(RopeLayout::Interleaved) }
}

#[test]
fn the_fp16_fused_decoder_decodes_in_place_and_returns_the_argmax() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let cfg = fused_config();
    let weights = random_weights_scaled(&cfg, 13, 0.25);
    let model = export_model(&dir, &cfg, &weights, Variant::DecoderFixed, Precision::Fp16);
    let mut plain = llama_decoder(rt, &model, SessionOptions { io_binding: Some(false), ..SessionOptions::default() });
    let mut resident = llama_decoder(rt, &model, SessionOptions { io_binding: Some(true), ..SessionOptions::default() });
    assert!(plain.has_next_token() && resident.has_next_token());
    let new_tokens = 8;
    for (batch, len) in [(1, 5), (2, 4)] {
        let prompts = prompts(batch, len);
        // The naive forward on the fp32 weights: float16's error apart, the same logits.
        let mut want = Vec::new();
        for p in &prompts {
            let (mut seq, mut rows) = (p.clone(), Vec::new());
            let p_decoded = decode(&mut plain, std::slice::from_ref(p), new_tokens);
            for &t in &p_decoded.ids[0] {
                rows.push(reference::forward(&cfg, &weights, &seq).last().unwrap().clone());
                seq.push(t as u32);
            }
            want.push(rows);
        }
        let want: Vec<Vec<Vec<f32>>> = (0..new_tokens).map(|s| want.iter().map(|rows| rows[s].clone()).collect()).collect();
        let p = decode(&mut plain, &prompts, new_tokens);
        let r = decode(&mut resident, &prompts, new_tokens);
        assert!(r.cache.is_resident() && !p.cache.is_resident());
        let scale = want.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let (vs_ref, vs_plain, cache) = (max_logit_diff(&r.logits, &want) / scale, max_logit_diff(&r.logits, &p.logits), max_cache_diff(&r, &p));
        eprintln!(
            "batch {batch}: fp16 fused, resident vs the fp32 reference {vs_ref:.2e} of the logit scale {scale:.2}; vs plain runs {vs_plain:.2e}; caches {cache:.2e}"
        );
        assert!(vs_ref <= 1e-2, "batch {batch}: resident logits vs the reference: {vs_ref:.3e} of the scale");
        assert!(vs_plain <= 1e-6, "batch {batch}: resident vs plain logits: {vs_plain:.3e}");
        assert!(cache <= 1e-6, "batch {batch}: resident vs plain cache: {cache:.3e}");
        assert_eq!(r.ids, p.ids, "batch {batch}: resident vs plain ids");
        // `next_token`, copied alone from the resident buffers, is the argmax of the logits.
        assert_eq!(decode_greedy(&mut resident, &prompts, new_tokens), p.ids, "batch {batch}: `next_token` vs the logits' argmax");
        assert_eq!(decode_greedy(&mut plain, &prompts, new_tokens), p.ids, "batch {batch}: plain greedy steps");
    }
}

#[test]
fn a_prefill_on_the_device_returns_what_a_plain_run_computes() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    // The closed-form model first: every number is known.
    let toy = write(&dir, "prefill.onnx", &prefill_model(true));
    let ids = [0i64, 3, 1, 2, 2, 0];
    let mask = [0i64, 1, 1, 1, 1, 1];
    let positions = [[0, 0, 1], [0, 1, 2]];
    for io_binding in [Some(false), Some(true)] {
        let mut s = rt.session(&toy, &SessionOptions { io_binding, ..SessionOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.io_binding(), io_binding == Some(true));
        let inputs = s.prefill_inputs_on_device(&ids, &mask, 2, 3).unwrap_or_else(|e| panic!("{e}"));
        // Twice: a bound preparation is run again on the output buffer of its first run.
        for rep in 0..2 {
            let out = s.run_prepared_on_device(&inputs).unwrap_or_else(|e| panic!("{io_binding:?}, run {rep}: {e}"));
            assert_eq!((out.name(), out.shape()), ("logits", vec![2, 3, PREFILL_VOCAB]));
            assert!(out.is_on_host(), "the CPU's device memory is host memory");
            let logits = out.to_host().unwrap_or_else(|e| panic!("{e}"));
            for b in 0..2 {
                for j in 0..3 {
                    for v in 0..PREFILL_VOCAB {
                        let want = (10.0 * ids[b * 3 + j] as f32 + v as f32) * mask[b * 3 + j] as f32 + 100.0 * positions[b][j] as f32;
                        assert_eq!(logits[[b, j, v]], want, "{io_binding:?}, run {rep}, [{b}, {j}, {v}]");
                    }
                }
            }
        }
    }

    // Then the tiny Llama's prefill export, a batch of two, against the reference.
    let model = export_llama(&dir, Variant::Prefill);
    let prompts = prompts(2, 6);
    let flat: Vec<i64> = prompts.iter().flatten().map(|&t| i64::from(t)).collect();
    let mut s =
        rt.session(&model, &SessionOptions { io_binding: Some(true), intra_threads: Some(1), ..SessionOptions::default() }).unwrap_or_else(|e| panic!("{e}"));
    let inputs = s.prefill_inputs_on_device(&flat, &[1; 12], 2, 6).unwrap_or_else(|e| panic!("{e}"));
    let on_device = s.run_prepared_on_device(&inputs).unwrap_or_else(|e| panic!("{e}")).to_host().unwrap();
    let mut plain = None;
    s.run_prepared(&inputs, &mut |v| plain = Some(v.to_owned())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Some(&on_device), plain.as_ref(), "the bound run and the plain run of the same inputs");
    let mut worst = 0.0f64;
    for (b, p) in prompts.iter().enumerate() {
        for (t, row) in reference::forward(&llama_config(), llama_weights(), p).iter().enumerate() {
            for (v, &want) in row.iter().enumerate() {
                worst = worst.max((f64::from(on_device[[b, t, v]]) - f64::from(want)).abs());
            }
        }
    }
    eprintln!("prefill on the device vs reference: {worst:.2e}");
    assert!(worst <= 1e-4, "prefill on the device vs the reference: {worst:.3e}");
}

#[test]
fn cuda_graph_needs_the_cuda_provider_and_io_binding() {
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "prefill.onnx", &prefill_model(true));
    let err = rt.session(&model, &SessionOptions { cuda_graph: true, ..SessionOptions::default() }).unwrap_err();
    assert!(matches!(err, RuntimeError::CudaGraph { .. }) && !err.is_degradation(), "{err:?}");
    let text = err.to_string();
    for needle in ["`cuda_graph` needs the `cuda` provider alone", "providers are cpu", "prefill.onnx", "open it with `cuda_graph` off"] {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
    // Checked before the provider is registered, so it says so even without a GPU.
    let options = SessionOptions { cuda_graph: true, io_binding: Some(false), ..SessionOptions::default() }.with_providers([Provider::Cuda]);
    let err = rt.session(&model, &options).unwrap_err();
    assert!(err.to_string().contains("`cuda_graph` needs `io_binding`"), "{err}");
    let options = SessionOptions { cuda_graph: true, ..SessionOptions::default() }.with_providers([Provider::TensorRt, Provider::Cuda]);
    let err = rt.session(&model, &options).unwrap_err();
    assert!(err.to_string().contains("providers are tensorrt, cuda, cpu"), "{err}");
}

/// The CUDA runtime's session options, or a panic that says what is missing.
fn gpu_runtime() -> &'static Runtime {
    let rt = rt().expect("a GPU test needs ORT_DYLIB_PATH");
    assert!(rt.info().has_provider("CUDAExecutionProvider"), "not a GPU build of ONNX Runtime: {:?}", rt.info().providers);
    rt
}

#[test]
#[ignore = "needs onnxruntime-gpu and a GPU"]
fn gpu_bound_decode_keeps_the_cache_on_the_device_and_matches_the_cpu() {
    let rt = gpu_runtime();
    let dir = tempdir();
    let model = export_llama(&dir, Variant::Decoder);
    let cuda = || SessionOptions::default().with_providers([Provider::Cuda]);
    let mut cpu = llama_decoder(rt, &model, SessionOptions::default());
    let mut bound = llama_decoder(rt, &model, cuda());
    let mut plain = llama_decoder(rt, &model, SessionOptions { io_binding: Some(false), ..cuda() });
    assert!(bound.io_binding(), "binding is on by default with CUDA");
    assert!(!plain.io_binding());

    let new_tokens = 8;
    for (batch, len) in [(1, 5), (2, 4)] {
        let prompts = prompts(batch, len);
        let (want_ids, _) = reference_decode(&prompts, new_tokens);
        let c = decode(&mut cpu, &prompts, new_tokens);
        let b = decode(&mut bound, &prompts, new_tokens);
        let p = decode(&mut plain, &prompts, new_tokens);
        eprintln!("batch {batch}: ids cpu {:?}, cuda bound {:?}, cuda plain {:?}, reference {want_ids:?}", c.ids, b.ids, p.ids);
        assert_eq!(c.ids, want_ids, "batch {batch}: CPU vs reference ids");
        assert_eq!(b.ids, c.ids, "batch {batch}: CUDA with I/O binding vs CPU ids");
        assert_eq!(p.ids, c.ids, "batch {batch}: CUDA without binding vs CPU ids");
        let (vs_cpu, plain_vs_cpu) = (max_logit_diff(&b.logits, &c.logits), max_logit_diff(&p.logits, &c.logits));
        let cache = max_cache_diff(&b, &c);
        eprintln!("batch {batch}: logits cuda bound vs cpu {vs_cpu:.2e}, cuda plain vs cpu {plain_vs_cpu:.2e}; cache cuda bound vs cpu {cache:.2e}");
        assert!(vs_cpu <= 1e-3, "batch {batch}: CUDA bound vs CPU logits: {vs_cpu:.3e}");
        assert!(plain_vs_cpu <= 1e-3, "batch {batch}: CUDA plain vs CPU logits: {plain_vs_cpu:.3e}");
        assert!(cache <= 1e-3, "batch {batch}: CUDA bound cache (copied to the host) vs the CPU's: {cache:.3e}");
        // The point of binding: the cache never came back to the host.
        assert!(!b.cache.is_on_host(), "batch {batch}: with I/O binding the cache must stay in device memory");
        assert!(p.cache.is_on_host(), "batch {batch}: a plain run returns the cache in host memory");
    }
}

#[test]
#[ignore = "needs onnxruntime-gpu and a GPU"]
fn gpu_cuda_graph_prefill_replays_match_the_uncaptured_run() {
    let rt = gpu_runtime();
    let dir = tempdir();
    let model = export_llama(&dir, Variant::Prefill);
    let cuda = SessionOptions::default().with_providers([Provider::Cuda]);
    let mut graph = rt.session(&model, &SessionOptions { cuda_graph: true, ..cuda.clone() }).unwrap_or_else(|e| panic!("{e}"));
    let mut uncaptured = rt.session(&model, &cuda).unwrap_or_else(|e| panic!("{e}"));
    assert!(graph.cuda_graph() && graph.io_binding() && !uncaptured.cuda_graph());

    // Two shapes, interleaved, each run 4 times (a capture, then replays) with new ids every
    // time: a replay that read stale buffers, or another shape's graph, would be caught.
    let shapes = [(1usize, 5usize), (2, 7)];
    let mut rng = Rng::new(23);
    let mut worst = 0.0f64;
    for rep in 0..4 {
        for &(batch, seq) in &shapes {
            let ids: Vec<i64> = (0..batch * seq).map(|_| (rng.next_u64() % llama_config().vocab_size as u64) as i64).collect();
            let mask = vec![1i64; batch * seq];
            let g_in = graph.prefill_inputs_on_device(&ids, &mask, batch, seq).unwrap_or_else(|e| panic!("{e}"));
            let u_in = uncaptured.prefill_inputs_on_device(&ids, &mask, batch, seq).unwrap_or_else(|e| panic!("{e}"));
            let g_out = graph.run_prepared_on_device(&g_in).unwrap_or_else(|e| panic!("graph, {batch}×{seq}, run {rep}: {e}"));
            assert!(!g_out.is_on_host(), "the graph's logits stay on the device");
            let g = g_out.to_host().unwrap_or_else(|e| panic!("{e}"));
            let u_out = uncaptured.run_prepared_on_device(&u_in).unwrap_or_else(|e| panic!("{e}"));
            assert!(!u_out.is_on_host(), "bound logits stay on the device");
            let u = u_out.to_host().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(g.shape(), [batch, seq, llama_config().vocab_size]);
            let diff = g.iter().zip(u.iter()).map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs()).fold(0.0, f64::max);
            // And against the reference, row by row: a stale replay can equal nothing else.
            let mut vs_ref = 0.0f64;
            for (b, row_ids) in ids.chunks(seq).enumerate() {
                let tokens: Vec<u32> = row_ids.iter().map(|&t| t as u32).collect();
                for (t, row) in reference::forward(&llama_config(), llama_weights(), &tokens).iter().enumerate() {
                    for (v, &want) in row.iter().enumerate() {
                        vs_ref = vs_ref.max((f64::from(g[[b, t, v]]) - f64::from(want)).abs());
                    }
                }
            }
            eprintln!("{batch}×{seq} run {rep}: graph vs uncaptured {diff:.2e}, graph vs reference {vs_ref:.2e}");
            assert!(diff <= 1e-5, "{batch}×{seq}, run {rep}: graph vs uncaptured logits {diff:.3e}");
            assert!(vs_ref <= 1e-3, "{batch}×{seq}, run {rep}: graph vs reference logits {vs_ref:.3e}");
            worst = worst.max(diff);
        }
    }
    eprintln!("cuda graph vs uncaptured prefill, 2 shapes × 4 runs: max diff {worst:.2e}");

    // Inputs prepared before a later preparation of the same shape are refused, not run on
    // the later ones' ids.
    let first = graph.prefill_inputs_on_device(&[1, 2, 3, 4, 5], &[1; 5], 1, 5).unwrap();
    let _second = graph.prefill_inputs_on_device(&[5, 4, 3, 2, 1], &[1; 5], 1, 5).unwrap();
    let err = graph.run_prepared_on_device(&first).unwrap_err();
    assert!(err.to_string().contains("prepared again"), "{err}");

    // On an accelerator, a run "on the device" of host inputs would time their copies: refused,
    // and so is preparing them on the device without binding.
    let host_inputs = uncaptured.prefill_inputs(&[1, 2], &[1, 1], 1, 2).unwrap();
    let err = uncaptured.run_prepared_on_device(&host_inputs).unwrap_err();
    assert!(err.to_string().contains("prefill_inputs_on_device"), "{err}");
    let unbound = rt.session(&model, &SessionOptions { io_binding: Some(false), ..cuda }).unwrap_or_else(|e| panic!("{e}"));
    let err = unbound.prefill_inputs_on_device(&[1, 2], &[1, 1], 1, 2).unwrap_err();
    assert!(err.to_string().contains("`io_binding` off"), "{err}");
}

/// The fixed-capacity decoders on CUDA with graphs: the fp32 one (standard operators) and the
/// fp16 fused one, each resident and replaying a CUDA graph per step length, decode three times
/// in a row (every generation after the first reuses the buffers and replays the graphs
/// captured on them) and match the CPU's plain runs; `next_token` gives the same ids.
#[test]
#[ignore = "needs onnxruntime-gpu and a GPU"]
fn gpu_fixed_decoders_replay_cuda_graphs_and_match_the_cpu() {
    let rt = gpu_runtime();
    let graphs = SessionOptions { cuda_graph: true, ..SessionOptions::default().with_providers([Provider::Cuda]) };
    let plain = SessionOptions { io_binding: Some(false), ..SessionOptions::default() };
    let new_tokens = 8;
    for precision in [Precision::Fp32, Precision::Fp16] {
        let dir = tempdir();
        let (cfg, weights) = match precision {
            Precision::Fp32 => (llama_config(), llama_weights().clone()),
            Precision::Fp16 => (fused_config(), random_weights_scaled(&fused_config(), 13, 0.25)),
        };
        let model = export_model(&dir, &cfg, &weights, Variant::DecoderFixed, precision);
        let mut cpu = llama_decoder(rt, &model, plain.clone());
        let mut gpu = llama_decoder(rt, &model, graphs.clone());
        for (batch, len) in [(1, 5), (2, 4)] {
            let prompts = prompts(batch, len);
            let c = decode(&mut cpu, &prompts, new_tokens);
            let runs: Vec<Decoded> = (0..3).map(|_| decode(&mut gpu, &prompts, new_tokens)).collect();
            assert!(runs[0].cache.is_resident() && !gpu.is_resident_on_host(), "{precision:?}: the cache stays on the device");
            let scale = c.logits.iter().flatten().flatten().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
            let vs_cpu = max_logit_diff(&runs[0].logits, &c.logits);
            let replays = runs[1..].iter().map(|r| max_logit_diff(&r.logits, &runs[0].logits)).fold(0.0, f64::max);
            let cache = max_cache_diff(&runs[2], &c);
            eprintln!(
                "{precision:?}, batch {batch}: ids gpu {:?} cpu {:?}; logits gpu vs cpu {vs_cpu:.2e} (scale {scale:.2}), replays vs first {replays:.2e}, cache {cache:.2e}",
                runs[0].ids, c.ids
            );
            assert_eq!(replays, 0.0, "{precision:?}, batch {batch}: a replayed generation differs from the first");
            let tol = if precision == Precision::Fp32 { 1e-3 } else { 1e-2 * scale };
            assert!(vs_cpu <= tol, "{precision:?}, batch {batch}: CUDA graph vs CPU logits {vs_cpu:.3e}");
            assert!(cache <= tol, "{precision:?}, batch {batch}: CUDA graph vs CPU cache {cache:.3e}");
            assert_eq!(runs[0].ids, c.ids, "{precision:?}, batch {batch}: ids");
            assert_eq!(decode_greedy(&mut gpu, &prompts, new_tokens), c.ids, "{precision:?}, batch {batch}: `next_token` ids");
        }
    }
}

/// The study's model, exported by the study (`TR118_REAL_WORKSPACE`, a workspace where
/// `bench/gpu-decode.sh` ran): the fixed-capacity decoders on CUDA with graphs against the
/// fp32 growing decoder on the CPU. Greedy ids over 128 tokens from the sweep's 27-token prompt
/// (agreement reported; fp32 must agree everywhere), perplexity over windows of the corpus
/// (fp16 within the gate's 5e-3, fp32 within 1e-4), and the logits' largest difference.
#[test]
#[ignore = "needs onnxruntime-gpu, a GPU and TR118_REAL_WORKSPACE"]
fn gpu_real_model_fixed_decoders_match_the_fp32_reference() {
    let rt = gpu_runtime();
    let ws = PathBuf::from(std::env::var("TR118_REAL_WORKSPACE").expect("TR118_REAL_WORKSPACE names a workspace where bench/gpu-decode.sh ran"));
    let text = fs::read_to_string(ws.join("out/corpus/wiki.utf8")).unwrap();
    let text: String = text.lines().filter(|l| !l.starts_with("<doc") && !l.starts_with("</doc")).collect::<Vec<_>>().join("\n");
    let mut tok = tr118::tokenizer::load_tokenizer_json(&ws.join("out/export/tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    tok.with_truncation(None).unwrap();
    let ids: Vec<i64> =
        tok.encode(&text[..text.char_indices().nth(40_000).map_or(text.len(), |(i, _)| i)], false).unwrap().get_ids().iter().map(|&t| i64::from(t)).collect();
    let (prompt, new_tokens, window, windows) = (&ids[..27], 128, 256, 8);
    let cpu = SessionOptions { io_binding: Some(false), ..SessionOptions::default() };
    let graphs = SessionOptions { cuda_graph: true, ..SessionOptions::default().with_providers([Provider::Cuda]) };
    let open = |path: &str, options: &SessionOptions| {
        Decoder::new(rt.session(&ws.join(path), options).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut reference = open("out/export/decoder/model.onnx", &cpu);

    // Negative log-likelihood of each window's next tokens, and its logits.
    let score = |dec: &mut Decoder| -> (f64, Vec<ndarray::ArrayD<f32>>) {
        let (mut nll, mut count, mut all) = (0.0f64, 0usize, Vec::new());
        for w in 0..windows {
            let x = &ids[w * window..(w + 1) * window + 1];
            let mut cache = dec.empty_cache(1).unwrap();
            let logits = dec.step(&mut cache, &x[..window], window).unwrap_or_else(|e| panic!("{e}"));
            for t in 0..window {
                let row: Vec<f64> = (0..logits.shape()[2]).map(|v| f64::from(logits[[0, t, v]])).collect();
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                nll += lse - row[x[t + 1] as usize];
                count += 1;
            }
            all.push(logits);
        }
        ((nll / count as f64).exp(), all)
    };
    let prompt_u32: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    let greedy = |dec: &mut Decoder| decode_greedy(dec, std::slice::from_ref(&prompt_u32), new_tokens).remove(0);
    // Each step's logits along one sequence (the prompt, then the reference's ids one a step).
    let forced = |dec: &mut Decoder, ids: &[i64]| -> Vec<Vec<f32>> {
        let mut cache = dec.empty_cache(1).unwrap();
        let mut rows = Vec::new();
        let mut feed = prompt.to_vec();
        for &t in ids {
            let logits = dec.step(&mut cache, &feed, feed.len()).unwrap_or_else(|e| panic!("{e}"));
            let last = logits.shape()[1] - 1;
            rows.push((0..logits.shape()[2]).map(|v| logits[[0, last, v]]).collect());
            feed = vec![t];
        }
        rows
    };
    let want_ids = greedy(&mut reference);
    let want_steps = forced(&mut reference, &want_ids);
    let (want_ppl, want_logits) = score(&mut reference);
    for (name, path, ppl_tol) in
        [("fp32 decoder_fixed", "out/export/decoder_fixed/model.onnx", 1e-4), ("fp16 decoder_fixed", "out/export-fp16/decoder_fixed/model.onnx", 5e-3)]
    {
        let mut dec = open(path, &graphs);
        let got = greedy(&mut dec);
        let agree = got.iter().zip(&want_ids).filter(|(a, b)| a == b).count();
        let first_diff = got.iter().zip(&want_ids).position(|(a, b)| a != b);
        // Teacher-forced along the reference's ids: every decode step's logits and argmax.
        let steps = forced(&mut dec, &want_ids);
        let step_diff =
            steps.iter().zip(&want_steps).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())).fold(0.0, f64::max);
        let step_scale = want_steps.iter().flatten().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let argmax_of = |row: &Vec<f32>| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best });
        let top1 = steps.iter().zip(&want_steps).filter(|(a, b)| argmax_of(a) == argmax_of(b)).count();
        eprintln!(
            "{name}: teacher-forced over the reference's {new_tokens} ids: max |Δ logit| {step_diff:.2e} ({:.2e} of the scale {step_scale:.1}), argmax agreement {top1}/{new_tokens}",
            step_diff / step_scale
        );
        let (ppl, logits) = score(&mut dec);
        let rel = (ppl - want_ppl).abs() / want_ppl;
        let max_diff =
            logits.iter().zip(&want_logits).flat_map(|(a, b)| a.iter().zip(b.iter()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())).fold(0.0, f64::max);
        eprintln!(
            "{name}: greedy ids agree with the fp32 reference at {agree}/{new_tokens} (first difference at {first_diff:?}); perplexity {ppl:.4} vs {want_ppl:.4} (relative {rel:.2e}); max |Δ logit| {max_diff:.2e} over {windows} windows of {window}"
        );
        assert!(rel <= ppl_tol, "{name}: perplexity {ppl} vs the reference's {want_ppl}: relative {rel:.3e} over {ppl_tol:.0e}");
        if name.starts_with("fp32") {
            assert_eq!(got, want_ids, "{name}: greedy ids");
        }
    }
}
