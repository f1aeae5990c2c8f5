//! The JSON files one stage writes and another reads, as one type per file that writer and
//! reader share (as [`crate::measure::RunRecord`] is for `runs.jsonl`): a field renamed on one
//! side is a compile error on the other, and a file that does not read as its type is an error
//! naming the file and the field.
//!
//! Most writers go through [`serde_json::to_value`] before writing: without serde_json's
//! `preserve_order` a JSON object is a sorted map, so the keys of every object come out sorted,
//! whatever the order of the fields. `perplexity.json`, `logit_diff.json`, `calibration.json`,
//! `quantize.json`, `build.json` and `sweep.json` have always been written straight from their structs, keys in field order; they still are,
//! so their bytes are unchanged (see [`perplexity`]). Each module says which way its file is written.
//!
//! | module         | file              | written by             | read by                      |
//! |----------------|-------------------|------------------------|------------------------------|
//! | [`stats`]      | `stats.json`      | the `stats` stage      | the report                   |
//! | [`gate`]       | `gate.json`       | the `gate` stage       | the report                   |
//! | [`perplexity`] | `perplexity.json` | the `perplexity` stage | the `gate` stage, the report |
//! | [`logit_diff`] | `logit_diff.json` | the `logit_diff` stage | the report                   |
//! | [`calibration`] | `calibration.json` | the `calibrate` stage | the `quantize` stage, the report |
//! | [`export`]     | `export.json`     | the `export` stage     | the report                   |
//! | [`quantize`]   | `quantize.json`   | the `quantize` stage   | the report                   |
//! | [`trt_build`]  | `build.json`      | the `trt_build` stage (either builder) | the report   |
//! | [`sweep`]      | `sweep.json`      | the `sweep` stage      | the report                   |

pub mod calibration;
pub mod export;
pub mod gate;
pub mod logit_diff;
pub mod perplexity;
pub mod quantize;
pub mod stats;
pub mod sweep;
pub mod trt_build;
