//! End-to-end tests of the `tr118` binary on throwaway pipelines.
//!
//! Every test builds a small workspace in a temporary directory with [`project`], runs the
//! real binary in it, and asserts on exit codes, on the `make --json` records (which nodes
//! ran, which were cache hits, why), on the text of diagnostics, and on the files produced.
//! Commands are `sh -c` argv arrays, so the tests need nothing but a POSIX shell.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::support::workspace::{Record, Run, Workspace};
use crate::support::{line_starting, sorted, wait_until};
use tempfile::TempDir;

/// A throwaway workspace with `toml` as its pipeline and no remote cache (every record of a
/// make must say so): `let p = project(TOML); p.write("src/a", "…");`.
fn project(toml: &str) -> Workspace {
    let p = Workspace::new("tr118-test-").local();
    p.pipeline(toml);
    p
}

/// [`project`] with `files`, (path, contents), written beside the pipeline.
fn project_files(toml: &str, files: &[(&str, &str)]) -> Workspace {
    let p = project(toml);
    for (rel, contents) in files {
        p.write(rel, contents);
    }
    p
}

/// A `tr118` started in its own process group; the whole group is SIGKILLed when dropped, so
/// that no `sh` or `sleep` a test interrupted outlives it.
struct Spawned {
    child: Option<Child>,
    pgid: u32,
}

impl Spawned {
    fn start(mut cmd: Command) -> Spawned {
        cmd.process_group(0);
        // A shell starts background jobs with SIGINT ignored, and an ignored signal stays
        // ignored across exec: give the child the default action, as a terminal's Ctrl-C would
        // find it, whatever ran the tests.
        // SAFETY: `signal` is async-signal-safe, which is all a pre_exec hook may call.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn tr118");
        let pgid = child.id();
        Spawned { child: Some(child), pgid }
    }

    fn pid(&self) -> u32 {
        self.pgid
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("still running")
    }

    fn kill_group(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg("--").arg(format!("-{}", self.pgid)).stderr(Stdio::null()).status();
    }

