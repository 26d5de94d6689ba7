//! `score`: aesthetic scores and quality tags (oboro §IV-A4). The
//! predictor (Aesthetic Predictor V2.5: SigLIP tower → normalised pooled
//! output → linear head) runs as one ONNX model through the same pixel
//! pipeline as `embed`; [`ScoreInput::Embeddings`] scores the CLIP
//! embeddings of an `embed` stage with a LAION-style head instead. Each
//! score gets the tag of its band; below the drop threshold it is dropped.
//! One score shard per input shard, row for row.

use std::path::{Path, PathBuf};

use arrow_schema::SchemaRef;
use curate_core::bands::Bands;
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageSpec};
use curate_io::scores;
use curate_io::status::Outcome;
use curate_onnx::vision::{ImageModel, ModelFiles};
use curate_stage::pixels::{write_image_model_shard, PixelJob, RowOutcome};
use curate_stage::{bail, Context, Result, ShardOutput, Stage, StageError, Upstream};
use curate_vision::preprocess::PixelSpec;

use crate::onnx_model::{file_len, preprocess_json, OnnxImageModel, OnnxImageSettings};

/// File names tried, in order, in a model folder.
pub const CANDIDATES: &[&str] = &["model.onnx", "onnx/model.onnx", "aesthetic.onnx"];

/// Rows per batch and row group when scoring embeddings.
const HEAD_BATCH_ROWS: usize = 8192;

/// What is scored.
#[derive(Debug, Clone)]
pub enum ScoreInput {
    /// The pictures of an image stage, by one ONNX model (`pixel_values` → `score`).
    Pixels {
        /// An .onnx file or a folder holding one of [`CANDIDATES`].
        model: PathBuf,
        input_name: String,
        output_name: String,
        onnx: OnnxImageSettings,
    },
    /// The embeddings of an `embed` stage, by a linear head (safetensors).
    Embeddings { head: PathBuf },
}

/// What `curate score` is asked to do.
#[derive(Debug, Clone)]
pub struct ScoreSettings {
    /// The image stage (or, for [`ScoreInput::Embeddings`], the embeddings stage) read.
    pub input: PathBuf,
    pub source: ScoreInput,
    /// Model id stored with every row; `None`: the model folder's (or the head file's stem).
    pub model_id: Option<String>,
    pub bands: Bands,
}

/// The model that scores.
enum Scorer {
    Pixels {
        model: Box<OnnxImageModel>,
        job: PixelJob,
        pool: rayon::ThreadPool,
    },
    Head(LinearHead),
}

/// The `score` stage, its model loaded.
pub struct Score {
    upstream: Upstream,
    scorer: Scorer,
    model_id: String,
    bands: Bands,
    schema: SchemaRef,
    config: serde_json::Value,
}

impl Score {
    /// Opens the input stage and loads the model.
    pub fn open(settings: &ScoreSettings) -> Result<Score> {
        let bands = settings.bands.clone();
        match &settings.source {
            ScoreInput::Pixels {
                model,
                input_name,
                output_name,
                onnx,
            } => {
                let upstream = Upstream::open(&settings.input, &["images"])?;
                let files = ModelFiles::resolve(model, CANDIDATES).map_err(StageError::other)?;
                // Aesthetic Predictor V2.5's SigLIP preprocessing unless the folder says otherwise.
                let spec = files
                    .pixel_spec(PixelSpec::squash(384, [0.5; 3], [0.5; 3]))
                    .map_err(StageError::other)?;
                let model_id = settings
                    .model_id
                    .clone()
                    .unwrap_or_else(|| files.id.clone());
                let model = ImageModel::open(
                    onnx.runtime()?,
                    files.clone(),
                    input_name,
                    output_name,
                    spec.clone(),
                    &onnx.model,
                )
                .map_err(StageError::other)?;
                if model.dim != Some(1) {
                    bail!(
                        "{}: output `{output_name}` gives {} values per image; a score is one",
                        files.onnx.display(),
                        model
                            .dim
                            .map_or("an unknown number of".to_string(), |d| d.to_string())
                    );
                }
                let config = serde_json::json!({
                    "input": "pixels",
                    "model": model_id,
                    "onnx_bytes": file_len(&files.onnx),
                    "input_name": input_name,
                    "output_name": output_name,
                    "bands": bands.bands,
                    "drop_below": bands.drop_below,
                    "preprocess": preprocess_json(&spec),
                    "decode_scale": onnx.decode.scale,
                    "max_pixels": onnx.decode.max_pixels,
                });
                let (job, pool) = PixelJob::new("score", &onnx.decode, spec, None)?;
                let schema = scores::arrow_schema(&model_id, "pixels", &bands)?;
                Ok(Score {
                    upstream,
                    scorer: Scorer::Pixels {
                        model: Box::new(OnnxImageModel(model)),
                        job,
                        pool,
                    },
                    model_id,
                    bands,
                    schema,
                    config,
                })
            }
            ScoreInput::Embeddings { head } => {
                let upstream = Upstream::open(&settings.input, &["embeddings"])?;
                let linear = LinearHead::load(head)?;
                let model_id = settings.model_id.clone().unwrap_or_else(|| {
                    head.file_stem()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "head".into())
                });
                let config = serde_json::json!({
                    "input": "embeddings",
                    "model": model_id,
                    "head_bytes": file_len(head),
                    "bands": bands.bands,
                    "drop_below": bands.drop_below,
                });
                let schema = scores::arrow_schema(&model_id, "embeddings", &bands)?;
                Ok(Score {
                    upstream,
                    scorer: Scorer::Head(linear),
                    model_id,
                    bands,
                    schema,
                    config,
                })
            }
        }
    }
}

