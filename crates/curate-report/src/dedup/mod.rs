//! Dedup pages: the overview (rounds, cluster sizes, similarity
//! histograms, the eps sweep) and the paginated cluster pages in two
//! orders (largest first; lowest similarity first, so chains come first).
//!
//! - [`analysis`]: the eps sweep, size bins (no polars);
//! - [`members`]: the shown clusters' members with their images' facts;
//! - [`pages`]: the cluster pages.

mod analysis;
mod members;
mod pages;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use polars::prelude::*;

use analysis::{bin_step, plural, size_bins};
pub use analysis::{sweep, Cluster, SweepRow};
use members::read_members;
pub use pages::cluster_page;
use pages::{cluster_page_body, ClusterPage, ORDERS};

use crate::error::ReportError;
use crate::html::{self, esc, pct, thousands};
use crate::options::Options;
use crate::run::Run;
use crate::stage::Stage;
use crate::stats::{self, collect, f64s, i64s, strs};
use crate::svg::{self, Marker};
use crate::thumbs::{Thumb, Thumbs};
use crate::writer::Writer;

/// What the index shows of a dedup stage.
#[derive(Debug, Clone, Default)]
pub struct DedupFacts {
    pub images_in: u64,
    pub kept: u64,
    pub clusters: u64,
    /// Clusters with a member below eps.
    pub chained: u64,
}

struct Settings {
    eps: f32,
    min_samples: Option<u64>,
    partition: Option<String>,
    partition_size: Option<u64>,
    keep: Option<String>,
    converged: Option<bool>,
}

fn settings(stage: &Stage, summary: Option<&serde_json::Value>) -> Settings {
    let from = |k: &str| {
        summary
            .and_then(|s| s.get("settings"))
            .and_then(|s| s.get(k))
            .or_else(|| stage.manifest.config.get(k))
            .cloned()
    };
    Settings {
        eps: from("eps").and_then(|v| v.as_f64()).unwrap_or(0.9) as f32,
        min_samples: from("min_samples").and_then(|v| v.as_u64()),
        partition: from("partition").and_then(|v| v.as_str().map(str::to_string)),
        partition_size: from("partition_size").and_then(|v| v.as_u64()),
        keep: from("keep").and_then(|v| v.as_str().map(str::to_string)),
        converged: summary
            .and_then(|s| s.get("converged"))
            .and_then(|v| v.as_bool()),
    }
}

