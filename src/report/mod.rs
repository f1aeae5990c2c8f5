//! The study's report: artifacts in, Markdown and self-contained HTML out, through minijinja
//! templates, with SVG charts. Rendering reads only files the `report` stage declares as deps
//! ([`crate::stage::report`] lists them); it never measures, and it never reads the cache.
//!
//! ## Why only deps
//!
//! A node's key holds the digests of its deps and nothing else of the workspace, so anything
//! the report read besides them (a manifest in `cache/actions/`, a node's timings) could
//! change without the report rerunning, and a cached report would show stale text. Every
//! artifact the study writes already says what its node did (`status`, `reason`, times such
//! as `export_ms`, `build_s`, `elapsed_s`), so the report reads those.
//!
//! The pipeline's digest ([`crate::pipeline::Pipeline::digest`]) is not in any key, and the
//! report does not get it behind the engine's back: a stage that wants it declares the
//! pipeline file as its `pipeline` dep. Its digest is then an input like any other (an edit
//! to the pipeline reruns the report, which takes milliseconds), and the reproducibility
//! section shows the file, its blake3 digest — the same bytes `Pipeline::digest` hashes — and
//! the command. Without that dep the section says the pipeline was not recorded.
//!
//! ## Templates
//!
//! Two templates, `report.md.j2` and `report.html.j2`, get the same context. They come from
//! the stage's `templates` dep — a directory holding both (and any file they include), or the
//! two files — or, without that dep, from the copies of the repository's `templates/` built
//! into the binary ([`BUILTIN_MD`], [`BUILTIN_HTML`]; their digest is in the stage's config,
//! so a tool with other built-in templates renders again). As a dep, a template is an input:
//! editing it reruns the report and nothing else.
//!
//! Undefined variables are errors (minijinja's strict mode): a misspelt name fails the node
//! with the template's path and line instead of printing nothing. A number that is undefined
//! in the data is `none`, which the filters print as [`format::UNDEFINED`]. Templates whose
//! name contains `.html` are HTML-escaped; charts are inserted as trusted markup (`svg`).
//!
//! Filters, registered here and documented in [`format`](mod@format): `num(digits=3)`, `est(lo, hi)`
//! (`mean [lo, hi]`), `ci(hi)` on `lo`, `plain` (a configured value as written), `pct`, `pvalue`, `count`, `bytes`, `share`, `cell`
//! (a Markdown table cell: `|` escaped, one line), `short(n=12)` (a digest's first
//! characters), `anchor` (a string as an HTML id) and `inline` (text as HTML with its
//! `quoted` names as code).
//!
//! ## The context
//!
//! `context.json` beside the report holds it exactly, for template authors; the charts are in
//! `svg` (id → SVG markup) and are left out of the file.
//!
//! | key            | holds                                                                 |
//! |----------------|-----------------------------------------------------------------------|
//! | `title`, `node`, `tool_version`, `baseline`, `alpha` | what is reported, by what             |
//! | `backends`     | `{name, color}` in the stats' order; a backend's colour is the same in every chart |
//! | `abstract`, `findings` | sentences computed from the data (see [`context`])            |
//! | `limitations`  | every degraded reason with its count: `{area, subject, reason, count, of, unit}` |
//! | `absent`       | `{dep, what}` for each kind of artifact the stage was not given        |
//! | `methodology`  | the statistics' `methods`, each sweep's settings and harness costs, the perplexity windowing, the gate's thresholds |
//! | `environment`  | `machine` (`{label, value}`: OS, CPU, GPU, driver, ONNX Runtime, TensorRT, tool) and `backends` (what ran where) |
//! | `sanity`       | `checkpoint`, `exports`, `quantize` (INT8 coverage), `trt` (layers by precision), `perplexity` (with the uniform model's PPL), `logits` |
//! | `modes`        | per mode: `overall` (the stats' pooled rows, every backend), `rows` (per scenario) and `comparisons` of the backends with an ok run in the mode, `unmeasured` (the others), `scenarios`, `best`, `plots`, `has_ttft`, `has_resources`, `has_gpu` |
//! | `degraded_plot`, `modes[].plots.*` | `{id, title, file, caption}`; the markup is `svg[id]`          |
//! | `gate`         | `reference`, `reference_ppl`, `status`, `reason`, `rows` (with `verdict`) |
//! | `int8`         | the INT8 recipes, when a sweep ran a `quantize` node's model: `reference`, `threshold`, `rows` (`backend`, `node`, `recipe`, `quantized`, `matmul_total`, `ppl`, `rel_delta`, `verdict`, `speedup` with `speedup_min`/`speedup_max` over `scenarios`), `plot` (PPL change against prefill speed-up) |
//! | `overhead`     | `{step, what, seconds, bytes, note}` for exports, calibration, quantization, TensorRT builds, perplexity |
//! | `warnings`     | sentences: comparison notes, inconsistent generations, top-token disagreements, INT8 not run as INT8, a perplexity at or above the uniform model's, more than one machine |
//! | `reproducibility` | `command`, `pipeline` (`{path, digest}`), `tool_version`, `artifacts` (`{dep, path, digest, bytes}`; a directory's digest is its listing's, as the cache computes it) |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Value as JinjaValue;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

