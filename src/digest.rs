//! blake3 digests of bytes, files and directory trees.
//!
//! A directory's digest is the digest of its canonical listing (see [`Tree`]): sorted
//! relative paths with each file's digest, size and executable bit. The listing itself is
//! stored as an object when a directory is a stage output, so it can be restored.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A blake3 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Digest(out))
    }

    /// The first 12 hex characters, for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a blake3 digest")))
    }
}

/// Files at least this large are hashed through mmap on all cores.
const MMAP_THRESHOLD: u64 = 4 << 20;

/// Digest of one regular file's content.
pub fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let meta = fs::metadata(path)?;
    let mut hasher = blake3::Hasher::new();
    if meta.len() >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path)?;
    } else {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        fs::File::open(path)?.read_to_end(&mut buf)?;
        hasher.update(&buf);
    }
    Ok((Digest(*hasher.finalize().as_bytes()), meta.len()))
}

/// One file in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path relative to the directory, `/`-separated.
    pub path: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

/// The canonical listing of a directory: entries sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<TreeEntry>,
}

impl Tree {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tree always serialises")
    }

    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.to_bytes())
    }

    /// Total bytes of the files; saturates rather than overflow on a corrupt listing.
    pub fn size(&self) -> u64 {
        self.entries.iter().fold(0u64, |acc, e| acc.saturating_add(e.size))
    }

    /// Parses a listing read back from a store or a remote cache, and checks what restoring
    /// it relies on: every path is relative and stays inside the directory (no `..`, no
    /// absolute path, no empty or `.` component), and the entries are sorted and unique, as
    /// [`Tree`]'s canonical form has them. A listing is joined onto a directory when an output
    /// is restored, so a path that escapes it would write outside `out/`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Tree, String> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| format!("not a directory listing: {e}"))?;
        for e in &tree.entries {
            check_listed_path(&e.path)?;
        }
        if let Some(w) = tree.entries.windows(2).find(|w| w[0].path >= w[1].path) {
            return Err(format!("entries `{}` and `{}` are not sorted and unique", w[0].path, w[1].path));
        }
        Ok(tree)
    }
}

/// A listed path: `/`-separated normal components, nothing that leaves the directory.
fn check_listed_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("entry `{}` {why}", p.escape_debug()));
    if p.is_empty() {
        return bad("has an empty path");
    }
    if p.starts_with('/') || p.contains('\\') || p.contains('\0') {
        return bad("is not a relative `/`-separated path");
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("has an empty, `.` or `..` component; a listed path must stay inside its directory");
    }
    Ok(())
}

/// Every regular file under `dir`, relative and sorted. Symlinks are followed for files.
pub fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    fn walk(base: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
        let here = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
        for entry in fs::read_dir(&here)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if fs::metadata(entry.path())?.is_dir() {
                walk(base, &child, out)?;
            } else {
                out.push(child);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(unix)]
pub fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
pub fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        // Published blake3 test vector for "abc".
        assert_eq!(d.to_hex(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
    }

    #[test]
    fn from_hex_rejects_garbage() {
        assert_eq!(Digest::from_hex("xyz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }

    fn listing(paths: &[&str]) -> Vec<u8> {
        let d = Digest::of_bytes(b"x").to_hex();
        let entries: Vec<serde_json::Value> = paths.iter().map(|p| serde_json::json!({ "path": p, "digest": d, "size": 1 })).collect();
        serde_json::to_vec(&serde_json::json!({ "entries": entries })).unwrap()
    }

    #[test]
    fn a_listing_that_leaves_its_directory_is_rejected() {
        assert!(Tree::from_bytes(&listing(&["a", "b/c.txt"])).is_ok());
        for (paths, needle) in [
            (vec!["../escape"], "`..`"),
            (vec!["a/../../b"], "`..`"),
            (vec!["/etc/passwd"], "not a relative"),
            (vec!["a//b"], "empty"),
            (vec![""], "empty path"),
            (vec!["b", "a"], "not sorted"),
            (vec!["a", "a"], "not sorted and unique"),
        ] {
            let err = Tree::from_bytes(&listing(&paths)).unwrap_err();
            assert!(err.contains(needle), "{paths:?}: {err}");
        }
    }

    #[test]
    fn the_size_of_a_corrupt_listing_saturates() {
        let d = Digest::of_bytes(b"x");
        let e = |p: &str| TreeEntry { path: p.into(), digest: d, size: u64::MAX, exec: false };
        assert_eq!(Tree { entries: vec![e("a"), e("b")] }.size(), u64::MAX);
    }
}
