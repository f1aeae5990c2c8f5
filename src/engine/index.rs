//! The no-op index: what a `make` or `status` that found every selected node fresh depended
//! on, kept so that the same request can confirm it next time with stats alone.
//!
//! The full path proves a no-op from content: it parses and expands the pipeline, computes
//! every key from the digests of its inputs, reads and verifies one manifest per node, checks
//! that every output's objects are in the store and compares every file under `out/` with its
//! digest. When all of that finds every selected node fresh, [`record`] writes down, for this
//! request, everything the conclusion rests on:
//!
//! - the request ([`Request`]): the binary (its path and stat), the pipeline file's bytes,
//!   the `-p` overrides, the targets, the remote-cache arguments and every `TR118_*`
//!   variable, hashed into the file name `cache/index/<digest>`;
//! - the value of every facet a key holds;
//! - the stat (inode, size, mode, mtime, ctime) of every path a key or a restore reads: each
//!   source dep (every file and directory of a tree), the manifest of each key, the store
//!   directory (`objects/<2 hex>/`) of every object an output needs, every file and directory
//!   under `out/` that is an output, and the directories above them from `out/` down;
//! - each node's id, key, status and degraded reason, in plan order.
//!
//! [`check`] re-reads those facets and stats those paths; when everything is identical the
//! recorded nodes are fresh, and neither the pipeline nor a manifest is parsed. Anything
//! that differs, or an index that is missing, unreadable or fails its checksum, sends the
//! request down the full path, which stays the authority: the index only repeats a
//! conclusion the full path reached, under conditions in which it would reach it again.
//!
//! Why stats suffice. A recorded file was checked against its digest through the stat
//! cache and was outside the racy window ([`statcache::racy_or_new`]), so any later write moves its mtime, and a
//! replacement moves its inode. Manifests are only ever replaced by a rename. Objects are
//! never edited, and removing or replacing one moves the mtime of its directory, as adding,
//! removing or renaming an entry does for any directory: so a link put in place of a
//! directory under `out/` shows in the directory above it. The binary and the facets cover
//! what the stage code and the machine put into keys; the pipeline is compared by content,
//! never by its stat.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use super::Plan;
use super::plan::State;
use crate::digest::{Digest, Tree};
use crate::graph::{Graph, Origin};
use crate::store::statcache::{self, StatCache};
use crate::store::{OutputRecord, Status, Store};

/// File format: magic and version, then the body, then blake3 of everything before it.
const MAGIC: &[u8; 8] = b"tr118ix\x02";
/// Index files kept: one per recent request (targets, overrides, pipeline edits).
const KEEP: usize = 8;

/// What one invocation asks, as a digest: two requests with the same digest plan the same
/// nodes with the same keys, as long as the recorded paths and facets are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request(Digest);

impl Request {
    /// The request of a command on the pipeline `pipeline`, whose text is `text` (the text
    /// the command then plans, read once), with these overrides, targets and remote-cache
    /// arguments. `None` when the binary cannot be identified: no index then.
    pub(crate) fn new(pipeline: &Path, text: &str, overrides: &[(String, String)], targets: &[String], remote: &[String]) -> Option<Request> {
        let exe = std::env::current_exe().ok()?;
        let exe_stamp = Stamp::of(&fs::metadata(&exe).ok()?)?;
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(MAGIC);
        field(exe.to_str()?.as_bytes());
        field(&exe_stamp.bytes());
        field(pipeline.to_str()?.as_bytes());
        field(text.as_bytes());
        for list in [overrides.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), targets.to_vec(), remote.to_vec()] {
            field(&(list.len() as u64).to_le_bytes());
            list.iter().for_each(|s| field(s.as_bytes()));
        }
        let mut vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
            .filter(|(k, _)| k.starts_with("TR118_"))
            .collect();
        vars.sort();
        for (k, v) in &vars {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        Some(Request(Digest(*h.finalize().as_bytes())))
    }

    fn file(&self, store: &Store) -> PathBuf {
        store.dir().join("index").join(self.0.to_hex())
    }
}

/// A node as the index has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub id: String,
    pub key: Digest,
    pub status: Status,
    pub reason: Option<String>,
    /// 0 without upstream nodes, else one more than the highest of theirs: a `make` that
    /// finds every node fresh reports them level by level.
    pub level: u32,
}

/// An index that still holds: the nodes it records are fresh.
#[derive(Debug)]
pub(crate) struct Fresh {
    /// In plan order, as `status` and `make -n` list them; [`Fresh::in_run_order`] for `make`.
    pub nodes: Vec<Node>,
    /// Whether a remote cache was configured (the summary line says so).
    pub remote: bool,
    /// How many paths and facets were found unchanged.
    pub paths: usize,
    pub facets: usize,
}

