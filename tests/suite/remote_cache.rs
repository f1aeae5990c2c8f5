//! The remote cache against a real server: nginx with a WebDAV PUT location on a loopback
//! port (see `support::nginx`), driven through the binary on a study of three `cmd` stages
//! (a file, a directory, a file that reads both).
//!
//! | rule                                                              | checked against                                  |
//! |-------------------------------------------------------------------|--------------------------------------------------|
//! | a pushed study is pulled into an empty cache and built with zero nodes executed | `runs.log`, `--json` records, `out/` byte for byte |
//! | `make` reads through a remote cache and writes back what it ran   | the server's files, records, the summary line    |
//! | a flipped byte in a remote blob is detected, that node rebuilt, the rest restored, the blob healed | records, the warning, the server's file |
//! | an entry stored under another key, or whose key field lies, is refused | records, the warning                        |
//! | a server that refuses connections never fails a build: one warning | exit code, warning count                         |
//! | a server that never answers is given up on once, after the timeout | warning count and text, elapsed time             |
//! | a read-only remote is never written                               | the server's access log and root                 |
//! | credentials come from the environment and reach the server         | nginx `auth_basic` and a Bearer check            |
//! | a URL with credentials is an error naming where it was written     | exit code, diagnostic                            |
//! | degraded results are never uploaded                               | the server's entries                             |

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::nginx::{Access, Nginx, free_port};
use crate::support::workspace::{Make, Workspace};
use serde_json::Value;

const STUDY: &str = r#"
[stages.a]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; echo alpha > $0", "{outs.text}"]
outs = { text = "a.txt" }

[stages.b]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; mkdir -p $1/sub; tr a-z A-Z < $0 > $1/upper.txt; echo beta > $1/sub/beta.txt", "{deps.text}", "{outs.tree}"]
deps = { text = "out/a/a.txt" }
outs = { tree = "tree/" }

[stages.c]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0/upper.txt $1 > $2", "{deps.tree}", "{deps.input}", "{outs.report}"]
deps = { tree = "out/b/tree", input = "src/input.txt" }
outs = { report = "report.txt" }
"#;

/// A checkout of the study: its sources, no cache.
fn checkout(prefix: &str) -> Workspace {
    checkout_with(prefix, "")
}

/// [`checkout`] with `head` written above the stages (a `[cache]` section).
fn checkout_with(prefix: &str, head: &str) -> Workspace {
    let ws = Workspace::new(prefix);
    ws.pipeline(&format!("{head}\n{STUDY}"));
    ws.write("src/input.txt", "from the source tree\n");
    ws
}

/// Nodes whose commands ran since the last call, sorted; the log is emptied.
fn runs(ws: &Workspace) -> Vec<String> {
    let text = fs::read_to_string(ws.path("runs.log")).unwrap_or_default();
    let _ = fs::remove_file(ws.path("runs.log"));
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Every file under `out/`, with its bytes.
fn outs(ws: &Workspace) -> Vec<(String, Vec<u8>)> {
    ws.files("out").into_iter().map(|f| (f.clone(), ws.read(&format!("out/{f}")))).collect()
}

fn remote_hits(m: &Make) -> Vec<String> {
    m.ids(|r| r.remote.is_some())
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("warning:")).collect()
}

fn entries(server: &Nginx) -> Vec<String> {
    server.files().into_iter().filter(|f| f.starts_with("ac/")).collect()
}

#[test]
fn pushed_study_is_pulled_into_an_empty_cache_and_built_with_zero_nodes_executed() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    a.make_ok();
    assert_eq!(runs(&a), ["a", "b", "c"]);
    a.tr(&["cache", "push", "--remote-cache", &url]).code(0).stderr_has("3 of 3 entries pushed");
    assert_eq!(entries(&server).len(), 3, "{:?}", server.files());

    let b = checkout("tr118-remote-b-");
    b.tr(&["cache", "pull", "--remote-cache", &url]).code(0).stderr_has("3 nodes: 3 pulled, 0 already in the local cache, 0 not pulled");
    assert!(b.files("out").is_empty(), "pull fills the cache and leaves `out/` alone: {:?}", b.files("out"));
    let m = b.make_ok();
    assert_eq!(m.ran(), Vec::<String>::new());
    assert_eq!(m.hits(), ["a", "b", "c"]);
    assert_eq!(runs(&b), Vec::<String>::new(), "no command ran in the second checkout");
    assert_eq!(outs(&b), outs(&a));
    b.tr(&["fsck"]).code(0).stdout_has("cache is consistent");
}

