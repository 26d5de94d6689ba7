//! A fault-injecting HTTP/1.1 server on `127.0.0.1`, for tests, benchmarks
//! and demos (feature `test-server`).
//!
//! Standard library only: one thread accepts connections, one thread serves
//! each connection (HTTP/1.1 keep-alive, `GET`/`HEAD`). The first path
//! segment selects a behaviour; `<file>` is a path relative to the served
//! root and may contain slashes:
//!
//! | route | behaviour |
//! |---|---|
//! | `/files/<file>` | 200 with the file, 404 if missing |
//! | `/status/<code>/<file>` | always `<code>` with a small HTML body |
//! | `/fail-then-ok/<n>/<code>/<file>` | first `n` requests to this path get `<code>`, later ones the file |
//! | `/429/<n>/<retry_after>/<file>` | first `n` get 429 + `Retry-After` (omitted for `none`) + 93-byte body |
//! | `/503/<n>/<retry_after>/<file>` | the same with 503 |
//! | `/reset/<file>` | reads the request, closes without answering |
//! | `/stall/<file>` | reads the request, answers nothing until the server is dropped |
//! | `/slow-body/<file>` | headers (full `Content-Length`) + first 100 bytes, then stalls |
//! | `/truncated/<file>` | headers (full `Content-Length`) + first half of the body, then closes |
//! | `/html/<anything>` | 200 `text/html` "photo unavailable" page |
//! | `/huge/<bytes>` | 200 `image/jpeg`, `<bytes>` zero bytes with `Content-Length` |
//! | `/huge-chunked/<bytes>` | the same with `Transfer-Encoding: chunked` |
//! | `/redirect/<n>/<file>` | 302 to `/redirect/<n-1>/<file>`; at 0 serves the file |
//! | `/redirect-loop/<anything>` | 302 to itself |
//! | `/redirect-scheme/<anything>` | 302 to `ftp://127.0.0.1/x.jpg` |
//!
//! Anything else is 404; a path with a `..` segment is 400.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Read and write timeout of every connection.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest accepted request head (request line + headers).
const MAX_HEAD: usize = 64 * 1024;
/// Chunk size of `/huge` and `/huge-chunked` bodies.
const CHUNK: usize = 64 * 1024;
/// Length of the plain-text body of 429/503 throttling answers (Flickr sends ~93 bytes).
const THROTTLE_BODY_LEN: usize = 93;
/// Bytes of the body `/slow-body` sends before stalling.
const SLOW_BODY_PREFIX: usize = 100;
/// How often a stalled handler checks whether its client went away.
const STALL_POLL: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the server handle, the accept thread and the handlers.
struct Shared {
    root: PathBuf,
    shutdown: Mutex<bool>,
    wake: Condvar,
    hits: Mutex<HashMap<String, Vec<Instant>>>,
    last_user_agent: Mutex<Option<String>>,
    total: AtomicU64,
    /// Clones of the open connections, shut down on drop to wake their handlers.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn is_shutdown(&self) -> bool {
        *lock(&self.shutdown)
    }

    /// Blocks for at most `dur`; true once the server is shutting down.
    fn wait_shutdown(&self, dur: Duration) -> bool {
        let guard = lock(&self.shutdown);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, dur, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Records one request; returns how many requests this path has had, this one included.
    fn record(&self, path: &str, user_agent: Option<String>) -> u32 {
        let now = Instant::now();
        self.total.fetch_add(1, Ordering::SeqCst);
        *lock(&self.last_user_agent) = user_agent;
        let mut hits = lock(&self.hits);
        let times = hits.entry(path.to_string()).or_default();
        times.push(now);
        u32::try_from(times.len()).unwrap_or(u32::MAX)
    }
}

