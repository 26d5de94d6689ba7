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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

use crate::{GenError, Result};

/// FLUX's latent shift (applied before the scale).
pub const FLUX_SHIFT: f64 = 0.1159;
/// FLUX's latent scale.
pub const FLUX_SCALE: f64 = 0.3611;
const NORM_GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

/// The architecture, as read off the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// GroupNorm(32, eps 1e-6), optionally followed by SiLU. On the CPU in f32
/// it is one fused pass per group (statistics in f64), instead of candle's
/// seven whole-tensor ops: at 512² the VAE's norms touch ~1 GB each way.
struct Norm {
    fallback: GroupNorm,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn forward(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op1_no_bwd(&GroupNormOp {
                weight: &self.weight,
                bias: &self.bias,
                silu,
            });
        }
        let y = self.fallback.forward(x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

struct GroupNormOp<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    silu: bool,
}

impl candle_core::CustomOp1 for GroupNormOp<'_> {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("group-norm: expected f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("group-norm: expected a contiguous tensor");
        };
        let x = &data[start..end];
        let dims = layout.shape().dims();
        let c = dims[1];
        let hw: usize = dims[2..].iter().product();
        let cpg = c / NORM_GROUPS;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(cpg * hw)
            .zip(x.par_chunks(cpg * hw))
            .enumerate()
            .for_each(|(i, (o, x))| {
                let g = i % NORM_GROUPS;
                let n = x.len() as f64;
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = x
                    .iter()
                    .map(|&v| {
                        let d = v as f64 - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n;
                let rstd = 1.0 / (var + NORM_EPS).sqrt();
                for ci in 0..cpg {
                    let ch = g * cpg + ci;
                    let a = (rstd * self.weight[ch] as f64) as f32;
                    let b = (self.bias[ch] as f64 - mean * rstd * self.weight[ch] as f64) as f32;
                    let (src, dst) = (&x[ci * hw..(ci + 1) * hw], &mut o[ci * hw..(ci + 1) * hw]);
                    if self.silu {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            let y = v * a + b;
                            *d = y / (1.0 + (-y).exp());
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = v * a + b;
                        }
                    }
                }
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn group_norm(channels: usize, vb: VarBuilder) -> candle_core::Result<Norm> {
    let weight = vb.get(channels, "weight")?;
    let bias = vb.get(channels, "bias")?;
    Ok(Norm {
        weight: weight.to_dtype(DType::F32)?.to_vec1()?,
        bias: bias.to_dtype(DType::F32)?.to_vec1()?,
        fallback: GroupNorm::new(weight, bias, channels, NORM_GROUPS, NORM_EPS)?,
    })
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    padding: usize,
    stride: usize,
    vb: VarBuilder,
) -> candle_core::Result<Conv> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    let inner = candle_nn::conv2d(cin, cout, k, cfg, vb)?;
    // CURATE_VAE_CANDLE_CONV=1 keeps candle's conv2d everywhere (for `curate bench latents` A/B).
    let shifted = if (k, padding, stride) == (3, 1, 1)
        && inner.weight().device().is_cpu()
        && std::env::var_os("CURATE_VAE_CANDLE_CONV").is_none()
    {
        // [Co, Ci, 3, 3] → nine [Co, Ci] matrices, one per tap.
        let taps = inner
            .weight()
            .to_dtype(DType::F32)?
            .permute((2, 3, 0, 1))?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = match inner.bias() {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        Some(Shifted {
            cin,
            cout,
            taps,
            bias,
        })
    } else {
        None
    };
    Ok(Conv { inner, shifted })
}

/// A convolution: candle's, except 3×3 / stride 1 / padding 1 in f32 on the
/// CPU (almost all of the VAE's work), which runs as nine shifted GEMMs over
/// a once-padded copy of the input (see [`Shifted`]).
struct Conv {
    inner: Conv2d,
    shifted: Option<Shifted>,
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.shifted {
            Some(s) if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 4 => {
                s.forward(x)
            }
            _ => self.inner.forward(x),
        }
    }
}

/// 3×3 convolution, stride 1, zero padding 1, as Σ over the nine taps of
/// W[ky, kx] (Co×Ci) · X shifted by (ky, kx). With the input padded to
/// (H+2)×(W+2), the shifted input of every tap is a plain strided Ci×N
/// matrix (N = H·(W+2): each output row carries two junk columns, dropped at
/// the end), so each tap is one large GEMM accumulated in place. Candle's
/// CPU conv2d builds im2col tiles instead (9·Ci×HW values copied per conv,
/// then many small GEMMs), several times slower at 512².
struct Shifted {
    cin: usize,
    cout: usize,
    /// [3][3][Co][Ci].
    taps: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Shifted {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, ci, h, w) = x.dims4()?;
        if ci != self.cin {
            candle_core::bail!("conv: expected {} input channels, found {ci}", self.cin);
        }
        let co = self.cout;
        let data = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (hp, wp) = (h + 2, w + 2);
        let mut padded = vec![0f32; ci * hp * wp];
        let mut acc = vec![0f32; co * h * wp];
        let mut out = vec![0f32; b * co * h * w];
        let threads = rayon::current_num_threads();
        let n = h * wp - 2;
        for bi in 0..b {
            for c in 0..ci {
                for y in 0..h {
                    let src = &data[((bi * ci + c) * h + y) * w..][..w];
                    padded[c * hp * wp + (y + 1) * wp + 1..][..w].copy_from_slice(src);
                }
            }
            for tap in 0..9 {
                let (ky, kx) = (tap / 3, tap % 3);
                // SAFETY: dst is co × (h·wp) row-major and n ≤ h·wp; lhs is the
                // tap's co × ci matrix; rhs element (c, j) is padded[c·hp·wp +
                // ky·wp + kx + j], and ky·wp + kx + n − 1 ≤ hp·wp − 1.
                unsafe {
                    gemm::gemm(
                        co,
                        n,
                        ci,
                        acc.as_mut_ptr(),
                        1,
                        (h * wp) as isize,
                        tap > 0,
                        self.taps.as_ptr().add(tap * co * ci),
                        1,
                        ci as isize,
                        padded.as_ptr().add(ky * wp + kx),
                        1,
                        (hp * wp) as isize,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        if threads > 1 {
                            gemm::Parallelism::Rayon(threads)
                        } else {
                            gemm::Parallelism::None
                        },
                    );
                }
            }
            for o in 0..co {
                let bias = self.bias.as_ref().map_or(0.0, |v| v[o]);
                for y in 0..h {
                    let src = &acc[o * h * wp + y * wp..][..w];
                    let dst = &mut out[((bi * co + o) * h + y) * w..][..w];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = s + bias;
                    }
                }
            }
        }
        Tensor::from_vec(out, (b, co, h, w), x.device())
    }
}

