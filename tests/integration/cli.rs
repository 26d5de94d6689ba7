//! Command-line behaviour: exit codes, doctor, status, run.

use crate::common::*;

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let r = run(curate().arg("ingest"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("INPUT"), "{}", r.stderr);
    let r = run(curate().arg("no-such-command"));
    assert_eq!(r.code, 2);
    let r = run(curate().arg("--help"));
    assert_eq!(r.code, 0);
    for stage in [
        "ingest",
        "fetch",
        "embed",
        "dedup",
        "caption",
        "score",
        "encode-latents",
        "train",
        "sample",
        "report",
        "run",
        "status",
        "doctor",
    ] {
        assert!(
            r.stdout.contains(stage),
            "--help lacks {stage}:\n{}",
            r.stdout
        );
    }
}

#[test]
fn doctor_finds_the_pinned_runtime_and_lists_providers() {
    let r = run(curate().arg("doctor"));
    assert_eq!(
        r.code, 0,
        "doctor failed (did `curate setup` run?):\n{}\n{}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.contains("version 1.31.1"), "{}", r.stdout);
    assert!(r.stdout.contains("CPUExecutionProvider"), "{}", r.stdout);
    assert!(r.stdout.contains("searched ORT_DYLIB_PATH"), "{}", r.stdout);
    assert!(r.stdout.contains("cpu:"), "{}", r.stdout);
    assert!(r.stdout.contains("images v1"), "{}", r.stdout);
    // The decoder model inputs go through, named; off, the fallback says so.
    if std::env::var_os("CURATE_REQUIRE_TURBOJPEG").is_some() {
        assert!(
            r.stdout
                .contains("JPEG decoding for model inputs: libjpeg-turbo (libturbojpeg"),
            "{}",
            r.stdout
        );
    }
    let off = run(curate().arg("doctor").env("CURATE_TURBOJPEG", "off"));
    assert!(
        off.stdout
            .contains("JPEG decoding for model inputs: jpeg-decoder (libturbojpeg not found"),
        "{}",
        off.stdout
    );
}

#[test]
fn doctor_reports_every_place_it_searched_when_nothing_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(curate()
        .arg("doctor")
        .env("CURATE_HOME", tmp.path())
        .env("ORT_DYLIB_PATH", tmp.path().join("nope.so"))
        .env("PATH", "/nonexistent"));
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "ORT_DYLIB_PATH={}: no such file",
            tmp.path().join("nope.so").display()
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(
            &tmp.path()
                .join("onnxruntime/onnxruntime/capi")
                .display()
                .to_string()
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("python3"), "{}", r.stdout);
    assert!(
        r.stderr.contains("ONNX Runtime is not usable"),
        "{}",
        r.stderr
    );
}

