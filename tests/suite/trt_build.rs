//! The `trt_build` stage: TensorRT plans per precision through `trtexec`.
//!
//! TensorRT cannot be installed on this project's machines, so the kind is checked three
//! ways: the command line and the parsing of `trtexec`'s outputs through the library, against
//! argument lists and counts written out here (the layer-information fixtures in
//! `tests/fixtures/trt/` are hand-written in the engine inspector's documented format, their
//! counts worked out by hand in that folder's README); the degraded path through the real
//! binary with no `trtexec` anywhere; and every other path through the real binary with a
//! stand-in `trtexec` on `PATH`, a shell script that records its argv, prints TensorRT's
//! version lines and writes a plan and a fixture where `--saveEngine` and `--exportLayerInfo`
//! say.
//!
//! | rule                                                               | checked against                                     |
//! |--------------------------------------------------------------------|-----------------------------------------------------|
//! | the argv of each precision                                         | argument lists written out here                     |
//! | layers counted by precision, INT8 layers listed, output types      | the fixtures' hand counts                           |
//! | no `trtexec`: degraded with the reason, `build.json` with null numbers, make exits 0, rerun hits | the records and files |
//! | installing `trtexec` reruns the degraded plans (facet `trtexec`)   | which nodes run                                     |
//! | a built plan: version, sizes, layer census, argv with every dynamic input and the calibration cache | what the stand-in wrote and was given |
//! | an int8 plan without an INT8 layer is flagged and degraded         | `build.json` and the record                         |
//! | `trtexec` failing: the node fails with the tail of its output       | exit code 1, stderr                                 |
//! | no GPU: degraded, not failed                                       | the record                                          |
//! | `also_fp16` reruns the int8 plan only                              | which nodes run, the argv                           |
//! | bad declarations are named                                         | diagnostics and failures                            |

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::reference::{gpt2, random_weights_scaled};
use crate::support::workspace::Workspace;
use serde_json::{Value, json};
use tr118::model::ModelConfig;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::onnx::signature::{SigDim, TensorSig};
use tr118::trt::{self, BuildCommand, DataType, PlanPrecision, Profile};

const PRECISIONS: [&str; 3] = ["fp32", "fp16", "int8"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trt")
}

