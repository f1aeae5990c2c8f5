//! The INT8 recipes side by side: what each quantized model is, what it costs in perplexity,
//! what it buys in prefill speed, and one chart of the trade-off.
//!
//! A backend is an INT8 recipe when the model its prefill sweep ran is a `quantize` node's
//! (`out/<node>/prefill/model.onnx` beside `out/<node>/quantize.json`). Its accuracy is the
//! gate's row for it (relative PPL change against the gate's reference); its speed-up is the
//! reference's mean prefill latency over its own, per scenario both ran, summarised as the
//! geometric mean over those scenarios (with the smallest and largest).

use std::path::Path;

use serde_json::{Value, json};

use super::{Artifacts, Doc, plots};
use crate::artifact::quantize::Quantize;
use crate::artifact::sweep::Sweep;
use crate::report::{Plot, ReportError};

/// The recipe of a quantized model, in words.
fn recipe(q: &Quantize) -> String {
    let mut parts = vec![match (q.scheme.name(), q.per_token) {
        ("dynamic", true) => "dynamic, per-token activations".to_string(),
        ("dynamic", false) => "dynamic, per-tensor activations".to_string(),
        (s, _) => format!("{s}, per-tensor activations"),
    }];
    if let Some(s) = &q.smooth {
        parts.push(format!("SmoothQuant α = {}", s.alpha));
    }
    let by_sensitivity = q.sensitivity.as_ref().map_or(0, |s| s.exclude.len());
    let by_pattern: Vec<&String> = q.exclude.iter().filter(|p| !q.sensitivity.as_ref().is_some_and(|s| s.exclude.contains(p))).collect();
    if let Some(s) = &q.sensitivity {
        parts.push(format!("{by_sensitivity} most sensitive MatMuls float (target {:.1}% on its windows)", s.target * 100.0));
    }
    if !by_pattern.is_empty() {
        parts.push(format!("float: {}", by_pattern.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")));
    }
    parts.join("; ")
}

/// The quantize doc whose `prefill/` holds `model`.
fn quantize_of<'a>(a: &'a Artifacts, model: &str) -> Option<&'a Doc<Quantize>> {
    let dir = Path::new(model).parent()?.parent()?;
    a.quantize.iter().find(|q| Path::new(&q.path).parent() == Some(dir))
}

fn prefill_sweep<'a>(a: &'a Artifacts, backend: &str) -> Option<&'a Sweep> {
    a.sweeps.iter().map(|d| &d.value).find(|s| s.backend == backend && s.mode == "prefill" && s.status == "ok")
}

/// Per scenario both ran: the reference's mean latency over the backend's.
fn speedups(reference: &Sweep, s: &Sweep) -> Vec<(String, f64)> {
    s.scenarios
        .iter()
        .filter_map(|x| {
            let mine = x.mean_latency_ms.filter(|m| *m > 0.0)?;
            let theirs = reference.scenarios.iter().find(|r| r.scenario.name == x.scenario.name)?.mean_latency_ms?;
            Some((x.scenario.name.clone(), theirs / mine))
        })
        .collect()
}

pub(super) fn int8_section(shape: &super::Shape, a: &Artifacts, plots: &mut Vec<Plot>) -> Result<Option<Value>, ReportError> {
    let Some(gate) = a.gate.as_ref().map(|g| &g.value) else { return Ok(None) };
    let reference = gate.reference.clone();
    let reference_sweep = prefill_sweep(a, &reference);
    let mut rows = Vec::new();
    let mut points = Vec::new();
    let mut seen = Vec::new();
    for d in &a.sweeps {
        let s = &d.value;
        if s.mode != "prefill" || seen.contains(&s.backend) {
            continue;
        }
        let Some(q) = quantize_of(a, &s.model) else { continue };
        seen.push(s.backend.clone());
        let g = gate.backends.iter().find(|r| r.backend == s.backend);
        let per_scenario = match (reference_sweep, s.status == "ok") {
            (Some(r), true) => speedups(r, s),
            _ => Vec::new(),
        };
        let geo = (!per_scenario.is_empty()).then(|| (per_scenario.iter().map(|(_, x)| x.ln()).sum::<f64>() / per_scenario.len() as f64).exp());
        let lo = per_scenario.iter().map(|(_, x)| *x).reduce(f64::min);
        let hi = per_scenario.iter().map(|(_, x)| *x).reduce(f64::max);
        let rel = g.and_then(|g| g.rel_delta);
        if let (Some(x), Some(y)) = (geo, rel) {
            points.push(plots::Point { label: s.backend.clone(), x, y, pass: g.and_then(|g| g.pass) == Some(true), color: shape.color(&s.backend) });
        }
        rows.push(json!({
            "backend": s.backend,
            "node": q.node(),
            "recipe": recipe(&q.value),
            "quantized": q.value.quantized,
            "matmul_total": q.value.matmul_total,
            "ppl": g.and_then(|g| g.ppl),
            "rel_delta": rel,
            "threshold": g.and_then(|g| g.threshold),
            "verdict": match g.and_then(|g| g.pass) { Some(true) => "pass", Some(false) => "FAIL", None => "not checked" },
            "speedup": geo,
            "speedup_min": lo,
            "speedup_max": hi,
            "scenarios": per_scenario.len(),
        }));
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let threshold = gate.thresholds.get("int8").copied();
    let plot = if points.is_empty() {
        None
    } else {
        let title = format!("INT8 recipes: perplexity change against prefill speed-up over {reference}");
        let svg = plots::tradeoff(&plots::TradeoffChart {
            title: &title,
            x_label: &format!("prefill speed-up over {reference} (geometric mean over scenarios)"),
            y_label: "relative perplexity change",
            points: &points,
            threshold,
        })?;
        let p = Plot::new(
            "int8-tradeoff",
            &title,
            "Each INT8 backend: its perplexity change against the reference (the gate's number) and its prefill speed-up. Below the dashed line passes the INT8 gate; filled points pass it.",
            svg,
        );
        let r = super::plot_ref(&p);
        plots.push(p);
        Some(r)
    };
    Ok(Some(json!({ "reference": reference, "threshold": threshold, "rows": rows, "plot": plot })))
}
