//! Nothing the cache hands back is trusted: entries crafted with consistent hashes by anyone
//! who can write to a remote cache (served by `support::http` on a loopback port), a local
//! `cache/` edited by hand, corrupt or shared objects, links under `out/` and in outputs,
//! panics, slow servers. Each test is one attack or accident, driven through the binary.
//!
//! | rule                                                                        | test |
//! |-----------------------------------------------------------------------------|------|
//! | a remote entry whose manifest names a path outside its node is refused       | `remote_output_path_outside_the_node_is_refused` |
//! | a remote listing naming `..` or an absolute path is refused                  | `remote_listing_outside_its_directory_is_refused` |
//! | a remote entry declaring a blob larger than the local policy is refused unasked | `remote_blob_larger_than_the_policy_is_never_downloaded` |
//! | a server trickling a body times out once, without retries                    | `slow_server_is_not_retried` |
//! | a local manifest naming a path outside its node is rebuilt, and fsck says why | `local_manifest_with_escaping_path_is_rebuilt_and_reported` |
//! | a flipped bit in a listing is caught; the node is rebuilt                    | `flipped_bit_in_a_listing_is_caught` |
//! | a listing that no longer parses is rebuilt, no repair needed                 | `unparseable_listing_is_rebuilt` |
//! | a manifest whose digest or size was edited is rebuilt, and fsck says why     | `edited_manifest_is_rebuilt_and_reported` |
//! | an object shared by many nodes, corrupt, rebuilds every one of them          | `corrupt_object_shared_by_eight_nodes_rebuilds_them_all` |
//! | `cache/objects` that is a file is named in the error                         | `objects_that_is_a_file_is_named` |
//! | a panic fails its node with the message, the build exits promptly            | `panic_fails_its_node_and_never_hangs` |
//! | an output that is a link out of the workspace is refused                     | `output_linking_outside_the_workspace_is_refused` |
//! | a link inside a directory output is named, dangling or outside               | `link_inside_a_directory_output_is_named` |
//! | a link under `out/` is replaced, never written through                       | `link_under_out_is_replaced_not_followed` |

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::http::Server;
use crate::support::workspace::{Make, Workspace};
use serde_json::json;
use tr118::digest::{Digest, Tree, TreeEntry};
use tr118::remote::http::sha256_hex;
use tr118::store::Manifest;

const STUDY: &str = r#"
[stages.a]
cmd = ["sh", "-c", "echo alpha > $0", "{outs.text}"]
outs = { text = "a.txt" }

[stages.b]
cmd = ["sh", "-c", "mkdir -p $1/sub; tr a-z A-Z < $0 > $1/upper.txt; echo beta > $1/sub/beta.txt", "{deps.text}", "{outs.tree}"]
deps = { text = "out/a/a.txt" }
outs = { tree = "tree/" }

[stages.c]
cmd = ["sh", "-c", "cat $0/upper.txt > $1", "{deps.tree}", "{outs.report}"]
deps = { tree = "out/b/tree" }
outs = { report = "report.txt" }
"#;

fn study(prefix: &str) -> Workspace {
    let ws = Workspace::new(prefix);
    ws.pipeline(STUDY);
    ws
}

fn built(prefix: &str) -> Workspace {
    let ws = study(prefix);
    assert_eq!(ws.make_ok().ran(), ["a", "b", "c"]);
    ws
}

fn object_path(ws: &Workspace, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    ws.path(&format!("cache/objects/{}/{}", &hex[..2], &hex[2..]))
}

/// The manifest `node` was last built with.
fn manifest(ws: &Workspace, node: &str) -> Manifest {
    let key = String::from_utf8(ws.read(&format!("cache/refs/{}", node.replace('/', "~")))).unwrap();
    serde_json::from_slice(&ws.read(&format!("cache/actions/{}.json", key.trim()))).unwrap()
}

fn write_manifest(ws: &Workspace, m: &Manifest) {
    ws.write(&format!("cache/actions/{}.json", m.key.to_hex()), serde_json::to_vec(m).unwrap());
}

/// Overwrites an object (read-only in the store) with `bytes`.
fn overwrite_object(ws: &Workspace, d: &Digest, bytes: &[u8]) {
    let p = object_path(ws, d);
    let _ = fs::remove_file(&p);
    fs::write(&p, bytes).unwrap();
}

