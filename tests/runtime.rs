//! The ONNX Runtime layer against the real library: the probe, sessions, prefill, the decode
//! step and execution providers, on tiny models written as protobuf bytes by the test itself.
//!
//! The library comes from `ORT_DYLIB_PATH`, else `scripts/fetch-ort.sh` fetches the pinned
//! `onnxruntime==1.31.1` from PyPI once; a test never skips for want of it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::onnx::{Dim, FLOAT, Graph, INT64, attr_int, tensor_f32, tensor_i64};
use tempfile::TempDir;
use tr118::runtime::{self, Decoder, Feed, IoSpec, Provider, Runtime, RuntimeError, SessionOptions, TensorData};

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
    let mut g = Graph::new()
        .input("input_ids", INT64, &[Dim::Named("batch"), Dim::Named("seq")])
        .initializer(tensor_f32("table", &[v, v], &table))
        .node("Gather", &["table", "input_ids"], &["embedded"], &[attr_int("axis", 0)]);
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
    let candidates = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6", "/usr/lib64/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6"];
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
    let Some(rt) = rt() else { return };
    let dir = tempdir();
    let model = write(&dir, "decoder.onnx", &decoder_model());
    let session = rt.session(&model, &SessionOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut dec = Decoder::new(session).unwrap_or_else(|e| panic!("{e}"));
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
fn provider_names_parse_with_suggestions() {
    assert_eq!("tensorrt".parse::<Provider>(), Ok(Provider::TensorRt));
    let err = "cdua".parse::<Provider>().unwrap_err();
    assert!(err.contains("did you mean `cuda`?"), "{err}");
    assert_eq!(Provider::Cuda.ort_name(), "CUDAExecutionProvider");
    assert_eq!(serde_json::to_string(&Provider::TensorRt).unwrap(), "\"tensorrt\"");
}

/// Run on a GPU machine with `onnxruntime-gpu==1.31.1` as `ORT_DYLIB_PATH` and the CUDA 13
/// libraries on `LD_LIBRARY_PATH`: `cargo test --test runtime -- --ignored`.
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
