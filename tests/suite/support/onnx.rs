//! Tiny ONNX models written as raw protobuf bytes, for tests that need a model ONNX Runtime
//! can open without any exporter being involved.
//!
//! Field numbers from `onnx.proto` (all messages used here):
//!
//! | message              | fields                                                              |
//! |----------------------|---------------------------------------------------------------------|
//! | `ModelProto`         | ir_version 1, producer_name 2, graph 7, opset_import 8              |
//! | `OperatorSetIdProto` | domain 1, version 2                                                 |
//! | `GraphProto`         | node 1, name 2, initializer 5, input 11, output 12                  |
//! | `NodeProto`          | input 1, output 2, name 3, op_type 4, attribute 5                   |
//! | `AttributeProto`     | name 1, i 3, type 20 (INT = 2)                                      |
//! | `ValueInfoProto`     | name 1, type 2                                                      |
//! | `TypeProto`          | tensor_type 1 → `Tensor` { elem_type 1, shape 2 }                   |
//! | `TensorShapeProto`   | dim 1 → `Dimension` { dim_value 1, dim_param 2 }                    |
//! | `TensorProto`        | dims 1, data_type 2, name 8, raw_data 9                             |

/// `TensorProto.DataType`.
pub const FLOAT: i64 = 1;
pub const INT64: i64 = 7;

const VARINT: u8 = 0;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// An int64/int32/enum field (negative values take ten bytes, as protobuf does).
fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    tag(out, field, VARINT);
    varint(out, v as u64);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Fixed(i64),
    Named(&'a str),
}

/// `ValueInfoProto`: a typed graph input or output.
pub fn value_info(name: &str, elem_type: i64, dims: &[Dim<'_>]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(n) => int(&mut dim, 1, *n),
            Dim::Named(s) => string(&mut dim, 2, s),
        }
        bytes(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    int(&mut tensor, 1, elem_type);
    bytes(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes(&mut ty, 1, &tensor);
    let mut out = Vec::new();
    string(&mut out, 1, name);
    bytes(&mut out, 2, &ty);
    out
}

fn tensor(name: &str, dims: &[i64], data_type: i64, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &d in dims {
        int(&mut out, 1, d);
    }
    int(&mut out, 2, data_type);
    string(&mut out, 8, name);
    bytes(&mut out, 9, raw);
    out
}

/// An f32 initializer, little-endian raw data.
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> Vec<u8> {
    assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer `{name}`");
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, FLOAT, &raw)
}

/// An i64 initializer.
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> Vec<u8> {
    assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer `{name}`");
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, dims, INT64, &raw)
}

/// An INT attribute (`Cast.to`, `Concat.axis`, `ReduceSum.keepdims`).
pub fn attr_int(name: &str, v: i64) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, name);
    int(&mut out, 3, v);
    int(&mut out, 20, 2);
    out
}

/// A graph under construction; [`Graph::model`] serialises it as a `ModelProto`.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Vec<u8>>,
    initializers: Vec<Vec<u8>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn input(mut self, name: &str, elem_type: i64, dims: &[Dim<'_>]) -> Self {
        self.inputs.push(value_info(name, elem_type, dims));
        self
    }

    pub fn output(mut self, name: &str, elem_type: i64, dims: &[Dim<'_>]) -> Self {
        self.outputs.push(value_info(name, elem_type, dims));
        self
    }

    pub fn initializer(mut self, tensor: Vec<u8>) -> Self {
        self.initializers.push(tensor);
        self
    }

    pub fn node(mut self, op_type: &str, inputs: &[&str], outputs: &[&str], attributes: &[Vec<u8>]) -> Self {
        let mut out = Vec::new();
        for i in inputs {
            string(&mut out, 1, i);
        }
        for o in outputs {
            string(&mut out, 2, o);
        }
        string(&mut out, 3, &format!("{op_type}_{}", self.nodes.len()));
        string(&mut out, 4, op_type);
        for a in attributes {
            bytes(&mut out, 5, a);
        }
        self.nodes.push(out);
        self
    }

    /// IR version 8 with the default-domain opset `opset`.
    pub fn model(&self, opset: i64) -> Vec<u8> {
        let mut graph = Vec::new();
        for n in &self.nodes {
            bytes(&mut graph, 1, n);
        }
        string(&mut graph, 2, "test");
        for t in &self.initializers {
            bytes(&mut graph, 5, t);
        }
        for i in &self.inputs {
            bytes(&mut graph, 11, i);
        }
        for o in &self.outputs {
            bytes(&mut graph, 12, o);
        }
        let mut opset_id = Vec::new();
        string(&mut opset_id, 1, "");
        int(&mut opset_id, 2, opset);
        let mut model = Vec::new();
        int(&mut model, 1, 8);
        string(&mut model, 2, "tr118-tests");
        bytes(&mut model, 7, &graph);
        bytes(&mut model, 8, &opset_id);
        model
    }
}