fn fixture(name: &str) -> String {
    fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("read fixture {name}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The library: command lines and parsing
// ---------------------------------------------------------------------------------------

/// The export's prefill inputs, as its ONNX declares them.
fn prefill_inputs() -> Vec<TensorSig> {
    let dims = vec![SigDim::Named("batch".into()), SigDim::Named("sequence".into())];
    ["input_ids", "attention_mask"].iter().map(|n| TensorSig { name: n.to_string(), elem_type: Some(7), dims: dims.clone() }).collect()
}

fn sweep_profile() -> Profile {
    Profile([("batch".to_string(), [1, 1, 4]), ("sequence".to_string(), [1, 27, 512])].into_iter().collect())
}

fn command(precision: PlanPrecision) -> BuildCommand {
    BuildCommand {
        onnx: "out/export/prefill/model.onnx".into(),
        plan: "out/trt_build/x/plan/model.plan".into(),
        layers: "out/trt_build/x/plan/layers.json".into(),
        precision,
        tf32: true,
        shapes: trt::profile_shapes(&prefill_inputs(), &[sweep_profile()]).unwrap(),
        workspace_mib: None,
        timing_cache: Some("cache/trt-timing/t.timing".into()),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const SHAPES: [&str; 3] =
    ["--minShapes=input_ids:1x1,attention_mask:1x1", "--optShapes=input_ids:1x27,attention_mask:1x27", "--maxShapes=input_ids:4x512,attention_mask:4x512"];

#[test]
fn each_precision_has_its_exact_command_line() {
    let head = ["--onnx=out/export/prefill/model.onnx", "--saveEngine=out/trt_build/x/plan/model.plan"];
    let tail = [
        "--timingCacheFile=cache/trt-timing/t.timing",
        "--exportLayerInfo=out/trt_build/x/plan/layers.json",
        "--profilingVerbosity=detailed",
        "--skipInference",
    ];
    let expect = |flags: &[&str]| -> Vec<String> { strings(&[&head[..], flags, &SHAPES[..], &tail[..]].concat()) };

    assert_eq!(command(PlanPrecision::Fp32).args(), expect(&[]));
    assert_eq!(command(PlanPrecision::Fp16).args(), expect(&["--fp16"]));
    let int8 = |also_fp16| PlanPrecision::Int8 { calibration: "out/calibrate/calibration.cache".into(), also_fp16 };
    assert_eq!(command(int8(false)).args(), expect(&["--int8", "--calib=out/calibrate/calibration.cache"]));
    assert_eq!(command(int8(true)).args(), expect(&["--int8", "--fp16", "--calib=out/calibrate/calibration.cache"]));

    let strict = BuildCommand { tf32: false, workspace_mib: Some(4096), timing_cache: None, ..command(PlanPrecision::Fp32) };
    let args = strict.args();
    assert_eq!(
        args,
        strings(
            &[
                &head[..],
                &["--noTF32"],
                &SHAPES[..],
                &["--memPoolSize=workspace:4096", "--exportLayerInfo=out/trt_build/x/plan/layers.json", "--profilingVerbosity=detailed", "--skipInference"],
            ]
            .concat()
        )
    );
}

#[test]
fn several_profiles_give_one_shape_group_each() {
    let small = Profile([("batch".to_string(), [1, 1, 1]), ("sequence".to_string(), [1, 1, 1])].into_iter().collect());
    let shapes = trt::profile_shapes(&prefill_inputs(), &[sweep_profile(), small]).unwrap();
    let args = BuildCommand { shapes, ..command(PlanPrecision::Fp16) }.args();
    let groups: Vec<&String> = args.iter().filter(|a| a.contains("Shapes=")).collect();
    assert_eq!(
        groups,
        [
            SHAPES[0],
            SHAPES[1],
            SHAPES[2],
            "--minShapes=input_ids:1x1,attention_mask:1x1",
            "--optShapes=input_ids:1x1,attention_mask:1x1",
            "--maxShapes=input_ids:1x1,attention_mask:1x1"
        ]
    );
}

/// Hand counts of a fixture (see `tests/fixtures/trt/README.md`).
struct Counts {
    layers: usize,
    fp32: usize,
    fp16: usize,
    int8: usize,
    other: usize,
    int8_by_type: &'static [(&'static str, usize)],
}

#[test]
fn layer_information_is_counted_as_worked_out_by_hand() {
    let cases = [
        (
            "int8.layers.json",
            Counts { layers: 11, fp32: 4, fp16: 2, int8: 4, other: 1, int8_by_type: &[("CaskConvolution", 2), ("CaskGemmMatrixMultiply", 2)] },
        ),
        ("int8-no-int8.layers.json", Counts { layers: 7, fp32: 6, fp16: 0, int8: 0, other: 1, int8_by_type: &[] }),
        ("fp16.layers.json", Counts { layers: 6, fp32: 2, fp16: 3, int8: 0, other: 1, int8_by_type: &[] }),
    ];
    for (file, want) in cases {
        let info = trt::parse_layer_info(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(info.bindings, ["input_ids", "attention_mask", "logits"], "{file}");
        let s = trt::summarise(&info, &["logits".to_string()]);
        assert_eq!(s.n_layers, want.layers, "{file}");
        let by = &s.layers_by_precision;
        assert_eq!((by.fp32, by.fp16, by.int8, by.other), (want.fp32, want.fp16, want.int8, want.other), "{file}");
        assert_eq!(s.int8_layers.count, want.int8, "{file}");
        let by_type: Vec<(&str, usize)> = s.int8_layers.by_type.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(by_type, want.int8_by_type, "{file}");
        let logits = s.output_dtypes["logits"].as_ref().unwrap_or_else(|| panic!("{file}: no logits"));
        assert_eq!((logits.dtype, logits.format.as_deref()), (DataType::Fp32, Some("Row major linear FP32")), "{file}");
    }
    let int8 = trt::summarise(&trt::parse_layer_info(&fixture("int8.layers.json")).unwrap(), &[]);
    assert_eq!(
        int8.int8_layers.names,
        ["/h.0/attn/q_proj/MatMul + /h.0/attn/k_proj/MatMul", "/h.0/attn/o_proj/MatMul", "/h.0/mlp/c_fc/MatMul", "/h.0/mlp/c_proj/MatMul"]
    );
}

#[test]
fn layer_information_without_formats_is_refused_naming_the_verbosity() {
    let names_only = r#"{"Layers": ["/h.0/attn/MatMul", "/lm_head/MatMul"], "Bindings": ["input_ids", "logits"]}"#;
    let e = trt::parse_layer_info(names_only).unwrap_err().to_string();
    assert!(e.contains("--profilingVerbosity=detailed"), "{e}");
    assert!(trt::parse_layer_info("{\"Bindings\": []}").unwrap_err().to_string().contains("no `Layers`"));
}

#[test]
fn an_output_no_layer_writes_has_no_type() {
    let s = trt::summarise(&trt::parse_layer_info(&fixture("fp16.layers.json")).unwrap(), &["present.0.key".to_string()]);
    assert_eq!(s.output_dtypes["present.0.key"], None);
}

// ---------------------------------------------------------------------------------------
// The binary: a tiny exported model and a stand-in `trtexec`
// ---------------------------------------------------------------------------------------

fn config() -> ModelConfig {
    gpt2(64, 1, 16, 32)
}

/// The calibration cache the int8 node reads, in TensorRT's format.
const CALIBRATION: &str = "TRT-100300-EntropyCalibration2\ninput_ids: 3c010a14\n/h.0/attn/MatMul_output_0: 3d8f5c29\nlogits: 3e4ccccd\n";

/// The stage under test; `extra` goes into its table.
fn stage(extra: &str) -> String {
    format!(
        r#"
[stages.export]
kind = "export"
deps = {{ checkpoint = "model.gguf" }}
variants = ["prefill"]
tokenizer = false

[stages.trt_build]
kind = "trt_build"
matrix = {{ precision = ["fp32", "fp16", "int8"] }}
deps = {{ model = "out/export/prefill", calibration = "calibration.cache" }}
facets = ["gpu", "trtexec"]
profiles = [{{ batch = [1, 1, 4], sequence = [1, 27, 512] }}]
{extra}
"#
    )
}

/// A workspace with `model.gguf` and `calibration.cache`, whose runs see `PATH=<root>/tools`
/// (plus the system's directories when `system_path`, for the stand-in's shell commands).
fn workspace(pipeline: &str) -> Workspace {
    let ws = Workspace::new("tr118-trt-");
    let tools = ws.path("tools");
    fs::create_dir_all(&tools).unwrap();
    let ws = ws.env("PATH", format!("{}:/usr/bin:/bin", tools.display())).env("TRTEXEC", "");
    let cfg = config();
    let weights = random_weights_scaled(&cfg, 11, 0.25);
    let tensors = crate::support::reference::writer_tensors(&cfg, &weights);
    write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[]).expect("write model.gguf");
    ws.write("calibration.cache", CALIBRATION);
    ws.pipeline(pipeline);
    ws
}

/// How the stand-in `trtexec` behaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Builds: plan bytes and layer information by precision.
    Build,
    /// Builds, but the int8 plan has no INT8 layer.
    NoInt8,
    /// A parser error, exit 1.
    Fail,
    /// CUDA finds no device, exit 1.
    NoGpu,
}

/// Plan sizes the stand-in writes, by precision.
fn plan_bytes(precision: &str) -> u64 {
    match precision {
        "fp32" => 4000,
        "fp16" => 2000,
        _ => 1000,
    }
}

/// Writes the stand-in `trtexec` into `tools/`. It records its arguments, one a line, in
/// `argv/<precision>.txt` and touches the timing cache it is given.
fn install_trtexec(ws: &Workspace, fake: Fake) {
    let mode = match fake {
        Fake::Build => "build",
        Fake::NoInt8 => "noint8",
        Fake::Fail => "fail",
        Fake::NoGpu => "nogpu",
    };
    fs::create_dir_all(ws.path("argv")).unwrap();
    let script = format!(
        r#"#!/bin/sh
MODE={mode}
FIXTURES='{fixtures}'
ARGV='{argv}'
plan=; layers=; timing=; precision=fp32
for a in "$@"; do
  case "$a" in
    --saveEngine=*) plan="${{a#--saveEngine=}}" ;;
    --exportLayerInfo=*) layers="${{a#--exportLayerInfo=}}" ;;
    --timingCacheFile=*) timing="${{a#--timingCacheFile=}}" ;;
    --int8) precision=int8 ;;
    --fp16) [ "$precision" = int8 ] || precision=fp16 ;;
  esac
