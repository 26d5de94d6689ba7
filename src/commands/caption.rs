//! `curate caption IMAGES -o OUT --model DIR`: Florence-2 captions, one row
//! per image and task (`--task caption,detailed,more-detailed`: the
//! report's captions of several lengths). Images go through the shared
//! pixel pipeline (768×768 squash, bicubic, ImageNet mean/std, exact to
//! Hugging Face's processor); batches of `--batch-size` images are decoded
//! together per task (beam search or greedy, per-sequence finishing; see
//! `curate_onnx::florence`). A failed image, or one the model fails on
//! alone, is a row with its reason; the batch goes on. `--keep DEDUP_DIR`
//! captions only the images a dedup run kept.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array};
use curate_core::split::ShardSplit;
use curate_core::stage::StageSpec;
use curate_onnx::florence::{prompt_of, Florence, Sequence};

use super::pixels::{self, PixelJob, Prepared};
use super::shared::{TableShard, Upstream};
use super::StageSummary;
use crate::cli::CaptionArgs;
use crate::progress::Progress;

fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("captions").expect("built-in schema")
}

/// A caption, its token count, and whether the length limit cut it.
type Caption = (String, u32, bool);

/// One output row.
struct Row {
    key: String,
    task: String,
    result: Result<Caption, (String, String)>,
}

pub fn run(args: &CaptionArgs) -> anyhow::Result<StageSummary> {
    let split = ShardSplit::from_env(args.shards.shard_index, args.shards.num_shards)?;
    let mut tasks = Vec::new();
    for t in &args.task {
        let t = t.trim();
        if prompt_of(t).is_none() {
            bail!("--task `{t}`: expected caption, detailed or more-detailed");
        }
        tasks.push(t.to_string());
    }
    let upstream = Upstream::open(&args.input, &["images"])?;
    let runtime = curate_onnx::init(&crate::paths::onnxruntime_dirs())?;
    let options = args.onnx.model_options();
    let mut model = Florence::load(runtime, &args.model, &args.variant, &options)?;
    if let Some(b) = args.num_beams {
        model.gen.num_beams = b.max(1);
    }
    model.gen.max_new_tokens = args.max_new_tokens.max(1);
    model.gen.kv_cache = !args.no_kv_cache;
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        let d = args.model.canonicalize().unwrap_or(args.model.clone());
        d.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "florence-2".into())
    });
    let only = match &args.keep {
        Some(dir) => Some(Arc::new(read_keep(dir)?)),
        None => None,
    };
    let spec = StageSpec {
        stage: "caption".into(),
        schema: "captions".into(),
        config: serde_json::json!({
            "model": model_id,
            "variant": args.variant,
            "tasks": tasks,
            "num_beams": model.gen.num_beams,
            "max_new_tokens": model.gen.max_new_tokens,
            "no_repeat_ngram_size": model.gen.no_repeat_ngram_size,
            "keep": args.keep.as_ref().map(|p| p.display().to_string()),
            "keep_count": only.as_ref().map(|k| k.len()),
            "preprocess": format!("{:?}", model.spec),
            "decode_scale": format!("{:?}", args.onnx.decode_scale),
        }),
        inputs: upstream.inputs(),
        num_shards: upstream.manifest.num_shards,
    };
    let mut stage = super::shared::open_output("caption", &args.output, &spec, args.overwrite)?;
    let schema = {
        let s = table().arrow_schema()?;
        let mut m = s.metadata().clone();
        m.insert("model".to_string(), model_id.clone());
        m.insert("num_beams".to_string(), model.gen.num_beams.to_string());
        m.insert(
            "max_new_tokens".to_string(),
            model.gen.max_new_tokens.to_string(),
        );
        m.insert("tasks".to_string(), tasks.join(","));
        Arc::new(s.with_metadata(m))
    };
    let (job, pool) = PixelJob::from_args(&args.onnx, model.spec.clone(), only)?;
    let owned_rows: u64 = split
        .owned(stage.num_shards())
        .map(|s| upstream.shards[s as usize].records)
        .sum();
    let mut progress = Progress::new("caption", owned_rows);
    let mut hook = super::shared::StallHook::from_env();
    let mut tokens = 0u64;
    let summary = super::shared::each_owned_shard(
        "caption",
        &stage,
        &upstream,
        &split,
        table(),
        &mut progress,
        |shard, input, progress| {
            let mut out = TableShard::begin(&stage, shard, table(), schema.clone(), 256)?;
            let mut seen = 0u64;
            pixels::for_each_batch(&upstream.shard_path(input), &job, &pool, |batch| {
                let rows = caption_batch(&mut model, &batch, &tasks)?;
                tokens += rows
                    .iter()
                    .filter_map(|r| r.result.as_ref().ok().map(|x| x.1 as u64))
                    .sum::<u64>();
                let record_batch = to_batch(&rows, &model_id, schema.clone())?;
                out.write(
                    &record_batch,
                    rows.iter()
                        .filter_map(|r| r.result.as_ref().err().map(|e| e.0.as_str())),
                )?;
                seen += batch.keys.len() as u64;
                progress.inc(batch.keys.len() as u64);
                hook.wrote(batch.keys.len());
                Ok(())
            })?;
            // Images skipped by --keep still count as done.
            progress.inc(input.records.saturating_sub(seen));
            out.commit(vec![input.file.clone()], 0.0)
        },
    )?;
    progress.finish();
    let secs = progress.elapsed().as_secs_f64();
    super::shared::stage_done_line("caption", &summary, hook.rows, secs);
    tracing::info!(
        "caption: {tokens} tokens generated ({:.1} tokens/s, {} tasks, {} beams)",
        tokens as f64 / secs.max(1e-9),
        tasks.len(),
        model.gen.num_beams
    );
    stage.consolidate(&[])?;
    Ok(summary)
}

