//! `curate embed IMAGES -o EMB --model DIR`: CLIP image embeddings.
//!
//! One embedding shard per image shard, row for row (aligned 1:1, so a
//! later stage joins by position or key). Images are decoded and
//! preprocessed exactly as Hugging Face's `CLIPImageProcessor` does (see
//! `curate_vision::preprocess`), batched, run through the ONNX vision
//! model, and L2-normalised. A failed image (failed upstream, undecodable,
//! or failing in the model alone) is a row with its reason; the batch goes
//! on.

use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field};
use curate_core::split::ShardSplit;
use curate_core::stage::StageSpec;
use curate_onnx::vision::{ImageModel, ModelFiles};
use curate_vision::preprocess::PixelSpec;

use super::pixels::{self, PixelJob};
use super::shared::Upstream;
use super::StageSummary;
use crate::cli::{EmbedArgs, FloatDtype};

/// File names tried, in order, in a model folder.
pub const CLIP_CANDIDATES: &[&str] = &[
    "onnx/vision_model.onnx",
    "vision_model.onnx",
    "visual.onnx",
    "openclip/visual.onnx",
    "model.onnx",
    "onnx/model.onnx",
];

pub fn run(args: &EmbedArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    let upstream = Upstream::open(&args.input, &["images"])?;
    let files = ModelFiles::resolve(&args.model, CLIP_CANDIDATES)?;
    let spec = files.pixel_spec(PixelSpec::clip())?;
    let model_id = args.model_id.clone().unwrap_or_else(|| files.id.clone());
    let runtime = curate_onnx::init(&crate::paths::onnxruntime_dirs())?;
    let options = args.onnx.model_options();
    let mut model = ImageModel::open(
        runtime,
        files.clone(),
        &args.input_name,
        &args.output_name,
        spec.clone(),
        &options,
    )?;

    let onnx_len = std::fs::metadata(&files.onnx).map(|m| m.len()).unwrap_or(0);
    let stage_spec = StageSpec {
        stage: "embed".into(),
        schema: "embeddings".into(),
        config: serde_json::json!({
            "model": model_id,
            "onnx_file": files.onnx.file_name().map(|n| n.to_string_lossy().into_owned()),
            "onnx_bytes": onnx_len,
            "input_name": args.input_name,
            "output_name": args.output_name,
            "dtype": args.dtype,
            "preprocess": format!("{spec:?}"),
            "decode_scale": format!("{:?}", args.onnx.decode_scale),
            "max_pixels": args.onnx.max_pixels,
        }),
        inputs: upstream.inputs(),
        num_shards: upstream.manifest.num_shards,
    };
    let mut stage = super::shared::open_output("embed", &args.output, &stage_spec, args.overwrite)?;

    let (job, pool) = PixelJob::from_args(&args.onnx, spec, None)?;
    let dim = model.dim.context("the model's output width is unknown")?;
    let schema = schema(dim, args.dtype, &model_id, &args.output_name)?;
    let summary = pixels::run_image_stage(
        "embed",
        &upstream,
        &stage,
        &split,
        &job,
        &pool,
        &mut model,
        table(),
        schema.clone(),
        |keys, rows| to_batch(keys, rows, dim, args.dtype, &model_id, schema.clone()),
    )?;
    stage.consolidate(&[])?;
    Ok(summary)
}

pub fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("embeddings").expect("built-in schema")
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

fn item_type(dtype: FloatDtype) -> DataType {
    match dtype {
        FloatDtype::F16 => DataType::Float16,
        FloatDtype::F32 => DataType::Float32,
    }
}

fn schema(
    dim: usize,
    dtype: FloatDtype,
    model: &str,
    output: &str,
) -> anyhow::Result<arrow_schema::SchemaRef> {
    let list = DataType::FixedSizeList(
        Arc::new(Field::new_list_field(item_type(dtype), true)),
        dim as i32,
    );
    let mut s = table().arrow_schema_with(&[("embedding", list)])?;
    let mut meta = s.metadata().clone();
    meta.insert("model".to_string(), model.to_string());
    meta.insert("dim".to_string(), dim.to_string());
    meta.insert(
        "dtype".to_string(),
        match dtype {
            FloatDtype::F16 => "f16",
            FloatDtype::F32 => "f32",
        }
        .to_string(),
    );
    meta.insert("normalized".to_string(), "true".to_string());
    meta.insert("output".to_string(), output.to_string());
    s = s.with_metadata(meta);
    Ok(Arc::new(s))
}

fn to_batch(
    keys: &[String],
    rows: &[pixels::RowOutcome],
    dim: usize,
    dtype: FloatDtype,
    model: &str,
    schema: arrow_schema::SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let n = rows.len();
    let mut values = Vec::with_capacity(n * dim);
    let mut valid = Vec::with_capacity(n);
    for (key, r) in keys.iter().zip(rows) {
        match r {
            Ok(e) if e.len() == dim => {
                values.extend_from_slice(&l2_normalise(e.clone()));
                valid.push(true);
            }
            Ok(e) => bail!(
                "key {key}: the model gave {} values, expected {dim}",
                e.len()
            ),
            Err(_) => {
                values.extend(std::iter::repeat_n(0f32, dim));
                valid.push(false);
            }
        }
    }
    let values: ArrayRef = match dtype {
        FloatDtype::F32 => Arc::new(Float32Array::from(values)),
        FloatDtype::F16 => Arc::new(Float16Array::from(
            values
                .into_iter()
                .map(half::f16::from_f32)
                .collect::<Vec<_>>(),
        )),
    };
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(item_type(dtype), true)),
        dim as i32,
        values,
        Some(valid.into()),
    )?;
    let (status, reason, error) = pixels::status_columns(rows);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(String::as_str),
        )),
        status,
        reason,
        error,
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model, n))),
        Arc::new(list),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
