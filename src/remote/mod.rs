//! The remote cache: a shared cache behind the local store, over plain HTTP(S).
//!
//! CI jobs and the machines of a team point tr118 at one cache server. A node whose key has
//! no local entry is looked up there before it runs (read-through); a node that ran and
//! succeeded is uploaded after it (write-back); `tr118 cache push` and `tr118 cache pull`
//! move whole studies. The local store stays the only thing the engine reads: whatever
//! comes from the remote is verified, written into `cache/` through the store's atomic
//! paths, and then used exactly as a local hit is.
//!
//! # Layout on the server
//!
//! ```text
//! <url>/cas/<sha256 hex>   a blob: an output file, a directory listing, a log
//! <url>/ac/<key hex>       an entry: the node's manifest and the blobs it references
//! ```
//!
//! This is the layout bazel-remote serves and an nginx WebDAV location stores, over GET,
//! HEAD and PUT only. Blobs are named by SHA-256, not by the blake3 digest the local store
//! uses, because bazel-remote refuses a `/cas/` upload that does not hash to its name with
//! SHA-256; with SHA-256 names the same cache works with bazel-remote, nginx and any plain
//! HTTP store. The entry bridges the two: it lists, for every blob the manifest references,
//! its blake3 digest, its SHA-256 and its size.
//!
//! Entry (`/ac/<key>`, JSON, schema 1):
//!
//! | field      | type   | meaning                                                          |
//! |------------|--------|------------------------------------------------------------------|
//! | `schema`   | int    | 1                                                                |
//! | `manifest` | object | the node's manifest, exactly as in `cache/actions/` (see `store::manifest`) |
//! | `blobs`    | list   | `{ blake3, sha256, size }` for every output file, directory listing, listed file and log |
//!
//! Servers: nginx with `dav_methods PUT; create_full_put_path on; client_max_body_size 0;`
//! in a location (the tests run exactly that); bazel-remote started with
//! `--disable_http_ac_validation`, since it otherwise expects `/ac/` bodies to be Bazel's
//! protobuf `ActionResult`s. Any server that stores a PUT body and returns it on GET works.
//!
//! # Trust
//!
//! Nothing that comes back is used unverified. An entry is used only if it parses, its
//! manifest's `key` is the key asked for, its `stage_key` hashes to that key (so it is the
//! entry of this very node, with these very inputs), its status is `ok`, and every blob it
//! references downloads with the SHA-256 it is stored under, the blake3 digest the manifest
//! records and the size the entry lists. Anything else is reported with the node and the
//! blob, ignored, and the node is built locally; a corrupt blob found this way is uploaded
//! again, whole, after the local build. A blob is written to `cache/tmp/` while it is hashed
//! and renamed into the object store only once it has verified, so a bad download never
//! reaches `cache/objects/` or `out/`.
//!
//! Paths and sizes are never the server's to choose: the manifest must verify (its seal, and
//! outputs exactly the paths its stage key declares, each a plain relative name), every
//! listing is re-hashed and path-checked before a file it lists is fetched, and every blob's
//! size must be the one the manifest or listing records, within `TR118_REMOTE_CACHE_MAX_BLOB`
//! and the free space of `cache/`, before it is asked for.
//!
//! What verification cannot catch: anyone allowed to write to the server can store an entry
//! for a key with outputs of their choosing. Give write access to trusted builders only, and
//! run untrusted jobs (pull requests from forks) with `read_only`.
//!
//! # What is shared
//!
//! Only nodes whose result is `ok`. A failed node is never cached at all. A degraded one is
//! cached locally (its key carries the facets the stage declares, so it reruns on this
//! machine once, say, TensorRT is installed) but never uploaded, and a degraded entry from a
//! server is refused: "degraded" is a fact about the machine that produced it (no GPU, a
//! provider missing), and a machine that can do better must not inherit it.
//!
//! Timing nodes (`sweep`, and any stage with `timing = true`) are shared like any other: a
//! node's key holds the environment facets the stage declares, so a latency measured on one
//! CPU or GPU is only ever a hit for machines with the same facet values. That holds only if
//! the stage declares them: the default study's `sweep` declares `cpu`, `cpus` and `gpu`. A
//! timing node that declares none of `cpu`, `gpu` or `host` is still uploaded (its key says
//! it is machine-independent), with a warning that names it.
//!
//! # Failures
//!
//! Requests retry transient failures with backoff and give up on a timeout (20 s per
//! request plus 1 s per MiB of body; `TR118_REMOTE_CACHE_TIMEOUT` sets the 20 s; see
//! [`http`]). The first request that fails for good marks the remote down for the rest of
//! the run, with one warning (`remote cache <url> unreachable (…); continuing with the
//! local cache only`): a build never fails because of its remote cache. `cache push` and
//! `cache pull` do fail (exit 1), since moving entries is all they are asked to do.
//!
//! # Configuration
//!
//! ```toml
//! [cache]
//! remote = "https://cache.example.com/tr118"
//! read_only = true        # look up, never upload
//! ```
//!
//! `--remote-cache URL` on `make` and `cache push|pull` overrides `TR118_REMOTE_CACHE`,
//! which overrides `remote`; `--remote-read-only[=BOOL]` overrides `read_only`. Credentials
//! come from the environment only: `TR118_REMOTE_CACHE_TOKEN` (sent as a Bearer token), or
//! `TR118_REMOTE_CACHE_USER` and `TR118_REMOTE_CACHE_PASSWORD` (Basic). A URL with
//! `user:password@` is refused wherever it is written.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub mod entry;
pub mod http;
pub(crate) mod upload;

