//! Hugging Face checkpoints: a directory with `config.json` and either `model.safetensors` or
//! `model.safetensors.index.json` naming the shards.
//!
//! `config.json` is read into a raw serde struct per `model_type`, then lowered into a
//! [`ModelConfig`]; tensor names are mapped to the canonical ones:
//!
//! | Hugging Face (GPT-2, `transformer.` optional) | Hugging Face (Llama)                      | canonical             |
//! |-----------------------------------------------|-------------------------------------------|-----------------------|
//! | `wte.weight`                                  | `model.embed_tokens.weight`               | `token_embd.weight`   |
//! | `wpe.weight`                                  | —                                         | `position_embd.weight`|
//! | `h.N.ln_1.*`                                  | `model.layers.N.input_layernorm.weight`   | `blk.N.attn_norm.*`   |
//! | `h.N.attn.c_attn.*` (Conv1D)                  | `…self_attn.{q,k,v}_proj.weight`          | `blk.N.attn_qkv.*` / `attn_{q,k,v}` |
//! | `h.N.attn.c_proj.*` (Conv1D)                  | `…self_attn.o_proj.weight`                | `blk.N.attn_output.*` |
//! | `h.N.ln_2.*`                                  | `…post_attention_layernorm.weight`        | `blk.N.ffn_norm.*`    |
//! | `h.N.mlp.c_fc.*` (Conv1D)                     | `…mlp.up_proj.weight` (and `gate_proj`)   | `blk.N.ffn_up.*` / `ffn_gate` |
//! | `h.N.mlp.c_proj.*` (Conv1D)                   | `…mlp.down_proj.weight`                   | `blk.N.ffn_down.*`    |
//! | `ln_f.*`                                      | `model.norm.weight`                       | `output_norm.*`       |
//! | `lm_head.weight` (when untied)                | `lm_head.weight` (when untied)            | `output.weight`       |
//!
//! Conv1D weights are stored `[in, out]` and marked for transposition. Other tensors (the
//! attention mask buffers `h.N.attn.bias`/`masked_bias`, `rotary_emb.inv_freq`) are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::safetensors::SafetensorsFile;
use super::{Arch, Checkpoint, ConfigKeys, Format, ModelConfig, ModelError, RopeLayout, TensorRef};

#[derive(Deserialize)]
struct RawModelType {
    model_type: Option<String>,
}

#[derive(Deserialize)]
struct RawGpt2 {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_inner: Option<usize>,
    layer_norm_epsilon: f64,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

#[derive(Deserialize)]
struct RawLlama {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    intermediate_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5's form: `{"rope_type": "default", "rope_theta": …}`, taking precedence
    /// over `rope_theta`, as it does there.
    rope_parameters: Option<serde_json::Value>,
    head_dim: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

/// A token id, or a list of them (the first is the one used).
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn first(ids: Option<TokenIds>) -> Option<u32> {
        match ids? {
            TokenIds::One(id) => Some(id),
            TokenIds::Many(ids) => ids.first().copied(),
        }
    }
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Opens a Hugging Face checkpoint directory, or the `config.json` in one.
pub(crate) fn open(path: &Path) -> Result<Checkpoint, ModelError> {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf) };
    let config_path = dir.join(CONFIG);
    let (config, keys) = read_config(&config_path)?;

    let files = open_weights(&dir)?;
    let n_tensors = files.iter().map(|f| f.tensors.len()).sum();
    super::check_config(&config, n_tensors, &keys).map_err(|message| ModelError::Format { path: config_path.clone(), message })?;

