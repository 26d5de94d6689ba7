//! `curate encode-latents IMAGES -o OUT --stage 256|512 --vae ae.safetensors`:
//! the training set, pre-encoded so training never touches pixels (oboro
//! §IV-A5/6).
//!
//! 1. **Selection** (polars): the images in the dedup keep list (`--keep`)
//!    and not dropped by the aesthetic score (`--scores`), joined with their
//!    captions (`--captions`, one or more caption stages) and quality tags.
//!    The training text is `caption, tag`; when an image has captions of
//!    several tasks, one is picked per key with the `--caption-mix` weights.
//! 2. **Placement** (`curate_vision::buckets`): stage 256 resizes the short
//!    edge to 256 and crops 256×256; stage 512 resizes to the bucket of the
//!    closest aspect ratio (multiples of 64, ~262144 px, ratio ≤ 1.3). Crop
//!    positions are drawn from (seed, stage, key), so every run crops alike.
//! 3. **Encoding** (`curate_gen::vae`): the FLUX VAE's posterior mean (and
//!    optionally log-variance), shifted and scaled, stored as bf16/f16/f32.
//!
//! One output shard per image shard; inside it every row group holds one
//! bucket, so a trainer reads whole batches of one shape. Memory is bounded
//! by the buckets' pending rows (`--rows-per-group` each), not by the shard.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt16Array, UInt32Array,
};
use arrow_schema::{DataType, SchemaRef};
use candle_core::{DType, Tensor};
use curate_core::split::ShardSplit;
use curate_core::stage::StageSpec;
use curate_gen::vae::Vae;
use curate_vision::buckets::{self, CropRng, Placement, Stage};
use curate_vision::preprocess::load_rgb_for;
use polars::prelude::*;

use super::pixels::{stream_prepared, Outcome};
use super::shared::{TableShard, Upstream};
use super::StageSummary;
use crate::cli::{DecodeLatentsArgs, EncodeLatentsArgs, LatentDtype, LatentStore};
use crate::progress::Progress;

fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("latents").expect("built-in schema")
}

const CAPTION_TASKS: [&str; 3] = ["caption", "detailed", "more-detailed"];

/// What the selection joined to an image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub caption: Option<String>,
    pub caption_task: Option<String>,
    pub score: Option<f32>,
    pub tag: Option<String>,
}

/// The training set: which keys, and what each one trains on.
pub struct Selection {
    /// `None`: every image of the input (no keep list, scores or required captions).
    pub keys: Option<HashSet<String>>,
    pub joined: HashMap<String, Joined>,
    pub summary: String,
}

/// `caption=1,detailed=2` → weights per task.
fn parse_mix(s: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (task, w) = part
            .split_once('=')
            .with_context(|| format!("--caption-mix `{part}`: expected TASK=WEIGHT"))?;
        let task = task.trim();
        if !CAPTION_TASKS.contains(&task) {
            bail!("--caption-mix: unknown task `{task}` (expected one of {CAPTION_TASKS:?})");
        }
        let w: f64 = w
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .with_context(|| format!("--caption-mix `{part}`: the weight must be a number ≥ 0"))?;
        out.insert(task.to_string(), w);
    }
    if out.values().all(|w| *w == 0.0) {
        bail!("--caption-mix `{s}`: at least one task needs a weight > 0");
    }
    Ok(out)
}

/// A lazy scan of every complete shard of a stage.
fn scan_stage(up: &Upstream) -> anyhow::Result<LazyFrame> {
    let frames = up
        .shards
        .iter()
        .map(|r| {
            let p = up.shard_path(r);
            let path = PlRefPath::try_from_path(&p)?;
            LazyFrame::scan_parquet(path, ScanArgsParquet::default())
        })
        .collect::<PolarsResult<Vec<_>>>()?;
    if frames.is_empty() {
        bail!("{} has no shards", up.dir.display());
    }
    Ok(concat(frames, UnionArgs::default())?)
}