done
printf '%s\n' "$@" > "$ARGV/$precision.txt"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
echo "[08/01/2024-10:00:00] [I] === Model Options ==="
echo "[08/01/2024-10:00:00] [I] TensorRT version: 10.3.0"
case "$MODE" in
  fail)
    echo "[08/01/2024-10:00:01] [E] [TRT] ModelImporter.cpp:771: ERROR: input_ids:232 In function importInput" >&2
    echo "&&&& FAILED TensorRT.trtexec [TensorRT v100300] # trtexec"
    exit 1 ;;
  nogpu)
    echo "Cuda failure: no CUDA-capable device is detected" >&2
    exit 1 ;;
esac
case "$precision" in
  fp32) size=4000; info=int8-no-int8 ;;
  fp16) size=2000; info=fp16 ;;
  int8) size=1000; info=int8; [ "$MODE" = noint8 ] && info=int8-no-int8 ;;
esac
[ -n "$timing" ] && touch "$timing"
head -c "$size" /dev/zero > "$plan"
cp "$FIXTURES/$info.layers.json" "$layers"
echo "[08/01/2024-10:00:02] [I] Engine built in 1.25 sec."
echo "&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec"
"#,
        fixtures = fixtures().display(),
        argv = ws.path("argv").display(),
    );
    let path = ws.path("tools/trtexec");
    fs::write(&path, script).unwrap();
    let mut perm = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(&path, perm).unwrap();
}

