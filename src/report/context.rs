//! From artifacts to the data the templates see: every file is read once, checked to be what
//! its dep says it is, and turned into the sections of [`super`]'s context. Numbers stay
//! numbers (`null` where undefined); the templates format them with the filters of
//! [`super::format`]. The only text made here is what is computed from several artifacts at
//! once: the abstract, the key findings, the limitations and the warnings.
//!
//! ## Key findings
//!
//! - Per mode, the fastest backend: the lowest pooled (`overall`) mean latency among the
//!   backends with ok runs in every scenario of the mode — pooled means of different scenario
//!   sets are different workloads; only when no backend ran them all is every backend a
//!   candidate, and the sentence says so. With it: its interval, in how many scenarios it is
//!   the fastest, and against the baseline its pooled change with the Holm-adjusted p, then
//!   the range of its per-scenario changes and how many of those are significant. A pooled
//!   sample mixes scenarios, so its spread is wide and its test weak; the per-scenario tests
//!   are the like-for-like ones, and both are shown. When the fastest is the baseline, the
//!   runner-up's comparison is given instead.
//! - Per generate mode, the shortest time to first token.
//! - Backends without a single ok run, in every mode or in some.
//! - The accuracy gate: how many pass, and each failure with its change and threshold.
//! - INT8 coverage per quantized model, and whether ONNX Runtime ran it in INT8.
//! - Each TensorRT plan built (its layers by precision), and the plans not built, by reason.
//!
//! ## Limitations
//!
//! Every degraded thing with its reason and count: runs (from the stats' `degraded`), the
//! statistics themselves, perplexity, logit and gate results, TensorRT plans and their flags,
//! and the MatMuls a quantizer left in float. One reason shared by several backends, modes or
//! plans is one line naming them all, its counts summed; INT8 lines stay per model, since
//! counts of two models add up to nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::format::{self, estimate, pct, pvalue, sig_opt};
use super::plots::{self, Bar, BarChart, DistributionChart, Series};
use super::{Inputs, Plot, ReportError};
use crate::artifact::gate::Gate;
use crate::artifact::stats::Stats;
use crate::measure::{MODES, RunRecord};

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// An artifact: where it is and what it holds, as its type where it has one.
#[derive(Debug, Clone)]
pub(super) struct Doc<T = Value> {
    pub path: String,
    pub value: T,
}

impl<T> Doc<T> {
    /// The node that wrote it: `out/<node id>/<file>` → `<node id>`; a file outside `out/` is
    /// named by its directory.
    fn node(&self) -> String {
        let p = Path::new(&self.path);
        let dir = p.parent().map(|d| d.to_string_lossy().replace('\\', "/")).unwrap_or_default();
        let dir = dir.strip_prefix("out/").map(str::to_string).unwrap_or(dir);
        if dir.is_empty() { self.path.clone() } else { dir }
    }
}

/// What each kind of artifact without a type must have for the report to read it as that
/// kind; one with a type is checked by reading it as its type ([`read_typed`]).
const SHAPES: &[(&str, &[&str], &str)] = &[
    ("sweeps", &["backend", "mode", "scenarios"], "a `sweep` node's `sweep.json`"),
    ("perplexity", &["backend", "ppl", "uniform_ppl"], "a `perplexity` node's `perplexity.json`"),
    ("logits", &["backend", "overall", "prompts"], "a `logit_diff` node's `logit_diff.json`"),
    ("export", &["variants", "checkpoint"], "an `export` stage's `export.json`"),
    ("quantize", &["scheme", "matmul_total", "quantized", "verified"], "a `quantize` stage's `quantize.json`"),
    ("calibration", &["method", "cache_header", "tensors"], "a `calibrate` stage's `calibration.json`"),
    ("trt", &["precision", "status", "layers_by_precision"], "a `trt_build` node's `build.json`"),
];

fn read_doc(root: &Path, dep: &str, path: &str) -> Result<Doc, ReportError> {
    let text = std::fs::read_to_string(root.join(path)).map_err(|e| ReportError::Read { path: path.to_string(), message: e.to_string() })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| ReportError::Artifact { path: path.to_string(), message: format!("not JSON: {e}") })?;
    if let Some((_, keys, what)) = SHAPES.iter().find(|(d, _, _)| *d == dep) {
        let missing: Vec<&str> = keys.iter().copied().filter(|k| value.get(k).is_none()).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            return Err(ReportError::Artifact { path: path.to_string(), message: format!("the `{dep}` dep should be {what}, but it has no {list}") });
        }
    }
    Ok(Doc { path: path.to_string(), value })
}

/// Reads `path` as the artifact type `T` of `dep`, `what` naming the artifact for people.
fn read_typed<T: DeserializeOwned>(root: &Path, dep: &str, path: &str, what: &str) -> Result<Doc<T>, ReportError> {
    let text = std::fs::read_to_string(root.join(path)).map_err(|e| ReportError::Read { path: path.to_string(), message: e.to_string() })?;
    serde_json::from_str::<Value>(&text).map_err(|e| ReportError::Artifact { path: path.to_string(), message: format!("not JSON: {e}") })?;
    let value: T = serde_json::from_str(&text).map_err(|e| ReportError::Artifact {
        path: path.to_string(),
        message: format!("the `{dep}` dep should be {what}, but it does not read as one: {e}"),
    })?;
    Ok(Doc { path: path.to_string(), value })
}

/// Every file of `dep` read as `T`; the first, the one the report uses.
fn read_first<T: DeserializeOwned>(inputs: &Inputs, dep: &str, what: &str) -> Result<Option<Doc<T>>, ReportError> {
    let docs = inputs.paths(dep).iter().map(|p| read_typed(&inputs.root, dep, p, what)).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.into_iter().next())
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
pub(super) struct Artifacts {
    pub stats: Doc<Stats>,
    pub runs: Vec<RunRecord>,
    pub sweeps: Vec<Doc>,
    pub perplexity: Vec<Doc>,
    pub gate: Option<Doc<Gate>>,
    pub logits: Vec<Doc>,
    pub exports: Vec<Doc>,
    pub quantize: Vec<Doc>,
    pub calibration: Vec<Doc>,
    pub trt: Vec<Doc>,
}

impl Artifacts {
    pub fn read(inputs: &Inputs) -> Result<Artifacts, ReportError> {
        let root = &inputs.root;
        let docs = |dep: &str| -> Result<Vec<Doc>, ReportError> { inputs.paths(dep).iter().map(|p| read_doc(root, dep, p)).collect() };
        let stats = read_first(inputs, "stats", "a `stats` stage's `stats.json`")?.ok_or(ReportError::NoStats)?;
        let mut runs = Vec::new();
        for p in inputs.paths("runs") {
            runs.extend(read_runs(root, p)?);
        }
        let mut perplexity = docs("perplexity")?;
        perplexity.sort_by_key(|d| text(&d.value, "backend"));
        let mut logits = docs("logits")?;
        logits.sort_by_key(|d| text(&d.value, "backend"));
        let mut trt = docs("trt")?;
        trt.sort_by_key(|d| precision_rank(&text(&d.value, "precision").unwrap_or_default()));
        Ok(Artifacts {
            stats,
            runs,
            sweeps: docs("sweeps")?,
            perplexity,
            gate: read_first(inputs, "gate", "a `gate` stage's `gate.json`")?,
            logits,
            exports: docs("export")?,
            quantize: docs("quantize")?,
            calibration: docs("calibration")?,
            trt,
        })
    }
}