    /// Waits for tr118 to exit (its output must be piped), then ends what is left of its group.
    fn wait_output(mut self, args: &[&str]) -> Run {
        let out = self.child.take().expect("still running").wait_with_output().expect("wait for tr118");
        Run::from_output(args, out)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill_group("KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `[start_ns, end_ns]` from an out holding two `date +%s%N` lines.
fn interval(p: &Workspace, rel: &str) -> (u128, u128) {
    let text = p.text(rel);
    let nums: Vec<u128> = text.lines().map(|l| l.trim().parse().unwrap_or_else(|e| panic!("{rel}: {e}: {text:?}"))).collect();
    assert_eq!(nums.len(), 2, "{rel} must hold a start and an end: {text:?}");
    assert!(nums[0] <= nums[1], "{rel}: start after end");
    (nums[0], nums[1])
}

fn overlap(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

// ---------------------------------------------------------------------------------------
// Pipelines shared by several tests.
// ---------------------------------------------------------------------------------------

/// fetch → build/{cpu,cuda} → sweep/{cpu,cuda}/{short,long} (timing) → stats (glob fan-in).
const MATRIX: &str = r##"
[params]
reps = 3

[axes]
backend = [{ name = "cpu", threads = 4 }, { name = "cuda", threads = 1 }]

[stages.fetch]
cmd = ["sh", "-c", "echo model > $0", "{outs.model}"]
outs = { model = "model.bin" }

[stages.build]
matrix = ["backend"]
cmd = ["sh", "-c", "cat $0 > $1; echo threads=$2 >> $1", "{deps.model}", "{outs.plan}", "{params.threads}"]
deps = { model = "out/fetch/model.bin" }
outs = { plan = "plan.txt" }
params = { threads = "{matrix.backend.threads}" }

[stages.sweep]
matrix = { backend = "backend", scenario = ["short", "long"] }
cmd = ["sh", "-c", "cat $0 > $1; echo {matrix.scenario} reps=$2 >> $1", "{deps.plan}", "{outs.records}", "{params.reps}"]
deps = { plan = "out/build/{matrix.backend}/plan.txt" }
outs = { records = "records.jsonl" }
timing = true

[stages.stats]
cmd = ["sh", "-c", "cat \"$@\" > $0", "{outs.table}", "{deps.records}"]
deps = { records = "out/sweep/*/*/records.jsonl" }
outs = { table = "stats.csv" }
"##;

const MATRIX_NODES: &[&str] = &["fetch", "build/cpu", "build/cuda", "sweep/cpu/short", "sweep/cpu/long", "sweep/cuda/short", "sweep/cuda/long", "stats"];

/// a → b, each recording its runs in `runs.log`.
const CHAIN: &str = r##"
[stages.a]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; echo a > $0", "{outs.x}"]
outs = { x = "x.txt" }

[stages.b]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0 > $1; echo b >> $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.txt" }
outs = { y = "y.txt" }
"##;

/// prep (workspace source dep) → report; other (another source dep).
const SOURCES: &str = r##"
[stages.prep]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; tr a-z A-Z < $0 > $1", "{deps.src}", "{outs.up}"]
deps = { src = "src/input.txt" }
outs = { up = "up.txt" }

[stages.report]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; wc -c < $0 > $1", "{deps.up}", "{outs.n}"]
deps = { up = "out/prep/up.txt" }
outs = { n = "n.txt" }

[stages.other]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0 > $1", "{deps.cfg}", "{outs.copy}"]
deps = { cfg = "src/other.txt" }
outs = { copy = "copy.txt" }
"##;

fn sources_project() -> Workspace {
    project_files(SOURCES, &[("src/input.txt", "hello\n"), ("src/other.txt", "other\n")])
}

// ---------------------------------------------------------------------------------------
// Incremental rebuilds: exactly what changed reruns.
// ---------------------------------------------------------------------------------------

#[test]
fn first_make_runs_everything_and_second_runs_nothing() {
    let p = project(MATRIX);
    let m = p.make_ok();
    m.assert_ran(MATRIX_NODES);
    for r in &m.records {
        assert_eq!(r.reason.as_deref(), Some("never built"), "{r:?}");
        assert_eq!(r.status, "ok");
    }
    assert_eq!(p.text("out/build/cuda/plan.txt"), "model\nthreads=1\n");
    assert_eq!(p.text("out/sweep/cpu/long/records.jsonl"), "model\nthreads=4\nlong reps=3\n");
    let again = p.make_ok();
    again.assert_ran(&[]);
    assert_eq!(again.hits(), sorted(MATRIX_NODES));
    for r in &again.records {
        assert_eq!(r.key, m.record(&r.id).key, "keys are stable across runs");
        assert!(!r.restored && r.reason.is_none(), "{r:?}");
    }
}

#[test]
fn param_change_reruns_only_its_branch() {
    let p = project(MATRIX);
    p.make_ok().assert_ran(MATRIX_NODES);
    p.replace("tr118.toml", r#"{ name = "cuda", threads = 1 }"#, r#"{ name = "cuda", threads = 2 }"#);

    let why = p.tr(&["why", "build/cuda"]);
    why.success()
        .stdout_has("`build/cuda` is stale (root cause):")
        .stdout_has("param `threads` changed 1 → 2")
        .stdout_has("3 downstream nodes rerun because of it");
    p.tr(&["why", "build/cpu"]).success().stdout_has("`build/cpu` is fresh");
    p.tr(&["why", "stats"]).success().stdout_has("`stats` is stale by cascade").stdout_has("root causes upstream:").stdout_has("  `build/cuda`: ");

    let status = p.tr(&["status"]);
    status.success();
    for fresh in ["fetch", "build/cpu", "sweep/cpu/short", "sweep/cpu/long"] {
        assert_eq!(line_starting(&status.stdout, &format!("fresh  {fresh}")), format!("fresh  {fresh}"));
    }
    assert!(line_starting(&status.stdout, "stale  build/cuda: ").contains("param `threads` changed 1 → 2"), "{status}");
    assert_eq!(line_starting(&status.stdout, "stale  sweep/cuda/short: "), "stale  sweep/cuda/short: upstream `build/cuda` reruns");
    line_starting(&status.stdout, "stale  sweep/cuda/long: ");
    line_starting(&status.stdout, "stale  stats: ");
    // status changes nothing
    assert_eq!(p.text("out/build/cuda/plan.txt"), "model\nthreads=1\n");

    let m = p.make_ok();
    m.assert_ran(&["build/cuda", "sweep/cuda/short", "sweep/cuda/long", "stats"]);
    assert_eq!(m.hits(), sorted(&["fetch", "build/cpu", "sweep/cpu/short", "sweep/cpu/long"]));
    assert!(m.record("build/cuda").reason.as_deref().unwrap().contains("param `threads` changed 1 → 2"));
    assert_eq!(p.text("out/build/cuda/plan.txt"), "model\nthreads=2\n");
    assert_eq!(p.text("out/build/cpu/plan.txt"), "model\nthreads=4\n");
    let stats = p.text("out/stats/stats.csv");
    assert!(stats.contains("threads=2") && stats.contains("threads=4") && !stats.contains("threads=1"), "{stats}");
    p.make_ok().assert_ran(&[]);
    p.tr(&["why", "build/cuda"]).success().stdout_has("`build/cuda` is fresh");
}

#[test]
fn global_param_override_with_p_flag_reruns_users_of_that_param() {
    let p = project(MATRIX);
    p.make_ok();
    let sweeps = ["sweep/cpu/short", "sweep/cpu/long", "sweep/cuda/short", "sweep/cuda/long"];

    // Same value as the file, given on the command line: same keys.
    p.make_ok_with(&["-p", "reps=3"]).assert_ran(&[]);

    p.tr(&["status", "-p", "reps=5"]).success().stdout_has("stale  sweep/cpu/short: param `reps` changed 3 → 5").stdout_has("fresh  build/cpu");
    let m = p.make_ok_with(&["-p", "reps=5"]);
    let mut want: Vec<&str> = sweeps.to_vec();
    want.push("stats");
    m.assert_ran(&want);
    for s in sweeps {
        assert_eq!(m.record(s).reason.as_deref(), Some("param `reps` changed 3 → 5"), "{s}");
    }
    assert_eq!(p.text("out/sweep/cuda/short/records.jsonl"), "model\nthreads=1\nshort reps=5\n");
    p.make_ok_with(&["-p", "reps=5"]).assert_ran(&[]);

    // Back to the file's value: its entries are still cached, so nothing runs, the files
    // under out/ are put back.
    let back = p.make_ok();
    back.assert_ran(&[]);
    for s in sweeps {
        assert!(back.record(s).restored, "{s} restored");
    }
    assert!(!back.record("build/cpu").restored);
    assert_eq!(p.text("out/sweep/cuda/short/records.jsonl"), "model\nthreads=1\nshort reps=3\n");
}

#[test]
fn unknown_p_param_is_bad_input_with_a_suggestion() {
    let p = project(MATRIX);
    p.tr(&["make", "-p", "rep=5"]).code(2).stderr_has("`-p rep=…` names no param in `[params]`").stderr_has("did you mean `reps`?");
    assert!(!p.exists("out"), "nothing ran");
    p.tr(&["status", "-p", "rep=5"]).code(2).stderr_has("did you mean `reps`?");
    p.tr(&["make", "-p", "reps"]).code(2).stderr_has("`-p reps` must be KEY=VALUE");
}

#[test]
fn editing_a_dep_reruns_its_dependents() {
    let p = sources_project();
    p.make_ok().assert_ran(&["prep", "report", "other"]);
    assert_eq!(p.take_runs(), sorted(&["prep", "report", "other"]));
    assert_eq!(p.text("out/report/n.txt").trim(), "6");

    p.write("src/input.txt", "hello world\n");
    p.tr(&["why", "prep"])
        .success()
        .stdout_has("`prep` is stale (root cause):")
        .stdout_has("input `src/input.txt` changed (")
        .stdout_has("1 downstream node rerun because of it");
    let m = p.make_ok();
    m.assert_ran(&["prep", "report"]);
    assert!(m.record("prep").reason.as_deref().unwrap().starts_with("input `src/input.txt` changed ("));
    assert_eq!(m.record("other").cache, "hit");
    assert_eq!(p.take_runs(), sorted(&["prep", "report"]));
    assert_eq!(p.text("out/prep/up.txt"), "HELLO WORLD\n");
    assert_eq!(p.text("out/report/n.txt").trim(), "12");
    p.make_ok().assert_ran(&[]);
}

#[test]
fn touching_a_dep_without_changing_content_reruns_nothing() {
    let p = sources_project();
    p.make_ok();
    p.take_runs();
    std::thread::sleep(Duration::from_millis(150));
    // New mtime and ctime, same bytes.
    p.write("src/input.txt", "hello\n");
    fs::File::options().write(true).open(p.path("src/other.txt")).unwrap().set_modified(SystemTime::now() + Duration::from_secs(3600)).unwrap();
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.records.iter().all(|r| !r.restored), "nothing restored");
    assert!(p.take_runs().is_empty());
    let status = p.tr(&["status"]);
    status.success();
    assert!(!status.stdout.contains("stale"), "{status}");
}

#[test]
fn same_size_edit_with_the_old_mtime_still_reruns() {
    let p = sources_project();
    p.make_ok();
    std::thread::sleep(Duration::from_millis(150));
    // A second make records the (now old enough) file in the stat cache.
    p.make_ok().assert_ran(&[]);
    let mtime = fs::metadata(p.path("src/input.txt")).unwrap().modified().unwrap();
    p.write("src/input.txt", "jello\n");
    fs::File::options().write(true).open(p.path("src/input.txt")).unwrap().set_modified(mtime).unwrap();
    assert_eq!(fs::metadata(p.path("src/input.txt")).unwrap().modified().unwrap(), mtime);
    p.make_ok().assert_ran(&["prep", "report"]);
    assert_eq!(p.text("out/prep/up.txt"), "JELLO\n");
}

#[test]
fn dep_edited_right_after_a_make_is_still_seen() {
    // Racily clean: the file changes within the same instant its digest was taken.
    let p = sources_project();
    p.make_ok();
    p.write("src/input.txt", "jello\n");
    p.make_ok().assert_ran(&["prep", "report"]);
    p.write("src/input.txt", "hallo\n");
    p.make_ok().assert_ran(&["prep", "report"]);
    assert_eq!(p.text("out/prep/up.txt"), "HALLO\n");
}

#[test]
fn stage_version_bump_reruns_the_stage() {
    let p = project(CHAIN);
    p.make_ok();
    p.take_runs();
    p.replace("tr118.toml", "[stages.a]\n", "[stages.a]\nversion = 1\n");
    p.tr(&["why", "a"]).success().stdout_has("`a` is stale (root cause):").stdout_has("  stage version changed 0 → 1");
    let m = p.make_ok();
    // Same output, so `b` is not rerun.
    m.assert_ran(&["a"]);
    assert_eq!(m.record("a").reason.as_deref(), Some("stage version changed 0 → 1"));
    assert_eq!(p.take_runs(), ["a"]);

    p.replace("tr118.toml", "[stages.b]\n", "[stages.b]\nversion = 7\n");
    let m = p.make_ok();
    m.assert_ran(&["b"]);
    assert_eq!(m.record("b").reason.as_deref(), Some("stage version changed 0 → 7"));
    assert_eq!(p.take_runs(), ["b"]);
    p.make_ok().assert_ran(&[]);
}

#[test]
fn upstream_rerun_with_identical_output_does_not_rerun_downstream() {
    let p = project(CHAIN);
    p.make_ok();
    p.take_runs();
    // A different command that writes the same bytes.
    p.replace("tr118.toml", "echo a > $0", "printf 'a\\\\n' > $0");
    let why = p.tr(&["why", "a"]);
    why.success().stdout_has("field `cmd` changed");
    p.tr(&["why", "b"]).success().stdout_has("`b` is stale by cascade: upstream `a` reruns");
    let m = p.make_ok();
    m.assert_ran(&["a"]);
    let b = m.record("b");
    assert_eq!((b.cache.as_str(), b.status.as_str(), b.restored), ("hit", "ok", false), "{b:?}");
    assert_eq!(p.take_runs(), ["a"], "b's command did not run");
    assert_eq!(p.text("out/a/x.txt"), "a\n");
    assert_eq!(p.text("out/b/y.txt"), "a\nb\n");

    // And an upstream change that does change the bytes reruns it.
    p.replace("tr118.toml", "printf 'a\\\\n' > $0", "echo A > $0");
    p.make_ok().assert_ran(&["a", "b"]);
    assert_eq!(p.text("out/b/y.txt"), "A\nb\n");
}

#[test]
fn pipeline_edits_outside_a_stage_rerun_nothing_and_a_new_stage_runs_alone() {
    let p = project(CHAIN);
    p.make_ok();
    let text = p.text("tr118.toml");
    p.write("tr118.toml", format!("# a comment\n\n{}\n\n", text.replace("[stages.b]", "# about b\n[stages.b]")));
    p.make_ok().assert_ran(&[]);
    let text = p.text("tr118.toml");
    p.write("tr118.toml", format!("{text}\n[stages.c]\ncmd = [\"sh\", \"-c\", \"echo c > $0\", \"{{outs.z}}\"]\nouts = {{ z = \"z.txt\" }}\n"));
    p.make_ok().assert_ran(&["c"]);
}

// ---------------------------------------------------------------------------------------
// The cache restores outputs.
// ---------------------------------------------------------------------------------------

#[test]
fn deleted_out_is_restored_from_cache_without_rerunning() {
    let p = project(CHAIN);
    p.make_ok();
    p.take_runs();

    fs::remove_file(p.path("out/a/x.txt")).unwrap();
    let m = p.make_ok();
    m.assert_ran(&[]);
    let a = m.record("a");
    assert_eq!((a.cache.as_str(), a.restored), ("hit", true), "{a:?}");
    assert!(!m.record("b").restored);
    assert_eq!(p.text("out/a/x.txt"), "a\n");
    assert!(p.take_runs().is_empty(), "no command ran");
    m.run.stderr_lacks("restored b");

    // A file modified by hand (same size, so only the content tells) is put back too.
    p.write("out/b/y.txt", "x\ny\n");
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("b").restored && !m.record("a").restored);
    assert_eq!(p.text("out/b/y.txt"), "a\nb\n");
    assert!(p.take_runs().is_empty());

    // A whole out/ tree removed.
    fs::remove_dir_all(p.path("out")).unwrap();
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("a").restored && m.record("b").restored);
    assert_eq!(p.text("out/b/y.txt"), "a\nb\n");
    p.make_ok().records.iter().for_each(|r| assert!(!r.restored, "{r:?}"));
}

#[test]
fn clean_then_make_restores_everything_and_clean_all_reruns_everything() {
    let p = project(CHAIN);
    p.make_ok();
    p.take_runs();
    p.tr(&["clean"]).success();
    assert!(!p.exists("out"));
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.records.iter().all(|r| r.restored));
    assert_eq!(p.text("out/b/y.txt"), "a\nb\n");
    p.tr(&["clean", "--all"]).success();
    let m = p.make_ok();
    m.assert_ran(&["a", "b"]);
    assert_eq!(p.take_runs(), ["a", "b"]);
}

#[test]
fn directory_outs_are_cached_and_restored() {
    let p = project(
        r##"
[stages.gen]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; mkdir -p $0/sub && echo one > $0/a.txt && echo two > $0/sub/b.txt && printf '#!/bin/sh\\necho hi\\n' > $0/run.sh && chmod +x $0/run.sh", "{outs.dir}"]
outs = { dir = "results/" }

[stages.use]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; cat $0/a.txt $0/sub/b.txt > $1", "{deps.dir}", "{outs.cat}"]
deps = { dir = "out/gen/results" }
outs = { cat = "cat.txt" }
"##,
    );
    p.make_ok().assert_ran(&["gen", "use"]);
    p.take_runs();
    assert_eq!(p.list("out/gen/results"), ["a.txt", "run.sh", "sub"]);
    assert_eq!(p.text("out/use/cat.txt"), "one\ntwo\n");
    let mode = |p: &Workspace| fs::metadata(p.path("out/gen/results/run.sh")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p), 0o755);