fn scan_file(path: &Path) -> anyhow::Result<LazyFrame> {
    if !path.is_file() {
        bail!(
            "expected {} (a finished dedup stage's keep list)",
            path.display()
        );
    }
    Ok(LazyFrame::scan_parquet(
        PlRefPath::try_from_path(path)?,
        ScanArgsParquet::default(),
    )?)
}

/// Picks one caption of `key` by the mix weights (seeded by key).
fn pick_caption<'a>(
    options: &'a [(String, String)],
    mix: &BTreeMap<String, f64>,
    key: &str,
    seed: u64,
) -> Option<&'a (String, String)> {
    let weighted: Vec<(&(String, String), f64)> = options
        .iter()
        .map(|o| (o, mix.get(&o.0).copied().unwrap_or(0.0)))
        .filter(|(_, w)| *w > 0.0)
        .collect();
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    if weighted.is_empty() {
        return None;
    }
    let mut rng = CropRng::new(seed ^ 0x6361_7074_696f_6e00, Stage::S256, key);
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (o, w) in &weighted {
        if u < *w {
            return Some(o);
        }
        u -= w;
    }
    weighted.last().map(|(o, _)| *o)
}

/// Joins keep list, scores and captions with polars.
pub fn select(args: &EncodeLatentsArgs) -> anyhow::Result<Selection> {
    let mix = parse_mix(&args.caption_mix)?;
    let mut lines = Vec::new();
    // The key filter: keep ∩ (scored ok and not dropped).
    let mut filter: Option<LazyFrame> = None;
    if let Some(dir) = &args.keep {
        let keep = scan_file(&dir.join("keep.parquet"))
            .with_context(|| format!("--keep {}", dir.display()))?
            .select([col("key")]);
        let n = keep
            .clone()
            .select([len()])
            .collect()?
            .column("len")?
            .u32()?
            .get(0);
        lines.push(format!("{} in the keep list", n.unwrap_or(0)));
        filter = Some(keep);
    }
    let mut score_frame: Option<LazyFrame> = None;
    if let Some(dir) = &args.scores {
        let up = Upstream::open(dir, &["scores"])
            .with_context(|| format!("--scores {}", dir.display()))?;
        let scores = scan_stage(&up)?.select([
            col("key"),
            col("status"),
            col("score"),
            col("tag"),
            col("dropped"),
        ]);
        let counts = scores
            .clone()
            .select([
                col("status").eq(lit("ok")).sum().alias("ok"),
                col("dropped").fill_null(lit(false)).sum().alias("dropped"),
            ])
            .collect()?;
        let get = |c: &str| -> anyhow::Result<u64> {
            Ok(counts
                .column(c)?
                .cast(&polars::prelude::DataType::UInt64)?
                .u64()?
                .get(0)
                .unwrap_or(0))
        };
        lines.push(format!(
            "{} scored, {} dropped by score",
            get("ok")?,
            get("dropped")?
        ));
        let ok = scores
            .filter(
                col("status")
                    .eq(lit("ok"))
                    .and(col("dropped").eq(lit(false))),
            )
            .select([col("key"), col("score"), col("tag")]);
        filter = Some(match filter {
            Some(f) => f.join(
                ok.clone(),
                [col("key")],
                [col("key")],
                JoinArgs::new(JoinType::Inner),
            ),
            None => ok.clone(),
        });
        score_frame = Some(ok);
    }
    let mut captions: Option<LazyFrame> = None;
    for dir in &args.captions {
        let up = Upstream::open(dir, &["captions"])
            .with_context(|| format!("--captions {}", dir.display()))?;
        let c = scan_stage(&up)?
            .filter(col("status").eq(lit("ok")))
            .select([col("key"), col("task"), col("caption")]);
        captions = Some(match captions {
            Some(prev) => concat([prev, c], UnionArgs::default())?,
            None => c,
        });
    }
    // Captions of the selected keys (all captions when there is no filter).
    let caption_rows = match (&captions, &filter) {
        (Some(c), Some(f)) => Some(
            c.clone()
                .join(
                    f.clone().select([col("key")]),
                    [col("key")],
                    [col("key")],
                    JoinArgs::new(JoinType::Semi),
                )
                .collect()?,
        ),
        (Some(c), None) => Some(c.clone().collect()?),
        _ => None,
    };
    let mut options: HashMap<String, Vec<(String, String)>> = HashMap::new();
    if let Some(df) = &caption_rows {
        let (k, t, c) = (
            df.column("key")?.str()?,
            df.column("task")?.str()?,
            df.column("caption")?.str()?,
        );
        for i in 0..df.height() {
            if let (Some(k), Some(t), Some(c)) = (k.get(i), t.get(i), c.get(i)) {
                options
                    .entry(k.to_string())
                    .or_default()
                    .push((t.to_string(), c.to_string()));
            }
        }
        for v in options.values_mut() {
            v.sort();
            v.dedup();
        }
    }
    let mut joined: HashMap<String, Joined> = HashMap::new();
    let mut keys: Option<HashSet<String>> = None;
    if let Some(f) = filter {
        let df = f.collect()?;
        let k = df.column("key")?.str()?;
        let mut set = HashSet::with_capacity(df.height());
        let (score, tag) = if score_frame.is_some() {
            (
                Some(df.column("score")?.f32()?.clone()),
                Some(df.column("tag")?.str()?.clone()),
            )
        } else {
            (None, None)
        };
        for i in 0..df.height() {
            let Some(key) = k.get(i) else { continue };
            set.insert(key.to_string());
            joined.insert(
                key.to_string(),
                Joined {
                    score: score.as_ref().and_then(|s| s.get(i)),
                    tag: tag.as_ref().and_then(|t| t.get(i)).map(str::to_string),
                    ..Default::default()
                },
            );
        }
        keys = Some(set);
    }
    let mut with_caption = 0usize;
    for (key, opts) in &options {
        if let Some((task, text)) = pick_caption(opts, &mix, key, args.seed) {
            let j = joined.entry(key.clone()).or_default();
            j.caption = Some(text.clone());
            j.caption_task = Some(task.clone());
            with_caption += 1;
        }
    }
    for j in joined.values_mut() {
        if let (Some(c), Some(t), false) = (&j.caption, &j.tag, args.no_tag) {
            j.caption = Some(format!("{c}, {t}"));
        }
    }
    if !args.captions.is_empty() {
        lines.push(format!("{with_caption} with a caption"));
        if args.require_caption {
            let set: HashSet<String> = match keys {
                Some(k) => k.into_iter().filter(|k| options.contains_key(k)).collect(),
                None => options.keys().cloned().collect(),
            };
            keys = Some(set);
        }
    }
    if let Some(k) = &keys {
        lines.push(format!("{} selected", k.len()));
    }
    Ok(Selection {
        keys,
        joined,
        summary: lines.join(", "),
    })
}

