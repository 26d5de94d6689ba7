//! The routes of the test server: what each first path segment answers.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};

use super::http::{
    content_type_for, head_bytes, percent_encode_path, send_partial, stall, status_page,
    throttle_body, write_full, write_simple,
};
use super::{Request, Shared, CHUNK, SLOW_BODY_PREFIX};

/// Streams `total` zero bytes, optionally with chunked framing; stops on a
/// write error or server shutdown.
pub(super) fn stream_zeros(
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
pub(super) fn respond(stream: &mut TcpStream, shared: &Shared, req: &Request) -> io::Result<bool> {
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
