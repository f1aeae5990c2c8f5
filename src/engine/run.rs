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
//!
//! With a remote cache, a node that is stale here is first looked up there: the lookup is a
//! job of its own, on the host CPU and never a timing one (so it waits while a CPU timing node
//! runs), and a verified entry turns the node fresh, restored exactly as a local hit is. A
//! node that then runs and succeeds is uploaded by a few threads beside the scheduler; they
//! pause while a CPU timing node runs (see `remote::upload`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use super::plan::{State, assess};
use super::progress::{Cache, NodeRecord, RemoteHit, Reporter};
use super::{Plan, ensure_materialized};
use crate::digest::Digest;
use crate::facets;
use crate::graph::Graph;
use crate::key::{StageKey, StaleReason};
use crate::remote::{self, Fetch, Gate, Remote};
use crate::stage::{Outcome, RunCx};
use crate::store::statcache::StatCache;
use crate::store::{ActionResult, Manifest, ObjectError, OutputRecord, Status, Store};

pub(crate) struct Options<'r> {
    pub jobs: usize,
    pub keep_going: bool,
    /// Looked up before a stale node runs; what runs and succeeds is uploaded to it.
    pub remote: Option<&'r Remote>,
    /// `cache pull`: take what the remote has into the local store, run nothing, leave
    /// `out/` alone. A node the remote lacks is skipped, and its downstream with it.
    pub fetch_only: bool,
}

pub(crate) struct Summary {
    pub records: Vec<NodeRecord>,
    pub failures: Vec<Failure>,
}

/// Why a node failed. Nothing of it is cached.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub node: String,
    pub error: NodeError,
    /// The run's combined stdout/stderr, kept for reading.
    pub log: PathBuf,
}

impl Summary {
    pub(crate) fn count(&self, f: impl Fn(&NodeRecord) -> bool) -> usize {
        self.records.iter().filter(|r| f(r)).count()
    }
}

struct Done {
    node: usize,
    work: Work,
    ms: f64,
}

/// Why running a node failed. Nothing of it is cached.
#[derive(Debug, Clone)]
pub(crate) enum NodeError {
    /// The stage failed, or storing what it wrote did.
    Failed(String),
    /// The node ran but did not do what the pipeline declares (an out not written): the
    /// pipeline or the command is wrong, which is bad input rather than a failed run.
    Declared(String),
}

impl NodeError {
    pub(crate) fn is_input(&self) -> bool {
        matches!(self, NodeError::Declared(_))
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Failed(m) | NodeError::Declared(m) => f.write_str(m),
        }
    }
}

/// What a worker thread did for a node; one message per node, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Work {
    Ran(Result<Manifest, NodeError>),
    Fetched(Fetch),
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Running,
    Finished,
    Failed,
    Skipped,
}