    fs::remove_dir_all(p.path("out/gen/results")).unwrap();
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("gen").restored);
    assert_eq!(p.text("out/gen/results/a.txt"), "one\n");
    assert_eq!(p.text("out/gen/results/sub/b.txt"), "two\n");
    assert_eq!(p.text("out/gen/results/run.sh"), "#!/bin/sh\necho hi\n");
    assert_eq!(mode(&p), 0o755, "the executable bit is restored");

    // A stray file and an edited one: the directory is put back exactly.
    p.write("out/gen/results/stray.txt", "junk\n");
    p.write("out/gen/results/sub/b.txt", "TWO\n");
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("gen").restored);
    assert_eq!(p.list("out/gen/results"), ["a.txt", "run.sh", "sub"]);
    assert_eq!(p.text("out/gen/results/sub/b.txt"), "two\n");
    assert!(p.take_runs().is_empty());
    let m = p.make_ok();
    assert!(m.records.iter().all(|r| !r.restored && r.cache == "hit"));
}

// ---------------------------------------------------------------------------------------
// Failures, degraded results, --keep-going, --dry-run.
// ---------------------------------------------------------------------------------------

#[test]
fn failed_node_is_not_cached_and_shows_stderr_tail() {
    let p = project(
        r##"
[stages.bad]
cmd = ["sh", "-c", "echo partial > $0; echo 'step 1 ok'; i=1; while [ $i -le 30 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo 'boom: the GPU caught fire' >&2; exit 3", "{outs.x}"]
outs = { x = "x.txt" }
"##,
    );
    let m = p.make();
    m.run.code(1);
    let r = m.record("bad");
    assert_eq!((r.cache.as_str(), r.status.as_str()), ("miss", "failed"));
    assert_eq!(r.detail.as_deref(), Some("command exited with status 3"));
    m.run
        .stderr_has("error: `bad` failed: command exited with status 3")
        .stderr_has("  log: cache/logs/bad.log")
        .stderr_has("  | boom: the GPU caught fire")
        .stderr_has("  | line 30")
        .stderr_has("  | line 12")
        .stderr_lacks("  | line 11\n")
        .stderr_lacks("step 1 ok");
    let log = p.text("cache/logs/bad.log");
    assert!(log.contains("step 1 ok\n") && log.contains("line 1\n") && log.contains("boom: the GPU caught fire"), "{log}");
    assert!(!p.exists("out/bad/x.txt"), "a failed node's outputs are not published");
    assert!(p.list("cache/actions").is_empty(), "a failed node is not cached");
    assert!(p.list("cache/refs").is_empty());

    let m = p.make();
    m.run.code(1);
    assert_eq!(m.ran(), ["bad"], "it reruns");
    assert_eq!(m.record("bad").status, "failed");

    p.replace("tr118.toml", "exit 3", "exit 0");
    let m = p.make_ok();
    m.assert_ran(&["bad"]);
    assert_eq!(p.text("out/bad/x.txt"), "partial\n");
}

#[test]
fn degraded_node_is_cached_with_its_reason() {
    let p = project(
        r##"
[stages.d]
cmd = ["sh", "-c", "echo $TR118_NODE >> runs.log; echo result > $0; echo 'fell back to CPU: no GPU' > \"$TR118_DEGRADED_FILE\"", "{outs.x}"]
outs = { x = "x.txt" }

[stages.after]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/d/x.txt" }
outs = { y = "y.txt" }
"##,
    );
    let m = p.make_ok();
    m.assert_ran(&["d", "after"]);
    let d = m.record("d");
    assert_eq!((d.cache.as_str(), d.status.as_str()), ("miss", "degraded"));
    assert_eq!(d.detail.as_deref(), Some("fell back to CPU: no GPU"));
    assert_eq!(m.record("after").status, "ok", "downstream of a degraded node runs normally");
    assert_eq!(p.text("out/d/x.txt"), "result\n");
    p.take_runs();
    // People see it in the summary too.
    p.tr(&["make"]).success().stderr_has("2 nodes: 0 ran, 2 fresh, 1 degraded");

    let m = p.make_ok();
    m.assert_ran(&[]);
    let d = m.record("d");
    assert_eq!((d.cache.as_str(), d.status.as_str()), ("hit", "degraded"));
    assert_eq!(d.detail.as_deref(), Some("fell back to CPU: no GPU"));
    assert!(p.take_runs().is_empty());
    p.tr(&["status"]).success().stdout_has("fresh  d (degraded: fell back to CPU: no GPU)");
    p.tr(&["why", "d"]).success().stdout_has("`d` is fresh").stdout_has("(degraded: fell back to CPU: no GPU)");
    let manifest = p.manifest(d.key.as_deref().unwrap());
    assert_eq!(manifest["status"], "degraded");
    assert_eq!(manifest["reason"], "fell back to CPU: no GPU");
}