    // Canonical name → (file index, tensor), first checking no name is stored twice.
    let mut found: BTreeMap<String, (usize, &super::safetensors::SafeTensor, bool)> = BTreeMap::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        for (name, t) in &f.tensors {
            if let Some(j) = seen.insert(name, i) {
                return Err(ModelError::Format { path: f.path.clone(), message: format!("tensor `{name}` is also in `{}`", files[j].path.display()) });
            }
            let Some((canonical, transpose)) = canonical_name(config.arch, name) else { continue };
            if canonical == "output.weight" && config.tied_embeddings {
                continue;
            }
            found.insert(canonical, (i, t, transpose));
        }
    }

    let mut tensors = Vec::new();
    for (name, _) in config.expected_tensors() {
        let Some(&(file, t, transpose)) = found.get(&name) else { continue };
        let dtype = t.decodable().ok_or_else(|| ModelError::Unsupported {
            path: files[file].path.clone(),
            what: "tensor type".into(),
            message: format!("tensor `{}` is `{}`; supported: F32, F16, BF16", t.name, t.dtype),
        })?;
        let shape = if transpose && t.shape.len() == 2 { vec![t.shape[1], t.shape[0]] } else { t.shape.clone() };
        tensors.push(TensorRef {
            name,
            source_name: t.name.clone(),
            shape,
            dtype,
            file,
            offset: t.offset,
            nbytes: t.nbytes,
            transpose: transpose && t.shape.len() == 2,
        });
    }

    let checkpoint =
        Checkpoint { path: dir, format: Format::Safetensors, config, tensors, files: files.into_iter().map(|f| (f.path, f.map)).collect(), gguf: None };
    checkpoint.validate()?;
    Ok(checkpoint)
}

/// The `config.json` keys of each [`ModelConfig`] field, for errors.
fn config_keys(arch: Arch, n_ctx: &str, rope_theta: &str) -> ConfigKeys {
    let k = |s: &str| s.to_string();
    match arch {
        Arch::Gpt2 => ConfigKeys {
            vocab_size: k("vocab_size"),
            n_layer: k("n_layer"),
            n_head: k("n_head"),
            n_kv_head: k("n_head"),
            d_model: k("n_embd"),
            d_ff: k("n_inner"),
            n_ctx: k(n_ctx),
            norm_eps: k("layer_norm_epsilon"),
            rope_theta: k(rope_theta),
        },
        Arch::Llama => ConfigKeys {
            vocab_size: k("vocab_size"),
            n_layer: k("num_hidden_layers"),
            n_head: k("num_attention_heads"),
            n_kv_head: k("num_key_value_heads"),
            d_model: k("hidden_size"),
            d_ff: k("intermediate_size"),
            n_ctx: k(n_ctx),
            norm_eps: k("rms_norm_eps"),
            rope_theta: k(rope_theta),
        },
    }
}