impl Fresh {
    /// The nodes in the order a `make` that finds them all fresh reports them: its scheduler
    /// takes the ready nodes a level at a time, each level in plan order.
    pub(crate) fn in_run_order(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = self.nodes.iter().collect();
        nodes.sort_by_key(|n| n.level);
        nodes
    }
}

/// What of a path's stat is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mode: u32,
    mtime: i128,
    ctime: i128,
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let (mtime, ctime, ino) = statcache::stamp(meta);
        Some(Stamp { dev: meta.dev(), ino, size: meta.len(), mode: meta.mode(), mtime, ctime })
    }

    /// Without inodes and change times a stat proves too little: no index.
    #[cfg(not(unix))]
    fn of(_meta: &Metadata) -> Option<Stamp> {
        None
    }

    const LEN: usize = 60;

    fn bytes(&self) -> [u8; Stamp::LEN] {
        let mut b = [0u8; Stamp::LEN];
        b[0..8].copy_from_slice(&self.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..28].copy_from_slice(&self.mode.to_le_bytes());
        b[28..44].copy_from_slice(&self.mtime.to_le_bytes());
        b[44..60].copy_from_slice(&self.ctime.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Stamp {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let i128_at = |i: usize| i128::from_le_bytes(b[i..i + 16].try_into().expect("16 bytes"));
        Stamp {
            dev: u64_at(0),
            ino: u64_at(8),
            size: u64_at(16),
            mode: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            mtime: i128_at(28),
            ctime: i128_at(44),
        }
    }
}

/// Confirms the index of `request`, or says why it does not hold (for `-v`).
pub(crate) fn check(store: &Store, request: &Request) -> Result<Fresh, String> {
    let bytes = match fs::read(request.file(store)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("none for this request yet".into()),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let damaged = || "damaged (it fails its checksum)".to_string();
    let (body, sum) = bytes.split_at_checked(bytes.len().saturating_sub(32)).ok_or_else(damaged)?;
    if blake3::hash(body).as_bytes() != sum {
        return Err(damaged());
    }
    decode(body, request)
}

fn decode(body: &[u8], request: &Request) -> Result<Fresh, String> {
    let damaged = || "damaged (it does not parse)".to_string();
    let mut r = Reader { bytes: body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| "written by another version".to_string())? };
    if r.digest().ok_or_else(damaged)? != request.0 {
        return Err(damaged());
    }
    let remote = r.u8().ok_or_else(damaged)? == 1;
    let facets = r.u32().ok_or_else(damaged)? as usize;
    let mut recorded = Vec::with_capacity(facets);
    for _ in 0..facets {
        recorded.push((r.str().ok_or_else(damaged)?, r.str().ok_or_else(damaged)?));
    }
    // Stats first: they are cheap, and some facets start a process (`torch`) or a library (`gpu`).
    let paths = r.u32().ok_or_else(damaged)? as usize;
    for _ in 0..paths {
        let path = r.str().ok_or_else(damaged)?;
        let stamp = Stamp::from_bytes(r.take(Stamp::LEN).ok_or_else(damaged)?);
        match fs::symlink_metadata(path) {
            Ok(meta) if Stamp::of(&meta) == Some(stamp) => {}
            Ok(_) => return Err(format!("`{path}` changed")),
            Err(_) => return Err(format!("`{path}` is gone")),
        }
    }
    for (name, value) in recorded {
        if crate::facets::value(name, crate::backend::software::read_facet) != value {
            return Err(format!("facet `{name}` changed"));
        }
    }
    let count = r.u32().ok_or_else(damaged)? as usize;
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let node = (|| {
            let id = r.str()?.to_string();
            let key = r.digest()?;
            let status = if r.u8()? == 1 { Status::Degraded } else { Status::Ok };
            let reason = if r.u8()? == 1 { Some(r.str()?.to_string()) } else { None };
            let level = r.u32()?;
            Some(Node { id, key, status, reason, level })
        })();
        nodes.push(node.ok_or_else(damaged)?);
    }
    if !r.bytes.is_empty() {
        return Err(damaged());
    }
    Ok(Fresh { nodes, remote, paths, facets })
}

/// Writes the index of `request` for a plan whose selected nodes are all fresh, when every
/// file it rests on is settled: verified against its digest and outside the racy window.
/// Returns whether it was written; a plan it cannot vouch for removes the request's index.
pub(crate) fn record(store: &Store, stat: &mut StatCache, graph: &Graph, plan: &Plan, request: &Request, remote: bool) -> io::Result<bool> {
    let file = request.file(store);
    let Some(body) = collect(store, stat, graph, plan).map(|c| c.encode(request, remote)) else {
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(false),
        }
    };
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&body);
    let sum = *blake3::hash(&bytes).as_bytes();
    bytes.extend_from_slice(&sum);
    store.write_cache_file(&file, &bytes)?;
    prune(file.parent().expect("cache/index/<digest>"));
    Ok(true)
}