impl Stage for Score {
    fn name(&self) -> &str {
        "score"
    }

    fn table(&self) -> &'static TableSchema {
        scores::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .upstream
            .spec_for("score", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        let input = self.upstream.shards[shard as usize].clone();
        let (model_id, bands, schema) = (&self.model_id, &self.bands, &self.schema);
        match &mut self.scorer {
            Scorer::Pixels { model, job, pool } => write_image_model_shard(
                shard,
                &input,
                &self.upstream,
                job,
                pool,
                model.as_mut(),
                scores::table(),
                schema.clone(),
                out,
                |keys, rows| to_batch(keys, rows, bands, model_id, schema),
            ),
            Scorer::Head(head) => {
                let mut shard_out =
                    out.begin(shard, scores::table(), schema.clone(), HEAD_BATCH_ROWS)?;
                let path = self.upstream.shard_path(&input);
                for batch in curate_io::embeddings::read(&path, HEAD_BATCH_ROWS)? {
                    let batch = batch?;
                    if batch.dim != head.input_dim() {
                        bail!(
                            "the head takes {} inputs but the embeddings have {} dimensions",
                            head.input_dim(),
                            batch.dim
                        );
                    }
                    let rows: Vec<RowOutcome> = batch
                        .rows
                        .iter()
                        .map(|r| match r.ok() {
                            Some(x) => Ok(vec![head.score(x)]),
                            None => Err((
                                "source_error".to_string(),
                                "the image has no embedding (failed upstream)".to_string(),
                            )),
                        })
                        .collect();
                    let keys: Vec<String> = batch.rows.into_iter().map(|r| r.key).collect();
                    let record_batch = to_batch(&keys, &rows, bands, model_id, schema)?;
                    shard_out.write(&record_batch, curate_io::status::reasons(&rows))?;
                    out.wrote(rows.len());
                }
                shard_out.commit(vec![input.file.clone()], 0.0)
            }
        }
    }
}

/// Scores → rows: a non-finite score is an `inference` failure.
fn to_batch(
    keys: &[String],
    rows: &[RowOutcome],
    bands: &Bands,
    model: &str,
    schema: &SchemaRef,
) -> Result<arrow_array::RecordBatch> {
    let rows: Vec<Outcome<f32>> = rows
        .iter()
        .map(|r| match r {
            Ok(v) if v.len() == 1 && v[0].is_finite() => Ok(v[0]),
            Ok(v) => Err((
                "inference".to_string(),
                format!("the model gave {v:?}, not one finite score"),
            )),
            Err(e) => Err(e.clone()),
        })
        .collect();
    Ok(scores::to_batch(schema, model, bands, keys, &rows)?)
}

/// A stack of linear layers applied in order (no activations), as the
/// LAION aesthetic predictor's `layers` and V2.5's `scoring_head` are.
pub struct LinearHead {
    /// (weight [out × in] row-major, bias [out], in, out)
    layers: Vec<(Vec<f32>, Vec<f32>, usize, usize)>,
}

impl LinearHead {
    pub fn load(path: &Path) -> Result<LinearHead> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        // weight tensors of rank 2, ordered by the last integer in their name before `.weight`.
        let mut found: Vec<(u64, String)> = st
            .names()
            .into_iter()
            .filter(|n| n.ends_with(".weight"))
            .filter_map(|n| {
                let idx = n
                    .trim_end_matches(".weight")
                    .rsplit('.')
                    .next()?
                    .parse()
                    .ok()?;
                Some((idx, n.trim_end_matches(".weight").to_string()))
            })
            .collect();
        found.sort();
        if found.is_empty() {
            bail!(
                "{}: expected linear layers `<prefix>.<index>.weight` / `.bias` (e.g. layers.0.weight); found tensors {}",
                path.display(),
                st.names().join(", ")
            );
        }
        let as_f32 = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = st
                .tensor(name)
                .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
            let data: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                safetensors::Dtype::F16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => t
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => bail!(
                    "{}: `{name}` is {other:?}; expected F32, F16 or BF16",
                    path.display()
                ),
            };
            Ok((data, t.shape().to_vec()))
        };
        let mut layers = Vec::new();
        for (_, prefix) in &found {
            let (w, shape) = as_f32(&format!("{prefix}.weight"))?;
            let (b, bshape) = as_f32(&format!("{prefix}.bias"))?;
            if shape.len() != 2 || bshape != [shape[0]] {
                bail!("{}: `{prefix}` has weight {shape:?} and bias {bshape:?}; expected [out, in] and [out]", path.display());
            }
            if let Some(&(_, _, _, prev_out)) = layers.last() {
                if prev_out != shape[1] {
                    bail!(
                        "{}: `{prefix}` takes {} inputs but the layer before gives {prev_out}",
                        path.display(),
                        shape[1]
                    );
                }
            }
            layers.push((w, b, shape[1], shape[0]));
        }
        if layers.last().map(|l| l.3) != Some(1) {
            bail!(
                "{}: the last layer gives {} values; a score is one",
                path.display(),
                layers.last().map_or(0, |l| l.3)
            );
        }
        Ok(LinearHead { layers })
    }

    pub fn input_dim(&self) -> usize {
        self.layers[0].2
    }

    pub fn score(&self, x: &[f32]) -> f32 {
        let mut v: Vec<f64> = x.iter().map(|&f| f as f64).collect();
        for (w, b, n_in, n_out) in &self.layers {
            v = (0..*n_out)
                .map(|o| {
                    let row = &w[o * n_in..(o + 1) * n_in];
                    b[o] as f64 + row.iter().zip(&v).map(|(a, c)| *a as f64 * c).sum::<f64>()
                })
                .collect();
        }
        v[0] as f32
    }
}
