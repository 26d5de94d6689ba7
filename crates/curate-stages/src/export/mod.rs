//! `export`: the curated set in the formats other tools load directly.
//!
//! The final selection is encode-latents' (the dedup keep list, minus what
//! the score stage dropped), joined shard for shard with the score and
//! caption stages that read the same image stage: score, caption and
//! export shard `s` all cover image shard `s`, so a shard is joined in
//! memory bounded by one shard, whatever the number of rows. Only the keep
//! list is held whole (its keys).
//!
//! Each format is one file: [`hf`] (Hugging Face datasets parquet with an
//! `Image` feature and a dataset card) and [`webdataset`] (img2dataset
//! tars with sidecar parquet and stats). Beside the format's files every
//! shard writes the `export_index` table (`part-NNNNN.parquet`, key → file),
//! which is the shard's commit: format files are written under temporary
//! names and renamed first, so kill -9 at any moment leaves a shard either
//! complete or redone from scratch by the next run.

pub mod hf;
pub mod kohya;
pub mod latent_cache;
pub mod musubi;
pub mod webdataset;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageDir, StageSpec};
use curate_io::export::{self, IndexRow, Sample};
use curate_io::{captions, dedup_keep, images, scores};
use curate_stage::{bail, Context, Result, ShardOutput, Stage, StageError, Upstream};

use crate::encode_latents::select::{parse_mix, pick_caption};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hf,
    WebDataset,
    Kohya,
    Musubi,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Hf => "hf",
            Format::WebDataset => "webdataset",
            Format::Kohya => "kohya",
            Format::Musubi => "musubi",
        }
    }

    /// The latent-cache formats export an encode-latents stage (which holds
    /// the selection, texts and crops); the others join the stages themselves.
    pub fn needs_latents(self) -> bool {
        matches!(self, Format::Kohya | Format::Musubi)
    }
}

/// What `curate export` is asked to do.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The work directory whose stage folders are searched.
    pub work_dir: PathBuf,
    pub output: PathBuf,
    pub format: Format,
    /// Stage folders given on the command line (a name in the work dir or a path).
    pub images: Option<PathBuf>,
    pub dedup: Option<PathBuf>,
    pub score: Option<PathBuf>,
    pub captions: Vec<PathBuf>,
    /// kohya, musubi: the encode-latents stage.
    pub latents: Option<PathBuf>,
    /// kohya, musubi: export a posterior draw (seeded per key) instead of
    /// the mean; needs a stage stored with `--store mean-logvar`.
    pub sample_posterior: Option<u64>,
    /// Stages allowed to be missing: `dedup`, `score`, `caption`.
    pub allow_missing: Vec<String>,
    pub caption_mix: String,
    pub no_tag: bool,
    pub seed: u64,
    /// hf: data files are cut at about this size.
    pub max_file_bytes: u64,
}