/// Serves `m` as a remote entry, with `blobs` under their SHA-256 names, hashes consistent:
/// what anyone with write access to the server can store.
fn serve(server: &Server, m: &Manifest, blobs: &[(Vec<u8>, Option<u64>)]) {
    let listed: Vec<_> = blobs
        .iter()
        .map(|(bytes, size)| {
            let sha = sha256_hex(bytes);
            server.put(&format!("cas/{sha}"), bytes.clone());
            json!({ "blake3": Digest::of_bytes(bytes), "sha256": sha, "size": size.unwrap_or(bytes.len() as u64) })
        })
        .collect();
    let entry = json!({ "schema": 1, "manifest": m, "blobs": listed });
    server.put(&format!("ac/{}", m.key.to_hex()), serde_json::to_vec(&entry).unwrap());
}

fn warning_for<'a>(m: &'a Make, node: &str) -> &'a str {
    let prefix = format!("warning: the remote cache's entry for `{node}` is not used: ");
    m.run.stderr.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no warning for `{node}`\n{}", m.run))
}

#[test]
fn remote_output_path_outside_the_node_is_refused() {
    let source = built("tr118-hostile-src-");
    let server = Server::start();
    let mut m = manifest(&source, "a");
    m.outputs[0].path = "../../escaped.txt".into();
    let bytes = b"written by whoever controls the server\n".to_vec();
    m.outputs[0].digest = Digest::of_bytes(&bytes);
    m.outputs[0].size = bytes.len() as u64;
    let m = m.sealed();
    serve(&server, &m, &[(bytes, None)]);

    let ws = study("tr118-hostile-dst-");
    let run = ws.make_with(&["--remote-cache", server.url(), "--remote-read-only"]);
    run.run.code(0);
    assert!(warning_for(&run, "a").contains("`..` component"), "{}", run.run);
    assert!(!ws.path("escaped.txt").exists(), "the entry chose where to write");
    assert_eq!(run.ran(), ["a", "b", "c"]);
    assert_eq!(ws.read("out/a/a.txt"), b"alpha\n");
    ws.tr(&["fsck"]).code(0).stdout_has("consistent");
}

#[test]
fn remote_listing_outside_its_directory_is_refused() {
    let source = built("tr118-hostile-src-");
    let server = Server::start();
    let payload = b"planted\n".to_vec();
    let abs = format!("{}/abs-escaped.txt", std::env::temp_dir().join("tr118-never-written").display());
    for planted in ["../../listing-escaped.txt", abs.as_str()] {
        let mut m = manifest(&source, "b");
        let tree = Tree { entries: vec![TreeEntry { path: planted.to_string(), digest: Digest::of_bytes(&payload), size: payload.len() as u64, exec: false }] };
        let listing = tree.to_bytes();
        m.outputs[0].digest = Digest::of_bytes(&listing);
        m.outputs[0].size = tree.size();
        let m = m.sealed();
        serve(&server, &m, &[(listing, None), (payload.clone(), None)]);

        let ws = study("tr118-hostile-dst-");
        let run = ws.make_with(&["--remote-cache", server.url(), "--remote-read-only"]);
        run.run.code(0);
        let w = warning_for(&run, "b");
        assert!(w.contains("listing") && (w.contains("`..`") || w.contains("absolute")), "{w}");
        assert!(!ws.path("out/listing-escaped.txt").exists());
        assert!(!PathBuf::from(&abs).exists());
        assert_eq!(ws.files("out/b/tree"), ["sub/beta.txt", "upper.txt"]);
    }
}

#[test]
fn remote_blob_larger_than_the_policy_is_never_downloaded() {
    let source = built("tr118-hostile-src-");
    let server = Server::start();
    let mut m = manifest(&source, "a");
    m.outputs[0].size = 1 << 40;
    let m = m.sealed();
    serve(&server, &m, &[(b"alpha\n".to_vec(), Some(1 << 40))]);

    let ws = study("tr118-hostile-dst-");
    let run = ws.make_with(&["--remote-cache", server.url(), "--remote-read-only"]);
    run.run.code(0);
    let w = warning_for(&run, "a");
    assert!(w.contains("1099511627776 bytes"), "{w}");
    assert!(!server.requests().iter().any(|r| r.contains("/cas/")), "a blob was asked for: {:?}", server.requests());
    // The policy is local and can be tightened.
    let small = study("tr118-hostile-dst-").env("TR118_REMOTE_CACHE_MAX_BLOB", "3");
    let mut m = manifest(&source, "a");
    m = m.sealed();
    serve(&server, &m, &[(ws.read("out/a/a.txt"), None)]);
    let run = small.make_with(&["--remote-cache", server.url(), "--remote-read-only"]);
    assert!(warning_for(&run, "a").contains("more than `TR118_REMOTE_CACHE_MAX_BLOB` allows (3 bytes)"), "{}", run.run);
}

