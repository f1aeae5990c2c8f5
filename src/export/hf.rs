//! Checkpoint → Hugging Face directory: the `hf` variant, for backends that run the model in
//! PyTorch through `transformers` and must run the very weights the ONNX variants hold.
//!
//! The directory holds `config.json` (`GPT2LMHeadModel` or `LlamaForCausalLM`, see
//! [`crate::model::write`] for the fields), `model.safetensors` and, when the export writes
//! one, a copy of `tokenizer.json` with a `tokenizer_config.json` naming the class that runs
//! it, so that `AutoModelForCausalLM.from_pretrained(dir)` and
//! `AutoTokenizer.from_pretrained(dir)` load it offline.
//!
//! The tensors are the ones the ONNX graph is built from, read through the same
//! [`Checkpoint::load`]: a quantised GGUF's dequantised values, Q and K rows of an
//! interleaved-RoPE checkpoint permuted back to the half layout. They are stored as float32
//! whatever the export's precision: with `precision = "fp16"` each value is first rounded
//! through float16, as the ONNX files store it, so that PyTorch, computing in float32, runs
//! the very weights the ONNX `fp16` models compute on in float16.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ExportError, Precision};
use crate::model::Checkpoint;
use crate::model::dtype::DType;
use crate::model::write::{HfLayout, hf_architecture, write_hf_with};

/// The variant's name in a pipeline and in `export.json`.
pub(crate) const VARIANT: &str = "hf";

const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// One file of the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfFile {
    pub name: String,
    pub bytes: u64,
}

/// What `export.json` records about the directory, with the fields the ONNX variants share
/// named as theirs are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfReport {
    /// Always [`VARIANT`].
    pub variant: String,
    /// The export's precision: which values the float32 tensors hold (see the module doc).
    pub precision: Precision,
    /// The weights file.
    pub file: String,
    /// Every file of the directory, in the order the digest reads them.
    pub files: Vec<HfFile>,
    pub export_ms: f64,
    /// All the files together.
    pub file_bytes: u64,
    /// What `from_pretrained` instantiates.
    pub architecture: String,
    /// The element type of the stored tensors (`F32`).
    pub dtype: String,
    pub tensor_count: usize,
    pub parameters: u64,
    /// blake3 of the files, one after the other, in `files` order.
    pub digest: String,
}

/// Writes `ck` as a Hugging Face directory `dir`, with a copy of `tokenizer` if given.
pub(crate) fn export_hf(ck: &Checkpoint, precision: Precision, tokenizer: Option<&Path>, dir: &Path) -> Result<HfReport, ExportError> {
    let t0 = Instant::now();
    let c = &ck.config;
    let tensors = c.expected_tensors();
    let layout = HfLayout { dtype: DType::F32, shards: 1, gpt2_original_names: false };
    let round = precision == Precision::Fp16;
    let mut names = write_hf_with(dir, c, &tensors, layout, |name| {
        let mut v = ck.load(name).map_err(std::io::Error::other)?;
        if round {
            v.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
        }
        Ok(v)
    })
    .map_err(|e| ExportError::Write(format!("writing `{}`: {e}", dir.display())))?;
    if let Some(src) = tokenizer {
        std::fs::copy(src, dir.join("tokenizer.json")).map_err(|e| ExportError::Write(format!("copying `{}` into `{}`: {e}", src.display(), dir.display())))?;
        // Without a class named, `AutoTokenizer` picks the architecture's own (`GPT2Tokenizer`
        // in transformers 5), which rebuilds a tokenizer from the vocabulary rather than run
        // this file; the generic class runs `tokenizer.json` as the `tokenizers` crate does.
        std::fs::write(dir.join(TOKENIZER_CONFIG), r#"{ "tokenizer_class": "PreTrainedTokenizerFast" }"#)
            .map_err(|e| ExportError::Write(format!("writing `{}`: {e}", dir.join(TOKENIZER_CONFIG).display())))?;
        names.extend(["tokenizer.json".into(), TOKENIZER_CONFIG.into()]);
    }
    let export_ms = (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;

    let paths: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let digest = super::digest_files(&paths)?;
    let mut files = Vec::with_capacity(names.len());
    for (name, path) in names.into_iter().zip(&paths) {
        let bytes = std::fs::metadata(path).map_err(|e| ExportError::Write(format!("`{}`: {e}", path.display())))?.len();
        files.push(HfFile { name, bytes });
    }
    Ok(HfReport {
        variant: VARIANT.into(),
        precision,
        file: "model.safetensors".into(),
        file_bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        export_ms,
        architecture: hf_architecture(c.arch).into(),
        dtype: DType::F32.name().into(),
        tensor_count: tensors.len(),
        parameters: tensors.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum(),
        digest,
    })
}
