//! Helpers shared by the test modules: `use crate::support::…` in a test file brings them in.
//!
//! | module        | holds                                                               |
//! |---------------|---------------------------------------------------------------------|
//! | [`http`]      | a hostile cache server on a loopback port that serves crafted entries |
//! | [`nginx`]     | a real WebDAV cache server on a loopback port, killed on drop       |
//! | [`onnx`]      | tiny ONNX models written as raw protobuf bytes                      |
//! | [`reference`] | a naive f64 forward pass for GPT-2 and Llama; seeded random weights |
//! | [`rtx`]       | TensorRT for RTX, fetched once by the default pipeline's own stages   |
//! | [`study`]     | the reduced study: the default study's shape on a tiny random Llama   |
//! | [`workspace`] | a throwaway workspace, the real binary run on it, its `--json` records |
//!
//! Beside them: the ONNX Runtime library ([`ort`]), a word-level tokenizer, a CSV reader, and
//! small helpers for assertions on text and ids ([`sorted`], [`line_starting`], [`wait_until`]).

pub mod http;
pub mod nginx;
pub mod onnx;
pub mod reference;
pub mod rtx;
pub mod study;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tr118::runtime::{self, Runtime};

/// The ONNX Runtime library for tests: `ORT_DYLIB_PATH`, else the pinned `onnxruntime==1.31.1`
/// that `scripts/fetch-ort.sh` fetches from PyPI once into `.tr118-dev/`. Never skipped: a
/// test of the runtime that could pass without one would prove nothing. Located once per
/// process.
pub fn ort_library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(locate_ort_library)
}

/// The process's ONNX Runtime, loaded from [`ort_library`].
pub fn ort() -> &'static Runtime {
    runtime::init(Some(ort_library())).unwrap_or_else(|e| panic!("loading ONNX Runtime: {e}"))
}

fn locate_ort_library() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-ort.sh");
    let out = Command::new("bash").arg(script).output().unwrap_or_else(|e| panic!("running `{script}`: {e}"));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() {
        panic!("no ONNX Runtime library: `scripts/fetch-ort.sh` failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    PathBuf::from(path)
}

/// A word-level tokenizer.json: `t{i}` is id `i`, words split on whitespace, so a test knows a
/// text's ids without trusting a tokenizer.
pub fn word_tokenizer_json(vocab: usize) -> String {
    let map: serde_json::Map<String, serde_json::Value> = (0..vocab).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": map, "unk_token": "t0" }
    })
    .to_string()
}

/// A CSV text's rows as column → cell (quoted cells unquoted), or why a row does not fit the
/// header.
pub fn csv_rows(text: &str) -> Result<Vec<std::collections::BTreeMap<String, String>>, String> {
    let mut lines = text.lines().map(|line| {
        let mut cells = Vec::new();
        let mut cell = String::new();
        let (mut quoted, mut chars) = (false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cell.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => cells.push(std::mem::take(&mut cell)),
                _ => cell.push(c),
            }
        }
        cells.push(cell);
        cells
    });
    let header = lines.next().ok_or("no header")?;
    lines
        .enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                return Err(format!("row {} has {} cells under {} columns", i + 1, r.len(), header.len()));
            }
            Ok(header.iter().cloned().zip(r).collect())
        })
        .collect()
}

/// `ids` as owned strings, sorted: what [`workspace::Make`]'s id lists are compared with.
pub fn sorted(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The line of `text` that starts with `prefix`.
#[track_caller]
pub fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

/// Polls `cond` until it holds; panics after `secs` seconds.
#[track_caller]
pub fn wait_until(secs: f64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
