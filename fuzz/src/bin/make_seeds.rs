//! Writes the binary seeds of the corpora (`fuzz/seeds/{gguf,safetensors_config,tokenizer,
//! onnx}`) with tr118's own writers: tiny but valid checkpoints, tokenizers and ONNX models,
//! so that the fuzzer starts from inputs that reach deep into each parser. The text seeds
//! (pipelines, manifests, listings, remote entries) are committed as they are.
//!
//! `cargo afl build --release --bin make_seeds && target/release/make_seeds fuzz/seeds`

use std::path::Path;

use tr118::model::dtype::DType;
use tr118::model::gguf::MetaValue;
use tr118::model::write::{random_tensors, write_gguf, write_hf};
use tr118::model::{Arch, ModelConfig, RopeLayout};
use tr118::onnx::{FLOAT, Graph, INT64, WriteOptions, attr_i, dyn_dim, write_model};
use tr118::tokenizer::{GgufVocab, gguf_tokenizer_json};

fn config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 8,
        n_layer: 1,
        n_head: 2,
        n_kv_head: if arch == Arch::Llama { 1 } else { 2 },
        d_model: 8,
        d_ff: 16,
        n_ctx: 16,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_layout: if arch == Arch::Llama { RopeLayout::Interleaved } else { RopeLayout::Half },
        tied_embeddings: arch == Arch::Llama,
        bos_token_id: Some(0),
        eos_token_id: Some(1),
    }
}

fn vocab() -> GgufVocab {
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens: ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "1"].map(String::from).to_vec(),
        merges: ["a b", "Ġ a"].map(String::from).to_vec(),
        token_types: Some(vec![3, 3, 1, 1, 1, 1, 1, 1]),
        bos: Some(0),
        eos: Some(1),
    }
}

fn strings(v: &[String]) -> MetaValue {
    MetaValue::Array(v.iter().map(|s| MetaValue::String(s.clone())).collect())
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: make_seeds SEEDS_DIR");
    let out = Path::new(&out);
    let tmp = std::env::temp_dir().join(format!("tr118-make-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // GGUF: a Llama with its tokenizer embedded (Q8_0 where the rows allow it), and a GPT-2 in F16.
    let v = vocab();
    let tok_keys = [
        ("tokenizer.ggml.model", MetaValue::String(v.model.clone())),
        ("tokenizer.ggml.pre", MetaValue::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&v.tokens)),
        ("tokenizer.ggml.merges", strings(&v.merges)),
        ("tokenizer.ggml.token_type", MetaValue::Array(v.token_types.clone().unwrap().into_iter().map(MetaValue::I32).collect())),
        ("tokenizer.ggml.bos_token_id", MetaValue::U32(0)),
        ("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
    ];
    let dir = out.join("gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let llama = config(Arch::Llama);
    let q8 = |t: &tr118::model::write::Tensor| if t.shape.last().is_some_and(|&n| n % 32 == 0) { DType::Q8_0 } else { DType::F32 };
    write_gguf(&dir.join("llama.gguf"), &llama, &random_tensors(&llama, 1), q8, &tok_keys).unwrap();
    let gpt2 = config(Arch::Gpt2);
    write_gguf(&dir.join("gpt2.gguf"), &gpt2, &random_tensors(&gpt2, 2), |_| DType::F16, &[]).unwrap();

    // Hugging Face: `config.json`, the separator line, `model.safetensors`.
    let dir = out.join("safetensors_config");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, mut cfg) in [("llama", config(Arch::Llama)), ("gpt2", config(Arch::Gpt2))] {
        cfg.rope_layout = RopeLayout::Half;
        let hf = tmp.join(name);
        std::fs::create_dir_all(&hf).unwrap();
        write_hf(&hf, &cfg, &random_tensors(&cfg, 3), DType::F16, 1).unwrap();
        let mut seed = std::fs::read(hf.join("config.json")).unwrap();
        seed.extend_from_slice(b"\n--8<--\n");
        seed.extend(std::fs::read(hf.join("model.safetensors")).unwrap());
        std::fs::write(dir.join(format!("{name}.bin")), seed).unwrap();
    }

    // tokenizer.json: the BPE built from the GGUF vocabulary above.
    let dir = out.join("tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bpe.json"), gguf_tokenizer_json(&v, Some(8)).unwrap()).unwrap();

    // ONNX: a MatMul against an initializer, behind a Cast, with a dynamic and a fixed axis.
    let dir = out.join("onnx");
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = Graph::new("g");
    let ids = g.input("input_ids", INT64, &[dyn_dim("batch"), tr118::onnx::Dim::Fixed(4)]);
    let w = g.const_f32(vec![0.5; 8]);
    let shape = g.const_i64(&[4, 2]);
    let w2 = g.op("Reshape", &[&w, &shape], Vec::new());
    let x = g.op("Cast", &[&ids], vec![attr_i("to", FLOAT as i64)]);
    g.op_into("MatMul", &[&x, &w2], &["y"], Vec::new());
    g.output("y", FLOAT, &[dyn_dim("batch"), tr118::onnx::Dim::Fixed(2)]);
    let opts = WriteOptions { opset: 17, external_data: false, producer_version: "seed".into(), metadata: Vec::new() };
    write_model(g, &dir.join("matmul.onnx"), &opts).unwrap();

    let _ = std::fs::remove_dir_all(&tmp);
}
