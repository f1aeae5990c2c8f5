//! Checkpoints in: a GGUF file or a Hugging Face directory (`config.json` + `*.safetensors`,
//! single or sharded) is read into one [`Checkpoint`]: a normalised [`ModelConfig`] and its
//! tensors under canonical names, loaded lazily as f32 so that exporting a model never holds
//! more than one dequantised tensor beside the memory-mapped file.
//!
//! Canonical tensor names follow GGUF's, with shapes row-major in PyTorch order (`[out, in]`
//! for a linear layer's weight, so `y = x · Wᵀ`):
//!
//! | name                         | shape               | arch  |
//! |------------------------------|---------------------|-------|
//! | `token_embd.weight`          | [vocab, d]          | both  |
//! | `position_embd.weight`       | [n_ctx, d]          | gpt2  |
//! | `blk.N.attn_norm.weight`     | [d]                 | both (gpt2 also `.bias`) |
//! | `blk.N.attn_qkv.weight`      | [3d, d]             | gpt2 (also `.bias` [3d]) |
//! | `blk.N.attn_q.weight`        | [n_head·hd, d]      | llama |
//! | `blk.N.attn_k.weight`        | [n_kv·hd, d]        | llama |
//! | `blk.N.attn_v.weight`        | [n_kv·hd, d]        | llama |
//! | `blk.N.attn_output.weight`   | [d, n_head·hd]      | both (gpt2 also `.bias` [d]) |
//! | `blk.N.ffn_norm.weight`      | [d]                 | both (gpt2 also `.bias`) |
//! | `blk.N.ffn_gate.weight`      | [ff, d]             | llama |
//! | `blk.N.ffn_up.weight`        | [ff, d]             | both (gpt2 also `.bias` [ff]) |
//! | `blk.N.ffn_down.weight`      | [d, ff]             | both (gpt2 also `.bias` [d]) |
//! | `output_norm.weight`         | [d]                 | both (gpt2 also `.bias`) |
//! | `output.weight`              | [vocab, d]          | absent when embeddings are tied |
//!
//! GPT-2's Hugging Face `Conv1D` weights are stored `[in, out]` and are transposed on load.
//! Llama's Q and K rows are left as the checkpoint has them: llama.cpp's converter permutes
//! them so that RoPE rotates adjacent pairs, while Hugging Face rotates the first half of a
//! head against the second. [`RopeLayout`] records which; [`interleaved_to_half_rows`] undoes
//! the converter's permutation, for the ONNX exporter and the Hugging Face writer alike.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod dtype;
pub mod gguf;
pub(crate) mod hf;
pub mod safetensors;
pub mod write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Llama,
}

/// Which dimensions of a head rotary embeddings rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// `(x[2i], x[2i+1])`: GGUF.
    Interleaved,
    /// `(x[i], x[i + hd/2])`: Hugging Face.
    Half,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); equals `n_head` for GPT-2.
    pub n_kv_head: usize,
    pub d_model: usize,
    pub d_ff: usize,
    /// Maximum positions (GPT-2's learned position table; Llama's trained context).
    pub n_ctx: usize,
    /// LayerNorm (GPT-2) or RMSNorm (Llama) epsilon.
    pub norm_eps: f32,
    /// RoPE base frequency (Llama).
    pub rope_theta: f32,
    pub rope_layout: RopeLayout,
    /// The output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// Every tensor the architecture needs, canonical name and shape, in a fixed order.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, ff, hd) = (self.d_model, self.d_ff, self.head_dim());
        let mut t: Vec<(String, Vec<usize>)> = vec![("token_embd.weight".into(), vec![self.vocab_size, d])];
        let gpt2 = self.arch == Arch::Gpt2;
        if gpt2 {
            t.push(("position_embd.weight".into(), vec![self.n_ctx, d]));
        }
        for i in 0..self.n_layer {
            let b = |s: &str| format!("blk.{i}.{s}");
            t.push((b("attn_norm.weight"), vec![d]));
            if gpt2 {
                t.push((b("attn_norm.bias"), vec![d]));
                t.push((b("attn_qkv.weight"), vec![3 * d, d]));
                t.push((b("attn_qkv.bias"), vec![3 * d]));
                t.push((b("attn_output.weight"), vec![d, d]));
                t.push((b("attn_output.bias"), vec![d]));
                t.push((b("ffn_norm.weight"), vec![d]));
                t.push((b("ffn_norm.bias"), vec![d]));
                t.push((b("ffn_up.weight"), vec![ff, d]));
                t.push((b("ffn_up.bias"), vec![ff]));
                t.push((b("ffn_down.weight"), vec![d, ff]));
                t.push((b("ffn_down.bias"), vec![d]));
            } else {
                t.push((b("attn_q.weight"), vec![self.n_head * hd, d]));
                t.push((b("attn_k.weight"), vec![self.n_kv_head * hd, d]));
                t.push((b("attn_v.weight"), vec![self.n_kv_head * hd, d]));
                t.push((b("attn_output.weight"), vec![d, self.n_head * hd]));
                t.push((b("ffn_norm.weight"), vec![d]));
                t.push((b("ffn_gate.weight"), vec![ff, d]));
                t.push((b("ffn_up.weight"), vec![ff, d]));
                t.push((b("ffn_down.weight"), vec![d, ff]));
            }
        }
        t.push(("output_norm.weight".into(), vec![d]));
        if gpt2 {
            t.push(("output_norm.bias".into(), vec![d]));
        }
        if !self.tied_embeddings {
            t.push(("output.weight".into(), vec![self.vocab_size, d]));
        }
        t
    }
}

