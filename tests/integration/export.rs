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
        .args([
            "-c",
            "import datasets, webdataset, pyarrow, numpy, safetensors",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CURATE_REQUIRE_PY_CONSUMERS").is_none(),
            "CURATE_REQUIRE_PY_CONSUMERS is set but `datasets`/`webdataset`/`numpy`/`safetensors` \
             do not import (pip install -r tests/consumers/requirements.txt)"
        );
        eprintln!("skipping: datasets/webdataset not installed");
    }
    ok
}

/// Runs the consumer check; returns the samples it read.
fn consumer_reads(format: &str, out: &Path, expected: &Path) -> u64 {
    consumer_reads_with(format, out, expected, &[])
}

/// The consumer check with its extra arguments (kohya, musubi: the latents
/// stage, and "1" when the export drew from the posterior).
fn consumer_reads_with(format: &str, out: &Path, expected: &Path, extra: &[&Path]) -> u64 {
    let hf_home = out.with_extension("hf-home");
    let o = Command::new("python3")
        .arg(repo().join("tests/consumers/check_export.py"))
        .arg(format)
        .arg(out)
        .arg(expected)
        .args(extra)
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
    // A latent cache needs an encode-latents stage, and says so.
    let r = export(&work, &out, "kohya", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no complete one of the images")
            && r.stderr.contains("curate encode-latents"),
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

/// The expected samples of a latents stage: its ok rows, with the source
/// image's sha256 and the training text.
fn expected_of(work: &Path, latents: &Path, name: &str) -> PathBuf {
    let sha: BTreeMap<String, String> = read_images(&work.join("images"))
        .into_iter()
        .filter_map(|r| Some((r.key, curate_core::hash::sha256_hex(&r.bytes?))))
        .collect();
    let mut expected = serde_json::Map::new();
    for row in read_latents(latents) {
        if row.status == "ok" {
            expected.insert(
                row.key.clone(),
                serde_json::json!({"sha256": sha[&row.key], "text": row.caption}),
            );
        }
    }
    assert!(expected.len() > 3, "the stage holds latents");
    let exp = tmp(&format!("{name}.json"));
    std::fs::write(&exp, serde_json::to_vec(&expected).unwrap()).unwrap();
    exp
}

/// Keys of the ok rows of one latents shard file.
fn ok_keys(shard: &Path) -> Vec<String> {
    use arrow_array::cast::AsArray;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(shard).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut keys = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let (k, st) = (
            b.column_by_name("key").unwrap().as_string::<i32>().clone(),
            b.column_by_name("status")
                .unwrap()
                .as_string::<i32>()
                .clone(),
        );
        for i in 0..b.num_rows() {
            if st.value(i) == "ok" {
                keys.push(k.value(i).to_string());
            }
        }
    }
    keys
}

#[test]
fn latent_caches_load_as_kohya_and_musubi_read_them_and_survive_a_kill() {
    let demo = demo();
    if !consumers_present() {
        return;
    }
    // Two latents stages of the same images: the export asks which.
    let out = tmp("kohya-ambiguous");
    let r = export(&demo.work, &out, "kohya", &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("expected one `encode-latents` stage")
            && r.stderr.contains("pass --latents NAME"),
        "{}",
        r.stderr
    );
    for (format, stage, suffix) in [
        ("kohya", "latents-512", "_flux.npz"),
        ("musubi", "latents-256", "_zi.safetensors"),
    ] {
        let latents = demo.work.join(stage);
        let exp = expected_of(&demo.work, &latents, &format!("{format}-expected"));
        let out = tmp(format);
        let r = export(&demo.work, &out, format, &["--latents", stage]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let n = consumer_reads_with(format, &out, &exp, &[&latents]);
        assert_eq!(
            n,
            read_latents(&latents)
                .iter()
                .filter(|r| r.status == "ok")
                .count() as u64
        );
        let toml = std::fs::read_to_string(out.join("dataset.toml")).unwrap();
        let dir = out.canonicalize().unwrap();
        assert!(
            toml.contains(&format!("{:?}", dir.display().to_string())),
            "{toml}"
        );
        // kill -9 in shard 1: its journal gone, one cache file half written and
        // one missing; the rerun redoes just that shard and leaves nothing behind.
        let keys = ok_keys(&latents.join("part-00001.parquet"));
        assert!(!keys.is_empty(), "shard 1 has latents");
        let cache = walk(&out)
            .into_iter()
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with(&keys[0]) && n.ends_with(suffix)
            })
            .unwrap();
        let name = cache.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::remove_file(&cache).unwrap();
        std::fs::write(out.join(format!(".{name}.tmp")), b"partial").unwrap();
        std::fs::remove_file(out.join("journal/part-00001.json")).unwrap();
        let again = export(&demo.work, &out, format, &["--latents", stage]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(
            again.stderr.contains("1 shards written, 4 skipped"),
            "{}",
            again.stderr
        );
        assert_eq!(temporaries(&out), Vec::<String>::new());
        assert!(cache.is_file(), "the redo rewrote {name}");
        assert_eq!(consumer_reads_with(format, &out, &exp, &[&latents]), n);
    }
}

#[test]
fn sample_posterior_draws_seeded_normals_around_the_mean_and_needs_mean_logvar() {
    let demo = demo();
    if !consumers_present() {
        return;
    }
    // The mean-only demo stage cannot be sampled: the refusal names the way out.
    let r = export(
        &demo.work,
        &tmp("no-logvar"),
        "kohya",
        &["--latents", "latents-256", "--sample-posterior", "1"],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--store mean-logvar") && r.stderr.contains("store `mean`"),
        "{}",
        r.stderr
    );
    // A stage with the log-variance, from the demo's images and selection.
    let mlv = tmp("mean-logvar");
    let w = &demo.work;
    let enc = run(curate()
        .arg("encode-latents")
        .arg(w.join("images"))
        .arg("-o")
        .arg(&mlv)
        .args([
            "--stage",
            "256",
            "--store",
            "mean-logvar",
            "--max-upscale",
            "4",
        ])
        .arg("--vae")
        .arg(crate::latents::vae())
        .arg("--keep")
        .arg(w.join("dedup"))
        .arg("--scores")
        .arg(w.join("score"))
        .arg("--captions")
        .arg(w.join("caption")));
    assert_eq!(enc.code, 0, "{}", enc.stderr);
    let exp = expected_of(w, &mlv, "mean-logvar-expected");
    let one = tmp("sampled-1");
    let two = tmp("sampled-2");
    for out in [&one, &two] {
        let mlv_arg = mlv.display().to_string();
        let r = export(
            w,
            out,
            "kohya",
            &["--latents", &mlv_arg, "--sample-posterior", "7"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    // The draws are N(mean, exp(logvar)) (checked by the consumer from the stored
    // mean and log-variance), and the same seed gives the same files.
    consumer_reads_with("kohya", &one, &exp, &[&mlv, Path::new("1")]);
    let npz = |d: &Path| -> BTreeMap<String, Vec<u8>> {
        walk(d)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("_flux.npz"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let (a, b) = (npz(&one), npz(&two));
    assert!(!a.is_empty());
    assert_eq!(a, b, "same seed, same draws");
    // Without the flag the mean is exported (the consumer insists on equality).
    let mean = tmp("mean-of-logvar");
    let mlv_arg = mlv.display().to_string();
    let r = export(w, &mean, "kohya", &["--latents", &mlv_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    consumer_reads_with("kohya", &mean, &exp, &[&mlv]);
    assert_ne!(npz(&mean), a, "a draw is not the mean");
}
