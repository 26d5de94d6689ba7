//! `curate dedup`: the binary on embeddings stages (real ones from the
//! tiny CLIP model, and synthetic ones with planted near-duplicates),
//! resuming after a kill, and the distributed steps.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt32Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use curate_core::stage::{Inputs, ShardRecord, StageDir, StageSpec};

use crate::common::{curate, ingest, read_images, repo, run, Run};
use crate::embed::embed;

/// Writes an embeddings stage of unit vectors (one shard per 500 rows).
fn write_embeddings(dir: &Path, vectors: &[Vec<f32>]) {
    let table = curate_core::schema::get("embeddings").unwrap();
    let dim = vectors[0].len();
    let shards = vectors.len().div_ceil(500) as u32;
    let spec = StageSpec {
        stage: "embed".into(),
        schema: "embeddings".into(),
        config: serde_json::json!({"synthetic": true}),
        inputs: Inputs {
            kind: "synthetic".into(),
            location: "test".into(),
            items: vectors.len() as u64,
            fingerprint: format!("{}", vectors.len()),
            shards: vec![],
        },
        num_shards: shards,
    };
    let (mut stage, _) = StageDir::open(dir, &spec, false).unwrap();
    let item = Arc::new(arrow_schema::Field::new_list_field(
        arrow_schema::DataType::Float32,
        true,
    ));
    let list_type = arrow_schema::DataType::FixedSizeList(item.clone(), dim as i32);
    let schema = Arc::new(
        table
            .arrow_schema_with(&[("embedding", list_type)])
            .unwrap(),
    );
    for s in 0..shards {
        let rows = &vectors[s as usize * 500..((s as usize + 1) * 500).min(vectors.len())];
        let base = s as usize * 500;
        let values: Vec<f32> = rows.iter().flatten().copied().collect();
        let n = rows.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("{:016x}", base + i)),
                )) as ArrayRef,
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n("ok", n))),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    "synthetic",
                    n,
                ))),
                Arc::new(
                    FixedSizeListArray::try_new(
                        item.clone(),
                        dim as i32,
                        Arc::new(Float32Array::from(values)),
                        None,
                    )
                    .unwrap(),
                ),
            ],
        )
        .unwrap();
        stage.begin_shard(s).unwrap();
        let mut w = curate_io::ShardWriter::create(
            table,
            schema.clone(),
            &stage.tmp_path(s),
            &stage.shard_path(s),
            &Default::default(),
        )
        .unwrap();
        w.write(&batch).unwrap();
        let (records, bytes) = w.finish().unwrap();
        stage
            .commit_shard(ShardRecord {
                shard: s,
                file: StageDir::shard_name(s),
                records,
                failures: 0,
                reasons: Default::default(),
                bytes,
                duration_s: 0.0,
                inputs: vec![],
                completed_unix: 0,
                host: None,
                slurm_job: None,
            })
            .unwrap();
    }
    stage.consolidate(&[]).unwrap();
}

