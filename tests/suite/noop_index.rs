//! The no-op index (`cache/index/`): a `make` or `status` whose request, facets and recorded
//! stats are unchanged answers from it without parsing the pipeline. Every test here first
//! gets an index written (a full no-op, its files out of the racy window), sees it hold, then
//! changes one thing and checks that the answer is the full path's: what changed reruns or
//! is restored, and `-v` says which path was taken and why.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::support::sorted;
use crate::support::workspace::{BIN, Make, Run, Workspace};

/// a → b, and a matrix of sweeps below b with a glob fan-in, and a node with a source dep.
const PIPELINE: &str = r##"
[params]
reps = 3

[axes]
scenario = ["short", "long"]

[stages.a]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; echo a > $0", "{outs.x}"]
outs = { x = "x.txt" }

[stages.b]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0 > $1; echo b >> $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.txt" }
outs = { y = "y.txt" }

[stages.sweep]
matrix = ["scenario"]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0 > $1; echo $2 $3 >> $1", "{deps.y}", "{outs.r}", "{matrix.scenario}", "{params.reps}"]
deps = { y = "out/b/y.txt" }
outs = { r = "r.txt" }

[stages.src]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0 > $1", "{deps.in}", "{outs.copy}"]
deps = { in = "input.txt" }
outs = { copy = "copy.txt" }

[stages.tree]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; mkdir -p $0/sub; echo one > $0/one; echo two > $0/sub/two", "{outs.d}"]
outs = { d = "d/" }

[stages.d]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; echo result > $0; echo 'fell back to CPU: no GPU' > \"$TR118_DEGRADED_FILE\"", "{outs.x}"]
outs = { x = "x.txt" }
"##;

const NODES: &[&str] = &["a", "b", "d", "src", "sweep/long", "sweep/short", "tree"];

fn project() -> Workspace {
    let p = Workspace::new("tr118-index-").local();
    p.pipeline(PIPELINE);
    p.write("input.txt", "hello\n");
    p
}

/// Out of the racy window: what was written before this is trusted by stat.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

/// `make --json -v`, exit 0.
#[track_caller]
fn make_v(p: &Workspace) -> Make {
    p.make_ok_with(&["-v"])
}

#[track_caller]
fn assert_served(m: &Make) {
    assert!(m.run.stderr.contains("no-op index holds:"), "expected the index to hold\n{}", m.run);
    assert!(m.ran().is_empty(), "{}", m.run);
}

/// The full path was taken, for whatever reason was met first.
#[track_caller]
fn assert_full(m: &Make) {
    assert!(m.run.stderr.contains("; planning in full"), "expected the full path\n{}", m.run);
}

#[track_caller]
fn assert_not_served(m: &Make, why: &str) {
    assert!(m.run.stderr.contains(&format!("no-op index: {why}; planning in full")), "expected the index not to hold because {why}\n{}", m.run);
}

/// Builds, lets the files settle, and runs the full no-op that writes the index; then checks
/// the index holds. Returns the records of the full no-op.
#[track_caller]
fn built_and_indexed(p: &Workspace) -> Make {
    p.make_ok();
    settle();
    let full = make_v(p);
    assert_not_served(&full, "none for this request yet");
    full.assert_ran(&[]);
    assert_eq!(p.list("cache/index").len(), 1, "one index written");
    assert_served(&make_v(p));
    p.take_runs();
    full
}

/// After a change: lets the files settle, runs the full no-op that writes the index again,
/// and checks it holds.
#[track_caller]
fn reindex(p: &Workspace) {
    settle();
    make_v(p).assert_ran(&[]);
    assert_served(&make_v(p));
}

fn index_file(p: &Workspace) -> String {
    let files = p.list("cache/index");
    assert_eq!(files.len(), 1, "{files:?}");
    format!("cache/index/{}", files[0])
}

/// Sets `rel`'s mtime back to `to`.
fn set_mtime(p: &Workspace, rel: &str, to: SystemTime) {
    fs::File::options().write(true).open(p.path(rel)).unwrap().set_modified(to).unwrap();
}

