//! The `report` kind: the study's report, rendered from its artifacts by [`crate::report`].
//!
//! ```toml
//! [stages.report]
//! kind = "report"
//! title = "TR118: ONNX Runtime and TensorRT on SmolLM2-135M"   # default: "LLM inference benchmark study"
//! deps = { stats = "out/stats/stats.json",                     # required
//!          runs = "out/sweep/*/*/runs.jsonl",
//!          sweeps = "out/sweep/*/*/sweep.json",
//!          perplexity = "out/perplexity/*/perplexity.json",
//!          gate = "out/accuracy/gate.json",
//!          logits = "out/logits/*/logit_diff.json",
//!          export = "out/export/export.json",
//!          calibration = "out/calibrate/calibration.json",
//!          quantize = "out/quantize-*/quantize.json",
//!          trt = "out/trt_build/*/build.json",
//!          templates = "templates",                            # report.md.j2 and report.html.j2
//!          pipeline = "pipelines/tr118.toml" }                 # for the reproducibility section
//! ```
//!
//! Deps, by name — every one but `stats` may be left out, and its section then says the study
//! has no such artifact. Each may be a glob or a list; a file is checked to be the kind of
//! artifact its dep names (a `perplexity` file without `ppl` is an error naming the file).
//!
//! | dep           | files                                            | feeds                              |
//! |---------------|--------------------------------------------------|------------------------------------|
//! | `stats`       | one `stats.json` of a `stats` stage              | abstract, findings, results, comparisons, degraded plot |
//! | `runs`        | `runs.jsonl` of `sweep` nodes                    | latency distributions, the environment of the measurements |
//! | `sweeps`      | `sweep.json` of `sweep` nodes                    | methodology (warm-up, reps, sampler and harness costs), what really ran |
//! | `perplexity`  | `perplexity.json` per backend                    | perplexity correctness against the uniform model |
//! | `gate`        | one `gate.json`                                  | the accuracy gate                  |
//! | `logits`      | `logit_diff.json` per backend                    | logit differences                  |
//! | `export`      | `export.json` of `export` stages                 | ONNX artifacts, export time        |
//! | `calibration` | `calibration.json` of `calibrate` stages         | calibration time                   |
//! | `quantize`    | `quantize.json` of `quantize` stages             | INT8 coverage                      |
//! | `trt`         | `build.json` of `trt_build` nodes                | engine inspection, build time      |
//! | `templates`   | a directory with `report.md.j2` and `report.html.j2`, or the two files | the templates; without it, the built-in copies of the repository's `templates/` |
//! | `pipeline`    | the pipeline file                                | its path and digest, and the exact command, in the reproducibility section |
//!
//! Templates and the pipeline are deps rather than fields so that their content is in the key:
//! editing a template reruns the report and nothing else. The pipeline digest the tool computes
//! for itself is in no key; declaring the file is how a report records it (see
//! [`crate::report`]).
//!
//! Outputs: `report.md`; `report.html`, self-contained (CSS and SVG inline, opens offline);
//! `plots/<id>.svg`, the charts the Markdown links to; `context.json`, the data the templates
//! saw. A template that does not parse or render fails the node with its path and line. The
//! node is ok when it rendered: a degraded study is reported, not a degraded report.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use serde_json::{Value, json};

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::pipeline::NodeSpec;
use crate::report::{self, Inputs};

pub(crate) struct Report;

const FIELDS: &[&str] = &["title"];

/// The deps a report reads; any other name is a mistake.
pub(crate) const DEPS: &[&str] =
    &["stats", "runs", "sweeps", "perplexity", "gate", "logits", "export", "calibration", "quantize", "trt", "templates", "pipeline"];

/// Deps that name one file each.
const SINGLE: &[&str] = &["stats", "gate", "pipeline"];

pub(crate) const DEFAULT_TITLE: &str = "LLM inference benchmark study";

