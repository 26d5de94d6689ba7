//! `curate score`: the aesthetic predictor against the PyTorch reference
//! (`fixtures/models/aesthetic-tiny`, made through
//! `pipelines/tools/export_aesthetic_v2_5.py`'s own export path), the LAION
//! head on embeddings, and the bands.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::Array;

use crate::common::{curate, ingest, read_images, repo, run};
use crate::embed::embed;

pub struct ScoreRow {
    pub key: String,
    status: String,
    reason: Option<String>,
    pub score: Option<f32>,
    tag: Option<String>,
    dropped: Option<bool>,
}

/// `curate score INPUT -o OUT`, flags to follow.
fn score_cmd(input: &Path, out: &Path) -> std::process::Command {
    let mut c = curate();
    c.arg("score").arg(input).arg("-o").arg(out);
    c
}

impl ScoreRow {
    pub fn is_dropped(&self) -> bool {
        self.dropped == Some(true)
    }

    pub fn tag_of(&self) -> Option<String> {
        self.tag.clone()
    }
}

pub fn read_scores(stage: &Path) -> Vec<ScoreRow> {
    let table = curate_core::schema::get("scores").unwrap();
    let files = crate::common::shard_files(stage);
    let mut out = Vec::new();
    for f in files {
        for b in curate_io::read_shard(&f, table).unwrap() {
            let key = b.column(0).as_string::<i32>();
            let status = b.column(1).as_string::<i32>();
            let reason = b.column(2).as_string::<i32>();
            let score = b.column(4).as_primitive::<Float32Type>();
            let tag = b.column(5).as_string::<i32>();
            let dropped = b.column(6).as_boolean();
            for i in 0..b.num_rows() {
                out.push(ScoreRow {
                    key: key.value(i).into(),
                    status: status.value(i).into(),
                    reason: reason.is_valid(i).then(|| reason.value(i).into()),
                    score: score.is_valid(i).then(|| score.value(i)),
                    tag: tag.is_valid(i).then(|| tag.value(i).into()),
                    dropped: dropped.is_valid(i).then(|| dropped.value(i)),
                });
            }
        }
    }
    out
}

