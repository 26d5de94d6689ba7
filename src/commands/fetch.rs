//! `curate fetch LISTS…`: URL lists → image shards, the same `images`
//! table as `ingest` plus the download facts.
//!
//! The concatenated lists are cut into shards of `--shard-size` URLs.
//! Downloads run on a tokio runtime (`--concurrency` in flight, per-host
//! limits); each body is validated (decoded with bomb limits, placeholder
//! and size checks) on a bounded blocking pool, and rows are written in
//! list order through a small reorder buffer, so memory stays bounded by
//! what is in flight. `--retry-failed` re-attempts only the retryable
//! failures of complete shards.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use curate_core::hash::{sha256_hex, Fingerprint};
use curate_core::record::{record_key, DownloadFacts, ImageRecord, Status};
use curate_core::split::ShardSplit;
use curate_core::stage::{Inputs, ShardRecord, ShardState, StageDir, StageSpec};
use curate_fetch::{Client, Download, FetchConfig};
use curate_io::images;

use super::shared::{self, ImageShard, StallHook, BATCH_ROWS};
use super::StageSummary;
use crate::cli::FetchArgs;
use crate::imaging::{image_record, Validation};
use crate::progress::{peak_rss_bytes, Progress};

/// Failures worth another try with `--retry-failed`.
const RETRYABLE: &[&str] = &["rate_limited", "timeout", "connection", "truncated"];

/// One input list.
struct UrlList {
    path: PathBuf,
    rows: u64,
    parquet: bool,
}

/// A list row: the URL and its photo page.
type Row = (String, Option<String>);

/// The concatenated lists, loaded one file at a time.
struct Lists {
    lists: Vec<UrlList>,
    url_col: String,
    page_col: String,
    /// The list loaded last: (index, rows).
    cache: Option<(usize, Vec<Row>)>,
}

impl Lists {
    fn open(paths: &[PathBuf], url_col: &str, page_col: &str) -> anyhow::Result<Self> {
        let mut lists = Vec::new();
        for p in paths {
            let parquet = p
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
            let rows = if parquet {
                curate_io::row_count(p)?
            } else {
                read_text_list(p)?.len() as u64
            };
            lists.push(UrlList {
                path: p.clone(),
                rows,
                parquet,
            });
        }
        Ok(Lists {
            lists,
            url_col: url_col.to_string(),
            page_col: page_col.to_string(),
            cache: None,
        })
    }

    fn total(&self) -> usize {
        self.lists.iter().map(|l| l.rows as usize).sum()
    }

    fn fingerprint(&self) -> String {
        let mut fp = Fingerprint::new();
        for l in &self.lists {
            let name = l
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            fp.add(name.as_bytes());
            fp.add(&l.rows.to_le_bytes());
            fp.add(
                &std::fs::metadata(&l.path)
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .to_le_bytes(),
            );
        }
        fp.finish()
    }

    fn load(&mut self, i: usize) -> anyhow::Result<&[Row]> {
        if self.cache.as_ref().map(|(j, _)| *j) != Some(i) {
            let l = &self.lists[i];
            let rows = if l.parquet {
                let cols =
                    match curate_io::read_utf8_columns(&l.path, &[&self.url_col, &self.page_col]) {
                        Ok(c) => c,
                        Err(curate_io::IoError::MissingInputColumn { column, .. })
                            if column == self.page_col =>
                        {
                            curate_io::read_utf8_columns(&l.path, &[&self.url_col])?
                        }
                        Err(e) => return Err(e.into()),
                    };
                let pages = cols
                    .get(1)
                    .cloned()
                    .unwrap_or_else(|| vec![None; cols[0].len()]);
                cols[0]
                    .iter()
                    .zip(pages)
                    .map(|(u, p)| (u.clone().unwrap_or_default(), p))
                    .collect()
            } else {
                read_text_list(&l.path)?
                    .into_iter()
                    .map(|u| (u, None))
                    .collect()
            };
            self.cache = Some((i, rows));
        }
        Ok(&self.cache.as_ref().expect("loaded").1)
    }

    /// Rows `range` of the concatenated lists: (url, page url).
    fn rows(
        &mut self,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let mut out = Vec::with_capacity(range.len());
        let mut offset = 0usize;
        for i in 0..self.lists.len() {
            let n = self.lists[i].rows as usize;
            let (lo, hi) = (range.start.max(offset), range.end.min(offset + n));
            if lo < hi {
                let rows = self.load(i)?;
                out.extend_from_slice(&rows[lo - offset..hi - offset]);
            }
            offset += n;
        }
        Ok(out)
    }

    /// "file:first-last" labels of the slices a row range covers.
    fn describe(&self, range: std::ops::Range<usize>) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        for l in &self.lists {
            let n = l.rows as usize;
            let (lo, hi) = (range.start.max(offset), range.end.min(offset + n));
            if lo < hi {
                let name = l
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push(format!("{name}:{}-{}", lo - offset, hi - offset - 1));
            }
            offset += n;
        }
        out
    }
}