const FAILING: &str = r##"
[stages.bad]
cmd = ["sh", "-c", "echo nope >&2; exit 1", "{outs.x}"]
outs = { x = "x.txt" }

[stages.after_bad]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/bad/x.txt" }
outs = { y = "y.txt" }

[stages.good]
cmd = ["sh", "-c", "echo good > $0", "{outs.z}"]
outs = { z = "z.txt" }
"##;

#[test]
fn keep_going_runs_independent_nodes_after_a_failure() {
    let p = project(FAILING);
    let m = p.make_with(&["-k", "-j", "1"]);
    m.run.code(1);
    assert_eq!(m.all_ids(), sorted(&["bad", "after_bad", "good"]));
    assert_eq!(m.record("bad").status, "failed");
    let good = m.record("good");
    assert_eq!((good.cache.as_str(), good.status.as_str()), ("miss", "ok"));
    let skipped = m.record("after_bad");
    assert_eq!((skipped.cache.as_str(), skipped.status.as_str()), ("skipped", "skipped"));
    assert_eq!(skipped.detail.as_deref(), Some("upstream `bad` did not complete"));
    assert_eq!(p.text("out/good/z.txt"), "good\n");
    assert!(!p.exists("out/after_bad"));
    // `good` is cached: the next run only retries `bad`.
    let m = p.make_with(&["-k", "-j", "1"]);
    m.run.code(1);
    assert_eq!(m.ran(), ["bad"]);
    assert_eq!(m.record("good").cache, "hit");
}

#[test]
fn without_keep_going_a_failure_stops_new_nodes() {
    let p = project(FAILING);
    let m = p.make_with(&["-j", "1"]);
    m.run.code(1);
    assert_eq!(m.all_ids(), sorted(&["bad", "after_bad", "good"]));
    assert_eq!(m.ran(), ["bad"]);
    let good = m.record("good");
    assert_eq!((good.cache.as_str(), good.status.as_str()), ("skipped", "skipped"));
    assert_eq!(good.detail.as_deref(), Some("stopped after a failure (use `--keep-going` to continue)"));
    assert_eq!(m.record("after_bad").detail.as_deref(), Some("upstream `bad` did not complete"));
    assert!(!p.exists("out/good"));
    p.tr(&["make", "-j", "1"]).code(1).stderr_has("error: `bad` failed: command exited with status 1").stderr_has("  | nope");
}

#[test]
fn dry_run_runs_nothing() {
    let p = project(MATRIX);
    let m = p.make_ok_with(&["-n"]);
    assert_eq!(m.all_ids(), sorted(MATRIX_NODES));
    for r in &m.records {
        assert_eq!((r.cache.as_str(), r.status.as_str()), ("miss", "pending"), "{r:?}");
    }
    assert_eq!(m.record("fetch").reason.as_deref(), Some("never built"));
    assert_eq!(
        m.record("stats").reason.as_deref(),
        Some("upstream `sweep/cpu/short` reruns; upstream `sweep/cpu/long` reruns; upstream `sweep/cuda/short` reruns; upstream `sweep/cuda/long` reruns")
    );
    assert!(!p.exists("out"), "no outputs");
    assert!(p.list("cache/actions").is_empty() && p.list("cache/refs").is_empty());
    p.tr(&["make", "-n"]).success().stderr_has("8 of 8 nodes would run").stderr_has("would run fetch: never built");
    assert!(!p.exists("out"));

    p.make_ok();
    p.replace("tr118.toml", "threads = 1 }", "threads = 2 }");
    let m = p.make_ok_with(&["--dry-run"]);
    assert_eq!(m.ids(|r| r.status == "pending"), sorted(&["build/cuda", "sweep/cuda/short", "sweep/cuda/long", "stats"]));
    assert_eq!(m.hits().len(), 4);
    p.tr(&["make", "-n"]).success().stderr_has("4 of 8 nodes would run");
    assert_eq!(p.text("out/build/cuda/plan.txt"), "model\nthreads=1\n", "the dry run changed nothing");
    p.make_ok().assert_ran(&["build/cuda", "sweep/cuda/short", "sweep/cuda/long", "stats"]);
}

// ---------------------------------------------------------------------------------------
// The scheduler.
// ---------------------------------------------------------------------------------------

fn stamped(names: &[(&str, bool)], sleep: &str) -> String {
    let mut s = String::new();
    for (name, timing) in names {
        s.push_str(&format!(
            "[stages.{name}]\ncmd = [\"sh\", \"-c\", \"date +%s%N > $0; sleep {sleep}; date +%s%N >> $0\", \"{{outs.t}}\"]\nouts = {{ t = \"t.txt\" }}\ntiming = {timing}\n\n"
        ));
    }
    s
}

#[test]
fn parallel_jobs_overlap_independent_nodes() {
    let p = project(&stamped(&[("one", false), ("two", false)], "0.5"));
    p.make_ok_with(&["-j", "2"]).assert_ran(&["one", "two"]);
    let (a, b) = (interval(&p, "out/one/t.txt"), interval(&p, "out/two/t.txt"));
    assert!(overlap(a, b), "with -j 2 the two nodes run at once: {a:?} {b:?}");

    // And -j 1 runs them one after the other.
    let p = project(&stamped(&[("one", false), ("two", false)], "0.2"));
    p.make_ok_with(&["-j", "1"]).assert_ran(&["one", "two"]);
    let (a, b) = (interval(&p, "out/one/t.txt"), interval(&p, "out/two/t.txt"));
    assert!(!overlap(a, b), "with -j 1 nodes never overlap: {a:?} {b:?}");
}

#[test]
fn timing_nodes_run_alone() {
    let nodes = [("p1", false), ("p2", false), ("t1", true), ("p3", false), ("t2", true), ("p4", false)];
    let p = project(&stamped(&nodes, "0.3"));
    let ids: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    p.make_ok_with(&["-j", "4"]).assert_ran(&ids);
    let iv: Vec<(&str, bool, (u128, u128))> = nodes.iter().map(|(n, t)| (*n, *t, interval(&p, &format!("out/{n}/t.txt")))).collect();
    for (n, timing, a) in &iv {
        if !timing {
            continue;
        }
        for (m, _, b) in &iv {
            assert!(n == m || !overlap(*a, *b), "timing node {n} {a:?} overlaps {m} {b:?}");
        }
    }
    // The others do run side by side, so the check above is not vacuous.
    let plain: Vec<_> = iv.iter().filter(|(_, t, _)| !t).collect();
    let overlapping = plain.iter().enumerate().any(|(i, a)| plain[i + 1..].iter().any(|b| overlap(a.2, b.2)));
    assert!(overlapping, "with -j 4 some non-timing nodes overlap: {iv:?}");
}

