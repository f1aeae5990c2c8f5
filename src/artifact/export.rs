//! `export.json`: what the `export` stage ([`crate::stage::export`]) writes and the report
//! reads.
//!
//! It goes through [`serde_json::to_value`], so every object's keys come out sorted. Each
//! variant is the exporter's own record ([`ExportReport`] for an ONNX variant, [`HfReport`] for
//! the `hf` directory), as it always was.

use serde::{Deserialize, Serialize};

pub use crate::export::ExportReport;
pub use crate::export::hf::HfReport;
use crate::model::{Format, ModelConfig};

/// `export.json`: one checkpoint's exported variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    pub checkpoint: Checkpoint,
    /// `tr118 <version>`.
    pub tool: String,
    /// In the order the stage lists them.
    pub variants: Vec<Variant>,
    /// Where `tokenizer.json` came from; `None` when the stage writes none.
    pub tokenizer: Option<String>,
}

/// The checkpoint the variants were exported from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// As the `checkpoint` dep names it.
    pub path: String,
    pub format: Format,
    pub config: ModelConfig,
}

/// One exported variant: its record is the exporter's, told apart by its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Variant {
    Onnx(ExportReport),
    Hf(HfReport),
}
