//! safetensors, read over a memory map.
//!
//! A file is an 8-byte little-endian header length `n`, `n` bytes of JSON, then the data.
//! The JSON maps each tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the end of the header), plus an optional `__metadata__` map of
//! strings. Only the float types are decoded; the header is parsed whatever the types, so
//! that a file holding, say, an integer buffer beside its weights still opens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;
use super::dtype::DType;

/// One tensor entry of the header.
#[derive(Debug, Clone, PartialEq)]
pub struct SafeTensor {
    pub name: String,
    /// The header's dtype string (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data within the file.
    pub offset: usize,
    pub nbytes: usize,
}

impl SafeTensor {
    /// The decodable element type, if this is one.
    pub(crate) fn decodable(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// A memory-mapped safetensors file and its parsed header.
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    pub map: memmap2::Mmap,
    /// By name.
    pub tensors: BTreeMap<String, SafeTensor>,
}

/// Raw header entry, as serde reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Bytes per element of each safetensors dtype (to check entry sizes even for types this
/// crate does not decode).
fn element_bytes(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

impl SafetensorsFile {
    pub(crate) fn open(path: &Path) -> Result<SafetensorsFile, ModelError> {
        let map = super::gguf::map_file(path)?;
        let (tensors, _metadata) = parse(&map).map_err(|message| ModelError::Format { path: path.to_path_buf(), message })?;
        Ok(SafetensorsFile { path: path.to_path_buf(), map, tensors })
    }
}

type Parsed = (BTreeMap<String, SafeTensor>, BTreeMap<String, String>);

/// Parses the header of a whole file's bytes and checks every entry against the file.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(format!("{} bytes is too short for a safetensors header: truncated?", bytes.len()));
    };
    let len = u64::from_le_bytes(*len);
    if len > rest.len() as u64 {
        return Err(format!("the header claims {len} bytes but only {} follow: truncated, or not a safetensors file", rest.len()));
    }
    let (json, data) = rest.split_at(len as usize);
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json).map_err(|e| format!("the header is not a JSON object of tensors: {e}"))?;

    let data_start = 8 + len as usize;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            metadata = serde_json::from_value(value).map_err(|e| format!("`__metadata__` is not a map of strings: {e}"))?;
            continue;
        }
        let e: RawEntry = serde_json::from_value(value).map_err(|e| format!("tensor `{name}`: bad header entry: {e}"))?;
        let [begin, end] = e.data_offsets;
        if begin > end || end > data.len() {
            return Err(format!("tensor `{name}` data [{begin}, {end}) lies outside the {} data bytes: truncated?", data.len()));
        }
        if let Some(size) = element_bytes(&e.dtype) {
            let n = e.shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
            if n != Some(end - begin) {
                return Err(format!("tensor `{name}` is {} {:?} but holds {} bytes", e.dtype, e.shape, end - begin));
            }
        }
        let t = SafeTensor { name: name.clone(), dtype: e.dtype, shape: e.shape, offset: data_start + begin, nbytes: end - begin };
        tensors.insert(name, t);
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend(header.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn entries_are_located_after_the_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"i":{"dtype":"I64","shape":[],"data_offsets":[12,20]}}"#;
        let bytes = file(h, &[0; 20]);
        let (t, meta) = parse(&bytes).unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        let start = 8 + h.len();
        assert_eq!((t["a"].offset, t["a"].nbytes, t["a"].decodable()), (start, 8, Some(DType::F32)));
        assert_eq!((t["b"].offset, t["b"].nbytes, t["b"].decodable()), (start + 8, 4, Some(DType::BF16)));
        assert_eq!(t["i"].decodable(), None);
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let cases = [
            (vec![1, 2, 3], "too short"),
            (u64::MAX.to_le_bytes().to_vec(), "claims"),
            (file("{not json", &[]), "not a JSON object"),
            (file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, &[0; 7]), "outside the 7 data bytes"),
            (file(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,0]}}"#, &[0; 8]), "outside"),
            (file(r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]), "holds 8 bytes"),
            (file(r#"{"a":{"dtype":"F16","shape":[3]}}"#, &[0; 8]), "`a`: bad header entry"),
        ];
        for (bytes, needle) in cases {
            let err = parse(&bytes).unwrap_err();
            assert!(err.contains(needle), "`{err}` does not mention `{needle}`");
        }
    }
}
