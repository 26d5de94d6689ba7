//! `encode-latents`: the training set, pre-encoded so training never
//! touches pixels (oboro §IV-A5/6).
//!
//! 1. **Selection** ([`select`], polars): the images in the dedup keep list
//!    and not dropped by the aesthetic score, joined with their captions
//!    and quality tags. The training text is `caption, tag`; when an image
//!    has captions of several tasks, one is picked per key with the mix weights.
//! 2. **Placement** (`curate_vision::buckets`): resolution 256 resizes the
//!    short edge to 256 and crops 256×256; resolution 512 resizes to the
//!    bucket of the closest aspect ratio (multiples of 64, ~262144 px, ratio
//!    ≤ 1.3). Crop positions are drawn from (seed, resolution, key), so
//!    every run crops alike.
//! 3. **Encoding** (`curate_gen::vae`): the FLUX VAE's posterior mean (and
//!    optionally log-variance), shifted and scaled, stored as bf16/f16/f32.
//!
//! One output shard per image shard; inside it every row group holds one
//! bucket, so a trainer reads whole batches of one shape. Memory is bounded
//! by the buckets' pending rows (`rows_per_group` each), not by the shard.
//! [`decode`] is `decode-latents`, the way back to PNGs.

pub mod decode;
pub mod select;

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_schema::SchemaRef;
use candle_core::{DType, Tensor};
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageSpec};
use curate_gen::vae::Vae;
use curate_io::latents::{self, LatentRow, LatentsMeta};
use curate_stage::pixels::{stream_prepared, Outcome};
use curate_stage::{Context, Result, ShardOutput, Stage, StageError, Upstream};
use curate_vision::buckets::{self, Placement, Resolution};
use curate_vision::preprocess::{load_rgb_for, DecodeScale};

pub use curate_io::latents::LatentDtype;
pub use select::{SelectSettings, Selection};

/// What to store of the posterior.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentStore {
    /// The posterior mean (16 channels).
    Mean,
    /// The mean, then the unscaled log-variance (32 channels).
    MeanLogvar,
}

impl LatentStore {
    /// Its name in the manifest and the shard metadata.
    pub fn name(self) -> &'static str {
        match self {
            LatentStore::Mean => "mean",
            LatentStore::MeanLogvar => "mean-logvar",
        }
    }
}

/// What `curate encode-latents` is asked to do.
#[derive(Debug, Clone)]
pub struct EncodeLatentsSettings {
    /// The image stage read.
    pub input: PathBuf,
    pub resolution: Resolution,
    /// FLUX VAE weights: a file or a folder (see `curate_gen::vae::resolve_weights`).
    pub vae: PathBuf,
    /// Model id stored in the metadata; `None`: the weight file's name.
    pub vae_id: Option<String>,
    /// candle device: cpu, cuda or cuda:N.
    pub device: String,
    /// Which images, with which captions (its seed is also the crops' seed).
    pub select: SelectSettings,
    pub store: LatentStore,
    pub dtype: LatentDtype,
    /// Images per VAE call (of one bucket).
    pub batch_size: usize,
    /// Rows per row group of the output (each row group is one bucket).
    pub rows_per_group: usize,
    /// Largest allowed upscale; images needing more are `too_small`.
    pub max_upscale: f64,
    /// Image decoding threads (0 = one per core).
    pub decode_threads: usize,
    pub decode_scale: DecodeScale,
    /// Largest width × height decoded; larger images are `too_large`.
    pub max_pixels: u64,
}

/// The `encode-latents` stage, its VAE loaded and its training set selected.
pub struct EncodeLatents {
    settings: EncodeLatentsSettings,
    upstream: Upstream,
    vae: Vae,
    selection: Selection,
    config: serde_json::Value,
    schema: SchemaRef,
    pool: rayon::ThreadPool,
}

