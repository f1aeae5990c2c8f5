//! Implementation identity: which source files make which results, and the version that
//! stands for those files in the keys of the nodes they make.
//!
//! A key that holds a node's inputs but not the code that turned them into outputs serves
//! yesterday's numbers as fresh after a fix: turning TF32 off moved GPU logits by 1e-2, and
//! the keys of the measurements it touched did not move. So every key carries, for each
//! *implementation set* its node depends on, that set's version (the `implementation` field
//! of [`crate::key::StageKey`]).
//!
//! | mechanism                       | reruns after a fix | a refactor remeasures | can drift |
//! |---------------------------------|--------------------|-----------------------|-----------|
//! | digest of the files in the key (Bazel's tool digests, turborepo's global hash) | yes | yes, every study | no |
//! | a version bumped by hand (cargo's fingerprint versions, this crate until now)   | only if someone remembers | no | yes |
//! | **a version, checked against the digest of its files** (`implementation.lock`)  | yes | no | no  |
//!
//! The version enters the key; `implementation.lock` at the repository root records, for each
//! set, the version and the blake3 of every file it was last checked with. The test
//! `tests/suite/implementation.rs` recomputes those digests and fails — naming the set, the files
//! and the version to bump — whenever a file changed and the lock did not, so a change to a
//! result's code cannot land without a decision:
//!
//! - the change can alter results: bump the set's `version` below, then record the new lock
//!   with `TR118_BLESS=1 cargo test --release --test suite implementation::`; every dependent node's
//!   key moves and `why` says `implementation of `sweep` changed (version 1 → 2: …)`;
//! - it cannot (a refactor, a comment, a rename): record the lock under the same version; no
//!   key moves and no study is remeasured. The lock's diff shows the reviewer which it was.
//!
//! A file may sit in several sets (the tokenizer is read by export, perplexity, logit_diff,
//! calibrate and sweep). A file in no set changes no result: the engine, the CLI, the store,
//! the pipeline parser (what they change reaches the key as config, params and inputs).
//! Which sets a node depends on is its kind's answer ([`crate::stage::StageKind::implementation`]):
//! its own set, the shared `stage` set, and, for nodes that run a backend, the set of that
//! backend's runtime only — editing the torch worker reruns torch backends' nodes and no
//! ONNX Runtime measurement.

use std::fs;
use std::path::Path;

/// One implementation set: the files whose code makes one kind of result.
#[derive(Debug)]
pub struct Set {
    pub name: &'static str,
    /// Enters the key of every node that depends on the set.
    pub version: u32,
    /// Files and directories (every file below, recursively), relative to the repository.
    pub files: &'static [&'static str],
}

/// Every implementation set. Bump a `version` when a change can alter what its nodes produce.
pub const SETS: &[Set] = &[
    Set { name: "stage", version: 1, files: &["src/stage/mod.rs", "src/stage/output.rs", "src/stage/corpus.rs"] },
    Set { name: "cmd", version: 1, files: &["src/stage/cmd.rs"] },
    Set { name: "fetch", version: 1, files: &["src/stage/fetch.rs"] },
    Set { name: "export", version: 4, files: &["src/stage/export.rs", "src/artifact/export.rs", "src/export", "src/model", "src/onnx"] },
    Set { name: "tokenizer", version: 1, files: &["src/tokenizer.rs"] },
    Set {
        name: "calibrate",
        version: 2,
        files: &[
            "src/stage/calibrate.rs",
            "src/quant/mod.rs",
            "src/quant/calibrate.rs",
            "src/quant/graph.rs",
            "src/quant/observe.rs",
            "src/artifact/calibration.rs",
        ],
    },
    Set { name: "quantize", version: 3, files: &["src/stage/quantize.rs", "src/quant", "src/onnx", "src/artifact/calibration.rs", "src/artifact/quantize.rs"] },
    Set {
        name: "trt_build",
        version: 3,
        files: &["src/stage/trt_build.rs", "src/artifact/trt_build.rs", "src/trt.rs", "src/trt", "python/tr118_trt.py", "src/onnx"],
    },
    Set { name: "perplexity", version: 1, files: &["src/stage/perplexity.rs", "src/artifact/perplexity.rs"] },
    Set { name: "gate", version: 1, files: &["src/stage/gate.rs", "src/artifact/gate.rs", "src/artifact/perplexity.rs"] },
    Set { name: "logit_diff", version: 1, files: &["src/stage/logit_diff.rs", "src/artifact/logit_diff.rs"] },
    // The timing loops a sweep drives a backend with are `backend::workload`'s, but the numbers they
    // make are a sweep's: an edit there reruns sweeps, as it did when they lived in `src/measure`.
    Set { name: "sweep", version: 1, files: &["src/stage/sweep.rs", "src/artifact/sweep.rs", "src/measure", "src/backend/workload.rs"] },
    Set { name: "stats", version: 1, files: &["src/stage/stats.rs", "src/artifact/stats.rs", "src/stats.rs", "src/measure/mod.rs"] },
    Set { name: "report", version: 5, files: &["src/stage/report.rs", "src/report", "src/artifact"] },
    Set { name: "templates", version: 3, files: &["templates/report.md.j2", "templates/report.html.j2"] },
    Set { name: "backend", version: 1, files: &["src/backend/mod.rs", "src/backend/ort.rs"] },
    Set { name: "onnxruntime", version: 2, files: &["src/runtime", "src/backend/probe.rs"] },
    Set { name: "torch", version: 1, files: &["src/backend/torch.rs", "python/tr118_worker.py", "python/tr118_trt.py", "src/trt/rtx.rs"] },
];

