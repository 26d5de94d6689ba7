//! The FLUX.1 autoencoder (a KL-regularised VAE with 16 latent channels and
//! 8× downsampling), as released by Black Forest Labs in `ae.safetensors`
//! (`flux/modules/autoencoder.py` in black-forest-labs/flux) and as
//! diffusers' `AutoencoderKL` with the FLUX config. Architecture from
//! Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
//! Models" (2022), with the FLUX channel/latent settings.
//!
//! Unlike candle-transformers' `flux::autoencoder`, whose `encode` samples
//! from the posterior, [`Vae::encode`] returns the posterior **mean** (and,
//! on request, the log-variance), so latents are deterministic.
//!
//! Both key layouts load; the architecture (base channels, channel
//! multipliers, residual blocks per level, latent channels) is read off the
//! tensor shapes, so the real `ae.safetensors` and the tiny test fixture go
//! through the same code. Compute is in f32.

//!
//! Files: this one (the public API), `blocks.rs` (the layers: fused group
//! norm, shifted-GEMM convolutions, encoder and decoder), `weights.rs`
//! (loading either key layout, inferring and checking the architecture).

mod blocks;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::{GenError, Result};
use blocks::{Decoder, Encoder};
use weights::{check_tensors, infer_config, load_tensors, to_bfl};

/// FLUX's latent shift (applied before the scale).
pub const FLUX_SHIFT: f64 = 0.1159;
/// FLUX's latent scale.
pub const FLUX_SCALE: f64 = 0.3611;

/// The architecture, as read off the weights.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Base channel count (128 for FLUX).
    pub ch: usize,
    /// Per-level multipliers of `ch` (1, 2, 4, 4 for FLUX).
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Latent channels (16 for FLUX).
    pub z_channels: usize,
}

impl VaeConfig {
    /// FLUX.1's `ae.safetensors`.
    pub fn flux() -> VaeConfig {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
        }
    }

    /// The downsampling factor (8 for FLUX).
    pub fn factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }
}

/// Which key names a weight file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Black Forest Labs' `ae.safetensors` (`encoder.down.0.block.0.conv1`, …).
    Bfl,
    /// diffusers' `AutoencoderKL` (`encoder.down_blocks.0.resnets.0.conv1`, …).
    Diffusers,
}

/// The FLUX VAE: encoder and decoder, shift and scale.
pub struct Vae {
    pub config: VaeConfig,
    pub layout: Layout,
    pub shift: f64,
    pub scale: f64,
    encoder: Encoder,
    decoder: Decoder,
    device: Device,
}

/// The posterior of a batch, shift and scale applied to the mean.
pub struct Posterior {
    /// `(z_mean − shift) × scale`, [B, z, H/8, W/8].
    pub mean: Tensor,
    /// The unscaled log-variance, [B, z, H/8, W/8] (clamped to [−30, 20] as both references do).
    pub logvar: Tensor,
}

impl Vae {
    /// Loads `ae.safetensors` (either layout; optionally behind a `vae.` /
    /// `first_stage_model.` prefix) onto `device`, FLUX's shift and scale.
    pub fn load(path: &Path, device: &Device) -> Result<Vae> {
        let tensors = load_tensors(path)?;
        let (layout, tensors) = to_bfl(path, tensors)?;
        let config = infer_config(path, &tensors)?;
        check_tensors(path, &config, &tensors)?;
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?.to_device(device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Vae {
            encoder: Encoder::new(&config, vb.pp("encoder"))?,
            decoder: Decoder::new(&config, vb.pp("decoder"))?,
            config,
            layout,
            shift: FLUX_SHIFT,
            scale: FLUX_SCALE,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes images [B, 3, H, W] in [−1, 1] (H, W multiples of 8) to the posterior.
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let (_, c, h, w) = x.dims4()?;
        let f = self.config.factor();
        if c != self.config.in_channels || h % f != 0 || w % f != 0 {
            return Err(GenError::Config(format!(
                "VAE input must be [B, {}, H, W] with H and W multiples of {f}, got {:?}",
                self.config.in_channels,
                x.dims()
            )));
        }
        let moments = self.encoder.forward(&x.to_dtype(DType::F32)?)?;
        let z = self.config.z_channels;
        let mean = moments.narrow(1, 0, z)?;
        let logvar = moments.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        let mean = ((mean - self.shift)? * self.scale)?;
        Ok(Posterior { mean, logvar })
    }

    /// Decodes scaled latents (as [`encode`](Self::encode) returns them) to images in [−1, 1] (not clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = ((latents.to_dtype(DType::F32)? / self.scale)? + self.shift)?;
        Ok(self.decoder.forward(&z)?)
    }
}

/// Images [B, 3, H, W] in [−1, 1] → interleaved 8-bit RGB per image
/// (clamped, `round((x + 1) · 127.5)`), as diffusers' image processor does.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (b, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(GenError::Config(format!(
            "expected 3-channel images, got {:?}",
            images.dims()
        )));
    }
    let x = ((images.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .to_dtype(DType::U8)?;
    let flat = x.flatten_all()?.to_vec1::<u8>()?;
    Ok(flat.chunks(h * w * 3).take(b).map(<[u8]>::to_vec).collect())
}

/// Interleaved 8-bit RGB crops, all `height`×`width`, as a [B, 3, H, W] f32 batch in [−1, 1].
pub fn from_rgb8(crops: &[&[u8]], height: usize, width: usize, device: &Device) -> Result<Tensor> {
    let plane = height * width;
    let mut data = vec![0f32; crops.len() * 3 * plane];
    for (i, crop) in crops.iter().enumerate() {
        if crop.len() != 3 * plane {
            return Err(GenError::Config(format!(
                "crop {i} has {} bytes, expected {height}×{width}×3",
                crop.len()
            )));
        }
        let out = &mut data[i * 3 * plane..(i + 1) * 3 * plane];
        for (p, px) in crop.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (crops.len(), 3, height, width),
        device,
    )?)
}

/// The path of a VAE weight file given a file or a folder (`ae.safetensors`,
/// or diffusers' `diffusion_pytorch_model.safetensors`, also under `vae/`).
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let candidates = [
        "ae.safetensors",
        "diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "diffusers/diffusion_pytorch_model.safetensors",
    ];
    for c in candidates {
        let p = path.join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(GenError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no VAE weights: expected a .safetensors file or a folder with one of {}",
                candidates.join(", ")
            ),
        ),
    })
}
