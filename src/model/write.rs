//! Writers for checkpoints: GGUF files and Hugging Face directories built from f32 tensors
//! under canonical names. Tests use them to make throwaway models in every layout the readers
//! accept; the `export` stage's `hf` variant uses the Hugging Face writer on whole models,
//! which is why it streams tensor by tensor. The GGUF writer holds a file in memory: it is
//! for small fixtures only.
//!
//! Layout choices that tests rely on:
//! - GGUF: version 3; the `{arch}.*` keys from the [`ModelConfig`] (but no `{arch}.vocab_size`,
//!   so readers fall back to the token list or the embedding's shape); `extra` metadata is
//!   written after and replaces any key of the same name, so a test can corrupt a header on
//!   purpose; tensors in the order given, each padded to `general.alignment` (default 32).
//! - Hugging Face ([`write_hf`]): a single `model.safetensors` uses GPT-2's bare names
//!   (`h.0.ln_1.weight`, as the original upload does) and includes the `h.N.attn.bias` mask
//!   buffers that old checkpoints carry; sharded checkpoints (`model-0000i-of-0000n.safetensors`
//!   plus `model.safetensors.index.json`) use the `transformer.` prefix that `save_pretrained`
//!   writes. [`write_hf_with`] chooses either for any shard count. GPT-2's Conv1D weights are
//!   stored transposed (`[in, out]`); Llama's Q and K rows always in the half RoPE layout.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use half::{bf16, f16};
use serde_json::json;

use super::dtype::DType;
use super::gguf::MetaValue;
use super::{Arch, ModelConfig, RopeLayout};

/// A tensor to write: canonical name, row-major shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor `config` needs, filled with deterministic pseudo-random values of the kind a
/// trained model has: norm weights near 1, biases and weights small and centred on 0.
pub fn random_tensors(config: &ModelConfig, seed: u64) -> Vec<Tensor> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let is_norm = name.contains("norm") && name.ends_with(".weight");
            let data = (0..n)
                .map(|_| {
                    let u = uniform();
                    if is_norm { 1.0 + 0.1 * u } else { 0.1 * u }
                })
                .collect();
            Tensor { name, shape, data }
        })
        .collect()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Encodes `values` as `dtype`; the quantised types take whole blocks of 32. Quantisation