#[test]
fn slow_server_is_not_retried() {
    let source = built("tr118-hostile-src-");
    let server = Server::start();
    let m = manifest(&source, "a");
    serve(&server, &m, &[(b"alpha\n".to_vec(), None)]);
    server.trickle(Duration::from_millis(400));

    let ws = study("tr118-hostile-dst-").env("TR118_REMOTE_CACHE_TIMEOUT", "1.5");
    let t0 = Instant::now();
    let run = ws.make_with(&["--remote-cache", server.url(), "--remote-read-only"]);
    run.run.code(0);
    run.run.stderr_has("timed out");
    let asked = server.requests().iter().filter(|r| r.starts_with("GET /cache/ac/")).count();
    assert_eq!(asked, 1, "a timed-out request was retried: {:?}", server.requests());
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

#[test]
fn local_manifest_with_escaping_path_is_rebuilt_and_reported() {
    let ws = built("tr118-hostile-local-");
    let mut m = manifest(&ws, "a");
    m.outputs[0].path = "../../escaped.txt".into();
    write_manifest(&ws, &m.sealed());
    fs::remove_dir_all(ws.path("out")).unwrap();

    let fsck = ws.tr(&["fsck"]);
    fsck.code(1).stdout_has("`..` component");
    let run = ws.make_ok();
    assert!(!ws.path("escaped.txt").exists());
    assert_eq!(run.ran(), ["a"]);
    assert!(run.record("a").reason.as_deref().unwrap().contains("cache entry cannot be used"), "{}", run.run);
    assert_eq!(ws.read("out/a/a.txt"), b"alpha\n");
}

#[test]
fn flipped_bit_in_a_listing_is_caught() {
    let ws = built("tr118-hostile-flip-");
    let m = manifest(&ws, "b");
    let mut listing = fs::read(object_path(&ws, &m.outputs[0].digest)).unwrap();
    let at = listing.windows(9).position(|w| w == b"upper.txt").unwrap();
    listing[at + 6] ^= 0x08; // `upper.txt` → `upper.|xt`
    overwrite_object(&ws, &m.outputs[0].digest, &listing);
    fs::remove_dir_all(ws.path("out")).unwrap();

    let run = ws.make_ok();
    assert_eq!(run.ran(), ["b"], "{}", run.run);
    assert_eq!(ws.files("out/b/tree"), ["sub/beta.txt", "upper.txt"]);
    ws.tr(&["fsck"]).code(0);
}

#[test]
fn unparseable_listing_is_rebuilt() {
    let ws = built("tr118-hostile-garbled-");
    let m = manifest(&ws, "b");
    overwrite_object(&ws, &m.outputs[0].digest, b"{\"entries\": [{\"pa");
    let run = ws.make_ok();
    assert_eq!(run.ran(), ["b"], "{}", run.run);
    assert_eq!(ws.read("out/b/tree/upper.txt"), b"ALPHA\n");
    assert_eq!(ws.make_ok().ran(), Vec::<String>::new());
}

#[test]
fn edited_manifest_is_rebuilt_and_reported() {
    let ws = built("tr118-hostile-edit-");
    let other = manifest(&ws, "c").outputs[0].digest;
    for edit in ["digest", "size"] {
        let mut m = manifest(&ws, "a");
        match edit {
            "digest" => m.outputs[0].digest = other,
            _ => m.outputs[0].size += 1,
        }
        write_manifest(&ws, &m);
        let fsck = ws.tr(&["fsck"]);
        fsck.code(1).stdout_has("seal does not match");
        let run = ws.make_ok();
        assert_eq!(run.ran(), ["a"], "{edit}: {}", run.run);
        assert!(run.record("a").reason.as_deref().unwrap().contains("seal"), "{}", run.run);
        assert_eq!(ws.read("out/a/a.txt"), b"alpha\n");
        ws.tr(&["fsck"]).code(0);
    }
}

#[test]
fn corrupt_object_shared_by_eight_nodes_rebuilds_them_all() {
    let ws = Workspace::new("tr118-hostile-shared-");
    ws.pipeline(
        r#"
[stages.same]
matrix = { n = [1, 2, 3, 4, 5, 6, 7, 8] }
cmd = ["sh", "-c", "echo same > $0", "{outs.text}"]
outs = { text = "same.txt" }
"#,
    );
    ws.make_ok();
    let d = manifest(&ws, "same/1").outputs[0].digest;
    overwrite_object(&ws, &d, b"damaged\n");
    fs::remove_dir_all(ws.path("out")).unwrap();
    for jobs in ["1", "4"] {
        let run = ws.make_with(&["-j", jobs]);
        run.run.code(0);
        for n in 1..=8 {
            assert_eq!(ws.read(&format!("out/same/{n}/same.txt")), b"same\n", "-j {jobs}");
        }
        overwrite_object(&ws, &d, b"damaged\n");
        fs::remove_dir_all(ws.path("out")).unwrap();
    }
}

#[test]
fn objects_that_is_a_file_is_named() {
    let ws = built("tr118-hostile-objects-");
    fs::remove_dir_all(ws.path("cache/objects")).unwrap();
    ws.write("cache/objects", "not a directory");
    for args in [&["make"][..], &["fsck", "--repair"]] {
        let run = ws.tr(args);
        run.code(1).stderr_has("cache/objects").stderr_has("must be a directory");
    }
}

#[test]
fn panic_fails_its_node_and_never_hangs() {
    let ws = Workspace::new("tr118-hostile-panic-").env("TR118_TEST_PANIC", "b");
    ws.pipeline(
        r#"
[stages.a]
cmd = ["sh", "-c", "echo a > $0", "{outs.o}"]
outs = { o = "a.txt" }
[stages.b]
cmd = ["sh", "-c", "echo b > $0", "{outs.o}"]
outs = { o = "b.txt" }
[stages.c]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.b}", "{outs.o}"]
deps = { b = "out/b/b.txt" }
outs = { o = "c.txt" }
"#,
    );
    let t0 = Instant::now();
    let run = ws.make_with(&["--keep-going"]);
    assert!(t0.elapsed() < Duration::from_secs(20));
    run.run.code(1).stderr_has("`b` failed: tr118 panicked at ").stderr_has("TR118_TEST_PANIC");
    assert_eq!(run.status("a"), "ok");
    assert_eq!(run.status("b"), "failed");
    assert_eq!(run.status("c"), "skipped");
}

