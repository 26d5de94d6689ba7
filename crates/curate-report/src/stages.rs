//! Stage pages: fetch/ingest (outcomes by reason, throughput, sizes,
//! download facts), captions (lengths per task), scores (histogram with
//! the tag bands), latents (bucket distribution), and a generic page for
//! any other stage with per-record outcomes (embed).

use std::collections::BTreeSet;
use std::fmt::Write;

use polars::prelude::*;

use crate::html::{self, esc, num, pct, thousands};
use crate::run::{Run, Stage};
use crate::stats::{self, collect, f64s, i64s, strs};
use crate::svg::{self, Marker};
use crate::thumbs::{Thumb, Thumbs};
use crate::{ReportError, Writer};

fn what(stage: &Stage, s: &str) -> String {
    format!("stage {}: {s}", stage.dir.display())
}

/// The opening paragraph and key facts every stage page has.
fn header(stage: &Stage, run: &Run) -> String {
    let mut out = String::new();
    let m = &stage.manifest;
    let upstream = run
        .upstream(stage)
        .map(|u| format!("stage <code>{}</code>", esc(&u.name)))
        .unwrap_or_else(|| {
            format!(
                "{} <code>{}</code>",
                esc(&m.inputs.kind),
                esc(&m.inputs.location)
            )
        });
    let _ = write!(
        out,
        r#"<p class="note">Stage <b>{}</b> writing table <code>{} v{}</code> into <code>{}</code>, reading {} ({} items). {}</p>"#,
        esc(&m.stage),
        esc(&m.schema.name),
        m.schema.version,
        esc(&stage.dir.display().to_string()),
        upstream,
        thousands(m.inputs.items),
        if stage.complete() {
            "All shards complete.".to_string()
        } else {
            format!(
                r#"<span class="warn">{} of {} shards complete: the numbers below cover the complete shards only.</span>"#,
                stage.journal.len(),
                m.num_shards
            )
        }
    );
    let records = stage.records();
    let work = stage.work_seconds();
    out.push_str(&html::facts(&[
        ("records", thousands(records)),
        (
            "failed",
            format!(
                "{} ({})",
                thousands(stage.failures()),
                pct(stage.failures(), records)
            ),
        ),
        (
            "shards",
            format!("{}/{}", stage.journal.len(), m.num_shards),
        ),
        (
            "throughput",
            if work > 0.0 {
                format!("{} records/s", num(records as f64 / work))
            } else {
                "–".into()
            },
        ),
        ("work time", html::duration(work)),
        (
            "wall time",
            stage
                .wall_seconds()
                .map(html::duration)
                .unwrap_or("–".into()),
        ),
    ]));
    out
}

/// Throughput per shard (records per second of each shard's work).
fn throughput(stage: &Stage, id: &str) -> String {
    if stage.journal.is_empty() {
        return String::new();
    }
    let rates: Vec<(String, f64)> = stage
        .journal
        .iter()
        .map(|r| {
            (
                format!("{}", r.shard),
                if r.duration_s > 0.0 {
                    r.records as f64 / r.duration_s
                } else {
                    0.0
                },
            )
        })
        .collect();
    let rows: Vec<Vec<String>> = stage
        .journal
        .iter()
        .zip(&rates)
        .map(|(r, (_, rate))| {
            vec![
                r.shard.to_string(),
                thousands(r.records),
                thousands(r.failures),
                html::duration(r.duration_s),
                num(*rate),
                html::bytes(r.bytes),
                esc(r.host.as_deref().unwrap_or("–")),
                esc(r.slurm_job.as_deref().unwrap_or("–")),
            ]
        })
        .collect();
    let table = html::table(
        "shards",
        &[
            "shard",
            "records",
            "failed",
            "work",
            "records/s",
            "shard size",
            "host",
            "Slurm job",
        ],
        &rows,
    );
    let svg = if rates.len() <= 40 {
        svg::bars(id, "Throughput per shard", "shard", "records/s", &rates)
    } else {
        let max = rates.iter().map(|r| r.1).fold(0.0, f64::max);
        let bins = 30;
        let mut counts = vec![0u64; bins];
        for (_, r) in &rates {
            let b = ((r / max.max(1e-9)) * bins as f64) as usize;
            counts[b.min(bins - 1)] += 1;
        }
        svg::histogram(
            id,
            "Throughput per shard",
            "records/s",
            "shards",
            &stats::Histogram {
                lo: 0.0,
                hi: max.max(1e-9),
                counts,
            },
            &[],
        )
    };
    format!(
        "<h2>Throughput</h2>{}",
        html::figure(
            &svg,
            "Records per second of work in each shard (array tasks run shards in parallel, so the stage's wall time is shorter than the summed work).",
            &table
        )
    )
}

