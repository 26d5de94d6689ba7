//! The VAE's layers: GroupNorm fused on the CPU, 3×3 convolutions as
//! shifted GEMMs, residual and attention blocks, the encoder and decoder.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

use super::VaeConfig;

const NORM_GROUPS: usize = 32;
const NORM_EPS: f64 = 1e-6;

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

pub(super) struct Encoder {
    conv_in: Conv,
    down: Vec<Level>,
    mid: Mid,
    norm_out: Norm,
    conv_out: Conv,
}

impl Encoder {
    pub(super) fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
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

pub(super) struct Decoder {
    conv_in: Conv,
    mid: Mid,
    /// In application order (BFL's `up.{n−1}` first).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv,
}

impl Decoder {
    pub(super) fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
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