impl Kind for Report {
    const NAME: &'static str = "report";
    const FIELDS: &'static [&'static str] = FIELDS;

    fn implementation(&self, node: &NodeSpec) -> Vec<&'static str> {
        // The built-in templates make the report only when the stage names none of its own.
        if node.deps.iter().any(|d| d.name == "templates") { vec!["stage", "report"] } else { vec!["stage", "report", "templates"] }
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let title = match cx.fields.get("title") {
            None => DEFAULT_TITLE.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(v) => {
                errors.push(LowerError::at(vec!["title".into()], format!("`title` must be a non-empty string, found {v}"), None));
                String::new()
            }
        };
        for d in cx.deps {
            if !DEPS.contains(&d.as_str()) {
                let help =
                    crate::diag::suggest(d, DEPS.iter().copied()).or_else(|| Some(format!("a report reads the deps {}", crate::diag::ticked(DEPS.iter()))));
                errors.push(LowerError::at(vec!["deps".into(), d.clone()], format!("a `report` stage has no dep `{d}`"), help));
            }
        }
        if !cx.deps.iter().any(|d| d == "stats") {
            errors.push(LowerError::at(
                vec!["deps".into()],
                "a `report` stage needs a dep named `stats`: a `stats` stage's `stats.json`".into(),
                Some("deps = { stats = \"out/stats/stats.json\" }".into()),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Built-in templates are part of the tool, not of the workspace: their digest stands
        // in for them in the key.
        let templates = if cx.deps.iter().any(|d| d == "templates") { Value::Null } else { json!({ "builtin": report::builtin_digest() }) };
        Ok(json!({ "title": title, "templates": templates }))
    }

    fn implied_outs(&self, _config: &Value) -> Vec<(String, String)> {
        vec![
            ("markdown".into(), "report.md".into()),
            ("html".into(), "report.html".into()),
            ("context".into(), "context.json".into()),
            ("plots".into(), "plots/".into()),
        ]
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let start = Instant::now();
        for dep in SINGLE {
            if let Some(paths) = cx.deps.get(*dep)
                && paths.len() > 1
            {
                let list = crate::diag::ticked(paths.iter());
                return Err(format!("the `{dep}` dep must name one file, but it matched {list}").into());
            }
        }
        let deps: BTreeMap<String, Vec<String>> = cx.deps.clone();
        let inputs = Inputs {
            root: cx.root.to_path_buf(),
            node: cx.node.id.clone(),
            title: cx.node.config["title"].as_str().unwrap_or(DEFAULT_TITLE).to_string(),
            deps,
        };
        let rendered = report::render(&inputs).map_err(|e| {
            if let Some(detail) = e.detail() {
                let _ = writeln!(cx.log, "{detail}");
            }
            e.to_string()
        })?;

        let write = |name: &str, bytes: &[u8]| -> Result<(), String> {
            let path = cx.root.join(&cx.outs[name]);
            std::fs::write(&path, bytes).map_err(|e| format!("writing `{}`: {e}", path.display()))
        };
        write("markdown", rendered.markdown.as_bytes())?;
        write("html", rendered.html.as_bytes())?;
        let mut context = serde_json::to_vec_pretty(&rendered.context).map_err(|e| e.to_string())?;
        context.push(b'\n');
        write("context", &context)?;
        let plots = cx.root.join(&cx.outs["plots"]);
        std::fs::create_dir_all(&plots).map_err(StageError::io("creating", &plots))?;
        for p in &rendered.plots {
            let path = plots.join(format!("{}.svg", p.id));
            std::fs::write(&path, &p.svg).map_err(StageError::io("writing", &path))?;
        }
        let _ = writeln!(
            cx.log,
            "rendered report.md ({} bytes), report.html ({} bytes), {} plots in {:.1} ms",
            rendered.markdown.len(),
            rendered.html.len(),
            rendered.plots.len(),
            start.elapsed().as_secs_f64() * 1000.0
        );
        Ok(Outcome::Ok)
    }
}
