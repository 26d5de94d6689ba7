//! What every stage page has: the header, outcomes by reason, throughput
//! per shard, the configuration table.

use std::fmt::Write;

use polars::prelude::*;

use crate::error::ReportError;
use crate::html::{self, esc, num, pct, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, i64s, strs};
use crate::svg;
use crate::writer::Writer;

/// `s` of `stage`, for error messages.
pub fn what(stage: &Stage, s: &str) -> String {
    format!("stage {}: {s}", stage.dir.display())
}

/// The opening paragraph and key facts every stage page has.
pub fn header(stage: &Stage, run: &Run) -> String {
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
                stage.shards.len(),
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
        ("shards", format!("{}/{}", stage.shards.len(), m.num_shards)),
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
pub fn throughput(stage: &Stage, id: &str) -> String {
    if stage.shards.is_empty() {
        return String::new();
    }
    let rates: Vec<(String, f64)> = stage
        .shards
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
        .shards
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
pub fn outcomes(
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
pub fn no_shards_page(
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
pub fn status_outcomes(stage: &Stage, lf: LazyFrame, name: &str) -> Result<String, ReportError> {
    outcomes(
        stage,
        lf.select([col("status"), col("reason"), col("error")]),
        None,
        &format!("{name}-outcomes"),
    )
}

/// The manifest's configuration as a table.
pub fn config_table(stage: &Stage) -> String {
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

/// Whether the shards have column `c`.
pub fn has(cols: &[String], c: &str) -> bool {
    cols.iter().any(|x| x == c)
}

/// Long-side histogram bounds: 0 to the largest, in round steps.
pub fn size_range(max: f64) -> (f64, usize) {
    let step = svg::ticks(0.0, max.max(1.0), 30)
        .windows(2)
        .next()
        .map(|w| w[1] - w[0])
        .unwrap_or(1.0);
    let hi = stats::ceil_to(max.max(1.0), step);
    (hi, ((hi / step).round() as usize).max(1))
}