/// A picture ready for the VAE.
struct Crop {
    orig: (u32, u32),
    place: Placement,
    rgb: Vec<u8>,
}

/// An image that failed, with what is known of it.
struct Failed {
    reason: String,
    error: String,
    orig: Option<(u32, u32)>,
}

/// One output row.
struct Row {
    key: String,
    result: Result<(Crop, Vec<u8>, [u32; 3]), Failed>,
}

struct Encoder<'a> {
    vae: &'a Vae,
    store: LatentStore,
    dtype: LatentDtype,
}

/// One crop's latent bytes and their [C, H, W] shape.
type Encoded = (Vec<u8>, [u32; 3]);

impl Encoder<'_> {
    /// Latent bytes and shape per crop (all of one bucket); `Err` per crop when the VAE fails on it alone.
    fn encode(&self, crops: &[&Crop]) -> anyhow::Result<Vec<Result<Encoded, String>>> {
        let (h, w) = (
            crops[0].place.bucket_h as usize,
            crops[0].place.bucket_w as usize,
        );
        match self.run(crops, h, w) {
            Ok(v) => Ok(v.into_iter().map(Ok).collect()),
            Err(e) if crops.len() == 1 => Err(e).context("the VAE failed on a batch of one image"),
            Err(batch_err) => {
                let out: Vec<_> = crops
                    .iter()
                    .map(|c| {
                        self.run(&[c], h, w)
                            .map(|mut v| v.remove(0))
                            .map_err(|e| format!("{e:#}"))
                    })
                    .collect();
                if out.iter().all(Result::is_err) {
                    return Err(batch_err)
                        .context("the VAE failed on every image of a batch, one by one too");
                }
                Ok(out)
            }
        }
    }

    fn run(&self, crops: &[&Crop], h: usize, w: usize) -> anyhow::Result<Vec<(Vec<u8>, [u32; 3])>> {
        let rgb: Vec<&[u8]> = crops.iter().map(|c| c.rgb.as_slice()).collect();
        let x = curate_gen::vae::from_rgb8(&rgb, h, w, self.vae.device())?;
        let post = self.vae.encode(&x)?;
        let t = match self.store {
            LatentStore::Mean => post.mean,
            LatentStore::MeanLogvar => Tensor::cat(&[&post.mean, &post.logvar], 1)?,
        };
        let (b, c, lh, lw) = t.dims4()?;
        let bytes: Vec<u8> = match self.dtype {
            LatentDtype::Bf16 => t
                .to_dtype(DType::BF16)?
                .flatten_all()?
                .to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
            LatentDtype::F16 => t
                .to_dtype(DType::F16)?
                .flatten_all()?
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
            LatentDtype::F32 => t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let per = bytes.len() / b;
        Ok(bytes
            .chunks(per)
            .map(|c1| (c1.to_vec(), [c as u32, lh as u32, lw as u32]))
            .collect())
    }
}