/// The arguments the stand-in got for `precision`.
fn argv(ws: &Workspace, precision: &str) -> Vec<String> {
    String::from_utf8(ws.read(&format!("argv/{precision}.txt"))).unwrap().lines().map(str::to_string).collect()
}

fn build_json(ws: &Workspace, precision: &str) -> Value {
    ws.json(&format!("out/trt_build/{precision}/build.json"))
}

fn ids() -> Vec<String> {
    PRECISIONS.iter().map(|p| format!("trt_build/{p}")).collect()
}

/// [`ids`] in the sorted order of [`support::workspace::Make`]'s lists.
fn sorted_ids() -> Vec<String> {
    let mut ids = ids();
    ids.sort();
    ids
}

/// The command `build.json` records for `precision`: outputs where they are materialised.
fn recorded_command(precision: &str, timing: &str) -> Vec<String> {
    let node = format!("out/trt_build/{precision}/plan");
    let mut c = strings(&["trtexec", "--onnx=out/export/prefill/model.onnx"]);
    c.push(format!("--saveEngine={node}/model.plan"));
    c.extend(strings(match precision {
        "fp32" => &[][..],
        "fp16" => &["--fp16"][..],
        _ => &["--int8", "--calib=calibration.cache"][..],
    }));
    c.extend(strings(&SHAPES));
    c.push(format!("--timingCacheFile={timing}"));
    c.push(format!("--exportLayerInfo={node}/layers.json"));
    c.extend(strings(&["--profilingVerbosity=detailed", "--skipInference"]));
    c
}