#[test]
fn a_no_op_from_the_index_says_what_the_full_path_says() {
    let p = project();
    let full = built_and_indexed(&p);
    assert_eq!(sorted(&full.all_ids().iter().map(String::as_str).collect::<Vec<_>>()), sorted(NODES));
    let fast = make_v(&p);
    assert_served(&fast);
    let d = fast.record("d");
    assert_eq!((d.status.as_str(), d.detail.as_deref()), ("degraded", Some("fell back to CPU: no GPU")));
    p.tr(&["make"]).success().stderr_has(&format!("{n} nodes: 0 ran, {n} fresh, 1 degraded in ", n = NODES.len()));

    // Every way of asking, byte for byte (bar the elapsed time and the `-v` line that says
    // which path answered): the same records in the same order, the same lines.
    let same = |r: &Run| {
        let stderr: Vec<String> = r.stderr.lines().filter(|l| !l.starts_with("no-op index")).map(|l| l.split(" in ").next().unwrap_or(l).to_string()).collect();
        (r.code, r.stdout.clone(), stderr)
    };
    for args in [
        &["make", "--json"][..],
        &["make"],
        &["-v", "make"],
        &["-vv", "make", "--json"],
        &["make", "-n"],
        &["make", "-n", "--json"],
        &["status"],
        &["status", "--json"],
        &["-v", "status"],
    ] {
        fs::remove_dir_all(p.path("cache/index")).unwrap();
        let slow = p.tr(args);
        if p.list("cache/index").is_empty() {
            p.tr(&["status"]).success();
        }
        let verbose = args.iter().any(|a| a.starts_with("-v"));
        let check = if verbose { p.tr(args) } else { p.tr(&[&["-v"][..], args].concat()) };
        assert!(check.stderr.contains("no-op index holds:"), "`{}` from the index\n{check}", args.join(" "));
        let quick = if verbose { check } else { p.tr(args) };
        assert_eq!(same(&quick), same(&slow), "`{}`: from the index\n{quick}\nin full\n{slow}", args.join(" "));
    }
    assert!(p.take_runs().is_empty());
}

#[test]
fn a_pipeline_edit_that_keeps_the_size_and_mtime_still_reruns() {
    let p = project();
    built_and_indexed(&p);
    let mtime = fs::metadata(p.path("tr118.toml")).unwrap().modified().unwrap();
    let len = fs::metadata(p.path("tr118.toml")).unwrap().len();
    p.replace("tr118.toml", "echo a > $0", "echo z > $0");
    set_mtime(&p, "tr118.toml", mtime);
    let meta = fs::metadata(p.path("tr118.toml")).unwrap();
    assert_eq!((meta.len(), meta.modified().unwrap()), (len, mtime), "same size and mtime");
    let m = make_v(&p);
    assert_not_served(&m, "none for this request yet");
    m.assert_ran(&["a", "b", "sweep/long", "sweep/short"]);
    assert_eq!(p.text("out/b/y.txt"), "z\nb\n");
}

#[test]
fn a_stale_index_is_not_trusted() {
    let p = project();
    built_and_indexed(&p);
    let file = index_file(&p);
    let old = p.read(&file);
    // A new input: src reruns, and the next no-op writes a new index under the same name.
    p.write("input.txt", "jello\n");
    make_v(&p).assert_ran(&["src"]);
    p.take_runs();
    reindex(&p);
    assert_ne!(p.read(&file), old, "rewritten");
    // The index of the old state, put back, vouches for stats that are no longer there.
    p.write(&file, &old);
    let m = make_v(&p);
    assert_full(&m);
    m.assert_ran(&[]);
    assert_eq!(p.text("out/src/copy.txt"), "jello\n");
    // The input put back as it was: its old entry serves it, restored, not rerun.
    reindex(&p);
    p.write(&file, &old);
    p.write("input.txt", "hello\n");
    let m = make_v(&p);
    assert_full(&m);
    m.assert_ran(&[]);
    assert!(m.record("src").restored, "{}", m.run);
    assert_eq!(p.text("out/src/copy.txt"), "hello\n");
    assert!(p.take_runs().is_empty());
}

