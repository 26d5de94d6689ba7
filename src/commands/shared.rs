//! Pieces every stage that writes image shards shares.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use curate_core::record::ImageRecord;
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageDir};
use curate_io::{images, ShardOptions, ShardWriter};

use super::StageSummary;

/// Rows per row group in image shards: image bytes are large, so row
/// groups are small and partial progress reaches the disk.
pub const BATCH_ROWS: usize = 64;

pub const DUPLICATES_FILE: &str = "exact_duplicates.parquet";

/// Rows of the input that shard `shard` covers.
pub fn shard_range(shard: u32, size: u32, total: usize) -> std::ops::Range<usize> {
    let start = (shard as usize * size as usize).min(total);
    start..(start + size as usize).min(total)
}

/// The completeness check of an image shard: footer, schema, row count.
pub fn verify_image_shard(path: &Path, rec: &ShardRecord) -> Result<(), String> {
    curate_io::verify_shard(path, images::table(), Some(rec.records))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One shard of any table being written: a temporary file, the failure
/// counts, and the journal record on [`commit`](Self::commit).
pub struct TableShard<'a> {
    stage: &'a StageDir,
    shard: u32,
    writer: ShardWriter,
    started: Instant,
    failures: u64,
    reasons: BTreeMap<String, u64>,
}

impl<'a> TableShard<'a> {
    /// Clears what an earlier attempt left and opens the temporary file.
    pub fn begin(
        stage: &'a StageDir,
        shard: u32,
        table: &'static TableSchema,
        schema: SchemaRef,
        row_group_rows: usize,
    ) -> anyhow::Result<Self> {
        stage.begin_shard(shard)?;
        Self::rewrite(stage, shard, table, schema, row_group_rows)
    }

    /// Opens a temporary file that replaces a complete shard on commit.
    pub fn rewrite(
        stage: &'a StageDir,
        shard: u32,
        table: &'static TableSchema,
        schema: SchemaRef,
        row_group_rows: usize,
    ) -> anyhow::Result<Self> {
        stage.clear_temporaries(shard)?;
        let writer = ShardWriter::create(
            table,
            schema,
            &stage.tmp_path(shard),
            &stage.shard_path(shard),
            &ShardOptions {
                row_group_rows,
                ..ShardOptions::default()
            },
        )?;
        Ok(TableShard {
            stage,
            shard,
            writer,
            started: Instant::now(),
            failures: 0,
            reasons: BTreeMap::new(),
        })
    }

    /// Appends a batch (flushed as a row group); `reasons` are its failures.
    pub fn write<'r>(
        &mut self,
        batch: &RecordBatch,
        reasons: impl IntoIterator<Item = &'r str>,
    ) -> anyhow::Result<()> {
        for reason in reasons {
            self.failures += 1;
            *self.reasons.entry(reason.to_string()).or_default() += 1;
        }
        self.writer.write(batch)?;
        self.writer.flush()?;
        Ok(())
    }

    /// Renames the file into place and journals it; `extra_s` adds earlier work to the duration.
    pub fn commit(self, inputs: Vec<String>, extra_s: f64) -> anyhow::Result<ShardRecord> {
        let (records, bytes) = self.writer.finish()?;
        let record = ShardRecord {
            shard: self.shard,
            file: StageDir::shard_name(self.shard),
            records,
            failures: self.failures,
            reasons: self.reasons,
            bytes,
            duration_s: extra_s + self.started.elapsed().as_secs_f64(),
            inputs,
            completed_unix: 0,
            host: None,
            slurm_job: None,
        };
        self.stage.commit_shard(record.clone())?;
        Ok(record)
    }
}

/// One image shard being written.
pub struct ImageShard<'a>(TableShard<'a>);

impl<'a> ImageShard<'a> {
    /// Clears what an earlier attempt left and opens the temporary file.
    pub fn begin(stage: &'a StageDir, shard: u32) -> anyhow::Result<Self> {
        stage.begin_shard(shard)?;
        Self::rewrite(stage, shard)
    }

