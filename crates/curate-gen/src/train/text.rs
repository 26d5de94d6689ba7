//! The trainer's text conditioning: either the frozen T5 run on the fly
//! (a bounded per-caption cache, [`crate::t5::TextCache`]) or the
//! `encode-text` stages read beside the latents ([`TextStore`]), which
//! mirror the latents shards row for row. Both give, per batch, hidden
//! states [B, L, D] padded with zeros to the longest text and a mask [B, L].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use curate_io::text_embeddings::{self, TextMeta, TextRow, UNCONDITIONAL_FILE};
use curate_stage::Upstream;

use crate::t5::T5Encoder;
use crate::{GenError, Result};

/// Where the trainer's text conditioning comes from.
pub enum TextSource<'a> {
    /// Captions encoded on the fly by T5 (`--text-encoder`).
    Encoder(&'a T5Encoder),
    /// Hidden states read from `encode-text` stages (`--text`).
    Stored(TextStore),
}

impl<'a> From<&'a T5Encoder> for TextSource<'a> {
    fn from(enc: &'a T5Encoder) -> Self {
        TextSource::Encoder(enc)
    }
}

impl TextSource<'_> {
    /// Width of the hidden states.
    pub fn d_model(&self) -> usize {
        match self {
            TextSource::Encoder(e) => e.cfg.d_model,
            TextSource::Stored(s) => s.meta.d_model,
        }
    }
}

/// The hidden states of one text: `tokens × d_model` f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Hidden {
    pub tokens: usize,
    pub values: Vec<f32>,
}

/// The `encode-text` stages of a set of latents stages: per latents shard,
/// the text shard at the same position, and the empty text.
pub struct TextStore {
    pub meta: TextMeta,
    /// Latents shard file → its text shard file.
    shards: HashMap<PathBuf, PathBuf>,
    unconditional: Arc<Hidden>,
}

impl TextStore {
    /// Matches every latents stage of `latents` with the `encode-text` stage
    /// of `texts` made from it (by the latents stage's fingerprint), shard for
    /// shard. Every latents shard must have its text shard.
    pub fn open(texts: &[PathBuf], latents: &[PathBuf]) -> Result<Self> {
        let texts: Vec<Upstream> = texts
            .iter()
            .map(|d| Upstream::open(d, &["text_embeddings"]))
            .collect::<std::result::Result<_, _>>()?;
        let mut shards = HashMap::new();
        let mut meta: Option<(TextMeta, PathBuf)> = None;
        for dir in latents {
            let lat = Upstream::open(dir, &["latents"])?;
            let fp = lat.fingerprint();
            let Some(text) = texts.iter().find(|t| t.manifest.inputs.fingerprint == fp) else {
                return Err(GenError::Config(format!(
                    "latents stage {}: no text shards for its keys; expected an encode-text stage made from it \
                     among --text, found {}",
                    dir.display(),
                    describe(&texts)
                )));
            };
            for rec in &lat.shards {
                let found = text.shards.iter().find(|t| t.shard == rec.shard);
                let Some(trec) = found.filter(|t| t.records == rec.records) else {
                    return Err(GenError::Config(format!(
                        "latents shard {}: expected text shard {} of {} with {} rows, found {}",
                        lat.shard_path(rec).display(),
                        rec.shard,
                        text.dir.display(),
                        rec.records,
                        found.map_or("none".to_string(), |t| format!("{} rows", t.records))
                    )));
                };
                let path = text.shard_path(trec);
                let this = TextMeta::read(&path)?;
                match &meta {
                    Some((m, first)) if (m.d_model, m.max_length) != (this.d_model, this.max_length) => {
                        return Err(GenError::Config(format!(
                            "text shards disagree: {} has d_model {} and max_length {}, {} has {} and {}",
                            first.display(),
                            m.d_model,
                            m.max_length,
                            path.display(),
                            this.d_model,
                            this.max_length
                        )))
                    }
                    None => meta = Some((this, path.clone())),
                    _ => {}
                }
                shards.insert(lat.shard_path(rec), path);
            }
        }
        let Some((meta, _)) = meta else {
            return Err(GenError::Config("no text shards to read".into()));
        };
        let text = &texts[0];
        let uncond_path = text.output(UNCONDITIONAL_FILE);
        let row = text_embeddings::read_all(&uncond_path)?
            .into_iter()
            .next()
            .filter(TextRow::is_ok)
            .ok_or_else(|| {
                GenError::Config(format!(
                    "{}: expected one ok row (the empty text)",
                    uncond_path.display()
                ))
            })?;
        let unconditional = Arc::new(to_hidden(&row, meta.d_model)?);
        Ok(TextStore {
            meta,
            shards,
            unconditional,
        })
    }

