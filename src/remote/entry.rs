//! Entries on the server (`/ac/<key>`): building one from the local store, and taking one
//! from the server into the local store, verified (the schema and the checks are in the
//! module doc of [`crate::remote`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::Remote;
use super::http::HttpError;
use crate::digest::Digest;
use crate::store::{Manifest, Status, Store};

pub(crate) const SCHEMA: u32 = 1;

#[derive(Serialize, Deserialize)]
pub(super) struct Entry {
    pub schema: u32,
    pub manifest: Manifest,
    pub blobs: Vec<Blob>,
}

/// One blob a manifest references, under both of its names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Blob {
    pub blake3: Digest,
    pub sha256: String,
    pub size: u64,
}

/// What looking a key up on the server came to.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The entry verified and is now in the local store, with its objects.
    Hit { manifest: Box<Manifest>, bytes: u64 },
    /// The server has no entry for the key.
    Miss,
    /// The server has an entry that cannot be used: why, naming the blob, for a warning.
    Rejected(String),
    /// The remote is down, now or since earlier in the run; its one warning is queued.
    Unavailable,
}

/// A blob a manifest references and a name for it that people can find.
pub(super) struct Needed {
    pub digest: Digest,
    pub name: String,
    /// The size the manifest or the listing records for it; `None` for a listing or a log,
    /// which are capped by [`MAX_UNRECORDED`] instead.
    pub size: Option<u64>,
}

/// The largest directory listing or log an entry may bring: neither has a size recorded
/// anywhere but in the entry, which is what is being checked.
pub(crate) const MAX_UNRECORDED: u64 = 256 << 20;

/// The blobs `m` references at the top: its outputs (a directory's listing) and its log.
pub(super) fn top_level(m: &Manifest) -> Vec<Needed> {
    let mut v: Vec<Needed> = m.outputs.iter().map(|o| Needed { digest: o.digest, name: o.path.clone(), size: (!o.dir).then_some(o.size) }).collect();
    v.extend(m.log.map(|d| Needed { digest: d, name: "the log".into(), size: None }));
    v
}

