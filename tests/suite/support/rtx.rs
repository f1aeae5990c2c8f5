//! TensorRT for RTX for tests: the real library and bindings, fetched once by the real binary.
//!
//! The default pipeline's fetch stages for TensorRT for RTX ([`STAGES`]: the library wheel and
//! the bindings per Python) are copied from `pipelines/tr118.toml`, so their pins are the
//! product's. They run once, under a lock, in a workspace of their own in
//! `.tr118-dev/tensorrt-rtx/` (git-ignored); every test workspace then declares the same
//! stages and finds their files through `TR118_DISTDIR` ([`distdir`]), so nothing is
//! downloaded twice. Never skipped: a test of the builder that could pass without it would
//! prove nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Names of the default pipeline's TensorRT for RTX fetch stages.
pub const STAGES: [&str; 3] = ["tensorrt-rtx", "tensorrt-rtx-py311", "tensorrt-rtx-py312"];

/// The deps a `tensorrt-rtx` build names for the library and the bindings.
pub const DEPS: &str = r#"tensorrt_rtx = "out/tensorrt-rtx/*", bindings = "out/tensorrt-rtx-py*/*.so""#;

/// The fetch stages, as TOML, copied from `pipelines/tr118.toml`.
pub fn stages() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/tr118.toml");
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("parse {path}: {e}"));
    let mut out = String::new();
    for name in STAGES {
        let stage = doc["stages"][name].as_table().unwrap_or_else(|| panic!("{path} has no stage `{name}`"));
        let mut wrapper = toml::Table::new();
        let mut stages = toml::Table::new();
        stages.insert(name.to_string(), toml::Value::Table(stage.clone()));
        wrapper.insert("stages".into(), toml::Value::Table(stages));
        out.push_str(&toml::to_string(&wrapper).unwrap_or_else(|e| panic!("{e}")));
        out.push('\n');
    }
    out
}

/// `TR118_DISTDIR` for a test workspace: the fetched stages' outputs.
pub fn distdir() -> &'static str {
    static DISTDIR: OnceLock<String> = OnceLock::new();
    DISTDIR.get_or_init(|| {
        let dir = mirror();
        STAGES.iter().map(|s| dir.join("out").join(s).display().to_string()).collect::<Vec<_>>().join(":")
    })
}

/// The mirror workspace, made (or brought up to date) by `tr118 make` of [`STAGES`]; on a
/// machine without the registries, `TR118_DISTDIR` names where the files already are.
fn mirror() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tr118-dev/tensorrt-rtx");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::write(dir.join("tr118.toml"), stages()).unwrap_or_else(|e| panic!("write the mirror's pipeline: {e}"));
    let out = Command::new(super::workspace::BIN)
        .arg("make")
        .args(STAGES)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("run tr118 in {}: {e}", dir.display()));
    if !out.status.success() {
        panic!("fetching TensorRT for RTX into {} failed:\n{}{}", dir.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    dir
}
