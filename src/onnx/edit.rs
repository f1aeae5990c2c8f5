//! Reading a whole ONNX model back, changing it, and writing it again.
//!
//! The exporter streams models out ([`super::write_model`]); calibration and quantization
//! need the opposite: a model read into [`ModelProto`] (the subset in [`super::proto`]),
//! its initializers' bytes (inline or in external data), and a way to write a changed
//! model.
//!
//! ## Nothing is dropped silently
//!
//! prost discards fields a message type does not declare, so decoding a model written by
//! another tool and encoding it again could lose parts of it (typed `float_data`, subgraphs,
//! sparse initializers). [`Model::load`] therefore re-encodes what it decoded and refuses
//! the model when that is shorter than the file: every byte of a model tr118 exported
//! round-trips, and a model that does not is an error, not a quietly damaged copy.
//!
//! ## External data
//!
//! A `TensorProto` with `data_location = EXTERNAL` names a `location` relative to the model's
//! directory, an `offset` and a `length`. Locations that are absolute or climb out of the
//! directory (`..`) are refused. Two ways to write:
//!
//! - [`save_sharing_data`]: a model whose tensors stay where they are, written to another
//!   directory with each external file hard-linked beside it (copied where a link is not
//!   possible). Calibration uses it for its copy of the model with extra outputs: no weight
//!   is rewritten, and every location still resolves.
//! - [`save`]: a self-contained model. Tensors of at least 1 KiB go to `<file>.data`
//!   (4 KiB aligned, as the exporter lays it out) when external data is asked for, the rest
//!   stay inline; tensors read from the source's external data are copied one at a time, so
//!   a large model is never held in memory twice.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message;

use super::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use super::{FLOAT, FLOAT16};

/// ONNX `DataType` codes beyond the ones the exporter writes.
pub(crate) const UINT8: i32 = 2;
pub(crate) const INT8: i32 = 3;

/// Tensors at least this large go to the external data file when there is one (the
/// exporter's rule: smaller ones must stay readable during shape inference).
const EXTERNAL_MIN_BYTES: usize = 1024;
const ALIGN: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("`{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not an ONNX model: {message}")]
    Decode { path: PathBuf, message: String },
    #[error(
        "`{path}` holds fields tr118's ONNX subset does not read ({lost} of {total} bytes would be lost by rewriting it); \
         export the model with tr118's `export` kind"
    )]
    Unsupported { path: PathBuf, lost: usize, total: usize },
    #[error("`{path}` has no graph")]
    NoGraph { path: PathBuf },
    #[error("`{path}`: tensor `{tensor}`: {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },
}

/// A model read from a file, with the directory its external data is relative to.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    pub path: PathBuf,
}

impl Model {
    /// Reads and decodes `path`, refusing a model that would not survive being rewritten.
    pub fn load(path: &Path) -> Result<Model, EditError> {
        let bytes = std::fs::read(path).map_err(|source| EditError::Io { path: path.to_path_buf(), source })?;
        let proto = ModelProto::decode(bytes.as_slice()).map_err(|e| EditError::Decode { path: path.to_path_buf(), message: e.to_string() })?;
        let kept = proto.encoded_len();
        if kept < bytes.len() {
            return Err(EditError::Unsupported { path: path.to_path_buf(), lost: bytes.len() - kept, total: bytes.len() });
        }
        if proto.graph.is_none() {
            return Err(EditError::NoGraph { path: path.to_path_buf() });
        }
        Ok(Model { proto, path: path.to_path_buf() })
    }

    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("load checks the graph")
    }

    /// The directory external data locations are relative to.
    pub(crate) fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub(crate) fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.graph().initializer.iter().find(|t| t.name.as_deref() == Some(name))
    }

    fn tensor_error(&self, t: &TensorProto, message: String) -> EditError {
        EditError::Tensor { path: self.path.clone(), tensor: t.name.clone().unwrap_or_default(), message }
    }

    /// The raw little-endian bytes of `t`, from the file or its external data.
    pub(crate) fn tensor_bytes(&self, t: &TensorProto) -> Result<Vec<u8>, EditError> {
        match external_ref(t).map_err(|m| self.tensor_error(t, m))? {
            None => match &t.raw_data {
                Some(b) => Ok(b.clone()),
                None if element_count(t) == 0 => Ok(Vec::new()),
                None => Err(self.tensor_error(t, "has no `raw_data` (typed data fields are not read)".into())),
            },
            Some(ext) => {
                let file = self.dir().join(&ext.location);
                let io = |source| EditError::Io { path: file.clone(), source };
                let mut f = File::open(&file).map_err(io)?;
                let size = f.metadata().map_err(io)?.len();
                let length = ext.length.unwrap_or(size.saturating_sub(ext.offset));
                // Checked before the buffer is allocated: a corrupt length must not size it.
                if ext.offset.checked_add(length).is_none_or(|end| end > size) {
                    return Err(
                        self.tensor_error(t, format!("external data [{}, +{length}) lies beyond the end of `{}` ({size} bytes)", ext.offset, ext.location))
                    );
                }
                f.seek(SeekFrom::Start(ext.offset)).map_err(io)?;
                let mut buf = vec![0u8; length as usize];
                f.read_exact(&mut buf).map_err(io)?;
                Ok(buf)
            }
        }
    }

    /// The values of a float32 or float16 tensor as f32.
    pub fn f32_values(&self, t: &TensorProto) -> Result<Vec<f32>, EditError> {
        let bytes = self.tensor_bytes(t)?;
        let n = element_count(t);
        let values: Vec<f32> = match t.data_type {
            Some(FLOAT) => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Some(FLOAT16) => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(self.tensor_error(t, format!("has data type {}, not float32 or float16", other.unwrap_or(0)))),
        };
        if values.len() != n {
            return Err(self.tensor_error(t, format!("has {} values for dims {:?}", values.len(), t.dims)));
        }
        Ok(values)
    }

    /// The external data files the model's initializers live in.
    pub fn external_files(&self) -> Result<BTreeSet<String>, EditError> {
        let mut out = BTreeSet::new();
        for t in &self.graph().initializer {
            if let Some(ext) = external_ref(t).map_err(|m| self.tensor_error(t, m))? {
                out.insert(ext.location);
            }
        }
        Ok(out)
    }

    /// blake3 of the model file followed by its external data files (sorted by name): what
    /// identifies the model a calibration was made on.
    pub fn digest(&self) -> Result<String, EditError> {
        let mut hasher = blake3::Hasher::new();
        let mut files = vec![self.path.clone()];
        files.extend(self.external_files()?.into_iter().map(|l| self.dir().join(l)));
        for file in files {
            let f = File::open(&file).map_err(|source| EditError::Io { path: file.clone(), source })?;
            hasher.update_reader(std::io::BufReader::with_capacity(1 << 20, f)).map_err(|source| EditError::Io { path: file.clone(), source })?;
        }
        Ok(hasher.finalize().to_hex().to_string())
    }
}

