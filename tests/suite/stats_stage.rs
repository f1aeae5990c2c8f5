//! The `stats` stage end to end: run records written here are fanned in from `sweep` nodes
//! (plain `cmd` stages copying them) and summarised by the real binary.
//!
//! | check                                              | against                                          |
//! |----------------------------------------------------|--------------------------------------------------|
//! | means, std, CI95, throughput and resource means    | plain loops here; the CI with scipy's `t.ppf` from the fixture |
//! | percentiles                                        | `numpy.percentile` (the fixture sample is the latencies) |
//! | Welch's t, df, p of a comparison                   | `scipy.stats.ttest_ind(equal_var=False)` of the same fixture samples |
//! | Holm across every comparison of the document       | a naive step-down here                           |
//! | a backend with only degraded runs                  | rows with `n_ok = 0`, `degraded_rate = 1`, empty numbers, its reasons |
//! | the `reasons` column                               | counts of the records written                    |
//! | a degraded-only baseline; a missing baseline       | notes without p and a degraded node; an error naming the backends found |
//! | a malformed line                                   | an error naming the file and the line            |
//! | bad fields                                         | diagnostics naming the field                     |
//! | every CSV cell                                     | never `NaN`, `None`, `inf`, `null`               |
//!
//! The fixture is `tests/fixtures/stats/expected.json`; `tests/suite/stats.rs` says how it is made.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::support;
use crate::support::workspace::Workspace;
use serde_json::Value;
use tr118::measure::{Resources, RunRecord};

const REL_TOL: f64 = 1e-9;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stats/expected.json");
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn sample(fx: &Value, name: &str) -> Vec<f64> {
    fx["samples"][name].as_array().unwrap_or_else(|| panic!("no sample `{name}`")).iter().map(|v| v.as_f64().unwrap()).collect()
}

#[track_caller]
fn close(what: &str, got: f64, want: f64) {
    let err = if want == 0.0 { got.abs() } else { ((got - want) / want).abs() };
    assert!(err <= REL_TOL, "{what}: got {got:e}, want {want:e} (relative error {err:e})");
}

// ---------------------------------------------------------------------------------------
// Records and workspaces
// ---------------------------------------------------------------------------------------

const TOKENS: usize = 64;

fn base(backend: &str, mode: &str, scenario: &str, rep: usize) -> RunRecord {
    let generate = mode != "prefill";
    RunRecord {
        backend: backend.into(),
        provider: if backend == "gpu" { "cuda" } else { "cpu" }.into(),
        precision: "fp32".into(),
        mode: mode.into(),
        scenario: scenario.into(),
        batch: 1,
        prompt_tokens: if scenario == "long" { 128 } else { 64 },
        new_tokens: if generate { 16 } else { 0 },
        rep,
        status: "ok".into(),
        reason: None,
        latency_ms: None,
        ttft_ms: None,
        tpot_ms: None,
        tokens: TOKENS,
        throughput: None,
        output_digest: None,
        resources: Resources::default(),
        env: Default::default(),
    }
}

/// An ok run: throughput from the latency, `ttft = latency / 4` in generate modes, an RSS
/// peak that moves with the repetition and a CPU utilisation; no GPU readings.
fn ok(backend: &str, mode: &str, scenario: &str, rep: usize, latency: f64) -> RunRecord {
    let mut r = base(backend, mode, scenario, rep);
    r.latency_ms = Some(latency);
    r.throughput = Some(TOKENS as f64 / (latency / 1000.0));
    if mode != "prefill" {
        r.ttft_ms = Some(latency / 4.0);
        r.tpot_ms = Some((latency - latency / 4.0) / 15.0);
    }
    r.resources = Resources { samples: 2, rss_peak_mib: Some(100.0 + rep as f64), cpu_util: Some(1.5), ..Resources::default() };
    r
}

fn degraded(backend: &str, mode: &str, scenario: &str, rep: usize, reason: Option<&str>) -> RunRecord {
    let mut r = base(backend, mode, scenario, rep);
    r.status = "degraded".into();
    r.reason = reason.map(str::to_string);
    r
}

fn jsonl(records: &[RunRecord]) -> String {
    records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
}

/// The fixture sample each (backend, mode, scenario)'s latencies are, so that the
/// comparisons have scipy's answers: `fast` is Welch's `a`, the baseline `cpu` its `b`.
const LATENCIES: &[((&str, &str, &str), &str)] = &[
    (("cpu", "prefill", "short"), "large_shifted"),
    (("fast", "prefill", "short"), "large_normal"),
    (("cpu", "prefill", "long"), "wide_large"),
    (("fast", "prefill", "long"), "tight_small"),
    (("cpu", "generate", "short"), "outlier"),
    (("fast", "generate", "short"), "pair"),
];

