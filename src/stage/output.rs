//! How stage kinds write their result files: pretty JSON with a trailing newline, and CSV with
//! one header and quoted fields where a field needs it — the same in every kind.

use std::path::Path;

use serde::Serialize;

/// Writes `value` as pretty JSON with a trailing newline.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    std::fs::write(path, bytes).map_err(|e| format!("writing `{}`: {e}", path.display()))
}

/// A CSV field, quoted when it needs to be.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Writes a header and one line per row; every row has the same columns.
pub(crate) fn write_csv_rows(path: &Path, rows: &[Vec<(&'static str, String)>]) -> Result<(), String> {
    let mut text = String::new();
    if let Some(first) = rows.first() {
        text.push_str(&first.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    for row in rows {
        text.push_str(&row.iter().map(|(_, v)| csv_field(v)).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("writing `{}`: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_fields_with_commas_quotes_or_newlines() {
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