#[test]
fn without_trtexec_every_plan_is_degraded_with_the_reason_and_the_command_it_would_run() {
    let ws = workspace(&stage(""));
    let make = ws.make_ok();
    for (id, precision) in ids().iter().zip(PRECISIONS) {
        assert_eq!(make.status(id), "degraded", "{}", make.run);
        let detail = make.record(id).detail.as_deref().unwrap();
        // `tools/` is inside the workspace: named relative to it, so the reason (in
        // `build.json`, which the report's key hashes) is the same in every checkout.
        assert_eq!(detail, "`trtexec` not found on PATH (TensorRT is not installed); looked in: tools, /usr/bin, /bin");

        let b = build_json(&ws, precision);
        assert_eq!(b["status"], "degraded");
        assert_eq!(b["reason"], detail);
        assert_eq!(b["precision"], precision);
        assert_eq!(b["trtexec"], Value::Null);
        let timing = b["timing_cache"].as_str().unwrap().to_string();
        assert!(timing.starts_with(&format!("cache/trt-timing/trt_build~{precision}-")) && timing.ends_with(".timing"), "{timing}");
        assert_eq!(b["command"], json!(recorded_command(precision, &timing)));
        assert_eq!(
            b["shapes"],
            json!([{ "min": "input_ids:1x1,attention_mask:1x1", "opt": "input_ids:1x27,attention_mask:1x27", "max": "input_ids:4x512,attention_mask:4x512" }])
        );
        assert_eq!(b["dynamic_inputs"], json!({ "attention_mask": ["batch", "sequence"], "input_ids": ["batch", "sequence"] }));
        for field in
            ["trt_version", "build_s", "engine_build_s", "plan_bytes", "n_layers", "layers_by_precision", "int8_layers", "output_dtypes", "int8_verified"]
        {
            assert_eq!(b[field], Value::Null, "{precision}: `{field}` of a plan never built");
        }
        assert_eq!(ws.files(&format!("out/trt_build/{precision}/plan")), Vec::<String>::new(), "no plan file is made up");
    }

    let again = ws.make_ok();
    assert_eq!(again.hits(), [&["export".to_string()][..], &sorted_ids()].concat(), "{}", again.run);
    assert_eq!(again.status("trt_build/int8"), "degraded");
    assert!(again.record("trt_build/int8").detail.as_deref().unwrap().contains("`trtexec` not found"), "a hit keeps its reason");
}

#[test]
fn installing_trtexec_reruns_the_degraded_plans() {
    let ws = workspace(&stage(""));
    ws.make_ok();
    install_trtexec(&ws, Fake::Build);
    let make = ws.make_ok();
    assert_eq!(make.ran(), sorted_ids(), "{}", make.run);
    for id in ids() {
        assert_eq!(make.status(&id), "ok", "{}", make.run);
        assert!(make.record(&id).reason.as_deref().unwrap().contains("environment facet `trtexec` changed <none> → trtexec "), "{}", make.run);
    }
}

