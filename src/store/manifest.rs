//! Action manifests: one JSON document per executed node, at `cache/actions/<key>.json`.
//!
//! Schema (version 1), stable for anyone reading the cache with pandas or jq:
//!
//! | field         | type                       | meaning                                         |
//! |---------------|----------------------------|-------------------------------------------------|
//! | `schema`      | int                        | 1                                               |
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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::key::StageKey;

pub const SCHEMA: u32 = 1;

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
    pub status: Status,
    pub reason: Option<String>,
    pub outputs: Vec<OutputRecord>,
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
}
