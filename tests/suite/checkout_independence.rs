//! Keys and results do not depend on where a checkout lives: the reduced study
//! (`support::study`: a tiny random Llama, two CPU backends and a degraded CUDA one) built in
//! several directories, and a second checkout built from a remote
//! cache the first filled.
//!
//! | rule                                                                  | checked against                                   |
//! |-----------------------------------------------------------------------|---------------------------------------------------|
//! | a checkout with another's `cache/` gives every node the same key and runs nothing | the `key` of each node's `--json` record, `out/` byte for byte |
//! | two checkouts built from nothing differ only where latencies are hashed | the `key` of each node's `--json` record          |
//! | no output and no manifest names the workspace's absolute path         | every file under `out/` and `cache/actions/`      |
//! | a second checkout pulling from the remote cache runs only the degraded nodes, which are never shared, and they come out byte-identical, so the gate, the statistics and the report are hits | the nodes that ran, `remote` of each record, `out/` byte for byte |

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::support::nginx::Nginx;
use crate::support::study::workspace as checkout;
use crate::support::workspace::{Make, Workspace};

/// Node id → key.
fn keys(m: &Make) -> BTreeMap<String, String> {
    m.records.iter().map(|r| (r.id.clone(), r.key.clone().unwrap_or_else(|| panic!("`{}` has no key: {r:?}", r.id)))).collect()
}

/// Every file under `out/`, with its bytes.
fn outs(ws: &Workspace) -> BTreeMap<String, Vec<u8>> {
    ws.files("out").into_iter().map(|f| (f.clone(), ws.read(&format!("out/{f}")))).collect()
}

/// Files under `out/` and `cache/actions/` whose bytes hold the workspace's absolute path, as
/// given or canonical, each with the line that does.
fn naming_the_root(ws: &Workspace) -> Vec<String> {
    let root = ws.root();
    let canonical = fs::canonicalize(root).unwrap();
    let needles: Vec<String> = [root, canonical.as_path()].iter().map(|p: &&Path| p.display().to_string()).collect();
    let mut found = Vec::new();
    for dir in ["out", "cache/actions"] {
        for f in ws.files(dir) {
            let rel = format!("{dir}/{f}");
            let text = String::from_utf8_lossy(&ws.read(&rel)).into_owned();
            if let Some(line) = text.lines().find(|l| needles.iter().any(|n| l.contains(n.as_str()))) {
                let line: String = line.chars().take(300).collect();
                found.push(format!("{rel}: {line}"));
            }
        }
    }
    found
}

/// Copies the tree at `from` to `to` (plain files and directories).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn two_checkouts_of_a_study_give_every_node_the_same_key_and_no_artifact_names_either() {
    let a = checkout("tr118-checkout-a-");
    let first = a.make_with(&[]);
    first.run.code(0);
    assert_eq!(first.status("report"), "ok", "{}", first.run);
    assert_eq!(first.status("perplexity/gpu"), "degraded", "the study has a degraded backend\n{}", first.run);
    let named = naming_the_root(&a);
    assert!(named.is_empty(), "outputs and manifests name the workspace `{}`:\n{}", a.root().display(), named.join("\n"));

    // A second checkout with the first's `cache/` (as CI restores it): every node is the
    // same key, so nothing runs, the degraded nodes included.
    let b = checkout("tr118-checkout-b-");
    copy_tree(&a.path("cache"), &b.path("cache"));
    let second = b.make_with(&[]);
    second.run.code(0);
    assert_eq!(keys(&second), keys(&first), "keys differ between the two checkouts");
    assert_eq!(second.ran(), Vec::<String>::new(), "{}", second.run);
    assert_eq!(outs(&b), outs(&a));

    // Built from nothing in a third place: the same keys wherever the inputs are the same
    // bytes. Only the nodes that hash the sweeps' measured latencies differ.
    let c = checkout("tr118-checkout-c-");
    let third = c.make_with(&[]);
    third.run.code(0);
    let named = naming_the_root(&c);
    assert!(named.is_empty(), "outputs and manifests name the workspace `{}`:\n{}", c.root().display(), named.join("\n"));
    let first_keys = keys(&first);
    let differ: Vec<String> = keys(&third).into_iter().filter(|(id, k)| first_keys[id] != *k).map(|(id, _)| id).collect();
    assert_eq!(differ, ["report", "stats"], "only the latencies' readers differ between two builds");
}

#[test]
fn a_second_checkout_pulling_from_the_remote_cache_reruns_only_the_degraded_nodes_and_nothing_downstream() {
    let server = Nginx::start();
    let url = server.url();
    let a = checkout("tr118-checkout-remote-a-");
    let first = a.make_with(&["--remote-cache", &url]);
    first.run.code(0);
    let degraded = first.ids(|r| r.status == "degraded");
    assert!(!degraded.is_empty() && degraded.iter().all(|id| id.contains("/gpu")), "only the CUDA backend's nodes are degraded: {degraded:?}\n{}", first.run);

    let b = checkout("tr118-checkout-remote-b-");
    let second = b.make_with(&["--remote-cache", &url]);
    second.run.code(0);
    // Degraded results are never shared (a fact about the machine that made them), so those
    // nodes run again; the same inputs give the same degraded outputs byte for byte, and
    // everything downstream of them is the remote's entry (early cutoff).
    assert_eq!(second.ran(), degraded, "{}", second.run);
    let remote = second.ids(|r| r.remote.is_some());
    let rest = second.ids(|r| !degraded.contains(&r.id));
    assert_eq!(remote, rest, "every node but the degraded ones comes from the remote cache\n{}", second.run);
    for id in ["accuracy", "stats", "report"] {
        assert!(remote.iter().any(|r| r == id), "`{id}` is a remote hit\n{}", second.run);
    }
    assert_eq!(keys(&second), keys(&first));
    assert_eq!(outs(&b), outs(&a), "the second checkout's `out/` is the first's");
}
