//! Dedup pages: the overview (rounds, cluster sizes, similarity
//! histograms, the eps sweep) and the paginated cluster pages in two
//! orders (largest first; lowest similarity first, so chains come first).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use polars::prelude::*;

use crate::html::{self, esc, pct, thousands};
use crate::run::{Run, Stage};
use crate::stats::{self, collect, f64s, i64s, strs};
use crate::svg::{self, Marker};
use crate::thumbs::{Thumb, Thumbs};
use crate::{Options, ReportError, Writer};

/// One cluster (two or more images).
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub id: i64,
    pub size: u64,
    /// Lowest cosine to the representative over the members.
    pub min_cos: f64,
}

/// One row of the eps sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    pub threshold: f32,
    /// Images whose stored nearest neighbour has cos ≥ threshold.
    pub with_neighbour: u64,
    /// Images in the groups those nearest-neighbour links form.
    pub linked: u64,
    /// `linked − groups`: each group keeps one image.
    pub removed: u64,
}

/// The eps sweep from nearest-neighbour links `(image, nearest, cos)`:
/// for each threshold (any order), the images with a link ≥ it and what
/// the groups of linked images would remove. Comparisons in f32, as dedup makes them.
pub fn sweep(links: &[(String, String, f32)], thresholds: &[f32]) -> Vec<SweepRow> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut edges: Vec<(usize, usize, f32)> = Vec::with_capacity(links.len());
    for (a, b, c) in links {
        let n = index.len();
        let i = *index.entry(a.as_str()).or_insert(n);
        let n = index.len();
        let j = *index.entry(b.as_str()).or_insert(n);
        edges.push((i, j, *c));
    }
    edges.sort_by(|x, y| y.2.total_cmp(&x.2));
    let mut parent: Vec<usize> = (0..index.len()).collect();
    let mut in_graph = vec![false; index.len()];
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut order: Vec<f32> = thresholds.to_vec();
    order.sort_by(|a, b| b.total_cmp(a));
    order.dedup();
    let (mut next, mut nodes, mut unions) = (0usize, 0u64, 0u64);
    let mut rows = Vec::new();
    for t in order {
        while next < edges.len() && edges[next].2 >= t {
            let (i, j, _) = edges[next];
            for k in [i, j] {
                if !in_graph[k] {
                    in_graph[k] = true;
                    nodes += 1;
                }
            }
            let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
            if ri != rj {
                parent[ri] = rj;
                unions += 1;
            }
            next += 1;
        }
        rows.push(SweepRow {
            threshold: t,
            with_neighbour: next as u64,
            linked: nodes,
            removed: unions,
        });
    }
    rows.sort_by(|a, b| a.threshold.total_cmp(&b.threshold));
    rows
}

/// A member as a cluster page shows it.
#[derive(Debug, Clone)]
struct Member {
    key: String,
    cluster_id: i64,
    round: Option<i64>,
    role: Option<String>,
    merged_into: Option<String>,
    representative: Option<String>,
    cos: Option<f64>,
    kept: bool,
    source: Option<String>,
    url: Option<String>,
    page_url: Option<String>,
    width: Option<i64>,
    height: Option<i64>,
    format: Option<String>,
}

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

/// A bin width giving at most `max_bins` bins over `[lo, hi]`.
fn bin_step(lo: f64, hi: f64, max_bins: usize) -> f64 {
    for s in [
        0.001, 0.002, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5,
    ] {
        if (hi - lo) / s <= max_bins as f64 {
            return s;
        }
    }
    1.0
}

/// File name of page `page` (1-based) of an order.
pub fn cluster_page(name: &str, order: &str, page: usize) -> String {
    format!("{name}-{order}-{page:03}.html")
}

const ORDERS: [(&str, &str); 2] = [
    ("by-size", "largest first"),
    (
        "by-min-cos",
        "lowest similarity first (chained clusters first)",
    ),
];

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
    let summary_path = stage.dir.join("summary.json");
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
            stage.journal.len(),
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
    let lf = || stats::scan(&stage.files);

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

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Cluster counts by size: every size up to 12, then ranges. `(label, clusters, images)`.
fn size_bins(clusters: &[Cluster]) -> Vec<(String, u64, u64)> {
    let max = clusters.iter().map(|c| c.size).max().unwrap_or(0);
    let ranges: Vec<(u64, u64)> = if max <= 12 {
        (2..=max.max(2)).map(|s| (s, s)).collect()
    } else {
        let mut r: Vec<(u64, u64)> = (2..=5).map(|s| (s, s)).collect();
        for (a, b) in [
            (6, 10),
            (11, 20),
            (21, 50),
            (51, 100),
            (101, 1000),
            (1001, u64::MAX),
        ] {
            if a <= max {
                r.push((a, b));
            }
        }
        r
    };
    ranges
        .into_iter()
        .map(|(a, b)| {
            let (n, imgs) = clusters
                .iter()
                .filter(|c| c.size >= a && c.size <= b)
                .fold((0, 0), |(n, i), c| (n + 1, i + c.size));
            let label = if a == b {
                a.to_string()
            } else if b == u64::MAX {
                format!("> {}", a - 1)
            } else {
                format!("{a}–{b}")
            };
            (label, n, imgs)
        })
        .collect()
}

