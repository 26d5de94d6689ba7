//! The latent-cache formats (`kohya`, `musubi`): one file per image beside
//! the image and its caption, in one flat folder, as the LoRA trainers read
//! a dataset directory. They export an encode-latents stage, whose rows
//! already are the final selection (dedup keep list, not dropped by score)
//! with the training text, the original size and the crop.
//!
//! A shard is written in three streaming passes, so memory is one latents
//! row group and one image batch whatever the shard size:
//! 1. the latents shard's keys, captions and sizes (no latents);
//! 2. the image shard: `KEY.jpg|png|webp` and `KEY.txt` for those keys;
//! 3. the latents shard row group by row group: the cache file per key.
//!
//! Every file is written under a hidden temporary name and renamed; a redo
//! of the shard first removes the temporaries of its keys (the names are
//! known from the key), then rewrites every file, so kill -9 at any moment
//! leaves each file either whole or absent and the index (the commit)
//! names only whole ones.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, RecordBatch, StringArray, UInt32Array};
use std::path::Path;

use curate_core::rng::{hash_str, SplitMix64};
use curate_core::stage::ShardRecord;
use curate_io::export::{self, IndexRow};
use curate_io::{images, latents};
use curate_stage::{bail, Context, Result, ShardOutput, StageError, Upstream};

use super::ext_of;

/// One latent as a cache file needs it.
pub struct Latent<'a> {
    pub key: &'a str,
    /// C·H·W values, scaled as the latents table stores them:
    /// `(z − shift) × scale` (the posterior mean, or a sample of it).
    pub values: &'a [f32],
    /// [C, H, W].
    pub shape: [usize; 3],
    /// Width, height of the upright source image.
    pub original: (u32, u32),
    /// Crop box in the resized image: left, top, right, bottom.
    pub crop_ltrb: [u32; 4],
    pub shift: f64,
    pub scale: f64,
}

/// How a format names and encodes the cache file of one image.
pub trait CacheFile {
    /// The cache file's name for `key` of original size `original` (W, H).
    fn file_name(&self, key: &str, original: (u32, u32)) -> String;
    /// The file's bytes.
    fn encode(&self, latent: &Latent<'_>) -> Result<Vec<u8>>;
}

/// What the latents stage records about its encoding.
#[derive(Debug, Clone)]
pub struct LatentsInfo {
    pub shift: f64,
    pub scale: f64,
    /// `mean` or `mean-logvar`.
    pub store: String,
    /// 256 or 512.
    pub stage: u16,
    /// The bucket table, [[h, w], …].
    pub buckets: Vec<[u32; 2]>,
}

impl LatentsInfo {
    /// Read from the first shard's schema metadata.
    pub fn read(up: &Upstream) -> Result<LatentsInfo> {
        let Some(first) = up.shards.first() else {
            bail!("{}: the latents stage has no shards", up.dir.display());
        };
        let path = up.shard_path(first);
        let get = |k: &str| -> Result<String> {
            latents::metadata(&path, k)?.with_context(|| {
                format!(
                    "{}: expected `{k}` in the latents shard's metadata",
                    path.display()
                )
            })
        };
        let num = |k: &str| -> Result<f64> {
            let v = get(k)?;
            v.parse()
                .ok()
                .with_context(|| format!("{}: `{k}` is `{v}`, expected a number", path.display()))
        };
        let buckets: Vec<[u32; 2]> = serde_json::from_str(&get("buckets")?).map_err(|e| {
            StageError::other(format!(
                "{}: `buckets` metadata, expected [[h, w], …]: {e}",
                path.display()
            ))
        })?;
        Ok(LatentsInfo {
            shift: num("shift_factor")?,
            scale: num("scale_factor")?,
            store: get("store")?,
            stage: num("stage")? as u16,
            buckets,
        })
    }
}

/// The settings one shard needs.
pub struct CacheShard<'a> {
    /// The format's name (the index's metadata).
    pub format: &'static str,
    pub out: &'a Path,
    pub images: &'a Upstream,
    pub latents: &'a Upstream,
    pub info: &'a LatentsInfo,
    pub cache: &'a dyn CacheFile,
    /// Draw `z` from the posterior (seeded per key) instead of its mean.
    pub sample_posterior: Option<u64>,
}

/// What pass 1 keeps of a latents row.
struct Wanted {
    text: Option<String>,
    original: (u32, u32),
    /// The image file, once pass 2 wrote it.
    image: Option<String>,
}

