//! encode-latents: the bucket distribution and the training text.

use polars::prelude::*;

use super::common::{config_table, has, header, no_shards_page, status_outcomes, throughput, what};
use crate::error::ReportError;
use crate::html::{self, esc, pct, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, i64s};
use crate::svg;
use crate::writer::Writer;

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
    let lf = || stats::scan(stage);
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
    let cols = stats::columns(stage)?;
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