fn precision_rank(p: &str) -> usize {
    ["fp32", "fp16", "int8"].iter().position(|x| *x == p).unwrap_or(3)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn count_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn join_names<S: AsRef<str>>(names: &[S]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].as_ref().to_string(),
        n => format!("{} and {}", names[..n - 1].iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", "), names[n - 1].as_ref()),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", format::count(n as i64), if n == 1 { one } else { many })
}

/// A mode's name for people.
pub fn mode_title(mode: &str) -> String {
    match mode {
        "prefill" => "Prefill".into(),
        "generate" => "Generate (KV cache)".into(),
        "generate_uncached" => "Generate without a cache".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The study's shape, from the stats
// ---------------------------------------------------------------------------------------

struct Shape {
    baseline: Option<String>,
    alpha: f64,
    /// In the stats' order (the baseline first); the colour of a backend is its index here.
    backends: Vec<String>,
    modes: Vec<String>,
    /// Per mode, scenarios in the stats' order.
    scenarios: BTreeMap<String, Vec<String>>,
    summary: Vec<Value>,
    comparisons: Vec<Value>,
}

impl Shape {
    fn of(stats: &Stats) -> Shape {
        let summary: Vec<Value> = stats.summary.rows.iter().cloned().map(Value::Object).collect();
        let comparisons: Vec<Value> = stats.comparisons.rows.iter().cloned().map(Value::Object).collect();
        let mut backends = Vec::new();
        let mut modes = Vec::new();
        let mut scenarios: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &summary {
            let (b, m, s) = (text(r, "backend").unwrap_or_default(), text(r, "mode").unwrap_or_default(), text(r, "scenario").unwrap_or_default());
            if !backends.contains(&b) {
                backends.push(b);
            }
            if !modes.contains(&m) {
                modes.push(m.clone());
            }
            let list = scenarios.entry(m).or_default();
            if s != crate::stage::stats::OVERALL && !list.contains(&s) {
                list.push(s);
            }
        }
        modes.sort_by_key(|m| (MODES.iter().position(|k| k == m).unwrap_or(MODES.len()), m.clone()));
        Shape { baseline: stats.baseline.clone(), alpha: stats.alpha, backends, modes, scenarios, summary, comparisons }
    }

    fn color(&self, backend: &str) -> usize {
        self.backends.iter().position(|b| b == backend).unwrap_or(self.backends.len())
    }

    fn row(&self, backend: &str, mode: &str, scenario: &str) -> Option<&Value> {
        self.summary.iter().find(|r| r["backend"] == backend && r["mode"] == mode && r["scenario"] == scenario)
    }

    fn comparison(&self, backend: &str, mode: &str, scenario: &str) -> Option<&Value> {
        self.comparisons.iter().find(|r| r["backend"] == backend && r["mode"] == mode && r["scenario"] == scenario)
    }

    fn ok(row: &Value) -> bool {
        count_of(row, "n_ok").unwrap_or(0) > 0 && num(row, "latency_mean_ms").is_some()
    }
}

// ---------------------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------------------

/// Builds the context and the plots.
pub(super) fn build(inputs: &Inputs, a: &Artifacts) -> Result<(Value, Vec<Plot>), ReportError> {
    let shape = Shape::of(&a.stats.value);
    let mut plots = Vec::new();
    let mut warnings: Vec<String> = Vec::new();

    let mut modes = Vec::new();
    for mode in &shape.modes {
        modes.push(mode_section(&shape, a, mode, &mut plots, &mut warnings)?);
    }
    let degraded_plot = degraded_plot(&shape, &mut plots)?;

    let sanity = sanity(a, &mut warnings);
    let environment = environment(a, &mut warnings);
    let methodology = methodology(&shape, a, &mut warnings);
    let gate = a.gate.as_ref().map(gate_section);
    let overhead = overhead(a);
    let limitations = limitations(a);
    let findings = findings(&shape, a);
    let summary = abstract_text(&shape, a);

    let absent: Vec<Value> = [
        ("runs", "run records: latency distributions"),
        ("sweeps", "sweep summaries: harness and sampler costs, capabilities"),
        ("perplexity", "perplexity per backend"),
        ("gate", "the accuracy gate"),
        ("logits", "logit differences"),
        ("export", "the ONNX export manifest"),
        ("quantize", "INT8 quantization"),
        ("calibration", "INT8 calibration"),
        ("trt", "TensorRT plans"),
    ]
    .iter()
    .filter(|(dep, _)| inputs.paths(dep).is_empty())
    .map(|(dep, what)| json!({ "dep": dep, "what": what }))
    .collect();

    let context = json!({
        "title": inputs.title,
        "node": inputs.node,
        "tool_version": crate::VERSION,
        "baseline": shape.baseline,
        "alpha": shape.alpha,
        "stats_status": a.stats.value.status,
        "stats_reason": a.stats.value.reason,
        "backends": shape.backends.iter().map(|b| json!({ "name": b, "color": plots::css_color(shape.color(b)) })).collect::<Vec<_>>(),
        "abstract": summary,
        "findings": findings,
        "limitations": limitations,
        "absent": absent,
        "methodology": methodology,
        "environment": environment,
        "sanity": sanity,
        "modes": modes,
        "degraded_plot": degraded_plot,
        "gate": gate,
        "overhead": overhead,
        "warnings": warnings,
        "reproducibility": reproducibility(inputs)?,
    });
    Ok((context, plots))
}

fn plot_ref(p: &Plot) -> Value {
    json!({ "id": p.id, "title": p.title, "file": p.file, "caption": p.caption })
}

fn mode_section(shape: &Shape, a: &Artifacts, mode: &str, plots: &mut Vec<Plot>, warnings: &mut Vec<String>) -> Result<Value, ReportError> {
    let scenarios = shape.scenarios.get(mode).cloned().unwrap_or_default();
    let rows: Vec<&Value> = shape.summary.iter().filter(|r| r["mode"] == mode).collect();
    let overall: Vec<Value> = shape.backends.iter().filter_map(|b| shape.row(b, mode, crate::stage::stats::OVERALL)).cloned().collect();
    // A backend without one ok run in the mode would fill the detailed tables with empty rows;
    // it keeps its line in the summary and is named under the tables instead.
    let mut measured: Vec<String> = Vec::new();
    let mut unmeasured: Vec<String> = Vec::new();
    for r in &overall {
        let b = text(r, "backend").unwrap_or_default();
        if count_of(r, "n_ok").unwrap_or(0) > 0 { measured.push(b) } else { unmeasured.push(b) }
    }
    let per_scenario: Vec<Value> = scenarios.iter().flat_map(|s| measured.iter().filter_map(move |b| shape.row(b, mode, s))).cloned().collect();
    let comparisons: Vec<Value> =
        shape.comparisons.iter().filter(|r| r["mode"] == mode && measured.iter().any(|b| r["backend"] == b.as_str())).cloned().collect();
    // One warning per backend and note, naming where it applies: a note repeated over every
    // scenario says one thing.
    let mut notes: Vec<((String, String, String), Vec<String>)> = Vec::new();
    for c in &comparisons {
        if let Some(note) = text(c, "note").filter(|n| !n.is_empty()) {
            let key = (text(c, "backend").unwrap_or_default(), text(c, "baseline").unwrap_or_default(), note);
            let at = text(c, "scenario").unwrap_or_default();
            match notes.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(at),
                None => notes.push((key, vec![at])),
            }
        }
    }
    for ((backend, baseline, note), at) in notes {
        warnings.push(format!(
            "{} / {backend} vs {baseline}, {}: {note}",
            mode_title(mode),
            if at.len() > 3 { plural(at.len(), "comparison", "comparisons") } else { join_names(&at) }
        ));
    }
    let any = |keys: &[&str]| rows.iter().any(|r| keys.iter().any(|k| num(r, k).is_some()));
    let has_ttft = any(&["ttft_mean_ms", "tpot_mean_ms"]);
    let has_resources = any(&["rss_peak_mib", "cpu_util", "gpu_power_mean_w", "gpu_power_peak_w", "gpu_mem_peak_mib"]);
    let has_gpu = any(&["gpu_power_mean_w", "gpu_power_peak_w", "gpu_mem_peak_mib"]);

    let bar_series = |mean: &str, lo: &str, hi: &str| -> Vec<Series<Bar>> {
        shape
            .backends
            .iter()
            .filter(|b| scenarios.iter().any(|s| shape.row(b, mode, s).is_some_and(|r| num(r, mean).is_some())))
            .map(|b| Series {
                name: b.clone(),
                color: shape.color(b),
                values: scenarios
                    .iter()
                    .map(|s| {
                        let r = shape.row(b, mode, s)?;
                        Some(Bar { value: num(r, mean)?, lo: num(r, lo), hi: num(r, hi) })
                    })
                    .collect(),
            })
            .collect()
    };
    let title = mode_title(mode);
    let mut section_plots = serde_json::Map::new();

    let latency = bar_series("latency_mean_ms", "latency_ci95_lo_ms", "latency_ci95_hi_ms");
    if !latency.is_empty() {
        let t = format!("{title}: mean latency per scenario");
        let svg = plots::bars(&BarChart {
            title: &t,
            x_label: "scenario",
            y_label: "mean latency (ms), 95% CI",
            categories: &scenarios,
            series: &latency,
            percent: false,
        })?;
        let p = Plot::new(&format!("latency-{mode}"), &t, "Bars are means over ok runs; whiskers are the Student t 95% interval of the mean.", svg);
        section_plots.insert("latency".into(), plot_ref(&p));
        plots.push(p);
    }
    let throughput = bar_series("throughput_mean", "throughput_ci95_lo", "throughput_ci95_hi");
    if !throughput.is_empty() {
        let t = format!("{title}: throughput per scenario");
        let svg = plots::bars(&BarChart {
            title: &t,
            x_label: "scenario",
            y_label: "throughput (tokens/s), 95% CI",
            categories: &scenarios,
            series: &throughput,
            percent: false,
        })?;
        let p = Plot::new(&format!("throughput-{mode}"), &t, "Tokens per second (prefill: prompt tokens; generate: new tokens), mean and 95% interval.", svg);
        section_plots.insert("throughput".into(), plot_ref(&p));
        plots.push(p);
    }
    let dist: Vec<Series<Vec<f64>>> = shape
        .backends
        .iter()
        .map(|b| Series {
            name: b.clone(),
            color: shape.color(b),
            values: scenarios
                .iter()
                .map(|s| {
                    let v: Vec<f64> =
                        a.runs.iter().filter(|r| r.is_ok() && r.backend == *b && r.mode == mode && r.scenario == *s).filter_map(|r| r.latency_ms).collect();
                    (!v.is_empty()).then_some(v)
                })
                .collect(),
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    if !dist.is_empty() {
        let t = format!("{title}: latency distribution per scenario");
        let svg = plots::distribution(&DistributionChart { title: &t, x_label: "scenario", y_label: "latency (ms)", categories: &scenarios, series: &dist })?;
        let p = Plot::new(
            &format!("distribution-{mode}"),
            &t,
            "Each dot is one timed repetition; boxes span the quartiles (type 7) with the median as a bar; whiskers reach the fastest and slowest run.",
            svg,
        );
        section_plots.insert("distribution".into(), plot_ref(&p));
        plots.push(p);
    }

    Ok(json!({
        "mode": mode,
        "title": title,
        "scenarios": scenario_shapes(shape, mode, &scenarios),
        "rows": per_scenario,
        "overall": overall,
        "unmeasured": unmeasured,
        "comparisons": comparisons,
        "has_ttft": has_ttft,
        "has_resources": has_resources,
        "has_gpu": has_gpu,
        "best": best(shape, mode),
        "plots": section_plots,
    }))
}

/// Each scenario's shape, from the first row that has it.
fn scenario_shapes(shape: &Shape, mode: &str, scenarios: &[String]) -> Vec<Value> {
    scenarios
        .iter()
        .map(|s| {
            let r = shape.summary.iter().find(|r| r["mode"] == mode && r["scenario"] == s.as_str());
            let field = |k: &str| r.and_then(|r| r.get(k)).cloned().unwrap_or(Value::Null);
            json!({ "name": s, "batch": field("batch"), "prompt_tokens": field("prompt_tokens"), "new_tokens": field("new_tokens") })
        })
        .collect()
}

fn degraded_plot(shape: &Shape, plots: &mut Vec<Plot>) -> Result<Value, ReportError> {
    if shape.modes.is_empty() || shape.backends.is_empty() {
        return Ok(Value::Null);
    }
    let series: Vec<Series<Bar>> = shape
        .backends
        .iter()
        .map(|b| Series {
            name: b.clone(),
            color: shape.color(b),
            values: shape
                .modes
                .iter()
                .map(|m| shape.row(b, m, crate::stage::stats::OVERALL).and_then(|r| num(r, "degraded_rate")).map(|v| Bar { value: v, lo: None, hi: None }))
                .collect(),
        })
        .collect();
    let t = "Degraded runs per mode";
    let categories: Vec<String> = shape.modes.iter().map(|m| mode_title(m)).collect();
    let svg = plots::bars(&BarChart {
        title: t,
        x_label: "mode",
        y_label: "degraded runs (% of all runs)",
        categories: &categories,
        series: &series,
        percent: true,
    })?;
    let p = Plot::new(
        "degraded",
        t,
        "The share of each backend's runs in a mode that could not be measured; a missing bar is a backend without runs in that mode.",
        svg,
    );
    let r = plot_ref(&p);
    plots.push(p);
    Ok(r)
}

/// The mode's fastest backend (see the module doc).
fn best(shape: &Shape, mode: &str) -> Value {
    let scenarios = shape.scenarios.get(mode).cloned().unwrap_or_default();
    let overall = crate::stage::stats::OVERALL;
    let candidates: Vec<(&String, &Value)> =
        shape.backends.iter().filter_map(|b| shape.row(b, mode, overall).filter(|r| Shape::ok(r)).map(|r| (b, r))).collect();
    if candidates.is_empty() {
        return Value::Null;
    }
    let covers = |b: &str| scenarios.iter().all(|s| shape.row(b, mode, s).is_some_and(Shape::ok));
    let full: Vec<(&String, &Value)> = candidates.iter().copied().filter(|(b, _)| covers(b)).collect();
    let like_for_like = !full.is_empty();
    let pool = if like_for_like { full } else { candidates };
    let lat = |r: &Value| num(r, "latency_mean_ms").unwrap_or(f64::INFINITY);
    let Some((name, row)) = pool.iter().copied().min_by(|x, y| lat(x.1).total_cmp(&lat(y.1))) else { return Value::Null };
    let wins = scenarios
        .iter()
        .filter(|s| {
            let fastest =
                shape.backends.iter().filter_map(|b| shape.row(b, mode, s).filter(|r| Shape::ok(r)).map(|r| (b, lat(r)))).min_by(|x, y| x.1.total_cmp(&y.1));
            fastest.is_some_and(|(b, _)| b == name)
        })
        .count();
    let is_baseline = shape.baseline.as_deref() == Some(name.as_str());
    // Against the baseline: the best's own comparison, or when it is the baseline, the runner-up's.
    let runner_up = pool.iter().copied().filter(|(b, _)| *b != name).min_by(|x, y| lat(x.1).total_cmp(&lat(y.1))).map(|(b, _)| b.clone());
    let compared = if is_baseline { runner_up.clone() } else { Some(name.clone()) };
    let comparison = compared.as_deref().and_then(|b| shape.comparison(b, mode, overall)).cloned();

    let alpha = format::plain(shape.alpha);
    let mut sentence = format!(
        "{}: {} has the lowest mean latency, {} ms over all scenarios pooled, and is the fastest in {} of {} scenarios",
        mode_title(mode),
        name,
        estimate(num(row, "latency_mean_ms"), num(row, "latency_ci95_lo_ms"), num(row, "latency_ci95_hi_ms")),
        wins,
        scenarios.len()
    );
    if let Some(c) = &comparison {
        let verdict = match text(c, "significant").as_deref() {
            Some("yes") => format!("significant at α = {alpha}"),
            Some("no") => format!("not significant at α = {alpha}"),
            _ => "no test".to_string(),
        };
        let other = text(c, "backend").unwrap_or_default();
        let baseline = text(c, "baseline").unwrap_or_default();
        let pooled = format!("{} pooled (Holm-adjusted p {}, {verdict})", pct(num(c, "latency_pct_change")), pvalue(num(c, "p_holm")));
        // Pooled samples mix scenarios, so their spread is wide; the per-scenario tests are
        // the like-for-like ones.
        let per: Vec<&Value> = scenarios.iter().filter_map(|s| shape.comparison(&other, mode, s)).filter(|r| num(r, "latency_pct_change").is_some()).collect();
        let changes: Vec<f64> = per.iter().filter_map(|r| num(r, "latency_pct_change")).collect();
        let significant = per.iter().filter(|r| r["significant"] == "yes").count();
        let per_text = match (changes.iter().copied().reduce(f64::min), changes.iter().copied().reduce(f64::max)) {
            (Some(lo), Some(hi)) if changes.len() > 1 && pct(Some(lo)) == pct(Some(hi)) => {
                format!("; per scenario {} in each, significant in {significant} of {}", pct(Some(lo)), per.len())
            }
            (Some(lo), Some(hi)) if changes.len() > 1 => {
                format!("; per scenario {} to {}, significant in {significant} of {}", pct(Some(lo)), pct(Some(hi)), per.len())
            }
            (Some(x), _) => format!("; per scenario {}, significant in {significant} of 1", pct(Some(x))),
            _ => String::new(),
        };
        if is_baseline {
            sentence.push_str(&format!(". It is the baseline; the next fastest, {other}, changes latency by {pooled}{per_text}"));
        } else {
            sentence.push_str(&format!(". Against the baseline {baseline}: {pooled}{per_text}"));
        }
    } else if shape.baseline.is_some() && !is_baseline {
        sentence.push_str("; no comparison with the baseline exists for it");
    }
    sentence.push('.');
    if !like_for_like {
        sentence.push_str(" No backend ran every scenario, so these pooled means cover different workloads.");
    }
    json!({
        "backend": name,
        "latency_mean_ms": num(row, "latency_mean_ms"),
        "latency_ci95_lo_ms": num(row, "latency_ci95_lo_ms"),
        "latency_ci95_hi_ms": num(row, "latency_ci95_hi_ms"),
        "wins": wins,
        "scenarios": scenarios.len(),
        "is_baseline": is_baseline,
        "like_for_like": like_for_like,
        "comparison": comparison,
        "sentence": sentence,
    })
}

fn findings(shape: &Shape, a: &Artifacts) -> Vec<String> {
    let mut out = Vec::new();
    for mode in &shape.modes {
        match best(shape, mode).get("sentence").and_then(Value::as_str) {
            Some(s) => out.push(s.to_string()),
            None => out.push(format!("{}: no backend has an ok run, so nothing was measured in this mode.", mode_title(mode))),
        }
    }
    for mode in &shape.modes {
        let ttft: Option<(&String, &Value)> = shape
            .backends
            .iter()
            .filter_map(|b| shape.row(b, mode, crate::stage::stats::OVERALL).filter(|r| num(r, "ttft_mean_ms").is_some()).map(|r| (b, r)))
            .min_by(|x, y| num(x.1, "ttft_mean_ms").unwrap_or(f64::INFINITY).total_cmp(&num(y.1, "ttft_mean_ms").unwrap_or(f64::INFINITY)));
        if let Some((b, r)) = ttft {
            out.push(format!(
                "{}: the shortest time to first token is {}'s, {} ms over all scenarios pooled.",
                mode_title(mode),
                b,
                estimate(num(r, "ttft_mean_ms"), num(r, "ttft_ci95_lo_ms"), num(r, "ttft_ci95_hi_ms"))
            ));
        }
    }
    // Backends without a single measurement, in every mode they were swept in or in some.
    let mut nothing: Vec<(String, Vec<String>)> = Vec::new();
    for d in &a.stats.value.degraded {
        if d.n_degraded == d.n_total && d.n_total > 0 {
            let (b, m) = (d.backend.clone(), d.mode.clone());
            match nothing.iter_mut().find(|(x, _)| *x == b) {
                Some((_, modes)) => modes.push(m),
                None => nothing.push((b, vec![m])),
            }
        }
    }
    let swept = |b: &str| shape.modes.iter().filter(|m| shape.row(b, m, crate::stage::stats::OVERALL).is_some()).count();
    let (all, some): (Vec<_>, Vec<_>) = nothing.into_iter().partition(|(b, modes)| modes.len() == swept(b));
    if !all.is_empty() {
        let names: Vec<String> = all.into_iter().map(|(b, _)| b).collect();
        out.push(format!("No measurement at all from {}: every run degraded (the reasons are under Limitations).", join_names(&names)));
    }
    for (b, modes) in some {
        out.push(format!("{b} produced no measurement in {}: every run there degraded (the reasons are under Limitations).", join_names(&modes)));
    }
    if let Some(g) = &a.gate {
        let rows = &g.value.backends;
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| r.pass == Some(false))
            .map(|r| {
                let threshold = r.threshold.map_or_else(|| format::UNDEFINED.to_string(), format::plain);
                format!("{} ({} relative PPL change {} > {threshold})", r.backend, r.precision, sig_opt(r.rel_delta, 3))
            })
            .collect();
        let passed = rows.iter().filter(|r| r.pass == Some(true)).count();
        let reference = &g.value.reference;
        if failed.is_empty() {
            out.push(format!("Accuracy gate: {} of {} pass against {reference}.", passed, plural(rows.len(), "backend", "backends")));
        } else {
            out.push(format!(
                "Accuracy gate: {} of {} pass against {reference}; failing: {}.",
                passed,
                plural(rows.len(), "backend", "backends"),
                join_names(&failed)
            ));
        }
    }
    for q in &a.quantize {
        let v = &q.value;
        let (total, verified) = (count_of(v, "matmul_total").unwrap_or(0), count_of(v, "verified").unwrap_or(0));
        let ran = v.get("ran_integer").and_then(Value::as_bool);
        let share = if total > 0 { format::share(Some(verified as f64 / total as f64)) } else { format::UNDEFINED.into() };
        out.push(format!(
            "INT8 {} ({}): {verified} of {total} MatMuls are INT8 in the written model ({share}); {}.",
            text(v, "scheme").unwrap_or_default(),
            q.node(),
            match ran {
                Some(true) => "ONNX Runtime ran every one of them with an integer kernel".to_string(),
                Some(false) => "ONNX Runtime did NOT run all of them with integer kernels".to_string(),
                None => "whether ONNX Runtime ran them in INT8 was not checked".to_string(),
            }
        ));
    }
    let mut unbuilt: Vec<(String, Vec<String>)> = Vec::new();
    for t in &a.trt {
        let v = &t.value;
        let p = text(v, "precision").unwrap_or_default();
        if v["status"] == "ok" {
            let layers = v.get("layers_by_precision").cloned().unwrap_or(Value::Null);
            out.push(format!(
                "TensorRT {p} plan ({}): built, {} layers ({} INT8, {} FP16, {} FP32){}.",
                t.node(),
                count_of(v, "n_layers").map_or(format::UNDEFINED.to_string(), |n| n.to_string()),
                count_of(&layers, "int8").unwrap_or(0),
                count_of(&layers, "fp16").unwrap_or(0),
                count_of(&layers, "fp32").unwrap_or(0),
                list(v, "flags").iter().filter_map(Value::as_str).map(|f| format!("; flagged: {f}")).collect::<String>()
            ));
        } else {
            let reason = text(v, "reason").unwrap_or_else(|| "no reason given".into());
            match unbuilt.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, ps)) => ps.push(p),
                None => unbuilt.push((reason, vec![p])),
            }
        }
    }
    for (reason, ps) in unbuilt {
        let what = if ps.len() == 1 { format!("TensorRT {} plan", ps[0]) } else { format!("TensorRT {} plans", join_names(&ps)) };
        out.push(format!("{what}: not built here: {reason}."));
    }
    out
}