/// The study's records by (backend, mode): `cpu` and `fast` from [`LATENCIES`]; `gpu` only
/// degraded; `mixed` with some ok runs and two degraded reasons.
fn study(fx: &Value) -> BTreeMap<(String, String), Vec<RunRecord>> {
    let mut files: BTreeMap<(String, String), Vec<RunRecord>> = BTreeMap::new();
    for &((backend, mode, scenario), name) in LATENCIES {
        let file = files.entry((backend.into(), mode.into())).or_default();
        file.extend(sample(fx, name).iter().enumerate().map(|(rep, &x)| ok(backend, mode, scenario, rep, x)));
    }
    for mode in ["prefill", "generate"] {
        let scenarios: &[&str] = if mode == "prefill" { &["short", "long"] } else { &["short"] };
        let file = files.entry(("gpu".into(), mode.into())).or_default();
        for scenario in scenarios {
            file.extend((0..3).map(|rep| degraded("gpu", mode, scenario, rep, Some("no CUDA provider"))));
        }
    }
    let mixed = files.entry(("mixed".into(), "prefill".into())).or_default();
    mixed.extend([20.0, 22.0, 21.0, 25.0].iter().enumerate().map(|(rep, &x)| ok("mixed", "prefill", "short", rep, x)));
    mixed.extend((4..7).map(|rep| degraded("mixed", "prefill", "short", rep, Some("out of memory"))));
    mixed.push(degraded("mixed", "prefill", "short", 7, None));
    files
}

/// A workspace whose `sweep/<backend>/<mode>` nodes copy `data/<backend>-<mode>.jsonl` to
/// their `runs.jsonl`, and whose `stats` node fans them in by a glob. `stats_fields` go into
/// the `stats` table.
fn workspace(files: &BTreeMap<(String, String), Vec<RunRecord>>, stats_fields: &str) -> Workspace {
    let ws = Workspace::new("tr118-stats-");
    for ((backend, mode), records) in files {
        ws.write(&format!("data/{backend}-{mode}.jsonl"), jsonl(records));
    }
    let backends: BTreeSet<&str> = files.keys().map(|(b, _)| b.as_str()).collect();
    let axis: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let mut toml = format!("[axes]\nbackend = [{}]\n\n", axis.join(", "));
    toml.push_str(
        "[stages.sweep]\nmatrix = { backend = \"backend\", mode = [\"prefill\", \"generate\"] }\n\
         cmd = [\"cp\", \"{deps.src}\", \"{outs.runs}\"]\n\
         deps = { src = \"data/{matrix.backend}-{matrix.mode}.jsonl\" }\nouts = { runs = \"runs.jsonl\" }\n\n",
    );
    toml.push_str(&format!("[stages.stats]\nkind = \"stats\"\ndeps = {{ runs = \"out/sweep/*/*/runs.jsonl\" }}\n{stats_fields}"));
    ws.pipeline(&toml);
    // Every backend × mode node needs its file; a backend without a mode gets an empty one.
    for b in backends {
        for mode in ["prefill", "generate"] {
            if !ws.path(&format!("data/{b}-{mode}.jsonl")).exists() {
                ws.write(&format!("data/{b}-{mode}.jsonl"), "");
            }
        }
    }
    ws
}

// ---------------------------------------------------------------------------------------
// Reading the outputs
// ---------------------------------------------------------------------------------------

/// Rows of a CSV as column → text.
fn csv_rows(ws: &Workspace, rel: &str) -> Vec<BTreeMap<String, String>> {
    support::csv_rows(&String::from_utf8(ws.read(rel)).unwrap()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[track_caller]
fn no_cell_is_a_non_number(ws: &Workspace, rel: &str) {
    for row in csv_rows(ws, rel) {
        for (column, cell) in &row {
            let lower = cell.trim().to_ascii_lowercase();
            let bad = ["nan", "none", "null", "inf", "-inf", "+inf", "infinity", "-infinity"].contains(&lower.as_str());
            assert!(!bad && !cell.contains("NaN"), "{rel}: column `{column}` reads {cell:?} in {row:?}");
        }
    }
}

/// The row of `table` (`summary` / `comparisons` in stats.json) matching every `(column, value)`.
fn row<'a>(doc: &'a Value, table: &str, keys: &[(&str, &str)]) -> &'a Value {
    let rows = doc[table]["rows"].as_array().unwrap();
    let found: Vec<&Value> = rows.iter().filter(|r| keys.iter().all(|(k, v)| r[*k] == *v)).collect();
    assert_eq!(found.len(), 1, "{table}: rows matching {keys:?}: {found:?}");
    found[0]
}

