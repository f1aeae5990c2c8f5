//! Environment: the machine and each backend's runtime, from the run records and the
//! capabilities the backends reported.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Artifacts, count_of, join_names, text};
use crate::backend::Capability;
use crate::report::format;

fn distinct<I: IntoIterator<Item = Option<String>>>(it: I) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in it.into_iter().flatten().filter(|s| !s.is_empty()) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

pub(super) fn environment(a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    // A capability as the JSON it was written as, to read every artifact's alike.
    let cap_of = |c: &Option<Capability>| c.as_ref().and_then(|c| serde_json::to_value(c).ok());
    let caps: Vec<Value> = a
        .sweeps
        .iter()
        .filter_map(|d| cap_of(&d.value.capability))
        .chain(a.perplexity.iter().filter_map(|d| cap_of(&d.value.capability)))
        .chain(a.logits.iter().filter_map(|d| cap_of(&d.value.capability)))
        .collect();
    let runs = &a.runs;
    let os = distinct(runs.iter().map(|r| Some(r.env.os.clone())));
    let hosts = distinct(runs.iter().map(|r| Some(r.env.host.clone())));
    let cpu = distinct(runs.iter().map(|r| Some(r.env.cpu.clone())).chain(caps.iter().map(|c| text(c, "cpu_model"))));
    let threads = distinct(caps.iter().map(|c| count_of(c, "cpu_logical_threads").map(|n| n.to_string())));
    let gpu = distinct(runs.iter().map(|r| r.env.gpu.clone()).chain(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "name")))));
    let driver = distinct(runs.iter().map(|r| r.env.gpu_driver.clone()).chain(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "driver_version")))));
    let cuda = distinct(caps.iter().map(|c| c.get("gpu").and_then(|g| text(g, "cuda_driver_version"))));
    let ort = distinct(
        runs.iter()
            .filter(|r| r.env.runtime == "onnxruntime" || r.env.runtime.is_empty())
            .map(|r| Some(r.env.runtime_version.clone()))
            .chain(caps.iter().map(|c| text(c, "runtime_version")))
            .chain(a.quantize.iter().map(|q| Some(q.value.ort.runtime_version.clone())))
            .chain(a.calibration.iter().map(|c| Some(c.value.runtime_version.clone()))),
    );
    let trt = distinct(a.trt.iter().map(|t| t.value.trt_version.clone()));
    let trt_gpu = distinct(a.trt.iter().map(|t| Some(t.value.gpu.clone())));
    let tools = distinct(a.exports.iter().map(|e| Some(e.value.tool.clone())));
    if hosts.len() > 1 || cpu.len() > 1 {
        warnings.push(format!(
            "The runs come from more than one machine ({}); latencies of different machines are not comparable.",
            join_names(&if hosts.len() > 1 { hosts.clone() } else { cpu.clone() })
        ));
    }
    let none = |v: &[String], empty: &str| if v.is_empty() { empty.to_string() } else { v.join("; ") };
    let machine = vec![
        json!({ "label": "OS", "value": none(&os, "not recorded") }),
        json!({ "label": "CPU", "value": none(&cpu, "not recorded") }),
        json!({ "label": "Logical CPUs", "value": none(&threads, "not recorded") }),
        json!({ "label": "GPU", "value": none(&gpu, "none seen") }),
        json!({ "label": "GPU driver", "value": none(&driver, "none seen") }),
        json!({ "label": "CUDA (driver)", "value": none(&cuda, "none seen") }),
        json!({ "label": "ONNX Runtime", "value": none(&ort, "not recorded") }),
        json!({ "label": "TensorRT", "value": none(&trt, if a.trt.is_empty() { "not in this study" } else { "not found" }) }),
        json!({ "label": "GPU of the TensorRT builds", "value": none(&trt_gpu, if a.trt.is_empty() { "not in this study" } else { "not recorded" }) }),
        json!({ "label": "tr118 (export)", "value": none(&tools, "not recorded") }),
        json!({ "label": "tr118 (this report)", "value": format!("tr118 {}", crate::VERSION) }),
    ];
    let mut backends: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    // (backend, capability, provider as declared) of every sweep, then every perplexity result.
    let sweeps = a.sweeps.iter().map(|d| (Some(d.value.backend.clone()), cap_of(&d.value.capability), Some(d.value.provider.clone())));
    let perplexity = a.perplexity.iter().map(|d| (Some(d.value.backend.clone()), cap_of(&d.value.capability), Some(d.value.provider.clone())));
    for (name, cap, provider) in sweeps.chain(perplexity) {
        let Some(name) = name else { continue };
        let Some(cap) = cap else { continue };
        let cap = &cap;
        if !seen.insert(name.clone()) {
            continue;
        }
        let assigned: Vec<String> =
            cap.get("providers_assigned").and_then(Value::as_object).map(|m| m.iter().map(|(k, n)| format!("{k}: {n}")).collect()).unwrap_or_default();
        backends.push(json!({
            "backend": name,
            "provider": text(cap, "provider_requested").or(provider),
            "ran_on": if assigned.is_empty() { format::UNDEFINED.to_string() } else { assigned.join(", ") },
            "threads": count_of(cap, "threads"),
            "runtime_version": text(cap, "runtime_version"),
            "library_digest": text(cap, "library_digest").map(|d| d.chars().take(12).collect::<String>()),
        }));
    }
    json!({ "machine": machine, "backends": backends })
}