#[test]
fn run_executes_the_demo_pipeline_then_skips_it() {
    let demo = demo();
    let (work, r) = (&demo.work, &demo.first);
    let pipeline = repo().join("pipelines/demo.toml");
    assert!(
        r.stderr.contains("serving") && r.stderr.contains("127.0.0.1"),
        "{}",
        r.stderr
    );

    // fetch: the URL parquet served by the pipeline's local server.
    let fetched = read_images(&work.join("images"));
    let list = curate_io::url_list::ListFile::open(&repo().join("fixtures/urls/demo.parquet"))
        .and_then(|f| f.read("url", "url_source"))
        .unwrap();
    assert_eq!(fetched.len(), list.len());
    let ok = fetched.iter().filter(|r| r.reason.is_none()).count();
    assert!(ok >= 30, "{ok} fetched");
    for reason in ["http_error", "not_an_image", "truncated", "undecodable"] {
        assert!(
            fetched.iter().any(|r| r.reason.as_deref() == Some(reason)),
            "demo shows {reason}"
        );
    }
    assert!(fetched
        .iter()
        .all(|r| r.download.as_ref().is_some_and(|d| d.page_url.is_some())));
    // ingest: the fixture folder.
    let local = read_images(&work.join("local"));
    assert_eq!(local.len(), image_files(&fixtures_images()).len());
    assert!(
        r.stderr.contains("[1/11] images") && r.stderr.contains("[2/11] local"),
        "{}",
        r.stderr
    );

    let again = {
        let _writing = demo_exclusive();
        run(curate()
            .arg("run")
            .arg(&pipeline)
            .arg("--work-dir")
            .arg(work))
    };
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stderr.matches("already complete (").count(),
        11,
        "{}",
        again.stderr
    );
    assert_eq!(read_images(&work.join("local")), local);
    // embed, dedup and score ran on the fetched images.
    let embedded = crate::embed::read_embeddings(&work.join("embed"));
    assert_eq!(embedded.len(), fetched.len());
    assert_eq!(embedded.iter().filter(|e| e.status == "ok").count(), ok);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("dedup/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["images_in"], ok as u64);
    assert!(
        summary["removed"].as_u64().unwrap() > 0,
        "the fixtures repeat photos at several sizes"
    );
    assert!(work.join("score/part-00000.parquet").exists());
    // caption: the kept images only, three tasks each.
    let kept = summary["images_kept"].as_u64().unwrap() as usize;
    assert_eq!(
        crate::caption::read_captions(&work.join("caption")).len(),
        3 * kept
    );
    // encode-latents 256 and 512: keep list ∩ not dropped, captions and tags joined.
    crate::latents::check_demo_latents(work);
    // train: 24 steps on latents-256 with checkpoints at 12 and 24 and one
    // metrics line per step; sample: one PNG per prompt, 256×256.
    let metrics = std::fs::read_to_string(work.join("train/metrics.jsonl")).unwrap();
    let losses: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 24, "{metrics}");
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    for step in [12, 24] {
        let ckpt = work.join(format!("train/checkpoints/step-{step:08}.safetensors"));
        assert!(ckpt.is_file(), "{}", ckpt.display());
    }
    for i in 0..2 {
        let png = work.join(format!("samples/sample-{i:03}-s0.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert_eq!((img.width(), img.height()), (256, 256));
    }
    assert_eq!(read_images(&work.join("images")).len(), fetched.len());

    let status = run(curate().arg("status").arg(work));
    assert_eq!(status.code, 0, "{}", status.stderr);
    for (stage, records) in [("fetch", &fetched), ("ingest", &local)] {
        let n = records.len();
        let failed = records.iter().filter(|r| r.reason.is_some()).count();
        assert!(
            status
                .stdout
                .contains(&format!("stage {stage} (images v1)")),
            "{}",
            status.stdout
        );
        assert!(
            status
                .stdout
                .contains(&format!("{n} records, {failed} failed")),
            "{}",
            status.stdout
        );
    }
    assert!(!status.stdout.contains("incomplete"), "{}", status.stdout);
}

#[test]
fn a_bad_pipeline_file_names_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        "[pipeline]\nname='x'\nwork_dir='w'\n[[stage]]\nrun='ingest'\ninput='.'\nshard_sise=3\n",
    )
    .unwrap();
    let r = run(curate().arg("run").arg(&p));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("stage `ingest`") && r.stderr.contains("--shard-sise"),
        "{}",
        r.stderr
    );
}

