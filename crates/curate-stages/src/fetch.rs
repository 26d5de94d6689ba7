//! `fetch`: URL lists → image shards, the same `images` table as `ingest`
//! plus the download facts.
//!
//! The concatenated lists are cut into shards of `shard_size` URLs.
//! Downloads and validation run in [`download`]; rows are written in list
//! order. `retry_failed` re-attempts only the retryable failures of
//! complete shards ([`Stage::revisit`]).

mod download;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use curate_core::hash::Fingerprint;
use curate_core::record::Status;
use curate_core::schema::TableSchema;
use curate_core::stage::{Inputs, ShardRecord, StageDir, StageSpec};
use curate_fetch::{Client, FetchConfig};
use curate_io::images;
use curate_io::url_list::{ListFile, UrlRow};
use curate_stage::{
    bail, shard_range, Context, Result, ShardOutput, Stage, StageError, BATCH_ROWS,
};

use crate::validate::{ImageSettings, Validation};
use download::{plan_items, Checks, Downloader, Item};

/// Failures worth another try with `retry_failed`.
const RETRYABLE: &[&str] = &["rate_limited", "timeout", "connection", "truncated"];

/// What `curate fetch` is asked to do.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// URL lists: parquet files or text files with one URL per line.
    pub inputs: Vec<PathBuf>,
    /// Parquet column holding the URLs.
    pub url_col: String,
    /// Parquet column holding the photo page, kept when the list has it.
    pub page_col: String,
    /// Base for relative URLs (not part of the configuration).
    pub base_url: Option<String>,
    /// URLs per output shard.
    pub shard_size: u32,
    /// The HTTP client: concurrency, limits, retries, timeouts, body cap.
    pub client: FetchConfig,
    /// Smaller bodies are `placeholder`.
    pub min_bytes: u64,
    /// sha256 of known placeholder images (hex).
    pub placeholder_sha256: Vec<String>,
    /// Images whose shorter side is below this are `too_small`.
    pub min_side: u32,
    /// Larger images are downscaled to this long side and re-encoded.
    pub max_side: Option<u32>,
    pub image: ImageSettings,
    /// Re-attempt the retryable failures of complete shards, rewriting them.
    pub retry_failed: bool,
}

/// The fetch stage over its URL lists.
pub struct Fetch {
    settings: FetchSettings,
    lists: Lists,
    /// The placeholder hashes, sorted, for the manifest.
    placeholders: Vec<String>,
    downloader: Downloader,
    started: Instant,
}

impl Fetch {
    /// Opens the lists and starts the download runtime; fails on bad settings or empty lists.
    pub fn new(settings: FetchSettings) -> Result<Fetch> {
        if settings.shard_size == 0 {
            bail!("--shard-size must be at least 1");
        }
        let base = match &settings.base_url {
            Some(b) => Some(download::base_url(b).with_context(|| format!("--base-url {b}"))?),
            None => None,
        };
        let lists = Lists::open(&settings.inputs, &settings.url_col, &settings.page_col)?;
        if lists.total() == 0 {
            bail!("the URL lists hold no URLs");
        }
        let placeholders: HashSet<String> = settings
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
        let mut sorted: Vec<String> = placeholders.iter().cloned().collect();
        sorted.sort();
        let client = Client::new(settings.client.clone()).map_err(StageError::other)?;
        let checks = Checks {
            validation: Validation::new(&settings.image, settings.min_side, settings.max_side),
            min_bytes: settings.min_bytes,
            placeholders: Arc::new(placeholders),
        };
        let downloader = Downloader::new(client, checks, settings.image.threads, base)?;
        Ok(Fetch {
            settings,
            lists,
            placeholders: sorted,
            downloader,
            started: Instant::now(),
        })
    }

    fn range(&self, shard: u32) -> std::ops::Range<usize> {
        shard_range(shard, self.settings.shard_size, self.lists.total())
    }