fn abstract_text(shape: &Shape, a: &Artifacts) -> Vec<String> {
    let mut paras = Vec::new();
    let scenarios: BTreeSet<&String> = shape.scenarios.values().flatten().collect();
    let (mut total, mut ok) = (0u64, 0u64);
    for r in shape.summary.iter().filter(|r| r["scenario"] == crate::stage::stats::OVERALL) {
        total += count_of(r, "n_total").unwrap_or(0);
        ok += count_of(r, "n_ok").unwrap_or(0);
    }
    let reps: BTreeSet<u64> = a.sweeps.iter().filter_map(|s| count_of(&s.value, "reps")).collect();
    let warmup: BTreeSet<u64> = a.sweeps.iter().filter_map(|s| count_of(&s.value, "warmup")).collect();
    let range = |set: &BTreeSet<u64>| match (set.first(), set.last()) {
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        (Some(a), Some(b)) => Some(format!("{a} to {b}")),
        _ => None,
    };
    let mut p = format!(
        "This report compares {} ({}) in {} ({}) over {}",
        plural(shape.backends.len(), "backend", "backends"),
        join_names(&shape.backends),
        plural(shape.modes.len(), "mode", "modes"),
        join_names(&shape.modes.iter().map(|m| mode_title(m)).collect::<Vec<_>>()),
        plural(scenarios.len(), "scenario", "scenarios"),
    );
    if let (Some(r), Some(w)) = (range(&reps), range(&warmup)) {
        p.push_str(&format!(", with {r} timed repetitions of each after {w} untimed warm-up runs"));
    }
    p.push_str(&format!(
        ". Of {} runs, {} were measured and {} degraded: they could not run here and carry a reason instead of a number.",
        format::count(total as i64),
        format::count(ok as i64),
        format::count((total - ok.min(total)) as i64)
    ));
    paras.push(p);
    let n_cmp = shape.comparisons.len();
    match &shape.baseline {
        Some(b) => paras.push(format!(
            "Every other backend is compared with the baseline {b} by Welch's t-test on latency, with p-values adjusted by Holm over all {} and Cohen's d as the effect size; α = {}.",
            plural(n_cmp, "comparison", "comparisons"),
            format::plain(shape.alpha)
        )),
        None => paras.push("The statistics name no baseline, so no backend is tested against another.".into()),
    }
    if let Some(g) = &a.gate {
        let rows = &g.value.backends;
        let pass = rows.iter().filter(|r| r.pass == Some(true)).count();
        let fail = rows.iter().filter(|r| r.pass == Some(false)).count();
        paras.push(format!(
            "Accuracy is checked by perplexity against {}: {pass} pass the gate, {fail} fail it and {} could not be checked.",
            g.value.reference,
            rows.len() - pass - fail
        ));
    }
    paras.push("Every number below is read from the study's artifacts; nothing is measured again to render this report.".into());
    paras
}