fn num(row: &Value, column: &str) -> f64 {
    row[column].as_f64().unwrap_or_else(|| panic!("`{column}` is not a number in {row}"))
}

fn naive_mean(xs: &[f64]) -> f64 {
    let mut s = 0.0;
    for x in xs {
        s += x;
    }
    s / xs.len() as f64
}

fn naive_std(xs: &[f64]) -> f64 {
    let m = naive_mean(xs);
    let mut ss = 0.0;
    for x in xs {
        ss += (x - m) * (x - m);
    }
    (ss / (xs.len() - 1) as f64).sqrt()
}

/// Holm's adjustment written out: sort, multiply by the number of hypotheses left, carry the
/// running maximum, cap at 1.
fn naive_holm(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| p[i].is_some()).collect();
    idx.sort_by(|&a, &b| p[a].unwrap().partial_cmp(&p[b].unwrap()).unwrap());
    let m = idx.len();
    let mut out = vec![None; p.len()];
    let mut prev = 0.0_f64;
    for (k, &i) in idx.iter().enumerate() {
        let mut v = (m - k) as f64 * p[i].unwrap();
        if v > 1.0 {
            v = 1.0;
        }
        if v < prev {
            v = prev;
        }
        prev = v;
        out[i] = Some(v);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn summaries_and_comparisons_match_naive_loops_numpy_and_scipy() {
    let fx = fixture();
    let files = study(&fx);
    let ws = workspace(&files, "baseline = \"cpu\"\nalpha = 0.05\n");
    let m = ws.make_ok();
    assert_eq!(m.status("stats"), "ok", "{}", m.run);
    let doc = ws.json("out/stats/stats.json");
    assert_eq!(doc["baseline"], "cpu");
    assert_eq!(doc["alpha"].as_f64(), Some(0.05));
    assert_eq!(doc["inputs"].as_array().unwrap().len(), 8, "one input per sweep node: {}", doc["inputs"]);

    // One scenario's row against the fixture sample it was built from.
    for &((backend, mode, scenario), name) in LATENCIES {
        let xs = sample(&fx, name);
        let want = &fx["summaries"][name];
        let r = row(&doc, "summary", &[("backend", backend), ("mode", mode), ("scenario", scenario)]);
        let at = |c: &str| format!("{backend}/{mode}/{scenario}.{c}");
        assert_eq!(r["n_ok"].as_u64(), Some(xs.len() as u64));
        assert_eq!(r["n_total"].as_u64(), Some(xs.len() as u64));
        assert_eq!(r["degraded_rate"].as_f64(), Some(0.0));
        close(&at("latency_mean_ms"), num(r, "latency_mean_ms"), naive_mean(&xs));
        close(&at("latency_std_ms"), num(r, "latency_std_ms"), naive_std(&xs));
        let half = want["t_crit"].as_f64().unwrap() * naive_std(&xs) / (xs.len() as f64).sqrt();
        close(&at("latency_ci95_lo_ms"), num(r, "latency_ci95_lo_ms"), naive_mean(&xs) - half);
        close(&at("latency_ci95_hi_ms"), num(r, "latency_ci95_hi_ms"), naive_mean(&xs) + half);
        for (column, key) in
            [("latency_median_ms", "median"), ("latency_p90_ms", "p90"), ("latency_p99_ms", "p99"), ("latency_min_ms", "min"), ("latency_max_ms", "max")]
        {
            close(&at(column), num(r, column), want[key].as_f64().unwrap());
        }
        let throughput: Vec<f64> = xs.iter().map(|x| TOKENS as f64 / (x / 1000.0)).collect();
        close(&at("throughput_mean"), num(r, "throughput_mean"), naive_mean(&throughput));
        let reps: Vec<f64> = (0..xs.len()).map(|i| 100.0 + i as f64).collect();
        close(&at("rss_peak_mib"), num(r, "rss_peak_mib"), naive_mean(&reps));
        close(&at("cpu_util"), num(r, "cpu_util"), 1.5);
        assert!(r["gpu_power_mean_w"].is_null() && r["gpu_mem_peak_mib"].is_null(), "no GPU readings: {r}");
        if mode == "generate" {
            let ttft: Vec<f64> = xs.iter().map(|x| x / 4.0).collect();
            close(&at("ttft_mean_ms"), num(r, "ttft_mean_ms"), naive_mean(&ttft));
            let tpot: Vec<f64> = xs.iter().map(|x| (x - x / 4.0) / 15.0).collect();
            close(&at("tpot_mean_ms"), num(r, "tpot_mean_ms"), naive_mean(&tpot));
        } else {
            assert!(r["ttft_mean_ms"].is_null() && r["tpot_mean_ms"].is_null(), "prefill has no ttft: {r}");
        }
        assert_eq!(r["reasons"], "");
    }

    // `overall` pools the scenarios' ok runs.
    let pooled: Vec<f64> = [sample(&fx, "large_normal"), sample(&fx, "tight_small")].concat();
    let overall = row(&doc, "summary", &[("backend", "fast"), ("mode", "prefill"), ("scenario", "overall")]);
    assert_eq!(overall["n_ok"].as_u64(), Some(pooled.len() as u64));
    assert!(overall["batch"].is_null(), "{overall}");
    close("fast/prefill/overall mean", num(overall, "latency_mean_ms"), naive_mean(&pooled));
    close("fast/prefill/overall std", num(overall, "latency_std_ms"), naive_std(&pooled));

    // The comparisons built from fixture pairs carry scipy's Welch answers: `fast` is `a`.
    let welch = |a: &str, b: &str| fx["welch"].as_array().unwrap().iter().find(|w| w["a"] == a && w["b"] == b).unwrap().clone();
    for (mode, scenario, a, b) in
        [("prefill", "short", "large_normal", "large_shifted"), ("prefill", "long", "tight_small", "wide_large"), ("generate", "short", "pair", "outlier")]
    {
        let want = welch(a, b);
        let r = row(&doc, "comparisons", &[("mode", mode), ("scenario", scenario), ("backend", "fast")]);
        let at = |c: &str| format!("fast/{mode}/{scenario}.{c}");
        close(&at("welch_t"), num(r, "welch_t"), want["t"].as_f64().unwrap());
        close(&at("welch_df"), num(r, "welch_df"), want["df"].as_f64().unwrap());
        close(&at("p"), num(r, "p"), want["p"].as_f64().unwrap());
        let d = fx["cohens_d"].as_array().unwrap().iter().find(|w| w["a"] == a && w["b"] == b).unwrap()["d"].as_f64().unwrap();
        close(&at("cohens_d"), num(r, "cohens_d"), d);
        let (base, x) = (naive_mean(&sample(&fx, b)), naive_mean(&sample(&fx, a)));
        close(&at("latency_pct_change"), num(r, "latency_pct_change"), 100.0 * (x - base) / base);
        assert_eq!(r["baseline"], "cpu");
    }

    // Holm runs over every comparison of the document, whatever its mode or scenario.
    let comparisons = doc["comparisons"]["rows"].as_array().unwrap();
    let p: Vec<Option<f64>> = comparisons.iter().map(|r| r["p"].as_f64()).collect();
    assert!(p.iter().flatten().count() >= 5, "{p:?}");
    for (r, want) in comparisons.iter().zip(naive_holm(&p)) {
        match want {
            Some(w) => {
                close(&format!("p_holm of {r}"), num(r, "p_holm"), w);
                assert_eq!(r["significant"], if w <= 0.05 { "yes" } else { "no" }, "{r}");
            }
            None => {
                assert!(r["p_holm"].is_null(), "{r}");
                assert_eq!(r["significant"], "n/a", "{r}");
                assert!(!r["note"].as_str().unwrap().is_empty(), "a comparison without p says why: {r}");
            }
        }
    }
    let short = row(&doc, "comparisons", &[("mode", "prefill"), ("scenario", "short"), ("backend", "fast")]);
    assert!(num(short, "p_holm") > num(short, "p"), "adjusted across the document, not within one mode: {short}");

    let csv = csv_rows(&ws, "out/stats/comparisons.csv");
    let p_cell = &csv.iter().find(|r| r["mode"] == "prefill" && r["scenario"] == "short" && r["backend"] == "fast").unwrap()["p"];
    assert!(p_cell.ends_with("e-218") && p_cell.len() < 30, "a tiny p-value in exponent form: {p_cell}");
    let overall = row(&doc, "comparisons", &[("mode", "prefill"), ("scenario", "overall"), ("backend", "fast")]);
    assert_eq!(overall["note"], "pooled over different numbers of runs per scenario on each side");

    // The CSVs hold the same numbers as the JSON, and never a non-number.
    for (table, rel) in [("summary", "out/stats/summary.csv"), ("comparisons", "out/stats/comparisons.csv")] {
        no_cell_is_a_non_number(&ws, rel);
        let csv = csv_rows(&ws, rel);
        let json = doc[table]["rows"].as_array().unwrap();
        assert_eq!(csv.len(), json.len(), "{rel}");
        let columns: Vec<&str> = doc[table]["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        assert_eq!(csv[0].len(), columns.len());
        for (c, j) in csv.iter().zip(json) {
            for column in &columns {
                let (cell, value) = (&c[*column], &j[*column]);
                match value {
                    Value::Null => assert_eq!(cell, "", "{rel} `{column}`"),
                    // serde_json's default float parsing may be one ulp off the exact value.
                    Value::Number(n) => close(&format!("{rel} `{column}`"), cell.parse().unwrap(), n.as_f64().unwrap()),
                    Value::String(s) => assert_eq!(cell, s, "{rel} `{column}`"),
                    other => panic!("{rel} `{column}`: {other}"),
                }
            }
        }
    }
}

#[test]
fn a_backend_with_only_degraded_runs_has_rows_with_empty_numbers_and_its_reasons() {
    let fx = fixture();
    let ws = workspace(&study(&fx), "baseline = \"cpu\"\n");
    ws.make_ok();
    let doc = ws.json("out/stats/stats.json");
    for (mode, scenario, n) in
        [("prefill", "short", 3), ("prefill", "long", 3), ("prefill", "overall", 6), ("generate", "short", 3), ("generate", "overall", 3)]
    {
        let r = row(&doc, "summary", &[("backend", "gpu"), ("mode", mode), ("scenario", scenario)]);
        assert_eq!(r["provider"], "cuda");
        assert_eq!(r["n_ok"].as_u64(), Some(0), "{r}");
        assert_eq!(r["n_total"].as_u64(), Some(n), "{r}");
        assert_eq!(r["degraded_rate"].as_f64(), Some(1.0), "{r}");
        for column in ["latency_mean_ms", "latency_ci95_lo_ms", "latency_median_ms", "latency_std_ms", "throughput_mean", "ttft_mean_ms", "rss_peak_mib"] {
            assert!(r[column].is_null(), "`{column}` of a degraded-only row: {r}");
        }
        assert_eq!(r["reasons"], format!("no CUDA provider ({n})"));
        let c = row(&doc, "comparisons", &[("backend", "gpu"), ("mode", mode), ("scenario", scenario)]);
        assert!(c["p"].is_null() && c["welch_t"].is_null(), "{c}");
        assert_eq!(c["note"], "`gpu` has no ok runs");
    }
    let summary = csv_rows(&ws, "out/stats/summary.csv");
    let gpu = summary.iter().find(|r| r["backend"] == "gpu" && r["mode"] == "prefill" && r["scenario"] == "overall").unwrap();
    assert_eq!((gpu["n_ok"].as_str(), gpu["degraded_rate"].as_str(), gpu["latency_mean_ms"].as_str()), ("0", "1", ""));
    assert_eq!(gpu["reasons"], "no CUDA provider (6)");

    // Mixed: the reasons are counted, most frequent first, a missing reason named as such.
    let mixed = row(&doc, "summary", &[("backend", "mixed"), ("mode", "prefill"), ("scenario", "short")]);
    assert_eq!(mixed["reasons"], "out of memory (3); no reason given (1)");
    assert_eq!((mixed["n_ok"].as_u64(), mixed["n_total"].as_u64(), mixed["degraded_rate"].as_f64()), (Some(4), Some(8), Some(0.5)));
    close("mixed mean", num(mixed, "latency_mean_ms"), naive_mean(&[20.0, 22.0, 21.0, 25.0]));
    let degraded = doc["degraded"].as_array().unwrap();
    let entry = degraded.iter().find(|d| d["backend"] == "mixed").unwrap();
    assert_eq!(entry["reasons"], serde_json::json!([{ "reason": "out of memory", "count": 3 }, { "reason": "no reason given", "count": 1 }]));
    assert_eq!(degraded.len(), 3, "gpu × 2 modes and mixed: {degraded:?}");
}

#[test]
fn a_degraded_only_baseline_leaves_comparisons_without_p_and_degrades_the_node() {
    let fx = fixture();
    let ws = workspace(&study(&fx), "baseline = \"gpu\"\n");
    let m = ws.make_ok();
    assert_eq!(m.status("stats"), "degraded", "{}", m.run);
    assert!(m.record("stats").detail.as_deref().unwrap().contains("`gpu` has no ok runs"), "{}", m.run);
    let doc = ws.json("out/stats/stats.json");
    assert_eq!(doc["status"], "degraded");
    let rows = doc["comparisons"]["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r["p"].is_null() && r["p_holm"].is_null(), "{r}");
        assert_eq!(r["significant"], "n/a");
        assert!(r["note"].as_str().unwrap().starts_with("baseline has no ok runs"), "{r}");
    }
    no_cell_is_a_non_number(&ws, "out/stats/comparisons.csv");
}

#[test]
fn a_baseline_absent_from_the_runs_is_an_error_naming_it_and_the_backends_found() {
    let fx = fixture();
    let ws = workspace(&study(&fx), "baseline = \"cpuu\"\n");
    let m = ws.make();
    assert_eq!(m.run.code, Some(1), "{}", m.run);
    let detail = m.record("stats").detail.as_deref().unwrap_or("").to_string();
    assert!(detail.contains("`cpuu`") && detail.contains("`cpu`, `fast`, `gpu`, `mixed`"), "{detail}");
    assert!(detail.contains("did you mean `cpu`?"), "{detail}");
}

#[test]
fn without_a_baseline_there_are_summaries_and_an_empty_comparison_table() {
    let fx = fixture();
    let ws = workspace(&study(&fx), "");
    ws.make_ok();
    let doc = ws.json("out/stats/stats.json");
    assert!(doc["baseline"].is_null());
    assert!(doc["comparisons"]["rows"].as_array().unwrap().is_empty());
    assert!(!doc["summary"]["rows"].as_array().unwrap().is_empty());
    let csv = String::from_utf8(ws.read("out/stats/comparisons.csv")).unwrap();
    assert!(csv.starts_with("mode,scenario,backend,baseline,") && csv.lines().count() == 1, "{csv}");
}

#[test]
fn a_malformed_line_is_an_error_naming_the_file_and_the_line() {
    let fx = fixture();
    let mut files = study(&fx);
    files.retain(|(b, _), _| b == "cpu");
    let ws = workspace(&files, "");
    let good = jsonl(&[ok("cpu", "prefill", "short", 0, 1.0), ok("cpu", "prefill", "short", 1, 2.0)]);
    ws.write("data/cpu-prefill.jsonl", format!("{good}{{\"backend\": \"cpu\", \"mode\": 3}}\n"));
    let m = ws.make();
    assert_eq!(m.run.code, Some(1), "{}", m.run);
    let detail = m.record("stats").detail.as_deref().unwrap_or("").to_string();
    assert!(detail.contains("`out/sweep/cpu/prefill/runs.jsonl`:3:") && detail.contains("not a run record"), "{detail}");

    // An `ok` record must have a latency.
    let mut r = ok("cpu", "prefill", "short", 0, 1.0);
    r.latency_ms = None;
    ws.write("data/cpu-prefill.jsonl", format!("\n{}", jsonl(&[r])));
    let detail = ws.make().record("stats").detail.as_deref().unwrap_or("").to_string();
    assert!(detail.contains("`out/sweep/cpu/prefill/runs.jsonl`:2") && detail.contains("`latency_ms`"), "{detail}");
}

#[test]
fn bad_fields_are_errors_naming_the_field() {
    let fx = fixture();
    let files = study(&fx);
    let ws = workspace(&files, "alpha = 1.5\n");
    ws.tr(&["make"]).code(2).stderr_has("`alpha`").stderr_has("between 0 and 1");
    let ws = workspace(&files, "alpha = 0\n");
    ws.tr(&["make"]).code(2).stderr_has("`alpha`");
    let ws = workspace(&files, "alpah = 0.1\n");
    ws.tr(&["make"]).code(2).stderr_has("alpah").stderr_has("did you mean `alpha`");
    let ws = workspace(&files, "baseline = 3\n");
    ws.tr(&["make"]).code(2).stderr_has("`baseline` must be a backend name");
    let ws = workspace(&files, "");
    let toml = fs::read_to_string(ws.path("tr118.toml")).unwrap().replace("deps = { runs =", "deps = { records =");
    ws.pipeline(&toml);
    ws.tr(&["make"]).code(2).stderr_has("needs a dep named `runs`");
}
