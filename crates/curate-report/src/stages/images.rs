//! fetch / ingest: outcomes, sizes, formats, download facts.

use polars::prelude::*;

use super::common::{
    config_table, has, header, no_shards_page, size_range, status_outcomes, throughput, what,
};
use crate::error::ReportError;
use crate::html::{self, esc, pct, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, i64s, strs};
use crate::svg;
use crate::writer::Writer;

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
    let lf = || stats::scan(stage);
    let cols = stats::columns(stage)?;
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
    let dups_path = stage.output(curate_io::exact_duplicates::FILE);
    let dups = if dups_path.is_file() {
        let d = collect(
            stats::scan_file(curate_io::exact_duplicates::table(), &dups_path)?
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
