//! `curate export`: the demo's curated set in the formats other tools load,
//! read back by those tools (HF `datasets`, `webdataset`; installed by
//! `.ci/run` from tests/consumers/requirements.txt), checked against the
//! source image bytes and encode-latents' own training texts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{curate, demo, ingest, read_images, repo, run, walk};
use crate::latents::read_latents;

/// Whether the consumer packages import; without them the test fails when
/// `CURATE_REQUIRE_PY_CONSUMERS` is set (CI) and is skipped otherwise.
fn consumers_present() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import datasets, webdataset, pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CURATE_REQUIRE_PY_CONSUMERS").is_none(),
            "CURATE_REQUIRE_PY_CONSUMERS is set but `datasets`/`webdataset` do not import \
             (pip install -r tests/consumers/requirements.txt)"
        );
        eprintln!("skipping: datasets/webdataset not installed");
    }
    ok
}

/// Runs the consumer check; returns the samples it read.
fn consumer_reads(format: &str, out: &Path, expected: &Path) -> u64 {
    let hf_home = out.with_extension("hf-home");
    let o = Command::new("python3")
        .arg(repo().join("tests/consumers/check_export.py"))
        .arg(format)
        .arg(out)
        .arg(expected)
        .env("HF_HOME", &hf_home)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{format} consumer: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    line["samples"].as_u64().unwrap()
}

fn export(work: &Path, out: &Path, format: &str, extra: &[&str]) -> crate::common::Run {
    run(curate()
        .arg("export")
        .arg(work)
        .arg("-o")
        .arg(out)
        .arg("--format")
        .arg(format)
        .args(extra))
}

fn tmp(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("export")
        .join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    p
}

/// Every file under `dir` whose name starts with a dot (temporaries).
fn temporaries(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn exports_load_in_datasets_and_webdataset_with_the_training_texts() {
    let demo = demo();
    if !consumers_present() {
        return;
    }
    // The selection is encode-latents': its rows (ok or not) are the images kept
    // by dedup and not dropped by score, and its `caption` is the training text.
    let sha: BTreeMap<String, String> = read_images(&demo.work.join("images"))
        .into_iter()
        .filter_map(|r| Some((r.key, curate_core::hash::sha256_hex(&r.bytes?))))
        .collect();
    let mut expected = serde_json::Map::new();
    for row in read_latents(&demo.work.join("latents-256")) {
        expected.insert(
            row.key.clone(),
            serde_json::json!({"sha256": sha[&row.key], "text": row.caption}),
        );
    }
    assert!(expected.len() > 3, "the demo selects images");
    assert!(
        expected.values().any(|v| v["text"].is_string()),
        "the demo's texts are captions"
    );
    let exp = tmp("expected.json");
    std::fs::write(&exp, serde_json::to_vec(&expected).unwrap()).unwrap();
    for format in ["hf", "webdataset"] {
        let out = tmp(format);
        let r = export(&demo.work, &out, format, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(consumer_reads(format, &out, &exp), expected.len() as u64);
        // kill -9 mid-shard: its journal gone, a temporary left; the rerun redoes
        // just that shard and leaves nothing behind.
        std::fs::remove_file(out.join("journal/part-00001.json")).unwrap();
        let partial = match format {
            "hf" => out.join("data/.train-00001-000.parquet.tmp"),
            _ => out.join(".00001.tar.tmp"),
        };
        std::fs::write(&partial, b"partial").unwrap();
        let again = export(&demo.work, &out, format, &[]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(
            again.stderr.contains("1 shards written, 4 skipped"),
            "{}",
            again.stderr
        );
        assert_eq!(temporaries(&out), Vec::<String>::new());
        assert_eq!(consumer_reads(format, &out, &exp), expected.len() as u64);
    }
    let card = std::fs::read_to_string(tmp_path("hf").join("README.md")).unwrap();
    assert!(card.contains("path: data/train-*.parquet"), "{card}");
    assert!(
        card.contains(&format!("| samples | {} |", expected.len())),
        "{card}"
    );
}

fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("export")
        .join(name)
}

#[test]
fn missing_stages_and_foreign_targets_are_refused_with_the_way_out() {
    let work = tmp("bare-work");
    let images = work.join("images");
    let ing = ingest(
        &crate::common::fixtures_images(),
        &images,
        &["--shard-size", "8"],
    );
    assert_eq!(ing.code, 0, "{}", ing.stderr);
    let out = tmp("bare-out");
    let r = export(&work, &out, "hf", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no complete dedup, score, caption stage"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--allow-missing dedup,score,caption"),
        "{}",
        r.stderr
    );
    assert!(!out.join("manifest.json").exists(), "nothing written");
    // The way out it names works: every decodable image is exported.
    let r = export(
        &work,
        &out,
        "hf",
        &["--allow-missing", "dedup,score,caption"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ok = read_images(&images)
        .into_iter()
        .filter(|i| i.status == curate_core::record::Status::Ok)
        .count();
    assert!(ok > 0);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains(&format!("| samples | {ok} |")), "{card}");
    // Another format into this export is refused, and so is a folder of other files.
    let r = export(
        &work,
        &out,
        "webdataset",
        &["--allow-missing", "dedup,score,caption"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("found a `hf` export"), "{}", r.stderr);
    let other = tmp("someone-elses");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.md"), "mine").unwrap();
    let r = export(
        &work,
        &other,
        "webdataset",
        &["--allow-missing", "dedup,score,caption"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("found `notes.md`"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1, "left alone");
}
