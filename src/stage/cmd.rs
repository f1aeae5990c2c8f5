//! The generic `cmd` kind: an argv run without a shell, in the workspace root.
//!
//! ```toml
//! [stages.baseline]
//! cmd = ["python3", "bench/torch_baseline.py", "--model", "{deps.model}", "-o", "{outs.records}"]
//! deps = { model = "out/export/model.onnx", script = "bench/torch_baseline.py" }
//! outs = { records = "records.jsonl" }
//! env = { OMP_NUM_THREADS = "4" }
//! timeout = 600
//! ```
//!
//! `{deps.NAME}` becomes the input's path (one argument per path when the dep names
//! several), `{outs.NAME}` a fresh staging path the command must write; `{deps}` and `{outs}`
//! stand for all of them. The command sees `TR118_NODE` (its node id), `TR118_SCRATCH` (a
//! private scratch directory) and `TR118_DEGRADED_FILE`: writing a reason there and exiting
//! 0 finishes the node as degraded, cached with that reason.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Kind, LowerCx, LowerError, Outcome, RunCx, StageError};
use crate::diag;
use crate::pipeline;
use crate::pipeline::NodeSpec;
use crate::pipeline::limits::MAX_TIMEOUT_SECS;
use crate::pipeline::template::{self, Lookup};

pub(crate) struct Cmd;

/// Strings are already templates; a number or boolean becomes one (no braces to escape).
fn template_escape(s: &str, is_template: bool) -> String {
    if is_template { s.to_string() } else { s.replace('{', "{{").replace('}', "}}") }
}

