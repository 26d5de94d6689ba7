//! The pixel pipeline shared by the image-model stages (`embed`, `score`):
//! stream an image shard, decode and preprocess on a thread pool, hand
//! batches of model input to the caller through a bounded queue so
//! decoding overlaps inference, and keep every failure with its reason.

use std::path::Path;
use std::sync::mpsc;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::Array;
use curate_vision::preprocess::{load_rgb, DecodeScale, PixelSpec};
use curate_vision::Limits;
use rayon::prelude::*;

/// Batches of decoded pictures waiting for the model (the queue bound).
const QUEUE_DEPTH: usize = 2;

/// How pictures are prepared.
#[derive(Clone)]
pub struct PixelJob {
    pub spec: PixelSpec,
    pub scale: DecodeScale,
    pub limits: Limits,
    pub batch_size: usize,
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
    mut consume: impl FnMut(Prepared) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (height, width) = job
        .spec
        .fixed_hw()
        .context("the model's preprocessing has no fixed output size (set crop_size or an exact size), so images cannot be batched")?;
    let tables = job.spec.tables();
    let batches = curate_io::stream_columns(
        path,
        curate_io::images::table(),
        &["key", "status", "reason", "bytes"],
        job.batch_size,
    )?;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Prepared>(QUEUE_DEPTH);
        let producer = scope.spawn(move || -> anyhow::Result<()> {
            for batch in batches {
                let batch = batch?;
                let keys = batch.column(0).as_string::<i32>();
                let status = batch.column(1).as_string::<i32>();
                let reason = batch.column(2).as_string::<i32>();
                let bytes = batch.column(3).as_binary::<i32>();
                let n = batch.num_rows();
                let plane = 3 * (height * width) as usize;
                let results: Vec<Result<Vec<f32>, (String, String)>> = pool.install(|| {
                    (0..n)
                        .into_par_iter()
                        .map(|i| {
                            if status.value(i) != "ok" || bytes.is_null(i) {
                                let why = if reason.is_null(i) { "unknown" } else { reason.value(i) };
                                return Err((
                                    "source_error".to_string(),
                                    format!("the image record failed upstream ({why})"),
                                ));
                            }
                            prepare(bytes.value(i), job, &tables, plane)
                        })
                        .collect()
                });
                let mut out = Prepared {
                    keys: (0..n).map(|i| keys.value(i).to_string()).collect(),
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
                if tx.send(out).is_err() {
                    break; // the consumer stopped (with an error of its own)
                }
            }
            Ok(())
        });
        let mut result = Ok(());
        for prepared in rx.iter() {
            if let Err(e) = consume(prepared) {
                result = Err(e);
                break;
            }
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the decoding thread panicked")));
        result.and(produced)
    })
}

/// One picture → model input, or (reason, message). A panic in a decoder is caught and recorded.
fn prepare(
    bytes: &[u8],
    job: &PixelJob,
    tables: &[[f32; 256]; 3],
    plane: usize,
) -> Result<Vec<f32>, (String, String)> {
    let run = || -> Result<Vec<f32>, (String, String)> {
        let loaded = load_rgb(bytes, &job.limits, &job.spec, job.scale)
            .map_err(|e| (e.reason().to_string(), e.to_string()))?;
        let picture = job.spec.resize_crop(&loaded.rgb);
        let mut out = vec![0f32; plane];
        PixelSpec::to_chw(&picture, tables, &mut out);
        Ok(out)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(_) => Err(("undecodable".into(), "the decoder panicked".into())),
    }
}
