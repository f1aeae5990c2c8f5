//! Pipelines: TOML in, validated and matrix-expanded node specs out.
//!
//! Parsing happens in two steps. `serde` reads the document into raw tables (unknown
//! top-level sections are rejected with a suggestion); then each stage table is lowered by
//! hand through [`fields::Fields`], so that every problem — an unknown field, a bad path, a
//! placeholder that names nothing — is reported with its line and column, all at once.
//!
//! ```toml
//! [params]
//! reps = 10
//!
//! [axes]
//! backend = [{ name = "cpu", threads = 4 }, { name = "cuda", threads = 1 }]
//!
//! [stages.sweep]
//! matrix = { backend = "backend", scenario = ["short", "long"] }
//! cmd = ["python3", "sweep.py", "--reps", "{params.reps}", "--model", "{deps.model}", "-o", "{outs.records}"]
//! deps = { model = "out/export/model.onnx" }
//! outs = { records = "records.jsonl" }
//! params = { threads = "{matrix.backend.threads}" }
//! timing = true
//! ```

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::backend::BackendSpec;
use crate::diag::{self, Diagnostic, Diagnostics};
use crate::digest::Digest;
use crate::facets;
use crate::paths::check_rel_path;

pub(crate) mod fields;
pub(crate) mod kind;
pub(crate) mod limits;
pub(crate) mod source;
pub(crate) mod template;

use fields::{Fields, to_json};
use kind::{LowerCx, StageKind};
use limits::{Limits, NodeBudget};
use source::{FieldPath, Source};
use template::Lookup;

/// A validated pipeline: every node of every stage, matrix expanded, in declaration order.
pub struct Pipeline {
    pub file: PathBuf,
    /// Digest of the pipeline file's bytes, for reports; keys never use it.
    pub digest: Digest,
    pub params: BTreeMap<String, Value>,
    pub stages: Vec<String>,
    pub nodes: Vec<NodeSpec>,
    pub source: Source,
    /// `[cache]`: the remote cache, if the pipeline names one.
    pub cache: crate::remote::Section,
}

/// One node: a stage at one point of its matrix.
pub struct NodeSpec {
    /// `stage` or `stage/<axis value>/<axis value>…`, stable across runs.
    pub id: String,
    pub stage: String,
    pub kind: &'static dyn StageKind,
    /// Axis name → the full value (a table value keeps all its fields).
    pub matrix: BTreeMap<String, Value>,
    /// The `backend` matrix value as a backend, validated where the pipeline was loaded;
    /// `None` when the node has no such value or it is not a valid backend (then only kinds
    /// that run no backend accept the node).
    pub backend: Option<Arc<BackendSpec>>,
    /// The stage's params, resolved, plus every global param the stage refers to.
    pub params: BTreeMap<String, Value>,
    /// What the kind made of its own fields; enters the key.
    pub config: Value,
    pub deps: Vec<DepSpec>,
    pub outs: Vec<OutSpec>,
    pub facets: Vec<String>,
    /// The user's own version of the stage: bump it to force a rerun.
    pub version: u32,
    /// A timing stage runs alone on its device.
    pub timing: bool,
    pub device: String,
    /// Where the stage is declared, for later diagnostics.
    pub field: FieldPath,
}

/// A declared input: a workspace file or directory, or a pattern over other nodes' outputs.
#[derive(Debug, Clone)]
pub struct DepSpec {
    pub name: String,
    pub patterns: Vec<String>,
    pub field: FieldPath,
}

/// A declared output, written under `out/<node-id>/`.
#[derive(Debug, Clone)]
pub struct OutSpec {
    pub name: String,
    /// Relative to the node's output directory, without a trailing `/`.
    pub path: String,
    pub dir: bool,
    /// Where it is declared, for errors found at run time.
    pub field: FieldPath,
}

impl NodeSpec {
    /// Where an output of this node is materialised, relative to the workspace.
    pub(crate) fn out_path(&self, out: &OutSpec) -> String {
        format!("out/{}/{}", self.id, out.path)
    }

