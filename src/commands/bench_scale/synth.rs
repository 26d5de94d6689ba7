//! The synthetic tables of `curate bench scale`: every table at N rows in
//! its real schema, each a complete stage folder written by the project's
//! own writers, with planted near-copies among the embeddings.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use curate_core::record::{ImageRecord, Status, Stored};
use curate_core::stage::{Inputs, StageDir, StageSpec};
use curate_io::{captions, embeddings, images, latents, scores, text_embeddings};
use curate_stage::{shard_range, TableShard, Upstream};

use super::{CAPTION_TASKS, LATENT_SHAPE, T5_WIDTH};

pub(super) fn key(i: usize) -> String {
    format!("{i:016x}")
}

/// A stage folder `dir` named `stage` writing `table`, `shards` shards of
/// `n` rows; `inputs` is its upstream's (else a synthetic directory).
fn open_stage(
    dir: &Path,
    stage: &str,
    table: &str,
    n: usize,
    shards: usize,
    inputs: Option<Inputs>,
) -> anyhow::Result<StageDir> {
    let spec = StageSpec {
        stage: stage.into(),
        schema: table.into(),
        config: serde_json::json!({"synthetic": true, "rows": n, "shards": shards}),
        inputs: inputs.unwrap_or(Inputs {
            kind: "directory".into(),
            location: "synthetic".into(),
            items: n as u64,
            fingerprint: format!("scale-{n}-{shards}"),
            shards: vec![],
        }),
        num_shards: shards as u32,
    };
    Ok(StageDir::open(dir, &spec, true)?.0)
}

/// Writes every shard of `stage` in parallel: `rows(range)` gives each
/// shard's row groups as (batch, failure reasons).
fn write_shards<F>(
    stage: &mut StageDir,
    table: &'static curate_core::schema::TableSchema,
    schema: arrow_schema::SchemaRef,
    n: usize,
    shards: usize,
    group: usize,
    batch: F,
) -> anyhow::Result<()>
where
    F: Fn(std::ops::Range<usize>) -> anyhow::Result<arrow_array::RecordBatch> + Sync,
{
    let size = n.div_ceil(shards) as u32;
    {
        let st: &StageDir = stage;
        (0..shards as u32)
            .into_par_iter()
            .try_for_each(|s| -> anyhow::Result<()> {
                let range = shard_range(s, size, n);
                let mut shard = TableShard::begin(st, s, table, schema.clone(), group)?;
                let mut start = range.start;
                while start < range.end {
                    let end = (start + group).min(range.end);
                    shard.write(&batch(start..end)?, std::iter::empty())?;
                    start = end;
                }
                shard.commit(vec![], 0.0)?;
                Ok(())
            })?;
    }
    stage.consolidate(&[])?;
    Ok(())
}

