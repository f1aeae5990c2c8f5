//! The harness of the end-to-end tests: a throwaway workspace, the real binary run on it, and
//! what it printed.
//!
//! | type          | holds                                                                  |
//! |---------------|------------------------------------------------------------------------|
//! | [`Workspace`] | a temp dir (deleted on drop) and the environment every run gets        |
//! | [`Run`]       | one run of `tr118 -C <root> …`: exit code, stdout, stderr              |
//! | [`Make`]      | a run of `tr118 make --json` and its records, by node id               |

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tr118");

pub struct Workspace {
    dir: TempDir,
    envs: Vec<(OsString, OsString)>,
}

impl Workspace {
    /// An empty workspace in a new temp dir whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Workspace {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir");
        Workspace { dir, envs: Vec::new() }
    }

    /// Sets `key` to `value` in the environment of every run of the binary.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Workspace {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Writes `rel`, creating its parent directories.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Writes `tr118.toml`.
    pub fn pipeline(&self, toml: &str) {
        fs::write(self.path("tr118.toml"), toml).expect("write tr118.toml");
    }

    pub fn json(&self, rel: &str) -> Value {
        let text = fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
    }

    /// Files under `rel`, relative to it, sorted; empty when it does not exist.
    pub fn files(&self, rel: &str) -> Vec<String> {
        let base = self.path(rel);
        if !base.exists() {
            return Vec::new();
        }
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                if entry.file_type().unwrap().is_dir() {
                    walk(&entry.path(), &child, out);
                } else {
                    out.push(child);
                }
            }
        }
        let mut out = Vec::new();
        walk(&base, "", &mut out);
        out.sort();
        out
    }

    /// `tr118 -C <root> ARGS`, stdin closed.
    pub fn tr(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .arg("-C")
            .arg(self.root())
            .args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run tr118");
        Run {
            args: args.join(" "),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `tr118 make --json`, records parsed by node id: every non-blank line of stdout must be
    /// a JSON object with an `id`.
    pub fn make(&self) -> Make {
        self.make_with(&[])
    }

    /// `tr118 make --json ARGS…`, records parsed as for [`Workspace::make`].
    pub fn make_with(&self, args: &[&str]) -> Make {
        let mut all = vec!["make", "--json"];
        all.extend_from_slice(args);
        let run = self.tr(&all);
        let records = run
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l}\n{run}"));
                (v["id"].as_str().unwrap_or_else(|| panic!("record without an id: {l}")).to_string(), v)
            })
            .collect();
        Make { run, records }
    }

    /// [`Workspace::make`], asserting exit code 0.
    #[track_caller]
    pub fn make_ok(&self) -> Make {
        let m = self.make();
        m.run.code(0);
        m
    }
}

pub struct Run {
    /// The arguments after `-C <root>`, joined by spaces.
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn code(&self, want: i32) -> &Run {
        assert_eq!(self.code, Some(want), "exit code of `tr118 {}`\n{self}", self.args);
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(self.stdout.contains(needle), "stdout of `tr118 {}` lacks {needle:?}\n{self}", self.args);
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(self.stderr.contains(needle), "stderr of `tr118 {}` lacks {needle:?}\n{self}", self.args);
        self
    }

    /// Bad input: exit 2 and a diagnostic `tr118.toml:LINE:COL: …` whose line holds `message`.
    #[track_caller]
    pub fn diag(&self, line: usize, message: &str) -> &Run {
        self.diag_prefixed(format!("tr118.toml:{line}:"), message)
    }

    /// [`Run::diag`] with the column too: a line starting `tr118.toml:LINE:COL: ` holds `message`.
    #[track_caller]
    pub fn diag_at(&self, line: usize, col: usize, message: &str) -> &Run {
        self.diag_prefixed(format!("tr118.toml:{line}:{col}: "), message)
    }

    #[track_caller]
    fn diag_prefixed(&self, prefix: String, message: &str) -> &Run {
        self.code(2);
        let found = self.stderr.lines().any(|l| l.strip_prefix("error: ").unwrap_or(l).starts_with(&prefix) && l.contains(message));
        assert!(found, "stderr of `tr118 {}` lacks a line `{prefix}…{message}…`\n{self}", self.args);
        self
    }

    /// The `cache` field (`hit` / `miss`) of node `id`'s record on stdout (`--json`).
    #[track_caller]
    pub fn cache(&self, id: &str) -> String {
        for line in self.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["id"] == id {
                return v["cache"].as_str().unwrap().to_string();
            }
        }
        panic!("no record for `{id}`\n{self}");
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--- code {:?}\n--- stdout\n{}--- stderr\n{}---", self.code, self.stdout, self.stderr)
    }
}

pub struct Make {
    pub run: Run,
    pub records: BTreeMap<String, Value>,
}

impl Make {
    /// Ids of the records `f` accepts, sorted.
    pub fn ids(&self, f: impl Fn(&Value) -> bool) -> Vec<String> {
        self.records.iter().filter(|(_, r)| f(r)).map(|(id, _)| id.clone()).collect()
    }

    /// Nodes executed (cache misses that are not merely pending), sorted.
    pub fn ran(&self) -> Vec<String> {
        self.ids(|r| r["cache"] == "miss" && r["status"] != "pending")
    }

    /// Every cache miss, pending or not, sorted.
    pub fn misses(&self) -> Vec<String> {
        self.ids(|r| r["cache"] == "miss")
    }

    pub fn hits(&self) -> Vec<String> {
        self.ids(|r| r["cache"] == "hit")
    }

    #[track_caller]
    pub fn record(&self, id: &str) -> &Value {
        self.records.get(id).unwrap_or_else(|| panic!("no record for `{id}`\n{}", self.run))
    }

    /// The `status` of node `id`'s record (`""` when it has none).
    #[track_caller]
    pub fn status(&self, id: &str) -> &str {
        self.record(id)["status"].as_str().unwrap_or("")
    }
}
