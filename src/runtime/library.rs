//! Finding, probing and loading the ONNX Runtime shared library (see the module doc of
//! [`crate::runtime`] for why the probe comes first).

use std::ffi::{CStr, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use super::RuntimeError;
use crate::digest::{self, Digest};

/// The environment variable `ort` itself reads, and so do we.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The release `scripts/fetch-ort.sh` fetches and the tests expect.
pub const PINNED_VERSION: &str = "1.31.1";

/// What a stage's key needs to know of the library it ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeInfo {
    /// `GetVersionString`, e.g. `1.31.1`.
    pub version: String,
    /// The file, canonicalised. For people: never part of a key.
    pub path: PathBuf,
    /// blake3 of the file's bytes.
    pub digest: Digest,
    /// `GetAvailableProviders`: the execution providers the library was built with, in its
    /// order of preference (e.g. `CUDAExecutionProvider`, `CPUExecutionProvider`). Built with is
    /// not the same as usable: CUDA also needs a GPU and the CUDA libraries.
    pub providers: Vec<String>,
    /// `GetBuildInfoString`: git branch and commit, build type, compiler flags.
    pub build_info: String,
}

impl RuntimeInfo {
    pub fn has_provider(&self, ort_name: &str) -> bool {
        self.providers.iter().any(|p| p == ort_name)
    }
}

/// The loaded library and the `ort` environment every session of this process belongs to.
pub struct Runtime {
    pub(super) info: RuntimeInfo,
    pub(super) env: ort::environment::Environment,
    /// The probe's handle, kept open so the library is never unloaded between the probe and
    /// `ort`'s own `dlopen` of the same file.
    _library: libloading::Library,
}

impl Runtime {
    pub fn info(&self) -> &RuntimeInfo {
        &self.info
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("info", &self.info).finish_non_exhaustive()
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The minimum `MAJOR.MINOR` this build accepts: the C API version `ort` was compiled for
/// (`api-31` → 1.31). `ort` compares only the minor number; a 2.x library is refused here too.
pub fn required_version() -> (u32, u32) {
    (1, ort::MINOR_VERSION)
}

/// The library to use: `explicit`, else `ORT_DYLIB_PATH`. Not checked for existence.
pub fn library_path(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os(ORT_DYLIB_ENV) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(RuntimeError::NoLibrary),
    }
}

/// Checks the library without loading it into `ort`: see the table in [`crate::runtime`].
pub fn probe(explicit: Option<&Path>) -> Result<RuntimeInfo, RuntimeError> {
    let path = resolve(&library_path(explicit)?)?;
    open(&path).map(|(_, info)| info)
}

/// The process's runtime, if [`init`] has succeeded.
pub fn current() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Probes the library and loads it into `ort`, once per process. Later calls that resolve to
/// the same file (or to none at all) return the same runtime; a different file is
/// [`RuntimeError::AlreadyLoaded`].
pub fn init(explicit: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(rt) = RUNTIME.get() {
        if let Ok(p) = library_path(explicit) {
            let requested = std::fs::canonicalize(&p).unwrap_or(p);
            if requested != rt.info.path {
                return Err(RuntimeError::AlreadyLoaded { loaded: rt.info.path.clone(), requested });
            }
        }
        return Ok(rt);
    }
    let path = resolve(&library_path(explicit)?)?;
    let (library, info) = open(&path)?;
    // The path is absolute: `ort` resolves a relative one against the executable's directory
    // first, which could load a different file than the one probed.
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::Ort { context: format!("loading `{}`", path.display()), message: e.to_string() })?;
    let env = builder
        .with_name("tr118")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::Ort { context: "creating the environment".into(), message: e.to_string() })?;
    Ok(RUNTIME.get_or_init(|| Runtime { info, env, _library: library }))
}

/// Existence first (so a missing file is not reported as a `dlopen` failure), then the
/// canonical path (so one file reached through two names is one library).
fn resolve(path: &Path) -> Result<PathBuf, RuntimeError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RuntimeError::LibraryNotFound { path: path.to_path_buf() }),
        Err(source) => Err(RuntimeError::Io { path: path.to_path_buf(), source }),
        Ok(m) if !m.is_file() => Err(RuntimeError::NotALibrary { path: path.to_path_buf(), reason: "not a regular file".into() }),
        Ok(_) => std::fs::canonicalize(path).map_err(|source| RuntimeError::Io { path: path.to_path_buf(), source }),
    }
}

