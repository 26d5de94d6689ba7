//! `ingest`: a local folder of images → image shards.
//!
//! Files are listed recursively (jpg, jpeg, png, webp, gif by extension;
//! the content decides the format), sorted by relative path and cut into
//! shards of `shard_size`. Each file is read, hashed, fully decoded with
//! decompression-bomb limits and EXIF orientation applied; failures are
//! recorded with their reason and the run goes on. When every shard is
//! complete, exact duplicates (same sha256) are listed in
//! `exact_duplicates.parquet`.

use std::path::{Path, PathBuf};

use curate_core::hash::Fingerprint;
use curate_core::record::{record_key, ImageRecord};
use curate_core::schema::TableSchema;
use curate_core::stage::{Inputs, ShardRecord, StageDir, StageSpec};
use curate_stage::{bail, shard_range, Context, Result, ShardOutput, Stage, BATCH_ROWS};
use curate_vision::Format;
use rayon::prelude::*;

use crate::validate::{guarded, image_record, ImageSettings, Validation};

/// What `curate ingest` is asked to do.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Folder of images (searched recursively).
    pub input: PathBuf,
    /// Images per output shard.
    pub shard_size: u32,
    pub image: ImageSettings,
}

/// One input file.
struct Input {
    rel: String,
    path: PathBuf,
}

/// The ingest stage over a listed folder.
pub struct Ingest {
    settings: IngestSettings,
    root: PathBuf,
    files: Vec<Input>,
    pool: rayon::ThreadPool,
    validation: Validation,
}

impl Ingest {
    /// Lists the folder's images; fails on an empty folder or bad settings.
    pub fn new(settings: IngestSettings) -> Result<Ingest> {
        if settings.shard_size == 0 {
            bail!("--shard-size must be at least 1");
        }
        let root = settings
            .input
            .canonicalize()
            .with_context(|| format!("input folder {}", settings.input.display()))?;
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
        if ignored > 0 {
            tracing::info!("ingest: {ignored} files without an image extension ignored");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.image.threads)
            .build()
            .context("decoder thread pool")?;
        let validation = Validation::new(&settings.image, 0, None);
        Ok(Ingest {
            settings,
            root,
            files,
            pool,
            validation,
        })
    }

    fn range(&self, shard: u32) -> std::ops::Range<usize> {
        shard_range(shard, self.settings.shard_size, self.files.len())
    }
}

impl Stage for Ingest {
    fn name(&self) -> &str {
        "ingest"
    }

    fn table(&self) -> &'static TableSchema {
        curate_io::images::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        let mut fp = Fingerprint::new();
        for f in &self.files {
            fp.add(f.rel.as_bytes());
            let len = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
            fp.add(&len.to_le_bytes());
        }
        let s = &self.settings;
        Ok(StageSpec {
            stage: "ingest".into(),
            schema: "images".into(),
            config: serde_json::json!({
                "shard_size": s.shard_size,
                "store": s.image.store,
                "max_pixels": s.image.max_pixels,
                "jpeg_quality": s.image.jpeg_quality,
                "verify": s.image.verify,
            }),
            inputs: Inputs {
                kind: "directory".into(),
                location: self.root.display().to_string(),
                items: self.files.len() as u64,
                fingerprint: fp.finish(),
                shards: Vec::new(),
            },
            num_shards: self.files.len().div_ceil(s.shard_size as usize) as u32,
        })
    }

    fn shard_items(&self, shard: u32) -> u64 {
        self.range(shard).len() as u64
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let range = self.range(shard);
        let mut images = out.begin_images(shard)?;
        for chunk in self.files[range.clone()].chunks(BATCH_ROWS) {
            let validation = &self.validation;
            let records: Vec<ImageRecord> = self.pool.install(|| {
                chunk
                    .par_iter()
                    .map(|f| ingest_one(f, validation))
                    .collect()
            });
            images.write(&records)?;
            out.wrote(records.len());
        }
        let inputs = vec![
            self.files[range.start].rel.clone(),
            self.files[range.end - 1].rel.clone(),
        ];
        images.commit(inputs, 0.0)
    }

    fn shard_label(&self, shard: u32) -> Option<String> {
        let range = self.range(shard);
        (!range.is_empty()).then(|| {
            format!(
                "{} … {}",
                self.files[range.start].rel,
                self.files[range.end - 1].rel
            )
        })
    }

    fn finish(&mut self, stage: &StageDir, changed: bool) -> Result<Vec<String>> {
        curate_stage::images::finish_image_stage(stage, "ingest", changed)
    }
}

/// Image files under `root`, sorted by relative path, and the count of
/// other files. Symbolic links are not followed.
fn list_images(root: &Path) -> Result<(Vec<Input>, u64)> {
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
            guarded(&key, &input.rel, size, || {
                image_record(key.clone(), input.rel.clone(), bytes, validation)
            })
        }
        Err(e) => ImageRecord::failed(key, input.rel.clone(), "io", format!("reading: {e}"), 0),
    }
}
