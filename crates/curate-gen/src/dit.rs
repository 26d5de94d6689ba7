//! The oboro DiT (oboro technical report §III, §IV-C): a diffusion
//! transformer with joint self-attention over [text tokens; BOS; image
//! tokens].
//!
//! - latents [B, 16, H, W] → pixel-unshuffle (patch 2) → linear → image tokens;
//!   frozen T5 hidden states → linear → text tokens; a learned BOS token;
//!   t → sinusoidal features (DiT's `TimestepEmbedder`) → MLP → c.
//! - each block: RMSNorm·(1 + scale(c)) → joint attention (QK RMS-norm, 2D
//!   RoPE on image positions only, text padding masked out of the keys) →
//!   RMSNorm → ·gate(c) → residual; the same sandwich around a SwiGLU MLP.
//!   scale and gate come from a per-block linear of SiLU(c), zero-initialised
//!   (adaLN-Zero, Peebles & Xie 2023), so every block starts as the identity.
//! - Multi-Multi-Head Attention: the head count is set per block from
//!   [`DitConfig::heads`] (the report's 8/16/24/48 in four equal groups).
//! - final RMSNorm·(1 + scale(c)) → linear (zero-initialised) → unpatchify.
//!
//! 2D RoPE (Su et al. RoFormer; the axial form of Heo et al. 2024): of each
//! head's D dims, the pairs (j, j + D/2) for j < D/4 rotate by the token's
//! row, the rest by its column, with frequencies θ^(−4k/D). Text and BOS
//! tokens are not rotated.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{GenError, Result};

/// Every size of the model. Written in the `model` table of
/// pipelines/configs/dit-*.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitConfig {
    /// Latent channels (16 for the FLUX VAE).
    pub latent_channels: usize,
    /// Pixel-unshuffle factor (2).
    pub patch_size: usize,
    /// Token width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Head schedule: one count per block (`depth` entries), or G counts for
    /// G equal groups of blocks (`depth` divisible by G), e.g. [8, 16, 24, 48].
    pub heads: Vec<usize>,
    /// SwiGLU hidden width.
    pub mlp_hidden: usize,
    /// Text encoder width (T5 d_model: 4096 for v1.1 XXL).
    pub text_dim: usize,
    /// Text tokens kept per caption (T5 tokens, `</s>` included).
    pub max_text_tokens: usize,
    /// Sinusoidal time-feature width.
    #[serde(default = "default_freq")]
    pub time_freq_dim: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
}

fn default_freq() -> usize {
    256
}
fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-6
}

impl DitConfig {
    /// The head count of every block, checked: the width divides by each and
    /// each head's width divides by 4 (2D RoPE rotates pairs on two axes).
    pub fn head_counts(&self) -> Result<Vec<usize>> {
        let g = self.heads.len();
        if g == 0 || self.depth == 0 {
            return Err(GenError::Config(format!(
                "depth {} with head schedule {:?}: both must be non-empty",
                self.depth, self.heads
            )));
        }
        let per_block: Vec<usize> = if g == self.depth {
            self.heads.clone()
        } else if self.depth % g == 0 {
            (0..self.depth)
                .map(|i| self.heads[i / (self.depth / g)])
                .collect()
        } else {
            return Err(GenError::Config(format!(
                "head schedule {:?} has {g} groups, which do not split depth {} equally \
                 (give {g} groups with depth divisible by {g}, or one count per block)",
                self.heads, self.depth
            )));
        };
        for (i, &h) in per_block.iter().enumerate() {
            if h == 0 || self.hidden_size % h != 0 || (self.hidden_size / h) % 4 != 0 {
                return Err(GenError::Config(format!(
                    "block {i}: width {} does not split into {h} heads of a width divisible by 4 \
                     (2D RoPE rotates pairs of dims along two axes)",
                    self.hidden_size
                )));
            }
        }
        Ok(per_block)
    }

