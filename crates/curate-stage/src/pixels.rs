//! The bounded decode pool of the image-model stages (`embed`, `score`,
//! `caption`): stream an image shard, decode and preprocess on a thread
//! pool, hand batches of model input to the caller through a bounded queue
//! so decoding overlaps inference, and keep every failure with its reason.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{mpsc, Arc};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use curate_core::schema::TableSchema;
use curate_core::stage::ShardRecord;
use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
use curate_vision::Limits;
use rayon::prelude::*;

use crate::runner::ShardOutput;
use crate::{BoxError, Context, Result, StageError, Upstream};

/// Batches of decoded pictures waiting for the model (the queue bound).
const QUEUE_DEPTH: usize = 2;

/// How pictures are decoded for a model: the settings behind the decode pool.
#[derive(Debug, Clone)]
pub struct DecodeSettings {
    pub scale: DecodeScale,
    /// Largest width × height decoded; larger images are `too_large`.
    pub max_pixels: u64,
    pub batch_size: usize,
    /// Decoding threads (0 = all cores).
    pub threads: usize,
}

/// How pictures are prepared.
#[derive(Clone)]
pub struct PixelJob {
    pub spec: PixelSpec,
    pub scale: DecodeScale,
    pub limits: Limits,
    pub batch_size: usize,
    /// Only these keys (others are skipped, not emitted); `None` for all.
    pub only: Option<Arc<HashSet<String>>>,
}

impl PixelJob {
    /// The job and its decoding pool. Logs the stage's first line: which
    /// JPEG decoder and decode scale its model inputs go through.
    pub fn new(
        stage: &str,
        settings: &DecodeSettings,
        spec: PixelSpec,
        only: Option<Arc<HashSet<String>>>,
    ) -> Result<(PixelJob, rayon::ThreadPool)> {
        log_decoder(stage, settings.scale);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            .build()
            .context("decoder thread pool")?;
        let job = PixelJob {
            spec,
            scale: settings.scale,
            limits: Limits {
                max_pixels: settings.max_pixels,
                ..Default::default()
            },
            batch_size: settings.batch_size,
            only,
        };
        Ok((job, pool))
    }
}

/// `STAGE: JPEG decoding: <decoder>, --decode-scale <scale>`.
pub fn log_decoder(stage: &str, scale: DecodeScale) {
    tracing::info!(
        "{stage}: JPEG decoding: {}, --decode-scale {}",
        curate_vision::turbo::describe(),
        match scale {
            DecodeScale::Full => "full",
            DecodeScale::Reduced => "reduced",
        }
    );
}

/// One batch: every input row in order, and the model input of the good ones.
pub struct Prepared {
    pub keys: Vec<String>,
    /// Per row: `None` when prepared, else (reason, message).
    pub failed: Vec<Option<(String, String)>>,
    /// Rows (indices into `keys`) whose pictures are in `pixels`, in order.
    pub ok: Vec<usize>,
    /// CHW floats of the `ok` rows, concatenated.
    pub pixels: Vec<f32>,
    pub height: u32,
    pub width: u32,
}

/// Streams the image shard at `path` and calls `consume` with each batch.
pub fn for_each_batch(
    path: &Path,
    job: &PixelJob,
    pool: &rayon::ThreadPool,
    mut consume: impl FnMut(Prepared) -> Result<()>,
) -> Result<()> {
    let (height, width) = job
        .spec
        .fixed_hw()
        .context("the model's preprocessing has no fixed output size (set crop_size or an exact size), so images cannot be batched")?;
    let tables = job.spec.tables();
    let plane = 3 * (height * width) as usize;
    stream_prepared(
        path,
        job.only.as_deref(),
        job.batch_size,
        pool,
        |_, bytes| prepare(bytes, job, &tables, plane),
        |keys, results| {
            let n = keys.len();
            let mut out = Prepared {
                keys,
                failed: Vec::with_capacity(n),
                ok: Vec::new(),
                pixels: Vec::with_capacity(n * plane),
                height,
                width,
            };
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(px) => {
                        out.ok.push(i);
                        out.pixels.extend_from_slice(&px);
                        out.failed.push(None);
                    }
                    Err(f) => out.failed.push(Some(f)),
                }
            }
            consume(out)
        },
    )
}

/// Per image: what `prepare` made of its bytes, or (reason, message).
pub type Outcome<T> = std::result::Result<T, (String, String)>;

