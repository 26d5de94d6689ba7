//! `caption`: one row per image and task (`caption,detailed,more-detailed`:
//! the report's captions of several lengths), by a [`CaptionModel`]
//! (Florence-2 by default; see [`model`] for adding another). Images go
//! through the shared pixel pipeline in the model's preprocessing; batches
//! of `batch_size` images are captioned together per task. A failed image,
//! or one the model fails on alone, is a row with its reason; the batch
//! goes on. [`CaptionSettings::keep`] captions only the images a dedup run
//! kept.

pub mod florence2;
pub mod model;
pub mod registry;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow_schema::SchemaRef;
use curate_core::schema::TableSchema;
use curate_core::stage::{ShardRecord, StageSpec};
use curate_io::captions::{self, Caption, CaptionRow, CaptionsMeta};
use curate_io::dedup_keep;
use curate_stage::pixels::{for_each_batch, DecodeSettings, PixelJob, Prepared};
use curate_stage::{bail, Context, Result, ShardOutput, Stage, Upstream};

pub use model::{CaptionModel, CaptionModelSettings};
pub use registry::ModelType;

use crate::onnx_model::preprocess_json;

/// Rows per row group of a caption shard.
const ROW_GROUP_ROWS: usize = 256;

/// What `curate caption` is asked to do.
#[derive(Debug, Clone)]
pub struct CaptionSettings {
    /// The image stage read.
    pub input: PathBuf,
    pub model_type: ModelType,
    pub model: CaptionModelSettings,
    /// Task names, each one of the model type's [`ModelType::tasks`].
    pub tasks: Vec<String>,
    /// A dedup stage: caption only the images its keep list holds.
    pub keep: Option<PathBuf>,
    /// Model id stored with every row; `None`: the model folder's name.
    pub model_id: Option<String>,
    pub decode: DecodeSettings,
}

/// The `caption` stage, its model loaded.
pub struct CaptionStage {
    upstream: Upstream,
    model: Box<dyn CaptionModel>,
    tasks: Vec<String>,
    job: PixelJob,
    pool: rayon::ThreadPool,
    model_id: String,
    schema: SchemaRef,
    config: serde_json::Value,
    tokens: u64,
    started: Option<Instant>,
}

impl CaptionStage {
    /// Checks the tasks, opens the input stage and the keep list, and loads the model.
    pub fn open(settings: &CaptionSettings) -> Result<CaptionStage> {
        let known = settings.model_type.tasks();
        let mut tasks = Vec::new();
        for t in &settings.tasks {
            let t = t.trim();
            if !known.contains(&t) {
                bail!("--task `{t}`: expected {}", one_of(&known));
            }
            tasks.push(t.to_string());
        }
        let upstream = Upstream::open(&settings.input, &["images"])?;
        let model = settings.model_type.load(&settings.model)?;
        let model_id = settings.model_id.clone().unwrap_or_else(|| {
            let dir = &settings.model.dir;
            let d = dir.canonicalize().unwrap_or(dir.clone());
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| settings.model_type.default_id().into())
        });
        let only = match &settings.keep {
            Some(dir) => Some(Arc::new(read_keep(dir)?)),
            None => None,
        };
        let mut config = serde_json::json!({
            "model": model_id,
            "tasks": tasks,
            "keep": settings.keep.as_ref().map(|p| p.display().to_string()),
            "keep_count": only.as_ref().map(|k| k.len()),
            "preprocess": preprocess_json(model.pixel_spec()),
            "decode_scale": settings.decode.scale,
        });
        config
            .as_object_mut()
            .expect("an object literal")
            .extend(model.config());
        let schema = captions::arrow_schema(&CaptionsMeta {
            model: model_id.clone(),
            num_beams: model.num_beams(),
            max_new_tokens: model.max_new_tokens(),
            tasks: tasks.clone(),
        })?;
        let (job, pool) = PixelJob::new(
            "caption",
            &settings.decode,
            model.pixel_spec().clone(),
            only,
        )?;
        Ok(CaptionStage {
            upstream,
            model,
            tasks,
            job,
            pool,
            model_id,
            schema,
            config,
            tokens: 0,
            started: None,
        })
    }
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => "nothing (the model has no tasks)".into(),
    }
}

impl Stage for CaptionStage {
    fn name(&self) -> &str {
        "caption"
    }

