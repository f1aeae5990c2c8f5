//! An action manifest as the store reads it from `cache/actions/<key>.json`: the full
//! `Manifest` and the `ActionResult` that planning reads, then what is computed from a
//! manifest that parsed (its stage key's digest, why a key moved, serialising it back).

use tr118::store::manifest::{ActionResult, Manifest};

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let _ = serde_json::from_slice::<ActionResult>(data);
        if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
            let _ = m.stage_key.digest();
            let reasons = m.stage_key.compare(&m.stage_key);
            assert!(reasons.is_empty(), "a stage key differs from itself: {reasons:?}");
            let _ = serde_json::to_vec(&m).expect("a parsed manifest serialises");
        }
    });
}
