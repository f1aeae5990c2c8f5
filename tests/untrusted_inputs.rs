//! Bytes tr118 did not write — checkpoints, tokenizers, cache objects — are parsed into
//! errors that name the file and the field, never into a panic or a value that breaks a
//! later stage. Each test drives the real binary on a throwaway workspace where the path
//! from file to error goes through it; the crash inputs the fuzzers found (`fuzz/`,
//! `tests/fixtures/fuzz-crashes/<target>/`) are replayed through the library code each
//! fuzz target drives.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::workspace::{Run, Workspace};
use tr118::model::dtype::DType;
use tr118::model::gguf::MetaValue;
use tr118::model::write::{random_tensors, write_gguf, write_hf};
use tr118::model::{Arch, ModelConfig, RopeLayout};

/// 4 query heads over 2 key/value heads of size 4; two layers.
fn llama() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: 16,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        d_model: 16,
        d_ff: 24,
        n_ctx: 32,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: RopeLayout::Interleaved,
        tied_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// A failed run that reported `needle` as an error, and did not panic.
#[track_caller]
fn fails_with(run: &Run, needle: &str) {
    assert_ne!(run.code, Some(0), "`tr118 {}` succeeded\n{run}", run.args);
    assert!(!run.stderr.contains("panicked"), "`tr118 {}` panicked\n{run}", run.args);
    run.stderr_has(needle);
}

/// `tr118 make` on a pipeline of one export of `checkpoint`.
fn export(ws: &Workspace, checkpoint: &str) -> Run {
    ws.pipeline(&format!(
        "[stages.export]\nkind = \"export\"\ndeps = {{ checkpoint = \"{checkpoint}\" }}\nvariants = [\"prefill\", \"decoder\"]\ntokenizer = false\n"
    ));
    ws.tr(&["make"])
}

#[test]
fn gguf_with_no_layers_is_an_error_naming_the_key() {
    let ws = Workspace::new("tr118-untrusted-");
    let cfg = llama();
    write_gguf(&ws.path("model.gguf"), &cfg, &random_tensors(&cfg, 1), |_| DType::F32, &[("llama.block_count", MetaValue::U32(0))]).unwrap();
    let run = export(&ws, "model.gguf");
    fails_with(&run, "model.gguf`: `llama.block_count` is 0; a model needs at least one layer");
}

#[test]
fn gguf_config_values_an_index_depends_on_are_checked_at_load() {
    let cases: Vec<(&str, MetaValue, &str)> = vec![
        ("llama.attention.head_count", MetaValue::U32(0), "`llama.attention.head_count` is 0; a model needs at least one attention head"),
        ("llama.attention.head_count_kv", MetaValue::U32(0), "`llama.attention.head_count_kv` is 0"),
        ("llama.attention.head_count_kv", MetaValue::U32(3), "`llama.attention.head_count_kv` (3) does not divide `llama.attention.head_count` (4)"),
        ("llama.embedding_length", MetaValue::U32(18), "`llama.attention.head_count` (4) does not divide `llama.embedding_length` (18)"),
        ("llama.vocab_size", MetaValue::U32(0), "`llama.vocab_size` is 0; a model needs at least one token"),
        ("llama.context_length", MetaValue::U32(0), "`llama.context_length` is 0"),
        ("llama.feed_forward_length", MetaValue::U32(0), "`llama.feed_forward_length` is 0"),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(f32::NAN), "`llama.attention.layer_norm_rms_epsilon` is NaN; a normalisation epsilon must be a finite number greater than 0"),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F64(-1e-5), "`llama.attention.layer_norm_rms_epsilon` is -0.00001"),
        ("llama.rope.freq_base", MetaValue::F32(0.0), "`llama.rope.freq_base` is 0; a RoPE base must be a finite number greater than 0"),
        ("llama.rope.freq_base", MetaValue::F32(f32::INFINITY), "`llama.rope.freq_base` is inf"),
    ];
    let cfg = llama();
    let tensors = random_tensors(&cfg, 2);
    for (key, value, needle) in cases {
        let ws = Workspace::new("tr118-untrusted-");
        write_gguf(&ws.path("model.gguf"), &cfg, &tensors, |_| DType::F32, &[(key, value)]).unwrap();
        fails_with(&export(&ws, "model.gguf"), needle);
    }
}

/// A Hugging Face directory `hf/` of [`llama`] with `config.json` edited by `edit`.
fn hf_checkpoint(ws: &Workspace, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut cfg = llama();
    cfg.rope_layout = RopeLayout::Half;
    std::fs::create_dir_all(ws.path("hf")).unwrap();
    write_hf(&ws.path("hf"), &cfg, &random_tensors(&cfg, 3), DType::F32, 1).unwrap();
    let mut config = ws.json("hf/config.json");
    edit(config.as_object_mut().unwrap());
    ws.write("hf/config.json", serde_json::to_vec_pretty(&config).unwrap());
}

#[test]
fn config_json_with_no_layers_is_an_error_naming_the_key() {
    let ws = Workspace::new("tr118-untrusted-");
    hf_checkpoint(&ws, |c| {
        c.insert("num_hidden_layers".into(), json!(0));
    });
    fails_with(&export(&ws, "hf"), "config.json`: `num_hidden_layers` is 0; a model needs at least one layer");
}

#[test]
fn config_json_values_an_index_depends_on_are_checked_at_load() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("num_attention_heads", json!(0), "`num_attention_heads` is 0"),
        ("num_key_value_heads", json!(3), "`num_key_value_heads` (3) does not divide `num_attention_heads` (4)"),
        ("hidden_size", json!(18), "`num_attention_heads` (4) does not divide `hidden_size` (18)"),
        ("vocab_size", json!(0), "`vocab_size` is 0"),
        ("max_position_embeddings", json!(0), "`max_position_embeddings` is 0"),
        ("rms_norm_eps", json!(0.0), "`rms_norm_eps` is 0; a normalisation epsilon must be a finite number greater than 0"),
        ("rms_norm_eps", json!(-1.0), "`rms_norm_eps` is -1"),
        ("rope_theta", json!(-10000.0), "`rope_theta` is -10000; a RoPE base must be a finite number greater than 0"),
        ("rope_theta", json!(1e300), "`rope_theta` is inf"),
        ("rope_parameters", json!({ "rope_type": "default", "rope_theta": 0 }), "`rope_parameters.rope_theta` is 0"),
    ];
    for (key, value, needle) in cases {
        let ws = Workspace::new("tr118-untrusted-");
        hf_checkpoint(&ws, |c| {
            // `head_dim` would be checked against the width first, and `rope_parameters`
            // wins over `rope_theta`, as in transformers.
            c.remove("head_dim");
            if key == "rope_theta" {
                c.remove("rope_parameters");
            }
            c.insert(key.into(), value.clone());
        });
        fails_with(&export(&ws, "hf"), &format!("config.json`: {needle}"));
    }
}
