//! Executing a plan: a scheduler on the calling thread, one worker thread per running node.
//!
//! Scheduling rules:
//! - at most `jobs` nodes run at once; a node starts once all its upstream nodes are done;
//! - every node uses the host CPU; a node may also declare another `device` (`cuda:0`);
//! - a timing node runs alone on its device: on `cpu` nothing else runs beside it, on
//!   another device no other node of that device does. A timing node that is ready but
//!   blocked reserves its device, so that the work around it drains instead of starving it;
//! - without `--keep-going`, the first failure stops new nodes from starting (running ones
//!   finish); with it, only the failed node's downstream is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use super::plan::{State, assess};
use super::progress::{Cache, NodeRecord, RecordStatus, Reporter, reasons_text};
use super::{Plan, ensure_materialized};
use crate::digest::Digest;
use crate::facets;
use crate::graph::Graph;
use crate::key::{StageKey, StaleReason};
use crate::stage::{Outcome, RunCx};
use crate::store::statcache::StatCache;
use crate::store::{ActionResult, CorruptObject, Manifest, OutputRecord, Status, Store};

pub struct Options {
    pub jobs: usize,
    pub keep_going: bool,
}

pub struct Summary {
    pub records: Vec<NodeRecord>,
    pub failures: Vec<Failure>,
}

/// Why a node failed. Nothing of it is cached.
#[derive(Debug, Clone)]
pub struct Failure {
    pub node: String,
    pub message: String,
    /// The run's combined stdout/stderr, kept for reading.
    pub log: PathBuf,
    /// The node ran but did not do what the pipeline declares (an out not written): the
    /// pipeline or the command is wrong, which is bad input rather than a failed run.
    pub input: bool,
}

impl Summary {
    pub fn count(&self, f: impl Fn(&NodeRecord) -> bool) -> usize {
        self.records.iter().filter(|r| f(r)).count()
    }
}

struct Done {
    node: usize,
    result: Result<Manifest, (String, bool)>,
    ms: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Running,
    Finished,
    Failed,
    Skipped,
}