/// follows GGML's reference quantisers (scale from the block's extreme values, round to
/// nearest).
pub fn encode(dtype: DType, values: &[f32]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(dtype.nbytes(values.len())?);
    match dtype {
        DType::F32 => values.iter().for_each(|x| out.extend(x.to_le_bytes())),
        DType::F16 => values.iter().for_each(|&x| out.extend(f16::from_f32(x).to_le_bytes())),
        DType::BF16 => values.iter().for_each(|&x| out.extend(bf16::from_f32(x).to_le_bytes())),
        DType::Q8_0 => {
            for block in values.chunks_exact(32) {
                let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|&x| (x * id).round().clamp(-127.0, 127.0) as i8 as u8));
            }
        }
        DType::Q4_0 => {
            for block in values.chunks_exact(32) {
                // The signed value of largest magnitude maps to −8, the one level with no twin.
                let max = block.iter().fold(0.0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = block.iter().map(|&x| (x * id + 8.5).floor().clamp(0.0, 15.0) as u8).collect();
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
        }
        DType::Q4_1 => {
            for block in values.chunks_exact(32) {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u8> = block.iter().map(|&x| ((x - min) * id + 0.5).floor().clamp(0.0, 15.0) as u8).collect();
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
        }
    }
    Ok(out)
}

fn check_len(t: &Tensor) -> io::Result<()> {
    let n: usize = t.shape.iter().product();
    if n != t.data.len() {
        return Err(invalid(format!("tensor `{}` has shape {:?} but {} values", t.name, t.shape, t.data.len())));
    }
    Ok(())
}

/// The `{arch}.*` and tokenizer-id keys GGUF readers expect for `config`.
fn gguf_config_metadata(config: &ModelConfig) -> BTreeMap<String, MetaValue> {
    let arch = match config.arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
    };
    let u = |v: usize| MetaValue::U32(v as u32);
    let mut m = BTreeMap::new();
    m.insert("general.architecture".to_string(), MetaValue::String(arch.into()));
    for (k, v) in [
        ("context_length", u(config.n_ctx)),
        ("embedding_length", u(config.d_model)),
        ("block_count", u(config.n_layer)),
        ("feed_forward_length", u(config.d_ff)),
        ("attention.head_count", u(config.n_head)),
        ("attention.head_count_kv", u(config.n_kv_head)),
    ] {
        m.insert(format!("{arch}.{k}"), v);
    }
    match config.arch {
        Arch::Gpt2 => {
            m.insert("gpt2.attention.layer_norm_epsilon".into(), MetaValue::F32(config.norm_eps));
        }
        Arch::Llama => {
            m.insert("llama.attention.layer_norm_rms_epsilon".into(), MetaValue::F32(config.norm_eps));
            m.insert("llama.rope.freq_base".into(), MetaValue::F32(config.rope_theta));
        }
    }
    if let Some(id) = config.bos_token_id {
        m.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(id));
    }
    if let Some(id) = config.eos_token_id {
        m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(id));
    }
    m
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) -> io::Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::Array(items) => {
            let ty = items.first().map_or(0, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != ty) {
                return Err(invalid("GGUF arrays hold one value type".into()));
            }
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF v3 file holding `config` and `tensors`, each tensor stored as `dtype(t)`.
pub fn write_gguf(path: &Path, config: &ModelConfig, tensors: &[Tensor], dtype: impl Fn(&Tensor) -> DType, extra: &[(&str, MetaValue)]) -> io::Result<()> {
    let mut metadata = gguf_config_metadata(config);
    for (k, v) in extra {
        metadata.insert(k.to_string(), v.clone());
    }
    let alignment = metadata.get("general.alignment").and_then(MetaValue::as_u64).unwrap_or(32) as usize;

    let mut data = Vec::new();
    let mut infos = Vec::new();
    for t in tensors {
        check_len(t)?;
        let dt = dtype(t);
        let bytes = encode(dt, &t.data).map_err(|e| invalid(format!("tensor `{}`: {e}", t.name)))?;
        data.resize(data.len().next_multiple_of(alignment), 0);
        infos.push((t, dt, data.len() as u64));
        data.extend(bytes);
    }

    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in &metadata {
        put_str(&mut out, k);
        out.extend(v.type_id().to_le_bytes());
        put_value(&mut out, v)?;
    }
    for (t, dt, offset) in infos {
        put_str(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for &n in t.shape.iter().rev() {
            out.extend((n as u64).to_le_bytes());
        }
        out.extend(dt.ggml_type().to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(alignment), 0);
    out.extend(data);
    std::fs::write(path, out)
}

/// Writes a Hugging Face checkpoint directory: `config.json` and the tensors as `dtype`
/// (F32, F16 or BF16) in one `model.safetensors` (`shards == 1`, GPT-2 with the original
/// upload's bare names and mask buffers) or `shards` files with an index.
pub fn write_hf(dir: &Path, config: &ModelConfig, tensors: &[Tensor], dtype: DType, shards: usize) -> io::Result<()> {
    // Before any file is written, as the GGUF writer does.
    tensors.iter().try_for_each(check_len)?;
    let specs: Vec<(String, Vec<usize>)> = tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
    let layout = HfLayout { dtype, shards, gpt2_original_names: shards == 1 };
    write_hf_with(dir, config, &specs, layout, |name| {
        let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| invalid(format!("no tensor `{name}`")))?;
        Ok(t.data.clone())
    })?;
    Ok(())
}

/// How [`write_hf_with`] lays a checkpoint out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HfLayout {
    /// F32, F16 or BF16.
    pub dtype: DType,
    /// 1: one `model.safetensors`; more: `model-0000i-of-0000n.safetensors` and an index.
    pub shards: usize,
    /// GPT-2 only: the names of the original upload (`h.0.ln_1.weight`) and its
    /// `h.N.attn.bias` mask buffers, rather than the `transformer.` prefix `save_pretrained`
    /// writes.
    pub gpt2_original_names: bool,
}

/// Writes a Hugging Face checkpoint directory holding `tensors` (canonical name and shape, in
/// the order given), asking `load` for each tensor's values only when its turn comes, so that
/// one tensor at a time is in memory. Returns the names of the files written, `config.json`
/// first.
///
/// The tensors are canonical (see [`super`]); what Hugging Face stores differently is
/// converted on the way out: GPT-2's `Conv1D` weights are transposed to `[in, out]`, and the
/// Q and K rows of a Llama whose `rope_layout` is interleaved (a GGUF's) are put back in the
/// half layout Hugging Face rotates ([`super::interleaved_to_half_rows`]), since `config.json`
/// has no way to say otherwise.
pub(crate) fn write_hf_with(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, Vec<usize>)],
    layout: HfLayout,
    mut load: impl FnMut(&str) -> io::Result<Vec<f32>>,
) -> io::Result<Vec<String>> {
    let st_dtype = match layout.dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        other => return Err(invalid(format!("safetensors cannot hold {}", other.name()))),
    };
    let shards = layout.shards;
    if shards == 0 || shards > tensors.len() {
        return Err(invalid(format!("cannot spread {} tensors over {shards} shards", tensors.len())));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&hf_config(config, layout.dtype))?)?;
    let mut written = vec!["config.json".to_string()];

    // Every entry is planned before any data is written: a safetensors header holds every
    // tensor's offsets.
    let gpt2 = config.arch == Arch::Gpt2;
    let prefix = if layout.gpt2_original_names { "" } else { "transformer." };
    let mut by_shard: Vec<Vec<StEntry>> = (0..shards).map(|_| Vec::new()).collect();
    for (i, (canonical, shape)) in tensors.iter().enumerate() {
        let shard = i * shards / tensors.len();
        let (name, conv1d) =
            super::hf::hf_name(config.arch, canonical, prefix).ok_or_else(|| invalid(format!("tensor `{canonical}` has no Hugging Face name")))?;
        let conv1d = conv1d && shape.len() == 2;
        let stored = if conv1d { vec![shape[1], shape[0]] } else { shape.clone() };
        let nbytes = layout.dtype.nbytes(shape.iter().product()).map_err(|e| invalid(format!("tensor `{canonical}`: {e}")))?;
        let data = Data::Tensor { canonical: canonical.clone(), shape: shape.clone(), conv1d };
        by_shard[shard].push(StEntry { name, dtype: st_dtype, shape: stored, nbytes, data });
        if gpt2 && layout.gpt2_original_names && canonical.ends_with(".attn_norm.weight") {
            let layer = canonical.trim_start_matches("blk.").split('.').next().unwrap_or("0");
            let n = config.n_ctx;
            let (name, shape) = (format!("h.{layer}.attn.bias"), vec![1, 1, n, n]);
            by_shard[shard].push(StEntry { name, dtype: "F32", shape, nbytes: 4 * n * n, data: Data::CausalMask(n) });
        }
    }

    let file_name = |s: usize| {
        if shards == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{shards:05}.safetensors", s + 1) }
    };
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (s, entries) in by_shard.iter().enumerate() {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({ "format": "pt" }));
        let mut offset = 0;
        for e in entries {
            header.insert(e.name.clone(), json!({ "dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.nbytes] }));
            weight_map.insert(e.name.clone(), json!(file_name(s)));
            offset += e.nbytes;
        }
        total += offset;
        let mut header = serde_json::to_vec(&header)?;
        // Readers do not need it, but real writers pad the header so the data is 8-aligned.
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut f = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join(file_name(s)))?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for e in entries {
            let (values, dtype) = match &e.data {
                Data::Tensor { canonical, shape, conv1d } => {
                    let v = load(canonical)?;
                    let n: usize = shape.iter().product();
                    if v.len() != n {
                        return Err(invalid(format!("tensor `{canonical}` has shape {shape:?} but {} values", v.len())));
                    }
                    (hf_values(config, canonical, shape, *conv1d, v), layout.dtype)
                }
                Data::CausalMask(n) => ((0..n * n).map(|k| if k % n <= k / n { 1.0 } else { 0.0 }).collect(), DType::F32),
            };
            // In slices, so that the encoded bytes of a large tensor never exist all at once.
            let mut put = 0;
            for chunk in values.chunks(1 << 16) {
                let bytes = encode(dtype, chunk).map_err(invalid)?;
                put += bytes.len();
                f.write_all(&bytes)?;
            }
            debug_assert_eq!(put, e.nbytes, "tensor `{}`", e.name);
        }
        f.flush()?;
        written.push(file_name(s));
    }
    let index_path = dir.join("model.safetensors.index.json");
    if shards == 1 {
        // A stale index from an earlier sharded write would take precedence over the new file.
        if index_path.exists() {
            std::fs::remove_file(&index_path)?;
        }
    } else {
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        std::fs::write(&index_path, serde_json::to_string_pretty(&index)?)?;
        written.push("model.safetensors.index.json".into());
    }
    Ok(written)
}