#[test]
fn unreadable_manifest_stops_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("manifest.json"), "{ not json").unwrap();
    let r = run(curate()
        .arg("ingest")
        .arg(fixtures_images())
        .arg("-o")
        .arg(&out));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("manifest.json: invalid JSON"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_megalith_pipeline_checks_out_in_a_dry_run() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("never-created");
    let r = run(curate()
        .arg("run")
        .arg(repo().join("pipelines/megalith-10m.toml"))
        .arg("--work-dir")
        .arg(&work)
        .args(["--executor", "slurm", "--dry-run"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("images: curate fetch"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert_eq!(
        line.matches("megalith-000").count(),
        10,
        "all ten Megalith files: {line}"
    );
    assert!(
        line.contains("--url-col url_highres") && line.ends_with("(slurm: 64 tasks)"),
        "{line}"
    );
    assert!(
        !line.contains("--task-index"),
        "array tasks take their index from Slurm: {line}"
    );
    // Every stage in order, each parsed as its command's flags, `@` references
    // resolved to earlier stages' folders, GPUs where a model runs.
    let stages: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with('[')).collect();
    let names: Vec<&str> = stages
        .iter()
        .map(|l| l.split_once("] ").unwrap().1.split(':').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "images",
            "embeddings",
            "dedup",
            "scores",
            "captions",
            "latents-256",
            "latents-512",
            "text-256",
            "text-512",
            "train-256",
            "train-512",
            "samples"
        ]
    );
    for l in &stages {
        assert!(!l.contains(" @"), "unresolved reference: {l}");
    }
    let line_of = |name: &str| {
        stages
            .iter()
            .find(|l| l.contains(&format!("] {name}: ")))
            .unwrap()
    };
    assert!(line_of("captions").contains(&format!("--keep {}", work.join("dedup").display())));
    assert!(line_of("latents-512").contains("--stage 512"));
    assert!(line_of("train-512").contains(&format!("--text {}", work.join("text-512").display())));
    assert!(
        !line_of("train-512").contains("--text-encoder"),
        "training runs no T5"
    );
    assert!(line_of("samples").contains(&format!(
        "--checkpoint {}",
        work.join("train-512").display()
    )));
    let scripts = std::fs::read_to_string(repo().join("pipelines/megalith-10m.toml")).unwrap();
    assert_eq!(
        scripts.matches("gpus = 1").count(),
        10,
        "every model stage asks for a GPU"
    );
    assert!(!work.exists(), "a dry run writes nothing");
}

/// `curate bench scale` at a small size: every table synthesised, every part
/// run (dedup killed after round 1 and resumed) and reported, dedup finding
/// the planted near-copies.
#[test]
fn bench_scale_runs_every_part_and_dedup_finds_the_planted_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(curate()
        .args([
            "bench", "scale", "--rows", "3000", "--shards", "3", "--work",
        ])
        .arg(tmp.path().join("work")));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let row = |part: &str| -> Vec<String> {
        r.stdout
            .lines()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(part) && w.next() == Some("3000")
            })
            .unwrap_or_else(|| panic!("no `{part}` row in\n{}", r.stdout))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    for part in [
        "synthesise",
        "dedup",
        "select",
        "loader",
        "report",
        "status",
    ] {
        let cols = row(part);
        let secs: f64 = cols[3].parse().unwrap();
        let peak: f64 = cols[4].parse().unwrap();
        assert!(secs > 0.0 && peak > 1.0, "{part}: {cols:?}");
    }
    let extra = |part: &str| -> serde_json::Value {
        let line = r
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(part) && l.contains('{'))
            .unwrap();
        serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap()
    };
    let dedup = extra("dedup");
    assert!(dedup["recall"].as_f64().unwrap() >= 0.99, "{dedup}");
    assert!(dedup["killed_after_round1_s"].as_f64().is_some(), "{dedup}");
    assert!(extra("select")["selected"].as_u64().unwrap() > 0);
    assert!(extra("loader")["steps"].as_u64().unwrap() > 0);
    assert!(tmp.path().join("work/report/index.html").exists());
}

/// `bench --dir` on a user's folder: files that are not images (a text
/// file, a truncated JPEG, an HTML page named .jpg) are named and left out
/// of the timing instead of panicking, and the stage run end to end gives
/// them rows as it would in production.
#[test]
fn bench_dir_skips_files_that_are_not_images() {
    let dir = fixtures_images();
    let r = run(curate().args(["bench", "embed", "--dir"]).arg(&dir));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let skipped = r
        .stdout
        .lines()
        .find(|l| l.starts_with("skipped "))
        .unwrap_or_else(|| panic!("no skipped line in\n{}", r.stdout));
    let n: usize = skipped.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n >= 3, "{skipped}");
    let photos = image_files(&dir.join("photos")).len();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("preprocessing ("))
        .unwrap_or_else(|| panic!("no preprocessing line in\n{}", r.stdout));
    let timed: usize = line["preprocessing (".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(timed >= photos, "{line}: {photos} fixture photos");
    assert!(
        r.stdout.contains("embed end to end (--decode-scale full"),
        "{}",
        r.stdout
    );
}
