//! `curate fetch` against a real HTTP server on 127.0.0.1 that injects
//! faults per URL (curate_fetch::testing::TestServer).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{RecordBatch, StringArray};
use curate_core::record::{ImageRecord, Status};
use curate_fetch::testing::TestServer;

use crate::common::*;

/// Writes a Megalith-style URL list (url, url_highres, url_source).
/// `curate fetch LIST -o OUT --base-url BASE`, more flags to add.
fn fetch_cmd(list: &Path, out: &Path, base: &str) -> std::process::Command {
    let mut c = curate();
    c.arg("fetch")
        .arg(list)
        .arg("-o")
        .arg(out)
        .arg("--base-url")
        .arg(base);
    c
}

fn url_parquet(path: &Path, urls: &[String]) {
    let table = curate_core::schema::get("url_list").unwrap();
    let schema = Arc::new(table.arrow_schema().unwrap());
    let pages: Vec<String> = (0..urls.len())
        .map(|i| format!("https://example.org/photo/{i}"))
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(urls.to_vec())),
            Arc::new(StringArray::from(vec![None::<String>; urls.len()])),
            Arc::new(StringArray::from(pages)),
        ],
    )
    .unwrap();
    curate_io::write_table(table, path, &[batch], schema).unwrap();
}

/// Short timeouts so the stall cases end quickly, yet far above what a
/// loopback request takes on a loaded 2-core CI machine.
const FAST: &[&str] = &[
    "--retries",
    "2",
    "--backoff",
    "0.05",
    "--timeout",
    "2",
    "--connect-timeout",
    "2",
    "--max-bytes",
    "5000000",
    "--concurrency",
    "24",
];