/// A caption of a few dozen words, different per key and task.
fn caption_text(i: usize, task: usize) -> String {
    const WORDS: [&str; 24] = [
        "a", "photo", "of", "red", "old", "house", "near", "the", "river", "with", "trees",
        "under", "blue", "sky", "and", "small", "boat", "on", "calm", "water", "people", "walking",
        "along", "shore",
    ];
    let len = [8, 25, 60][task] + i % 7;
    let mut rng = curate_dedup::rng::SplitMix64::new((i as u64) << 2 | task as u64);
    (0..len)
        .map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every table at `n` rows under `work`; returns the planted near-copy pairs.
pub(super) fn synthesise(
    work: &Path,
    n: usize,
    shards: usize,
    dim: usize,
) -> anyhow::Result<Vec<(u32, u32)>> {
    std::fs::create_dir_all(work)?;
    // A few small real JPEGs, reused.
    let jpegs: Vec<(Vec<u8>, String)> = (0..16u64)
        .map(|s| -> anyhow::Result<_> {
            let img = curate_vision::synthetic_photo(64, 48, s);
            let b = curate_vision::encode_jpeg(&img, 85)?;
            let h = curate_core::hash::sha256_hex(&b);
            Ok((b, h))
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let dir = work.join("ingest");
    let mut st = open_stage(&dir, "ingest", "images", n, shards, None)?;
    write_shards(
        &mut st,
        images::table(),
        images::arrow_schema(),
        n,
        shards,
        curate_stage::BATCH_ROWS,
        |r| {
            let recs: Vec<ImageRecord> = r
                .map(|i| {
                    let (b, h) = &jpegs[i % jpegs.len()];
                    let mut rec = ImageRecord::failed(
                        key(i),
                        format!("synthetic/{i:08}.jpg"),
                        "",
                        String::new(),
                        b.len() as u64,
                    );
                    rec.status = Status::Ok;
                    rec.reason = None;
                    rec.error = None;
                    rec.format = Some("jpeg".into());
                    rec.mode = Some("rgb8".into());
                    rec.width = Some(64);
                    rec.height = Some(48);
                    rec.orientation = Some(1);
                    rec.sha256 = Some(h.clone());
                    rec.stored = Some(Stored::Original);
                    rec.stored_format = Some("jpeg".into());
                    rec.bytes = Some(b.clone());
                    rec
                })
                .collect();
            Ok(images::to_batch(&recs)?)
        },
    )?;
    let up = Upstream::open(&dir, &["images"])?;
    eprintln!("  images: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let (x, planted) = crate::commands::bench::planted_embeddings(n, dim);
    let meta = embeddings::EmbeddingsMeta {
        model: "synthetic-clip".into(),
        dim,
        dtype: embeddings::Dtype::F16,
        output: "image_embeds".into(),
    };
    let schema = embeddings::arrow_schema(&meta)?;
    let mut st = open_stage(
        &work.join("embed"),
        "embed",
        "embeddings",
        n,
        shards,
        Some(up.inputs()),
    )?;
    write_shards(
        &mut st,
        embeddings::table(),
        schema.clone(),
        n,
        shards,
        1024,
        |r| {
            let keys: Vec<String> = r.clone().map(key).collect();
            let rows: Vec<curate_io::status::Outcome<Vec<f32>>> =
                r.map(|i| Ok(x.row(i).to_vec())).collect();
            Ok(embeddings::to_batch(&schema, &meta, &keys, &rows)?)
        },
    )?;
    drop(x);
    eprintln!("  embeddings: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let cmeta = captions::CaptionsMeta {
        model: "synthetic-florence".into(),
        num_beams: 3,
        max_new_tokens: 1024,
        tasks: CAPTION_TASKS.iter().map(|s| s.to_string()).collect(),
    };
    let schema = captions::arrow_schema(&cmeta)?;
    let mut st = open_stage(
        &work.join("caption"),
        "caption",
        "captions",
        n,
        shards,
        Some(up.inputs()),
    )?;
    write_shards(
        &mut st,
        captions::table(),
        schema.clone(),
        n,
        shards,
        256,
        |r| {
            let rows: Vec<captions::CaptionRow> = r
                .flat_map(|i| {
                    (0..3).map(move |t| {
                        let text = caption_text(i, t);
                        captions::CaptionRow {
                            key: key(i),
                            task: CAPTION_TASKS[t].into(),
                            result: Ok(captions::Caption {
                                num_tokens: text.split(' ').count() as u32 + 2,
                                text,
                                truncated: false,
                            }),
                        }
                    })
                })
                .collect();
            Ok(captions::to_batch(&schema, &cmeta.model, &rows)?)
        },
    )?;
    eprintln!("  captions: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let bands = curate_core::bands::Bands::parse(
        "6.0:\"excellent score\",5.2:\"good score\",4.0:\"average score\"",
        4.0,
    )
    .map_err(anyhow::Error::msg)?;
    let schema = scores::arrow_schema("synthetic-aesthetic", "pixels", &bands)?;
    let mut st = open_stage(
        &work.join("score"),
        "score",
        "scores",
        n,
        shards,
        Some(up.inputs()),
    )?;
    write_shards(
        &mut st,
        scores::table(),
        schema.clone(),
        n,
        shards,
        1024,
        |r| {
            let keys: Vec<String> = r.clone().map(key).collect();
            let rows: Vec<curate_io::status::Outcome<f32>> = r
                .map(|i| {
                    let u = (curate_dedup::rng::SplitMix64::new(i as u64 ^ 0x5c0e).next_u64() >> 40)
                        as f32
                        / (1u64 << 24) as f32;
                    Ok(3.0 + 4.0 * u)
                })
                .collect();
            Ok(scores::to_batch(
                &schema,
                "synthetic-aesthetic",
                &bands,
                &keys,
                &rows,
            )?)
        },
    )?;
    eprintln!("  scores: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let schema = latents::arrow_schema(None)?;
    let mut st = open_stage(
        &work.join("encode-latents"),
        "encode-latents",
        "latents",
        n,
        shards,
        Some(up.inputs()),
    )?;
    let vals = LATENT_SHAPE.iter().product::<usize>();
    write_shards(
        &mut st,
        latents::table(),
        schema.clone(),
        n,
        shards,
        256,
        |r| {
            let rows: Vec<latents::LatentRow> = r
                .map(|i| {
                    let v: Vec<f32> = (0..vals)
                        .map(|j| ((i * 31 + j) % 97) as f32 / 97.0 - 0.5)
                        .collect();
                    latents::LatentRow::from_values(
                        &key(i),
                        Some(format!("{}, good score", caption_text(i, 0))),
                        &v,
                        LATENT_SHAPE,
                        latents::LatentDtype::Bf16,
                    )
                })
                .collect();
            Ok(latents::to_batch(&rows, &schema)?)
        },
    )?;
    eprintln!("  latents: {:.1} s", t.elapsed().as_secs_f64());

    // T5 outputs of a tiny width, mirroring the latents shards row for row.
    let t = Instant::now();
    let lat = Upstream::open(&work.join("encode-latents"), &["latents"])?;
    let meta = text_embeddings::TextMeta {
        model: "synthetic-t5".into(),
        d_model: T5_WIDTH,
        max_length: 64,
        dtype: latents::LatentDtype::Bf16,
        latents: work.join("encode-latents").display().to_string(),
    };
    let schema = text_embeddings::arrow_schema(&meta)?;
    let text_row = |k: &str, caption: &str, tokens: usize| {
        let v: Vec<f32> = (0..tokens * T5_WIDTH)
            .map(|j| (j % 13) as f32 / 13.0)
            .collect();
        text_embeddings::TextRow::ok(k, caption, &v, tokens, latents::LatentDtype::Bf16)
    };
    let dir = work.join("encode-text");
    let mut st = open_stage(
        &dir,
        "encode-text",
        "text_embeddings",
        n,
        shards,
        Some(lat.inputs()),
    )?;
    write_shards(
        &mut st,
        text_embeddings::table(),
        schema.clone(),
        n,
        shards,
        256,
        |r| {
            let rows: Vec<text_embeddings::TextRow> = r
                .map(|i| {
                    text_row(
                        &key(i),
                        &format!("{}, good score", caption_text(i, 0)),
                        12 + i % 8,
                    )
                })
                .collect();
            Ok(text_embeddings::to_batch(&rows, &schema)?)
        },
    )?;
    let uncond = text_embeddings::to_batch(&[text_row("", "", 1)], &schema)?;
    curate_io::write_table(
        text_embeddings::table(),
        &dir.join(text_embeddings::UNCONDITIONAL_FILE),
        &[uncond],
        schema.clone(),
    )?;
    st.consolidate(&[text_embeddings::UNCONDITIONAL_FILE.to_string()])?;
    eprintln!("  text embeddings: {:.1} s", t.elapsed().as_secs_f64());
    Ok(planted)
}
