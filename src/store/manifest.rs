//! Action manifests: one JSON document per executed node, at `cache/actions/<key>.json`.
//!
//! Schema (version 2), stable for anyone reading the cache with pandas or jq:
//!
//! | field         | type                       | meaning                                         |
//! |---------------|----------------------------|-------------------------------------------------|
//! | `schema`      | int                        | 2                                               |
//! | `node`        | string                     | node id that produced it                        |
//! | `key`         | hex digest                 | blake3 of `stage_key`; also the file name       |
//! | `stage_key`   | object                     | every key input, see `key.rs`                   |
//! | `status`      | `ok` \| `degraded`         | failed nodes are never written                  |
//! | `reason`      | string \| null             | why it is degraded                              |
//! | `outputs`     | list                       | name, path, digest, size, dir, exec per output  |
//! | `started_at`  | int                        | unix time in milliseconds                       |
//! | `duration_ms` | float                        | wall time of the run                            |
//! | `env`         | object                     | tool version, OS, CPU, host at run time          |
//! | `log`         | hex digest \| null         | object holding the combined stdout/stderr       |
//! | `seal`        | hex digest                 | blake3 over `key`, `status`, `reason`, `outputs`, `log` |
//!
//! Nothing read back from `cache/actions/` or a remote is trusted as it is. The `key` is
//! checked against the `stage_key` where the stage key is read, and against the file name;
//! the `seal` ties the result to the key, so an edited digest, size or status, or a result
//! moved under another key, is noticed before anything is restored; every output path must
//! be one the stage key declares ([`check_outputs`]), so an entry can choose a node's
//! outputs but never where on disk they are written. What no check can prove is that an
//! entry's outputs are what its command produces: a writer of the cache who recomputes the
//! seal can forge a result (see the README's trust model).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::key::StageKey;

pub(crate) const SCHEMA: u32 = 2;

/// Keeps seals of one layout apart from any other blake3 use.
const SEAL_DOMAIN: &[u8] = b"tr118-manifest-seal-v1\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Degraded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub name: String,
    /// Relative to the node's output directory.
    pub path: String,
    /// The file's digest, or for a directory the digest of its tree listing.
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub dir: bool,
    #[serde(default)]
    pub exec: bool,
}

/// What planning and downstream keys need of a manifest: the result, not the key that
/// produced it. Reading only this skips over the (possibly large) stage key.
#[derive(Debug, Clone, Deserialize)]
pub struct ActionResult {
    pub key: Digest,
    pub status: Status,
    pub reason: Option<String>,
    pub outputs: Vec<OutputRecord>,
    pub log: Option<Digest>,
    pub seal: Digest,
}