#[test]
fn fault_matrix_each_url_gets_its_outcome() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let coffee = std::fs::read(fixtures_images().join("photos/coffee-full.jpg")).unwrap();
    let placeholder_sha = curate_core::hash::sha256_hex(
        &std::fs::read(fixtures_images().join("photos/chelsea-full.jpg")).unwrap(),
    );
    // (listed URL, reason or "ok", final HTTP status, attempts)
    let cases: Vec<(&str, &str, Option<u16>, u8)> = vec![
        ("files/photos/coffee-full.jpg", "ok", Some(200), 1),
        ("files/photos/astronaut-full.jpg", "ok", Some(200), 1),
        ("files/photos/astronaut-full.jpg", "duplicate_url", None, 0),
        ("status/404/photos/a.jpg", "http_error", Some(404), 1),
        ("status/410/photos/a.jpg", "http_error", Some(410), 1),
        ("429/1/1/photos/astronaut-face.jpg", "ok", Some(200), 2),
        ("429/1/none/photos/coffee-cup.jpg", "ok", Some(200), 2),
        (
            "429/9/none/photos/rocket-full.jpg",
            "rate_limited",
            Some(429),
            3,
        ),
        (
            "fail-then-ok/1/500/photos/astronaut-portrait.jpg",
            "ok",
            Some(200),
            2,
        ),
        ("status/503/photos/a.jpg", "http_error", Some(503), 3),
        ("503/1/1/photos/astronaut-helmet.png", "ok", Some(200), 2),
        ("reset/photos/a.jpg", "connection", None, 3),
        ("stall/photos/a.jpg", "timeout", None, 3),
        ("slow-body/photos/coffee-full.jpg", "timeout", Some(200), 3),
        (
            "truncated/photos/coffee-full.jpg",
            "truncated",
            Some(200),
            3,
        ),
        ("html/photo.jpg", "not_an_image", Some(200), 1),
        ("huge/50000000", "too_large", Some(200), 1),
        ("huge-chunked/50000000", "too_large", Some(200), 1),
        ("redirect-loop/x.jpg", "redirect", None, 1),
        ("redirect-scheme/x.jpg", "redirect", None, 1),
        ("redirect/2/photos/coffee-cup.jpg", "ok", Some(200), 1),
        ("files/odd/undecodable.jpg", "undecodable", Some(200), 1),
        ("files/odd/truncated.jpg", "truncated", Some(200), 1),
        ("files/odd/zero-byte.jpg", "placeholder", Some(200), 1),
        ("files/photos/chelsea-full.jpg", "placeholder", Some(200), 1),
        ("ftp://127.0.0.1/x.jpg", "invalid_url", None, 0),
    ];
    let list = tmp.path().join("urls.parquet");
    url_parquet(
        &list,
        &cases.iter().map(|c| c.0.to_string()).collect::<Vec<_>>(),
    );
    let out = tmp.path().join("fetch");
    let r = run(fetch_cmd(&list, &out, &server.base_url()).args(FAST).args([
        "--shard-size",
        "10",
        "--user-agent",
        "curate-test/1",
        "--placeholder-sha256",
        &placeholder_sha,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let records = read_images(&out);
    assert_eq!(records.len(), cases.len(), "every URL is recorded");
    let mut seen_sources: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (url, reason, status, attempts)) in cases.iter().enumerate() {
        let rec = &records[i];
        assert_eq!(&rec.source, url, "rows follow the list order");
        *seen_sources.entry(url).or_default() += 1;
        let d = rec.download.as_ref().expect("download facts");
        if *reason == "ok" {
            assert_eq!(
                rec.status,
                Status::Ok,
                "{url}: {:?} {:?}",
                rec.reason,
                rec.error
            );
            assert!(rec.bytes.is_some() && rec.width.is_some());
        } else {
            assert_eq!(
                rec.reason.as_deref(),
                Some(*reason),
                "{url}: {:?}",
                rec.error
            );
            assert!(rec.error.as_ref().is_some_and(|e| !e.is_empty()), "{url}");
        }
        assert_eq!(d.http_status, *status, "{url}: status");
        assert_eq!(d.attempts, *attempts, "{url}: attempts");
        assert_eq!(
            d.page_url.as_deref(),
            Some(format!("https://example.org/photo/{i}").as_str()),
            "{url}: provenance"
        );
        // The server saw exactly the attempts we counted (not for duplicates, redirects or bad URLs).
        if !matches!(*reason, "duplicate_url" | "invalid_url" | "redirect")
            && !url.starts_with("redirect/")
            && *url != "files/photos/astronaut-full.jpg"
        {
            assert_eq!(
                server.hits(&format!("/{url}")),
                *attempts as u32,
                "{url}: server-side attempts"
            );
        }
    }
    assert_eq!(
        server.hits("/files/photos/astronaut-full.jpg"),
        1,
        "a repeated URL is fetched once"
    );
    // Retry-After: 1 was honoured between the two requests.
    let t = server.hit_times("/429/1/1/photos/astronaut-face.jpg");
    assert!(
        t[1] - t[0] >= Duration::from_millis(950),
        "{:?}",
        t[1] - t[0]
    );
    // Original bytes are kept.
    assert_eq!(records[0].bytes.as_deref(), Some(coffee.as_slice()));
    assert_eq!(server.last_user_agent().as_deref(), Some("curate-test/1"));
    // The redirect chain ended at the file: 3 requests, 1 attempt.
    assert_eq!(server.hits("/redirect/0/photos/coffee-cup.jpg"), 1);
    let reasons: Vec<&str> = [
        "http_error",
        "rate_limited",
        "timeout",
        "connection",
        "truncated",
        "too_large",
        "redirect",
        "not_an_image",
        "placeholder",
    ]
    .to_vec();
    for reason in reasons {
        assert!(r.stderr.contains("images/s"), "{}", r.stderr);
        assert!(
            records.iter().any(|x| x.reason.as_deref() == Some(reason)),
            "{reason}"
        );
    }
}

#[test]
fn sigkill_then_rerun_has_every_url_exactly_once() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let photos: Vec<String> = image_files(&fixtures_images().join("photos"))
        .into_iter()
        .flat_map(|p| {
            [
                format!("files/photos/{p}"),
                format!("redirect/1/photos/{p}"),
            ]
        })
        .collect();
    let list = tmp.path().join("urls.txt");
    std::fs::write(&list, photos.join("\n")).unwrap();
    let base = server.base_url();
    let fetch = |out: &Path| {
        let mut c = fetch_cmd(&list, out, &base);
        c.args(["--retries", "2", "--backoff", "0.05", "--timeout", "30"])
            .args(["--shard-size", "4"]);
        c
    };
    let reference = tmp.path().join("reference");
    assert_eq!(run(&mut fetch(&reference)).code, 0);

    let out = tmp.path().join("killed");
    let mut child = fetch(&out)
        .env("CURATE_TEST_STALL_AFTER_ROWS", "10")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("stalled after 12 rows")),
        "the child must reach the stall point"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let r = run(&mut fetch(&out));
    assert_eq!(r.code, 0, "{}", r.stderr);

    let strip = |mut v: Vec<ImageRecord>| {
        for r in &mut v {
            if let Some(d) = r.download.as_mut() {
                d.fetch_ms = 0;
            }
        }
        v
    };
    let got = strip(read_images(&out));
    let want = strip(read_images(&reference));
    assert_eq!(got.len(), photos.len());
    let sources: std::collections::HashSet<&str> = got.iter().map(|r| r.source.as_str()).collect();
    assert_eq!(sources.len(), photos.len(), "every URL exactly once");
    assert_eq!(got, want, "same records as an uninterrupted run");
    assert!(
        got.iter().all(|r| r.status == Status::Ok),
        "{:?}",
        got.iter().find(|r| r.status != Status::Ok)
    );
    assert_eq!(read_duplicates(&out), read_duplicates(&reference));
    assert_eq!(
        read_duplicates(&out).len(),
        image_files(&fixtures_images().join("photos")).len(),
        "each photo is served twice: once direct, once via a redirect"
    );
}