impl EncodeLatents {
    /// Opens the image stage, loads the VAE and selects the training set.
    pub fn open(settings: &EncodeLatentsSettings) -> Result<EncodeLatents> {
        let s = settings;
        curate_stage::pixels::log_decoder("encode-latents", s.decode_scale);
        let upstream = Upstream::open(&s.input, &["images"])?;
        let weights = curate_gen::vae::resolve_weights(&s.vae).context("--vae")?;
        let device = curate_gen::device(&s.device).map_err(StageError::other)?;
        let vae = Vae::load(&weights, &device).context("loading the VAE")?;
        let vae_id = s.vae_id.clone().unwrap_or_else(|| {
            weights
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let selection = select::select(&s.select)?;
        tracing::info!("encode-latents: selection: {}", selection.summary);
        let mix = select::parse_mix(&s.select.caption_mix)?;
        let bucket_table = serde_json::to_string(
            &s.resolution
                .buckets()
                .iter()
                .map(|(h, w)| [h, w])
                .collect::<Vec<_>>(),
        )
        .map_err(StageError::other)?;
        let stage = s.resolution.number().to_string();
        let path = |p: &PathBuf| p.display().to_string();
        let config = serde_json::json!({
            "stage": stage,
            "vae": vae_id,
            "vae_config": vae.config,
            "store": s.store.name(),
            "dtype": s.dtype.name(),
            "seed": s.select.seed,
            "max_upscale": s.max_upscale,
            "buckets": bucket_table,
            "keep": s.select.keep.as_ref().map(path),
            "scores": s.select.scores.as_ref().map(path),
            "captions": s.select.captions.iter().map(path).collect::<Vec<_>>(),
            "caption_mix": mix,
            "no_tag": s.select.no_tag,
            "require_caption": s.select.require_caption,
            "selected": selection.keys.as_ref().map(|k| k.len()),
            "decode_scale": s.decode_scale,
        });
        let schema = latents::arrow_schema(Some(&LatentsMeta {
            shift_factor: vae.shift,
            scale_factor: vae.scale,
            vae: vae_id,
            store: s.store.name().to_string(),
            dtype: s.dtype,
            stage: s.resolution.number(),
            buckets: bucket_table,
            seed: s.select.seed,
            max_upscale: s.max_upscale,
            caption_mix: if s.select.captions.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&mix).map_err(StageError::other)?
            },
        }))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(s.decode_threads)
            .build()
            .context("decoder thread pool")?;
        Ok(EncodeLatents {
            settings: s.clone(),
            upstream,
            vae,
            selection,
            config,
            schema,
            pool,
        })
    }
}

impl Stage for EncodeLatents {
    fn name(&self) -> &str {
        "encode-latents"
    }

    fn table(&self) -> &'static TableSchema {
        latents::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .upstream
            .spec_for("encode-latents", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let s = &self.settings;
        let input = &self.upstream.shards[shard as usize];
        let encoder = Encoder {
            vae: &self.vae,
            store: s.store,
            dtype: s.dtype,
        };
        let (batch_size, group) = (s.batch_size, s.rows_per_group);
        let prepare = crop_job(s);
        let mut table = out.begin(shard, latents::table(), self.schema.clone(), group)?;
        let mut work = ShardWork::default();
        let mut written = 0u64;
        let resolution = s.resolution;
        let joined = &self.selection.joined;
        let schema = &self.schema;
        let mut write = |rows: Vec<Row>,
                         table: &mut curate_stage::TableShard<'_>,
                         out: &mut ShardOutput<'_>|
         -> Result<()> {
            if rows.is_empty() {
                return Ok(());
            }
            let latent_rows: Vec<LatentRow> = rows
                .into_iter()
                .map(|r| r.into_latent_row(resolution, s.dtype, joined))
                .collect();
            table.write(
                &latents::to_batch(&latent_rows, schema)?,
                latent_rows.iter().filter_map(|r| r.reason.as_deref()),
            )?;
            written += latent_rows.len() as u64;
            out.wrote(latent_rows.len());
            Ok(())
        };
        stream_prepared(
            &self.upstream.shard_path(input),
            self.selection.keys.as_ref(),
            batch_size,
            &self.pool,
            prepare,
            |keys, outcomes| {
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
                    write(rows, &mut table, out)?;
                }
                Ok(())
            },
        )?;
        for (b, batch) in std::mem::take(&mut work.pending) {
            work.encode(&encoder, b, batch)?;
        }
        for rows in work.full_groups(1) {
            write(rows, &mut table, out)?;
        }
        // Images outside the selection count as done.
        out.progress.inc(input.records.saturating_sub(written));
        table.commit(vec![input.file.clone()], 0.0)
    }
}

