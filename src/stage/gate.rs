//! The `gate` kind: every backend's perplexity against a reference backend's.
//!
//! ```toml
//! [stages.gate]
//! kind = "gate"
//! deps = { results = "out/perplexity/*/perplexity.json" }
//! reference = "ort-cpu"                               # a backend name
//! thresholds = { fp32 = 1e-3, fp16 = 5e-3, int8 = 2e-2 }  # these are the defaults
//! fail_on_gate = false                                 # true: a failing backend fails the node
//! ```
//!
//! For each backend, `rel_delta = |ppl − ppl_ref| / ppl_ref` and `pass = rel_delta ≤
//! threshold[precision]`. A degraded backend is listed with its reason and `pass = null`:
//! neither a pass nor a failure. Without an ok reference nothing can be compared: the node
//! comes out degraded, with every `pass` null. A backend over its threshold is data, not an
//! error — the node is ok unless `fail_on_gate = true`, which fails it, naming the backends.
//!
//! Reads each result as [`Perplexity`]; one that does not read as one is an error naming the
//! file and the field.
//!
//! Outputs `gate.json` (`reference`, `reference_ppl`, `thresholds`, `status`, `reason`,
//! `failed`, and `backends`: one entry per result, sorted by name, with `backend`,
//! `precision`, `status`, `reason`, `ppl`, `rel_delta`, `threshold`, `pass`) and `gate.csv`
//! (one row per backend, the same fields).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use super::output::{write_csv_rows, write_json};
use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::artifact::gate as artifact;
use crate::artifact::perplexity::Perplexity;
use crate::backend::PRECISIONS;
use crate::pipeline::NodeSpec;

pub(crate) struct Gate;

const FIELDS: &[&str] = &["reference", "thresholds", "fail_on_gate"];

/// Relative PPL deltas allowed by default, by precision.
pub(crate) const DEFAULT_THRESHOLDS: &[(&str, f64)] = &[("fp32", 1e-3), ("fp16", 5e-3), ("int8", 2e-2)];