/// Streams the image shard at `path` in batches of `batch_size` rows,
/// runs `prepare(key, bytes)` on every good image on `pool` (a failed upstream
/// record becomes `source_error`; a panic, `undecodable`), and hands each
/// batch's keys and outcomes, in input order, to `consume` through a
/// bounded queue, so preparing the next batches overlaps consuming this one.
/// Rows whose key is not in `only` are skipped.
pub fn stream_prepared<T: Send>(
    path: &Path,
    only: Option<&HashSet<String>>,
    batch_size: usize,
    pool: &rayon::ThreadPool,
    prepare: impl Fn(&str, &[u8]) -> Outcome<T> + Sync,
    mut consume: impl FnMut(Vec<String>, Vec<Outcome<T>>) -> Result<()>,
) -> Result<()> {
    let batches = curate_io::stream_columns(
        path,
        curate_io::images::table(),
        &["key", "status", "reason", "bytes"],
        batch_size,
    )?;
    let prepare = &prepare;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<(Vec<String>, Vec<Outcome<T>>)>(QUEUE_DEPTH);
        let producer = scope.spawn(move || -> Result<()> {
            for batch in batches {
                let batch = batch?;
                let keys = batch.column(0).as_string::<i32>();
                let status = batch.column(1).as_string::<i32>();
                let reason = batch.column(2).as_string::<i32>();
                let bytes = batch.column(3).as_binary::<i32>();
                let rows: Vec<usize> = (0..batch.num_rows())
                    .filter(|&i| only.is_none_or(|k| k.contains(keys.value(i))))
                    .collect();
                if rows.is_empty() {
                    continue;
                }
                let results: Vec<Outcome<T>> = pool.install(|| {
                    rows.par_iter()
                        .map(|&i| {
                            if status.value(i) != "ok" || bytes.is_null(i) {
                                let why = if reason.is_null(i) {
                                    "unknown"
                                } else {
                                    reason.value(i)
                                };
                                return Err((
                                    "source_error".to_string(),
                                    format!("the image record failed upstream ({why})"),
                                ));
                            }
                            let (k, b) = (keys.value(i), bytes.value(i));
                            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                prepare(k, b)
                            })) {
                                Ok(r) => r,
                                Err(_) => {
                                    Err(("undecodable".into(), "the decoder panicked".into()))
                                }
                            }
                        })
                        .collect()
                });
                let keys = rows.iter().map(|&i| keys.value(i).to_string()).collect();
                if tx.send((keys, results)).is_err() {
                    break; // the consumer stopped (with an error of its own)
                }
            }
            Ok(())
        });
        let mut result = Ok(());
        for (keys, outcomes) in rx.iter() {
            if let Err(e) = consume(keys, outcomes) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(StageError::invalid("the decoding thread panicked")));
        result.and(produced)
    })
}

/// One picture → model input, or (reason, message).
fn prepare(
    bytes: &[u8],
    job: &PixelJob,
    tables: &[[f32; 256]; 3],
    plane: usize,
) -> Outcome<Vec<f32>> {
    let loaded = load_rgb(bytes, &job.limits, &job.spec, job.scale)
        .map_err(|e| (e.reason().to_string(), e.to_string()))?;
    let picture = job.spec.resize_crop(&loaded.rgb);
    let mut out = vec![0f32; plane];
    PixelSpec::to_chw(&picture, tables, &mut out);
    Ok(out)
}

/// A model that maps a batch of CHW pictures to one float vector each.
pub trait BatchModel {
    /// `n` pictures of `h × w`, concatenated, → `n` vectors.
    fn run_batch(
        &mut self,
        n: usize,
        h: u32,
        w: u32,
        pixels: Vec<f32>,
    ) -> std::result::Result<Vec<Vec<f32>>, BoxError>;
}

/// Runs the model on a prepared batch. A batch that fails is retried one
/// image at a time so a single bad sample is recorded and the rest go on;
/// when every image fails on its own too, the model (not the data) is
/// broken and the error stops the stage.
pub fn run_isolating(
    model: &mut dyn BatchModel,
    batch: &Prepared,
) -> Result<Vec<std::result::Result<Vec<f32>, String>>> {
    let n = batch.ok.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let (h, w) = (batch.height, batch.width);
    match model.run_batch(n, h, w, batch.pixels.clone()) {
        Ok(rows) => Ok(rows.into_iter().map(Ok).collect()),
        Err(e) if n == 1 => Err(e).context("the model failed on a batch of one image"),
        Err(batch_err) => {
            let plane = 3 * (h * w) as usize;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let px = batch.pixels[i * plane..(i + 1) * plane].to_vec();
                out.push(
                    model
                        .run_batch(1, h, w, px)
                        .map(|mut r| r.remove(0))
                        .map_err(|e| e.to_string()),
                );
            }
            if out.iter().all(std::result::Result::is_err) {
                return Err(batch_err)
                    .context("the model failed on every image of a batch, one by one too");
            }
            Ok(out)
        }
    }
}

/// Per input row: the model's output, or (reason, message).
pub type RowOutcome = std::result::Result<Vec<f32>, (String, String)>;

/// Model outputs put back in input-row order, failures included.
pub fn outcomes(
    batch: &Prepared,
    outputs: Vec<std::result::Result<Vec<f32>, String>>,
) -> Vec<RowOutcome> {
    let mut rows: Vec<RowOutcome> = batch
        .failed
        .iter()
        .map(|f| match f {
            Some((reason, error)) => Err((reason.clone(), error.clone())),
            None => Ok(Vec::new()),
        })
        .collect();
    for (&i, out) in batch.ok.iter().zip(outputs) {
        rows[i] = out.map_err(|e| ("inference".to_string(), e));
    }
    rows
}

/// The shard work of an image-model stage: stream the input shard's images
/// through the pixel pipeline and the model, and write one row per image
/// with `to_batch(keys, outcomes)`.
#[allow(clippy::too_many_arguments)]
pub fn write_image_model_shard(
    shard: u32,
    input: &ShardRecord,
    upstream: &Upstream,
    job: &PixelJob,
    pool: &rayon::ThreadPool,
    model: &mut dyn BatchModel,
    table: &'static TableSchema,
    schema: SchemaRef,
    out: &mut ShardOutput<'_>,
    mut to_batch: impl FnMut(&[String], &[RowOutcome]) -> Result<RecordBatch>,
) -> Result<ShardRecord> {
    let mut shard_out = out.begin(shard, table, schema, job.batch_size)?;
    for_each_batch(&upstream.shard_path(input), job, pool, |batch| {
        let outputs = run_isolating(model, &batch)?;
        let rows = outcomes(&batch, outputs);
        let record_batch = to_batch(&batch.keys, &rows)?;
        shard_out.write(
            &record_batch,
            rows.iter()
                .filter_map(|r| r.as_ref().err().map(|e| e.0.as_str())),
        )?;
        out.wrote(rows.len());
        Ok(())
    })?;
    shard_out.commit(vec![input.file.clone()], 0.0)
}