/// One degraded thing: what, where, why and how many.
struct Limitation {
    area: &'static str,
    /// Who (a backend, a plan, a model) and, for runs, in which mode.
    subjects: Vec<(String, Option<String>)>,
    reason: String,
    count: Option<u64>,
    of: Option<u64>,
    unit: &'static str,
    /// Whether entries of one area with the same reason become one line.
    merge: bool,
}

fn limitations(a: &Artifacts) -> Vec<Value> {
    let mut raw: Vec<Limitation> = Vec::new();
    let mut push = |area, who: String, detail: Option<String>, reason: String, count, of, unit, merge| {
        raw.push(Limitation { area, subjects: vec![(who, detail)], reason, count, of, unit, merge });
    };
    let reason_of = |v: &Value| text(v, "reason").unwrap_or_else(|| "no reason given".into());
    for d in &a.stats.value.degraded {
        for r in &d.reasons {
            push("latency", d.backend.clone(), Some(d.mode.clone()), r.reason.clone(), Some(r.count as u64), Some(d.n_total as u64), "runs", true);
        }
    }
    if let Some(reason) = a.stats.value.reason.clone() {
        push("statistics", "stats".into(), None, reason, None, None, "", false);
    }
    for d in a.perplexity.iter().filter(|d| d.value["status"] != "ok") {
        push("perplexity", text(&d.value, "backend").unwrap_or_default(), None, reason_of(&d.value), None, None, "", true);
    }
    if let Some(g) = a.gate.as_ref().filter(|g| g.value.status != "ok") {
        push("accuracy gate", "gate".into(), None, g.value.reason.clone().unwrap_or_else(|| "no reason given".into()), None, None, "", false);
    }
    for d in a.logits.iter().filter(|d| d.value["status"] != "ok") {
        push("logits", text(&d.value, "backend").unwrap_or_default(), None, reason_of(&d.value), None, None, "", true);
    }
    for t in &a.trt {
        let plan = format!("{} plan", text(&t.value, "precision").unwrap_or_default());
        if t.value["status"] != "ok" {
            push("TensorRT", plan.clone(), None, reason_of(&t.value), None, None, "", true);
        }
        for f in list(&t.value, "flags").iter().filter_map(Value::as_str) {
            push("TensorRT", plan.clone(), None, f.to_string(), None, None, "", true);
        }
    }
    for q in &a.quantize {
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for op in list(&q.value, "left_float") {
            *reasons.entry(reason_of(op)).or_default() += 1;
        }
        // Each model's coverage is its own: counts of two models do not add up to anything.
        for (reason, n) in reasons {
            let who = format!("{} ({})", q.node(), text(&q.value, "scheme").unwrap_or_default());
            push("INT8", who, None, format!("left in float: {reason}"), Some(n), count_of(&q.value, "matmul_total"), "MatMuls", false);
        }
    }

    // The same reason over several backends or modes is one line, its counts summed.
    let mut merged: Vec<Limitation> = Vec::new();
    for l in raw {
        match merged.iter_mut().find(|m| m.merge && l.merge && m.area == l.area && m.reason == l.reason && m.unit == l.unit) {
            Some(m) => {
                m.subjects.extend(l.subjects);
                m.count = m.count.zip(l.count).map(|(x, y)| x + y);
                m.of = m.of.zip(l.of).map(|(x, y)| x + y);
            }
            None => merged.push(l),
        }
    }
    merged
        .into_iter()
        .map(|l| {
            let mut who: Vec<(String, Vec<String>)> = Vec::new();
            for (w, detail) in l.subjects {
                match who.iter_mut().find(|(x, _)| *x == w) {
                    Some((_, details)) => details.extend(detail),
                    None => who.push((w, detail.into_iter().collect())),
                }
            }
            let subject: Vec<String> = who.into_iter().map(|(w, d)| if d.is_empty() { w } else { format!("{w} ({})", d.join(", ")) }).collect();
            json!({ "area": l.area, "subject": subject.join(", "), "reason": l.reason, "count": l.count, "of": l.of, "unit": l.unit })
        })
        .collect()
}