/// Elements of a tensor: the product of its dims (1 for a scalar); `usize::MAX` when the
/// product overflows, which no tensor's data can match.
pub(crate) fn element_count(t: &TensorProto) -> usize {
    t.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(0) as usize)).unwrap_or(usize::MAX)
}

#[derive(Debug)]
struct ExternalRef {
    location: String,
    offset: u64,
    length: Option<u64>,
}

/// Where an external tensor's bytes are; `None` for an inline tensor.
fn external_ref(t: &TensorProto) -> Result<Option<ExternalRef>, String> {
    if t.data_location != Some(1) {
        return Ok(None);
    }
    let get = |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
    let location = get("location").ok_or("is external but names no `location`")?;
    let rel = Path::new(&location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("external data location `{location}` is not a path inside the model's directory"));
    }
    let number = |k: &str| -> Result<Option<u64>, String> {
        get(k).map(|v| v.parse::<u64>().map_err(|_| format!("external data `{k}` is `{v}`, not a byte count"))).transpose()
    };
    Ok(Some(ExternalRef { location, offset: number("offset")?.unwrap_or(0), length: number("length")? }))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), EditError> {
    std::fs::write(path, bytes).map_err(|source| EditError::Io { path: path.to_path_buf(), source })
}

/// Writes `proto` to `dest` with its external data left where `source_dir` has it: each
/// external file is hard-linked (or, across file systems, copied) into `dest`'s directory
/// under the same name.
pub(crate) fn save_sharing_data(proto: &ModelProto, dest: &Path, source: &Model) -> Result<(), EditError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    for location in source.external_files()? {
        let (from, to) = (source.dir().join(&location), dir.join(&location));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| EditError::Io { path: parent.to_path_buf(), source: e })?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| EditError::Io { path: to.clone(), source: e })?;
        }
    }
    write_file(dest, &proto.encode_to_vec())
}

/// What [`save`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveSummary {
    pub onnx_bytes: u64,
    /// 0 without external data.
    pub data_bytes: u64,
    pub external_data: bool,
}

