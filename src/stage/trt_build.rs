//! The `trt_build` kind: a TensorRT plan of one ONNX model (an export's prefill or decoder), one
//! node per precision, built by TensorRT for RTX (`builder = "tensorrt-rtx"`) or by `trtexec`
//! (`builder = "trtexec"`, the default).
//!
//! ## TensorRT for RTX
//!
//! ```toml
//! [stages.trt_build]
//! kind = "trt_build"
//! builder = "tensorrt-rtx"
//! matrix = { precision = [{ name = "fp32", model = "out/export" }, { name = "fp16", model = "out/export-fp16" },
//!                         { name = "int8", model = "out/quantize-static" }] }
//! deps = { model = "{matrix.precision.model}/prefill", tensorrt_rtx = "out/tensorrt-rtx/*",
//!          bindings = "out/tensorrt-rtx-py*/*.so" }
//! profiles = [{ batch = [1, 1, 4], sequence = [1, 27, 512] }]
//! workspace_mib = 4096         # caps the builder's scratch memory
//! ```
//!
//! TensorRT for RTX compiles ahead of time, with no GPU, for every compute capability it
//! supports; its networks are strongly typed, so a layer's precision is the graph's and
//! `precision` names which model a node builds (the fp32 export, the fp16 export that computes
//! in float16, the static QDQ model) and what the census must show. `tensorrt_rtx` is the
//! fetched `libtensorrt_rtx.so.1` and `libtensorrt_onnxparser_rtx.so.1` (one directory),
//! `bindings` the fetched Python bindings, one per CPython version: both are deps, so their
//! digests are in the key and a new library rebuilds every plan. The build runs in the helper
//! [`crate::trt::rtx`] carries, under `$TR118_PYTHON` or `python3`:
//!
//! - no Python, or no bindings for its version: **degraded**, with the reason;
//! - a model the ONNX parser rejects, or a profile with a corner the model cannot take
//!   (`total_sequence` ≠ `past_sequence + sequence`): **fails**, naming the model and the node
//!   or the profile;
//! - built: `plan/model.plan` and `plan/layers.json` (the builder's layer report as engine
//!   inspector JSON, read without a GPU; it lists the kernels inside fused regions), and
//!   `build.json` with the builder's version, its peak memory and the census. An int8 plan
//!   with no INT8 layer, or an fp16 plan with no FP16 layer, is flagged and **degraded**.
//!
//! `also_fp16`, `tf32` and `timing_cache` are `trtexec`'s and an error here. A `tensorrt-rtx`
//! backend runs the plans ([`crate::backend::torch::open_plan`]).
//!
//! ## `trtexec`
//!
//! Full TensorRT's builder (see [`crate::trt`] for how it is found and the flags it gets).
//!
//! ```toml
//! [stages.trt_build]
//! kind = "trt_build"
//! matrix = { precision = ["fp32", "fp16", "int8"] }   # or a `precision` field
//! deps = { model = "out/export/prefill", calibration = "out/calibrate/calibration.cache" }
//! facets = ["gpu", "trtexec"]                         # required: a plan is made for one GPU and one TensorRT
//! device = "cuda:0"
//! profiles = [{ batch = [1, 1, 4], sequence = [1, 27, 512] }]  # [min, opt, max] per dynamic dimension
//! also_fp16 = false            # int8 only: layers without an INT8 kernel fall back to FP16, not FP32
//! tf32 = true                  # false: `--noTF32`, FP32 layers in IEEE FP32
//! workspace_mib = 4096         # `--memPoolSize=workspace:4096` (default: TensorRT's, all device memory)
//! timing_cache = "cache/trt-timing"   # a directory, outside `out/` (the default); false: none
//! ```
//!
//! `model` is an export variant directory (or a `.onnx` file) and `calibration` a TensorRT
//! calibration cache (`TRT-<version>-EntropyCalibration2`, then `tensor: hexbits` lines), which
//! an int8 node must have and the others do not read. Deps are the stage's, so with one stage
//! for all precisions the calibration cache is an input of the fp32 and fp16 nodes too: a new
//! calibration rebuilds them. Declare int8 as a stage of its own where plans take long.
//!
//! Profiles size the model's dynamic dimensions by the names the model gives them (the
//! export's are `batch` and `sequence`; the decoder's also `past_sequence` and
//! `total_sequence`); every dynamic input gets `--minShapes/--optShapes/--maxShapes` from
//! them, fixed dimensions as the model fixes them, and every profile must size every dynamic
//! dimension. Several profiles become several optimisation profiles. Cover what the sweeps
//! will run: a shape outside every profile does not run on the plan.
//!
//! ## What happens
//!
//! - `trtexec` not found: the node is **degraded** with the reason and the places searched;
//!   `build.json` still holds the command that would have run, with null numbers.
//! - `trtexec` exits non-zero because there is no usable GPU (CUDA's "no CUDA-capable device"
//!   and kin in its output): **degraded**, with that line. Any other non-zero exit **fails**
//!   the node with the tail of `trtexec`'s output (all of it is in the node's log).
//! - Built: `plan/model.plan` and `plan/layers.json` (the engine inspector's layer
//!   information) are kept, and `build.json` holds what they say. An int8 plan in which no
//!   layer reports INT8 is flagged `int8 requested but no layer runs in INT8` and the node is
//!   **degraded** with that reason: it built, but it is not the plan that was asked for (see
//!   [`crate::trt`] for how layers are counted, and why INT8 inside a Myelin region is not
//!   seen).
//!
//! ## The key
//!
//! Beyond the model's and calibration cache's digests: the precision, the profiles, `also_fp16`
//! (int8 nodes only), `tf32`, `workspace_mib` and the timing cache's directory, and the facets
//! `gpu` (GPU models and driver) and `trtexec` (the binary's digest), which a `trt_build` stage
//! must declare: a plan is valid for one GPU model and one TensorRT, and without `trtexec` in
//! the key a result degraded for want of TensorRT would stay cached after TensorRT is
//! installed. The facet covers the `trtexec` binary, not a `libnvinfer` swapped under it;
//! bump the stage's `version` when doing that. The timing cache's *content* is not in the key:
//! it makes rebuilds faster by replaying earlier timings of the same kernels on the same GPU
//! instead of measuring them again, and a plan built with it is one a fresh build could have
//! produced — TensorRT's choice among kernels already varies from build to build with timing
//! noise. Its path is in the key only as part of the config. Its file is per node and per (GPU,
//! `trtexec`) — `<timing_cache>/<node id, / as ~>-<12 hex>.timing` — so parallel builds never
//! write one file and a cache from another GPU is never offered to TensorRT.
//!
//! ## `build.json`
//!
//! | field                 | meaning                                                                 |
//! |-----------------------|-------------------------------------------------------------------------|
//! | `builder`             | `tensorrt-rtx` or `trtexec`                                             |
//! | `precision`           | `fp32`, `fp16` or `int8`                                                |
//! | `status`, `reason`    | `ok`, or `degraded` with why                                            |
//! | `flags`               | problems with a plan that built (`int8 requested but no layer runs in INT8`) |
//! | `command`             | the argv, `trtexec` first; outputs at the paths they are materialised to (`out/<node>/plan/…`) |
//! | `trtexec`             | where `trtexec` was found (inside the workspace: relative to it); null when it was not |
//! | `library`, `library_digest`, `bindings`, `python` | TensorRT for RTX: the library's directory and blake3, the bindings offered, the interpreter |
//! | `trt_version`         | TensorRT's version as `trtexec` printed it; null when it did not run    |
//! | `gpu`                 | the `gpu` facet: GPU models and driver, `<none>`                        |
//! | `model`, `calibration`| the inputs, workspace-relative (`calibration` null but for int8)        |
//! | `dynamic_inputs`      | input → its dimensions, as the model declares them                      |
//! | `profiles`, `shapes`  | the profiles as declared and as `--min/opt/maxShapes` specs            |
//! | `also_fp16`, `tf32`, `workspace_mib`, `timing_cache` | the build settings              |
//! | `build_s`             | wall time of the `trtexec` process (parsing, building, writing)         |
//! | `engine_build_s`      | the builder's own time (`Engine built in N sec.`; TensorRT for RTX: `Engine generation completed in N seconds`) |
//! | `peak_build_mib`      | TensorRT for RTX: the helper's peak resident memory (parse and build)   |
//! | `plan_bytes`          | size of `model.plan`                                                    |
//! | `n_layers`            | layers in the layer information                                         |
//! | `layers_by_precision` | `{fp32, fp16, int8, other}` layer counts                                |
//! | `int8_layers`         | `{count, names (first 50), by_type}`                                    |
//! | `output_dtypes`       | network output → `{dtype, format}` as the plan writes it                |
//! | `int8_verified`       | int8: whether any layer runs in INT8; null for other precisions         |
//! | `fp16_verified`       | TensorRT for RTX, fp16: whether any layer runs in FP16; null otherwise  |
//!
//! Every number is null unless a plan was built; none is ever estimated.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::output::write_json;
use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::trt_build::{Built, TrtBuild as Report};
use crate::backend::PRECISIONS;
use crate::onnx::signature;
use crate::pipeline::NodeSpec;
use crate::trt::{self, BuildCommand, PlanPrecision, Profile, ShapeSpecs};

