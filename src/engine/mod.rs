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

pub mod plan;
pub mod progress;
pub mod run;

pub use plan::{Plan, State};

/// The key of node `i`, given the manifests of its upstream nodes.
pub fn stage_key<'m>(
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
            Origin::Source => stat
                .path_digest(root, &input.path)
                .map_err(|e| io::Error::new(e.kind(), format!("dep `{}` of `{}`: {e}", input.path, node.id)))?
                .0,
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
        kind_version: node.kind.version(),
        stage_version: node.version,
        matrix: node.matrix.clone(),
        params: node.params.clone(),
        config: node.config.clone(),
        inputs,
        outs: node.outs.iter().map(|o| if o.dir { format!("{}/", o.path) } else { o.path.clone() }).collect(),
        device: node.device.clone(),
        facets: crate::facets::values(&node.facets),
    })
}

/// Why a node whose key has no usable cache entry is stale: the field-level difference
/// from the key it was last built with.
pub fn stale_reasons(store: &Store, node: &str, key: &Digest, sk: &StageKey) -> Vec<StaleReason> {
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

/// Whether every output of `m` is present in the store; the first missing one otherwise.
pub fn missing_output(store: &Store, m: &ActionResult) -> Option<String> {
    m.outputs.iter().find(|o| !store.has_output(o)).map(|o| o.path.clone())
}

/// Makes `out/<node>/…` match the manifest, copying from the store what is missing or
/// was changed by hand. Returns whether anything was restored. A copy is verified against
/// its digest; a corrupt object fails with [`crate::store::CorruptObject`].
pub fn ensure_materialized(store: &Store, stat: &mut StatCache, node: &str, outputs: &[OutputRecord]) -> io::Result<bool> {
    let root = store.root().to_path_buf();
    let mut restored = false;
    for o in outputs {
        let rel = format!("out/{node}/{}", o.path);
        if !matches(store, stat, &root, &rel, o) {
            store.materialize(o, &root.join(&rel), true)?;
            restored = true;
        }
    }
    Ok(restored)
}

fn matches(store: &Store, stat: &mut StatCache, root: &Path, rel: &str, o: &OutputRecord) -> bool {
    let Ok(meta) = std::fs::metadata(root.join(rel)) else { return false };
    if meta.is_dir() != o.dir {
        return false;
    }
    if !o.dir {
        return stat.file_digest_with(root, rel, &meta).is_ok_and(|(d, _)| d == o.digest);
    }
    let Ok(tree) = store.tree(&o.digest) else { return false };
    let Ok(files) = crate::digest::list_files(&root.join(rel)) else { return false };
    files.len() == tree.entries.len()
        && tree.entries.iter().zip(&files).all(|(e, f)| {
            e.path == *f && stat.file_digest(root, &format!("{rel}/{f}")).is_ok_and(|(d, _)| d == e.digest)
        })
}