fn read_text_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading URL list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// One URL to fetch, at `slot` in its shard.
struct Item {
    key: String,
    listed: String,
    page: Option<String>,
    /// A record decided without fetching (invalid or repeated URL).
    decided: Option<ImageRecord>,
}

/// What validation needs besides the image rules.
#[derive(Clone)]
struct Checks {
    validation: Validation,
    min_bytes: u64,
    placeholders: Arc<HashSet<String>>,
}

pub fn run(args: &FetchArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    if args.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    let base = match &args.base_url {
        Some(b) => Some(reqwest_url(b).with_context(|| format!("--base-url {b}"))?),
        None => None,
    };
    let mut lists = Lists::open(&args.inputs, &args.url_col, &args.page_col)?;
    let total = lists.total();
    if total == 0 {
        bail!("the URL lists hold no URLs");
    }
    let placeholders: HashSet<String> = args
        .placeholder_sha256
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if let Some(bad) = placeholders
        .iter()
        .find(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        bail!("--placeholder-sha256 {bad}: expected 64 hex digits");
    }
    let mut sorted_placeholders: Vec<&String> = placeholders.iter().collect();
    sorted_placeholders.sort();
    let num_shards = total.div_ceil(args.shard_size as usize) as u32;
    let spec = StageSpec {
        stage: "fetch".into(),
        schema: "images".into(),
        config: serde_json::json!({
            "url_col": args.url_col,
            "page_col": args.page_col,
            "shard_size": args.shard_size,
            "store": args.image.store,
            "max_pixels": args.image.max_pixels,
            "jpeg_quality": args.image.jpeg_quality,
            "verify": args.image.verify,
            "max_bytes": args.max_bytes,
            "min_bytes": args.min_bytes,
            "min_side": args.min_side,
            "max_side": args.max_side,
            "placeholder_sha256": sorted_placeholders,
        }),
        inputs: Inputs {
            kind: "url_list".into(),
            location: args
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            items: total as u64,
            fingerprint: lists.fingerprint(),
            shards: args
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        },
        num_shards,
    };
    let (mut stage, _) = StageDir::open(&args.output, &spec, args.overwrite)?;

    let client = Arc::new(Client::new(FetchConfig {
        concurrency: args.concurrency,
        per_host_concurrency: args.per_host_concurrency,
        per_host_rps: args.per_host_rps,
        retries: args.retries,
        backoff_base: Duration::from_secs_f64(args.backoff.max(0.0)),
        backoff_max: Duration::from_secs(120),
        max_retry_after: Duration::from_secs_f64(args.max_retry_after.max(0.0)),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout.max(0.001)),
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        max_bytes: args.max_bytes,
        max_redirects: args.max_redirects,
        user_agent: args
            .user_agent
            .clone()
            .unwrap_or_else(|| FetchConfig::default().user_agent),
    })?);
    let threads = if args.image.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        args.image.threads
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .max_blocking_threads(threads.max(1) * 2)
        .enable_all()
        .build()
        .context("starting the download runtime")?;
    let checks = Checks {
        validation: Validation::new(&args.image, args.min_side, args.max_side),
        min_bytes: args.min_bytes,
        placeholders: Arc::new(placeholders),
    };
    // One validation more than cores keeps them busy while a finished one hands off its record.
    let decode_slots = Arc::new(tokio::sync::Semaphore::new(threads + 1));
    let fetcher = Fetcher {
        rt: &rt,
        client: &client,
        checks: &checks,
        decode_slots: &decode_slots,
        base: base.as_ref(),
    };

    let owned: Vec<u32> = split.owned(num_shards).collect();
    let owned_items: u64 = owned
        .iter()
        .map(|&s| shared::shard_range(s, args.shard_size, total).len() as u64)
        .sum();
    let mut progress = Progress::new("fetch", owned_items);
    let mut summary = StageSummary {
        shards_total: num_shards,
        ..Default::default()
    };
    let mut hook = StallHook::from_env();
    let mut retried_shards = 0u32;
    let started = Instant::now();

    for &shard in &owned {
        let range = shared::shard_range(shard, args.shard_size, total);
        match stage.shard_state(shard, shared::verify_image_shard)? {
            ShardState::Complete(rec) => {
                let rec = if args.retry_failed {
                    match retry_shard(&stage, &rec, &fetcher)? {
                        Some(new) => {
                            retried_shards += 1;
                            new
                        }
                        None => rec,
                    }
                } else {
                    rec
                };
                summary.add(&rec, false);
                progress.inc(range.len() as u64);
                continue;
            }
            ShardState::Corrupt(why) => {
                tracing::warn!("fetch: shard {shard} is damaged ({why}); redoing it")
            }
            ShardState::Missing => {}
        }
        let rows = lists.rows(range.clone())?;
        let items = plan_items(rows, range.start, base.as_ref());
        let mut out = ImageShard::begin(&stage, shard)?;
        fetcher.fetch(items, |batch| {
            out.write(&batch)?;
            progress.inc(batch.len() as u64);
            let s = &client.stats;
            let done = s.done.load(Ordering::Relaxed).max(1);
            progress.set_detail(format!(
                ", {:.1}% ok, {:.1} MB/s, {} retries ({} waiting)",
                100.0 * s.ok.load(Ordering::Relaxed) as f64 / done as f64,
                s.bytes.load(Ordering::Relaxed) as f64
                    / 1e6
                    / started.elapsed().as_secs_f64().max(1e-9),
                s.retries.load(Ordering::Relaxed),
                s.waiting_to_retry.load(Ordering::Relaxed),
            ));
            hook.wrote(batch.len());
            Ok(())
        })?;
        let rec = out.commit(lists.describe(range.clone()), 0.0)?;
        progress.event(&shared::shard_done("fetch", "URLs", &rec));
        summary.add(&rec, true);
    }
    progress.finish();

    shared::finish_image_stage(
        &mut stage,
        "fetch",
        summary.shards_written > 0 || retried_shards > 0,
    )?;
    let s = &client.stats;
    let secs = started.elapsed().as_secs_f64();
    if summary.shards_written == 0 && retried_shards == 0 {
        tracing::info!(
            "fetch: all {} shards of this task already complete; nothing to do",
            owned.len()
        );
        return Ok(summary);
    }
    tracing::info!(
        "fetch: {} shards written, {} skipped{}; {} URLs in {secs:.2} s ({:.1} images/s), {} ok, {:.1} MB at {:.1} MB/s, {} retries, peak RSS {:.1} MiB",
        summary.shards_written,
        summary.shards_skipped,
        if retried_shards > 0 { format!(" ({retried_shards} retried)") } else { String::new() },
        hook.rows,
        hook.rows as f64 / secs.max(1e-9),
        s.ok.load(Ordering::Relaxed),
        s.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        s.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs.max(1e-9),
        s.retries.load(Ordering::Relaxed),
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(summary)
}

