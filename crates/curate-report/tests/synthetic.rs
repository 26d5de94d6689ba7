//! Pages of stages the demo may not have yet, on data made here: a
//! `latents` stage (bucket distribution) and a training run's metrics JSONL
//! (loss curve), found both through a `train` manifest and as a loose file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt16Array, UInt32Array};
use curate_core::stage::{Inputs, ShardRecord, StageDir, StageSpec};

fn spec(stage: &str, schema: &str, num_shards: u32) -> StageSpec {
    StageSpec {
        stage: stage.into(),
        schema: schema.into(),
        config: serde_json::json!({ "seed": 0 }),
        inputs: Inputs {
            kind: "stage".into(),
            location: "/nonexistent/images".into(),
            items: 0,
            fingerprint: "f".into(),
            shards: vec![],
        },
        num_shards,
    }
}

/// A latents shard: the given columns, every other column null.
/// key, status, stage, (bucket_h, bucket_w).
type Row<'a> = (&'a str, &'a str, u16, Option<(u32, u32)>);

fn latents_shard(dir: &Path, shard: u32, rows: &[Row]) {
    let table = curate_core::schema::get("latents").unwrap();
    let schema = curate_io::default_schema(table).unwrap();
    let n = rows.len();
    let mut given: BTreeMap<&str, ArrayRef> = BTreeMap::new();
    given.insert(
        "key",
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
    );
    given.insert(
        "status",
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
    );
    given.insert(
        "reason",
        Arc::new(
            rows.iter()
                .map(|r| (r.1 == "error").then_some("too_small"))
                .collect::<StringArray>(),
        ),
    );
    given.insert(
        "stage",
        Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.2))),
    );
    given.insert(
        "bucket_h",
        Arc::new(
            rows.iter()
                .map(|r| r.3.map(|b| b.0))
                .collect::<UInt32Array>(),
        ),
    );
    given.insert(
        "bucket_w",
        Arc::new(
            rows.iter()
                .map(|r| r.3.map(|b| b.1))
                .collect::<UInt32Array>(),
        ),
    );
    given.insert(
        "tag",
        Arc::new(
            rows.iter()
                .map(|r| (r.1 == "ok").then_some("good score"))
                .collect::<StringArray>(),
        ),
    );
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            given
                .get(f.name().as_str())
                .cloned()
                .unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), n))
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = StageDir::shard_name(shard);
    curate_io::write_table(table, &dir.join(&file), &[batch], schema).unwrap();
    let (stage, _) = StageDir::open(dir, &spec("encode-latents", "latents", 2), false).unwrap();
    stage
        .commit_shard(ShardRecord {
            shard,
            file,
            records: n as u64,
            failures: rows.iter().filter(|r| r.1 == "error").count() as u64,
            reasons: Default::default(),
            bytes: 0,
            duration_s: 1.0,
            inputs: vec![],
            completed_unix: 0,
            host: None,
            slurm_job: None,
        })
        .unwrap();
}

fn metrics_line(step: u64, loss: f64, stage: u16) -> String {
    serde_json::json!({
        "step": step, "time": 1_700_000_000_000u64 + step * 250, "loss": loss, "lr": 1e-4,
        "grad_norm": null, "clipped": null, "steps_per_s": 4.0, "samples_per_s": 128.0,
        "batch_size": 32, "stage": stage, "bucket_h": stage, "bucket_w": stage, "epoch": 0
    })
    .to_string()
        + "\n"
}

