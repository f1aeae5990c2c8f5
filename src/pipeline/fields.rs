//! Typed access to one TOML table that records which fields were read, so that whatever is
//! left over is reported as unknown, with a suggestion, at its line and column.

use serde_json::Value;

use super::source::{FieldPath, Source};
use crate::diag::{self, Diagnostic};

pub(crate) struct Fields<'a, 'd> {
    table: &'a toml::Table,
    pub path: FieldPath,
    known: Vec<&'a str>,
    src: &'d Source,
    pub diags: &'d mut Vec<Diagnostic>,
}

impl<'a, 'd> Fields<'a, 'd> {
    pub(crate) fn new(table: &'a toml::Table, path: FieldPath, src: &'d Source, diags: &'d mut Vec<Diagnostic>) -> Self {
        Fields { table, path, known: Vec::new(), src, diags }
    }

    pub(crate) fn child(&self, name: &str) -> FieldPath {
        let mut p = self.path.clone();
        p.push(name.to_string());
        p
    }

    pub(crate) fn error(&mut self, path: &[String], message: impl Into<String>, help: Option<String>) {
        self.diags.push(self.src.diag(path, message, help));
    }

    /// Marks `name` as a field this table may have and returns its value.
    pub(crate) fn get(&mut self, name: &'a str) -> Option<&'a toml::Value> {
        self.known.push(name);
        self.table.get(name)
    }

    fn typed<T>(&mut self, name: &'a str, what: &str, f: impl Fn(&'a toml::Value) -> Option<T>) -> Option<T> {
        let v = self.get(name)?;
        let out = f(v);
        if out.is_none() {
            let p = self.child(name);
            self.error(&p, format!("`{name}` must be {what}, found {}", v.type_str()), None);
        }
        out
    }

    pub(crate) fn string(&mut self, name: &'a str) -> Option<String> {
        self.typed(name, "a string", |v| v.as_str().map(str::to_string))
    }

    pub(crate) fn boolean(&mut self, name: &'a str) -> Option<bool> {
        self.typed(name, "a boolean", toml::Value::as_bool)
    }

    pub(crate) fn uint(&mut self, name: &'a str) -> Option<u32> {
        self.typed(name, "a non-negative integer", |v| v.as_integer().and_then(|i| u32::try_from(i).ok()))
    }

    pub(crate) fn table(&mut self, name: &'a str) -> Option<&'a toml::Table> {
        self.typed(name, "a table", toml::Value::as_table)
    }

    pub(crate) fn string_list(&mut self, name: &'a str) -> Option<Vec<String>> {
        self.typed(name, "a list of strings", |v| v.as_array()?.iter().map(|x| x.as_str().map(str::to_string)).collect())
    }

    /// Reports every field that no `get` asked for.
    pub(crate) fn finish(self) {
        for key in self.table.keys() {
            if !self.known.contains(&key.as_str()) {
                let mut p = self.path.clone();
                p.push(key.clone());
                let help = diag::suggest(key, self.known.iter().copied());
                let d = self.src.diag(&p, format!("unknown field `{key}` in `{}`", self.path.join(".")), help);
                self.diags.push(d);
            }
        }
    }
}

/// A TOML value as JSON, the form keys and configs are kept in.
pub(crate) fn to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}
