//! The command line: a thin layer that loads the pipeline, opens the store and hands over
//! to the engine. Exit codes: 0 ok, 1 a node failed (or the cache is locked with
//! `--no-wait`, or `fsck` found damage, or `cache push|pull` could not reach the remote
//! cache), 2 bad input or usage.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::progress::NodeRecord;
use crate::engine::progress::{Cache, RecordStatus, Reporter, reasons_text};
use crate::engine::run::Summary;
use crate::engine::run::{self, Options};
use crate::engine::{self, Plan, State, index};
use crate::graph::Graph;
use crate::pipeline::Pipeline;
use crate::remote::{self, Remote};
use crate::store::statcache::StatCache;
use crate::store::{LockGuard, Store, maintenance};

#[derive(Parser)]
#[command(name = "tr118", version, about = "Declarative, content-addressed builds for LLM inference benchmark studies")]
struct Cli {
    /// Pipeline file [default: `tr118.toml` if present, else `pipelines/tr118.toml`]
    #[arg(short = 'f', long = "file", global = true, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Run as if started in DIR (the workspace root)
    #[arg(short = 'C', global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// -v: hits, misses and reasons; -vv: keys too
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ParamArgs {
    /// Override a global param: `-p reps=20`
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

impl RemoteArgs {
    /// The arguments as words, for the no-op index's request.
    fn words(&self) -> Vec<String> {
        vec![format!("{:?}", self.remote_cache), format!("{:?}", self.remote_read_only)]
    }
}

/// The remote cache on the command line (see `remote` for the layout and the environment).
#[derive(clap::Args, Default)]
struct RemoteArgs {
    /// Remote cache URL; overrides `TR118_REMOTE_CACHE` and `[cache] remote`
    #[arg(long, value_name = "URL")]
    remote_cache: Option<String>,
    /// Look things up in the remote cache, never upload (`=false` to allow uploads when the
    /// pipeline says `read_only = true`)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    remote_read_only: Option<bool>,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Upload the entries of targets built here (and their upstream) to the remote cache
    Push {
        targets: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Download the entries of targets (and their upstream) from the remote cache into
    /// `cache/`, running nothing; `make` then restores them
    Pull {
        targets: Vec<String>,
        /// Downloads at once [default: 4]
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        params: ParamArgs,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Build targets (stage names, node ids or id prefixes) and everything stale upstream
    Make {
        targets: Vec<String>,
        /// Nodes to run at once [default: number of CPUs]
        #[arg(short = 'j', long)]
        jobs: Option<usize>,
        /// Show what would run, and why, without running anything
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Keep going after a failure with everything that does not depend on it
        #[arg(short = 'k', long)]
        keep_going: bool,
        /// One JSON record per node on stdout
        #[arg(long)]
        json: bool,
        /// Fail instead of waiting when another tr118 holds the cache
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Fresh or stale, per node, with the reason
    Status {
        targets: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Why a node is stale: the field-level difference of its key, root cause vs cascade
    Why {
        node: String,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Print the graph
    Graph {
        targets: Vec<String>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Remove cache entries and objects that no current node references
    Gc {
        #[arg(short = 'n', long)]
        dry_run: bool,
        #[command(flatten)]
        params: ParamArgs,
    },
    /// Re-hash every object and check every manifest
    Fsck {
        /// Remove corrupt objects and the entries that need them
        #[arg(long)]
        repair: bool,
    },
    /// Remove `out/` and leftover staging files (`--all`: the whole cache too)
    Clean {
        #[arg(long)]
        all: bool,
    },
    /// Move entries between the local cache and the remote cache
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// A failure and the exit code it maps to.
enum Fail {
    /// Bad input or usage: exit 2.
    Input(String),
    /// A node failed, or the environment did: exit 1.
    Run(String),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Run(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Fail>;

pub fn main() -> ExitCode {
    crate::engine::run::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Fail::Input(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Fail::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8> {
    if let Some(dir) = &cli.dir {
        std::env::set_current_dir(dir).map_err(|e| Fail::Input(format!("cannot enter `{}`: {e}", dir.display())))?;
    }
    // The workspace is the current directory, and every path is used relative to it: short
    // paths are what keeps thousands of stat calls cheap, and commands run there too.
    let root = PathBuf::from(".");
    let file =
        cli.file.clone().unwrap_or_else(|| if Path::new("tr118.toml").exists() { PathBuf::from("tr118.toml") } else { PathBuf::from("pipelines/tr118.toml") });
    let verbose = cli.verbose;
    match cli.command {
        Command::Make { targets, jobs, dry_run, keep_going, json, no_wait, remote, params } => {
            let overrides = parse_params(&params)?;
            let text = read_pipeline(&file)?;
            let request = index::Request::new(&file, &text, &overrides, &targets, &remote.words());
            if let Some(request) = &request
                && let Some(code) = noop_make(&root, request, dry_run, json, verbose)?
            {
                return Ok(code);
            }
            let ws = Workspace::parse(&root, &file, text, &overrides)?;
            let remote = ws.remote(&remote)?;
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let opts = Options { jobs, keep_going, remote: remote.as_ref(), fetch_only: false };
            let code = ws.make(&targets, opts, dry_run, json, no_wait, verbose, request.as_ref());
            // The process ends here: freeing every node's allocations one by one would cost
            // more than the rest of a no-op make on a large graph.
            std::mem::forget(ws);
            code
        }
        Command::Status { targets, json, params } => {
            let overrides = parse_params(&params)?;
            let text = read_pipeline(&file)?;
            // The request of a plain `make` of the same targets: the two share one index.
            let request = index::Request::new(&file, &text, &overrides, &targets, &RemoteArgs::default().words());
            if let Some(request) = &request {
                match index::check(&Store::at(&root), request) {
                    Ok(fresh) => {
                        explain_index(verbose, Ok(&fresh));
                        return noop_status(&fresh, json);
                    }
                    Err(why) => explain_index(verbose, Err(&why)),
                }
            }
            Workspace::parse(&root, &file, text, &overrides)?.status(&targets, json, request.as_ref())
        }
        Command::Why { node, params } => Workspace::load(&root, &file, &parse_params(&params)?)?.why(&node, verbose),
        Command::Graph { targets, format } => {
            let ws = Workspace::load(&root, &file, &[])?;
            let selected = ws.graph.select(&targets).map_err(Fail::Input)?;
            print!(
                "{}",
                match format {
                    GraphFormat::Dot => ws.graph.to_dot(&selected),
                    GraphFormat::Mermaid => ws.graph.to_mermaid(&selected),
                }
            );
            Ok(0)
        }
        Command::Gc { dry_run, params } => Workspace::load(&root, &file, &parse_params(&params)?)?.gc(dry_run),
        Command::Fsck { repair } => fsck(&root, repair),
        Command::Clean { all } => clean(&root, all),
        Command::Cache { command: CacheCommand::Push { targets, remote, params } } => {
            let ws = Workspace::load(&root, &file, &parse_params(&params)?)?;
            let remote = ws.remote(&remote)?.ok_or_else(no_remote)?;
            ws.push(&targets, &remote)
        }
        Command::Cache { command: CacheCommand::Pull { targets, jobs, remote, params } } => {
            let ws = Workspace::load(&root, &file, &parse_params(&params)?)?;
            let remote = ws.remote(&remote)?.ok_or_else(no_remote)?;
            ws.pull(&targets, &remote, jobs.unwrap_or(remote::upload::THREADS), verbose)
        }
    }
}

fn no_remote() -> Fail {
    Fail::Input(format!(
        "no remote cache is configured\n  help: pass `--remote-cache URL`, set `{}`, or add `[cache] remote = \"URL\"` to the pipeline",
        remote::ENV_URL
    ))
}

/// `1.2 MB`: decimal megabytes, as transfer rates are quoted.
fn megabytes(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn read_pipeline(file: &Path) -> Result<String> {
    Pipeline::read(file).map_err(|d| Fail::Input(d.to_string()))
}

fn parse_params(args: &ParamArgs) -> Result<Vec<(String, String)>> {
    args.params
        .iter()
        .map(|p| p.split_once('=').map(|(k, v)| (k.trim().to_string(), v.to_string())).ok_or_else(|| Fail::Input(format!("`-p {p}` must be KEY=VALUE"))))
        .collect()
}

struct Workspace {
    graph: Graph,
    store: Store,
}

fn lock(store: &Store, no_wait: bool) -> Result<LockGuard> {
    let waiting = |pid: Option<u32>| {
        let who = pid.map_or("another process".to_string(), |p| format!("process {p}"));
        eprintln!("waiting for the cache lock `cache/lock`, held by {who} (another tr118 on this cache)…");
    };
    match store.lock(!no_wait, waiting)? {
        Ok(guard) => Ok(guard),
        Err(pid) => Err(Fail::Run(format!(
            "the cache `cache/` is locked by {}; run again without `--no-wait` to wait for it",
            pid.map_or("another process".to_string(), |p| format!("process {p}"))
        ))),
    }
}

fn stat_cache(store: &Store) -> StatCache {
    StatCache::load(&store.dir().join("stat.json"))
}

fn save_stat(store: &Store, stat: &mut StatCache) -> Result<()> {
    stat.save(|path, bytes| store.write_atomic(path, bytes))?;
    Ok(())
}

impl Workspace {
    fn load(root: &Path, file: &Path, overrides: &[(String, String)]) -> Result<Workspace> {
        Workspace::parse(root, file, read_pipeline(file)?, overrides)
    }

    /// [`Workspace::load`] of a pipeline already read.
    fn parse(root: &Path, file: &Path, text: String, overrides: &[(String, String)]) -> Result<Workspace> {
        let pipeline = Pipeline::parse(file, text, overrides, crate::stage::registry()).map_err(|d| Fail::Input(d.to_string()))?;
        let graph = Graph::build(pipeline, root).map_err(|d| Fail::Input(d.to_string()))?;
        Ok(Workspace { graph, store: Store::at(root) })
    }

    /// The remote cache the pipeline, the environment and `args` configure, if any.
    fn remote(&self, args: &RemoteArgs) -> Result<Option<Remote>> {
        let env = |name: &str| std::env::var(name).ok();
        let settings = remote::resolve(&self.graph.pipeline.cache, args.remote_cache.as_deref(), args.remote_read_only, &env)
            .map_err(|e| Fail::Input(e.help().map_or_else(|| e.to_string(), |h| format!("{e}\n  help: {h}"))))?;
        Ok(settings.map(Remote::new))
    }

    fn plan(&self, targets: &[String], stat: &mut StatCache) -> Result<Plan> {
        let selected = self.graph.select(targets).map_err(Fail::Input)?;
        Ok(engine::plan::plan(&self.graph, &self.store, stat, selected)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn make(&self, targets: &[String], opts: Options, dry_run: bool, json: bool, no_wait: bool, verbose: u8, request: Option<&index::Request>) -> Result<u8> {
        let t0 = Instant::now();
        if dry_run {
            let mut stat = stat_cache(&self.store);
            let plan = self.plan(targets, &mut stat)?;
            let reporter = Reporter::new(json, verbose.max(1), 0);
            for &i in &plan.selected {
                reporter.finished(&plan.record(&self.graph, i));
            }
            if !json {
                eprintln!("{} of {} nodes would run", plan.stale_count(), plan.selected.len());
                causes(&self.graph, &plan).iter().for_each(|l| eprintln!("{l}"));
            }
            return Ok(0);
        }
        let store = Store::open(self.store.root())?;
        let _guard = lock(&store, no_wait)?;
        store.clear_tmp()?;
        let mut stat = stat_cache(&self.store);
        let plan = self.plan(targets, &mut stat)?;
        // Nothing stale: once the run has made `out/` match, the index can vouch for it.
        let indexable = request.filter(|_| plan.stale_count() == 0).map(|r| (r, plan.clone()));
        let cascaded = plan.cascaded();
        let roots: Vec<(usize, String)> = plan.roots().map(|(i, r)| (i, reasons_text(r))).collect();
        let reporter = Reporter::new(json, verbose, plan.stale_count());
        let remote = opts.remote;
        let result = run::run(&self.graph, &self.store, &mut stat, plan, &opts, &reporter);
        reporter.done();
        if let (Some((request, plan)), Ok(summary)) = (&indexable, &result)
            && summary.failures.is_empty()
        {
            self.record_index(&mut stat, plan, request, remote.is_some());
        }
        save_stat(&self.store, &mut stat)?;
        let summary = result?;

        let failed = summary.count(|r| r.status == RecordStatus::Failed);
        let cascaded: HashSet<&str> = cascaded.iter().map(|&i| self.graph.id(i)).collect();
        let rerun_by_cascade = summary.records.iter().filter(|r| r.cache == Cache::Miss && cascaded.contains(r.id.as_str())).count();
        eprintln!("{}", summary_line(&summary, t0, remote.map(|r| (r.bytes_down(), r.bytes_up()))));
        // A root the remote cache provided did not rerun after all.
        let restored: HashSet<&str> = summary.records.iter().filter(|r| r.remote.is_some()).map(|r| r.id.as_str()).collect();
        let roots: Vec<(usize, String)> = roots.into_iter().filter(|(i, _)| !restored.contains(self.graph.id(*i))).collect();
        root_lines(&self.graph, &roots, rerun_by_cascade).iter().for_each(|l| eprintln!("{l}"));
        for f in &summary.failures {
            eprintln!("error: `{}` failed: {}", f.node, f.error);
            let rel = f.log.strip_prefix(self.store.root()).unwrap_or(&f.log);
            eprintln!("  log: {}", rel.display());
            for line in tail(&f.log, 20) {
                eprintln!("  | {line}");
            }
        }
        Ok(match () {
            _ if summary.failures.iter().any(|f| f.error.is_input()) => 2,
            _ if failed > 0 => 1,
            _ => 0,
        })
    }

    /// `cache push`: the entries of the selected nodes that are fresh here and `ok`.
    fn push(&self, targets: &[String], remote: &Remote) -> Result<u8> {
        if remote.read_only() {
            return Err(Fail::Input(format!(
                "the remote cache `{}` is read-only here (`read_only = true` or `--remote-read-only`)\n  help: pass `--remote-read-only=false` to push",
                remote.url()
            )));
        }
        let t0 = Instant::now();
        let store = Store::open(self.store.root())?;
        // Held so that a `gc` cannot remove objects while they are read.
        let _guard = lock(&store, false)?;
        let mut stat = stat_cache(&self.store);
        let plan = self.plan(targets, &mut stat)?;
        save_stat(&self.store, &mut stat)?;
        let (mut manifests, mut degraded, mut stale, mut unnamed) = (Vec::new(), 0, 0, Vec::new());
        for &i in &plan.selected {
            match plan.state(i) {
                State::Fresh { key, result, .. } if result.status == crate::store::Status::Ok => match store.manifest(key)? {
                    Some(m) => {
                        if !self.graph.pipeline.nodes[i].names_its_machine() {
                            unnamed.push(self.graph.id(i));
                        }
                        manifests.push(m);
                    }
                    None => stale += 1,
                },
                State::Fresh { .. } => degraded += 1,
                State::Stale { .. } => stale += 1,
            }
        }
        let wanted = manifests.len();
        remote.upload_all(&store, manifests);
        let down = remote.down().map(str::to_string);
        for w in remote.take_warnings() {
            if down.is_none() {
                eprintln!("warning: {w}");
            }
        }
        if let Some(cause) = down {
            return Err(Fail::Run(format!("remote cache {} unreachable ({cause})", remote.url())));
        }
        let mut parts = vec![format!("{} of {wanted} entries pushed", remote.entries_up())];
        if degraded > 0 {
            parts.push(format!("{degraded} degraded not shared"));
        }
        if stale > 0 {
            parts.push(format!("{stale} not built here (run `tr118 make` first)"));
        }
        eprintln!("{} nodes: {}, {} up in {:.2}s", plan.selected.len(), parts.join(", "), megabytes(remote.bytes_up()), t0.elapsed().as_secs_f64());
        if !unnamed.is_empty() {
            eprintln!(
                "warning: timing nodes whose keys name no machine (none of the facets `cpu`, `gpu`, `host`) were pushed: {}; every machine using this remote cache reuses their measurements",
                crate::diag::ticked(unnamed.iter())
            );
        }
        Ok(if remote.entries_up() as usize == wanted { 0 } else { 1 })
    }

    /// `cache pull`: the engine with lookups only.
    fn pull(&self, targets: &[String], remote: &Remote, jobs: usize, verbose: u8) -> Result<u8> {
        let t0 = Instant::now();
        let store = Store::open(self.store.root())?;
        let _guard = lock(&store, false)?;
        store.clear_tmp()?;
        let mut stat = stat_cache(&self.store);
        let plan = self.plan(targets, &mut stat)?;
        let reporter = Reporter::new(false, verbose, plan.stale_count());
        let opts = Options { jobs, keep_going: true, remote: Some(remote), fetch_only: true };
        let result = run::run(&self.graph, &self.store, &mut stat, plan, &opts, &reporter);
        reporter.done();
        save_stat(&self.store, &mut stat)?;
        let summary = result?;
        if let Some(cause) = remote.down() {
            return Err(Fail::Run(format!("remote cache {} unreachable ({cause})", remote.url())));
        }
        let pulled = summary.count(|r| r.remote.is_some());
        let local = summary.count(|r| r.cache == Cache::Hit && r.remote.is_none());
        let missing = summary.count(|r| r.status == RecordStatus::Skipped);
        eprintln!(
            "{} nodes: {pulled} pulled, {local} already in the local cache, {missing} not pulled, {} down in {:.2}s",
            summary.records.len(),
            megabytes(remote.bytes_down()),
            t0.elapsed().as_secs_f64()
        );
        Ok(0)
    }

    fn status(&self, targets: &[String], json: bool, request: Option<&index::Request>) -> Result<u8> {
        let mut stat = stat_cache(&self.store);
        // The stat cache and the index only save work; skip them if someone else holds the
        // lock. Taken before planning, so that what is recorded is what was planned.
        let guard = self.store.lock(false, |_| {}).ok().and_then(|held| held.ok());
        let plan = self.plan(targets, &mut stat)?;
        if let Some(_guard) = guard {
            // The index is `make`'s too, which says whether a remote cache is configured; one
            // that is configured wrongly is `make`'s error to report, so no index then.
            if let Some(request) = request
                && plan.stale_count() == 0
                && let Ok(remote) = self.remote(&RemoteArgs::default())
            {
                self.record_index(&mut stat, &plan, request, remote.is_some());
            }
            save_stat(&self.store, &mut stat)?;
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for &i in &plan.selected {
            let r = plan.record(&self.graph, i);
            match plan.state(i) {
                _ if json => r.write_json(&mut out)?,
                State::Fresh { result, .. } => writeln!(out, "{}", status_fresh(&r.id, result.reason.as_deref()))?,
                State::Stale { reasons, .. } => writeln!(out, "stale  {}: {}", r.id, reasons_text(reasons))?,
            }
        }
        if !json {
            causes(&self.graph, &plan).iter().try_for_each(|l| writeln!(out, "{l}"))?;
        }
        out.flush()?;
        Ok(0)
    }

    /// Writes the no-op index for a plan with nothing stale (see `engine::index`). It only
    /// saves work, so a failure to write it is a warning.
    fn record_index(&self, stat: &mut StatCache, plan: &Plan, request: &index::Request, remote: bool) {
        if let Err(e) = index::record(&self.store, stat, &self.graph, plan, request, remote) {
            eprintln!("warning: cannot write the no-op index under `cache/index/`: {e}");
        }
    }

    fn why(&self, target: &str, verbose: u8) -> Result<u8> {
        let nodes = &self.graph.pipeline.nodes;
        let Some(i) = nodes.iter().position(|n| n.id == target) else {
            let matching: Vec<&str> = nodes.iter().filter(|n| n.stage == target || n.id.starts_with(&format!("{target}/"))).map(|n| n.id.as_str()).collect();
            let help = if matching.is_empty() {
                crate::diag::suggest(target, nodes.iter().map(|n| n.id.as_str())).map_or(String::new(), |h| format!("\n  help: {h}"))
            } else {
                format!("\n  help: `why` takes one node id: {}", crate::diag::ticked(matching.iter().take(5)))
            };
            return Err(Fail::Input(format!("no node `{target}`{help}")));
        };
        let mut stat = stat_cache(&self.store);
        let plan = self.plan(&[], &mut stat)?;
        match plan.state(i) {
            State::Fresh { key, result, stage_key } => {
                let status = result.reason.as_ref().map_or("ok".to_string(), |r| format!("degraded: {r}"));
                println!("`{target}` is fresh: key {} ({status})", key.short());
                if verbose >= 1 {
                    println!("{}", serde_json::to_string_pretty(stage_key).unwrap_or_default());
                }
            }
            State::Stale { reasons, key } => {
                if plan.is_cascade(i) {
                    println!("`{target}` is stale by cascade: {}", reasons_text(reasons));
                    println!("root causes upstream:");
                    for u in plan.root_causes_of(&self.graph, i) {
                        if let State::Stale { reasons, .. } = plan.state(u) {
                            println!("  `{}`: {}", self.graph.id(u), reasons_text(reasons));
                        }
                    }
                } else {
                    println!("`{target}` is stale (root cause):");
                    for r in reasons {
                        println!("  {r}");
                    }
                    let down = plan.rerun_downstream_of(&self.graph, i);
                    if down > 0 {
                        println!("{down} downstream node{} rerun because of it", if down == 1 { "" } else { "s" });
                    }
                }
                if verbose >= 1
                    && let Some((_, sk)) = key
                {
                    println!("{}", serde_json::to_string_pretty(sk).unwrap_or_default());
                }
            }
        }
        Ok(0)
    }

    fn gc(&self, dry_run: bool) -> Result<u8> {
        let store = Store::open(self.store.root())?;
        let _guard = lock(&store, false)?;
        let mut stat = stat_cache(&self.store);
        let plan = self.plan(&[], &mut stat)?;
        let mut keep_keys = BTreeSet::new();
        let mut keep_nodes = BTreeSet::new();
        for &i in &plan.selected {
            let id = self.graph.id(i);
            keep_keys.extend(plan.state(i).key().copied());
            keep_keys.extend(self.store.read_ref(id));
            keep_nodes.insert(id.to_string());
        }
        let r = maintenance::gc(&self.store, &keep_keys, &keep_nodes, dry_run)?;
        save_stat(&self.store, &mut stat)?;
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {} manifests, {} objects ({}), {} refs; kept {} manifests, {} objects",
            r.manifests_removed,
            r.objects_removed,
            human_bytes(r.bytes_freed),
            r.refs_removed,
            r.manifests_kept,
            r.objects_kept
        );
        Ok(0)
    }
}

/// `make`'s last line: `N nodes: R ran, F fresh, … in T s`, and with a remote cache (its
/// bytes down and up) what it moved.
fn summary_line(summary: &Summary, t0: Instant, remote: Option<(u64, u64)>) -> String {
    let ran = summary.count(|r| r.cache == Cache::Miss);
    let mut parts = vec![format!("{ran} ran"), format!("{} fresh", summary.count(|r| r.cache == Cache::Hit))];
    for (n, what) in [
        (summary.count(|r| r.restored), "restored from cache"),
        (summary.count(|r| r.status == RecordStatus::Degraded), "degraded"),
        (summary.count(|r| r.status == RecordStatus::Failed), "failed"),
        (summary.count(|r| r.status == RecordStatus::Skipped), "skipped"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let traffic = remote.map_or(String::new(), |(down, up)| format!("; cache: {}", cache_traffic(summary, down, up)));
    format!("{} nodes: {} in {:.2}s{traffic}", summary.records.len(), parts.join(", "), t0.elapsed().as_secs_f64())
}

/// `N local hits, M remote hits, X MB down, Y MB up, ~T s saved`: the time saved is the
/// recorded run time of the nodes the remote cache provided.
fn cache_traffic(summary: &Summary, down: u64, up: u64) -> String {
    let remote_hits = summary.count(|r| r.remote.is_some());
    let local_hits = summary.count(|r| r.cache == Cache::Hit && r.remote.is_none());
    // A fold from +0.0: an empty float `sum` is -0.0, which would print as `~-0.0 s`.
    let saved_ms = summary.records.iter().filter_map(|r| r.remote.as_ref()).fold(0.0, |t, h| t + h.saved_ms);
    format!("{local_hits} local hits, {remote_hits} remote hits, {} down, {} up, ~{:.1} s saved", megabytes(down), megabytes(up), saved_ms / 1000.0)
}

/// `status`'s line for a fresh node.
fn status_fresh(id: &str, degraded: Option<&str>) -> String {
    degraded.map_or_else(|| format!("fresh  {id}"), |r| format!("fresh  {id} (degraded: {r})"))
}

/// `make` when the no-op index of `request` still holds: every node fresh, nothing parsed.
/// `None` sends the request down the full path: no index, something changed, or another
/// process holds the cache (it may be changing what the index vouches for).
fn noop_make(root: &Path, request: &index::Request, dry_run: bool, json: bool, verbose: u8) -> Result<Option<u8>> {
    let t0 = Instant::now();
    let store = Store::at(root);
    let _guard = if dry_run {
        None
    } else {
        if !store.dir().join("lock").exists() {
            return Ok(None);
        }
        let Ok(guard) = store.lock(false, |_| {})? else { return Ok(None) };
        store.clear_tmp()?;
        Some(guard)
    };
    let fresh = match index::check(&store, request) {
        Ok(fresh) => fresh,
        Err(why) => {
            explain_index(verbose, Err(&why));
            return Ok(None);
        }
    };
    explain_index(verbose, Ok(&fresh));
    // `make` reports in its scheduler's order, `make -n` in plan order.
    let nodes = if dry_run { fresh.nodes.iter().collect() } else { fresh.in_run_order() };
    let summary = Summary { records: nodes.into_iter().map(index_record).collect(), failures: Vec::new() };
    if json {
        // Thousands of records: one buffer, not one write per line.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        summary.records.iter().try_for_each(|r| r.write_json(&mut out))?;
        out.flush()?;
    } else {
        let reporter = Reporter::new(false, if dry_run { verbose.max(1) } else { verbose }, 0);
        summary.records.iter().for_each(|r| reporter.finished(r));
    }
    if dry_run {
        if !json {
            eprintln!("0 of {} nodes would run", summary.records.len());
        }
    } else {
        eprintln!("{}", summary_line(&summary, t0, fresh.remote.then_some((0, 0))));
    }
    Ok(Some(0))
}

/// With `-v`, whether the no-op index held, and if not, why: the first thing it found changed.
fn explain_index(verbose: u8, outcome: std::result::Result<&index::Fresh, &str>) {
    if verbose == 0 {
        return;
    }
    match outcome {
        Ok(f) => {
            let s = |n: usize| if n == 1 { "" } else { "s" };
            eprintln!("no-op index holds: {} path{} and {} facet{} unchanged", f.paths, s(f.paths), f.facets, s(f.facets));
        }
        Err(why) => eprintln!("no-op index: {why}; planning in full"),
    }
}

/// `status` when the no-op index holds.
fn noop_status(fresh: &index::Fresh, json: bool) -> Result<u8> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for n in &fresh.nodes {
        if json {
            index_record(n).write_json(&mut out)?;
        } else {
            writeln!(out, "{}", status_fresh(&n.id, n.reason.as_deref()))?;
        }
    }
    out.flush()?;
    Ok(0)
}

fn index_record(n: &index::Node) -> NodeRecord {
    NodeRecord::hit_as(&n.id, &n.key, n.status, n.reason.clone(), false, None)
}

/// Root causes and the size of the cascade, for `status` and `make --dry-run`.
fn causes(graph: &Graph, plan: &Plan) -> Vec<String> {
    let roots: Vec<(usize, String)> = plan.roots().map(|(i, r)| (i, reasons_text(r))).collect();
    root_lines(graph, &roots, plan.cascaded().len())
}

fn root_lines(graph: &Graph, roots: &[(usize, String)], cascade: usize) -> Vec<String> {
    let mut out = Vec::new();
    if roots.is_empty() {
        return out;
    }
    // Nodes with the same cause are one line: a first build is "never built" for many.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (i, text) in roots {
        match groups.iter_mut().find(|(t, _)| t == text) {
            Some((_, ids)) => ids.push(graph.id(*i)),
            None => groups.push((text, vec![graph.id(*i)])),
        }
    }
    const SHOWN: usize = 5;
    for (text, ids) in groups.iter().take(SHOWN) {
        let who = match ids.as_slice() {
            [one] => format!("`{one}`"),
            many => {
                let named: Vec<String> = many.iter().take(3).map(|id| format!("`{id}`")).collect();
                let more = if many.len() > 3 { ", …" } else { "" };
                format!("{} nodes ({}{more})", many.len(), named.join(", "))
            }
        };
        out.push(format!("  root cause: {who}: {text}"));
    }
    if groups.len() > SHOWN {
        out.push(format!("  …and {} other root causes", groups.len() - SHOWN));
    }
    if cascade > 0 {
        let s = if cascade == 1 { "" } else { "s" };
        out.push(format!("  {cascade} downstream node{s} rerun because of {}", if roots.len() == 1 { "it" } else { "them" }));
    }
    out
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|s| s.to_string()).collect()
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn fsck(root: &Path, repair: bool) -> Result<u8> {
    let store = Store::open(root)?;
    let _guard = lock(&store, false)?;
    let r = maintenance::fsck(&store, repair)?;
    println!("checked {} objects and {} manifests", r.objects_checked, r.manifests_checked);
    for d in &r.corrupt_objects {
        println!("corrupt object {d}{}", if repair { " (removed)" } else { "" });
    }
    for (k, why) in &r.bad_manifests {
        println!("bad manifest {k}: {why}{}", if repair { " (removed)" } else { "" });
    }
    if r.is_clean() {
        println!("cache is consistent");
        Ok(0)
    } else if repair {
        println!("repaired: the next `tr118 make` rebuilds what was removed");
        Ok(0)
    } else {
        println!("run `tr118 fsck --repair` to remove the damaged entries");
        Ok(1)
    }
}

fn clean(root: &Path, all: bool) -> Result<u8> {
    let store = Store::open(root)?;
    let _guard = lock(&store, false)?;
    crate::store::remove_any(&root.join("out"))?;
    if all {
        for sub in ["objects", "actions", "refs", "logs", "stat.json"] {
            crate::store::remove_any(&store.dir().join(sub))?;
        }
    }
    store.clear_tmp()?;
    println!("removed out/{}", if all { " and the cache" } else { "" });
    Ok(0)
}