pub(crate) use entry::Fetch;
pub(crate) use http::Auth;
pub(crate) use upload::Gate;

pub(crate) const ENV_URL: &str = "TR118_REMOTE_CACHE";
pub(crate) const ENV_TOKEN: &str = "TR118_REMOTE_CACHE_TOKEN";
pub(crate) const ENV_USER: &str = "TR118_REMOTE_CACHE_USER";
pub(crate) const ENV_PASSWORD: &str = "TR118_REMOTE_CACHE_PASSWORD";
pub(crate) const ENV_TIMEOUT: &str = "TR118_REMOTE_CACHE_TIMEOUT";
pub(crate) const ENV_MAX_BLOB: &str = "TR118_REMOTE_CACHE_MAX_BLOB";

/// The largest blob taken from a remote unless `TR118_REMOTE_CACHE_MAX_BLOB` says otherwise.
pub(crate) const DEFAULT_MAX_BLOB: u64 = 64 << 30;

/// `[cache]` of a pipeline file, checked.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// `remote`, a valid URL without credentials, as written.
    pub remote: Option<String>,
    pub read_only: Option<bool>,
}

/// Where the remote cache is and how it may be used, once the pipeline, the environment and
/// the command line are combined.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Without a trailing `/`.
    pub url: String,
    pub read_only: bool,
    pub auth: Option<Auth>,
    /// The budget of a request without a body; see [`http`].
    pub timeout: Duration,
    /// The largest blob this machine takes from the remote, in bytes.
    pub max_blob: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("`{field}` `{url}` is not a usable cache URL: {why}")]
    BadUrl { field: String, url: String, why: String },
    #[error("`{field}` holds credentials (`user:password@`); URLs end up in logs and pipeline files, secrets must not")]
    Credentials { field: String },
    #[error("`{set}` is set but `{missing}` is not")]
    HalfBasic { set: &'static str, missing: &'static str },
    #[error("both `{ENV_TOKEN}` and `{ENV_USER}` are set; the remote cache takes one kind of credentials")]
    TwoAuths,
    #[error("`{ENV_TIMEOUT}` is `{0}`, not a positive number of seconds")]
    BadTimeout(String),
    #[error("`{ENV_MAX_BLOB}` is `{0}`, not a size")]
    BadMaxBlob(String),
}

impl ConfigError {
    pub(crate) fn help(&self) -> Option<String> {
        match self {
            ConfigError::BadUrl { .. } => Some("e.g. `http://127.0.0.1:8080/tr118` or `https://cache.example.com`".into()),
            ConfigError::Credentials { .. } => {
                Some(format!("drop them from the URL and set `{ENV_USER}` and `{ENV_PASSWORD}` (Basic), or `{ENV_TOKEN}` (Bearer), in the environment"))
            }
            ConfigError::HalfBasic { missing, .. } => Some(format!("set `{missing}` too, or use `{ENV_TOKEN}`")),
            ConfigError::TwoAuths => Some(format!("unset `{ENV_TOKEN}`, or `{ENV_USER}` and `{ENV_PASSWORD}`")),
            ConfigError::BadTimeout(_) => Some(format!("e.g. `{ENV_TIMEOUT}=60`, or unset it for {} s", http::DEFAULT_TIMEOUT.as_secs())),
            ConfigError::BadMaxBlob(_) => {
                Some(format!("bytes, or with a suffix K, M, G or T (powers of 1024): e.g. `{ENV_MAX_BLOB}=200G`; unset, {} GiB", DEFAULT_MAX_BLOB >> 30))
            }
        }
    }
}

