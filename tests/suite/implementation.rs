//! Implementation identity in keys (see `src/implementation.rs`): the lock agrees with the
//! sources, an edit to any file of a set is caught and names the version to bump, a README
//! edit is caught by nothing, and a bumped version makes exactly its dependent nodes stale,
//! with `why` naming the set and its files.
//!
//! | rule                                                                     | test |
//! |--------------------------------------------------------------------------|------|
//! | `implementation.lock` matches the sources (CI fails otherwise, saying what to bump) | `implementation_lock_matches_the_sources` |
//! | editing any file of any set is caught, for exactly the sets holding it    | `editing_a_file_of_each_set_is_caught` |
//! | a README edit is in no set                                               | `a_readme_edit_is_caught_by_no_set` |
//! | a version bump makes exactly the dependent nodes stale, and `why` says so | `a_version_bump_stales_exactly_its_nodes` |

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::support;
use crate::support::study::workspace_with;
use tr118::implementation::{self, SETS};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn implementation_lock_matches_the_sources() {
    let lock_path = repo().join("implementation.lock");
    if std::env::var_os("TR118_BLESS").is_some() {
        fs::write(&lock_path, implementation::lock(repo()).unwrap()).unwrap();
    }
    let locked = fs::read_to_string(&lock_path).unwrap_or_default();
    let drifts = implementation::check(repo(), &locked).unwrap();
    let text: Vec<String> = drifts.iter().map(|d| d.to_string()).collect();
    assert!(drifts.is_empty(), "the sources disagree with implementation.lock:\n- {}", text.join("\n- "));
}

/// A copy of every file any set names, under a new temp dir.
fn copy_sources() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for set in SETS {
        for file in implementation::files(repo(), set).unwrap() {
            let to = dir.path().join(&file);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(repo().join(&file), &to).unwrap();
        }
    }
    fs::copy(repo().join("README.md"), dir.path().join("README.md")).unwrap();
    dir
}

#[test]
fn editing_a_file_of_each_set_is_caught() {
    let copy = copy_sources();
    let locked = implementation::lock(copy.path()).unwrap();
    assert!(implementation::check(copy.path(), &locked).unwrap().is_empty());
    for set in SETS {
        let files = implementation::files(copy.path(), set).unwrap();
        let file = files.last().unwrap();
        let path = copy.path().join(file);
        let original = fs::read(&path).unwrap();
        let mut edited = original.clone();
        edited.extend_from_slice(b"\n");
        fs::write(&path, &edited).unwrap();

        let drifts = implementation::check(copy.path(), &locked).unwrap();
        let caught: BTreeSet<&str> = drifts.iter().map(|d| d.set.as_str()).collect();
        let holding: BTreeSet<&str> = SETS.iter().filter(|s| implementation::files(copy.path(), s).unwrap().contains(file)).map(|s| s.name).collect();
        assert_eq!(caught, holding, "editing `{file}`");
        let d = drifts.iter().find(|d| d.set == set.name).unwrap();
        assert_eq!(d.files, std::slice::from_ref(file));
        let message = d.to_string();
        assert!(message.contains(&format!("bump `version` of `{}` in src/implementation.rs to {}", set.name, set.version + 1)), "{message}");
        assert!(message.contains("TR118_BLESS=1"), "{message}");
        fs::write(&path, &original).unwrap();
    }
    // A new file in a set's directory is an edit of the set too.
    fs::write(copy.path().join("src/measure/new.rs"), "// new\n").unwrap();
    let drifts = implementation::check(copy.path(), &locked).unwrap();
    assert_eq!(drifts.iter().map(|d| d.set.as_str()).collect::<Vec<_>>(), ["sweep"]);
}

#[test]
fn a_readme_edit_is_caught_by_no_set() {
    let copy = copy_sources();
    let locked = implementation::lock(copy.path()).unwrap();
    fs::write(copy.path().join("README.md"), "# rewritten\n").unwrap();
    assert_eq!(implementation::check(copy.path(), &locked).unwrap(), []);
}

const EXTRA: &str = r#"
[[backends]]
name = "torch-cpu"
runtime = "torch"
provider = "cpu"
model = "out/export"

# TensorRT for RTX plans run in the torch worker's helper: the `torch` set is theirs too.
# The plan is said to have been built elsewhere, so its nodes degrade here, quickly.
[[backends]]
name = "rtx"
runtime = "tensorrt-rtx"
provider = "cuda"
prefill = "plans/rtx/plan"
decoder = "plans/rtx/plan"

[stages.calibrate]
kind = "calibrate"
deps = { model = "out/export/prefill", tokenizer = "tokenizer.json", corpus = "corpus.txt", runtime = "lib/libonnxruntime.so" }
samples = 2
seq_len = 8

[stages.trt_build]
kind = "trt_build"
matrix = { precision = ["fp32"] }
deps = { model = "out/export/prefill" }
facets = ["gpu", "trtexec"]
device = "cuda:0"
profiles = [{ batch = [1, 1, 2], sequence = [1, 4, 8] }]