pub(crate) mod context;
pub(crate) mod format;
pub(crate) mod plots;

/// The repository's templates, built in for workspaces that declare none.
pub(crate) const BUILTIN_MD: &str = include_str!("../../templates/report.md.j2");
pub(crate) const BUILTIN_HTML: &str = include_str!("../../templates/report.html.j2");

/// The two templates a report renders.
pub(crate) const MD_TEMPLATE: &str = "report.md.j2";
pub(crate) const HTML_TEMPLATE: &str = "report.html.j2";

/// Digest of the built-in templates, for the key of a stage that uses them.
pub(crate) fn builtin_digest() -> String {
    let mut bytes = BUILTIN_MD.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(BUILTIN_HTML.as_bytes());
    crate::digest::Digest::of_bytes(&bytes).to_hex()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("reading `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("`{path}`: {message}")]
    Artifact { path: String, message: String },
    #[error("a report needs the `stats` dep: a `stats` stage's `stats.json`")]
    NoStats,
    #[error("the `templates` dep has no `{name}`; it must hold both `{MD_TEMPLATE}` and `{HTML_TEMPLATE}` (copy the repository's `templates/` to start from)")]
    MissingTemplate { name: String },
    /// A template that does not parse or does not render: `at` is its path and line.
    #[error("{at}: {message}")]
    Template { at: String, message: String, detail: String },
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
}

impl ReportError {
    /// minijinja's view of where the error is (source lines around it), for the log.
    pub(crate) fn detail(&self) -> Option<&str> {
        match self {
            ReportError::Template { detail, .. } if !detail.is_empty() => Some(detail),
            _ => None,
        }
    }
}

/// What a report is made from: the stage's deps by name, workspace-relative.
pub(crate) struct Inputs {
    pub root: PathBuf,
    pub node: String,
    pub title: String,
    pub deps: BTreeMap<String, Vec<String>>,
}

impl Inputs {
    pub(crate) fn paths(&self, dep: &str) -> &[String] {
        self.deps.get(dep).map_or(&[], Vec::as_slice)
    }
}

/// A chart: its id, where the Markdown finds it, and the markup.
#[derive(Debug, Clone)]
pub(crate) struct Plot {
    pub id: String,
    pub title: String,
    /// Relative to the report: `plots/<id>.svg`.
    pub file: String,
    pub caption: String,
    pub svg: String,
}

impl Plot {
    fn new(id: &str, title: &str, caption: &str, svg: String) -> Plot {
        Plot { id: id.to_string(), title: title.to_string(), file: format!("plots/{id}.svg"), caption: caption.to_string(), svg }
    }
}

/// A rendered report.
pub(crate) struct Rendered {
    pub markdown: String,
    pub html: String,
    pub context: Value,
    pub plots: Vec<Plot>,
}

/// Template name → (source, the path shown in errors).
type Sources = BTreeMap<String, (String, String)>;

fn template_sources(inputs: &Inputs) -> Result<Sources, ReportError> {
    let mut out = Sources::new();
    let paths = inputs.paths("templates");
    if paths.is_empty() {
        out.insert(MD_TEMPLATE.into(), (BUILTIN_MD.into(), format!("templates/{MD_TEMPLATE} (built in)")));
        out.insert(HTML_TEMPLATE.into(), (BUILTIN_HTML.into(), format!("templates/{HTML_TEMPLATE} (built in)")));
        return Ok(out);
    }
    let read = |rel: &str| std::fs::read_to_string(inputs.root.join(rel)).map_err(|e| ReportError::Read { path: rel.to_string(), message: e.to_string() });
    for p in paths {
        let full = inputs.root.join(p);
        if full.is_dir() {
            let files = crate::digest::list_files(&full).map_err(|e| ReportError::Read { path: p.clone(), message: e.to_string() })?;
            for f in files {
                let rel = format!("{}/{f}", p.trim_end_matches('/'));
                out.insert(f.clone(), (read(&rel)?, rel));
            }
        } else {
            let name = Path::new(p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.clone());
            out.insert(name, (read(p)?, p.clone()));
        }
    }
    for name in [MD_TEMPLATE, HTML_TEMPLATE] {
        if !out.contains_key(name) {
            return Err(ReportError::MissingTemplate { name: name.into() });
        }
    }
    Ok(out)
}

/// A minijinja error as `path line N: kind: detail`, naming the template file.
fn template_error(e: &minijinja::Error, sources: &Sources) -> ReportError {
    // The innermost error with a location is the one in the user's file.
    let mut located: &minijinja::Error = e;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(m) = err.downcast_ref::<minijinja::Error>()
            && m.name().is_some()
            && m.line().is_some()
        {
            located = m;
        }
        cur = err.source();
    }
    let name = located.name().unwrap_or("template");
    let path = sources.get(name).map_or(name.to_string(), |(_, p)| p.clone());
    let at = match located.line() {
        Some(line) => format!("`{path}` line {line}"),
        None => format!("`{path}`"),
    };
    let mut message = match located.detail() {
        Some(d) => format!("{}: {d}", located.kind()),
        None => located.kind().to_string(),
    };
    // minijinja does not name an undefined variable; the line that uses it does.
    let source_line = located.line().and_then(|l| sources.get(name).and_then(|(src, _)| src.lines().nth(l.saturating_sub(1)))).map(str::trim);
    if let Some(text) = source_line.filter(|t| !t.is_empty() && t.chars().count() <= 160) {
        message.push_str(&format!(", in `{text}`"));
    }
    let detail = format!("{}", located.display_debug_info());
    ReportError::Template { at, message, detail }
}

