//! A hostile cache server on a loopback port: it serves whatever bytes a test puts under a
//! path (GET and HEAD), answers every PUT with 201 and keeps nothing, and counts what it was
//! asked. Crafted entries go in with [`Server::put`], exactly as anyone with write access to
//! a real server could store them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    files: BTreeMap<String, Vec<u8>>,
    /// `METHOD /path` of every request, in order.
    requests: Vec<String>,
    /// When set, every body is sent one byte at a time with this pause between bytes.
    trickle: Option<Duration>,
}

pub struct Server {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}/cache", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Server { url, state }
    }

    /// The base URL, for `--remote-cache`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves `bytes` at `<url>/<path>` (`ac/<key>`, `cas/<sha256>`).
    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.state.lock().unwrap().files.insert(format!("/cache/{path}"), bytes.into());
    }

    /// Sends every body one byte per `pause`.
    pub fn trickle(&self, pause: Duration) {
        self.state.lock().unwrap().trickle = Some(pause);
    }

    /// `METHOD /cache/path` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let (body, trickle) = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!("{method} {path}"));
        (s.files.get(&path).cloned(), s.trickle)
    };
    let mut out = stream;
    if method == "PUT" {
        std::io::copy(&mut reader.by_ref().take(length as u64), &mut std::io::sink())?;
        return out.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let Some(body) = body else {
        return out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    if method == "HEAD" {
        return Ok(());
    }
    match trickle {
        None => out.write_all(&body),
        Some(pause) => {
            for b in body {
                out.write_all(&[b])?;
                out.flush()?;
                std::thread::sleep(pause);
            }
            Ok(())
        }
    }
}
