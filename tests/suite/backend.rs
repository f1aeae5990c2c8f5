//! The `Backend` trait over ONNX Runtime: a decoder model serves prefill and decode steps,
//! and the probe records which provider ran its nodes; backends as a pipeline declares them.
//!
//! | rule                                                                   | checked against                          |
//! |------------------------------------------------------------------------|------------------------------------------|
//! | decode steps reproduce the prefill; the provider that ran is recorded   | the backend's own prefill, the probe     |
//! | a prefill model refuses decode steps; a missing provider is unavailable | the errors                               |
//! | backend fields are checked where they are written                      | diagnostics with line and column         |
//! | a `tensorrt` backend's calibration table is an input of exactly its nodes | which nodes rerun after an edit, `why` |

use crate::support;
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
    let opts = ExportOptions { variant: Variant::Decoder, precision: Precision::Fp32, opset: 17, external_data: None, max_length: None };
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
    let opts = ExportOptions { variant: Variant::Prefill, precision: Precision::Fp32, opset: 17, external_data: None, max_length: None };
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

/// A `backend` axis declared under `[axes]` is a plain axis a `cmd` stage may use; a stage
/// kind that runs backends finds its values are not backends and says so at its `matrix`. A
/// torch backend whose `facets` is not a list is told so, not given the worker's facets.
#[test]
fn a_backend_axis_of_plain_values_is_refused_by_the_kinds_that_run_backends() {
    let run = |pipeline: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tr118.toml"), pipeline).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tr118")).arg("-C").arg(dir.path()).arg("graph").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let axis = "[axes]\nbackend = [\"cpu\", \"cuda\"]\n\n";
    let (code, stderr) = run(&format!("{axis}[stages.s]\nmatrix = [\"backend\"]\ncmd = [\"echo\", \"{{matrix.backend}}\"]\n"));
    assert_eq!(code, Some(0), "a cmd stage takes any axis named `backend`: {stderr}");
    let ppl = "[stages.p]\nkind = \"perplexity\"\nmatrix = [\"backend\"]\ndeps = { model = \"m.onnx\", tokenizer = \"t.json\", corpus = \"c.txt\" }\n";
    let (code, stderr) = run(&format!("{axis}{ppl}"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("tr118.toml:6:1: backend `?`: a backend is a table with a `name`"), "{stderr}");

    let torch = "[[backends]]\nname = \"t\"\nruntime = \"torch\"\nfacets = \"torch\"\n\n";
    let (code, stderr) = run(&format!("{torch}{ppl}"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("backend `t`") && stderr.contains("facets"), "{stderr}");
}

/// Backends of which one reads a calibration table (`trt-int8`), one that names it without
/// reading it (a CPU backend: only TensorRT reads the table) and one without; a stage per
/// backend that only echoes the backend's name.
const CALIBRATED: &str = r#"
[[backends]]
name = "cpu"
trt_int8_calibration_table = "calibration.cache"

[[backends]]
name = "trt-fp16"
provider = "tensorrt"
trt_fp16 = true

[[backends]]
name = "trt-int8"
provider = "tensorrt"
precision = "int8"
trt_int8_calibration_table = "calibration.cache"

[stages.a]
matrix = ["backend"]
cmd = ["sh", "-c", "echo $0 > $1", "{matrix.backend}", "{outs.o}"]
outs = { o = "o.txt" }

[stages.b]
matrix = { backend = "backend", mode = ["prefill", "generate"] }
cmd = ["sh", "-c", "echo $0 $1 > $2", "{matrix.backend}", "{matrix.mode}", "{outs.o}"]
outs = { o = "o.txt" }
"#;

#[test]
fn editing_a_tensorrt_calibration_table_reruns_exactly_the_nodes_of_the_backends_that_read_it() {
    let ws = support::workspace::Workspace::new("tr118-backend-table-");
    ws.write("tr118.toml", CALIBRATED);
    ws.write("calibration.cache", "TRT-8601-EntropyCalibration2\ninput_ids: 3c010a14\n");
    let first = ws.make_ok();
    assert_eq!(first.ran().len(), 9, "{}", first.run);

    ws.write("calibration.cache", "TRT-8601-EntropyCalibration2\ninput_ids: 3c010a15\n");
    ws.tr(&["why", "a/trt-int8"]).code(0).stdout_has("input `calibration.cache` changed");
    let after = ws.make_ok();
    assert_eq!(after.ran(), ["a/trt-int8", "b/trt-int8/generate", "b/trt-int8/prefill"], "{}", after.run);
}

#[test]
fn a_calibration_table_outside_the_workspace_is_refused_where_it_is_written() {
    let ws = support::workspace::Workspace::new("tr118-backend-table-abs-");
    ws.write(
        "tr118.toml",
        CALIBRATED.replacen(
            "trt_int8_calibration_table = \"calibration.cache\"\n\n[stages",
            "trt_int8_calibration_table = \"/etc/calibration.cache\"\n\n[stages",
            1,
        ),
    );
    ws.tr(&["make"]).diag(15, "backend `trt-int8`: `trt_int8_calibration_table` `/etc/calibration.cache` is an absolute path");
}
