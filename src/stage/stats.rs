//! The `stats` kind: summaries of every sweep's run records, and comparisons with a baseline.
//!
//! ```toml
//! [stages.stats]
//! kind = "stats"
//! deps = { runs = "out/sweep/*/*/runs.jsonl" }   # every sweep node's run records
//! baseline = "onnxruntime-cpu"                   # the backend others are compared with (optional)
//! alpha = 0.05                                   # significance level after Holm (default 0.05)
//! ```
//!
//! Every line of every `runs` file is a [`RunRecord`]; a line that is not is an error naming
//! the file, line and column. Records are grouped by backend × mode × scenario; the numbers
//! are [`crate::stats`] over the group's `ok` records, and a degraded record counts only
//! toward `n_total`, `degraded_rate` and `reasons`. Each backend × mode also gets a row with
//! scenario `overall`: its `ok` runs of every scenario pooled into one sample, so its spread
//! includes the differences between scenarios — read it as a headline, the per-scenario rows
//! for effects. A backend × mode with only degraded records still has its rows, with
//! `n_ok = 0`, `degraded_rate = 1` and empty numbers.
//!
//! With a `baseline`, every other backend is compared with it in each mode and scenario (and
//! overall) where that backend has records: Welch's t-test and Cohen's d of latency, backend
//! against baseline (positive `welch_t`, `cohens_d` and `latency_pct_change` mean the backend
//! is slower). The p-values are adjusted by Holm over *all* comparisons of the document —
//! every mode, scenario, `overall` row and backend. Holm holds under any dependence between
//! the tests, so `overall` rows may overlap their scenarios' rows; counting them makes the
//! adjustment stricter, never looser. `significant` is `yes` when `p_holm ≤ alpha` (as
//! statsmodels rejects), `no` when above, `n/a` without a p-value. An `overall` comparison is
//! only like for like when both sides ran the same scenarios the same number of times; its
//! note says when they did not.
//! A baseline not among the records is an error; a baseline with no `ok` runs leaves the
//! comparisons without p-values (note `baseline has no ok runs`) and the node degraded.
//!
//! Outputs — a number that is undefined (no `ok` run, a single run's spread, a test without
//! variance) is an empty CSV cell and `null` in JSON, never `NaN`:
//!
//! `summary.csv`, one row per backend × mode × scenario, then that backend × mode's `overall`:
//!
//! | column | meaning |
//! |---|---|
//! | `backend`, `provider`, `precision`, `mode`, `scenario` | the group (`overall`: all scenarios pooled) |
//! | `batch`, `prompt_tokens`, `new_tokens` | the scenario's shape; empty for `overall` |
//! | `n_ok`, `n_total`, `degraded_rate` | `ok` runs, all runs, degraded share of all runs |
//! | `latency_{mean,ci95_lo,ci95_hi,median,p90,p99,std,min,max}_ms` | latency: mean with its Student t 95 % interval, type-7 percentiles, sample std (`ddof = 1`) |
//! | `throughput_{mean,ci95_lo,ci95_hi}` | tokens a second |
//! | `ttft_{mean,median,ci95_lo,ci95_hi}_ms` | time to first token (generate modes) |
//! | `tpot_{mean,ci95_lo,ci95_hi}_ms` | time per output token after the first (generate modes) |
//! | `rss_peak_mib`, `cpu_util`, `gpu_power_mean_w`, `gpu_power_peak_w`, `gpu_mem_peak_mib` | mean over `ok` runs of each run's [`crate::measure::Resources`] value, over the runs that have one |
//! | `reasons` | distinct degraded reasons with their counts, most frequent first: `no CUDA provider (30); …` |
//!
//! `comparisons.csv`, one row per mode × scenario (then `overall`) × non-baseline backend:
//!
//! | column | meaning |
//! |---|---|
//! | `mode`, `scenario`, `backend`, `baseline` | what is compared |
//! | `n_baseline`, `n_backend` | `ok` runs on each side |
//! | `baseline_latency_mean_ms`, `latency_mean_ms`, `latency_pct_change` | mean latencies and `100·(backend − baseline)/baseline` |
//! | `baseline_throughput_mean`, `throughput_mean`, `throughput_pct_change` | the same for throughput |
//! | `welch_t`, `welch_df`, `p` | Welch's t-test of latency, two-sided |
//! | `p_holm` | `p` adjusted by Holm over every comparison of the document |
//! | `cohens_d` | latency effect size, pooled standard deviation |
//! | `significant` | `yes` / `no` / `n/a` at `alpha` after Holm |
//! | `note` | why a number is missing, or a caveat |
//!
//! `stats.json` holds everything the report needs: `status` and `reason` (as the node's),
//! `baseline`, `alpha`, `methods` (each statistic's definition, in words), `inputs` (`path`,
//! `records`, `ok`, `degraded` per file), `degraded` (per backend × mode with degraded
//! records: `backend`, `mode`, `n_degraded`, `n_total`, `reasons` as `{reason, count}`), and
//! `summary` and `comparisons`, each `{columns, rows}` with `rows` objects keyed by the CSV
//! columns.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::output::{csv_field, write_json};
use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::stats as artifact;
use crate::artifact::stats::OVERALL;
use crate::measure::{MODES, RunRecord};
use crate::pipeline::NodeSpec;
use crate::stats::{self, Summary};

