//! An entry from the remote cache (`/ac/<key>`), checked as `Remote::fetch` checks it
//! before fetching any blob (`remote::entry::parse_entry`).
//!
//! A fuzzer cannot forge a body whose stage key hashes to the key it is stored under, so
//! besides the input as it is (checked against a fixed key), the target also checks a copy
//! whose `manifest.key` is set to the digest of its own stage key, under that key: that
//! reaches the checks after the key checks (schemas, status, blob names).

use tr118::digest::Digest;
use tr118::key::StageKey;
use tr118::remote::entry::parse_entry;

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let _ = parse_entry(data, &Digest::of_bytes(b"tr118 fuzz"));
        let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
        let Some(sk) = body.pointer("/manifest/stage_key").cloned() else { return };
        let Ok(sk) = serde_json::from_value::<StageKey>(sk) else { return };
        let key = sk.digest();
        if let Some(m) = body.get_mut("manifest").and_then(|m| m.as_object_mut()) {
            m.insert("key".into(), serde_json::Value::String(key.to_hex()));
        }
        let bytes = serde_json::to_vec(&body).expect("a JSON value serialises");
        let _ = parse_entry(&bytes, &key);
    });
}
