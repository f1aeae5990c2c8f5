//! The JSON files one stage writes and another reads, as one type per file that writer and
//! reader share (as [`crate::measure::RunRecord`] is for `runs.jsonl`): a field renamed on one
//! side is a compile error on the other, and a file that does not read as its type is an error
//! naming the file and the field.
//!
//! Every writer but `perplexity.json`'s goes through [`serde_json::to_value`] before
//! [`crate::stage::output::write_json`]: without serde_json's `preserve_order` a JSON object is
//! a sorted map, so the keys of every object come out sorted, whatever the order of the fields.
//! `perplexity.json` has always been written straight from its struct, keys in field order; it
//! still is, so its bytes are unchanged (see [`perplexity`]).
//!
//! | module         | file              | written by             | read by                      |
//! |----------------|-------------------|------------------------|------------------------------|
//! | [`stats`]      | `stats.json`      | the `stats` stage      | the report                   |
//! | [`gate`]       | `gate.json`       | the `gate` stage       | the report                   |
//! | [`perplexity`] | `perplexity.json` | the `perplexity` stage | the `gate` stage, the report |

pub mod gate;
pub mod perplexity;
pub mod stats;