/// The files of `m`'s directory outputs, read from the local store's listings.
pub(super) fn listed(store: &Store, m: &Manifest) -> std::io::Result<Vec<Needed>> {
    let mut v = Vec::new();
    for o in m.outputs.iter().filter(|o| o.dir) {
        for e in store.tree(&o.digest)?.entries {
            v.push(Needed { digest: e.digest, name: format!("{}/{}", o.path, e.path), size: Some(e.size) });
        }
    }
    Ok(v)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `body` is an entry that [`Remote::fetch`] would accept for `key`, before
/// fetching any blob: the checks of a fetch, without a server (the fuzz target
/// `remote_entry` drives them).
pub fn parse_entry(body: &[u8], key: &Digest) -> Result<(), String> {
    check(body, key).map(|_| ())
}

/// Parses and checks an entry fetched for `key`, before any of its blobs is fetched.
fn check(body: &[u8], key: &Digest) -> Result<Entry, String> {
    let entry: Entry = serde_json::from_slice(body).map_err(|e| format!("it is not a tr118 cache entry ({e})"))?;
    if entry.schema != SCHEMA {
        return Err(format!("it has entry schema {}, and this tr118 reads schema {SCHEMA}", entry.schema));
    }
    let m = &entry.manifest;
    // Its key, stage key, schema, seal and output paths: an entry may choose a node's
    // outputs, never where they are written.
    m.verify(key)?;
    if m.status != Status::Ok {
        return Err("it records a degraded result, and degraded results are never shared".into());
    }
    if let Some(b) = entry.blobs.iter().find(|b| !is_sha256_hex(&b.sha256)) {
        return Err(format!("it names blob {} by `{}`, which is not a SHA-256", b.blake3.short(), b.sha256));
    }
    Ok(entry)
}

/// Why one blob could not be taken in.
enum BlobError {
    Rejected(String),
    Down,
}

impl Remote {
    /// Looks `key` up on the server and, if its entry verifies, takes the entry and every
    /// object it needs into `store`. Objects come first and the manifest last, as the store
    /// writes them, so an interrupted fetch leaves at most unreferenced objects behind.
    pub(crate) fn fetch(&self, store: &Store, node: &str, key: &Digest) -> Fetch {
        if self.down().is_some() {
            return Fetch::Unavailable;
        }
        let body = match self.client.get_entry(&format!("ac/{}", key.to_hex())) {
            Ok(Some(b)) => b,
            Ok(None) => return Fetch::Miss,
            Err(e) => return self.failed(e),
        };
        let mut bytes = body.len() as u64;
        self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
        let entry = match check(&body, key) {
            Ok(e) => e,
            Err(why) => return Fetch::Rejected(why),
        };
        let blobs: BTreeMap<Digest, &Blob> = entry.blobs.iter().map(|b| (b.blake3, b)).collect();
        let m = entry.manifest;
        // What the outputs will take, from the sizes the manifest records, against the room
        // this machine has, before a byte of them is asked for.
        let recorded: u64 = top_level(&m).iter().filter(|n| !store.has_object(&n.digest)).filter_map(|n| n.size).fold(0u64, u64::saturating_add);
        if let Err(why) = self.room_for(store, recorded) {
            return Fetch::Rejected(why);
        }
        // Listings first: the files of a directory output are known only once its listing is in.
        for pass in 0..2 {
            let needed = if pass == 0 {
                top_level(&m)
            } else {
                match listed(store, &m) {
                    Ok(v) => v,
                    Err(e) => {
                        return Fetch::Rejected(format!("a directory listing it references is unreadable: {e}"));
                    }
                }
            };
            for n in &needed {
                match self.take_blob(store, &blobs, n) {
                    Ok(b) => bytes += b,
                    Err(BlobError::Rejected(why)) => return Fetch::Rejected(why),
                    Err(BlobError::Down) => return Fetch::Unavailable,
                }
            }
        }
        if let Err(e) = store.write_manifest(&m) {
            return Fetch::Rejected(format!("its manifest cannot be stored: {e}"));
        }
        // `why` compares a later key with this one rather than saying "never built". The
        // ref is this node's: an entry's `node` names whichever node first built the key.
        let _ = store.write_ref(node, key);
        Fetch::Hit { manifest: Box::new(m), bytes }
    }

    /// Makes sure the local store has blob `n`, downloading and verifying it if not.
    /// Returns the bytes downloaded.
    fn take_blob(&self, store: &Store, blobs: &BTreeMap<Digest, &Blob>, n: &Needed) -> Result<u64, BlobError> {
        if store.has_object(&n.digest) {
            return Ok(0);
        }
        let Some(blob) = blobs.get(&n.digest) else {
            return Err(BlobError::Rejected(format!("it does not list blob `{}` ({})", n.name, n.digest.short())));
        };
        // The size to expect comes from the manifest (or the listing), never from the
        // server alone, and must fit what this machine allows.
        match n.size {
            Some(recorded) if recorded != blob.size => {
                return Err(BlobError::Rejected(format!("it lists blob `{}` with {} bytes, but its manifest records {recorded}", n.name, blob.size)));
            }
            None if blob.size > MAX_UNRECORDED => {
                return Err(BlobError::Rejected(format!(
                    "it lists {} `{}` with {} bytes, more than the {} MiB such a blob may have",
                    if n.name == "the log" { "the log" } else { "the listing of" },
                    n.name,
                    blob.size,
                    MAX_UNRECORDED >> 20
                )));
            }
            _ => {}
        }
        if blob.size > self.settings.max_blob {
            return Err(BlobError::Rejected(format!(
                "blob `{}` would be {} bytes, more than `{}` allows ({} bytes)",
                n.name,
                blob.size,
                super::ENV_MAX_BLOB,
                self.settings.max_blob
            )));
        }
        let tmp = store.tmp_path("remote");
        let got = match self.client.get_blob(&format!("cas/{}", blob.sha256), blob.size, &tmp) {
            Ok(Some(got)) => got,
            Ok(None) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(BlobError::Rejected(format!("blob `{}` (sha256 {}) is missing on the server", n.name, &blob.sha256[..12])));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(match self.failed(e) {
                    Fetch::Rejected(why) => BlobError::Rejected(why),
                    _ => BlobError::Down,
                });
            }
        };
        self.bytes_down.fetch_add(got.size, Ordering::Relaxed);
        if got.sha256 != blob.sha256 || got.blake3 != n.digest || got.size != blob.size {
            let _ = std::fs::remove_file(&tmp);
            self.suspect(&blob.sha256);
            return Err(BlobError::Rejected(format!(
                "blob `{}` (sha256 {}) does not match its digest: {} bytes arrived with sha256 {}",
                n.name,
                &blob.sha256[..12],
                got.size,
                &got.sha256[..12]
            )));
        }
        if let Err(e) = store.adopt_object(&tmp, &n.digest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(BlobError::Rejected(format!("blob `{}` cannot be stored: {e}", n.name)));
        }
        Ok(got.size)
    }

    /// Whether `bytes` more fit in the file system of the cache.
    fn room_for(&self, store: &Store, bytes: u64) -> Result<(), String> {
        match free_bytes(store.dir()) {
            Some(free) if bytes > free => Err(format!("its outputs take {bytes} bytes and the file system of `cache/` has {free} free")),
            _ => Ok(()),
        }
    }

    /// A failed request: the remote is given up on, unless this machine is what failed.
    fn failed(&self, e: HttpError) -> Fetch {
        match e {
            HttpError::Remote { .. } => {
                self.give_up(e.to_string());
                Fetch::Unavailable
            }
            HttpError::Local(cause) => Fetch::Rejected(cause),
        }
    }
}