    /// Opens a temporary file that replaces a complete shard on commit.
    pub fn rewrite(stage: &'a StageDir, shard: u32) -> anyhow::Result<Self> {
        TableShard::rewrite(
            stage,
            shard,
            images::table(),
            images::arrow_schema(),
            BATCH_ROWS,
        )
        .map(ImageShard)
    }

    /// Appends records as one row group.
    pub fn write(&mut self, records: &[ImageRecord]) -> anyhow::Result<()> {
        // Arrow's binary offsets are 32-bit: keep each batch well under 2 GiB.
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < records.len() && (end == start || bytes < 1 << 30) {
                bytes += records[end].bytes.as_ref().map_or(0, Vec::len);
                end += 1;
            }
            let part = &records[start..end];
            let batch = images::to_batch(part).context("building an images batch")?;
            self.0
                .write(&batch, part.iter().filter_map(|r| r.reason.as_deref()))?;
            start = end;
        }
        Ok(())
    }

    /// Renames the file into place and journals it; `extra_s` adds earlier work to the duration.
    pub fn commit(self, inputs: Vec<String>, extra_s: f64) -> anyhow::Result<ShardRecord> {
        self.0.commit(inputs, extra_s)
    }
}

/// A complete upstream stage read by a later one.
pub struct Upstream {
    pub dir: std::path::PathBuf,
    pub manifest: curate_core::stage::Manifest,
    /// One journal record per shard, by shard number.
    pub shards: Vec<ShardRecord>,
}

impl Upstream {
    /// Opens `dir`, which must be a complete stage writing one of `tables`.
    pub fn open(dir: &Path, tables: &[&str]) -> anyhow::Result<Upstream> {
        let (manifest, mut journal) = StageDir::inspect(dir)?.with_context(|| {
            format!(
                "input {} is not a stage directory (no manifest.json); expected the output of a stage writing {}",
                dir.display(),
                tables.join(" or ")
            )
        })?;
        if !tables.contains(&manifest.schema.name.as_str()) {
            anyhow::bail!(
                "input {}: expected a stage writing {}, found `{}` writing {}",
                dir.display(),
                tables.join(" or "),
                manifest.stage,
                manifest.schema.name
            );
        }
        journal.sort_by_key(|r| r.shard);
        journal.dedup_by_key(|r| r.shard);
        if journal.len() as u32 != manifest.num_shards {
            let done: std::collections::HashSet<u32> = journal.iter().map(|r| r.shard).collect();
            let missing: Vec<String> = (0..manifest.num_shards)
                .filter(|s| !done.contains(s))
                .take(10)
                .map(|s| s.to_string())
                .collect();
            anyhow::bail!(
                "input {} is incomplete: {} of {} shards done (missing {}{}); finish `{}` first",
                dir.display(),
                journal.len(),
                manifest.num_shards,
                missing.join(", "),
                if manifest.num_shards as usize - journal.len() > 10 {
                    ", …"
                } else {
                    ""
                },
                manifest.stage
            );
        }
        Ok(Upstream {
            dir: dir.to_path_buf(),
            manifest,
            shards: journal,
        })
    }

    /// The fingerprint of what was read: every shard's name, rows and bytes.
    pub fn fingerprint(&self) -> String {
        let mut fp = curate_core::hash::Fingerprint::new();
        fp.add(self.manifest.config_hash.as_bytes());
        for r in &self.shards {
            fp.add(r.file.as_bytes());
            fp.add(&r.records.to_le_bytes());
            fp.add(&r.bytes.to_le_bytes());
        }
        fp.finish()
    }

    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|r| r.records).sum()
    }

    pub fn shard_path(&self, rec: &ShardRecord) -> std::path::PathBuf {
        self.dir.join(&rec.file)
    }

    /// The `Inputs` of a stage reading this one.
    pub fn inputs(&self) -> curate_core::stage::Inputs {
        curate_core::stage::Inputs {
            kind: "stage".into(),
            location: self
                .dir
                .canonicalize()
                .unwrap_or(self.dir.clone())
                .display()
                .to_string(),
            items: self.rows(),
            fingerprint: self.fingerprint(),
            shards: Vec::new(),
        }
    }
}

