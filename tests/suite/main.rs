//! The integration tests: one binary, so the crate is linked once for all of them.
//!
//! Each file beside this one is a module of tests for one part of tr118; [`support`] holds
//! what they share. Run one part with `cargo test --release --test suite cli::` (a module
//! path filters by prefix), one test by its name.
//!
//! All modules share one process: ONNX Runtime is loaded once ([`support::ort`]), and a test
//! must not change process-wide state (the environment, the working directory) that another
//! running beside it could read. `tests/sampler.rs` measures its own process's CPU and memory,
//! so it is a binary of its own.

mod support;

mod assets;
mod backend;
mod checkout_independence;
mod cli;
mod export;
mod export_hf;
mod fetch;
mod hostile_cache;
mod implementation;
mod int8_recipes;
mod limits;
mod logit_diff;
mod noop_index;
mod perplexity;
mod quantize;
mod reference;
mod remote_cache;
mod report;
mod runtime;
mod stats;
mod stats_stage;
mod study;
mod sweep;
mod torch;
mod trt_build;
mod trt_rtx;
mod untrusted_inputs;
