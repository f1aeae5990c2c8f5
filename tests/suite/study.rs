//! A reduced study end to end through `tr118 make report`: a tiny random Llama exported by the
//! binary, two CPU backends (one with its own INT8 model) and a degraded CUDA one, through
//! perplexity, the gate, logit diffs, prefill and KV-cached sweeps, statistics and the report
//! — the default study's shape on a model that runs in milliseconds.
//!
//! | rule                                                        | checked against                                  |
//! |-------------------------------------------------------------|--------------------------------------------------|
//! | the whole study builds and the report covers every backend  | the report's own text: each backend, the degraded reason |
//! | nothing changed: nothing reruns                              | the `--json` records: every node a hit           |
//! | one backend edited: exactly its nodes, the gate, the stats and the report rerun | the set of nodes that ran, written out here |

use std::collections::BTreeSet;
use std::fs;

use crate::support::study::workspace;

#[test]
fn a_reduced_study_reports_and_an_edited_backend_reruns_only_its_own_nodes() {
    let ws = workspace("tr118-study-");
    let first = ws.make_ok();
    assert_eq!(first.status("report"), "ok", "{}", first.run);
    let report = String::from_utf8(ws.read("out/report/report.md")).unwrap();
    for backend in ["cpu", "cpu-int8", "gpu"] {
        assert!(report.contains(&format!("| {backend} ")) || report.contains(&format!("{backend} (")), "the report names `{backend}`");
    }
    assert!(report.contains("execution provider `cuda` is not available"), "the degraded reason is in the report");
    assert!(ws.read("out/report/report.html").windows(4).any(|w| w == b"<svg"), "the HTML has its charts");

    let again = ws.make_ok();
    assert!(again.ran().is_empty(), "nothing changed, yet {:?} ran\n{}", again.ran(), again.run);

    // Edit one backend: `cpu-int8` gets two threads.
    let toml = fs::read_to_string(ws.path("tr118.toml")).unwrap();
    let edited = toml.replacen("precision = \"int8\"\nthreads = 1", "precision = \"int8\"\nthreads = 2", 1);
    assert_ne!(toml, edited);
    ws.write("tr118.toml", edited);
    ws.tr(&["why", "sweep/cpu-int8/prefill"]).code(0).stdout_has("threads").stdout_has("1 → 2");
    let after = ws.make_ok();
    let ran: BTreeSet<String> = after.ran().into_iter().collect();
    let want: BTreeSet<String> = ["perplexity/cpu-int8", "accuracy", "logits/cpu-int8", "sweep/cpu-int8/prefill", "sweep/cpu-int8/generate", "stats", "report"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(ran, want, "{}", after.run);
}