/// Problems with a checkpoint; each names the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Truncated, corrupt or not the format it claims to be.
    #[error("`{path}`: {message}")]
    Format { path: PathBuf, message: String },
    #[error("`{path}`: tensor `{tensor}`: {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
    #[error("`{path}`: unsupported {what}: {message}")]
    Unsupported { path: PathBuf, what: String, message: String },
}

/// Where a tensor's bytes are and how to turn them into f32.
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// Canonical name (see the module doc).
    pub name: String,
    /// The name in the file, for error messages.
    pub source_name: String,
    /// Canonical shape, row-major.
    pub shape: Vec<usize>,
    pub dtype: dtype::DType,
    /// Index into [`Checkpoint::files`].
    pub file: usize,
    /// Byte range of the data within that file.
    pub offset: usize,
    pub nbytes: usize,
    /// Stored as the transpose of `shape` (a 2-D `[in, out]` Conv1D weight).
    pub transpose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
}

/// A model checkpoint, validated: every tensor its architecture needs is present with the
/// right shape.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub config: ModelConfig,
    /// Canonical tensors in [`ModelConfig::expected_tensors`] order.
    pub tensors: Vec<TensorRef>,
    /// The files the tensors live in, memory-mapped.
    pub files: Vec<(PathBuf, memmap2::Mmap)>,
    /// GGUF only: the parsed header, for the embedded tokenizer and metadata.
    pub gguf: Option<gguf::GgufHeader>,
}

impl Checkpoint {
    /// Opens a `.gguf` file, or a Hugging Face directory (or its `config.json`).
    pub fn open(path: &Path) -> Result<Checkpoint, ModelError> {
        if path.is_dir() || path.file_name().is_some_and(|n| n == "config.json") { hf::open(path) } else { gguf::open(path) }
    }