/// Outcomes by status and reason, with an example error per reason.
fn outcomes(
    stage: &Stage,
    lf: LazyFrame,
    group: Option<&str>,
    id: &str,
) -> Result<String, ReportError> {
    let mut keys = vec![col("status"), col("reason")];
    if let Some(g) = group {
        keys.insert(0, col(g).cast(DataType::String));
    }
    let df = collect(
        lf.group_by(keys)
            .agg([
                len().cast(DataType::Int64).alias("n"),
                col("error").drop_nulls().first().alias("example"),
            ])
            .sort_by_exprs(
                [col("n")],
                SortMultipleOptions::default().with_order_descending(true),
            ),
        &what(stage, "outcomes"),
    )?;
    let status = strs(&df, "status")?;
    let reason = strs(&df, "reason")?;
    let n = i64s(&df, "n")?;
    let example = strs(&df, "example")?;
    let groups = match group {
        Some(g) => strs(&df, g)?,
        None => vec![None; df.height()],
    };
    let total: u64 = n.iter().map(|v| v.unwrap_or(0) as u64).sum();
    let mut bars = Vec::new();
    let mut rows = Vec::new();
    for i in 0..df.height() {
        let c = n[i].unwrap_or(0) as u64;
        let label = match (status[i].as_deref(), reason[i].as_deref()) {
            (Some("ok"), _) => "ok".to_string(),
            (_, Some(r)) => r.to_string(),
            (Some(s), None) => s.to_string(),
            (None, None) => "–".into(),
        };
        let full = match &groups[i] {
            Some(g) => format!("{g}: {label}"),
            None => label.clone(),
        };
        bars.push((full.clone(), c as f64));
        let mut row = Vec::new();
        if group.is_some() {
            row.push(esc(groups[i].as_deref().unwrap_or("–")));
        }
        row.extend([
            esc(&label),
            thousands(c),
            pct(c, total),
            example[i]
                .as_deref()
                .map(|e| {
                    let e: String = e.chars().take(200).collect();
                    format!("<small>{}</small>", esc(&e))
                })
                .unwrap_or_default(),
        ]);
        rows.push(row);
    }
    let mut headers = vec!["outcome", "records", "share", "example error"];
    if let Some(g) = group {
        headers.insert(0, g);
    }
    Ok(format!(
        "<h2>Outcomes</h2>{}",
        html::figure(
            &svg::bars(id, "Outcomes by reason", "outcome", "records", &bars),
            "Every record is ok or an error with a short reason; the batch goes on past errors.",
            &html::table("outcomes", &headers, &rows),
        )
    ))
}

/// A stage page for a stage without complete shards: its header and a note.
/// `None` when the stage has shards to report on.
fn no_shards_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    file: &str,
    kind: &str,
) -> Option<Result<(), ReportError>> {
    if !stage.files.is_empty() {
        return None;
    }
    let mut body = header(stage, run);
    body.push_str("<p>No complete shards yet.</p>");
    Some(w.page(file, &format!("{kind}: {}", stage.name), file, &body))
}

/// The outcomes chart of a table with `status`, `reason` and `error` columns.
fn status_outcomes(stage: &Stage, lf: LazyFrame, name: &str) -> Result<String, ReportError> {
    outcomes(
        stage,
        lf.select([col("status"), col("reason"), col("error")]),
        None,
        &format!("{name}-outcomes"),
    )
}

