//! Deciding what is fresh and what is stale, and why, without writing anything.

use std::collections::BTreeSet;
use std::io;

use super::progress::NodeRecord;
use super::{missing_output, stage_key, stale_reasons};
use crate::digest::Digest;
use crate::graph::Graph;
use crate::key::{StageKey, StaleReason};
use crate::store::statcache::StatCache;
use crate::store::{ActionResult, Store};

#[derive(Debug, Clone)]
pub(crate) enum State {
    /// A complete cache entry exists for the node's current key.
    Fresh { key: Digest, stage_key: StageKey, result: ActionResult },
    /// The node must run. `key` is `None` while an upstream node is stale.
    Stale { key: Option<(Digest, StageKey)>, reasons: Vec<StaleReason> },
}

impl State {
    pub(crate) fn is_fresh(&self) -> bool {
        matches!(self, State::Fresh { .. })
    }

    pub(crate) fn key(&self) -> Option<&Digest> {
        match self {
            State::Fresh { key, .. } => Some(key),
            State::Stale { key, .. } => key.as_ref().map(|(k, _)| k),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Plan {
    /// The selected nodes in topological order.
    pub selected: Vec<usize>,
    /// Per node of the graph; `None` for nodes not selected.
    pub states: Vec<Option<State>>,
}

impl Plan {
    pub(crate) fn state(&self, i: usize) -> &State {
        self.states[i].as_ref().expect("only selected nodes are asked about")
    }

    /// Stale nodes with a cause of their own (not only an upstream rerun).
    pub(crate) fn roots(&self) -> impl Iterator<Item = (usize, &[StaleReason])> {
        self.selected.iter().filter_map(|&i| match self.state(i) {
            State::Stale { reasons, .. } if !self.is_cascade(i) => Some((i, reasons.as_slice())),
            _ => None,
        })
    }

    pub(crate) fn stale_count(&self) -> usize {
        self.selected.iter().filter(|&&i| !self.state(i).is_fresh()).count()
    }

    /// Whether node `i` is stale only because something upstream of it reruns.
    pub(crate) fn is_cascade(&self, i: usize) -> bool {
        matches!(self.state(i), State::Stale { reasons, .. } if reasons.iter().all(StaleReason::is_cascade))
    }

    /// The selected nodes stale only by cascade.
    pub(crate) fn cascaded(&self) -> BTreeSet<usize> {
        self.selected.iter().copied().filter(|&i| self.is_cascade(i)).collect()
    }

    /// The stale nodes with a cause of their own that node `i` is downstream of, in plan
    /// order: what to fix, or expect, for `i` to be fresh again.
    pub(crate) fn root_causes_of(&self, graph: &Graph, i: usize) -> Vec<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![i];
        let mut roots = BTreeSet::new();
        while let Some(n) = stack.pop() {
            for &u in &graph.upstream[n] {
                if !seen.insert(u) || self.state(u).is_fresh() {
                    continue;
                }
                if self.is_cascade(u) {
                    stack.push(u);
                } else {
                    roots.insert(u);
                }
            }
        }
        self.selected.iter().copied().filter(|u| roots.contains(u)).collect()
    }

    /// How many selected nodes downstream of node `i` rerun because it does.
    pub(crate) fn rerun_downstream_of(&self, graph: &Graph, i: usize) -> usize {
        let mut seen = BTreeSet::new();
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            for &d in &graph.downstream[n] {
                if self.states[d].is_some() && seen.insert(d) {
                    stack.push(d);
                }
            }
        }
        seen.len()
    }

    /// What `--dry-run` and `status --json` say of node `i`.
    pub(crate) fn record(&self, graph: &Graph, i: usize) -> NodeRecord {
        let id = graph.id(i);
        match self.state(i) {
            State::Fresh { key, result, .. } => NodeRecord::hit(id, key, result, false, None),
            state @ State::Stale { reasons, .. } => NodeRecord::pending(id, state.key(), reasons),
        }
    }
}

/// Assesses node `i` once its upstream nodes are settled. `upstream` gives the manifest of
/// an upstream node that is fresh, `None` for one that is stale.
pub(crate) fn assess<'m>(
    graph: &Graph,
    store: &Store,
    stat: &mut StatCache,
    i: usize,
    upstream: &dyn Fn(usize) -> Option<&'m ActionResult>,
) -> io::Result<State> {
    let stale_up: Vec<StaleReason> =
        graph.upstream[i].iter().filter(|&&u| upstream(u).is_none()).map(|&u| StaleReason::Upstream { node: graph.id(u).to_string() }).collect();
    if !stale_up.is_empty() {
        return Ok(State::Stale { key: None, reasons: stale_up });
    }
    let sk = stage_key(graph, i, upstream, stat, store.root())?;
    let key = sk.digest();
    let id = graph.id(i);
    match store.action_result(&key) {
        Ok(Some(m)) => {
            if let Err(why) = super::check_declared(&graph.pipeline.nodes[i], &m) {
                return Ok(State::Stale { key: Some((key, sk)), reasons: vec![StaleReason::EntryInvalid { why }] });
            }
            match missing_output(store, &m) {
                None => Ok(State::Fresh { key, stage_key: sk, result: m }),
                Some(reason) => Ok(State::Stale { key: Some((key, sk)), reasons: vec![reason] }),
            }
        }
        // A manifest that does not verify is never used: the node reruns and its new
        // manifest replaces it.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Ok(State::Stale { key: Some((key, sk)), reasons: vec![StaleReason::EntryInvalid { why: e.to_string() }] })
        }
        // An unreadable manifest is treated like a missing one: the node reruns and the
        // rewrite replaces it.
        Ok(None) | Err(_) => {
            let reasons = stale_reasons(store, id, &key, &sk);
            Ok(State::Stale { key: Some((key, sk)), reasons })
        }
    }
}