pub(crate) struct TrtBuild;

/// The lowered config: TensorRT for RTX's, or `trtexec`'s (which names no builder).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Config {
    Rtx(RtxConfig),
    Trtexec(TrtexecConfig),
}

#[derive(Debug, Serialize, Deserialize)]
struct RtxConfig {
    builder: Rtx,
    precision: String,
    profiles: Vec<Profile>,
    workspace_mib: Option<u64>,
}

/// `builder = "tensorrt-rtx"`, the only builder a config names.
#[derive(Debug, Serialize, Deserialize)]
enum Rtx {
    #[serde(rename = "tensorrt-rtx")]
    TensorRtRtx,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrtexecConfig {
    precision: String,
    profiles: Vec<Profile>,
    tf32: bool,
    workspace_mib: Option<u64>,
    timing_cache: Option<String>,
    /// int8 only: an fp32 node must not rerun when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    also_fp16: Option<bool>,
}

const FIELDS: &[&str] = &["builder", "precision", "profiles", "also_fp16", "tf32", "workspace_mib", "timing_cache"];

/// The builders a stage can name; the first is the default.
pub(crate) const BUILDERS: &[&str] = &["trtexec", "tensorrt-rtx"];

/// Fields only `trtexec` reads: TensorRT for RTX takes precision from the graph and tunes no
/// kernels at build time.
const TRTEXEC_ONLY: &[&str] = &["also_fp16", "tf32", "timing_cache"];

/// Facets a `trt_build` stage must declare (see the module docs).
pub(crate) const REQUIRED_FACETS: &[&str] = &["gpu", "trtexec"];

/// The timing cache's directory when the stage names none.
pub(crate) const DEFAULT_TIMING_CACHE: &str = "cache/trt-timing";

/// The flag of an int8 plan without an INT8 layer.
pub(crate) const INT8_UNVERIFIED: &str = "int8 requested but no layer runs in INT8";

/// The flag of an fp16 plan without an FP16 layer.
pub(crate) const FP16_UNVERIFIED: &str = "fp16 requested but no layer runs in FP16";

/// Lines of `trtexec`'s output quoted in a failure.
const TAIL_LINES: usize = 20;

/// The node's precision: the `precision` field, else its `precision` axis value (a string, or a
/// table with a `name`).
fn precision_of(cx: &LowerCx<'_>, errors: &mut Vec<LowerError>) -> String {
    let (value, field) = match (cx.fields.get("precision"), cx.matrix.get("precision")) {
        (Some(v), _) => (v, "precision"),
        (None, Some(v)) => (v, "matrix"),
        (None, None) => {
            errors.push(LowerError::at(
                vec![],
                "a `trt_build` node needs a precision".into(),
                Some("add `matrix = { precision = [\"fp32\", \"fp16\", \"int8\"] }` or `precision = \"fp16\"`".into()),
            ));
            return String::new();
        }
    };
    let name = value.as_str().or_else(|| value.get("name").and_then(Value::as_str)).unwrap_or_default();
    if !PRECISIONS.contains(&name) {
        let help = crate::diag::suggest(name, PRECISIONS.iter().copied()).or_else(|| Some("one of fp32, fp16, int8".into()));
        errors.push(LowerError::at(
            vec![field.into()],
            format!("unknown precision `{}`", if name.is_empty() { value.to_string() } else { name.to_string() }),
            help,
        ));
    }
    name.to_string()
}

fn profiles_of(f: &serde_json::Map<String, Value>, errors: &mut Vec<LowerError>) -> Vec<Profile> {
    let example = "profiles = [{ batch = [1, 1, 4], sequence = [1, 27, 512] }]";
    let Some(v) = f.get("profiles") else { return Vec::new() };
    let Some(items) = v.as_array() else {
        errors.push(LowerError::at(vec!["profiles".into()], format!("`profiles` must be a list of tables, found {v}"), Some(example.into())));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |k: Option<&str>| {
            let mut p = vec!["profiles".to_string(), i.to_string()];
            p.extend(k.map(str::to_string));
            p
        };
        let Some(t) = item.as_object().filter(|t| !t.is_empty()) else {
            errors.push(LowerError::at(at(None), format!("a profile is a table of dimension name → [min, opt, max], found {item}"), Some(example.into())));
            continue;
        };
        let mut dims = BTreeMap::new();
        for (name, sizes) in t {
            let parsed: Option<Vec<u64>> = sizes.as_array().map(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>()).unwrap_or(None);
            match parsed.as_deref() {
                Some(&[min, opt, max]) if min <= opt && opt <= max && max > 0 => {
                    dims.insert(name.clone(), [min, opt, max]);
                }
                Some(&[_, _, _]) => {
                    errors.push(LowerError::at(at(Some(name)), format!("`{name}` must satisfy min ≤ opt ≤ max with max > 0, found {sizes}"), None))
                }
                _ => errors.push(LowerError::at(at(Some(name)), format!("`{name}` must be [min, opt, max], three integers ≥ 0, found {sizes}"), None)),
            }
        }
        out.push(Profile(dims));
    }
    out
}

/// `timing_cache`: a workspace directory outside `out/` and the store, `None` for `false`.
fn timing_cache_of(f: &serde_json::Map<String, Value>, errors: &mut Vec<LowerError>) -> Option<String> {
    let field = vec!["timing_cache".to_string()];
    let dir = match f.get("timing_cache") {
        None => return Some(DEFAULT_TIMING_CACHE.into()),
        Some(Value::Bool(false)) => return None,
        Some(Value::String(s)) => s.trim_end_matches('/').to_string(),
        Some(v) => {
            errors.push(LowerError::at(field, format!("`timing_cache` must be a directory path or false, found {v}"), None));
            return None;
        }
    };
    if let Err(e) = crate::paths::check_rel_path(&dir, "timing_cache") {
        errors.push(LowerError::at(field, e, None));
        return None;
    }
    let owned = ["out", "cache/objects", "cache/actions", "cache/refs", "cache/logs", "cache/tmp"];
    if let Some(o) = owned.iter().find(|o| dir == **o || dir.starts_with(&format!("{o}/"))) {
        let help = Some(format!("use a directory of its own, such as `{DEFAULT_TIMING_CACHE}`"));
        errors.push(LowerError::at(field, format!("`timing_cache` `{dir}` is inside `{o}`, which tr118 owns and rewrites"), help));
        return None;
    }
    Some(dir)
}

impl Kind for TrtBuild {
    const NAME: &'static str = "trt_build";
    const FIELDS: &'static [&'static str] = FIELDS;
    const READS_MATRIX: bool = true;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "trt_build"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let builder = match f.get("builder") {
            None => BUILDERS[0],
            Some(v) => match BUILDERS.iter().find(|b| v.as_str() == Some(**b)) {
                Some(b) => b,
                None => {
                    let help =
                        v.as_str().and_then(|s| crate::diag::suggest(s, BUILDERS.iter().copied())).unwrap_or_else(|| "`trtexec` or `tensorrt-rtx`".into());
                    errors.push(LowerError::at(vec!["builder".into()], format!("unknown builder {v}"), Some(help)));
                    BUILDERS[0]
                }
            },
        };
        let rtx = builder == "tensorrt-rtx";
        if rtx {
            for field in TRTEXEC_ONLY.iter().filter(|k| f.contains_key(**k)) {
                errors.push(LowerError::at(
                    vec![(*field).into()],
                    format!("`{field}` is a `trtexec` setting; TensorRT for RTX takes each layer's precision from the ONNX graph and tunes no kernels while building"),
                    Some("remove it, or build with `builder = \"trtexec\"`".into()),
                ));
            }
            for (dep, what) in [
                ("tensorrt_rtx", "the directory of `libtensorrt_rtx.so.1` and `libtensorrt_onnxparser_rtx.so.1`"),
                ("bindings", "TensorRT for RTX's Python bindings, one module per Python version"),
            ] {
                if !cx.deps.iter().any(|d| d == dep) {
                    errors.push(LowerError::at(
                        vec!["deps".into()],
                        format!("a `tensorrt-rtx` build needs a dep named `{dep}`: {what}"),
                        Some(
                            "deps = { model = \"out/export/prefill\", tensorrt_rtx = \"out/tensorrt-rtx/*\", bindings = \"out/tensorrt-rtx-py*/*.so\" }".into(),
                        ),
                    ));
                }
            }
        }
        let precision = precision_of(cx, &mut errors);
        let profiles = profiles_of(f, &mut errors);
        let also_fp16 = super::bool_field(f, "also_fp16", false, &mut errors);
        let tf32 = super::bool_field(f, "tf32", true, &mut errors);
        let workspace_mib = match f.get("workspace_mib") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Some(n),
                _ => {
                    errors.push(LowerError::at(vec!["workspace_mib".into()], format!("`workspace_mib` must be a positive integer (MiB), found {v}"), None));
                    None
                }
            },
        };
        let timing_cache = timing_cache_of(f, &mut errors);
        if !cx.deps.iter().any(|d| d == "model") {
            errors.push(LowerError::at(
                vec!["deps".into()],
                "a `trt_build` stage needs a dep named `model`: the export's prefill directory or an ONNX file".into(),
                Some("deps = { model = \"out/export/prefill\" }".into()),
            ));
        }
        if precision == "int8" && !rtx && !cx.deps.iter().any(|d| d == "calibration") {
            errors.push(LowerError::at(
                vec!["deps".into()],
                format!("node `{}` builds an int8 plan, which needs a dep named `calibration`: a TensorRT calibration cache", cx.node),
                Some("deps = { model = \"out/export/prefill\", calibration = \"out/calibrate/calibration.cache\" }".into()),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let config = if rtx {
            Config::Rtx(RtxConfig { builder: Rtx::TensorRtRtx, precision, profiles, workspace_mib })
        } else {
            // Only an int8 build reads `also_fp16`: an fp32 node must not rerun when it changes.
            let also_fp16 = (precision == "int8").then_some(also_fp16);
            Config::Trtexec(TrtexecConfig { precision, profiles, tf32, workspace_mib, timing_cache, also_fp16 })
        };
        Ok(serde_json::to_value(config).expect("a config is JSON"))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("result".into(), "build.json".into()), ("plan".into(), "plan/".into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = Config::deserialize(&cx.node.config).map_err(|e| format!("the lowered config: {e}"))?;
        let rtx = matches!(config, Config::Rtx(_));
        let settings = Settings::from(config);
        if rtx {
            return run_rtx(cx, settings);
        }
        let missing: Vec<&str> = REQUIRED_FACETS.iter().copied().filter(|f| !cx.node.facets.iter().any(|x| x == f)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "a `trt_build` stage must declare `facets = [\"gpu\", \"trtexec\"]` (missing: {}): a plan is made for one GPU and one TensorRT, and a result degraded for want of TensorRT must not stay cached once it is installed",
                crate::diag::ticked(missing.iter())
            ).into());
        }
        let root = cx.root;
        let (model, sig, shapes) = model_of(cx, &settings)?;
        let precision = match settings.precision.as_str() {
            "fp32" => PlanPrecision::Fp32,
            "fp16" => PlanPrecision::Fp16,
            _ => {
                let calibration = one_dep(cx, "calibration")?.ok_or("an int8 node needs its `calibration` dep")?;
                let header = trt::check_calibration_cache(&root.join(&calibration))?;
                let _ = writeln!(cx.log, "calibration cache `{}`: {header}", calibration.display());
                PlanPrecision::Int8 { calibration, also_fp16: settings.also_fp16 }
            }
        };
        let gpu = crate::facets::value("gpu", crate::backend::software::read_facet);
        let timing_cache = settings.timing_cache.as_ref().map(|dir| {
            let tag =
                crate::digest::Digest::of_bytes(format!("{gpu}\n{}", crate::facets::value("trtexec", crate::backend::software::read_facet)).as_bytes()).short();
            Path::new(dir).join(format!("{}-{tag}.timing", cx.node.id.replace('/', "~")))
        });
        let plan_dir = cx.outs["plan"].clone();
        let command = BuildCommand {
            onnx: model.clone(),
            plan: plan_dir.join("model.plan"),
            layers: plan_dir.join("layers.json"),
            precision,
            tf32: settings.tf32,
            shapes: shapes.clone(),
            workspace_mib: settings.workspace_mib,
            timing_cache: timing_cache.clone(),
        };
        // What a person reruns by hand: the outputs where they end up, not the staging paths.
        let shown_plan = PathBuf::from(format!("out/{}/plan", cx.node.id));
        let shown = BuildCommand { plan: shown_plan.join("model.plan"), layers: shown_plan.join("layers.json"), ..command.clone() };

        let mut report = Report {
            builder: "trtexec".into(),
            precision: settings.precision.clone(),
            status: "ok".into(),
            reason: None,
            flags: Vec::new(),
            command: std::iter::once("trtexec".to_string()).chain(shown.args()).collect(),
            trtexec: None,
            library: None,
            library_digest: None,
            bindings: Vec::new(),
            python: None,
            trt_version: None,
            gpu,
            model: model.display().to_string(),
            calibration: match &command.precision {
                PlanPrecision::Int8 { calibration, .. } => Some(calibration.display().to_string()),
                _ => None,
            },
            dynamic_inputs: sig.inputs.iter().filter(|i| i.is_dynamic()).map(|i| (i.name.clone(), i.dims.iter().map(ToString::to_string).collect())).collect(),
            profiles: settings.profiles.clone(),
            shapes,
            also_fp16: matches!(command.precision, PlanPrecision::Int8 { also_fp16: true, .. }),
            tf32: settings.tf32,
            workspace_mib: settings.workspace_mib,
            timing_cache: timing_cache.as_ref().map(|p| p.display().to_string()),
            built: Built::default(),
        };
        let result_path = root.join(&cx.outs["result"]);

        let program = match trt::locate() {
            Ok(p) => p,
            Err(not_found) => {
                let reason = not_found.to_string();
                let _ = writeln!(cx.log, "degraded: {reason}\nwould run: {}", report.command.join(" "));
                return degraded(report, reason, &result_path);
            }
        };
        report.trtexec = Some(crate::paths::shown(&program));
        if let Some(dir) = &settings.timing_cache {
            std::fs::create_dir_all(root.join(dir)).map_err(|e| format!("cannot create the timing cache directory `{dir}`: {e}"))?;
        }

        let args = command.args();
        let _ = writeln!(cx.log, "$ {} {}", program.display(), args.join(" "));
        let log_path = cx.scratch.join("trtexec.log");
        let (status, elapsed) = run_logged(&program, &args, root, &log_path)?;
        let output = String::from_utf8_lossy(&std::fs::read(&log_path).map_err(|e| format!("reading `trtexec`'s output: {e}"))?).into_owned();
        let _ = cx.log.write_all(output.as_bytes());
        report.trt_version = trt::parse_version(&output);

        if !status.success() {
            let code = status.code().map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
            if let Some(line) = trt::no_gpu_line(&output) {
                return degraded(report, format!("`trtexec` exited with {code}: no usable GPU ({line})"), &result_path);
            }
            return Err(format!("`trtexec` exited with {code}; the last lines of its output:\n{}", trt::tail(&output, TAIL_LINES)).into());
        }

        let plan_path = root.join(&command.plan);
        let plan_bytes = std::fs::metadata(&plan_path)
            .map_err(|_| {
                format!(
                    "`trtexec` exited 0 but wrote no plan at `{}`; the last lines of its output:\n{}",
                    command.plan.display(),
                    trt::tail(&output, TAIL_LINES)
                )
            })?
            .len();
        let outputs: Vec<String> = sig.outputs.iter().map(|o| o.name.clone()).collect();
        census(&mut report, plan_bytes, root, &command.layers, &outputs, false).map_err(|e| format!("`trtexec` exited 0 but {e}"))?;
        report.built.build_s = Some(elapsed);
        report.built.engine_build_s = trt::parse_engine_build_seconds(&output);
        let _ = writeln!(
            cx.log,
            "plan {plan_bytes} bytes, {} layers in {elapsed:.2}s; TensorRT {}",
            report.built.n_layers.unwrap_or(0),
            report.trt_version.as_deref().unwrap_or("(version not printed)")
        );
        finish(report, &result_path)
    }
}

