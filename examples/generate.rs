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

use tr118::backend::{self, BackendSpec, workload};
use tr118::runtime;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("out/export", String::as_str));
    let prompt = args.get(2).map_or("The capital of France is", String::as_str);
    let new_tokens: usize = args.get(3).map_or(Ok(24), |s| s.parse())?;

    let lib = std::env::var_os(runtime::ORT_DYLIB_ENV).map(PathBuf::from).unwrap_or_else(|| Path::new("out/ort/libonnxruntime.so.1.31.1").to_path_buf());
    let tokenizer = tr118::tokenizer::load_tokenizer_json(&dir.join("tokenizer.json"))?;
    let spec = BackendSpec::from_value(&serde_json::json!({ "name": "cpu" })).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut backend = backend::open(&spec, &dir.join("decoder/model.onnx"), &lib)?;

    let ids: Vec<i64> = tokenizer.encode(prompt, false).map_err(anyhow::Error::msg)?.get_ids().iter().map(|&i| i as i64).collect();
    let g = workload::generate_cached(backend.as_mut(), &ids, 1, new_tokens)?;
    let out: Vec<u32> = g.ids.iter().map(|&t| t as u32).collect();
    let text = tokenizer.decode(&out, true).map_err(anyhow::Error::msg)?;
    println!("{prompt}{text}");
    let ms = g.total.as_secs_f64() * 1e3;
    eprintln!("{} prompt tokens, {new_tokens} new tokens in {ms:.0} ms ({:.1} tokens/s)", ids.len(), new_tokens as f64 / (ms / 1e3));
    Ok(())
}
