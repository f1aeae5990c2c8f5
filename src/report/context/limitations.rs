//! Limitations: every degraded thing with its reason and count.
//!
//! Every degraded thing with its reason and count: runs (from the stats' `degraded`), the
//! statistics themselves, perplexity, logit and gate results, TensorRT plans and their flags,
//! and the MatMuls a quantizer left in float. One reason shared by several backends, modes or
//! plans is one line naming them all, its counts summed; INT8 lines stay per model, since
//! counts of two models add up to nothing.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Artifacts;

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

pub(super) fn limitations(a: &Artifacts) -> Vec<Value> {
    let mut raw: Vec<Limitation> = Vec::new();
    let mut push = |area, who: String, detail: Option<String>, reason: String, count, of, unit, merge| {
        raw.push(Limitation { area, subjects: vec![(who, detail)], reason, count, of, unit, merge });
    };
    for d in &a.stats.value.degraded {
        for r in &d.reasons {
            push("latency", d.backend.clone(), Some(d.mode.clone()), r.reason.clone(), Some(r.count as u64), Some(d.n_total as u64), "runs", true);
        }
    }
    if let Some(reason) = a.stats.value.reason.clone() {
        push("statistics", "stats".into(), None, reason, None, None, "", false);
    }
    for d in a.perplexity.iter().filter(|d| d.value.status != "ok") {
        push("perplexity", d.value.backend.clone(), None, d.value.reason.clone().unwrap_or_else(|| "no reason given".into()), None, None, "", true);
    }
    if let Some(g) = a.gate.as_ref().filter(|g| g.value.status != "ok") {
        push("accuracy gate", "gate".into(), None, g.value.reason.clone().unwrap_or_else(|| "no reason given".into()), None, None, "", false);
    }
    for d in a.logits.iter().filter(|d| d.value.status != "ok") {
        push("logits", d.value.backend.clone(), None, d.value.reason.clone().unwrap_or_else(|| "no reason given".into()), None, None, "", true);
    }
    for t in &a.trt {
        let plan = format!("{} plan", t.value.precision);
        if t.value.status != "ok" {
            push("TensorRT", plan.clone(), None, t.value.reason.clone().unwrap_or_else(|| "no reason given".into()), None, None, "", true);
        }
        for f in &t.value.flags {
            push("TensorRT", plan.clone(), None, f.clone(), None, None, "", true);
        }
    }
    for q in &a.quantize {
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for op in &q.value.left_float {
            *reasons.entry(op.reason.clone()).or_default() += 1;
        }
        // Each model's coverage is its own: counts of two models do not add up to anything.
        for (reason, n) in reasons {
            let who = format!("{} ({})", q.node(), q.value.scheme.name());
            push("INT8", who, None, format!("left in float: {reason}"), Some(n), Some(q.value.matmul_total as u64), "MatMuls", false);
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