    /// Re-fetches the retryable failures of a complete shard and rewrites it
    /// (the new file replaces the old one by rename; the row count is unchanged,
    /// so an interruption leaves a consistent shard). `None` when nothing to retry.
    fn retry_shard(
        &self,
        journal: &ShardRecord,
        out: &ShardOutput<'_>,
    ) -> Result<Option<ShardRecord>> {
        let shard = journal.shard;
        let mut records = Vec::new();
        for b in curate_io::read_shard(&out.stage.shard_path(shard), images::table())? {
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
        self.downloader.fetch(items, |batch| {
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
        let mut images = out.rewrite_images(shard)?;
        for chunk in records.chunks(BATCH_ROWS) {
            images.write(chunk)?;
        }
        let rec = images.commit(journal.inputs.clone(), journal.duration_s)?;
        tracing::info!(
            "fetch: shard {shard}: retried {} failed URLs, {recovered} recovered",
            retry.len()
        );
        Ok(Some(rec))
    }

    /// Downloads so far: (done, ok, bytes, retries, waiting to retry) and seconds since the start.
    fn stats(&self) -> (u64, u64, u64, u64, u64, f64) {
        let s = &self.downloader.client.stats;
        (
            s.done.load(Ordering::Relaxed),
            s.ok.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
            s.waiting_to_retry.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64().max(1e-9),
        )
    }
}

impl Stage for Fetch {
    fn name(&self) -> &str {
        "fetch"
    }

    fn table(&self) -> &'static TableSchema {
        images::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        let s = &self.settings;
        let total = self.lists.total();
        let inputs: Vec<String> = s.inputs.iter().map(|p| p.display().to_string()).collect();
        Ok(StageSpec {
            stage: "fetch".into(),
            schema: "images".into(),
            config: serde_json::json!({
                "url_col": s.url_col,
                "page_col": s.page_col,
                "shard_size": s.shard_size,
                "store": s.image.store,
                "max_pixels": s.image.max_pixels,
                "jpeg_quality": s.image.jpeg_quality,
                "verify": s.image.verify,
                "max_bytes": s.client.max_bytes,
                "min_bytes": s.min_bytes,
                "min_side": s.min_side,
                "max_side": s.max_side,
                "placeholder_sha256": self.placeholders,
            }),
            inputs: Inputs {
                kind: "url_list".into(),
                location: inputs.join(", "),
                items: total as u64,
                fingerprint: self.lists.fingerprint(),
                shards: inputs,
            },
            num_shards: total.div_ceil(s.shard_size as usize) as u32,
        })
    }

    fn shard_items(&self, shard: u32) -> u64 {
        self.range(shard).len() as u64
    }

    fn unit(&self) -> &str {
        "URLs"
    }

    fn shard_label(&self, shard: u32) -> Option<String> {
        let labels = self.lists.describe(self.range(shard));
        (!labels.is_empty()).then(|| labels.join(", "))
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let range = self.range(shard);
        let rows = self.lists.rows(range.clone())?;
        let items = plan_items(rows, range.start, self.downloader.base.as_ref());
        let mut images = out.begin_images(shard)?;
        self.downloader.fetch(items, |batch| {
            images.write(&batch)?;
            let (done, ok, bytes, retries, waiting, secs) = self.stats();
            out.progress.set_detail(format!(
                ", {:.1}% ok, {:.1} MB/s, {retries} retries ({waiting} waiting)",
                100.0 * ok as f64 / done.max(1) as f64,
                bytes as f64 / 1e6 / secs,
            ));
            out.wrote(batch.len());
            Ok(())
        })?;
        images.commit(self.lists.describe(range), 0.0)
    }

    fn revisit(
        &mut self,
        _shard: u32,
        rec: &ShardRecord,
        out: &mut ShardOutput<'_>,
    ) -> Result<Option<ShardRecord>> {
        if !self.settings.retry_failed {
            return Ok(None);
        }
        self.retry_shard(rec, out)
    }

    fn finish(&mut self, stage: &StageDir, changed: bool) -> Result<Vec<String>> {
        curate_stage::images::finish_image_stage(stage, "fetch", changed)
    }

    fn closing_detail(&self) -> String {
        let (_, ok, bytes, retries, _, secs) = self.stats();
        format!(
            ", {ok} ok, {:.1} MB at {:.1} MB/s, {retries} retries",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        )
    }
}

/// The concatenated lists, loaded one file at a time.
struct Lists {
    lists: Vec<ListFile>,
    url_col: String,
    page_col: String,
    /// The list loaded last: (index, rows).
    cache: Option<(usize, Vec<UrlRow>)>,
}

impl Lists {
    fn open(paths: &[PathBuf], url_col: &str, page_col: &str) -> Result<Self> {
        let lists = paths
            .iter()
            .map(|p| ListFile::open(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
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
            fp.add(file_name(l).as_bytes());
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

    fn load(&mut self, i: usize) -> Result<&[UrlRow]> {
        if self.cache.as_ref().map(|(j, _)| *j) != Some(i) {
            let rows = self.lists[i].read(&self.url_col, &self.page_col)?;
            self.cache = Some((i, rows));
        }
        Ok(&self.cache.as_ref().expect("loaded").1)
    }

    /// Rows `range` of the concatenated lists.
    fn rows(&mut self, range: std::ops::Range<usize>) -> Result<Vec<UrlRow>> {
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
                out.push(format!(
                    "{}:{}-{}",
                    file_name(l),
                    lo - offset,
                    hi - offset - 1
                ));
            }
            offset += n;
        }
        out
    }
}

fn file_name(l: &ListFile) -> String {
    l.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
