//! The cache, under `cache/` in the workspace.
//!
//! ```text
//! cache/
//!   objects/<2 hex>/<62 hex>   immutable blobs by blake3 (files, tree listings, logs)
//!   actions/<key>.json         one manifest per executed node (see `manifest.rs`)
//!   refs/<node-id>             the key a node id was last built with (for `why` and `gc`)
//!   logs/<node-id>.log         the latest run's combined stdout/stderr, failed ones too
//!   stat.json                  the stat cache
//!   tmp/                       staging; anything here is garbage after a crash
//!   lock                       held by the process that writes the cache
//! ```
//!
//! Every write goes to `tmp/`, is fsynced, then renamed into place, and a manifest is
//! written only after all of its objects are in place. A process killed at any moment
//! therefore leaves either no entry or a complete one; leftovers in `tmp/` are removed by
//! the next writer. Node ids contain `/`; in `refs/` and `logs/` it is written as `~`
//! (never part of an id) so that ids like `a` and `a/b` cannot collide as file and folder.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{self, Digest, Tree, TreeEntry};

pub mod maintenance;
pub mod manifest;
pub mod statcache;

pub use manifest::{ActionResult, Manifest, OutputRecord, Status};

pub struct Store {
    /// The workspace root (relative paths below are joined to it).
    root: PathBuf,
    dir: PathBuf,
}

/// Holds the cache lock until dropped (or until the process dies: the kernel releases it).
pub struct LockGuard {
    _file: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The cache of the workspace at `root`, as it is: readers need nothing created.
    pub fn at(root: &Path) -> Store {
        Store { root: root.to_path_buf(), dir: root.join("cache") }
    }

    /// The cache of the workspace at `root`, created if needed, for writers.
    pub fn open(root: &Path) -> io::Result<Store> {
        let store = Store::at(root);
        for sub in ["objects", "actions", "refs", "logs", "tmp"] {
            fs::create_dir_all(store.dir.join(sub))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the cache lock. With `wait`, blocks after calling `on_wait` with the holder's
    /// pid; without, returns `Ok(Err(pid))` when another process holds it.
    pub fn lock(&self, wait: bool, on_wait: impl FnOnce(Option<u32>)) -> io::Result<Result<LockGuard, Option<u32>>> {
        let path = self.dir.join("lock");
        let mut file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
                if !wait {
                    return Ok(Err(holder));
                }
                on_wait(holder);
                file.lock()?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(Ok(LockGuard { _file: file }))
    }

    /// Removes leftovers of interrupted runs. Only the lock holder may call this.
    pub fn clear_tmp(&self) -> io::Result<()> {
        let tmp = self.dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)
    }

    /// A fresh path under `cache/tmp/`, unique within and across processes.
    pub fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let safe: String = hint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        self.dir.join("tmp").join(format!("{}-{n}-{safe}", std::process::id()))
    }

