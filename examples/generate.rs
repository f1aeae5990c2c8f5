//! Greedy generation with an exported decoder and its tokenizer: the quickest look at
//! whether an export is the model it claims to be.
//!
//! ```sh
//! cargo run --release --example generate -- out/export "The capital of France is" 24
//! ```
//!
//! The first argument is an export's output directory (`decoder/model.onnx` and
//! `tokenizer.json` inside); ONNX Runtime comes from `ORT_DYLIB_PATH`, else from the study's
//! own fetched copy under `out/ort/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tr118::runtime::{self, Decoder, SessionOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("out/export", String::as_str));
    let prompt = args.get(2).map_or("The capital of France is", String::as_str);
    let new_tokens: usize = args.get(3).map_or(Ok(24), |s| s.parse())?;

    let lib = std::env::var_os(runtime::ORT_DYLIB_ENV).map(PathBuf::from).unwrap_or_else(|| Path::new("out/ort/libonnxruntime.so.1.31.1").to_path_buf());
    let rt = runtime::init(Some(&lib))?;
    let tokenizer = tr118::tokenizer::load_tokenizer_json(&dir.join("tokenizer.json"))?;
    let session = rt.session(&dir.join("decoder/model.onnx"), &SessionOptions::default())?;
    let mut decoder = Decoder::new(session)?;

    let ids: Vec<i64> = tokenizer.encode(prompt, false).map_err(anyhow::Error::msg)?.get_ids().iter().map(|&i| i as i64).collect();
    let mut cache = decoder.empty_cache(1)?;
    let t0 = Instant::now();
    let mut logits = decoder.step(&mut cache, &ids, ids.len())?;
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..new_tokens {
        let last = logits.shape()[1] - 1;
        let row = logits.index_axis(ndarray::Axis(0), 0);
        let row = row.index_axis(ndarray::Axis(0), last);
        let next = row.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0;
        out.push(next as u32);
        logits = decoder.step(&mut cache, &[next as i64], 1)?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let text = tokenizer.decode(&out, true).map_err(anyhow::Error::msg)?;
    println!("{prompt}{text}");
    eprintln!("{} prompt tokens, {new_tokens} new tokens in {ms:.0} ms ({:.1} tokens/s)", ids.len(), new_tokens as f64 / (ms / 1e3));
    Ok(())
}