pub(crate) struct Stats;

const FIELDS: &[&str] = &["baseline", "alpha"];

const DEFAULT_ALPHA: f64 = 0.05;

pub(crate) const SUMMARY_COLUMNS: &[&str] = &[
    "backend",
    "provider",
    "precision",
    "mode",
    "scenario",
    "batch",
    "prompt_tokens",
    "new_tokens",
    "n_ok",
    "n_total",
    "degraded_rate",
    "latency_mean_ms",
    "latency_ci95_lo_ms",
    "latency_ci95_hi_ms",
    "latency_median_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_std_ms",
    "latency_min_ms",
    "latency_max_ms",
    "throughput_mean",
    "throughput_ci95_lo",
    "throughput_ci95_hi",
    "ttft_mean_ms",
    "ttft_median_ms",
    "ttft_ci95_lo_ms",
    "ttft_ci95_hi_ms",
    "tpot_mean_ms",
    "tpot_ci95_lo_ms",
    "tpot_ci95_hi_ms",
    "rss_peak_mib",
    "cpu_util",
    "gpu_power_mean_w",
    "gpu_power_peak_w",
    "gpu_mem_peak_mib",
    "reasons",
];

pub(crate) const COMPARISON_COLUMNS: &[&str] = &[
    "mode",
    "scenario",
    "backend",
    "baseline",
    "n_baseline",
    "n_backend",
    "baseline_latency_mean_ms",
    "latency_mean_ms",
    "latency_pct_change",
    "baseline_throughput_mean",
    "throughput_mean",
    "throughput_pct_change",
    "welch_t",
    "welch_df",
    "p",
    "p_holm",
    "cohens_d",
    "significant",
    "note",
];