#[test]
fn a_built_plan_is_described_by_what_trtexec_wrote() {
    let ws = workspace(&stage(""));
    install_trtexec(&ws, Fake::Build);
    let make = ws.make_ok();
    // Hand counts of the fixture each precision gets (tests/fixtures/trt/README.md).
    let census = [("fp32", [6, 0, 0, 1], 7), ("fp16", [2, 3, 0, 1], 6), ("int8", [4, 2, 4, 1], 11)];
    for (precision, [fp32, fp16, int8, other], layers) in census {
        let id = format!("trt_build/{precision}");
        assert_eq!(make.status(&id), "ok", "{}", make.run);
        let b = build_json(&ws, precision);
        assert_eq!(b["status"], "ok");
        assert_eq!(b["flags"], json!([]));
        assert_eq!(b["trtexec"], "tools/trtexec", "found at an absolute path inside the workspace, named relative to it");
        assert_eq!(b["trt_version"], "10.3.0");
        assert_eq!(b["engine_build_s"], 1.25);
        assert!(b["build_s"].as_f64().is_some_and(|s| s > 0.0 && s < 60.0), "{}", b["build_s"]);
        assert_eq!(b["plan_bytes"], plan_bytes(precision));
        assert_eq!(b["n_layers"], layers);
        assert_eq!(b["layers_by_precision"], json!({ "fp32": fp32, "fp16": fp16, "int8": int8, "other": other }));
        assert_eq!(b["output_dtypes"], json!({ "logits": { "dtype": "fp32", "format": "Row major linear FP32" } }));
        assert_eq!(b["int8_verified"], if precision == "int8" { json!(true) } else { Value::Null });

        // What trtexec was given: the recorded command but for the staging paths of outputs.
        let timing = b["timing_cache"].as_str().unwrap();
        let given = argv(&ws, precision);
        let recorded = recorded_command(precision, timing);
        assert_eq!(given.len(), recorded.len() - 1, "{given:?}");
        for (g, r) in given.iter().zip(&recorded[1..]) {
            if r.starts_with("--saveEngine=") || r.starts_with("--exportLayerInfo=") {
                let (flag, file) = r.split_once('=').unwrap();
                let file = Path::new(file).file_name().unwrap().to_string_lossy();
                assert!(g.starts_with(&format!("{flag}=cache/tmp/")) && g.ends_with(&format!("/plan/{file}")), "{g} for {r}");
            } else {
                assert_eq!(g, r);
            }
        }
        assert!(ws.path(timing).is_file(), "the timing cache `{timing}` persists outside out/");
        assert_eq!(ws.files(&format!("out/trt_build/{precision}/plan")), ["layers.json", "model.plan"]);
        assert_eq!(fs::metadata(ws.path(&format!("out/trt_build/{precision}/plan/model.plan"))).unwrap().len(), plan_bytes(precision));
    }
    let int8 = build_json(&ws, "int8");
    assert_eq!(int8["calibration"], "calibration.cache");
    assert_eq!(int8["int8_layers"]["count"], 4);
    assert_eq!(int8["int8_layers"]["by_type"], json!({ "CaskConvolution": 2, "CaskGemmMatrixMultiply": 2 }));
    assert_eq!(int8["int8_layers"]["names"][0], "/h.0/attn/q_proj/MatMul + /h.0/attn/k_proj/MatMul");

    let again = ws.make_ok();
    assert_eq!(again.ran(), Vec::<String>::new(), "{}", again.run);
}

#[test]
fn an_int8_plan_without_an_int8_layer_is_flagged_and_degraded() {
    let ws = workspace(&stage(""));
    install_trtexec(&ws, Fake::NoInt8);
    let make = ws.make_ok();
    assert_eq!(make.status("trt_build/fp32"), "ok");
    assert_eq!(make.status("trt_build/fp16"), "ok");
    assert_eq!(make.status("trt_build/int8"), "degraded", "{}", make.run);
    assert_eq!(make.record("trt_build/int8").detail.as_deref(), Some("int8 requested but no layer runs in INT8"));
    let b = build_json(&ws, "int8");
    assert_eq!(b["status"], "degraded");
    assert_eq!(b["flags"], json!(["int8 requested but no layer runs in INT8"]));
    assert_eq!(b["int8_verified"], false);
    // The plan is real, so its numbers are kept.
    assert_eq!(b["plan_bytes"], plan_bytes("int8"));
    assert_eq!(b["layers_by_precision"], json!({ "fp32": 6, "fp16": 0, "int8": 0, "other": 1 }));
    assert_eq!(b["int8_layers"], json!({ "count": 0, "names": [], "by_type": {} }));
}

#[test]
fn a_failing_trtexec_fails_the_node_with_the_tail_of_its_output() {
    let ws = workspace(&stage(""));
    install_trtexec(&ws, Fake::Fail);
    let run = ws.tr(&["make", "--keep-going"]);
    run.code(1);
    run.stderr_has("`trtexec` exited with status 1; the last lines of its output:");
    run.stderr_has("ModelImporter.cpp:771: ERROR: input_ids:232 In function importInput");
    assert!(!ws.path("out/trt_build/fp32/build.json").exists(), "a failure leaves no result");
    // Failures are not cached: the next run tries again.
    let make = ws.make();
    assert_eq!(make.run.code, Some(1));
    assert_eq!(make.status("trt_build/fp32"), "failed", "{}", make.run);
}

