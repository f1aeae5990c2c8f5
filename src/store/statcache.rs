//! The stat cache: (path, size, mtime, ctime, inode) → digest, so an unchanged file is not
//! read again. Touching a file only costs a re-hash; the key sees content, never times.
//!
//! An entry is only recorded when the file's mtime is comfortably in the past. A file
//! written in the same clock tick as its entry was made could change again without its
//! mtime moving (the "racily clean" problem git solves the same way); such files are simply
//! hashed again next time.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::{self, Digest};

const RACY_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime: i128,
    ctime: i128,
    ino: u64,
    digest: Digest,
}

pub(crate) struct StatCache {
    file: PathBuf,
    entries: HashMap<String, Entry>,
    dirty: bool,
}

/// A file's (mtime, ctime, inode), times in nanoseconds since the epoch.
#[cfg(unix)]
pub(crate) fn stamp(meta: &Metadata) -> (i128, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let t = |s: i64, ns: i64| s as i128 * 1_000_000_000 + ns as i128;
    (t(meta.mtime(), meta.mtime_nsec()), t(meta.ctime(), meta.ctime_nsec()), meta.ino())
}

#[cfg(not(unix))]
pub(crate) fn stamp(meta: &Metadata) -> (i128, i128, u64) {
    let m = meta.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i128);
    (m, m, 0)
}

/// Whether a file's mtime is so recent that a write in the same clock tick could leave its
/// stat as it is: such a stat proves nothing about the content yet.
pub(crate) fn racy(meta: &Metadata) -> bool {
    meta.modified().ok().is_none_or(|m| SystemTime::now().duration_since(m).map_or(true, |age| age < RACY_WINDOW))
}

/// [`racy`], or a ctime as recent: a copy that keeps the mtime (`cp -p`, `tar x`) is new all
/// the same, and a second such copy in the same tick would leave the stat as it is.
pub(crate) fn racy_or_new(meta: &Metadata) -> bool {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(i128::MAX, |d| d.as_nanos() as i128);
    racy(meta) || now - stamp(meta).1 < RACY_WINDOW.as_nanos() as i128
}

impl StatCache {
    /// Loads the cache; a missing or unreadable file is an empty cache, never an error.
    pub(crate) fn load(file: &Path) -> StatCache {
        let entries = std::fs::read(file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        StatCache { file: file.to_path_buf(), entries, dirty: false }
    }

    /// The digest recorded for `rel` if the file still has the recorded stat.
    pub(crate) fn lookup(&self, rel: &str, meta: &Metadata) -> Option<Digest> {
        let e = self.entries.get(rel)?;
        let (mtime, ctime, ino) = stamp(meta);
        (e.size == meta.len() && e.mtime == mtime && e.ctime == ctime && e.ino == ino).then_some(e.digest)
    }

    /// Records `digest` for `rel` unless its stat is too recent to be trusted.
    pub(crate) fn record(&mut self, rel: &str, meta: &Metadata, digest: Digest) {
        if racy(meta) {
            if self.entries.remove(rel).is_some() {
                self.dirty = true;
            }
            return;
        }
        let (mtime, ctime, ino) = stamp(meta);
        let entry = Entry { size: meta.len(), mtime, ctime, ino, digest };
        if self.entries.get(rel) != Some(&entry) {
            self.entries.insert(rel.to_string(), entry);
            self.dirty = true;
        }
    }

    /// Digest of the file at `root/rel`, from the cache when its stat is unchanged.
    pub(crate) fn file_digest(&mut self, root: &Path, rel: &str) -> io::Result<(Digest, u64)> {
        let meta = std::fs::metadata(root.join(rel))?;
        self.file_digest_with(root, rel, &meta)
    }

    /// [`Self::file_digest`] for a caller that already has the file's metadata.
    pub(crate) fn file_digest_with(&mut self, root: &Path, rel: &str, meta: &Metadata) -> io::Result<(Digest, u64)> {
        if let Some(d) = self.lookup(rel, meta) {
            return Ok((d, meta.len()));
        }
        let (d, size) = digest::hash_file(&root.join(rel))?;
        self.record(rel, meta, d);
        Ok((d, size))
    }

    /// Digest of a file or a directory tree (see [`digest::Tree`]).
    pub(crate) fn path_digest(&mut self, root: &Path, rel: &str) -> io::Result<(Digest, u64)> {
        let path = root.join(rel);
        if !std::fs::metadata(&path)?.is_dir() {
            return self.file_digest(root, rel);
        }
        let tree = self.tree(root, rel)?;
        Ok((tree.digest(), tree.size()))
    }

    /// The listing of the directory at `root/rel` (see [`digest::Tree`]), each file's digest
    /// from the cache when its stat is unchanged.
    pub(crate) fn tree(&mut self, root: &Path, rel: &str) -> io::Result<digest::Tree> {
        let path = root.join(rel);
        let mut entries = Vec::new();
        for file in digest::list_files(&path)? {
            let child = format!("{rel}/{file}");
            let (d, size) = self.file_digest(root, &child)?;
            let exec = digest::is_executable(&std::fs::metadata(root.join(&child))?);
            entries.push(digest::TreeEntry { path: file, digest: d, size, exec });
        }
        Ok(digest::Tree { entries })
    }

    /// Writes the cache back if anything changed. Callers hold the store's lock.
    pub(crate) fn save(&mut self, write: impl FnOnce(&Path, &[u8]) -> io::Result<()>) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&self.entries).map_err(io::Error::other)?;
        write(&self.file, &bytes)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets the file's mtime `secs` seconds into the past, out of the racy window.
    fn backdate(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn a_file_written_just_now_is_hashed_every_time_until_its_mtime_is_old() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "one").unwrap();
        let mut cache = StatCache::load(&dir.path().join("stat.json"));
        let (d, size) = cache.file_digest(dir.path(), "a").unwrap();
        assert_eq!((d, size), digest::hash_file(&dir.path().join("a")).unwrap());
        let meta = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(cache.lookup("a", &meta), None, "racily clean: not recorded");

        backdate(&dir.path().join("a"), 10);
        cache.file_digest(dir.path(), "a").unwrap();
        let meta = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(cache.lookup("a", &meta), Some(d));
    }

    /// Same size, the mtime put back as it was: the ctime still moved, so the content is read.
    #[test]
    fn a_rewrite_that_keeps_size_and_mtime_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, "one").unwrap();
        backdate(&path, 60);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut cache = StatCache::load(&dir.path().join("stat.json"));
        let (old, _) = cache.file_digest(dir.path(), "a").unwrap();

        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "two").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let (new, _) = cache.file_digest(dir.path(), "a").unwrap();
        assert_ne!(old, new);
        assert_eq!(new, digest::hash_file(&path).unwrap().0);
    }

    #[test]
    fn entries_survive_a_save_and_a_bad_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (path, file) = (dir.path().join("a"), dir.path().join("stat.json"));
        std::fs::write(&path, "one").unwrap();
        backdate(&path, 10);
        let mut cache = StatCache::load(&file);
        let (d, _) = cache.file_digest(dir.path(), "a").unwrap();
        cache.save(|p, bytes| std::fs::write(p, bytes)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let again = StatCache::load(&file);
        assert_eq!(again.lookup("a", &meta), Some(d));

        std::fs::write(&file, "{ not json").unwrap();
        assert_eq!(StatCache::load(&file).lookup("a", &meta), None);
    }
}
