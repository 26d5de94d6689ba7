//! `curate score IMAGES -o OUT --model DIR`: aesthetic scores and quality
//! tags (oboro §IV-A4). The predictor (Aesthetic Predictor V2.5: SigLIP
//! tower → normalised pooled output → linear head) runs as one ONNX model
//! through the same pixel pipeline as `embed`; `--from-embeddings HEAD`
//! scores the CLIP embeddings of an `embed` stage with a LAION-style head
//! instead. Each score gets the tag of its band; below `--drop-below` it is
//! dropped. One score shard per input shard, row for row.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray};
use curate_core::bands::Bands;
use curate_core::split::ShardSplit;
use curate_core::stage::{StageDir, StageSpec};
use curate_onnx::vision::{ImageModel, ModelFiles};
use curate_vision::preprocess::PixelSpec;

use super::pixels::{self, PixelJob, RowOutcome};
use super::shared::{TableShard, Upstream};
use super::StageSummary;
use crate::cli::ScoreArgs;
use crate::progress::Progress;

const CANDIDATES: &[&str] = &["model.onnx", "onnx/model.onnx", "aesthetic.onnx"];

fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("scores").expect("built-in schema")
}

fn schema(model: &str, input: &str, bands: &Bands) -> anyhow::Result<arrow_schema::SchemaRef> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    m.insert("model".to_string(), model.to_string());
    m.insert("input".to_string(), input.to_string());
    m.insert("bands".to_string(), bands.to_json());
    m.insert("drop_below".to_string(), bands.drop_below.to_string());
    Ok(Arc::new(s.with_metadata(m)))
}

pub fn run(args: &ScoreArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    let bands =
        Bands::parse(&args.bands, args.drop_below).map_err(|e| anyhow::anyhow!("--bands: {e}"))?;
    match &args.from_embeddings {
        Some(head) => run_head(args, head, &bands, &split),
        None => run_pixels(args, &bands, &split),
    }
}

fn open_stage(
    args: &ScoreArgs,
    upstream: &Upstream,
    config: serde_json::Value,
) -> anyhow::Result<StageDir> {
    let spec = StageSpec {
        stage: "score".into(),
        schema: "scores".into(),
        config,
        inputs: upstream.inputs(),
        num_shards: upstream.manifest.num_shards,
    };
    let stage = super::shared::open_output("score", &args.output, &spec, args.overwrite)?;
    Ok(stage)
}

fn run_pixels(args: &ScoreArgs, bands: &Bands, split: &ShardSplit) -> anyhow::Result<StageSummary> {
    let model_path = args
        .model
        .as_ref()
        .expect("clap requires --model without --from-embeddings");
    let upstream = Upstream::open(&args.input, &["images"])?;
    let files = ModelFiles::resolve(model_path, CANDIDATES)?;
    // Aesthetic Predictor V2.5's SigLIP preprocessing unless the folder says otherwise.
    let spec = files.pixel_spec(PixelSpec::squash(384, [0.5; 3], [0.5; 3]))?;
    let model_id = args.model_id.clone().unwrap_or_else(|| files.id.clone());
    let runtime = curate_onnx::init(&crate::paths::onnxruntime_dirs())?;
    let options = args.onnx.model_options();
    let onnx_len = std::fs::metadata(&files.onnx).map(|m| m.len()).unwrap_or(0);
    let mut model = ImageModel::open(
        runtime,
        files.clone(),
        &args.input_name,
        &args.output_name,
        spec.clone(),
        &options,
    )?;
    if model.dim != Some(1) {
        bail!(
            "{}: output `{}` gives {} values per image; a score is one",
            files.onnx.display(),
            args.output_name,
            model
                .dim
                .map_or("an unknown number of".to_string(), |d| d.to_string())
        );
    }
    let mut stage = open_stage(
        args,
        &upstream,
        serde_json::json!({
            "input": "pixels",
            "model": model_id,
            "onnx_bytes": onnx_len,
            "input_name": args.input_name,
            "output_name": args.output_name,
            "bands": bands.bands,
            "drop_below": bands.drop_below,
            "preprocess": format!("{spec:?}"),
            "decode_scale": format!("{:?}", args.onnx.decode_scale),
            "max_pixels": args.onnx.max_pixels,
        }),
    )?;
    let (job, pool) = PixelJob::from_args(&args.onnx, spec, None)?;
    let schema = schema(&model_id, "pixels", bands)?;
    let summary = pixels::run_image_stage(
        "score",
        &upstream,
        &stage,
        split,
        &job,
        &pool,
        &mut model,
        table(),
        schema.clone(),
        |keys, rows| to_batch(keys, rows, bands, &model_id, schema.clone()),
    )?;
    stage.consolidate(&[])?;
    Ok(summary)
}