/// Plans the selected nodes.
pub(crate) fn plan(graph: &Graph, store: &Store, stat: &mut StatCache, selected: Vec<usize>) -> io::Result<Plan> {
    let mut states: Vec<Option<State>> = vec![None; graph.pipeline.nodes.len()];
    for &i in &selected {
        let state = {
            let lookup = |u: usize| match &states[u] {
                Some(State::Fresh { result, .. }) => Some(result),
                _ => None,
            };
            assess(graph, store, stat, i, &lookup)?
        };
        states[i] = Some(state);
    }
    Ok(Plan { selected, states })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use crate::store::Status;

    /// `fetch → export → {ppl, sweep} → report`, and `lint` on its own.
    fn graph(dir: &std::path::Path) -> Graph {
        let cmd = |name: &str, deps: &str| format!("[stages.{name}]\ncmd = [\"true\"]\ndeps = {{ {deps} }}\nouts = {{ o = \"{name}.txt\" }}\n");
        let toml = [
            cmd("fetch", ""),
            cmd("export", "i = \"out/fetch/fetch.txt\""),
            cmd("ppl", "i = \"out/export/export.txt\""),
            cmd("sweep", "i = \"out/export/export.txt\""),
            cmd("report", "a = \"out/ppl/ppl.txt\", b = \"out/sweep/sweep.txt\""),
            cmd("lint", ""),
        ]
        .concat();
        let file = dir.join("tr118.toml");
        std::fs::write(&file, toml).unwrap();
        let pipeline = Pipeline::load(&file, &[], crate::stage::registry()).unwrap_or_else(|d| panic!("{d}"));
        Graph::build(pipeline, dir).unwrap_or_else(|d| panic!("{d}"))
    }

    fn fresh() -> State {
        let d = Digest([7; 32]);
        let result = ActionResult { key: d, status: Status::Ok, reason: None, outputs: Vec::new(), log: None, seal: d };
        let stage_key = StageKey {
            kind: "cmd".into(),
            implementation: Default::default(),
            stage_version: 1,
            matrix: Default::default(),
            params: Default::default(),
            config: serde_json::Value::Null,
            inputs: Default::default(),
            outs: Vec::new(),
            device: "cpu".into(),
            facets: Default::default(),
        };
        State::Fresh { key: d, stage_key, result }
    }

    fn stale(reasons: Vec<StaleReason>) -> State {
        State::Stale { key: None, reasons }
    }

    fn upstream(node: &str) -> StaleReason {
        StaleReason::Upstream { node: node.into() }
    }

    /// The plan of `make` after `export`'s kind changed: `fetch` and `lint` fresh, `export` a
    /// root cause, everything below it stale by cascade.
    fn plan(g: &Graph) -> Plan {
        let by_id = |id: &str| g.pipeline.nodes.iter().position(|n| n.id == id).unwrap();
        let mut states = vec![None; g.pipeline.nodes.len()];
        states[by_id("fetch")] = Some(fresh());
        states[by_id("lint")] = Some(fresh());
        states[by_id("export")] = Some(stale(vec![StaleReason::KindChanged { old: "cmd".into(), new: "export".into() }]));
        states[by_id("ppl")] = Some(stale(vec![upstream("export")]));
        states[by_id("sweep")] = Some(stale(vec![upstream("export")]));
        states[by_id("report")] = Some(stale(vec![upstream("ppl"), upstream("sweep")]));
        Plan { selected: g.order.clone(), states }
    }

    fn ids(g: &Graph, nodes: impl IntoIterator<Item = usize>) -> Vec<String> {
        let mut v: Vec<String> = nodes.into_iter().map(|i| g.id(i).to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_cascade_is_traced_to_its_root_causes_and_a_root_counts_what_it_reruns() {
        let dir = tempfile::tempdir().unwrap();
        let g = graph(dir.path());
        let p = plan(&g);
        let by_id = |id: &str| g.pipeline.nodes.iter().position(|n| n.id == id).unwrap();
        assert_eq!(ids(&g, p.cascaded()), ["ppl", "report", "sweep"]);
        assert_eq!(ids(&g, p.roots().map(|(i, _)| i)), ["export"]);
        assert!(!p.is_cascade(by_id("export")) && !p.is_cascade(by_id("fetch")));
        // Through two levels of cascade, past a fresh node, to the one root.
        assert_eq!(ids(&g, p.root_causes_of(&g, by_id("report"))), ["export"]);
        assert_eq!(ids(&g, p.root_causes_of(&g, by_id("ppl"))), ["export"]);
        // A root's own cause is not upstream of it; a fresh node has none.
        assert!(p.root_causes_of(&g, by_id("export")).is_empty());
        assert!(p.root_causes_of(&g, by_id("lint")).is_empty());
        // `report` is counted once although both its inputs rerun.
        assert_eq!(p.rerun_downstream_of(&g, by_id("export")), 3);
        assert_eq!(p.rerun_downstream_of(&g, by_id("sweep")), 1);
        assert_eq!(p.stale_count(), 4);
    }

    #[test]
    fn a_plan_reads_as_records_hit_or_pending() {
        let dir = tempfile::tempdir().unwrap();
        let g = graph(dir.path());
        let p = plan(&g);
        let by_id = |id: &str| g.pipeline.nodes.iter().position(|n| n.id == id).unwrap();
        let hit = p.record(&g, by_id("fetch"));
        assert_eq!((hit.cache, hit.status, hit.reason.as_deref(), hit.key.as_deref()), (Cache::Hit, RecordStatus::Ok, None, Some("07".repeat(32).as_str())));
        let pending = p.record(&g, by_id("report"));
        assert_eq!((pending.cache, pending.status, pending.key.as_deref()), (Cache::Miss, RecordStatus::Pending, None));
        assert_eq!(pending.reason.as_deref(), Some("upstream `ppl` reruns; upstream `sweep` reruns"));
    }

    use super::super::progress::{Cache, RecordStatus};
}