impl Kind for Cmd {
    const NAME: &'static str = "cmd";
    const FIELDS: &'static [&'static str] = &["cmd", "env", "timeout"];
    const KEEPS_PLACEHOLDERS: bool = true;

    fn implementation(&self, _node: &NodeSpec) -> Vec<&'static str> {
        ["stage", "cmd"].into()
    }

    fn lower(&self, cx: &LowerCx<'_>) -> Result<Value, Vec<LowerError>> {
        let err = |field: Vec<String>, message: String, help: Option<String>| vec![LowerError { field, message, help }];
        let argv = match cx.fields.get("cmd") {
            None => {
                return Err(err(
                    vec![],
                    "a `cmd` stage needs `cmd`, the argv to run".into(),
                    Some("e.g. cmd = [\"python3\", \"run.py\", \"{outs.result}\"]".into()),
                ));
            }
            Some(Value::String(s)) => {
                return Err(err(
                    vec!["cmd".into()],
                    "`cmd` must be an argv list; it is run without a shell".into(),
                    Some(format!("write [\"sh\", \"-c\", {s:?}] to use a shell")),
                ));
            }
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(_) => return Err(err(vec!["cmd".into()], "`cmd` must be a non-empty list of strings".into(), None)),
        };
        let mut errors = Vec::new();
        let mut args = Vec::new();
        for (i, arg) in argv.iter().enumerate() {
            let field = vec!["cmd".to_string(), i.to_string()];
            let s = match arg {
                Value::String(s) => s.clone(),
                // `{params.n}` alone resolves to the param's own type; an argument is text.
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    errors.push(LowerError { field, message: format!("argument {i} of `cmd` must be a string"), help: None });
                    continue;
                }
            };
            args.push(Value::String(template_escape(&s, arg.is_string())));
            let names = match template::placeholders(&s) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(LowerError { field, message: e, help: None });
                    continue;
                }
            };
            for name in names {
                let (ns, rest) = name.split_once('.').unwrap_or((name.as_str(), ""));
                let known = match ns {
                    "deps" => cx.deps,
                    "outs" => cx.outs,
                    _ => continue,
                };
                if !rest.is_empty() && !known.iter().any(|k| k == rest) {
                    let help = diag::did_you_mean(rest, known.iter().map(String::as_str)).map(|c| format!("did you mean `{{{ns}.{c}}}`?"));
                    let declared = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                    errors.push(LowerError {
                        field: field.clone(),
                        message: format!("placeholder `{{{name}}}` names no declared {} (declared: {declared})", &ns[..ns.len() - 1]),
                        help,
                    });
                }
            }
        }
        let mut env = serde_json::Map::new();
        match cx.fields.get("env") {
            None => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::String(_) => {
                            env.insert(k.clone(), v.clone());
                        }
                        Value::Number(_) | Value::Bool(_) => {
                            env.insert(k.clone(), Value::String(v.to_string()));
                        }
                        _ => errors.push(LowerError { field: vec!["env".into(), k.clone()], message: format!("env `{k}` must be a string"), help: None }),
                    }
                }
            }
            Some(_) => errors.push(LowerError { field: vec!["env".into()], message: "`env` must be a table of variable = value".into(), help: None }),
        }
        let timeout = match cx.fields.get("timeout") {
            None => Value::Null,
            // A deadline past the end of time panics; anything near it is a typo.
            Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t > 0.0 && t <= MAX_TIMEOUT_SECS) => Value::Number(n.clone()),
            Some(v) => {
                // TOML's `nan` and `inf` arrive here as null.
                let found = if v.is_null() { "a number that is not finite".to_string() } else { v.to_string() };
                errors.push(LowerError {
                    field: vec!["timeout".into()],
                    message: format!("`timeout` must be a number of seconds, more than 0 and at most {MAX_TIMEOUT_SECS} (30 days), found {found}"),
                    help: None,
                });
                Value::Null
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut config = serde_json::Map::new();
        config.insert("cmd".into(), Value::Array(args));
        if !env.is_empty() {
            config.insert("env".into(), Value::Object(env));
        }
        if !timeout.is_null() {
            config.insert("timeout".into(), timeout);
        }
        Ok(Value::Object(config))
    }

    fn run(&self, cx: &mut RunCx<'_>) -> Result<Outcome, StageError> {
        let config = &cx.node.config;
        let node = cx.node;
        let mut lookup = |name: &[String]| -> Lookup {
            let text = |p: &std::path::Path| Value::String(p.to_string_lossy().into_owned());
            let found = match (name[0].as_str(), name.get(1)) {
                ("node", None) => Ok(Value::String(node.id.clone())),
                ("stage", None) => Ok(Value::String(node.stage.clone())),
                ("matrix", Some(_)) => pipeline::matrix_lookup(&node.matrix, &node.stage, name),
                ("params", Some(_)) => pipeline::params_lookup(&node.params, name).unwrap_or_else(|| Err(format!("no param `{}`", name[1]))),
                ("deps", None) => Ok(Value::Array(cx.deps.values().flatten().map(|p| Value::String(p.clone())).collect())),
                ("deps", Some(n)) => match cx.deps.get(n) {
                    Some(paths) if paths.len() == 1 => Ok(Value::String(paths[0].clone())),
                    Some(paths) => Ok(Value::Array(paths.iter().map(|p| Value::String(p.clone())).collect())),
                    None => Err(format!("no dep `{n}`")),
                },
                ("outs", None) => Ok(Value::Array(cx.outs.values().map(|p| text(p)).collect())),
                ("outs", Some(n)) => cx.outs.get(n).map(|p| text(p)).ok_or_else(|| format!("no out `{n}`")),
                _ => Err(format!("placeholder `{{{}}}` is not known at run time", name.join("."))),
            };
            match found {
                Ok(v) => Lookup::Value(v),
                Err(e) => Lookup::Unknown(e),
            }
        };
        let mut argv = Vec::new();
        for arg in config["cmd"].as_array().into_iter().flatten() {
            argv.extend(template::resolve_args(arg.as_str().unwrap_or_default(), &mut lookup)?);
        }
        let degraded_file = cx.scratch.join("degraded");
        let log = cx.log.try_clone().map_err(|e| format!("cannot share the log file: {e}"))?;
        let log2 = cx.log.try_clone().map_err(|e| format!("cannot share the log file: {e}"))?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(cx.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env("TR118_NODE", &cx.node.id)
            .env("TR118_SCRATCH", cx.scratch)
            .env("TR118_DEGRADED_FILE", &degraded_file);
        if let Some(env) = config.get("env").and_then(Value::as_object) {
            for (k, v) in env {
                command.env(k, v.as_str().unwrap_or_default());
            }
        }
        // Validated when the stage was loaded; checked again so that no value can panic here.
        let timeout = match config.get("timeout").and_then(Value::as_f64) {
            None => None,
            Some(secs) => Some((secs, Duration::try_from_secs_f64(secs).map_err(|e| format!("`timeout` {secs} s: {e}"))?)),
        };
        let mut child = command.spawn().map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
        let status = match timeout {
            None => child.wait().map_err(|e| format!("waiting for `{}`: {e}", argv[0]))?,
            Some((secs, limit)) => {
                // `None` only past the end of the clock: then there is no deadline to keep.
                let deadline = Instant::now().checked_add(limit);
                loop {
                    if let Some(s) = child.try_wait().map_err(|e| format!("waiting for `{}`: {e}", argv[0]))? {
                        break s;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!("command timed out after {secs} s (`timeout`)").into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        if !status.success() {
            return Err(match status.code() {
                Some(code) => format!("command exited with status {code}").into(),
                None => format!("command was killed ({status})").into(),
            });
        }
        let mut reason = String::new();
        if let Ok(mut f) = std::fs::File::open(&degraded_file) {
            let _ = f.read_to_string(&mut reason);
        }
        let reason = reason.trim();
        Ok(if reason.is_empty() { Outcome::Ok } else { Outcome::Degraded(reason.to_string()) })
    }
}