/// Scores → rows: a non-finite score is an `inference` failure.
fn to_batch(
    keys: &[String],
    rows: &[RowOutcome],
    bands: &Bands,
    model: &str,
    schema: arrow_schema::SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let rows: Vec<RowOutcome> = rows
        .iter()
        .map(|r| match r {
            Ok(v) if v.len() == 1 && v[0].is_finite() => Ok(v.clone()),
            Ok(v) => Err((
                "inference".to_string(),
                format!("the model gave {v:?}, not one finite score"),
            )),
            Err(e) => Err(e.clone()),
        })
        .collect();
    let tagged: Vec<Option<curate_core::bands::Tagged>> = rows
        .iter()
        .map(|r| r.as_ref().ok().map(|v| bands.tag(v[0])))
        .collect();
    let (status, reason, error) = pixels::status_columns(&rows);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(String::as_str),
        )),
        status,
        reason,
        error,
        Arc::new(
            rows.iter()
                .map(|r| r.as_ref().ok().map(|v| v[0]))
                .collect::<Float32Array>(),
        ),
        Arc::new(
            tagged
                .iter()
                .map(|t| t.as_ref().and_then(|t| t.tag.as_deref()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            tagged
                .iter()
                .map(|t| t.as_ref().map(|t| t.dropped))
                .collect::<BooleanArray>(),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            model,
            keys.len(),
        ))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A stack of linear layers applied in order (no activations), as the
/// LAION aesthetic predictor's `layers` and V2.5's `scoring_head` are.
pub struct LinearHead {
    /// (weight [out × in] row-major, bias [out], in, out)
    layers: Vec<(Vec<f32>, Vec<f32>, usize, usize)>,
}

impl LinearHead {
    pub fn load(path: &Path) -> anyhow::Result<LinearHead> {
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
        let as_f32 = |name: &str| -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
            let t = st
                .tensor(name)
                .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
            let data: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
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

fn run_head(
    args: &ScoreArgs,
    head_path: &Path,
    bands: &Bands,
    split: &ShardSplit,
) -> anyhow::Result<StageSummary> {
    let upstream = Upstream::open(&args.input, &["embeddings"])?;
    let head = LinearHead::load(head_path)?;
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        head_path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "head".into())
    });
    let head_len = std::fs::metadata(head_path).map(|m| m.len()).unwrap_or(0);
    let mut stage = open_stage(
        args,
        &upstream,
        serde_json::json!({
            "input": "embeddings",
            "model": model_id,
            "head_bytes": head_len,
            "bands": bands.bands,
            "drop_below": bands.drop_below,
        }),
    )?;
    let schema = schema(&model_id, "embeddings", bands)?;
    let emb_table = curate_core::schema::get("embeddings")?;
    let owned_rows: u64 = split
        .owned(stage.num_shards())
        .map(|s| upstream.shards[s as usize].records)
        .sum();
    let mut progress = Progress::new("score", owned_rows);
    let mut rows_done = 0u64;
    let summary = super::shared::each_owned_shard(
        "score",
        &stage,
        &upstream,
        split,
        table(),
        &mut progress,
        |shard, input, progress| {
            let mut out = TableShard::begin(&stage, shard, table(), schema.clone(), 8192)?;
            for batch in curate_io::stream_columns(
                &upstream.shard_path(input),
                emb_table,
                &["key", "status", "embedding"],
                8192,
            )? {
                let batch = batch?;
                let keys = batch.column(0).as_string::<i32>();
                let status = batch.column(1).as_string::<i32>();
                let emb = batch.column(2).as_fixed_size_list();
                if emb.value_length() as usize != head.input_dim() {
                    bail!(
                        "the head takes {} inputs but the embeddings have {} dimensions",
                        head.input_dim(),
                        emb.value_length()
                    );
                }
                let rows: Vec<RowOutcome> = (0..batch.num_rows())
                    .map(|i| {
                        if status.value(i) != "ok" || emb.is_null(i) {
                            return Err((
                                "source_error".to_string(),
                                "the image has no embedding (failed upstream)".to_string(),
                            ));
                        }
                        let v = emb.value(i);
                        let x: Vec<f32> = match v.data_type() {
                            arrow_schema::DataType::Float16 => v
                                .as_primitive::<Float16Type>()
                                .values()
                                .iter()
                                .map(|h| h.to_f32())
                                .collect(),
                            _ => v.as_primitive::<Float32Type>().values().to_vec(),
                        };
                        Ok(vec![head.score(&x)])
                    })
                    .collect();
                let keys: Vec<String> = (0..batch.num_rows())
                    .map(|i| keys.value(i).to_string())
                    .collect();
                let record_batch = to_batch(&keys, &rows, bands, &model_id, schema.clone())?;
                out.write(
                    &record_batch,
                    rows.iter()
                        .filter_map(|r| r.as_ref().err().map(|e| e.0.as_str())),
                )?;
                progress.inc(rows.len() as u64);
                rows_done += rows.len() as u64;
            }
            out.commit(vec![input.file.clone()], 0.0)
        },
    )?;
    progress.finish();
    super::shared::stage_done_line(
        "score",
        &summary,
        rows_done,
        progress.elapsed().as_secs_f64(),
    );
    stage.consolidate(&[])?;
    Ok(summary)
}