#[test]
fn latent_buckets_and_loss_curves_get_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let lat = work.join("latents-512");
    std::fs::create_dir_all(&lat).unwrap();
    StageDir::open(&lat, &spec("encode-latents", "latents", 2), false).unwrap();
    latents_shard(
        &lat,
        0,
        &[
            ("k0", "ok", 512, Some((512, 512))),
            ("k1", "ok", 512, Some((512, 512))),
            ("k2", "ok", 512, Some((448, 576))),
            ("k3", "error", 512, None),
        ],
    );
    latents_shard(
        &lat,
        1,
        &[
            ("k4", "ok", 512, Some((512, 512))),
            ("k5", "ok", 512, Some((576, 448))),
        ],
    );
    // A train stage with a manifest, and a loose metrics file elsewhere.
    let train = work.join("train");
    std::fs::create_dir_all(&train).unwrap();
    StageDir::open(&train, &spec("train", "train_metrics", 1), false).unwrap();
    let text: String = (1..=200)
        .map(|s| {
            metrics_line(
                s,
                2.0 / (1.0 + s as f64 / 20.0),
                if s <= 120 { 256 } else { 512 },
            )
        })
        .collect();
    std::fs::write(train.join("metrics.jsonl"), text).unwrap();
    let smoke = work.join("smoke-run");
    std::fs::create_dir_all(&smoke).unwrap();
    std::fs::write(
        smoke.join("train-log.jsonl"),
        metrics_line(1, 1.0, 256) + &metrics_line(2, 0.9, 256) + "{\"step\": 3, \"loss\": 0.8",
    )
    .unwrap();

    let before = snapshot(&work);
    let written = curate_report::write_report(&curate_report::Options::new(&work)).unwrap();
    assert_eq!(written.out, work.join("report"));
    assert_eq!(
        before,
        snapshot_except(&work, "report"),
        "stage folders untouched"
    );

    let page = std::fs::read_to_string(work.join("report/latents-512.html")).unwrap();
    // Buckets of the ok rows: 512×512 ×3, 576×448 ×1 (w×h), 448×576 ×1.
    for (cell, n) in [("512×512", "3"), ("448×576", "1"), ("576×448", "1")] {
        let cells = row_cells(&page, &format!(">{cell}</td>"));
        assert_eq!(cells[0], "512", "stage: {cells:?}");
        assert_eq!(cells[4], n, "{cell}: {cells:?}");
    }
    assert!(page.contains("Images per latent bucket"));
    assert!(
        page.contains("too_small"),
        "the error row's reason is counted"
    );
    assert!(page.contains("<svg class=\"chart\""));

    let t = std::fs::read_to_string(work.join("report/train.html")).unwrap();
    assert!(t.contains("Training loss"), "{t}");
    assert!(t.contains("200 logged steps"));
    assert!(t.contains("stage 512"), "the 256 → 512 switch is marked");
    let loose = std::fs::read_to_string(work.join("report/smoke-run-metrics.html")).unwrap();
    assert!(loose.contains("2 logged steps, 1 lines skipped"), "{loose}");
    let index = std::fs::read_to_string(work.join("report/index.html")).unwrap();
    assert!(index.contains("latents-512.html") && index.contains("smoke-run-metrics.html"));

    // A rerun replaces the pages and keeps nothing stale.
    std::fs::remove_file(train.join("metrics.jsonl")).unwrap();
    let again = curate_report::write_report(&curate_report::Options::new(&work)).unwrap();
    assert_eq!(again.pages.len(), written.pages.len());
    let t = std::fs::read_to_string(work.join("report/train.html")).unwrap();
    assert!(t.contains("No training metrics"), "{t}");
}

/// The text of the cells of the table row holding `marker`.
fn row_cells(html: &str, marker: &str) -> Vec<String> {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"));
    let start = html[..at].rfind("<tr").unwrap();
    let end = at + html[at..].find("</tr>").unwrap();
    html[start..end]
        .split("<td")
        .skip(1)
        .map(|c| {
            let c = &c[c.find('>').unwrap() + 1..];
            c[..c.find("</td>").unwrap()].to_string()
        })
        .collect()
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot_except(dir, "\0")
}