impl Kind for Gate {
    const NAME: &'static str = "gate";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "gate"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let f = cx.fields;
        let reference = match f.get("reference") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(v) => {
                errors.push(LowerError::at(vec!["reference".into()], format!("`reference` must be a backend name, found {v}"), None));
                String::new()
            }
            None => {
                errors.push(LowerError::at(
                    vec![],
                    "a `gate` stage needs `reference`, the backend the others are compared with".into(),
                    Some("reference = \"ort-cpu\"".into()),
                ));
                String::new()
            }
        };
        let mut thresholds: BTreeMap<String, f64> = DEFAULT_THRESHOLDS.iter().map(|(p, t)| (p.to_string(), *t)).collect();
        match f.get("thresholds") {
            None => {}
            Some(Value::Object(t)) => {
                for (precision, v) in t {
                    let at = vec!["thresholds".to_string(), precision.clone()];
                    if !PRECISIONS.contains(&precision.as_str()) {
                        let help = crate::diag::suggest(precision, PRECISIONS.iter().copied());
                        errors.push(LowerError::at(at, format!("unknown precision `{precision}`; one of fp32, fp16, int8"), help));
                        continue;
                    }
                    match v.as_f64() {
                        Some(x) if x >= 0.0 && x.is_finite() => {
                            thresholds.insert(precision.clone(), x);
                        }
                        _ => errors.push(LowerError::at(at, format!("a threshold is a relative delta, a number ≥ 0; found {v}"), None)),
                    }
                }
            }
            Some(v) => {
                errors.push(LowerError::at(vec!["thresholds".into()], format!("`thresholds` must be a table of precision to relative delta, found {v}"), None))
            }
        }
        let fail_on_gate = match f.get("fail_on_gate") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                errors.push(LowerError::at(vec!["fail_on_gate".into()], format!("`fail_on_gate` must be a boolean, found {v}"), None));
                false
            }
        };
        if !cx.deps.iter().any(|d| d == "results") {
            errors.push(LowerError::at(
                vec!["deps".into()],
                "a `gate` stage needs a dep named `results`: the perplexity results to compare".into(),
                Some("deps = { results = \"out/perplexity/*/perplexity.json\" }".into()),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(json!({ "reference": reference, "thresholds": thresholds, "fail_on_gate": fail_on_gate }))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![("result".into(), "gate.json".into()), ("csv".into(), "gate.csv".into())]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = &cx.node.config;
        let reference = config["reference"].as_str().unwrap_or_default().to_string();
        let thresholds: BTreeMap<String, f64> =
            config["thresholds"].as_object().into_iter().flatten().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect();

        let mut results: Vec<Perplexity> = Vec::new();
        for path in cx.deps.get("results").into_iter().flatten() {
            let text = std::fs::read_to_string(cx.root.join(path)).map_err(|e| format!("reading `{path}`: {e}"))?;
            serde_json::from_str::<Value>(&text).map_err(|e| format!("`{path}` is not JSON: {e}"))?;
            let v: Perplexity = serde_json::from_str(&text).map_err(|e| format!("`{path}` is not a perplexity result: {e}"))?;
            if results.iter().any(|r| r.backend == v.backend) {
                return Err(format!("two results for backend `{}`; the `results` dep must match one perplexity.json per backend", v.backend).into());
            }
            results.push(v);
        }
        results.sort_by(|a, b| a.backend.cmp(&b.backend));

        let reason_of = |v: &Perplexity| v.reason.clone().unwrap_or_else(|| "no reason given".into());
        let reference_ppl = match results.iter().find(|v| v.backend == reference) {
            None => Err(format!(
                "the reference backend `{reference}` has no result among {}",
                if results.is_empty() { "none".to_string() } else { crate::diag::ticked(results.iter().map(|v| &v.backend)) }
            )),
            Some(v) if v.status != "ok" => Err(format!("the reference backend `{reference}` is degraded: {}", reason_of(v))),
            Some(v) => v.ppl.filter(|p| *p > 0.0).ok_or_else(|| format!("the reference backend `{reference}` has no perplexity")),
        };

        let mut rows = Vec::new();
        for v in &results {
            let threshold = thresholds.get(&v.precision).copied();
            let degraded = v.status != "ok";
            let ppl = if degraded { None } else { v.ppl };
            let rel_delta = match (&reference_ppl, ppl) {
                (Ok(r), Some(p)) => Some((p - r).abs() / r),
                _ => None,
            };
            let pass = match (rel_delta, threshold) {
                (Some(d), Some(t)) => Some(d <= t),
                _ => None,
            };
            rows.push(artifact::Backend {
                backend: v.backend.clone(),
                precision: v.precision.clone(),
                status: if degraded { "degraded" } else { "ok" }.into(),
                reason: degraded.then(|| reason_of(v)),
                ppl,
                rel_delta,
                threshold,
                pass,
            });
        }
        let failed: Vec<String> = rows.iter().filter(|r| r.pass == Some(false)).map(|r| r.backend.clone()).collect();
        let (status, reason) = match &reference_ppl {
            Ok(_) => ("ok", None),
            Err(e) => ("degraded", Some(e.clone())),
        };
        for r in &rows {
            let _ = writeln!(cx.log, "{}: ppl {:?}, rel delta {:?}, threshold {:?}, pass {:?}", r.backend, r.ppl, r.rel_delta, r.threshold, r.pass);
        }
        let report = artifact::Gate {
            reference: reference.clone(),
            reference_ppl: reference_ppl.as_ref().ok().copied(),
            thresholds,
            status: status.into(),
            reason: reason.clone(),
            failed: failed.clone(),
            backends: rows,
        };
        write_json(&cx.root.join(&cx.outs["result"]), &serde_json::to_value(&report).map_err(|e| e.to_string())?)?;
        write_csv_rows(&cx.root.join(&cx.outs["csv"]), &report.backends.iter().map(csv).collect::<Vec<_>>())?;
        let rows = report.backends;

        if config["fail_on_gate"].as_bool().unwrap_or(false) && !failed.is_empty() {
            let detail: Vec<String> = rows
                .iter()
                .filter(|r| r.pass == Some(false))
                .map(|r| {
                    format!("`{}` ({}: rel delta {:.3e} > {:.0e})", r.backend, r.precision, r.rel_delta.unwrap_or(f64::NAN), r.threshold.unwrap_or(f64::NAN))
                })
                .collect();
            return Err(format!("gate failed against `{reference}`: {}", detail.join(", ")).into());
        }
        Ok(match reason {
            Some(r) => Outcome::Degraded(r),
            None => Outcome::Ok,
        })
    }
}

/// A backend's line of `gate.csv`: the fields of its `gate.json` entry.
fn csv(r: &artifact::Backend) -> Vec<(&'static str, String)> {
    let n = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x}"));
    vec![
        ("backend", r.backend.clone()),
        ("precision", r.precision.clone()),
        ("status", r.status.clone()),
        ("reason", r.reason.clone().unwrap_or_default()),
        ("ppl", n(r.ppl)),
        ("rel_delta", n(r.rel_delta)),
        ("threshold", n(r.threshold)),
        ("pass", r.pass.map_or(String::new(), |p| p.to_string())),
    ]
}
