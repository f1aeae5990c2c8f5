//! A `tokenizer.json` as the perplexity, sweep, calibration and logit-diff stages load it
//! (`tokenizer::load_tokenizer_json`), then one text encoded and decoded with it.

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| {
        let path = tr118_fuzz::write_fresh("tokenizer", "tokenizer.json", data);
        match tr118::tokenizer::load_tokenizer_json(&path) {
            Ok(tok) => {
                if let Ok(enc) = tok.encode("Hello world, 123 héllo!\n  tabs\tand <s> specials", false) {
                    let _ = tok.decode(enc.get_ids(), false);
                }
            }
            Err(e) => drop(e.to_string()),
        }
    });
}
