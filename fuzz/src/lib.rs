//! Every target runs its input through `afl::fuzz_nohook!`, not `afl::fuzz!`: the latter
//! installs a panic hook that aborts at the panic site, which would count a panic tr118
//! catches on purpose (the tokenizer loader's `catch_unwind` around `tokenizers`) as a
//! crash. Without the hook, any panic that escapes the target still aborts the process.
//!
//! What the fuzz targets share: a scratch directory for the library calls that only take a
//! path. One directory per process, reused across inputs: AFL++ runs many inputs in one
//! process (persistent mode), and creating a directory per input would dominate the time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch directory (created on first use, emptied by nobody: the targets
/// overwrite the same few names).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tr118-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// Writes `bytes` to `name` in a fresh subdirectory `sub` of the scratch directory (anything
/// an earlier input left there removed) and returns the file's path.
pub fn write_fresh(sub: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let dir = scratch().join(sub);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch subdirectory");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write the input");
    path
}

/// Splits an input into `n` parts at the separator line `\n--8<--\n`; missing parts are
/// empty. Lets one input carry several files (a `config.json` and its weights).
pub fn split_parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    const SEP: &[u8] = b"\n--8<--\n";
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts.resize(n, &[][..]);
    parts
}