#[test]
fn retry_failed_refetches_only_the_failures() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let urls = [
        "files/photos/astronaut-full.jpg",
        "fail-then-ok/1/503/photos/coffee-full.jpg",
        "status/404/photos/x.jpg",
        "files/photos/coffee-cup.jpg",
    ];
    let list = tmp.path().join("urls.txt");
    std::fs::write(&list, urls.join("\n")).unwrap();
    let out = tmp.path().join("fetch");
    let fetch = |extra: &[&str]| {
        let r = run(fetch_cmd(&list, &out, &server.base_url())
            .args(["--retries", "0", "--shard-size", "2"])
            .args(extra));
        assert_eq!(r.code, 0, "{}", r.stderr);
        read_images(&out)
    };
    let first = fetch(&[]);
    assert_eq!(first[1].reason.as_deref(), Some("http_error"));
    assert_eq!(first[2].reason.as_deref(), Some("http_error"));

    let again = fetch(&[]);
    assert_eq!(
        server.hits("/fail-then-ok/1/503/photos/coffee-full.jpg"),
        1,
        "a plain rerun fetches nothing"
    );
    assert_eq!(again, first);

    let retried = fetch(&["--retry-failed"]);
    assert_eq!(retried[1].status, Status::Ok, "{:?}", retried[1].error);
    assert_eq!(
        retried[1].download.as_ref().unwrap().attempts,
        2,
        "attempts add up across runs"
    );
    assert_eq!(
        retried[2].reason.as_deref(),
        Some("http_error"),
        "a 404 is not retried"
    );
    assert_eq!(server.hits("/status/404/photos/x.jpg"), 1);
    assert_eq!(
        server.hits("/files/photos/astronaut-full.jpg"),
        1,
        "successes are not refetched"
    );
    assert_eq!(server.hits("/files/photos/coffee-cup.jpg"), 1);
    assert_eq!(retried[0], first[0]);
    let (_, journal) = curate_core::stage::StageDir::inspect(&out)
        .unwrap()
        .unwrap();
    assert_eq!(
        journal.iter().map(|r| r.failures).sum::<u64>(),
        1,
        "the journal counts the recovery"
    );
}

