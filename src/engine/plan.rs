//! Deciding what is fresh and what is stale, and why, without writing anything.

use std::io;

use super::{missing_output, stage_key, stale_reasons};
use crate::digest::Digest;
use crate::graph::Graph;
use crate::key::{StageKey, StaleReason};
use crate::store::statcache::StatCache;
use crate::store::{ActionResult, Store};

#[derive(Debug, Clone)]
pub enum State {
    /// A complete cache entry exists for the node's current key.
    Fresh { key: Digest, stage_key: StageKey, result: ActionResult },
    /// The node must run. `key` is `None` while an upstream node is stale.
    Stale { key: Option<(Digest, StageKey)>, reasons: Vec<StaleReason> },
}

impl State {
    pub fn is_fresh(&self) -> bool {
        matches!(self, State::Fresh { .. })
    }

    pub fn key(&self) -> Option<&Digest> {
        match self {
            State::Fresh { key, .. } => Some(key),
            State::Stale { key, .. } => key.as_ref().map(|(k, _)| k),
        }
    }

    pub fn stage_key(&self) -> Option<&StageKey> {
        match self {
            State::Fresh { stage_key, .. } => Some(stage_key),
            State::Stale { key, .. } => key.as_ref().map(|(_, sk)| sk),
        }
    }
}

pub struct Plan {
    /// The selected nodes in topological order.
    pub selected: Vec<usize>,
    /// Per node of the graph; `None` for nodes not selected.
    pub states: Vec<Option<State>>,
}

impl Plan {
    pub fn state(&self, i: usize) -> &State {
        self.states[i].as_ref().expect("only selected nodes are asked about")
    }

    /// Stale nodes with a cause of their own (not only an upstream rerun).
    pub fn roots(&self) -> impl Iterator<Item = (usize, &[StaleReason])> {
        self.selected.iter().filter_map(|&i| match self.state(i) {
            State::Stale { reasons, .. } if !reasons.iter().all(StaleReason::is_cascade) => Some((i, reasons.as_slice())),
            _ => None,
        })
    }

    pub fn stale_count(&self) -> usize {
        self.selected.iter().filter(|&&i| !self.state(i).is_fresh()).count()
    }
}

/// Assesses node `i` once its upstream nodes are settled. `upstream` gives the manifest of
/// an upstream node that is fresh, `None` for one that is stale.
pub fn assess<'m>(graph: &Graph, store: &Store, stat: &mut StatCache, i: usize, upstream: &dyn Fn(usize) -> Option<&'m ActionResult>) -> io::Result<State> {
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
pub fn plan(graph: &Graph, store: &Store, stat: &mut StatCache, selected: Vec<usize>) -> io::Result<Plan> {
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
