//! `curate train` and `curate sample` end to end (issue #10): the real
//! process SIGKILLed right after a checkpoint at a randomly chosen step, then
//! `--resume`d, writes the same losses as an uninterrupted run, bit for bit;
//! sampling writes PNGs through the (tiny) FLUX VAE.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use curate_gen::rng::Rng;
use curate_gen::train::data::{write_latent_stage, LatentDtype, LatentRow};

use crate::common::*;
use crate::resume::wait_for_line;

const CAPTIONS: [&str; 4] = [
    "a red square on a blue background",
    "a green circle, high quality",
    "two yellow stripes",
    "a dark night sky with stars, low quality",
];

fn stage(dir: &Path) {
    let mut rng = Rng::new(11);
    let rows: Vec<LatentRow> = (0..6)
        .map(|i| {
            LatentRow::from_values(
                &format!("k{i}"),
                (i != 5).then(|| CAPTIONS[i % 4].to_string()),
                &rng.normals_f32(16 * 8 * 8),
                [16, 8, 8],
                LatentDtype::Bf16,
            )
        })
        .collect();
    write_latent_stage(dir, &rows, 4).unwrap();
}

fn train_cmd(stage: &Path, out: &Path, extra: &[&str]) -> std::process::Command {
    train_cmd_with(
        stage,
        out,
        &repo().join("pipelines/configs/dit-tiny.json"),
        "12",
        extra,
    )
}

fn train_cmd_with(
    stage: &Path,
    out: &Path,
    config: &Path,
    steps: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut c = curate();
    c.arg("train")
        .arg(stage)
        .arg("-o")
        .arg(out)
        .arg("--config")
        .arg(config)
        .arg("--text-encoder")
        .arg(repo().join("fixtures/gen/t5-tiny"))
        .args([
            "--steps",
            steps,
            "--checkpoint-every",
            "3",
            "--seed",
            "5",
            "--batch-size",
            "3",
        ])
        .args(extra);
    c
}

fn losses(out: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                (v["loss"].as_f64().unwrap() as f32).to_bits(),
            )
        })
        .collect()
}

