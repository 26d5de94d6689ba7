//! The shard contract, end to end: SIGKILL part-way and rerun, a truncated
//! output shard, a changed configuration, and a split across tasks.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

/// Asserts `out` holds every input exactly once and equals the reference run.
fn assert_same_as_reference(out: &Path, reference: &Path) {
    let got = read_images(out);
    let want = read_images(reference);
    let inputs = image_files(&fixtures_images());
    let sources: Vec<&str> = got.iter().map(|r| r.source.as_str()).collect();
    let unique: HashSet<&str> = sources.iter().copied().collect();
    assert_eq!(unique.len(), sources.len(), "an input appears twice");
    assert_eq!(sources.len(), inputs.len(), "an input is missing");
    assert_eq!(got, want, "output differs from an uninterrupted run");
    assert_eq!(read_duplicates(out), read_duplicates(reference));
    let leftovers: Vec<_> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn reference(tmp: &Path, shard_size: &str) -> std::path::PathBuf {
    let out = tmp.join("reference");
    ingest(&fixtures_images(), &out, &["--shard-size", shard_size]);
    out
}

/// Reads the child's stderr until a line contains `needle`; returns the lines read.
pub fn wait_for_line(child: &mut std::process::Child, needle: &str) -> Vec<String> {
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return seen;
        }
    }
    panic!(
        "child ended without printing `{needle}`:\n{}",
        seen.join("\n")
    );
}

#[test]
fn sigkill_mid_shard_then_rerun_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path(), "4");
    let out = tmp.path().join("killed");

    // Stop deterministically with shard 2 half written, then SIGKILL.
    let mut child = curate()
        .arg("ingest")
        .arg(fixtures_images())
        .arg("-o")
        .arg(&out)
        .args(["--shard-size", "4"])
        .env("CURATE_TEST_STALL_AFTER_ROWS", "10")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "stalled after 12 rows");
    let tmp_files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".part-00002.parquet.tmp-"))
        .collect();
    assert_eq!(tmp_files.len(), 1, "shard 2 should be half written");
    assert!(out.join("part-00000.parquet").exists() && out.join("part-00001.parquet").exists());
    assert!(!out.join("part-00002.parquet").exists());
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());

    let r = ingest(&fixtures_images(), &out, &["--shard-size", "4"]);
    assert!(
        r.stderr.contains("2 skipped"),
        "completed shards must be skipped:\n{}",
        r.stderr
    );
    assert_same_as_reference(&out, &reference);
}

#[test]
fn sigkill_at_an_arbitrary_moment_then_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path(), "1");
    let out = tmp.path().join("killed");
    let mut child = curate()
        .arg("ingest")
        .arg(fixtures_images())
        .arg("-o")
        .arg(&out)
        .args(["--shard-size", "1", "--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill as soon as the third shard is reported: the child keeps working
    // meanwhile, so the kill lands wherever it happens to be.
    wait_for_line(&mut child, "shard 2 complete");
    child.kill().unwrap();
    child.wait().unwrap();
    ingest(
        &fixtures_images(),
        &out,
        &["--shard-size", "1", "--threads", "1"],
    );
    assert_same_as_reference(&out, &reference);
}

#[test]
fn truncated_output_shard_is_redone() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path(), "4");
    let out = tmp.path().join("out");
    ingest(&fixtures_images(), &out, &["--shard-size", "4"]);
    let shard = out.join("part-00001.parquet");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let r = ingest(&fixtures_images(), &out, &["--shard-size", "4"]);
    assert!(r.stderr.contains("shard 1 is damaged"), "{}", r.stderr);
    assert!(
        r.stderr.contains("1 shards written"),
        "only the damaged shard is redone:\n{}",
        r.stderr
    );
    assert_same_as_reference(&out, &reference);
}

#[test]
fn changed_configuration_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    ingest(&fixtures_images(), &out, &["--shard-size", "4"]);
    let before = read_images(&out);

    let r = run(curate()
        .arg("ingest")
        .arg(fixtures_images())
        .arg("-o")
        .arg(&out)
        .args(["--shard-size", "5", "--store", "original"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("shard_size: 4 → 5"), "{}", r.stderr);
    assert!(
        r.stderr.contains(r#"store: "auto" → "original""#),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--overwrite"), "{}", r.stderr);
    assert_eq!(
        read_images(&out),
        before,
        "a refused run must not touch the output"
    );

    ingest(
        &fixtures_images(),
        &out,
        &["--shard-size", "5", "--store", "original", "--overwrite"],
    );
    let (manifest, journal) = curate_core::stage::StageDir::inspect(&out)
        .unwrap()
        .unwrap();
    let n = image_files(&fixtures_images()).len() as u32;
    assert_eq!(manifest.num_shards, n.div_ceil(5));
    assert_eq!(journal.len() as u32, n.div_ceil(5));
    assert!(
        !out.join(format!("part-{:05}.parquet", n.div_ceil(4) - 1))
            .exists()
            || n.div_ceil(4) == n.div_ceil(5)
    );
}

#[test]
fn slurm_array_tasks_split_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = reference(tmp.path(), "4");
    let out = tmp.path().join("split");
    let task = |id: &str| {
        let r = run(curate()
            .arg("ingest")
            .arg(fixtures_images())
            .arg("-o")
            .arg(&out)
            .args(["--shard-size", "4"])
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "2"));
        assert_eq!(r.code, 0, "{}", r.stderr);
    };
    task("2"); // index 1: odd shards
    let (manifest, journal) = curate_core::stage::StageDir::inspect(&out)
        .unwrap()
        .unwrap();
    assert!(journal.iter().all(|r| r.shard % 2 == 1) && !journal.is_empty());
    assert_eq!(journal.len() as u32, manifest.num_shards / 2);
    assert!(
        !out.join("exact_duplicates.parquet").exists(),
        "written only once every shard is complete"
    );
    let status = run(curate().arg("status").arg(&out));
    assert!(
        status.stdout.contains("incomplete") && status.stdout.contains("missing shards: 0, 2"),
        "{}",
        status.stdout
    );

    task("1"); // index 0: even shards
    assert_same_as_reference(&out, &reference);
    let status = run(curate().arg("status").arg(&out).arg("--verify"));
    assert!(
        status.stdout.contains("shards complete") && !status.stdout.contains("damaged"),
        "{}",
        status.stdout
    );
}
