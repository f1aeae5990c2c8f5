//! Writing ONNX: a small graph builder and a streaming writer.
//!
//! Initializers are produced lazily, one at a time, while the file is written, so that a
//! model is never held in memory twice. The writer lays the protobuf out by hand around
//! prost-encoded pieces: protobuf allows a message's fields in any order, so the graph's
//! nodes and inputs are written first and each initializer is appended after them; all
//! lengths are computed ahead from the initializers' sizes. With external data, tensor
//! bytes go to `<model>.data` (4 KiB aligned, so ONNX Runtime can map them) and the
//! TensorProto records location, offset and length. Initializers under 1 KiB stay inline:
//! shape constants must be readable while ONNX Runtime infers shapes, before it loads
//! external data.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;
use prost::encoding::{encode_varint, encoded_len_varint};

pub mod edit;
pub mod proto;
pub mod signature;

use proto::*;

pub const FLOAT: i32 = 1;
pub(crate) const INT32: i32 = 6;
pub const INT64: i32 = 7;
pub const BOOL: i32 = 9;
pub const FLOAT16: i32 = 10;

/// Makes an initializer's bytes when the writer reaches it.
pub(crate) type Producer<'a> = Box<dyn FnOnce() -> Result<Vec<u8>, String> + 'a>;

struct Initializer<'a> {
    name: String,
    dims: Vec<i64>,
    data_type: i32,
    nbytes: usize,
    data: Producer<'a>,
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Param(String),
}

pub(crate) fn dyn_dim(name: &str) -> Dim {
    Dim::Param(name.to_string())
}

pub struct Graph<'a> {
    name: String,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<Initializer<'a>>,
    counter: usize,
    /// Whether a node is in ONNX Runtime's `com.microsoft` domain ([`Graph::op_ms`]): the model
    /// then imports that domain too.
    uses_ms: bool,
}

/// ONNX Runtime's contrib operators (GroupQueryAttention, SkipSimplifiedLayerNormalization…).
pub(crate) const MS_DOMAIN: &str = "com.microsoft";

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => DimValue::Value(*v),
                Dim::Param(p) => DimValue::Param(p.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: Some(elem_type), shape: Some(TensorShapeProto { dim }) }) }),
    }
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), i: Some(v), r#type: Some(2), ..Default::default() }
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: Some(name.into()), f: Some(v), r#type: Some(1), ..Default::default() }
}

pub(crate) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: Some(name.into()), ints: v.to_vec(), r#type: Some(7), ..Default::default() }
}

impl<'a> Graph<'a> {
    pub fn new(name: &str) -> Self {
        Graph { name: name.into(), nodes: Vec::new(), inputs: Vec::new(), outputs: Vec::new(), inits: Vec::new(), counter: 0, uses_ms: false }
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem_type, dims));
    }

    /// A new value name for an output named with [`Self::op_into`] or [`Self::op_ms`].
    pub(crate) fn name(&mut self, hint: &str) -> String {
        self.fresh(hint)
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node with one output, named after the op; returns the output's name.
    pub(crate) fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.op_into(op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with the given output names.
    pub fn op_into(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) {
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs,
            domain: None,
        });
    }

    /// Adds a node of ONNX Runtime's `com.microsoft` domain with the given output names (an
    /// empty name leaves an optional output out).
    pub(crate) fn op_ms(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) {
        self.op_into(op, inputs, outputs, attrs);
        self.nodes.last_mut().expect("just added").domain = Some(MS_DOMAIN.into());
        self.uses_ms = true;
    }

    /// Adds a node with `n` outputs; returns their names.
    pub(crate) fn op_n(&mut self, op: &str, inputs: &[&str], n: usize, attrs: Vec<AttributeProto>) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(op)).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.op_into(op, inputs, &refs, attrs);
        outs
    }

    /// An initializer whose bytes are made when the model is written.
    pub fn init(&mut self, name: &str, dims: &[i64], data_type: i32, data: Producer<'a>) -> String {
        let elem = match data_type {
            FLOAT | 6 => 4,
            INT64 => 8,
            BOOL => 1,
            FLOAT16 => 2,
            _ => 4,
        };
        let nbytes = dims.iter().product::<i64>().max(0) as usize * elem;
        self.inits.push(Initializer { name: name.into(), dims: dims.to_vec(), data_type, nbytes, data });
        name.to_string()
    }

    pub(crate) fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(&name, &[values.len() as i64], INT64, Box::new(move || Ok(bytes)))
    }

    pub(crate) fn scalar_i64(&mut self, v: i64) -> String {
        let name = self.fresh("scalar_i64");
        self.init(&name, &[], INT64, Box::new(move || Ok(v.to_le_bytes().to_vec())))
    }

    pub(crate) fn scalar_f32(&mut self, v: f32) -> String {
        let name = self.fresh("scalar_f32");
        self.init(&name, &[], FLOAT, Box::new(move || Ok(v.to_le_bytes().to_vec())))
    }

    pub(crate) fn scalar_f16(&mut self, v: f32) -> String {
        let name = self.fresh("scalar_f16");
        self.init(&name, &[], FLOAT16, Box::new(move || Ok(half::f16::from_f32(v).to_le_bytes().to_vec())))
    }

    pub(crate) fn const_f32(&mut self, values: Vec<f32>) -> String {
        let name = self.fresh("const_f32");
        let n = values.len() as i64;
        self.init(&name, &[n], FLOAT, Box::new(move || Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())))
    }
}