    fn table(&self) -> &'static TableSchema {
        captions::table()
    }

    fn spec(&self) -> Result<StageSpec> {
        Ok(self
            .upstream
            .spec_for("caption", self.table(), self.config.clone()))
    }

    fn upstream(&self) -> Option<&Upstream> {
        Some(&self.upstream)
    }

    fn write_shard(&mut self, shard: u32, out: &mut ShardOutput<'_>) -> Result<ShardRecord> {
        self.started.get_or_insert_with(Instant::now);
        let input = self.upstream.shards[shard as usize].clone();
        let mut shard_out = out.begin(
            shard,
            captions::table(),
            self.schema.clone(),
            ROW_GROUP_ROWS,
        )?;
        let mut seen = 0u64;
        let (model, tasks, tokens) = (&mut self.model, &self.tasks, &mut self.tokens);
        let (model_id, schema) = (&self.model_id, &self.schema);
        for_each_batch(
            &self.upstream.shard_path(&input),
            &self.job,
            &self.pool,
            |batch| {
                let rows = caption_batch(model.as_mut(), &batch, tasks)?;
                *tokens += rows
                    .iter()
                    .filter_map(|r| r.result.as_ref().ok().map(|c| c.num_tokens as u64))
                    .sum::<u64>();
                let record_batch = captions::to_batch(schema, model_id, &rows)?;
                shard_out.write(&record_batch, captions::reasons(&rows))?;
                seen += batch.keys.len() as u64;
                out.wrote(batch.keys.len());
                Ok(())
            },
        )?;
        // Images skipped by the keep list still count as done.
        out.progress.inc(input.records.saturating_sub(seen));
        shard_out.commit(vec![input.file.clone()], 0.0)
    }

    fn closing_detail(&self) -> String {
        let secs = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        format!(
            ", {} tokens generated ({:.1} tokens/s, {} tasks, {} beams)",
            self.tokens,
            self.tokens as f64 / secs.max(1e-9),
            self.tasks.len(),
            self.model.num_beams()
        )
    }
}

/// Keys of a dedup stage's keep list.
fn read_keep(dir: &std::path::Path) -> Result<HashSet<String>> {
    dedup_keep::read_keys(&dir.join(dedup_keep::FILE)).with_context(|| {
        format!(
            "--keep {}: expected a finished dedup stage with {}",
            dir.display(),
            dedup_keep::FILE
        )
    })
}

/// Every task's captions of a batch, one row per image and task (images in
/// input order, tasks in the order asked). A batch the model fails on is
/// retried one image at a time, so the images it fails on alone are
/// recorded and the rest go on; when every image fails alone too, the
/// model (not the data) is broken and the error stops the stage.
fn caption_batch(
    model: &mut dyn CaptionModel,
    batch: &Prepared,
    tasks: &[String],
) -> Result<Vec<CaptionRow>> {
    let n = batch.ok.len();
    let plane = 3 * (batch.height * batch.width) as usize;
    // results[task][j] for the j-th good image.
    let mut results: Vec<Vec<std::result::Result<Caption, String>>> = Vec::new();
    for task in tasks {
        let mut out: Vec<std::result::Result<Caption, String>> = Vec::with_capacity(n);
        if n > 0 {
            match model.caption(&batch.pixels, n, task) {
                Ok(captions) => out.extend(captions.into_iter().map(Ok)),
                Err(batch_err) => {
                    for j in 0..n {
                        let px = &batch.pixels[j * plane..(j + 1) * plane];
                        out.push(match model.caption(px, 1, task) {
                            Ok(mut c) if c.len() == 1 => Ok(c.remove(0)),
                            Ok(c) => {
                                Err(format!("the model gave {} captions for one image", c.len()))
                            }
                            Err(e) => Err(e.to_string()),
                        });
                    }
                    if out.iter().all(std::result::Result::is_err) {
                        return Err(batch_err)
                            .context("the model failed on every image of a batch, one by one too");
                    }
                }
            }
            if out.len() != n {
                bail!(
                    "the model gave {} captions for a batch of {n} images",
                    out.len()
                );
            }
        }
        results.push(out);
    }
    let mut rows = Vec::with_capacity(batch.keys.len() * tasks.len());
    let mut good = 0;
    for (i, key) in batch.keys.iter().enumerate() {
        let failed = &batch.failed[i];
        for (t, task) in tasks.iter().enumerate() {
            let result = match failed {
                Some(f) => Err(f.clone()),
                None => results[t][good]
                    .clone()
                    .map_err(|e| ("inference".to_string(), e)),
            };
            rows.push(CaptionRow {
                key: key.clone(),
                task: task.clone(),
                result,
            });
        }
        if failed.is_none() {
            good += 1;
        }
    }
    Ok(rows)
}
