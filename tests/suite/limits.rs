//! Bounded inputs: what a pipeline may ask for is checked before anything is allocated or
//! run for it, and a value out of bounds is bad input (exit 2, `file:line:col`), never a
//! panic, a hang, or a process that grows until the machine runs out of memory.
//!
//! | input                                   | refused with                                        |
//! |-----------------------------------------|-----------------------------------------------------|
//! | a matrix of 10^9 (or 10^20) nodes       | the stage, the count, the limit, at its `matrix`     |
//! | stages that together pass the limit     | the stage that passes it and the running total      |
//! | `[limits] max_nodes`                    | raises the limit; a typo in it gets a suggestion     |
//! | a 17 MiB pipeline, `-f /dev/zero`       | the file and the 16 MiB limit                       |
//! | a pipeline without stages               | the file and a hint, for `make`, `graph`, `status`  |
//! | `timeout = 1e19`, `nan`, `inf`, `0`     | the field, at its line and column                   |
//!
//! Runs that would fill memory or hang without the limit under test are bounded here, in
//! address space and in wall time, so that a regression fails the test instead of the machine.

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::workspace::{BIN, Run, Workspace};

/// `tr118 -C <root> ARGS` with at most 2 GiB of address space and `secs` of wall time; a
/// run past its time is killed, and its exit code is `None`.
fn bounded(ws: &Workspace, args: &[&str], secs: u64) -> Run {
    let logs = tempfile::tempdir().expect("create a temp dir");
    let (out, err) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("-C")
        .arg(ws.root())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("run tr118");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (code, signal) = loop {
        if let Some(status) = child.try_wait().expect("wait for tr118") {
            break (status.code(), status.signal());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, None);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Run { args: args.join(" "), code, signal, stdout: read(&out), stderr: read(&err) }
}

/// `[axes]` with `n` axes of ten values each, and one `cmd` stage `big` over all of them,
/// its `matrix` on line `n + 4`, column 1.
fn ten_to_the(n: usize) -> String {
    let values = (0..10).map(|v| format!("\"v{v}\"")).collect::<Vec<_>>().join(", ");
    let axes: String = (0..n).map(|i| format!("a{i} = [{values}]\n")).collect();
    let names = (0..n).map(|i| format!("\"a{i}\"")).collect::<Vec<_>>().join(", ");
    format!("[axes]\n{axes}\n[stages.big]\nmatrix = [{names}]\ncmd = [\"true\"]\n")
}

#[test]
fn a_matrix_over_the_node_limit_is_refused_before_it_is_expanded() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline(&ten_to_the(9));
    let run = bounded(&ws, &["make", "-n"], 30);
    run.diag_at(13, 1, "stage `big` expands to 1000000000 nodes (10 × 10 × 10 × 10 × 10 × 10 × 10 × 10 × 10), over the limit of 100000");
    run.stderr_has("`[limits]` with `max_nodes = 1000000000`");
}

#[test]
fn a_matrix_past_u64_is_refused_not_overflowed() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline(&ten_to_the(20));
    let run = bounded(&ws, &["graph"], 30);
    run.diag_at(24, 1, "stage `big` expands to more than 18446744073709551615 nodes");
    run.stderr_has("no limit can admit that many nodes");
}

#[test]
fn the_node_limit_counts_every_stage_together() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline(
        r#"[limits]
max_nodes = 10

[axes]
n = [1, 2, 3, 4, 5, 6]

[stages.a]
matrix = ["n"]
cmd = ["true"]

[stages.b]
matrix = ["n"]
cmd = ["true"]
"#,
    );
    let run = ws.tr(&["graph"]);
    run.diag_at(12, 1, "stage `b` expands to 6 nodes, bringing the pipeline to 12, over the limit of 10");
    run.stderr_has("`max_nodes = 12`");
    assert!(!run.stderr.contains("stage `a`"), "stage `a` fits and is not blamed\n{run}");
}

