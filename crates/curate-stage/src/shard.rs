//! One output shard being written, and the test hook that stalls a run.

use std::collections::BTreeMap;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use curate_core::record::ImageRecord;
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageDir};
use curate_io::{images, ShardOptions, ShardWriter};

use crate::Result;

/// Rows per row group in image shards: image bytes are large, so row
/// groups are small and partial progress reaches the disk.
pub const BATCH_ROWS: usize = 64;

/// Rows of the input that shard `shard` covers when shards hold `size` rows.
pub fn shard_range(shard: u32, size: u32, total: usize) -> std::ops::Range<usize> {
    let start = (shard as usize * size as usize).min(total);
    start..(start + size as usize).min(total)
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
    ) -> Result<Self> {
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
    ) -> Result<Self> {
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
    ) -> Result<()> {
        for reason in reasons {
            self.failures += 1;
            *self.reasons.entry(reason.to_string()).or_default() += 1;
        }
        self.writer.write(batch)?;
        self.writer.flush()?;
        Ok(())
    }

    /// Renames the file into place and journals it; `extra_s` adds earlier work to the duration.
    pub fn commit(self, inputs: Vec<String>, extra_s: f64) -> Result<ShardRecord> {
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
    pub fn begin(stage: &'a StageDir, shard: u32) -> Result<Self> {
        stage.begin_shard(shard)?;
        Self::rewrite(stage, shard)
    }

    /// Opens a temporary file that replaces a complete shard on commit.
    pub fn rewrite(stage: &'a StageDir, shard: u32) -> Result<Self> {
        TableShard::rewrite(
            stage,
            shard,
            images::table(),
            images::arrow_schema(),
            BATCH_ROWS,
        )
        .map(ImageShard)
    }

    /// Appends records as row groups.
    pub fn write(&mut self, records: &[ImageRecord]) -> Result<()> {
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
            let batch = images::to_batch(part)?;
            self.0
                .write(&batch, part.iter().filter_map(|r| r.reason.as_deref()))?;
            start = end;
        }
        Ok(())
    }

    /// Renames the file into place and journals it; `extra_s` adds earlier work to the duration.
    pub fn commit(self, inputs: Vec<String>, extra_s: f64) -> Result<ShardRecord> {
        self.0.commit(inputs, extra_s)
    }
}

/// Test hook: `CURATE_TEST_STALL_AFTER_ROWS=N` makes the process stop
/// making progress once N rows of this run are on disk (mid-shard, its
/// temporary file half written), so a test can SIGKILL it at a known point
/// without sleeping. `CURATE_TEST_STALL_TASK` limits it to one Slurm array task.
pub struct StallHook {
    after: Option<u64>,
    /// Rows written by this process.
    pub rows: u64,
}

impl StallHook {
    pub fn from_env() -> Self {
        let this_task = match std::env::var("CURATE_TEST_STALL_TASK") {
            Ok(t) => std::env::var("SLURM_ARRAY_TASK_ID").ok().as_deref() == Some(t.as_str()),
            Err(_) => true,
        };
        let after = std::env::var("CURATE_TEST_STALL_AFTER_ROWS")
            .ok()
            .and_then(|v| v.parse().ok());
        StallHook {
            after: after.filter(|_| this_task),
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

/// Stops making progress for good (the test hooks' stall point).
pub fn stall(rows: u64) -> ! {
    eprintln!("curate: test hook: stalled after {rows} rows");
    loop {
        std::thread::park();
    }
}