/// Pass 1 of a batch: an index error row for a failed latent, else the key and what pass 2 needs.
type KeyRow = std::result::Result<(String, Wanted), IndexRow>;

fn keys_of(batch: &RecordBatch, path: &Path) -> Result<Vec<KeyRow>> {
    let col = |n: &str| {
        batch
            .column_by_name(n)
            .with_context(|| format!("{}: expected a `{n}` column", path.display()))
    };
    let text = |n: &str| -> Result<&StringArray> {
        col(n)?
            .as_string_opt::<i32>()
            .with_context(|| format!("{}: `{n}` is not a string column", path.display()))
    };
    let num = |n: &str| -> Result<&UInt32Array> {
        col(n)?
            .as_primitive_opt::<UInt32Type>()
            .with_context(|| format!("{}: `{n}` is not a uint32 column", path.display()))
    };
    let (key, status, reason, error, caption) = (
        text("key")?,
        text("status")?,
        text("reason")?,
        text("error")?,
        text("caption")?,
    );
    let (ow, oh) = (num("orig_width")?, num("orig_height")?);
    let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let k = key.value(i).to_string();
        if status.value(i) != "ok" {
            out.push(Err(IndexRow {
                key: k,
                result: Err((
                    opt(reason, i).unwrap_or_else(|| "source_error".into()),
                    opt(error, i).unwrap_or_default(),
                )),
            }));
            continue;
        }
        if ow.is_null(i) || oh.is_null(i) {
            bail!(
                "{}: ok row `{k}` has no orig_width/orig_height",
                path.display()
            );
        }
        out.push(Ok((
            k,
            Wanted {
                text: opt(caption, i),
                original: (ow.value(i), oh.value(i)),
                image: None,
            },
        )));
    }
    Ok(out)
}

/// `dest` written through a hidden temporary in the same folder.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(dest);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}

fn temporary(dest: &Path) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp"))
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StageError::other(format!(
            "removing {}: {e}",
            path.display()
        ))),
    }
}

/// The C·H·W values to export from a stored latent: the mean channels, or
/// with `seed` a draw `mean + scale·exp(logvar/2)·ε` (the stored mean is
/// scaled, the log-variance is that of the unscaled `z`).
pub fn exported_values(
    key: &str,
    values: Vec<f32>,
    shape: [usize; 3],
    store: &str,
    scale: f64,
    seed: Option<u64>,
) -> Result<(Vec<f32>, [usize; 3])> {
    let [c, h, w] = shape;
    if store != "mean-logvar" {
        return Ok((values, shape));
    }
    if c % 2 != 0 {
        bail!("latent of `{key}`: store mean-logvar but {c} channels, expected an even number");
    }
    let half = c / 2 * h * w;
    let (mean, logvar) = values.split_at(half);
    let out = match seed {
        None => mean.to_vec(),
        Some(seed) => {
            let mut rng = SplitMix64::new(hash_str(seed, key));
            mean.iter()
                .zip(logvar)
                .map(|(m, lv)| {
                    let std = (0.5 * *lv as f64).exp() * scale;
                    (*m as f64 + std * rng.normal()) as f32
                })
                .collect()
        }
    };
    Ok((out, [c / 2, h, w]))
}

