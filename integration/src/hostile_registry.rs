//! A registry that misbehaves on purpose: a plain HTTP/1.1 server on 127.0.0.1 (std
//! threads, one per connection) whose every answer a test chooses — endless bodies,
//! bodies trickled one byte at a time, connections that never answer, redirect loops
//! — next to well-behaved routes serving a real image from the forge. It records the
//! requests it saw, so tests can also check which credentials went where.
//!
//! Every connection thread stops when the client goes away or the server is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::forge::BuiltImage;

/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 64 << 10;
/// Longest request body read (token POSTs are small).
const MAX_BODY: usize = 1 << 20;

/// A request the registry received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a response body is sent.
#[derive(Clone, Debug)]
pub enum Body {
    /// All at once, with its Content-Length.
    Bytes(Vec<u8>),
    /// Zeros until the client hangs up (no Content-Length, unless the reply sets one).
    Endless,
    /// These bytes, `chunk` at a time with a pause of `every` between chunks.
    Trickle {
        bytes: Vec<u8>,
        chunk: usize,
        every: Duration,
    },
}

/// An answer: status, headers and body. Status 0 means "never answer": the
/// connection is held open, silent, until the client gives up.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// A Content-Length to declare regardless of the body (e.g. 1 TiB for an endless one).
    pub content_length: Option<u64>,
}

impl Reply {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            content_length: None,
        }
    }

    /// 200 with `bytes` of `content_type`.
    pub fn ok(content_type: &str, bytes: Vec<u8>) -> Self {
        Self::status(200)
            .header("Content-Type", content_type)
            .body(Body::Bytes(bytes))
    }

    /// A connection that is accepted and never answered.
    pub fn silent() -> Self {
        Self::status(0)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub fn declared_length(mut self, n: u64) -> Self {
        self.content_length = Some(n);
        self
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running hostile registry; stopped on drop.
pub struct HostileRegistry {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HostileRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostileRegistry")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HostileRegistry {
    /// Starts serving on a free 127.0.0.1 port; `handler` answers every request.
    pub fn start(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::Builder::new()
                .name("hostile-registry".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(conn) = conn else { continue };
                        let (stop, requests, handler) =
                            (stop.clone(), requests.clone(), handler.clone());
                        let _ = std::thread::Builder::new()
                            .name("hostile-conn".into())
                            .spawn(move || serve(conn, &stop, &requests, &*handler));
                    }
                })?
        };
        Ok(Self {
            addr,
            stop,
            requests,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:<port>`, as an image reference's registry host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = conn
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)
            .ok()?;
        if n == 0 {
            return None;
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        head.push(String::from_utf8_lossy(&line).trim_end().to_owned());
        if head.len() > 200 {
            return None;
        }
    }
    let mut first = head.first()?.split_whitespace();
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = vec![0; len];
    conn.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn serve(conn: TcpStream, stop: &AtomicBool, requests: &Mutex<Vec<Request>>, handler: &Handler) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    // A client that stops reading without hanging up must not pin this thread.
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    // Keep-alive: answer requests on this connection until one closes it.
    while let Some(req) = read_request(&mut reader) {
        let reply = handler(&req);
        requests.lock().unwrap_or_else(|p| p.into_inner()).push(req);
        if !answer(&mut out, reply, stop) {
            return;
        }
    }
}

/// Writes `reply`; returns whether the connection can carry another request.
fn answer(out: &mut TcpStream, reply: Reply, stop: &AtomicBool) -> bool {
    if reply.status == 0 {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            // A client that hung up makes the peek fail or return 0.
            let mut b = [0u8; 1];
            let _ = out.set_nonblocking(true);
            let gone = matches!(out.peek(&mut b), Ok(0));
            let _ = out.set_nonblocking(false);
            if gone {
                break;
            }
        }
        return false;
    }
    let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let keep_alive = match (&reply.body, reply.content_length) {
        (_, Some(n)) => {
            head.push_str(&format!("Content-Length: {n}\r\n"));
            matches!(&reply.body, Body::Bytes(b) if b.len() as u64 == n)
        }
        (Body::Bytes(b), None) => {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
            true
        }
        (Body::Trickle { bytes, .. }, None) => {
            head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
            true
        }
        (Body::Endless, None) => {
            head.push_str("Connection: close\r\n");
            false
        }
    };
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let sent = match reply.body {
        Body::Bytes(b) => out.write_all(&b).is_ok(),
        Body::Endless => {
            let zeros = vec![0u8; 64 << 10];
            while !stop.load(Ordering::SeqCst) {
                if out.write_all(&zeros).is_err() {
                    break;
                }
            }
            false
        }
        Body::Trickle {
            bytes,
            chunk,
            every,
        } => {
            let mut ok = true;
            for piece in bytes.chunks(chunk.max(1)) {
                if stop.load(Ordering::SeqCst) || out.write_all(piece).is_err() {
                    ok = false;
                    break;
                }
                let _ = out.flush();
                std::thread::sleep(every);
            }
            ok
        }
    };
    sent && keep_alive
}

/// Serves `image` as `<repo>:<tag>` (manifest by tag and by digest, config and
/// layer blobs), or `None` for any other request.
pub fn serve_image(req: &Request, repo: &str, tag: &str, image: &BuiltImage) -> Option<Reply> {
    let path = req.path();
    let manifests = format!("/v2/{repo}/manifests/");
    let blobs = format!("/v2/{repo}/blobs/");
    if let Some(object) = path.strip_prefix(&manifests) {
        if object == tag || object == image.manifest_digest {
            return Some(
                Reply::ok(&image.manifest_media_type, image.manifest.clone())
                    .header("Docker-Content-Digest", &image.manifest_digest),
            );
        }
        return Some(Reply::status(404));
    }
    if let Some(digest) = path.strip_prefix(&blobs) {
        if digest == image.config_digest {
            return Some(Reply::ok("application/octet-stream", image.config.clone()));
        }
        for layer in &image.layers {
            if digest == layer.digest {
                return Some(Reply::ok("application/octet-stream", layer.blob.clone()));
            }
        }
        return Some(Reply::status(404));
    }
    if path == "/v2/" || path == "/v2" {
        return Some(Reply::ok("application/json", b"{}".to_vec()));
    }
    None
}
