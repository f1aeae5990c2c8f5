//! Greedy decoding with the key/value cache left on the device (I/O binding) against plain
//! runs that return it to the host every step; optionally, a prefill timed on the device, with
//! and without a CUDA graph.
//!
//! ```sh
//! cargo run --release --example decode_device -- out/export/decoder/model.onnx \
//!     --provider cuda --prompt 128 --new 64 --reps 5 [--prefill out/export/prefill/model.onnx --cuda-graph]
//! ```
//!
//! ONNX Runtime comes from `ORT_DYLIB_PATH` (a GPU build for `--provider cuda`). Each
//! configuration gets its own session; repetitions are interleaved so a slow drift of the
//! machine hits every configuration alike, after `--warmup` untimed ones. A repetition is one
//! prompt step from an empty cache, then `new - 1` single-token steps; TPOT is the median over
//! repetitions of (time to the last token − time to the first) / (new − 1). Prompts are ids
//! `1..=prompt` modulo the vocabulary, the same in every row. The generated ids of every
//! configuration are compared, and a disagreement is an error.
//!
//! The table ends with the bytes a plain step moves: the grown cache comes back to the host
//! and goes up again, `2 (key, value) × n_layer × batch × n_kv_head × past_len × head_dim × 4
//! bytes`, each way.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use tr118::runtime::{self, Decoder, Provider, Session, SessionOptions};

struct Args {
    decoder: PathBuf,
    prefill: Option<PathBuf>,
    provider: Provider,
    prompt: usize,
    new: usize,
    batch: usize,
    reps: usize,
    warmup: usize,
    threads: Option<usize>,
    cuda_graph: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        decoder: PathBuf::new(),
        prefill: None,
        provider: Provider::Cpu,
        prompt: 64,
        new: 32,
        batch: 1,
        reps: 5,
        warmup: 1,
        threads: None,
        cuda_graph: false,
    };
    let mut decoder = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--prefill" => a.prefill = Some(value()?.into()),
            "--provider" => a.provider = value()?.parse().map_err(anyhow::Error::msg)?,
            "--prompt" => a.prompt = value()?.parse()?,
            "--new" => a.new = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--reps" => a.reps = value()?.parse()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--threads" => a.threads = Some(value()?.parse()?),
            "--cuda-graph" => a.cuda_graph = true,
            s if s.starts_with("--") => bail!("unknown option `{s}`"),
            _ => decoder = Some(PathBuf::from(arg)),
        }
    }
    let decoder = decoder.context("usage: decode_device DECODER.onnx [--prefill PREFILL.onnx] [--provider cpu|cuda] [--prompt P] [--new N] [--batch B] [--reps R] [--warmup W] [--threads T] [--cuda-graph]")?;
    // An export directory names its model file.
    a.decoder = if decoder.is_dir() { decoder.join("model.onnx") } else { decoder };
    a.prefill = a.prefill.map(|p| if p.is_dir() { p.join("model.onnx") } else { p });
    ensure!(a.new >= 2 && a.prompt >= 1 && a.batch >= 1 && a.reps >= 1, "`--new` must be at least 2, `--prompt`, `--batch` and `--reps` at least 1");
    ensure!(!a.cuda_graph || a.provider == Provider::Cuda, "`--cuda-graph` needs `--provider cuda`");
    Ok(a)
}

/// One timed greedy generation: the ids and the time of each token, from the clock's start.
fn generate(dec: &mut Decoder, prompt: &[i64], batch: usize, new: usize) -> anyhow::Result<(Vec<i64>, Vec<f64>)> {
    let len = prompt.len() / batch;
    let mut cache = dec.empty_cache(batch)?;
    let (mut next, mut ids, mut at) = (Vec::with_capacity(batch), Vec::with_capacity(batch * new), Vec::with_capacity(new));
    let argmax = |view: ndarray::ArrayViewD<'_, f32>, out: &mut Vec<i64>| {
        out.clear();
        let last = view.shape()[1] - 1;
        for b in 0..view.shape()[0] {
            let row = (0..view.shape()[2]).map(|v| view[[b, last, v]]);
            let best = row.enumerate().fold((0, f32::NEG_INFINITY), |best, (i, x)| if x > best.1 { (i, x) } else { best });
            out.push(best.0 as i64);
        }
    };
    let start = Instant::now();
    dec.step_with(&mut cache, prompt, len, &mut |v| argmax(v, &mut next))?;
    at.push(start.elapsed().as_secs_f64());
    for _ in 1..new {
        ids.extend_from_slice(&next);
        let step = std::mem::take(&mut next);
        dec.step_with(&mut cache, &step, 1, &mut |v| argmax(v, &mut next))?;
        at.push(start.elapsed().as_secs_f64());
    }
    ids.extend_from_slice(&next);
    Ok((ids, at))
}

/// The decode configurations: name, I/O binding.
const DECODE: [(&str, bool); 2] = [("plain runs", false), ("io binding", true)];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