/// The members of the `shown` clusters, with their images' source facts.
fn read_members(
    run: &Run,
    stage: &Stage,
    shown: &BTreeSet<i64>,
    what: &str,
) -> Result<HashMap<i64, Vec<Member>>, ReportError> {
    let mut out: HashMap<i64, Vec<Member>> = HashMap::new();
    if shown.is_empty() {
        return Ok(out);
    }
    let ids = DataFrame::new(
        shown.len(),
        vec![Column::new(
            "cluster_id".into(),
            shown.iter().copied().collect::<Vec<i64>>(),
        )],
    )
    .map_err(|e| ReportError::polars(what, e))?;
    let mut lf = stats::scan(&stage.files)?
        .select([
            col("key"),
            col("cluster_id"),
            col("round"),
            col("role"),
            col("merged_into"),
            col("representative"),
            col("cosine_to_representative"),
            col("kept"),
        ])
        .join(
            ids.lazy(),
            [col("cluster_id")],
            [col("cluster_id")],
            JoinArgs::new(JoinType::Semi),
        );
    let image_cols = ["source", "url", "page_url", "width", "height", "format"];
    let images = run.images_of(stage).filter(|i| !i.files.is_empty());
    if let Some(images) = images {
        let mut sel = vec![col("key")];
        sel.extend(image_cols.iter().map(|c| col(*c)));
        lf = lf.join(
            stats::scan(&images.files)?.select(sel),
            [col("key")],
            [col("key")],
            JoinArgs::new(JoinType::Left),
        );
    }
    let df = collect(lf, what)?;
    let opt_strs = |c: &str| -> Result<Vec<Option<String>>, ReportError> {
        if images.is_some() {
            strs(&df, c)
        } else {
            Ok(vec![None; df.height()])
        }
    };
    let opt_ints = |c: &str| -> Result<Vec<Option<i64>>, ReportError> {
        if images.is_some() {
            i64s(&df, c)
        } else {
            Ok(vec![None; df.height()])
        }
    };
    let key = strs(&df, "key")?;
    let cid = i64s(&df, "cluster_id")?;
    let round = i64s(&df, "round")?;
    let role = strs(&df, "role")?;
    let merged = strs(&df, "merged_into")?;
    let rep = strs(&df, "representative")?;
    let cos = f64s(&df, "cosine_to_representative")?;
    let kept = crate::stats::bools(&df, "kept")?;
    let source = opt_strs("source")?;
    let url = opt_strs("url")?;
    let page_url = opt_strs("page_url")?;
    let width = opt_ints("width")?;
    let height = opt_ints("height")?;
    let format = opt_strs("format")?;
    for i in 0..df.height() {
        let Some(cluster_id) = cid[i] else { continue };
        out.entry(cluster_id).or_default().push(Member {
            key: key[i].clone().unwrap_or_default(),
            cluster_id,
            round: round[i],
            role: role[i].clone(),
            merged_into: merged[i].clone(),
            representative: rep[i].clone(),
            cos: cos[i],
            kept: kept[i].unwrap_or(false),
            source: source[i].clone(),
            url: url[i].clone(),
            page_url: page_url[i].clone(),
            width: width[i],
            height: height[i],
            format: format[i].clone(),
        });
    }
    for ms in out.values_mut() {
        ms.sort_by(|a, b| {
            b.kept
                .cmp(&a.kept)
                .then(b.cos.unwrap_or(0.0).total_cmp(&a.cos.unwrap_or(0.0)))
                .then(a.key.cmp(&b.key))
        });
    }
    Ok(out)
}

struct ClusterPage<'a> {
    name: &'a str,
    order: &'a str,
    label: &'a str,
    page: usize,
    pages: usize,
    first: usize,
    shown_total: usize,
    total: usize,
    chunk: &'a [Cluster],
    members: &'a HashMap<i64, Vec<Member>>,
    thumbs: &'a HashMap<String, Thumb>,
    eps: f32,
    max_members: usize,
    local_root: Option<&'a str>,
    overview: &'a str,
}