    /// Whether this node's results may be reused on a machine other than the one that made
    /// them without mixing machines up: anything but a timing node, or a timing node whose
    /// key names the machine.
    pub(crate) fn names_its_machine(&self) -> bool {
        !self.timing || crate::facets::name_a_machine(&self.facets)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    axes: toml::Table,
    #[serde(default)]
    stages: toml::Table,
    /// `[[backends]]`: the axis `backend`, declared where a study's reader looks for it.
    #[serde(default)]
    backends: Option<toml::Value>,
    /// `[cache]`: where the remote cache is (see `remote`); never part of a key.
    #[serde(default)]
    cache: Option<toml::Table>,
    /// `[limits]`: bounds on what the pipeline may ask for (see `limits`); never part of a key.
    #[serde(default)]
    limits: Option<toml::Table>,
}

/// Fields every stage table may have, whatever its kind.
const COMMON_FIELDS: &[&str] = &["kind", "desc", "matrix", "deps", "outs", "params", "version", "timing", "device", "facets"];

impl Pipeline {
    /// Reads and validates `file`, with `-p name=value` overrides applied to global params; a
    /// stage's `kind` names one of `kinds`, which validates the stage's own fields.
    pub fn load(file: &Path, overrides: &[(String, String)], kinds: &[&'static dyn StageKind]) -> Result<Pipeline, Diagnostics> {
        Pipeline::parse(file, Pipeline::read(file)?, overrides, kinds)
    }

    /// The text of the pipeline `file`, read once and no further than the size limit: `-f` may
    /// name a pipe, so whoever needs the bytes and the pipeline gets both from this.
    pub fn read(file: &Path) -> Result<String, Diagnostics> {
        read_limited(file).map_err(|(message, help)| Diagnostics(vec![Diagnostic { file: file.to_path_buf(), line: 0, column: 0, message, help }]))
    }

    /// [`Pipeline::load`] of `text`, read from `file` by [`Pipeline::read`].
    pub fn parse(file: &Path, text: String, overrides: &[(String, String)], kinds: &[&'static dyn StageKind]) -> Result<Pipeline, Diagnostics> {
        let digest = Digest::of_bytes(text.as_bytes());
        let src = Source::new(file, text).map_err(|d| Diagnostics(vec![d]))?;
        let raw: RawPipeline = toml::from_str(&src.text).map_err(|e| {
            let message = e.message().lines().next().unwrap_or("").to_string();
            let help = suggest_from_serde(&message);
            Diagnostics(vec![src.diag_at(e.span().map(|s| s.start), message, help)])
        })?;

        let mut diags = Vec::new();
        let limits = Limits::from_table(raw.limits.as_ref(), &src, &mut diags);
        if raw.stages.is_empty() {
            diags.push(src.diag(
                &["stages".to_string()],
                "the pipeline declares no stages: there is nothing to build",
                Some("add one, e.g. `[stages.hello]` with `cmd = [\"echo\", \"hello\"]`; or pass another pipeline with `-f FILE`".to_string()),
            ));
        }
        let cache = raw.cache.as_ref().map(|t| cache_section(t, &src, &mut diags)).unwrap_or_default();
        let mut params: BTreeMap<String, Value> = raw.params.iter().map(|(k, v)| (k.clone(), to_json(v))).collect();
        for (name, value) in overrides {
            match params.get_mut(name) {
                Some(slot) => *slot = parse_override(value),
                None => diags.push(Diagnostic {
                    file: file.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: format!("`-p {name}=…` names no param in `[params]`"),
                    help: diag::suggest(name, params.keys().map(String::as_str)),
                }),
            }
        }

        let mut axes = BTreeMap::new();
        for (name, value) in &raw.axes {
            let path = vec!["axes".to_string(), name.clone()];
            if let Some(values) = axis_values(value, &path, &src, &mut diags) {
                axes.insert(name.clone(), values);
            }
        }

        if let Some(backends) = &raw.backends {
            let path = vec!["backends".to_string()];
            if axes.contains_key("backend") {
                diags.push(src.diag(&path, "`[[backends]]` and `[axes] backend` both declare the axis `backend`; keep one", None));
            } else if let Some(mut values) = axis_values(backends, &path, &src, &mut diags) {
                for v in &mut values {
                    let derived = crate::backend::derived_fields(&v.value);
                    if let Some(table) = v.value.as_object_mut() {
                        table.extend(derived);
                    }
                }
                // Checked here, where they are written; the nodes that run them share the result.
                for (i, v) in values.iter().enumerate() {
                    for (field, message) in v.backend().as_ref().err().into_iter().flatten() {
                        let mut at = vec!["backends".to_string(), i.to_string()];
                        if !field.is_empty() {
                            at.push(field.clone());
                        }
                        diags.push(src.diag(&at, format!("backend `{}`: {message}", v.id), None));
                    }
                }
                axes.insert("backend".to_string(), values);
            }
        }

        let mut stages = Vec::new();
        let mut nodes = Vec::new();
        let mut budget = NodeBudget::new(&limits);
        for (name, value) in &raw.stages {
            let path = vec!["stages".to_string(), name.clone()];
            if !is_id_segment(name) {
                diags.push(src.diag(&path, format!("stage name `{name}` may only use letters, digits, `_` and `-`"), None));
                continue;
            }
            let Some(table) = value.as_table() else {
                diags.push(src.diag(&path, format!("stage `{name}` must be a table (`[stages.{name}]`)"), None));
                continue;
            };
            stages.push(name.clone());
            let cx = StageCx { name, path, src: &src, globals: &params, axes: &axes, kinds };
            nodes.extend(cx.lower(table, &mut budget, &mut diags));
        }

        // Every node of a matrix repeats its stage's mistakes: say each once.
        let mut unique: Vec<Diagnostic> = Vec::with_capacity(diags.len());
        for d in diags {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        let diags = unique;
        if diags.is_empty() { Ok(Pipeline { file: file.to_path_buf(), digest, params, stages, nodes, source: src, cache }) } else { Err(Diagnostics(diags)) }
    }
}

/// Lowers `[cache]`, reporting unknown fields and a bad `remote` at their line and column.
fn cache_section(table: &toml::Table, src: &Source, diags: &mut Vec<Diagnostic>) -> crate::remote::Section {
    let path: FieldPath = vec!["cache".to_string()];
    let mut f = Fields::new(table, path, src, diags);
    let remote = f.string("remote");
    let read_only = f.boolean("read_only");
    let remote = remote.filter(|url| match crate::remote::check_url(url, "cache.remote") {
        Ok(_) => true,
        Err(e) => {
            let p = f.child("remote");
            f.error(&p, e.to_string(), e.help());
            false
        }
    });
    f.finish();
    crate::remote::Section { remote, read_only }
}

/// The pipeline's text, read no further than [`limits::MAX_FILE_BYTES`]: `-f /dev/zero` must
/// fail at once, not after filling memory. An error is a message and a help line.
fn read_limited(file: &Path) -> Result<String, (String, Option<String>)> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        let help = (e.kind() == std::io::ErrorKind::NotFound).then(|| "pass another pipeline with `-f FILE`, or create this one".to_string());
        (format!("cannot read pipeline: {e}"), help)
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file).and_then(|f| f.take(limits::MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(cannot)?;
    if bytes.len() as u64 > limits::MAX_FILE_BYTES {
        let mib = limits::MAX_FILE_BYTES >> 20;
        let help = format!("is `{}` the pipeline you meant? pass another with `-f FILE`", file.display());
        return Err((format!("pipeline is larger than {mib} MiB, the limit for a pipeline file"), Some(help)));
    }
    String::from_utf8(bytes)
        .map_err(|e| (format!("cannot read pipeline: it is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()), None))
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a suggestion.
fn suggest_from_serde(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (word, rest) = rest.split_once('`')?;
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    diag::suggest(word, candidates)
}

fn parse_override(text: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(t) => t.get("v").map_or(Value::String(text.to_string()), to_json),
        Err(_) => Value::String(text.to_string()),
    }
}

/// Node id segments and stage names: no separators, nothing a shell or a path would mangle.
fn is_id_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// One value of a matrix axis: its id segment and its full value.
#[derive(Clone)]
struct AxisValue {
    id: String,
    value: Value,
    /// The value read as a backend, once, the first time a node's `backend` axis holds it.
    backend: OnceCell<ParsedBackend>,
}

/// A `backend` axis value, validated: the backend, or its problems as `(field, message)`.
type ParsedBackend = Result<Arc<BackendSpec>, Vec<(String, String)>>;

impl AxisValue {
    fn backend(&self) -> &ParsedBackend {
        self.backend.get_or_init(|| BackendSpec::from_value(&self.value).map(Arc::new))
    }
}

fn axis_values(value: &toml::Value, path: &FieldPath, src: &Source, diags: &mut Vec<Diagnostic>) -> Option<Vec<AxisValue>> {
    let Some(items) = value.as_array() else {
        diags.push(src.diag(path, format!("axis `{}` must be a list of values", path.last().map_or("", |s| s)), None));
        return None;
    };
    if items.is_empty() {
        diags.push(src.diag(path, "an axis needs at least one value", None));
        return None;
    }
    let mut out: Vec<AxisValue> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut p = path.clone();
        p.push(i.to_string());
        let id = match item {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Table(t) => t.get("name").and_then(|n| n.as_str()).map(str::to_string),
            _ => None,
        };
        let Some(id) = id else {
            let msg = match item {
                toml::Value::Table(_) => "a table axis value needs a string `name`".to_string(),
                other => format!("axis values are strings, integers, booleans or tables with a `name`, found {}", other.type_str()),
            };
            diags.push(src.diag(&p, msg, None));
            continue;
        };
        if !is_id_segment(&id) {
            diags.push(src.diag(&p, format!("axis value `{id}` may only use letters, digits, `.`, `_` and `-` (it becomes part of node ids)"), None));
            continue;
        }
        if out.iter().any(|a| a.id == id) {
            diags.push(src.diag(&p, format!("axis value `{id}` appears twice"), None));
            continue;
        }
        out.push(AxisValue { id, value: to_json(item), backend: OnceCell::new() });
    }
    Some(out)
}

struct StageCx<'a> {
    name: &'a str,
    path: FieldPath,
    src: &'a Source,
    globals: &'a BTreeMap<String, Value>,
    axes: &'a BTreeMap<String, Vec<AxisValue>>,
    kinds: &'a [&'static dyn StageKind],
}

/// A stage's declarations, shared by all its nodes.
struct StageDecl<'a> {
    kind: &'static dyn StageKind,
    deps: Vec<Decl>,
    outs: Vec<Decl>,
    params: Option<&'a toml::Table>,
    kind_fields: toml::Table,
    version: u32,
    timing: bool,
    device: String,
    facets: Vec<String>,
    /// The last node's kind fields and what the kind made of them.
    lowered: Option<Lowered>,
}

/// Kind fields, dep names and out names, and the config the kind lowered them to.
type Lowered = (serde_json::Map<String, Value>, Vec<String>, Vec<String>, Value);

/// A declared dep or out before matrix resolution.
struct Decl {
    name: String,
    templates: Vec<String>,
    field: FieldPath,
}

impl StageCx<'_> {
    fn lower(&self, table: &toml::Table, budget: &mut NodeBudget, diags: &mut Vec<Diagnostic>) -> Vec<NodeSpec> {
        let before = diags.len();
        let mut f = Fields::new(table, self.path.clone(), self.src, diags);
        let kind_name = f.string("kind").unwrap_or_else(|| "cmd".to_string());
        let kind = self.kinds.iter().copied().find(|k| k.name() == kind_name);
        if kind.is_none() {
            let p = f.child("kind");
            let help = diag::suggest(&kind_name, self.kinds.iter().map(|k| k.name()))
                .or_else(|| Some(format!("known kinds: {}", self.kinds.iter().map(|k| format!("`{}`", k.name())).collect::<Vec<_>>().join(", "))));
            f.error(&p, format!("unknown stage kind `{kind_name}`"), help);
        }
        f.string("desc");
        let mut matrix = self.matrix(&mut f);
        // Counted before anything is expanded: a matrix of 10^9 nodes must fail here, at once.
        if let Some(axes) = &matrix {
            let lengths: Vec<usize> = axes.iter().map(|(_, values)| values.len()).collect();
            let at = if table.contains_key("matrix") { f.child("matrix") } else { self.path.clone() };
            if let Err(d) = budget.take(self.name, &lengths, &at, self.src) {
                f.diags.push(d);
                matrix = None;
            }
        }
        let deps = self.decls(&mut f, "deps", true);
        let outs = self.decls(&mut f, "outs", false);
        let params = f.table("params");
        let version = f.uint("version").unwrap_or(0);
        // A kind whose every node is a measurement is timed whatever the stage says.
        let timing = f.boolean("timing").unwrap_or(false) || kind.is_some_and(|k| k.timing());
        let device = f.string("device").unwrap_or_else(|| "cpu".to_string());
        let facet_names = f.string_list("facets").unwrap_or_default();
        for (i, name) in facet_names.iter().enumerate() {
            if let Err(e) = facets::check_name(name) {
                let p = {
                    let mut p = f.child("facets");
                    p.push(i.to_string());
                    p
                };
                f.error(&p, e.message, e.help);
            }
        }
        let mut kind_fields = toml::Table::new();
        if let Some(kind) = kind {
            for name in kind.fields() {
                if let Some(v) = f.get(name) {
                    kind_fields.insert(name.to_string(), v.clone());
                }
            }
        } else {
            // Accept everything so that only the kind is reported, not each of its fields.
            for key in table.keys() {
                if !COMMON_FIELDS.contains(&key.as_str()) {
                    f.get(key);
                }
            }
        }
        f.finish();
        let (Some(kind), Some(matrix)) = (kind, matrix) else { return Vec::new() };
        if diags.len() > before {
            return Vec::new();
        }

        let mut decl = StageDecl { kind, deps, outs, params, kind_fields, version, timing, device, facets: facet_names, lowered: None };
        let mut nodes = Vec::new();
        for combo in product(&matrix) {
            if let Some(node) = self.node(&mut decl, &combo, diags) {
                nodes.push(node);
            }
        }
        nodes
    }

    /// The stage's axes, in the order written, each with its values.
    fn matrix(&self, f: &mut Fields<'_, '_>) -> Option<Vec<(String, Vec<AxisValue>)>> {
        let Some(value) = f.get("matrix") else { return Some(Vec::new()) };
        let path = f.child("matrix");
        let mut axes = Vec::new();
        let named = |axis: &str, p: &FieldPath, f: &mut Fields<'_, '_>| match self.axes.get(axis) {
            Some(values) => Some(values.clone()),
            None => {
                let help = diag::suggest(axis, self.axes.keys().map(String::as_str))
                    .or_else(|| Some(format!("declare it under `[axes]`, e.g. `{axis} = [\"a\", \"b\"]`")));
                f.error(p, format!("axis `{axis}` is not declared under `[axes]`"), help);
                None
            }
        };
        match value {
            toml::Value::Array(names) => {
                for (i, n) in names.iter().enumerate() {
                    let p = {
                        let mut p = path.clone();
                        p.push(i.to_string());
                        p
                    };
                    let Some(axis) = n.as_str() else {
                        f.error(&p, "a `matrix` list names axes declared under `[axes]`", None);
                        return None;
                    };
                    axes.push((axis.to_string(), named(axis, &p, f)?));
                }
            }
            toml::Value::Table(t) => {
                for (axis, v) in t {
                    let p = {
                        let mut p = path.clone();
                        p.push(axis.clone());
                        p
                    };
                    let values = match v {
                        toml::Value::String(name) => named(name, &p, f)?,
                        other => axis_values(other, &p, self.src, f.diags)?,
                    };
                    axes.push((axis.clone(), values));
                }
            }
            other => {
                f.error(&path, format!("`matrix` must be a table of axes or a list of axis names, found {}", other.type_str()), None);
                return None;
            }
        }
        for (axis, _) in &axes {
            if !is_id_segment(axis) {
                f.error(&path, format!("axis name `{axis}` may only use letters, digits, `_` and `-`"), None);
                return None;
            }
        }
        Some(axes)
    }

    /// `deps` or `outs`: a list of paths (named by position) or a table of named paths.
    /// Deps may name several paths under one name.
    fn decls(&self, f: &mut Fields<'_, '_>, field: &'static str, many: bool) -> Vec<Decl> {
        let Some(value) = f.get(field) else { return Vec::new() };
        let path = f.child(field);
        let mut out = Vec::new();
        let entries: Vec<(String, &toml::Value)> = match value {
            toml::Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            toml::Value::Table(t) => t.iter().map(|(k, v)| (k.clone(), v)).collect(),
            other => {
                f.error(&path, format!("`{field}` must be a list of paths or a table of named paths, found {}", other.type_str()), None);
                return out;
            }
        };
        for (name, v) in entries {
            let p = {
                let mut p = path.clone();
                p.push(name.clone());
                p
            };
            let templates = match v {
                toml::Value::String(s) => Some(vec![s.clone()]),
                toml::Value::Array(items) if many => items.iter().map(|i| i.as_str().map(str::to_string)).collect(),
                _ => None,
            };
            match templates {
                Some(templates) => out.push(Decl { name, templates, field: p }),
                None => {
                    let what = if many { "a path or a list of paths" } else { "a path" };
                    f.error(&p, format!("each entry of `{field}` must be {what}, found {}", v.type_str()), None);
                }
            }
        }
        out
    }

    fn node(&self, decl: &mut StageDecl<'_>, combo: &[(&str, &AxisValue)], diags: &mut Vec<Diagnostic>) -> Option<NodeSpec> {
        let (kind, params) = (decl.kind, decl.params);
        let mut id = self.name.to_string();
        for (_, v) in combo {
            id.push('/');
            id.push_str(&v.id);
        }
        let before = diags.len();
        let backend = combo.iter().find(|(axis, _)| *axis == "backend").map(|(_, v)| v.backend());
        let matrix: BTreeMap<String, Value> = combo.iter().map(|(axis, v)| (axis.to_string(), v.value.clone())).collect();
        let mut r = Resolver { node: &id, stage: self.name, matrix, globals: self.globals, stage_params: None, used: BTreeSet::new() };
        let resolve = |r: &mut Resolver<'_>, v: &toml::Value, path: &FieldPath, pass: Pass, diags: &mut Vec<Diagnostic>| {
            let mut at = path.clone();
            r.value(v, pass, &mut at).map_err(|e| diags.push(self.src.diag(&at, e, None))).ok()
        };

        // Stage params see the matrix and global params, not each other.
        let mut stage_params = BTreeMap::new();
        if let Some(t) = params {
            for (k, v) in t {
                let p = {
                    let mut p = self.path.clone();
                    p.extend(["params".to_string(), k.clone()]);
                    p
                };
                if let Some(v) = resolve(&mut r, v, &p, Pass::Load, diags) {
                    stage_params.insert(k.clone(), v);
                }
            }
        }
        r.stage_params = Some(&stage_params);

        let mut node_deps = Vec::new();
        for d in &decl.deps {
            let mut patterns = Vec::new();
            for (i, t) in d.templates.iter().enumerate() {
                let p = if d.templates.len() > 1 {
                    let mut p = d.field.clone();
                    p.push(i.to_string());
                    p
                } else {
                    d.field.clone()
                };
                match r.string(t, Pass::Load) {
                    Ok(s) => match check_rel_path(&s, "dep") {
                        Ok(()) => patterns.push(s.trim_end_matches('/').to_string()),
                        Err(e) => diags.push(self.src.diag(&p, e, None)),
                    },
                    Err(e) => diags.push(self.src.diag(&p, e, None)),
                }
            }
            node_deps.push(DepSpec { name: d.name.clone(), patterns, field: d.field.clone() });
        }
        // A backend may add deps of its own: files its sessions read besides the models the
        // stage names (see `backend::implied_deps`).
        if let Some(backend) = r.matrix.get("backend") {
            for (name, path) in crate::backend::implied_deps(backend) {
                let field = {
                    let mut p = self.path.clone();
                    p.push("matrix".into());
                    p
                };
                if node_deps.iter().any(|d| d.name == name) {
                    diags.push(self.src.diag(&field, format!("dep `{name}` is the backend's own (its `{name}`); give the stage's dep another name"), None));
                } else if check_rel_path(&path, "dep").is_ok() {
                    node_deps.push(DepSpec { name, patterns: vec![path], field });
                }
            }
        }

        let mut node_outs: Vec<OutSpec> = Vec::new();
        for o in &decl.outs {
            match r.string(&o.templates[0], Pass::Load) {
                Ok(s) => match check_rel_path(&s, "out") {
                    Ok(()) if s.contains('*') => diags.push(self.src.diag(&o.field, format!("out `{s}` may not contain `*`"), None)),
                    Ok(()) => {
                        let dir = s.ends_with('/');
                        let path = s.trim_end_matches('/').to_string();
                        if let Some(prev) =
                            node_outs.iter().find(|x| x.path == path || path.starts_with(&format!("{}/", x.path)) || x.path.starts_with(&format!("{path}/")))
                        {
                            diags.push(self.src.diag(&o.field, format!("out `{path}` overlaps out `{}`", prev.path), None));
                        } else {
                            node_outs.push(OutSpec { name: o.name.clone(), path, dir, field: o.field.clone() });
                        }
                    }
                    Err(e) => diags.push(self.src.diag(&o.field, e, None)),
                },
                Err(e) => diags.push(self.src.diag(&o.field, e, None)),
            }
        }

        let mut fields = serde_json::Map::new();
        for (k, v) in &decl.kind_fields {
            let p = {
                let mut p = self.path.clone();
                p.push(k.clone());
                p
            };
            let pass = if kind.keeps_placeholders() { Pass::Validate } else { Pass::Kind };
            if let Some(v) = resolve(&mut r, v, &p, pass, diags) {
                fields.insert(k.clone(), v);
            }
        }
        if diags.len() > before {
            return None;
        }
        let dep_names: Vec<String> = node_deps.iter().map(|d| d.name.clone()).collect();
        let out_names: Vec<String> = node_outs.iter().map(|o| o.name.clone()).collect();
        let config = match &decl.lowered {
            // Nodes of one stage usually lower the very same fields: do it once.
            Some((f, d, o, c)) if *f == fields && *d == dep_names && *o == out_names && !kind.reads_matrix() => Ok(c.clone()),
            _ => kind.lower(&LowerCx {
                node: &id,
                fields: &fields,
                deps: &dep_names,
                outs: &out_names,
                matrix: &r.matrix,
                backend: backend.map(|b| b.as_ref().map(|spec| &**spec).map_err(Vec::as_slice)),
            }),
        };
        let config = match config {
            Ok(c) => {
                decl.lowered = Some((fields, dep_names, out_names, c.clone()));
                c
            }
            Err(errors) => {
                for e in errors {
                    let mut p = self.path.clone();
                    p.extend(e.field);
                    diags.push(self.src.diag(&p, e.message, e.help));
                }
                return None;
            }
        };

        for (name, path) in kind.implied_outs(&config) {
            if node_outs.iter().any(|o| o.name == name || o.path == path.trim_end_matches('/')) {
                let msg = format!("out `{name}` (`{path}`) is written by kind `{}` itself; remove it from `outs`", kind.name());
                diags.push(self.src.diag(&self.path, msg, None));
                return None;
            }
            let dir = path.ends_with('/');
            node_outs.push(OutSpec { name, path: path.trim_end_matches('/').to_string(), dir, field: self.path.clone() });
        }
        let used = r.used;
        let matrix = r.matrix;
        // A matrix value may add facets of its own: a torch backend's nodes depend on the
        // torch installed, the stage's other nodes do not.
        let mut facets = decl.facets.clone();
        for value in matrix.values() {
            for f in value.get("facets").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !facets.iter().any(|g| g == f) {
                    facets.push(f.to_string());
                }
            }
        }
        let mut all_params = stage_params;
        for name in &used {
            if !all_params.contains_key(name) {
                all_params.insert(name.clone(), self.globals[name].clone());
            }
        }
        Some(NodeSpec {
            id: id.clone(),
            stage: self.name.to_string(),
            kind,
            matrix,
            backend: backend.and_then(|b| b.as_ref().ok().cloned()),
            params: all_params,
            config,
            deps: node_deps,
            outs: node_outs,
            facets,
            version: decl.version,
            timing: decl.timing,
            device: decl.device.clone(),
            field: self.path.clone(),
        })
    }
}

