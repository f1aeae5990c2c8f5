//! `trt_build` with `builder = "tensorrt-rtx"`: real plans from the real TensorRT for RTX,
//! built on a machine without a GPU, through the real binary.
//!
//! The library and its bindings come from the default pipeline's own fetch stages
//! ([`support::rtx`]). Tiny random GPT-2 and Llama checkpoints are exported in fp32 and in fp16
//! arithmetic, quantised to static QDQ INT8 from a calibration, and built into prefill and
//! decoder plans per precision.
//!
//! | rule                                                                  | checked against                                   |
//! |-----------------------------------------------------------------------|---------------------------------------------------|
//! | three precisions, prefill and decoder, build into plans               | the plan files, their sizes in `build.json`       |
//! | the census: INT8 layers in the int8 plan, none in fp32; FP16 in fp16  | `layers.json` read here, word by word             |
//! | INT8 layers are the QDQ model's quantised MatMuls                     | the ONNX node names in each layer's metadata      |
//! | an ONNX the parser rejects fails naming the model and the node        | stderr                                            |
//! | a profile that does not fit the model fails naming the profile       | stderr                                            |
//! | editing one precision's settings rebuilds that plan only; `why` says  | which nodes run, `why`'s output                   |
//! | another library (its files are deps) rebuilds every plan              | which nodes run, `why`'s output                   |
//! | no Python, or no bindings for this Python: degraded with the reason   | the records, `build.json`                         |

use crate::support;
use crate::support::onnx::{Dim, FLOAT, Graph};
use crate::support::reference::{Rng, random_weights_scaled, tiny_gpt2, tiny_llama};
use crate::support::workspace::Workspace;
use serde_json::Value;
use tr118::model::dtype::DType;
use tr118::model::write::write_gguf;
use tr118::model::{ModelConfig, RopeLayout};

const PRECISIONS: [&str; 3] = ["fp32", "fp16", "int8"];

fn precision_axis(fp16_model: &str) -> String {
    format!(r#"[{{ name = "fp32", model = "out/export" }}, {{ name = "fp16", model = "{fp16_model}" }}, {{ name = "int8", model = "out/quantize" }}]"#)
}

/// Exports, calibration, static INT8, and prefill and decoder plans per precision.
fn pipeline(lib: &str, fp16_model: &str, extra: &str) -> String {
    let axis = precision_axis(fp16_model);
    let deps = support::rtx::DEPS;
    format!(
        r#"
[stages.export]
kind = "export"
deps = {{ checkpoint = "model.gguf" }}
variants = ["prefill", "decoder"]
tokenizer = false

[stages.export-fp16]
kind = "export"
deps = {{ checkpoint = "model.gguf" }}
variants = ["prefill", "decoder"]
precision = "fp16"
tokenizer = false

[stages.calibrate]
kind = "calibrate"
deps = {{ model = "out/export/prefill", tokenizer = "tokenizer.json", corpus = "corpus.txt", runtime = "{lib}" }}
method = "minmax"
samples = 4
seq_len = 8

[stages.quantize]
kind = "quantize"
deps = {{ model = "out/export/prefill", decoder = "out/export/decoder", calibration = "out/calibrate/calibration.json", runtime = "{lib}" }}
scheme = "static"

[stages.trt_build]
kind = "trt_build"
builder = "tensorrt-rtx"
matrix = {{ precision = {axis} }}
deps = {{ model = "{{matrix.precision.model}}/prefill", {deps} }}
profiles = [{{ batch = [1, 1, 2], sequence = [1, 4, 16] }}]

[stages.trt_build-decoder]
kind = "trt_build"
builder = "tensorrt-rtx"
matrix = {{ precision = {axis} }}
deps = {{ model = "{{matrix.precision.model}}/decoder", {deps} }}
profiles = [{{ batch = [1, 1, 2], sequence = [1, 1, 16], past_sequence = [0, 4, 15], total_sequence = [1, 5, 31] }}]

{stages}
{extra}
"#,
        stages = support::rtx::stages()
    )
}

fn workspace(prefix: &str, cfg: &ModelConfig, extra: &str) -> Workspace {
    let ws = Workspace::new(prefix).env("TR118_DISTDIR", support::rtx::distdir());
    let w = random_weights_scaled(cfg, 5, 0.5);
    let tensors = crate::support::reference::writer_tensors(cfg, &w);
    write_gguf(&ws.path("model.gguf"), cfg, &tensors, |_| DType::F32, &[]).unwrap_or_else(|e| panic!("write gguf: {e}"));
    ws.write("tokenizer.json", support::word_tokenizer_json(cfg.vocab_size));
    let mut rng = Rng::new(3);
    let words: Vec<String> = (0..120).map(|_| format!("t{}", rng.next_u64() % cfg.vocab_size as u64)).collect();
    ws.write("corpus.txt", words.join(" "));
    let lib = support::ort_library();
    ws.write("lib/libonnxruntime.so", std::fs::read(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display())));
    ws.write("tr118.toml", pipeline("lib/libonnxruntime.so", "out/export-fp16", extra));
    ws
}

