//! From artifacts to the data the templates see: every file is read once, checked to be what
//! its dep says it is, and turned into the sections of [`super`]'s context. Numbers stay
//! numbers (`null` where undefined); the templates format them with the filters of
//! [`super::format`]. The only text made here is what is computed from several artifacts at
//! once: the abstract, the key findings, the limitations and the warnings.
//!
//! | module | holds |
//! |---|---|
//! | [`read`] | reading the artifacts and checking their kinds |
//! | this one | the study's shape from the stats, and the context's assembly |
//! | [`findings`] | the abstract and the key findings |
//! | [`limitations`] | every degraded thing, its reason and count |
//! | [`methodology`] | definitions, harness and sampler costs, gate thresholds |
//! | [`environment`] | the machine and each backend's runtime |
//! | [`sanity`] | export, INT8 coverage, TensorRT plans, perplexity, logits |
//! | [`results`] | per mode: tables, charts, the fastest backend |
//! | [`accuracy`] | the accuracy gate |
//! | [`int8`] | the INT8 recipes: recipe, perplexity change, prefill speed-up, their chart |
//! | [`overhead`] | export and build times and sizes |
//! | [`reproducibility`] | the command and every artifact's digest |

mod accuracy;
mod environment;
mod findings;
mod int8;
mod limitations;
mod methodology;
mod overhead;
mod read;
mod reproducibility;
mod results;
mod sanity;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::format;
use super::plots;
use super::{Inputs, Plot, ReportError};
use crate::artifact::stats::Stats;
use crate::measure::MODES;
pub(super) use read::{Artifacts, Doc};

/// One exported variant as the report shows it, an ONNX model or the `hf` directory alike: what
/// the kind does not have is `None` (or empty).
struct Variant<'a> {
    variant: &'a str,
    precision: &'static str,
    opset: Option<i64>,
    file: &'a str,
    file_bytes: f64,
    data_bytes: Option<f64>,
    node_count: Option<usize>,
    initializer_count: Option<usize>,
    initializer_bytes: Option<f64>,
    inputs: &'a [String],
    outputs: &'a [String],
    dynamic_axes: &'a [String],
    export_ms: Option<f64>,
    digest: &'a str,
}