    /// Writes `bytes` to `path` atomically: temp file, fsync, rename.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.replace(path, bytes, true)
    }

    /// Temp file and rename, with the fsync only when `durable`: a rename is atomic
    /// whatever happens to the process; fsync is what makes it survive the machine.
    fn replace(&self, path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
        let tmp = self.tmp_path("write");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            if durable {
                f.sync_data()?;
            }
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(&tmp, path)
    }

    pub fn object_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.dir.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub fn has_object(&self, d: &Digest) -> bool {
        self.object_path(d).exists()
    }

    /// Stores bytes as an object.
    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        self.put_bytes_with(bytes, true)
    }

    /// Stores a node's log: not fsynced, since a log lost with the machine is not worth a
    /// millisecond on every node (fsck reports it, and `--repair` rebuilds the node).
    pub fn put_log(&self, bytes: &[u8]) -> io::Result<Digest> {
        self.put_bytes_with(bytes, false)
    }

    fn put_bytes_with(&self, bytes: &[u8], durable: bool) -> io::Result<Digest> {
        let d = Digest::of_bytes(bytes);
        let dest = self.object_path(&d);
        if !dest.exists() {
            self.replace(&dest, bytes, durable)?;
        }
        Ok(d)
    }

    /// Moves a staged file into the object store (fsynced first) and returns its digest.
    fn put_staged_file(&self, staged: &Path) -> io::Result<(Digest, u64, bool)> {
        if fs::symlink_metadata(staged)?.file_type().is_symlink() {
            // Store what the link points to, not the link.
            let copy = self.tmp_path("link");
            fs::copy(staged, &copy)?;
            fs::remove_file(staged)?;
            fs::rename(&copy, staged)?;
        }
        let exec = digest::is_executable(&fs::metadata(staged)?);
        File::open(staged)?.sync_data()?;
        let (d, size) = digest::hash_file(staged)?;
        let dest = self.object_path(&d);
        if dest.exists() {
            fs::remove_file(staged)?;
        } else {
            fs::create_dir_all(dest.parent().expect("objects have a parent"))?;
            set_readonly(staged)?;
            fs::rename(staged, &dest)?;
        }
        Ok((d, size, exec))
    }

    /// Moves a file staged under `cache/tmp/` into the object store as object `d`: fsynced,
    /// made read-only, renamed into place. The caller has hashed it while writing it (a
    /// download from the remote cache), so it is not hashed again here.
    pub fn adopt_object(&self, staged: &Path, d: &Digest) -> io::Result<()> {
        let dest = self.object_path(d);
        if dest.exists() {
            return fs::remove_file(staged);
        }
        File::open(staged)?.sync_data()?;
        fs::create_dir_all(dest.parent().expect("objects have a parent"))?;
        set_readonly(staged)?;
        fs::rename(staged, &dest)
    }

    /// Stores a staged output (file or directory), consuming it.
    pub fn put_output(&self, name: &str, path: &str, staged: &Path) -> io::Result<OutputRecord> {
        if fs::metadata(staged)?.is_dir() {
            let mut entries = Vec::new();
            for rel in digest::list_files(staged)? {
                let (d, size, exec) = self.put_staged_file(&staged.join(&rel))?;
                entries.push(TreeEntry { path: rel, digest: d, size, exec });
            }
            let tree = Tree { entries };
            let d = self.put_bytes(&tree.to_bytes())?;
            Ok(OutputRecord { name: name.into(), path: path.into(), digest: d, size: tree.size(), dir: true, exec: false })
        } else {
            let (d, size, exec) = self.put_staged_file(staged)?;
            Ok(OutputRecord { name: name.into(), path: path.into(), digest: d, size, dir: false, exec })
        }
    }

    /// The tree listing of a directory output.
    pub fn tree(&self, d: &Digest) -> io::Result<Tree> {
        let bytes = fs::read(self.object_path(d))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("tree object {}: {e}", d.short())))
    }

    /// Whether every object an output needs is present.
    pub fn has_output(&self, out: &OutputRecord) -> bool {
        if !out.dir {
            return self.has_object(&out.digest);
        }
        self.tree(&out.digest).is_ok_and(|t| t.entries.iter().all(|e| self.has_object(&e.digest)))
    }

    fn manifest_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("actions").join(format!("{}.json", key.to_hex()))
    }

    /// The manifest for `key`; `Ok(None)` when there is none, `Err` when it is unreadable.
    pub fn manifest(&self, key: &Digest) -> io::Result<Option<Manifest>> {
        self.read_manifest(key)
    }

    /// The result recorded for `key`, without parsing its stage key.
    pub fn action_result(&self, key: &Digest) -> io::Result<Option<ActionResult>> {
        self.read_manifest(key)
    }

    fn read_manifest<T: serde::de::DeserializeOwned>(&self, key: &Digest) -> io::Result<Option<T>> {
        match fs::read(self.manifest_path(key)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("manifest {}: {e}", key.short()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write_manifest(&self, m: &Manifest) -> io::Result<()> {
        let bytes = serde_json::to_vec(m).map_err(io::Error::other)?;
        self.write_atomic(&self.manifest_path(&m.key), &bytes)
    }

    fn ref_path(&self, node: &str) -> PathBuf {
        self.dir.join("refs").join(node.replace('/', "~"))
    }

    /// The key `node` was last built with.
    pub fn read_ref(&self, node: &str) -> Option<Digest> {
        fs::read_to_string(self.ref_path(node)).ok().and_then(|s| Digest::from_hex(s.trim()))
    }

    /// Refs only serve `why` and `gc` (a lost one means "never built" in an explanation), so
    /// they are not fsynced.
    pub fn write_ref(&self, node: &str, key: &Digest) -> io::Result<()> {
        self.replace(&self.ref_path(node), key.to_hex().as_bytes(), false)
    }

    pub fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", node.replace('/', "~")))
    }

    /// Copies an output from the store to `dest` (a workspace path), replacing whatever
    /// is there. Copies, not links: a stage that scribbles on its input cannot corrupt the
    /// store. The copy is made beside `dest` and renamed over it.
    ///
    /// With `verify`, each copy is re-hashed: an object that no longer matches its name fails
    /// with a [`CorruptObject`] error (and is never left in `out/`).
    pub fn materialize(&self, out: &OutputRecord, dest: &Path, verify: bool) -> io::Result<()> {
        let parent = dest.parent().expect("outputs live under out/");
        fs::create_dir_all(parent)?;
        // Built in cache/tmp/ so that a crash leaves nothing behind under out/ that the next
        // writer would not clear.
        let tmp = self.tmp_path("materialize");
        let result = if out.dir {
            fs::create_dir_all(&tmp)?;
            self.tree(&out.digest)?
                .entries
                .iter()
                .try_for_each(|e| self.copy_object(&e.digest, e.exec, &tmp.join(&e.path), verify))
        } else {
            self.copy_object(&out.digest, out.exec, &tmp, verify)
        };
        if let Err(e) = result {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        if let Ok(meta) = fs::symlink_metadata(dest)
            && (meta.is_dir() || out.dir) {
                remove_any(dest)?;
            }
        fs::rename(&tmp, dest).inspect_err(|_| {
            let _ = remove_any(&tmp);
        })
    }

    fn copy_object(&self, d: &Digest, exec: bool, dest: &Path, verify: bool) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(self.object_path(d), dest)?;
        if verify && digest::hash_file(dest)?.0 != *d {
            return Err(io::Error::new(io::ErrorKind::InvalidData, CorruptObject(*d)));
        }
        set_mode(dest, if exec { 0o755 } else { 0o644 })
    }
}

/// An object whose content no longer hashes to its name.
#[derive(Debug)]
pub struct CorruptObject(pub Digest);

impl std::fmt::Display for CorruptObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cache object {} is corrupt", self.0.short())
    }
}

impl std::error::Error for CorruptObject {}

impl CorruptObject {
    /// The corrupt object an I/O error is about, if it is one.
    pub fn of(e: &io::Error) -> Option<Digest> {
        e.get_ref().and_then(|x| x.downcast_ref::<CorruptObject>()).map(|c| c.0)
    }
}

impl Store {
    /// Removes an object found corrupt, so the node that needs it is rebuilt.
    pub fn discard(&self, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.object_path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_readonly(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o555))
}

#[cfg(not(unix))]
fn set_readonly(_path: &Path) -> io::Result<()> {
    Ok(())
}