#[test]
fn a_damaged_index_is_ignored_and_rewritten() {
    let p = project();
    built_and_indexed(&p);
    let file = index_file(&p);
    let mut bytes = p.read(&file);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    p.write(&file, &bytes);
    let m = make_v(&p);
    assert_not_served(&m, "damaged (it fails its checksum)");
    m.assert_ran(&[]);
    assert_served(&make_v(&p));
    p.write(&file, b"short");
    assert_not_served(&make_v(&p), "damaged (it fails its checksum)");
}

#[test]
fn a_deleted_or_edited_output_with_an_unchanged_index_is_restored() {
    let p = project();
    built_and_indexed(&p);
    fs::remove_file(p.path("out/b/y.txt")).unwrap();
    let m = make_v(&p);
    assert_not_served(&m, "`out/b/y.txt` is gone");
    m.assert_ran(&[]);
    assert!(m.record("b").restored);
    assert_eq!(p.text("out/b/y.txt"), "a\nb\n");

    // Same size, mtime put back: the ctime moved.
    reindex(&p);
    let mtime = fs::metadata(p.path("out/a/x.txt")).unwrap().modified().unwrap();
    p.write("out/a/x.txt", "A\n");
    set_mtime(&p, "out/a/x.txt", mtime);
    let m = make_v(&p);
    assert_not_served(&m, "`out/a/x.txt` changed");
    assert!(m.record("a").restored);
    assert_eq!(p.text("out/a/x.txt"), "a\n");

    // A file added inside a directory output.
    reindex(&p);
    p.write("out/tree/d/sub/extra", "x");
    let m = make_v(&p);
    assert_not_served(&m, "`out/tree/d/sub` changed");
    assert!(m.record("tree").restored);
    assert_eq!(p.files("out/tree/d"), ["one", "sub/two"]);

    // A node's directory swapped for a link to a copy of it: the directory above it moved.
    reindex(&p);
    fs::rename(p.path("out/sweep/long"), p.path("moved")).unwrap();
    std::os::unix::fs::symlink(p.path("moved"), p.path("out/sweep/long")).unwrap();
    let m = make_v(&p);
    assert_not_served(&m, "`out/sweep` changed");
    assert!(m.record("sweep/long").restored);
    assert!(!fs::symlink_metadata(p.path("out/sweep/long")).unwrap().file_type().is_symlink(), "the link is replaced");
    assert!(p.take_runs().is_empty());
}

#[test]
fn what_the_store_loses_behind_the_index_reruns() {
    let p = project();
    let full = built_and_indexed(&p);
    let key = |id: &str| full.record(id).key.clone().unwrap();

    // A manifest edited in place (its seal no longer matches) is an invalid entry.
    let manifest = format!("cache/actions/{}.json", key("a"));
    let text = p.text(&manifest);
    p.write(&manifest, text.replace("\"status\":\"ok\"", "\"status\":\"degraded\"").replace("\"status\": \"ok\"", "\"status\": \"degraded\""));
    let m = make_v(&p);
    assert!(m.run.stderr.contains(&format!("no-op index: `./{manifest}` changed")), "{}", m.run);
    m.assert_ran(&["a"]);

    // An object removed from the store: the node whose output it is reruns.
    reindex(&p);
    let digest = p.manifest(&key("b"))["outputs"][0]["digest"].as_str().unwrap().to_string();
    let object = p.object(&digest);
    fs::remove_file(p.path(&object)).unwrap();
    let m = make_v(&p);
    assert!(m.run.stderr.contains(&format!("no-op index: `./cache/objects/{}` changed", &digest[..2])), "{}", m.run);
    m.assert_ran(&["b"]);

    // A manifest removed: its node reruns.
    reindex(&p);
    fs::remove_file(p.path(&format!("cache/actions/{}.json", key("src")))).unwrap();
    let m = make_v(&p);
    assert!(m.run.stderr.contains("no-op index: `./cache/actions/"), "{}", m.run);
    m.assert_ran(&["src"]);
}

