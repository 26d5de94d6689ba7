//! The [`Stage`] trait and [`run`], the loop every stage goes through:
//! open (or resume) the output folder, skip complete shards, redo damaged
//! or partial ones, write the owned shards, and once every shard of every
//! task is complete write the stage-level outputs and the consolidated
//! manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use curate_core::schema::TableSchema;
use curate_core::split::ShardSplit;
use curate_core::stage::{Opened, ShardRecord, ShardState, StageDir, StageSpec};

use crate::progress::{peak_rss_bytes, Progress};
use crate::shard::{ImageShard, StallHook, TableShard};
use crate::{Result, StageError, Upstream};

/// What a stage did, for the pipeline runner and the closing log line.
#[derive(Debug, Default, Clone)]
pub struct StageSummary {
    pub shards_total: u32,
    pub shards_written: u32,
    pub shards_skipped: u32,
    /// Complete shards that this run rewrote (e.g. `fetch --retry-failed`).
    pub shards_revisited: u32,
    pub records: u64,
    pub failures: u64,
    pub reasons: BTreeMap<String, u64>,
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

    /// This run changed a shard.
    pub fn changed(&self) -> bool {
        self.shards_written > 0 || self.shards_revisited > 0
    }
}

/// Where a stage writes and which of its shards this process owns.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub output: PathBuf,
    /// Discard a previous output made with another configuration.
    pub overwrite: bool,
    pub split: ShardSplit,
}

/// A stage: what it writes, described for the manifest, and the work for one shard.
///
/// [`run`] gives every implementation resume, the kill -9 contract, Slurm
/// task splits, progress and the closing line; an implementation only says
/// what one shard holds.
pub trait Stage {
    /// The stage's name in logs and in its manifest (`embed`, `caption`, …).
    fn name(&self) -> &str;

    /// The table its shards hold.
    fn table(&self) -> &'static TableSchema;

    /// The manifest's description: configuration, inputs, shard count.
    fn spec(&self) -> Result<StageSpec>;

    /// The stage it reads shard for shard, if any: shard `s` of the output
    /// covers shard `s` of this input (it gives [`Stage::shard_items`] and
    /// [`Stage::shard_label`] their defaults).
    fn upstream(&self) -> Option<&Upstream> {
        None
    }

    /// Items shard `shard` covers (for progress) [default: the input shard's rows].
    fn shard_items(&self, shard: u32) -> u64 {
        self.upstream()
            .and_then(|u| u.shards.get(shard as usize))
            .map_or(0, |r| r.records)
    }

    /// Writes shard `shard` through `out` and returns its committed journal record.
    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord>;

    /// What a failing shard names besides its number [default: its input file].
    fn shard_label(&self, shard: u32) -> Option<String> {
        let u = self.upstream()?;
        let input = u.shards.get(shard as usize)?;
        Some(u.shard_path(input).display().to_string())
    }

    /// What the items are called in log lines.
    fn unit(&self) -> &str {
        "images"
    }

    /// A complete shard, given the chance to be rewritten (`fetch --retry-failed`):
    /// `Some` is its new journal record.
    fn revisit(
        &mut self,
        _shard: u32,
        _rec: &ShardRecord,
        _out: &mut ShardOutput<'_>,
    ) -> Result<Option<ShardRecord>> {
        Ok(None)
    }

    /// Once every shard (of every task) is complete: stage-level outputs,
    /// whose file names are listed in the manifest. `changed`: this run
    /// wrote a shard, so outputs made from the shards are stale.
    fn finish(&mut self, _stage: &StageDir, _changed: bool) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Figures appended to the closing line (", 12.0 MB/s").
    fn closing_detail(&self) -> String {
        String::new()
    }
}

/// What a stage's [`Stage::write_shard`] writes through: the stage folder,
/// the progress display and the test stall hook.
pub struct ShardOutput<'a> {
    pub stage: &'a StageDir,
    pub progress: &'a mut Progress,
    hook: &'a mut StallHook,
}

impl<'a> ShardOutput<'a> {
    /// Opens shard `shard` of a table (clearing what an earlier attempt left).
    pub fn begin(
        &self,
        shard: u32,
        table: &'static TableSchema,
        schema: SchemaRef,
        row_group_rows: usize,
    ) -> Result<TableShard<'a>> {
        TableShard::begin(self.stage, shard, table, schema, row_group_rows)
    }

    /// Opens image shard `shard`.
    pub fn begin_images(&self, shard: u32) -> Result<ImageShard<'a>> {
        ImageShard::begin(self.stage, shard)
    }

    /// Opens a replacement for the complete image shard `shard`.
    pub fn rewrite_images(&self, shard: u32) -> Result<ImageShard<'a>> {
        ImageShard::rewrite(self.stage, shard)
    }

    /// `n` more items are on disk.
    pub fn wrote(&mut self, n: usize) {
        self.progress.inc(n as u64);
        self.hook.wrote(n);
    }
}

