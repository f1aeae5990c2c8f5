//! The cache key of a node, and why it moved.
//!
//! A node's key is the blake3 digest of the canonical JSON serialisation of one
//! [`StageKey`] (objects with sorted keys, no whitespace, a fixed domain prefix). Two runs
//! with equal keys are interchangeable; that is the whole contract of the cache.
//!
//! | field           | what                                                  | why it is in the key                              |
//! |-----------------|-------------------------------------------------------|---------------------------------------------------|
//! | `kind`          | stage kind name (`cmd`, …)                            | different kinds do different work                 |
//! | `kind_version`  | the kind's implementation version                     | a fixed or changed implementation reruns its nodes|
//! | `stage_version` | the stage's `version` field                           | a user's explicit "rerun this" without edits      |
//! | `matrix`        | axis → full value at this node                        | the point of the matrix the node measures         |
//! | `params`        | resolved stage params + global params it refers to    | parameters change results                         |
//! | `config`        | the kind's validated fields (`cmd`'s argv template)   | the work itself                                   |
//! | `inputs`        | dep path → content digest                             | inputs change results; content, never mtime       |
//! | `outs`          | declared output paths                                 | a different output set is a different action      |
//! | `device`        | the device a stage declares                           | a latency on `cuda:0` is not one on `cpu`          |
//! | `facets`        | declared environment facets → value                   | machine facts the outputs depend on               |
//!
//! Never in the key: modification times, absolute paths (every path is workspace
//! relative), the staging paths a command writes to, measured values, timings, the host's
//! name unless the stage declares the `host` facet, the pipeline file's own digest (only
//! the parts a node uses count, so editing one stage reruns only that stage's branch).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::Digest;

/// Bumped when the layout of [`StageKey`] changes, so old entries can never be mistaken
/// for new ones.
const KEY_DOMAIN: &[u8] = b"tr118-stage-key-v1\0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageKey {
    pub kind: String,
    pub kind_version: u32,
    pub stage_version: u32,
    pub matrix: BTreeMap<String, Value>,
    pub params: BTreeMap<String, Value>,
    pub config: Value,
    pub inputs: BTreeMap<String, Digest>,
    pub outs: Vec<String>,
    pub device: String,
    pub facets: BTreeMap<String, String>,
}

impl StageKey {
    /// The key: blake3 over the canonical serialisation.
    pub fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(KEY_DOMAIN);
        // serde_json writes struct fields in declaration order and maps sorted (BTreeMap,
        // and serde_json's own Map without `preserve_order`): canonical by construction.
        h.update(&serde_json::to_vec(self).expect("a key always serialises"));
        Digest(*h.finalize().as_bytes())
    }

    /// Every field that differs from `old`, as reasons with both values.
    pub fn compare(&self, old: &StageKey) -> Vec<StaleReason> {
        let mut r = Vec::new();
        if self.kind != old.kind {
            r.push(StaleReason::KindChanged { old: old.kind.clone(), new: self.kind.clone() });
        }
        if self.kind_version != old.kind_version {
            r.push(StaleReason::KindVersionChanged { kind: self.kind.clone(), old: old.kind_version, new: self.kind_version });
        }
        if self.stage_version != old.stage_version {
            r.push(StaleReason::StageVersionChanged { old: old.stage_version, new: self.stage_version });
        }
        for axis in old.matrix.keys().chain(self.matrix.keys()).collect::<std::collections::BTreeSet<_>>() {
            match (old.matrix.get(axis), self.matrix.get(axis)) {
                (Some(a), Some(b)) => diff_value(axis, a, b, &mut |field, old, new| StaleReason::MatrixChanged { axis: field, old, new }, &mut r),
                (a, b) if a != b => r.push(StaleReason::MatrixChanged { axis: axis.clone(), old: a.cloned(), new: b.cloned() }),
                _ => {}
            }
        }
        diff_maps(&old.params, &self.params, |name, old, new| StaleReason::ParamChanged { name, old, new }, &mut r);
        diff_value("", &old.config, &self.config, &mut |field, old, new| StaleReason::ConfigChanged { field, old, new }, &mut r);
        diff_maps(&old.inputs, &self.inputs, |path, old, new| StaleReason::InputChanged { path, old, new }, &mut r);
        if self.outs != old.outs {
            r.push(StaleReason::OutsChanged { old: old.outs.clone(), new: self.outs.clone() });
        }
        if self.device != old.device {
            r.push(StaleReason::DeviceChanged { old: old.device.clone(), new: self.device.clone() });
        }
        diff_maps(&old.facets, &self.facets, |name, old, new| StaleReason::FacetChanged { name, old, new }, &mut r);
        r
    }
}

fn diff_maps<V: PartialEq + Clone>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    make: impl Fn(String, Option<V>, Option<V>) -> StaleReason,
    out: &mut Vec<StaleReason>,
) {
    let names: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (o, n) = (old.get(name), new.get(name));
        if o != n {
            out.push(make(name.clone(), o.cloned(), n.cloned()));
        }
    }
}