/// What the decoding pool does with one image: decode, place, resize and crop.
fn crop_job(
    s: &EncodeLatentsSettings,
) -> impl Fn(&str, &[u8]) -> Outcome<std::result::Result<Crop, Failed>> + Sync {
    let limits = curate_vision::Limits {
        max_pixels: s.max_pixels,
        ..Default::default()
    };
    let (resolution, seed, max_up, scale) =
        (s.resolution, s.select.seed, s.max_upscale, s.decode_scale);
    move |key: &str, bytes: &[u8]| {
        let seen = std::cell::Cell::new(None);
        let loaded = load_rgb_for(bytes, &limits, scale, &|w, h| {
            seen.set(Some((w, h)));
            let p = buckets::place(resolution, w, h, key, seed);
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
        let place = buckets::place(resolution, w, h, key, seed);
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
    }
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

/// One crop's latent bytes and their [C, H, W] shape.
type Encoded = (Vec<u8>, [u32; 3]);

/// One output row before the selection's columns are joined.
struct Row {
    key: String,
    result: std::result::Result<(Crop, Encoded), Failed>,
}

impl Row {
    fn into_latent_row(
        self,
        resolution: Resolution,
        dtype: LatentDtype,
        joined: &std::collections::HashMap<String, select::Joined>,
    ) -> LatentRow {
        let info = joined.get(&self.key).cloned().unwrap_or_default();
        let mut row = LatentRow {
            stage: resolution.number(),
            caption: info.caption,
            caption_task: info.caption_task,
            score: info.score,
            tag: info.tag,
            ..Default::default()
        };
        match self.result {
            Ok((crop, (bytes, shape))) => {
                let p = crop.place;
                row.status = "ok".into();
                row.bucket = Some((p.bucket_h, p.bucket_w));
                row.bytes = Some(bytes);
                row.shape = Some(shape.map(|d| d as usize));
                row.dtype = Some(dtype.name().to_string());
                row.orig = Some(crop.orig);
                row.resized = Some((p.resized_width, p.resized_height));
                row.crop = Some((p.crop_left, p.crop_top));
            }
            Err(f) => {
                row.status = "error".into();
                row.reason = Some(f.reason);
                row.error = Some(f.error);
                row.orig = f.orig;
            }
        }
        row.key = self.key;
        row
    }
}

struct Encoder<'a> {
    vae: &'a Vae,
    store: LatentStore,
    dtype: LatentDtype,
}

impl Encoder<'_> {
    /// Latent bytes and shape per crop (all of one bucket); `Err` per crop when the VAE fails on it alone.
    fn encode(&self, crops: &[&Crop]) -> Result<Vec<std::result::Result<Encoded, String>>> {
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
                            .map_err(|e| error_chain(&e))
                    })
                    .collect();
                if out.iter().all(std::result::Result::is_err) {
                    return Err(batch_err)
                        .context("the VAE failed on every image of a batch, one by one too");
                }
                Ok(out)
            }
        }
    }

    fn run(
        &self,
        crops: &[&Crop],
        h: usize,
        w: usize,
    ) -> std::result::Result<Vec<Encoded>, curate_gen::GenError> {
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

/// `{e:#}` of an error: its message and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let crops: Vec<&Crop> = batch.iter().map(|(_, c)| c).collect();
        let latents = encoder.encode(&crops)?;
        for ((key, crop), latent) in batch.into_iter().zip(latents) {
            match latent {
                Ok(encoded) => self.encoded.entry(bucket).or_default().push(Row {
                    key,
                    result: Ok((crop, encoded)),
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
