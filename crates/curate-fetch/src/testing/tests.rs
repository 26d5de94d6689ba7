//! Tests of the fault-injecting server: every route, keep-alive, shutdown.

use super::http::{content_type_for, percent_encode_path, throttle_body};
use super::*;
use std::io::{BufRead, BufReader, Read, Write};
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