/// A node's lowered config, read back.
struct Settings {
    precision: String,
    profiles: Vec<Profile>,
    also_fp16: bool,
    tf32: bool,
    workspace_mib: Option<u64>,
    timing_cache: Option<String>,
}

impl From<Config> for Settings {
    fn from(c: Config) -> Settings {
        match c {
            // TensorRT for RTX has no `trtexec` settings; these are what `trtexec` would default to.
            Config::Rtx(RtxConfig { builder: _, precision, profiles, workspace_mib }) => {
                Settings { precision, profiles, also_fp16: false, tf32: true, workspace_mib, timing_cache: None }
            }
            // `also_fp16` is absent but for int8, and off then.
            Config::Trtexec(TrtexecConfig { precision, profiles, tf32, workspace_mib, timing_cache, also_fp16 }) => {
                Settings { precision, profiles, also_fp16: also_fp16.unwrap_or(false), tf32, workspace_mib, timing_cache }
            }
        }
    }
}

/// Runs `program` in `dir` with stdout and stderr both into `log` (one file, so their lines
/// keep their order); returns its exit status and wall time in seconds.
fn run_logged(program: &Path, args: &[String], dir: &Path, log: &Path) -> Result<(std::process::ExitStatus, f64), String> {
    let out = File::create(log).map_err(|e| format!("cannot create `{}`: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("cannot share `{}`: {e}", log.display()))?;
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run `{}`: {e}", program.display()))?;
    Ok((status, start.elapsed().as_secs_f64()))
}

/// Writing `build.json`.
/// Writes the report of a node that cannot build here, and says so.
fn degraded(mut report: Report, reason: String, path: &Path) -> Result<Outcome, StageError> {
    report.status = "degraded".into();
    report.reason = Some(reason.clone());
    write_json(path, &report)?;
    Ok(Outcome::Degraded(reason))
}

/// Records a built plan's size and census (the layer information at `layers`, relative to
/// `root`); `check_fp16` also flags an fp16 plan without an FP16 layer.
fn census(report: &mut Report, plan_bytes: u64, root: &Path, layers: &Path, outputs: &[String], check_fp16: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(root.join(layers)).map_err(|e| format!("its layer information `{}` cannot be read: {e}", layers.display()))?;
    let info = trt::parse_layer_info(&text).map_err(|e| format!("`{}`: {e}", layers.display()))?;
    let summary = trt::summarise(&info, outputs);
    let b = &mut report.built;
    b.plan_bytes = Some(plan_bytes);
    b.n_layers = Some(summary.n_layers);
    b.int8_verified = (report.precision == "int8").then_some(summary.int8_layers.count > 0);
    b.fp16_verified = (check_fp16 && report.precision == "fp16").then_some(summary.layers_by_precision.fp16 > 0);
    b.layers_by_precision = Some(summary.layers_by_precision);
    b.int8_layers = Some(summary.int8_layers);
    b.output_dtypes = Some(summary.output_dtypes);
    Ok(())
}

/// Writes the report of a built plan: degraded when it is not the plan asked for.
fn finish(mut report: Report, path: &Path) -> Result<Outcome, StageError> {
    for (unverified, flag) in [(report.built.int8_verified == Some(false), INT8_UNVERIFIED), (report.built.fp16_verified == Some(false), FP16_UNVERIFIED)] {
        if unverified {
            report.flags.push(flag.into());
        }
    }
    match report.flags.first().cloned() {
        Some(flag) => degraded(report, flag, path),
        None => {
            write_json(path, &report)?;
            Ok(Outcome::Ok)
        }
    }
}

/// The one path of dep `name`, or none.
fn one_dep(cx: &RunCx<'_>, name: &str) -> Result<Option<PathBuf>, String> {
    match cx.deps.get(name).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([one]) => Ok(Some(PathBuf::from(one))),
        Some(many) => Err(format!("dep `{name}` names {} paths; a `trt_build` node reads one", many.len())),
    }
}

/// The `model` dep's ONNX file (workspace-relative), its signature, and the profiles as shape
/// specs for its dynamic inputs.
fn model_of(cx: &RunCx<'_>, settings: &Settings) -> Result<(PathBuf, signature::Signature, Vec<ShapeSpecs>), String> {
    let root = cx.root;
    let model_dep = one_dep(cx, "model")?.ok_or("no `model` dep")?;
    let file = super::onnx_file(&root.join(&model_dep))?;
    let model = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
    let sig = signature::read(&root.join(&model)).map_err(|e| e.to_string())?;
    let shapes = trt::profile_shapes(&sig.inputs, &settings.profiles).map_err(|e| format!("`{}`: {e}", model.display()))?;
    Ok((model, sig, shapes))
}

/// The directory of the `tensorrt_rtx` dep: the dep itself, or the one directory its files
/// (the library and its parser, both in the key) are in.
fn library_dir(cx: &RunCx<'_>) -> Result<PathBuf, String> {
    let paths = cx.deps.get("tensorrt_rtx").map(Vec::as_slice).unwrap_or_default();
    let dirs: std::collections::BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| if cx.root.join(p).is_dir() { PathBuf::from(p) } else { Path::new(p).parent().map(Path::to_path_buf).unwrap_or_default() })
        .collect();
    match dirs.len() {
        1 => Ok(dirs.into_iter().next().unwrap_or_default()),
        0 => Err("the `tensorrt_rtx` dep names no file".into()),
        _ => Err(format!("the `tensorrt_rtx` dep spans {} directories; the library and its parser are loaded from one", dirs.len())),
    }
}