/// The log line of a finished shard.
pub fn shard_done(stage: &str, unit: &str, rec: &ShardRecord) -> String {
    format!(
        "{stage}: shard {} complete: {} {unit}, {} failed, {:.1} images/s",
        rec.shard,
        rec.records,
        rec.failures,
        rec.records as f64 / rec.duration_s.max(1e-9)
    )
}

impl StageSummary {
    pub fn add(&mut self, rec: &ShardRecord, written: bool) {
        if written {
            self.shards_written += 1;
        } else {
            self.shards_skipped += 1;
        }
        self.records += rec.records;
        self.failures += rec.failures;
        for (k, v) in &rec.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
    }
}

/// Once every shard is complete: `exact_duplicates.parquet` (again, when
/// this run changed a shard) and the consolidated manifest.
pub fn finish_image_stage(stage: &mut StageDir, name: &str, changed: bool) -> anyhow::Result<()> {
    let manifest = stage.consolidate(&[])?.clone();
    if manifest.complete {
        let dup_path = stage.dir().join(DUPLICATES_FILE);
        if changed || !dup_path.exists() {
            let n = write_exact_duplicates(stage, &dup_path)?;
            tracing::info!(
                "{name}: {n} exact duplicates listed in {}",
                dup_path.display()
            );
        }
        stage.consolidate(&[DUPLICATES_FILE.to_string()])?;
    }
    Ok(())
}

/// The test hook below, counting rows written by this process.
pub struct StallHook {
    after: Option<u64>,
    pub rows: u64,
}

impl StallHook {
    pub fn from_env() -> Self {
        // CURATE_TEST_STALL_TASK limits the hook to one Slurm array task.
        let this_task = match std::env::var("CURATE_TEST_STALL_TASK") {
            Ok(t) => std::env::var("SLURM_ARRAY_TASK_ID").ok().as_deref() == Some(t.as_str()),
            Err(_) => true,
        };
        StallHook {
            after: test_stall_after_rows().filter(|_| this_task),
            rows: 0,
        }
    }

    pub fn wrote(&mut self, n: usize) {
        self.rows += n as u64;
        if self.after.is_some_and(|a| self.rows >= a) {
            stall(self.rows);
        }
    }
}

/// Lists records whose source bytes equal an earlier record's (input
/// order: shard, then row). Reads only the key, sha256 and status columns.
pub fn write_exact_duplicates(stage: &StageDir, dest: &Path) -> anyhow::Result<usize> {
    let images = images::table();
    let mut first: HashMap<String, String> = HashMap::new();
    let (mut keys, mut shas, mut canon) = (Vec::new(), Vec::new(), Vec::new());
    for shard in 0..stage.num_shards() {
        let batches = curate_io::read_columns(
            &stage.shard_path(shard),
            images,
            Some(&["key", "status", "sha256"]),
        )?;
        for b in batches {
            let col = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .cloned()
                    .with_context(|| format!("column `{n}`"))
            };
            let (key, status, sha) = (col("key")?, col("status")?, col("sha256")?);
            for i in 0..b.num_rows() {
                if status.value(i) != "ok" || !sha.is_valid(i) {
                    continue;
                }
                let s = sha.value(i);
                match first.get(s) {
                    Some(c) => {
                        keys.push(key.value(i).to_string());
                        shas.push(s.to_string());
                        canon.push(c.clone());
                    }
                    None => {
                        first.insert(s.to_string(), key.value(i).to_string());
                    }
                }
            }
        }
    }
    let table = curate_core::schema::get("exact_duplicates")?;
    let schema = curate_io::default_schema(table)?;
    let n = keys.len();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from(keys)),
            std::sync::Arc::new(StringArray::from(shas)),
            std::sync::Arc::new(StringArray::from(canon)),
        ],
    )?;
    curate_io::write_table(table, dest, &[batch], schema)?;
    Ok(n)
}