fn number(v: &JinjaValue, filter: &str) -> Result<Option<f64>, minijinja::Error> {
    if v.is_none() || v.is_undefined() {
        return Ok(None);
    }
    f64::try_from(v.clone())
        .map(|x| Some(x).filter(|x| x.is_finite()))
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, format!("the `{filter}` filter formats numbers, and got {v:?}")))
}

fn environment(sources: &Sources) -> Result<Environment<'static>, ReportError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| if name.contains(".html") { AutoEscape::Html } else { AutoEscape::None });
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("num", |v: JinjaValue, digits: Option<usize>| -> Result<String, minijinja::Error> {
        Ok(format::sig_opt(number(&v, "num")?, digits.unwrap_or(3)))
    });
    env.add_filter("est", |v: JinjaValue, lo: JinjaValue, hi: JinjaValue| -> Result<String, minijinja::Error> {
        Ok(format::estimate(number(&v, "est")?, number(&lo, "est")?, number(&hi, "est")?))
    });
    env.add_filter("ci", |lo: JinjaValue, hi: JinjaValue| -> Result<String, minijinja::Error> { Ok(format::interval(number(&lo, "ci")?, number(&hi, "ci")?)) });
    env.add_filter("plain", |v: JinjaValue| -> Result<String, minijinja::Error> {
        Ok(number(&v, "plain")?.map_or_else(|| format::UNDEFINED.to_string(), format::plain))
    });
    env.add_filter("pct", |v: JinjaValue| -> Result<String, minijinja::Error> { Ok(format::pct(number(&v, "pct")?)) });
    env.add_filter("pvalue", |v: JinjaValue| -> Result<String, minijinja::Error> { Ok(format::pvalue(number(&v, "pvalue")?)) });
    env.add_filter("share", |v: JinjaValue| -> Result<String, minijinja::Error> { Ok(format::share(number(&v, "share")?)) });
    env.add_filter("count", |v: JinjaValue| -> Result<String, minijinja::Error> {
        Ok(number(&v, "count")?.map_or_else(|| format::UNDEFINED.to_string(), |x| format::count(x.round() as i64)))
    });
    env.add_filter("bytes", |v: JinjaValue| -> Result<String, minijinja::Error> {
        Ok(number(&v, "bytes")?.map_or_else(|| format::UNDEFINED.to_string(), format::bytes))
    });
    env.add_filter("cell", |v: JinjaValue| -> String {
        if v.is_none() || v.is_undefined() {
            return format::UNDEFINED.to_string();
        }
        let s = v.to_string();
        if s.is_empty() { format::UNDEFINED.to_string() } else { s.replace('|', "\\|").replace(['\n', '\r'], " ") }
    });
    env.add_filter("short", |v: JinjaValue, n: Option<usize>| -> String {
        if v.is_none() || v.is_undefined() {
            return format::UNDEFINED.to_string();
        }
        v.to_string().chars().take(n.unwrap_or(12)).collect()
    });
    env.add_filter("inline", |v: JinjaValue| -> JinjaValue { JinjaValue::from_safe_string(inline_html(&v.to_string())) });
    env.add_filter("anchor", |v: JinjaValue| -> String {
        v.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
    });
    env.add_global("UNDEFINED", format::UNDEFINED);
    for (name, (source, _)) in sources {
        env.add_template_owned(name.clone(), source.clone()).map_err(|e| template_error(&e, sources))?;
    }
    Ok(env)
}