fn config_table(stage: &Stage) -> String {
    let mut rows = Vec::new();
    if let Some(obj) = stage.manifest.config.as_object() {
        for (k, v) in obj {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let text: String = if text.chars().count() > 300 {
                text.chars().take(300).chain(['…']).collect()
            } else {
                text
            };
            rows.push(vec![esc(k), format!("<code>{}</code>", esc(&text))]);
        }
    }
    format!(
        "<h2>Configuration</h2>{}",
        html::table("config", &["option", "value"], &rows)
    )
}

fn has(cols: &[String], c: &str) -> bool {
    cols.iter().any(|x| x == c)
}

/// Long-side histogram bounds: 0 to the largest, in round steps.
fn size_range(max: f64) -> (f64, usize) {
    let step = svg::ticks(0.0, max.max(1.0), 30)
        .windows(2)
        .next()
        .map(|w| w[1] - w[0])
        .unwrap_or(1.0);
    let hi = stats::ceil_to(max.max(1.0), step);
    (hi, ((hi / step).round() as usize).max(1))
}

/// fetch / ingest: the `images` table.
pub fn images_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    if let Some(done) = no_shards_page(w, run, stage, &file, "Images") {
        return done;
    }
    let mut body = header(stage, run);
    let lf = || stats::scan(&stage.files);
    let cols = stats::columns(&stage.files)?;
    let fetch = stage.manifest.stage == "fetch"
        || has(&cols, "http_status") && stage.manifest.inputs.kind == "url_list";
    let outcome_html = status_outcomes(stage, lf()?, name)?;
    // Bytes and exact duplicates.
    let bdf = collect(
        lf()?.filter(col("status").eq(lit("ok"))).select([
            len().cast(DataType::Int64).alias("ok"),
            col("file_size").cast(DataType::Int64).sum().alias("bytes"),
        ]),
        &what(stage, "bytes"),
    )?;
    let ok = i64s(&bdf, "ok")?[0].unwrap_or(0) as u64;
    let total_bytes = i64s(&bdf, "bytes")?[0].unwrap_or(0) as u64;
    let dups_path = stage.dir.join("exact_duplicates.parquet");
    let dups = if dups_path.is_file() {
        let d = collect(
            stats::scan(std::slice::from_ref(&dups_path))?
                .select([len().cast(DataType::Int64).alias("n")]),
            &what(stage, "exact duplicates"),
        )?;
        Some(i64s(&d, "n")?[0].unwrap_or(0) as u64)
    } else {
        None
    };
    let work = stage.work_seconds();
    body.push_str(r#"<div class="grid"><section>"#);
    body.push_str(&outcome_html);
    body.push_str("</section><section><h2>Images</h2>");
    body.push_str(&html::facts(&[
        ("ok images", thousands(ok)),
        ("source bytes (ok)", html::bytes(total_bytes)),
        (
            "bytes/s of work",
            if work > 0.0 {
                format!("{}/s", html::bytes((total_bytes as f64 / work) as u64))
            } else {
                "–".into()
            },
        ),
        (
            "exact duplicates",
            dups.map(|d| format!("{} ({})", thousands(d), pct(d, ok)))
                .unwrap_or("–".into()),
        ),
    ]));
    // Formats and modes.
    let fm = collect(
        lf()?
            .filter(col("status").eq(lit("ok")))
            .group_by([col("format"), col("mode"), col("stored")])
            .agg([len().cast(DataType::Int64).alias("n")])
            .sort_by_exprs(
                [col("n")],
                SortMultipleOptions::default().with_order_descending(true),
            ),
        &what(stage, "formats"),
    )?;
    let rows: Vec<Vec<String>> = strs(&fm, "format")?
        .into_iter()
        .zip(strs(&fm, "mode")?)
        .zip(strs(&fm, "stored")?)
        .zip(i64s(&fm, "n")?)
        .map(|(((f, m), s), n)| {
            let n = n.unwrap_or(0) as u64;
            vec![
                esc(f.as_deref().unwrap_or("–")),
                esc(m.as_deref().unwrap_or("–")),
                esc(s.as_deref().unwrap_or("–")),
                thousands(n),
                pct(n, ok),
            ]
        })
        .collect();
    // Long side.
    let long = || -> Result<LazyFrame, ReportError> {
        Ok(lf()?.filter(col("status").eq(lit("ok"))).select([when(
            col("width").gt_eq(col("height")),
        )
        .then(col("width"))
        .otherwise(col("height"))
        .cast(DataType::Float64)
        .alias("long")]))
    };
    let ls = stats::summary(long()?, "long", &what(stage, "image sizes"))?;
    let (hi, bins) = size_range(ls.max.unwrap_or(1.0));
    let lh = stats::histogram(long()?, "long", 0.0, hi, bins, &what(stage, "image sizes"))?;
    body.push_str(&html::figure(
        &svg::histogram(
            &format!("{name}-long"),
            "Image size (longer side)",
            "pixels, longer side after EXIF orientation",
            "images",
            &lh,
            &[],
        ),
        &format!(
            "Median {} px, 95th percentile {} px, largest {} px.",
            html::opt(ls.median),
            html::opt(ls.p95),
            html::opt(ls.max)
        ),
        &html::table(
            "formats",
            &["format", "colour mode", "stored", "images", "share"],
            &rows,
        ),
    ));
    body.push_str("</section></div>");
    if fetch && has(&cols, "http_status") {
        body.push_str("<h2>Downloads</h2>");
        let hs = stats::value_counts(
            lf()?.select([col("http_status")]),
            "http_status",
            &what(stage, "HTTP status"),
        )?;
        let total: u64 = hs.iter().map(|h| h.1).sum();
        body.push_str(&html::figure(
            &svg::bars(
                &format!("{name}-http"),
                "HTTP status of the last attempt",
                "status",
                "URLs",
                &hs.iter()
                    .map(|(s, n)| (s.clone().unwrap_or("no response".into()), *n as f64))
                    .collect::<Vec<_>>(),
            ),
            "“no response”: a timeout or connection error.",
            &html::table(
                "http",
                &["HTTP status", "URLs", "share"],
                &hs.iter()
                    .map(|(s, n)| {
                        vec![
                            esc(s.as_deref().unwrap_or("no response")),
                            thousands(*n),
                            pct(*n, total),
                        ]
                    })
                    .collect::<Vec<_>>(),
            ),
        ));
        let ms = stats::summary(
            lf()?.select([col("fetch_ms")]),
            "fetch_ms",
            &what(stage, "fetch time"),
        )?;
        let (hi, bins) = size_range(ms.p95.unwrap_or(1.0).max(1.0) * 1.5);
        let mh = stats::histogram(
            lf()?.select([col("fetch_ms")]),
            "fetch_ms",
            0.0,
            hi,
            bins,
            &what(stage, "fetch time"),
        )?;
        let att = stats::value_counts(
            lf()?.select([col("attempts")]),
            "attempts",
            &what(stage, "attempts"),
        )?;
        body.push_str(&html::figure(
            &svg::histogram(
                &format!("{name}-ms"),
                "Time per URL",
                "milliseconds from first request to last byte (back-off included)",
                "URLs",
                &mh,
                &[],
            ),
            &format!(
                "Median {} ms, 95th percentile {} ms, slowest {} ms (the last bin holds everything slower).",
                html::opt(ms.median),
                html::opt(ms.p95),
                html::opt(ms.max)
            ),
            &html::table(
                "attempts",
                &["requests per URL", "URLs"],
                &att.iter()
                    .map(|(a, n)| vec![esc(a.as_deref().unwrap_or("–")), thousands(*n)])
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(&file, &format!("Images: {}", stage.name), &file, &body)
}

/// Any other stage with per-record outcomes (embed, unknown tables).
pub fn generic_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    let mut body = header(stage, run);
    let cols = stats::columns(&stage.files)?;
    if has(&cols, "status") && has(&cols, "reason") && has(&cols, "error") {
        body.push_str(&outcomes(
            stage,
            stats::scan(&stage.files)?.select([col("status"), col("reason"), col("error")]),
            None,
            &format!("{name}-outcomes"),
        )?);
    }
    if has(&cols, "model") {
        let models = stats::value_counts(
            stats::scan(&stage.files)?.select([col("model")]),
            "model",
            &what(stage, "models"),
        )?;
        body.push_str(&html::table(
            "models",
            &["model", "records"],
            &models
                .iter()
                .map(|(m, n)| vec![esc(m.as_deref().unwrap_or("–")), thousands(*n)])
                .collect::<Vec<_>>(),
        ));
    }
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(
        &file,
        &format!("{}: {}", stage.manifest.stage, stage.name),
        &file,
        &body,
    )
}

/// caption: lengths per task.
pub fn captions_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    if let Some(done) = no_shards_page(w, run, stage, &file, "Captions") {
        return done;
    }
    let mut body = header(stage, run);
    let lf = || stats::scan(&stage.files);
    body.push_str(&outcomes(
        stage,
        lf()?.select([col("task"), col("status"), col("reason"), col("error")]),
        Some("task"),
        &format!("{name}-outcomes"),
    )?);
    let tasks: Vec<String> =
        stats::value_counts(lf()?.select([col("task")]), "task", &what(stage, "tasks"))?
            .into_iter()
            .filter_map(|(t, _)| t)
            .collect();
    let order = ["caption", "detailed", "more-detailed"];
    let mut tasks = tasks;
    tasks.sort_by_key(|t| {
        (
            order.iter().position(|o| o == t).unwrap_or(order.len()),
            t.clone(),
        )
    });
    body.push_str("<h2>Caption lengths per task</h2>");
    let ok = |task: &str| -> Result<LazyFrame, ReportError> {
        Ok(lf()?.filter(
            col("status")
                .eq(lit("ok"))
                .and(col("task").eq(lit(task.to_string()))),
        ))
    };
    let mut rows = Vec::new();
    let mut figs = String::new();
    for (i, task) in tasks.iter().enumerate() {
        let tok = stats::summary(
            ok(task)?.select([col("num_tokens")]),
            "num_tokens",
            &what(stage, "tokens"),
        )?;
        let chars_lf = || -> Result<LazyFrame, ReportError> {
            Ok(ok(task)?.select([col("caption").str().len_chars().alias("chars")]))
        };
        let ch = stats::summary(chars_lf()?, "chars", &what(stage, "characters"))?;
        let tr = collect(
            ok(task)?.select([col("truncated").cast(DataType::Int64).sum().alias("t")]),
            &what(stage, "truncated"),
        )?;
        let truncated = i64s(&tr, "t")?[0].unwrap_or(0) as u64;
        rows.push(vec![
            esc(task),
            thousands(tok.count),
            html::opt(tok.mean),
            html::opt(tok.median),
            html::opt(tok.p95),
            html::opt(tok.max),
            html::opt(ch.mean),
            format!("{} ({})", thousands(truncated), pct(truncated, tok.count)),
        ]);
        let max = tok.max.unwrap_or(1.0).max(1.0);
        let (hi, bins) = if max <= 60.0 {
            (max.ceil() + 1.0, (max.ceil() + 1.0) as usize)
        } else {
            size_range(max)
        };
        let h = stats::histogram(
            ok(task)?.select([col("num_tokens")]),
            "num_tokens",
            0.0,
            hi,
            bins,
            &what(stage, "token histogram"),
        )?;
        figs.push_str(&html::figure(
            &svg::histogram(
                &format!("{name}-len-{i}"),
                &format!("Caption length: {task}"),
                "generated tokens",
                "captions",
                &h,
                &[],
            ),
            &format!(
                "Task “{}”: {} captions, median {} tokens / {} characters.",
                esc(task),
                thousands(tok.count),
                html::opt(tok.median),
                html::opt(ch.median)
            ),
            &html::hist_table(&h, "count"),
        ));
    }
    body.push_str(&html::table(
        "lengths",
        &[
            "task",
            "captions",
            "mean tokens",
            "median",
            "p95",
            "max",
            "mean characters",
            "cut at --max-new-tokens",
        ],
        &rows,
    ));
    body.push_str(&figs);
    // A few examples per task.
    body.push_str("<h2>Examples</h2>");
    let mut ex_rows = Vec::new();
    for task in &tasks {
        let df = collect(
            ok(task)?.select([col("key"), col("caption")]).limit(3),
            &what(stage, "examples"),
        )?;
        for (k, c) in strs(&df, "key")?.into_iter().zip(strs(&df, "caption")?) {
            ex_rows.push(vec![
                esc(task),
                format!("<code>{}</code>", esc(k.as_deref().unwrap_or(""))),
                esc(c.as_deref().unwrap_or("")),
            ]);
        }
    }
    body.push_str(&html::table(
        "examples",
        &["task", "key", "caption"],
        &ex_rows,
    ));
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(&file, &format!("Captions: {}", stage.name), &file, &body)
}

/// The bands a score stage used: the shards' `bands` / `drop_below` metadata, else its configuration.
fn bands_of(stage: &Stage) -> curate_core::bands::Bands {
    let table = curate_core::schema::get("scores").ok();
    if let (Some(table), Some(first)) = (table, stage.files.first()) {
        if let Ok(mut it) = curate_io::stream_columns(first, table, &["key"], 1) {
            if let Some(Ok(batch)) = it.next() {
                let meta = batch.schema().metadata().clone();
                let bands = meta
                    .get("bands")
                    .and_then(|b| serde_json::from_str::<Vec<(f32, String)>>(b).ok());
                let drop = meta.get("drop_below").and_then(|d| d.parse::<f32>().ok());
                if let Some(mut bands) = bands {
                    bands.sort_by(|a, b| b.0.total_cmp(&a.0));
                    return curate_core::bands::Bands {
                        bands,
                        drop_below: drop.unwrap_or(f32::NEG_INFINITY),
                    };
                }
            }
        }
    }
    let cfg = &stage.manifest.config;
    let bands = cfg
        .get("bands")
        .and_then(|b| serde_json::from_value::<Vec<(f32, String)>>(b.clone()).ok());
    match bands {
        Some(mut bands) => {
            bands.sort_by(|a, b| b.0.total_cmp(&a.0));
            curate_core::bands::Bands {
                bands,
                drop_below: cfg
                    .get("drop_below")
                    .and_then(|d| d.as_f64())
                    .map(|d| d as f32)
                    .unwrap_or(f32::NEG_INFINITY),
            }
        }
        None => curate_core::bands::Bands::default(),
    }
}

fn gallery(keys: &[(String, f64)], thumbs: &std::collections::HashMap<String, Thumb>) -> String {
    let mut out = String::from(r#"<div class="gallery">"#);
    for (k, score) in keys {
        let _ = write!(
            out,
            r#"<figure class="member" data-key="{}"><div class="thumb">"#,
            esc(k)
        );
        match thumbs.get(k) {
            Some(Thumb::Ready {
                href,
                width,
                height,
            }) => {
                let _ = write!(
                    out,
                    r#"<img src="{}" width="{width}" height="{height}" alt="image {}">"#,
                    esc(href),
                    esc(k)
                );
            }
            Some(Thumb::Missing(why)) => {
                let _ = write!(
                    out,
                    r#"<div class="missing">no thumbnail: {}</div>"#,
                    esc(why)
                );
            }
            None => out.push_str(r#"<div class="missing">no images stage found</div>"#),
        }
        let _ = write!(
            out,
            r#"</div><figcaption>score <span class="cos">{score:.3}</span><br><code>{}</code></figcaption></figure>"#,
            esc(k)
        );
    }
    out.push_str("</div>");
    out
}

/// score: histogram with the tag bands, counts per tag, extremes.
pub fn scores_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
    thumbs: &Thumbs,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    if let Some(done) = no_shards_page(w, run, stage, &file, "Scores") {
        return done;
    }
    let mut body = header(stage, run);
    let lf = || stats::scan(&stage.files);
    body.push_str(&status_outcomes(stage, lf()?, name)?);
    let bands = bands_of(stage);
    let ok = || -> Result<LazyFrame, ReportError> { Ok(lf()?.filter(col("status").eq(lit("ok")))) };
    let s = stats::summary(
        ok()?.select([col("score")]),
        "score",
        &what(stage, "scores"),
    )?;
    let mut lo = s.min.unwrap_or(0.0).floor();
    let mut hi = s.max.unwrap_or(10.0).ceil();
    for (edge, _) in &bands.bands {
        lo = lo.min(*edge as f64 - 0.5).floor();
        hi = hi.max(*edge as f64 + 0.5).ceil();
    }
    if bands.drop_below.is_finite() {
        lo = lo.min(bands.drop_below as f64 - 0.5).floor();
    }
    let bins = (((hi - lo) / 0.1).round() as usize).clamp(1, 120);
    let h = stats::histogram(
        ok()?.select([col("score")]),
        "score",
        lo,
        hi,
        bins,
        &what(stage, "score histogram"),
    )?;
    let mut marks: Vec<Marker> = bands
        .bands
        .iter()
        .map(|(e, t)| Marker {
            x: *e as f64,
            label: format!("≥ {e}: {t}"),
        })
        .collect();
    if bands.drop_below.is_finite() && !bands.bands.iter().any(|(e, _)| *e == bands.drop_below) {
        marks.push(Marker {
            x: bands.drop_below as f64,
            label: format!("< {} dropped", bands.drop_below),
        });
    }
    marks.sort_by(|a, b| a.x.total_cmp(&b.x));
    let tags = collect(
        ok()?.group_by([col("tag"), col("dropped")]).agg([
            len().cast(DataType::Int64).alias("n"),
            col("score").min().alias("min"),
            col("score").max().alias("max"),
        ]),
        &what(stage, "tags"),
    )?;
    let tag_names = strs(&tags, "tag")?;
    let dropped = crate::stats::bools(&tags, "dropped")?;
    let counts = i64s(&tags, "n")?;
    let mins = f64s(&tags, "min")?;
    let maxs = f64s(&tags, "max")?;
    let mut rows = Vec::new();
    let total = s.count;
    let mut order: Vec<usize> = (0..tags.height()).collect();
    order.sort_by(|a, b| maxs[*b].unwrap_or(0.0).total_cmp(&maxs[*a].unwrap_or(0.0)));
    for i in order {
        let band = tag_names[i].as_deref().map(|t| {
            bands
                .bands
                .iter()
                .find(|(_, bt)| bt == t)
                .map(|(e, _)| format!("≥ {e}"))
                .unwrap_or_default()
        });
        let label = match (&tag_names[i], dropped[i]) {
            (Some(t), _) => esc(t),
            (None, Some(true)) => "dropped (no tag)".into(),
            (None, _) => "no tag".into(),
        };
        let n = counts[i].unwrap_or(0) as u64;
        rows.push(vec![
            label,
            band.unwrap_or_else(|| format!("< {}", bands.drop_below)),
            thousands(n),
            pct(n, total),
            html::opt(mins[i]),
            html::opt(maxs[i]),
        ]);
    }
    body.push_str("<h2>Aesthetic scores and quality tags</h2>");
    body.push_str(&html::facts(&[
        ("scored", thousands(s.count)),
        ("mean", html::opt(s.mean)),
        ("median", html::opt(s.median)),
        ("lowest", html::opt(s.min)),
        ("highest", html::opt(s.max)),
        ("drop below", num(bands.drop_below as f64)),
    ]));
    body.push_str(&html::figure(
        &svg::histogram(
            &format!("{name}-scores"),
            "Aesthetic score with the tag bands",
            "aesthetic score",
            "images",
            &h,
            &marks,
        ),
        "Lower band edges are inclusive; images below the drop threshold are excluded from training.",
        &html::hist_table(&h, "count"),
    ));
    body.push_str(&html::table(
        "tags",
        &["tag", "band", "images", "share", "lowest", "highest"],
        &rows,
    ));
    // The extremes, as thumbnails.
    if let Some(images) = run.images_of(stage) {
        let pick = |desc: bool| -> Result<Vec<(String, f64)>, ReportError> {
            let df = collect(
                ok()?
                    .select([col("key"), col("score")])
                    .sort_by_exprs(
                        [col("score")],
                        SortMultipleOptions::default().with_order_descending(desc),
                    )
                    .limit(8),
                &what(stage, "extremes"),
            )?;
            Ok(strs(&df, "key")?
                .into_iter()
                .zip(f64s(&df, "score")?)
                .filter_map(|(k, s)| Some((k?, s?)))
                .collect())
        };
        let (top, bottom) = (pick(true)?, pick(false)?);
        let keys: BTreeSet<String> = top.iter().chain(&bottom).map(|(k, _)| k.clone()).collect();
        let t = thumbs.ensure(images, &keys)?;
        body.push_str("<h2>Highest scored</h2>");
        body.push_str(&gallery(&top, &t));
        body.push_str("<h2>Lowest scored</h2>");
        body.push_str(&gallery(&bottom, &t));
    }
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(&file, &format!("Scores: {}", stage.name), &file, &body)
}

/// encode-latents: the bucket distribution.
pub fn latents_page(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
) -> Result<(), ReportError> {
    let file = format!("{name}.html");
    if let Some(done) = no_shards_page(w, run, stage, &file, "Latents") {
        return done;
    }
    let mut body = header(stage, run);
    let lf = || stats::scan(&stage.files);
    body.push_str(&status_outcomes(stage, lf()?, name)?);
    let b = collect(
        lf()?
            .filter(col("status").eq(lit("ok")))
            .group_by([col("stage"), col("bucket_h"), col("bucket_w")])
            .agg([len().cast(DataType::Int64).alias("n")])
            .sort_by_exprs(
                [col("stage"), col("n"), col("bucket_h"), col("bucket_w")],
                SortMultipleOptions::default()
                    .with_order_descending_multi([false, true, false, false]),
            ),
        &what(stage, "buckets"),
    )?;
    let st = i64s(&b, "stage")?;
    let bh = i64s(&b, "bucket_h")?;
    let bw = i64s(&b, "bucket_w")?;
    let n = i64s(&b, "n")?;
    let total: u64 = n.iter().map(|v| v.unwrap_or(0) as u64).sum();
    let mut bars = Vec::new();
    let mut rows = Vec::new();
    for i in 0..b.height() {
        let (h, w_) = (bh[i].unwrap_or(0), bw[i].unwrap_or(0));
        let c = n[i].unwrap_or(0) as u64;
        let label = format!("{}: {w_}×{h}", st[i].unwrap_or(0));
        bars.push((label, c as f64));
        rows.push(vec![
            st[i].map(|v| v.to_string()).unwrap_or("–".into()),
            format!("{w_}×{h}"),
            if h > 0 {
                format!("{:.2}", w_ as f64 / h as f64)
            } else {
                "–".into()
            },
            format!("{}×{}", w_ / 8, h / 8),
            thousands(c),
            pct(c, total),
        ]);
    }
    body.push_str("<h2>Buckets</h2>");
    body.push_str(&html::figure(
        &svg::bars(
            &format!("{name}-buckets"),
            "Images per latent bucket",
            "stage: bucket width × height (px)",
            "images",
            &bars,
        ),
        "Each ok image is resized and cropped into one bucket of its resolution stage; the latent is 1/8 of the bucket on each side.",
        &html::table(
            "buckets",
            &["stage", "bucket (w×h px)", "aspect w/h", "latent (w×h)", "images", "share"],
            &rows,
        ),
    ));
    let cols = stats::columns(&stage.files)?;
    if has(&cols, "tag") {
        let tags = stats::value_counts(
            lf()?
                .filter(col("status").eq(lit("ok")))
                .select([col("tag")]),
            "tag",
            &what(stage, "tags"),
        )?;
        let tasks = stats::value_counts(
            lf()?
                .filter(col("status").eq(lit("ok")))
                .select([col("caption_task")]),
            "caption_task",
            &what(stage, "caption tasks"),
        )?;
        body.push_str("<h2>Training text</h2>");
        body.push_str(&html::table(
            "tags",
            &["quality tag", "images"],
            &tags
                .iter()
                .map(|(t, n)| vec![esc(t.as_deref().unwrap_or("none")), thousands(*n)])
                .collect::<Vec<_>>(),
        ));
        body.push_str(&html::table(
            "tasks",
            &["caption task", "images"],
            &tasks
                .iter()
                .map(|(t, n)| vec![esc(t.as_deref().unwrap_or("no caption")), thousands(*n)])
                .collect::<Vec<_>>(),
        ));
    }
    body.push_str(&throughput(stage, &format!("{name}-tput")));
    body.push_str(&config_table(stage));
    w.page(&file, &format!("Latents: {}", stage.name), &file, &body)
}
