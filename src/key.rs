//! The cache key of a node, and why it moved.
//!
//! A node's key is the blake3 digest of the canonical JSON serialisation of one
//! [`StageKey`] ([`StageKey::canonical`]: every object's keys sorted, whatever serde_json's
//! features say, no whitespace, after a fixed domain prefix). Two runs with equal keys are
//! interchangeable; that is the whole contract of the cache. The tests pin the encoding of
//! a fixed key to its bytes and digest: a change to it must be a new domain prefix.
//!
//! | field           | what                                                  | why it is in the key                              |
//! |-----------------|-------------------------------------------------------|---------------------------------------------------|
//! | `kind`          | stage kind name (`cmd`, …)                            | different kinds do different work                 |
//! | `implementation`| implementation set → version, for each set of source files the node's results depend on (see [`crate::implementation`]) | a fixed or changed implementation reruns exactly its nodes |
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
const KEY_DOMAIN: &[u8] = b"tr118-stage-key-v2\0";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageKey {
    pub kind: String,
    pub implementation: BTreeMap<String, u32>,
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
        h.update(&self.canonical());
        Digest(*h.finalize().as_bytes())
    }

    /// The canonical JSON of the key: fields and object keys sorted at every level, so the
    /// bytes do not depend on declaration order or on serde_json's `preserve_order`.
    pub(crate) fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        write_canonical(&serde_json::to_value(self).expect("a key always serialises"), &mut out);
        out
    }

    /// Every field that differs from `old`, as reasons with both values.
    pub(crate) fn compare(&self, old: &StageKey) -> Vec<StaleReason> {
        let mut r = Vec::new();
        if self.kind != old.kind {
            r.push(StaleReason::KindChanged { old: old.kind.clone(), new: self.kind.clone() });
        }
        for set in old.implementation.keys().chain(self.implementation.keys()).collect::<std::collections::BTreeSet<_>>() {
            let (o, n) = (old.implementation.get(set).copied(), self.implementation.get(set).copied());
            if o != n {
                r.push(StaleReason::ImplementationChanged { set: set.clone(), old: o, new: n });
            }
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
fn diff_value(path: &str, old: &Value, new: &Value, make: &mut dyn FnMut(String, Option<Value>, Option<Value>) -> StaleReason, out: &mut Vec<StaleReason>) {
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
pub(crate) enum StaleReason {
    NeverBuilt,
    /// The key is the one last built, but its cache entry is gone.
    CacheEntryMissing,
    /// The manifest exists but one of its objects is missing or corrupt.
    OutputMissing {
        path: String,
    },
    /// An output's object no longer matches its digest; it was discarded.
    OutputCorrupt {
        path: String,
    },
    /// The cache entry for the key exists but cannot be trusted (edited, or not one tr118
    /// writes); the run replaces it.
    EntryInvalid {
        why: String,
    },
    /// An upstream node reruns, so this node's inputs are not known yet.
    Upstream {
        node: String,
    },
    KindChanged {
        old: String,
        new: String,
    },
    /// The version of an implementation set the node depends on moved (or the node now
    /// depends on another set).
    ImplementationChanged {
        set: String,
        old: Option<u32>,
        new: Option<u32>,
    },
    StageVersionChanged {
        old: u32,
        new: u32,
    },
    MatrixChanged {
        axis: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    ParamChanged {
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    ConfigChanged {
        field: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    InputChanged {
        path: String,
        old: Option<Digest>,
        new: Option<Digest>,
    },
    OutsChanged {
        old: Vec<String>,
        new: Vec<String>,
    },
    DeviceChanged {
        old: String,
        new: String,
    },
    FacetChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
}

impl StaleReason {
    /// A cascade is caused by another node; everything else is a root cause.
    pub(crate) fn is_cascade(&self) -> bool {
        matches!(self, StaleReason::Upstream { .. })
    }
}

/// Writes `v` as JSON with every object's keys sorted.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("a string always serialises");
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar always serialises"),
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
            ImplementationChanged { set, old, new } => {
                let v = |x: &Option<u32>| x.map_or("(absent)".to_string(), |v| v.to_string());
                let files = crate::implementation::SETS.iter().find(|s| s.name == set).map_or(String::new(), |s| format!(": {}", s.files.join(", ")));
                write!(f, "implementation of `{set}` changed (version {} → {}{files})", v(old), v(new))
            }
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
            FacetChanged { name, old, new } => {
                write!(f, "environment facet `{name}` changed {} → {}", old.as_deref().unwrap_or("(absent)"), new.as_deref().unwrap_or("(absent)"))
            }
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
            implementation: BTreeMap::from([("cmd".into(), 1), ("stage".into(), 1)]),
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

    /// The encoding of a fixed key, byte for byte, and its digest. Changing either means
    /// every cache entry anywhere is for a different key: that needs a new `KEY_DOMAIN`.
    #[test]
    fn canonical_encoding_of_a_fixed_key_is_pinned() {
        let mut k = key();
        k.config = json!({"zeta": 1, "alpha": {"b": [2, {"y": null, "x": "é"}], "a": 1.5}});
        k.inputs.insert("src/in.txt".into(), Digest::of_bytes(b"in"));
        k.facets.insert("cpu".into(), "AMD EPYC".into());
        let text = String::from_utf8(k.canonical()).unwrap();
        assert_eq!(
            text,
            r#"{"config":{"alpha":{"a":1.5,"b":[2,{"x":"é","y":null}]},"zeta":1},"device":"cpu","facets":{"cpu":"AMD EPYC"},"implementation":{"cmd":1,"stage":1},"inputs":{"src/in.txt":"626e44fe9ac32fd65c92a919689b6fc6488abd2cc07a85d54f775ac1c2b10890"},"kind":"cmd","matrix":{"backend":"cpu"},"outs":["a.txt"],"params":{"precision":"fp16"},"stage_version":0}"#
        );
        // blake3 over the domain prefix and the text above, computed with the Python `blake3` package.
        assert_eq!(k.digest().to_hex(), "dc50b52e9550256fbe79a1eb893eaffe25bdf71ee08f44bbdaeee04cef20ae6e");
    }

    /// serde_json's `preserve_order` (turned on by any crate in the build that asks for it)
    /// makes `Map` keep insertion order. Keys sort explicitly and do not care, but manifests
    /// and artifacts written with `serde_json` would stop being byte-stable: fail loudly.
    #[test]
    fn serde_json_preserve_order_is_off() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": 2}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"a":2,"b":1}"#, "serde_json's `preserve_order` feature is on somewhere in the build");
    }

    #[test]
    fn a_changed_implementation_names_the_set_and_its_files() {
        let mut k = key();
        k.implementation.insert("cmd".into(), 2);
        let reasons = k.compare(&key());
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].to_string(), "implementation of `cmd` changed (version 1 → 2: src/stage/cmd.rs)");
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