#[test]
fn timing_node_on_a_device_excludes_only_that_device() {
    let p = project(
        r##"
[stages.gpu_timing]
cmd = ["sh", "-c", "date +%s%N > $0; sleep 0.5; date +%s%N >> $0", "{outs.t}"]
outs = { t = "t.txt" }
timing = true
device = "cuda:0"

[stages.gpu_other]
cmd = ["sh", "-c", "date +%s%N > $0; sleep 0.3; date +%s%N >> $0", "{outs.t}"]
outs = { t = "t.txt" }
device = "cuda:0"

[stages.cpu_work]
cmd = ["sh", "-c", "date +%s%N > $0; sleep 0.3; date +%s%N >> $0", "{outs.t}"]
outs = { t = "t.txt" }
"##,
    );
    p.make_ok_with(&["-j", "4"]);
    let t = interval(&p, "out/gpu_timing/t.txt");
    let g = interval(&p, "out/gpu_other/t.txt");
    let c = interval(&p, "out/cpu_work/t.txt");
    assert!(!overlap(t, g), "another cuda:0 node never runs beside the cuda:0 timing node: {t:?} {g:?}");
    assert!(overlap(t, c), "a cpu node may run beside a cuda:0 timing node: {t:?} {c:?}");
}

// ---------------------------------------------------------------------------------------
// Crashes and concurrency.
// ---------------------------------------------------------------------------------------

/// `a` is quick; `slow` writes half its output, says so in `started`, then holds while the
/// file `hold` exists (at most ~10 s), then finishes its output.
const INTERRUPTIBLE: &str = r##"
[stages.a]
cmd = ["sh", "-c", "echo a > $0", "{outs.x}"]
outs = { x = "x.txt" }

[stages.slow]
cmd = ["sh", "-c", "cat $0 > $1; echo partial >> $1; touch started; i=0; while [ -f hold ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo done >> $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.txt" }
outs = { y = "y.txt" }
"##;

fn interrupted_then_make_completes(signal: &str) {
    let p = project_files(INTERRUPTIBLE, &[("hold", "")]);
    let mut cmd = p.command(&["make", "-j", "1"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut running = Spawned::start(cmd);
    wait_until(10.0, "`slow` to start", || p.exists("started"));
    let status = if signal == "KILL" {
        running.child().kill().unwrap(); // SIGKILL
        running.child().wait().unwrap()
    } else {
        Command::new("kill").arg(format!("-{signal}")).arg(running.pid().to_string()).status().unwrap();
        running.child().wait().unwrap()
    };
    assert!(!status.success(), "tr118 was interrupted: {status:?}");
    // The orphaned `sh` of `slow` is in tr118's process group: end it.
    running.kill_group("KILL");
    drop(running);

    assert_eq!(p.text("out/a/x.txt"), "a\n", "`a` finished before the interruption");
    assert!(!p.exists("out/slow/y.txt"), "no partial output is ever published");
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    p.tr(&["status"]).success().stdout_has("fresh  a").stdout_has("stale  slow: never built");

    fs::remove_file(p.path("hold")).unwrap();
    let m = p.make_ok();
    m.assert_ran(&["slow"]);
    assert_eq!(m.record("a").cache, "hit");
    assert_eq!(p.text("out/slow/y.txt"), "a\npartial\ndone\n");
    assert!(p.list("cache/tmp").is_empty(), "leftovers of the interrupted run are gone: {:?}", p.list("cache/tmp"));
    assert!(p.list("out/slow").iter().all(|n| n == "y.txt"), "no temporary files in out/: {:?}", p.list("out/slow"));
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    p.make_ok().assert_ran(&[]);
}

#[test]
fn kill_9_mid_run_then_make_completes() {
    interrupted_then_make_completes("KILL");
}

#[test]
fn sigint_mid_run_then_make_completes() {
    interrupted_then_make_completes("INT");
}

#[test]
fn concurrent_makes_wait_for_the_lock() {
    let p = project(
        r##"
[stages.slow]
cmd = ["sh", "-c", "touch started; i=0; while [ ! -f go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo slow > $0", "{outs.x}"]
outs = { x = "x.txt" }
"##,
    );
    let logs = TempDir::new().unwrap();
    let first = {
        let mut c = p.command(&["make", "--json"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        Spawned::start(c)
    };
    wait_until(10.0, "the first make to start `slow`", || p.exists("started"));
    let holder = first.pid();

    let err_path = logs.path().join("second.err");
    let second = {
        let mut c = p.command(&["make", "--json"]);
        c.stdout(Stdio::piped()).stderr(fs::File::create(&err_path).unwrap());
        Spawned::start(c)
    };
    wait_until(10.0, "the second make to say it waits", || fs::read_to_string(&err_path).unwrap_or_default().contains("waiting for the cache lock"));
    let waiting = fs::read_to_string(&err_path).unwrap();
    assert!(waiting.contains("`cache/lock`") && waiting.contains(&format!("held by process {holder}")), "{waiting}");

    let nowait = p.tr(&["make", "--no-wait"]);
    nowait.code(1).stderr_has(&format!("the cache `cache/` is locked by process {holder}")).stderr_has("--no-wait");
    assert!(!p.exists("out/slow/x.txt"));

    p.write("go", "");
    let first = p.records(first.wait_output(&["make", "--json"]));
    first.run.code(0);
    first.assert_ran(&["slow"]);
    let second = p.records(second.wait_output(&["make", "--json"]));
    second.run.code(0);
    second.assert_ran(&[]);
    assert_eq!(second.record("slow").cache, "hit");
    assert_eq!(p.text("out/slow/x.txt"), "slow\n");
    p.make_ok().assert_ran(&[]);
    p.make_ok_with(&["--no-wait"]).assert_ran(&[]);
}

// ---------------------------------------------------------------------------------------
// Bad input: exit 2, with the file, line and column.
// ---------------------------------------------------------------------------------------

fn bad(toml: &str) -> Workspace {
    project_files(toml, &[("model.txt", "m\n")])
}

#[test]
fn malformed_toml_is_bad_input_with_a_position() {
    let p = bad("[stages.a]\ncmd = [\"sh\", \"-c\", \"true\"\nouts = { x = \"x\" }\n");
    p.tr(&["make"]).diag_at(3, 1, "invalid TOML");
    let p = bad("[stages.a\ncmd = []\n");
    p.tr(&["make"]).diag_at(1, 10, "invalid TOML");
    assert!(!p.exists("out"));
    p.tr(&["status"]).code(2);
    p.tr(&["graph"]).code(2);
}

#[test]
fn unknown_stage_field_suggests_the_right_one() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.m}", "{outs.x}"]
depz = { m = "model.txt" }
outs = { x = "x.txt" }
"##);
    let r = p.tr(&["make"]);
    r.diag_at(3, 1, "unknown field `depz` in `stages.a`").stderr_has("help: did you mean `deps`?");
    assert!(!p.exists("out"));
}

#[test]
fn unknown_top_level_section_is_rejected_with_a_suggestion() {
    let p = bad("[params]\nn = 1\n\n[stagez.a]\ncmd = [\"true\"]\n");
    p.tr(&["make"]).diag_at(4, 2, "unknown field `stagez`").stderr_has("help: did you mean `stages`?");
}

#[test]
fn dependency_cycle_is_shown_as_a_path() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.y}", "{outs.x}"]
deps = { y = "out/b/y.txt" }
outs = { x = "x.txt" }

[stages.b]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.txt" }
outs = { y = "y.txt" }
"##);
    p.tr(&["make"]).diag_at(1, 9, "dependency cycle: `a` → `b` → `a`");
    p.tr(&["graph"]).code(2).stderr_has("dependency cycle");
}

#[test]
fn missing_dep_file_is_reported_at_its_declaration() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.m}", "{outs.x}"]
deps = { m = "nope.txt" }
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "dep `nope.txt` of `a` does not exist");
    // A dep on an output nobody declares, with a suggestion.
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "x.txt" }

[stages.b]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.tx" }
outs = { y = "y.txt" }
"##);
    p.tr(&["make"]).diag_at(7, 10, "dep `out/a/x.tx` of `b` names no stage output").stderr_has("did you mean `out/a/x.txt`?");
    // A glob that matches nothing.
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $@ > $0", "{outs.x}", "{deps.all}"]
deps = { all = "out/*/nothing.txt" }
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "dep pattern `out/*/nothing.txt` of `a` matches no stage output");
}

#[test]
fn placeholder_naming_no_dep_suggests_one() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.modle}", "{outs.x}"]
deps = { model = "model.txt" }
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(2, 35, "placeholder `{deps.modle}` names no declared dep (declared: model)").stderr_has("did you mean `{deps.model}`?");
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo > $0", "{outs.y}"]
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(2, 33, "placeholder `{outs.y}` names no declared out (declared: x)");
}