pub(crate) fn run(graph: &Graph, store: &Store, stat: &mut StatCache, plan: Plan, opts: &Options, reporter: &Reporter) -> io::Result<Summary> {
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
    // Remote lookups in flight, whether a node was looked up, and what a hit brought.
    let mut fetching: Vec<usize> = Vec::new();
    let mut looked_up = vec![false; n];
    let mut remote_hits: Vec<Option<RemoteHit>> = vec![None; n];
    let gate = Gate::default();
    let uploading = opts.remote.filter(|r| !r.read_only() && !opts.fetch_only);
    // Timing nodes uploaded whose keys name no machine, for one warning at the end.
    let mut unnamed_machine: Vec<&str> = Vec::new();
    let warn = |remote: Option<&Remote>| {
        for w in remote.map(Remote::take_warnings).unwrap_or_default() {
            reporter.line(&format!("warning: {w}"));
        }
    };

    std::thread::scope(|scope| -> io::Result<()> {
        let (tx, rx) = mpsc::channel::<Done>();
        let uploads = uploading.map(|r| remote::upload::spawn(scope, r, store, &gate));
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
                        let materialized = if opts.fetch_only { Ok(false) } else { ensure_materialized(store, stat, &nodes[i].id, &result.outputs) };
                        let restored = match materialized {
                            Ok(r) => r,
                            Err(e) => {
                                let reason = match e.object() {
                                    // The cache lied: drop the object and rebuild the node.
                                    Some(ObjectError::Corrupt(d)) => {
                                        store.discard(d).map_err(|x| io::Error::new(x.kind(), format!("removing corrupt cache object {}: {x}", d.short())))?;
                                        Some(StaleReason::OutputCorrupt { path: e.path.clone() })
                                    }
                                    // Gone since planning: another node sharing it found it corrupt.
                                    Some(ObjectError::Missing(_)) => Some(StaleReason::OutputMissing { path: e.path.clone() }),
                                    Some(ObjectError::BadListing(_, why)) => Some(StaleReason::EntryInvalid { why: format!("output `{}/`: {why}", e.path) }),
                                    None => None,
                                };
                                ready.remove(&(pos, i));
                                progressed = true;
                                if let Some(reason) = reason {
                                    states[i] = Some(State::Stale { key: Some((key, stage_key)), reasons: vec![reason] });
                                    ready.insert((pos, i));
                                    continue;
                                }
                                // Not the cache's fault (a full disk, a permission): the node fails.
                                phase[i] = Phase::Failed;
                                let error = NodeError::Failed(e.to_string());
                                summary.records.push(NodeRecord::failed(&nodes[i].id, &key, Cache::Hit, None, error.to_string(), 0.0));
                                summary.failures.push(Failure { node: nodes[i].id.clone(), error, log: store.log_path(&nodes[i].id) });
                                reporter.finished(summary.records.last().expect("just pushed"));
                                if !opts.keep_going {
                                    stopping = true;
                                }
                                continue;
                            }
                        };
                        summary.records.push(NodeRecord::hit(&nodes[i].id, &key, &result, restored, remote_hits[i].take()));
                        reporter.finished(summary.records.last().expect("just pushed"));
                        manifests[i] = Some(result);
                        phase[i] = Phase::Finished;
                        ready.remove(&(pos, i));
                        release(graph, i, &mut waiting_on, &mut ready, &position);
                        progressed = true;
                        continue;
                    }
                    if let Some(r) = opts.remote
                        && !looked_up[i]
                        && r.down().is_none()
                    {
                        if !can_start(graph, false, "cpu", &running, fetching.len(), opts.jobs) || blocked_by(reserved, "cpu") {
                            continue;
                        }
                        let Some(key) = states[i].as_ref().and_then(State::key).copied() else { unreachable!("settled above") };
                        ready.remove(&(pos, i));
                        fetching.push(i);
                        let tx = tx.clone();
                        let id = nodes[i].id.as_str();
                        scope.spawn(move || {
                            let t0 = Instant::now();
                            let fetched = catching(|| r.fetch(store, id, &key)).unwrap_or_else(|panic| Fetch::Rejected(format!("looking it up {panic}")));
                            let _ = tx.send(Done { node: i, work: Work::Fetched(fetched), ms: millis(t0) });
                        });
                        progressed = true;
                        continue;
                    }
                    if opts.fetch_only {
                        let Some(State::Stale { key: Some((key, _)), reasons }) = &states[i] else { unreachable!("settled above") };
                        let why = if opts.remote.is_some_and(|r| r.down().is_some()) { "the remote cache is unreachable" } else { "not in the remote cache" };
                        ready.remove(&(pos, i));
                        phase[i] = Phase::Skipped;
                        summary.records.push(NodeRecord::skipped(&nodes[i].id, Some(key), Some(reasons), why.to_string()));
                        reporter.finished(summary.records.last().expect("just pushed"));
                        progressed = true;
                        continue;
                    }
                    let node = &nodes[i];
                    if !can_start(graph, node.timing, &node.device, &running, fetching.len(), opts.jobs) || blocked_by(reserved, &node.device) {
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
                    if uploads.is_some() && holds_cpu(node) {
                        gate.close();
                    }
                    let (tx, key, sk) = (tx.clone(), *key, sk.clone());
                    scope.spawn(move || {
                        let t0 = Instant::now();
                        // A panic fails its node, never the scheduler that waits for it.
                        let result = catching(|| execute(graph, store, i, key, sk)).unwrap_or_else(|panic| Err(NodeError::Failed(format!("tr118 {panic}"))));
                        let _ = tx.send(Done { node: i, work: Work::Ran(result), ms: millis(t0) });
                    });
                    progressed = true;
                }
            }
            if running.is_empty() && fetching.is_empty() {
                break;
            }
            let done = rx.recv().map_err(io::Error::other)?;
            let i = done.node;
            let result = match done.work {
                Work::Fetched(fetched) => {
                    fetching.retain(|&f| f != i);
                    looked_up[i] = true;
                    match fetched {
                        Fetch::Hit { manifest, bytes } => {
                            let Some(State::Stale { key: Some((key, sk)), .. }) = states[i].take() else { unreachable!("only stale nodes are looked up") };
                            remote_hits[i] = Some(RemoteHit { bytes_down: bytes, saved_ms: manifest.duration_ms });
                            let result = ActionResult::from(*manifest);
                            states[i] = Some(State::Fresh { key, stage_key: sk, result });
                        }
                        Fetch::Rejected(why) => {
                            let then = if opts.fetch_only { "not pulled" } else { "building it here" };
                            reporter.line(&format!("warning: the remote cache's entry for `{}` is not used: {why}; {then}", nodes[i].id));
                        }
                        Fetch::Miss | Fetch::Unavailable => {}
                    }
                    warn(opts.remote);
                    if !stopping {
                        ready.insert((position[&i], i));
                    }
                    continue;
                }
                Work::Ran(result) => result,
            };
            running.retain(|&r| r != i);
            if uploads.is_some() && holds_cpu(&nodes[i]) {
                gate.open();
            }
            let (key, reasons) = match &states[i] {
                Some(State::Stale { key: Some((k, _)), reasons }) => (*k, reasons.clone()),
                _ => unreachable!("only stale nodes with a key run"),
            };
            match result {
                Ok(m) => {
                    let degraded = m.status == Status::Degraded;
                    if let Some(tx) = &uploads
                        && !degraded
                    {
                        if !nodes[i].names_its_machine() {
                            unnamed_machine.push(&nodes[i].id);
                        }
                        let _ = tx.send(m.clone());
                    }
                    let m = ActionResult::from(m);
                    summary.records.push(NodeRecord::ran(&nodes[i].id, &key, &reasons, &m, done.ms));
                    manifests[i] = Some(m);
                    phase[i] = Phase::Finished;
                    release(graph, i, &mut waiting_on, &mut ready, &position);
                }
                Err(e) => {
                    phase[i] = Phase::Failed;
                    let log = store.log_path(&nodes[i].id);
                    summary.records.push(NodeRecord::failed(&nodes[i].id, &key, Cache::Miss, Some(&reasons), e.to_string(), done.ms));
                    summary.failures.push(Failure { node: nodes[i].id.clone(), error: e, log });
                    if !opts.keep_going {
                        stopping = true;
                    }
                }
            }
            reporter.finished(summary.records.last().expect("just pushed"));
            warn(opts.remote);
        }
        Ok(())
    })?;
    // The uploads have finished with the scope.
    warn(opts.remote);
    if let Some(r) = uploading
        && r.down().is_none()
    {
        warn_unnamed_machines(&unnamed_machine, reporter);
    }

    // Freed by the process exit, not node by node (see `cli`).
    std::mem::forget(manifests);

    skip_unfinished(graph, &plan.selected, &states, &mut phase, &mut summary, reporter);
    Ok(summary)
}