    pub fn validate(&self) -> Result<()> {
        self.head_counts()?;
        if self.latent_channels == 0 || self.patch_size == 0 || self.mlp_hidden == 0 {
            return Err(GenError::Config(
                "latent_channels, patch_size, mlp_hidden must be > 0".into(),
            ));
        }
        if self.time_freq_dim % 2 != 0 {
            return Err(GenError::Config(format!(
                "time_freq_dim {} must be even",
                self.time_freq_dim
            )));
        }
        Ok(())
    }

    pub fn patch_dim(&self) -> usize {
        self.latent_channels * self.patch_size * self.patch_size
    }
}

/// RMSNorm with a learned gain (computed with plain ops so it differentiates).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        Ok(x.broadcast_mul(&self.weight)?)
    }
}

fn linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Ok(if bias {
        candle_nn::linear(i, o, vb)?
    } else {
        candle_nn::linear_no_bias(i, o, vb)?
    })
}

/// Joint attention with QK RMS-norm and partial 2D RoPE.
#[derive(Debug, Clone)]
pub struct Attention {
    pub heads: usize,
    qkv: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    proj: Linear,
}

impl Attention {
    fn new(width: usize, heads: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let hd = width / heads;
        Ok(Attention {
            heads,
            qkv: linear(width, 3 * width, true, vb.pp("qkv"))?,
            q_norm: RmsNorm::new(hd, eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(hd, eps, vb.pp("k_norm"))?,
            proj: linear(width, width, true, vb.pp("proj"))?,
        })
    }

    /// x [B, S, W]; rope (cos, sin) [S, hd]; bias [B, 1, 1, S] additive key mask.
    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, s, w) = x.dims3()?;
        let hd = w / self.heads;
        let qkv = self.qkv.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * w, w)?
                .reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = apply_rope(&self.q_norm.forward(&split(0)?)?, rope)?;
        let k = apply_rope(&self.k_norm.forward(&split(1)?)?, rope)?;
        let v = split(2)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match bias {
            Some(bias) => scores.broadcast_add(bias)?,
            None => scores,
        };
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let o = p.matmul(&v)?.transpose(1, 2)?.reshape((b, s, w))?;
        Ok(self.proj.forward(&o)?)
    }
}