fn methodology(shape: &Shape, a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    let methods: Vec<Value> = a.stats.value.methods.iter().map(|(k, v)| json!({ "name": k, "text": v })).collect();
    let mut sweeps: Vec<Value> = Vec::new();
    for s in &a.sweeps {
        let v = &s.value;
        let sampler = v.get("sampler").cloned().unwrap_or(Value::Null);
        let harness = v.get("harness").cloned().unwrap_or(Value::Null);
        if let Some(share) = num(&sampler, "cpu_share").filter(|x| *x > 0.05) {
            warnings.push(format!(
                "{} / {}: the resource sampler used {} of a core while measuring; latencies on a busy machine include it.",
                text(v, "backend").unwrap_or_default(),
                text(v, "mode").unwrap_or_default(),
                format::share(Some(share))
            ));
        }
        for sc in list(v, "scenarios") {
            if sc.get("outputs_consistent") == Some(&Value::Bool(false)) {
                warnings.push(format!(
                    "{} / {} / {}: repetitions generated different tokens; the runs did not do the same work.",
                    text(v, "backend").unwrap_or_default(),
                    text(v, "mode").unwrap_or_default(),
                    text(sc, "name").unwrap_or_default()
                ));
            }
        }
        sweeps.push(json!({
            "backend": text(v, "backend"),
            "mode": text(v, "mode"),
            "status": text(v, "status"),
            "warmup": count_of(v, "warmup"),
            "reps": count_of(v, "reps"),
            "sample_interval_ms": num(v, "sample_interval_ms"),
            "scenarios": list(v, "scenarios").len(),
            "sampler_cpu_share": num(&sampler, "cpu_share"),
            "sampler_mean_sample_us": num(&sampler, "mean_sample_us"),
            "harness_overhead_us": num(&harness, "overhead_per_iteration_us"),
        }));
    }
    sweeps.sort_by_key(|s| (shape.color(s["backend"].as_str().unwrap_or_default()), MODES.iter().position(|m| s["mode"] == *m).unwrap_or(MODES.len())));
    let ppl = a.perplexity.iter().find(|d| d.value["status"] == "ok").or(a.perplexity.first()).map(|d| {
        let v = &d.value;
        json!({ "context": count_of(v, "context"), "stride": count_of(v, "stride"), "batch": count_of(v, "batch"), "corpus_tokens": count_of(v, "corpus_tokens"), "tokens_scored": count_of(v, "tokens_scored") })
    });
    let thresholds: Vec<Value> = a
        .gate
        .as_ref()
        .map(|g| {
            let mut v: Vec<(&String, &f64)> = g.value.thresholds.iter().collect();
            v.sort_by_key(|(p, _)| precision_rank(p));
            v.into_iter().map(|(p, x)| json!({ "precision": p, "threshold": x })).collect()
        })
        .unwrap_or_default();
    json!({
        "methods": methods,
        "sweeps": sweeps,
        "perplexity": ppl,
        "thresholds": thresholds,
        "gate_reference": a.gate.as_ref().map(|g| &g.value.reference),
    })
}

