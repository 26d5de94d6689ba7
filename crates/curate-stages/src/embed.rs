//! `embed`: CLIP image embeddings.
//!
//! One embedding shard per image shard, row for row (aligned 1:1, so a
//! later stage joins by position or key). Images are decoded and
//! preprocessed exactly as Hugging Face's `CLIPImageProcessor` does (see
//! `curate_vision::preprocess`), batched, run through the ONNX vision
//! model, and L2-normalised. A failed image (failed upstream, undecodable,
//! or failing in the model alone) is a row with its reason; the batch goes
//! on.

use std::path::PathBuf;

use arrow_schema::SchemaRef;
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageSpec};
use curate_io::embeddings::{self, Dtype, EmbeddingsMeta};
use curate_onnx::vision::{ImageModel, ModelFiles};
use curate_stage::pixels::{write_image_model_shard, PixelJob, RowOutcome};
use curate_stage::{bail, Context, Result, ShardOutput, Stage, StageError, Upstream};
use curate_vision::preprocess::PixelSpec;

use crate::onnx_model::{file_len, preprocess_json, OnnxImageModel, OnnxImageSettings};

/// File names tried, in order, in a model folder.
pub const CLIP_CANDIDATES: &[&str] = &[
    "onnx/vision_model.onnx",
    "vision_model.onnx",
    "visual.onnx",
    "openclip/visual.onnx",
    "model.onnx",
    "onnx/model.onnx",
];

/// What `curate embed` is asked to do.
#[derive(Debug, Clone)]
pub struct EmbedSettings {
    /// The image stage read.
    pub input: PathBuf,
    /// An .onnx file or a folder holding one of [`CLIP_CANDIDATES`].
    pub model: PathBuf,
    pub input_name: String,
    pub output_name: String,
    /// Model id stored with every row; `None`: the model folder's.
    pub model_id: Option<String>,
    pub dtype: Dtype,
    pub onnx: OnnxImageSettings,
}

/// The `embed` stage, its model loaded.
pub struct Embed {
    upstream: Upstream,
    model: OnnxImageModel,
    job: PixelJob,
    pool: rayon::ThreadPool,
    meta: EmbeddingsMeta,
    schema: SchemaRef,
    config: serde_json::Value,
}

impl Embed {
    /// Opens the input stage and loads the model.
    pub fn open(settings: &EmbedSettings) -> Result<Embed> {
        let upstream = Upstream::open(&settings.input, &["images"])?;
        let files =
            ModelFiles::resolve(&settings.model, CLIP_CANDIDATES).map_err(StageError::other)?;
        let spec = files
            .pixel_spec(PixelSpec::clip())
            .map_err(StageError::other)?;
        let model_id = settings
            .model_id
            .clone()
            .unwrap_or_else(|| files.id.clone());
        let model = ImageModel::open(
            settings.onnx.runtime()?,
            files.clone(),
            &settings.input_name,
            &settings.output_name,
            spec.clone(),
            &settings.onnx.model,
        )
        .map_err(StageError::other)?;
        let config = serde_json::json!({
            "model": model_id,
            "onnx_file": files.onnx.file_name().map(|n| n.to_string_lossy().into_owned()),
            "onnx_bytes": file_len(&files.onnx),
            "input_name": settings.input_name,
            "output_name": settings.output_name,
            "dtype": settings.dtype.as_str(),
            "preprocess": preprocess_json(&spec),
            "decode_scale": settings.onnx.decode.scale,
            "max_pixels": settings.onnx.decode.max_pixels,
        });
        let (job, pool) = PixelJob::new("embed", &settings.onnx.decode, spec, None)?;
        let dim = model.dim.context("the model's output width is unknown")?;
        let meta = EmbeddingsMeta {
            model: model_id,
            dim,
            dtype: settings.dtype,
            output: settings.output_name.clone(),
        };
        let schema = embeddings::arrow_schema(&meta)?;
        Ok(Embed {
            upstream,
            model: OnnxImageModel(model),
            job,
            pool,
            meta,
            schema,
            config,
        })
    }
}

impl Stage for Embed {
    fn name(&self) -> &str {
        "embed"
    }

    fn table(&self) -> &'static TableSchema {
        embeddings::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .upstream
            .spec_for("embed", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let input = self.upstream.shards[shard as usize].clone();
        let (meta, schema) = (&self.meta, &self.schema);
        write_image_model_shard(
            shard,
            &input,
            &self.upstream,
            &self.job,
            &self.pool,
            &mut self.model,
            embeddings::table(),
            schema.clone(),
            out,
            |keys, rows| to_batch(keys, rows, meta, schema),
        )
    }
}

/// Model outputs → rows: each embedding checked for its width and normalised.
fn to_batch(
    keys: &[String],
    rows: &[RowOutcome],
    meta: &EmbeddingsMeta,
    schema: &SchemaRef,
) -> Result<arrow_array::RecordBatch> {
    let mut normalised = Vec::with_capacity(rows.len());
    for (key, r) in keys.iter().zip(rows) {
        normalised.push(match r {
            Ok(e) if e.len() == meta.dim => Ok(l2_normalise(e.clone())),
            Ok(e) => bail!(
                "key {key}: the model gave {} values, expected {}",
                e.len(),
                meta.dim
            ),
            Err(e) => Err(e.clone()),
        });
    }
    Ok(embeddings::to_batch(schema, meta, keys, &normalised)?)
}

/// Unit length (a zero vector stays zero).
pub fn l2_normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x = (*x as f64 / norm) as f32;
        }
    }
    v
}
