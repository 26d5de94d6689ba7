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
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod http;
mod routes;
#[cfg(test)]
mod tests;

use http::{close, parse_request, percent_decode, read_head, write_simple, HeadError};
use routes::respond;

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
