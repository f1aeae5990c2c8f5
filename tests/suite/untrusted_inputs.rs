//! Bytes tr118 did not write — checkpoints, tokenizers, cache objects — are parsed into
//! errors that name the file and the field, never into a panic or a value that breaks a
//! later stage. Each test drives the real binary on a throwaway workspace where the path
//! from file to error goes through it; the crash inputs the fuzzers found (`fuzz/`,
//! `tests/fixtures/fuzz-crashes/<target>/`) are replayed through the library code each
//! fuzz target drives.

use std::path::Path;

use crate::support;
use crate::support::workspace::{Run, Workspace};
use serde_json::{Value, json};
use tr118::model::dtype::DType;
use tr118::model::gguf::MetaValue;
use tr118::model::write::{random_tensors, write_gguf, write_hf};
use tr118::model::{ModelConfig, RopeLayout};

/// The tests' tiny Llama (4 query heads over 2 key/value heads of size 4; two layers), with
/// tied embeddings and no special tokens.
fn llama() -> ModelConfig {
    ModelConfig { vocab_size: 16, tied_embeddings: true, bos_token_id: None, eos_token_id: None, ..support::reference::tiny_llama(RopeLayout::Interleaved) }
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
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F32(f32::NAN),
            "`llama.attention.layer_norm_rms_epsilon` is NaN; a normalisation epsilon must be a finite number greater than 0",
        ),
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

