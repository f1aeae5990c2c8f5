//! The remote cache's HTTP client: GET, HEAD and PUT of paths under one base URL, with
//! timeouts, a bounded retry with backoff, and the credentials from the environment.
//!
//! `T` is the request timeout, 20 s unless `TR118_REMOTE_CACHE_TIMEOUT` says otherwise.
//!
//! | limit                | value                                | why                                  |
//! |----------------------|--------------------------------------|--------------------------------------|
//! | connect timeout      | 5 s, or `T` if shorter               | a dead host must not hold up a build |
//! | stall timeout        | `T` without a byte read or written   | a hung server is a dead one          |
//! | total timeout        | `T` + 1 s per MiB of the body        | slow links still move big blobs      |
//! | attempts             | 3, after 0.25 s and 1 s              | rides out a restart or a dropped connection |
//!
//! Retried: connection failures, I/O errors, HTTP 429 and 5xx. Not retried: timeouts (a
//! server that slow would hold every lookup of the build up), and any other status, which
//! will not change by asking again. Redirects are not followed: a cache that moved is
//! configured with its new URL, and credentials never travel to another host.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::digest::hex;

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The slowest transfer rate the total timeout allows for, in bytes per second.
const MIN_RATE: u64 = 1 << 20;
const BACKOFF: [Duration; 2] = [Duration::from_millis(250), Duration::from_millis(1000)];
/// An action-cache entry larger than this is not one tr118 wrote.
const MAX_ENTRY: u64 = 64 << 20;

/// How the client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic <base64(user:password)>`.
    Basic { user: String, password: String },
}

impl std::fmt::Debug for Auth {
    // Never print a secret, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(…)"),
            Auth::Basic { user, .. } => write!(f, "Basic({user}:…)"),
        }
    }
}

impl Auth {
    fn header(&self) -> String {
        match self {
            Auth::Bearer(token) => format!("Bearer {token}"),
            Auth::Basic { user, password } => {
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
            }
        }
    }
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The server, or the way to it: the remote cannot be used.
    #[error("{method} {url}: {cause}")]
    Remote { method: &'static str, url: String, cause: String },
    /// This machine could not keep what arrived (a full disk, say).
    #[error("{0}")]
    Local(String),
}

/// What one attempt came to: worth another try or not.
enum Attempt {
    Retry(String),
    Fatal(String),
    Local(String),
}

/// A blob written to a file as it arrived, with both digests of what was written.
pub(crate) struct Downloaded {
    pub sha256: String,
    pub blake3: Digest,
    pub size: u64,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for the cache at `base` (no trailing `/`).
    pub(crate) fn new(base: &str, auth: Option<&Auth>, timeout: Duration) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            .timeout_per_read(Some(timeout))
            .timeout_per_write(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(format!("tr118/{}", crate::VERSION))
            .build()
            .into();
        Client { agent, base: base.to_string(), auth: auth.map(Auth::header), timeout }
    }

    /// The budget of one request with a body of `size` bytes.
    fn budget(&self, size: u64) -> Duration {
        self.timeout + Duration::from_secs(size / MIN_RATE)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn retrying<T>(&self, method: &'static str, path: &str, mut attempt: impl FnMut(&str) -> Result<T, Attempt>) -> Result<T, HttpError> {
        let url = self.url(path);
        let mut tries = 0;
        loop {
            match attempt(&url) {
                Ok(v) => return Ok(v),
                Err(Attempt::Retry(_)) if tries < BACKOFF.len() => {
                    std::thread::sleep(BACKOFF[tries]);
                    tries += 1;
                }
                Err(Attempt::Retry(cause) | Attempt::Fatal(cause)) => {
                    return Err(HttpError::Remote { method, url, cause });
                }
                Err(Attempt::Local(cause)) => {
                    return Err(HttpError::Local(cause));
                }
            }
        }
    }

    fn request(&self, method: &str, url: &str, body_size: u64) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let timeout = self.budget(body_size);
        let mut req = match method {
            "HEAD" => self.agent.head(url),
            _ => self.agent.get(url),
        };
        // The digest is of the bytes stored, so nothing may decompress them on the way.
        req = req.header("Accept-Encoding", "identity");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        req.config().timeout_global(Some(timeout)).build()
    }

    /// GET of a small document: `None` when the server has no such path.
    pub(crate) fn get_entry(&self, path: &str) -> Result<Option<Vec<u8>>, HttpError> {
        self.retrying("GET", path, |url| {
            let mut resp = self.request("GET", url, 0).call().map_err(transport)?;
            match resp.status().as_u16() {
                404 => Ok(None),
                s if (200..300).contains(&s) => {
                    let mut body = Vec::new();
                    resp.body_mut().with_config().limit(MAX_ENTRY).reader().read_to_end(&mut body).map_err(body_error)?;
                    Ok(Some(body))
                }
                s => Err(status(s, "GET")),
            }
        })
    }