/// Runs `stage` into `opts.output`: the owned shards that are not complete
/// are written, the rest skipped; stage-level outputs follow once all are.
pub fn run<S: Stage + ?Sized>(stage: &mut S, opts: &RunOptions) -> Result<StageSummary> {
    let spec = stage.spec()?;
    let name = stage.name().to_string();
    let mut dir = open_output(&name, &opts.output, &spec, opts.overwrite)?;
    let owned: Vec<u32> = opts.split.owned(dir.num_shards()).collect();
    let total: u64 = owned.iter().map(|&s| stage.shard_items(s)).sum();
    let mut progress = Progress::new(&name, total);
    let mut hook = StallHook::from_env();
    let mut summary = StageSummary {
        shards_total: dir.num_shards(),
        ..Default::default()
    };
    let table = stage.table();
    let verify = |path: &Path, rec: &ShardRecord| {
        curate_io::verify_shard(path, table, Some(rec.records))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for &shard in &owned {
        let mut out = ShardOutput {
            stage: &dir,
            progress: &mut progress,
            hook: &mut hook,
        };
        match dir.shard_state(shard, verify)? {
            ShardState::Complete(rec) => {
                let rec = match stage.revisit(shard, &rec, &mut out)? {
                    Some(new) => {
                        summary.shards_revisited += 1;
                        new
                    }
                    None => rec,
                };
                summary.add(&rec, false);
                progress.inc(stage.shard_items(shard));
                continue;
            }
            ShardState::Corrupt(why) => {
                tracing::warn!("{name}: shard {shard} is damaged ({why}); redoing it")
            }
            ShardState::Missing => {}
        }
        let rec = stage
            .write_shard(shard, &mut out)
            .map_err(|e| StageError::Context {
                context: match stage.shard_label(shard) {
                    Some(label) => format!("{name}: shard {shard} ({label})"),
                    None => format!("{name}: shard {shard}"),
                },
                source: Box::new(e),
            })?;
        progress.event(&shard_done(&name, stage.unit(), &rec));
        summary.add(&rec, true);
    }
    progress.finish();
    if dir.consolidate(&[])?.complete {
        let outputs = stage.finish(&dir, summary.changed())?;
        if !outputs.is_empty() {
            dir.consolidate(&outputs)?;
        }
    }
    if !summary.changed() {
        tracing::info!(
            "{name}: all {} shards of this task already complete; nothing to do",
            owned.len()
        );
    } else {
        let elapsed = progress.elapsed().as_secs_f64();
        stage_done_line(&name, &summary, hook.rows, elapsed, &stage.closing_detail());
    }
    Ok(summary)
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

/// The closing line of a stage: shards, images/s, failures by reason, peak RSS.
pub fn stage_done_line(
    name: &str,
    summary: &StageSummary,
    rows_done: u64,
    elapsed_s: f64,
    detail: &str,
) {
    let reasons = summary
        .reasons
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        "{name}: {} shards written, {} skipped{}; {rows_done} images in {elapsed_s:.2} s ({:.1} images/s){detail}, {} failed{}, peak RSS {:.1} MiB",
        summary.shards_written,
        summary.shards_skipped,
        if summary.shards_revisited > 0 {
            format!(" ({} retried)", summary.shards_revisited)
        } else {
            String::new()
        },
        rows_done as f64 / elapsed_s.max(1e-9),
        summary.failures,
        if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
}

/// Opens (or creates) a stage's output folder; says so when `--overwrite`
/// discarded a previous output with other settings.
pub fn open_output(
    name: &str,
    output: &Path,
    spec: &StageSpec,
    overwrite: bool,
) -> Result<StageDir> {
    let (stage, opened) = StageDir::open(output, spec, overwrite)?;
    match opened {
        Opened::Created => tracing::debug!("{name}: new stage at {}", output.display()),
        Opened::Resumed => tracing::debug!("{name}: resuming {}", output.display()),
        Opened::Overwritten => tracing::warn!(
            "{name}: discarded the previous output of {} (--overwrite)",
            output.display()
        ),
    }
    Ok(stage)
}
