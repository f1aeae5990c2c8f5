//! Sanity checks: the export, INT8 coverage, TensorRT plans, perplexity against a uniform model
//! and logit differences.

use serde_json::{Value, json};

use super::{Artifacts, Variant};
use crate::report::format::{self, sig_opt};

pub(super) fn sanity(a: &Artifacts, warnings: &mut Vec<String>) -> Value {
    let finite = |x: Option<f64>| x.filter(|x| x.is_finite());
    let mut exports = Vec::new();
    for e in &a.exports {
        for v in e.value.variants.iter().map(Variant::of) {
            exports.push(json!({
                "node": e.node(),
                "variant": v.variant,
                "precision": v.precision,
                "opset": v.opset,
                "file": v.file,
                "file_bytes": v.file_bytes,
                "data_bytes": v.data_bytes,
                "nodes": v.node_count,
                "initializers": v.initializer_count,
                "initializer_bytes": v.initializer_bytes,
                "inputs": v.inputs.join(", "),
                "outputs": v.outputs.join(", "),
                "dynamic_axes": v.dynamic_axes.join(", "),
                "export_ms": v.export_ms,
                "digest": v.digest.chars().take(12).collect::<String>(),
            }));
        }
    }
    let checkpoint = a.exports.first().map(|e| {
        let c = &e.value.checkpoint;
        json!({
            "path": c.path,
            "format": c.format,
            "arch": c.config.arch,
            "n_layer": c.config.n_layer,
            "d_model": c.config.d_model,
            "n_head": c.config.n_head,
            "vocab_size": c.config.vocab_size,
        })
    });
    let mut quantize = Vec::new();
    for q in &a.quantize {
        let v = &q.value;
        let (total, verified) = (v.matmul_total, v.verified);
        if !v.ran_integer {
            warnings.push(format!(
                "{}: ONNX Runtime ran {} integer MatMul kernels for {verified} INT8 MatMuls; the rest multiply in float.",
                q.node(),
                v.ort.integer_matmul_kernels
            ));
        }
        if verified < v.quantized {
            warnings.push(format!("{}: {} MatMuls were rewritten to INT8 but only {verified} read back as INT8.", q.node(), v.quantized));
        }
        let decoder = v
            .decoder
            .as_ref()
            .map(|d| json!({ "matmul_total": d.matmul_total, "quantized": d.quantized, "verified": d.verified, "left_float": d.left_float.len() }));
        quantize.push(json!({
            "node": q.node(),
            "scheme": v.scheme.name(),
            "per_channel": v.per_channel,
            "activations": v.activations,
            "weights": v.weights,
            "matmul_total": total,
            "quantized": v.quantized,
            "verified": verified,
            "left_float": v.left_float.len(),
            "coverage": (total > 0).then(|| verified as f64 / total as f64),
            "ran_integer": v.ran_integer,
            "integer_kernels": v.ort.integer_matmul_kernels,
            "float_kernels": v.ort.float_matmul_kernels,
            "decoder": decoder,
            "file_bytes": v.file_bytes as f64,
            "data_bytes": v.data_bytes as f64,
        }));
    }
    let mut trt = Vec::new();
    for t in &a.trt {
        let (v, b) = (&t.value, &t.value.built);
        let layers = b.layers_by_precision.as_ref();
        if b.int8_verified == Some(false) {
            warnings.push(format!("TensorRT {} plan: INT8 was requested but no layer runs in INT8.", v.precision));
        }
        trt.push(json!({
            "node": t.node(),
            "precision": v.precision,
            "status": v.status,
            "reason": v.reason,
            "flags": v.flags.join("; "),
            "trt_version": v.trt_version,
            "n_layers": b.n_layers,
            "fp32": layers.map(|l| l.fp32),
            "fp16": layers.map(|l| l.fp16),
            "int8": layers.map(|l| l.int8),
            "other": layers.map(|l| l.other),
            "int8_verified": b.int8_verified,
            "plan_bytes": b.plan_bytes.map(|n| n as f64),
            "build_s": finite(b.build_s),
            "engine_build_s": finite(b.engine_build_s),
            "builder": v.builder,
            "peak_build_mib": finite(b.peak_build_mib),
        }));
    }
    let mut perplexity = Vec::new();
    for d in &a.perplexity {
        let v = &d.value;
        let (ppl, uniform) = (finite(v.ppl), finite(v.uniform_ppl));
        let sane = match (ppl, uniform) {
            (Some(p), Some(u)) => Some(p < u),
            _ => None,
        };
        if sane == Some(false) {
            warnings.push(format!(
                "{}: perplexity {} is not below the uniform model's {} (a model that knows nothing scores its vocabulary size): its outputs are noise.",
                v.backend,
                sig_opt(ppl, 4),
                sig_opt(uniform, 4)
            ));
        }
        perplexity.push(json!({
            "backend": v.backend,
            "precision": v.precision,
            "provider": v.provider,
            "status": v.status,
            "reason": v.reason,
            "ppl": ppl,
            "mean_nll": finite(v.mean_nll),
            "uniform_ppl": uniform,
            "vocab_size": v.vocab_size,
            "tokens_scored": v.tokens_scored,
            "sane": sane,
        }));
    }
    let mut logits = Vec::new();
    for d in &a.logits {
        let v = &d.value;
        let (last, all) = (&v.overall.last_token, &v.overall.all_positions);
        if let Some(rate) = finite(all.argmax_agreement_rate).filter(|r| *r < 1.0) {
            warnings.push(format!("{}: the top token differs from the reference's at {} of positions.", v.backend, format::share(Some(1.0 - rate))));
        }
        logits.push(json!({
            "backend": v.backend,
            "status": v.status,
            "reason": v.reason,
            "prompts": v.prompts.len(),
            "last_mean_abs_diff": finite(last.mean_abs_diff),
            "last_max_abs_diff": finite(last.max_abs_diff),
            "last_agreement": finite(last.argmax_agreement_rate),
            "all_mean_abs_diff": finite(all.mean_abs_diff),
            "all_max_abs_diff": finite(all.max_abs_diff),
            "all_agreement": finite(all.argmax_agreement_rate),
        }));
    }
    json!({ "checkpoint": checkpoint, "exports": exports, "quantize": quantize, "trt": trt, "perplexity": perplexity, "logits": logits })
}
