//! `tr118::stats` against numpy, scipy and statsmodels.
//!
//! The reference values are `tests/fixtures/stats/expected.json`, regenerated from the
//! repository root with
//!
//! ```text
//! python3 -m venv /tmp/stats-venv && /tmp/stats-venv/bin/pip install numpy scipy statsmodels
//! /tmp/stats-venv/bin/python tests/fixtures/stats/generate.py > tests/fixtures/stats/expected.json
//! ```
//!
//! under Python 3.11.7 with numpy 2.4.6, scipy 1.17.1 and statsmodels 0.15.0 (the fixture
//! records them too). The output is deterministic: the large samples are seeded.
//!
//! | check                         | reference                                                    |
//! |-------------------------------|--------------------------------------------------------------|
//! | summaries (mean, std, CI95, percentiles, extremes) | `numpy.std(ddof=1)`, `scipy.stats.t.ppf(0.975, n−1) · scipy.stats.sem`, `numpy.percentile(method="linear")` |
//! | Welch's t, df, p              | `scipy.stats.ttest_ind(equal_var=False)`                     |
//! | Cohen's d                     | the pooled-sd formula over `numpy.var(ddof=1)`               |
//! | Holm                          | `statsmodels.stats.multitest.multipletests(method="holm")`   |
//! | undefined cases               | the fixture's nulls are `None` here, never NaN: NaN or ±inf from numpy/scipy, and Welch rows the script marks undefined (scipy answers `p = 0` for two distinct constants; the contract is no p) |
//!
//! Numbers agree to [`REL_TOL`] relative.

use serde_json::Value;
use tr118::stats;

const REL_TOL: f64 = 1e-9;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/stats/expected.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn sample(fx: &Value, name: &str) -> Vec<f64> {
    fx["samples"][name].as_array().unwrap_or_else(|| panic!("no sample `{name}`")).iter().map(|v| v.as_f64().unwrap()).collect()
}

/// `got` matches the fixture value `want`: both absent (null ↔ `None`), or within [`REL_TOL`]
/// relative (absolute where the reference is 0).
#[track_caller]
fn close(what: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            assert!(g.is_finite(), "{what}: got {g}");
            let err = if w == 0.0 { g.abs() } else { ((g - w) / w).abs() };
            assert!(err <= REL_TOL, "{what}: got {g:e}, reference {w:e} (relative error {err:e})");
        }
        (g, _) => panic!("{what}: got {g:?}, reference {want}"),
    }
}

#[test]
fn summaries_match_numpy_and_scipy() {
    let fx = fixture();
    let summaries = fx["summaries"].as_object().unwrap();
    assert!(summaries.len() >= 10, "the fixture lost its samples");
    for (name, want) in summaries {
        let xs = sample(&fx, name);
        let s = stats::summarize(&xs).unwrap_or_else(|| panic!("{name}: no summary"));
        assert_eq!(s.n as u64, want["n"].as_u64().unwrap(), "{name}: n");
        let at = |field: &str| format!("{name}.{field}");
        close(&at("mean"), Some(s.mean), &want["mean"]);
        close(&at("std"), s.std, &want["std"]);
        close(&at("t_crit"), stats::t_quantile(0.975, (s.n as f64) - 1.0), &want["t_crit"]);
        close(&at("ci95_half_width"), s.ci95.map(|c| c.half_width), &want["ci95_half_width"]);
        close(&at("ci95_lo"), s.ci95.map(|c| c.lo), &want["ci95_lo"]);
        close(&at("ci95_hi"), s.ci95.map(|c| c.hi), &want["ci95_hi"]);
        close(&at("median"), Some(s.median), &want["median"]);
        close(&at("p90"), Some(s.p90), &want["p90"]);
        close(&at("p99"), Some(s.p99), &want["p99"]);
        close(&at("min"), Some(s.min), &want["min"]);
        close(&at("max"), Some(s.max), &want["max"]);
    }
}

#[test]
fn an_empty_sample_has_no_summary_and_a_single_value_no_spread() {
    assert_eq!(stats::summarize(&[]), None);
    let s = stats::summarize(&[4.5]).unwrap();
    assert_eq!((s.n, s.mean, s.median, s.p99, s.min, s.max), (1, 4.5, 4.5, 4.5, 4.5, 4.5));
    assert_eq!((s.std, s.ci95), (None, None));
}

#[test]
fn welch_matches_scipy_and_is_undefined_without_variance() {
    let fx = fixture();
    let cases = fx["welch"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["defined"] == false) && cases.iter().any(|c| c["defined"] == true));
    for c in cases {
        let (a, b) = (c["a"].as_str().unwrap(), c["b"].as_str().unwrap());
        let w = stats::welch(&sample(&fx, a), &sample(&fx, b));
        let what = format!("welch({a}, {b})");
        if c["defined"] == true {
            close(&format!("{what}.t"), w.t, &c["t"]);
            close(&format!("{what}.df"), w.df, &c["df"]);
            close(&format!("{what}.p"), w.p, &c["p"]);
            assert_eq!(w.note, None, "{what}");
        } else {
            assert_eq!(w.p, None, "{what}: p");
            assert!(w.t.is_none_or(f64::is_finite) && w.df.is_none_or(f64::is_finite), "{what}: {w:?}");
            assert!(w.note.as_deref().is_some_and(|n| !n.is_empty()), "{what}: an undefined test says why: {w:?}");
        }
    }
    let note = |a: &[f64], b: &[f64]| stats::welch(a, b).note.unwrap_or_default();
    assert!(note(&[5.0; 4], &[5.0; 3]).contains("both samples are constant"));
    assert!(note(&[5.0; 4], &[7.0; 3]).contains("means differ"));
    assert!(note(&[5.0], &[1.0, 2.0]).contains("at least 2"));
}

#[test]
fn cohens_d_matches_the_pooled_sd_formula() {
    let fx = fixture();
    for c in fx["cohens_d"].as_array().unwrap() {
        let (a, b) = (c["a"].as_str().unwrap(), c["b"].as_str().unwrap());
        close(&format!("cohens_d({a}, {b})"), stats::cohens_d(&sample(&fx, a), &sample(&fx, b)), &c["d"]);
    }
    assert_eq!(stats::cohens_d(&[1.0], &[2.0]), None, "two values in all have no pooled spread");
    assert_eq!(stats::cohens_d(&[], &[1.0, 2.0, 3.0]), None);
}

#[test]
fn holm_matches_statsmodels_in_the_input_order_and_skips_missing_p_values() {
    let fx = fixture();
    for c in fx["holm"].as_array().unwrap() {
        let p: Vec<Option<f64>> = c["p"].as_array().unwrap().iter().map(Value::as_f64).collect();
        let adjusted = stats::holm(&p);
        assert_eq!(adjusted.len(), p.len());
        for (i, (got, want)) in adjusted.iter().zip(c["adjusted"].as_array().unwrap()).enumerate() {
            close(&format!("holm({p:?})[{i}]"), *got, want);
        }
    }
}

#[test]
fn pct_change_is_relative_to_the_baseline_in_percent() {
    let fx = fixture();
    for c in fx["pct_change"].as_array().unwrap() {
        let (b, x) = (c["baseline"].as_f64().unwrap(), c["x"].as_f64().unwrap());
        close(&format!("pct_change({b}, {x})"), stats::pct_change(b, x), &c["pct"]);
    }
    assert_eq!(stats::pct_change(0.0, 1.0), None);
}
