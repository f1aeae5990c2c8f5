//! The abstract and the key findings: the text computed from several artifacts at once.
//!
//! Key findings:
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

use std::collections::BTreeSet;

use serde_json::Value;

use super::results::best;
use super::{Artifacts, Shape, count_of, join_names, mode_title, num, plural};
use crate::report::format::{self, estimate, sig_opt};

pub(super) fn findings(shape: &Shape, a: &Artifacts) -> Vec<String> {
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
            .filter_map(|b| shape.row(b, mode, crate::artifact::stats::OVERALL).filter(|r| num(r, "ttft_mean_ms").is_some()).map(|r| (b, r)))
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
    let swept = |b: &str| shape.modes.iter().filter(|m| shape.row(b, m, crate::artifact::stats::OVERALL).is_some()).count();
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
        let (total, verified) = (v.matmul_total, v.verified);
        let ran = Some(v.ran_integer);
        let share = if total > 0 { format::share(Some(verified as f64 / total as f64)) } else { format::UNDEFINED.into() };
        out.push(format!(
            "INT8 {} ({}): {verified} of {total} MatMuls are INT8 in the written model ({share}); {}.",
            v.scheme.name(),
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
        let p = v.precision.clone();
        if v.status == "ok" {
            let layers = v.built.layers_by_precision.clone().unwrap_or_default();
            out.push(format!(
                "TensorRT {p} plan ({}): built, {} layers ({} INT8, {} FP16, {} FP32){}.",
                t.node(),
                v.built.n_layers.map_or(format::UNDEFINED.to_string(), |n| n.to_string()),
                layers.int8,
                layers.fp16,
                layers.fp32,
                v.flags.iter().map(|f| format!("; flagged: {f}")).collect::<String>()
            ));
        } else {
            let reason = v.reason.clone().unwrap_or_else(|| "no reason given".into());
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

pub(super) fn abstract_text(shape: &Shape, a: &Artifacts) -> Vec<String> {
    let mut paras = Vec::new();
    let scenarios: BTreeSet<&String> = shape.scenarios.values().flatten().collect();
    let (mut total, mut ok) = (0u64, 0u64);
    for r in shape.summary.iter().filter(|r| r["scenario"] == crate::artifact::stats::OVERALL) {
        total += count_of(r, "n_total").unwrap_or(0);
        ok += count_of(r, "n_ok").unwrap_or(0);
    }
    let reps: BTreeSet<u64> = a.sweeps.iter().map(|s| s.value.reps as u64).collect();
    let warmup: BTreeSet<u64> = a.sweeps.iter().map(|s| s.value.warmup as u64).collect();
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