/// Keys of a dedup stage's keep list.
fn read_keep(dir: &std::path::Path) -> anyhow::Result<HashSet<String>> {
    let path = dir.join("keep.parquet");
    let table = curate_core::schema::get("dedup_keep")?;
    let mut keys = HashSet::new();
    for b in curate_io::read_columns(&path, table, Some(&["key"])).with_context(|| {
        format!(
            "--keep {}: expected a finished dedup stage with keep.parquet",
            dir.display()
        )
    })? {
        let k = b.column(0).as_string::<i32>();
        keys.extend((0..b.num_rows()).map(|i| k.value(i).to_string()));
    }
    Ok(keys)
}

/// Tokens between the forced BOS and EOS; whether the limit cut the caption.
fn count(seq: &Sequence, model: &Florence) -> (u32, bool) {
    let (eos, pad) = (model.gen.eos_token_id, model.gen.pad_token_id);
    let body: Vec<&i64> = seq
        .iter()
        .skip(2)
        .take_while(|&&t| t != eos && t != pad)
        .collect();
    let eos_at = 2 + body.len();
    (body.len() as u32, eos_at >= model.gen.max_new_tokens)
}

fn caption_batch(
    model: &mut Florence,
    batch: &Prepared,
    tasks: &[String],
) -> anyhow::Result<Vec<Row>> {
    let n = batch.ok.len();
    let plane = 3 * (batch.height * batch.width) as usize;
    // results[task][j] for the j-th good image.
    let mut results: Vec<Vec<Result<Caption, String>>> = Vec::new();
    for task in tasks {
        let prompt = prompt_of(task).expect("checked");
        let mut out: Vec<Result<Caption, String>> = Vec::with_capacity(n);
        if n > 0 {
            match model.generate(&batch.pixels, &vec![prompt; n]) {
                Ok(seqs) => {
                    for s in seqs {
                        let (t, cut) = count(&s, model);
                        out.push(Ok((model.decode(&s)?, t, cut)));
                    }
                }
                Err(batch_err) => {
                    // One image at a time: record the ones the model fails on.
                    for j in 0..n {
                        let px = &batch.pixels[j * plane..(j + 1) * plane];
                        out.push(match model.generate(px, &[prompt]) {
                            Ok(mut s) => {
                                let s = s.remove(0);
                                let (t, cut) = count(&s, model);
                                Ok((model.decode(&s)?, t, cut))
                            }
                            Err(e) => Err(e.to_string()),
                        });
                    }
                    if out.iter().all(Result::is_err) {
                        return Err(batch_err)
                            .context("the model failed on every image of a batch, one by one too");
                    }
                }
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
            rows.push(Row {
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

fn ok(r: &Row) -> Option<&Caption> {
    r.result.as_ref().ok()
}

fn to_batch(
    rows: &[Row],
    model: &str,
    schema: arrow_schema::SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.task.as_str()),
        )),
        Arc::new(
            rows.iter()
                .map(|r| Some(if r.result.is_ok() { "ok" } else { "error" }))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.result.as_ref().err().map(|e| e.0.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.result.as_ref().err().map(|e| e.1.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| ok(r).map(|x| x.0.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| ok(r).map(|x| x.1))
                .collect::<UInt32Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| ok(r).map(|x| x.2))
                .collect::<BooleanArray>(),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            model,
            rows.len(),
        ))),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}