fn read_config(path: &Path) -> Result<(ModelConfig, ConfigKeys), ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let bad = |message: String| ModelError::Format { path: path.to_path_buf(), message };
    let json = |e: serde_json::Error| bad(e.to_string());
    let model_type = serde_json::from_str::<RawModelType>(&text).map_err(json)?.model_type;
    match model_type.as_deref() {
        Some("gpt2") => {
            let r: RawGpt2 = serde_json::from_str(&text).map_err(json)?;
            let keys = config_keys(Arch::Gpt2, if r.n_positions.is_some() { "n_positions" } else { "n_ctx" }, "rope_theta");
            let config = ModelConfig {
                arch: Arch::Gpt2,
                vocab_size: r.vocab_size,
                n_layer: r.n_layer,
                n_head: r.n_head,
                n_kv_head: r.n_head,
                d_model: r.n_embd,
                d_ff: r.n_inner.unwrap_or(r.n_embd.saturating_mul(4)),
                n_ctx: r.n_positions.or(r.n_ctx).ok_or_else(|| bad("missing field `n_positions` (or `n_ctx`)".into()))?,
                norm_eps: r.layer_norm_epsilon as f32,
                rope_theta: 10000.0,
                rope_layout: RopeLayout::Half,
                tied_embeddings: r.tie_word_embeddings.unwrap_or(true),
                bos_token_id: TokenIds::first(r.bos_token_id),
                eos_token_id: TokenIds::first(r.eos_token_id),
            };
            Ok((config, keys))
        }
        Some("llama") => {
            let r: RawLlama = serde_json::from_str(&text).map_err(json)?;
            let unsupported = |message: String| ModelError::Unsupported { path: path.to_path_buf(), what: "model feature".into(), message };
            if let Some(s) = r.rope_scaling.filter(|s| !s.is_null()) {
                return Err(unsupported(format!("RoPE scaling `rope_scaling: {s}`")));
            }
            let mut rope_theta = r.rope_theta;
            let mut theta_key = "rope_theta";
            if let Some(p) = r.rope_parameters.filter(|p| !p.is_null()) {
                let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(serde_json::Value::as_str).unwrap_or("default");
                if kind != "default" || !p.is_object() {
                    return Err(unsupported(format!("RoPE `rope_parameters: {p}` (only `rope_type` \"default\" is)")));
                }
                if let Some(theta) = p.get("rope_theta") {
                    rope_theta = Some(theta.as_f64().ok_or_else(|| bad(format!("`rope_parameters.rope_theta` is {theta}, not a number")))?);
                    theta_key = "rope_parameters.rope_theta";
                }
            }
            if let Some(hd) = r.head_dim.filter(|&hd| r.num_attention_heads == 0 || hd != r.hidden_size / r.num_attention_heads) {
                return Err(unsupported(format!(
                    "`head_dim` {hd} differs from `hidden_size / num_attention_heads` ({} / {})",
                    r.hidden_size, r.num_attention_heads
                )));
            }
            let keys = config_keys(Arch::Llama, "max_position_embeddings", theta_key);
            let config = ModelConfig {
                arch: Arch::Llama,
                vocab_size: r.vocab_size,
                n_layer: r.num_hidden_layers,
                n_head: r.num_attention_heads,
                n_kv_head: r.num_key_value_heads.unwrap_or(r.num_attention_heads),
                d_model: r.hidden_size,
                d_ff: r.intermediate_size,
                n_ctx: r.max_position_embeddings,
                norm_eps: r.rms_norm_eps as f32,
                rope_theta: rope_theta.unwrap_or(10000.0) as f32,
                rope_layout: RopeLayout::Half,
                tied_embeddings: r.tie_word_embeddings.unwrap_or(false),
                bos_token_id: TokenIds::first(r.bos_token_id),
                eos_token_id: TokenIds::first(r.eos_token_id),
            };
            Ok((config, keys))
        }
        Some(other) => Err(ModelError::Unsupported {
            path: path.to_path_buf(),
            what: "architecture".into(),
            message: format!("`model_type` `{other}` (supported: `gpt2`, `llama`)"),
        }),
        None => Err(bad("no `model_type`: not a Hugging Face model config?".into())),
    }
}

/// The safetensors files of the checkpoint in `dir`, each mapped once.
fn open_weights(dir: &Path) -> Result<Vec<SafetensorsFile>, ModelError> {
    let index_path = dir.join(INDEX);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io { path: index_path.clone(), source })?;
        let format = |message: String| ModelError::Format { path: index_path.clone(), message };
        let index: RawIndex = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let shards: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
        if shards.is_empty() {
            return Err(format("`weight_map` is empty".into()));
        }
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            // Shards are siblings of the index; a path elsewhere is a corrupt (or hostile) index.
            if Path::new(shard).file_name().is_none_or(|n| n != shard) {
                return Err(format(format!("shard `{shard}` is not a file name in the checkpoint directory")));
            }
            files.push(SafetensorsFile::open(&dir.join(shard))?);
        }
        for (name, shard) in &index.weight_map {
            if !files.iter().any(|f| f.path.file_name().is_some_and(|n| n == shard.as_str()) && f.tensors.contains_key(name)) {
                return Err(ModelError::Tensor { path: index_path.clone(), tensor: name.clone(), message: format!("not in shard `{shard}`") });
            }
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![SafetensorsFile::open(&single)?]);
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(ModelError::Unsupported {
            path: dir.to_path_buf(),
            what: "weights format".into(),
            message: "`pytorch_model.bin` (pickle); convert the checkpoint to safetensors".into(),
        });
    }
    Err(ModelError::Format { path: dir.to_path_buf(), message: format!("no `{SINGLE}` or `{INDEX}`") })
}

