//! Placeholders in pipeline strings: `{matrix.backend}`, `{params.reps}`, `{deps.model}`,
//! `{outs.report}`, `{node}`. `{{` and `}}` stand for literal braces.
//!
//! Resolution happens in two passes. Loading the pipeline resolves what is known then
//! (matrix values, params, the node id) and keeps `{deps.*}` / `{outs.*}` as placeholders;
//! running a node resolves those to paths. A partially resolved string is still a template.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Var(Vec<String>),
}

fn parse(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed `{{` in `{s}` (write `{{{{` for a literal brace)")),
                    }
                }
                let name = name.trim();
                if name.is_empty() || name.split('.').any(|p| p.is_empty()) {
                    return Err(format!("malformed placeholder `{{{name}}}` in `{s}`"));
                }
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(Piece::Var(name.split('.').map(str::to_string).collect()));
            }
            '}' => return Err(format!("unmatched `}}` in `{s}` (write `}}}}` for a literal brace)")),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}

/// What a lookup says about one placeholder.
pub(crate) enum Lookup {
    Value(Value),
    /// Leave the placeholder in place for a later pass.
    Keep,
    /// The placeholder names nothing; the message says what was looked for.
    Unknown(String),
}

fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The names of the placeholders in `s`, as dotted strings.
pub(crate) fn placeholders(s: &str) -> Result<Vec<String>, String> {
    Ok(parse(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var(v) => Some(v.join(".")),
            Piece::Lit(_) => None,
        })
        .collect())
}

/// Resolves the placeholders of `s`. A string that is exactly one placeholder takes the
/// value's own type (a number stays a number); otherwise values are spliced in as text.
/// Kept placeholders stay, so the result is a template again (literal braces re-escaped),
/// unless `final_pass` is set, in which case the result is plain text.
pub(crate) fn resolve(s: &str, lookup: &mut dyn FnMut(&[String]) -> Lookup, final_pass: bool) -> Result<Value, String> {
    let pieces = parse(s)?;
    if let [Piece::Var(name)] = pieces.as_slice() {
        match lookup(name) {
            Lookup::Value(v) => return Ok(v),
            Lookup::Keep => return Ok(Value::String(format!("{{{}}}", name.join(".")))),
            Lookup::Unknown(msg) => return Err(msg),
        }
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Lit(l) => out.push_str(&if final_pass { l } else { escape(&l) }),
            Piece::Var(name) => match lookup(&name) {
                Lookup::Value(v) => {
                    let text =
                        scalar_text(&v).ok_or_else(|| format!("placeholder `{{{}}}` is a {} and cannot be spliced into text", name.join("."), kind(&v)))?;
                    out.push_str(&if final_pass { text } else { escape(&text) });
                }
                Lookup::Keep => out.push_str(&format!("{{{}}}", name.join("."))),
                Lookup::Unknown(msg) => return Err(msg),
            },
        }
    }
    Ok(Value::String(out))
}

/// Resolves the placeholders of a string into one or more arguments: an argument that is
/// exactly one placeholder naming a list becomes one argument per element.
pub(crate) fn resolve_args(s: &str, lookup: &mut dyn FnMut(&[String]) -> Lookup) -> Result<Vec<String>, String> {
    match resolve(s, lookup, true)? {
        Value::Array(items) => items.iter().map(|v| scalar_text(v).ok_or_else(|| format!("`{s}` expands to a nested {}", kind(v)))).collect(),
        v => Ok(vec![scalar_text(&v).ok_or_else(|| format!("`{s}` expands to a {}, not text", kind(&v)))?]),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn look(name: &[String]) -> Lookup {
        match name.join(".").as_str() {
            "matrix.b" => Lookup::Value(json!("cpu")),
            "params.n" => Lookup::Value(json!(4)),
            "deps.all" => Lookup::Value(json!(["a", "b"])),
            "outs.x" => Lookup::Keep,
            other => Lookup::Unknown(format!("unknown `{other}`")),
        }
    }

    #[test]
    fn whole_placeholder_keeps_its_type() {
        assert_eq!(resolve("{params.n}", &mut look, false).unwrap(), json!(4));
    }

    #[test]
    fn spliced_placeholders_become_text_and_kept_ones_stay() {
        let v = resolve("--b={matrix.b} -n{params.n} {outs.x} {{lit}}", &mut look, false).unwrap();
        assert_eq!(v, json!("--b=cpu -n4 {outs.x} {{lit}}"));
        let v = resolve("{{lit}} {matrix.b}", &mut look, true).unwrap();
        assert_eq!(v, json!("{lit} cpu"));
    }

    #[test]
    fn list_placeholder_expands_to_several_arguments() {
        assert_eq!(resolve_args("{deps.all}", &mut look).unwrap(), vec!["a", "b"]);
        assert!(resolve_args("x{deps.all}", &mut look).is_err());
    }

    #[test]
    fn malformed_templates_are_errors() {
        assert!(resolve("{matrix.b", &mut look, false).unwrap_err().contains("unclosed"));
        assert!(resolve("a}b", &mut look, false).unwrap_err().contains("unmatched"));
        assert!(resolve("{}", &mut look, false).unwrap_err().contains("malformed"));
        assert!(resolve("{nope}", &mut look, false).unwrap_err().contains("unknown `nope`"));
    }
}
