//! Uploading entries: a few threads, each taking one manifest at a time, that upload its
//! blobs (those the server lacks) and then its entry, so that a reader never finds an entry
//! whose blobs are not there yet.
//!
//! Uploads hash and send while nodes run. A timing node on the CPU must run alone, so the
//! scheduler closes the [`Gate`] before it starts one: uploads finish the blob in hand and
//! wait until the gate opens again.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use super::Remote;
use super::entry::{Blob, Entry, SCHEMA, listed, top_level};
use super::http::{self, HttpError};
use crate::store::{Manifest, Status, Store};

/// How many uploads run at once: enough to hide a round trip, few enough to leave the
/// machine to the build.
pub(crate) const THREADS: usize = 4;

/// Lets uploads run, or holds them while a timing node runs.
#[derive(Default)]
pub(crate) struct Gate {
    /// Closed, and how many uploads are between [`Gate::enter`] and the drop of its pass.
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

/// Held by an upload while it works.
pub(crate) struct Pass<'g>(&'g Gate);

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 -= 1;
        self.0.changed.notify_all();
    }
}

impl Gate {
    /// Waits until the gate is open and takes a pass.
    pub(crate) fn enter(&self) -> Pass<'_> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.1 += 1;
        Pass(self)
    }

    /// Closes the gate and waits until no upload holds a pass.
    pub(crate) fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = true;
        while s.1 > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn open(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = false;
        self.changed.notify_all();
    }
}

/// Starts [`THREADS`] upload threads in `scope`; they upload every manifest sent on the
/// returned channel and end once it is dropped and drained.
pub(crate) fn spawn<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    remote: &'env Remote,
    store: &'env Store,
    gate: &'env Gate,
) -> Sender<Manifest> {
    let (tx, rx) = mpsc::channel::<Manifest>();
    let rx: Arc<Mutex<Receiver<Manifest>>> = Arc::new(Mutex::new(rx));
    for _ in 0..THREADS {
        let rx = Arc::clone(&rx);
        scope.spawn(move || {
            loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                match next {
                    Ok(m) => remote.upload(store, &m, gate),
                    Err(_) => break,
                }
            }
        });
    }
    tx
}

impl Remote {
    /// Uploads `m` with the blobs it references, unless the remote is read-only or down,
    /// or `m` is not `ok`. Problems become warnings: an upload never fails a build.
    pub(crate) fn upload(&self, store: &Store, m: &Manifest, gate: &Gate) {
        if self.read_only() || self.down().is_some() || m.status != Status::Ok {
            return;
        }
        let mut needed = top_level(m);
        match listed(store, m) {
            Ok(v) => needed.extend(v),
            Err(e) => {
                return self.warn(format!("not uploading `{}`: a directory listing is unreadable: {e}", m.node));
            }
        }
        let mut blobs: Vec<Blob> = Vec::with_capacity(needed.len());
        for n in &needed {
            if blobs.iter().any(|b| b.blake3 == n.digest) {
                continue;
            }
            let _pass = gate.enter();
            if self.down().is_some() {
                return;
            }
            let path = store.object_path(&n.digest);
            let (sha256, blake3, size) = match http::hash_both(&path) {
                Ok(h) => h,
                Err(e) => {
                    return self.warn(format!("not uploading `{}`: object {} of `{}` is unreadable: {e}", m.node, n.digest.short(), n.name));
                }
            };
            if blake3 != n.digest {
                return self.warn(format!(
                    "not uploading `{}`: its local object {} (`{}`) is corrupt; run `tr118 fsck --repair`",
                    m.node,
                    n.digest.short(),
                    n.name
                ));
            }
            let cas = format!("cas/{sha256}");
            let present = if self.is_suspect(&sha256) { Ok(false) } else { self.client.exists(&cas) };
            let sent = present.and_then(|present| if present { Ok(0) } else { self.client.put_file(&cas, &path).map(|()| size) });
            match sent {
                Ok(n) => {
                    self.bytes_up.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => return self.upload_failed(&m.node, e),
            }
            blobs.push(Blob { blake3, sha256, size });
        }
        let entry = Entry { schema: SCHEMA, manifest: m.clone(), blobs };
        let body = match serde_json::to_vec(&entry) {
            Ok(b) => b,
            Err(e) => return self.warn(format!("not uploading `{}`: {e}", m.node)),
        };
        let _pass = gate.enter();
        match self.client.put_bytes(&format!("ac/{}", m.key.to_hex()), &body) {
            Ok(()) => {
                self.bytes_up.fetch_add(body.len() as u64, Ordering::Relaxed);
                self.entries_up.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.upload_failed(&m.node, e),
        }
    }

    fn upload_failed(&self, node: &str, e: HttpError) {
        match e {
            HttpError::Remote { .. } => self.give_up(e.to_string()),
            HttpError::Local(cause) => self.warn(format!("not uploading `{node}`: {cause}")),
        }
    }

    /// Uploads every manifest of `manifests` with [`THREADS`] threads, for `cache push`.
    pub(crate) fn upload_all(&self, store: &Store, manifests: Vec<Manifest>) {
        let gate = Gate::default();
        std::thread::scope(|scope| {
            let tx = spawn(scope, self, store, &gate);
            for m in manifests {
                let _ = tx.send(m);
            }
        });
    }
}
