//! TensorRT for RTX through its Python bindings: the helper program tr118 carries
//! (`python/tr118_trt.py`, [`HELPER_SOURCE`]), what it is asked and what it answers.
//!
//! TensorRT for RTX (`tensorrt-rtx-cu13-libs` and `tensorrt-rtx-cu13-bindings` on PyPI) has
//! C++ and Python APIs and no C API, so, as with the torch worker, tr118 writes the helper
//! into a scratch directory and runs it under `$TR118_PYTHON`, else `python3`. A request is a
//! JSON file; the answer is a JSON file the helper writes with `status` `ok`, `unavailable`
//! (this machine cannot: no bindings for this Python) or `error` (the input is wrong: the
//! parser rejects the model, a profile the model cannot take). The library
//! and the bindings are the fetched files themselves, named in the request: nothing is
//! installed, and their digests are in the keys of the nodes that use them as deps.
//!
//! Unlike `trtexec`, TensorRT for RTX compiles ahead of time without a GPU: a plan holds
//! kernels for every compute capability the library supports (8.0, 8.6, 8.9, 12.x) and is
//! specialised on the GPU that loads it. A GPU outside that list refuses the plan when it is
//! loaded, with the library's reason: the torch worker, which imports the same helper, asks
//! the library before loading a plan (see [`crate::backend::torch::open_plan`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ShapeSpecs, parse_shape_spec};

/// The helper program, as shipped in the repository.
pub(crate) const HELPER_SOURCE: &str = include_str!("../../python/tr118_trt.py");
/// The helper's file name, in the scratch directory and in commands shown to people.
pub(crate) const HELPER_NAME: &str = "tr118_trt.py";
/// Lines of the helper's output quoted in a failure.
const TAIL_LINES: usize = 20;

/// What the helper is asked to build.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BuildRequest {
    /// The directory of `libtensorrt_rtx.so.1` and `libtensorrt_onnxparser_rtx.so.1`.
    pub library: PathBuf,
    /// The bindings modules, one per Python version; the helper imports the one its Python can.
    pub bindings: Vec<PathBuf>,
    pub onnx: PathBuf,
    pub plan: PathBuf,
    /// The builder's layer report, as engine-inspector JSON.
    pub layers: PathBuf,
    /// One table per optimisation profile: input → `[min, opt, max]` shapes.
    pub profiles: Vec<BTreeMap<String, [Vec<u64>; 3]>>,
    pub workspace_mib: Option<u64>,
}

/// What a build answered.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BuildAnswer {
    /// `major.minor.patch.build`, as the library reports it.
    pub version: Option<String>,
    /// `build_serialized_network`'s wall time.
    pub build_s: f64,
    /// The builder's own figure (`Engine generation completed in N seconds`).
    pub engine_build_s: Option<f64>,
    /// The helper process's peak resident memory: parsing and building.
    pub peak_rss_mib: f64,
}

/// Why the helper gave no answer to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelperError {
    /// This machine cannot do it; a degraded result.
    #[error("{0}")]
    Unavailable(String),
    /// The input is wrong; a failure, naming it.
    #[error("{0}")]
    BadInput(String),
    /// The helper itself failed.
    #[error("{0}")]
    Failed(String),
}

/// One optimisation profile: each input's min, opt and max shape.
pub(crate) type ProfileDims = BTreeMap<String, [Vec<u64>; 3]>;

/// Shape specs (`input_ids:1x1,attention_mask:1x1`) as the helper's profile tables.
pub(crate) fn profile_dims(shapes: &[ShapeSpecs]) -> Result<Vec<ProfileDims>, String> {
    shapes
        .iter()
        .map(|s| {
            let (min, opt, max) = (parse_shape_spec(&s.min)?, parse_shape_spec(&s.opt)?, parse_shape_spec(&s.max)?);
            Ok(min.into_iter().zip(opt).zip(max).map(|(((name, lo), (_, mid)), (_, hi))| (name, [lo, mid, hi])).collect())
        })
        .collect()
}

/// Builds a plan: runs the helper on `request` in `dir`, its output appended to `log`.
pub(crate) fn build(python: &str, request: &BuildRequest, scratch: &Path, dir: &Path, log: &mut File) -> Result<BuildAnswer, HelperError> {
    let op = "build";
    let failed = |what: &str, e: std::io::Error| HelperError::Failed(format!("{what}: {e}"));
    let script = scratch.join(HELPER_NAME);
    std::fs::write(&script, HELPER_SOURCE).map_err(|e| failed(&format!("writing `{}`", script.display()), e))?;
    let result = scratch.join(format!("{op}-answer.json"));
    let mut body = serde_json::to_value(request).map_err(|e| HelperError::Failed(e.to_string()))?;
    body["result"] = Value::String(result.display().to_string());
    let request_path = scratch.join(format!("{op}-request.json"));
    std::fs::write(&request_path, serde_json::to_vec_pretty(&body).unwrap_or_default()).map_err(|e| failed("writing the request", e))?;
    let output_path = scratch.join(format!("{op}-output.log"));
    let out = File::create(&output_path).map_err(|e| failed("creating the helper's log", e))?;
    let err = out.try_clone().map_err(|e| failed("sharing the helper's log", e))?;
    let status =
        Command::new(python).arg(&script).arg(op).arg(&request_path).current_dir(dir).stdin(Stdio::null()).stdout(out).stderr(err).status().map_err(|e| {
            HelperError::Unavailable(format!(
                "cannot start TensorRT for RTX's helper with `{}`: {e}; set {} to a Python 3.11 or 3.12",
                crate::paths::relative_text(python),
                crate::python::ENV
            ))
        })?;
    let output = String::from_utf8_lossy(&std::fs::read(&output_path).unwrap_or_default()).into_owned();
    let _ = log.write_all(output.as_bytes());
    let answer: Option<Value> = std::fs::read(&result).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(answer) = answer.filter(|_| status.success()) else {
        let code = status.code().map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
        return Err(HelperError::Failed(format!(
            "TensorRT for RTX's helper ({op}) exited with {code} and no answer; the last lines of its output:\n{}",
            super::tail(&output, TAIL_LINES)
        )));
    };
    let text = |k: &str| answer[k].as_str().unwrap_or("no reason given").to_string();
    match answer["status"].as_str() {
        Some("ok") => serde_json::from_value(answer.clone()).map_err(|e| HelperError::Failed(format!("the helper's answer does not read: {e}: {answer}"))),
        Some("unavailable") => Err(HelperError::Unavailable(text("reason"))),
        Some("error") => Err(HelperError::BadInput(text("error"))),
        _ => Err(HelperError::Failed(format!("the helper's answer has no known status: {answer}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_specs_become_profile_tables() {
        let s = ShapeSpecs {
            min: "input_ids:1x1,attention_mask:1x1".into(),
            opt: "input_ids:1x27,attention_mask:1x27".into(),
            max: "input_ids:4x512,attention_mask:4x512".into(),
        };
        let dims = profile_dims(&[s]).unwrap();
        assert_eq!(dims[0]["input_ids"], [vec![1, 1], vec![1, 27], vec![4, 512]]);
        assert_eq!(dims[0]["attention_mask"], [vec![1, 1], vec![1, 27], vec![4, 512]]);
        assert_eq!(dims[0].len(), 2);
    }
}
