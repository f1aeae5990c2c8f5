//! tr118: a declarative, content-addressed build tool for LLM inference benchmark studies.
//!
//! Map of the crate, in the order data flows through it:
//!
//! | module      | holds                                                                        |
//! |-------------|------------------------------------------------------------------------------|
//! | [`diag`]    | diagnostics with file:line:column, "did you mean" suggestions                |
//! | [`pipeline`]| TOML → raw tables → validated, matrix-expanded [`pipeline::NodeSpec`]s       |
//! | [`graph`]   | the sealed DAG of nodes, target selection, cycle errors, dot/mermaid output  |
//! | [`digest`]  | blake3 digests of files and directories                                      |
//! | [`key`]     | [`key::StageKey`]: everything a node's cache key is made of, and why it moved|
//! | [`implementation`] | which source files make which results; their versions, checked against `implementation.lock` |
//! | [`facets`]  | environment facets a stage may declare (CPU model, OS, GPU, env variables)   |
//! | [`paths`]   | paths as results name them: relative to the workspace, never where it lives  |
//! | [`python`]  | the Python interpreter the torch worker and TensorRT for RTX's helper run in |
//! | [`store`]   | the cache: objects, action manifests, refs, stat cache, lock, gc, fsck       |
//! | [`remote`]  | the shared cache over HTTP: read-through, write-back, push and pull, verified |
//! | [`artifact`]| the JSON files one stage writes and another reads, one type per file shared by both |
//! | [`stage`]   | stage kinds behind one trait: `cmd`, `fetch`, `export`, `perplexity`, `gate`, `logit_diff`, `sweep`, `stats`, `calibrate`, `quantize`, `trt_build`, `report` |
//! | [`engine`]  | plan (fresh / stale with reasons), then run with a resource-aware scheduler  |
//! | [`model`]   | checkpoints in: GGUF and Hugging Face safetensors, canonical tensors         |
//! | [`onnx`]    | ONNX protobuf messages, a graph builder and a streaming writer               |
//! | [`export`]  | checkpoint → ONNX for GPT-2 and Llama, prefill and decoder variants          |
//! | [`tokenizer`] | tokenizer.json in; GPT-2 and GGUF vocabularies turned into tokenizer.json  |
//! | [`quant`]   | INT8: calibration statistics, TensorRT's cache, QDQ and dynamic rewrites, coverage counts |
//! | [`runtime`] | ONNX Runtime: library probe, sessions, prefill and decode steps, providers   |
//! | [`trt`]     | TensorRT through `trtexec`: locating it, build command lines, layer census   |
//! | [`backend`] | backends as declared (`[[backends]]`), opened over ONNX Runtime or torch, no fallback; the timing loops that drive them |
//! | [`measure`] | run records of timed repetitions, the resource sampler beside them            |
//! | [`stats`]   | summaries (mean, Student t CI95, percentiles), Welch's t, Cohen's d, Holm     |
//! | [`report`]  | artifacts → Markdown and self-contained HTML: templates, number formats, SVG charts |
//! | [`cli`]     | the commands behind `tr118 make|status|why|graph|gc|fsck|clean|cache`        |

pub mod artifact;
pub mod backend;
pub mod cli;
pub(crate) mod diag;
pub mod digest;
pub(crate) mod engine;
pub mod export;
pub(crate) mod facets;
pub mod graph;
pub mod implementation;
pub mod key;
pub mod measure;
pub mod model;
pub mod onnx;
pub(crate) mod paths;
pub mod pipeline;
pub(crate) mod python;
pub mod quant;
pub mod remote;
pub(crate) mod report;
pub mod runtime;
pub(crate) mod stage;
pub mod stats;
pub mod store;
pub mod tokenizer;
pub mod trt;

/// Every stage kind this build knows, for [`pipeline::Pipeline::load`].
pub fn stage_kinds() -> &'static [&'static dyn pipeline::kind::StageKind] {
    stage::registry()
}

/// The tool's version, recorded in every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