#[test]
fn what_keys_hold_beyond_the_pipeline_is_part_of_the_request() {
    let p = project();
    p.replace("tr118.toml", "[stages.a]\n", "[stages.a]\nfacets = [\"env:STUDY_FLAVOUR\"]\n");
    let with = |flavour: &str, args: &[&str]| {
        let mut all = vec!["make", "--json", "-v"];
        all.extend_from_slice(args);
        let out = p.command(&all).env("STUDY_FLAVOUR", flavour).output().unwrap();
        p.records(Run::from_output(&all, out))
    };
    with("one", &[]).run.code(0);
    settle();
    with("one", &[]).assert_ran(&[]);
    assert_served(&with("one", &[]));
    // A facet's value moved: the node that declares it reruns.
    let m = with("two", &[]);
    assert_not_served(&m, "facet `env:STUDY_FLAVOUR` changed");
    // Its output is the same, so nothing below it reruns.
    m.assert_ran(&["a"]);
    settle();
    with("two", &[]).assert_ran(&[]);
    assert_served(&with("two", &[]));

    // Targets, overrides and `TR118_*` variables are the request: each has its own index.
    let m = with("two", &["b"]);
    assert_not_served(&m, "none for this request yet");
    assert_eq!(sorted(&m.all_ids().iter().map(String::as_str).collect::<Vec<_>>()), sorted(&["a", "b"]));
    assert_served(&with("two", &["b"]));
    let m = with("two", &["-p", "reps=4"]);
    assert_not_served(&m, "none for this request yet");
    m.assert_ran(&["sweep/long", "sweep/short"]);
    settle();
    with("two", &["-p", "reps=4"]).assert_ran(&[]);
    assert_served(&with("two", &["-p", "reps=4"]));
    // Another request's index never hides what this one changed under `out/`.
    let m = with("two", &[]);
    assert_not_served(&m, "`out/sweep/long/r.txt` changed");
    m.assert_ran(&[]);
    assert!(m.record("sweep/long").restored && m.record("sweep/short").restored);
    assert_eq!(p.text("out/sweep/long/r.txt"), "a\nb\nlong 3\n");
    // (This one also moves every key: it is how tests bump an implementation version.)
    let out = p.command(&["make", "--json", "-v"]).env("STUDY_FLAVOUR", "two").env("TR118_TEST_IMPLEMENTATION", "cmd=9").output().unwrap();
    let m = p.records(Run::from_output(&["make"], out));
    assert_not_served(&m, "none for this request yet");
    m.assert_ran(NODES);
    // One per request: `b` and `reps=4`. The default's was dropped when its outputs had to be
    // restored, and the last request ran nodes, which no index records.
    assert_eq!(p.list("cache/index").len(), 2, "{:?}", p.list("cache/index"));
}

#[test]
fn another_binary_never_reads_this_ones_index() {
    let p = project();
    built_and_indexed(&p);
    // The same bytes at another path, then replaced in place by a copy: both are other binaries.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tr118");
    fs::copy(BIN, &copy).unwrap();
    let run = |bin: &Path| {
        let out = std::process::Command::new(bin).arg("-C").arg(p.root()).args(["make", "--json", "-v"]).output().unwrap();
        p.records(Run::from_output(&["make"], out))
    };
    let m = run(&copy);
    assert_not_served(&m, "none for this request yet");
    m.assert_ran(&[]);
    settle();
    assert_served(&run(&copy));
    fs::copy(BIN, dir.path().join("new")).unwrap();
    fs::rename(dir.path().join("new"), &copy).unwrap();
    assert_not_served(&run(&copy), "none for this request yet");
    assert_served(&make_v(&p));
}