fn distinct<I: IntoIterator<Item = Option<String>>>(it: I) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in it.into_iter().flatten().filter(|s| !s.is_empty()) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn environment(a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    let caps: Vec<&Value> = a.sweeps.iter().chain(&a.perplexity).chain(&a.logits).filter_map(|d| d.value.get("capability").filter(|c| c.is_object())).collect();
    let runs = &a.runs;
    let os = distinct(runs.iter().map(|r| Some(r.env.os.clone())));
    let hosts = distinct(runs.iter().map(|r| Some(r.env.host.clone())));
    let cpu = distinct(runs.iter().map(|r| Some(r.env.cpu.clone())).chain(caps.iter().map(|c| text(c, "cpu_model"))));
    let threads = distinct(caps.iter().map(|c| count_of(c, "cpu_logical_threads").map(|n| n.to_string())));
    let gpu = distinct(runs.iter().map(|r| r.env.gpu.clone()).chain(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "name")))));
    let driver = distinct(runs.iter().map(|r| r.env.gpu_driver.clone()).chain(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "driver_version")))));
    let cuda = distinct(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "cuda_driver_version"))));
    let ort = distinct(
        runs.iter()
            .filter(|r| r.env.runtime == "onnxruntime" || r.env.runtime.is_empty())
            .map(|r| Some(r.env.runtime_version.clone()))
            .chain(caps.iter().map(|c| text(c, "runtime_version")))
            .chain(a.quantize.iter().map(|q| q.value.get("ort").and_then(|o| text(o, "runtime_version"))))
            .chain(a.calibration.iter().map(|c| text(&c.value, "runtime_version"))),
    );
    let trt = distinct(a.trt.iter().map(|t| text(&t.value, "trt_version")));
    let trt_gpu = distinct(a.trt.iter().map(|t| text(&t.value, "gpu")));
    let tools = distinct(a.exports.iter().map(|e| text(&e.value, "tool")));
    if hosts.len() > 1 || cpu.len() > 1 {
        warnings.push(format!(
            "The runs come from more than one machine ({}); latencies of different machines are not comparable.",
            join_names(&if hosts.len() > 1 { hosts.clone() } else { cpu.clone() })
        ));
    }
    let none = |v: &[String], empty: &str| if v.is_empty() { empty.to_string() } else { v.join("; ") };
    let machine = vec![
        json!({ "label": "OS", "value": none(&os, "not recorded") }),
        json!({ "label": "CPU", "value": none(&cpu, "not recorded") }),
        json!({ "label": "Logical CPUs", "value": none(&threads, "not recorded") }),
        json!({ "label": "GPU", "value": none(&gpu, "none seen") }),
        json!({ "label": "GPU driver", "value": none(&driver, "none seen") }),
        json!({ "label": "CUDA (driver)", "value": none(&cuda, "none seen") }),
        json!({ "label": "ONNX Runtime", "value": none(&ort, "not recorded") }),
        json!({ "label": "TensorRT", "value": none(&trt, if a.trt.is_empty() { "not in this study" } else { "not found" }) }),
        json!({ "label": "GPU of the TensorRT builds", "value": none(&trt_gpu, if a.trt.is_empty() { "not in this study" } else { "not recorded" }) }),
        json!({ "label": "tr118 (export)", "value": none(&tools, "not recorded") }),
        json!({ "label": "tr118 (this report)", "value": format!("tr118 {}", crate::VERSION) }),
    ];
    let mut backends: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    for d in a.sweeps.iter().chain(&a.perplexity) {
        let v = &d.value;
        let Some(name) = text(v, "backend") else { continue };
        let Some(cap) = v.get("capability").filter(|c| c.is_object()) else { continue };
        if !seen.insert(name.clone()) {
            continue;
        }
        let assigned: Vec<String> =
            cap.get("providers_assigned").and_then(Value::as_object).map(|m| m.iter().map(|(k, n)| format!("{k}: {n}")).collect()).unwrap_or_default();
        backends.push(json!({
            "backend": name,
            "provider": text(cap, "provider_requested").or_else(|| text(v, "provider")),
            "ran_on": if assigned.is_empty() { format::UNDEFINED.to_string() } else { assigned.join(", ") },
            "threads": count_of(cap, "threads"),
            "runtime_version": text(cap, "runtime_version"),
            "library_digest": text(cap, "library_digest").map(|d| d.chars().take(12).collect::<String>()),
        }));
    }
    json!({ "machine": machine, "backends": backends })
}