/// Checks a cache URL written as `field`; returns it without a trailing `/`.
pub(crate) fn check_url(url: &str, field: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl { field: field.into(), url: url.into(), why: why.into() };
    // Before parsing, so that a URL the parser refuses is still never echoed with a secret.
    let authority = url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    if authority.contains('@') {
        return Err(ConfigError::Credentials { field: field.into() });
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e: ureq::http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(bad(&format!("the scheme is `{other}`; use `http` or `https`")));
        }
        None => {
            return Err(bad("it has no scheme; start it with `http://` or `https://`"));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if uri.query().is_some() || url.contains('#') {
        return Err(bad("a query or fragment has no place in a cache URL"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The remote cache's settings, or `None` when none is configured. `cli_url` and
/// `cli_read_only` are the command line's; `env` reads the environment.
pub(crate) fn resolve(
    section: &Section,
    cli_url: Option<&str>,
    cli_read_only: Option<bool>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let url = match (cli_url, env(ENV_URL), &section.remote) {
        (Some(u), _, _) => check_url(u, "--remote-cache")?,
        (None, Some(u), _) => check_url(&u, ENV_URL)?,
        (None, None, Some(u)) => check_url(u, "cache.remote")?,
        (None, None, None) => return Ok(None),
    };
    let auth = match (env(ENV_TOKEN), env(ENV_USER), env(ENV_PASSWORD)) {
        (Some(_), Some(_), _) => return Err(ConfigError::TwoAuths),
        (Some(token), None, _) => Some(Auth::Bearer(token)),
        (None, Some(user), Some(password)) => Some(Auth::Basic { user, password }),
        (None, Some(_), None) => {
            return Err(ConfigError::HalfBasic { set: ENV_USER, missing: ENV_PASSWORD });
        }
        (None, None, Some(_)) => {
            return Err(ConfigError::HalfBasic { set: ENV_PASSWORD, missing: ENV_USER });
        }
        (None, None, None) => None,
    };
    let read_only = cli_read_only.or(section.read_only).unwrap_or(false);
    let timeout = match env(ENV_TIMEOUT) {
        None => http::DEFAULT_TIMEOUT,
        Some(t) => {
            t.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0).and_then(|s| Duration::try_from_secs_f64(s).ok()).ok_or(ConfigError::BadTimeout(t))?
        }
    };
    let max_blob = match env(ENV_MAX_BLOB) {
        None => DEFAULT_MAX_BLOB,
        Some(v) => parse_size(&v).ok_or(ConfigError::BadMaxBlob(v))?,
    };
    Ok(Some(Settings { url, read_only, auth, timeout, max_blob }))
}

/// A size in bytes, with an optional binary suffix `K`, `M`, `G` or `T`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        (i, 'T' | 't') => (&s[..i], 40),
        _ => (s, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// One remote cache for one run of tr118: its client, whether it is down, what it moved.
pub(crate) struct Remote {
    settings: Settings,
    client: http::Client,
    /// Why the remote was given up on, once it was.
    down: OnceLock<String>,
    warnings: Mutex<Vec<String>>,
    /// SHA-256 names of blobs found corrupt on the server: uploaded again, whatever HEAD says.
    suspect: Mutex<BTreeSet<String>>,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    entries_up: AtomicU64,
}

impl Remote {
    pub(crate) fn new(settings: Settings) -> Remote {
        let client = http::Client::new(&settings.url, settings.auth.as_ref(), settings.timeout);
        Remote {
            settings,
            client,
            down: OnceLock::new(),
            warnings: Mutex::new(Vec::new()),
            suspect: Mutex::new(BTreeSet::new()),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            entries_up: AtomicU64::new(0),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.settings.url
    }

    pub(crate) fn read_only(&self) -> bool {
        self.settings.read_only
    }

    /// Why the remote was given up on in this run, if it was.
    pub(crate) fn down(&self) -> Option<&str> {
        self.down.get().map(String::as_str)
    }

    /// Warnings for people, each once, in the order they arose; `warning: ` is the caller's.
    pub(crate) fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes_up(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }

    /// Entries (manifests with their blobs) uploaded.
    pub(crate) fn entries_up(&self) -> u64 {
        self.entries_up.load(Ordering::Relaxed)
    }

    fn warn(&self, message: String) {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(message);
    }

    /// Gives up on the remote for the rest of the run; the first caller's cause is the
    /// one warning.
    fn give_up(&self, cause: String) {
        if self.down.set(cause.clone()).is_ok() {
            self.warn(format!("remote cache {} unreachable ({cause}); continuing with the local cache only", self.settings.url));
        }
    }

    fn suspect(&self, sha256: &str) {
        self.suspect.lock().unwrap_or_else(|p| p.into_inner()).insert(sha256.to_string());
    }

    fn is_suspect(&self, sha256: &str) -> bool {
        self.suspect.lock().unwrap_or_else(|p| p.into_inner()).contains(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn command_line_overrides_environment_overrides_pipeline() {
        let section = Section { remote: Some("http://pipeline:1".into()), read_only: Some(true) };
        let env = env_of(&[(ENV_URL, "http://env:2/")]);
        let s = resolve(&section, Some("http://cli:3/x/"), Some(false), &env).unwrap().unwrap();
        assert_eq!((s.url.as_str(), s.read_only), ("http://cli:3/x", false));
        let s = resolve(&section, None, None, &env).unwrap().unwrap();
        assert_eq!((s.url.as_str(), s.read_only), ("http://env:2", true));
        let s = resolve(&section, None, None, &env_of(&[])).unwrap().unwrap();
        assert_eq!(s.url, "http://pipeline:1");
        assert!(resolve(&Section::default(), None, Some(true), &env_of(&[])).unwrap().is_none());
    }

    #[test]
    fn credentials_come_from_the_environment_only() {
        let s = resolve(&Section::default(), Some("http://h"), None, &env_of(&[(ENV_TOKEN, "t")])).unwrap().unwrap();
        assert_eq!(s.auth, Some(Auth::Bearer("t".into())));
        let env = env_of(&[(ENV_USER, "u"), (ENV_PASSWORD, "p")]);
        let s = resolve(&Section::default(), Some("http://h"), None, &env).unwrap().unwrap();
        assert_eq!(s.auth, Some(Auth::Basic { user: "u".into(), password: "p".into() }));
        let half = resolve(&Section::default(), Some("http://h"), None, &env_of(&[(ENV_USER, "u")]));
        assert!(matches!(half, Err(ConfigError::HalfBasic { missing: ENV_PASSWORD, .. })));
        let both = resolve(&Section::default(), Some("http://h"), None, &env_of(&[(ENV_USER, "u"), (ENV_TOKEN, "t")]));
        assert!(matches!(both, Err(ConfigError::TwoAuths)));
    }

    #[test]
    fn timeout_is_a_positive_number_of_seconds() {
        let at = |t: &str| resolve(&Section::default(), Some("http://h"), None, &env_of(&[(ENV_TIMEOUT, t)]));
        assert_eq!(at("2.5").unwrap().unwrap().timeout, Duration::from_millis(2500));
        for bad in ["0", "-1", "soon", "inf", "1e30"] {
            assert!(matches!(at(bad), Err(ConfigError::BadTimeout(_))), "{bad}");
        }
        let default = resolve(&Section::default(), Some("http://h"), None, &env_of(&[]));
        assert_eq!(default.unwrap().unwrap().timeout, http::DEFAULT_TIMEOUT);
    }

    #[test]
    fn max_blob_is_a_size_with_binary_suffixes() {
        let at = |v: &str| resolve(&Section::default(), Some("http://h"), None, &env_of(&[(ENV_MAX_BLOB, v)]));
        assert_eq!(at("1024").unwrap().unwrap().max_blob, 1024);
        assert_eq!(at("2K").unwrap().unwrap().max_blob, 2048);
        assert_eq!(at("3G").unwrap().unwrap().max_blob, 3 << 30);
        for bad in ["x", "-1", "1.5G", "99999999999T"] {
            assert!(matches!(at(bad), Err(ConfigError::BadMaxBlob(_))), "{bad}");
        }
        let default = resolve(&Section::default(), Some("http://h"), None, &env_of(&[]));
        assert_eq!(default.unwrap().unwrap().max_blob, DEFAULT_MAX_BLOB);
    }

    #[test]
    fn url_with_userinfo_is_refused_without_echoing_it() {
        let e = check_url("https://ci:hunter2@cache.example.com/x", "--remote-cache").unwrap_err();
        assert!(matches!(e, ConfigError::Credentials { .. }));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("`--remote-cache`"), "{e}");
    }

    #[test]
    fn url_needs_http_scheme_and_host() {
        assert!(check_url("ftp://h/x", "f").is_err());
        assert!(check_url("cache.example.com", "f").is_err());
        assert!(check_url("http://h/x?y=1", "f").is_err());
        assert_eq!(check_url("https://h:8443/a/b/", "f").unwrap(), "https://h:8443/a/b");
    }
}