pub fn run(graph: &Graph, store: &Store, stat: &mut StatCache, plan: Plan, opts: &Options, reporter: &Reporter) -> io::Result<Summary> {
    let nodes = &graph.pipeline.nodes;
    let n = nodes.len();
    let position: BTreeMap<usize, usize> = plan.selected.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut states = plan.states;
    let mut manifests: Vec<Option<ActionResult>> = vec![None; n];
    let mut phase = vec![Phase::Waiting; n];
    let mut waiting_on: Vec<usize> = (0..n).map(|i| graph.upstream[i].len()).collect();
    let mut ready: BTreeSet<(usize, usize)> = plan.selected.iter().filter(|&&i| waiting_on[i] == 0).map(|&i| (position[&i], i)).collect();
    let mut running: Vec<usize> = Vec::new();
    let mut stopping = false;
    let mut summary = Summary { records: Vec::new(), failures: Vec::new() };

    std::thread::scope(|scope| -> io::Result<()> {
        let (tx, rx) = mpsc::channel::<Done>();
        loop {
            let mut reserved: Option<&str> = None;
            let mut progressed = true;
            while progressed && !stopping {
                progressed = false;
                let snapshot: Vec<(usize, usize)> = ready.iter().copied().collect();
                for (pos, i) in snapshot {
                    if !matches!(states[i], Some(State::Fresh { .. }) | Some(State::Stale { key: Some(_), .. })) {
                        let lookup = |u: usize| manifests[u].as_ref();
                        let state = assess(graph, store, stat, i, &lookup)?;
                        states[i] = Some(state);
                    }
                    if matches!(states[i], Some(State::Fresh { .. })) {
                        let Some(State::Fresh { key, stage_key, result }) = states[i].take() else { unreachable!() };
                        let restored = match ensure_materialized(store, stat, &nodes[i].id, &result.outputs) {
                            Ok(r) => r,
                            Err(e) => match CorruptObject::of(&e) {
                                // The cache lied: drop the object and rebuild the node.
                                Some(d) => {
                                    store.discard(&d)?;
                                    let path = result.outputs.iter().find(|o| o.digest == d).map_or_else(|| d.short(), |o| o.path.clone());
                                    let reasons = vec![StaleReason::OutputCorrupt { path }];
                                    states[i] = Some(State::Stale { key: Some((key, stage_key)), reasons });
                                    progressed = true;
                                    continue;
                                }
                                None => return Err(e),
                            },
                        };
                        summary.records.push(NodeRecord {
                            id: nodes[i].id.clone(),
                            key: Some(key.to_hex()),
                            cache: Cache::Hit,
                            status: if result.status == Status::Degraded { RecordStatus::Degraded } else { RecordStatus::Ok },
                            reason: None,
                            detail: result.reason.clone(),
                            duration_ms: 0.0,
                            restored,
                        });
                        reporter.finished(summary.records.last().expect("just pushed"));
                        manifests[i] = Some(result);
                        phase[i] = Phase::Finished;
                        ready.remove(&(pos, i));
                        release(graph, i, &mut waiting_on, &mut ready, &position);
                        progressed = true;
                        continue;
                    }
                    let node = &nodes[i];
                    if !can_start(graph, node.timing, &node.device, &running, opts.jobs) || blocked_by(reserved, &node.device) {
                        if node.timing && reserved.is_none() {
                            reserved = Some(node.device.as_str());
                        }
                        continue;
                    }
                    let Some(State::Stale { key: Some((key, sk)), reasons }) = &states[i] else { unreachable!("settled above") };
                    ready.remove(&(pos, i));
                    running.push(i);
                    phase[i] = Phase::Running;
                    let running_ids: Vec<&str> = running.iter().map(|&r| graph.id(r)).collect();
                    reporter.started(&node.id, reasons, Some(sk), &running_ids);
                    let (tx, key, sk) = (tx.clone(), *key, sk.clone());
                    scope.spawn(move || {
                        let t0 = Instant::now();
                        let result = execute(graph, store, i, key, sk);
                        let _ = tx.send(Done { node: i, result, ms: millis(t0) });
                    });
                    progressed = true;
                }
            }
            if running.is_empty() {
                break;
            }
            let done = rx.recv().map_err(io::Error::other)?;
            let i = done.node;
            running.retain(|&r| r != i);
            let (key, reasons) = match &states[i] {
                Some(State::Stale { key: Some((k, _)), reasons }) => (*k, reasons.clone()),
                _ => unreachable!("only stale nodes with a key run"),
            };
            match done.result {
                Ok(m) => {
                    let degraded = m.status == Status::Degraded;
                    let m = ActionResult { status: m.status, reason: m.reason, outputs: m.outputs };
                    summary.records.push(NodeRecord {
                        id: nodes[i].id.clone(),
                        key: Some(key.to_hex()),
                        cache: Cache::Miss,
                        status: if degraded { RecordStatus::Degraded } else { RecordStatus::Ok },
                        reason: Some(reasons_text(&reasons)),
                        detail: m.reason.clone(),
                        duration_ms: done.ms,
                        restored: false,
                    });
                    manifests[i] = Some(m);
                    phase[i] = Phase::Finished;
                    release(graph, i, &mut waiting_on, &mut ready, &position);
                }
                Err((e, input)) => {
                    phase[i] = Phase::Failed;
                    let log = store.log_path(&nodes[i].id);
                    summary.failures.push(Failure { node: nodes[i].id.clone(), message: e.clone(), log, input });
                    summary.records.push(NodeRecord {
                        id: nodes[i].id.clone(),
                        key: Some(key.to_hex()),
                        cache: Cache::Miss,
                        status: RecordStatus::Failed,
                        reason: Some(reasons_text(&reasons)),
                        detail: Some(e),
                        duration_ms: done.ms,
                        restored: false,
                    });
                    if !opts.keep_going {
                        stopping = true;
                    }
                }
            }
            reporter.finished(summary.records.last().expect("just pushed"));
        }
        Ok(())
    })?;

    // Freed by the process exit, not node by node (see `cli`).
    std::mem::forget(manifests);

    // Whatever did not finish was skipped: downstream of a failure, or stopped.
    for &i in &plan.selected {
        if phase[i] == Phase::Waiting {
            let failed_up = graph.upstream[i].iter().find(|&&u| matches!(phase[u], Phase::Failed | Phase::Skipped));
            let detail = match failed_up {
                Some(&u) => format!("upstream `{}` did not complete", graph.id(u)),
                None => "stopped after a failure (use `--keep-going` to continue)".to_string(),
            };
            phase[i] = Phase::Skipped;
            let r = NodeRecord {
                id: nodes[i].id.clone(),
                key: states[i].as_ref().and_then(State::key).map(Digest::to_hex),
                cache: Cache::Skipped,
                status: RecordStatus::Skipped,
                reason: None,
                detail: Some(detail),
                duration_ms: 0.0,
                restored: false,
            };
            reporter.finished(&r);
            summary.records.push(r);
        }
    }
    Ok(summary)
}