fn sanity(a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    let mut exports = Vec::new();
    for e in &a.exports {
        for v in list(&e.value, "variants") {
            exports.push(json!({
                "node": e.node(),
                "variant": text(v, "variant"),
                "precision": text(v, "precision"),
                "opset": count_of(v, "opset"),
                "file": text(v, "file"),
                "file_bytes": num(v, "file_bytes"),
                "data_bytes": num(v, "data_bytes"),
                "nodes": count_of(v, "node_count"),
                "initializers": count_of(v, "initializer_count"),
                "initializer_bytes": num(v, "initializer_bytes"),
                "inputs": list(v, "inputs").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                "outputs": list(v, "outputs").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                "dynamic_axes": list(v, "dynamic_axes").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
                "export_ms": num(v, "export_ms"),
                "digest": text(v, "digest").map(|d| d.chars().take(12).collect::<String>()),
            }));
        }
    }
    let checkpoint = a.exports.first().map(|e| {
        let c = &e.value["checkpoint"];
        let cfg = &c["config"];
        json!({
            "path": text(c, "path"),
            "format": c.get("format").map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_string)),
            "arch": cfg.get("arch").map(|f| f.as_str().map_or_else(|| f.to_string(), str::to_string)),
            "n_layer": count_of(cfg, "n_layer"),
            "d_model": count_of(cfg, "d_model"),
            "n_head": count_of(cfg, "n_head"),
            "vocab_size": count_of(cfg, "vocab_size"),
        })
    });
    let mut quantize = Vec::new();
    for q in &a.quantize {
        let v = &q.value;
        let total = count_of(v, "matmul_total");
        let verified = count_of(v, "verified");
        let ort = v.get("ort").cloned().unwrap_or(Value::Null);
        if v.get("ran_integer") == Some(&Value::Bool(false)) {
            warnings.push(format!(
                "{}: ONNX Runtime ran {} integer MatMul kernels for {} INT8 MatMuls; the rest multiply in float.",
                q.node(),
                count_of(&ort, "integer_matmul_kernels").map_or(format::UNDEFINED.to_string(), |n| n.to_string()),
                verified.map_or(format::UNDEFINED.to_string(), |n| n.to_string())
            ));
        }
        if let (Some(qd), Some(vf)) = (count_of(v, "quantized"), verified)
            && vf < qd
        {
            warnings.push(format!("{}: {qd} MatMuls were rewritten to INT8 but only {vf} read back as INT8.", q.node()));
        }
        let decoder = v.get("decoder").filter(|d| d.is_object()).map(|d| {
            json!({ "matmul_total": count_of(d, "matmul_total"), "quantized": count_of(d, "quantized"), "verified": count_of(d, "verified"), "left_float": list(d, "left_float").len() })
        });
        quantize.push(json!({
            "node": q.node(),
            "scheme": text(v, "scheme"),
            "per_channel": v.get("per_channel").and_then(Value::as_bool),
            "activations": text(v, "activations"),
            "weights": text(v, "weights"),
            "matmul_total": total,
            "quantized": count_of(v, "quantized"),
            "verified": verified,
            "left_float": list(v, "left_float").len(),
            "coverage": match (verified, total) { (Some(v), Some(t)) if t > 0 => Some(v as f64 / t as f64), _ => None },
            "ran_integer": v.get("ran_integer").and_then(Value::as_bool),
            "integer_kernels": count_of(&ort, "integer_matmul_kernels"),
            "float_kernels": count_of(&ort, "float_matmul_kernels"),
            "decoder": decoder,
            "file_bytes": num(v, "file_bytes"),
            "data_bytes": num(v, "data_bytes"),
        }));
    }
    let mut trt = Vec::new();
    for t in &a.trt {
        let v = &t.value;
        let layers = v.get("layers_by_precision").cloned().unwrap_or(Value::Null);
        if v.get("int8_verified") == Some(&Value::Bool(false)) {
            warnings.push(format!("TensorRT {} plan: INT8 was requested but no layer runs in INT8.", text(v, "precision").unwrap_or_default()));
        }
        trt.push(json!({
            "node": t.node(),
            "precision": text(v, "precision"),
            "status": text(v, "status"),
            "reason": text(v, "reason"),
            "flags": list(v, "flags").iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
            "trt_version": text(v, "trt_version"),
            "n_layers": count_of(v, "n_layers"),
            "fp32": count_of(&layers, "fp32"),
            "fp16": count_of(&layers, "fp16"),
            "int8": count_of(&layers, "int8"),
            "other": count_of(&layers, "other"),
            "int8_verified": v.get("int8_verified").and_then(Value::as_bool),
            "plan_bytes": num(v, "plan_bytes"),
            "build_s": num(v, "build_s"),
            "engine_build_s": num(v, "engine_build_s"),
            "builder": text(v, "builder"),
            "peak_build_mib": num(v, "peak_build_mib"),
        }));
    }
    let mut perplexity = Vec::new();
    for d in &a.perplexity {
        let v = &d.value;
        let (ppl, uniform) = (num(v, "ppl"), num(v, "uniform_ppl"));
        let sane = match (ppl, uniform) {
            (Some(p), Some(u)) => Some(p < u),
            _ => None,
        };
        if sane == Some(false) {
            warnings.push(format!(
                "{}: perplexity {} is not below the uniform model's {} (a model that knows nothing scores its vocabulary size): its outputs are noise.",
                text(v, "backend").unwrap_or_default(),
                sig_opt(ppl, 4),
                sig_opt(uniform, 4)
            ));
        }
        perplexity.push(json!({
            "backend": text(v, "backend"),
            "precision": text(v, "precision"),
            "provider": text(v, "provider"),
            "status": text(v, "status"),
            "reason": text(v, "reason"),
            "ppl": ppl,
            "mean_nll": num(v, "mean_nll"),
            "uniform_ppl": uniform,
            "vocab_size": count_of(v, "vocab_size"),
            "tokens_scored": count_of(v, "tokens_scored"),
            "sane": sane,
        }));
    }
    let mut logits = Vec::new();
    for d in &a.logits {
        let v = &d.value;
        let o = &v["overall"];
        let (last, all) = (&o["last_token"], &o["all_positions"]);
        if let Some(rate) = num(all, "argmax_agreement_rate").filter(|r| *r < 1.0) {
            warnings.push(format!(
                "{}: the top token differs from the reference's at {} of positions.",
                text(v, "backend").unwrap_or_default(),
                format::share(Some(1.0 - rate))
            ));
        }
        logits.push(json!({
            "backend": text(v, "backend"),
            "status": text(v, "status"),
            "reason": text(v, "reason"),
            "prompts": list(v, "prompts").len(),
            "last_mean_abs_diff": num(last, "mean_abs_diff"),
            "last_max_abs_diff": num(last, "max_abs_diff"),
            "last_agreement": num(last, "argmax_agreement_rate"),
            "all_mean_abs_diff": num(all, "mean_abs_diff"),
            "all_max_abs_diff": num(all, "max_abs_diff"),
            "all_agreement": num(all, "argmax_agreement_rate"),
        }));
    }
    json!({ "checkpoint": checkpoint, "exports": exports, "quantize": quantize, "trt": trt, "perplexity": perplexity, "logits": logits })
}

