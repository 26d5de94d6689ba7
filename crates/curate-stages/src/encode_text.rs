//! `encode-text`: the training texts of a latents stage encoded once by
//! the frozen T5 encoder, so training never runs T5 (as SD3/FLUX trainers
//! cache their text-encoder outputs).
//!
//! Shard `s` mirrors latents shard `s` row for row: the same keys in the
//! same order, one output row group per latents row group. A row holds
//! the `last_hidden_state` of the caption's real tokens only (no padding),
//! in bf16 by default. Rows whose latent failed or has no caption are
//! `error` rows (`source_error`, `no_caption`). Once every shard is
//! complete the stage writes `unconditional.parquet`, the encoding of the
//! empty text that caption dropout trains on.
//!
//! Texts of a row group are encoded in batches of equal token count, so no
//! batch is padded: a row's hidden states are those of the caption encoded
//! alone, as the trainer's on-the-fly cache encodes it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_schema::SchemaRef;
use candle_core::{DType, Tensor};
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageDir, StageSpec};
use curate_gen::t5::T5Encoder;
use curate_io::latents::{self, LatentDtype};
use curate_io::text_embeddings::{self, TextMeta, TextRow, UNCONDITIONAL_FILE};
use curate_stage::{bail, Context, Result, ShardOutput, Stage, StageError, Upstream};

/// What `curate encode-text` is asked to do.
#[derive(Debug, Clone)]
pub struct EncodeTextSettings {
    /// The latents stage whose captions are encoded.
    pub input: PathBuf,
    /// T5 encoder folder (config.json, model.safetensors, tokenizer.json).
    pub text_encoder: PathBuf,
    /// Model id stored in the metadata; `None`: the folder's name.
    pub model_id: Option<String>,
    /// candle device: cpu, cuda or cuda:N.
    pub device: String,
    /// Token limit (</s> kept last): the DiT config's `max_text_tokens`.
    pub max_length: usize,
    /// `bf16` or `f32`.
    pub dtype: LatentDtype,
    /// Texts per encoder call (of one token count).
    pub batch_size: usize,
}

/// The `encode-text` stage, its encoder loaded.
pub struct EncodeText {
    settings: EncodeTextSettings,
    upstream: Upstream,
    encoder: T5Encoder,
    schema: SchemaRef,
    config: serde_json::Value,
    tokens: u64,
}

impl EncodeText {
    /// Opens the latents stage (which must carry captions) and loads T5.
    pub fn open(settings: &EncodeTextSettings) -> Result<EncodeText> {
        let s = settings;
        if s.dtype == LatentDtype::F16 {
            bail!("--dtype f16: expected bf16 or f32 (T5 activations overflow f16)");
        }
        if s.batch_size == 0 || s.max_length == 0 {
            bail!("--batch-size and --max-length must be > 0");
        }
        let upstream = Upstream::open(&s.input, &["latents"])?;
        check_has_captions(&upstream)?;
        let device = curate_gen::device(&s.device).map_err(StageError::other)?;
        let encoder = T5Encoder::load(&s.text_encoder, &device)
            .with_context(|| format!("loading the T5 encoder from {}", s.text_encoder.display()))?;
        let model = s.model_id.clone().unwrap_or_else(|| {
            s.text_encoder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "t5".into())
        });
        let meta = TextMeta {
            model: model.clone(),
            d_model: encoder.cfg.d_model,
            max_length: s.max_length,
            dtype: s.dtype,
            latents: s.input.display().to_string(),
        };
        let schema = text_embeddings::arrow_schema(&meta)?;
        let weights = s.text_encoder.join("model.safetensors");
        let config = serde_json::json!({
            "model": model,
            "model_bytes": std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0),
            "d_model": encoder.cfg.d_model,
            "num_layers": encoder.cfg.num_layers,
            "max_length": s.max_length,
            "dtype": s.dtype.name(),
        });
        Ok(EncodeText {
            settings: s.clone(),
            upstream,
            encoder,
            schema,
            config,
            tokens: 0,
        })
    }

    /// Hidden states of `texts`, each encoded without padding: texts of
    /// equal token count go through the encoder together.
    fn encode(&mut self, texts: &[&str]) -> Result<Vec<(usize, Vec<f32>)>> {
        let max = self.settings.max_length;
        let mut by_len: BTreeMap<usize, Vec<(usize, Vec<u32>)>> = BTreeMap::new();
        for (i, t) in texts.iter().enumerate() {
            let ids = self.encoder.tokenize(t, max).context("tokenizing")?;
            by_len.entry(ids.len()).or_default().push((i, ids));
        }
        let d = self.encoder.cfg.d_model;
        let dev = self.encoder.device().clone();
        let mut out: Vec<(usize, Vec<f32>)> = vec![(0, Vec::new()); texts.len()];
        for (l, rows) in by_len {
            for chunk in rows.chunks(self.settings.batch_size) {
                let b = chunk.len();
                let flat: Vec<u32> = chunk.iter().flat_map(|(_, ids)| ids.clone()).collect();
                let ids = Tensor::from_vec(flat, (b, l), &dev).map_err(StageError::other)?;
                let mask = Tensor::ones((b, l), DType::F32, &dev).map_err(StageError::other)?;
                let h = self
                    .encoder
                    .forward(&ids, &mask)
                    .context("running the T5 encoder")?;
                let h: Vec<f32> = h
                    .flatten_all()
                    .and_then(|t| t.to_vec1())
                    .map_err(StageError::other)?;
                for (j, (i, _)) in chunk.iter().enumerate() {
                    out[*i] = (l, h[j * l * d..(j + 1) * l * d].to_vec());
                }
                self.tokens += (b * l) as u64;
            }
        }
        Ok(out)
    }
}