/// Test hook: `CURATE_TEST_STALL_AFTER_ROWS=N` makes the process stop
/// making progress once N rows of this run are on disk (mid-shard, its
/// temporary file half written), so a test can SIGKILL it at a known point
/// without sleeping.
fn test_stall_after_rows() -> Option<u64> {
    std::env::var("CURATE_TEST_STALL_AFTER_ROWS")
        .ok()?
        .parse()
        .ok()
}

pub fn stall(rows: u64) -> ! {
    eprintln!("curate: test hook: stalled after {rows} rows");
    loop {
        std::thread::park();
    }
}

/// The shard loop of a stage that reads an upstream stage shard for shard:
/// complete shards are skipped (and counted), damaged or partial ones
/// redone by `work`, which returns the committed journal record.
pub fn each_owned_shard(
    name: &str,
    stage: &StageDir,
    upstream: &Upstream,
    split: &curate_core::split::ShardSplit,
    table: &'static TableSchema,
    progress: &mut crate::progress::Progress,
    mut work: impl FnMut(
        u32,
        &ShardRecord,
        &mut crate::progress::Progress,
    ) -> anyhow::Result<ShardRecord>,
) -> anyhow::Result<StageSummary> {
    let mut summary = StageSummary {
        shards_total: stage.num_shards(),
        ..Default::default()
    };
    let verify = |path: &Path, rec: &ShardRecord| {
        curate_io::verify_shard(path, table, Some(rec.records))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for shard in split.owned(stage.num_shards()) {
        let input = &upstream.shards[shard as usize];
        match stage.shard_state(shard, verify)? {
            curate_core::stage::ShardState::Complete(rec) => {
                summary.add(&rec, false);
                progress.inc(rec.records);
                continue;
            }
            curate_core::stage::ShardState::Corrupt(why) => {
                tracing::warn!("{name}: shard {shard} is damaged ({why}); redoing it")
            }
            curate_core::stage::ShardState::Missing => {}
        }
        let rec = work(shard, input, progress).with_context(|| {
            format!(
                "{name}: shard {shard} ({})",
                upstream.shard_path(input).display()
            )
        })?;
        progress.event(&shard_done(name, "images", &rec));
        summary.add(&rec, true);
    }
    Ok(summary)
}

/// The closing line of a stage: shards, images/s, failures by reason, peak RSS.
pub fn stage_done_line(name: &str, summary: &StageSummary, rows_done: u64, elapsed_s: f64) {
    let reasons = summary
        .reasons
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        "{name}: {} shards written, {} skipped; {rows_done} images in {elapsed_s:.2} s ({:.1} images/s), {} failed{}, peak RSS {:.1} MiB",
        summary.shards_written,
        summary.shards_skipped,
        rows_done as f64 / elapsed_s.max(1e-9),
        summary.failures,
        if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
        crate::progress::peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
}

/// Opens (or creates) a stage's output folder; says so when `--overwrite`
/// discarded a previous output with other settings.
pub fn open_output(
    name: &str,
    output: &Path,
    spec: &curate_core::stage::StageSpec,
    overwrite: bool,
) -> anyhow::Result<StageDir> {
    let (stage, opened) = StageDir::open(output, spec, overwrite)?;
    if opened == curate_core::stage::Opened::Overwritten {
        tracing::warn!(
            "{name}: discarded the previous output of {} (--overwrite)",
            output.display()
        );
    }
    Ok(stage)
}