/// The data types a layer computes on, read from `layers.json` without tr118's parser: the last
/// word of each input's `Format/Datatype`; a layer with no floating or INT8 input (a gather of
/// integer ids, a quantising reformat fed by integers) is known by its outputs instead.
fn input_types(layer: &Value) -> Vec<String> {
    let words = |side: &str| -> Vec<String> {
        layer[side].as_array().into_iter().flatten().filter_map(|t| t["Format/Datatype"].as_str()?.split_whitespace().last().map(str::to_string)).collect()
    };
    let inputs = words("Inputs");
    if inputs.iter().any(|w| ["Float", "Half", "Int8"].contains(&w.as_str())) { inputs } else { words("Outputs") }
}

fn layers(ws: &Workspace, node: &str) -> Vec<Value> {
    ws.json(&format!("out/{node}/plan/layers.json"))["Layers"].as_array().cloned().unwrap_or_default()
}

/// Builds everything and checks each plan and its census; returns the workspace.
fn plans_and_census(prefix: &str, cfg: &ModelConfig) -> Workspace {
    let ws = workspace(prefix, cfg, "");
    let make = ws.make_ok();
    for stage in ["trt_build", "trt_build-decoder"] {
        for p in PRECISIONS {
            let node = format!("{stage}/{p}");
            assert_eq!(make.status(&node), "ok", "{node}: {:?}", make.record(&node));
            let b = ws.json(&format!("out/{node}/build.json"));
            assert_eq!(b["builder"], "tensorrt-rtx", "{node}");
            assert_eq!(b["trt_version"], "1.7.1.116", "{node}");
            let plan = std::fs::metadata(ws.path(&format!("out/{node}/plan/model.plan"))).unwrap_or_else(|e| panic!("{node}: {e}"));
            assert_eq!(b["plan_bytes"].as_u64(), Some(plan.len()), "{node}");
            assert!(plan.len() > 1000, "{node}: a plan of {} bytes", plan.len());
            assert!(b["peak_build_mib"].as_f64().unwrap_or(0.0) > 10.0, "{node}: peak memory {}", b["peak_build_mib"]);
            assert!(b["build_s"].as_f64().unwrap_or(0.0) > 0.0, "{node}");

            let all = layers(&ws, &node);
            assert!(!all.is_empty(), "{node}: no layers in the census");
            assert_eq!(b["n_layers"].as_u64(), Some(all.len() as u64), "{node}");
            let with = |word: &str| all.iter().filter(|l| input_types(l).iter().any(|t| t == word)).count();
            let (int8, half) = (with("Int8"), with("Half"));
            eprintln!("{node}: {} layers, {int8} with Int8 inputs, {half} with Half inputs", all.len());
            match p {
                "fp32" => {
                    assert_eq!((int8, half), (0, 0), "{node}: an fp32 plan computes in fp32 only");
                    assert_eq!(b["layers_by_precision"]["int8"], 0, "{node}");
                    assert_eq!(b["layers_by_precision"]["fp16"], 0, "{node}");
                }
                "fp16" => {
                    assert!(half > 0, "{node}: no layer computes in FP16");
                    assert_eq!(int8, 0, "{node}");
                    assert_eq!(b["fp16_verified"], true, "{node}");
                    assert!(b["layers_by_precision"]["fp16"].as_u64().unwrap_or(0) > 0, "{node}");
                }
                _ => {
                    assert!(int8 > 0, "{node}: no layer computes in INT8");
                    assert_eq!(b["int8_verified"], true, "{node}");
                    assert_eq!(b["int8_layers"]["count"].as_u64(), Some(int8 as u64), "{node}");
                    // Every INT8 layer is one of the QDQ model's quantised MatMuls (TensorRT names
                    // the ONNX nodes each layer implements in its metadata).
                    let onnx =
                        std::fs::read(ws.path(&format!("out/quantize/{}/model.onnx", if stage == "trt_build" { "prefill" } else { "decoder" }))).unwrap();
                    for l in all.iter().filter(|l| {
                        l["Inputs"].as_array().is_some_and(|i| i.iter().any(|t| t["Format/Datatype"].as_str().is_some_and(|d| d.ends_with("Int8"))))
                    }) {
                        let meta = l["Metadata"].as_str().unwrap_or_default();
                        let matmuls: Vec<&str> = meta
                            .split("[ONNX Layer: ")
                            .skip(1)
                            .filter_map(|s| s.split(']').next())
                            .filter(|n| n.starts_with("MatMul") && !n.contains("Quantize"))
                            .collect();
                        assert!(!matmuls.is_empty(), "{node}: INT8 layer `{}` implements no MatMul: {meta}", l["Name"]);
                        for m in matmuls {
                            assert!(onnx.windows(m.len()).any(|w| w == m.as_bytes()), "{node}: `{m}` is not a node of the QDQ model");
                        }
                    }
                }
            }
        }
    }
    ws
}