/// The cartesian product of the axes, first axis outermost.
fn product(axes: &[(String, Vec<AxisValue>)]) -> Vec<Vec<(&str, &AxisValue)>> {
    let mut out: Vec<Vec<(&str, &AxisValue)>> = vec![Vec::new()];
    for (name, values) in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((name.as_str(), v));
                    p
                })
            })
            .collect();
    }
    out
}

/// How far load-time resolution goes.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    /// Resolve everything; `{deps.*}` and `{outs.*}` are errors (paths, params).
    Load,
    /// Resolve everything but keep `{deps.*}` / `{outs.*}` for run time (kind fields).
    Kind,
    /// Check every placeholder names something, and keep them all (see
    /// [`StageKind::keeps_placeholders`]).
    Validate,
}

/// Load-time placeholder resolution for one node.
struct Resolver<'a> {
    node: &'a str,
    stage: &'a str,
    matrix: BTreeMap<String, Value>,
    globals: &'a BTreeMap<String, Value>,
    stage_params: Option<&'a BTreeMap<String, Value>>,
    /// Global params the node referred to: they enter its key.
    used: BTreeSet<String>,
}

/// `{matrix.AXIS}` or `{matrix.AXIS.FIELD…}` against a node's matrix values; a table value
/// stands for its `name`.
pub(crate) fn matrix_lookup(matrix: &BTreeMap<String, Value>, stage: &str, name: &[String]) -> Result<Value, String> {
    let full = name.join(".");
    let Some(v) = matrix.get(&name[1]) else {
        let help = diag::suggest(&name[1], matrix.keys().map(String::as_str)).map_or(String::new(), |h| format!("; {h}"));
        return Err(format!("placeholder `{{{full}}}`: stage `{stage}` has no axis `{}`{help}", name[1]));
    };
    match v {
        Value::Object(m) if name.len() == 2 => Ok(m.get("name").cloned().unwrap_or(Value::Null)),
        other => field(other, &name[2..], &full),
    }
}