#[test]
fn sigkill_after_a_checkpoint_then_resume_repeats_the_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    let reference = tmp.path().join("reference");
    let r = run(&mut train_cmd(&st, &reference, &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = losses(&reference);
    assert_eq!(want.len(), 12);
    // The summary line gives the first and last loss as numbers.
    let first = f32::from_bits(want[0].1);
    let last = f32::from_bits(want[11].1);
    let summary = format!("loss {first:.4} → {last:.4}");
    assert!(
        r.stderr.contains(&summary),
        "no {summary:?} in {}",
        r.stderr
    );

    // The step to die at: a random checkpoint (3, 6 or 9), named in the output.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_at = 3 * (1 + nanos as u64 % 3);
    eprintln!("killing after the checkpoint of step {kill_at}");
    let killed = tmp.path().join("killed");
    let mut child = train_cmd(&st, &killed, &[])
        .env("CURATE_TEST_STALL_AFTER_CHECKPOINT", kill_at.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "stalled after");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(losses(&killed).len() as u64, kill_at);

    let r = run(&mut train_cmd(&st, &killed, &[]));
    assert_ne!(r.code, 0, "a second run without --resume must refuse");
    assert!(r.stderr.contains("--resume"), "{}", r.stderr);
    let r = run(&mut train_cmd(&st, &killed, &["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        losses(&killed),
        want,
        "resumed losses differ from the uninterrupted run"
    );
}

#[test]
fn sample_writes_pngs_for_every_prompt_and_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    let out = tmp.path().join("run");
    let r = run(&mut train_cmd(&st, &out, &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let samples = tmp.path().join("samples");
    let vae: PathBuf = repo().join("fixtures/models/flux-vae-tiny/ae.safetensors");
    let r = run(curate()
        .arg("sample")
        .arg("--checkpoint")
        .arg(&out)
        .args([
            "--prompt",
            CAPTIONS[0],
            "--prompt",
            CAPTIONS[2],
            "--seed",
            "1",
            "--seed",
            "2",
        ])
        .args([
            "--image-size",
            "64x96",
            "--cfg-scale",
            "5.0",
            "--steps",
            "4",
            "--shift",
            "3.0",
        ])
        .arg("--text-encoder")
        .arg(repo().join("fixtures/gen/t5-tiny"))
        .arg("--vae")
        .arg(&vae)
        .arg("--save-latents")
        .arg("-o")
        .arg(&samples));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for name in [
        "sample-000-s1",
        "sample-000-s2",
        "sample-001-s1",
        "sample-001-s2",
    ] {
        let img = image::open(samples.join(format!("{name}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64), "{name}");
        assert!(samples.join(format!("{name}.safetensors")).exists());
    }
    // Different seeds, different images.
    let a = std::fs::read(samples.join("sample-000-s1.png")).unwrap();
    let b = std::fs::read(samples.join("sample-000-s2.png")).unwrap();
    assert_ne!(a, b);
}

#[test]
fn bad_head_schedule_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("pipelines/configs/dit-tiny.json")).unwrap(),
    )
    .unwrap();
    cfg["model"]["hidden_size"] = 96.into();
    let path = tmp.path().join("bad.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let r = run(curate()
        .arg("train")
        .arg(&st)
        .arg("-o")
        .arg(tmp.path().join("out"))
        .arg("--config")
        .arg(&path)
        .arg("--text-encoder")
        .arg(repo().join("fixtures/gen/t5-tiny"))
        .args(["--steps", "2"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("block 1")
            && r.stderr.contains("width 96")
            && r.stderr.contains("16 heads"),
        "{}",
        r.stderr
    );
}

/// `--init-from` starts a fresh run (new optimiser, schedule, metrics) from
/// another run's model weights: with a zero learning rate its first
/// checkpoint holds exactly those weights; a model of another config is refused.
#[test]
fn init_from_starts_a_run_from_another_runs_weights() {
    use curate_gen::train::Checkpoint;
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    let first = tmp.path().join("first");
    let r = run(&mut train_cmd(&st, &first, &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let weights = |dir: &Path| {
        let ck = Checkpoint::load(
            &curate_gen::train::resolve_checkpoint(dir).unwrap(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut w: Vec<(String, Vec<f32>)> = ck
            .model_weights(false)
            .into_iter()
            .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        (ck.step, w)
    };
    let (step, want) = weights(&first);
    assert_eq!(step, 12);

    // One step at learning rate 0: the first checkpoint holds the start weights.
    let frozen = |out: &Path, config: &Path, extra: &[&str]| {
        let mut c = curate();
        c.arg("train")
            .arg(&st)
            .arg("-o")
            .arg(out)
            .arg("--config")
            .arg(config)
            .arg("--text-encoder")
            .arg(repo().join("fixtures/gen/t5-tiny"))
            .args([
                "--steps",
                "1",
                "--lr",
                "0",
                "--seed",
                "5",
                "--batch-size",
                "3",
            ])
            .args(extra);
        run(&mut c)
    };
    let tiny = repo().join("pipelines/configs/dit-tiny.json");
    let second = tmp.path().join("second");
    let r = frozen(&second, &tiny, &["--init-from", first.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (step, got) = weights(&second);
    assert_eq!(step, 1, "a fresh run, counting from 0");
    assert_eq!(losses(&second).len(), 1);
    assert!(
        got == want,
        "the second run did not start from the first's weights"
    );
    let fresh = tmp.path().join("fresh");
    let r = frozen(&fresh, &tiny, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        weights(&fresh).1 != want,
        "a fresh init equals the trained weights"
    );

    // Another model config is refused, naming both.
    let wide = tmp.path().join("dit-wide.json");
    let cfg = std::fs::read_to_string(repo().join("pipelines/configs/dit-tiny.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["model"]["mlp_hidden"] = 256.into();
    std::fs::write(&wide, cfg.to_string()).unwrap();
    let r = frozen(
        &tmp.path().join("wide"),
        &wide,
        &["--init-from", first.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("expected a checkpoint of this model config")
            && r.stderr.contains("mlp_hidden: 512")
            && r.stderr.contains("mlp_hidden: 256"),
        "{}",
        r.stderr
    );
}

/// The latent `curate sample` writes for one prompt and seed with `extra` flags.
fn sampled_latent(run_dir: &Path, samples: &Path, extra: &[&str]) -> Vec<u8> {
    let r = run(curate()
        .arg("sample")
        .arg("--checkpoint")
        .arg(run_dir)
        .args([
            "--prompt",
            CAPTIONS[1],
            "--seed",
            "3",
            "--image-size",
            "64x64",
        ])
        .args(["--cfg-scale", "4.0", "--steps", "3"])
        .args(extra)
        .arg("--text-encoder")
        .arg(repo().join("fixtures/gen/t5-tiny"))
        .arg("--save-latents")
        .arg("-o")
        .arg(samples));
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::read(samples.join("sample-000-s3.safetensors")).unwrap()
}

#[test]
fn negative_prompt_and_no_ema_change_what_is_sampled() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    // dit-tiny with an EMA of the weights.
    let cfg = std::fs::read_to_string(repo().join("pipelines/configs/dit-tiny.json")).unwrap();
    assert!(cfg.contains("\"ema_decay\": null"));
    let cfg_path = tmp.path().join("dit-tiny-ema.json");
    std::fs::write(
        &cfg_path,
        cfg.replace("\"ema_decay\": null", "\"ema_decay\": 0.5"),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let r = run(&mut train_cmd_with(&st, &out, &cfg_path, "12", &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = |name: &str| tmp.path().join(name);
    let base = sampled_latent(&out, &s("base"), &[]);
    assert_eq!(
        base,
        sampled_latent(&out, &s("again"), &[]),
        "sampling is deterministic"
    );
    // The negative prompt is guidance's unconditional text: another text, another latent.
    let neg = sampled_latent(&out, &s("neg"), &["--negative-prompt", CAPTIONS[3]]);
    assert_ne!(base, neg, "--negative-prompt is used");
    // The EMA weights are the default; --no-ema samples the raw weights.
    let raw = sampled_latent(&out, &s("raw"), &["--no-ema"]);
    assert_ne!(base, raw, "--no-ema picks other weights");
}

#[test]
fn sigkill_between_checkpoints_then_resume_drops_the_uncovered_steps_and_repeats_the_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("latents");
    stage(&st);
    let reference = tmp.path().join("reference");
    let r = run(&mut train_cmd(&st, &reference, &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = losses(&reference);
    // A step between checkpoints (every 3 steps), drawn from the clock and printed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let between = [4u64, 5, 7, 8, 10, 11];
    let kill_at = between[nanos as usize % between.len()];
    eprintln!("killing after the metrics line of step {kill_at} (checkpoints every 3)");
    let killed = tmp.path().join("killed");
    let mut child = train_cmd(&st, &killed, &[])
        .env("CURATE_TEST_STALL_AFTER_STEP", kill_at.to_string())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "stalled after");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The metrics ran ahead of the last checkpoint.
    assert_eq!(losses(&killed).len() as u64, kill_at);
    let last_ck = kill_at / 3 * 3;
    assert!(killed
        .join(format!("checkpoints/step-{last_ck:08}.safetensors"))
        .is_file());

    // Another --steps changes the schedule: refused, naming both values.
    let dit = repo().join("pipelines/configs/dit-tiny.json");
    let mut longer = train_cmd_with(&st, &killed, &dit, "20", &["--resume"]);
    let r = run(&mut longer);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--steps 12") && r.stderr.contains("--steps 20"),
        "{}",
        r.stderr
    );
    assert_eq!(
        losses(&killed).len() as u64,
        kill_at,
        "the refusal leaves the run alone"
    );

    // The resume keeps the lines its checkpoint covers and redoes the rest, bit for bit.
    let r = run(&mut train_cmd(&st, &killed, &["--resume"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        losses(&killed),
        want,
        "resumed losses differ from the uninterrupted run"
    );
}