/// What a sample format writes for one shard.
pub trait ShardWriter {
    /// Writes samples (in order); returns, per sample, the file (relative to
    /// the export folder) that holds it.
    fn write(&mut self, samples: &[Sample]) -> Result<Vec<String>>;
    /// Renames every file of the shard into place.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A format that writes joined samples (images with their captions and
/// scores) per image shard: hf, webdataset.
pub trait SampleFormat {
    /// Clears what an earlier attempt at `shard` left, then opens its writer.
    fn begin(&self, out: &Path, shard: u32) -> Result<Box<dyn ShardWriter>>;
    /// Samples must reach the writer in key order (the whole shard is then
    /// held in memory and sorted first).
    fn key_order(&self) -> bool {
        false
    }
}

/// How a format's shards are written.
pub enum Writes<'a> {
    /// From the image shard joined with score and caption shards.
    Samples(&'a dyn SampleFormat),
    /// From the encode-latents shard: per image, the image, its caption and a cache file.
    LatentCache(&'a dyn latent_cache::CacheFile),
}

/// A format: its files per shard and the files of the whole export.
pub trait ExportFormat {
    fn writes(&self) -> Writes<'_>;
    /// Whether `name` (a top-level entry of the export folder) is this format's.
    fn owns(&self, name: &str) -> bool;
    /// Stage-level files once every shard is complete (the dataset card, …).
    fn finish(&self, _out: &Path, _summary: &ExportSummary) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Totals over the complete export, for dataset cards.
#[derive(Debug, Clone, Default)]
pub struct ExportSummary {
    pub samples: u64,
    pub failures: u64,
    pub shards: u32,
    pub bytes: u64,
}

fn format_impl(
    format: Format,
    max_file_bytes: u64,
    latents: Option<&latent_cache::LatentsInfo>,
) -> Box<dyn ExportFormat> {
    let info = || {
        latents
            .cloned()
            .expect("a latent format has its latents stage")
    };
    match format {
        Format::Hf => Box::new(hf::Hf { max_file_bytes }),
        Format::WebDataset => Box::new(webdataset::WebDataset),
        Format::Kohya => Box::new(kohya::Kohya { info: info() }),
        Format::Musubi => Box::new(musubi::Musubi { info: info() }),
    }
}

/// Whether `name` is an image file the LoRA trainers list.
pub(crate) fn is_image_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".bin"]
        .iter()
        .any(|e| lower.ends_with(e))
}

/// The stages an export reads.
#[derive(Debug)]
struct Sources {
    images: Upstream,
    dedup: Option<Upstream>,
    score: Option<Upstream>,
    captions: Vec<Upstream>,
    /// kohya, musubi: the encode-latents stage (shard s covers image shard s).
    latents: Option<Upstream>,
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A flag's stage folder: a path, else a name inside the work dir.
fn resolve(work: &Path, p: &Path) -> PathBuf {
    if p.is_dir() {
        p.to_path_buf()
    } else {
        work.join(p)
    }
}

/// `up`, if every shard of it is complete (its shards are read by number).
fn complete(kind: &str, up: Upstream) -> Result<Upstream> {
    if !up.complete() {
        bail!(
            "{}: the `{kind}` stage is not complete (shards missing: {:?}); finish it first",
            up.dir.display(),
            up.missing()
        );
    }
    Ok(up)
}

/// Every stage folder of the work dir, with its stage name.
fn stages_in(work: &Path) -> Result<Vec<(String, Upstream)>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(work).with_context(|| {
        format!(
            "expected a work directory of stage folders at {}",
            work.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        if let Some(up) = Upstream::load(&dir)? {
            out.push((up.manifest.stage.clone(), up));
        }
    }
    Ok(out)
}

fn listing(stages: &[(String, Upstream)]) -> String {
    if stages.is_empty() {
        return "no stage folders".to_string();
    }
    stages
        .iter()
        .map(|(s, u)| {
            format!(
                "{} ({s})",
                u.dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Sources {
    fn find(s: &ExportSettings) -> Result<Sources> {
        let work = &s.work_dir;
        let stages = stages_in(work)?;
        let reads = |up: &Upstream, images: &Path| {
            same_dir(Path::new(&up.manifest.inputs.location), images)
        };
        // The image stage: given, else the one the score/caption stages read, else the only one.
        let images_dir = match &s.images {
            Some(p) => resolve(work, p),
            None => {
                let candidates: Vec<&Upstream> = stages
                    .iter()
                    .filter(|(n, _)| n == "fetch" || n == "ingest")
                    .map(|(_, u)| u)
                    .collect();
                let read: Vec<&Upstream> = candidates
                    .iter()
                    .copied()
                    .filter(|c| {
                        stages.iter().any(|(n, u)| {
                            (n == "score" || n == "caption" || n == "embed") && reads(u, &c.dir)
                        })
                    })
                    .collect();
                match (read.as_slice(), candidates.as_slice()) {
                    ([one], _) | ([], [one]) => one.dir.clone(),
                    _ => bail!(
                        "{}: expected one image stage (fetch or ingest) that the other stages read, found {} ({}); pass --images NAME",
                        work.display(),
                        if candidates.is_empty() { "none".to_string() } else { candidates.len().to_string() },
                        listing(&stages)
                    ),
                }
            }
        };
        let images = Upstream::open(&images_dir, &["images"]).context("--images")?;
        let allowed = |what: &str| s.allow_missing.iter().any(|a| a == what);
        let mut missing = Vec::new();
        // One stage of a kind reading these images (dedup: through its embed stage).
        let pick = |kind: &str,
                    flag: &str,
                    given: &Option<PathBuf>,
                    check: &dyn Fn(&Upstream) -> bool|
         -> Result<Option<Upstream>> {
            if let Some(p) = given {
                let up = Upstream::load(&resolve(work, p))?.with_context(|| {
                    format!(
                        "--{flag} {}: not a stage folder (no manifest.json)",
                        p.display()
                    )
                })?;
                if up.manifest.stage != kind {
                    bail!(
                        "--{flag} {}: expected a `{kind}` stage, found `{}`",
                        p.display(),
                        up.manifest.stage
                    );
                }
                return complete(kind, up).map(Some);
            }
            let found: Vec<&Upstream> = stages
                .iter()
                .filter(|(n, u)| n == kind && check(u))
                .map(|(_, u)| u)
                .collect();
            match found.as_slice() {
                [] => Ok(None),
                [one] => complete(kind, (*one).clone()).map(Some),
                many => bail!(
                    "{}: expected one `{kind}` stage of {}, found {}: {}; pass --{flag} NAME",
                    work.display(),
                    images.dir.display(),
                    many.len(),
                    many.iter()
                        .map(|u| u.dir.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        };
        if s.format.needs_latents() {
            let latents = pick("encode-latents", "latents", &s.latents, &|u| {
                reads(u, &images.dir)
            })?;
            let Some(latents) = latents else {
                bail!(
                    "{}: `--format {}` exports an encode-latents stage, and there is no complete one of the images {} (found: {}); run `curate encode-latents` or pass --latents NAME",
                    work.display(),
                    s.format.name(),
                    images.dir.display(),
                    listing(&stages)
                );
            };
            check_mirrors(&latents, &images, &reads)?;
            return Ok(Sources {
                images,
                dedup: None,
                score: None,
                captions: Vec::new(),
                latents: Some(latents),
            });
        }
        let embeds_of_images: Vec<PathBuf> = stages
            .iter()
            .filter(|(n, u)| n == "embed" && reads(u, &images.dir))
            .map(|(_, u)| u.dir.clone())
            .collect();
        let dedup = pick("dedup", "dedup", &s.dedup, &|u| {
            embeds_of_images
                .iter()
                .any(|e| same_dir(Path::new(&u.manifest.inputs.location), e))
        })?;
        if dedup.is_none() && !allowed("dedup") {
            missing.push("dedup");
        }
        let score = pick("score", "score", &s.score, &|u| reads(u, &images.dir))?;
        if score.is_none() && !allowed("score") {
            missing.push("score");
        }
        let mut captions = Vec::new();
        if s.captions.is_empty() {
            for (n, u) in &stages {
                if n == "caption" && reads(u, &images.dir) && u.complete() {
                    captions.push(Upstream::open(&u.dir, &["captions"])?);
                }
            }
        } else {
            for p in &s.captions {
                captions
                    .push(Upstream::open(&resolve(work, p), &["captions"]).context("--captions")?);
            }
        }
        if captions.is_empty() && !allowed("caption") {
            missing.push("caption");
        }
        if !missing.is_empty() {
            bail!(
                "{}: no complete {} stage of the images {} (found: {}); pass it (--{}), or --allow-missing {} to export without it",
                work.display(),
                missing.join(", "),
                images.dir.display(),
                listing(&stages),
                missing.iter().map(|m| if *m == "caption" { "captions" } else { m }).collect::<Vec<_>>().join(", --"),
                missing.join(",")
            );
        }
        for up in score.iter().chain(&captions) {
            check_mirrors(up, &images, &reads)?;
        }
        Ok(Sources {
            images,
            dedup,
            score,
            captions,
            latents: None,
        })
    }
}

/// `up` was made from `images`, shard for shard.
fn check_mirrors(
    up: &Upstream,
    images: &Upstream,
    reads: &dyn Fn(&Upstream, &Path) -> bool,
) -> Result<()> {
    if !reads(up, &images.dir) || up.manifest.num_shards != images.manifest.num_shards {
        bail!(
            "{}: expected a stage made from {} ({} shards), found one made from {} ({} shards)",
            up.dir.display(),
            images.dir.display(),
            images.manifest.num_shards,
            up.manifest.inputs.location,
            up.manifest.num_shards
        );
    }
    Ok(())
}

/// A shard's scores by key.
type ScoresByKey = HashMap<String, scores::Score>;
/// A shard's captions by key: (task, text).
type CaptionsByKey = HashMap<String, Vec<(String, String)>>;

/// The `export` stage.
pub struct Export {
    settings: ExportSettings,
    sources: Sources,
    keep: Option<HashSet<String>>,
    mix: std::collections::BTreeMap<String, f64>,
    format: Box<dyn ExportFormat>,
    /// kohya, musubi: what the latents stage records.
    latents_info: Option<latent_cache::LatentsInfo>,
    config: serde_json::Value,
}

impl Export {
    /// Finds the stages, checks the output folder and loads the keep list.
    pub fn open(settings: &ExportSettings) -> Result<Export> {
        let s = settings;
        let sources = Sources::find(s)?;
        if s.sample_posterior.is_some() && !s.format.needs_latents() {
            bail!(
                "--sample-posterior: expected --format kohya or musubi (latent caches), found --format {}",
                s.format.name()
            );
        }
        let latents_info = match &sources.latents {
            Some(up) => {
                let info = latent_cache::LatentsInfo::read(up)?;
                if s.sample_posterior.is_some() && info.store != "mean-logvar" {
                    bail!(
                        "--sample-posterior: expected a latents stage stored with --store mean-logvar, found {} (store `{}`); re-encode with --store mean-logvar or export the mean",
                        up.dir.display(),
                        info.store
                    );
                }
                Some(info)
            }
            None => None,
        };
        let format = format_impl(s.format, s.max_file_bytes, latents_info.as_ref());
        check_output(&s.output, s.format, format.as_ref())?;
        let keep = match &sources.dedup {
            Some(d) => {
                let path = d.output(dedup_keep::FILE);
                if !path.is_file() {
                    bail!(
                        "{}: expected a finished dedup stage's keep list",
                        path.display()
                    );
                }
                Some(dedup_keep::read_keys(&path)?)
            }
            None => None,
        };
        let mix = parse_mix(&s.caption_mix)?;
        let fp = |u: &Upstream| serde_json::json!({"dir": u.dir.display().to_string(), "fingerprint": u.fingerprint()});
        let config = serde_json::json!({
            "format": s.format.name(),
            // A rerun of dedup (another eps) changes the keep list, not the folder.
            "dedup": sources.dedup.as_ref().map(|d| serde_json::json!({"dir": d.dir.display().to_string(), "config_hash": d.manifest.config_hash})),
            "score": sources.score.as_ref().map(fp),
            "captions": sources.captions.iter().map(fp).collect::<Vec<_>>(),
            "latents": sources.latents.as_ref().map(fp),
            "sample_posterior": s.sample_posterior,
            "kept": keep.as_ref().map(|k| k.len()),
            "caption_mix": mix,
            "no_tag": s.no_tag,
            "seed": s.seed,
            "max_file_bytes": s.max_file_bytes,
        });
        Ok(Export {
            settings: s.clone(),
            sources,
            keep,
            mix,
            format,
            latents_info,
            config,
        })
    }

    /// Score and captions of one shard, by key.
    fn side_tables(&self, shard: u32) -> Result<(ScoresByKey, CaptionsByKey)> {
        let mut by_key = HashMap::new();
        if let Some(up) = &self.sources.score {
            let path = up.shard_path(&up.shards[shard as usize]);
            for batch in scores::read(&path, 4096)? {
                for s in batch? {
                    by_key.insert(s.key.clone(), s);
                }
            }
        }
        let mut caps: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for up in &self.sources.captions {
            let path = up.shard_path(&up.shards[shard as usize]);
            for batch in captions::read(&path, 4096)? {
                for c in batch? {
                    if let Ok(text) = c.result {
                        caps.entry(c.key).or_default().push((c.task, text.text));
                    }
                }
            }
        }
        for v in caps.values_mut() {
            v.sort();
            v.dedup();
        }
        Ok((by_key, caps))
    }
}

/// An export folder holding another format's files, or files that are no
/// export at all, is refused before anything is written.
fn check_output(out: &Path, format: Format, fmt: &dyn ExportFormat) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    if let Some(up) = Upstream::load(out)? {
        let theirs = up
            .manifest
            .config
            .get("format")
            .and_then(|f| f.as_str())
            .unwrap_or("");
        if up.manifest.stage != "export" || theirs != format.name() {
            bail!(
                "{}: expected an empty folder or a `{}` export, found {} (use another -o)",
                out.display(),
                format.name(),
                if up.manifest.stage == "export" {
                    format!("a `{theirs}` export")
                } else {
                    format!("the `{}` stage", up.manifest.stage)
                }
            );
        }
        return Ok(());
    }
    let foreign: BTreeSet<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if let Some(n) = foreign.iter().find(|n| !fmt.owns(n)) {
        bail!(
            "{}: expected an empty folder or a `{}` export, found `{n}` and no export manifest (use another -o)",
            out.display(),
            format.name()
        );
    }
    Ok(())
}

pub(crate) fn ext_of(format: Option<&str>) -> String {
    match format.unwrap_or("") {
        "jpeg" | "jpg" => "jpg".into(),
        "" => "bin".into(),
        f => f.to_ascii_lowercase(),
    }
}

impl Stage for Export {
    fn name(&self) -> &str {
        "export"
    }

    fn table(&self) -> &'static TableSchema {
        export::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .sources
            .images
            .spec_for("export", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.sources.images)
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let samples = match self.format.writes() {
            Writes::Samples(f) => f,
            Writes::LatentCache(cache) => {
                let (Some(latents), Some(info)) = (&self.sources.latents, &self.latents_info)
                else {
                    bail!("export: a latent-cache format without its latents stage");
                };
                let cfg = latent_cache::CacheShard {
                    format: self.settings.format.name(),
                    out: &self.settings.output,
                    images: &self.sources.images,
                    latents,
                    info,
                    cache,
                    sample_posterior: self.settings.sample_posterior,
                };
                return latent_cache::write_shard(&cfg, shard, out);
            }
        };
        let schema = export::index_schema(self.settings.format.name())?;
        let mut index = out.begin(shard, self.table(), schema.clone(), 1 << 16)?;
        let mut writer = samples.begin(&self.settings.output, shard)?;
        let (score_of, captions_of) = self.side_tables(shard)?;
        let input = &self.sources.images.shards[shard as usize];
        let path = self.sources.images.shard_path(input);
        let columns: Vec<&str> = images::table()
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        let mut rows: Vec<IndexRow> = Vec::new();
        let sort = samples.key_order();
        let mut held: Vec<Sample> = Vec::new();
        for batch in curate_io::stream_columns(&path, images::table(), &columns, 64)? {
            let records = images::from_batch(&batch?).map_err(StageError::other)?;
            let mut samples = Vec::new();
            for r in records {
                out.wrote(1);
                if r.status != curate_core::record::Status::Ok {
                    continue;
                }
                if self.keep.as_ref().is_some_and(|k| !k.contains(&r.key)) {
                    continue;
                }
                let score = score_of.get(&r.key);
                if self.sources.score.is_some()
                    && !score.is_some_and(|s| s.status == "ok" && s.dropped == Some(false))
                {
                    continue;
                }
                let Some(bytes) = r.bytes else {
                    rows.push(IndexRow {
                        key: r.key,
                        result: Err(("no_bytes".into(), "the image row holds no bytes".into())),
                    });
                    continue;
                };
                let captions = captions_of.get(&r.key).cloned().unwrap_or_default();
                let tag = score.and_then(|s| s.tag.clone());
                let text =
                    pick_caption(&captions, &self.mix, &r.key, self.settings.seed).map(|(_, c)| {
                        match (&tag, self.settings.no_tag) {
                            (Some(t), false) => format!("{c}, {t}"),
                            _ => c.clone(),
                        }
                    });
                samples.push(Sample {
                    ext: ext_of(r.stored_format.as_deref().or(r.format.as_deref())),
                    width: r.width,
                    height: r.height,
                    url: r.download.map(|d| d.url),
                    text,
                    captions,
                    score: score.and_then(|s| s.score),
                    tag,
                    bytes,
                    key: r.key,
                });
            }
            if sort {
                held.append(&mut samples);
                continue;
            }
            write_samples(writer.as_mut(), &samples, &mut rows)?;
        }
        held.sort_by(|a, b| a.key.cmp(&b.key));
        for chunk in held.chunks(64) {
            write_samples(writer.as_mut(), chunk, &mut rows)?;
        }
        writer.finish()?;
        let batch = export::index_batch(&schema, &rows)?;
        index.write(
            &batch,
            rows.iter()
                .filter_map(|r| r.result.as_ref().err().map(|e| e.0.as_str())),
        )?;
        index.commit(vec![input.file.clone()], 0.0)
    }

    fn finish(&mut self, stage: &StageDir, _changed: bool) -> Result<Vec<String>> {
        let records = stage.journal()?;
        let summary = ExportSummary {
            samples: records.iter().map(|r| r.records - r.failures).sum(),
            failures: records.iter().map(|r| r.failures).sum(),
            shards: records.len() as u32,
            bytes: dir_bytes(&self.settings.output),
        };
        self.format.finish(&self.settings.output, &summary)
    }
}

fn write_samples(
    writer: &mut dyn ShardWriter,
    samples: &[Sample],
    rows: &mut Vec<IndexRow>,
) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let files = writer.write(samples)?;
    rows.extend(samples.iter().zip(files).map(|(s, f)| IndexRow {
        key: s.key.clone(),
        result: Ok(f),
    }));
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Removes the files of `dir` whose names start with one of `prefixes`.
pub(crate) fn remove_prefixed(dir: &Path, prefixes: &[String]) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}