#[test]
fn placeholder_naming_no_param_is_bad_input() {
    let p = bad(r##"[params]
reps = 3

[stages.a]
cmd = ["sh", "-c", "echo $1 > $0", "{outs.x}", "{params.nope}"]
outs = { x = "x.txt" }
"##);
    let r = p.tr(&["make"]);
    r.code(2).stderr_has("placeholder `{params.nope}` names no param");
    assert!(r.stderr.contains("tr118.toml:5:"), "points at the `cmd` line\n{r}");
    let p = bad(r##"[params]
reps = 3

[stages.a]
cmd = ["sh", "-c", "echo $1 > $0", "{outs.x}", "{params.rep}"]
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).code(2).stderr_has("placeholder `{params.rep}` names no param; did you mean `reps`?");
}

#[test]
fn placeholder_naming_no_axis_is_bad_input() {
    let p = bad(r##"[axes]
backend = ["cpu", "cuda"]

[stages.a]
matrix = ["backend"]
cmd = ["sh", "-c", "echo {matrix.backnd} > $0", "{outs.x}"]
outs = { x = "x.txt" }
"##);
    let r = p.tr(&["make"]);
    r.code(2).stderr_has("placeholder `{matrix.backnd}`: stage `a` has no axis `backnd`; did you mean `backend`?");
    assert!(r.stderr.contains("tr118.toml:6:"), "points at the `cmd` line\n{r}");
    let p = bad(r##"[stages.a]
matrix = ["nope"]
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(2, 11, "axis `nope` is not declared under `[axes]`");
}

#[test]
fn a_mistake_in_a_matrix_stage_is_reported_once() {
    let p = bad(r##"[axes]
backend = ["cpu", "cuda", "rocm"]

[stages.a]
matrix = ["backend"]
cmd = ["sh", "-c", "echo $1 > $0", "{outs.x}", "{params.nope}"]
outs = { x = "x.txt" }
"##);
    let r = p.tr(&["make"]);
    r.code(2);
    assert_eq!(r.stderr.matches("names no param").count(), 1, "one mistake, one diagnostic (not one per node)\n{r}");
}

#[test]
fn out_path_escaping_the_workspace_is_rejected() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "../x" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "out `../x` escapes the workspace");
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "/abs" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "out `/abs` is an absolute path");
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "a/../../x" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "escapes the workspace");
    // Deps too.
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "cat $0 > $1", "{deps.m}", "{outs.x}"]
deps = { m = "../model.txt" }
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(3, 10, "dep `../model.txt` escapes the workspace");
    assert!(!p.root().parent().unwrap().join("x").exists());
}

#[test]
fn unknown_stage_kind_suggests_a_known_one() {
    let p = bad(r##"[stages.a]
kind = "cmdd"
cmd = ["sh", "-c", "echo > $0", "{outs.x}"]
outs = { x = "x.txt" }
"##);
    p.tr(&["make"]).diag_at(2, 1, "unknown stage kind `cmdd`").stderr_has("help: did you mean `cmd`?");
}

#[test]
fn cmd_as_a_string_is_rejected_with_the_argv_form() {
    let p = bad("[stages.a]\ncmd = \"echo hi\"\n");
    p.tr(&["make"]).diag_at(2, 1, "`cmd` must be an argv list").stderr_has(r#"["sh", "-c", "echo hi"]"#);
}

#[test]
fn unknown_make_target_suggests_a_stage() {
    let p = project(MATRIX);
    p.tr(&["make", "bulid"]).code(2).stderr_has("no stage or node `bulid`").stderr_has("did you mean `build`?");
    p.tr(&["status", "bulid"]).code(2).stderr_has("did you mean `build`?");
    p.tr(&["why", "build/cdua"]).code(2).stderr_has("no node `build/cdua`").stderr_has("did you mean `build/cuda`?");
    p.tr(&["why", "build"]).code(2).stderr_has("`why` takes one node id");
    assert!(!p.exists("out"));
}

#[test]
fn unknown_command_line_flag_is_exit_2() {
    let p = project(CHAIN);
    p.tr(&["make", "--frobnicate"]).code(2);
    p.tr(&["frobnicate"]).code(2);
}

#[test]
fn out_not_written_names_the_out_and_the_stage() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "echo hi"]
outs = { x = "x.txt" }
"##);
    let m = p.make();
    m.run.stderr_has("`a` did not write out `x` (declared as `x.txt`)").stderr_has("tr118.toml:3:10:");
    assert_eq!(m.record("a").status, "failed");
    assert!(p.list("cache/actions").is_empty(), "not cached");
    assert_eq!(m.run.code, Some(2), "the issue asks for exit 2 (bad pipeline)\n{}", m.run);
    // Not cached: it is tried again.
    assert_eq!(p.make().ran(), ["a"]);
}

#[test]
fn out_of_the_wrong_type_names_the_out_and_the_stage() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "rmdir $0 && echo file > $0", "{outs.d}"]
outs = { d = "d/" }
"##);
    let m = p.make();
    m.run.code(2).stderr_has("`a` wrote a file for out `d`, declared as a directory");
    assert!(p.list("cache/actions").is_empty());
}

// ---------------------------------------------------------------------------------------
// Output formats.
// ---------------------------------------------------------------------------------------