#[test]
fn pull_takes_what_the_remote_has_and_skips_the_rest() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    a.make_ok();
    a.tr(&["cache", "push", "a", "--remote-cache", &url]).code(0).stderr_has("1 of 1 entries pushed");

    let b = checkout("tr118-remote-b-");
    let pull = b.tr(&["cache", "pull", "--remote-cache", &url]);
    pull.code(0).stderr_has("3 nodes: 1 pulled, 0 already in the local cache, 2 not pulled");
    let m = b.make_ok();
    assert_eq!(m.ran(), ["b", "c"]);
    assert_eq!(m.hits(), ["a"]);
}

#[test]
fn make_reads_through_the_remote_cache_and_writes_back_what_it_ran() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    let m = a.make_with(&["--remote-cache", &url]);
    m.run.code(0).stderr_has("; cache: 0 local hits, 0 remote hits, ");
    assert_eq!(m.ran(), ["a", "b", "c"]);
    assert_eq!(entries(&server).len(), 3, "written back: {:?}", server.files());
    // a.txt, upper.txt, beta.txt, report.txt, b's listing, the (empty) log.
    assert_eq!(server.files().iter().filter(|f| f.starts_with("cas/")).count(), 6, "{:?}", server.files());

    // The second checkout names the remote in its pipeline, not on the command line.
    let b = checkout_with("tr118-remote-b-", &format!("[cache]\nremote = \"{url}\"\n"));
    let m = b.make_with(&[]);
    m.run.code(0).stderr_has("; cache: 0 local hits, 3 remote hits, ").stderr_has(" s saved");
    assert_eq!(m.ran(), Vec::<String>::new());
    assert_eq!(remote_hits(&m), ["a", "b", "c"]);
    assert!(m.record("b").remote.as_ref().unwrap().bytes_down > 0, "{}", m.run);
    assert_eq!(runs(&b), Vec::<String>::new());
    assert_eq!(outs(&b), outs(&a));

    let again = b.make_with(&[]);
    again.run.code(0).stderr_has("; cache: 3 local hits, 0 remote hits, 0.0 MB down, 0.0 MB up, ~0.0 s saved");
}

#[test]
fn flipped_byte_in_a_remote_blob_is_detected_rebuilt_and_healed() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    a.make_with(&["--remote-cache", &url]).run.code(0);
    let blob = server.file_holding(b"ALPHA\n");
    let mut bytes = fs::read(server.root().join(&blob)).unwrap();
    bytes[0] ^= 1;
    fs::write(server.root().join(&blob), &bytes).unwrap();

    let b = checkout("tr118-remote-b-");
    let m = b.make_with(&["--remote-cache", &url]);
    m.run.code(0);
    assert_eq!(m.ran(), ["b"], "only the node with the corrupt blob is rebuilt\n{}", m.run);
    assert_eq!(remote_hits(&m), ["a", "c"]);
    assert_eq!(runs(&b), ["b"]);
    let sha = blob.trim_start_matches("cas/");
    let w = warnings(&m.run.stderr);
    assert!(
        w.iter().any(|l| l.contains("entry for `b` is not used")
            && l.contains(&format!("blob `tree/upper.txt` (sha256 {})", &sha[..12]))
            && l.contains("does not match its digest")),
        "{}",
        m.run
    );
    assert_eq!(b.read("out/b/tree/upper.txt"), b"ALPHA\n");
    let corrupt_in_cache = b.files("cache/objects").iter().any(|f| b.read(&format!("cache/objects/{f}")) == bytes);
    assert!(!corrupt_in_cache, "the corrupt download never reaches the object store");
    assert_eq!(fs::read(server.root().join(&blob)).unwrap(), b"ALPHA\n", "the rebuild uploads the blob again");
}

/// The keys of a run's nodes, by id.
fn key(m: &Make, id: &str) -> String {
    m.record(id).key.as_deref().unwrap().to_string()
}

