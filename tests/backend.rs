//! The `Backend` trait over ONNX Runtime: a decoder model serves prefill and decode steps,
//! and the probe records which provider ran its nodes.

mod support;

use serde_json::json;
use tr118::backend::{self, BackendError, BackendSpec};
use tr118::export::{self, ExportOptions, Precision, Variant};
use tr118::model::write::{random_tensors, write_gguf};
use tr118::model::{Checkpoint, RopeLayout};

#[test]
fn decoder_backend_steps_reproduce_its_own_prefill_and_report_the_provider_that_ran() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::reference::tiny_llama(RopeLayout::Interleaved);
    let gguf = dir.path().join("m.gguf");
    write_gguf(&gguf, &cfg, &random_tensors(&cfg, 7), |_| tr118::model::dtype::DType::F32, &[]).unwrap();
    let ck = Checkpoint::open(&gguf).unwrap();
    let onnx = dir.path().join("decoder.onnx");
    let opts = ExportOptions { variant: Variant::Decoder, precision: Precision::Fp32, opset: 17, external_data: None };
    export::export(&ck, &opts, &onnx).unwrap();

    let spec = BackendSpec::from_value(&json!({"name": "cpu", "provider": "cpu", "threads": 1})).unwrap();
    let mut b = backend::open(&spec, &onnx, support::ort_library()).unwrap();
    let assigned = &b.capability().providers_assigned;
    assert!(assigned.get("CPUExecutionProvider").is_some_and(|&n| n > 0), "{assigned:?}");
    assert_eq!(assigned.len(), 1, "{assigned:?}");

    let ids = [3i64, 1, 4, 1, 5, 9];
    let full = b.prefill(&ids, &[1; 6], 1, 6).unwrap();
    let mut cache = b.new_cache(1).unwrap();
    let mut worst = 0f32;
    for (t, &id) in ids.iter().enumerate() {
        let step = b.decode_step(&mut cache, &[id], 1).unwrap();
        let row = full.index_axis(ndarray::Axis(1), t);
        worst = step.iter().zip(row.iter()).fold(worst, |m, (a, c)| m.max((a - c).abs()));
    }
    assert!(worst < 1e-5, "steps and prefill differ by {worst}");
    assert!(full.iter().any(|v| v.abs() > 1e-3), "logits are all ~0: the comparison would prove nothing");
}

#[test]
fn a_prefill_backend_refuses_decode_steps_and_a_missing_provider_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::reference::tiny_llama(RopeLayout::Half);
    let gguf = dir.path().join("m.gguf");
    write_gguf(&gguf, &cfg, &random_tensors(&cfg, 3), |_| tr118::model::dtype::DType::F32, &[]).unwrap();
    let ck = Checkpoint::open(&gguf).unwrap();
    let onnx = dir.path().join("prefill.onnx");
    let opts = ExportOptions { variant: Variant::Prefill, precision: Precision::Fp32, opset: 17, external_data: None };
    export::export(&ck, &opts, &onnx).unwrap();

    let cpu = BackendSpec::from_value(&json!({"name": "cpu"})).unwrap();
    let b = backend::open(&cpu, &onnx, support::ort_library()).unwrap();
    assert!(matches!(b.new_cache(1), Err(BackendError::Failed(m)) if m.contains("decoder")));

    let cuda = BackendSpec::from_value(&json!({"name": "gpu", "provider": "cuda"})).unwrap();
    match backend::open(&cuda, &onnx, support::ort_library()) {
        Err(BackendError::Unavailable(reason)) => assert!(reason.contains("cuda"), "{reason}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("a CUDA backend opened on the CPU-only library"),
    }
}

#[test]
fn backend_declarations_are_checked_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "[[backends]]\nname = \"a\"\nprovder = \"cpu\"\n\n[[backends]]\nname = \"b\"\nprovider = \"rocm\"\n\n[stages.s]\nmatrix = [\"backend\"]\ncmd = [\"true\"]\n";
    std::fs::write(dir.path().join("tr118.toml"), pipeline).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tr118")).arg("-C").arg(dir.path()).arg("make").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tr118.toml:3:1: backend `a`: unknown backend field `provder`; did you mean `provider`?"), "{stderr}");
    assert!(stderr.contains("tr118.toml:7:1: backend `b`: unknown execution provider `rocm`"), "{stderr}");
}