/// A canonical tensor's values as Hugging Face stores them (see [`write_hf_with`]).
fn hf_values(config: &ModelConfig, canonical: &str, shape: &[usize], conv1d: bool, v: Vec<f32>) -> Vec<f32> {
    if conv1d {
        return super::transpose(&v, shape[0], shape[1]);
    }
    if config.arch == Arch::Llama && config.rope_layout == RopeLayout::Interleaved {
        let heads = if canonical.ends_with(".attn_q.weight") {
            Some(config.n_head)
        } else if canonical.ends_with(".attn_k.weight") {
            Some(config.n_kv_head)
        } else {
            None
        };
        if let Some(heads) = heads {
            return super::interleaved_to_half_rows(&v, heads, shape[1]);
        }
    }
    v
}

/// One tensor of a safetensors file being written.
struct StEntry {
    name: String,
    dtype: &'static str,
    /// As stored (Conv1D weights transposed).
    shape: Vec<usize>,
    nbytes: usize,
    data: Data,
}

/// Where an entry's values come from.
enum Data {
    Tensor {
        canonical: String,
        shape: Vec<usize>,
        conv1d: bool,
    },
    /// The `n × n` lower-triangular mask old GPT-2 checkpoints store beside each layer.
    CausalMask(usize),
}

/// The `transformers` class a Hugging Face checkpoint of `arch` is loaded as.
pub(crate) fn hf_architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "GPT2LMHeadModel",
        Arch::Llama => "LlamaForCausalLM",
    }
}