/// Timing nodes uploaded whose keys name no machine share their measurements with every
/// machine using the remote cache: one warning for all of them.
fn warn_unnamed_machines(unnamed: &[&str], reporter: &Reporter) {
    if unnamed.is_empty() {
        return;
    }
    let more = if unnamed.len() > 3 { ", …" } else { "" };
    let one = unnamed.len() == 1;
    reporter.line(&format!(
        "warning: {} timing node{} uploaded ({}{more}) declare{} none of the facets `cpu`, `gpu`, `host`: every machine using this remote cache reuses {} measurements; declare the machine in `facets` to keep them apart",
        unnamed.len(),
        if one { "" } else { "s" },
        crate::diag::ticked(unnamed.iter().take(3)),
        if one { "s" } else { "" },
        if one { "its" } else { "their" },
    ));
}

/// Whatever did not finish was skipped: downstream of a failure, or stopped.
fn skip_unfinished(graph: &Graph, selected: &[usize], states: &[Option<State>], phase: &mut [Phase], summary: &mut Summary, reporter: &Reporter) {
    for &i in selected {
        if phase[i] == Phase::Waiting {
            let failed_up = graph.upstream[i].iter().find(|&&u| matches!(phase[u], Phase::Failed | Phase::Skipped));
            let detail = match failed_up {
                Some(&u) => format!("upstream `{}` did not complete", graph.id(u)),
                None => "stopped after a failure (use `--keep-going` to continue)".to_string(),
            };
            phase[i] = Phase::Skipped;
            let r = NodeRecord::skipped(graph.id(i), states[i].as_ref().and_then(State::key), None, detail);
            reporter.finished(&r);
            summary.records.push(r);
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`catching`], whose caller reports the panic.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic caught on this thread happened.
    static PANICKED_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that stays quiet for panics [`catching`] turns into errors (and
/// notes where they happened), and prints every other panic as Rust does.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CATCHING.with(Cell::get) {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            PANICKED_AT.with(|p| *p.borrow_mut() = at);
        } else {
            default(info);
        }
    }));
}