    /// GET of a blob of `size` bytes into a new file `dest`, hashed as it is written: `None`
    /// when the server has no such path. A body longer than `size` is cut off after one byte
    /// more.
    pub(crate) fn get_blob(&self, path: &str, size: u64, dest: &Path) -> Result<Option<Downloaded>, HttpError> {
        self.retrying("GET", path, |url| {
            let resp = self.request("GET", url, size).call().map_err(transport)?;
            match resp.status().as_u16() {
                404 => Ok(None),
                s if (200..300).contains(&s) => {
                    // One byte more than recorded is enough to tell that a body is wrong; the
                    // verification that follows names it as corrupt.
                    let reader = resp.into_body().into_reader().take(size.saturating_add(1));
                    copy_hashing(reader, dest).map(Some)
                }
                s => Err(status(s, "GET")),
            }
        })
    }

    /// HEAD: whether the server has `path`.
    pub(crate) fn exists(&self, path: &str) -> Result<bool, HttpError> {
        self.retrying("HEAD", path, |url| {
            let resp = self.request("HEAD", url, 0).call().map_err(transport)?;
            match resp.status().as_u16() {
                404 => Ok(false),
                s if (200..300).contains(&s) => Ok(true),
                s => Err(status(s, "HEAD")),
            }
        })
    }

    /// PUT of `bytes` to `path`.
    pub(crate) fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), HttpError> {
        self.retrying("PUT", path, |url| self.put(url, bytes.len() as u64, bytes))
    }

    /// PUT of the file at `file` to `path`, streamed.
    pub(crate) fn put_file(&self, path: &str, file: &Path) -> Result<(), HttpError> {
        self.retrying("PUT", path, |url| {
            let f = File::open(file).map_err(|e| Attempt::Fatal(format!("cannot open `{}`: {e}", file.display())))?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.put(url, size, f)
        })
    }

    fn put(&self, url: &str, size: u64, body: impl ureq::AsSendBody) -> Result<(), Attempt> {
        let timeout = self.budget(size);
        let mut req = self.agent.put(url).header("Content-Type", "application/octet-stream");
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.config().timeout_global(Some(timeout)).build().send(body).map_err(transport)?;
        match resp.status().as_u16() {
            s if (200..300).contains(&s) => Ok(()),
            s => Err(status(s, "PUT")),
        }
    }
}

fn transport(e: ureq::Error) -> Attempt {
    match e {
        ureq::Error::Timeout(t) => Attempt::Fatal(format!("timed out ({t})")),
        ureq::Error::ConnectionFailed => Attempt::Retry("connection failed".into()),
        ureq::Error::HostNotFound => Attempt::Fatal("host not found".into()),
        ureq::Error::Io(e) => Attempt::Retry(e.to_string()),
        other => Attempt::Fatal(other.to_string()),
    }
}

/// A body that stopped arriving: a timeout is final (see the module doc), anything else
/// (a dropped connection) is worth another try.
fn body_error(e: io::Error) -> Attempt {
    let timed_out =
        e.kind() == io::ErrorKind::TimedOut || e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()).is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timed_out { Attempt::Fatal(format!("timed out reading the body ({e})")) } else { Attempt::Retry(format!("reading the body: {e}")) }
}

fn status(code: u16, method: &str) -> Attempt {
    let hint = match code {
        300..=399 => "; redirects are not followed: configure the URL it redirects to",
        401 | 403 => "; check the credentials in `TR118_REMOTE_CACHE_TOKEN`, or `TR118_REMOTE_CACHE_USER` and `TR118_REMOTE_CACHE_PASSWORD`",
        405 | 501 if method == "PUT" => "; the server does not accept uploads: enable them (nginx: `dav_methods PUT;`) or use `--remote-read-only`",
        413 => "; the server refuses large uploads (nginx: `client_max_body_size 0;`)",
        _ => "",
    };
    let cause = format!("HTTP {code}{hint}");
    if code == 429 || code >= 500 { Attempt::Retry(cause) } else { Attempt::Fatal(cause) }
}

/// Copies `reader` into a new file `dest`, hashing with SHA-256 and blake3 as it goes.
fn copy_hashing(mut reader: impl Read, dest: &Path) -> Result<Downloaded, Attempt> {
    let local = |e: io::Error| Attempt::Local(format!("writing `{}`: {e}", dest.display()));
    let mut file = File::create(dest).map_err(local)?;
    let mut sha = Sha256::new();
    let mut b3 = blake3::Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body_error(e)),
        };
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(local)?;
        size += n as u64;
    }
    Ok(Downloaded { sha256: hex(&sha.finalize()), blake3: Digest(*b3.finalize().as_bytes()), size })
}

/// SHA-256 and blake3 of a file, read once.
pub(crate) fn hash_both(path: &Path) -> io::Result<(String, Digest, u64)> {
    let mut file = File::open(path)?;
    let mut sha = Sha256::new();
    let mut b3 = blake3::Hasher::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&buf[..n]);
        b3.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&sha.finalize()), Digest(*b3.finalize().as_bytes()), size))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Standard base64 with padding, for the Basic scheme.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn basic_header_is_rfc_7617_example() {
        let auth = Auth::Basic { user: "Aladdin".into(), password: "open sesame".into() };
        assert_eq!(auth.header(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    }

    #[test]
    fn sha256_matches_published_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let dump = format!("{:?} {:?}", Auth::Bearer("s3cret".into()), Auth::Basic { user: "ci".into(), password: "pw".into() });
        assert!(!dump.contains("s3cret") && !dump.contains("pw"), "{dump}");
    }
}
