//! `gc` and `fsck`: keeping the cache small and honest.

use std::collections::BTreeSet;
use std::fs;
use std::io;

use rayon::prelude::*;
use serde::Serialize;

use super::{Manifest, Store};
use crate::digest::{self, Digest};

#[derive(Debug, Default, Serialize)]
pub(crate) struct GcReport {
    pub manifests_removed: usize,
    pub objects_removed: usize,
    pub bytes_freed: u64,
    pub refs_removed: usize,
    pub manifests_kept: usize,
    pub objects_kept: usize,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct FsckReport {
    pub objects_checked: usize,
    pub manifests_checked: usize,
    /// Objects whose content does not hash to their name.
    pub corrupt_objects: Vec<String>,
    /// Manifests that cannot be used, with why.
    pub bad_manifests: Vec<(String, String)>,
    pub repaired: bool,
}

impl FsckReport {
    pub(crate) fn is_clean(&self) -> bool {
        self.corrupt_objects.is_empty() && self.bad_manifests.is_empty()
    }
}

fn read_dir(dir: &std::path::Path) -> io::Result<fs::ReadDir> {
    fs::read_dir(dir).map_err(|e| io::Error::new(e.kind(), format!("cannot read `{}`: {e}", crate::paths::shown(dir))))
}

fn object_files(store: &Store) -> io::Result<Vec<(Digest, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for shard in read_dir(&store.dir().join("objects"))? {
        let shard = shard?;
        let prefix = shard.file_name().to_string_lossy().into_owned();
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for obj in fs::read_dir(shard.path())? {
            let obj = obj?;
            let name = format!("{prefix}{}", obj.file_name().to_string_lossy());
            if let Some(d) = Digest::from_hex(&name) {
                out.push((d, obj.path()));
            }
        }
    }
    Ok(out)
}

fn manifest_keys(store: &Store) -> io::Result<Vec<Digest>> {
    let mut out = Vec::new();
    for e in read_dir(&store.dir().join("actions"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(d) = name.strip_suffix(".json").and_then(Digest::from_hex) {
            out.push(d);
        }
    }
    Ok(out)
}

/// Every object a manifest needs: its outputs, the files of directory outputs, its log.
fn live_objects(store: &Store, m: &Manifest, live: &mut BTreeSet<Digest>) {
    for o in &m.outputs {
        live.insert(o.digest);
        if o.dir
            && let Ok(tree) = store.tree(&o.digest)
        {
            live.extend(tree.entries.iter().map(|e| e.digest));
        }
    }
    live.extend(m.log);
}

/// Removes every manifest whose key is not in `keep_keys`, every ref of a node not in
/// `keep_nodes`, and every object no kept manifest needs.
pub(crate) fn gc(store: &Store, keep_keys: &BTreeSet<Digest>, keep_nodes: &BTreeSet<String>, dry_run: bool) -> io::Result<GcReport> {
    let mut report = GcReport::default();
    let mut live = BTreeSet::new();
    for key in manifest_keys(store)? {
        if keep_keys.contains(&key) {
            if let Ok(Some(m)) = store.manifest(&key) {
                live_objects(store, &m, &mut live);
                report.manifests_kept += 1;
            }
        } else {
            report.manifests_removed += 1;
            if !dry_run {
                fs::remove_file(store.dir().join("actions").join(format!("{}.json", key.to_hex())))?;
            }
        }
    }
    for (d, path) in object_files(store)? {
        if live.contains(&d) {
            report.objects_kept += 1;
        } else {
            report.objects_removed += 1;
            report.bytes_freed += fs::metadata(&path).map_or(0, |m| m.len());
            if !dry_run {
                fs::remove_file(&path)?;
            }
        }
    }
    let keep_refs: BTreeSet<String> = keep_nodes.iter().map(|n| n.replace('/', "~")).collect();
    for e in fs::read_dir(store.dir().join("refs"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep_refs.contains(&name) {
            report.refs_removed += 1;
            if !dry_run {
                fs::remove_file(e.path())?;
                let _ = fs::remove_file(store.dir().join("logs").join(format!("{name}.log")));
            }
        }
    }
    Ok(report)
}

/// What is wrong with one manifest's claims, re-derived from the objects it references: the
/// manifest verifies ([`Manifest::verify`]: key, stage key, seal, declared output paths),
/// every object is present and not corrupt, each file's size is the recorded one, and each
/// directory listing verifies and adds up to the recorded size. `None` when all of it holds.
fn check_manifest(store: &Store, key: &Digest, corrupt: &BTreeSet<Digest>) -> Option<String> {
    let m = match store.manifest(key) {
        Err(e) => return Some(format!("unusable: {e}")),
        Ok(None) => return None,
        Ok(Some(m)) => m,
    };
    let node = &m.node;
    let object = |d: &Digest, what: &str, size: Option<u64>| -> Option<String> {
        if corrupt.contains(d) {
            return Some(format!("node `{node}`: {what} (object {}) is corrupt", d.short()));
        }
        match fs::metadata(store.object_path(d)) {
            Err(_) => Some(format!("node `{node}`: {what} (object {}) is missing", d.short())),
            Ok(meta) => match size {
                Some(s) if meta.len() != s => {
                    Some(format!("node `{node}`: {what} is recorded as {s} bytes, but its object {} holds {}", d.short(), meta.len()))
                }
                _ => None,
            },
        }
    };
    for o in &m.outputs {
        if !o.dir {
            if let Some(p) = object(&o.digest, &format!("output `{}`", o.path), Some(o.size)) {
                return Some(p);
            }
            continue;
        }
        let tree = match store.tree(&o.digest) {
            Ok(t) => t,
            Err(e) => return Some(format!("node `{node}`: output `{}/`: {e}", o.path)),
        };
        if tree.size() != o.size {
            return Some(format!("node `{node}`: output `{}/` is recorded as {} bytes, but its listing adds up to {}", o.path, o.size, tree.size()));
        }
        for e in &tree.entries {
            if let Some(p) = object(&e.digest, &format!("`{}/{}`", o.path, e.path), Some(e.size)) {
                return Some(p);
            }
        }
    }
    m.log.and_then(|d| object(&d, "the log", None))
}

/// Re-hashes every object and re-derives every manifest's claims ([`check_manifest`]).
/// With `repair`, corrupt objects and the manifests that can no longer be used are
/// removed, so the next `make` rebuilds them.
pub(crate) fn fsck(store: &Store, repair: bool) -> io::Result<FsckReport> {
    let mut report = FsckReport { repaired: repair, ..Default::default() };
    let objects = object_files(store)?;
    report.objects_checked = objects.len();
    let corrupt: Vec<(Digest, std::path::PathBuf)> =
        objects.into_par_iter().filter(|(d, path)| digest::hash_file(path).map_or(true, |(actual, _)| actual != *d)).collect();
    for (d, path) in &corrupt {
        report.corrupt_objects.push(d.to_hex());
        if repair {
            fs::remove_file(path)?;
        }
    }
    let corrupt: BTreeSet<Digest> = corrupt.into_iter().map(|(d, _)| d).collect();
    for key in manifest_keys(store)? {
        report.manifests_checked += 1;
        if let Some(p) = check_manifest(store, &key, &corrupt) {
            report.bad_manifests.push((key.to_hex(), p));
            if repair {
                fs::remove_file(store.dir().join("actions").join(format!("{}.json", key.to_hex())))?;
            }
        }
    }
    Ok(report)
}