/// Runs `f`; a panic becomes `Err("panicked at FILE:LINE: MESSAGE")`.
fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(false));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        match PANICKED_AT.with(|p| p.borrow_mut().take()) {
            Some(at) => format!("panicked at {at}: {message}"),
            None => format!("panicked: {message}"),
        }
    })
}

/// Milliseconds since `t0`, to the microsecond.
fn millis(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

fn release(graph: &Graph, i: usize, waiting_on: &mut [usize], ready: &mut BTreeSet<(usize, usize)>, position: &BTreeMap<usize, usize>) {
    for &d in &graph.downstream[i] {
        waiting_on[d] -= 1;
        if waiting_on[d] == 0
            && let Some(&p) = position.get(&d)
        {
            ready.insert((p, d));
        }
    }
}

/// Whether a node may start beside the `running` ones and `fetching` remote lookups (which
/// are work on the host CPU).
fn can_start(graph: &Graph, timing: bool, device: &str, running: &[usize], fetching: usize, jobs: usize) -> bool {
    let nodes = &graph.pipeline.nodes;
    if running.len() + fetching >= jobs.max(1) {
        return false;
    }
    if running.iter().any(|&r| nodes[r].timing && nodes[r].device == "cpu") {
        return false;
    }
    if timing {
        return if device == "cpu" { running.is_empty() && fetching == 0 } else { !running.iter().any(|&r| nodes[r].device == device) };
    }
    device == "cpu" || !running.iter().any(|&r| nodes[r].timing && nodes[r].device == device)
}

/// A timing node that must have the host CPU to itself.
fn holds_cpu(node: &crate::pipeline::NodeSpec) -> bool {
    node.timing && node.device == "cpu"
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
fn execute(graph: &Graph, store: &Store, i: usize, key: Digest, stage_key: StageKey) -> Result<Manifest, NodeError> {
    let staging = store.tmp_path(&graph.pipeline.nodes[i].id);
    let result = execute_in(graph, store, i, key, stage_key, &staging);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn execute_in(graph: &Graph, store: &Store, i: usize, key: Digest, stage_key: StageKey, staging: &Path) -> Result<Manifest, NodeError> {
    let node = &graph.pipeline.nodes[i];
    let root = store.root();
    let io = |what: &str, e: io::Error| NodeError::Failed(format!("{what}: {e}"));
    let declared = |o: &crate::pipeline::OutSpec, what: String| {
        let d = graph.pipeline.source.diag(&o.field, format!("`{}` {what}", node.id), None);
        NodeError::Declared(d.to_string())
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

    // The test suite's way to prove that a panic fails its node instead of hanging the
    // build; no pipeline can reach it.
    if std::env::var_os("TR118_TEST_PANIC").is_some_and(|v| v == node.id.as_str()) {
        panic!("`TR118_TEST_PANIC` names node `{}`", node.id);
    }
    let started_at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let t0 = Instant::now();
    let outcome =
        node.kind.run(&mut RunCx { node, root, deps: &deps, outs: &outs, scratch: &scratch, log: &mut log }).map_err(|e| NodeError::Failed(e.to_string()))?;
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
    let env = ["os", "cpu", "host"]
        .iter()
        .map(|f| (f.to_string(), facets::value(f, crate::backend::software::read_facet)))
        .chain([("tool".to_string(), format!("tr118 {}", crate::VERSION))])
        .collect();
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
        seal: Digest([0; 32]),
    }
    .sealed();
    store.write_manifest(&manifest).map_err(|e| io("writing the manifest", e))?;
    store.write_ref(&node.id, &key).map_err(|e| io("writing the ref", e))?;
    for o in &manifest.outputs {
        let dest = root.join(format!("out/{}/{}", node.id, o.path));
        store.materialize(o, &dest, false).map_err(|e| io(&format!("materialising `{}`", dest.display()), e))?;
    }
    Ok(manifest)
}
