//! Export and build overhead: the time and size of each export, calibration, quantization and
//! TensorRT build.

use serde_json::{Value, json};

use super::{Artifacts, Variant};
use crate::report::format::{self, sig_opt};

pub(super) fn overhead(a: &Artifacts) -> Value {
    let mut rows = Vec::new();
    let mut push = |step: String, what: String, seconds: Option<f64>, size: Option<f64>, note: String| {
        rows.push(json!({ "step": step, "what": what, "seconds": seconds, "bytes": size, "note": note }));
    };
    for e in &a.exports {
        for v in e.value.variants.iter().map(Variant::of) {
            push(
                "export".into(),
                format!("{} {} ({})", e.node(), v.variant, v.precision),
                v.export_ms.map(|ms| ms / 1000.0),
                Some(v.file_bytes + v.data_bytes.unwrap_or(0.0)),
                format!(
                    "{} nodes, opset {}",
                    v.node_count.map_or(format::UNDEFINED.to_string(), |n| format::count(n as i64)),
                    v.opset.map_or(format::UNDEFINED.to_string(), |n| n.to_string())
                ),
            );
        }
    }
    for c in &a.calibration {
        let v = &c.value;
        push(
            "calibrate".into(),
            c.node(),
            Some(v.elapsed_s).filter(|s| s.is_finite()),
            None,
            format!("{}, {} samples of {} tokens", v.method, v.samples, v.seq_len),
        );
    }
    for q in &a.quantize {
        let v = &q.value;
        let size = Some(v.file_bytes as f64 + v.data_bytes as f64);
        push("quantize".into(), q.node(), Some(v.elapsed_s).filter(|s| s.is_finite()), size, format!("{} INT8", v.scheme.name()));
    }
    for t in &a.trt {
        let (v, b) = (&t.value, &t.value.built);
        let finite = |x: Option<f64>| x.filter(|x| x.is_finite());
        let note = if b.plan_bytes.is_some() {
            let peak = finite(b.peak_build_mib).map_or(String::new(), |m| format!(", peak memory {} MiB", sig_opt(Some(m), 3)));
            format!("{}: builder {} s{peak}", v.builder, sig_opt(finite(b.engine_build_s), 3))
        } else {
            format!("not built: {}", v.reason.clone().unwrap_or_else(|| "no reason given".into()))
        };
        push("TensorRT build".into(), t.node(), finite(b.build_s), b.plan_bytes.map(|n| n as f64), note);
    }
    Value::Array(rows)
}