/// Opens the library and asks it who it is, through the two entry points every ONNX Runtime
/// since 1.0 has kept stable: `OrtGetApiBase` → `GetVersionString`, then `GetApi`.
fn open(path: &Path) -> Result<(libloading::Library, RuntimeInfo), RuntimeError> {
    // SAFETY: loading runs the library's initialisers. The file is the one the user named as
    // ONNX Runtime; nothing in tr118 can vouch for it beyond the checks that follow.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| RuntimeError::NotALibrary { path: path.to_path_buf(), reason: dlopen_reason(&e, path) })?;
    let base = {
        // SAFETY: the signature is `const OrtApiBase* OrtGetApiBase(void)` in every release.
        let get_base = unsafe { library.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase") }
            .map_err(|_| RuntimeError::NotOnnxRuntime { path: path.to_path_buf() })?;
        unsafe { get_base() }
    };
    if base.is_null() {
        return Err(RuntimeError::NotOnnxRuntime { path: path.to_path_buf() });
    }
    // SAFETY: `base` is the library's static `OrtApiBase`; the version string is static too.
    let version = unsafe { c_string(((*base).GetVersionString)()) };
    check_version(path, &version)?;

    // SAFETY: `GetApi` returns null for an API version the library does not serve.
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    let Some(api) = (unsafe { api.as_ref() }) else {
        let (major, minor) = required_version();
        return Err(RuntimeError::TooOld { path: path.to_path_buf(), found: version, required: format!("{major}.{minor}") });
    };
    let providers = available_providers(api).map_err(|message| RuntimeError::Ort { context: "listing execution providers".into(), message })?;
    // SAFETY: a static, NUL-terminated string owned by the library.
    let build_info = unsafe { c_string((api.GetBuildInfoString)()) };
    let (digest, _) = digest::hash_file(path).map_err(|source| RuntimeError::Io { path: path.to_path_buf(), source })?;
    Ok((library, RuntimeInfo { version, path: path.to_path_buf(), digest, providers, build_info }))
}

/// The provider libraries beside `library`, by file name, with their digests, sorted: ONNX
/// Runtime loads `libonnxruntime_providers_shared.so`, `…_cuda.so`, `…_tensorrt.so` and their
/// kin from the directory of the library it runs from when a session asks for their provider,
/// so they are as much the runtime as the library itself. `library` is the file as loaded (the
/// canonical path of [`RuntimeInfo::path`]). A file that cannot be read is listed without a
/// digest.
pub fn provider_libraries(library: &Path) -> Vec<(String, Option<Digest>)> {
    let Some(dir) = library.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(String, Option<Digest>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("libonnxruntime_providers_"))
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), digest::hash_file(&e.path()).ok().map(|(d, _)| d)))
        .collect();
    found.sort();
    found
}

/// `MAJOR.MINOR.PATCH` with `(MAJOR, MINOR)` at least [`required_version`].
fn check_version(path: &Path, found: &str) -> Result<(), RuntimeError> {
    let parsed = parse_version(found).ok_or_else(|| RuntimeError::BadVersion { path: path.to_path_buf(), found: found.to_string() })?;
    let (major, minor) = required_version();
    if (parsed.0, parsed.1) < (major, minor) || parsed.0 > major {
        return Err(RuntimeError::TooOld { path: path.to_path_buf(), found: found.to_string(), required: format!("{major}.{minor}") });
    }
    Ok(())
}

fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    // Patch may carry a suffix (`1.31.1-dev`); only its leading digits count.
    let patch_text = parts.next()?;
    let digits: String = patch_text.chars().take_while(char::is_ascii_digit).collect();
    let patch = digits.parse().ok()?;
    Some((major, minor, patch))
}

fn available_providers(api: &ort::sys::OrtApi) -> Result<Vec<String>, String> {
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut len: c_int = 0;
    // SAFETY: the out-pointers are valid; the list is released below with its own length.
    unsafe { status(api, (api.GetAvailableProviders)(&mut list, &mut len))? };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let names = (0..len.max(0) as usize).map(|i| unsafe { c_string(*list.add(i)) }).collect();
    unsafe { status(api, (api.ReleaseAvailableProviders)(list, len))? };
    Ok(names)
}

/// An `OrtStatus*` as a result, releasing it.
unsafe fn status(api: &ort::sys::OrtApi, s: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if s.0.is_null() {
        return Ok(());
    }
    let message = unsafe { c_string((api.GetErrorMessage)(s.0)) };
    unsafe { (api.ReleaseStatus)(s.0) };
    Err(message)
}

unsafe fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `dlerror()`'s text (libloading keeps it as the error's source), without the path it
/// starts with: `invalid ELF header`, `wrong ELF class: ELFCLASS32`, a missing dependency.
fn dlopen_reason(e: &libloading::Error, path: &Path) -> String {
    let text = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    let prefix = format!("{}: ", path.display());
    text.strip_prefix(&prefix).map(str::to_string).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_older_than_the_compiled_api_are_refused() {
        let p = Path::new("/lib/libonnxruntime.so");
        let (major, minor) = required_version();
        assert!(check_version(p, &format!("{major}.{minor}.0")).is_ok());
        assert!(check_version(p, &format!("{major}.{}.2", minor + 1)).is_ok());
        let err = check_version(p, &format!("{major}.{}.0", minor - 1)).unwrap_err();
        assert!(matches!(err, RuntimeError::TooOld { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("{major}.{}.0", minor - 1)) && text.contains("onnxruntime==1.31.1"), "{text}");
        assert!(matches!(check_version(p, "2.0.0"), Err(RuntimeError::TooOld { .. })));
        assert!(matches!(check_version(p, "1.x"), Err(RuntimeError::BadVersion { .. })));
    }

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse_version("1.31.1"), Some((1, 31, 1)));
        assert_eq!(parse_version("1.32.0-dev"), Some((1, 32, 0)));
        assert_eq!(parse_version("1.31"), None);
    }

    #[test]
    fn the_build_requires_api_31() {
        // `Cargo.toml` enables `api-31`; the pinned library must satisfy it.
        assert_eq!(required_version(), (1, 31));
        let pinned = parse_version(PINNED_VERSION).unwrap();
        assert!((pinned.0, pinned.1) >= required_version());
    }
}
