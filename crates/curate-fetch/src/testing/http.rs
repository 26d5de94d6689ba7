//! HTTP/1.1 on the wire for the test server: reading and parsing a request
//! head, percent-coding paths, and writing status lines, headers and bodies.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};

use super::{Request, Shared, MAX_HEAD, STALL_POLL, THROTTLE_BODY_LEN};

pub(super) enum HeadError {
    TooLarge,
    Io,
}

/// Reads one request head (up to and excluding `\r\n\r\n`); bytes after it
/// stay in `buf` for the next request. `Ok(None)` on a clean EOF between requests.
pub(super) fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, HeadError> {
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

pub(super) fn parse_request(head: &[u8]) -> Option<Request> {
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
pub(super) fn percent_decode(s: &str) -> String {
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
pub(super) fn percent_encode_path(s: &str) -> String {
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

pub(super) fn reason(code: u16) -> &'static str {
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

pub(super) fn content_type_for(file: &str) -> &'static str {
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
pub(super) fn head_bytes(
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
pub(super) fn write_full(
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

pub(super) fn status_page(code: u16) -> Vec<u8> {
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
pub(super) fn send_partial(
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
pub(super) fn write_simple(
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
pub(super) fn throttle_body(code: u16) -> Vec<u8> {
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
pub(super) fn close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
}

/// Holds the connection until the server shuts down or the client goes away.
pub(super) fn stall(stream: &TcpStream, shared: &Shared) {
    loop {
        if shared.wait_shutdown(STALL_POLL) || peer_closed(stream) {
            return;
        }
    }
}

pub(super) fn peer_closed(stream: &TcpStream) -> bool {
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