impl Kind for Stats {
    const NAME: &'static str = "stats";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "stats"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let baseline = match cx.fields.get("baseline") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(v) => {
                errors.push(LowerError::on("baseline", format!("`baseline` must be a backend name, found {v}"), None));
                None
            }
        };
        let alpha = match cx.fields.get("alpha") {
            None => DEFAULT_ALPHA,
            Some(v) => match v.as_f64() {
                Some(a) if a > 0.0 && a < 1.0 => a,
                _ => {
                    errors.push(LowerError::on(
                        "alpha",
                        format!("`alpha` is a significance level, a number strictly between 0 and 1; found {v}"),
                        Some("alpha = 0.05".into()),
                    ));
                    DEFAULT_ALPHA
                }
            },
        };
        if !cx.deps.iter().any(|d| d == "runs") {
            errors.push(LowerError::on(
                "deps",
                "a `stats` stage needs a dep named `runs`: the sweeps' run records".into(),
                Some("deps = { runs = \"out/sweep/*/*/runs.jsonl\" }".into()),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(json!({ "baseline": baseline, "alpha": alpha }))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("stats".into(), "stats.json".into()), ("summary".into(), "summary.csv".into()), ("comparisons".into(), "comparisons.csv".into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = &cx.node.config;
        let baseline = config["baseline"].as_str().map(str::to_string);
        let alpha = config["alpha"].as_f64().unwrap_or(DEFAULT_ALPHA);

        let paths: Vec<&String> = cx.deps.get("runs").into_iter().flatten().collect();
        let (records, inputs) = read_records(cx.root, &paths)?;
        if records.is_empty() {
            return Err(format!("the `runs` inputs hold no run records: {}", crate::diag::ticked(paths.iter())).into());
        }
        let data = Data::group(&records, baseline.as_deref())?;
        if let Some(b) = &baseline
            && !data.backends.iter().any(|(name, _)| name == b)
        {
            let found: Vec<String> = data.backends.iter().map(|(n, _)| format!("`{n}`")).collect();
            let help = crate::diag::suggest(b, data.backends.iter().map(|(n, _)| n.as_str())).map(|s| format!("; {s}")).unwrap_or_default();
            return Err(format!("the baseline backend `{b}` has no run records; the runs hold {}{help}", found.join(", ")).into());
        }

        let summary = data.summary_rows();
        let mut comparisons = match &baseline {
            Some(b) => data.comparison_rows(b),
            None => Vec::new(),
        };
        adjust(&mut comparisons, alpha);

        let any_ok = records.iter().any(|r| r.record.is_ok());
        let baseline_ok = baseline.as_ref().is_none_or(|b| records.iter().any(|r| r.record.backend == *b && r.record.is_ok()));
        let reason = if !any_ok {
            Some("no backend has an ok run: every record is degraded".to_string())
        } else if !baseline_ok {
            Some(format!("the baseline `{}` has no ok runs: no comparison has a p-value", baseline.as_deref().unwrap_or_default()))
        } else {
            None
        };

        for row in summary.iter().filter(|r| r.get("scenario") == OVERALL) {
            let _ = writeln!(
                cx.log,
                "{} {}: {} of {} ok, latency mean {} ms",
                row.get("backend"),
                row.get("mode"),
                row.get("n_ok"),
                row.get("n_total"),
                row.get("latency_mean_ms"),
            );
        }
        for row in &comparisons {
            let _ = writeln!(
                cx.log,
                "{} {} {}: {}% vs baseline, p {}, p_holm {}, significant {}",
                row.get("mode"),
                row.get("scenario"),
                row.get("backend"),
                row.get("latency_pct_change"),
                row.get("p"),
                row.get("p_holm"),
                row.get("significant"),
            );
        }

        let doc = artifact::Stats {
            status: if reason.is_some() { "degraded" } else { "ok" }.into(),
            reason: reason.clone(),
            baseline,
            alpha,
            methods: methods(),
            inputs,
            degraded: data.degraded(),
            summary: table(SUMMARY_COLUMNS, &summary),
            comparisons: table(COMPARISON_COLUMNS, &comparisons),
        };
        write_json(&cx.root.join(&cx.outs["stats"]), &serde_json::to_value(&doc).map_err(|e| e.to_string())?)?;
        write_csv(&cx.root.join(&cx.outs["summary"]), SUMMARY_COLUMNS, &summary)?;
        write_csv(&cx.root.join(&cx.outs["comparisons"]), COMPARISON_COLUMNS, &comparisons)?;
        Ok(match reason {
            Some(r) => Outcome::Degraded(r),
            None => Outcome::Ok,
        })
    }
}

/// The definitions `stats.json` carries, so a reader of the numbers need not read this code.
fn methods() -> BTreeMap<String, String> {
    [
        ("std", "sample standard deviation, ddof = 1"),
        ("ci95", "Student t interval of the mean: mean ± t(0.975, n − 1) · std / √n"),
        ("percentiles", "linear interpolation between order statistics, Hyndman–Fan type 7 (numpy's default)"),
        ("overall", "per backend × mode, the ok runs of all its scenarios pooled into one sample"),
        ("resources", "mean over ok runs of each run's sampled value, over the runs that have one"),
        ("degraded_rate", "degraded runs / all runs"),
        ("pct_change", "100 · (backend − baseline) / baseline, of the means"),
        ("welch", "Welch's unequal-variance t-test of latency, backend against baseline, two-sided; Welch–Satterthwaite df"),
        ("cohens_d", "(mean_backend − mean_baseline) / pooled std, pooled std = sqrt(((n1 − 1)s1² + (n2 − 1)s2²) / (n1 + n2 − 2))"),
        ("p_holm", "Holm–Bonferroni step-down adjustment over every comparison in this document"),
        ("significant", "yes when p_holm ≤ alpha, no when above, n/a without a p-value"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// A record and where it came from.
struct Located {
    path: String,
    line: usize,
    record: RunRecord,
}

impl Located {
    fn at(&self) -> String {
        format!("`{}` line {}", self.path, self.line)
    }
}

fn read_records(root: &Path, paths: &[&String]) -> Result<(Vec<Located>, Vec<artifact::Input>), String> {
    let mut records = Vec::new();
    let mut inputs = Vec::new();
    let mut seen: HashMap<(String, String, String, usize), (String, usize)> = HashMap::new();
    for path in paths {
        let text = std::fs::read_to_string(root.join(path)).map_err(|e| format!("reading `{path}`: {e}"))?;
        let (mut n, mut ok) = (0, 0);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = |col: Option<usize>| match col {
                Some(c) => format!("`{path}`:{}:{c}", i + 1),
                None => format!("`{path}`:{}", i + 1),
            };
            let record: RunRecord = serde_json::from_str(line).map_err(|e| {
                let message = e.to_string();
                // serde_json places the error within the line, which is always line 1 here.
                let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
                format!("{}: not a run record: {message}", at(Some(e.column())))
            })?;
            match record.status.as_str() {
                "ok" => {
                    if record.latency_ms.is_none() {
                        return Err(format!("{}: an `ok` record without `latency_ms`", at(None)));
                    }
                    ok += 1;
                }
                "degraded" => {}
                other => return Err(format!("{}: `status` is `ok` or `degraded`, found `{other}`", at(None))),
            }
            let id = (record.backend.clone(), record.mode.clone(), record.scenario.clone(), record.rep);
            if let Some((p, l)) = seen.insert(id, (path.to_string(), i + 1)) {
                return Err(format!(
                    "{}: `{}` {} `{}` rep {} was already recorded at `{p}` line {l}; each run belongs to one `runs` file, once",
                    at(None),
                    record.backend,
                    record.mode,
                    record.scenario,
                    record.rep
                ));
            }
            n += 1;
            records.push(Located { path: path.to_string(), line: i + 1, record });
        }
        inputs.push(artifact::Input { path: path.to_string(), records: n, ok, degraded: n - ok });
    }
    Ok((records, inputs))
}

// ---------------------------------------------------------------------------------------
// Grouping and rows
// ---------------------------------------------------------------------------------------

/// The records, grouped: modes in [`MODES`] order (others after, by name), the baseline
/// first among backends and the rest by name, scenarios in the order they first appear.
struct Data<'a> {
    /// Backend → (provider, precision).
    backends: Vec<(String, (String, String))>,
    modes: Vec<String>,
    scenarios: Vec<String>,
    /// (backend, mode) → scenario → records.
    groups: BTreeMap<(String, String), BTreeMap<String, Vec<&'a RunRecord>>>,
}

impl<'a> Data<'a> {
    fn group(records: &'a [Located], baseline: Option<&str>) -> Result<Data<'a>, String> {
        let mut declared: BTreeMap<String, (String, String, &Located)> = BTreeMap::new();
        let mut modes: Vec<String> = Vec::new();
        let mut scenarios: Vec<String> = Vec::new();
        let mut groups: BTreeMap<(String, String), BTreeMap<String, Vec<&RunRecord>>> = BTreeMap::new();
        for loc in records {
            let r = &loc.record;
            match declared.get(&r.backend) {
                Some((provider, precision, first)) if (provider, precision) != (&r.provider, &r.precision) => {
                    return Err(format!(
                        "{}: backend `{}` has provider `{}` and precision `{}`, but {} says `{provider}` and `{precision}`",
                        loc.at(),
                        r.backend,
                        r.provider,
                        r.precision,
                        first.at()
                    ));
                }
                Some(_) => {}
                None => {
                    declared.insert(r.backend.clone(), (r.provider.clone(), r.precision.clone(), loc));
                }
            }
            if !modes.contains(&r.mode) {
                modes.push(r.mode.clone());
            }
            if !scenarios.contains(&r.scenario) {
                scenarios.push(r.scenario.clone());
            }
            groups.entry((r.backend.clone(), r.mode.clone())).or_default().entry(r.scenario.clone()).or_default().push(r);
        }
        modes.sort_by_key(|m| (MODES.iter().position(|k| k == m).unwrap_or(MODES.len()), m.clone()));
        let mut backends: Vec<(String, (String, String))> = declared.into_iter().map(|(b, (p, q, _))| (b, (p, q))).collect();
        backends.sort_by_key(|(b, _)| Some(b.as_str()) != baseline);
        Ok(Data { backends, modes, scenarios, groups })
    }

    /// The records of `backend` in `mode` and `scenario` ([`OVERALL`]: every scenario).
    fn records(&self, backend: &str, mode: &str, scenario: &str) -> Vec<&'a RunRecord> {
        let Some(by_scenario) = self.groups.get(&(backend.to_string(), mode.to_string())) else { return Vec::new() };
        if scenario == OVERALL {
            // In scenario order, so the pooled sample does not depend on map order.
            self.scenarios.iter().filter_map(|s| by_scenario.get(s)).flatten().copied().collect()
        } else {
            by_scenario.get(scenario).cloned().unwrap_or_default()
        }
    }

    fn summary_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for (backend, (provider, precision)) in &self.backends {
            for mode in &self.modes {
                let Some(by_scenario) = self.groups.get(&(backend.clone(), mode.clone())) else { continue };
                let present = self.scenarios.iter().filter(|s| by_scenario.contains_key(*s));
                for scenario in present.map(String::as_str).chain([OVERALL]) {
                    let records = self.records(backend, mode, scenario);
                    let shape = (scenario != OVERALL).then(|| &records[0]);
                    let mut row = Row::default();
                    row.str("backend", backend);
                    row.str("provider", provider);
                    row.str("precision", precision);
                    row.str("mode", mode);
                    row.str("scenario", scenario);
                    row.int("batch", shape.map(|r| r.batch));
                    row.int("prompt_tokens", shape.map(|r| r.prompt_tokens));
                    row.int("new_tokens", shape.map(|r| r.new_tokens));
                    summary_numbers(&mut row, &records);
                    rows.push(row);
                }
            }
        }
        rows
    }

    fn comparison_rows(&self, baseline: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        for mode in &self.modes {
            for scenario in self.scenarios.iter().map(String::as_str).chain([OVERALL]) {
                let base = self.records(baseline, mode, scenario);
                for (backend, _) in self.backends.iter().filter(|(b, _)| b != baseline) {
                    let other = self.records(backend, mode, scenario);
                    if other.is_empty() {
                        continue;
                    }
                    let mut notes = Vec::new();
                    let (mix_base, mix_other) = (scenario_mix(&base), scenario_mix(&other));
                    if scenario == OVERALL && !mix_base.is_empty() && !mix_other.is_empty() {
                        let names = |mix: &[(String, usize)]| mix.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>();
                        if names(&mix_base) != names(&mix_other) {
                            notes.push("pooled over different scenarios on each side".to_string());
                        } else if mix_base != mix_other {
                            notes.push("pooled over different numbers of runs per scenario on each side".to_string());
                        }
                    }
                    rows.push(comparison(mode, scenario, backend, baseline, &base, &other, notes));
                }
            }
        }
        rows
    }

    fn degraded(&self) -> Vec<artifact::Degraded> {
        let mut out = Vec::new();
        for (backend, _) in &self.backends {
            for mode in &self.modes {
                let records = self.records(backend, mode, OVERALL);
                let reasons = reasons(&records);
                if reasons.is_empty() {
                    continue;
                }
                out.push(artifact::Degraded {
                    backend: backend.clone(),
                    mode: mode.clone(),
                    n_degraded: records.iter().filter(|r| !r.is_ok()).count(),
                    n_total: records.len(),
                    reasons: reasons.into_iter().map(|(reason, count)| artifact::Reason { reason, count }).collect(),
                });
            }
        }
        out
    }
}

/// The scenarios with ok runs among `records`, sorted, with their ok-run counts.
fn scenario_mix(records: &[&RunRecord]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r.is_ok()) {
        *counts.entry(r.scenario.clone()).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Distinct degraded reasons with their counts, most frequent first, then by text.
fn reasons(records: &[&RunRecord]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.is_ok()) {
        *counts.entry(r.reason.clone().unwrap_or_else(|| "no reason given".into())).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Values of `f` over the `ok` records that have one.
fn ok_values(records: &[&RunRecord], f: impl Fn(&RunRecord) -> Option<f64>) -> Vec<f64> {
    records.iter().filter(|r| r.is_ok()).filter_map(|r| f(r)).collect()
}

fn summary_numbers(row: &mut Row, records: &[&RunRecord]) {
    let n_ok = records.iter().filter(|r| r.is_ok()).count();
    row.int("n_ok", Some(n_ok));
    row.int("n_total", Some(records.len()));
    row.num("degraded_rate", Some((records.len() - n_ok) as f64 / records.len() as f64));

    let latency = stats::summarize(&ok_values(records, |r| r.latency_ms));
    let lat = latency.as_ref();
    row.num("latency_mean_ms", lat.map(|s| s.mean));
    row.num("latency_ci95_lo_ms", lo(lat));
    row.num("latency_ci95_hi_ms", hi(lat));
    row.num("latency_median_ms", lat.map(|s| s.median));
    row.num("latency_p90_ms", lat.map(|s| s.p90));
    row.num("latency_p99_ms", lat.map(|s| s.p99));
    row.num("latency_std_ms", lat.and_then(|s| s.std));
    row.num("latency_min_ms", lat.map(|s| s.min));
    row.num("latency_max_ms", lat.map(|s| s.max));

    let throughput = stats::summarize(&ok_values(records, |r| r.throughput));
    row.num("throughput_mean", throughput.as_ref().map(|s| s.mean));
    row.num("throughput_ci95_lo", lo(throughput.as_ref()));
    row.num("throughput_ci95_hi", hi(throughput.as_ref()));

    let ttft = stats::summarize(&ok_values(records, |r| r.ttft_ms));
    row.num("ttft_mean_ms", ttft.as_ref().map(|s| s.mean));
    row.num("ttft_median_ms", ttft.as_ref().map(|s| s.median));
    row.num("ttft_ci95_lo_ms", lo(ttft.as_ref()));
    row.num("ttft_ci95_hi_ms", hi(ttft.as_ref()));

    let tpot = stats::summarize(&ok_values(records, |r| r.tpot_ms));
    row.num("tpot_mean_ms", tpot.as_ref().map(|s| s.mean));
    row.num("tpot_ci95_lo_ms", lo(tpot.as_ref()));
    row.num("tpot_ci95_hi_ms", hi(tpot.as_ref()));

    let mean_of = |f: fn(&RunRecord) -> Option<f64>| {
        let v = ok_values(records, f);
        (!v.is_empty()).then(|| stats::mean(&v))
    };
    row.num("rss_peak_mib", mean_of(|r| r.resources.rss_peak_mib));
    row.num("cpu_util", mean_of(|r| r.resources.cpu_util));
    row.num("gpu_power_mean_w", mean_of(|r| r.resources.gpu_power_mean_w));
    row.num("gpu_power_peak_w", mean_of(|r| r.resources.gpu_power_peak_w));
    row.num("gpu_mem_peak_mib", mean_of(|r| r.resources.gpu_mem_peak_mib));

    let text: Vec<String> = reasons(records).into_iter().map(|(reason, count)| format!("{reason} ({count})")).collect();
    row.str("reasons", &text.join("; "));
}

fn lo(s: Option<&Summary>) -> Option<f64> {
    s.and_then(|s| s.ci95).map(|c| c.lo)
}

fn hi(s: Option<&Summary>) -> Option<f64> {
    s.and_then(|s| s.ci95).map(|c| c.hi)
}

/// One comparison row, before Holm: `p_holm` and `significant` are filled by [`adjust`].
fn comparison(mode: &str, scenario: &str, backend: &str, baseline: &str, base: &[&RunRecord], other: &[&RunRecord], mut notes: Vec<String>) -> Row {
    let (base_lat, lat) = (ok_values(base, |r| r.latency_ms), ok_values(other, |r| r.latency_ms));
    let (base_tp, tp) = (ok_values(base, |r| r.throughput), ok_values(other, |r| r.throughput));
    let mean = |v: &[f64]| (!v.is_empty()).then(|| stats::mean(v));
    let (base_lat_mean, lat_mean) = (mean(&base_lat), mean(&lat));
    let (base_tp_mean, tp_mean) = (mean(&base_tp), mean(&tp));
    let pct = |b: Option<f64>, x: Option<f64>| stats::pct_change(b?, x?);

    let mut welch = None;
    if base.is_empty() {
        notes.insert(0, format!("baseline has no `{mode}` runs in this scenario"));
    } else if base_lat.is_empty() {
        notes.insert(0, "baseline has no ok runs".into());
    } else if lat.is_empty() {
        notes.insert(0, format!("`{backend}` has no ok runs"));
    } else {
        let w = stats::welch(&lat, &base_lat);
        if let Some(n) = &w.note {
            notes.insert(0, format!("Welch's test undefined: {n}"));
        }
        welch = Some(w);
    }
    let cohens_d = welch.as_ref().and_then(|_| stats::cohens_d(&lat, &base_lat));

    let mut row = Row::default();
    row.str("mode", mode);
    row.str("scenario", scenario);
    row.str("backend", backend);
    row.str("baseline", baseline);
    row.int("n_baseline", Some(base_lat.len()));
    row.int("n_backend", Some(lat.len()));
    row.num("baseline_latency_mean_ms", base_lat_mean);
    row.num("latency_mean_ms", lat_mean);
    row.num("latency_pct_change", pct(base_lat_mean, lat_mean));
    row.num("baseline_throughput_mean", base_tp_mean);
    row.num("throughput_mean", tp_mean);
    row.num("throughput_pct_change", pct(base_tp_mean, tp_mean));
    row.num("welch_t", welch.as_ref().and_then(|w| w.t));
    row.num("welch_df", welch.as_ref().and_then(|w| w.df));
    row.num("p", welch.as_ref().and_then(|w| w.p));
    row.num("p_holm", None);
    row.num("cohens_d", cohens_d);
    row.str("significant", "n/a");
    row.str("note", &notes.join("; "));
    row
}

/// Holm over every comparison's `p`, and each row's verdict at `alpha`.
fn adjust(rows: &mut [Row], alpha: f64) {
    let p: Vec<Option<f64>> = rows.iter().map(|r| r.num_of("p")).collect();
    for (row, adjusted) in rows.iter_mut().zip(stats::holm(&p)) {
        row.num("p_holm", adjusted);
        let verdict = match adjusted {
            Some(q) if q <= alpha => "yes",
            Some(_) => "no",
            None => "n/a",
        };
        row.str("significant", verdict);
    }
}

// ---------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------

/// A cell: text, a count, or a number that may be undefined.
#[derive(Debug, Clone)]
enum Cell {
    Str(String),
    Int(Option<usize>),
    Num(Option<f64>),
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Cell::Str(s) => csv_field(s),
            Cell::Int(n) => n.map_or(String::new(), |n| n.to_string()),
            Cell::Num(x) => x.filter(|x| x.is_finite()).map_or(String::new(), number),
        }
    }

    fn json(&self) -> Value {
        match self {
            Cell::Str(s) => Value::String(s.clone()),
            Cell::Int(n) => n.map_or(Value::Null, Value::from),
            Cell::Num(x) => x.filter(|x| x.is_finite()).map_or(Value::Null, Value::from),
        }
    }
}

/// The shortest text that reads back as `x`, in exponent form outside `[1e-4, 1e16)` as
/// Python's `repr` does: a p-value of 1e-200 stays short, and pandas reads either form.
fn number(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) { format!("{x:e}") } else { format!("{x}") }
}

/// A table row: cells by column, in insertion order; setting a column again replaces it.
#[derive(Debug, Default)]
struct Row(Vec<(&'static str, Cell)>);

impl Row {
    fn set(&mut self, column: &'static str, cell: Cell) {
        match self.0.iter_mut().find(|(c, _)| *c == column) {
            Some(slot) => slot.1 = cell,
            None => self.0.push((column, cell)),
        }
    }

    fn str(&mut self, column: &'static str, s: &str) {
        self.set(column, Cell::Str(s.to_string()));
    }

    fn int(&mut self, column: &'static str, n: Option<usize>) {
        self.set(column, Cell::Int(n));
    }

    fn num(&mut self, column: &'static str, x: Option<f64>) {
        self.set(column, Cell::Num(x));
    }

    fn cell(&self, column: &str) -> Option<&Cell> {
        self.0.iter().find(|(c, _)| *c == column).map(|(_, cell)| cell)
    }

    fn num_of(&self, column: &str) -> Option<f64> {
        match self.cell(column) {
            Some(Cell::Num(x)) => *x,
            _ => None,
        }
    }

    /// The CSV text of `column`, for the log.
    fn get(&self, column: &str) -> String {
        self.cell(column).map_or(String::new(), Cell::csv)
    }

    /// The cells in `columns` order; a row must have exactly those columns.
    fn ordered(&self, columns: &[&str]) -> Result<Vec<&Cell>, String> {
        let names: Vec<&str> = self.0.iter().map(|(c, _)| *c).collect();
        if names.len() != columns.len() || columns.iter().any(|c| !names.contains(c)) {
            return Err(format!("internal: a row has columns {names:?}, the table {columns:?}"));
        }
        Ok(columns.iter().filter_map(|c| self.cell(c)).collect())
    }
}

fn table(columns: &[&str], rows: &[Row]) -> artifact::Table {
    let rows: Vec<Map<String, Value>> = rows
        .iter()
        .map(|r| {
            let mut m = Map::new();
            for column in columns {
                m.insert(column.to_string(), r.cell(column).map_or(Value::Null, Cell::json));
            }
            m
        })
        .collect();
    artifact::Table { columns: columns.iter().map(|c| c.to_string()).collect(), rows }
}

/// Writes the header even without rows, so an empty table still says what it would hold.
fn write_csv(path: &Path, columns: &[&str], rows: &[Row]) -> Result<(), String> {
    let mut text = columns.join(",");
    text.push('\n');
    for row in rows {
        let cells = row.ordered(columns)?;
        text.push_str(&cells.iter().map(|c| c.csv()).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("writing `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(backend: &str, scenario: &str, rep: usize, latency: Option<f64>) -> RunRecord {
        RunRecord {
            backend: backend.into(),
            provider: "cpu".into(),
            precision: "fp32".into(),
            mode: "prefill".into(),
            scenario: scenario.into(),
            batch: 1,
            prompt_tokens: 8,
            new_tokens: 0,
            rep,
            status: if latency.is_some() { "ok" } else { "degraded" }.into(),
            reason: latency.is_none().then(|| "no CUDA provider".into()),
            latency_ms: latency,
            ttft_ms: None,
            tpot_ms: None,
            tokens: 8,
            throughput: latency.map(|l| 8000.0 / l),
            output_digest: None,
            resources: Default::default(),
            env: Default::default(),
        }
    }

    #[test]
    fn numbers_read_back_exactly_and_stay_short_at_any_magnitude() {
        for (x, text) in
            [(0.0, "0"), (1.5, "1.5"), (-22.175, "-22.175"), (1e-4, "0.0001"), (2.787140340225026e-218, "2.787140340225026e-218"), (3.2e20, "3.2e20")]
        {
            assert_eq!(number(x), text);
            assert_eq!(text.parse::<f64>().unwrap(), x);
        }
    }

    #[test]
    fn rows_have_exactly_the_documented_columns() {
        let located: Vec<Located> = [record("a", "s", 0, Some(1.0)), record("a", "s", 1, Some(2.0)), record("b", "s", 0, None)]
            .into_iter()
            .enumerate()
            .map(|(i, record)| Located { path: "runs.jsonl".into(), line: i + 1, record })
            .collect();
        let data = Data::group(&located, Some("a")).unwrap();
        for row in data.summary_rows() {
            row.ordered(SUMMARY_COLUMNS).unwrap();
        }
        let comparisons = data.comparison_rows("a");
        assert_eq!(comparisons.len(), 2);
        for row in &comparisons {
            row.ordered(COMPARISON_COLUMNS).unwrap();
        }
    }
}