/// Text as HTML, with `name` spans (as reasons and notes quote names) set as code.
fn inline_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let escape = |s: &str, out: &mut String| {
        for c in s.chars() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
    };
    let parts: Vec<&str> = text.split('`').collect();
    // An odd number of parts means every backtick is paired.
    let paired = parts.len() % 2 == 1;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && !paired {
            out.push('`');
        }
        if paired && i % 2 == 1 {
            out.push_str("<code>");
            escape(part, &mut out);
            out.push_str("</code>");
        } else {
            escape(part, &mut out);
        }
    }
    out
}

/// Reads the artifacts and renders both templates.
pub(crate) fn render(inputs: &Inputs) -> Result<Rendered, ReportError> {
    let sources = template_sources(inputs)?;
    let env = environment(&sources)?;
    let artifacts = context::Artifacts::read(inputs)?;
    let (data, plots) = context::build(inputs, &artifacts)?;
    let svg: BTreeMap<String, JinjaValue> = plots.iter().map(|p| (p.id.clone(), JinjaValue::from_safe_string(p.svg.clone()))).collect();
    let ctx = minijinja::context! { svg => svg, ..JinjaValue::from_serialize(&data) };
    let render = |name: &str| env.get_template(name).and_then(|t| t.render(&ctx)).map_err(|e| template_error(&e, &sources));
    Ok(Rendered { markdown: render(MD_TEMPLATE)?, html: render(HTML_TEMPLATE)?, context: data, plots })
}

#[cfg(test)]
mod tests {
    use super::inline_html;

    #[test]
    fn quoted_names_become_code_and_the_rest_is_escaped() {
        assert_eq!(inline_html("`trtexec` not found <here> & `x`"), "<code>trtexec</code> not found &lt;here&gt; &amp; <code>x</code>");
        assert_eq!(inline_html("an odd ` stays"), "an odd ` stays");
    }
}
