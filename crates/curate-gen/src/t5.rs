//! The T5 v1.1 text encoder (Raffel et al., "Exploring the Limits of
//! Transfer Learning with a Unified Text-to-Text Transformer", JMLR 2020;
//! v1.1: gated-GELU FFN, no dropout, untied embeddings), written after
//! Hugging Face transformers' `modeling_t5.py` (`T5EncoderModel`) and
//! candle-transformers' `models/t5.rs`, with an attention mask for padded
//! batches (candle-transformers' encoder takes none).
//!
//! Loads a Hugging Face folder: `config.json`, `model.safetensors` (keys
//! `shared.weight`, `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight`,
//! `…relative_attention_bias.weight` in block 0 only,
//! `layer.0.layer_norm.weight`, `layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`,
//! `layer.1.layer_norm.weight`, `encoder.final_layer_norm.weight`) and
//! `tokenizer.json` (appends `</s>` = 1; `<pad>` = 0).
//!
//! T5 specifics kept exactly: RMS layer norm without mean or bias; attention
//! logits are *not* scaled by 1/√d_kv; one bucketed relative position bias
//! (bidirectional, from block 0) shared by every layer; gelu_new (tanh).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear};
use serde::Deserialize;

use crate::{GenError, Result};

/// The fields of Hugging Face's `config.json` that the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    #[serde(default = "buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "ffp")]
    pub feed_forward_proj: String,
}

fn buckets() -> usize {
    32
}
fn max_distance() -> usize {
    128
}
fn ln_eps() -> f64 {
    1e-6
}
fn ffp() -> String {
    "gated-gelu".into()
}

struct T5Norm {
    w: Tensor,
    eps: f64,
}

impl T5Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.w)?)
    }
}

struct Layer {
    ln0: T5Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln1: T5Norm,
    wi0: Linear,
    wi1: Option<Linear>,
    wo: Linear,
}

/// The frozen T5 encoder with its tokenizer.
pub struct T5Encoder {
    pub cfg: T5Config,
    embed: Embedding,
    rel_bias: Embedding,
    layers: Vec<Layer>,
    final_ln: T5Norm,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
}