#[test]
fn a_missing_url_column_names_what_the_file_has() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("urls.parquet");
    url_parquet(&list, &["http://127.0.0.1:9/x.jpg".to_string()]);
    let r = run(curate()
        .arg("fetch")
        .arg(&list)
        .arg("-o")
        .arg(tmp.path().join("o"))
        .args(["--url-col", "URL"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no column `URL`; the file has: url, url_highres, url_source"),
        "{}",
        r.stderr
    );
}

#[test]
fn max_side_downscales_and_min_side_rejects() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("urls.txt");
    // 300×200, 256×256, and a 96 px-wide photo that --min-side 100 rejects.
    let small = image_files(&fixtures_images().join("photos"))
        .into_iter()
        .find(|p| {
            let d = curate_vision::decode(
                &std::fs::read(fixtures_images().join("photos").join(p)).unwrap(),
                &Default::default(),
            )
            .unwrap();
            d.width().min(d.height()) < 100
        })
        .expect("a fixture photo with a side under 100 px");
    std::fs::write(
        &list,
        format!(
            "files/photos/coffee-full.jpg\nfiles/photos/astronaut-full.jpg\nfiles/photos/{small}\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("fetch");
    let r = run(fetch_cmd(&list, &out, &server.base_url()).args([
        "--max-side",
        "64",
        "--min-side",
        "100",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = read_images(&out);
    for rec in &recs[..2] {
        assert_eq!(rec.status, Status::Ok, "{:?}", rec.error);
        assert_eq!(
            rec.width.unwrap().max(rec.height.unwrap()),
            64,
            "{}",
            rec.source
        );
        assert_eq!(rec.stored, Some(curate_core::record::Stored::Reencoded));
        let d = curate_vision::decode(rec.bytes.as_ref().unwrap(), &Default::default()).unwrap();
        assert_eq!(
            (d.width(), d.height()),
            (rec.width.unwrap(), rec.height.unwrap())
        );
    }
    assert_eq!(
        (recs[0].width, recs[0].height),
        (Some(64), Some(43)),
        "300×200 keeps its aspect ratio"
    );
    assert_eq!(
        recs[2].reason.as_deref(),
        Some("too_small"),
        "{:?}",
        recs[2]
    );
}

#[test]
fn per_host_rate_limit_spaces_requests() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("urls.txt");
    let urls: Vec<String> = (0..6)
        .map(|i| format!("files/photos/coffee-cup.jpg?n={i}"))
        .collect();
    std::fs::write(&list, urls.join("\n")).unwrap();
    let r = run(
        fetch_cmd(&list, &tmp.path().join("fetch"), &server.base_url()).args([
            "--per-host-rps",
            "5",
            "--concurrency",
            "16",
        ]),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut times = server.hit_times("/files/photos/coffee-cup.jpg");
    times.sort();
    assert_eq!(times.len(), 6);
    // A token every 200 ms: six requests span at least 1 s, whatever the concurrency.
    let span = times[5] - times[0];
    assert!(
        span >= Duration::from_millis(950),
        "6 requests at 5/s took {span:?}"
    );
    for w in times.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(150),
            "{:?}",
            w[1] - w[0]
        );
    }
}

#[test]
fn host_names_resolve_through_the_cache() {
    let server = TestServer::start(fixtures_images()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("urls.txt");
    std::fs::write(
        &list,
        "files/photos/coffee-cup.jpg\nfiles/photos/astronaut-face.jpg\n",
    )
    .unwrap();
    let base = format!("http://localhost:{}", server.addr().port());
    let r = run(&mut fetch_cmd(&list, &tmp.path().join("f"), &base));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = read_images(&tmp.path().join("f"));
    assert!(
        recs.iter().all(|r| r.status == Status::Ok),
        "{:?}",
        recs.iter().map(|r| &r.error).collect::<Vec<_>>()
    );
    assert!(recs[0]
        .download
        .as_ref()
        .unwrap()
        .url
        .starts_with("http://localhost:"));
}