fn reqwest_url(s: &str) -> anyhow::Result<reqwest::Url> {
    let mut s = s.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(reqwest::Url::parse(&s)?)
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
fn plan_items(rows: Vec<Row>, first_row: usize, base: Option<&reqwest::Url>) -> Vec<Item> {
    let mut seen = HashSet::new();
    rows.into_iter()
        .enumerate()
        .map(|(i, (listed, page))| {
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

/// What fetching a list of items needs.
struct Fetcher<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: &'a Arc<Client>,
    checks: &'a Checks,
    decode_slots: &'a Arc<tokio::sync::Semaphore>,
    base: Option<&'a reqwest::Url>,
}

impl Fetcher<'_> {
    /// Fetches and validates `items`, handing `sink` batches of records in
    /// item order (a reorder buffer holds what finished early).
    fn fetch(
        &self,
        items: Vec<Item>,
        mut sink: impl FnMut(Vec<ImageRecord>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
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
            let base = self.base.cloned();
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
                                    crate::imaging::guarded(&k, &l, 0, || {
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

/// Re-fetches the retryable failures of a complete shard and rewrites it
/// (the new file replaces the old one by rename; the row count is unchanged,
/// so an interruption leaves a consistent shard). `None` when nothing to retry.
fn retry_shard(
    stage: &StageDir,
    journal: &ShardRecord,
    fetcher: &Fetcher,
) -> anyhow::Result<Option<ShardRecord>> {
    let shard = journal.shard;
    let mut records = Vec::new();
    for b in curate_io::read_shard(&stage.shard_path(shard), images::table())? {
        records.extend(images::from_batch(&b)?);
    }
    let retry: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            let reason = r.reason.as_deref().unwrap_or("");
            RETRYABLE.contains(&reason)
                || (reason == "http_error"
                    && r.download
                        .as_ref()
                        .and_then(|d| d.http_status)
                        .is_some_and(|s| s >= 500))
        })
        .map(|(i, _)| i)
        .collect();
    if retry.is_empty() {
        return Ok(None);
    }
    let items: Vec<Item> = retry
        .iter()
        .map(|&i| Item {
            key: records[i].key.clone(),
            listed: records[i].source.clone(),
            page: records[i]
                .download
                .as_ref()
                .and_then(|d| d.page_url.clone()),
            decided: None,
        })
        .collect();
    let mut fresh = Vec::with_capacity(items.len());
    fetcher.fetch(items, |batch| {
        fresh.extend(batch);
        Ok(())
    })?;
    let mut recovered = 0;
    for (&i, mut rec) in retry.iter().zip(fresh) {
        if rec.status == Status::Ok {
            recovered += 1;
        }
        if let (Some(old), Some(new)) = (records[i].download.as_ref(), rec.download.as_mut()) {
            new.attempts = new.attempts.saturating_add(old.attempts);
        }
        records[i] = rec;
    }
    let mut out = ImageShard::rewrite(stage, shard)?;
    for chunk in records.chunks(BATCH_ROWS) {
        out.write(chunk)?;
    }
    let rec = out.commit(journal.inputs.clone(), journal.duration_s)?;
    tracing::info!(
        "fetch: shard {shard}: retried {} failed URLs, {recovered} recovered",
        retry.len()
    );
    Ok(Some(rec))
}