[stages.fetched]
kind = "fetch"
deps = { src = "corpus.txt" }
path = "{deps.src}"
outs = { file = "corpus.txt" }

[stages.wc]
cmd = ["sh", "-c", "wc -w < $0 > $1", "{deps.corpus}", "{outs.count}"]
deps = { corpus = "out/fetched/corpus.txt" }
outs = { count = "count.txt" }
"#;

#[test]
fn a_version_bump_stales_exactly_its_nodes() {
    let ws = workspace_with("tr118-implementation-", EXTRA);
    ws.write("plans/rtx/plan/model.plan", b"not a plan");
    ws.write("plans/rtx/build.json", br#"{"builder": "tensorrt-rtx", "status": "degraded", "reason": "built on another machine"}"#);
    let built = ws.tr(&["make", "--keep-going"]);
    built.code(0);
    let ids: Vec<String> = ws
        .tr(&["status", "--json"])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let by_stage = |stages: &[&str]| -> BTreeSet<String> { ids.iter().filter(|id| stages.contains(&id.split('/').next().unwrap())).cloned().collect() };
    let torch_nodes: BTreeSet<String> = ids.iter().filter(|id| id.contains("/torch-cpu") || id.contains("/rtx")).cloned().collect();
    let backend_nodes = by_stage(&["perplexity", "sweep", "logits"]);
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let want: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("stage", all.clone()),
        ("cmd", by_stage(&["wc"])),
        ("fetch", by_stage(&["fetched"])),
        ("export", by_stage(&["export"])),
        ("tokenizer", by_stage(&["export", "calibrate", "perplexity", "sweep", "logits"])),
        ("calibrate", by_stage(&["calibrate"])),
        ("quantize", by_stage(&["quantize"])),
        ("trt_build", by_stage(&["trt_build"])),
        ("perplexity", by_stage(&["perplexity"])),
        ("gate", by_stage(&["accuracy"])),
        ("logit_diff", by_stage(&["logits"])),
        ("sweep", by_stage(&["sweep"])),
        ("stats", by_stage(&["stats"])),
        ("report", by_stage(&["report"])),
        ("templates", by_stage(&["report"])),
        ("backend", backend_nodes.clone()),
        ("onnxruntime", by_stage(&["calibrate", "quantize"]).union(&backend_nodes.difference(&torch_nodes).cloned().collect()).cloned().collect()),
        ("torch", torch_nodes.clone()),
    ]);
    assert_eq!(want.keys().copied().collect::<BTreeSet<_>>(), SETS.iter().map(|s| s.name).collect(), "every set is covered here");
    assert!(torch_nodes.iter().any(|id| id.contains("/torch-cpu")) && torch_nodes.iter().any(|id| id.contains("/rtx")), "{torch_nodes:?}");

    for set in SETS {
        let bumped = format!("{}={}", set.name, set.version + 1);
        let status = std::process::Command::new(support::workspace::BIN)
            .args(["-C", ws.root().to_str().unwrap(), "status", "--json"])
            .env("TR118_TEST_IMPLEMENTATION", &bumped)
            .output()
            .unwrap();
        let needle = format!("implementation of `{}` changed (version {} → {}", set.name, set.version, set.version + 1);
        let records: Vec<serde_json::Value> = String::from_utf8(status.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let reason = |r: &serde_json::Value| r["reason"].as_str().unwrap_or("").to_string();
        let rooted: BTreeSet<String> = records.iter().filter(|r| reason(r).contains(&needle)).map(|r| r["id"].as_str().unwrap().to_string()).collect();
        let stale: BTreeSet<String> = records.iter().filter(|r| !reason(r).is_empty()).map(|r| r["id"].as_str().unwrap().to_string()).collect();
        let want = &want[set.name];
        // The bump is the root cause of dependent nodes only; every dependent node is stale
        // (by the bump itself, or because an upstream dependent reruns first); and a node
        // that does not depend on the set is stale only by cascade.
        assert!(!rooted.is_empty() && rooted.is_subset(want), "bumping `{}`: {rooted:?} ⊄ {want:?}", set.name);
        assert!(want.is_subset(&stale), "bumping `{}`: dependent nodes left fresh: {:?}", set.name, want.difference(&stale).collect::<Vec<_>>());
        for r in records.iter().filter(|r| !want.contains(r["id"].as_str().unwrap()) && !reason(r).is_empty()) {
            assert!(reason(r).starts_with("upstream `"), "bumping `{}` made `{}` stale: {}", set.name, r["id"], reason(r));
        }
    }

    // `why` names the set, the versions and the files.
    let why = std::process::Command::new(support::workspace::BIN)
        .args(["-C", ws.root().to_str().unwrap(), "why", "sweep/cpu/prefill"])
        .env("TR118_TEST_IMPLEMENTATION", "sweep=7")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&why.stdout);
    assert!(
        text.contains("implementation of `sweep` changed (version 1 → 7: src/stage/sweep.rs, src/artifact/sweep.rs, src/measure, src/backend/workload.rs)"),
        "{text}"
    );
}