#[test]
fn llama_plans_in_three_precisions_with_their_census() {
    let ws = plans_and_census("rtx-llama", &tiny_llama(RopeLayout::Interleaved));

    // Editing one precision's settings rebuilds that plan only, and `why` says what moved.
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write(
        "tr118.toml",
        text.replace("profiles = [{ batch = [1, 1, 2], sequence = [1, 4, 16] }]", "profiles = [{ batch = [1, 1, 2], sequence = [1, 4, 16] }]\n")
            + r#"
[stages.export-fp16b]
kind = "export"
deps = { checkpoint = "model.gguf" }
variants = ["prefill", "decoder"]
precision = "fp16"
tokenizer = false
opset = 18
"#,
    );
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write("tr118.toml", text.replacen(r#"{ name = "fp16", model = "out/export-fp16" }"#, r#"{ name = "fp16", model = "out/export-fp16b" }"#, 1));
    ws.tr(&["why", "trt_build/fp16"]).code(0).stdout_has("upstream `export-fp16b`");
    let make = ws.make_ok();
    let mut ran: Vec<String> = make.ran().into_iter().filter(|n| n.starts_with("trt_build")).collect();
    ran.sort();
    assert_eq!(ran, ["trt_build/fp16"], "only the edited precision's plan rebuilds");
    assert!(make.hits().iter().any(|n| n == "trt_build-decoder/fp16"), "the decoder stage kept its fp16 plan");
    let again = ws.make_ok();
    assert!(again.ran().is_empty(), "a second make reruns {:?}", again.ran());

    // The decoder's profiles: its three plans rebuild, the prefill plans stay, and `why` names
    // the field.
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write(
        "tr118.toml",
        text.replace("total_sequence = [1, 5, 31]", "total_sequence = [1, 6, 31]").replace("past_sequence = [0, 4, 15]", "past_sequence = [0, 5, 15]"),
    );
    ws.tr(&["why", "trt_build-decoder/int8"]).code(0).stdout_has("profiles");
    let make = ws.make_ok();
    let mut ran: Vec<String> = make.ran().into_iter().filter(|n| n.starts_with("trt_build")).collect();
    ran.sort();
    assert_eq!(ran, ["trt_build-decoder/fp16", "trt_build-decoder/fp32", "trt_build-decoder/int8"]);

    // Another library: every plan rebuilds, and `why` names the input. (The bindings stand in
    // for it: only one version of the library is on PyPI.)
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    let tag = python_tag();
    ws.write("tr118.toml", text.replace(support::rtx::DEPS, &format!(r#"tensorrt_rtx = "out/tensorrt-rtx/*", bindings = "out/tensorrt-rtx-py{tag}/*.so""#)));
    let other = if tag == "311" { "312" } else { "311" };
    ws.tr(&["why", "trt_build/int8"])
        .code(0)
        .stdout_has(&format!("input `out/tensorrt-rtx-py{other}/tensorrt_rtx.cpython-{other}-x86_64-linux-gnu.so` removed"));
    let make = ws.make_ok();
    let ran: Vec<String> = make.ran().into_iter().filter(|n| n.starts_with("trt_build")).collect();
    assert_eq!(ran.len(), 6, "every plan rebuilds with another library: {ran:?}");
}

#[test]
fn gpt2_plans_in_three_precisions_with_their_census() {
    plans_and_census("rtx-gpt2", &tiny_gpt2());
}

#[test]
fn a_model_the_parser_rejects_is_named_with_the_node() {
    let ws = Workspace::new("rtx-parser").env("TR118_DISTDIR", support::rtx::distdir());
    // One node of an operator no ONNX domain defines.
    let dims = [Dim::Fixed(2), Dim::Fixed(3)];
    ws.write("bad.onnx", Graph::new().input("x", FLOAT, &dims).output("y", FLOAT, &dims).node("NoSuchOp", &["x"], &["y"], &[]).model(17));
    ws.pipeline(&format!(
        r#"
[stages.trt_build]
kind = "trt_build"
builder = "tensorrt-rtx"
precision = "fp32"
deps = {{ model = "bad.onnx", {deps} }}

{stages}"#,
        deps = support::rtx::DEPS,
        stages = support::rtx::stages()
    ));
    ws.tr(&["make"]).code(1).stderr_has("`bad.onnx`: the ONNX parser rejects the model").stderr_has("NoSuchOp");
}

#[test]
fn a_profile_that_does_not_fit_is_refused() {
    let cfg = tiny_llama(RopeLayout::Interleaved);
    // total_sequence must be past_sequence + sequence at every corner; here its max is not.
    let ws = workspace("rtx-profile", &cfg, "");
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write("tr118.toml", text.replace("total_sequence = [1, 5, 31]", "total_sequence = [1, 5, 16]"));
    let run = ws.tr(&["make", "trt_build-decoder/fp32"]);
    run.code(1).stderr_has("a profile does not fit the model").stderr_has("out/export/decoder/model.onnx");
    // A dimension the model does not have is named before anything is built.
    ws.write("tr118.toml", text.replace("past_sequence = [0, 4, 15]", "past = [0, 4, 15]"));
    ws.tr(&["make", "trt_build-decoder/fp32"]).code(1).stderr_has("profile 0 names dimension `past`");
}

#[test]
fn without_python_or_bindings_for_it_the_plans_are_degraded() {
    let cfg = tiny_llama(RopeLayout::Interleaved);
    let ws = workspace("rtx-nopython", &cfg, "").env("TR118_PYTHON", "/nonexistent/python3");
    let make = ws.make_with(&["trt_build/fp32"]);
    assert_eq!(make.status("trt_build/fp32"), "degraded");
    let b = ws.json("out/trt_build/fp32/build.json");
    let reason = b["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot start TensorRT for RTX's helper") && reason.contains("TR118_PYTHON"), "{reason}");
    assert!(b["plan_bytes"].is_null() && b["n_layers"].is_null(), "no number without a plan: {b}");

    // Bindings for another Python only: degraded, naming this Python and what was given.
    let ws = workspace("rtx-nobindings", &cfg, "");
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    let this = python_tag();
    let other = if this == "311" { "312" } else { "311" };
    ws.write("tr118.toml", text.replace(support::rtx::DEPS, &format!(r#"tensorrt_rtx = "out/tensorrt-rtx/*", bindings = "out/tensorrt-rtx-py{other}/*.so""#)));
    let make = ws.make_with(&["trt_build/fp32"]);
    assert_eq!(make.status("trt_build/fp32"), "degraded");
    let reason = ws.json("out/trt_build/fp32/build.json")["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("no TensorRT for RTX bindings for Python") && reason.contains(&format!("cpython-{other}")), "{reason}");
}

/// `311` for the `python3` the helper runs under.
fn python_tag() -> String {
    let out = std::process::Command::new("python3").args(["-c", "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')"]).output().expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `tensorrt-rtx` backend over the fp32 plans, its perplexity and a generate sweep.
const BACKEND_STAGES: &str = r#"
[[backends]]
name = "rtx"
runtime = "tensorrt-rtx"
provider = "cuda"
prefill = "out/trt_build/fp32/plan"
decoder = "out/trt_build-decoder/fp32/plan"

[stages.perplexity]
kind = "perplexity"
matrix = ["backend"]
deps = { model = "{matrix.backend.prefill}", tokenizer = "tokenizer.json", corpus = "corpus.txt", runtime = "lib/libonnxruntime.so" }
context = 8

[stages.sweep]
kind = "sweep"
matrix = { backend = "backend", mode = ["generate"] }
mode = "{matrix.mode}"
deps = { prefill = "{matrix.backend.prefill}", decoder = "{matrix.backend.decoder}", tokenizer = "tokenizer.json", corpus = "corpus.txt", runtime = "lib/libonnxruntime.so" }
scenarios = [{ name = "short", prompt_tokens = 4, new_tokens = 3 }]
warmup = 1
reps = 2
"#;

#[test]
fn plans_that_cannot_run_here_are_degraded_with_the_library_reason() {
    let ws = workspace("rtx-backend", &tiny_llama(RopeLayout::Interleaved), BACKEND_STAGES);
    let make = ws.make_with(&["perplexity", "sweep"]);
    make.run.code(0);
    for node in ["perplexity/rtx", "sweep/rtx/generate"] {
        assert_eq!(make.status(node), "degraded", "{node}: {:?}", make.record(node));
        let detail = make.record(node).detail.as_deref().unwrap_or_default().to_string();
        eprintln!("{node}: {detail}");
        // The library's own words: no driver here (CUDA error 35), where an H200 says its
        // compute capability 9.0 is not one the plan supports.
        assert!(detail.contains("TensorRT for RTX cannot run") && detail.contains("out/trt_build"), "{node}: {detail}");
        assert!(detail.contains("cudaError") || detail.contains("compute capability"), "{node}: not the library's reason: {detail}");
    }
}

#[test]
fn a_plan_from_another_library_version_is_refused_with_its_reason() {
    let ws = workspace("rtx-version", &tiny_llama(RopeLayout::Interleaved), "");
    ws.make_with(&["trt_build/fp32"]).run.code(0);
    // The same plan, its header claiming another TensorRT for RTX: the version's minor number
    // follows the major at byte 0x18 (`01 07 01` for 1.7.1).
    let mut plan = ws.read("out/trt_build/fp32/plan/model.plan");
    assert_eq!(&plan[0x18..0x1b], &[1, 7, 1], "the header of a 1.7.1 plan");
    plan[0x19] = 6;
    ws.write("foreign/plan/model.plan", &plan);
    ws.write("foreign/build.json", ws.read("out/trt_build/fp32/build.json"));
    let text = String::from_utf8(ws.read("tr118.toml")).unwrap();
    ws.write("tr118.toml", text + &BACKEND_STAGES.replace("out/trt_build/fp32/plan", "foreign/plan"));
    let run = ws.tr(&["make", "perplexity"]);
    run.code(1).stderr_has("foreign/plan/model.plan").stderr_has("was built by another TensorRT for RTX").stderr_has("Rebuild the engine");
}