/// Keeps the [`KEEP`] most recently written index files.
fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect();
    if files.len() > KEEP {
        files.sort();
        for (_, path) in &files[..files.len() - KEEP] {
            let _ = fs::remove_file(path);
        }
    }
}

/// What an index records, before encoding.
#[derive(Default)]
struct Collected {
    facets: BTreeMap<String, String>,
    paths: BTreeMap<String, Stamp>,
    nodes: Vec<Node>,
    object_dirs: BTreeSet<String>,
}

impl Collected {
    /// Records `path`'s stat unless it is recent enough that a later write could keep it.
    fn watch(&mut self, path: &str, meta: &Metadata) -> Option<()> {
        if statcache::racy_or_new(meta) {
            return None;
        }
        self.paths.insert(path.to_string(), Stamp::of(meta)?);
        Some(())
    }

    /// Records a manifest: a file of the store, only ever replaced by a rename.
    fn watch_manifest(&mut self, path: &Path) -> Option<()> {
        let meta = fs::symlink_metadata(path).ok()?;
        meta.is_file().then_some(())?;
        self.watch(path.to_str()?, &meta)
    }

    /// Notes that an object is in the store. Objects are never edited, so what can happen
    /// to one is removal or replacement, both of which move the mtime of its directory
    /// (`objects/<2 hex>/`): those directories are watched, not every object.
    fn need_object(&mut self, store: &Store, digest: &Digest) -> Option<()> {
        let path = store.object_path(digest);
        fs::symlink_metadata(&path).ok()?.is_file().then_some(())?;
        self.object_dirs.insert(path.parent()?.to_str()?.to_string());
        Some(())
    }

    /// Records a real file whose content the stat cache confirms is `digest`.
    fn watch_file(&mut self, stat: &mut StatCache, root: &Path, rel: &str, digest: &Digest) -> Option<()> {
        let meta = fs::symlink_metadata(root.join(rel)).ok()?;
        meta.is_file().then_some(())?;
        let (d, _) = stat.file_digest_with(root, rel, &meta).ok()?;
        (d == *digest && stat.lookup(rel, &meta) == Some(d)).then_some(())?;
        self.watch(rel, &meta)
    }

    /// Records a real directory (never a link to one).
    fn watch_dir(&mut self, root: &Path, rel: &str) -> Option<()> {
        let meta = fs::symlink_metadata(root.join(rel)).ok()?;
        meta.is_dir().then_some(())?;
        self.watch(rel, &meta)
    }

    /// Records `out` itself: a directory, or a link to one elsewhere (a bigger disk, say),
    /// watched as the link and as the directory it leads to.
    fn watch_out(&mut self, root: &Path) -> Option<()> {
        let meta = fs::symlink_metadata(root.join("out")).ok()?;
        if !meta.file_type().is_symlink() {
            return self.watch_dir(root, "out");
        }
        self.watch("out", &meta)?;
        self.watch_dir(root, "out/.")
    }

    /// Records the tree at `rel`, every directory and file, when its files are those of
    /// `tree` (the listing a directory output or a directory dep hashes to).
    fn watch_tree(&mut self, stat: &mut StatCache, root: &Path, rel: &str, tree: &Tree) -> Option<()> {
        let mut dirs = Vec::new();
        let files = walk(root, rel, &mut dirs)?;
        (files.len() == tree.entries.len()).then_some(())?;
        for (file, entry) in files.iter().zip(&tree.entries) {
            (*file == entry.path).then_some(())?;
            self.watch_file(stat, root, &format!("{rel}/{file}"), &entry.digest)?;
        }
        dirs.iter().try_for_each(|d| self.watch_dir(root, d))
    }

    fn encode(&self, request: &Request, remote: bool) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(&request.0.0);
        w.u8(remote.into());
        w.u32(self.facets.len());
        for (name, value) in &self.facets {
            w.str(name);
            w.str(value);
        }
        w.u32(self.paths.len());
        for (path, stamp) in &self.paths {
            w.str(path);
            w.bytes(&stamp.bytes());
        }
        w.u32(self.nodes.len());
        for n in &self.nodes {
            w.str(&n.id);
            w.bytes(&n.key.0);
            w.u8(u8::from(n.status == Status::Degraded));
            match &n.reason {
                Some(r) => {
                    w.u8(1);
                    w.str(r);
                }
                None => w.u8(0),
            }
            w.u32(n.level as usize);
        }
        w.0
    }
}