/// `{params.NAME…}` against a node's resolved params; `None` when there is no such param.
pub(crate) fn params_lookup(params: &BTreeMap<String, Value>, name: &[String]) -> Option<Result<Value, String>> {
    params.get(&name[1]).map(|v| field(v, &name[2..], &name.join(".")))
}

impl Resolver<'_> {
    fn lookup(&mut self, name: &[String], pass: Pass) -> Lookup {
        let full = name.join(".");
        let found = match name[0].as_str() {
            "node" if name.len() == 1 => Ok(Value::String(self.node.to_string())),
            "stage" if name.len() == 1 => Ok(Value::String(self.stage.to_string())),
            "matrix" if name.len() >= 2 => matrix_lookup(&self.matrix, self.stage, name),
            "params" if name.len() >= 2 => match self.stage_params.and_then(|p| params_lookup(p, name)) {
                Some(r) => r,
                None => match params_lookup(self.globals, name) {
                    Some(r) => {
                        self.used.insert(name[1].clone());
                        r
                    }
                    None => {
                        let mut known: Vec<&str> = self.globals.keys().map(String::as_str).collect();
                        if let Some(p) = self.stage_params {
                            known.extend(p.keys().map(String::as_str));
                        }
                        let help = diag::suggest(&name[1], known).map_or(String::new(), |h| format!("; {h}"));
                        Err(format!("placeholder `{{{full}}}` names no param{help}"))
                    }
                },
            },
            "deps" | "outs" if pass != Pass::Load => return Lookup::Keep,
            "deps" | "outs" => Err(format!("placeholder `{{{full}}}` can only be used in the kind's own fields, such as `cmd`")),
            _ => Err(format!(
                "unknown placeholder `{{{full}}}`; placeholders are `{{matrix.AXIS}}`, `{{params.NAME}}`, `{{deps.NAME}}`, `{{outs.NAME}}`, `{{node}}` and `{{stage}}`"
            )),
        };
        match found {
            Ok(_) if pass == Pass::Validate => Lookup::Keep,
            Ok(v) => Lookup::Value(v),
            Err(e) => Lookup::Unknown(e),
        }
    }

    fn string(&mut self, s: &str, pass: Pass) -> Result<String, String> {
        match template::resolve(s, &mut |n| self.lookup(n, pass), false)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("`{s}` must resolve to text")),
        }
    }

    /// Resolves every string in `v`. On error, `at` is left at the failing element.
    fn value(&mut self, v: &toml::Value, pass: Pass, at: &mut FieldPath) -> Result<Value, String> {
        Ok(match v {
            toml::Value::String(s) => template::resolve(s, &mut |n| self.lookup(n, pass), false)?,
            toml::Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, x) in a.iter().enumerate() {
                    at.push(i.to_string());
                    out.push(self.value(x, pass, at)?);
                    at.pop();
                }
                Value::Array(out)
            }
            toml::Value::Table(t) => {
                let mut out = serde_json::Map::new();
                for (k, x) in t {
                    at.push(k.clone());
                    out.insert(k.clone(), self.value(x, pass, at)?);
                    at.pop();
                }
                Value::Object(out)
            }
            other => to_json(other),
        })
    }
}

fn field(base: &Value, rest: &[String], full: &str) -> Result<Value, String> {
    let mut v = base;
    for part in rest {
        match v.get(part.as_str()) {
            Some(x) => v = x,
            None => {
                let help = match v {
                    Value::Object(m) => diag::suggest(part, m.keys().map(String::as_str)).map_or(String::new(), |h| format!("; {h}")),
                    _ => String::new(),
                };
                return Err(format!("placeholder `{{{full}}}`: no field `{part}`{help}"));
            }
        }
    }
    Ok(v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_unknown_field_gets_a_suggestion() {
        let m = "unknown field `stagez`, expected one of `params`, `axes`, `stages`";
        assert_eq!(suggest_from_serde(m).as_deref(), Some("did you mean `stages`?"));
    }
}
