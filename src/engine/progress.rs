//! What a run tells the person (or program) watching it: a progress bar on a terminal,
//! plain lines otherwise, or one JSON record per node with `--json`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::digest::Digest;
use crate::key::{StageKey, StaleReason};
use crate::store::{ActionResult, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Cache {
    Hit,
    Miss,
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordStatus {
    Ok,
    Degraded,
    Failed,
    Skipped,
    /// `--dry-run`: would run.
    Pending,
}

/// One line of `--json`: what happened to one node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRecord {
    pub id: String,
    pub key: Option<String>,
    pub cache: Cache,
    pub status: RecordStatus,
    /// Why the node ran (or would run); `null` on a hit.
    pub reason: Option<String>,
    /// The degraded reason, the failure, or why it was skipped.
    pub detail: Option<String>,
    pub duration_ms: f64,
    /// A hit whose files under `out/` had to be restored from the cache.
    pub restored: bool,
    /// A hit that came from the remote cache; `null` otherwise.
    pub remote: Option<RemoteHit>,
}

impl NodeRecord {
    fn new(id: &str, key: Option<&Digest>, cache: Cache, status: RecordStatus) -> NodeRecord {
        NodeRecord {
            id: id.to_string(),
            key: key.map(Digest::to_hex),
            cache,
            status,
            reason: None,
            detail: None,
            duration_ms: 0.0,
            restored: false,
            remote: None,
        }
    }

    /// A node whose cache entry was used: `restored` when its files under `out/` had to be
    /// written again, `remote` when the entry came from the remote cache.
    pub(crate) fn hit(id: &str, key: &Digest, result: &ActionResult, restored: bool, remote: Option<RemoteHit>) -> NodeRecord {
        NodeRecord::hit_as(id, key, result.status, result.reason.clone(), restored, remote)
    }

    /// [`Self::hit`] from a result's status and reason alone.
    pub(crate) fn hit_as(id: &str, key: &Digest, status: Status, reason: Option<String>, restored: bool, remote: Option<RemoteHit>) -> NodeRecord {
        NodeRecord { detail: reason, restored, remote, ..NodeRecord::new(id, Some(key), Cache::Hit, outcome(status)) }
    }

    /// A node that ran for `reasons` and produced `result`.
    pub(crate) fn ran(id: &str, key: &Digest, reasons: &[StaleReason], result: &ActionResult, duration_ms: f64) -> NodeRecord {
        NodeRecord {
            reason: Some(reasons_text(reasons)),
            detail: result.reason.clone(),
            duration_ms,
            ..NodeRecord::new(id, Some(key), Cache::Miss, outcome(result.status))
        }
    }

    /// A node that failed: while running for `reasons` (`cache` is a miss), or while its
    /// cache entry was restored (a hit, no reasons).
    pub(crate) fn failed(id: &str, key: &Digest, cache: Cache, reasons: Option<&[StaleReason]>, message: String, duration_ms: f64) -> NodeRecord {
        NodeRecord { reason: reasons.map(reasons_text), detail: Some(message), duration_ms, ..NodeRecord::new(id, Some(key), cache, RecordStatus::Failed) }
    }

    /// A node that did not run: `detail` says why.
    pub(crate) fn skipped(id: &str, key: Option<&Digest>, reasons: Option<&[StaleReason]>, detail: String) -> NodeRecord {
        NodeRecord { reason: reasons.map(reasons_text), detail: Some(detail), ..NodeRecord::new(id, key, Cache::Skipped, RecordStatus::Skipped) }
    }

    /// `--dry-run` and `status`: a node that would run for `reasons`.
    pub(crate) fn pending(id: &str, key: Option<&Digest>, reasons: &[StaleReason]) -> NodeRecord {
        NodeRecord { reason: Some(reasons_text(reasons)), ..NodeRecord::new(id, key, Cache::Miss, RecordStatus::Pending) }
    }
}

impl NodeRecord {
    /// The record as one line of `--json`.
    pub(crate) fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, self).map_err(std::io::Error::other)?;
        writeln!(out)
    }
}

/// How a cached or fresh result reads in a record.
fn outcome(status: Status) -> RecordStatus {
    if status == Status::Degraded { RecordStatus::Degraded } else { RecordStatus::Ok }
}

/// What a node taken from the remote cache moved and saved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RemoteHit {
    /// The entry and the blobs the local store lacked.
    pub bytes_down: u64,
    /// The node's run time as its manifest records it.
    pub saved_ms: f64,
}

pub(crate) fn reasons_text(reasons: &[StaleReason]) -> String {
    reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

enum Mode {
    Bar(ProgressBar),
    Plain,
    Json,
}

pub(crate) struct Reporter {
    mode: Mode,
    verbose: u8,
}

impl Reporter {
    pub(crate) fn new(json: bool, verbose: u8, to_run: usize) -> Reporter {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() && to_run > 0 {
            let bar = ProgressBar::with_draw_target(Some(to_run as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {elapsed_precise} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Mode::Bar(bar)
        } else {
            Mode::Plain
        };
        Reporter { mode, verbose }
    }

    /// A line for people (stderr), kept clear of the progress bar.
    pub(crate) fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.println(text),
            Mode::Plain | Mode::Json => eprintln!("{text}"),
        }
    }

    pub(crate) fn started(&self, id: &str, reasons: &[StaleReason], key: Option<&StageKey>, running: &[&str]) {
        if let Mode::Bar(bar) = &self.mode {
            bar.set_message(running.join(", "));
        }
        if self.verbose >= 1 && !matches!(self.mode, Mode::Json) {
            self.line(&format!("run      {id}: {}", reasons_text(reasons)));
        }
        if self.verbose >= 2
            && let Some(k) = key
        {
            self.line(&format!("key      {id} = {}", serde_json::to_string(k).unwrap_or_default()));
        }
    }

    pub(crate) fn finished(&self, r: &NodeRecord) {
        if let Mode::Json = self.mode {
            let _ = r.write_json(&mut std::io::stdout().lock());
            return;
        }
        if let Mode::Bar(bar) = &self.mode
            && (r.cache == Cache::Miss || r.remote.is_some())
        {
            bar.inc(1);
        }
        let secs = r.duration_ms / 1000.0;
        let detail = r.detail.as_deref().unwrap_or("");
        let text = match (r.cache, r.status) {
            (Cache::Hit, _) if r.remote.is_some() && r.restored => Some(format!("restored {} (from the remote cache)", r.id)),
            (Cache::Hit, _) if r.remote.is_some() => Some(format!("pulled   {}", r.id)),
            (Cache::Hit, _) if r.restored => Some(format!("restored {} (from cache)", r.id)),
            (Cache::Hit, _) if self.verbose >= 1 => Some(format!("fresh    {}", r.id)),
            (Cache::Hit, _) => None,
            (_, RecordStatus::Ok) => Some(format!("ran      {} ({secs:.2}s)", r.id)),
            (_, RecordStatus::Degraded) => Some(format!("degraded {} ({secs:.2}s): {detail}", r.id)),
            (_, RecordStatus::Failed) => Some(format!("FAILED   {} ({secs:.2}s): {detail}", r.id)),
            (_, RecordStatus::Skipped) => Some(format!("skipped  {}: {detail}", r.id)),
            (_, RecordStatus::Pending) => Some(format!("would run {}: {}", r.id, r.reason.as_deref().unwrap_or(""))),
        };
        if let Some(t) = text {
            self.line(&t);
        }
    }

    pub(crate) fn done(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}