/// Writes `proto` as a self-contained model at `dest` (and `<dest>.data` with
/// `external_data`). Initializers with inline `raw_data` are written from memory; those that
/// still point at `source`'s external data are read from there one at a time.
pub fn save(mut proto: ModelProto, dest: &Path, source: &Model, external_data: bool) -> Result<SaveSummary, EditError> {
    let data_name = format!("{}.data", dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let data_path = dest.with_file_name(&data_name);
    let mut data = if external_data {
        let f = File::create(&data_path).map_err(|e| EditError::Io { path: data_path.clone(), source: e })?;
        Some(BufWriter::with_capacity(1 << 20, f))
    } else {
        None
    };
    let mut pos = 0u64;
    let graph = proto.graph.as_mut().ok_or_else(|| EditError::NoGraph { path: dest.to_path_buf() })?;
    for t in &mut graph.initializer {
        let bytes = match t.raw_data.take() {
            Some(b) if t.data_location != Some(1) => b,
            _ => source.tensor_bytes(t)?,
        };
        t.external_data.clear();
        t.data_location = None;
        match data.as_mut().filter(|_| bytes.len() >= EXTERNAL_MIN_BYTES) {
            Some(d) => {
                let start = pos.div_ceil(ALIGN) * ALIGN;
                let io = |e| EditError::Io { path: data_path.clone(), source: e };
                d.write_all(&vec![0u8; (start - pos) as usize]).map_err(io)?;
                d.write_all(&bytes).map_err(io)?;
                pos = start + bytes.len() as u64;
                t.external_data = vec![
                    StringStringEntryProto { key: Some("location".into()), value: Some(data_name.clone()) },
                    StringStringEntryProto { key: Some("offset".into()), value: Some(start.to_string()) },
                    StringStringEntryProto { key: Some("length".into()), value: Some(bytes.len().to_string()) },
                ];
                t.data_location = Some(1);
            }
            None => t.raw_data = Some(bytes),
        }
    }
    if let Some(mut d) = data {
        d.flush().map_err(|e| EditError::Io { path: data_path.clone(), source: e })?;
    }
    let encoded = proto.encode_to_vec();
    if encoded.len() as u64 > super::PROTOBUF_LIMIT {
        return Err(EditError::Tensor {
            path: dest.to_path_buf(),
            tensor: String::new(),
            message: "the model is over protobuf's 2 GiB limit: write it with external data".into(),
        });
    }
    write_file(dest, &encoded)?;
    Ok(SaveSummary { onnx_bytes: encoded.len() as u64, data_bytes: pos, external_data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{Dim, Graph, WriteOptions, write_model};

    fn exported(dir: &Path, external: bool) -> PathBuf {
        let path = dir.join("m.onnx");
        let mut g = Graph::new("g");
        let x = g.input("x", FLOAT, &[Dim::Fixed(300)]);
        let big: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let a = g.init("a", &[300], FLOAT, Box::new(move || Ok(big.iter().flat_map(|v| v.to_le_bytes()).collect())));
        let c = g.init("c", &[2], FLOAT, Box::new(|| Ok([1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect())));
        let y = g.op("Add", &[&x, &a], vec![]);
        let z = g.op("Mul", &[&y, &c], vec![]);
        g.output(&z, FLOAT, &[Dim::Fixed(300)]);
        let opts = WriteOptions { opset: 17, external_data: external, producer_version: "t".into(), metadata: vec![] };
        write_model(g, &path, &opts).unwrap();
        path
    }

    #[test]
    fn external_and_inline_tensors_read_back_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        for external in [false, true] {
            let sub = dir.path().join(external.to_string());
            std::fs::create_dir_all(&sub).unwrap();
            let m = Model::load(&exported(&sub, external)).unwrap();
            let a = m.f32_values(m.initializer("a").unwrap()).unwrap();
            assert_eq!(a[299], 299.0);
            assert_eq!(m.f32_values(m.initializer("c").unwrap()).unwrap(), vec![1.5, -2.0]);
            assert_eq!(m.external_files().unwrap().len(), usize::from(external));
        }
    }

    #[test]
    fn saved_models_are_self_contained_and_shared_ones_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::load(&exported(dir.path(), true)).unwrap();
        let out = dir.path().join("copy");
        std::fs::create_dir_all(&out).unwrap();
        save_sharing_data(&m.proto, &out.join("m.onnx"), &m).unwrap();
        let shared = Model::load(&out.join("m.onnx")).unwrap();
        assert_eq!(shared.f32_values(shared.initializer("a").unwrap()).unwrap()[7], 7.0);

        let own = dir.path().join("own");
        std::fs::create_dir_all(&own).unwrap();
        let summary = save(m.proto.clone(), &own.join("q.onnx"), &m, true).unwrap();
        assert_eq!(summary.data_bytes, 1200);
        let back = Model::load(&own.join("q.onnx")).unwrap();
        assert_eq!(back.external_files().unwrap().into_iter().collect::<Vec<_>>(), vec!["q.onnx.data".to_string()]);
        assert_eq!(back.f32_values(back.initializer("a").unwrap()).unwrap()[299], 299.0);
        assert!(back.initializer("c").unwrap().raw_data.is_some(), "small tensors stay inline");
    }

    #[test]
    fn a_model_with_fields_outside_the_subset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = exported(dir.path(), false);
        let mut bytes = std::fs::read(&path).unwrap();
        // ModelProto field 5 (model_version, int64) is not in the subset.
        bytes.extend([5 << 3, 7]);
        std::fs::write(&path, bytes).unwrap();
        let e = Model::load(&path).unwrap_err().to_string();
        assert!(e.contains("would be lost"), "{e}");
    }

    #[test]
    fn locations_outside_the_model_directory_are_refused() {
        let t = TensorProto {
            name: Some("w".into()),
            data_location: Some(1),
            external_data: vec![StringStringEntryProto { key: Some("location".into()), value: Some("../secret".into()) }],
            ..Default::default()
        };
        assert!(external_ref(&t).unwrap_err().contains("not a path inside"));
    }
}
