//! `curate caption`: Florence-2 captions from the binary against the
//! transformers reference (`fixtures/models/florence2-tiny`), `--keep`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::Array;

use crate::common::{curate, ingest, read_images, repo, run};

pub struct CaptionRow {
    pub key: String,
    pub task: String,
    pub status: String,
    pub caption: Option<String>,
    pub tokens: Option<u32>,
}

pub fn read_captions(stage: &Path) -> Vec<CaptionRow> {
    let table = curate_core::schema::get("captions").unwrap();
    let files = crate::common::shard_files(stage);
    let mut out = Vec::new();
    for f in files {
        for b in curate_io::read_shard(&f, table).unwrap() {
            let key = b.column(0).as_string::<i32>();
            let task = b.column(1).as_string::<i32>();
            let status = b.column(2).as_string::<i32>();
            let caption = b.column(5).as_string::<i32>();
            let tokens = b.column(6).as_primitive::<UInt32Type>();
            for i in 0..b.num_rows() {
                out.push(CaptionRow {
                    key: key.value(i).into(),
                    task: task.value(i).into(),
                    status: status.value(i).into(),
                    caption: caption.is_valid(i).then(|| caption.value(i).into()),
                    tokens: tokens.is_valid(i).then(|| tokens.value(i)),
                });
            }
        }
    }
    out
}

fn model() -> PathBuf {
    repo().join("fixtures/models/florence2-tiny")
}

/// Reference texts of the single-image cases: (photo, task, mode) → text.
fn reference() -> BTreeMap<(String, String, String), String> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model().join("reference.json")).unwrap())
            .unwrap();
    let task_name = |t: &str| match t {
        "<CAPTION>" => "caption",
        "<DETAILED_CAPTION>" => "detailed",
        _ => "more-detailed",
    };
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "single")
        .map(|c| {
            (
                (
                    c["photos"][0].as_str().unwrap().to_string(),
                    task_name(c["tasks"][0].as_str().unwrap()).to_string(),
                    c["mode"].as_str().unwrap().to_string(),
                ),
                c["texts"][0].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn captions_equal_transformers_for_every_photo_and_task() {
    if !curate_vision::turbo::available() {
        // JPEG pixels equal Pillow's only through libjpeg-turbo (CI installs it).
        assert!(std::env::var_os("CURATE_REQUIRE_TURBOJPEG").is_none());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(
        &repo().join("fixtures/images/photos"),
        &images,
        &["--shard-size", "10"],
    );
    let sources: BTreeMap<String, String> = read_images(&images)
        .into_iter()
        .map(|r| (r.key, format!("photos/{}", r.source)))
        .collect();
    let reference = reference();
    for (mode, beams) in [("greedy", "1"), ("beam", "3")] {
        let out = tmp.path().join(format!("captions-{mode}"));
        let r = run(curate()
            .arg("caption")
            .arg(&images)
            .arg("-o")
            .arg(&out)
            .arg("--model")
            .arg(model())
            .args([
                "--num-beams",
                beams,
                "--max-new-tokens",
                "20",
                "--batch-size",
                "1",
                "--decode-scale",
                "full",
            ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let rows = read_captions(&out);
        assert_eq!(rows.len(), 28 * 3);
        for row in rows {
            assert_eq!(row.status, "ok");
            let want = &reference[&(
                sources[&row.key].clone(),
                row.task.clone(),
                mode.to_string(),
            )];
            assert_eq!(
                row.caption.as_ref().unwrap(),
                want,
                "{} {} {mode}",
                sources[&row.key],
                row.task
            );
            assert!(row.tokens.unwrap() <= 19);
        }
    }
}

#[test]
fn keep_limits_captions_to_the_dedup_keep_list_and_bad_tasks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    ingest(&repo().join("fixtures/images"), &images, &[]);
    let emb = tmp.path().join("emb");
    assert_eq!(crate::embed::embed(&images, &emb, &[]).code, 0);
    let dd = tmp.path().join("dedup");
    assert_eq!(
        run(curate()
            .arg("dedup")
            .arg(&emb)
            .arg("-o")
            .arg(&dd)
            .args(["--eps", "0.99"]))
        .code,
        0
    );
    let out = tmp.path().join("captions");
    let r = run(curate()
        .arg("caption")
        .arg(&images)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(model())
        .arg("--keep")
        .arg(&dd)
        .args([
            "--task",
            "caption",
            "--num-beams",
            "1",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "3",
        ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = read_captions(&out);
    let kept: std::collections::BTreeSet<String> = {
        let t = curate_core::schema::get("dedup_keep").unwrap();
        curate_io::read_shard(&dd.join("keep.parquet"), t)
            .unwrap()
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_string::<i32>();
                (0..b.num_rows())
                    .map(|i| k.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let got: std::collections::BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    assert_eq!(got, kept);
    assert!(rows.iter().all(|r| r.status == "ok" && r.task == "caption"));

    let r = run(curate()
        .arg("caption")
        .arg(&images)
        .arg("-o")
        .arg(tmp.path().join("x"))
        .arg("--model")
        .arg(model())
        .args(["--task", "poem"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--task `poem`"), "{}", r.stderr);
}