#[test]
fn no_gpu_is_a_degraded_build_not_a_failure() {
    let ws = workspace(&stage(""));
    install_trtexec(&ws, Fake::NoGpu);
    let make = ws.make_ok();
    for (id, precision) in ids().iter().zip(PRECISIONS) {
        assert_eq!(make.status(id), "degraded", "{}", make.run);
        assert_eq!(make.record(id).detail.as_deref(), Some("`trtexec` exited with status 1: no usable GPU (Cuda failure: no CUDA-capable device is detected)"));
        let b = build_json(&ws, precision);
        assert_eq!(b["trt_version"], "10.3.0", "what trtexec printed is real");
        assert_eq!(b["plan_bytes"], Value::Null);
        assert_eq!(b["build_s"], Value::Null);
    }
}

#[test]
fn also_fp16_reruns_only_the_int8_plan() {
    let ws = workspace(&stage(""));
    install_trtexec(&ws, Fake::Build);
    ws.make_ok();
    ws.pipeline(&stage("also_fp16 = true"));
    let make = ws.make_ok();
    assert_eq!(make.ran(), ["trt_build/int8"], "{}", make.run);
    let given = argv(&ws, "int8");
    let at = given.iter().position(|a| a == "--int8").expect("--int8");
    assert_eq!(given[at..at + 3], ["--int8", "--fp16", "--calib=calibration.cache"]);
    assert_eq!(build_json(&ws, "int8")["also_fp16"], true);
}

#[test]
fn an_int8_node_without_a_calibration_dep_is_a_pipeline_error() {
    let toml = stage("").replace(", calibration = \"calibration.cache\"", "");
    let ws = workspace(&toml);
    ws.tr(&["make"]).diag(11, "node `trt_build/int8` builds an int8 plan, which needs a dep named `calibration`");
}

#[test]
fn profile_sizes_out_of_order_are_named() {
    let toml = stage("").replace("sequence = [1, 27, 512]", "sequence = [64, 27, 512]");
    let ws = workspace(&toml);
    ws.tr(&["make"]).diag_at(13, 34, "`sequence` must satisfy min ≤ opt ≤ max with max > 0, found [64,27,512]");
}

#[test]
fn a_profile_naming_no_dimension_of_the_model_fails_with_a_suggestion() {
    let toml = stage("").replace("sequence = [", "seqence = [");
    let ws = workspace(&toml);
    install_trtexec(&ws, Fake::Build);
    let run = ws.tr(&["make", "--keep-going"]);
    run.code(1);
    run.stderr_has(
        "profile 0 names dimension `seqence`, which no input of the model has; its dynamic dimensions are `batch`, `sequence`; did you mean `sequence`?",
    );
}

#[test]
fn a_stage_without_the_gpu_and_trtexec_facets_fails_naming_them() {
    let toml = stage("").replace("facets = [\"gpu\", \"trtexec\"]", "facets = [\"gpu\"]");
    let ws = workspace(&toml);
    let run = ws.tr(&["make", "--keep-going"]);
    run.code(1);
    run.stderr_has("a `trt_build` stage must declare `facets = [\"gpu\", \"trtexec\"]` (missing: `trtexec`)");
}

#[test]
fn a_calibration_file_in_another_format_fails_the_int8_node() {
    let ws = workspace(&stage(""));
    ws.write("calibration.cache", "{\"input_ids\": {\"amax\": 63.0}}\n");
    install_trtexec(&ws, Fake::Build);
    let make = ws.make();
    assert_eq!(make.run.code, Some(1));
    assert_eq!(make.status("trt_build/int8"), "failed", "{}", make.run);
    assert!(make.record("trt_build/int8").detail.as_deref().unwrap().contains("is not a TensorRT calibration cache"), "{}", make.run);
}
