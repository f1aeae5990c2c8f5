//! Results: per mode, the tables, the charts and the fastest backend; and the chart of degraded
//! runs per mode.

use serde_json::{Value, json};

use super::{Artifacts, Shape, count_of, join_names, mode_title, num, plot_ref, plural, text};
use crate::report::format::{self, estimate, pct, pvalue};
use crate::report::plots::{self, Bar, BarChart, DistributionChart, Series};
use crate::report::{Plot, ReportError};

pub(super) fn mode_section(shape: &Shape, a: &Artifacts, mode: &str, plots: &mut Vec<Plot>, warnings: &mut Vec<String>) -> Result<Value, ReportError> {
    let scenarios = shape.scenarios.get(mode).cloned().unwrap_or_default();
    let rows: Vec<&Value> = shape.summary.iter().filter(|r| r["mode"] == mode).collect();
    let overall: Vec<Value> = shape.backends.iter().filter_map(|b| shape.row(b, mode, crate::artifact::stats::OVERALL)).cloned().collect();
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

    // The bar charts, in the order the section shows them: what each plots, from which
    // summary columns (mean, interval low, interval high), and its caption.
    let bar_charts = [
        (
            "latency",
            ["latency_mean_ms", "latency_ci95_lo_ms", "latency_ci95_hi_ms"],
            "mean latency per scenario",
            "mean latency (ms), 95% CI",
            "Bars are means over ok runs; whiskers are the Student t 95% interval of the mean.",
        ),
        (
            "throughput",
            ["throughput_mean", "throughput_ci95_lo", "throughput_ci95_hi"],
            "throughput per scenario",
            "throughput (tokens/s), 95% CI",
            "Tokens per second (prefill: prompt tokens; generate: new tokens), mean and 95% interval.",
        ),
    ];
    for (key, [mean, lo, hi], what, y_label, caption) in bar_charts {
        let series = bar_series(mean, lo, hi);
        if series.is_empty() {
            continue;
        }
        let t = format!("{title}: {what}");
        let svg = plots::bars(&BarChart { title: &t, x_label: "scenario", y_label, categories: &scenarios, series: &series, percent: false })?;
        let p = Plot::new(&format!("{key}-{mode}"), &t, caption, svg);
        section_plots.insert(key.into(), plot_ref(&p));
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

pub(super) fn degraded_plot(shape: &Shape, plots: &mut Vec<Plot>) -> Result<Value, ReportError> {
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
                .map(|m| shape.row(b, m, crate::artifact::stats::OVERALL).and_then(|r| num(r, "degraded_rate")).map(|v| Bar { value: v, lo: None, hi: None }))
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
pub(super) fn best(shape: &Shape, mode: &str) -> Value {
    let scenarios = shape.scenarios.get(mode).cloned().unwrap_or_default();
    let overall = crate::artifact::stats::OVERALL;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::stats::OVERALL;

    /// A summary row; `None` is a backend that ran nothing in that scenario.
    fn row(backend: &str, scenario: &str, mean: Option<f64>) -> Value {
        json!({ "backend": backend, "mode": "prefill", "scenario": scenario, "n_ok": if mean.is_some() { 5 } else { 0 }, "latency_mean_ms": mean })
    }

    fn shape(rows: Vec<Value>) -> Shape {
        Shape {
            baseline: Some("cpu".into()),
            alpha: 0.05,
            backends: vec!["cpu".into(), "fast".into(), "partial".into()],
            modes: vec!["prefill".into()],
            scenarios: [("prefill".to_string(), vec!["a".to_string(), "b".to_string()])].into(),
            summary: rows,
            comparisons: Vec::new(),
        }
    }

    /// The fastest pooled mean wins only among backends that ran every scenario; a backend
    /// faster on what it ran but missing a scenario is not the like-for-like best. Wins count
    /// the scenarios where a backend is the fastest of all that ran them.
    #[test]
    fn the_best_ran_every_scenario_and_wins_count_per_scenario() {
        let rows = vec![
            row("cpu", "a", Some(10.0)),
            row("cpu", "b", Some(30.0)),
            row("cpu", OVERALL, Some(20.0)),
            row("fast", "a", Some(12.0)),
            row("fast", "b", Some(14.0)),
            row("fast", OVERALL, Some(13.0)),
            row("partial", "a", Some(1.0)),
            row("partial", "b", None),
            row("partial", OVERALL, Some(1.0)),
        ];
        let got = best(&shape(rows), "prefill");
        assert_eq!(got["backend"], "fast");
        assert_eq!(got["wins"], 1, "`partial` is fastest in `a`, `fast` in `b`");
        assert_eq!(got["like_for_like"], true);
        assert!(got["sentence"].as_str().unwrap().ends_with("; no comparison with the baseline exists for it."), "{got}");
    }

    /// With no backend covering every scenario, the pooled means are compared anyway and the
    /// sentence says they cover different workloads.
    #[test]
    fn without_full_coverage_the_best_says_its_means_are_not_like_for_like() {
        let rows = vec![
            row("cpu", "a", Some(10.0)),
            row("cpu", "b", None),
            row("cpu", OVERALL, Some(10.0)),
            row("partial", "a", None),
            row("partial", "b", Some(4.0)),
            row("partial", OVERALL, Some(4.0)),
        ];
        let got = best(&shape(rows), "prefill");
        assert_eq!((got["backend"].as_str(), got["like_for_like"].as_bool()), (Some("partial"), Some(false)));
        assert!(got["sentence"].as_str().unwrap().contains("cover different workloads"), "{got}");
        assert_eq!(best(&shape(vec![row("cpu", OVERALL, None)]), "prefill"), Value::Null);
    }
}
