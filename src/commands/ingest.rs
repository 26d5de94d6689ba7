//! `curate ingest DIR`: a local folder of images → image shards.
//!
//! Files are listed recursively (jpg, jpeg, png, webp, gif by extension;
//! the content decides the format), sorted by relative path and cut into
//! shards of `--shard-size`. Each file is read, hashed, fully decoded with
//! decompression-bomb limits and EXIF orientation applied; failures are
//! recorded with their reason and the run goes on. When every shard is
//! complete, exact duplicates (same sha256) are listed in
//! `exact_duplicates.parquet`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use curate_core::hash::Fingerprint;
use curate_core::record::{record_key, ImageRecord};
use curate_core::split::ShardSplit;
use curate_core::stage::{Inputs, Opened, ShardState, StageDir, StageSpec};
use curate_vision::Format;
use rayon::prelude::*;

use super::shared::{self, ImageShard, StallHook, BATCH_ROWS};
use super::StageSummary;
use crate::cli::IngestArgs;
use crate::imaging::{image_record, Validation};
use crate::progress::{peak_rss_bytes, Progress};

/// One input file.
struct Input {
    rel: String,
    path: PathBuf,
}

pub fn run(args: &IngestArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    if args.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    let root = args
        .input
        .canonicalize()
        .with_context(|| format!("input folder {}", args.input.display()))?;
    if !root.is_dir() {
        bail!("input {} is not a folder", root.display());
    }
    let (files, ignored) = list_images(&root)?;
    if files.is_empty() {
        bail!(
            "no images (jpg, jpeg, png, webp, gif) under {} ({ignored} other files)",
            root.display()
        );
    }
    let mut fp = Fingerprint::new();
    for f in &files {
        fp.add(f.rel.as_bytes());
        let len = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
        fp.add(&len.to_le_bytes());
    }
    let num_shards = files.len().div_ceil(args.shard_size as usize) as u32;
    let spec = StageSpec {
        stage: "ingest".into(),
        schema: "images".into(),
        config: serde_json::json!({
            "shard_size": args.shard_size,
            "store": args.image.store,
            "max_pixels": args.image.max_pixels,
            "jpeg_quality": args.image.jpeg_quality,
            "verify": args.image.verify,
        }),
        inputs: Inputs {
            kind: "directory".into(),
            location: root.display().to_string(),
            items: files.len() as u64,
            fingerprint: fp.finish(),
            shards: Vec::new(),
        },
        num_shards,
    };
    let (mut stage, opened) = StageDir::open(&args.output, &spec, args.overwrite)?;
    match opened {
        Opened::Created => tracing::debug!("ingest: new stage at {}", args.output.display()),
        Opened::Resumed => tracing::debug!("ingest: resuming {}", args.output.display()),
        Opened::Overwritten => tracing::warn!(
            "ingest: discarded the previous output of {} (--overwrite)",
            args.output.display()
        ),
    }
    if ignored > 0 {
        tracing::info!("ingest: {ignored} files without an image extension ignored");
    }

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.image.threads)
        .build()
        .context("decoder thread pool")?;
    let validation = Validation::new(&args.image, 0, None);

    let owned: Vec<u32> = split.owned(num_shards).collect();
    let owned_items: u64 = owned
        .iter()
        .map(|&s| shared::shard_range(s, args.shard_size, files.len()).len() as u64)
        .sum();
    let mut progress = Progress::new("ingest", owned_items);
    let mut summary = StageSummary {
        shards_total: num_shards,
        ..Default::default()
    };
    let mut hook = StallHook::from_env();

    for &shard in &owned {
        let range = shared::shard_range(shard, args.shard_size, files.len());
        match stage.shard_state(shard, shared::verify_image_shard)? {
            ShardState::Complete(rec) => {
                summary.add(&rec, false);
                progress.inc(range.len() as u64);
                continue;
            }
            ShardState::Corrupt(why) => {
                tracing::warn!("ingest: shard {shard} is damaged ({why}); redoing it")
            }
            ShardState::Missing => {}
        }
        let mut out = ImageShard::begin(&stage, shard)?;
        for chunk in files[range.clone()].chunks(BATCH_ROWS) {
            let records: Vec<ImageRecord> = pool.install(|| {
                chunk
                    .par_iter()
                    .map(|f| ingest_one(f, &validation))
                    .collect()
            });
            out.write(&records)?;
            progress.inc(records.len() as u64);
            hook.wrote(records.len());
        }
        let inputs = vec![
            files[range.start].rel.clone(),
            files[range.end - 1].rel.clone(),
        ];
        let rec = out.commit(inputs, 0.0)?;
        progress.event(&shared::shard_done("ingest", "images", &rec));
        summary.add(&rec, true);
    }
    progress.finish();
    shared::finish_image_stage(&mut stage, "ingest", summary.shards_written > 0)?;

    let elapsed = progress.elapsed().as_secs_f64();
    let written_items = hook.rows;
    let reason_list = summary
        .reasons
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if summary.shards_written == 0 && summary.shards_skipped as usize == owned.len() {
        tracing::info!(
            "ingest: all {} shards of this task already complete; nothing to do",
            owned.len()
        );
    } else {
        tracing::info!(
            "ingest: {} shards written, {} skipped; {written_items} images in {elapsed:.2} s ({:.1} images/s), peak RSS {:.1} MiB{}",
            summary.shards_written,
            summary.shards_skipped,
            written_items as f64 / elapsed.max(1e-9),
            peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
            if reason_list.is_empty() {
                String::new()
            } else {
                format!("; failures: {reason_list}")
            }
        );
    }
    Ok(summary)
}

/// Image files under `root`, sorted by relative path, and the count of
/// other files. Symbolic links are not followed.
fn list_images(root: &Path) -> anyhow::Result<(Vec<Input>, u64)> {
    let mut files = Vec::new();
    let mut ignored = 0u64;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
            .is_some();
        if !is_image {
            ignored += 1;
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.push(Input {
            rel,
            path: path.to_path_buf(),
        });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((files, ignored))
}

/// One file → one record. Never fails: every problem becomes a reason.
fn ingest_one(input: &Input, validation: &Validation) -> ImageRecord {
    let key = record_key(&format!("file:{}", input.rel));
    match std::fs::read(&input.path) {
        Ok(bytes) => {
            let size = bytes.len() as u64;
            crate::imaging::guarded(&key, &input.rel, size, || {
                image_record(key.clone(), input.rel.clone(), bytes, validation)
            })
        }
        Err(e) => ImageRecord::failed(key, input.rel.clone(), "io", format!("reading: {e}"), 0),
    }
}