/// The canonical name of a Hugging Face tensor, and whether it is a Conv1D weight stored
/// transposed; `None` for tensors the model does not need.
fn canonical_name(arch: Arch, name: &str) -> Option<(String, bool)> {
    match arch {
        Arch::Gpt2 => {
            let name = name.strip_prefix("transformer.").unwrap_or(name);
            let (head, param) = name.rsplit_once('.')?;
            if !matches!(param, "weight" | "bias") {
                return None;
            }
            let simple = match head {
                "wte" => Some("token_embd"),
                "wpe" => Some("position_embd"),
                "ln_f" => Some("output_norm"),
                "lm_head" => Some("output"),
                _ => None,
            };
            if let Some(c) = simple {
                return Some((format!("{c}.{param}"), false));
            }
            let rest = head.strip_prefix("h.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let (c, conv1d) = match part {
                "ln_1" => ("attn_norm", false),
                "attn.c_attn" => ("attn_qkv", true),
                "attn.c_proj" => ("attn_output", true),
                "ln_2" => ("ffn_norm", false),
                "mlp.c_fc" => ("ffn_up", true),
                "mlp.c_proj" => ("ffn_down", true),
                _ => return None,
            };
            Some((format!("blk.{layer}.{c}.{param}"), conv1d && param == "weight"))
        }
        Arch::Llama => {
            let c = match name {
                "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                "model.norm.weight" => "output_norm.weight".to_string(),
                "lm_head.weight" => "output.weight".to_string(),
                _ => {
                    let rest = name.strip_prefix("model.layers.")?;
                    let (layer, part) = rest.split_once('.')?;
                    let layer: usize = layer.parse().ok()?;
                    let c = match part {
                        "input_layernorm.weight" => "attn_norm",
                        "self_attn.q_proj.weight" => "attn_q",
                        "self_attn.k_proj.weight" => "attn_k",
                        "self_attn.v_proj.weight" => "attn_v",
                        "self_attn.o_proj.weight" => "attn_output",
                        "post_attention_layernorm.weight" => "ffn_norm",
                        "mlp.gate_proj.weight" => "ffn_gate",
                        "mlp.up_proj.weight" => "ffn_up",
                        "mlp.down_proj.weight" => "ffn_down",
                        _ => return None,
                    };
                    format!("blk.{layer}.{c}.weight")
                }
            };
            Some((c, false))
        }
    }
}