/// Everything the plan's conclusion rests on, or `None` when something is not settled
/// (a stale node, a recent file, a link, an `out/` file that is not its output yet).
fn collect(store: &Store, stat: &mut StatCache, graph: &Graph, plan: &Plan) -> Option<Collected> {
    let root = store.root();
    let mut c = Collected::default();
    // The directories on the way to each output below `out/`. The output itself is watched,
    // and replacing an entry (with a link, say) moves its directory's mtime, so the output's
    // own directory needs no watching: the one above it does.
    let mut out_dirs = BTreeSet::new();
    let mut levels: BTreeMap<usize, u32> = BTreeMap::new();
    for &i in &plan.selected {
        let State::Fresh { key, stage_key, result } = plan.state(i) else { return None };
        let node = &graph.pipeline.nodes[i];
        let level = graph.upstream[i].iter().map(|u| levels.get(u).map(|l| l + 1)).try_fold(0, |m, l| Some(m.max(l?)))?;
        levels.insert(i, level);
        // A link on the node's own path is a restore.
        if super::own_path_linked(root, &node.id) {
            return None;
        }
        c.facets.extend(stage_key.facets.clone());
        for input in &graph.inputs[i] {
            if input.origin != Origin::Source {
                continue;
            }
            let digest = stage_key.inputs.get(&input.path)?;
            let meta = fs::symlink_metadata(root.join(&input.path)).ok()?;
            if meta.is_dir() {
                // A directory dep is keyed by its listing's digest, which is not kept as an
                // object: rebuild the listing from the stat cache and compare.
                let tree = stat.tree(root, &input.path).ok()?;
                (tree.digest() == *digest).then_some(())?;
                c.watch_dir(root, &input.path)?;
                c.watch_tree(stat, root, &input.path, &tree)?;
            } else {
                c.watch_file(stat, root, &input.path, digest)?;
            }
        }
        c.watch_manifest(&store.manifest_path(key))?;
        for o in &result.outputs {
            let rel = format!("out/{}/{}", node.id, o.path);
            let mut at = rel.rsplit_once('/').map_or("", |(parent, _)| parent);
            while let Some((parent, _)) = at.rsplit_once('/') {
                out_dirs.insert(parent.to_string());
                at = parent;
            }
            watch_output(&mut c, store, stat, &rel, o)?;
        }
        c.nodes.push(Node { id: node.id.clone(), key: *key, status: result.status, reason: result.reason.clone(), level });
    }
    c.watch_out(root)?;
    for d in out_dirs.iter().filter(|d| *d != "out") {
        c.watch_dir(root, d)?;
    }
    for d in std::mem::take(&mut c.object_dirs) {
        let meta = fs::symlink_metadata(&d).ok()?;
        meta.is_dir().then_some(())?;
        c.watch(&d, &meta)?;
    }
    Some(c)
}

/// Records an output: its objects in the store and its copy under `out/`.
fn watch_output(c: &mut Collected, store: &Store, stat: &mut StatCache, rel: &str, o: &OutputRecord) -> Option<()> {
    let root = store.root();
    if !o.dir {
        c.need_object(store, &o.digest)?;
        return c.watch_file(stat, root, rel, &o.digest);
    }
    // A listing is read and verified by the full path, so it is watched itself: an edit in
    // place would not move its directory.
    let listing = store.object_path(&o.digest);
    c.watch(listing.to_str()?, &fs::symlink_metadata(&listing).ok()?)?;
    let tree = store.tree(&o.digest).ok()?;
    for e in &tree.entries {
        c.need_object(store, &e.digest)?;
    }
    c.watch_dir(root, rel)?;
    c.watch_tree(stat, root, rel, &tree)
}

/// The files under `rel`, relative to it and sorted as [`crate::digest::list_files`] sorts
/// them, with every directory below it (relative to the root) in `dirs`. `None` when the
/// tree holds anything but plain files and directories: a link's target is not watched.
fn walk(root: &Path, rel: &str, dirs: &mut Vec<String>) -> Option<Vec<String>> {
    fn go(root: &Path, base: &str, sub: &str, dirs: &mut Vec<String>, files: &mut Vec<String>) -> Option<()> {
        let here = if sub.is_empty() { base.to_string() } else { format!("{base}/{sub}") };
        for entry in fs::read_dir(root.join(&here)).ok()? {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let child = if sub.is_empty() { name } else { format!("{sub}/{name}") };
            let kind = entry.file_type().ok()?;
            if kind.is_dir() {
                dirs.push(format!("{base}/{child}"));
                go(root, base, &child, dirs, files)?;
            } else if kind.is_file() {
                files.push(child);
            } else {
                return None;
            }
        }
        Some(())
    }
    let mut files = Vec::new();
    go(root, rel, "", dirs, &mut files)?;
    files.sort();
    Some(files)
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: usize) {
        self.0.extend_from_slice(&(v as u32).to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len());
        self.bytes(s.as_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn digest(&mut self) -> Option<Digest> {
        Some(Digest(self.take(32)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}
