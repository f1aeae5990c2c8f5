//! Paths as results name them.
//!
//! What a node writes — its outputs, a degraded reason — is hashed into the keys of the nodes
//! downstream of it, so it must be the same bytes in every checkout of a study: a path inside
//! the workspace is named relative to the workspace root (`lib/libonnxruntime.so`), never by
//! where the checkout happens to live (`/home/ana/tr118/lib/libonnxruntime.so`). A path
//! outside the workspace (a system library, `trtexec` under `/usr`) is a fact about the
//! machine and keeps its absolute name.
//!
//! The workspace is the process's current directory: `tr118` enters it (`-C DIR`) before it
//! reads anything.

use std::path::{Component, Path, PathBuf};

/// The workspace root's absolute names: the physical one (`getcwd`), and `PWD` when it names
/// the same directory through a symbolic link.
fn roots() -> Vec<PathBuf> {
    let Ok(cwd) = std::env::current_dir() else { return Vec::new() };
    let mut roots = vec![cwd.clone()];
    if let Some(pwd) = std::env::var_os("PWD").map(PathBuf::from)
        && pwd.is_absolute()
        && pwd != cwd
        && std::fs::canonicalize(&pwd).is_ok_and(|p| p == cwd)
    {
        roots.push(pwd);
    }
    roots
}

/// `path` as a result names it: relative to the workspace when it is inside it (directly or
/// once symbolic links are resolved), as given otherwise. `./` prefixes are dropped.
pub(crate) fn shown(path: &Path) -> String {
    if path.is_relative() {
        let clean: PathBuf = path.components().filter(|c| !matches!(c, Component::CurDir)).collect();
        return if clean.as_os_str().is_empty() { ".".into() } else { clean.display().to_string() };
    }
    let canonical = std::fs::canonicalize(path).ok();
    for root in roots() {
        for p in std::iter::once(path).chain(canonical.as_deref()) {
            if let Ok(rel) = p.strip_prefix(&root) {
                return if rel.as_os_str().is_empty() { ".".into() } else { rel.display().to_string() };
            }
        }
    }
    path.display().to_string()
}

/// `text` — a message written by another program (ONNX Runtime, Python) — with every
/// absolute name of a path inside the workspace made relative to it.
pub(crate) fn relative_text(text: &str) -> String {
    let mut out = text.to_string();
    for root in roots() {
        let root = root.display().to_string();
        if root == "/" || root.is_empty() {
            continue;
        }
        out = replace_root(&out, &root);
    }
    out
}

/// Replaces `root/` by nothing and a bare `root` (followed by no further path character) by
/// `.`; `root` followed by another name character (`/tmp/ws2` for root `/tmp/ws`) is left.
fn replace_root(text: &str, root: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(root) {
        out.push_str(&rest[..at]);
        let after = &rest[at + root.len()..];
        match after.chars().next() {
            Some('/') => rest = &after[1..],
            Some(c) if c.is_alphanumeric() || "._-~+@".contains(c) => {
                out.push_str(root);
                rest = after;
            }
            _ => {
                out.push('.');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A declared path must stay inside the workspace: relative, no `..`, no empty parts.
pub(crate) fn check_rel_path(p: &str, what: &str) -> Result<(), String> {
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    if trimmed.is_empty() {
        return Err(format!("{what} path is empty"));
    }
    if p.starts_with('/') || p.starts_with('\\') || (p.len() > 1 && p.as_bytes()[1] == b':') {
        return Err(format!("{what} `{p}` is an absolute path; paths are relative to the workspace root"));
    }
    if trimmed.split('/').any(|c| c == "..") {
        return Err(format!("{what} `{p}` escapes the workspace (`..`)"));
    }
    if trimmed.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(format!("{what} `{p}` has an empty or `.` component; write it as a plain relative path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths_that_escape_are_rejected() {
        assert!(check_rel_path("a/b.txt", "out").is_ok());
        assert!(check_rel_path("dir/", "out").is_ok());
        assert!(check_rel_path("../x", "out").unwrap_err().contains("escapes"));
        assert!(check_rel_path("a/../../x", "out").unwrap_err().contains("escapes"));
        assert!(check_rel_path("/etc/passwd", "out").unwrap_err().contains("absolute"));
        assert!(check_rel_path("", "out").is_err());
        assert!(check_rel_path("a//b", "out").is_err());
    }

    #[test]
    fn the_root_and_paths_below_it_become_relative_and_lookalikes_stay() {
        let r = "/tmp/ws";
        assert_eq!(replace_root("at `/tmp/ws/lib/x.so` offers", r), "at `lib/x.so` offers");
        assert_eq!(replace_root("in /tmp/ws: gone", r), "in .: gone");
        assert_eq!(replace_root("/tmp/ws2/lib and /tmp/ws", r), "/tmp/ws2/lib and .");
        assert_eq!(replace_root("nothing here", r), "nothing here");
    }

    #[test]
    fn shown_drops_dot_prefixes_and_keeps_outside_paths_absolute() {
        assert_eq!(shown(Path::new("./out/export/model.onnx")), "out/export/model.onnx");
        assert_eq!(shown(Path::new("lib/x.so")), "lib/x.so");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(shown(&cwd.join("lib/x.so")), "lib/x.so");
        assert_eq!(shown(Path::new("/nonexistent-tr118/x.so")), "/nonexistent-tr118/x.so");
    }
}