fn dtype_name(d: LatentDtype) -> &'static str {
    match d {
        LatentDtype::Bf16 => "bf16",
        LatentDtype::F16 => "f16",
        LatentDtype::F32 => "f32",
    }
}

pub fn run(args: &EncodeLatentsArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    let stage_kind =
        Stage::from_number(args.stage.parse()?).context("--stage must be 256 or 512")?;
    let upstream = Upstream::open(&args.input, &["images"])?;
    let weights = curate_gen::vae::resolve_weights(&args.vae).context("--vae")?;
    let device = curate_gen::device(&args.device)?;
    let vae = Vae::load(&weights, &device).context("loading the VAE")?;
    let vae_id = args.vae_id.clone().unwrap_or_else(|| {
        weights
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let selection = select(args)?;
    tracing::info!("encode-latents: selection: {}", selection.summary);
    let mix = parse_mix(&args.caption_mix)?;
    let bucket_table = serde_json::to_string(
        &stage_kind
            .buckets()
            .iter()
            .map(|(h, w)| [h, w])
            .collect::<Vec<_>>(),
    )?;
    let spec = StageSpec {
        stage: "encode-latents".into(),
        schema: "latents".into(),
        config: serde_json::json!({
            "stage": args.stage,
            "vae": vae_id,
            "vae_config": format!("{:?}", vae.config),
            "store": args.store,
            "dtype": args.dtype,
            "seed": args.seed,
            "max_upscale": args.max_upscale,
            "buckets": bucket_table,
            "keep": args.keep.as_ref().map(|p| p.display().to_string()),
            "scores": args.scores.as_ref().map(|p| p.display().to_string()),
            "captions": args.captions.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "caption_mix": mix,
            "no_tag": args.no_tag,
            "require_caption": args.require_caption,
            "selected": selection.keys.as_ref().map(|k| k.len()),
            "decode_scale": format!("{:?}", args.decode_scale),
        }),
        inputs: upstream.inputs(),
        num_shards: upstream.manifest.num_shards,
    };
    let mut stage =
        super::shared::open_output("encode-latents", &args.output, &spec, args.overwrite)?;
    let schema = {
        let s = table().arrow_schema()?;
        let mut m = s.metadata().clone();
        for (k, v) in [
            ("shift_factor", vae.shift.to_string()),
            ("scale_factor", vae.scale.to_string()),
            ("vae", vae_id.clone()),
            (
                "store",
                serde_json::to_value(args.store)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            ("dtype", dtype_name(args.dtype).to_string()),
            ("stage", args.stage.clone()),
            ("buckets", bucket_table.clone()),
            ("seed", args.seed.to_string()),
            ("max_upscale", args.max_upscale.to_string()),
            (
                "caption_mix",
                if args.captions.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&mix)?
                },
            ),
        ] {
            m.insert(k.to_string(), v);
        }
        Arc::new(s.with_metadata(m))
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.decode_threads)
        .build()
        .context("decoder thread pool")?;
    let limits = curate_vision::Limits {
        max_pixels: args.max_pixels,
        ..Default::default()
    };
    let encoder = Encoder {
        vae: &vae,
        store: args.store,
        dtype: args.dtype,
    };
    let owned_rows: u64 = split
        .owned(stage.num_shards())
        .map(|s| upstream.shards[s as usize].records)
        .sum();
    let mut progress = Progress::new("encode-latents", owned_rows);
    let mut hook = super::shared::StallHook::from_env();
    let (seed, max_up, scale) = (args.seed, args.max_upscale, args.decode_scale);
    let prepare = |key: &str, bytes: &[u8]| -> Outcome<Result<Crop, Failed>> {
        let seen = std::cell::Cell::new(None);
        let loaded = load_rgb_for(bytes, &limits, scale, &|w, h| {
            seen.set(Some((w, h)));
            let p = buckets::place(stage_kind, w, h, key, seed);
            (p.resized_width, p.resized_height)
        });
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                return Ok(Err(Failed {
                    reason: e.reason().to_string(),
                    error: e.to_string(),
                    orig: seen.get(),
                }))
            }
        };
        let (w, h) = (loaded.source_width, loaded.source_height);
        let place = buckets::place(stage_kind, w, h, key, seed);
        if place.scale > max_up + 1e-9 {
            return Ok(Err(Failed {
                reason: "too_small".into(),
                error: format!(
                    "{w}×{h} would need a {:.2}× upscale for the {}×{} bucket (--max-upscale {max_up})",
                    place.scale, place.bucket_w, place.bucket_h
                ),
                orig: Some((w, h)),
            }));
        }
        let rgb = buckets::resize_crop(
            loaded.rgb.as_raw(),
            loaded.rgb.width(),
            loaded.rgb.height(),
            &place,
        );
        Ok(Ok(Crop {
            orig: (w, h),
            place,
            rgb,
        }))
    };
    let batch_size = args.batch_size as usize;
    let group = args.rows_per_group as usize;
    let summary = super::shared::each_owned_shard(
        "encode-latents",
        &stage,
        &upstream,
        &split,
        table(),
        &mut progress,
        |shard, input, progress| {
            let mut out = TableShard::begin(&stage, shard, table(), schema.clone(), group)?;
            let mut work = ShardWork::default();
            let mut seen = 0u64;
            let mut write = |rows: Vec<Row>, out: &mut TableShard| -> anyhow::Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                let batch = to_batch(&rows, stage_kind, &selection.joined, schema.clone())?;
                out.write(
                    &batch,
                    rows.iter()
                        .filter_map(|r| r.result.as_ref().err().map(|f| f.reason.as_str())),
                )?;
                hook.wrote(rows.len());
                Ok(())
            };
            stream_prepared(
                &upstream.shard_path(input),
                selection.keys.as_ref(),
                batch_size,
                &pool,
                prepare,
                |keys, outcomes| {
                    seen += keys.len() as u64;
                    progress.inc(keys.len() as u64);
                    for (key, o) in keys.into_iter().zip(outcomes) {
                        match o {
                            Err((reason, error)) => work.errors.push(Row {
                                key,
                                result: Err(Failed {
                                    reason,
                                    error,
                                    orig: None,
                                }),
                            }),
                            Ok(Err(f)) => work.errors.push(Row {
                                key,
                                result: Err(f),
                            }),
                            Ok(Ok(crop)) => {
                                let b = (crop.place.bucket_h, crop.place.bucket_w);
                                let pending = work.pending.entry(b).or_default();
                                pending.push((key, crop));
                                if pending.len() >= batch_size {
                                    let batch = std::mem::take(pending);
                                    work.encode(&encoder, b, batch)?;
                                }
                            }
                        }
                    }
                    for rows in work.full_groups(group) {
                        write(rows, &mut out)?;
                    }
                    Ok(())
                },
            )?;
            for (b, batch) in std::mem::take(&mut work.pending) {
                work.encode(&encoder, b, batch)?;
            }
            for rows in work.full_groups(1) {
                write(rows, &mut out)?;
            }
            // Images outside the selection count as done.
            progress.inc(input.records.saturating_sub(seen));
            out.commit(vec![input.file.clone()], 0.0)
        },
    )?;
    progress.finish();
    super::shared::stage_done_line(
        "encode-latents",
        &summary,
        hook.rows,
        progress.elapsed().as_secs_f64(),
    );
    stage.consolidate(&[])?;
    Ok(summary)
}

