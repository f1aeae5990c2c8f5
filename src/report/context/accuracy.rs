//! The accuracy gate: each backend's perplexity change against the reference, and its verdict.

use serde_json::{Value, json};

use super::Doc;
use crate::artifact::gate::Gate;

pub(super) fn gate_section(g: &Doc<Gate>) -> Value {
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