impl ActionResult {
    /// Checks that this result was sealed for `key` and not edited since.
    pub(crate) fn verify(&self, key: &Digest) -> Result<(), String> {
        if self.key != *key {
            return Err(format!("it is filed under key {} but records key {}", key.short(), self.key.short()));
        }
        if seal(&self.key, self.status, &self.reason, &self.outputs, &self.log) != self.seal {
            return Err("its seal does not match its contents (it was edited)".into());
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Sealed<'a> {
    key: &'a Digest,
    status: Status,
    reason: &'a Option<String>,
    outputs: &'a [OutputRecord],
    log: &'a Option<Digest>,
}

/// The seal of a result: blake3 over the canonical JSON of what it claims.
pub(crate) fn seal(key: &Digest, status: Status, reason: &Option<String>, outputs: &[OutputRecord], log: &Option<Digest>) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(SEAL_DOMAIN);
    h.update(&serde_json::to_vec(&Sealed { key, status, reason, outputs, log }).expect("a result always serialises"));
    Digest(*h.finalize().as_bytes())
}

/// Checks a recorded output list against the outputs a stage key declares (`declared`:
/// paths, with a trailing `/` for a directory): the same paths, each once, each a plain
/// relative name. Returns why not.
pub(crate) fn check_outputs(outputs: &[OutputRecord], declared: &[String]) -> Result<(), String> {
    let mut want: Vec<&str> = declared.iter().map(String::as_str).collect();
    for o in outputs {
        crate::digest::check_relative(&o.path).map_err(|why| format!("output `{}` is {why}", o.path.escape_debug()))?;
        let as_declared = if o.dir { format!("{}/", o.path) } else { o.path.clone() };
        match want.iter().position(|d| *d == as_declared) {
            Some(p) => {
                want.swap_remove(p);
            }
            None => return Err(format!("it records output `{}`, which its stage key does not declare", as_declared.escape_debug())),
        }
    }
    match want.first() {
        Some(d) => Err(format!("it records no output `{d}`, which its stage key declares")),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub node: String,
    pub key: Digest,
    pub stage_key: StageKey,
    pub status: Status,
    pub reason: Option<String>,
    pub outputs: Vec<OutputRecord>,
    pub started_at: u64,
    pub duration_ms: f64,
    pub env: BTreeMap<String, String>,
    pub log: Option<Digest>,
    pub seal: Digest,
}

impl From<Manifest> for ActionResult {
    fn from(m: Manifest) -> ActionResult {
        ActionResult { key: m.key, status: m.status, reason: m.reason, outputs: m.outputs, log: m.log, seal: m.seal }
    }
}

impl Manifest {
    /// Seals the manifest: call once everything it records is final.
    pub fn sealed(mut self) -> Manifest {
        self.seal = seal(&self.key, self.status, &self.reason, &self.outputs, &self.log);
        self
    }

    /// Everything that can be checked of a manifest without its objects: its key is the
    /// digest of its stage key and the one asked for, its seal matches, and its outputs are
    /// the ones the stage key declares.
    pub(crate) fn verify(&self, key: &Digest) -> Result<(), String> {
        if self.key != *key {
            return Err(format!("its manifest is for key {}, not for the key {} it is stored under", self.key.short(), key.short()));
        }
        let sk = self.stage_key.digest();
        if sk != *key {
            return Err(format!("its stage key hashes to {}, not to the key {} it is stored under", sk.short(), key.short()));
        }
        if self.schema != SCHEMA {
            return Err(format!("its manifest has schema {}, and this tr118 reads schema {SCHEMA}", self.schema));
        }
        if seal(&self.key, self.status, &self.reason, &self.outputs, &self.log) != self.seal {
            return Err("its seal does not match its contents (it was edited)".into());
        }
        check_outputs(&self.outputs, &self.stage_key.outs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(path: &str, dir: bool) -> OutputRecord {
        OutputRecord { name: "o".into(), path: path.into(), digest: Digest([1; 32]), size: 3, dir, exec: false }
    }

    /// A manifest as the engine writes one: its key is its stage key's digest, sealed.
    fn manifest() -> Manifest {
        let stage_key = StageKey {
            kind: "cmd".into(),
            implementation: BTreeMap::new(),
            stage_version: 1,
            matrix: BTreeMap::new(),
            params: BTreeMap::new(),
            config: serde_json::json!(["true"]),
            inputs: BTreeMap::new(),
            outs: vec!["a.txt".into(), "d/".into()],
            device: "cpu".into(),
            facets: BTreeMap::new(),
        };
        Manifest {
            schema: SCHEMA,
            node: "n".into(),
            key: stage_key.digest(),
            stage_key,
            status: Status::Ok,
            reason: None,
            outputs: vec![output("a.txt", false), output("d", true)],
            started_at: 0,
            duration_ms: 1.0,
            env: BTreeMap::new(),
            log: None,
            seal: Digest([0; 32]),
        }
        .sealed()
    }

    #[test]
    fn a_sealed_manifest_verifies_and_every_claim_it_seals_is_checked() {
        let m = manifest();
        let key = m.key;
        assert_eq!(m.verify(&key), Ok(()));
        assert_eq!(ActionResult::from(m.clone()).verify(&key), Ok(()));
        // Filed under another key.
        assert!(m.verify(&Digest([9; 32])).unwrap_err().contains("not for the key"));
        // Each sealed field edited after sealing.
        type Edit = (&'static str, fn(&mut Manifest));
        let edits: [Edit; 5] = [
            ("status", |m| m.status = Status::Degraded),
            ("reason", |m| m.reason = Some("x".into())),
            ("digest", |m| m.outputs[0].digest = Digest([2; 32])),
            ("size", |m| m.outputs[0].size += 1),
            ("log", |m| m.log = Some(Digest([3; 32]))),
        ];
        for (what, edit) in edits {
            let mut e = m.clone();
            edit(&mut e);
            assert!(e.verify(&key).unwrap_err().contains("seal"), "an edited {what} verified");
            assert!(ActionResult::from(e).verify(&key).unwrap_err().contains("seal"), "an edited {what} verified as a result");
        }
        // Unsealed fields are not claims: a different run time is the same result.
        let mut e = m.clone();
        e.duration_ms = 5.0;
        assert_eq!(e.verify(&key), Ok(()));
    }

    #[test]
    fn outputs_must_be_exactly_the_declared_ones() {
        let declared = vec!["a.txt".to_string(), "d/".to_string()];
        assert_eq!(check_outputs(&[output("d", true), output("a.txt", false)], &declared), Ok(()));
        assert!(check_outputs(&[output("a.txt", false)], &declared).unwrap_err().contains("no output `d/`"));
        assert!(check_outputs(&[output("a.txt", false), output("d", true), output("e", false)], &declared).unwrap_err().contains("`e`"));
        // A directory recorded as a file is another output.
        assert!(check_outputs(&[output("a.txt", false), output("d", false)], &declared).is_err());
        // The same output twice, or a path that leaves the node's directory.
        assert!(check_outputs(&[output("a.txt", false), output("a.txt", false)], &declared).is_err());
        assert!(check_outputs(&[output("../a.txt", false), output("d", true)], &["../a.txt".into(), "d/".into()]).unwrap_err().contains("../a.txt"));
    }
}