impl T5Encoder {
    /// Loads `dir/config.json`, `dir/model.safetensors`, `dir/tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let io = |p: &Path, e: std::io::Error| GenError::Io {
            path: p.to_path_buf(),
            source: e,
        };
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let cfg: T5Config = serde_json::from_str(&text)
            .map_err(|e| GenError::Config(format!("{}: {e}", cfg_path.display())))?;
        let gated = match cfg.feed_forward_proj.as_str() {
            "gated-gelu" => true,
            "relu" => false,
            other => {
                return Err(GenError::Config(format!(
                    "{}: feed_forward_proj `{other}` (expected gated-gelu or relu)",
                    cfg_path.display()
                )))
            }
        };
        let wpath = dir.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&wpath, device).map_err(|e| GenError::Safetensors {
                path: wpath.clone(),
                why: e.to_string(),
            })?;
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| GenError::MissingTensor {
                path: wpath.clone(),
                name: name.into(),
                what: "the T5 encoder".into(),
                found: tensors
                    .keys()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            if t.dims() != shape {
                return Err(GenError::BadShape {
                    path: wpath.clone(),
                    name: name.into(),
                    expected: format!("{shape:?}"),
                    found: t.dims().to_vec(),
                });
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
        let lin = |n: &str, o: usize, i: usize| -> Result<Linear> {
            Ok(Linear::new(get(n, &[o, i])?, None))
        };
        let norm = |n: &str| -> Result<T5Norm> {
            Ok(T5Norm {
                w: get(n, &[d])?,
                eps: cfg.layer_norm_epsilon,
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.block.{i}.layer");
            layers.push(Layer {
                ln0: norm(&format!("{p}.0.layer_norm.weight"))?,
                q: lin(&format!("{p}.0.SelfAttention.q.weight"), inner, d)?,
                k: lin(&format!("{p}.0.SelfAttention.k.weight"), inner, d)?,
                v: lin(&format!("{p}.0.SelfAttention.v.weight"), inner, d)?,
                o: lin(&format!("{p}.0.SelfAttention.o.weight"), d, inner)?,
                ln1: norm(&format!("{p}.1.layer_norm.weight"))?,
                wi0: lin(
                    &format!(
                        "{p}.1.DenseReluDense.{}.weight",
                        if gated { "wi_0" } else { "wi" }
                    ),
                    ff,
                    d,
                )?,
                wi1: if gated {
                    Some(lin(&format!("{p}.1.DenseReluDense.wi_1.weight"), ff, d)?)
                } else {
                    None
                },
                wo: lin(&format!("{p}.1.DenseReluDense.wo.weight"), d, ff)?,
            });
        }
        let embed = Embedding::new(get("shared.weight", &[cfg.vocab_size, d])?, d);
        let rel_bias = Embedding::new(
            get(
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?,
            cfg.num_heads,
        );
        let final_ln = norm("encoder.final_layer_norm.weight")?;
        let tpath = dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tpath)
            .map_err(|e| GenError::Config(format!("{}: {e}", tpath.display())))?;
        Ok(T5Encoder {
            cfg,
            embed,
            rel_bias,
            layers,
            final_ln,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Token ids of `text` with `</s>` appended, truncated to `max_len`
    /// keeping `</s>` last (transformers' `truncation=True`).
    pub fn tokenize(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| GenError::Config(format!("tokenizer: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > max_len {
            let eos = *ids.last().unwrap_or(&1);
            ids.truncate(max_len.saturating_sub(1));
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Hidden states [B, L, d_model] and the mask [B, L] (f32, 1 = token) of
    /// `texts`, padded to the longest (at most `max_len` tokens).
    pub fn encode(&self, texts: &[&str], max_len: usize) -> Result<(Tensor, Tensor)> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t, max_len))
            .collect::<Result<Vec<_>>>()?;
        let l = ids.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(ids.len() * l);
        let mut mask = Vec::with_capacity(ids.len() * l);
        for row in &ids {
            for j in 0..l {
                flat.push(row.get(j).copied().unwrap_or(0));
                mask.push(if j < row.len() { 1f32 } else { 0.0 });
            }
        }
        let ids = Tensor::from_vec(flat, (texts.len(), l), &self.device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), l), &self.device)?;
        Ok((self.forward(&ids, &mask)?, mask))
    }

    /// `last_hidden_state` for ids [B, L] (u32) and mask [B, L] (1 = token).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let (h, dk) = (self.cfg.num_heads, self.cfg.d_kv);
        let mut x = self.embed.forward(ids)?;
        // position bias [1, H, L, L] + mask bias [B, 1, 1, L]
        let buckets = relative_buckets(
            l,
            self.cfg.relative_attention_num_buckets,
            self.cfg.relative_attention_max_distance,
        );
        let buckets = Tensor::from_vec(buckets, (l, l), &self.device)?;
        let pos = self
            .rel_bias
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        let mbias =
            ((mask.to_dtype(DType::F32)? - 1.0)? * f32::MAX as f64)?.reshape((b, 1, 1, l))?;
        let bias = pos.broadcast_add(&mbias)?;
        for layer in &self.layers {
            let n = layer.ln0.forward(&x)?;
            let heads = |lin: &Linear| -> Result<Tensor> {
                Ok(lin
                    .forward(&n)?
                    .reshape((b, l, h, dk))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (heads(&layer.q)?, heads(&layer.k)?, heads(&layer.v)?);
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let a = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h * dk))?;
            x = (x + layer.o.forward(&a)?)?;
            let n = layer.ln1.forward(&x)?;
            let f = match &layer.wi1 {
                Some(wi1) => (layer.wi0.forward(&n)?.gelu()? * wi1.forward(&n)?)?,
                None => layer.wi0.forward(&n)?.relu()?,
            };
            x = (x + layer.wo.forward(&f)?)?;
        }
        self.final_ln.forward(&x)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// T5's bidirectional bucket of relative position (key − query), as
/// `T5Attention._relative_position_bucket` (log part in f32, like torch).
pub fn relative_buckets(l: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    let nb = num_buckets / 2;
    let max_exact = nb / 2;
    let mut out = Vec::with_capacity(l * l);
    for q in 0..l {
        for k in 0..l {
            let rel = k as i64 - q as i64;
            let mut bucket = if rel > 0 { nb } else { 0 };
            let r = rel.unsigned_abs() as usize;
            bucket += if r < max_exact {
                r
            } else {
                let large = max_exact as f32
                    + ((r as f32 / max_exact as f32).ln()
                        / (max_distance as f32 / max_exact as f32).ln()
                        * (nb - max_exact) as f32);
                (large as usize).min(nb - 1)
            };
            out.push(bucket as u32);
        }
    }
    out
}

/// A per-caption cache of encoder outputs (the encoder is frozen):
/// caption → ([L, d_model] hidden states of its real tokens), holding at
/// most `capacity` bytes of them: the oldest captions are evicted first and
/// encoded again when they come back (each caption is encoded on its own,
/// so a re-encoded row is the same as the evicted one).
pub struct TextCache {
    map: HashMap<String, Tensor>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
    capacity: usize,
}

impl Default for TextCache {
    /// Unbounded (tests; training bounds it with `--text-cache-mb`).
    fn default() -> Self {
        Self::with_capacity(usize::MAX)
    }
}

impl TextCache {
    /// A cache holding at most `capacity` bytes of hidden states.
    pub fn with_capacity(capacity: usize) -> Self {
        TextCache {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Bytes of hidden states held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Captions held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Hidden states [B, L, D] and mask [B, L] for `texts`, padded to the
    /// longest, encoding (one by one) only captions not held. The batch's
    /// own captions are never evicted while it is being built.
    pub fn batch(
        &mut self,
        enc: &T5Encoder,
        texts: &[&str],
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let mut fresh: HashMap<&str, Tensor> = HashMap::new();
        for t in texts {
            if !self.map.contains_key(*t) && !fresh.contains_key(*t) {
                let (h, _) = enc.encode(&[t], max_len)?;
                fresh.insert(t, h.squeeze(0)?);
            }
        }
        let held: Vec<Tensor> = texts
            .iter()
            .map(|t| fresh.get(*t).unwrap_or_else(|| &self.map[*t]).clone())
            .collect();
        for (t, h) in fresh {
            let size = h.elem_count() * h.dtype().size_in_bytes();
            self.bytes += size;
            self.map.insert(t.to_string(), h);
            self.order.push_back(t.to_string());
        }
        while self.bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(h) = self.map.remove(&old) {
                self.bytes -= h.elem_count() * h.dtype().size_in_bytes();
            }
        }
        let rows: Vec<&Tensor> = held.iter().collect();
        let l = rows
            .iter()
            .map(|r| r.dim(0).unwrap_or(0))
            .max()
            .unwrap_or(1);
        let d = enc.cfg.d_model;
        let mut padded = Vec::with_capacity(rows.len());
        let mut mask = Vec::with_capacity(rows.len() * l);
        for r in rows {
            let n = r.dim(0)?;
            let row = if n < l {
                Tensor::cat(
                    &[r, &Tensor::zeros((l - n, d), DType::F32, enc.device())?],
                    0,
                )?
            } else {
                r.clone()
            };
            padded.push(row);
            mask.extend((0..l).map(|j| if j < n { 1f32 } else { 0.0 }));
        }
        Ok((
            Tensor::stack(&padded, 0)?,
            Tensor::from_vec(mask, (texts.len(), l), enc.device())?,
        ))
    }
}