/// The bytes an unprivileged writer may still put in the file system holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &std::path::Path) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::StageKey;

    fn manifest(status: Status) -> Manifest {
        let stage_key = StageKey {
            kind: "cmd".into(),
            implementation: Default::default(),
            stage_version: 0,
            matrix: Default::default(),
            params: Default::default(),
            config: serde_json::json!({"cmd": ["true"]}),
            inputs: Default::default(),
            outs: Vec::new(),
            device: "cpu".into(),
            facets: Default::default(),
        };
        Manifest {
            schema: crate::store::manifest::SCHEMA,
            node: "a".into(),
            key: stage_key.digest(),
            stage_key,
            status,
            reason: None,
            outputs: Vec::new(),
            started_at: 0,
            duration_ms: 1.0,
            env: Default::default(),
            log: None,
            seal: Digest([0; 32]),
        }
        .sealed()
    }

    fn body(m: &Manifest) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "schema": SCHEMA, "manifest": m, "blobs": [] })).unwrap()
    }

    #[test]
    fn entry_for_its_own_key_passes() {
        let m = manifest(Status::Ok);
        assert!(check(&body(&m), &m.key).is_ok());
    }

    #[test]
    fn entry_stored_under_another_key_is_refused() {
        let m = manifest(Status::Ok);
        let other = Digest::of_bytes(b"another node");
        let why = check(&body(&m), &other).err().unwrap();
        assert!(why.contains("its manifest is for key"), "{why}");
    }

    #[test]
    fn entry_whose_stage_key_does_not_hash_to_its_key_is_refused() {
        let mut m = manifest(Status::Ok);
        m.stage_key.config = serde_json::json!({"cmd": ["rm", "-rf", "out"]});
        let why = check(&body(&m), &m.key).err().unwrap();
        assert!(why.contains("its stage key hashes to"), "{why}");
    }

    #[test]
    fn entry_whose_seal_does_not_match_is_refused() {
        let mut m = manifest(Status::Ok);
        m.reason = Some("edited".into());
        let why = check(&body(&m), &m.key).err().unwrap();
        assert!(why.contains("seal"), "{why}");
    }

    #[test]
    fn entry_with_an_undeclared_output_path_is_refused() {
        let mut m = manifest(Status::Ok);
        m.outputs.push(crate::store::OutputRecord {
            name: "a".into(),
            path: "../../../../escaped.txt".into(),
            digest: Digest::of_bytes(b"x"),
            size: 1,
            dir: false,
            exec: false,
        });
        let m = m.sealed();
        let why = check(&body(&m), &m.key).err().unwrap();
        assert!(why.contains("`..` component"), "{why}");
    }

    #[test]
    fn degraded_entry_is_refused() {
        let m = manifest(Status::Degraded);
        let why = check(&body(&m), &m.key).err().unwrap();
        assert!(why.contains("degraded"), "{why}");
    }

    #[test]
    fn blob_name_that_is_not_a_sha256_is_refused() {
        let m = manifest(Status::Ok);
        let b = serde_json::to_vec(&serde_json::json!({
            "schema": SCHEMA, "manifest": m,
            "blobs": [{ "blake3": Digest::of_bytes(b"x"), "sha256": "../../etc/passwd", "size": 1 }]
        }))
        .unwrap();
        let why = check(&b, &m.key).err().unwrap();
        assert!(why.contains("not a SHA-256"), "{why}");
    }
}
