//! Prefill latency of ONNX models on ONNX Runtime's CPU provider: batch 1, a few prompt
//! lengths, warm-up runs, then timed repetitions. Used by `bench/int8.sh`.
//!
//! ```sh
//! cargo run --release --example prefill_latency -- --threads 2 --reps 20 --lengths 8,27,128,512 \
//!     fp32=out/export/prefill/model.onnx int8-static=out/quantize-static/prefill/model.onnx
//! ```
//!
//! ONNX Runtime comes from `ORT_DYLIB_PATH`. Prompts are token ids `1..=len` modulo the
//! model's vocabulary (latency does not depend on which ids). Each model gets its own session
//! with `threads` intra-op threads and ONNX Runtime's default optimisations; lengths and
//! models are interleaved per repetition so that a slow drift of the machine hits every model
//! alike. Prints one JSON object per (model, length): `model`, `tokens`, `reps`,
//! `median_ms`, `mean_ms`, `min_ms`, `p90_ms`.

use std::path::PathBuf;
use std::time::Instant;

use tr118::runtime::{self, SessionOptions};

fn main() -> anyhow::Result<()> {
    let mut threads = 2usize;
    let mut reps = 20usize;
    let mut warmup = 3usize;
    let mut lengths = vec![8usize, 27, 128, 512];
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("`{a}` needs a value"));
        match a.as_str() {
            "--threads" => threads = value()?.parse()?,
            "--reps" => reps = value()?.parse()?,
            "--warmup" => warmup = value()?.parse()?,
            "--lengths" => lengths = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            _ => {
                let (name, path) = a.split_once('=').ok_or_else(|| anyhow::anyhow!("expected NAME=MODEL.onnx, got `{a}`"))?;
                models.push((name.to_string(), PathBuf::from(path)));
            }
        }
    }
    anyhow::ensure!(!models.is_empty(), "no models: pass NAME=MODEL.onnx …");
    let rt = runtime::init(None)?;
    let options = SessionOptions { intra_threads: Some(threads), ..SessionOptions::default() };
    let mut sessions = Vec::new();
    for (name, path) in &models {
        let s = rt.session(path, &options)?;
        let vocab = s.output("logits").and_then(|o| o.fixed(2)).unwrap_or(2) as i64;
        sessions.push((name.clone(), s, vocab));
    }
    let prompt = |len: usize, vocab: i64| -> Vec<i64> { (1..=len as i64).map(|i| i % vocab).collect() };
    for &len in &lengths {
        for (_, s, vocab) in sessions.iter_mut() {
            let ids = prompt(len, *vocab);
            for _ in 0..warmup {
                s.run_prefill(&ids, &vec![1; len], 1, len)?;
            }
        }
    }
    let mut times: Vec<Vec<Vec<f64>>> = vec![vec![Vec::with_capacity(reps); lengths.len()]; sessions.len()];
    for _ in 0..reps {
        for (li, &len) in lengths.iter().enumerate() {
            for (mi, (_, s, vocab)) in sessions.iter_mut().enumerate() {
                let ids = prompt(len, *vocab);
                let mask = vec![1; len];
                let t0 = Instant::now();
                s.run_prefill(&ids, &mask, 1, len)?;
                times[mi][li].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (mi, (name, _, _)) in sessions.iter().enumerate() {
        for (li, &len) in lengths.iter().enumerate() {
            let mut t = times[mi][li].clone();
            t.sort_by(f64::total_cmp);
            let pick = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
            let mean = t.iter().sum::<f64>() / t.len() as f64;
            println!(
                "{}",
                serde_json::json!({ "model": name, "tokens": len, "reps": reps, "threads": threads,
                    "median_ms": pick(0.5), "mean_ms": mean, "min_ms": t[0], "p90_ms": pick(0.9) })
            );
        }
    }
    Ok(())
}
