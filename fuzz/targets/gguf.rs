//! A GGUF checkpoint: header, metadata, tensor table, the model config lowered from the
//! metadata (`Checkpoint::open`), then every tensor dequantised, as an export reads them.

use tr118::model::Checkpoint;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let path = tr118_fuzz::write_fresh("gguf", "model.gguf", data);
        match Checkpoint::open(&path) {
            Ok(ck) => {
                let _ = ck.config.expected_tensors();
                for t in &ck.tensors {
                    let _ = ck.load(&t.name);
                }
            }
            Err(e) => drop(e.to_string()),
        }
    });
}
