//! Downloads and validation: URLs in, image records out in list order.
//!
//! Requests run on a tokio runtime (the client's concurrency and per-host
//! limits); each body is validated on a bounded blocking pool, and records
//! come back in item order through a small reorder buffer, so memory stays
//! bounded by what is in flight.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use curate_core::hash::sha256_hex;
use curate_core::record::{record_key, DownloadFacts, ImageRecord};
use curate_fetch::{Client, Download};
use curate_io::url_list::UrlRow;
use curate_stage::{bail, Result, StageError, BATCH_ROWS};

use crate::validate::{guarded, image_record, Validation};

/// One URL to fetch.
pub(super) struct Item {
    pub key: String,
    pub listed: String,
    pub page: Option<String>,
    /// A record decided without fetching (invalid or repeated URL).
    pub decided: Option<ImageRecord>,
}

/// What validation needs besides the image rules.
#[derive(Clone)]
pub(super) struct Checks {
    pub validation: Validation,
    pub min_bytes: u64,
    pub placeholders: Arc<HashSet<String>>,
}

/// The download runtime, the client and the validation pool.
pub(super) struct Downloader {
    rt: tokio::runtime::Runtime,
    pub client: Arc<Client>,
    checks: Checks,
    decode_slots: Arc<tokio::sync::Semaphore>,
    pub base: Option<reqwest::Url>,
}

impl Downloader {
    /// `threads`: validation threads (0 = all cores).
    pub fn new(
        client: Client,
        checks: Checks,
        threads: usize,
        base: Option<reqwest::Url>,
    ) -> Result<Downloader> {
        use curate_stage::Context;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            threads
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.clamp(1, 4))
            .max_blocking_threads(threads.max(1) * 2)
            .enable_all()
            .build()
            .context("starting the download runtime")?;
        Ok(Downloader {
            rt,
            client: Arc::new(client),
            checks,
            // One validation more than cores keeps them busy while a finished one hands off its record.
            decode_slots: Arc::new(tokio::sync::Semaphore::new(threads + 1)),
            base,
        })
    }

    /// Fetches and validates `items`, handing `sink` batches of records in
    /// item order (a reorder buffer holds what finished early).
    pub fn fetch(
        &self,
        items: Vec<Item>,
        mut sink: impl FnMut(Vec<ImageRecord>) -> Result<()>,
    ) -> Result<()> {
        let n = items.len();
        // Records in flight or waiting in the reorder buffer, at most: a URL
        // stuck in back-off holds up at most this many finished images.
        let window = Arc::new(tokio::sync::Semaphore::new(
            (self.client.config().concurrency * 4).max(256),
        ));
        self.rt.block_on(async {
            type Done = (usize, ImageRecord, tokio::sync::OwnedSemaphorePermit);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
            let client = self.client.clone();
            let checks = self.checks.clone();
            let slots = self.decode_slots.clone();
            let base = self.base.clone();
            let producer_window = window.clone();
            tokio::spawn(async move {
                for (order, item) in items.into_iter().enumerate() {
                    let Ok(permit) = producer_window.clone().acquire_owned().await else {
                        return;
                    };
                    let tx = tx.clone();
                    let client = client.clone();
                    let checks = checks.clone();
                    let slots = slots.clone();
                    let url = absolute(&item.listed, base.as_ref());
                    tokio::spawn(async move {
                        let record = match item.decided {
                            Some(r) => r,
                            None => {
                                let download = client.fetch(&url).await;
                                let _slot = slots.acquire_owned().await.expect("never closed");
                                let (key, listed, page) = (item.key, item.listed, item.page);
                                tokio::task::spawn_blocking(move || {
                                    let (k, l) = (key.clone(), listed.clone());
                                    guarded(&k, &l, 0, || {
                                        validate(key, listed, page, download, &checks)
                                    })
                                })
                                .await
                                .unwrap_or_else(|e| {
                                    ImageRecord::failed(
                                        String::new(),
                                        url,
                                        "undecodable",
                                        format!("validation task failed: {e}"),
                                        0,
                                    )
                                })
                            }
                        };
                        let _ = tx.send((order, record, permit));
                    });
                }
            });
            let mut pending: BTreeMap<usize, (ImageRecord, tokio::sync::OwnedSemaphorePermit)> =
                BTreeMap::new();
            let mut next = 0usize;
            let mut batch = Vec::with_capacity(BATCH_ROWS);
            let mut permits = Vec::with_capacity(BATCH_ROWS);
            while let Some((i, rec, permit)) = rx.recv().await {
                pending.insert(i, (rec, permit));
                while let Some((r, p)) = pending.remove(&next) {
                    batch.push(r);
                    permits.push(p);
                    next += 1;
                    if batch.len() == BATCH_ROWS {
                        sink(std::mem::take(&mut batch))?;
                        permits.clear(); // written: make room for more
                    }
                }
            }
            if !batch.is_empty() {
                sink(batch)?;
            }
            if next != n {
                bail!("{} of {n} downloads produced no record", n - next);
            }
            Ok(())
        })
    }
}