/// Milliseconds since `t0`, to the microsecond.
fn millis(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

fn release(graph: &Graph, i: usize, waiting_on: &mut [usize], ready: &mut BTreeSet<(usize, usize)>, position: &BTreeMap<usize, usize>) {
    for &d in &graph.downstream[i] {
        waiting_on[d] -= 1;
        if waiting_on[d] == 0
            && let Some(&p) = position.get(&d) {
                ready.insert((p, d));
            }
    }
}

fn can_start(graph: &Graph, timing: bool, device: &str, running: &[usize], jobs: usize) -> bool {
    let nodes = &graph.pipeline.nodes;
    if running.len() >= jobs.max(1) {
        return false;
    }
    if running.iter().any(|&r| nodes[r].timing && nodes[r].device == "cpu") {
        return false;
    }
    if timing {
        return if device == "cpu" { running.is_empty() } else { !running.iter().any(|&r| nodes[r].device == device) };
    }
    device == "cpu" || !running.iter().any(|&r| nodes[r].timing && nodes[r].device == device)
}

fn blocked_by(reserved: Option<&str>, device: &str) -> bool {
    match reserved {
        None => false,
        Some("cpu") => true,
        Some(d) => d == device,
    }
}

/// Runs one node and commits its result to the store: objects, then the manifest, then the
/// ref, then the copies under `out/`. Returns the manifest, or why it failed.
fn execute(graph: &Graph, store: &Store, i: usize, key: Digest, stage_key: StageKey) -> Result<Manifest, (String, bool)> {
    let staging = store.tmp_path(&graph.pipeline.nodes[i].id);
    let result = execute_in(graph, store, i, key, stage_key, &staging);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn execute_in(graph: &Graph, store: &Store, i: usize, key: Digest, stage_key: StageKey, staging: &Path) -> Result<Manifest, (String, bool)> {
    let node = &graph.pipeline.nodes[i];
    let root = store.root();
    let io = |what: &str, e: io::Error| (format!("{what}: {e}"), false);
    let declared = |o: &crate::pipeline::OutSpec, what: String| {
        let d = graph.pipeline.source.diag(&o.field, format!("`{}` {what}", node.id), None);
        (d.to_string(), true)
    };
    let rel_staging = staging.strip_prefix(root).unwrap_or(staging).to_path_buf();
    let scratch = staging.join("scratch");
    fs::create_dir_all(&scratch).map_err(|e| io("cannot create the scratch directory", e))?;
    let mut outs = BTreeMap::new();
    for o in &node.outs {
        let rel = rel_staging.join("outs").join(&o.path);
        let abs = root.join(&rel);
        let dir = if o.dir { abs.as_path() } else { abs.parent().expect("outs have a parent") };
        fs::create_dir_all(dir).map_err(|e| io("cannot create the staging directory", e))?;
        outs.insert(o.name.clone(), rel);
    }
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for input in &graph.inputs[i] {
        deps.entry(input.dep.clone()).or_default().push(input.path.clone());
    }
    for d in &node.deps {
        deps.entry(d.name.clone()).or_default();
    }
    let log_path = store.log_path(&node.id);
    let mut log = File::create(&log_path).map_err(|e| io(&format!("cannot create the log `{}`", log_path.display()), e))?;

    let started_at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let t0 = Instant::now();
    let outcome = node.kind.run(&mut RunCx { node, root, deps: &deps, outs: &outs, scratch: &scratch, log: &mut log }).map_err(|e| (e, false))?;
    let duration_ms = millis(t0);

    let mut outputs: Vec<OutputRecord> = Vec::new();
    for o in &node.outs {
        let staged = root.join(&outs[&o.name]);
        match fs::metadata(&staged) {
            Err(_) => return Err(declared(o, format!("did not write out `{}` (declared as `{}`)", o.name, o.path))),
            Ok(m) if m.is_dir() != o.dir => {
                let (want, got) = if o.dir { ("a directory", "a file") } else { ("a file", "a directory") };
                return Err(declared(o, format!("wrote {got} for out `{}`, declared as {want}", o.path)));
            }
            Ok(_) => {}
        }
        outputs.push(store.put_output(&o.name, &o.path, &staged).map_err(|e| io(&format!("storing out `{}`", o.path), e))?);
    }
    drop(log);
    let log_digest = fs::read(&log_path).ok().and_then(|b| store.put_log(&b).ok());
    let (status, reason) = match outcome {
        Outcome::Ok => (Status::Ok, None),
        Outcome::Degraded(r) => (Status::Degraded, Some(r)),
    };
    let env = ["os", "cpu", "host"].iter().map(|f| (f.to_string(), facets::value(f))).chain([("tool".to_string(), format!("tr118 {}", crate::VERSION))]).collect();
    let manifest = Manifest {
        schema: crate::store::manifest::SCHEMA,
        node: node.id.clone(),
        key,
        stage_key,
        status,
        reason,
        outputs,
        started_at,
        duration_ms,
        env,
        log: log_digest,
    };
    store.write_manifest(&manifest).map_err(|e| io("writing the manifest", e))?;
    store.write_ref(&node.id, &key).map_err(|e| io("writing the ref", e))?;
    for o in &manifest.outputs {
        let dest = root.join(format!("out/{}/{}", node.id, o.path));
        store.materialize(o, &dest, false).map_err(|e| io(&format!("materialising `{}`", dest.display()), e))?;
    }
    Ok(manifest)
}