    pub(crate) fn tensor(&self, name: &str) -> Option<&TensorRef> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor as f32, row-major in its canonical shape.
    pub fn load(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name).ok_or_else(|| ModelError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            message: "not in this checkpoint".into(),
        })?;
        let (file, map) = &self.files[t.file];
        let err = |message: String| ModelError::Tensor { path: file.clone(), tensor: t.source_name.clone(), message };
        let bytes = map
            .get(t.offset..t.offset + t.nbytes)
            .ok_or_else(|| err(format!("data [{}, {}) lies beyond the end of the file ({} bytes): truncated?", t.offset, t.offset + t.nbytes, map.len())))?;
        let n: usize = t.shape.iter().product();
        let mut v = dtype::decode(t.dtype, bytes, n).map_err(err)?;
        if t.transpose {
            v = transpose(&v, t.shape[1], t.shape[0]);
        }
        Ok(v)
    }

    /// Checks that every expected tensor is present with its shape; called by the readers.
    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        for (name, shape) in self.config.expected_tensors() {
            match self.tensor(&name) {
                None => {
                    return Err(ModelError::Tensor {
                        path: self.path.clone(),
                        tensor: name,
                        message: format!("missing (the {:?} architecture needs it)", self.config.arch),
                    });
                }
                Some(t) if t.shape != shape => {
                    return Err(ModelError::Tensor {
                        path: self.path.clone(),
                        tensor: t.source_name.clone(),
                        message: format!("has shape {:?}, expected {:?} from the model's config", t.shape, shape),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What a checkpoint format calls each [`ModelConfig`] field, so that an error about a
/// value names the key as it is written in the file (`num_hidden_layers`, `llama.block_count`).
pub(crate) struct ConfigKeys {
    pub vocab_size: String,
    pub n_layer: String,
    pub n_head: String,
    pub n_kv_head: String,
    pub d_model: String,
    pub d_ff: String,
    pub n_ctx: String,
    pub norm_eps: String,
    pub rope_theta: String,
}

/// Rejects configs that no checkpoint with `n_tensors` tensors could satisfy, and values the
/// exporter would index, divide or loop by, before [`ModelConfig::expected_tensors`] divides
/// by the head count or loops over the layers: every count at least one (a model with no
/// layer exports a decoder with no past to read the sequence length from), heads dividing
/// the width, key/value heads dividing the heads, and the epsilon and RoPE base finite and
/// positive (a NaN there turns every logit into NaN without an error anywhere).
pub(crate) fn check_config(c: &ModelConfig, n_tensors: usize, keys: &ConfigKeys) -> Result<(), String> {
    for (key, v, need) in [
        (&keys.vocab_size, c.vocab_size, "a model needs at least one token"),
        (&keys.n_layer, c.n_layer, "a model needs at least one layer"),
        (&keys.n_head, c.n_head, "a model needs at least one attention head"),
        (&keys.n_kv_head, c.n_kv_head, "a model needs at least one key/value head"),
        (&keys.d_model, c.d_model, "a model needs a hidden size of at least one"),
        (&keys.d_ff, c.d_ff, "a model needs a feed-forward size of at least one"),
        (&keys.n_ctx, c.n_ctx, "a model needs a context of at least one position"),
    ] {
        if v == 0 {
            return Err(format!("`{key}` is 0; {need}"));
        }
    }
    // Bounded so that products of dimensions cannot overflow; the layer count is bounded by
    // the tensors below, with a message that says so.
    for (key, v) in [
        (&keys.vocab_size, c.vocab_size),
        (&keys.n_head, c.n_head),
        (&keys.n_kv_head, c.n_kv_head),
        (&keys.d_model, c.d_model),
        (&keys.d_ff, c.d_ff),
        (&keys.n_ctx, c.n_ctx),
    ] {
        if v > u32::MAX as usize {
            return Err(format!("`{key}` is {v}: corrupt config?"));
        }
    }
    if c.n_layer > n_tensors {
        return Err(format!("`{}` claims {} layers but the checkpoint has only {n_tensors} tensors", keys.n_layer, c.n_layer));
    }
    if !c.d_model.is_multiple_of(c.n_head) {
        return Err(format!("`{}` ({}) does not divide `{}` ({}) into whole heads", keys.n_head, c.n_head, keys.d_model, c.d_model));
    }
    if !c.n_head.is_multiple_of(c.n_kv_head) {
        return Err(format!(
            "`{}` ({}) does not divide `{}` ({}); each key/value head must serve a whole group of heads",
            keys.n_kv_head, c.n_kv_head, keys.n_head, c.n_head
        ));
    }
    if c.arch == Arch::Llama && !c.head_dim().is_multiple_of(2) {
        return Err(format!("head size {} (`{}` / `{}`) is odd; rotary embeddings rotate pairs", c.head_dim(), keys.d_model, keys.n_head));
    }
    if !(c.norm_eps.is_finite() && c.norm_eps > 0.0) {
        return Err(format!("`{}` is {}; a normalisation epsilon must be a finite number greater than 0", keys.norm_eps, c.norm_eps));
    }
    if c.arch == Arch::Llama && !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        return Err(format!("`{}` is {}; a RoPE base must be a finite number greater than 0", keys.rope_theta, c.rope_theta));
    }
    Ok(())
}

/// `rows × cols` row-major → `cols × rows` row-major, in cache-sized tiles.
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; v.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = v[r * cols + c];
                }
            }
        }
    }
    out
}

/// Within one head of `hd` rows, the interleaved-layout row each half-layout row comes from:
/// the even rows, then the odd ones.
///
/// llama.cpp's converter (`permute` in `convert_hf_to_gguf.py`) reshapes a head's rows as
/// `[2, hd/2]` and swaps the two axes, so Hugging Face row `s·hd/2 + i` (`s` ∈ {0, 1}) becomes
/// GGUF row `2i + s`. The inverse takes GGUF rows `0, 2, 4, …` then `1, 3, 5, …`.
pub(crate) fn rope_row_order(hd: usize) -> Vec<usize> {
    (0..hd / 2).map(|i| 2 * i).chain((0..hd / 2).map(|i| 2 * i + 1)).collect()
}

/// The Q or K weight `v` (`[heads·hd, cols]`, row-major) of an interleaved-RoPE checkpoint with
/// its rows put back in the half layout, head by head (see [`rope_row_order`]). Attention
/// scores are unchanged when Q and K rows move together, so the model computes the same
/// function with half-layout RoPE.
pub(crate) fn interleaved_to_half_rows(v: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let hd = v.len() / (heads * cols).max(1);
    let order = rope_row_order(hd);
    let mut out = Vec::with_capacity(v.len());
    for h in 0..heads {
        for &r in &order {
            let src = (h * hd + r) * cols;
            out.extend_from_slice(&v[src..src + cols]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_go_even_then_odd() {
        assert_eq!(rope_row_order(8), vec![0, 2, 4, 6, 1, 3, 5, 7]);
    }

    /// The converter's permutation, written as it is in `convert_hf_to_gguf.py`
    /// (`w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`), undone exactly.
    #[test]
    fn interleaved_to_half_rows_inverts_the_converter() {
        let (heads, hd, cols) = (3, 6, 2);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..hd / 2 {
                    let (from, to) = (h * hd + s * hd / 2 + i, h * hd + 2 * i + s);
                    gguf[to * cols..(to + 1) * cols].copy_from_slice(&hf[from * cols..(from + 1) * cols]);
                }
            }
        }
        assert_ne!(gguf, hf, "the permutation moves rows");
        assert_eq!(interleaved_to_half_rows(&gguf, heads, cols), hf);
    }
}
