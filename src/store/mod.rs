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
//!
//! Everything read back is untrusted: a manifest is checked against its key and seal and
//! its output paths against the ones its stage key declares (`manifest.rs`), a directory
//! listing is re-hashed and must list plain relative names only ([`Tree::parse`]), and a
//! copy into `out/` is re-hashed on restore. `out/` belongs to tr118: a symbolic link found
//! below it on the way to an output is removed, never written through. A command's output
//! that is a symbolic link is stored as the file it points to only when that file is inside
//! the workspace.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{self, Digest, Tree, TreeEntry};

pub(crate) mod maintenance;
pub(crate) mod manifest;
pub(crate) mod statcache;

pub use manifest::{ActionResult, Manifest, OutputRecord, Status};

pub(crate) struct Store {
    /// The workspace root (relative paths below are joined to it).
    root: PathBuf,
    dir: PathBuf,
    /// The root, resolved, once a symbolic link in an output needs it.
    canonical_root: OnceLock<io::Result<PathBuf>>,
}

/// Holds the cache lock until dropped (or until the process dies: the kernel releases it).
pub(crate) struct LockGuard {
    _file: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The cache of the workspace at `root`, as it is: readers need nothing created.
    pub(crate) fn at(root: &Path) -> Store {
        Store { root: root.to_path_buf(), dir: root.join("cache"), canonical_root: OnceLock::new() }
    }

    /// The cache of the workspace at `root`, created if needed, for writers.
    pub(crate) fn open(root: &Path) -> io::Result<Store> {
        let store = Store::at(root);
        for sub in ["objects", "actions", "refs", "logs", "tmp"] {
            let dir = store.dir.join(sub);
            fs::create_dir_all(&dir).map_err(|e| {
                let hint = if dir.is_file() || e.kind() == io::ErrorKind::AlreadyExists { "; it must be a directory: move the file away" } else { "" };
                io::Error::new(e.kind(), format!("cannot create `{}`: {e}{hint}", crate::paths::shown(&dir)))
            })?;
        }
        Ok(store)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the cache lock. With `wait`, blocks after calling `on_wait` with the holder's
    /// pid; without, returns `Ok(Err(pid))` when another process holds it.
    pub(crate) fn lock(&self, wait: bool, on_wait: impl FnOnce(Option<u32>)) -> io::Result<Result<LockGuard, Option<u32>>> {
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
    pub(crate) fn clear_tmp(&self) -> io::Result<()> {
        let tmp = self.dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)
    }

    /// A fresh path under `cache/tmp/`, unique within and across processes.
    pub(crate) fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let safe: String = hint.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
        self.dir.join("tmp").join(format!("{}-{n}-{safe}", std::process::id()))
    }

    /// Writes `bytes` to `path` atomically: temp file, fsync, rename.
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
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

    pub(crate) fn object_path(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.dir.join("objects").join(&hex[..2]).join(&hex[2..])
    }

    pub(crate) fn has_object(&self, d: &Digest) -> bool {
        self.object_path(d).exists()
    }

    /// Stores bytes as an object.
    pub(crate) fn put_bytes(&self, bytes: &[u8]) -> io::Result<Digest> {
        self.put_bytes_with(bytes, true)
    }

    /// Stores a node's log: not fsynced, since a log lost with the machine is not worth a
    /// millisecond on every node (fsck reports it, and `--repair` rebuilds the node).
    pub(crate) fn put_log(&self, bytes: &[u8]) -> io::Result<Digest> {
        self.put_bytes_with(bytes, false)
    }

    fn put_bytes_with(&self, bytes: &[u8], durable: bool) -> io::Result<Digest> {
        let d = Digest::of_bytes(bytes);
        let dest = self.object_path(&d);
        // An object already there is only kept if it still holds these bytes: one found
        // corrupt is replaced, so a rebuild repairs the store instead of reusing the damage.
        if fs::read(&dest).map_or(true, |old| old != bytes) {
            self.replace(&dest, bytes, durable)?;
        }
        Ok(d)
    }