fn reference(path: &str) -> BTreeMap<String, f32> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap();
    r["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

/// Tags and drops follow the default bands (>= 6, [5.2, 6), [4, 5.2), < 4 dropped).
fn check_bands(rows: &[ScoreRow]) {
    for r in rows.iter().filter(|r| r.status == "ok") {
        let s = r.score.unwrap();
        let (tag, dropped) = if s >= 6.0 {
            (Some("excellent score"), false)
        } else if s >= 5.2 {
            (Some("good score"), false)
        } else if s >= 4.0 {
            (Some("average score"), false)
        } else {
            (None, true)
        };
        assert_eq!(
            (r.tag.as_deref(), r.dropped),
            (tag, Some(dropped)),
            "score {s}"
        );
    }
}

fn by_path(images: &Path, rows: Vec<ScoreRow>) -> BTreeMap<String, ScoreRow> {
    let sources: BTreeMap<String, String> = read_images(images)
        .into_iter()
        .map(|r| (r.key, format!("photos/{}", r.source)))
        .collect();
    rows.into_iter()
        .map(|r| (sources[&r.key].clone(), r))
        .collect()
}

#[test]
fn scores_match_the_pytorch_predictor_on_every_photo() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(
        &repo().join("fixtures/images/photos"),
        &images,
        &["--shard-size", "10"],
    );
    let out = tmp.path().join("scores");
    let r = run(score_cmd(&images, &out)
        .arg("--model")
        .arg(repo().join("fixtures/models/aesthetic-tiny"))
        .args(["--batch-size", "4", "--decode-scale", "full"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = by_path(&images, read_scores(&out));
    let reference = reference("fixtures/models/aesthetic-tiny/reference.json");
    assert_eq!(rows.len(), reference.len());
    let mut worst = 0f32;
    for (path, want) in &reference {
        let got = rows[path]
            .score
            .unwrap_or_else(|| panic!("{path}: {:?}", rows[path].reason));
        worst = worst.max((got - want).abs());
        assert!((got - want).abs() <= 1e-4, "{path}: {got} vs {want}");
    }
    eprintln!("largest difference from the PyTorch scores: {worst:e}");
    let all: Vec<ScoreRow> = rows.into_values().collect();
    check_bands(&all);
    // The fixture's scores reach every band, and some are dropped.
    for tag in ["excellent score", "good score", "average score"] {
        assert!(all.iter().any(|r| r.tag.as_deref() == Some(tag)), "{tag}");
    }
    assert!(all.iter().any(|r| r.dropped == Some(true)));
}

#[test]
fn from_embeddings_head_matches_its_reference_and_bands_are_configurable() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos"), &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(
        embed(&images, &emb, &["--dtype", "f32", "--decode-scale", "full"]).code,
        0
    );
    let head = repo().join("fixtures/models/aesthetic-head-tiny/head.safetensors");
    let out = tmp.path().join("scores");
    let r = run(score_cmd(&emb, &out).arg("--from-embeddings").arg(&head));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = by_path(&images, read_scores(&out));
    for (path, want) in reference("fixtures/models/aesthetic-head-tiny/reference.json") {
        let got = rows[&path].score.unwrap();
        assert!((got - want).abs() <= 1e-4, "{path}: {got} vs {want}");
    }
    check_bands(&rows.into_values().collect::<Vec<_>>());

    let custom = tmp.path().join("custom");
    let r = run(score_cmd(&emb, &custom)
        .arg("--from-embeddings")
        .arg(&head)
        .args(["--bands", "7:\"top\",3:fine", "--drop-below", "3"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for row in read_scores(&custom) {
        let s = row.score.unwrap();
        let want = if s >= 7.0 {
            Some("top")
        } else if s >= 3.0 {
            Some("fine")
        } else {
            None
        };
        assert_eq!(row.tag.as_deref(), want, "{s}");
        assert_eq!(row.dropped, Some(s < 3.0));
    }
}

#[test]
fn a_head_that_does_not_fit_the_embeddings_is_refused_with_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images/photos/more"), &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(embed(&images, &emb, &[]).code, 0);
    // A 2-input head written by hand: one Linear(2, 1) as safetensors.
    let header = br#"{"l.0.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"l.0.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 12]);
    let head = tmp.path().join("head.safetensors");
    std::fs::write(&head, file).unwrap();
    let r = run(score_cmd(&emb, &tmp.path().join("s"))
        .arg("--from-embeddings")
        .arg(&head));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("takes 2 inputs but the embeddings have 16 dimensions"),
        "{}",
        r.stderr
    );
}

#[test]
fn failed_images_are_rows_and_bad_bands_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images"), &images, &[]);
    let model = repo().join("fixtures/models/aesthetic-tiny");
    let out = tmp.path().join("s");
    let r = run(score_cmd(&images, &out).arg("--model").arg(&model));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let inputs = read_images(&images);
    let rows = read_scores(&out);
    assert_eq!(inputs.len(), rows.len());
    for (i, o) in inputs.iter().zip(&rows) {
        assert_eq!(i.key, o.key);
        assert_eq!(
            i.status == curate_core::record::Status::Ok,
            o.status == "ok"
        );
        if o.status != "ok" {
            assert_eq!(o.reason.as_deref(), Some("source_error"));
            assert!(o.score.is_none() && o.dropped.is_none());
        }
    }
    let r = run(score_cmd(&images, &tmp.path().join("x"))
        .arg("--model")
        .arg(&model)
        .args(["--bands", "high:great"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--bands") && r.stderr.contains("not a number"),
        "{}",
        r.stderr
    );
    // The CLIP model is no score model.
    let r = run(score_cmd(&images, &tmp.path().join("y"))
        .arg("--model")
        .arg(repo().join("fixtures/models/clip-tiny/onnx/vision_model.onnx"))
        .args(["--output-name", "image_embeds"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("a score is one") || r.stderr.contains("expected input"),
        "{}",
        r.stderr
    );
}