fn pager(p: &ClusterPage) -> String {
    let mut out = String::from(r#"<nav class="pager" aria-label="pages">"#);
    let link = |n: usize, text: &str| {
        format!(
            r#"<a href="{}">{text}</a>"#,
            cluster_page(p.name, p.order, n)
        )
    };
    if p.page > 1 {
        out.push_str(&link(p.page - 1, "‹ previous"));
    }
    let mut last_shown = 0;
    for n in 1..=p.pages {
        let near = n == 1 || n == p.pages || n.abs_diff(p.page) <= 3;
        if !near {
            continue;
        }
        if n > last_shown + 1 {
            out.push_str("<span>…</span>");
        }
        if n == p.page {
            let _ = write!(out, r#"<span class="cur">{n}</span>"#);
        } else {
            out.push_str(&link(n, &n.to_string()));
        }
        last_shown = n;
    }
    if p.page < p.pages {
        out.push_str(&link(p.page + 1, "next ›"));
    }
    out.push_str("</nav>");
    out
}

/// A path for a `file://` URL: characters that would end or alter it escaped.
fn file_href(root: &str, rel: &str) -> String {
    let full = format!("{}/{}", root.trim_end_matches('/'), rel);
    let mut out = String::from("file://");
    for c in full.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            '%' => out.push_str("%25"),
            '"' => out.push_str("%22"),
            c => out.push(c),
        }
    }
    out
}

fn short_url(u: &str) -> String {
    let s = u
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    if s.chars().count() > 48 {
        let head: String = s.chars().take(22).collect();
        let tail: String = s
            .chars()
            .rev()
            .take(22)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{head}…{tail}")
    } else {
        s.to_string()
    }
}

fn cluster_page_body(p: ClusterPage) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="orders">Order: {} · <a href="{}">overview</a></p>"#,
        ORDERS
            .iter()
            .map(|(o, l)| {
                format!(
                    r#"<a href="{}"{}>{}</a>"#,
                    cluster_page(p.name, o, 1),
                    if *o == p.order {
                        r#" aria-current="true""#
                    } else {
                        ""
                    },
                    l
                )
            })
            .collect::<Vec<_>>()
            .join(" · "),
        p.overview
    );
    if p.chunk.is_empty() {
        out.push_str("<p>No clusters: dedup found no near-duplicates.</p>");
        return out;
    }
    let _ = write!(
        out,
        r#"<p class="note">Clusters {}–{} of {}{}, {}. Each shows every member: its thumbnail, the kept image marked, the cosine to the kept image (members below eps {} are shaded: they joined through a chain), where it came from.</p>"#,
        thousands(p.first as u64 + 1),
        thousands((p.first + p.chunk.len()) as u64),
        thousands(p.shown_total as u64),
        if p.total > p.shown_total {
            format!(" shown (of {})", thousands(p.total as u64))
        } else {
            String::new()
        },
        p.label,
        p.eps
    );
    out.push_str(&pager(&p));
    for c in p.chunk {
        let chained = (c.min_cos as f32) < p.eps;
        let _ = write!(
            out,
            r#"<section class="cluster{}" id="c{}" data-cluster-id="{}" data-size="{}" data-min-cos="{:.4}"><h3>Cluster {} · {} images · lowest cosine to the kept image {:.4}{}</h3><div class="members">"#,
            if chained { " chained" } else { "" },
            c.id,
            c.id,
            c.size,
            c.min_cos,
            c.id,
            c.size,
            c.min_cos,
            if chained {
                r#" <span class="badge chain">chained: below eps</span>"#
            } else {
                ""
            }
        );
        let empty = Vec::new();
        let ms = p.members.get(&c.id).unwrap_or(&empty);
        for m in ms.iter().take(p.max_members) {
            member(&mut out, m, &p);
        }
        out.push_str("</div>");
        if ms.len() > p.max_members {
            let _ = write!(
                out,
                r#"<p class="warn">… and {} more members not shown (--max-members {}).</p>"#,
                thousands((ms.len() - p.max_members) as u64),
                p.max_members
            );
        }
        out.push_str("</section>");
    }
    out.push_str(&pager(&p));
    out
}