/// How to write a model.
pub struct WriteOptions {
    pub opset: i64,
    /// Put tensor bytes in `<file>.data` instead of the protobuf.
    pub external_data: bool,
    pub producer_version: String,
    pub metadata: Vec<(String, String)>,
}

/// What was written, for the export manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteSummary {
    pub onnx_bytes: u64,
    pub data_bytes: u64,
    pub initializer_count: usize,
    pub initializer_bytes: u64,
    pub external_data: bool,
    pub node_count: usize,
}

/// Protobuf's 2 GiB message limit: beyond it, weights must go to external data.
pub(crate) const PROTOBUF_LIMIT: u64 = 2 * 1024 * 1024 * 1024 - 1;

/// Total bytes of the graph's initializers.
pub(crate) fn initializer_bytes(g: &Graph<'_>) -> u64 {
    g.inits.iter().map(|i| i.nbytes as u64).sum()
}

const ALIGN: u64 = 4096;

/// Tensors at least this large go to the external data file when there is one.
const EXTERNAL_MIN_BYTES: usize = 1024;

fn is_external(opts: &WriteOptions, nbytes: usize) -> bool {
    opts.external_data && nbytes >= EXTERNAL_MIN_BYTES
}

/// Writes `g` to `path` (and `<path>.data` with external data).
pub fn write_model(g: Graph<'_>, path: &Path, opts: &WriteOptions) -> Result<WriteSummary, String> {
    let io = |e: std::io::Error| format!("writing `{}`: {e}", path.display());
    let data_name = format!("{}.data", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let head = ModelProto {
        ir_version: Some(8),
        opset_import: std::iter::once(OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) })
            .chain(g.uses_ms.then(|| OperatorSetIdProto { domain: Some(MS_DOMAIN.into()), version: Some(1) }))
            .collect(),
        producer_name: Some("tr118".into()),
        producer_version: Some(opts.producer_version.clone()),
        doc_string: None,
        graph: None,
        metadata_props: opts.metadata.iter().map(|(k, v)| StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) }).collect(),
    }
    .encode_to_vec();
    let node_count = g.nodes.len();
    let body = GraphProto { node: g.nodes, name: Some(g.name), initializer: Vec::new(), input: g.inputs, output: g.outputs }.encode_to_vec();

    // Each initializer's TensorProto without its raw bytes, and its full encoded length.
    let mut offset = 0u64;
    let mut metas = Vec::with_capacity(g.inits.len());
    for init in &g.inits {
        let mut t = TensorProto { dims: init.dims.clone(), data_type: Some(init.data_type), name: Some(init.name.clone()), ..Default::default() };
        let mut len = 0usize;
        if is_external(opts, init.nbytes) {
            let start = offset.div_ceil(ALIGN) * ALIGN;
            t.external_data = vec![
                StringStringEntryProto { key: Some("location".into()), value: Some(data_name.clone()) },
                StringStringEntryProto { key: Some("offset".into()), value: Some(start.to_string()) },
                StringStringEntryProto { key: Some("length".into()), value: Some(init.nbytes.to_string()) },
            ];
            t.data_location = Some(1);
            offset = start + init.nbytes as u64;
        } else {
            len += 1 + encoded_len_varint(init.nbytes as u64) + init.nbytes;
        }
        let bytes = t.encode_to_vec();
        len += bytes.len();
        metas.push((bytes, len));
    }
    let graph_len: usize = body.len() + metas.iter().map(|(_, len)| 1 + encoded_len_varint(*len as u64) + len).sum::<usize>();
    if !opts.external_data && graph_len as u64 > PROTOBUF_LIMIT {
        return Err(format!("the model is {graph_len} bytes, over protobuf's 2 GiB limit: write it with external data"));
    }

    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    let mut data = if opts.external_data { Some(BufWriter::with_capacity(1 << 20, File::create(path.with_file_name(&data_name)).map_err(io)?)) } else { None };
    let mut buf = Vec::with_capacity(16);
    out.write_all(&head).map_err(io)?;
    buf.clear();
    encode_varint(((GRAPH_FIELD << 3) | 2) as u64, &mut buf);
    encode_varint(graph_len as u64, &mut buf);
    out.write_all(&buf).map_err(io)?;
    out.write_all(&body).map_err(io)?;
    let (mut initializer_bytes, mut data_pos) = (0u64, 0u64);
    let count = g.inits.len();
    for (init, (meta, len)) in g.inits.into_iter().zip(metas) {
        let bytes = (init.data)()?;
        if bytes.len() != init.nbytes {
            return Err(format!("initializer `{}` produced {} bytes, expected {}", init.name, bytes.len(), init.nbytes));
        }
        initializer_bytes += bytes.len() as u64;
        buf.clear();
        encode_varint(((INITIALIZER_FIELD << 3) | 2) as u64, &mut buf);
        encode_varint(len as u64, &mut buf);
        out.write_all(&buf).map_err(io)?;
        out.write_all(&meta).map_err(io)?;
        match data.as_mut().filter(|_| is_external(opts, init.nbytes)) {
            Some(d) => {
                let start = data_pos.div_ceil(ALIGN) * ALIGN;
                d.write_all(&vec![0u8; (start - data_pos) as usize]).map_err(io)?;
                d.write_all(&bytes).map_err(io)?;
                data_pos = start + bytes.len() as u64;
            }
            None => {
                buf.clear();
                encode_varint((9 << 3 | 2) as u64, &mut buf);
                encode_varint(bytes.len() as u64, &mut buf);
                out.write_all(&buf).map_err(io)?;
                out.write_all(&bytes).map_err(io)?;
            }
        }
    }
    out.flush().map_err(io)?;
    if let Some(d) = &mut data {
        d.flush().map_err(io)?;
    }
    let onnx_bytes = std::fs::metadata(path).map_err(io)?.len();
    Ok(WriteSummary { onnx_bytes, data_bytes: data_pos, initializer_count: count, initializer_bytes, external_data: opts.external_data, node_count })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed file decodes, through prost, to the same model built in memory.
    #[test]
    fn streamed_file_equals_the_in_memory_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let mut g = Graph::new("g");
        let x = g.input("x", FLOAT, &[dyn_dim("n"), Dim::Fixed(2)]);
        let w = g.init("w", &[2, 2], FLOAT, Box::new(|| Ok([1f32, 2., 3., 4.].iter().flat_map(|v| v.to_le_bytes()).collect())));
        let y = g.op("MatMul", &[&x, &w], vec![]);
        g.output(&y, FLOAT, &[dyn_dim("n"), Dim::Fixed(2)]);
        let opts = WriteOptions { opset: 17, external_data: false, producer_version: "t".into(), metadata: vec![] };
        let summary = write_model(g, &path, &opts).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        assert_eq!(graph.node[0].op_type.as_deref(), Some("MatMul"));
        assert_eq!(graph.initializer[0].dims, vec![2, 2]);
        assert_eq!(graph.initializer[0].raw_data.as_ref().unwrap().len(), 16);
        assert_eq!(summary.initializer_bytes, 16);
        assert_eq!(summary.onnx_bytes as usize, bytes.len());
    }

    #[test]
    fn external_data_is_aligned_and_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let mut g = Graph::new("g");
        let x = g.input("x", FLOAT, &[Dim::Fixed(300)]);
        let a = g.init("a", &[300], FLOAT, Box::new(|| Ok(vec![1u8; 1200])));
        let b = g.init("b", &[300], FLOAT, Box::new(|| Ok(vec![2u8; 1200])));
        let c = g.init("c", &[3], FLOAT, Box::new(|| Ok(vec![3u8; 12])));
        let s = g.op("Add", &[&x, &a], vec![]);
        let y = g.op("Add", &[&s, &b], vec![]);
        let z = g.op("Add", &[&y, &c], vec![]);
        g.output(&z, FLOAT, &[Dim::Fixed(300)]);
        let opts = WriteOptions { opset: 17, external_data: true, producer_version: "t".into(), metadata: vec![] };
        write_model(g, &path, &opts).unwrap();
        let m = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let inits = m.graph.unwrap().initializer;
        let offset = |t: &TensorProto| t.external_data.iter().find(|e| e.key.as_deref() == Some("offset")).unwrap().value.clone().unwrap();
        assert_eq!(offset(&inits[0]), "0");
        assert_eq!(offset(&inits[1]), "4096");
        let data = std::fs::read(dir.path().join("m.onnx.data")).unwrap();
        assert_eq!(data.len(), 4096 + 1200);
        assert_eq!(&data[4096..], &[2u8; 1200]);
        // Small tensors stay inline, where shape inference can read them.
        assert!(inits[2].external_data.is_empty());
        assert_eq!(inits[2].raw_data.as_deref(), Some(&[3u8; 12][..]));
    }
}