/// A shard in progress: crops waiting for a VAE batch, rows waiting for a row group.
#[derive(Default)]
struct ShardWork {
    pending: BTreeMap<(u32, u32), Vec<(String, Crop)>>,
    encoded: BTreeMap<(u32, u32), Vec<Row>>,
    errors: Vec<Row>,
}

impl ShardWork {
    fn encode(
        &mut self,
        encoder: &Encoder,
        bucket: (u32, u32),
        batch: Vec<(String, Crop)>,
    ) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let crops: Vec<&Crop> = batch.iter().map(|(_, c)| c).collect();
        let latents = encoder.encode(&crops)?;
        for ((key, crop), latent) in batch.into_iter().zip(latents) {
            match latent {
                Ok((bytes, shape)) => self.encoded.entry(bucket).or_default().push(Row {
                    key,
                    result: Ok((crop, bytes, shape)),
                }),
                Err(error) => self.errors.push(Row {
                    key,
                    result: Err(Failed {
                        reason: "inference".into(),
                        error,
                        orig: Some(crop.orig),
                    }),
                }),
            }
        }
        Ok(())
    }

    /// Row groups of at least `min` rows, each of one bucket (errors apart).
    fn full_groups(&mut self, min: usize) -> Vec<Vec<Row>> {
        let mut out = Vec::new();
        for rows in self.encoded.values_mut() {
            if rows.len() >= min {
                out.push(std::mem::take(rows));
            }
        }
        if self.errors.len() >= min {
            out.push(std::mem::take(&mut self.errors));
        }
        out
    }
}