/// Unit vectors: groups of 1–4 near-copies (cos ≈ 0.95–0.99 to a base) among random directions.
fn planted(n: usize, d: usize) -> Vec<Vec<f32>> {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut gauss = move || {
        let (a, b) = (uniform() + 1e-12, uniform());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    let unit = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let mut out = Vec::with_capacity(n);
    let mut g = 0;
    while out.len() < n {
        let base = unit((0..d).map(|_| gauss()).collect());
        let copies = g % 4;
        g += 1;
        for _ in 0..copies.min(n - out.len() - 1) {
            out.push(unit(base.iter().map(|x| x + 0.02 * gauss()).collect()));
        }
        out.push(base);
    }
    out
}

fn dedup(input: &Path, out: &Path, args: &[&str]) -> Run {
    run(curate()
        .arg("dedup")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(args))
}

pub struct Clusters {
    pub rows: BTreeMap<String, (Option<i64>, bool, Option<String>, u32)>,
    pub min_cos: Vec<f32>,
}

pub fn read_clusters(dir: &Path) -> Clusters {
    let table = curate_core::schema::get("dedup_clusters").unwrap();
    let mut rows = BTreeMap::new();
    let mut min_cos = Vec::new();
    for b in curate_io::read_shard(&dir.join("part-00000.parquet"), table).unwrap() {
        let key = b.column(0).as_string::<i32>();
        let cid = b.column(1).as_primitive::<Int64Type>();
        let rep = b.column(6).as_string::<i32>();
        let size = b.column(10).as_primitive::<UInt32Type>();
        let minc = b.column(11).as_primitive::<Float32Type>();
        let kept = b.column(12).as_boolean();
        for i in 0..b.num_rows() {
            rows.insert(
                key.value(i).to_string(),
                (
                    cid.is_valid(i).then(|| cid.value(i)),
                    kept.value(i),
                    rep.is_valid(i).then(|| rep.value(i).to_string()),
                    size.value(i),
                ),
            );
            if minc.is_valid(i) {
                min_cos.push(minc.value(i));
            }
        }
    }
    Clusters { rows, min_cos }
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn dedup_of_the_fixture_photos_joins_the_rescaled_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos"), &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(embed(&images, &emb, &["--dtype", "f32"]).code, 0);
    let out = tmp.path().join("dedup");
    let r = dedup(&emb, &out, &["--eps", "0.995", "--keep", "first"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = read_clusters(&out);
    assert_eq!(c.rows.len(), 28, "one row per embedded photo");
    let key_of: BTreeMap<String, String> = read_images(&images)
        .into_iter()
        .map(|r| (r.source, r.key))
        .collect();
    // astronaut-full.jpg and more/astronaut-tiny.jpg are the same photo at two sizes (cos 0.9988 in the reference).
    let a = &c.rows[&key_of["astronaut-full.jpg"]];
    let b = &c.rows[&key_of["more/astronaut-tiny.jpg"]];
    assert!(a.0.is_some() && a.0 == b.0, "{a:?} {b:?}");
    assert!(a.1 != b.1, "exactly one of the two is kept");
    let s = summary(&out);
    assert_eq!(s["images_in"], 28);
    assert_eq!(s["converged"], true);
    let kept = c.rows.values().filter(|r| r.1).count();
    assert_eq!(s["images_kept"], kept as u64);
    // keep.parquet lists the kept images.
    let keep = curate_io::read_shard(
        &out.join("keep.parquet"),
        curate_core::schema::get("dedup_keep").unwrap(),
    )
    .unwrap();
    assert_eq!(keep.iter().map(|b| b.num_rows()).sum::<usize>(), kept);
    // A rerun finds the stage complete.
    let r = dedup(&emb, &out, &["--eps", "0.995", "--keep", "first"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stderr.contains("is complete; nothing to do"),
        "{}",
        r.stderr
    );
}

/// Real photos with real near-duplicates (opencv-doc's stereo pairs, an
/// edited copy, video frames): ingest → embed (the tiny CLIP) → dedup gives
/// the partition scikit-learn's DBSCAN gives on transformers' embeddings of
/// the same files (`fixtures/dedup/make_opencv_reference.py`, eps chosen with
/// no pair's cosine within 8e-4 of it).
#[test]
fn dedup_of_real_photos_equals_sklearn_on_the_transformers_embeddings() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("fixtures/dedup/opencv_photos.json")).unwrap(),
    )
    .unwrap();
    let dir = Path::new(reference["directory"].as_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for p in reference["photos"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap_or_else(|e| {
            panic!("{name}: {e}; install Debian's opencv-doc (apt-get install opencv-doc, as .ci/run does)")
        });
        assert_eq!(
            curate_core::hash::sha256_hex(&bytes),
            p["sha256"].as_str().unwrap(),
            "{name} is not the file the reference was recorded from"
        );
        std::fs::write(src.join(name), bytes).unwrap();
        want.insert(name.to_string(), p["label"].as_i64().unwrap());
    }
    let images = tmp.path().join("images");
    ingest(&src, &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(embed(&images, &emb, &["--dtype", "f32"]).code, 0);
    let out = tmp.path().join("dedup");
    let eps = reference["eps"].as_f64().unwrap().to_string();
    let r = dedup(&emb, &out, &["--eps", &eps]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let source_of: BTreeMap<String, String> = read_images(&images)
        .into_iter()
        .map(|r| (r.key, r.source))
        .collect();
    let got: BTreeMap<String, Option<i64>> = read_clusters(&out)
        .rows
        .into_iter()
        .map(|(key, row)| (source_of[&key].clone(), row.0))
        .collect();
    assert_eq!(got.len(), want.len(), "one row per photo");
    // The embeddings themselves equal transformers' on these real photos.
    let stored: BTreeMap<String, Vec<f32>> = crate::embed::read_embeddings(&emb)
        .into_iter()
        .map(|r| (source_of[&r.key].clone(), r.embedding.unwrap()))
        .collect();
    let mut worst = 1f64;
    for p in reference["photos"].as_array().unwrap() {
        let v = &stored[p["name"].as_str().unwrap()];
        let w: Vec<f64> = p["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let dot: f64 = v.iter().zip(&w).map(|(a, b)| *a as f64 * b).sum();
        let norm: f64 = v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        worst = worst.min(dot / norm);
    }
    eprintln!("lowest cosine to transformers on the opencv-doc photos: {worst:.9}");
    assert!(worst >= 0.99999, "lowest cosine to transformers {worst}");
    // The same partition: noise is noise, and two photos share a cluster
    // in one exactly when they share it in the other.
    let names: Vec<&String> = want.keys().collect();
    for a in &names {
        assert_eq!(got[*a].is_none(), want[*a] < 0, "{a}: noise in one only");
        for b in &names {
            if a < b && want[*a] >= 0 {
                assert_eq!(
                    got[*a].is_some() && got[*a] == got[*b],
                    want[*a] == want[*b],
                    "{a} and {b}"
                );
            }
        }
    }
    let clusters = reference["clusters"].as_u64().unwrap();
    assert!(clusters >= 3);
    let distinct: std::collections::BTreeSet<i64> = got.values().flatten().copied().collect();
    assert_eq!(distinct.len() as u64, clusters);
    // The edited copy and a stereo pair are among them.
    assert_eq!(got["ela_original.jpg"], got["ela_modified.jpg"]);
    assert!(got["aloeL.jpg"].is_some() && got["aloeL.jpg"] == got["aloeR.jpg"]);
}

fn synthetic(tmp: &Path, n: usize) -> std::path::PathBuf {
    let emb = tmp.join("emb");
    write_embeddings(&emb, &planted(n, 32));
    emb
}

const PARTITIONED: &[&str] = &[
    "--eps",
    "0.9",
    "--partition-size",
    "300",
    "--partition",
    "kmeans",
    "--seed",
    "3",
];

#[test]
fn killed_during_round_two_resumes_without_recomputing_and_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let emb = synthetic(tmp.path(), 2000);
    let whole = tmp.path().join("whole");
    let r = dedup(&emb, &whole, PARTITIONED);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        summary(&whole)["rounds"].as_array().unwrap().len() >= 2,
        "the setting needs several rounds"
    );

    let out = tmp.path().join("killed");
    let mut child = curate()
        .arg("dedup")
        .arg(&emb)
        .arg("-o")
        .arg(&out)
        .args(PARTITIONED)
        .env("CURATE_TEST_DEDUP_STALL", "2:1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = crate::resume::wait_for_line(&mut child, "stalling before round 2 partition 1");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("round 1 complete")),
        "{seen:?}"
    );
    assert!(!out.join("part-00000.parquet").exists());

    let r = dedup(&emb, &out, PARTITIONED);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("round 1 partition 0/"),
        "round 1 is reused:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("round 2 partition 0/"),
        "round 2's first partition is reused:\n{}",
        r.stderr
    );
    let (a, b) = (read_clusters(&whole), read_clusters(&out));
    assert_eq!(a.rows, b.rows);
}

#[test]
fn distributed_steps_give_the_same_result_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let emb = synthetic(tmp.path(), 1500);
    let local = tmp.path().join("local");
    assert_eq!(dedup(&emb, &local, PARTITIONED).code, 0);

    let dist = tmp.path().join("dist");
    let r = run(curate()
        .args(["dedup", "plan"])
        .arg(&emb)
        .arg("-o")
        .arg(&dist)
        .args(PARTITIONED));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut round = 1;
    loop {
        // Two "array tasks" share the round's partitions.
        for task in ["0", "1"] {
            let r = run(curate().args(["dedup", "partition"]).arg(&dist).args([
                "--round",
                &round.to_string(),
                "--task-index",
                task,
                "--num-tasks",
                "2",
            ]));
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        let r = run(curate()
            .args(["dedup", "merge"])
            .arg(&dist)
            .args(["--round", &round.to_string()]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        if dist.join("part-00000.parquet").exists() {
            break;
        }
        round += 1;
        assert!(round < 12, "never converged");
    }
    assert_eq!(read_clusters(&local).rows, read_clusters(&dist).rows);
    let (a, b) = (summary(&local), summary(&dist));
    assert_eq!(a["images_kept"], b["images_kept"]);
}

#[test]
fn merging_a_round_with_missing_partitions_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let emb = synthetic(tmp.path(), 900);
    let dist = tmp.path().join("dist");
    assert_eq!(
        run(curate()
            .args(["dedup", "plan"])
            .arg(&emb)
            .arg("-o")
            .arg(&dist)
            .args(PARTITIONED))
        .code,
        0
    );
    let r = run(curate()
        .args(["dedup", "partition"])
        .arg(&dist)
        .args(["--round", "1", "--part", "0"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(curate()
        .args(["dedup", "merge"])
        .arg(&dist)
        .args(["--round", "1"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("round 1: partitions 1, 2"),
        "{}",
        r.stderr
    );
}

#[test]
fn chained_clusters_are_visible_and_bad_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A chain: each vector at cos ≈ 0.95 to the next, so the ends are far apart.
    let d = 16;
    let mut v = Vec::new();
    for i in 0..8 {
        let a = i as f32 * 0.32;
        let mut x = vec![0f32; d];
        x[0] = a.cos();
        x[1] = a.sin();
        v.push(x);
    }
    let emb = tmp.path().join("emb");
    write_embeddings(&emb, &v);
    let out = tmp.path().join("out");
    let r = dedup(&emb, &out, &["--eps", "0.9"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = read_clusters(&out);
    assert_eq!(
        c.rows.values().filter(|r| r.1).count(),
        1,
        "one chain, one cluster"
    );
    assert!(
        c.min_cos.iter().all(|&m| m < 0.9),
        "the chain's far end is below eps: {:?}",
        c.min_cos
    );
    assert_eq!(summary(&out)["chained_clusters"], 1);

    let r = dedup(&emb, &tmp.path().join("x"), &["--eps", "1.5"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--eps 1.5"), "{}", r.stderr);
    let r = dedup(&emb, &tmp.path().join("y"), &["--keep", "best-score"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("needs --scores"), "{}", r.stderr);
    let r = dedup(&repo().join("fixtures/images"), &tmp.path().join("z"), &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a stage directory"), "{}", r.stderr);
}

#[test]
fn best_score_keeps_the_highest_scored_image_of_each_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos"), &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(embed(&images, &emb, &["--dtype", "f32"]).code, 0);
    let scores = tmp.path().join("scores");
    let r = run(curate()
        .arg("score")
        .arg(&images)
        .arg("-o")
        .arg(&scores)
        .arg("--model")
        .arg(repo().join("fixtures/models/aesthetic-tiny")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let score_of: BTreeMap<String, f32> = crate::score::read_scores(&scores)
        .into_iter()
        .map(|r| (r.key, r.score.unwrap()))
        .collect();
    let out = tmp.path().join("dedup");
    let r = run(curate()
        .arg("dedup")
        .arg(&emb)
        .arg("-o")
        .arg(&out)
        .args(["--eps", "0.9", "--keep", "best-score", "--scores"])
        .arg(&scores));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = read_clusters(&out);
    let mut clusters: BTreeMap<i64, Vec<(&String, bool)>> = BTreeMap::new();
    for (key, (cid, kept, _, _)) in &c.rows {
        if let Some(cid) = cid {
            clusters.entry(*cid).or_default().push((key, *kept));
        }
    }
    assert!(
        !clusters.is_empty(),
        "eps 0.9 joins some of the fixture photos"
    );
    for members in clusters.values() {
        let best = members
            .iter()
            .map(|(k, _)| score_of[*k])
            .fold(f32::MIN, f32::max);
        let kept: Vec<_> = members.iter().filter(|m| m.1).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(score_of[kept[0].0], best, "{members:?}");
    }
}
