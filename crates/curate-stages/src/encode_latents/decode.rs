//! `decode-latents`: latent rows back to PNGs through the VAE, to look at
//! what a latents stage holds.

use std::collections::HashSet;
use std::path::PathBuf;

use candle_core::Tensor;
use curate_gen::vae::Vae;
use curate_io::latents;
use curate_stage::{bail, Context, Result, StageError, Upstream};

/// What `curate decode-latents` is asked to do.
#[derive(Debug, Clone)]
pub struct DecodeLatentsSettings {
    /// A latents stage (`encode-latents` output).
    pub input: PathBuf,
    /// Folder for the PNGs (`<key>.png`).
    pub output: PathBuf,
    /// FLUX VAE weights (as for encode-latents).
    pub vae: PathBuf,
    /// Only these keys; empty: the first `limit` ok rows.
    pub keys: Vec<String>,
    /// Most images decoded.
    pub limit: usize,
    /// candle device: cpu, cuda or cuda:N.
    pub device: String,
}

/// Decodes ok latent rows to `<output>/<key>.png`; returns the files written.
pub fn decode_latents(settings: &DecodeLatentsSettings) -> Result<Vec<PathBuf>> {
    let s = settings;
    let up = Upstream::open(&s.input, &["latents"])?;
    let weights = curate_gen::vae::resolve_weights(&s.vae).context("--vae")?;
    let device = curate_gen::device(&s.device).map_err(StageError::other)?;
    let vae = Vae::load(&weights, &device).context("loading the VAE")?;
    std::fs::create_dir_all(&s.output)
        .with_context(|| format!("creating {}", s.output.display()))?;
    let wanted: HashSet<&str> = s.keys.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    'shards: for rec in &up.shards {
        for batch in curate_io::read_columns(
            &up.shard_path(rec),
            latents::table(),
            Some(&latents::COLUMNS),
        )? {
            for latent in latents::rows(&batch)? {
                if !latent.is_ok() || (!wanted.is_empty() && !wanted.contains(latent.key.as_str()))
                {
                    continue;
                }
                let png = decode_one(&vae, &latent, &device)
                    .with_context(|| format!("decoding `{}`", latent.key))?;
                let path = s.output.join(format!("{}.png", latent.key));
                std::fs::write(&path, png)
                    .with_context(|| format!("writing {}", path.display()))?;
                written.push(path);
                if written.len() >= s.limit {
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
            s.input.display()
        );
    }
    Ok(written)
}

/// One latent row → PNG bytes.
fn decode_one(
    vae: &Vae,
    latent: &latents::LatentRow,
    device: &candle_core::Device,
) -> Result<Vec<u8>> {
    let shape = latent.shape.context("ok row without a shape")?;
    let t = Tensor::from_vec(latent.to_f32()?, (1, shape[0], shape[1], shape[2]), device)
        .and_then(|t| t.narrow(1, 0, vae.config.z_channels))
        .map_err(StageError::other)?;
    let img = vae.decode(&t).map_err(StageError::other)?;
    let (_, _, h, w) = img.dims4().map_err(StageError::other)?;
    let rgb = curate_gen::vae::to_rgb8(&img)
        .map_err(StageError::other)?
        .remove(0);
    let picture =
        image::RgbImage::from_raw(w as u32, h as u32, rgb).context("decoded image size")?;
    curate_vision::encode_png(&picture).map_err(StageError::other)
}
