//! `curate run --executor slurm` on a real single-node Slurm cluster
//! (pipelines/slurm/single-node-cluster.sh; `.ci/run` starts it and sets
//! CURATE_SLURM_TEST, which makes a missing cluster a failure, not a skip).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use curate_core::record::ImageRecord;

use crate::common::*;

fn cluster() -> bool {
    let required = std::env::var_os("CURATE_SLURM_TEST").is_some();
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    assert!(
        up || !required,
        "CURATE_SLURM_TEST is set but no Slurm cluster answers (SLURM_CONF={:?})",
        std::env::var_os("SLURM_CONF")
    );
    if !up {
        eprintln!(
            "skipped: no Slurm cluster (start one with pipelines/slurm/single-node-cluster.sh)"
        );
    }
    up
}

/// Polls until `done` holds, failing after `limit` (waiting on the cluster, not synchronising by sleeping).
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn queued(job: &str) -> bool {
    let out = Command::new("squeue")
        .args(["-h", "-j", job])
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Records without what legitimately differs between runs (server port, timing).
fn comparable(mut v: Vec<ImageRecord>) -> Vec<ImageRecord> {
    for r in &mut v {
        if let Some(d) = r.download.as_mut() {
            d.fetch_ms = 0;
            d.url.clear();
        }
    }
    v
}

#[test]
fn demo_pipeline_on_slurm_equals_the_local_run() {
    if !cluster() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = repo().join("pipelines/demo.toml");
    let local = &demo().work;
    let cluster_dir = tmp.path().join("slurm");
    let r = run(curate()
        .arg("run")
        .arg(&pipeline)
        .arg("--work-dir")
        .arg(&cluster_dir)
        .args(["--executor", "slurm", "--wait"]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("images: job ") && r.stdout.contains("(2 tasks)"),
        "{}",
        r.stdout
    );
    for stage in ["images", "local"] {
        assert_eq!(
            comparable(read_images(&cluster_dir.join(stage))),
            comparable(read_images(&local.join(stage))),
            "stage {stage}"
        );
        assert_eq!(
            read_duplicates(&cluster_dir.join(stage)),
            read_duplicates(&local.join(stage))
        );
        let logs = std::fs::read_dir(cluster_dir.join("slurm/logs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{stage}-"))
            })
            .count();
        assert_eq!(logs, 2, "one log per array task of {stage}");
    }
    // embed (2 tasks, one shard each in turn), dedup (2 tasks sharing every
    // round's partitions, task 0 writing the tables) and score match too.
    let (a, b) = (
        crate::embed::read_embeddings(&cluster_dir.join("embed")),
        crate::embed::read_embeddings(&local.join("embed")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.key, &x.embedding), (&y.key, &y.embedding));
    }
    assert_eq!(
        crate::dedup::read_clusters(&cluster_dir.join("dedup")).rows,
        crate::dedup::read_clusters(&local.join("dedup")).rows
    );
    let scores = |d: &std::path::Path| -> Vec<(String, Option<f32>)> {
        crate::score::read_scores(d)
            .into_iter()
            .map(|r| (r.key, r.score))
            .collect()
    };
    assert_eq!(
        scores(&cluster_dir.join("score")),
        scores(&local.join("score"))
    );
    // encode-latents (2 tasks): the same rows, bytes and crops.
    for stage in ["latents-256", "latents-512"] {
        let (a, b) = (
            crate::latents::read_latents(&cluster_dir.join(stage)),
            crate::latents::read_latents(&local.join(stage)),
        );
        assert!(!a.is_empty());
        assert_eq!(a, b, "stage {stage}");
    }
}

#[test]
fn a_cancelled_task_is_resubmitted_from_status_and_nothing_is_lost() {
    if !cluster() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"cancel\"\nwork_dir = \"work\"\n[pipeline.slurm]\ntasks = 2\nmem = \"1G\"\n\
             [[stage]]\nrun = \"ingest\"\nname = \"images\"\ninput = \"{}\"\nshard_size = 2\n",
            fixtures_images().display()
        ),
    )
    .unwrap();
    // Task 1 stops making progress mid-shard; task 0 finishes its shards.
    let r = run(curate()
        .arg("run")
        .arg(&pipeline)
        .args(["--executor", "slurm"])
        .env("CURATE_TEST_STALL_AFTER_ROWS", "3")
        .env("CURATE_TEST_STALL_TASK", "1"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let job = r
        .stdout
        .split("images: job ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {}", r.stdout))
        .to_string();
    let log = work.join(format!("slurm/logs/images-{job}_1.log"));
    wait_until(Duration::from_secs(180), "task 1 to stall", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("stalled after"))
    });
    assert!(Command::new("scancel")
        .arg(format!("{job}_1"))
        .status()
        .unwrap()
        .success());
    wait_until(
        Duration::from_secs(120),
        "the array to leave the queue",
        || !queued(&job),
    );

    let status = run(curate().arg("status").arg(&work));
    assert!(status.stdout.contains("incomplete"), "{}", status.stdout);
    let hint = status
        .stdout
        .lines()
        .find_map(|l| l.split("resubmit the tasks that own them: ").nth(1))
        .unwrap_or_else(|| panic!("no resubmit command in {}", status.stdout))
        .to_string();
    assert!(hint.starts_with("sbatch --array=1 "), "{hint}");
    // The command as printed, asked for the job id only.
    let out = Command::new("sh")
        .arg("-c")
        .arg(hint.replacen("sbatch ", "sbatch --parsable ", 1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_until(Duration::from_secs(180), "the resubmitted task", || {
        !queued(&again)
    });

    let reference = tmp.path().join("reference");
    ingest(&fixtures_images(), &reference, &["--shard-size", "2"]);
    let got = read_images(&work.join("images"));
    assert_eq!(
        got.len(),
        image_files(&fixtures_images()).len(),
        "every input exactly once"
    );
    assert_eq!(got, read_images(&reference));
    assert_eq!(
        read_duplicates(&work.join("images")),
        read_duplicates(&reference)
    );
    let status = run(curate().arg("status").arg(&work).arg("--verify"));
    assert!(
        !status.stdout.contains("incomplete") && !status.stdout.contains("damaged"),
        "{}",
        status.stdout
    );
    assert!(Path::new(&log).exists());
}
