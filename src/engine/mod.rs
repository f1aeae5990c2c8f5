//! Plan, then run.
//!
//! [`plan`] looks at every selected node in topological order and decides, without
//! writing anything, whether it is fresh (its key has a complete cache entry) or stale, and
//! why. A node downstream of a stale one cannot have its key computed yet — its inputs are
//! outputs that do not exist — so it is stale by cascade. [`run`] then executes the stale
//! nodes with a scheduler; a cascaded node whose upstream produced identical outputs turns
//! out fresh after all and is not executed (early cutoff).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::digest::Digest;
use crate::graph::{Graph, Origin};
use crate::key::{StageKey, StaleReason};
use crate::store::statcache::StatCache;
use crate::store::{ActionResult, OutputRecord, Store};

pub(crate) mod index;
pub(crate) mod plan;
pub(crate) mod progress;
pub(crate) mod run;

pub(crate) use plan::{Plan, State};

/// The key of node `i`, given the manifests of its upstream nodes.
pub(crate) fn stage_key<'m>(
    graph: &Graph,
    i: usize,
    upstream: &dyn Fn(usize) -> Option<&'m ActionResult>,
    stat: &mut StatCache,
    root: &Path,
) -> io::Result<StageKey> {
    let node = &graph.pipeline.nodes[i];
    let mut inputs = BTreeMap::new();
    for input in &graph.inputs[i] {
        let digest = match &input.origin {
            Origin::Source => {
                stat.path_digest(root, &input.path).map_err(|e| io::Error::new(e.kind(), format!("dep `{}` of `{}`: {e}", input.path, node.id)))?.0
            }
            Origin::Output { node: up, out } => {
                let name = &graph.pipeline.nodes[*up].outs[*out].name;
                upstream(*up)
                    .and_then(|m| m.outputs.iter().find(|o| &o.name == name).map(|o| o.digest))
                    .ok_or_else(|| io::Error::other(format!("upstream `{}` has no output `{name}`", graph.id(*up))))?
            }
        };
        inputs.insert(input.path.clone(), digest);
    }
    Ok(StageKey {
        kind: node.kind.name().to_string(),
        implementation: node.kind.implementation(node).into_iter().map(|set| (set.to_string(), crate::implementation::version(set))).collect(),
        stage_version: node.version,
        matrix: node.matrix.clone(),
        params: node.params.clone(),
        config: node.config.clone(),
        inputs,
        outs: node.outs.iter().map(|o| if o.dir { format!("{}/", o.path) } else { o.path.clone() }).collect(),
        device: node.device.clone(),
        facets: crate::facets::values(&node.facets, crate::backend::software::read_facet),
    })
}

/// Why a node whose key has no usable cache entry is stale: the field-level difference
/// from the key it was last built with.
pub(crate) fn stale_reasons(store: &Store, node: &str, key: &Digest, sk: &StageKey) -> Vec<StaleReason> {
    match store.read_ref(node) {
        None => vec![StaleReason::NeverBuilt],
        Some(last) if last == *key => vec![StaleReason::CacheEntryMissing],
        Some(last) => match store.manifest(&last) {
            Ok(Some(m)) => {
                let r = sk.compare(&m.stage_key);
                if r.is_empty() { vec![StaleReason::CacheEntryMissing] } else { r }
            }
            _ => vec![StaleReason::CacheEntryMissing],
        },
    }
}

/// Why `m` cannot be restored from the store, if it cannot: an output's object is missing,
/// or a directory listing is missing, corrupt or not one tr118 writes.
pub(crate) fn missing_output(store: &Store, m: &ActionResult) -> Option<StaleReason> {
    m.outputs.iter().find_map(|o| match store.output_problem(o) {
        None => None,
        Some(crate::store::ObjectError::BadListing(_, why)) => Some(StaleReason::EntryInvalid { why: format!("output `{}/`: {why}", o.path) }),
        Some(_) => Some(StaleReason::OutputMissing { path: o.path.clone() }),
    })
}