#[test]
fn json_output_has_one_record_per_node() {
    let p = project(MATRIX);
    let m = p.make_ok();
    // Every stdout line parsed as a record (Make::parse), one per node, nothing else.
    assert_eq!(m.records.len(), MATRIX_NODES.len(), "{}", m.run);
    assert_eq!(m.run.stdout.lines().count(), MATRIX_NODES.len());
    assert_eq!(m.all_ids(), sorted(MATRIX_NODES));
    let keys: BTreeSet<&str> = m.records.iter().map(|r| r.key.as_deref().unwrap()).collect();
    assert_eq!(keys.len(), MATRIX_NODES.len(), "every node has its own key");
    for r in &m.records {
        assert_eq!((r.cache.as_str(), r.status.as_str(), r.restored, r.detail.as_deref()), ("miss", "ok", false, None), "{r:?}");
        let manifest = p.manifest(r.key.as_deref().unwrap());
        assert_eq!(manifest["node"], r.id.as_str());
        assert_eq!(manifest["key"], r.key.as_deref().unwrap());
    }
    // A dependency never completes after its dependent.
    let pos = |id: &str| m.records.iter().position(|r| r.id == id).unwrap();
    assert!(pos("fetch") < pos("build/cpu") && pos("build/cuda") < pos("sweep/cuda/long") && pos("sweep/cpu/short") < pos("stats"));

    let m = p.make_ok_with(&["sweep/cpu"]);
    assert_eq!(m.all_ids(), sorted(&["fetch", "build/cpu", "sweep/cpu/short", "sweep/cpu/long"]));
    assert!(m.records.iter().all(|r| r.cache == "hit" && r.reason.is_none()));

    let status = p.tr(&["status", "--json"]);
    status.success();
    let recs: Vec<Record> = status.stdout.lines().map(Record::parse).collect();
    assert_eq!(recs.len(), MATRIX_NODES.len());
    assert!(recs.iter().all(|r| r.cache == "hit" && r.status == "ok" && r.remote.is_none()), "{status}");
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let p = project(MATRIX);
    let dot = p.tr(&["graph"]);
    dot.success();
    let out = &dot.stdout;
    assert!(out.starts_with("digraph tr118 {\n") && out.trim_end().ends_with('}'), "{out}");
    let edges: BTreeSet<&str> = out.lines().filter(|l| l.contains("->")).map(str::trim).collect();
    let want: BTreeSet<&str> = [
        r#""fetch" -> "build/cpu";"#,
        r#""fetch" -> "build/cuda";"#,
        r#""build/cpu" -> "sweep/cpu/short";"#,
        r#""build/cpu" -> "sweep/cpu/long";"#,
        r#""build/cuda" -> "sweep/cuda/short";"#,
        r#""build/cuda" -> "sweep/cuda/long";"#,
        r#""sweep/cpu/short" -> "stats";"#,
        r#""sweep/cpu/long" -> "stats";"#,
        r#""sweep/cuda/short" -> "stats";"#,
        r#""sweep/cuda/long" -> "stats";"#,
    ]
    .into();
    assert_eq!(edges, want);
    for id in MATRIX_NODES {
        let node = line_starting(out, &format!("  \"{id}\" ["));
        assert_eq!(node.contains("style=bold"), id.starts_with("sweep/"), "timing nodes are bold: {node}");
    }
    assert!(!p.exists("out") && p.list("cache/actions").is_empty(), "graph builds nothing");

    let mm = p.tr(&["graph", "--format", "mermaid"]);
    mm.success();
    let out = &mm.stdout;
    assert_eq!(out.lines().next(), Some("flowchart LR"));
    // nN["id"] lines, then nA --> nB lines.
    let mut name = std::collections::BTreeMap::new();
    for l in out.lines().skip(1).filter(|l| l.contains("[\"")) {
        let (n, rest) = l.trim().split_once("[\"").unwrap();
        name.insert(n.to_string(), rest.trim_end_matches("\"]").to_string());
    }
    assert_eq!(name.values().cloned().collect::<BTreeSet<_>>(), MATRIX_NODES.iter().map(|s| s.to_string()).collect());
    let medges: BTreeSet<String> =
        out.lines().filter_map(|l| l.trim().split_once(" --> ")).map(|(a, b)| format!(r#""{}" -> "{}";"#, name[a], name[b])).collect();
    assert_eq!(medges, want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());

    p.tr(&["graph", "--format", "svg"]).code(2);
    p.tr(&["graph", "bulid"]).code(2).stderr_has("did you mean `build`?");
}

#[test]
fn graph_with_a_target_prints_only_that_part() {
    let p = project(MATRIX);
    let g = p.tr(&["graph", "build/cuda"]);
    g.success();
    let nodes: BTreeSet<&str> = g.stdout.lines().filter(|l| l.contains(" [label=")).map(|l| l.trim().split('"').nth(1).unwrap()).collect();
    assert_eq!(nodes, BTreeSet::from(["fetch", "build/cuda"]), "{g}");
}

// ---------------------------------------------------------------------------------------
// gc and fsck.
// ---------------------------------------------------------------------------------------

const PARAM_CHAIN: &str = r##"
[params]
n = 1

[stages.a]
cmd = ["sh", "-c", "echo n=$1 > $0", "{outs.x}", "{params.n}"]
outs = { x = "x.txt" }

[stages.b]
cmd = ["sh", "-c", "cat $0 > $1; echo b >> $1", "{deps.x}", "{outs.y}"]
deps = { x = "out/a/x.txt" }
outs = { y = "y.txt" }
"##;

fn output_digest(p: &Workspace, key: &str) -> String {
    p.manifest(key)["outputs"][0]["digest"].as_str().unwrap().to_string()
}

#[test]
fn gc_removes_unreferenced_entries() {
    let p = project(PARAM_CHAIN);
    let old = p.make_ok();
    let old_keys: Vec<String> = ["a", "b"].iter().map(|id| old.record(id).key.clone().unwrap()).collect();
    let old_objects: Vec<String> = old_keys.iter().map(|k| p.object(&output_digest(&p, k))).collect();
    p.replace("tr118.toml", "n = 1", "n = 2");
    let new = p.make_ok();
    new.assert_ran(&["a", "b"]);
    let new_keys: Vec<String> = ["a", "b"].iter().map(|id| new.record(id).key.clone().unwrap()).collect();
    let new_objects: Vec<String> = new_keys.iter().map(|k| p.object(&output_digest(&p, k))).collect();
    assert_eq!(p.list("cache/actions").len(), 4);

    p.tr(&["gc", "--dry-run"]).success().stdout_has("would remove 2 manifests, 2 objects");
    assert_eq!(p.list("cache/actions").len(), 4, "a dry run removes nothing");
    assert!(old_objects.iter().all(|o| p.exists(o)));

    p.tr(&["gc"]).success().stdout_has("removed 2 manifests, 2 objects").stdout_has("kept 2 manifests");
    let mut want: Vec<String> = new_keys.iter().map(|k| format!("{k}.json")).collect();
    want.sort();
    assert_eq!(p.list("cache/actions"), want);
    for o in &old_objects {
        assert!(!p.exists(o), "old object {o} removed");
    }
    for o in &new_objects {
        assert!(p.exists(o), "current object {o} kept");
    }
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.records.iter().all(|r| !r.restored));
    let status = p.tr(&["status"]);
    status.success().stdout_has("fresh  a").stdout_has("fresh  b");
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    p.tr(&["gc"]).success().stdout_has("removed 0 manifests, 0 objects");

    // The old value now has to be rebuilt.
    p.replace("tr118.toml", "n = 2", "n = 1");
    p.make_ok().assert_ran(&["a", "b"]);
}

#[test]
fn gc_forgets_nodes_that_left_the_pipeline() {
    let p = project(CHAIN);
    p.make_ok();
    let text = p.text("tr118.toml");
    let cut = text.find("[stages.b]").unwrap();
    p.write("tr118.toml", &text[..cut]);
    p.tr(&["gc"]).success().stdout_has("removed 1 manifests").stdout_has(", 1 refs;");
    assert_eq!(p.list("cache/refs"), ["a"]);
    assert!(!p.exists("cache/logs/b.log"));
    p.make_ok().assert_ran(&[]);
}

#[test]
fn fsck_detects_and_repairs_a_flipped_byte() {
    let p = project(PARAM_CHAIN);
    let m = p.make_ok();
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    let a_key = m.record("a").key.clone().unwrap();
    let b_key = m.record("b").key.clone().unwrap();
    let digest = output_digest(&p, &a_key);
    let obj = p.object(&digest);
    let path = p.path(&obj);
    let perm = fs::metadata(&path).unwrap().permissions();
    assert_eq!(perm.mode() & 0o222, 0, "objects are read-only");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let r = p.tr(&["fsck"]);
    r.code(1)
        .stdout_has(&format!("corrupt object {digest}"))
        .stdout_has(&format!("bad manifest {a_key}: node `a`: output `x.txt` (object {}) is corrupt", &digest[..12]))
        .stdout_has("fsck --repair");
    assert!(!r.stdout.contains(&format!("bad manifest {b_key}")), "b is intact\n{r}");

    p.tr(&["fsck", "--repair"]).success().stdout_has(&format!("corrupt object {digest} (removed)"));
    assert!(!p.exists(&obj));
    assert!(!p.exists(&format!("cache/actions/{a_key}.json")));
    assert!(p.exists(&format!("cache/actions/{b_key}.json")));
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");

    let m = p.make_ok();
    m.assert_ran(&["a"]);
    assert_eq!(m.record("a").reason.as_deref(), Some("no cache entry for its key (the cache was cleaned or collected)"));
    assert_eq!(m.record("b").cache, "hit", "same bytes again: b is not rerun");
    assert_eq!(p.text(&obj), "n=1\n");
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
}

#[test]
fn a_corrupt_object_is_never_restored_into_out() {
    let p = project(PARAM_CHAIN);
    let m = p.make_ok();
    let digest = output_digest(&p, m.record("a").key.as_deref().unwrap());
    let path = p.path(&p.object(&digest));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, "n=9\n").unwrap();
    fs::remove_file(p.path("out/a/x.txt")).unwrap();
    let m = p.make();
    assert_eq!(p.text("out/a/x.txt"), "n=1\n", "out/ holds what the node wrote, not the corrupt object\n{}", m.run);
}

// ---------------------------------------------------------------------------------------
// Targets.
// ---------------------------------------------------------------------------------------

#[test]
fn make_stage_target_builds_only_it_and_its_upstream() {
    let p = project(MATRIX);
    let m = p.make_ok_with(&["build"]);
    m.assert_ran(&["fetch", "build/cpu", "build/cuda"]);
    assert_eq!(m.records.len(), 3);
    assert!(!p.exists("out/sweep") && !p.exists("out/stats"));
    p.tr(&["status", "build"]).success().stdout_has("fresh  build/cuda");
    let m = p.make_ok_with(&["stats"]);
    m.assert_ran(&["sweep/cpu/short", "sweep/cpu/long", "sweep/cuda/short", "sweep/cuda/long", "stats"]);
    assert_eq!(m.hits(), sorted(&["fetch", "build/cpu", "build/cuda"]));
}