#[test]
fn entry_stored_under_another_key_is_rejected() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    let m = a.make_with(&["--remote-cache", &url]);
    let (ka, kc) = (key(&m, "a"), key(&m, "c"));
    // A server that answers for `c` with `a`'s entry.
    fs::copy(server.root().join(format!("ac/{ka}")), server.root().join(format!("ac/{kc}"))).unwrap();

    let b = checkout("tr118-remote-b-");
    let m = b.make_with(&["--remote-cache", &url, "--remote-read-only"]);
    m.run.code(0);
    assert_eq!(m.ran(), ["c"]);
    assert_eq!(remote_hits(&m), ["a", "b"]);
    m.run.stderr_has(&format!("entry for `c` is not used: its manifest is for key {}", &ka[..12]));
    assert_eq!(b.read("out/c/report.txt"), b"ALPHA\nfrom the source tree\n");
}

#[test]
fn entry_whose_key_field_lies_is_rejected() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-remote-a-");
    let m = a.make_with(&["--remote-cache", &url]);
    let (ka, kc) = (key(&m, "a"), key(&m, "c"));
    // `a`'s entry, relabelled as `c`'s: the key field agrees with the name, the content does not.
    let mut entry: Value = serde_json::from_slice(&fs::read(server.root().join(format!("ac/{ka}"))).unwrap()).unwrap();
    entry["manifest"]["key"] = Value::String(kc.clone());
    entry["manifest"]["node"] = Value::String("c".into());
    fs::write(server.root().join(format!("ac/{kc}")), serde_json::to_vec(&entry).unwrap()).unwrap();

    let b = checkout("tr118-remote-b-");
    let m = b.make_with(&["--remote-cache", &url, "--remote-read-only"]);
    m.run.code(0);
    assert_eq!(m.ran(), ["c"]);
    m.run.stderr_has(&format!("entry for `c` is not used: its stage key hashes to {}, not to the key {}", &ka[..12], &kc[..12]));
    assert_eq!(b.read("out/c/report.txt"), b"ALPHA\nfrom the source tree\n");
}

#[test]
fn server_that_refuses_connections_does_not_fail_the_build() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let ws = checkout("tr118-remote-down-");
    let m = ws.make_with(&["--remote-cache", &url]);
    m.run.code(0);
    assert_eq!(m.ran(), ["a", "b", "c"]);
    let w = warnings(&m.run.stderr);
    assert_eq!(w.len(), 1, "exactly one warning\n{}", m.run);
    assert!(w[0].starts_with(&format!("warning: remote cache {url} unreachable (")), "{}", w[0]);
    assert!(w[0].ends_with("); continuing with the local cache only"), "{}", w[0]);

    // Commands whose whole job is the remote do fail.
    ws.tr(&["cache", "push", "--remote-cache", &url]).code(1).stderr_has(&format!("error: remote cache {url} unreachable"));
    checkout("tr118-remote-down-").tr(&["cache", "pull", "--remote-cache", &url]).code(1).stderr_has("unreachable");
}

#[test]
fn server_that_never_answers_is_given_up_on_once_after_the_timeout() {
    // Connections are accepted and held; no byte ever comes back.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    let ws = checkout("tr118-remote-slow-").env("TR118_REMOTE_CACHE_TIMEOUT", "0.5");
    let t0 = Instant::now();
    let m = ws.make_with(&["--remote-cache", &url]);
    m.run.code(0);
    assert_eq!(m.ran(), ["a", "b", "c"]);
    let w = warnings(&m.run.stderr);
    assert_eq!(w.len(), 1, "exactly one warning\n{}", m.run);
    assert!(w[0].contains("timed out"), "{}", w[0]);
    // One timeout for the run, not one per node and attempt.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn read_only_remote_is_never_written() {
    let server = Nginx::start();
    let url = server.url();
    let ws = checkout("tr118-remote-ro-");
    let m = ws.make_with(&["--remote-cache", &url, "--remote-read-only"]);
    m.run.code(0);
    assert_eq!(m.ran(), ["a", "b", "c"]);
    let requests = server.requests();
    assert_eq!(requests.iter().filter(|r| r.starts_with("GET /ac/")).count(), 3, "every node was looked up: {requests:?}");
    assert!(!requests.iter().any(|r| r.starts_with("PUT")), "{requests:?}");
    assert_eq!(server.files(), Vec::<String>::new());

    // The same from the pipeline; and `=false` on the command line lifts it.
    let ro = checkout_with("tr118-remote-ro-", &format!("[cache]\nremote = \"{url}\"\nread_only = true\n"));
    ro.make_with(&[]).run.code(0);
    assert_eq!(server.files(), Vec::<String>::new());
    ro.tr(&["cache", "push"]).code(2).stderr_has("is read-only here").stderr_has("--remote-read-only=false");
    ro.tr(&["cache", "push", "--remote-read-only=false"]).code(0).stderr_has("3 of 3 entries pushed");
}