    /// The text shard of the latents shard `latents`.
    pub fn shard_for(&self, latents: &Path) -> Result<&Path> {
        self.shards
            .get(latents)
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                GenError::Config(format!(
                    "latents shard {}: no text shard",
                    latents.display()
                ))
            })
    }

    /// The empty text (caption dropout, rows without a caption).
    pub fn unconditional(&self) -> Arc<Hidden> {
        self.unconditional.clone()
    }

    /// Rows `range` of the text shard of `latents`, checked against the
    /// latents keys `keys` (one per row of the range): ok rows give their
    /// hidden states, `no_caption` rows the empty text.
    pub fn read(
        &self,
        latents: &Path,
        first_row: u64,
        keys: &[(usize, String)],
        rows: usize,
    ) -> Result<HashMap<usize, Arc<Hidden>>> {
        let path = self.shard_for(latents)?;
        let got = text_embeddings::read_range(path, first_row..first_row + rows as u64)?;
        let mut out = HashMap::with_capacity(keys.len());
        for (row, key) in keys {
            let t = &got[*row];
            if t.key != *key {
                return Err(GenError::Config(format!(
                    "{} row {}: key `{}` in the text shard, expected `{key}` as in {} (the text stage was made \
                     from other latents)",
                    path.display(),
                    first_row + *row as u64,
                    t.key,
                    latents.display()
                )));
            }
            let h = if t.is_ok() {
                Arc::new(to_hidden(t, self.meta.d_model)?)
            } else if t.reason.as_deref() == Some("no_caption") {
                self.unconditional()
            } else {
                return Err(GenError::Config(format!(
                    "{} row {}: text of `{key}` failed ({}) for an ok latent",
                    path.display(),
                    first_row + *row as u64,
                    t.error.as_deref().unwrap_or("no message")
                )));
            };
            out.insert(*row, h);
        }
        Ok(out)
    }
}

fn to_hidden(row: &TextRow, d: usize) -> Result<Hidden> {
    Ok(Hidden {
        tokens: row.num_tokens.unwrap_or(0) as usize,
        values: row.to_f32(d)?,
    })
}

fn describe(texts: &[Upstream]) -> String {
    if texts.is_empty() {
        return "none".into();
    }
    texts
        .iter()
        .map(|t| {
            format!(
                "{} (made from {})",
                t.dir.display(),
                t.manifest.inputs.location
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hidden states [B, L, D] and mask [B, L] of `rows`, zero-padded to the
/// longest (as [`crate::t5::TextCache::batch`] pads).
pub fn pad(rows: &[Arc<Hidden>], d: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let l = rows.iter().map(|r| r.tokens).max().unwrap_or(1).max(1);
    let mut flat = Vec::with_capacity(rows.len() * l * d);
    let mut mask = Vec::with_capacity(rows.len() * l);
    for r in rows {
        flat.extend_from_slice(&r.values);
        flat.resize(flat.len() + (l - r.tokens) * d, 0.0);
        mask.extend((0..l).map(|j| if j < r.tokens { 1f32 } else { 0.0 }));
    }
    Ok((
        Tensor::from_vec(flat, (rows.len(), l, d), dev)?,
        Tensor::from_vec(mask, (rows.len(), l), dev)?,
    ))
}