#[test]
fn output_linking_outside_the_workspace_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "not yours\n").unwrap();
    let ws = Workspace::new("tr118-hostile-link-");
    ws.write("inside.txt", "in the workspace\n");
    ws.pipeline(&format!(
        r#"
[stages.far]
cmd = ["ln", "-s", "{}", "{{outs.o}}"]
outs = {{ o = "o.txt" }}
[stages.near]
cmd = ["sh", "-c", "ln -s $PWD/inside.txt $0", "{{outs.o}}"]
outs = {{ o = "o.txt" }}
"#,
        outside.path().join("secret.txt").display()
    ));
    let run = ws.make_with(&["--keep-going"]);
    run.run.code(1).stderr_has("outside the workspace");
    assert_eq!(run.status("far"), "failed");
    assert_eq!(run.status("near"), "ok");
    assert!(!fs::symlink_metadata(ws.path("out/near/o.txt")).unwrap().file_type().is_symlink());
    assert_eq!(ws.read("out/near/o.txt"), b"in the workspace\n");
}

#[test]
fn link_inside_a_directory_output_is_named() {
    let ws = Workspace::new("tr118-hostile-dirlink-");
    ws.pipeline(
        r#"
[stages.dangling]
cmd = ["sh", "-c", "mkdir -p $0 && echo x > $0/ok.txt && ln -s nowhere.txt $0/gone.txt", "{outs.d}"]
outs = { d = "d/" }
[stages.outside]
cmd = ["sh", "-c", "mkdir -p $0 && ln -s /etc/hostname $0/host.txt", "{outs.d}"]
outs = { d = "d/" }
"#,
    );
    let run = ws.make_with(&["--keep-going"]);
    run.run
        .code(1)
        .stderr_has("`gone.txt` is a symbolic link to `nowhere.txt`, which does not exist")
        .stderr_has("`host.txt` is a symbolic link to `/etc/hostname`, outside the workspace");
}

#[test]
fn link_under_out_is_replaced_not_followed() {
    let ws = built("tr118-hostile-outlink-");
    // Even with the very same content: a link is never left standing in for an output.
    ws.write("same/a.txt", "alpha\n");
    fs::remove_dir_all(ws.path("out/a")).unwrap();
    std::os::unix::fs::symlink(ws.path("same"), ws.path("out/a")).unwrap();
    assert!(ws.make_ok().ran().is_empty());
    assert!(fs::symlink_metadata(ws.path("out/a")).unwrap().is_dir());
    ws.write("elsewhere/a.txt", "someone else's file\n");
    fs::remove_dir_all(ws.path("out/a")).unwrap();
    std::os::unix::fs::symlink(ws.path("elsewhere"), ws.path("out/a")).unwrap();
    let run = ws.make_ok();
    assert!(run.ran().is_empty(), "{}", run.run);
    assert_eq!(ws.read("elsewhere/a.txt"), b"someone else's file\n");
    assert!(fs::symlink_metadata(ws.path("out/a")).unwrap().is_dir());
    assert_eq!(ws.read("out/a/a.txt"), b"alpha\n");
}
