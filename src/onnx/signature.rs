//! A model's declared inputs and outputs, read from an ONNX file without its weights.
//!
//! The file is mapped and decoded with messages that hold only `ModelProto.graph` and, of the
//! graph, its `input` and `output` value infos: protobuf decoders skip unknown fields by their
//! length, so nodes and initializers are stepped over, never copied. A multi-gigabyte model
//! with inline weights costs a page-cache scan of field headers, not its size in memory.

use std::fmt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{DimValue, ValueInfoProto};

/// One dimension of a declared tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigDim {
    Fixed(u64),
    /// Decided per run, under the model's name for it (`batch`, `sequence`).
    Named(String),
    /// Decided per run, with no name.
    Unnamed,
}

impl SigDim {
    pub(crate) fn is_dynamic(&self) -> bool {
        !matches!(self, SigDim::Fixed(_))
    }
}

impl fmt::Display for SigDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigDim::Fixed(n) => write!(f, "{n}"),
            SigDim::Named(s) => f.write_str(s),
            SigDim::Unnamed => f.write_str("?"),
        }
    }
}

/// A declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSig {
    pub name: String,
    /// ONNX `TensorProto.DataType` (1 float, 7 int64, 10 float16, …); `None` for a non-tensor.
    pub elem_type: Option<i32>,
    pub dims: Vec<SigDim>,
}

impl TensorSig {
    /// Whether any dimension is decided per run.
    pub(crate) fn is_dynamic(&self) -> bool {
        self.dims.iter().any(SigDim::is_dynamic)
    }
}

/// The graph's inputs and outputs, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read ONNX model `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not an ONNX model: {message}")]
    Decode { path: PathBuf, message: String },
}

#[derive(Clone, PartialEq, prost::Message)]
struct ModelIo {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphIo>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphIo {
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

fn tensor_sig(v: &ValueInfoProto) -> TensorSig {
    let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    let dims = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimValue::Value(n)) if *n >= 0 => SigDim::Fixed(*n as u64),
                    Some(DimValue::Param(p)) if !p.is_empty() => SigDim::Named(p.clone()),
                    _ => SigDim::Unnamed,
                })
                .collect()
        })
        .unwrap_or_default();
    TensorSig { name: v.name.clone().unwrap_or_default(), elem_type: tensor.and_then(|t| t.elem_type), dims }
}

/// Decodes the signature from a model's bytes.
pub(crate) fn from_bytes(bytes: &[u8], path: &Path) -> Result<Signature, SignatureError> {
    let decode = |message: String| SignatureError::Decode { path: path.to_path_buf(), message };
    let model = ModelIo::decode(bytes).map_err(|e| decode(e.to_string()))?;
    let graph = model.graph.ok_or_else(|| decode("it has no graph".into()))?;
    Ok(Signature { inputs: graph.input.iter().map(tensor_sig).collect(), outputs: graph.output.iter().map(tensor_sig).collect() })
}

/// Reads the signature of the ONNX file at `path`.
pub fn read(path: &Path) -> Result<Signature, SignatureError> {
    let io = |source| SignatureError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before returning; a file truncated meanwhile
    // by another process is the same hazard every mmap reader of model files accepts.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    from_bytes(&map, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{FLOAT, Graph, INT64, WriteOptions, dyn_dim, write_model};

    #[test]
    fn inputs_and_outputs_come_back_with_their_dimensions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let mut g = Graph::new("g");
        let ids = g.input("input_ids", INT64, &[dyn_dim("batch"), dyn_dim("sequence")]);
        let w = g.const_f32(vec![1.0; 6]);
        let cast = g.op("Cast", &[&ids], vec![crate::onnx::attr_i("to", 1)]);
        g.op_into("Mul", &[&cast, &w], &["y"], Vec::new());
        g.output("y", FLOAT, &[dyn_dim("batch"), crate::onnx::Dim::Fixed(6)]);
        let opts = WriteOptions { opset: 17, external_data: false, producer_version: "test".into(), metadata: Vec::new() };
        write_model(g, &path, &opts).unwrap();

        let sig = read(&path).unwrap();
        assert_eq!(sig.inputs.len(), 1);
        assert_eq!(sig.inputs[0].name, "input_ids");
        assert_eq!(sig.inputs[0].elem_type, Some(INT64));
        assert_eq!(sig.inputs[0].dims, vec![SigDim::Named("batch".into()), SigDim::Named("sequence".into())]);
        assert!(sig.inputs[0].is_dynamic());
        assert_eq!(sig.outputs[0].dims, vec![SigDim::Named("batch".into()), SigDim::Fixed(6)]);
    }

    #[test]
    fn a_file_that_is_not_onnx_is_named() {
        let err = from_bytes(b"\xff\xff\xff\xff not protobuf", Path::new("x.onnx")).unwrap_err();
        assert!(err.to_string().starts_with("`x.onnx` is not an ONNX model"), "{err}");
    }
}