/// Writes the overview `<name>.html` and the cluster pages.
pub fn write(
    w: &mut Writer,
    run: &Run,
    stage: &Stage,
    name: &str,
    thumbs: &Thumbs,
    opts: &Options,
) -> Result<DedupFacts, ReportError> {
    let what = |s: &str| format!("dedup stage {}: {s}", stage.dir.display());
    let summary_path = stage.output(curate_io::dedup_clusters::SUMMARY_FILE);
    let summary: Option<serde_json::Value> = match std::fs::read(&summary_path) {
        Ok(b) => Some(
            serde_json::from_slice(&b).map_err(|source| ReportError::Json {
                path: summary_path.clone(),
                source,
            })?,
        ),
        Err(_) => None,
    };
    let set = settings(stage, summary.as_ref());
    let eps = set.eps;
    let overview = format!("{name}.html");
    if stage.files.is_empty() {
        let body = format!(
            "<p>The dedup stage has not finished: no clusters table yet ({} of {} shards).</p>",
            stage.shards.len(),
            stage.manifest.num_shards
        );
        w.page(
            &overview,
            &format!("Dedup: {}", stage.name),
            &overview,
            &body,
        )?;
        return Ok(DedupFacts::default());
    }
    let lf = || stats::scan(stage);

    // Totals and removals per round.
    let totals = collect(
        lf()?.select([
            len().cast(DataType::Int64).alias("n"),
            col("kept").cast(DataType::Int64).sum().alias("kept"),
            col("round").max().cast(DataType::Int64).alias("rounds"),
        ]),
        &what("totals"),
    )?;
    let images_in = i64s(&totals, "n")?[0].unwrap_or(0) as u64;
    let kept = i64s(&totals, "kept")?[0].unwrap_or(0) as u64;
    let removed = images_in - kept.min(images_in);
    let by_round = collect(
        lf()?
            .filter(col("kept").not())
            .group_by([col("round")])
            .agg([len().alias("n")]),
        &what("removals per round"),
    )?;
    let mut removed_in: std::collections::BTreeMap<i64, u64> = Default::default();
    for (r, n) in i64s(&by_round, "round")?
        .into_iter()
        .zip(i64s(&by_round, "n")?)
    {
        removed_in.insert(r.unwrap_or(0), n.unwrap_or(0) as u64);
    }
    let summary_rounds: Vec<serde_json::Value> = summary
        .as_ref()
        .and_then(|s| s.get("rounds"))
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let rounds = summary_rounds
        .len()
        .max(i64s(&totals, "rounds")?[0].unwrap_or(0).max(0) as usize)
        .max(removed_in.keys().last().copied().unwrap_or(0) as usize);

    // Clusters.
    let cdf = collect(
        lf()?
            .filter(col("cluster_id").is_not_null())
            .group_by([col("cluster_id")])
            .agg([
                len().cast(DataType::Int64).alias("size"),
                col("cosine_to_representative").min().alias("min_cos"),
            ]),
        &what("clusters"),
    )?;
    let clusters: Vec<Cluster> = i64s(&cdf, "cluster_id")?
        .into_iter()
        .zip(i64s(&cdf, "size")?)
        .zip(f64s(&cdf, "min_cos")?)
        .map(|((id, size), min)| Cluster {
            id: id.unwrap_or(0),
            size: size.unwrap_or(0) as u64,
            min_cos: min.unwrap_or(1.0),
        })
        .collect();
    let chained = clusters.iter().filter(|c| (c.min_cos as f32) < eps).count() as u64;
    let largest = clusters.iter().map(|c| c.size).max().unwrap_or(0);

    // Similarity histograms.
    let lowest = clusters
        .iter()
        .map(|c| c.min_cos)
        .fold(eps as f64, f64::min);
    let step = bin_step(lowest.min(eps as f64 - 0.01), 1.0, 50);
    let lo = stats::floor_to(lowest.min(eps as f64 - step), step).max(-1.0);
    let members_only = || -> Result<LazyFrame, ReportError> {
        Ok(lf()?.filter(col("cluster_id").is_not_null().and(col("kept").not())))
    };
    let cos_hist = stats::histogram(
        members_only()?,
        "cosine_to_representative",
        lo,
        1.0,
        ((1.0 - lo) / step).round().max(1.0) as usize,
        &what("cosine histogram"),
    )?;
    let below_df = collect(
        members_only()?.select([
            len().cast(DataType::Int64).alias("members"),
            col("cosine_to_representative")
                .lt(lit(eps))
                .cast(DataType::Int64)
                .sum()
                .alias("below"),
        ]),
        &what("members below eps"),
    )?;
    let members_total = i64s(&below_df, "members")?[0].unwrap_or(0) as u64;
    let members_below = i64s(&below_df, "below")?[0].unwrap_or(0) as u64;
    let near = stats::summary(lf()?, "nearest_cosine", &what("nearest cosine"))?;
    let nlo_raw = near.min.unwrap_or(eps as f64).min(eps as f64 - 0.01);
    let nstep = bin_step(nlo_raw, 1.0, 60);
    let nlo = stats::floor_to(nlo_raw, nstep).max(-1.0);
    let near_hist = stats::histogram(
        lf()?,
        "nearest_cosine",
        nlo,
        1.0,
        ((1.0 - nlo) / nstep).round().max(1.0) as usize,
        &what("nearest cosine histogram"),
    )?;

    // The eps sweep.
    let mut thresholds: Vec<f32> = opts.sweep.iter().map(|s| *s as f32).collect();
    thresholds.push(eps);
    let tmin = thresholds.iter().copied().fold(1.0f32, f32::min);
    let ldf = collect(
        lf()?
            .select([col("key"), col("nearest_key"), col("nearest_cosine")])
            .filter(
                col("nearest_key")
                    .is_not_null()
                    .and(col("nearest_cosine").gt_eq(lit(tmin as f64 - 1e-6))),
            ),
        &what("nearest-neighbour links"),
    )?;
    let links: Vec<(String, String, f32)> = strs(&ldf, "key")?
        .into_iter()
        .zip(strs(&ldf, "nearest_key")?)
        .zip(f64s(&ldf, "nearest_cosine")?)
        .filter_map(|((a, b), c)| Some((a?, b?, c? as f32)))
        .collect();
    let sweep_rows = sweep(&links, &thresholds);

    // Cluster pages.
    let mut by_size = clusters.clone();
    by_size.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(a.min_cos.total_cmp(&b.min_cos))
            .then(a.id.cmp(&b.id))
    });
    let mut by_min = clusters.clone();
    by_min.sort_by(|a, b| {
        a.min_cos
            .total_cmp(&b.min_cos)
            .then(b.size.cmp(&a.size))
            .then(a.id.cmp(&b.id))
    });
    by_size.truncate(opts.max_clusters);
    by_min.truncate(opts.max_clusters);
    let shown: BTreeSet<i64> = by_size.iter().chain(&by_min).map(|c| c.id).collect();
    let members = read_members(run, stage, &shown, &what("cluster members"))?;
    let images = run.images_of(stage);
    let mut thumb_map: HashMap<String, Thumb> = HashMap::new();
    let mut local_root: Option<String> = None;
    match images {
        Some(images) => {
            let mut keys = BTreeSet::new();
            for ms in members.values() {
                for m in ms.iter().take(opts.max_members) {
                    keys.insert(m.key.clone());
                }
            }
            thumb_map = thumbs.ensure(images, &keys)?;
            if images.manifest.inputs.kind == "directory" {
                local_root = Some(images.manifest.inputs.location.clone());
            }
        }
        None => tracing::warn!(
            "report: {}: no images stage found upstream (the manifest's input chain); clusters are shown without thumbnails",
            stage.dir.display()
        ),
    }
    let mut page_counts = Vec::new();
    for ((order, label), list) in ORDERS.iter().zip([&by_size, &by_min]) {
        let pages = list.len().div_ceil(opts.page_size).max(1);
        page_counts.push(pages);
        for p in 0..pages {
            let chunk = if list.is_empty() {
                &list[..]
            } else {
                &list[p * opts.page_size..((p + 1) * opts.page_size).min(list.len())]
            };
            let file = cluster_page(name, order, p + 1);
            let body = cluster_page_body(ClusterPage {
                name,
                order,
                label,
                page: p + 1,
                pages,
                first: p * opts.page_size,
                shown_total: list.len(),
                total: clusters.len(),
                chunk,
                members: &members,
                thumbs: &thumb_map,
                eps,
                max_members: opts.max_members,
                local_root: local_root.as_deref(),
                overview: &overview,
            });
            w.page(
                &file,
                &format!("Dedup clusters: {}, {label}, page {}", stage.name, p + 1),
                &overview,
                &body,
            )?;
        }
    }

    // The overview.
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p class="note">Near-duplicate removal by partitioned DBSCAN on CLIP embeddings (images are neighbours when cos ≥ eps), from <code>{}</code>{}.</p>"#,
        esc(&stage.dir.display().to_string()),
        images
            .map(|i| format!(
                "; images from <code>{}</code>",
                esc(&i.dir.display().to_string())
            ))
            .unwrap_or_default()
    );
    body.push_str(&html::facts(&[
        ("images in", thousands(images_in)),
        ("kept", thousands(kept)),
        (
            "removed",
            format!("{} ({})", thousands(removed), pct(removed, images_in)),
        ),
        ("clusters", thousands(clusters.len() as u64)),
        (
            "chained clusters",
            format!("{} <small>(a member below eps)</small>", thousands(chained)),
        ),
        ("largest cluster", thousands(largest)),
        (
            "rounds",
            format!(
                "{rounds}{}",
                match set.converged {
                    Some(true) => " (converged)",
                    Some(false) => " (not converged)",
                    None => "",
                }
            ),
        ),
        ("eps (cos ≥)", format!("{eps}")),
        (
            "min_samples",
            set.min_samples.map(|v| v.to_string()).unwrap_or("–".into()),
        ),
        (
            "partitions",
            format!(
                "{} of ~{}",
                esc(set.partition.as_deref().unwrap_or("–")),
                set.partition_size.map(thousands).unwrap_or("–".into())
            ),
        ),
        ("keep rule", esc(set.keep.as_deref().unwrap_or("–"))),
    ]));
    let _ = write!(
        body,
        r#"<p class="orders">Cluster pages: <a href="{}">largest first</a> ({}) · <a href="{}">lowest similarity first</a>, chained clusters first ({}){}</p>"#,
        cluster_page(name, "by-size", 1),
        plural(page_counts[0], "page"),
        cluster_page(name, "by-min-cos", 1),
        plural(page_counts[1], "page"),
        if clusters.len() > opts.max_clusters {
            format!(
                " — each order shows its first {} of {} clusters (--max-clusters)",
                thousands(opts.max_clusters as u64),
                thousands(clusters.len() as u64)
            )
        } else {
            String::new()
        }
    );

    // Rounds.
    body.push_str(r#"<div class="grid"><section><h2>Rounds</h2>"#);
    let mut cats = Vec::new();
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    let mut left = images_in;
    for r in 1..=rounds.max(1) {
        let rem = removed_in.get(&(r as i64)).copied().unwrap_or(0);
        let info = summary_rounds
            .iter()
            .find(|v| v.get("round").and_then(|x| x.as_u64()) == Some(r as u64));
        let get = |k: &str| info.and_then(|v| v.get(k)).and_then(|x| x.as_u64());
        cats.push(format!("round {r}"));
        ins.push(left as f64);
        outs.push((left - rem.min(left)) as f64);
        rows.push(vec![
            r.to_string(),
            get("parts").map(thousands).unwrap_or("–".into()),
            thousands(left),
            thousands(left - rem.min(left)),
            thousands(rem),
            pct(rem, left),
            get("clusters").map(thousands).unwrap_or("–".into()),
            get("neighbour_pairs").map(thousands).unwrap_or("–".into()),
        ]);
        left -= rem.min(left);
    }
    body.push_str(&html::figure(
        &svg::grouped_bars(
            &format!("{name}-rounds"),
            "Images in and out per round",
            "round",
            "images",
            &cats,
            &[("in", ins), ("out", outs)],
        ),
        "Each round clusters partitions of the survivors and keeps one image per cluster; it stops when a round removes nothing.",
        &html::table(
            "rounds",
            &["round", "partitions", "images in", "images out", "removed", "removal rate", "clusters", "neighbour pairs"],
            &rows,
        ),
    ));

    // Cluster sizes.
    body.push_str("</section><section><h2>Cluster sizes</h2>");
    let sizes = size_bins(&clusters);
    body.push_str(&html::figure(
        &svg::bars(
            &format!("{name}-sizes"),
            "Clusters by size",
            "images in the cluster",
            "clusters",
            &sizes
                .iter()
                .map(|(l, n, _)| (l.clone(), *n as f64))
                .collect::<Vec<_>>(),
        ),
        "Every cluster has two or more images; one is kept.",
        &html::table(
            "sizes",
            &["cluster size", "clusters", "images", "removed"],
            &sizes
                .iter()
                .map(|(l, n, imgs)| {
                    vec![
                        l.clone(),
                        thousands(*n),
                        thousands(*imgs),
                        thousands(imgs - n),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    ));

    body.push_str("</section></div>");

    // Similarity to the representative.
    body.push_str("<h2>Similarity to the kept image</h2>");
    let eps_marker = [Marker {
        x: eps as f64,
        label: format!("eps {eps}"),
    }];
    body.push_str(&html::figure(
        &svg::histogram(
            &format!("{name}-cos"),
            "Cosine to the representative (removed images)",
            "cosine to the cluster's kept image",
            "images",
            &cos_hist,
            &eps_marker,
        ),
        &format!(
            "Removed images only (the kept one is 1). {} of {} ({}) are below eps: DBSCAN reached them through a chain of neighbours, not from the kept image.",
            thousands(members_below),
            thousands(members_total),
            pct(members_below, members_total)
        ),
        &html::hist_table(&cos_hist, "images"),
    ));
    body.push_str(&html::figure(
        &svg::histogram(
            &format!("{name}-nearest"),
            "Nearest-neighbour cosine (every image)",
            "cosine to the most similar image compared with",
            "images",
            &near_hist,
            &eps_marker,
        ),
        "Each image's similarity to the most similar other image in its partition, in the round recorded for it (the round it was merged in, or the last round it took part in).",
        &html::hist_table(&near_hist, "images"),
    ));

    // The eps sweep.
    body.push_str("<h2>Other thresholds (eps sweep)</h2>");
    let _ = write!(
        body,
        r#"<p class="note">Estimated from the stored neighbour similarities, without recomputing anything. For each threshold s, <b>images with a neighbour</b> counts the images whose stored nearest neighbour has cos ≥ s: the most similar other image <i>among those it was compared with</i> (same partition, in the round recorded for it). Linking each of them to that neighbour forms groups; every group keeps one image, so <b>would be removed</b> = images in the groups − groups. With min_samples = 2 every such image would join a cluster, and the full neighbour graph at s has at least these links (more links can only merge groups), so over the same partitions this is a lower bound on what one pass at s removes; pairs that were never in the same partition are not seen at all, and with min_samples &gt; 2 some linked images would stay noise. The row at the run's eps ({eps}) can be compared with what the run removed: {}.</p>"#,
        thousands(removed)
    );
    let sweep_table = {
        let mut out = String::from(
            r#"<table class="sweep"><thead><tr><th>threshold s</th><th>images with a neighbour ≥ s</th><th>images in groups</th><th>would be removed (estimate)</th><th>of images in</th></tr></thead><tbody>"#,
        );
        for r in &sweep_rows {
            let at_eps = r.threshold == eps;
            let _ = write!(
                out,
                r#"<tr{} data-threshold="{}" data-with-neighbour="{}" data-removed="{}"><td>{}{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                if at_eps { r#" class="hl""# } else { "" },
                r.threshold,
                r.with_neighbour,
                r.removed,
                r.threshold,
                if at_eps {
                    format!(" (this run; removed {})", thousands(removed))
                } else {
                    String::new()
                },
                thousands(r.with_neighbour),
                thousands(r.linked),
                thousands(r.removed),
                pct(r.removed, images_in)
            );
        }
        out.push_str("</tbody></table>");
        out
    };
    body.push_str(r#"<div class="grid"><section>"#);
    body.push_str(&sweep_table);
    body.push_str("</section><section>");
    body.push_str(&html::figure(
        &svg::lines(
            &format!("{name}-sweep"),
            "Images removed at other thresholds (estimate)",
            "threshold s (cos ≥ s)",
            "images",
            &[
                svg::Line {
                    name: "would be removed".into(),
                    class: "s1",
                    points: sweep_rows
                        .iter()
                        .map(|r| (r.threshold as f64, r.removed as f64))
                        .collect(),
                },
                svg::Line {
                    name: "with a neighbour".into(),
                    class: "s0",
                    points: sweep_rows
                        .iter()
                        .map(|r| (r.threshold as f64, r.with_neighbour as f64))
                        .collect(),
                },
            ],
            &eps_marker,
        ),
        "The table, as a chart.",
        "<p>In the table.</p>",
    ));
    body.push_str("</section></div>");
    w.page(
        &overview,
        &format!("Dedup: {}", stage.name),
        &overview,
        &body,
    )?;
    tracing::info!(
        "report: dedup {}: {} clusters on {} + {} pages, {} images in, {} kept",
        stage.name,
        clusters.len(),
        page_counts[0],
        page_counts[1],
        images_in,
        kept
    );
    Ok(DedupFacts {
        images_in,
        kept,
        clusters: clusters.len() as u64,
        chained,
    })
}
