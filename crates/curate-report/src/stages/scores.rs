//! score: the histogram with the tag bands, counts per tag, extremes.

use std::collections::BTreeSet;
use std::fmt::Write;

use polars::prelude::*;

use super::common::{config_table, header, no_shards_page, status_outcomes, throughput, what};
use crate::error::ReportError;
use crate::html::{self, esc, num, pct, thousands};
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, f64s, i64s, strs};
use crate::svg::{self, Marker};
use crate::thumbs::{Thumb, Thumbs};
use crate::writer::Writer;

/// The bands a score stage used: the shards' `bands` / `drop_below` metadata, else its configuration.
fn bands_of(stage: &Stage) -> curate_core::bands::Bands {
    if let Some(first) = stage.files.first() {
        let table = curate_io::scores::table();
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
    let lf = || stats::scan(stage);
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
    let dropped = stats::bools(&tags, "dropped")?;
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