#[test]
fn with_a_remote_cache_configured_the_summary_says_so_either_way() {
    // Nothing listens there; a no-op never asks it anything.
    let port = crate::support::nginx::free_port();
    let p = project();
    let p = p.env("TR118_REMOTE_CACHE", format!("http://127.0.0.1:{port}/"));
    p.tr(&["make"]).success();
    settle();
    let full = p.tr(&["-v", "make"]);
    full.success().stderr_has("no-op index: none for this request yet");
    let fast = p.tr(&["-v", "make"]);
    fast.success().stderr_has("no-op index holds:");
    let summary = |r: &Run| line_after(&r.stderr, " nodes: ").split(" in ").next().unwrap().to_string();
    let tail = |r: &Run| line_after(&r.stderr, " nodes: ").split_once("s; cache: ").map(|(_, t)| t.to_string());
    assert_eq!(summary(&fast), summary(&full));
    assert_eq!(tail(&fast), tail(&full), "{full}\n{fast}");
    assert_eq!(tail(&fast).as_deref(), Some(format!("{} local hits, 0 remote hits, 0.0 MB down, 0.0 MB up, ~0.0 s saved", NODES.len()).as_str()));
    // `status` writes the same index, remote and all.
    fs::remove_dir_all(p.path("cache/index")).unwrap();
    p.tr(&["status"]).success();
    let again = p.tr(&["-v", "make"]);
    again.success().stderr_has("no-op index holds:");
    assert_eq!(tail(&again), tail(&full));
}

/// The line of `text` that holds `needle`.
fn line_after<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with `{needle}` in\n{text}"))
}

#[test]
fn out_may_be_a_link_to_another_disk() {
    let p = project();
    let disk = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(disk.path(), p.path("out")).unwrap();
    built_and_indexed(&p);
    assert_eq!(fs::read_to_string(disk.path().join("b/y.txt")).unwrap(), "a\nb\n");
    // The link pointed at a copy: the same bytes, other files.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", disk.path().display())).arg(copy.path()).status().unwrap();
    assert!(status.success());
    fs::remove_file(p.path("out")).unwrap();
    std::os::unix::fs::symlink(copy.path(), p.path("out")).unwrap();
    let m = make_v(&p);
    assert_not_served(&m, "`out` changed");
    m.assert_ran(&[]);
    assert!(m.records.iter().all(|r| !r.restored), "the copy holds every output");
    reindex(&p);
    assert!(p.take_runs().is_empty());
}

#[test]
fn a_link_on_a_node_s_own_path_is_never_indexed() {
    let p = project();
    p.make_ok();
    // `out/sweep/long` moved aside and linked back before any index is written.
    fs::rename(p.path("out/sweep/long"), p.path("moved")).unwrap();
    std::os::unix::fs::symlink(p.path("moved"), p.path("out/sweep/long")).unwrap();
    settle();
    p.tr(&["status"]).success();
    assert!(p.list("cache/index").is_empty(), "status wrote an index over a link: {:?}", p.list("cache/index"));
    let m = make_v(&p);
    assert_not_served(&m, "none for this request yet");
    assert!(m.record("sweep/long").restored, "{}", m.run);
    assert!(!fs::symlink_metadata(p.path("out/sweep/long")).unwrap().file_type().is_symlink(), "the link is replaced");
    reindex(&p);
}

#[test]
fn a_directory_listing_damaged_in_place_reruns_its_node() {
    let p = project();
    let full = built_and_indexed(&p);
    let listing = p.manifest(full.record("tree").key.as_deref().unwrap())["outputs"][0]["digest"].as_str().unwrap().to_string();
    let path = p.object(&listing);
    let mut bytes = p.read(&path);
    bytes.push(b'x');
    fs::OpenOptions::new().append(true).open(p.path(&path)).unwrap().write_all(b"x").unwrap();
    assert_eq!(p.read(&path), bytes, "edited in place");
    let m = make_v(&p);
    assert_not_served(&m, &format!("`./{path}` changed"));
    m.assert_ran(&["tree"]);
    assert_eq!(p.files("out/tree/d"), ["one", "sub/two"]);
}

#[test]
fn a_pipeline_read_from_a_pipe_is_read_once() {
    let p = project();
    built_and_indexed(&p);
    let fifo = p.path("pipe.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let text = p.text("tr118.toml");
    for args in [&["make", "-n", "-f", "pipe.toml"][..], &["status", "-f", "pipe.toml"]] {
        let writer = {
            let (fifo, text) = (fifo.clone(), text.clone());
            std::thread::spawn(move || fs::write(fifo, text).unwrap())
        };
        let r = p.tr(args);
        writer.join().unwrap();
        r.success();
        assert!(!r.stderr.contains("declares no stages"), "{r}");
        assert!(format!("{}{}", r.stdout, r.stderr).contains("sweep/long"), "{r}");
    }
}