/// `--base-url` as a base to join relative URLs to.
pub(super) fn base_url(s: &str) -> Result<reqwest::Url> {
    let mut s = s.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    reqwest::Url::parse(&s).map_err(StageError::other)
}

/// The URL to request for a listed one.
fn absolute(listed: &str, base: Option<&reqwest::Url>) -> String {
    match base {
        Some(b) if reqwest::Url::parse(listed).is_err() => b
            .join(listed.trim_start_matches('/'))
            .map(|u| u.to_string())
            .unwrap_or_else(|_| listed.to_string()),
        _ => listed.to_string(),
    }
}

/// Keys, and the records decided without a request: empty or repeated URLs.
/// Keys are the hash of the URL, so they survive re-listing; an empty or
/// repeated URL gets its row number in the key to stay unique.
pub(super) fn plan_items(
    rows: Vec<UrlRow>,
    first_row: usize,
    base: Option<&reqwest::Url>,
) -> Vec<Item> {
    let mut seen = HashSet::new();
    rows.into_iter()
        .enumerate()
        .map(|(i, UrlRow { url: listed, page })| {
            let repeated = listed.trim().is_empty() || seen.contains(&listed);
            let key = if repeated {
                record_key(&format!("{listed}#row{}", first_row + i))
            } else {
                record_key(&listed)
            };
            let decided = if listed.trim().is_empty() {
                Some(ImageRecord::failed(
                    key.clone(),
                    listed.clone(),
                    "invalid_url",
                    "empty URL".into(),
                    0,
                ))
            } else if !seen.insert(listed.clone()) {
                Some(ImageRecord::failed(
                    key.clone(),
                    listed.clone(),
                    "duplicate_url",
                    "the URL appears earlier in this shard".into(),
                    0,
                ))
            } else {
                None
            };
            let mut item = Item {
                key,
                listed,
                page,
                decided,
            };
            if let Some(r) = item.decided.as_mut() {
                r.download = Some(DownloadFacts {
                    url: absolute(&item.listed, base),
                    page_url: item.page.clone(),
                    ..DownloadFacts::default()
                });
            }
            item
        })
        .collect()
}

/// A download → a record: failures keep their reason; bodies go through
/// the placeholder checks and the shared image validation.
fn validate(
    key: String,
    listed: String,
    page: Option<String>,
    d: Download,
    checks: &Checks,
) -> ImageRecord {
    let facts = DownloadFacts {
        url: d.url.clone(),
        page_url: page,
        http_status: d.status,
        attempts: d.attempts.min(255) as u8,
        fetch_ms: d.elapsed.as_millis().min(u32::MAX as u128) as u32,
    };
    let mut rec = match (d.failure, d.body) {
        (Some(f), _) => ImageRecord::failed(key, listed, f.reason, f.message, 0),
        (None, None) => ImageRecord::failed(key, listed, "connection", "no body".into(), 0),
        (None, Some(body)) => {
            let size = body.len() as u64;
            let sha = sha256_hex(&body);
            let looks_like_text = d
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/"))
                || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');
            let rejected = if looks_like_text && curate_vision::detect_format(&body).is_err() {
                Some((
                    "not_an_image",
                    format!(
                        "Content-Type {}, {size} bytes of text/markup",
                        d.content_type.as_deref().unwrap_or("(none)")
                    ),
                ))
            } else if size < checks.min_bytes {
                Some((
                    "placeholder",
                    format!(
                        "body of {size} bytes is below --min-bytes {}",
                        checks.min_bytes
                    ),
                ))
            } else {
                None
            };
            let rejected = rejected.or_else(|| {
                checks.placeholders.contains(&sha).then(|| {
                    (
                        "placeholder",
                        format!("body is a known placeholder image (sha256 {sha})"),
                    )
                })
            });
            match rejected {
                Some((reason, why)) => {
                    let mut r = ImageRecord::failed(key, listed, reason, why, size);
                    r.sha256 = Some(sha);
                    r
                }
                None => image_record(key, listed, body, &checks.validation),
            }
        }
    };
    rec.download = Some(facts);
    rec
}