/// Writes one shard: the image, caption and cache file of every ok latents
/// row of latents shard `shard`; returns the index rows.
pub fn write_shard(
    cfg: &CacheShard<'_>,
    shard: u32,
    out: &mut ShardOutput<'_>,
) -> Result<ShardRecord> {
    let table = export::table();
    let schema = export::index_schema(cfg.format)?;
    let mut index = out.begin(shard, table, schema.clone(), 1 << 16)?;
    std::fs::create_dir_all(cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let lat_path = cfg.latents.shard_path(&cfg.latents.shards[shard as usize]);
    let mut rows: Vec<IndexRow> = Vec::new();

    // Pass 1: the keys of the shard, their texts and sizes.
    let mut wanted: HashMap<String, Wanted> = HashMap::new();
    let groups = latents::row_groups(&lat_path)?;
    let small = [
        "key",
        "status",
        "reason",
        "error",
        "caption",
        "orig_width",
        "orig_height",
    ];
    for rg in 0..groups {
        for batch in latents::read_row_group(&lat_path, rg, &small)? {
            for r in keys_of(&batch, &lat_path)? {
                match r {
                    Err(row) => rows.push(row),
                    Ok((key, w)) => {
                        wanted.insert(key, w);
                    }
                }
            }
        }
    }
    // What an earlier attempt at this shard may have left half written.
    for (key, w) in &wanted {
        let cache = cfg.out.join(cfg.cache.file_name(key, w.original));
        remove_if_there(&temporary(&cache))?;
        remove_if_there(&temporary(&cfg.out.join(format!("{key}.txt"))))?;
    }

    // Pass 2: images and captions.
    let img_path = cfg.images.shard_path(&cfg.images.shards[shard as usize]);
    let columns: Vec<&str> = images::table()
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    for batch in curate_io::stream_columns(&img_path, images::table(), &columns, 64)? {
        let records = images::from_batch(&batch?).map_err(StageError::other)?;
        for r in records {
            out.wrote(1);
            let Some(w) = wanted.get_mut(&r.key) else {
                continue;
            };
            let Some(bytes) = r.bytes else {
                continue;
            };
            let name = format!(
                "{}.{}",
                r.key,
                ext_of(r.stored_format.as_deref().or(r.format.as_deref()))
            );
            let dest = cfg.out.join(&name);
            remove_if_there(&temporary(&dest))?;
            write_atomic(&dest, &bytes)?;
            write_atomic(
                &cfg.out.join(format!("{}.txt", r.key)),
                w.text.as_deref().unwrap_or("").as_bytes(),
            )?;
            w.image = Some(name);
        }
    }

    // Pass 3: the cache files, one latents row group at a time.
    let all: Vec<&str> = latents::table()
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    for rg in 0..groups {
        for batch in latents::read_row_group(&lat_path, rg, &all)? {
            for r in latents::rows(&batch)? {
                if !r.is_ok() {
                    continue;
                }
                let Some(w) = wanted.get(&r.key) else {
                    continue;
                };
                if w.image.is_none() {
                    rows.push(IndexRow {
                        key: r.key.clone(),
                        result: Err(("no_bytes".into(), "the image row holds no bytes".into())),
                    });
                    continue;
                }
                let (Some(shape), Some((bh, bw)), Some(crop)) = (r.shape, r.bucket, r.crop) else {
                    bail!(
                        "{}: ok row `{}` has no latent_shape, bucket or crop",
                        lat_path.display(),
                        r.key
                    );
                };
                let values = r.to_f32()?;
                let (values, shape) = exported_values(
                    &r.key,
                    values,
                    shape,
                    &cfg.info.store,
                    cfg.info.scale,
                    cfg.sample_posterior,
                )?;
                let latent = Latent {
                    key: &r.key,
                    values: &values,
                    shape,
                    original: w.original,
                    crop_ltrb: [crop.0, crop.1, crop.0 + bw, crop.1 + bh],
                    shift: cfg.info.shift,
                    scale: cfg.info.scale,
                };
                let name = cfg.cache.file_name(&r.key, w.original);
                write_atomic(&cfg.out.join(&name), &cfg.cache.encode(&latent)?)?;
                rows.push(IndexRow {
                    key: r.key.clone(),
                    result: Ok(name),
                });
            }
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let batch = export::index_batch(&schema, &rows)?;
    index.write(
        &batch,
        rows.iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| e.0.as_str())),
    )?;
    index.commit(vec![cfg.images.shards[shard as usize].file.clone()], 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_the_first_half_and_a_draw_is_seeded_per_key() {
        // 2 mean channels then 2 log-variance channels, 1×2 each.
        let v = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, -2.0, -2.0];
        let (m, s) = exported_values("k", v.clone(), [4, 1, 2], "mean-logvar", 0.5, None).unwrap();
        assert_eq!((m, s), (vec![1.0, 2.0, 3.0, 4.0], [2, 1, 2]));
        let a = exported_values("k", v.clone(), [4, 1, 2], "mean-logvar", 0.5, Some(7)).unwrap();
        let b = exported_values("k", v.clone(), [4, 1, 2], "mean-logvar", 0.5, Some(7)).unwrap();
        let c = exported_values("j", v.clone(), [4, 1, 2], "mean-logvar", 0.5, Some(7)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
        assert_ne!(a.0, vec![1.0, 2.0, 3.0, 4.0]);
        // A mean-only stage is exported as stored.
        let (m, s) = exported_values("k", v.clone(), [8, 1, 1], "mean", 0.5, None).unwrap();
        assert_eq!((m, s), (v, [8, 1, 1]));
    }
}