struct ResnetBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(ResnetBlock {
            norm1: group_norm(cin, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(cout, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            shortcut: if cin != cout {
                Some(conv(cin, cout, 1, 0, 1, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward(x, true)?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward(&h, true)?;
        let h = self.conv2.forward(&h)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the pixels (1×1 convolutions), with a residual.
struct AttnBlock {
    norm: Norm,
    q: Conv,
    k: Conv,
    v: Conv,
    proj_out: Conv,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(AttnBlock {
            norm: group_norm(c, vb.pp("norm"))?,
            q: conv(c, c, 1, 0, 1, vb.pp("q"))?,
            k: conv(c, c, 1, 0, 1, vb.pp("k"))?,
            v: conv(c, c, 1, 0, 1, vb.pp("v"))?,
            proj_out: conv(c, c, 1, 0, 1, vb.pp("proj_out"))?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = self.norm.forward(x, false)?;
        let tokens = |t: Tensor| t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous();
        let q = tokens(self.q.forward(&n)?)?;
        let k = self.k.forward(&n)?.reshape((b, c, h * w))?.contiguous()?;
        let v = tokens(self.v.forward(&n)?)?;
        let att = (q.matmul(&k)? * (1.0 / (c as f64).sqrt()))?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Mid {
            block_1: ResnetBlock::new(c, c, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(c, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(c, c, vb.pp("block_2"))?,
        })
    }
}

impl Module for Mid {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.block_1.forward(x)?;
        let x = self.attn_1.forward(&x)?;
        self.block_2.forward(&x)
    }
}

struct Level {
    blocks: Vec<ResnetBlock>,
    /// Down: pad (0, 1, 0, 1) then a stride-2 3×3 conv; up: nearest ×2 then a 3×3 conv.
    resample: Option<Conv>,
}

struct Encoder {
    conv_in: Conv,
    down: Vec<Level>,
    mid: Mid,
    norm_out: Norm,
    conv_out: Conv,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let conv_in = conv(cfg.in_channels, cfg.ch, 3, 1, 1, vb.pp("conv_in"))?;
        let mut down = Vec::new();
        let mut block_in = cfg.ch;
        for (i, &mult) in cfg.ch_mult.iter().enumerate() {
            let vb_i = vb.pp(format!("down.{i}"));
            let block_out = cfg.ch * mult;
            let mut blocks = Vec::new();
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_i.pp(format!("block.{j}")),
                )?);
                block_in = block_out;
            }
            let resample = if i + 1 < cfg.ch_mult.len() {
                Some(conv(
                    block_in,
                    block_in,
                    3,
                    0,
                    2,
                    vb_i.pp("downsample.conv"),
                )?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        Ok(Encoder {
            conv_in,
            down,
            mid: Mid::new(block_in, vb.pp("mid"))?,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, 2 * cfg.z_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
            if let Some(c) = &level.resample {
                h = c.forward(&h.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(
                    D::Minus2,
                    0,
                    1,
                )?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        let h = self.norm_out.forward(&h, true)?;
        self.conv_out.forward(&h)
    }
}

struct Decoder {
    conv_in: Conv,
    mid: Mid,
    /// In application order (BFL's `up.{n−1}` first).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let conv_in = conv(cfg.z_channels, block_in, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, vb.pp("mid"))?;
        let mut up = Vec::new();
        for i in (0..levels).rev() {
            let vb_i = vb.pp(format!("up.{i}"));
            let block_out = cfg.ch * cfg.ch_mult[i];
            let mut blocks = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    vb_i.pp(format!("block.{j}")),
                )?);
                block_in = block_out;
            }
            let resample = if i != 0 {
                Some(conv(block_in, block_in, 3, 1, 1, vb_i.pp("upsample.conv"))?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        Ok(Decoder {
            conv_in,
            mid,
            up,
            norm_out: group_norm(block_in, vb.pp("norm_out"))?,
            conv_out: conv(block_in, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let mut h = self.mid.forward(&h)?;
        for level in &self.up {
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
            if let Some(c) = &level.resample {
                let (_, _, hh, ww) = h.dims4()?;
                h = c.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        let h = self.norm_out.forward(&h, true)?;
        self.conv_out.forward(&h)
    }
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(GenError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "VAE weights not found (expected FLUX's ae.safetensors or a diffusers AutoencoderKL diffusion_pytorch_model.safetensors)",
            ),
        });
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| GenError::Safetensors {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Strips a known prefix and renames diffusers keys to BFL's.
fn to_bfl(
    path: &Path,
    tensors: HashMap<String, Tensor>,
) -> Result<(Layout, HashMap<String, Tensor>)> {
    let prefix = ["", "vae.", "first_stage_model.", "ae."]
        .into_iter()
        .find(|p| tensors.contains_key(&format!("{p}encoder.conv_in.weight")))
        .ok_or_else(|| GenError::MissingTensor {
            path: path.to_path_buf(),
            name: "encoder.conv_in.weight".into(),
            what: "the FLUX VAE (BFL or diffusers layout)".into(),
            found: sample_keys(&tensors),
        })?;
    let stripped: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
        .collect();
    if stripped.contains_key("encoder.down.0.block.0.conv1.weight") {
        return Ok((Layout::Bfl, stripped));
    }
    if !stripped.contains_key("encoder.down_blocks.0.resnets.0.conv1.weight") {
        return Err(GenError::MissingTensor {
            path: path.to_path_buf(),
            name: format!(
                "{prefix}encoder.down.0.block.0.conv1.weight (BFL) or {prefix}encoder.down_blocks.0.resnets.0.conv1.weight (diffusers)"
            ),
            what: "the FLUX VAE".into(),
            found: sample_keys(&stripped),
        });
    }
    let levels = (0..)
        .take_while(|i| {
            stripped.contains_key(&format!("decoder.up_blocks.{i}.resnets.0.conv1.weight"))
        })
        .count();
    let mut out = HashMap::new();
    for (k, v) in stripped {
        let (name, v) = diffusers_to_bfl(&k, v, levels)?;
        out.insert(name, v);
    }
    Ok((Layout::Diffusers, out))
}

/// One diffusers key in BFL's naming (attention projections become 1×1 convs).
fn diffusers_to_bfl(key: &str, v: Tensor, levels: usize) -> Result<(String, Tensor)> {
    let parts: Vec<&str> = key.split('.').collect();
    let rest = |n: usize| parts[n..].join(".");
    let resnet = |s: &str| s.replace("conv_shortcut", "nin_shortcut");
    let name = match parts.as_slice() {
        [side, "down_blocks", i, "resnets", j, ..] => {
            format!("{side}.down.{i}.block.{j}.{}", resnet(&rest(5)))
        }
        [side, "down_blocks", i, "downsamplers", "0", ..] => {
            format!("{side}.down.{i}.downsample.{}", rest(5))
        }
        [side, "up_blocks", k, "resnets", j, ..] => {
            let i = levels - 1 - k.parse::<usize>().unwrap_or(0);
            format!("{side}.up.{i}.block.{j}.{}", resnet(&rest(5)))
        }
        [side, "up_blocks", k, "upsamplers", "0", ..] => {
            let i = levels - 1 - k.parse::<usize>().unwrap_or(0);
            format!("{side}.up.{i}.upsample.{}", rest(5))
        }
        [side, "mid_block", "resnets", j, ..] => {
            let b = if *j == "0" { "block_1" } else { "block_2" };
            format!("{side}.mid.{b}.{}", resnet(&rest(4)))
        }
        [side, "mid_block", "attentions", "0", proj, ..] => {
            let (to, n) = match *proj {
                "group_norm" => ("norm", 5),
                "to_q" => ("q", 5),
                "to_k" => ("k", 5),
                "to_v" => ("v", 5),
                "to_out" => ("proj_out", 6),
                other => (other, 5),
            };
            let name = format!("{side}.mid.attn_1.{to}.{}", rest(n));
            let v = if to != "norm" && v.rank() == 2 {
                let (o, i) = v.dims2()?;
                v.reshape((o, i, 1, 1))?
            } else {
                v
            };
            return Ok((name, v));
        }
        [side, "conv_norm_out", ..] => format!("{side}.norm_out.{}", rest(2)),
        _ => key.to_string(),
    };
    Ok((name, v))
}

fn sample_keys(tensors: &HashMap<String, Tensor>) -> String {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let n = keys.len();
    let mut s = keys
        .into_iter()
        .take(6)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if n > 6 {
        s.push_str(&format!(" … ({n} tensors)"));
    }
    if n == 0 {
        s = "no tensors".into();
    }
    s
}

fn infer_config(path: &Path, t: &HashMap<String, Tensor>) -> Result<VaeConfig> {
    let dims = |name: &str| -> Result<Vec<usize>> {
        t.get(name)
            .map(|v| v.dims().to_vec())
            .ok_or_else(|| GenError::MissingTensor {
                path: path.to_path_buf(),
                name: name.into(),
                what: "the FLUX VAE".into(),
                found: sample_keys(t),
            })
    };
    let conv_in = dims("encoder.conv_in.weight")?;
    let (ch, in_channels) = (conv_in[0], conv_in[1]);
    let levels = (0..)
        .take_while(|i| t.contains_key(&format!("encoder.down.{i}.block.0.conv1.weight")))
        .count();
    let num_res_blocks = (0..)
        .take_while(|j| t.contains_key(&format!("encoder.down.0.block.{j}.conv1.weight")))
        .count();
    let mut ch_mult = Vec::new();
    for i in 0..levels {
        let out = dims(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0];
        if ch == 0 || out % ch != 0 {
            return Err(GenError::Config(format!(
                "{}: encoder.down.{i} has {out} channels, not a multiple of conv_in's {ch}",
                path.display()
            )));
        }
        ch_mult.push(out / ch);
    }
    let z2 = dims("encoder.conv_out.weight")?[0];
    let out_channels = dims("decoder.conv_out.weight")?[0];
    let cfg = VaeConfig {
        in_channels,
        out_channels,
        ch,
        ch_mult,
        num_res_blocks,
        z_channels: z2 / 2,
    };
    if levels == 0 || num_res_blocks == 0 || z2 % 2 != 0 {
        return Err(GenError::Config(format!(
            "{}: not a FLUX-style VAE: read {cfg:?}",
            path.display()
        )));
    }
    Ok(cfg)
}

/// The tensors an architecture needs, with their shapes.
#[derive(Default)]
struct Wanted(Vec<(String, Vec<usize>)>);

impl Wanted {
    fn conv(&mut self, name: &str, cin: usize, cout: usize, k: usize) {
        self.0
            .push((format!("{name}.weight"), vec![cout, cin, k, k]));
        self.0.push((format!("{name}.bias"), vec![cout]));
    }

    fn norm(&mut self, name: &str, c: usize) {
        self.0.push((format!("{name}.weight"), vec![c]));
        self.0.push((format!("{name}.bias"), vec![c]));
    }

    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cin, cout, 3);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.nin_shortcut"), cin, cout, 1);
        }
    }

    fn mid(&mut self, p: &str, c: usize) {
        self.resnet(&format!("{p}.mid.block_1"), c, c);
        self.resnet(&format!("{p}.mid.block_2"), c, c);
        self.norm(&format!("{p}.mid.attn_1.norm"), c);
        for n in ["q", "k", "v", "proj_out"] {
            self.conv(&format!("{p}.mid.attn_1.{n}"), c, c, 1);
        }
    }

    fn of(cfg: &VaeConfig) -> Wanted {
        let mut w = Wanted::default();
        w.conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3);
        let mut block_in = cfg.ch;
        for (i, m) in cfg.ch_mult.iter().enumerate() {
            for j in 0..cfg.num_res_blocks {
                w.resnet(&format!("encoder.down.{i}.block.{j}"), block_in, cfg.ch * m);
                block_in = cfg.ch * m;
            }
            if i + 1 < cfg.ch_mult.len() {
                w.conv(
                    &format!("encoder.down.{i}.downsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        w.mid("encoder", block_in);
        w.norm("encoder.norm_out", block_in);
        w.conv("encoder.conv_out", block_in, 2 * cfg.z_channels, 3);
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        w.conv("decoder.conv_in", cfg.z_channels, block_in, 3);
        w.mid("decoder", block_in);
        for i in (0..levels).rev() {
            for j in 0..=cfg.num_res_blocks {
                w.resnet(
                    &format!("decoder.up.{i}.block.{j}"),
                    block_in,
                    cfg.ch * cfg.ch_mult[i],
                );
                block_in = cfg.ch * cfg.ch_mult[i];
            }
            if i != 0 {
                w.conv(
                    &format!("decoder.up.{i}.upsample.conv"),
                    block_in,
                    block_in,
                    3,
                );
            }
        }
        w.norm("decoder.norm_out", block_in);
        w.conv("decoder.conv_out", block_in, cfg.out_channels, 3);
        w
    }
}

/// Every tensor the architecture needs, with its shape, so a wrong file
/// fails with the name and shape instead of deep inside a layer.
fn check_tensors(path: &Path, cfg: &VaeConfig, t: &HashMap<String, Tensor>) -> Result<()> {
    for (name, shape) in Wanted::of(cfg).0 {
        match t.get(&name) {
            None => {
                return Err(GenError::MissingTensor {
                    path: path.to_path_buf(),
                    name,
                    what: format!("the VAE read off the file ({cfg:?})"),
                    found: sample_keys(t),
                })
            }
            Some(v) if v.dims() != shape.as_slice() => {
                return Err(GenError::BadShape {
                    path: path.to_path_buf(),
                    name,
                    expected: format!("{shape:?}"),
                    found: v.dims().to_vec(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    /// The shifted-GEMM 3×3 convolution equals candle's conv2d, batch > 1,
    /// non-square, with and without bias.
    #[test]
    fn shifted_conv_equals_candle() {
        let dev = Device::Cpu;
        for (b, ci, co, h, w, bias) in [
            (2, 3, 5, 7, 11, true),
            (1, 8, 4, 1, 1, false),
            (3, 4, 6, 9, 2, true),
        ] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let c = if bias {
                conv(ci, co, 3, 1, 1, vb.pp("c")).unwrap()
            } else {
                let inner = candle_nn::conv2d_no_bias(ci, co, 3, cfg, vb.pp("n")).unwrap();
                let taps = inner
                    .weight()
                    .permute((2, 3, 0, 1))
                    .unwrap()
                    .contiguous()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                Conv {
                    inner,
                    shifted: Some(Shifted {
                        cin: ci,
                        cout: co,
                        taps,
                        bias: None,
                    }),
                }
            };
            assert!(c.shifted.is_some());
            let x = Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev).unwrap();
            let ours = c.forward(&x).unwrap();
            let theirs = c.inner.forward(&x).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let diff = (ours - &theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "{b}×{ci}→{co} {h}×{w}: {diff} vs {scale}"
            );
        }
    }
}