#[test]
fn basic_credentials_from_the_environment_reach_the_server() {
    let server = Nginx::start_with(Access::Basic("ci", "s3cret"));
    let url = server.url();
    let anonymous = checkout("tr118-remote-auth-");
    let m = anonymous.make_with(&["--remote-cache", &url]);
    m.run.code(0).stderr_has("HTTP 401; check the credentials in `TR118_REMOTE_CACHE_TOKEN`");
    assert_eq!(server.files(), Vec::<String>::new());

    let ci = checkout("tr118-remote-auth-").env("TR118_REMOTE_CACHE_USER", "ci").env("TR118_REMOTE_CACHE_PASSWORD", "s3cret");
    let m = ci.make_with(&["--remote-cache", &url]);
    m.run.code(0);
    assert_eq!(warnings(&m.run.stderr), Vec::<&str>::new());
    assert_eq!(entries(&server).len(), 3);
}

#[test]
fn bearer_token_from_the_environment_reaches_the_server() {
    let server = Nginx::start_with(Access::Bearer("t0ken"));
    let url = server.url();
    let wrong = checkout("tr118-remote-auth-").env("TR118_REMOTE_CACHE_TOKEN", "guess");
    wrong.make_ok();
    wrong.tr(&["cache", "push", "--remote-cache", &url]).code(1).stderr_has("HTTP 401");
    let right = checkout("tr118-remote-auth-").env("TR118_REMOTE_CACHE_TOKEN", "t0ken");
    right.make_ok();
    right.tr(&["cache", "push", "--remote-cache", &url]).code(0).stderr_has("3 of 3 entries pushed");
}

#[test]
fn url_with_credentials_is_an_error_naming_where_it_was_written() {
    let secret = "http://ci:s3cret@127.0.0.1:9/";
    let ws = checkout_with("tr118-remote-url-", &format!("[cache]\nremote = \"{secret}\"\n"));
    let run = ws.tr(&["make"]);
    run.diag(2, "`cache.remote` holds credentials").stderr_has("`TR118_REMOTE_CACHE_USER`");
    assert!(!run.stderr.contains("s3cret"), "{run}");

    let ws = checkout("tr118-remote-url-");
    let run = ws.tr(&["make", "--remote-cache", secret]);
    run.code(2).stderr_has("`--remote-cache` holds credentials");
    assert!(!run.stderr.contains("s3cret"), "{run}");
    let ws = checkout("tr118-remote-url-").env("TR118_REMOTE_CACHE", secret);
    ws.tr(&["make"]).code(2).stderr_has("`TR118_REMOTE_CACHE` holds credentials");
    assert_eq!(ws.files("out"), Vec::<String>::new(), "nothing ran");
}

#[test]
fn unknown_field_in_cache_section_is_reported_with_a_suggestion() {
    let ws = checkout_with("tr118-remote-field-", "[cache]\nremot = \"http://127.0.0.1:9\"\n");
    ws.tr(&["make"]).diag_at(2, 1, "unknown field `remot` in `cache`").stderr_has("did you mean `remote`?");
}

#[test]
fn degraded_results_are_never_uploaded() {
    let server = Nginx::start();
    let url = server.url();
    let ws = Workspace::new("tr118-remote-degraded-");
    ws.pipeline(
        r#"
[stages.d]
cmd = ["sh", "-c", "echo cpu result > $0; echo 'no GPU here' > \"$TR118_DEGRADED_FILE\"", "{outs.x}"]
outs = { x = "x.txt" }

[stages.e]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/d/x.txt" }
outs = { y = "y.txt" }
"#,
    );
    let m = ws.make_with(&["--remote-cache", &url]);
    m.run.code(0);
    assert_eq!(m.status("d"), "degraded");
    assert_eq!(entries(&server), [format!("ac/{}", key(&m, "e"))], "only the ok node is shared");
    // Nor does `cache push` share it.
    ws.tr(&["cache", "push", "--remote-cache", &url]).code(0).stderr_has("1 of 1 entries pushed, 1 degraded not shared");
}
