//! The harness of the end-to-end tests: a throwaway workspace, the real binary run on it, and
//! what it printed.
//!
//! | type          | holds                                                                  |
//! |---------------|------------------------------------------------------------------------|
//! | [`Workspace`] | a temp dir (deleted on drop) and the environment every run gets        |
//! | [`Run`]       | one run of `tr118 -C <root> …`: exit code or signal, stdout, stderr    |
//! | [`Record`]    | one line of `--json`, every field checked for its name and type        |
//! | [`Make`]      | a run of `tr118 make --json` and its records, in the order printed     |

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tr118");

pub struct Workspace {
    dir: TempDir,
    envs: Vec<(OsString, OsString)>,
    local: bool,
}

impl Workspace {
    /// An empty workspace in a new temp dir whose name starts with `prefix`.
    pub fn new(prefix: &str) -> Workspace {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("create a temp dir");
        Workspace { dir, envs: Vec::new(), local: false }
    }

    /// Sets `key` to `value` in the environment of every run of the binary.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Workspace {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// No remote cache: every record a make prints here must say that no hit came from one
    /// (`remote: null`).
    pub fn local(mut self) -> Workspace {
        self.local = true;
        self
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
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

    /// `rel` as UTF-8 text.
    pub fn text(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Replaces the one occurrence of `from` in `rel`.
    #[track_caller]
    pub fn replace(&self, rel: &str, from: &str, to: &str) {
        let text = self.text(rel);
        assert_eq!(text.matches(from).count(), 1, "`{from}` must occur exactly once in {rel}:\n{text}");
        self.write(rel, text.replacen(from, to, 1));
    }

    /// Writes `tr118.toml`.
    pub fn pipeline(&self, toml: &str) {
        fs::write(self.path("tr118.toml"), toml).expect("write tr118.toml");
    }

    pub fn json(&self, rel: &str) -> Value {
        let text = self.text(rel);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
    }

    /// The action manifest stored under cache key `key`.
    pub fn manifest(&self, key: &str) -> Value {
        self.json(&format!("cache/actions/{key}.json"))
    }

    /// Workspace path of the cache object with hex digest `digest`.
    pub fn object(&self, digest: &str) -> String {
        format!("cache/objects/{}/{}", &digest[..2], &digest[2..])
    }

    /// Names of the entries of directory `rel`, sorted; empty when it does not exist.
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.path(rel)) {
            Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
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

    /// Lines appended to `runs.log` by commands that record themselves (`echo $TR118_NODE >>
    /// runs.log`), sorted; the log is emptied so the next call sees only newer runs.
    pub fn take_runs(&self) -> Vec<String> {
        let text = fs::read_to_string(self.path("runs.log")).unwrap_or_default();
        let _ = fs::remove_file(self.path("runs.log"));
        let mut v: Vec<String> = text.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// `tr118 -C <root> ARGS` with the workspace's environment and stdin closed, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-C").arg(self.root()).args(args).envs(self.envs.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        c
    }

    /// `tr118 -C <root> ARGS`, run to completion.
    pub fn tr(&self, args: &[&str]) -> Run {
        Run::from_output(args, self.command(args).output().expect("run tr118"))
    }

    /// `tr118 make --json`, its records parsed (see [`Workspace::records`]).
    pub fn make(&self) -> Make {
        self.make_with(&[])
    }

    /// `tr118 make --json ARGS…`, its records parsed (see [`Workspace::records`]).
    pub fn make_with(&self, args: &[&str]) -> Make {
        let mut all = vec!["make", "--json"];
        all.extend_from_slice(args);
        self.records(self.tr(&all))
    }

    /// [`Workspace::make`], asserting exit code 0.
    #[track_caller]
    pub fn make_ok(&self) -> Make {
        self.make_ok_with(&[])
    }

    /// [`Workspace::make_with`], asserting exit code 0.
    #[track_caller]
    pub fn make_ok_with(&self, args: &[&str]) -> Make {
        let m = self.make_with(args);
        m.run.code(0);
        m
    }

    /// The records of a `make --json` run here: every non-blank line of stdout a [`Record`],
    /// one per node; in a [`Workspace::local`] workspace, none from a remote cache.
    #[track_caller]
    pub fn records(&self, run: Run) -> Make {
        let m = Make::parse(run);
        if self.local {
            for r in &m.records {
                assert!(r.remote.is_none(), "`{}` came from a remote cache, yet this workspace has none\n{}", r.id, m.run);
            }
        }
        m
    }
}

pub struct Run {
    /// The arguments after `-C <root>`, joined by spaces.
    pub args: String,
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(args: &[&str], out: Output) -> Run {
        Run {
            args: args.join(" "),
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn code(&self, want: i32) -> &Run {
        assert_eq!(self.code, Some(want), "exit code of `tr118 {}`\n{self}", self.args);
        self
    }

    #[track_caller]
    pub fn success(&self) -> &Run {
        self.code(0)
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

    #[track_caller]
    pub fn stderr_lacks(&self, needle: &str) -> &Run {
        assert!(!self.stderr.contains(needle), "stderr of `tr118 {}` has {needle:?}\n{self}", self.args);
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
        write!(f, "--- code {:?} signal {:?}\n--- stdout\n{}--- stderr\n{}---", self.code, self.signal, self.stdout, self.stderr)
    }
}

/// One line of `make --json` or `status --json`: what happened to one node. `duration_ms` (a
/// number, at least 0) is checked and not kept: no test can know what it should be.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    /// 64 lowercase hex digits.
    pub key: Option<String>,
    /// `hit`, `miss` or `skipped`.
    pub cache: String,
    /// `ok`, `degraded`, `failed`, `skipped` or `pending`.
    pub status: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub restored: bool,
    /// A hit from the remote cache: what it moved and saved.
    pub remote: Option<RemoteHit>,
}

/// What a hit from the remote cache moved; its `saved_ms` (at least 0) is checked, not kept.
#[derive(Debug, Clone)]
pub struct RemoteHit {
    pub bytes_down: u64,
}

impl Record {
    /// Parses one line, asserting it has exactly the fields of a record, each of its type.
    #[track_caller]
    pub fn parse(line: &str) -> Record {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON record ({e}): {line}"));
        let obj = v.as_object().unwrap_or_else(|| panic!("record is not an object: {line}"));
        let fields: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = ["id", "key", "cache", "status", "reason", "detail", "duration_ms", "restored", "remote"].into();
        assert_eq!(fields, want, "record fields: {line}");
        let opt = |k: &str| match &obj[k] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => panic!("`{k}` must be a string or null, got {other}: {line}"),
        };
        let string = |k: &str| opt(k).unwrap_or_else(|| panic!("`{k}` must be a string: {line}"));
        let cache = string("cache");
        assert!(["hit", "miss", "skipped"].contains(&cache.as_str()), "bad cache {cache}: {line}");
        let status = string("status");
        assert!(["ok", "degraded", "failed", "skipped", "pending"].contains(&status.as_str()), "bad status {status}: {line}");
        let key = opt("key");
        if let Some(k) = &key {
            assert!(k.len() == 64 && k.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "bad key {k}: {line}");
        }
        let remote = match &obj["remote"] {
            Value::Null => None,
            Value::Object(r) => {
                let fields: BTreeSet<&str> = r.keys().map(String::as_str).collect();
                assert_eq!(fields, ["bytes_down", "saved_ms"].into(), "remote fields: {line}");
                let bytes_down = r["bytes_down"].as_u64().unwrap_or_else(|| panic!("remote.bytes_down: {line}"));
                assert!(r["saved_ms"].as_f64().is_some_and(|s| s >= 0.0), "remote.saved_ms: {line}");
                assert_eq!(cache, "hit", "only a hit comes from the remote cache: {line}");
                Some(RemoteHit { bytes_down })
            }
            other => panic!("`remote` must be an object or null, got {other}: {line}"),
        };
        assert!(obj["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "duration_ms: {line}");
        Record {
            id: string("id"),
            key,
            cache,
            status,
            reason: opt("reason"),
            detail: opt("detail"),
            restored: obj["restored"].as_bool().unwrap_or_else(|| panic!("restored: {line}")),
            remote,
        }
    }
}

pub struct Make {
    pub run: Run,
    /// In the order printed: a node after the nodes it depends on.
    pub records: Vec<Record>,
}

impl Make {
    /// Every non-blank line of the run's stdout a [`Record`], at most one per node.
    #[track_caller]
    pub fn parse(run: Run) -> Make {
        let records: Vec<Record> = run.stdout.lines().filter(|l| !l.trim().is_empty()).map(Record::parse).collect();
        let mut seen = BTreeSet::new();
        for r in &records {
            assert!(seen.insert(r.id.as_str()), "two records for `{}`\n{run}", r.id);
        }
        Make { run, records }
    }

    /// Ids of the records `f` accepts, sorted.
    pub fn ids(&self, f: impl Fn(&Record) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self.records.iter().filter(|r| f(r)).map(|r| r.id.clone()).collect();
        v.sort();
        v
    }

    /// Every id, sorted.
    pub fn all_ids(&self) -> Vec<String> {
        self.ids(|_| true)
    }

    /// Nodes executed (cache misses that are not merely pending), sorted.
    pub fn ran(&self) -> Vec<String> {
        self.ids(|r| r.cache == "miss" && r.status != "pending")
    }

    /// Every cache miss, pending or not, sorted.
    pub fn misses(&self) -> Vec<String> {
        self.ids(|r| r.cache == "miss")
    }

    pub fn hits(&self) -> Vec<String> {
        self.ids(|r| r.cache == "hit")
    }

    /// Asserts that exactly the nodes `want` ran.
    #[track_caller]
    pub fn assert_ran(&self, want: &[&str]) -> &Make {
        assert_eq!(self.ran(), super::sorted(want), "nodes that ran\n{}", self.run);
        self
    }

    #[track_caller]
    pub fn record(&self, id: &str) -> &Record {
        self.records.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no record for `{id}`\n{}", self.run))
    }

    /// The `status` of node `id`'s record.
    #[track_caller]
    pub fn status(&self, id: &str) -> &str {
        &self.record(id).status
    }
}