/// Field-level diff of JSON values: objects are walked, anything else compared whole.
fn diff_value(
    path: &str,
    old: &Value,
    new: &Value,
    make: &mut dyn FnMut(String, Option<Value>, Option<Value>) -> StaleReason,
    out: &mut Vec<StaleReason>,
) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let names: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            for name in names {
                let p = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                match (o.get(name), n.get(name)) {
                    (Some(a), Some(b)) => diff_value(&p, a, b, make, out),
                    (a, b) => out.push(make(p, a.cloned(), b.cloned())),
                }
            }
        }
        _ if old != new => out.push(make(path.to_string(), Some(old.clone()), Some(new.clone()))),
        _ => {}
    }
}

/// Why a node must run. Carries old and new values; [`fmt::Display`] is the one place that
/// turns it into a sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StaleReason {
    NeverBuilt,
    /// The key is the one last built, but its cache entry is gone.
    CacheEntryMissing,
    /// The manifest exists but one of its objects is missing or corrupt.
    OutputMissing { path: String },
    /// An output's object no longer matches its digest; it was discarded.
    OutputCorrupt { path: String },
    /// The cache entry for the key exists but cannot be trusted (edited, or not one tr118
    /// writes); the run replaces it.
    EntryInvalid { why: String },
    /// An upstream node reruns, so this node's inputs are not known yet.
    Upstream { node: String },
    KindChanged { old: String, new: String },
    KindVersionChanged { kind: String, old: u32, new: u32 },
    StageVersionChanged { old: u32, new: u32 },
    MatrixChanged { axis: String, old: Option<Value>, new: Option<Value> },
    ParamChanged { name: String, old: Option<Value>, new: Option<Value> },
    ConfigChanged { field: String, old: Option<Value>, new: Option<Value> },
    InputChanged { path: String, old: Option<Digest>, new: Option<Digest> },
    OutsChanged { old: Vec<String>, new: Vec<String> },
    DeviceChanged { old: String, new: String },
    FacetChanged { name: String, old: Option<String>, new: Option<String> },
}

impl StaleReason {
    /// A cascade is caused by another node; everything else is a root cause.
    pub fn is_cascade(&self) -> bool {
        matches!(self, StaleReason::Upstream { .. })
    }
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn show_digest(d: &Option<Digest>) -> String {
    d.map_or("(absent)".to_string(), |d| d.short())
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use StaleReason::*;
        match self {
            NeverBuilt => write!(f, "never built"),
            CacheEntryMissing => write!(f, "no cache entry for its key (the cache was cleaned or collected)"),
            OutputMissing { path } => write!(f, "output `{path}` is missing from the cache"),
            OutputCorrupt { path } => write!(f, "output `{path}` is corrupt in the cache (discarded)"),
            EntryInvalid { why } => write!(f, "its cache entry cannot be used: {why}"),
            Upstream { node } => write!(f, "upstream `{node}` reruns"),
            KindChanged { old, new } => write!(f, "stage kind changed {old} → {new}"),
            KindVersionChanged { kind, old, new } => write!(f, "implementation of kind `{kind}` changed (version {old} → {new})"),
            StageVersionChanged { old, new } => write!(f, "stage version changed {old} → {new}"),
            MatrixChanged { axis, old, new } => write!(f, "matrix `{axis}` changed {} → {}", show(old), show(new)),
            ParamChanged { name, old: None, new } => write!(f, "param `{name}` added ({})", show(new)),
            ParamChanged { name, old, new: None } => write!(f, "param `{name}` removed (was {})", show(old)),
            ParamChanged { name, old, new } => write!(f, "param `{name}` changed {} → {}", show(old), show(new)),
            ConfigChanged { field, old, new } => write!(f, "field `{field}` changed {} → {}", show(old), show(new)),
            InputChanged { path, old: None, .. } => write!(f, "input `{path}` added"),
            InputChanged { path, new: None, .. } => write!(f, "input `{path}` removed"),
            InputChanged { path, old, new } => write!(f, "input `{path}` changed ({} → {})", show_digest(old), show_digest(new)),
            OutsChanged { old, new } => write!(f, "declared outs changed [{}] → [{}]", old.join(", "), new.join(", ")),
            DeviceChanged { old, new } => write!(f, "device changed {old} → {new}"),
            FacetChanged { name, old, new } => write!(
                f,
                "environment facet `{name}` changed {} → {}",
                old.as_deref().unwrap_or("(absent)"),
                new.as_deref().unwrap_or("(absent)")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> StageKey {
        StageKey {
            kind: "cmd".into(),
            kind_version: 1,
            stage_version: 0,
            matrix: BTreeMap::from([("backend".into(), json!("cpu"))]),
            params: BTreeMap::from([("precision".into(), json!("fp16"))]),
            config: json!({"cmd": ["echo", "hi"]}),
            inputs: BTreeMap::new(),
            outs: vec!["a.txt".into()],
            device: "cpu".into(),
            facets: BTreeMap::new(),
        }
    }

    #[test]
    fn equal_keys_hash_equal_and_any_change_moves_the_digest() {
        assert_eq!(key().digest(), key().digest());
        let mut k = key();
        k.params.insert("precision".into(), json!("int8"));
        assert_ne!(k.digest(), key().digest());
    }

    #[test]
    fn compare_names_the_field_with_old_and_new() {
        let mut k = key();
        k.params.insert("precision".into(), json!("int8"));
        k.config = json!({"cmd": ["echo", "bye"]});
        let reasons = k.compare(&key());
        let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["param `precision` changed fp16 → int8", r#"field `cmd` changed ["echo","hi"] → ["echo","bye"]"#]);
    }
}
