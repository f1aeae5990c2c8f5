//! A real cache server for the remote cache tests: nginx with a WebDAV PUT location on a
//! loopback port, started as the current user with a generated configuration in a temp dir,
//! killed on drop. The binary comes from `scripts/ensure-nginx.sh`, which installs Debian's
//! `nginx` if there is none.
//!
//! What it stores lies under [`Nginx::root`] (`cas/<sha256>`, `ac/<key>`), so a test can
//! read, corrupt or replace entries as a broken or hostile server would; every request is
//! in [`Nginx::requests`].

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Who the server lets in.
pub enum Access {
    Anyone,
    /// HTTP Basic with this user and password.
    Basic(&'static str, &'static str),
    /// `Authorization: Bearer <token>` and nothing else.
    Bearer(&'static str),
}

pub struct Nginx {
    child: Child,
    dir: TempDir,
    port: u16,
}

fn binary() -> &'static Path {
    static NGINX: OnceLock<PathBuf> = OnceLock::new();
    NGINX.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ensure-nginx.sh");
        let out = Command::new("bash").arg(script).output().unwrap_or_else(|e| panic!("running `{script}`: {e}"));
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || path.is_empty() {
            panic!("no nginx for the remote cache tests: `scripts/ensure-nginx.sh` failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        PathBuf::from(path)
    })
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind a loopback port").port()
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_with(Access::Anyone)
    }

    pub fn start_with(access: Access) -> Nginx {
        let dir = tempfile::Builder::new().prefix("tr118-nginx-").tempdir().expect("create a temp dir");
        fs::create_dir_all(dir.path().join("root")).unwrap();
        let auth = match access {
            Access::Anyone => String::new(),
            Access::Basic(user, password) => {
                fs::write(dir.path().join("htpasswd"), format!("{user}:{{PLAIN}}{password}\n")).unwrap();
                format!("auth_basic \"tr118\"; auth_basic_user_file {}/htpasswd;", dir.path().display())
            }
            Access::Bearer(token) => {
                format!("if ($http_authorization != \"Bearer {token}\") {{ return 401; }}")
            }
        };
        // Another process may take the port between our probe and nginx's bind: try again.
        for _ in 0..5 {
            let port = free_port();
            let d = dir.path().display();
            let conf = format!(
                r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/root;
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
            {auth}
        }}
    }}
}}
"#
            );
            fs::write(dir.path().join("nginx.conf"), conf).unwrap();
            let mut child = Command::new(binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, dir, port };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let log = fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start:\n{log}");
    }

    /// The cache's URL, as `--remote-cache` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps what it was sent.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Files stored, relative to [`Nginx::root`], sorted.
    pub fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            let Ok(entries) = fs::read_dir(dir) else {
                return;
            };
            for entry in entries {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                if entry.file_type().unwrap().is_dir() {
                    walk(&entry.path(), &child, out);
                } else {
                    out.push(child);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root(), "", &mut out);
        out.sort();
        out
    }

    /// The stored file whose content is `bytes`, relative to the root.
    #[track_caller]
    pub fn file_holding(&self, bytes: &[u8]) -> String {
        let found: Vec<String> = self.files().into_iter().filter(|f| fs::read(self.root().join(f)).is_ok_and(|b| b == bytes)).collect();
        assert_eq!(found.len(), 1, "expected one stored file holding {:?}, found {found:?}", String::from_utf8_lossy(bytes));
        found.into_iter().next().unwrap()
    }

    /// `METHOD path status` of every request served so far.
    pub fn requests(&self) -> Vec<String> {
        // nginx writes a request's log line after answering it; give the last one a moment.
        std::thread::sleep(Duration::from_millis(50));
        let log = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                // `… "PUT /cas/… HTTP/1.1" 201 …`
                let (_, rest) = l.split_once('"')?;
                let (request, rest) = rest.split_once('"')?;
                let mut r = request.split(' ');
                let status = rest.split_whitespace().next()?;
                Some(format!("{} {} {status}", r.next()?, r.next()?))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