fn gate_section(g: &Doc<Gate>) -> Value {
    let v = &g.value;
    let rows: Vec<Value> = v
        .backends
        .iter()
        .map(|r| {
            let verdict = match r.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "not checked",
            };
            json!({
                "backend": r.backend,
                "precision": r.precision,
                "status": r.status,
                "reason": r.reason,
                "ppl": r.ppl,
                "rel_delta": r.rel_delta,
                "threshold": r.threshold,
                "verdict": verdict,
            })
        })
        .collect();
    json!({
        "reference": v.reference,
        "reference_ppl": v.reference_ppl,
        "status": v.status,
        "reason": v.reason,
        "failed": v.failed,
        "rows": rows,
    })
}

fn overhead(a: &Artifacts) -> Value {
    let mut rows = Vec::new();
    let mut push = |step: String, what: String, seconds: Option<f64>, size: Option<f64>, note: String| {
        rows.push(json!({ "step": step, "what": what, "seconds": seconds, "bytes": size, "note": note }));
    };
    for e in &a.exports {
        for v in list(&e.value, "variants") {
            let size = match (num(v, "file_bytes"), num(v, "data_bytes")) {
                (Some(f), d) => Some(f + d.unwrap_or(0.0)),
                _ => None,
            };
            push(
                "export".into(),
                format!("{} {} ({})", e.node(), text(v, "variant").unwrap_or_default(), text(v, "precision").unwrap_or_default()),
                num(v, "export_ms").map(|ms| ms / 1000.0),
                size,
                format!(
                    "{} nodes, opset {}",
                    count_of(v, "node_count").map_or(format::UNDEFINED.to_string(), |n| format::count(n as i64)),
                    count_of(v, "opset").map_or(format::UNDEFINED.to_string(), |n| n.to_string())
                ),
            );
        }
    }
    for c in &a.calibration {
        let v = &c.value;
        push(
            "calibrate".into(),
            c.node(),
            num(v, "elapsed_s"),
            None,
            format!(
                "{}, {} samples of {} tokens",
                text(v, "method").unwrap_or_default(),
                count_of(v, "samples").map_or(format::UNDEFINED.to_string(), |n| n.to_string()),
                count_of(v, "seq_len").map_or(format::UNDEFINED.to_string(), |n| n.to_string())
            ),
        );
    }
    for q in &a.quantize {
        let v = &q.value;
        let size = num(v, "file_bytes").map(|f| f + num(v, "data_bytes").unwrap_or(0.0));
        push("quantize".into(), q.node(), num(v, "elapsed_s"), size, format!("{} INT8", text(v, "scheme").unwrap_or_default()));
    }
    for t in &a.trt {
        let v = &t.value;
        let note = if v["plan_bytes"].is_u64() {
            let peak = num(v, "peak_build_mib").map_or(String::new(), |m| format!(", peak memory {} MiB", sig_opt(Some(m), 3)));
            format!("{}: builder {} s{peak}", text(v, "builder").unwrap_or_else(|| "trtexec".into()), sig_opt(num(v, "engine_build_s"), 3))
        } else {
            format!("not built: {}", text(v, "reason").unwrap_or_else(|| "no reason given".into()))
        };
        push("TensorRT build".into(), t.node(), num(v, "build_s"), num(v, "plan_bytes"), note);
    }
    Value::Array(rows)
}

fn reproducibility(inputs: &Inputs) -> Result<Value, ReportError> {
    let mut artifacts = Vec::new();
    for (dep, paths) in &inputs.deps {
        for p in paths {
            let full = inputs.root.join(p);
            let read = |e: std::io::Error| ReportError::Read { path: p.clone(), message: e.to_string() };
            // A directory's digest is its canonical listing's, as the cache computes it.
            let (digest, bytes) = if full.is_dir() {
                let mut entries = Vec::new();
                for f in crate::digest::list_files(&full).map_err(read)? {
                    let path = full.join(&f);
                    let (digest, size) = crate::digest::hash_file(&path).map_err(read)?;
                    let exec = std::fs::metadata(&path).map(|m| crate::digest::is_executable(&m)).map_err(read)?;
                    entries.push(crate::digest::TreeEntry { path: f, digest, size, exec });
                }
                let tree = crate::digest::Tree { entries };
                (tree.digest(), tree.size())
            } else {
                crate::digest::hash_file(&full).map_err(read)?
            };
            artifacts.push(json!({ "dep": dep, "path": p, "digest": digest.to_hex(), "bytes": bytes }));
        }
    }
    let pipeline = inputs.paths("pipeline").first().map(|p| -> Result<Value, ReportError> {
        let bytes = std::fs::read(inputs.root.join(p)).map_err(|e| ReportError::Read { path: p.clone(), message: e.to_string() })?;
        Ok(json!({ "path": p, "digest": crate::digest::Digest::of_bytes(&bytes).to_hex() }))
    });
    let pipeline = pipeline.transpose()?;
    let file = pipeline.as_ref().and_then(|p| p["path"].as_str()).map(str::to_string);
    let command = match file.as_deref() {
        Some("tr118.toml") => format!("tr118 make {}", inputs.node),
        Some(f) => format!("tr118 -f {f} make {}", inputs.node),
        None => format!("tr118 make {}", inputs.node),
    };
    Ok(json!({ "command": command, "pipeline": pipeline, "tool_version": crate::VERSION, "artifacts": artifacts }))
}
