//! An ONNX model: the signature reader (`onnx::signature::read`), the editable model the
//! quantizer loads (`onnx::edit::Model::load`), its external data references and initializer
//! values, and the MatMul/Gemm sites the quantizer would rewrite.

use tr118::onnx::{edit::Model, signature};

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let path = tr118_fuzz::write_fresh("onnx", "model.onnx", data);
        let _ = signature::read(&path).map_err(|e| e.to_string());
        match Model::load(&path) {
            Ok(model) => {
                let _ = model.external_files();
                let _ = model.digest();
                for t in &model.graph().initializer {
                    let _ = model.f32_values(t);
                }
                let _ = tr118::quant::graph::sites(&model);
            }
            Err(e) => drop(e.to_string()),
        }
    });
}