fn snapshot_except(dir: &Path, skip: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel == skip {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A dedup stage of `clusters` clusters (sizes 2..=9) plus `noise` singletons,
/// with no images upstream: the clusters table only.
fn dedup_stage(dir: &Path, clusters: usize, noise: usize) -> (usize, Vec<(i64, usize, f32)>) {
    use arrow_array::{BooleanArray, Float32Array, Int64Array};
    let table = curate_core::schema::get("dedup_clusters").unwrap();
    let schema = curate_io::default_schema(table).unwrap();
    let (mut key, mut cid, mut rep, mut cos, mut size, mut minc, mut kept) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut nk, mut nc) = (vec![], vec![]);
    let mut info = Vec::new();
    for c in 0..clusters {
        let n = 2 + (c * 7) % 8;
        let r = format!("c{c:05}m0");
        let low = 0.97 - 0.0001 * ((c * 13) % 300) as f32;
        for m in 0..n {
            key.push(format!("c{c:05}m{m}"));
            cid.push(Some(c as i64 * 3 + 1));
            rep.push(Some(r.clone()));
            let x = if m == 0 {
                1.0
            } else {
                low + (1.0 - low) * m as f32 / n as f32
            };
            cos.push(Some(x));
            size.push(n as u32);
            minc.push(Some(low + (1.0 - low) / n as f32));
            kept.push(m == 0);
            nk.push(Some(if m == 0 {
                format!("c{c:05}m1")
            } else {
                r.clone()
            }));
            nc.push(Some(x.min(0.999)));
        }
        info.push((c as i64 * 3 + 1, n, low + (1.0 - low) / n as f32));
    }
    for i in 0..noise {
        key.push(format!("noise{i:06}"));
        cid.push(None);
        rep.push(None);
        cos.push(None);
        size.push(1);
        minc.push(None);
        kept.push(true);
        nk.push(Some("noise000000".into()));
        nc.push(Some(0.5));
    }
    let rows = key.len();
    let mut given: BTreeMap<&str, ArrayRef> = BTreeMap::new();
    given.insert("key", Arc::new(StringArray::from_iter_values(key)));
    given.insert("cluster_id", Arc::new(Int64Array::from(cid)));
    given.insert("round", Arc::new(UInt32Array::from(vec![1u32; rows])));
    given.insert("partition", Arc::new(UInt32Array::from(vec![0u32; rows])));
    given.insert(
        "role",
        Arc::new(StringArray::from_iter_values(vec!["core"; rows])),
    );
    given.insert("representative", Arc::new(StringArray::from(rep)));
    given.insert(
        "cosine_to_representative",
        Arc::new(Float32Array::from(cos)),
    );
    given.insert("nearest_key", Arc::new(StringArray::from(nk)));
    given.insert("nearest_cosine", Arc::new(Float32Array::from(nc)));
    given.insert("cluster_size", Arc::new(UInt32Array::from(size)));
    given.insert("cluster_min_cosine", Arc::new(Float32Array::from(minc)));
    given.insert("kept", Arc::new(BooleanArray::from(kept)));
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            given
                .get(f.name().as_str())
                .cloned()
                .unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), rows))
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut spec = spec("dedup", "dedup_clusters", 1);
    spec.config = serde_json::json!({ "eps": 0.95, "min_samples": 2 });
    let (stage, _) = StageDir::open(dir, &spec, false).unwrap();
    let file = StageDir::shard_name(0);
    curate_io::write_table(table, &dir.join(&file), &[batch], schema).unwrap();
    stage
        .commit_shard(ShardRecord {
            shard: 0,
            file,
            records: rows as u64,
            failures: 0,
            reasons: Default::default(),
            bytes: 0,
            duration_s: 1.0,
            inputs: vec![],
            completed_unix: 0,
            host: None,
            slurm_job: None,
        })
        .unwrap();
    (rows, info)
}

#[test]
fn cluster_pages_paginate_both_orders_and_cap_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let (rows, info) = dedup_stage(&work.join("dedup"), 1_000, 5_000);
    let mut opts = curate_report::Options::new(&work);
    opts.page_size = 40;
    opts.max_clusters = 300;
    let started = std::time::Instant::now();
    let written = curate_report::write_report(&opts).unwrap();
    eprintln!(
        "{rows} rows: report in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let report = &written.out;
    for (order, key) in [("by-size", 0usize), ("by-min-cos", 1)] {
        let mut seen = Vec::new();
        let mut page = 1;
        while let Ok(html) =
            std::fs::read_to_string(report.join(format!("dedup-{order}-{page:03}.html")))
        {
            let sections: Vec<&str> = html.split("<section class=\"cluster").skip(1).collect();
            assert!(sections.len() <= 40, "page {page}: {}", sections.len());
            for s in sections {
                let attr = |n: &str| {
                    let at = s.find(&format!(" {n}=\"")).unwrap() + n.len() + 3;
                    s[at..at + s[at..].find('"').unwrap()].to_string()
                };
                let id: i64 = attr("data-cluster-id").parse().unwrap();
                let size: usize = attr("data-size").parse().unwrap();
                let min: f32 = attr("data-min-cos").parse().unwrap();
                let members = s[..s.find("</section>").unwrap()]
                    .matches("<figure class=\"member")
                    .count();
                assert_eq!(members, size, "cluster {id}");
                seen.push((id, size, min));
            }
            page += 1;
        }
        assert_eq!(page - 1, 300usize.div_ceil(40), "{order}");
        assert_eq!(seen.len(), 300, "{order}");
        // The first 300 of the right order.
        let mut want = info.clone();
        if key == 0 {
            want.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.total_cmp(&b.2)).then(a.0.cmp(&b.0)));
        } else {
            want.sort_by(|a, b| a.2.total_cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
        }
        let want: Vec<i64> = want.iter().take(300).map(|w| w.0).collect();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            want,
            "{order}"
        );
    }
    let overview = std::fs::read_to_string(report.join("dedup.html")).unwrap();
    assert!(
        overview.contains("first 300 of 1,000 clusters"),
        "{overview}"
    );
    // Every image in a cluster is counted once in the size table.
    let in_clusters: usize = info.iter().map(|i| i.1).sum();
    assert!(overview.contains(&format!(
        ">{}<",
        curate_report::html::thousands(in_clusters as u64)
    )));
}