/// The Hugging Face name of a canonical tensor, and whether it is stored transposed; the
/// inverse of [`canonical_name`], for the writer. GPT-2 names carry `prefix`.
pub(super) fn hf_name(arch: Arch, canonical: &str, gpt2_prefix: &str) -> Option<(String, bool)> {
    let (head, param) = canonical.rsplit_once('.')?;
    match arch {
        Arch::Gpt2 => {
            let simple = match head {
                "token_embd" => Some("wte"),
                "position_embd" => Some("wpe"),
                "output_norm" => Some("ln_f"),
                "output" => return Some((format!("lm_head.{param}"), false)),
                _ => None,
            };
            if let Some(h) = simple {
                return Some((format!("{gpt2_prefix}{h}.{param}"), false));
            }
            let (layer, part) = head.strip_prefix("blk.")?.split_once('.')?;
            let (h, conv1d) = match part {
                "attn_norm" => ("ln_1", false),
                "attn_qkv" => ("attn.c_attn", true),
                "attn_output" => ("attn.c_proj", true),
                "ffn_norm" => ("ln_2", false),
                "ffn_up" => ("mlp.c_fc", true),
                "ffn_down" => ("mlp.c_proj", true),
                _ => return None,
            };
            Some((format!("{gpt2_prefix}h.{layer}.{h}.{param}"), conv1d && param == "weight"))
        }
        Arch::Llama => {
            let name = match head {
                "token_embd" => "model.embed_tokens".to_string(),
                "output_norm" => "model.norm".to_string(),
                "output" => "lm_head".to_string(),
                _ => {
                    let (layer, part) = head.strip_prefix("blk.")?.split_once('.')?;
                    let h = match part {
                        "attn_norm" => "input_layernorm",
                        "attn_q" => "self_attn.q_proj",
                        "attn_k" => "self_attn.k_proj",
                        "attn_v" => "self_attn.v_proj",
                        "attn_output" => "self_attn.o_proj",
                        "ffn_norm" => "post_attention_layernorm",
                        "ffn_gate" => "mlp.gate_proj",
                        "ffn_up" => "mlp.up_proj",
                        "ffn_down" => "mlp.down_proj",
                        _ => return None,
                    };
                    format!("model.layers.{layer}.{h}")
                }
            };
            Some((format!("{name}.{param}"), false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dtype::DType;
    use crate::model::write::{self, Tensor};

    fn gpt2() -> ModelConfig {
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size: 50,
            n_layer: 2,
            n_head: 2,
            n_kv_head: 2,
            d_model: 8,
            d_ff: 32,
            n_ctx: 16,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_layout: RopeLayout::Half,
            tied_embeddings: true,
            bos_token_id: Some(49),
            eos_token_id: Some(49),
        }
    }

    fn llama() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 40,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            d_model: 16,
            d_ff: 24,
            n_ctx: 64,
            norm_eps: 1e-6,
            rope_theta: 100000.0,
            rope_layout: RopeLayout::Half,
            tied_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    fn round_trip(config: &ModelConfig, dtype: DType, shards: usize) -> (tempfile::TempDir, Checkpoint, Vec<Tensor>) {
        let dir = tempfile::tempdir().unwrap();
        let tensors = write::random_tensors(config, 3);
        write::write_hf(dir.path(), config, &tensors, dtype, shards).unwrap();
        // Through the directory, and through its config.json.
        let ck = Checkpoint::open(&dir.path().join("config.json")).unwrap();
        assert_eq!(ck.files.len(), shards);
        let ck2 = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck2.tensors.len(), ck.tensors.len());
        (dir, ck, tensors)
    }

    #[test]
    fn gpt2_round_trips_with_conv1d_transposed_back() {
        let config = gpt2();
        let (_dir, ck, tensors) = round_trip(&config, DType::F32, 1);
        assert_eq!(ck.format, Format::Safetensors);
        assert_eq!(ck.config, config);
        assert_eq!(ck.tensors.len(), tensors.len());
        for t in &tensors {
            assert_eq!(ck.load(&t.name).unwrap(), t.data, "{}", t.name);
        }
        let qkv = ck.tensor("blk.1.attn_qkv.weight").unwrap();
        assert_eq!((qkv.source_name.as_str(), qkv.transpose, qkv.shape.clone()), ("h.1.attn.c_attn.weight", true, vec![24, 8]));
    }

    #[test]
    fn sharded_gpt2_with_prefix_round_trips() {
        let mut config = gpt2();
        config.tied_embeddings = false;
        let (_dir, ck, tensors) = round_trip(&config, DType::F32, 3);
        assert_eq!(ck.config, config);
        assert_eq!(ck.tensor("blk.0.ffn_down.weight").unwrap().source_name, "transformer.h.0.mlp.c_proj.weight");
        for t in &tensors {
            assert_eq!(ck.load(&t.name).unwrap(), t.data, "{}", t.name);
        }
    }

    #[test]
    fn llama_round_trips_in_half_precision() {
        let config = llama();
        for (dtype, rel) in [(DType::F16, 1.0 / 1024.0), (DType::BF16, 1.0 / 128.0)] {
            for shards in [1, 2] {
                let (_dir, ck, tensors) = round_trip(&config, dtype, shards);
                assert_eq!(ck.config, config);
                for t in &tensors {
                    let got = ck.load(&t.name).unwrap();
                    for (g, x) in got.iter().zip(&t.data) {
                        assert!((g - x).abs() <= x.abs() * rel + 1e-7, "{}: {g} vs {x}", t.name);
                    }
                }
            }
        }
    }

    #[test]
    fn config_variants_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        write::write_hf(dir.path(), &config, &write::random_tensors(&config, 0), DType::F32, 1).unwrap();
        let cfg = dir.path().join("config.json");
        let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        json["eos_token_id"] = serde_json::json!([7, 2]);
        // Neither RoPE form: the default base.
        json.as_object_mut().unwrap().remove("rope_theta");
        json.as_object_mut().unwrap().remove("rope_parameters");
        std::fs::write(&cfg, json.to_string()).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.config.eos_token_id, Some(7));
        assert_eq!(ck.config.rope_theta, 10000.0);

        // transformers 5 writes `rope_parameters` alone, and reads it before `rope_theta`.
        json["rope_parameters"] = serde_json::json!({ "rope_type": "default", "rope_theta": 500000.0 });
        json["rope_theta"] = serde_json::json!(20000.0);
        std::fs::write(&cfg, json.to_string()).unwrap();
        assert_eq!(Checkpoint::open(dir.path()).unwrap().config.rope_theta, 500000.0);

        json["rope_parameters"] = serde_json::json!({ "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0 });
        std::fs::write(&cfg, json.to_string()).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::Unsupported { .. }) && e.to_string().contains("llama3"), "{e}");
    }

    fn open_err(dir: &Path) -> ModelError {
        match Checkpoint::open(dir) {
            Err(e) => e,
            Ok(_) => panic!("expected an error opening {}", dir.display()),
        }
    }

    #[test]
    fn unknown_model_type_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mistral"}"#).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("`mistral`") && e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn missing_config_field_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2", "n_embd": 8}"#).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::Format { .. }) && e.to_string().contains("missing field"), "{e}");
    }

    #[test]
    fn missing_and_misshapen_tensors_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        let mut tensors = write::random_tensors(&config, 0);
        tensors.retain(|t| t.name != "blk.0.ffn_gate.weight");
        write::write_hf(dir.path(), &config, &tensors, DType::F32, 1).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "blk.0.ffn_gate.weight"), "{e}");

        let mut tensors = write::random_tensors(&config, 0);
        tensors.iter_mut().find(|t| t.name == "blk.1.attn_k.weight").unwrap().shape = vec![16, 8];
        write::write_hf(dir.path(), &config, &tensors, DType::F32, 1).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(&e, ModelError::Tensor { tensor, .. } if tensor == "model.layers.1.self_attn.k_proj.weight"), "{e}");
        assert!(e.to_string().contains("[16, 8]"), "{e}");
    }

    #[test]
    fn truncated_shard_is_a_format_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = gpt2();
        write::write_hf(dir.path(), &config, &write::random_tensors(&config, 0), DType::F32, 2).unwrap();
        let shard = dir.path().join("model-00002-of-00002.safetensors");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
        let e = open_err(dir.path());
        match &e {
            ModelError::Format { path, message } => {
                assert_eq!(path, &shard);
                assert!(message.contains("truncated"), "{e}");
            }
            _ => panic!("expected a format error, got {e}"),
        }
    }

    #[test]
    fn unsupported_dtype_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        write::write_hf(dir.path(), &config, &write::random_tensors(&config, 0), DType::F32, 1).unwrap();
        // Relabel one F32 tensor as I32 (same width) in the header.
        let path = dir.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
        let entry = header.find("\"model.norm.weight\"").unwrap();
        let at = entry + header[entry..].find("\"F32\"").unwrap() + 1;
        bytes[8 + at..8 + at + 3].copy_from_slice(b"I32");
        std::fs::write(&path, &bytes).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("model.norm.weight") && e.to_string().contains("I32"), "{e}");
    }

    #[test]
    fn no_weights_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = llama();
        write::write_hf(dir.path(), &config, &write::random_tensors(&config, 0), DType::F32, 1).unwrap();
        std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, ModelError::Format { .. }) && e.to_string().contains("model.safetensors"), "{e}");
    }

    #[test]
    fn names_map_both_ways() {
        for config in [gpt2(), llama()] {
            for (name, _) in config.expected_tensors() {
                for prefix in ["", "transformer."] {
                    let (hf, t) = hf_name(config.arch, &name, prefix).unwrap();
                    assert_eq!(canonical_name(config.arch, &hf), Some((name.clone(), t)), "{hf}");
                }
            }
        }
        assert_eq!(canonical_name(Arch::Gpt2, "h.0.attn.bias"), None);
        assert_eq!(canonical_name(Arch::Gpt2, "h.0.attn.masked_bias"), None);
        assert_eq!(canonical_name(Arch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }
}