    /// Moves a staged file into the object store (fsynced first) and returns its digest.
    /// `rel` names it inside its output, for errors.
    fn put_staged_file(&self, staged: &Path, rel: &str) -> io::Result<(Digest, u64, bool)> {
        if fs::symlink_metadata(staged)?.file_type().is_symlink() {
            // Store what the link points to, not the link, and only from inside the workspace.
            self.check_link(staged, rel)?;
            let copy = self.tmp_path("link");
            fs::copy(staged, &copy)?;
            fs::remove_file(staged)?;
            fs::rename(&copy, staged)?;
        }
        let exec = digest::is_executable(&fs::metadata(staged)?);
        File::open(staged)?.sync_data()?;
        let (d, size) = digest::hash_file(staged)?;
        let dest = self.object_path(&d);
        fs::create_dir_all(dest.parent().expect("objects have a parent"))?;
        set_readonly(staged)?;
        // Renamed over an object already there: the staged file was just hashed, so this
        // also repairs an object that went corrupt, at the cost of a rename.
        fs::rename(staged, &dest)?;
        Ok((d, size, exec))
    }

    /// Checks that the symbolic link `link` (named `rel` in its output) points to a regular
    /// file inside the workspace.
    fn check_link(&self, link: &Path, rel: &str) -> io::Result<()> {
        let to = fs::read_link(link).map(|t| t.display().to_string()).unwrap_or_default();
        let target = fs::canonicalize(link)
            .map_err(|_| io::Error::new(io::ErrorKind::NotFound, format!("`{rel}` is a symbolic link to `{to}`, which does not exist")))?;
        let root = match self.canonical_root.get_or_init(|| fs::canonicalize(&self.root)) {
            Ok(r) => r,
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot resolve the workspace: {e}"))),
        };
        if !target.starts_with(root) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("`{rel}` is a symbolic link to `{to}`, outside the workspace; an output must be written inside it, not point elsewhere"),
            ));
        }
        if !fs::metadata(&target)?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{rel}` is a symbolic link to the directory `{to}`; write the files themselves into the output"),
            ));
        }
        Ok(())
    }

    /// Every file under a staged directory output, relative and sorted. Symbolic links are
    /// checked as [`Self::check_link`] says; anything but files, directories and such links
    /// is refused.
    fn output_files(&self, dir: &Path) -> io::Result<Vec<String>> {
        fn walk(store: &Store, base: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
            let here = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
            for entry in fs::read_dir(&here)? {
                let entry = entry?;
                let name = entry
                    .file_name()
                    .into_string()
                    .map_err(|n| io::Error::new(io::ErrorKind::InvalidData, format!("`{}` is not a UTF-8 file name", n.to_string_lossy())))?;
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    walk(store, base, &child, out)?;
                } else if kind.is_symlink() {
                    store.check_link(&entry.path(), &child)?;
                    out.push(child);
                } else if kind.is_file() {
                    out.push(child);
                } else {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("`{child}` is not a regular file")));
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(self, dir, "", &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Moves a file staged under `cache/tmp/` into the object store as object `d`: fsynced,
    /// made read-only, renamed into place. The caller has hashed it while writing it (a
    /// download from the remote cache), so it is not hashed again here.
    pub(crate) fn adopt_object(&self, staged: &Path, d: &Digest) -> io::Result<()> {
        let dest = self.object_path(d);
        File::open(staged)?.sync_data()?;
        fs::create_dir_all(dest.parent().expect("objects have a parent"))?;
        set_readonly(staged)?;
        fs::rename(staged, &dest)
    }

    /// Stores a staged output (file or directory), consuming it.
    pub(crate) fn put_output(&self, name: &str, path: &str, staged: &Path) -> io::Result<OutputRecord> {
        let meta = fs::symlink_metadata(staged)?;
        if meta.file_type().is_symlink() {
            // The output itself is a link: only a file inside the workspace is taken.
            self.check_link(staged, path)?;
        }
        if meta.is_dir() {
            let mut entries = Vec::new();
            for rel in self.output_files(staged)? {
                let (d, size, exec) = self.put_staged_file(&staged.join(&rel), &rel)?;
                entries.push(TreeEntry { path: rel, digest: d, size, exec });
            }
            let tree = Tree { entries };
            let d = self.put_bytes(&tree.to_bytes())?;
            Ok(OutputRecord { name: name.into(), path: path.into(), digest: d, size: tree.size(), dir: true, exec: false })
        } else {
            let (d, size, exec) = self.put_staged_file(staged, path)?;
            Ok(OutputRecord { name: name.into(), path: path.into(), digest: d, size, dir: false, exec })
        }
    }

    /// The tree listing of a directory output, verified: it hashes to `d` and lists plain
    /// relative names only (an [`ObjectError`] otherwise).
    pub(crate) fn tree(&self, d: &Digest) -> io::Result<Tree> {
        let bytes = fs::read(self.object_path(d)).map_err(|e| object_io(d, e))?;
        if Digest::of_bytes(&bytes) != *d {
            return Err(ObjectError::Corrupt(*d).into());
        }
        Tree::parse(&bytes).map_err(|why| ObjectError::BadListing(*d, why).into())
    }

    /// What keeps an output from being restored, if anything: an object it needs is absent,
    /// or its directory listing does not verify.
    pub(crate) fn output_problem(&self, out: &OutputRecord) -> Option<ObjectError> {
        if !out.dir {
            return (!self.has_object(&out.digest)).then_some(ObjectError::Missing(out.digest));
        }
        match self.tree(&out.digest) {
            Ok(t) => t.entries.iter().find(|e| !self.has_object(&e.digest)).map(|e| ObjectError::Missing(e.digest)),
            // An error that is not an object's (unreadable for another reason) counts as missing.
            Err(e) => Some(ObjectError::of(&e).cloned().unwrap_or(ObjectError::Missing(out.digest))),
        }
    }

    pub(crate) fn manifest_path(&self, key: &Digest) -> PathBuf {
        self.dir.join("actions").join(format!("{}.json", key.to_hex()))
    }

    /// The manifest for `key`, verified ([`Manifest::verify`]); `Ok(None)` when there is
    /// none, `Err` (`InvalidData`) when it is unreadable or does not verify.
    pub(crate) fn manifest(&self, key: &Digest) -> io::Result<Option<Manifest>> {
        let m: Option<Manifest> = self.read_manifest(key)?;
        match m {
            Some(m) => m.verify(key).map(|()| Some(m)).map_err(|why| invalid_manifest(key, why)),
            None => Ok(None),
        }
    }

    /// The result recorded for `key`, without parsing its stage key; verified against the
    /// key and its seal ([`ActionResult::verify`]). Whether its outputs are the declared
    /// ones is the caller's to check, against the node.
    pub(crate) fn action_result(&self, key: &Digest) -> io::Result<Option<ActionResult>> {
        let r: Option<ActionResult> = self.read_manifest(key)?;
        match r {
            Some(r) => r.verify(key).map(|()| Some(r)).map_err(|why| invalid_manifest(key, why)),
            None => Ok(None),
        }
    }

    fn read_manifest<T: serde::de::DeserializeOwned>(&self, key: &Digest) -> io::Result<Option<T>> {
        match fs::read(self.manifest_path(key)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("manifest {}: {e}", key.short())))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn write_manifest(&self, m: &Manifest) -> io::Result<()> {
        let bytes = serde_json::to_vec(m).map_err(io::Error::other)?;
        self.write_atomic(&self.manifest_path(&m.key), &bytes)
    }

    fn ref_path(&self, node: &str) -> PathBuf {
        self.dir.join("refs").join(node.replace('/', "~"))
    }

    /// The key `node` was last built with.
    pub(crate) fn read_ref(&self, node: &str) -> Option<Digest> {
        fs::read_to_string(self.ref_path(node)).ok().and_then(|s| Digest::from_hex(s.trim()))
    }

    /// Writes a file that only saves work (the no-op index): renamed into place, so never
    /// seen half-written, but not fsynced.
    pub(crate) fn write_cache_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.replace(path, bytes, false)
    }

    /// Refs only serve `why` and `gc` (a lost one means "never built" in an explanation), so
    /// they are not fsynced.
    pub(crate) fn write_ref(&self, node: &str, key: &Digest) -> io::Result<()> {
        self.replace(&self.ref_path(node), key.to_hex().as_bytes(), false)
    }

    pub(crate) fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", node.replace('/', "~")))
    }

    /// Copies an output from the store to `dest` (a workspace path), replacing whatever
    /// is there. Copies, not links: a stage that scribbles on its input cannot corrupt the
    /// store. The copy is made beside `dest` and renamed over it.
    ///
    /// With `verify`, each copy is re-hashed: an object that no longer matches its name fails
    /// with a [`CorruptObject`] error (and is never left in `out/`).
    pub(crate) fn materialize(&self, out: &OutputRecord, dest: &Path, verify: bool) -> io::Result<()> {
        let parent = dest.parent().expect("outputs live under out/");
        self.clear_way(dest)?;
        fs::create_dir_all(parent)?;
        // Built in cache/tmp/ so that a crash leaves nothing behind under out/ that the next
        // writer would not clear.
        let tmp = self.tmp_path("materialize");
        let result = if out.dir {
            fs::create_dir_all(&tmp)?;
            self.tree(&out.digest)?.entries.iter().try_for_each(|e| self.copy_object(&e.digest, e.size, e.exec, &tmp.join(&e.path), verify))
        } else {
            self.copy_object(&out.digest, out.size, out.exec, &tmp, verify)
        };
        if let Err(e) = result {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        if let Ok(meta) = fs::symlink_metadata(dest)
            && (meta.is_dir() || out.dir)
        {
            remove_any(dest)?;
        }
        fs::rename(&tmp, dest).inspect_err(|_| {
            let _ = remove_any(&tmp);
        })
    }

    fn copy_object(&self, d: &Digest, size: u64, exec: bool, dest: &Path, verify: bool) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut from = File::open(self.object_path(d)).map_err(|e| object_io(d, e))?;
        let mut to = File::create(dest)?;
        io::copy(&mut from, &mut to)?;
        drop(to);
        if verify && digest::hash_file(dest)? != (*d, size) {
            return Err(ObjectError::Corrupt(*d).into());
        }
        set_mode(dest, if exec { 0o755 } else { 0o644 })
    }

    /// Makes the way to `dest` under `out/` free of symbolic links and of files standing
    /// where a directory must be: `out/` is tr118's, and a link there must never send a
    /// restore to somewhere else on disk. (`out` itself may be a link a person made, say to
    /// a bigger disk.)
    fn clear_way(&self, dest: &Path) -> io::Result<()> {
        let out = self.root.join("out");
        let Ok(rel) = dest.strip_prefix(&out) else { return Ok(()) };
        let mut at = out;
        let parts: Vec<_> = rel.components().collect();
        for (n, part) in parts.iter().enumerate() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => fs::remove_file(&at)?,
                Ok(m) if !m.is_dir() && n + 1 < parts.len() => fs::remove_file(&at)?,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What is wrong with an object the store was asked for.
#[derive(Debug, Clone)]
pub(crate) enum ObjectError {
    /// Its content no longer hashes to its name.
    Corrupt(Digest),
    /// It is not in the store (collected, repaired away, or never there).
    Missing(Digest),
    /// A directory listing that hashes to its name but is not one tr118 writes.
    BadListing(Digest, String),
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectError::Corrupt(d) => write!(f, "cache object {} is corrupt", d.short()),
            ObjectError::Missing(d) => write!(f, "cache object {} is missing", d.short()),
            ObjectError::BadListing(d, why) => write!(f, "directory listing {} cannot be used: {why}", d.short()),
        }
    }
}

impl std::error::Error for ObjectError {}

impl From<ObjectError> for io::Error {
    fn from(e: ObjectError) -> io::Error {
        let kind = if matches!(e, ObjectError::Missing(_)) { io::ErrorKind::NotFound } else { io::ErrorKind::InvalidData };
        io::Error::new(kind, e)
    }
}

impl ObjectError {
    /// The object problem an I/O error is about, if it is one.
    pub(crate) fn of(e: &io::Error) -> Option<&ObjectError> {
        e.get_ref().and_then(|x| x.downcast_ref::<ObjectError>())
    }
}

fn object_io(d: &Digest, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound { ObjectError::Missing(*d).into() } else { e }
}

fn invalid_manifest(key: &Digest, why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("manifest {}: {why}", key.short()))
}

impl Store {
    /// Removes an object found corrupt, so the node that needs it is rebuilt.
    pub(crate) fn discard(&self, d: &Digest) -> io::Result<()> {
        match fs::remove_file(self.object_path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
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