/// A fault-injecting HTTP/1.1 server serving a directory on `127.0.0.1`.
///
/// Dropping it stops accepting, closes open connections and wakes stalled
/// handlers; it does not wait for handler threads.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Serves the files under `root` on 127.0.0.1 with an OS-chosen port.
    /// One thread accepts; one thread per connection.
    pub fn start(root: impl Into<PathBuf>) -> io::Result<TestServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            root: root.into(),
            shutdown: Mutex::new(false),
            wake: Condvar::new(),
            hits: Mutex::new(HashMap::new()),
            last_user_agent: Mutex::new(None),
            total: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("curate-test-server".into())
            .spawn(move || accept_loop(listener, for_thread))?;
        Ok(TestServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url() + "/" + path` (`path` given without leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// Requests received so far for this exact request path (e.g.
    /// `"/429/1/2/photos/a.jpg"`), query ignored. Percent-encoded and decoded
    /// spellings of the same path count as the same path.
    pub fn hits(&self, path: &str) -> u32 {
        let key = hit_key(path);
        lock(&self.shared.hits)
            .get(&key)
            .map_or(0, |t| u32::try_from(t.len()).unwrap_or(u32::MAX))
    }

    /// Instants at which requests for this path were received, in order.
    pub fn hit_times(&self, path: &str) -> Vec<Instant> {
        let key = hit_key(path);
        lock(&self.shared.hits)
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// The `User-Agent` header of the most recent request (`None` if that
    /// request had none, or no request was received yet).
    pub fn last_user_agent(&self) -> Option<String> {
        lock(&self.shared.last_user_agent).clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        *lock(&self.shared.shutdown) = true;
        self.shared.wake.notify_all();
        // Unblock accept(); the accept thread sees the flag and exits.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woke {
                let _ = acceptor.join();
            }
            // Otherwise leave it detached rather than risk hanging.
        }
        // Wake handlers blocked on reads or writes; stalled ones were woken above.
        for (_, conn) in lock(&self.shared.conns).drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Key under which a request path is counted: query dropped, percent-decoded.
fn hit_key(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path);
    if decoded.starts_with('/') {
        decoded
    } else {
        format!("/{decoded}")
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.is_shutdown() {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. out of file descriptors: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.conns).insert(id, clone);
        }
        let for_thread = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("curate-test-server-conn".into())
            .spawn(move || {
                handle_connection(stream, &for_thread);
                lock(&for_thread.conns).remove(&id);
            });
        if spawned.is_err() {
            // The closure, and with it the stream, was dropped: the client sees EOF.
            lock(&shared.conns).remove(&id);
        }
    }
}

struct Request {
    method: String,
    /// The request target's path as sent (still percent-encoded), query removed.
    raw_path: String,
    /// `raw_path` percent-decoded.
    path: String,
    keep_alive: bool,
    user_agent: Option<String>,
}

fn handle_connection(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    loop {
        if shared.is_shutdown() {
            return;
        }
        let head = match read_head(&mut stream, &mut buf) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(HeadError::TooLarge) => {
                let _ = write_simple(&mut stream, 431, false, false);
                close(&stream);
                return;
            }
            Err(HeadError::Io) => return,
        };
        let req = match parse_request(&head) {
            Some(req) => req,
            None => {
                let _ = write_simple(&mut stream, 400, false, false);
                close(&stream);
                return;
            }
        };
        match respond(&mut stream, shared, &req) {
            Ok(true) => {}
            Ok(false) => {
                close(&stream);
                return;
            }
            Err(_) => return, // client went away or timed out
        }
    }
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads one request head (up to and excluding `\r\n\r\n`); bytes after it
/// stay in `buf` for the next request. `Ok(None)` on a clean EOF between requests.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, HeadError> {
    let mut chunk = [0u8; 8192];
    loop {
        // Tolerate empty lines before a request line (RFC 9112 §2.2).
        let blank = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        buf.drain(..blank);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..pos].to_vec();
            buf.drain(..pos + 4);
            return Ok(Some(head));
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(HeadError::Io)
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    // Absolute form ("http://host/path"): keep only the path.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => target,
    };
    let raw_path = target.split(['?', '#']).next().unwrap_or("");
    if !raw_path.starts_with('/') {
        return None;
    }
    let mut close = false;
    let mut keep_alive_token = false;
    let mut user_agent = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("user-agent") {
            user_agent = Some(value.to_string());
        }
    }
    let keep_alive = if version == "HTTP/1.0" {
        keep_alive_token && !close
    } else {
        !close
    };
    Some(Request {
        method,
        raw_path: raw_path.to_string(),
        path: percent_decode(raw_path),
        keep_alive,
        user_agent,
    })
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a decoded path for a `Location` header.
fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn content_type_for(file: &str) -> &'static str {
    let ext = file
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Builds a status line and headers; `content_length` None omits the header.
fn head_bytes(
    code: u16,
    content_type: Option<&str>,
    content_length: Option<u64>,
    extra: &[(&str, String)],
    keep_alive: bool,
) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\nServer: curate-test-server\r\n",
        reason(code)
    );
    if let Some(ct) = content_type {
        h.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(len) = content_length {
        h.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (name, value) in extra {
        h.push_str(&format!("{name}: {value}\r\n"));
    }
    h.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    h.into_bytes()
}

/// Writes a complete response in one write. 1xx/204/304 get neither body nor
/// `Content-Length`.
fn write_full(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let bodyless = code < 200 || code == 204 || code == 304;
    let mut out = if bodyless {
        head_bytes(code, None, None, extra, keep_alive)
    } else {
        head_bytes(
            code,
            Some(content_type),
            Some(body.len() as u64),
            extra,
            keep_alive,
        )
    };
    if !bodyless && !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

fn status_page(code: u16) -> Vec<u8> {
    let reason = reason(code);
    format!(
        "<!DOCTYPE html><html><head><title>{code} {reason}</title></head>\
         <body><h1>{code} {reason}</h1></body></html>\n"
    )
    .into_bytes()
}

/// Headers announcing the whole of `bytes`, then only `prefix(len)` of
/// them. A missing file is answered 404 instead; returns whether the
/// partial response was sent.
fn send_partial(
    stream: &mut TcpStream,
    file: &str,
    bytes: Option<Vec<u8>>,
    prefix: impl Fn(usize) -> usize,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let Some(bytes) = bytes else {
        write_simple(stream, 404, head_only, keep_alive)?;
        return Ok(false);
    };
    let mut out = head_bytes(
        200,
        Some(content_type_for(file)),
        Some(bytes.len() as u64),
        &[],
        keep_alive,
    );
    if !head_only {
        out.extend_from_slice(&bytes[..prefix(bytes.len())]);
    }
    stream.write_all(&out)?;
    stream.flush()?;
    Ok(true)
}

/// A small HTML answer for `code`.
fn write_simple(
    stream: &mut TcpStream,
    code: u16,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    write_full(
        stream,
        code,
        "text/html; charset=utf-8",
        &[],
        &status_page(code),
        head_only,
        keep_alive,
    )
}

/// The 93-byte plain-text body of a 429/503 throttling answer.
fn throttle_body(code: u16) -> Vec<u8> {
    let mut body = format!(
        "{code} {}: the server is rate limiting requests; please retry later.",
        reason(code)
    )
    .into_bytes();
    body.resize(THROTTLE_BODY_LEN - 1, b' ');
    body.push(b'\n');
    body
}

/// Ends a connection after a response: flush, send FIN, drop (by the caller).
fn close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// Holds the connection until the server shuts down or the client goes away.
fn stall(stream: &TcpStream, shared: &Shared) {
    loop {
        if shared.wait_shutdown(STALL_POLL) || peer_closed(stream) {
            return;
        }
    }
}

fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    let peeked = stream.peek(&mut byte);
    let _ = stream.set_nonblocking(false);
    match peeked {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

/// Streams `total` zero bytes, optionally with chunked framing; stops on a
/// write error or server shutdown.
fn stream_zeros(
    stream: &mut TcpStream,
    shared: &Shared,
    total: u64,
    chunked: bool,
) -> io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let mut frame = Vec::with_capacity(CHUNK + 16);
    let mut left = total;
    while left > 0 {
        if shared.is_shutdown() {
            return Err(io::Error::other("server shutting down"));
        }
        let n = left.min(CHUNK as u64) as usize;
        if chunked {
            frame.clear();
            frame.extend_from_slice(format!("{n:X}\r\n").as_bytes());
            frame.extend_from_slice(&zeros[..n]);
            frame.extend_from_slice(b"\r\n");
            stream.write_all(&frame)?;
        } else {
            stream.write_all(&zeros[..n])?;
        }
        left -= n as u64;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}

/// Answers one request; `Ok(true)` to keep the connection open.
fn respond(stream: &mut TcpStream, shared: &Shared, req: &Request) -> io::Result<bool> {
    let count = shared.record(&req.path, req.user_agent.clone());
    let keep = req.keep_alive;
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        write_full(
            stream,
            405,
            "text/html; charset=utf-8",
            &[("Allow", "GET, HEAD".to_string())],
            &status_page(405),
            false,
            keep,
        )?;
        return Ok(keep);
    }
    if req.path.contains('\0')
        || req.path.split(['/', '\\']).any(|seg| seg == "..")
        || req.path.contains(['\r', '\n'])
    {
        write_simple(stream, 400, head_only, keep)?;
        return Ok(keep);
    }

    let segs: Vec<&str> = req.path[1..].split('/').collect();
    // The non-empty segments from `from` on, joined: the `<file>` argument.
    let rest = |from: usize| -> String {
        segs.iter()
            .skip(from)
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join("/")
    };
    let num = |i: usize| -> Option<u64> { segs.get(i).and_then(|s| s.parse().ok()) };
    let code_at = |i: usize| -> Option<u16> {
        segs.get(i)
            .filter(|s| s.len() == 3)
            .and_then(|s| s.parse().ok())
            .filter(|c| *c >= 100)
    };
    let load = |file: &str| -> Option<Vec<u8>> {
        if file.is_empty() {
            return None;
        }
        let path = shared.root.join(file);
        if path.is_file() {
            std::fs::read(path).ok()
        } else {
            None
        }
    };
    let serve_file = |stream: &mut TcpStream, file: &str| -> io::Result<bool> {
        match load(file) {
            Some(bytes) => write_full(
                stream,
                200,
                content_type_for(file),
                &[],
                &bytes,
                head_only,
                keep,
            )?,
            None => write_simple(stream, 404, head_only, keep)?,
        }
        Ok(keep)
    };
    let bad_request = |stream: &mut TcpStream| -> io::Result<bool> {
        write_simple(stream, 400, head_only, keep)?;
        Ok(keep)
    };
    let redirect = |stream: &mut TcpStream, location: String| -> io::Result<bool> {
        write_full(
            stream,
            302,
            "text/html; charset=utf-8",
            &[("Location", location)],
            &status_page(302),
            head_only,
            keep,
        )?;
        Ok(keep)
    };

    match segs[0] {
        "files" => serve_file(stream, &rest(1)),
        "status" => match code_at(1) {
            Some(code) => {
                write_simple(stream, code, head_only, keep)?;
                Ok(keep)
            }
            None => bad_request(stream),
        },
        "fail-then-ok" => match (num(1), code_at(2)) {
            (Some(n), Some(code)) => {
                if u64::from(count) <= n {
                    write_simple(stream, code, head_only, keep)?;
                    Ok(keep)
                } else {
                    serve_file(stream, &rest(3))
                }
            }
            _ => bad_request(stream),
        },
        route @ ("429" | "503") => {
            let (Some(n), Some(retry_after)) = (num(1), segs.get(2)) else {
                return bad_request(stream);
            };
            if u64::from(count) > n {
                return serve_file(stream, &rest(3));
            }
            let code = if route == "429" { 429 } else { 503 };
            let mut extra = Vec::new();
            if *retry_after != "none" {
                extra.push(("Retry-After", retry_after.to_string()));
            }
            write_full(
                stream,
                code,
                "text/plain; charset=utf-8",
                &extra,
                &throttle_body(code),
                head_only,
                keep,
            )?;
            Ok(keep)
        }
        "reset" => {
            let _ = stream.shutdown(Shutdown::Both);
            Ok(false)
        }
        "stall" => {
            stall(stream, shared);
            Ok(false)
        }
        "slow-body" => {
            // Headers for the whole file, its first bytes, then silence.
            let file = rest(1);
            let sent = send_partial(
                stream,
                &file,
                load(&file),
                |n| n.min(SLOW_BODY_PREFIX),
                head_only,
                keep,
            )?;
            if !sent {
                return Ok(keep);
            }
            stall(stream, shared);
            Ok(false)
        }
        "truncated" => {
            // Headers for the whole file, half of it, then the connection closes.
            let file = rest(1);
            if !send_partial(stream, &file, load(&file), |n| n / 2, head_only, false)? {
                return Ok(keep);
            }
            Ok(false)
        }
        "html" => {
            let page = b"<!DOCTYPE html><html><head><title>Photo unavailable</title></head>\
                <body><p>This photo is currently unavailable.</p></body></html>\n";
            write_full(
                stream,
                200,
                "text/html; charset=utf-8",
                &[],
                page,
                head_only,
                keep,
            )?;
            Ok(keep)
        }
        route @ ("huge" | "huge-chunked") => {
            let Some(total) = num(1) else {
                return bad_request(stream);
            };
            let chunked = route == "huge-chunked";
            let head = if chunked {
                head_bytes(
                    200,
                    Some("image/jpeg"),
                    None,
                    &[("Transfer-Encoding", "chunked".into())],
                    keep,
                )
            } else {
                head_bytes(200, Some("image/jpeg"), Some(total), &[], keep)
            };
            stream.write_all(&head)?;
            if !head_only {
                stream_zeros(stream, shared, total, chunked)?;
            }
            stream.flush()?;
            Ok(keep)
        }
        "redirect" => match num(1) {
            Some(0) => serve_file(stream, &rest(2)),
            Some(n) => redirect(
                stream,
                format!("/redirect/{}/{}", n - 1, percent_encode_path(&rest(2))),
            ),
            None => bad_request(stream),
        },
        "redirect-loop" => redirect(stream, req.raw_path.clone()),
        "redirect-scheme" => redirect(stream, "ftp://127.0.0.1/x.jpg".to_string()),
        _ => {
            write_simple(stream, 404, head_only, keep)?;
            Ok(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::sync::mpsc;

    const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A temp dir with a few files and a server over it.
    struct Fixture {
        server: TestServer,
        dir: TempDir,
        jpg: Vec<u8>,
    }

    fn fixture() -> Fixture {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "curate-test-server-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("photos")).unwrap();
        std::fs::create_dir_all(dir.join("sub dir")).unwrap();
        let jpg: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.join("a.jpg"), &jpg).unwrap();
        std::fs::write(dir.join("photos/c.webp"), b"RIFF....WEBP").unwrap();
        std::fs::write(dir.join("sub dir/b.PNG"), b"\x89PNG\r\n\x1a\n").unwrap();
        std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
        let server = TestServer::start(&dir).unwrap();
        Fixture {
            server,
            dir: TempDir(dir),
            jpg,
        }
    }

    #[derive(Debug)]
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        BufReader::new(stream)
    }

    fn send(conn: &mut BufReader<TcpStream>, method: &str, path: &str, extra_headers: &str) {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n");
        conn.get_mut().write_all(req.as_bytes()).unwrap();
    }

    fn read_line(conn: &mut BufReader<TcpStream>) -> io::Result<String> {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Reads a status line and headers.
    fn read_head(conn: &mut BufReader<TcpStream>) -> io::Result<Resp> {
        let status_line = read_line(conn)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(conn)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Resp {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Reads a whole response: body by chunked framing, Content-Length (fewer
    /// bytes if the connection closes early) or until close.
    fn read_response(conn: &mut BufReader<TcpStream>, head_only: bool) -> io::Result<Resp> {
        let mut resp = read_head(conn)?;
        if head_only || resp.status == 204 || resp.status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let size_line = read_line(conn)?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .map_err(io::Error::other)?;
                if size == 0 {
                    while !read_line(conn)?.is_empty() {}
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                conn.read_exact(&mut resp.body[start..])?;
                assert_eq!(read_line(conn)?, "", "chunk not followed by CRLF");
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: u64 = len.parse().unwrap();
            conn.by_ref().take(len).read_to_end(&mut resp.body)?;
        } else {
            conn.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }

    /// One GET on a fresh connection with `Connection: close`.
    fn get(addr: SocketAddr, path: &str) -> Resp {
        let mut conn = connect(addr);
        send(&mut conn, "GET", path, "Connection: close\r\n");
        read_response(&mut conn, false).unwrap()
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn urls_and_content_types() {
        let f = fixture();
        let port = f.server.addr().port();
        assert!(f.server.addr().ip().is_loopback());
        assert_eq!(f.server.base_url(), format!("http://127.0.0.1:{port}"));
        assert_eq!(
            f.server.url("files/a.jpg"),
            format!("http://127.0.0.1:{port}/files/a.jpg")
        );
        assert_eq!(content_type_for("x.JPEG"), "image/jpeg");
        assert_eq!(content_type_for("x.gif"), "image/gif");
        assert_eq!(content_type_for("dir.d/x"), "application/octet-stream");
        assert_eq!(throttle_body(429).len(), THROTTLE_BODY_LEN);
        assert_eq!(throttle_body(503).len(), THROTTLE_BODY_LEN);
        assert_eq!(percent_decode("/a%20b%2Fc%zz%"), "/a b/c%zz%");
        assert_eq!(
            percent_encode_path("sub dir/a#b.jpg"),
            "sub%20dir/a%23b.jpg"
        );
        assert!(format!("{:?}", f.server).contains("TestServer"));
    }

    #[test]
    fn files_are_served_with_exact_bytes_and_type() {
        let f = fixture();
        let addr = f.server.addr();
        let mut conn = connect(addr);
        send(
            &mut conn,
            "GET",
            "/files/a.jpg?x=1",
            "User-Agent: curate-test/1.0\r\nConnection: close\r\n",
        );
        let r = read_response(&mut conn, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/jpeg"));
        assert_eq!(r.header("content-length"), Some("1001"));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.body, f.jpg);
        assert_eq!(
            f.server.last_user_agent().as_deref(),
            Some("curate-test/1.0")
        );
        assert_eq!(f.server.hits("/files/a.jpg"), 1);
        assert_eq!(f.server.hits("/files/a.jpg?y=2"), 1);

        let r = get(addr, "/files/sub%20dir/b.PNG");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/png"))
        );
        assert_eq!(r.body, b"\x89PNG\r\n\x1a\n");
        assert_eq!(f.server.hits("/files/sub dir/b.PNG"), 1);
        assert_eq!(f.server.hits("/files/sub%20dir/b.PNG"), 1);
        assert_eq!(f.server.last_user_agent(), None);

        let r = get(addr, "/files/photos/c.webp");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/webp"))
        );
        let r = get(addr, "/files/notes.txt");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("application/octet-stream"))
        );

        let r = get(addr, "/files/missing.jpg");
        assert_eq!(r.status, 404);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert_eq!(
            r.body.len(),
            r.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        );
        assert_eq!(
            get(addr, "/files/photos").status,
            404,
            "directories are not files"
        );
        assert_eq!(get(addr, "/nope/a.jpg").status, 404);

        let mut conn = connect(addr);
        send(&mut conn, "HEAD", "/files/a.jpg", "Connection: close\r\n");
        let r = read_response(&mut conn, true).unwrap();
        assert_eq!((r.status, r.header("content-length")), (200, Some("1001")));
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "HEAD must not send a body");

        let html = get(addr, "/html/whatever/x.jpg");
        assert_eq!(html.status, 200);
        assert_eq!(
            html.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(String::from_utf8(html.body)
            .unwrap()
            .contains("photo is currently unavailable"));
        assert_eq!(f.server.total_requests(), 9);
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let f = fixture();
        let mut conn = connect(f.server.addr());
        send(&mut conn, "GET", "/files/a.jpg", "");
        let first = read_response(&mut conn, false).unwrap();
        assert_eq!(
            (first.status, first.header("connection")),
            (200, Some("keep-alive"))
        );
        assert_eq!(first.body, f.jpg);
        send(&mut conn, "GET", "/status/404/a.jpg", "");
        let second = read_response(&mut conn, false).unwrap();
        assert_eq!(
            (second.status, second.header("connection")),
            (404, Some("keep-alive"))
        );
        // Two pipelined requests, the last one closing the connection.
        send(&mut conn, "GET", "/files/photos/c.webp", "");
        send(&mut conn, "GET", "/files/a.jpg", "Connection: close\r\n");
        assert_eq!(
            read_response(&mut conn, false).unwrap().body,
            b"RIFF....WEBP"
        );
        let last = read_response(&mut conn, false).unwrap();
        assert_eq!(
            (last.status, last.header("connection")),
            (200, Some("close"))
        );
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(f.server.total_requests(), 4);
        assert_eq!(f.server.hits("/files/a.jpg"), 2);
    }

    #[test]
    fn status_and_fail_then_ok_count_hits() {
        let f = fixture();
        let addr = f.server.addr();
        for code in [410u16, 500] {
            let r = get(addr, &format!("/status/{code}/a.jpg"));
            assert_eq!(r.status, code);
            assert!(String::from_utf8(r.body).unwrap().contains("<html>"));
        }
        let path = "/fail-then-ok/2/503/a.jpg";
        let statuses: Vec<u16> = (0..4).map(|_| get(addr, path).status).collect();
        assert_eq!(statuses, [503, 503, 200, 200]);
        assert_eq!(get(addr, "/fail-then-ok/1/500/a.jpg").status, 500);
        assert_eq!(get(addr, "/fail-then-ok/1/500/a.jpg").body, f.jpg);
        assert_eq!(f.server.hits(path), 4);
        assert_eq!(f.server.hits("/fail-then-ok/1/500/a.jpg"), 2);
        assert_eq!(f.server.hits("/fail-then-ok/9/500/a.jpg"), 0);
        let times = f.server.hit_times(path);
        assert_eq!(times.len(), 4);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn throttling_routes_send_retry_after_when_asked() {
        let f = fixture();
        let addr = f.server.addr();
        let r = get(addr, "/429/1/7/a.jpg");
        assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
        assert_eq!(r.body.len(), 93);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        assert_eq!(get(addr, "/429/1/7/a.jpg").body, f.jpg);

        for _ in 0..2 {
            let r = get(addr, "/429/2/none/a.jpg");
            assert_eq!((r.status, r.header("retry-after")), (429, None));
            assert_eq!(r.body.len(), 93);
        }
        assert_eq!(get(addr, "/429/2/none/a.jpg").status, 200);

        let r = get(addr, "/503/1/3/photos/c.webp");
        assert_eq!(
            (r.status, r.header("retry-after"), r.body.len()),
            (503, Some("3"), 93)
        );
        let r = get(addr, "/503/1/3/photos/c.webp");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/webp"))
        );
        assert_eq!(f.server.hits("/429/2/none/a.jpg"), 3);
    }

    #[test]
    fn truncated_body_is_shorter_than_content_length() {
        let f = fixture();
        let r = get(f.server.addr(), "/truncated/a.jpg");
        assert_eq!((r.status, r.header("content-length")), (200, Some("1001")));
        assert_eq!(r.body, &f.jpg[..500]);
    }

    #[test]
    fn reset_sends_no_bytes() {
        let f = fixture();
        let mut conn = connect(f.server.addr());
        send(&mut conn, "GET", "/reset/a.jpg", "");
        let mut got = Vec::new();
        match conn.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "connection was not closed: {e}"
            ),
        }
        assert!(got.is_empty());
        assert_eq!(f.server.hits("/reset/a.jpg"), 1);
    }

    #[test]
    fn huge_bodies_are_framed_and_survive_abandoned_clients() {
        let f = fixture();
        let addr = f.server.addr();
        let mut conn = connect(addr);
        send(&mut conn, "GET", "/huge/200000", "");
        let r = read_response(&mut conn, false).unwrap();
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/jpeg"))
        );
        assert_eq!(r.header("content-length"), Some("200000"));
        assert_eq!(r.body.len(), 200_000);
        assert!(r.body.iter().all(|&b| b == 0));
        // Same connection: chunked framing must leave it usable afterwards.
        send(&mut conn, "GET", "/huge-chunked/150001", "");
        let r = read_response(&mut conn, false).unwrap();
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.body.len(), 150_001);
        send(&mut conn, "GET", "/huge-chunked/0", "");
        assert!(read_response(&mut conn, false).unwrap().body.is_empty());
        send(&mut conn, "GET", "/files/a.jpg", "");
        assert_eq!(read_response(&mut conn, false).unwrap().body, f.jpg);

        // A client that leaves mid-body must not break the server.
        for path in ["/huge/10000000000", "/huge-chunked/10000000000"] {
            let mut conn = connect(addr);
            send(&mut conn, "GET", path, "");
            read_head(&mut conn).unwrap();
            let mut some = [0u8; 4096];
            conn.read_exact(&mut some).unwrap();
            drop(conn);
        }
        assert_eq!(get(addr, "/files/a.jpg").body, f.jpg);
    }

    #[test]
    fn redirects() {
        let f = fixture();
        let addr = f.server.addr();
        let mut conn = connect(addr);
        let mut path = "/redirect/2/sub%20dir/b.PNG".to_string();
        let mut locations = Vec::new();
        let last = loop {
            send(&mut conn, "GET", &path, "");
            let r = read_response(&mut conn, false).unwrap();
            if r.status != 302 {
                break r;
            }
            path = r.header("location").unwrap().to_string();
            locations.push(path.clone());
        };
        assert_eq!(
            locations,
            ["/redirect/1/sub%20dir/b.PNG", "/redirect/0/sub%20dir/b.PNG"]
        );
        assert_eq!(
            (last.status, last.header("content-type")),
            (200, Some("image/png"))
        );
        assert_eq!(
            get(addr, "/redirect/1/a.jpg").header("location"),
            Some("/redirect/0/a.jpg")
        );

        let r = get(addr, "/redirect-loop/x/y.jpg?q=1");
        assert_eq!(
            (r.status, r.header("location")),
            (302, Some("/redirect-loop/x/y.jpg"))
        );
        let r = get(addr, "/redirect-scheme/a.jpg");
        assert_eq!(
            (r.status, r.header("location")),
            (302, Some("ftp://127.0.0.1/x.jpg"))
        );
    }

    #[test]
    fn path_traversal_and_garbage_are_rejected() {
        let f = fixture();
        let addr = f.server.addr();
        // A secret next to the served root must stay unreachable.
        let secret = f.dir.0.with_extension("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let name = secret.file_name().unwrap().to_str().unwrap().to_string();
        for path in [
            format!("/files/../{name}"),
            format!("/files/%2e%2e/{name}"),
            format!("/files/sub%20dir/../../{name}"),
            format!("/redirect/0/..%2F{name}"),
            format!("/files/..\\{name}"),
        ] {
            let r = get(addr, &path);
            assert_eq!(r.status, 400, "{path}");
            assert!(!r.body.windows(6).any(|w| w == b"secret"));
        }
        let _ = std::fs::remove_file(&secret);
        assert_eq!(get(addr, "/status/abc/a.jpg").status, 400);
        assert_eq!(get(addr, "/huge/lots").status, 400);

        let mut conn = connect(addr);
        conn.get_mut().write_all(b"NONSENSE\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut conn, false).unwrap().status, 400);
        let mut conn = connect(addr);
        send(&mut conn, "POST", "/files/a.jpg", "Content-Length: 0\r\n");
        assert_eq!(read_response(&mut conn, false).unwrap().status, 405);
        assert!(Path::new(&f.dir.0).join("a.jpg").is_file());
    }

    #[test]
    fn dropping_the_server_releases_stalled_and_idle_clients_promptly() {
        let Fixture {
            server,
            dir: _dir,
            jpg,
        } = fixture();
        let addr = server.addr();
        let (tx, rx) = mpsc::channel::<(&str, io::Result<usize>, Duration)>();

        // /stall: the request is read, nothing is answered.
        let stall_tx = tx.clone();
        let stall_client = thread::spawn(move || {
            let mut conn = connect(addr);
            send(&mut conn, "GET", "/stall/a.jpg", "");
            let start = Instant::now();
            let mut got = Vec::new();
            let res = conn.read_to_end(&mut got);
            let _ = stall_tx.send(("stall", res, start.elapsed()));
        });

        // /slow-body: headers and 100 bytes, then nothing.
        let (prefix_tx, prefix_rx) = mpsc::channel();
        let slow_tx = tx.clone();
        let slow_client = thread::spawn(move || {
            let mut conn = connect(addr);
            send(&mut conn, "GET", "/slow-body/a.jpg", "");
            let head = read_head(&mut conn).unwrap();
            let mut prefix = [0u8; 100];
            conn.read_exact(&mut prefix).unwrap();
            let _ = prefix_tx.send((
                head.header("content-length").map(str::to_string),
                prefix.to_vec(),
            ));
            let start = Instant::now();
            let mut got = Vec::new();
            let res = conn.read_to_end(&mut got).map(|_| got.len());
            let _ = slow_tx.send(("slow-body", res, start.elapsed()));
        });

        // An idle keep-alive connection.
        let mut idle = connect(addr);
        send(&mut idle, "GET", "/files/a.jpg", "");
        assert_eq!(read_response(&mut idle, false).unwrap().status, 200);

        let (len, prefix) = prefix_rx.recv_timeout(CLIENT_TIMEOUT).unwrap();
        assert_eq!(len.as_deref(), Some("1001"));
        assert_eq!(prefix, &jpg[..100]);
        wait_until("the stalled request", || server.hits("/stall/a.jpg") == 1);
        assert!(
            rx.try_recv().is_err(),
            "stalled clients were answered early"
        );

        let start = Instant::now();
        drop(server);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            start.elapsed()
        );

        for _ in 0..2 {
            let (name, res, waited) = rx
                .recv_timeout(CLIENT_TIMEOUT)
                .expect("client still blocked");
            match res {
                Ok(extra) => assert_eq!(extra, 0, "{name} got more bytes"),
                Err(e) => assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "{name} read timed out instead of seeing the close: {e}"
                ),
            }
            assert!(waited < Duration::from_secs(8), "{name} waited {waited:?}");
        }
        let mut rest = Vec::new();
        let idle_res = idle.read_to_end(&mut rest);
        assert!(
            idle_res.is_ok() && rest.is_empty(),
            "idle connection not closed: {idle_res:?}"
        );
        stall_client.join().unwrap();
        slow_client.join().unwrap();
    }
}