impl<'a> Variant<'a> {
    fn of(v: &'a crate::artifact::export::Variant) -> Variant<'a> {
        use crate::artifact::export::Variant as V;
        use crate::export::Precision;
        let precision = |p: Precision| match p {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        };
        let ms = |ms: f64| Some(ms).filter(|x| x.is_finite());
        match v {
            V::Onnx(r) => Variant {
                variant: r.variant.name(),
                precision: precision(r.precision),
                opset: Some(r.opset),
                file: &r.file,
                file_bytes: r.file_bytes as f64,
                data_bytes: Some(r.data_bytes as f64),
                node_count: Some(r.node_count),
                initializer_count: Some(r.initializer_count),
                initializer_bytes: Some(r.initializer_bytes as f64),
                inputs: &r.inputs,
                outputs: &r.outputs,
                dynamic_axes: &r.dynamic_axes,
                export_ms: ms(r.export_ms),
                digest: &r.digest,
            },
            V::Hf(r) => Variant {
                variant: &r.variant,
                precision: precision(r.precision),
                opset: None,
                file: &r.file,
                file_bytes: r.file_bytes as f64,
                data_bytes: None,
                node_count: None,
                initializer_count: None,
                initializer_bytes: None,
                inputs: &[],
                outputs: &[],
                dynamic_axes: &[],
                export_ms: ms(r.export_ms),
                digest: &r.digest,
            },
        }
    }
}

fn precision_rank(p: &str) -> usize {
    ["fp32", "fp16", "int8"].iter().position(|x| *x == p).unwrap_or(3)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn count_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn join_names<S: AsRef<str>>(names: &[S]) -> String {
    match names.len() {
        0 => String::new(),
        1 => names[0].as_ref().to_string(),
        n => format!("{} and {}", names[..n - 1].iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", "), names[n - 1].as_ref()),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", format::count(n as i64), if n == 1 { one } else { many })
}

/// A mode's name for people.
pub(crate) fn mode_title(mode: &str) -> String {
    match mode {
        "prefill" => "Prefill".into(),
        "generate" => "Generate (KV cache)".into(),
        "generate_uncached" => "Generate without a cache".into(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The study's shape, from the stats
// ---------------------------------------------------------------------------------------

struct Shape {
    baseline: Option<String>,
    alpha: f64,
    /// In the stats' order (the baseline first); the colour of a backend is its index here.
    backends: Vec<String>,
    modes: Vec<String>,
    /// Per mode, scenarios in the stats' order.
    scenarios: BTreeMap<String, Vec<String>>,
    summary: Vec<Value>,
    comparisons: Vec<Value>,
}

impl Shape {
    fn of(stats: &Stats) -> Shape {
        let summary: Vec<Value> = stats.summary.rows.iter().cloned().map(Value::Object).collect();
        let comparisons: Vec<Value> = stats.comparisons.rows.iter().cloned().map(Value::Object).collect();
        let mut backends = Vec::new();
        let mut modes = Vec::new();
        let mut scenarios: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &summary {
            let (b, m, s) = (text(r, "backend").unwrap_or_default(), text(r, "mode").unwrap_or_default(), text(r, "scenario").unwrap_or_default());
            if !backends.contains(&b) {
                backends.push(b);
            }
            if !modes.contains(&m) {
                modes.push(m.clone());
            }
            let list = scenarios.entry(m).or_default();
            if s != crate::artifact::stats::OVERALL && !list.contains(&s) {
                list.push(s);
            }
        }
        modes.sort_by_key(|m| (MODES.iter().position(|k| k == m).unwrap_or(MODES.len()), m.clone()));
        Shape { baseline: stats.baseline.clone(), alpha: stats.alpha, backends, modes, scenarios, summary, comparisons }
    }

    fn color(&self, backend: &str) -> usize {
        self.backends.iter().position(|b| b == backend).unwrap_or(self.backends.len())
    }

    fn row(&self, backend: &str, mode: &str, scenario: &str) -> Option<&Value> {
        self.summary.iter().find(|r| r["backend"] == backend && r["mode"] == mode && r["scenario"] == scenario)
    }

    fn comparison(&self, backend: &str, mode: &str, scenario: &str) -> Option<&Value> {
        self.comparisons.iter().find(|r| r["backend"] == backend && r["mode"] == mode && r["scenario"] == scenario)
    }

    fn ok(row: &Value) -> bool {
        count_of(row, "n_ok").unwrap_or(0) > 0 && num(row, "latency_mean_ms").is_some()
    }
}

// ---------------------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------------------

/// Builds the context and the plots.
pub(super) fn build(inputs: &Inputs, a: &Artifacts) -> Result<(Value, Vec<Plot>), ReportError> {
    let shape = Shape::of(&a.stats.value);
    let mut plots = Vec::new();
    let mut warnings: Vec<String> = Vec::new();

    let mut modes = Vec::new();
    for mode in &shape.modes {
        modes.push(results::mode_section(&shape, a, mode, &mut plots, &mut warnings)?);
    }
    let degraded_plot = results::degraded_plot(&shape, &mut plots)?;

    let sanity = sanity::sanity(a, &mut warnings);
    let environment = environment::environment(a, &mut warnings);
    let methodology = methodology::methodology(&shape, a, &mut warnings);
    let gate = a.gate.as_ref().map(accuracy::gate_section);
    let int8 = int8::int8_section(&shape, a, &mut plots)?;
    let overhead = overhead::overhead(a);
    let limitations = limitations::limitations(a);
    let findings = findings::findings(&shape, a);
    let summary = findings::abstract_text(&shape, a);

    let absent: Vec<Value> = [
        ("runs", "run records: latency distributions"),
        ("sweeps", "sweep summaries: harness and sampler costs, capabilities"),
        ("perplexity", "perplexity per backend"),
        ("gate", "the accuracy gate"),
        ("logits", "logit differences"),
        ("export", "the ONNX export manifest"),
        ("quantize", "INT8 quantization"),
        ("calibration", "INT8 calibration"),
        ("trt", "TensorRT plans"),
    ]
    .iter()
    .filter(|(dep, _)| inputs.paths(dep).is_empty())
    .map(|(dep, what)| json!({ "dep": dep, "what": what }))
    .collect();

    let context = json!({
        "title": inputs.title,
        "node": inputs.node,
        "tool_version": crate::VERSION,
        "baseline": shape.baseline,
        "alpha": shape.alpha,
        "stats_status": a.stats.value.status,
        "stats_reason": a.stats.value.reason,
        "backends": shape.backends.iter().map(|b| json!({ "name": b, "color": plots::css_color(shape.color(b)) })).collect::<Vec<_>>(),
        "abstract": summary,
        "findings": findings,
        "limitations": limitations,
        "absent": absent,
        "methodology": methodology,
        "environment": environment,
        "sanity": sanity,
        "modes": modes,
        "degraded_plot": degraded_plot,
        "gate": gate,
        "int8": int8,
        "overhead": overhead,
        "warnings": warnings,
        "reproducibility": reproducibility::reproducibility(inputs)?,
    });
    Ok((context, plots))
}

fn plot_ref(p: &Plot) -> Value {
    json!({ "id": p.id, "title": p.title, "file": p.file, "caption": p.caption })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_join_with_commas_and_a_final_and() {
        assert_eq!(join_names::<&str>(&[]), "");
        assert_eq!(join_names(&["a"]), "a");
        assert_eq!(join_names(&["a", "b"]), "a and b");
        assert_eq!(join_names(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn precisions_rank_fp32_fp16_int8_then_the_rest() {
        let mut ps = ["int8", "bf16", "fp32", "fp16"];
        ps.sort_by_key(|p| precision_rank(p));
        assert_eq!(ps, ["fp32", "fp16", "int8", "bf16"]);
        assert_eq!(plural(1, "scenario", "scenarios"), "1 scenario");
        assert_eq!(plural(2, "scenario", "scenarios"), "2 scenarios");
    }
}