fn member(out: &mut String, m: &Member, p: &ClusterPage) {
    let below = m.cos.is_some_and(|c| (c as f32) < p.eps);
    let _ = write!(
        out,
        r#"<figure class="member{}{}" data-key="{}" data-cos="{}"><div class="thumb">"#,
        if m.kept { " kept" } else { "" },
        if below { " below" } else { "" },
        esc(&m.key),
        m.cos.map(|c| format!("{c:.4}")).unwrap_or_default()
    );
    match p.thumbs.get(&m.key) {
        Some(Thumb::Ready {
            href,
            width,
            height,
        }) => {
            let _ = write!(
                out,
                r#"<img src="{}" width="{width}" height="{height}" alt="image {}">"#,
                esc(href),
                esc(&m.key)
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
    out.push_str("</div><figcaption>");
    if m.kept {
        out.push_str(r#"<span class="badge">kept</span> representative<br>"#);
    } else {
        let _ = write!(
            out,
            r#"cos <span class="cos">{}</span>{}<br>"#,
            m.cos.map(|c| format!("{c:.4}")).unwrap_or("–".into()),
            if below { " (below eps)" } else { "" }
        );
    }
    let round = m.round.map(|r| r.to_string()).unwrap_or("–".into());
    if m.kept {
        let _ = write!(out, "kept through round {round}");
    } else {
        let _ = write!(
            out,
            "removed in round {round} ({})",
            esc(m.role.as_deref().unwrap_or("–"))
        );
    }
    if let (Some(via), Some(rep)) = (&m.merged_into, &m.representative) {
        if via != rep {
            let _ = write!(out, " · via <code>{}</code>", esc(via));
        }
    }
    out.push_str("<br>");
    let url = m.url.as_deref().or_else(|| {
        m.source
            .as_deref()
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
    });
    match (url, &m.source) {
        (Some(u), _) => {
            let _ = write!(
                out,
                r#"<a href="{}" title="{}">{}</a>"#,
                esc(u),
                esc(u),
                esc(&short_url(u))
            );
            if let Some(pu) = &m.page_url {
                let _ = write!(out, r#" · <a href="{}">page</a>"#, esc(pu));
            }
        }
        (None, Some(src)) => match p.local_root {
            Some(root) => {
                let _ = write!(
                    out,
                    r#"<a href="{}">{}</a>"#,
                    esc(&file_href(root, src)),
                    esc(src)
                );
            }
            None => {
                let _ = write!(out, "{}", esc(src));
            }
        },
        (None, None) => out.push_str("source unknown"),
    }
    if let (Some(w), Some(h)) = (m.width, m.height) {
        let _ = write!(
            out,
            "<br>{w}×{h} {}",
            esc(m.format.as_deref().unwrap_or(""))
        );
    }
    let _ = write!(
        out,
        "<br><code>{}</code></figcaption></figure>",
        esc(&m.key)
    );
    let _ = m.cluster_id;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(a: &str, b: &str, c: f32) -> (String, String, f32) {
        (a.into(), b.into(), c)
    }

    #[test]
    fn sweep_counts_images_with_a_neighbour_and_groups() {
        // a–b 0.99, b–a 0.99, c–b 0.95 (chain), d–e 0.97, e–d 0.97, f–a 0.85
        let links = vec![
            l("a", "b", 0.99),
            l("b", "a", 0.99),
            l("c", "b", 0.95),
            l("d", "e", 0.97),
            l("e", "d", 0.97),
            l("f", "a", 0.85),
        ];
        let rows = sweep(&links, &[0.9, 0.99, 0.8, 0.96, 0.99]);
        let got: Vec<(f32, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.threshold, r.with_neighbour, r.linked, r.removed))
            .collect();
        assert_eq!(
            got,
            vec![
                (0.8, 6, 6, 4),  // {a,b,c,f} and {d,e}: 6 images, 2 groups
                (0.9, 5, 5, 3),  // {a,b,c}, {d,e}
                (0.96, 4, 4, 2), // {a,b}, {d,e}
                (0.99, 2, 2, 1), // {a,b}
            ]
        );
        // f32 comparison: 0.99f32 is at the threshold 0.99f32.
        assert_eq!(sweep(&[l("x", "y", 0.99)], &[0.99])[0].with_neighbour, 1);
    }

    #[test]
    fn size_bins_cover_every_cluster() {
        let cs: Vec<Cluster> = [2, 2, 3, 7, 15, 40, 2000]
            .iter()
            .enumerate()
            .map(|(i, s)| Cluster {
                id: i as i64,
                size: *s,
                min_cos: 0.95,
            })
            .collect();
        let bins = size_bins(&cs);
        assert_eq!(bins.iter().map(|b| b.1).sum::<u64>(), 7);
        assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 2069);
        assert_eq!(bins[0], ("2".into(), 2, 4));
        assert_eq!(bins.last().unwrap(), &("> 1000".to_string(), 1, 2000));
    }
}