/// A latents stage without captions (encode-latents run without
/// `--captions`) has nothing to encode.
fn check_has_captions(up: &Upstream) -> Result<()> {
    let Some(first) = up.shards.first() else {
        return Ok(());
    };
    let path = up.shard_path(first);
    let mix = latents::metadata(&path, "caption_mix")?.unwrap_or_default();
    if mix.is_empty() {
        bail!(
            "input {}: expected a latents stage with captions (encode-latents --captions …), \
             found one without (its shards' caption_mix is empty)",
            up.dir.display()
        );
    }
    Ok(())
}

impl Stage for EncodeText {
    fn name(&self) -> &str {
        "encode-text"
    }

    fn table(&self) -> &'static TableSchema {
        text_embeddings::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .upstream
            .spec_for("encode-text", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    fn unit(&self) -> &str {
        "texts"
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let input = self.upstream.shards[shard as usize].clone();
        let path = self.upstream.shard_path(&input);
        let schema = self.schema.clone();
        let dtype = self.settings.dtype;
        let mut shard_out = out.begin(shard, text_embeddings::table(), schema.clone(), 1 << 20)?;
        for rg in 0..latents::row_groups(&path)? {
            let mut keys = Vec::new();
            let mut wanted: Vec<Option<String>> = Vec::new();
            let mut rows: Vec<Option<TextRow>> = Vec::new();
            for b in latents::read_row_group(&path, rg, &["key", "status", "caption"])? {
                let col = |n: &str| {
                    b.column_by_name(n)
                        .and_then(|c| c.as_string_opt::<i32>())
                        .with_context(|| format!("{}: no utf8 column `{n}`", path.display()))
                };
                let (key, status, caption) = (col("key")?, col("status")?, col("caption")?);
                for i in 0..b.num_rows() {
                    let k = key.value(i).to_string();
                    let cap = caption.is_valid(i).then(|| caption.value(i).to_string());
                    if status.value(i) != "ok" {
                        rows.push(Some(TextRow::failed(
                            &k,
                            cap,
                            "source_error",
                            "the latent failed upstream".into(),
                        )));
                        wanted.push(None);
                    } else if let Some(c) = cap {
                        rows.push(None);
                        wanted.push(Some(c));
                    } else {
                        rows.push(Some(TextRow::failed(
                            &k,
                            None,
                            "no_caption",
                            "the latents row has no caption".into(),
                        )));
                        wanted.push(None);
                    }
                    keys.push(k);
                }
            }
            let texts: Vec<&str> = wanted.iter().flatten().map(String::as_str).collect();
            let mut encoded = self.encode(&texts)?.into_iter();
            let rows: Vec<TextRow> = rows
                .into_iter()
                .zip(&wanted)
                .zip(&keys)
                .map(|((row, text), key)| match (row, text) {
                    (Some(r), _) => r,
                    (None, Some(t)) => {
                        let (n, h) = encoded.next().expect("one encoding per text");
                        TextRow::ok(key, t, &h, n, dtype)
                    }
                    (None, None) => unreachable!("a row is failed or has a text"),
                })
                .collect();
            let batch = text_embeddings::to_batch(&rows, &schema)?;
            shard_out.write(
                &batch,
                rows.iter()
                    .filter(|r| !r.is_ok())
                    .filter_map(|r| r.reason.as_deref()),
            )?;
            out.wrote(rows.len());
        }
        shard_out.commit(vec![input.file.clone()], 0.0)
    }

    fn finish(&mut self, stage: &StageDir, changed: bool) -> Result<Vec<String>> {
        let dest = stage.dir().join(UNCONDITIONAL_FILE);
        if changed || !dest.exists() {
            let (n, h) = self.encode(&[""])?.remove(0);
            let row = TextRow::ok("", "", &h, n, self.settings.dtype);
            let batch = text_embeddings::to_batch(&[row], &self.schema)?;
            curate_io::write_table(
                text_embeddings::table(),
                &dest,
                &[batch],
                self.schema.clone(),
            )?;
        }
        Ok(vec![UNCONDITIONAL_FILE.to_string()])
    }

    fn closing_detail(&self) -> String {
        format!(", {} tokens encoded", self.tokens)
    }
}
