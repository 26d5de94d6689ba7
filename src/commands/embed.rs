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
use arrow_array::{ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use curate_core::split::ShardSplit;
use curate_core::stage::{Opened, ShardState, StageDir, StageSpec};
use curate_onnx::session::ModelOptions;
use curate_onnx::vision::{ImageModel, ModelFiles};
use curate_vision::preprocess::PixelSpec;

use super::pixels::{self, PixelJob};
use super::shared::{self, TableShard, Upstream};
use super::StageSummary;
use crate::cli::{EmbedArgs, FloatDtype};
use crate::progress::{peak_rss_bytes, Progress};

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
    let options = ModelOptions {
        device: args.onnx.device,
        threads: args.onnx.threads,
    };
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
    let (mut stage, opened) = StageDir::open(&args.output, &stage_spec, args.overwrite)?;
    if opened == Opened::Overwritten {
        tracing::warn!("embed: discarded the previous output of {} (--overwrite)", args.output.display());
    }

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.onnx.decode_threads)
        .build()
        .context("decoder thread pool")?;
    let job = PixelJob {
        spec,
        scale: args.onnx.decode_scale,
        limits: curate_vision::Limits {
            max_pixels: args.onnx.max_pixels,
            ..Default::default()
        },
        batch_size: args.onnx.batch_size as usize,
    };
    let owned: Vec<u32> = split.owned(stage.num_shards()).collect();
    let owned_rows: u64 = owned.iter().map(|&s| upstream.shards[s as usize].records).sum();
    let mut progress = Progress::new("embed", owned_rows);
    let mut summary = StageSummary {
        shards_total: stage.num_shards(),
        ..Default::default()
    };
    let mut hook = shared::StallHook::from_env();
    let mut dim: Option<usize> = None;
    let verify = |path: &std::path::Path, rec: &curate_core::stage::ShardRecord| {
        curate_io::verify_shard(path, table(), Some(rec.records))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    for &shard in &owned {
        let input = &upstream.shards[shard as usize];
        match stage.shard_state(shard, verify)? {
            ShardState::Complete(rec) => {
                summary.add(&rec, false);
                progress.inc(rec.records);
                continue;
            }
            ShardState::Corrupt(why) => tracing::warn!("embed: shard {shard} is damaged ({why}); redoing it"),
            ShardState::Missing => {}
        }
        let mut out: Option<TableShard> = None;
        let mut pending: Vec<Row> = Vec::new();
        pixels::for_each_batch(&upstream.shard_path(input), &job, &pool, |batch| {
            let rows = embed_batch(&mut model, batch)?;
            if dim.is_none() {
                dim = rows.iter().find_map(|r| r.embedding.as_ref().map(Vec::len));
            }
            pending.extend(rows);
            // The schema needs the dimension: hold rows until one image succeeded.
            let Some(d) = dim else { return Ok(()) };
            let writer = match &mut out {
                Some(w) => w,
                None => out.insert(TableShard::begin(
                    &stage,
                    shard,
                    table(),
                    schema(d, args.dtype, &model_id, &args.output_name)?,
                    args.onnx.batch_size as usize,
                )?),
            };
            let batch = to_batch(&pending, d, args.dtype, &model_id, &args.output_name)?;
            writer.write(&batch, pending.iter().filter_map(|r| r.reason.as_deref()))?;
            progress.inc(pending.len() as u64);
            hook.wrote(pending.len());
            pending.clear();
            Ok(())
        })
        .with_context(|| format!("embedding {}", upstream.shard_path(input).display()))?;
        let d = dim.or(model.dim).unwrap_or(0);
        if d == 0 {
            bail!("the model's output `{}` has no static width and no image of shard {shard} could be embedded", args.output_name);
        }
        let mut writer = match out {
            Some(w) => w,
            None => TableShard::begin(
                &stage,
                shard,
                table(),
                schema(d, args.dtype, &model_id, &args.output_name)?,
                args.onnx.batch_size as usize,
            )?,
        };
        if !pending.is_empty() {
            let batch = to_batch(&pending, d, args.dtype, &model_id, &args.output_name)?;
            writer.write(&batch, pending.iter().filter_map(|r| r.reason.as_deref()))?;
            progress.inc(pending.len() as u64);
        }
        let rec = writer.commit(vec![input.file.clone()], 0.0)?;
        progress.event(&shared::shard_done("embed", "images", &rec));
        summary.add(&rec, true);
    }
    progress.finish();
    stage.consolidate(&[])?;
    let elapsed = progress.elapsed().as_secs_f64();
    tracing::info!(
        "embed: {} shards written, {} skipped; {} images in {elapsed:.2} s ({:.1} images/s), {} failed, peak RSS {:.1} MiB",
        summary.shards_written,
        summary.shards_skipped,
        hook.rows,
        hook.rows as f64 / elapsed.max(1e-9),
        summary.failures,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(summary)
}

pub fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("embeddings").expect("built-in schema")
}