fn options(a: &Args, io_binding: bool, cuda_graph: bool) -> SessionOptions {
    SessionOptions { intra_threads: a.threads, io_binding: Some(io_binding), cuda_graph, ..SessionOptions::default() }.with_providers([a.provider])
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let rt = runtime::init(None)?;
    println!("ONNX Runtime {} at {}", rt.info().version, rt.info().path.display());

    let mut configs: Vec<(&str, Decoder)> = Vec::new();
    for (name, bound) in DECODE {
        let session = rt.session(&a.decoder, &options(&a, bound, false)).with_context(|| format!("opening `{}`", a.decoder.display()))?;
        configs.push((name, Decoder::new(session)?));
    }
    let (n_layer, n_kv_head, head_dim) = (configs[0].1.n_layer(), configs[0].1.n_kv_head(), configs[0].1.head_dim());
    let vocab = configs[0].1.session().output("logits").and_then(|o| o.fixed(2)).unwrap_or(2) as i64;
    let row: Vec<i64> = (1..=a.prompt as i64).map(|i| i % vocab).collect();
    let prompt: Vec<i64> = (0..a.batch).flat_map(|_| row.iter().copied()).collect();

    let mut tpot: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut ttft: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut first_ids: Option<Vec<i64>> = None;
    for rep in 0..a.warmup + a.reps {
        for (i, (name, dec)) in configs.iter_mut().enumerate() {
            let (ids, at) = generate(dec, &prompt, a.batch, a.new)?;
            match &first_ids {
                None => first_ids = Some(ids),
                Some(want) if *want != ids => bail!("`{name}` generated other ids than `{}`: {ids:?} vs {want:?}", DECODE[0].0),
                Some(_) => {}
            }
            if rep >= a.warmup {
                ttft[i].push(at[0] * 1e3);
                tpot[i].push((at[a.new - 1] - at[0]) * 1e3 / (a.new - 1) as f64);
            }
        }
    }

    println!(
        "\n{} · batch {} · prompt {} · {} new tokens · {} reps (+{} warm-up) · {} layers × {} kv heads × head dim {}",
        a.provider, a.batch, a.prompt, a.new, a.reps, a.warmup, n_layer, n_kv_head, head_dim
    );
    println!("{:<12} {:>14} {:>14} {:>14} {:>12}", "decode", "TTFT ms", "TPOT ms", "tokens/s", "cache on");
    for (i, (name, dec)) in configs.iter_mut().enumerate() {
        let t = median(tpot[i].clone());
        // Where the cache of one more short generation ends up: the difference being measured.
        let mut cache = dec.empty_cache(a.batch)?;
        dec.step(&mut cache, &prompt, a.prompt)?;
        let place = if cache.is_on_host() { "host" } else { "device" };
        println!("{:<12} {:>14.3} {:>14.3} {:>14.1} {:>12}", name, median(ttft[i].clone()), t, a.batch as f64 * 1e3 / t, place);
    }
    let per_token = |past: usize| 2 * n_layer * a.batch * n_kv_head * past * head_dim * 4;
    let (first, last) = (per_token(a.prompt), per_token(a.prompt + a.new - 2));
    println!(
        "a plain step copies the cache each way: {:.2} MB at past {} … {:.2} MB at past {} (×2 directions: {:.2} … {:.2} MB per token)",
        first as f64 / 1e6,
        a.prompt,
        last as f64 / 1e6,
        a.prompt + a.new - 2,
        2.0 * first as f64 / 1e6,
        2.0 * last as f64 / 1e6
    );

    if let Some(path) = &a.prefill {
        prefill(&a, rt, path, &row)?;
    }
    Ok(())
}

/// Prefill of the prompt: a plain run (logits to the host), a run on the device, and with
/// `--cuda-graph` a CUDA graph replay.
fn prefill(a: &Args, rt: &runtime::Runtime, path: &std::path::Path, row: &[i64]) -> anyhow::Result<()> {
    let mut configs: Vec<(&str, Session, bool)> =
        vec![("plain run", rt.session(path, &options(a, false, false))?, false), ("on device", rt.session(path, &options(a, true, false))?, true)];
    if a.cuda_graph {
        configs.push(("cuda graph", rt.session(path, &options(a, true, true))?, true));
    }
    let ids: Vec<i64> = (0..a.batch).flat_map(|_| row.iter().copied()).collect();
    let mask = vec![1i64; ids.len()];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut first: Option<ndarray::ArrayD<f32>> = None;
    for rep in 0..a.warmup + a.reps {
        for (i, (name, s, on_device)) in configs.iter_mut().enumerate() {
            // Inputs built (and for a run on the device, uploaded) before the clock.
            let inputs =
                if *on_device { s.prefill_inputs_on_device(&ids, &mask, a.batch, a.prompt)? } else { s.prefill_inputs(&ids, &mask, a.batch, a.prompt)? };
            let t0 = Instant::now();
            let logits = if *on_device {
                let out = s.run_prepared_on_device(&inputs)?;
                let t = t0.elapsed().as_secs_f64();
                (t, out.to_host()?)
            } else {
                let mut l = None;
                s.run_prepared(&inputs, &mut |v| l = Some(v.to_owned()))?;
                (t0.elapsed().as_secs_f64(), l.context("no logits")?)
            };
            let diff = match &first {
                None => {
                    first = Some(logits.1);
                    0.0
                }
                Some(want) => want.iter().zip(logits.1.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max),
            };
            ensure!(diff <= 1e-3, "`{name}` prefill logits differ from the plain run's by {diff}");
            if rep >= a.warmup {
                times[i].push(logits.0 * 1e3);
            }
        }
    }
    println!("\n{:<12} {:>14}", "prefill", "median ms");
    for (i, (name, _, _)) in configs.iter().enumerate() {
        println!("{:<12} {:>14.3}", name, median(times[i].clone()));
    }
    Ok(())
}