/// `x` as JSON by its shortest decimal form, so that `1e-5f32` reads `1e-5` rather than the
/// `9.99999974737875e-6` of its exact value.
fn f32_json(x: f32) -> serde_json::Value {
    x.to_string().parse::<f64>().map_or(serde_json::Value::Null, |v| json!(v))
}

/// `config.json` for `transformers` (4.4x and 5.x) to build `GPT2LMHeadModel` or
/// `LlamaForCausalLM`, with the weights stored as `dtype`. Defaults are written out where the
/// graph the ONNX exporter builds depends on them, so a change of default upstream cannot
/// make the two disagree.
fn hf_config(c: &ModelConfig, dtype: DType) -> serde_json::Value {
    let architectures = [hf_architecture(c.arch)];
    let dtype = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    match c.arch {
        Arch::Gpt2 => json!({
            "architectures": architectures,
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_embd": c.d_model,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_positions": c.n_ctx,
            "n_inner": c.d_ff,
            // The tanh approximation, as the exporter's graph and GPT-2's training use.
            "activation_function": "gelu_new",
            "layer_norm_epsilon": f32_json(c.norm_eps),
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": c.tied_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
        }),
        Arch::Llama => json!({
            "architectures": architectures,
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head,
            "head_dim": c.head_dim(),
            "intermediate_size": c.d_ff,
            "max_position_embeddings": c.n_ctx,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "rms_norm_eps": f32_json(c.norm_eps),
            // transformers 4.x reads `rope_theta`; 5.x reads `rope_parameters`.
            "rope_theta": f32_json(c.rope_theta),
            "rope_parameters": { "rope_type": "default", "rope_theta": f32_json(c.rope_theta) },
            "tie_word_embeddings": c.tied_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dtype::decode;

    #[test]
    fn quantisers_round_trip_within_half_a_step() {
        let cfg = ModelConfig {
            arch: Arch::Llama,
            vocab_size: 64,
            n_layer: 1,
            n_head: 2,
            n_kv_head: 2,
            d_model: 64,
            d_ff: 64,
            n_ctx: 8,
            norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_layout: super::super::RopeLayout::Half,
            tied_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
        };
        let x = random_tensors(&cfg, 5).remove(0).data;
        for (dtype, levels) in [(DType::Q8_0, 254.0), (DType::Q4_1, 15.0)] {
            let y = decode(dtype, &encode(dtype, &x).unwrap(), x.len()).unwrap();
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let (lo, hi) = bx.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                let step = if dtype == DType::Q8_0 { 2.0 * lo.abs().max(hi.abs()) } else { hi - lo } / levels;
                for (a, b) in bx.iter().zip(by) {
                    assert!((a - b).abs() <= step * 0.5 + 2e-3 * (lo.abs().max(hi.abs())), "{dtype:?}: {a} vs {b}, step {step}");
                }
            }
        }
        // Q4_0: the extreme value itself is exact up to the f16 scale; others within a step.
        let y = decode(DType::Q4_0, &encode(DType::Q4_0, &x).unwrap(), x.len()).unwrap();
        for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
            let amax = bx.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in bx.iter().zip(by) {
                assert!((a - b).abs() <= amax / 8.0 + 1e-3 * amax, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn zero_blocks_quantise_to_zero() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let y = decode(dtype, &encode(dtype, &[0.0; 64]).unwrap(), 64).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{dtype:?}");
        }
    }
}