/// One output row.
pub struct Row {
    pub key: String,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// L2-normalised.
    pub embedding: Option<Vec<f32>>,
}

/// Runs the model on a prepared batch. A batch that fails is retried one
/// image at a time so a single bad sample is recorded and the rest go on;
/// when every image fails on its own too, the model (not the data) is
/// broken and the error stops the stage.
pub fn run_isolating(
    model: &mut ImageModel,
    batch: &pixels::Prepared,
) -> anyhow::Result<Vec<Result<Vec<f32>, String>>> {
    let n = batch.ok.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let (h, w) = (batch.height, batch.width);
    match model.run(n, h, w, batch.pixels.clone()) {
        Ok(rows) => Ok(rows.into_iter().map(Ok).collect()),
        Err(e) if n == 1 => Err(e).context("the model failed on a batch of one image"),
        Err(batch_err) => {
            let plane = 3 * (h * w) as usize;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let px = batch.pixels[i * plane..(i + 1) * plane].to_vec();
                out.push(
                    model
                        .run(1, h, w, px)
                        .map(|mut r| r.remove(0))
                        .map_err(|e| e.to_string()),
                );
            }
            if out.iter().all(Result::is_err) {
                return Err(batch_err).context("the model failed on every image of a batch, one by one too");
            }
            Ok(out)
        }
    }
}

fn embed_batch(model: &mut ImageModel, batch: pixels::Prepared) -> anyhow::Result<Vec<Row>> {
    let outputs = run_isolating(model, &batch)?;
    let mut rows: Vec<Row> = batch
        .keys
        .into_iter()
        .zip(batch.failed)
        .map(|(key, failed)| match failed {
            Some((reason, error)) => Row {
                key,
                reason: Some(reason),
                error: Some(error),
                embedding: None,
            },
            None => Row {
                key,
                reason: None,
                error: None,
                embedding: None,
            },
        })
        .collect();
    for (&i, out) in batch.ok.iter().zip(outputs) {
        match out {
            Ok(v) => rows[i].embedding = Some(l2_normalise(v)),
            Err(e) => {
                rows[i].reason = Some("inference".into());
                rows[i].error = Some(e);
            }
        }
    }
    Ok(rows)
}

/// Unit length (a zero vector stays zero).
pub fn l2_normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
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
    let list = DataType::FixedSizeList(Arc::new(Field::new_list_field(item_type(dtype), true)), dim as i32);
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
    rows: &[Row],
    dim: usize,
    dtype: FloatDtype,
    model: &str,
    output: &str,
) -> anyhow::Result<RecordBatch> {
    let schema = schema(dim, dtype, model, output)?;
    let n = rows.len();
    let mut values = Vec::with_capacity(n * dim);
    let mut valid = Vec::with_capacity(n);
    for r in rows {
        match &r.embedding {
            Some(e) if e.len() == dim => {
                values.extend_from_slice(e);
                valid.push(true);
            }
            Some(e) => bail!("key {}: embedding has {} values, expected {dim}", r.key, e.len()),
            None => {
                values.extend(std::iter::repeat_n(0f32, dim));
                valid.push(false);
            }
        }
    }
    let values: ArrayRef = match dtype {
        FloatDtype::F32 => Arc::new(Float32Array::from(values)),
        FloatDtype::F16 => Arc::new(Float16Array::from(
            values.into_iter().map(half::f16::from_f32).collect::<Vec<_>>(),
        )),
    };
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(item_type(dtype), true)),
        dim as i32,
        values,
        Some(valid.into()),
    )?;
    let status: StringArray = rows
        .iter()
        .map(|r| Some(if r.reason.is_some() { "error" } else { "ok" }))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.key.as_str()))),
        Arc::new(status),
        Arc::new(rows.iter().map(|r| r.reason.as_deref()).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.error.as_deref()).collect::<StringArray>()),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model, n))),
        Arc::new(list),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
