//! A directory listing object (`digest::Tree`), as the store reads it for a directory
//! output, and what is computed from it: its canonical bytes, digest, size and checks.

use tr118::digest::Tree;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        if let Ok(tree) = serde_json::from_slice::<Tree>(data) {
            let _ = tree.digest();
            let _ = tree.size();
        }
        let _ = Tree::parse(data);
    });
}