/// A plan built by TensorRT for RTX through the helper ([`crate::trt::rtx`]).
fn run_rtx(cx: &mut RunCx<'_>, settings: Settings) -> Result<Outcome, StageError> {
    let root = cx.root;
    let (model, sig, shapes) = model_of(cx, &settings)?;
    let library = library_dir(cx)?;
    let bindings: Vec<PathBuf> = cx.deps.get("bindings").into_iter().flatten().map(PathBuf::from).collect();

    let plan_dir = cx.outs["plan"].clone();
    std::fs::create_dir_all(root.join(&plan_dir)).map_err(StageError::io("cannot create", &plan_dir))?;
    let request = trt::rtx::BuildRequest {
        library: root.join(&library),
        bindings: bindings.iter().map(|b| root.join(b)).collect(),
        onnx: root.join(&model),
        plan: root.join(plan_dir.join("model.plan")),
        layers: root.join(plan_dir.join("layers.json")),
        profiles: trt::rtx::profile_dims(&shapes)?,
        workspace_mib: settings.workspace_mib,
    };
    let python = crate::python::interpreter();
    let mut report = Report {
        builder: "tensorrt-rtx".into(),
        precision: settings.precision.clone(),
        status: "ok".into(),
        reason: None,
        flags: Vec::new(),
        command: vec![crate::paths::relative_text(&python), trt::rtx::HELPER_NAME.into(), "build".into(), "request.json".into()],
        trtexec: None,
        library: Some(library.display().to_string()),
        library_digest: crate::digest::hash_file(&root.join(&library).join("libtensorrt_rtx.so.1")).ok().map(|(d, _)| d.to_hex()),
        bindings: bindings.iter().map(|b| b.display().to_string()).collect(),
        python: Some(crate::paths::relative_text(&python)),
        trt_version: None,
        gpu: "<not needed: TensorRT for RTX builds ahead of time>".into(),
        model: model.display().to_string(),
        calibration: None,
        dynamic_inputs: sig.inputs.iter().filter(|i| i.is_dynamic()).map(|i| (i.name.clone(), i.dims.iter().map(ToString::to_string).collect())).collect(),
        profiles: settings.profiles.clone(),
        shapes,
        also_fp16: false,
        tf32: false,
        workspace_mib: settings.workspace_mib,
        timing_cache: None,
        built: Built::default(),
    };
    let result_path = root.join(&cx.outs["result"]);
    let _ = writeln!(cx.log, "$ {} {} build <request>\n{}", python, trt::rtx::HELPER_NAME, serde_json::to_string_pretty(&request).unwrap_or_default());
    let start = Instant::now();
    let answer = match trt::rtx::build(&python, &request, cx.scratch, root, cx.log) {
        Ok(a) => a,
        Err(trt::rtx::HelperError::Unavailable(reason)) => {
            let _ = writeln!(cx.log, "degraded: {reason}");
            return degraded(report, reason, &result_path);
        }
        Err(trt::rtx::HelperError::BadInput(e)) => return Err(format!("`{}`: {e}", model.display()).into()),
        Err(trt::rtx::HelperError::Failed(e)) => return Err(e.into()),
    };
    let elapsed = start.elapsed().as_secs_f64();
    report.trt_version = answer.version.clone();

    let plan_bytes =
        std::fs::metadata(&request.plan).map_err(|e| format!("the builder reported a plan but `{}` cannot be read: {e}", request.plan.display()))?.len();
    let outputs: Vec<String> = sig.outputs.iter().map(|o| o.name.clone()).collect();
    census(&mut report, plan_bytes, root, &plan_dir.join("layers.json"), &outputs, true).map_err(|e| format!("the builder made a plan but {e}"))?;
    report.built.build_s = Some(elapsed);
    report.built.engine_build_s = answer.engine_build_s.or(Some(answer.build_s));
    report.built.peak_build_mib = Some(answer.peak_rss_mib);
    let _ = writeln!(
        cx.log,
        "plan {plan_bytes} bytes, {} layers in {elapsed:.2}s (builder {:.2}s, peak {:.0} MiB); TensorRT for RTX {}",
        report.built.n_layers.unwrap_or(0),
        answer.build_s,
        answer.peak_rss_mib,
        answer.version.as_deref().unwrap_or("(version not reported)")
    );
    finish(report, &result_path)
}