/// The set called `name`.
///
/// # Panics
/// When no set has that name: kinds name sets by literals from [`SETS`], and the tests check
/// every kind against the table.
pub(crate) fn set(name: &str) -> &'static Set {
    SETS.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no implementation set `{name}`"))
}

/// The version of the set called `name` that enters keys. `TR118_TEST_IMPLEMENTATION`
/// (`set=version,…`) overrides it: the test suite's way to show which nodes a version bump
/// reruns without rebuilding the binary.
pub(crate) fn version(name: &str) -> u32 {
    static OVERRIDES: std::sync::OnceLock<Vec<(String, u32)>> = std::sync::OnceLock::new();
    let overrides = OVERRIDES.get_or_init(|| {
        std::env::var("TR118_TEST_IMPLEMENTATION")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('=').and_then(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?))))
            .collect()
    });
    overrides.iter().find(|(k, _)| k == name).map_or_else(|| set(name).version, |(_, v)| *v)
}

/// The files of `set` as they are under `root`: every file, relative, sorted.
pub fn files(root: &Path, set: &Set) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for entry in set.files {
        let path = root.join(entry);
        let meta = fs::metadata(&path).map_err(|e| format!("implementation set `{}`: `{entry}`: {e}", set.name))?;
        if meta.is_dir() {
            let listed = crate::digest::list_files(&path).map_err(|e| format!("implementation set `{}`: `{entry}`: {e}", set.name))?;
            out.extend(listed.into_iter().map(|f| format!("{entry}/{f}")));
        } else {
            out.push(entry.to_string());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `implementation.lock` for the sources under `root`: one line per file of each set,
/// `set version path blake3`, sets in the order of [`SETS`].
pub fn lock(root: &Path) -> Result<String, String> {
    let mut text = String::from(
        "# Written by `TR118_BLESS=1 cargo test --release --test suite implementation::`; see src/implementation.rs.\n# set version file blake3\n",
    );
    for set in SETS {
        for file in files(root, set)? {
            let (d, _) = crate::digest::hash_file(&root.join(&file)).map_err(|e| format!("`{file}`: {e}"))?;
            text.push_str(&format!("{} {} {file} {}\n", set.name, set.version, d.to_hex()));
        }
    }
    Ok(text)
}

/// One way the sources under a root disagree with a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub set: String,
    pub version: u32,
    /// The version the lock records, `None` for a set the lock does not know.
    pub locked: Option<u32>,
    /// Files added, removed or changed since the lock was written.
    pub files: Vec<String>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files = crate::diag::ticked(self.files.iter());
        match self.locked {
            Some(v) if v == self.version => write!(
                f,
                "implementation `{}` changed ({files}) but its version is still {v}: if the change can alter results, bump `version` of `{}` in src/implementation.rs to {}; if it cannot (a refactor), keep it. Then record the lock with `TR118_BLESS=1 cargo test --release --test suite implementation::`",
                self.set,
                self.set,
                v + 1
            ),
            Some(v) => write!(
                f,
                "implementation `{}` is at version {} but implementation.lock records version {v}{}: record the lock with `TR118_BLESS=1 cargo test --release --test suite implementation::`",
                self.set,
                self.version,
                if files.is_empty() { String::new() } else { format!(" (files changed: {files})") }
            ),
            None => write!(
                f,
                "implementation `{}` is not in implementation.lock: record it with `TR118_BLESS=1 cargo test --release --test suite implementation::`",
                self.set
            ),
        }
    }
}

/// Compares the sources under `root` with the lock text `locked`; empty when they agree.
pub fn check(root: &Path, locked: &str) -> Result<Vec<Drift>, String> {
    let current = lock(root)?;
    let parse = |text: &str| -> std::collections::BTreeMap<(String, String), (u32, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (set, version, file, digest) = (w.next()?, w.next()?.parse().ok()?, w.next()?, w.next()?);
                Some(((set.to_string(), file.to_string()), (version, digest.to_string())))
            })
            .collect()
    };
    let (now, then) = (parse(&current), parse(locked));
    let mut drifts = Vec::new();
    for set in SETS {
        let locked_version = then.iter().find(|((s, _), _)| s == set.name).map(|(_, (v, _))| *v);
        let mut files: Vec<String> = now
            .iter()
            .filter(|((s, _), _)| s == set.name)
            .filter(|(k, (_, d))| then.get(*k).is_none_or(|(_, old)| old != d))
            .map(|((_, f), _)| f.clone())
            .collect();
        files.extend(then.keys().filter(|(s, f)| s == set.name && !now.contains_key(&(s.clone(), f.clone()))).map(|(_, f)| f.clone()));
        files.sort();
        if !files.is_empty() || locked_version != Some(set.version) {
            drifts.push(Drift { set: set.name.into(), version: set.version, locked: locked_version, files });
        }
    }
    Ok(drifts)
}
