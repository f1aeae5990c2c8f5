//! Reading: every artifact once, each checked to be what its dep says it is by reading it as
//! its type ([`crate::artifact`]).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::precision_rank;
use crate::artifact::calibration::Calibration;
use crate::artifact::export::Export;
use crate::artifact::gate::Gate;
use crate::artifact::logit_diff::LogitDiff;
use crate::artifact::perplexity::Perplexity;
use crate::artifact::quantize::Quantize;
use crate::artifact::stats::Stats;
use crate::artifact::sweep::Sweep;
use crate::artifact::trt_build::TrtBuild;
use crate::measure::RunRecord;
use crate::report::{Inputs, ReportError};

/// An artifact: where it is and what it holds, as its type.
#[derive(Debug, Clone)]
pub(in crate::report) struct Doc<T> {
    pub path: String,
    pub value: T,
}

impl<T> Doc<T> {
    /// The node that wrote it: `out/<node id>/<file>` → `<node id>`; a file outside `out/` is
    /// named by its directory.
    pub(super) fn node(&self) -> String {
        let p = Path::new(&self.path);
        let dir = p.parent().map(|d| d.to_string_lossy().replace('\\', "/")).unwrap_or_default();
        let dir = dir.strip_prefix("out/").map(str::to_string).unwrap_or(dir);
        if dir.is_empty() { self.path.clone() } else { dir }
    }
}

/// The text of `path` and its JSON, or why it cannot be read as JSON.
fn read_json(root: &Path, path: &str) -> Result<(String, Value), ReportError> {
    let text = std::fs::read_to_string(root.join(path)).map_err(|e| ReportError::Read { path: path.to_string(), message: e.to_string() })?;
    let value = serde_json::from_str(&text).map_err(|e| ReportError::Artifact { path: path.to_string(), message: format!("not JSON: {e}") })?;
    Ok((text, value))
}

/// Reads `path` as the artifact type `T` of `dep`, `what` naming the artifact for people.
fn read_typed<T: DeserializeOwned>(root: &Path, dep: &str, path: &str, what: &str) -> Result<Doc<T>, ReportError> {
    // Read as JSON first, so that a file that is not JSON at all says so.
    let (text, _) = read_json(root, path)?;
    let value: T = serde_json::from_str(&text).map_err(|e| ReportError::Artifact {
        path: path.to_string(),
        message: format!("the `{dep}` dep should be {what}, but it does not read as one: {e}"),
    })?;
    Ok(Doc { path: path.to_string(), value })
}

/// Every file of `dep` read as `T`.
fn read_all<T: DeserializeOwned>(inputs: &Inputs, dep: &str, what: &str) -> Result<Vec<Doc<T>>, ReportError> {
    inputs.paths(dep).iter().map(|p| read_typed(&inputs.root, dep, p, what)).collect()
}

/// Every file of `dep` read as `T`; the first, the one the report uses.
fn read_first<T: DeserializeOwned>(inputs: &Inputs, dep: &str, what: &str) -> Result<Option<Doc<T>>, ReportError> {
    Ok(read_all(inputs, dep, what)?.into_iter().next())
}

fn read_runs(root: &Path, path: &str) -> Result<Vec<RunRecord>, ReportError> {
    let text = std::fs::read_to_string(root.join(path)).map_err(|e| ReportError::Read { path: path.to_string(), message: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: RunRecord = serde_json::from_str(line).map_err(|e| ReportError::Artifact {
            path: path.to_string(),
            message: format!("line {}: not a run record: {}", i + 1, e.to_string().rsplit_once(" at line ").map_or(e.to_string(), |(m, _)| m.to_string())),
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Every artifact the report reads.
pub(in crate::report) struct Artifacts {
    pub stats: Doc<Stats>,
    pub runs: Vec<RunRecord>,
    pub sweeps: Vec<Doc<Sweep>>,
    pub perplexity: Vec<Doc<Perplexity>>,
    pub gate: Option<Doc<Gate>>,
    pub logits: Vec<Doc<LogitDiff>>,
    pub exports: Vec<Doc<Export>>,
    pub quantize: Vec<Doc<Quantize>>,
    pub calibration: Vec<Doc<Calibration>>,
    pub trt: Vec<Doc<TrtBuild>>,
}

impl Artifacts {
    pub(crate) fn read(inputs: &Inputs) -> Result<Artifacts, ReportError> {
        let root = &inputs.root;
        let stats = read_first(inputs, "stats", "a `stats` stage's `stats.json`")?.ok_or(ReportError::NoStats)?;
        let mut runs = Vec::new();
        for p in inputs.paths("runs") {
            runs.extend(read_runs(root, p)?);
        }
        let mut perplexity: Vec<Doc<Perplexity>> = read_all(inputs, "perplexity", "a `perplexity` node's `perplexity.json`")?;
        perplexity.sort_by(|a, b| a.value.backend.cmp(&b.value.backend));
        let mut logits: Vec<Doc<LogitDiff>> = read_all(inputs, "logits", "a `logit_diff` node's `logit_diff.json`")?;
        logits.sort_by(|a, b| a.value.backend.cmp(&b.value.backend));
        let mut trt: Vec<Doc<TrtBuild>> = read_all(inputs, "trt", "a `trt_build` node's `build.json`")?;
        trt.sort_by_key(|d| precision_rank(&d.value.precision));
        Ok(Artifacts {
            stats,
            runs,
            sweeps: read_all(inputs, "sweeps", "a `sweep` node's `sweep.json`")?,
            perplexity,
            gate: read_first(inputs, "gate", "a `gate` stage's `gate.json`")?,
            logits,
            exports: read_all(inputs, "export", "an `export` stage's `export.json`")?,
            quantize: read_all(inputs, "quantize", "a `quantize` stage's `quantize.json`")?,
            calibration: read_all(inputs, "calibration", "a `calibrate` stage's `calibration.json`")?,
            trt,
        })
    }
}
