//! Methodology: the statistics' definitions, each sweep's harness and sampler costs, the
//! perplexity setup and the gate's thresholds.

use serde_json::{Value, json};

use super::{Artifacts, MODES, Shape, precision_rank};
use crate::report::format;

pub(super) fn methodology(shape: &Shape, a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    let methods: Vec<Value> = a.stats.value.methods.iter().map(|(k, v)| json!({ "name": k, "text": v })).collect();
    let mut sweeps: Vec<Value> = Vec::new();
    for s in &a.sweeps {
        let v = &s.value;
        let finite = |x: f64| Some(x).filter(|x| x.is_finite());
        let cpu_share = v.sampler.as_ref().and_then(|s| finite(s.cpu_share));
        if let Some(share) = cpu_share.filter(|x| *x > 0.05) {
            warnings.push(format!(
                "{} / {}: the resource sampler used {} of a core while measuring; latencies on a busy machine include it.",
                v.backend,
                v.mode,
                format::share(Some(share))
            ));
        }
        for sc in v.scenarios.iter().filter(|sc| sc.outputs_consistent == Some(false)) {
            warnings
                .push(format!("{} / {} / {}: repetitions generated different tokens; the runs did not do the same work.", v.backend, v.mode, sc.scenario.name));
        }
        sweeps.push(json!({
            "backend": v.backend,
            "mode": v.mode,
            "status": v.status,
            "warmup": v.warmup,
            "reps": v.reps,
            "sample_interval_ms": v.sample_interval_ms as f64,
            "scenarios": v.scenarios.len(),
            "sampler_cpu_share": cpu_share,
            "sampler_mean_sample_us": v.sampler.as_ref().and_then(|s| finite(s.mean_sample_us)),
            "harness_overhead_us": v.harness.as_ref().and_then(|h| finite(h.overhead_per_iteration_us)),
        }));
    }
    sweeps.sort_by_key(|s| (shape.color(s["backend"].as_str().unwrap_or_default()), MODES.iter().position(|m| s["mode"] == *m).unwrap_or(MODES.len())));
    let ppl = a.perplexity.iter().find(|d| d.value.status == "ok").or(a.perplexity.first()).map(|d| {
        let v = &d.value;
        json!({ "context": v.context, "stride": v.stride, "batch": v.batch, "corpus_tokens": v.corpus_tokens, "tokens_scored": v.tokens_scored })
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