fn to_batch(
    rows: &[Row],
    stage: Stage,
    joined: &HashMap<String, Joined>,
    schema: SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let n = rows.len();
    fn ok(r: &Row) -> Option<&(Crop, Vec<u8>, [u32; 3])> {
        r.result.as_ref().ok()
    }
    fn err(r: &Row) -> Option<&Failed> {
        r.result.as_ref().err()
    }
    let place = |r: &Row| ok(r).map(|x| x.0.place);
    let orig = |r: &Row| match &r.result {
        Ok(x) => Some(x.0.orig),
        Err(f) => f.orig,
    };
    let info = |r: &Row| joined.get(&r.key);
    let strings = |f: &dyn Fn(&Row) -> Option<String>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let u32s = |f: &dyn Fn(&Row) -> Option<u32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<UInt32Array>())
    };
    let mut latent = BinaryBuilder::new();
    for r in rows {
        latent.append_option(ok(r).map(|x| x.1.as_slice()));
    }
    let shape_field = match schema.field_with_name("latent_shape")?.data_type() {
        DataType::FixedSizeList(f, 3) => f.clone(),
        other => bail!("latents schema: latent_shape is {other}, expected a fixed-size list of 3"),
    };
    let shape_values: UInt32Array = rows
        .iter()
        .flat_map(|r| ok(r).map(|x| x.2).unwrap_or([0; 3]))
        .map(Some)
        .collect();
    let shape_nulls =
        arrow_buffer::NullBuffer::from(rows.iter().map(|r| r.result.is_ok()).collect::<Vec<_>>());
    let shapes =
        FixedSizeListArray::try_new(shape_field, 3, Arc::new(shape_values), Some(shape_nulls))?;
    let dtype = schema.metadata().get("dtype").cloned().unwrap_or_default();
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.key.clone())),
        strings(&|r| Some(if r.result.is_ok() { "ok" } else { "error" }.into())),
        strings(&|r| err(r).map(|f| f.reason.clone())),
        strings(&|r| err(r).map(|f| f.error.clone())),
        Arc::new(UInt16Array::from(vec![stage.number(); n])),
        u32s(&|r| place(r).map(|p| p.bucket_h)),
        u32s(&|r| place(r).map(|p| p.bucket_w)),
        Arc::new(latent.finish()),
        Arc::new(shapes),
        strings(&|r| ok(r).map(|_| dtype.clone())),
        strings(&|r| info(r).and_then(|j| j.caption.clone())),
        strings(&|r| info(r).and_then(|j| j.caption_task.clone())),
        Arc::new(
            rows.iter()
                .map(|r| info(r).and_then(|j| j.score))
                .collect::<Float32Array>(),
        ),
        strings(&|r| info(r).and_then(|j| j.tag.clone())),
        u32s(&|r| orig(r).map(|o| o.0)),
        u32s(&|r| orig(r).map(|o| o.1)),
        u32s(&|r| place(r).map(|p| p.resized_width)),
        u32s(&|r| place(r).map(|p| p.resized_height)),
        u32s(&|r| place(r).map(|p| p.crop_left)),
        u32s(&|r| place(r).map(|p| p.crop_top)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `curate decode-latents`: latent rows back to PNGs through the VAE.
pub fn decode(args: &DecodeLatentsArgs) -> anyhow::Result<()> {
    let up = Upstream::open(&args.input, &["latents"])?;
    let weights = curate_gen::vae::resolve_weights(&args.vae).context("--vae")?;
    let device = curate_gen::device(&args.device)?;
    let vae = Vae::load(&weights, &device).context("loading the VAE")?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let wanted: HashSet<&str> = args.keys.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    'shards: for rec in &up.shards {
        for batch in curate_io::read_columns(
            &up.shard_path(rec),
            table(),
            Some(&curate_io::latents::COLUMNS),
        )? {
            for latent in curate_io::latents::rows(&batch)? {
                if latent.status != "ok"
                    || (!wanted.is_empty() && !wanted.contains(latent.key.as_str()))
                {
                    continue;
                }
                let shape = latent.shape.context("ok row without a shape")?;
                let t =
                    Tensor::from_vec(latent.to_f32()?, (1, shape[0], shape[1], shape[2]), &device)?
                        .narrow(1, 0, vae.config.z_channels)?;
                let img = vae.decode(&t)?;
                let (_, _, h, w) = img.dims4()?;
                let rgb = curate_gen::vae::to_rgb8(&img)?.remove(0);
                let path: PathBuf = args.output.join(format!("{}.png", latent.key));
                let png = curate_vision::encode_png(
                    &image::RgbImage::from_raw(w as u32, h as u32, rgb)
                        .context("decoded image size")?,
                )?;
                std::fs::write(&path, png)
                    .with_context(|| format!("writing {}", path.display()))?;
                written.push(path);
                if written.len() >= args.limit {
                    break 'shards;
                }
            }
        }
    }
    if written.is_empty() {
        bail!(
            "no ok latent rows{} in {}",
            if wanted.is_empty() {
                ""
            } else {
                " with those keys"
            },
            args.input.display()
        );
    }
    println!(
        "decoded {} latents into {}",
        written.len(),
        args.output.display()
    );
    Ok(())
}
