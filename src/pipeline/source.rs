//! The pipeline's text and the position of every key and value in it, so that problems
//! found after parsing still point at a line and column.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::diag::{self, Diagnostic};

/// A path into the TOML document: `["stages", "build", "outs", "0"]`.
pub(crate) type FieldPath = Vec<String>;

pub struct Source {
    pub file: PathBuf,
    pub text: String,
    /// Span of each key (for tables) or element (for arrays), by field path.
    spans: HashMap<FieldPath, Range<usize>>,
}

impl Source {
    /// Parses `text` for positions; a syntax error comes back as a diagnostic.
    pub(crate) fn new(file: &Path, text: String) -> Result<Self, Diagnostic> {
        let mut spans = HashMap::new();
        match DeTable::parse(&text) {
            Ok(root) => index_table(root.get_ref(), &mut Vec::new(), &mut spans),
            Err(e) => {
                let (line, column) = e.span().map_or((0, 0), |s| diag::line_col(&text, s.start));
                return Err(Diagnostic { file: file.to_path_buf(), line, column, message: format!("invalid TOML: {}", first_line(e.message())), help: None });
            }
        }
        Ok(Source { file: file.to_path_buf(), text, spans })
    }

    /// A diagnostic at `path`, or at its nearest ancestor that has a position.
    pub(crate) fn diag(&self, path: &[String], message: impl Into<String>, help: Option<String>) -> Diagnostic {
        let mut p = path.to_vec();
        let (line, column) = loop {
            if let Some(span) = self.spans.get(&p) {
                break diag::line_col(&self.text, span.start);
            }
            if p.pop().is_none() {
                break (0, 0);
            }
        };
        Diagnostic { file: self.file.clone(), line, column, message: message.into(), help }
    }

    /// A diagnostic at a byte offset (serde errors carry one).
    pub(crate) fn diag_at(&self, offset: Option<usize>, message: impl Into<String>, help: Option<String>) -> Diagnostic {
        let (line, column) = offset.map_or((0, 0), |o| diag::line_col(&self.text, o));
        Diagnostic { file: self.file.clone(), line, column, message: message.into(), help }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn index_table(table: &DeTable<'_>, path: &mut FieldPath, spans: &mut HashMap<FieldPath, Range<usize>>) {
    for (k, v) in table.iter() {
        path.push(k.get_ref().to_string());
        spans.insert(path.clone(), k.span());
        index_value(v.get_ref(), path, spans);
        path.pop();
    }
}

fn index_value(value: &DeValue<'_>, path: &mut FieldPath, spans: &mut HashMap<FieldPath, Range<usize>>) {
    match value {
        DeValue::Table(t) => index_table(t, path, spans),
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(i.to_string());
                spans.insert(path.clone(), v.span());
                index_value(v.get_ref(), path, spans);
                path.pop();
            }
        }
        _ => {}
    }
}
