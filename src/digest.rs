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

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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

    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
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
    pub(crate) fn short(&self) -> String {
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

    /// Reads a listing from untrusted bytes (the cache, a remote): it must be the canonical
    /// serialisation of a listing tr118 could have written — every path a plain relative
    /// name, strictly sorted, no file standing where another needs a directory — so that a
    /// listing can never name a place outside the directory it lists.
    pub fn parse(bytes: &[u8]) -> Result<Tree, String> {
        let tree: Tree = serde_json::from_slice(bytes).map_err(|e| format!("it is not a directory listing ({e})"))?;
        for e in &tree.entries {
            check_relative(&e.path).map_err(|why| format!("it lists `{}`, {why}", e.path.escape_debug()))?;
        }
        for pair in tree.entries.windows(2) {
            let (a, b) = (&pair[0].path, &pair[1].path);
            if a >= b {
                return Err(format!("its entries are not strictly sorted (`{}` before `{}`)", a.escape_debug(), b.escape_debug()));
            }
        }
        let files: std::collections::BTreeSet<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
        for e in &tree.entries {
            if let Some(dir) = e.path.match_indices('/').map(|(i, _)| &e.path[..i]).find(|d| files.contains(d)) {
                return Err(format!("it lists `{dir}` both as a file and as a directory"));
            }
        }
        if tree.to_bytes() != bytes {
            return Err("it is not in canonical form".into());
        }
        Ok(tree)
    }
}

/// Whether `path` is a plain relative name that stays inside the directory it is joined to:
/// `/`-separated components, none empty, `.` or `..`, no leading `/`, no backslash, no
/// control character. Returns why not, as the end of a sentence.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("an empty path".into());
    }
    if path.starts_with('/') {
        return Err("an absolute path".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("a path with the character {c:?}"));
    }
    if let Some(c) = path.split('/').find(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(if c.is_empty() { "a path with an empty component".into() } else { format!("a path with a `{c}` component") });
    }
    Ok(())
}

/// Every regular file under `dir`, relative and sorted. Symlinks are followed for files.
pub(crate) fn list_files(dir: &Path) -> io::Result<Vec<String>> {
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
pub(crate) fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
pub(crate) fn is_executable(_meta: &fs::Metadata) -> bool {
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
    fn relative_names_stay_inside() {
        for good in ["a", "a/b.txt", "..a/b..", "x/.hidden"] {
            assert_eq!(check_relative(good), Ok(()), "{good}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", ".", "a\\..\\b", "a\nb"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listing_parse_accepts_only_what_tr118_writes() {
        let entry = |p: &str| TreeEntry { path: p.into(), digest: Digest::of_bytes(p.as_bytes()), size: 1, exec: false };
        let good = Tree { entries: vec![entry("a/b"), entry("a/c"), entry("b")] };
        assert_eq!(Tree::parse(&good.to_bytes()), Ok(good));
        for (entries, why) in [
            (vec![entry("../../x")], "`..`"),
            (vec![entry("/abs")], "absolute"),
            (vec![entry("b"), entry("a")], "sorted"),
            (vec![entry("a"), entry("a")], "sorted"),
            (vec![entry("a"), entry("a/b")], "both as a file and as a directory"),
            (vec![entry("a"), entry("a-b"), entry("a/b")], "both as a file and as a directory"),
        ] {
            let e = Tree::parse(&Tree { entries }.to_bytes()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let spaced = b"{ \"entries\": [] }";
        assert!(Tree::parse(spaced).unwrap_err().contains("canonical"));
    }

    #[test]
    fn from_hex_rejects_garbage() {
        assert_eq!(Digest::from_hex("xyz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn the_size_of_a_corrupt_listing_saturates() {
        let d = Digest::of_bytes(b"x");
        let e = |p: &str| TreeEntry { path: p.into(), digest: d, size: u64::MAX, exec: false };
        assert_eq!(Tree { entries: vec![e("a"), e("b")] }.size(), u64::MAX);
    }
}