/// [`support::word_tokenizer_json`] with a byte-level decoder, as text.
fn tokenizer_with_decoder() -> String {
    let mut doc: Value = serde_json::from_str(&support::word_tokenizer_json(8)).unwrap();
    doc["decoder"] = json!({ "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true });
    serde_json::to_string(&doc).unwrap()
}

#[test]
fn corrupt_tokenizer_json_is_an_error_naming_the_file() {
    let ws = Workspace::new("tr118-untrusted-");
    let good = tokenizer_with_decoder();
    // One byte changed inside the decoder: `tokenizers` 0.23.2 panics on it (`expect("Helper")`).
    let at = good.find("\"trim_offsets\":true").unwrap() + "\"trim_offsets\":t".len();
    let mut bad = good.into_bytes();
    bad[at] = b'x';
    ws.write("tokenizer.json", &bad);
    ws.write("corpus.txt", "t1 t2 t3 t4 t5 t6 t7 t1 t2");
    ws.write("model.onnx", b"never read: the tokenizer is loaded first");
    ws.write("lib/libonnxruntime.so", b"never loaded");
    ws.pipeline(
        "[[backends]]\nname = \"cpu\"\nprecision = \"fp32\"\nthreads = 1\n\n\
         [stages.ppl]\nkind = \"perplexity\"\nmatrix = [\"backend\"]\n\
         deps = { model = \"model.onnx\", tokenizer = \"tokenizer.json\", corpus = \"corpus.txt\", runtime = \"lib/libonnxruntime.so\" }\n",
    );
    let run = ws.tr(&["make"]);
    assert_ne!(run.code, Some(0), "{run}");
    run.stderr_has("tokenizer.json` is not a tokenizer.json that `tokenizers` can load: the `tokenizers` library panicked reading it");
}

// ---------------------------------------------------------------------------------------
// Crash inputs found by the fuzz targets, replayed through the code each target drives.
// ---------------------------------------------------------------------------------------

/// Runs `bytes` through what fuzz target `target` (`fuzz/targets/<target>.rs`) drives, in
/// `dir`; returns whether the input was accepted. A panic propagates.
fn replay(target: &str, bytes: &[u8], dir: &Path) -> bool {
    use tr118::model::Checkpoint;
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    match target {
        "pipeline_toml" => {
            let path = file("tr118.toml", bytes);
            match tr118::pipeline::Pipeline::load(&path, &[], tr118::stage_kinds()) {
                Ok(p) => tr118::graph::Graph::build(p, dir).map(|g| (g.to_dot(&g.order), g.to_mermaid(&g.order))).is_ok(),
                Err(d) => d.to_string().is_empty(),
            }
        }
        "gguf" => match Checkpoint::open(&file("model.gguf", bytes)) {
            Ok(ck) => ck.tensors.iter().all(|t| ck.load(&t.name).is_ok()),
            Err(_) => false,
        },
        "safetensors_config" => {
            const SEP: &[u8] = b"\n--8<--\n";
            let (config, weights) = match bytes.windows(SEP.len()).position(|w| w == SEP) {
                Some(at) => (&bytes[..at], &bytes[at + SEP.len()..]),
                None => (bytes, &[][..]),
            };
            let _ = tr118::model::safetensors::parse(weights);
            file("config.json", config);
            file("model.safetensors", weights);
            match Checkpoint::open(dir) {
                Ok(ck) => ck.tensors.iter().all(|t| ck.load(&t.name).is_ok()),
                Err(_) => false,
            }
        }
        "tokenizer" => match tr118::tokenizer::load_tokenizer_json(&file("tokenizer.json", bytes)) {
            Ok(tok) => tok.encode("Hello world, 123 héllo!\n  tabs\tand <s> specials", false).is_ok(),
            Err(_) => false,
        },
        "onnx" => {
            let path = file("model.onnx", bytes);
            let _ = tr118::onnx::signature::read(&path);
            match tr118::onnx::edit::Model::load(&path) {
                Ok(m) => {
                    let _ = (m.external_files(), m.digest());
                    let values_ok = m.graph().initializer.iter().all(|t| m.f32_values(t).is_ok());
                    let _ = tr118::quant::graph::sites(&m);
                    values_ok
                }
                Err(_) => false,
            }
        }
        "manifest" => {
            let _ = serde_json::from_slice::<tr118::store::ActionResult>(bytes);
            serde_json::from_slice::<tr118::store::Manifest>(bytes).map(|m| m.stage_key.digest()).is_ok()
        }
        "listing" => {
            if let Ok(tree) = serde_json::from_slice::<tr118::digest::Tree>(bytes) {
                let _ = (tree.digest(), tree.size());
            }
            tr118::digest::Tree::parse(bytes).is_ok()
        }
        "remote_entry" => tr118::remote::entry::parse_entry(bytes, &tr118::digest::Digest::of_bytes(b"tr118 fuzz")).is_ok(),
        other => panic!("no fuzz target `{other}`"),
    }
}

#[test]
fn fuzz_crash_inputs_are_errors_not_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-crashes");
    let mut panicked = Vec::new();
    let mut n = 0;
    for target in std::fs::read_dir(&root).unwrap() {
        let target = target.unwrap();
        let name = target.file_name().to_string_lossy().into_owned();
        for input in std::fs::read_dir(target.path()).unwrap() {
            let input = input.unwrap().path();
            let bytes = std::fs::read(&input).unwrap();
            let dir = tempfile::tempdir().unwrap();
            n += 1;
            match std::panic::catch_unwind(|| replay(&name, &bytes, dir.path())) {
                Ok(accepted) => assert!(!accepted, "{}: a crash input is now accepted as valid", input.display()),
                Err(_) => panicked.push(input.display().to_string()),
            }
        }
    }
    assert!(n > 0, "no crash inputs under {}", root.display());
    assert!(panicked.is_empty(), "these inputs still panic: {panicked:#?}");
}

/// An ONNX model whose one initializer, `w` (dims `dims`), is external data in `location`
/// with the given `length`.
fn model_with_external(location: &str, length: u64, dims: &[i64]) -> Vec<u8> {
    use prost::Message;
    use tr118::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
    let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let w = TensorProto {
        dims: dims.to_vec(),
        data_type: Some(tr118::onnx::FLOAT),
        name: Some("w".into()),
        external_data: vec![entry("location", location.into()), entry("offset", "0".into()), entry("length", length.to_string())],
        data_location: Some(1),
        ..Default::default()
    };
    let graph = GraphProto { name: Some("g".into()), initializer: vec![w], ..Default::default() };
    ModelProto { ir_version: Some(8), graph: Some(graph), ..Default::default() }.encode_to_vec()
}

#[test]
fn onnx_external_data_beyond_its_file_is_an_error_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
    let path = dir.path().join("model.onnx");
    // A length of 2^60 bytes used to size the read buffer before anything checked it.
    std::fs::write(&path, model_with_external("w.bin", 1 << 60, &[4])).unwrap();
    let model = tr118::onnx::edit::Model::load(&path).unwrap();
    let err = model.f32_values(&model.graph().initializer[0]).unwrap_err().to_string();
    assert!(err.contains("tensor `w`") && err.contains("lies beyond the end of `w.bin` (16 bytes)"), "{err}");

    // Dims whose product overflows are a count no data matches, not a wrapped one.
    std::fs::write(&path, model_with_external("w.bin", 16, &[1 << 40, 1 << 40])).unwrap();
    let model = tr118::onnx::edit::Model::load(&path).unwrap();
    let err = model.f32_values(&model.graph().initializer[0]).unwrap_err().to_string();
    assert!(err.contains("has 4 values for dims"), "{err}");
}
