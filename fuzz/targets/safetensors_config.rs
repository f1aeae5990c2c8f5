//! A Hugging Face checkpoint directory: the input is `config.json`, then a separator line
//! `--8<--`, then `model.safetensors`; both are written to a fresh directory and opened with
//! `Checkpoint::open` (config lowered and validated, safetensors header checked, tensors
//! mapped to canonical names), then every tensor is decoded. The safetensors part is also
//! parsed on its own, so that its header is reached even when the config is rejected.

use tr118::model::{Checkpoint, safetensors};

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let parts = tr118_fuzz::split_parts(data, 2);
        let _ = safetensors::parse(parts[1]);
        let config = tr118_fuzz::write_fresh("hf", "config.json", parts[0]);
        let dir = config.parent().expect("a file in a directory");
        std::fs::write(dir.join("model.safetensors"), parts[1]).expect("write the weights");
        match Checkpoint::open(dir) {
            Ok(ck) => {
                for t in &ck.tensors {
                    let _ = ck.load(&t.name);
                }
            }
            Err(e) => drop(e.to_string()),
        }
    });
}