/// Checks a result's outputs against the ones `node` declares: the same names, paths and
/// kinds, each once. A manifest that records other paths was not written for this node.
pub(crate) fn check_declared(node: &crate::pipeline::NodeSpec, result: &ActionResult) -> Result<(), String> {
    let declared = result.outputs.len() == node.outs.len()
        && result.outputs.iter().all(|o| node.outs.iter().any(|d| d.name == o.name && d.path == o.path && d.dir == o.dir));
    if declared {
        return Ok(());
    }
    let recorded: Vec<String> = result.outputs.iter().map(|o| format!("`{}`", o.path.escape_debug())).collect();
    Err(format!("it records the outputs {}, not the ones the pipeline declares", recorded.join(", ")))
}

/// A failed restore of `out/<node>/<path>`: the node and the output it was for, and why.
#[derive(Debug, thiserror::Error)]
#[error("restoring `out/{node}/{path}`: {source}")]
pub(crate) struct RestoreError {
    pub node: String,
    pub path: String,
    #[source]
    pub source: io::Error,
}

impl RestoreError {
    /// The object whose absence or damage made the restore fail, if that was the cause:
    /// the node can then be rebuilt instead.
    pub(crate) fn object(&self) -> Option<&crate::store::ObjectError> {
        crate::store::ObjectError::of(&self.source)
    }
}

/// Makes `out/<node>/…` match the manifest, copying from the store what is missing or
/// was changed by hand. Returns whether anything was restored. A copy is verified against
/// its digest; a missing or corrupt object fails with a [`RestoreError`] whose
/// [`RestoreError::object`] names it.
pub(crate) fn ensure_materialized(store: &Store, stat: &mut StatCache, node: &str, outputs: &[OutputRecord]) -> Result<bool, RestoreError> {
    let root = store.root().to_path_buf();
    let mut restored = false;
    // A link on the way to the node's outputs makes every output a restore, which replaces it.
    let linked = own_path_linked(&root, node);
    for o in outputs {
        let rel = format!("out/{node}/{}", o.path);
        if linked || !matches(store, stat, &root, &rel, o) {
            store.materialize(o, &root.join(&rel), true).map_err(|source| RestoreError { node: node.to_string(), path: o.path.clone(), source })?;
            restored = true;
        }
    }
    Ok(restored)
}

/// Whether a symbolic link stands on node `node`'s own path under `out/` (`out/a` or
/// `out/a/b` for node `a/b`; `out` itself may be one, say to a bigger disk).
pub(crate) fn own_path_linked(root: &Path, node: &str) -> bool {
    node.split('/')
        .scan(root.join("out"), |at, part| {
            at.push(part);
            Some(std::fs::symlink_metadata(&*at).is_ok_and(|m| m.file_type().is_symlink()))
        })
        .any(|l| l)
}

/// Whether `out/…` at `rel` holds exactly the output: real files and directories only, a
/// symbolic link never matches (it is replaced by the file).
fn matches(store: &Store, stat: &mut StatCache, root: &Path, rel: &str, o: &OutputRecord) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(root.join(rel)) else { return false };
    if !o.dir {
        return meta.is_file() && stat.file_digest_with(root, rel, &meta).is_ok_and(|(d, _)| d == o.digest);
    }
    if !meta.is_dir() {
        return false;
    }
    let Ok(tree) = store.tree(&o.digest) else { return false };
    let Ok(files) = crate::digest::list_files(&root.join(rel)) else { return false };
    files.len() == tree.entries.len()
        && tree.entries.iter().zip(&files).all(|(e, f)| {
            let path = format!("{rel}/{f}");
            e.path == *f
                && std::fs::symlink_metadata(root.join(&path))
                    .is_ok_and(|m| m.is_file() && stat.file_digest_with(root, &path, &m).is_ok_and(|(d, _)| d == e.digest))
        })
}