#[test]
fn node_id_prefix_target_builds_that_subtree() {
    let p = project(MATRIX);
    let m = p.make_ok_with(&["sweep/cuda"]);
    m.assert_ran(&["fetch", "build/cuda", "sweep/cuda/short", "sweep/cuda/long"]);
    assert!(!p.exists("out/build/cpu") && !p.exists("out/stats"));
    let m = p.make_ok_with(&["sweep/cpu/long"]);
    m.assert_ran(&["build/cpu", "sweep/cpu/long"]);
    assert_eq!(m.all_ids(), sorted(&["fetch", "build/cpu", "sweep/cpu/long"]));
    let m = p.make_ok_with(&["sweep/cpu/", "build"]);
    m.assert_ran(&["sweep/cpu/short"]);
    assert_eq!(m.all_ids(), sorted(&["fetch", "build/cpu", "build/cuda", "sweep/cpu/short", "sweep/cpu/long"]));
    // `sweep/c` is not a prefix of any id segment.
    p.tr(&["make", "sweep/c"]).code(2).stderr_has("no stage or node `sweep/c`");
}

// ---------------------------------------------------------------------------------------
// cmd specifics.
// ---------------------------------------------------------------------------------------

#[test]
fn cmd_sees_its_environment_and_multi_path_deps() {
    let p = project_files(
        r##"
[stages.a]
cmd = ["sh", "-c", "echo \"$TR118_NODE $FOO\" > $0; test -d \"$TR118_SCRATCH\" && echo scratch >> $0; echo \"$@\" >> $0", "{outs.x}", "{deps.srcs}"]
deps = { srcs = ["one.txt", "two.txt"] }
outs = { x = "x.txt" }
env = { FOO = "bar" }
"##,
        &[("one.txt", "1"), ("two.txt", "2")],
    );
    p.make_ok().assert_ran(&["a"]);
    assert_eq!(p.text("out/a/x.txt"), "a bar\nscratch\none.txt two.txt\n");
    p.replace("tr118.toml", r#"FOO = "bar""#, r#"FOO = "baz""#);
    let m = p.make_ok();
    m.assert_ran(&["a"]);
    assert!(m.record("a").reason.as_deref().unwrap().contains("field `env.FOO` changed bar → baz"), "{:?}", m.record("a"));
}

#[test]
fn cmd_timeout_fails_the_node() {
    let p = bad(r##"[stages.a]
cmd = ["sh", "-c", "exec sleep 3; echo > $0", "{outs.x}"]
outs = { x = "x.txt" }
timeout = 0.2
"##);
    let t0 = Instant::now();
    let m = p.make();
    m.run.code(1);
    assert!(t0.elapsed() < Duration::from_secs(3), "the timeout stopped it");
    assert_eq!(m.record("a").detail.as_deref(), Some("command timed out after 0.2 s (`timeout`)"));
}

// ---------------------------------------------------------------------------------------
// More rules.
// ---------------------------------------------------------------------------------------

#[test]
fn adding_an_axis_value_runs_only_the_new_nodes_and_the_fan_in() {
    let p = project(MATRIX);
    p.make_ok();
    p.replace("tr118.toml", r#"{ name = "cuda", threads = 1 }]"#, r#"{ name = "cuda", threads = 1 }, { name = "rocm", threads = 2 }]"#);
    let m = p.make_ok();
    m.assert_ran(&["build/rocm", "sweep/rocm/short", "sweep/rocm/long", "stats"]);
    assert!(m.record("stats").reason.as_deref().unwrap().contains("input `out/sweep/rocm/long/records.jsonl` added"), "{:?}", m.record("stats"));
    assert!(p.text("out/stats/stats.csv").contains("threads=2"));
    // And removing it again: the fan-in is back to its first key, still cached.
    p.replace("tr118.toml", r#", { name = "rocm", threads = 2 }"#, "");
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("stats").restored);
    assert!(!p.text("out/stats/stats.csv").contains("threads=2"));
}

#[test]
fn directory_dep_in_the_workspace_reruns_when_a_file_is_added() {
    let p = project_files(
        r##"
[stages.count]
cmd = ["sh", "-c", "ls $0 | sort > $1", "{deps.data}", "{outs.list}"]
deps = { data = "data" }
outs = { list = "list.txt" }
"##,
        &[("data/a.csv", "1\n")],
    );
    p.make_ok().assert_ran(&["count"]);
    p.make_ok().assert_ran(&[]);
    p.write("data/sub/b.csv", "2\n");
    p.make_ok().assert_ran(&["count"]);
    assert_eq!(p.text("out/count/list.txt"), "a.csv\nsub\n");
    // Back to the first content: the first entry is still cached.
    fs::remove_dir_all(p.path("data/sub")).unwrap();
    let m = p.make_ok();
    m.assert_ran(&[]);
    assert!(m.record("count").restored);
    assert_eq!(p.text("out/count/list.txt"), "a.csv\n");
    p.write("data/a.csv", "1\n");
    p.make_ok().assert_ran(&[]);
    p.write("data/a.csv", "2\n");
    p.make_ok().assert_ran(&["count"]);
}

#[test]
fn a_symlink_out_is_stored_as_the_file_it_points_to() {
    let p = project_files(
        r##"
[stages.a]
cmd = ["sh", "-c", "ln -s \"$(pwd)/target.txt\" $0", "{outs.x}"]
outs = { x = "x.txt" }
"##,
        &[("target.txt", "data\n")],
    );
    p.make_ok().assert_ran(&["a"]);
    assert!(!fs::symlink_metadata(p.path("out/a/x.txt")).unwrap().file_type().is_symlink());
    assert_eq!(p.text("out/a/x.txt"), "data\n");
    assert!(fs::metadata(p.path("target.txt")).unwrap().permissions().mode() & 0o200 != 0, "the link's target is left writable");
    p.write("target.txt", "changed\n");
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    fs::remove_file(p.path("out/a/x.txt")).unwrap();
    p.make_ok().assert_ran(&[]);
    assert_eq!(p.text("out/a/x.txt"), "data\n");
}

#[test]
fn repeated_kill_9_at_arbitrary_moments_never_corrupts_the_cache() {
    let mut toml = String::new();
    for i in 0..12 {
        let dep = if i == 0 { String::new() } else { format!("deps = {{ prev = \"out/n{}/x.txt\" }}\n", i - 1) };
        let cat = if i == 0 { "true" } else { "cat {deps.prev} >> $0" };
        toml.push_str(&format!(
            "[stages.n{i}]\ncmd = [\"sh\", \"-c\", \"echo {i} > $0; {cat}; sleep 0.01\", \"{{outs.x}}\"]\n{dep}outs = {{ x = \"x.txt\" }}\n\n"
        ));
    }
    let p = project(&toml);
    let mut seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1;
    for _ in 0..8 {
        // Forget some of what was built, so that every round has work to interrupt.
        let _ = fs::remove_dir_all(p.path("cache/actions"));
        let _ = fs::create_dir_all(p.path("cache/actions"));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(5 + seed % 120);
        let mut cmd = p.command(&["make", "-j", "2"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut running = Spawned::start(cmd);
        std::thread::sleep(delay);
        let _ = running.child().kill();
        let _ = running.child().wait();
        drop(running);
        let fsck = p.tr(&["fsck"]);
        assert_eq!(fsck.code, Some(0), "after a kill at {delay:?}\n{fsck}");
    }
    p.make_ok();
    let mut want = String::new();
    for i in 0..12 {
        want = format!("{i}\n{want}");
        assert_eq!(p.text(&format!("out/n{i}/x.txt")), want, "n{i}");
        assert_eq!(p.list(&format!("out/n{i}")), ["x.txt"], "no leftovers beside the out of n{i}");
    }
    assert!(p.list("cache/tmp").is_empty());
    p.tr(&["fsck"]).success().stdout_has("cache is consistent");
    p.make_ok().assert_ran(&[]);
}