#[test]
fn limits_max_nodes_raises_the_limit() {
    let ws = Workspace::new("tr118-limits-");
    let pipeline = |limit: u32| format!("[limits]\nmax_nodes = {limit}\n\n[stages.s]\nmatrix = {{ x = [1, 2, 3], y = [1, 2, 3, 4] }}\ncmd = [\"true\"]\n");
    ws.pipeline(&pipeline(11));
    ws.tr(&["graph"]).diag_at(5, 1, "stage `s` expands to 12 nodes (3 × 4), over the limit of 11");
    ws.pipeline(&pipeline(12));
    ws.tr(&["make", "-n"]).code(0).stderr_has("12 of 12 nodes would run");
}

#[test]
fn an_unknown_or_bad_limit_is_reported_with_a_suggestion() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline("[limits]\nmax_node = 5\n\n[stages.s]\ncmd = [\"true\"]\n");
    ws.tr(&["graph"]).diag_at(2, 1, "unknown field `max_node` in `limits`").stderr_has("did you mean `max_nodes`?");
    for bad in ["0", "-1", "1.5", "\"many\""] {
        ws.pipeline(&format!("[limits]\nmax_nodes = {bad}\n\n[stages.s]\ncmd = [\"true\"]\n"));
        ws.tr(&["graph"]).diag_at(2, 1, "`max_nodes` must be a positive integer");
    }
}

/// The benchmarks' largest pipelines must load and plan under the default limit.
#[test]
fn ten_thousand_nodes_fit_under_the_default_limit() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline(&ten_to_the(4));
    ws.tr(&["make", "-n"]).code(0).stderr_has("10000 of 10000 nodes would run");
}

#[test]
fn a_pipeline_file_over_16_mib_is_refused_unread() {
    let ws = Workspace::new("tr118-limits-");
    let mut text = String::from("[stages.s]\ncmd = [\"true\"]\n");
    let comment = format!("# {}\n", "x".repeat(1021));
    while text.len() <= 16 << 20 {
        text.push_str(&comment);
    }
    ws.pipeline(&text);
    ws.tr(&["make", "-n"]).code(2).stderr_has("tr118.toml: pipeline is larger than 16 MiB, the limit for a pipeline file");
}

#[test]
fn dev_zero_as_the_pipeline_fails_at_the_read_limit() {
    let ws = Workspace::new("tr118-limits-");
    bounded(&ws, &["-f", "/dev/zero", "make", "-n"], 30).code(2).stderr_has("/dev/zero: pipeline is larger than 16 MiB, the limit for a pipeline file");
}

#[test]
fn a_pipeline_without_stages_is_bad_input() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline("");
    for cmd in [&["make"][..], &["graph"], &["status"], &["gc", "-n"]] {
        ws.tr(cmd).code(2).stderr_has("tr118.toml: the pipeline declares no stages: there is nothing to build").stderr_has("[stages.hello]");
    }
    ws.pipeline("[params]\nreps = 3\n\n[stages]\n");
    ws.tr(&["make"]).diag_at(4, 2, "the pipeline declares no stages");
    assert!(!ws.path("cache").exists() && !ws.path("out").exists(), "nothing is written for an empty pipeline");
}

#[test]
fn a_timeout_past_30_days_is_refused_at_load_not_a_panic_at_run() {
    let ws = Workspace::new("tr118-limits-");
    ws.pipeline("[stages.s]\ncmd = [\"true\"]\ntimeout = 1e19\n");
    let run = bounded(&ws, &["make"], 30);
    run.diag_at(3, 1, "`timeout` must be a number of seconds, more than 0 and at most 2592000 (30 days), found 1e+19");
    assert!(!run.stderr.contains("panicked"), "{run}");
}

#[test]
fn a_timeout_that_is_not_a_positive_finite_number_is_refused() {
    let ws = Workspace::new("tr118-limits-");
    for (bad, found) in [
        ("nan", "a number that is not finite"),
        ("inf", "a number that is not finite"),
        ("-inf", "a number that is not finite"),
        ("0", "found 0"),
        ("-1.5", "found -1.5"),
        ("2592001", "found 2592001"),
    ] {
        ws.pipeline(&format!("[stages.s]\ncmd = [\"true\"]\ntimeout = {bad}\n"));
        bounded(&ws, &["make"], 30).diag_at(3, 1, "`timeout` must be a number of seconds, more than 0 and at most 2592000").stderr_has(found);
    }
    ws.pipeline("[stages.s]\ncmd = [\"true\"]\ntimeout = 2592000\n");
    ws.make_ok();
}