/// out = x·cos + rotate_half(x)·sin, cos/sin [S, hd] broadcast over [B, H].
pub fn apply_rope(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// cos/sin tables [S, hd] for `prefix` unrotated tokens then an h×w grid.
pub fn rope_tables(
    prefix: usize,
    h: usize,
    w: usize,
    hd: usize,
    theta: f64,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let quarter = hd / 4;
    let freqs: Vec<f64> = (0..quarter)
        .map(|k| theta.powf(-(4.0 * k as f64) / hd as f64))
        .collect();
    let s = prefix + h * w;
    let mut cos = vec![1f32; s * hd];
    let mut sin = vec![0f32; s * hd];
    for r in 0..h {
        for c in 0..w {
            let tok = prefix + r * w + c;
            for j in 0..hd / 2 {
                let angle = if j < quarter {
                    r as f64 * freqs[j]
                } else {
                    c as f64 * freqs[j - quarter]
                };
                let (sn, cs) = angle.sin_cos();
                for jj in [j, j + hd / 2] {
                    cos[tok * hd + jj] = cs as f32;
                    sin[tok * hd + jj] = sn as f32;
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (s, hd), dev)?,
        Tensor::from_vec(sin, (s, hd), dev)?,
    ))
}

#[derive(Debug, Clone)]
pub struct SwiGlu {
    w1: Linear,
    w3: Linear,
    w2: Linear,
}

impl SwiGlu {
    fn new(width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(SwiGlu {
            w1: linear(width, hidden, false, vb.pp("w1"))?,
            w3: linear(width, hidden, false, vb.pp("w3"))?,
            w2: linear(hidden, width, false, vb.pp("w2"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.w1.forward(x)?.silu()?;
        Ok(self.w2.forward(&(a * self.w3.forward(x)?)?)?)
    }
}

/// One block: sandwich-normalised attention and SwiGLU, time-conditioned.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn: Attention,
    norm1: RmsNorm,
    norm2: RmsNorm,
    norm3: RmsNorm,
    norm4: RmsNorm,
    mlp: SwiGlu,
    adaln: Linear,
}

impl Block {
    pub fn new(cfg: &DitConfig, heads: usize, vb: VarBuilder) -> Result<Self> {
        let w = cfg.hidden_size;
        let e = cfg.norm_eps;
        Ok(Block {
            attn: Attention::new(w, heads, e, vb.pp("attn"))?,
            norm1: RmsNorm::new(w, e, vb.pp("norm1"))?,
            norm2: RmsNorm::new(w, e, vb.pp("norm2"))?,
            norm3: RmsNorm::new(w, e, vb.pp("norm3"))?,
            norm4: RmsNorm::new(w, e, vb.pp("norm4"))?,
            mlp: SwiGlu::new(w, cfg.mlp_hidden, vb.pp("mlp"))?,
            adaln: linear(w, 4 * w, true, vb.pp("adaln"))?,
        })
    }

    /// x [B, S, W]; c_act = SiLU(c) [B, W].
    pub fn forward(
        &self,
        x: &Tensor,
        c_act: &Tensor,
        rope: &(Tensor, Tensor),
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let w = x.dim(2)?;
        let m = self.adaln.forward(c_act)?.unsqueeze(1)?; // [B, 1, 4W]
        let part = |i: usize| m.narrow(2, i * w, w);
        let (s1, g1, s2, g2) = (part(0)?, part(1)?, part(2)?, part(3)?);
        let h = self.norm1.forward(x)?.broadcast_mul(&(s1 + 1.0)?)?;
        let a = self.attn.forward(&h, rope, bias)?;
        let x = (x + self.norm2.forward(&a)?.broadcast_mul(&g1)?)?;
        let h = self.norm3.forward(&x)?.broadcast_mul(&(s2 + 1.0)?)?;
        let f = self.mlp.forward(&h)?;
        Ok((&x + self.norm4.forward(&f)?.broadcast_mul(&g2)?)?)
    }
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Dit {
    pub cfg: DitConfig,
    pub blocks: Vec<Block>,
    x_embed: Linear,
    text_embed: Linear,
    bos: Tensor,
    t_mlp1: Linear,
    t_mlp2: Linear,
    final_norm: RmsNorm,
    final_adaln: Linear,
    final_linear: Linear,
}

impl Dit {
    /// Builds the model, validating the head schedule first.
    pub fn new(cfg: &DitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let heads = cfg.head_counts()?;
        let w = cfg.hidden_size;
        let blocks = heads
            .iter()
            .enumerate()
            .map(|(i, &h)| Block::new(cfg, h, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dit {
            cfg: cfg.clone(),
            blocks,
            x_embed: linear(cfg.patch_dim(), w, true, vb.pp("x_embed"))?,
            text_embed: linear(cfg.text_dim, w, true, vb.pp("text_embed"))?,
            bos: vb.get_with_hints(
                (1, 1, w),
                "bos",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            t_mlp1: linear(cfg.time_freq_dim, w, true, vb.pp("t_embed.0"))?,
            t_mlp2: linear(w, w, true, vb.pp("t_embed.2"))?,
            final_norm: RmsNorm::new(w, cfg.norm_eps, vb.pp("final_norm"))?,
            final_adaln: linear(w, w, true, vb.pp("final_adaln"))?,
            final_linear: linear(w, cfg.patch_dim(), true, vb.pp("final_linear"))?,
        })
    }

    /// Per-block head counts of the built model.
    pub fn block_heads(&self) -> Vec<usize> {
        self.blocks.iter().map(|b| b.attn.heads).collect()
    }

    /// v_θ(t, x): x [B, C, H, W], t [B] in [0, 1], text [B, L, text_dim],
    /// text_mask [B, L] (1 = token, 0 = padding) → [B, C, H, W].
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        text: &Tensor,
        text_mask: &Tensor,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        if c != self.cfg.latent_channels || h % p != 0 || w % p != 0 {
            return Err(GenError::Config(format!(
                "latents {:?}: expected {} channels and sides divisible by patch {p}",
                x.dims(),
                self.cfg.latent_channels
            )));
        }
        let (hp, wp) = (h / p, w / p);
        let dev = x.device();
        let img = patchify(x, p)?; // [B, N, C·p·p]
        let img = self.x_embed.forward(&img)?;
        let txt = self.text_embed.forward(text)?;
        let l = txt.dim(1)?;
        let bos = self.bos.broadcast_as((b, 1, self.cfg.hidden_size))?;
        let mut xs = Tensor::cat(&[&txt, &bos, &img], 1)?;

        let temb = self.t_mlp2.forward(
            &self
                .t_mlp1
                .forward(&timestep_features(t, self.cfg.time_freq_dim)?)?
                .silu()?,
        )?;
        let c_act = temb.silu()?;

        let n = hp * wp;
        let keep = Tensor::cat(
            &[
                &text_mask.to_dtype(DType::F32)?,
                &Tensor::ones((b, 1 + n), DType::F32, dev)?,
            ],
            1,
        )?;
        let bias = ((keep - 1.0)? * 1e9)?.reshape((b, 1, 1, l + 1 + n))?;

        let mut ropes: HashMap<usize, (Tensor, Tensor)> = HashMap::new();
        for blk in &self.blocks {
            let hd = self.cfg.hidden_size / blk.attn.heads;
            if let std::collections::hash_map::Entry::Vacant(e) = ropes.entry(hd) {
                e.insert(rope_tables(l + 1, hp, wp, hd, self.cfg.rope_theta, dev)?);
            }
            xs = blk.forward(&xs, &c_act, &ropes[&hd], Some(&bias))?;
        }
        let img = xs.narrow(1, l + 1, n)?;
        let scale = self.final_adaln.forward(&c_act)?.unsqueeze(1)?;
        let out = self
            .final_norm
            .forward(&img)?
            .broadcast_mul(&(scale + 1.0)?)?;
        let out = self.final_linear.forward(&out)?;
        unpatchify(&out, c, hp, wp, p)
    }
}

/// DiT's sinusoidal timestep features of t·1000: [cos(t f), sin(t f)].
pub fn timestep_features(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let dev = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    let args = (t.to_dtype(DType::F32)?.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    Ok(Tensor::cat(&[&args.cos()?, &args.sin()?], 1)?)
}

/// Pixel-unshuffle [B, C, H, W] → tokens [B, (H/p)(W/p), C·p·p] (channel-major
/// within a patch, like torch's `pixel_unshuffle`).
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let x = x.reshape((b, c, h / p, p, w / p, p))?;
    let x = x.permute((0, 2, 4, 1, 3, 5))?; // B, h, w, C, p, p
    Ok(x.contiguous()?.reshape((b, (h / p) * (w / p), c * p * p))?)
}

/// Inverse of [`patchify`].
pub fn unpatchify(x: &Tensor, c: usize, hp: usize, wp: usize, p: usize) -> Result<Tensor> {
    let b = x.dim(0)?;
    let x = x.reshape((b, hp, wp, c, p, p))?;
    let x = x.permute((0, 3, 1, 4, 2, 5))?; // B, C, h, p, w, p
    Ok(x.contiguous()?.reshape((b, c, hp * p, wp * p))?)
}

/// Reads a DiT config from a JSON file: either the bare model table or a
/// file with a `model` table (pipelines/configs/dit-*.json).
pub fn load_config(path: &std::path::Path) -> Result<DitConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| GenError::Io {
        path: path.into(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| GenError::Config(format!("{}: {e}", path.display())))?;
    let m = v.get("model").cloned().unwrap_or(v);
    let cfg: DitConfig = serde_json::from_value(m)
        .map_err(|e| GenError::Config(format!("{}: model: {e}", path.display())))?;
    cfg.validate()
        .map_err(|e| GenError::Config(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}
