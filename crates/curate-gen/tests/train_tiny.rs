//! The tiny DiT trained on a handful of latents: it overfits them, its
//! samples land nearest their own captions' latents, and a run stopped at a
//! checkpoint and resumed gives the uninterrupted run's losses bit for bit.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use curate_gen::rng::Rng;
use curate_gen::t5::T5Encoder;
use curate_gen::train::data::{write_latent_stage, LatentIndex};
use curate_gen::train::{RunConfig, StepMetrics, TrainOptions};
use curate_io::latents::{LatentDtype, LatentRow};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub const CAPTIONS: [&str; 4] = [
    "a red square on a blue background",
    "a green circle, high quality",
    "two yellow stripes",
    "a dark night sky with stars, low quality",
];

/// Four smooth, distinct 16×8×8 latents (a level and two gradients per
/// channel), plus an error row and a row of another bucket size.
fn latents() -> Vec<(Vec<f32>, [usize; 3])> {
    let mut rng = Rng::new(42);
    (0..4)
        .map(|_| {
            let mut v = Vec::with_capacity(16 * 64);
            for _ in 0..16 {
                let (a, b, d) = (
                    rng.normal() as f32,
                    rng.normal() as f32,
                    rng.normal() as f32,
                );
                for y in 0..8 {
                    for x in 0..8 {
                        v.push(a + b * (y as f32 - 3.5) / 4.0 + d * (x as f32 - 3.5) / 4.0);
                    }
                }
            }
            (v, [16, 8, 8])
        })
        .collect()
}

fn write_stage(dir: &Path) -> Vec<(Vec<f32>, [usize; 3])> {
    let lat = latents();
    let mut rows: Vec<LatentRow> = lat
        .iter()
        .enumerate()
        .map(|(i, l)| {
            LatentRow::from_values(
                &format!("k{i}"),
                Some(CAPTIONS[i].into()),
                &l.0,
                l.1,
                LatentDtype::Bf16,
            )
        })
        .collect();
    rows.insert(2, LatentRow::failed("bad", None, "inference"));
    write_latent_stage(dir, &rows, 64).unwrap();
    // write_latent_stage stores bf16: compare against what was stored.
    lat.into_iter()
        .map(|(v, s)| {
            (
                v.into_iter()
                    .map(|x| half::bf16::from_f32(x).to_f32())
                    .collect(),
                s,
            )
        })
        .collect()
}

fn config(dropout: f64, sigma: f64) -> RunConfig {
    let mut cfg = RunConfig::load(&repo().join("pipelines/configs/dit-tiny.json")).unwrap();
    cfg.train.caption_dropout = dropout;
    cfg.train.sigma = sigma;
    cfg
}

fn opts(out: &Path, steps: u64, every: u64, resume: bool, stop: Option<u64>) -> TrainOptions {
    TrainOptions {
        out_dir: out.to_path_buf(),
        steps,
        seed: 7,
        checkpoint_every: every,
        keep_checkpoints: 2,
        resume,
        stop_after: stop,
        device: Device::Cpu,
        // A few captions' worth: eviction and re-encoding must not change the losses.
        text_cache_bytes: 4096,
        init_from: None,
    }
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn shards(stage: &Path) -> Vec<PathBuf> {
    vec![stage.join("part-00000.parquet")]
}

#[test]
fn loader_skips_error_rows_and_plans_by_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    write_stage(tmp.path());
    let index = LatentIndex::open(&shards(tmp.path())).unwrap();
    assert_eq!(index.rows(), 4);
    let p0 = index.plan(1, 0, 3);
    assert_eq!(p0.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(p0, index.plan(1, 0, 3), "same seed and epoch, same plan");
    let all: std::collections::BTreeSet<_> = p0.iter().flatten().collect();
    assert_eq!(all.len(), 4);
}

#[test]
fn tiny_model_overfits_and_samples_its_training_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("latents");
    let lat = write_stage(&stage);
    let text = T5Encoder::load(&repo().join("fixtures/gen/t5-tiny"), &Device::Cpu).unwrap();
    // No caption dropout: every step is conditional, so the loss can fall all the way.
    let mut cfg = config(0.0, 0.0);
    cfg.train.optim.lr = 2e-3;
    let out = tmp.path().join("run");
    let steps = 300;
    let t0 = std::time::Instant::now();
    let summary = curate_gen::train::train(
        &cfg,
        &opts(&out, steps, 100, false, None),
        LatentIndex::open(&shards(&stage)).unwrap(),
        (&text).into(),
        &mut |_, _| {},
    )
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let m = metrics(&out);
    assert_eq!(m.len() as u64, steps);
    let first = m[0].loss;
    let last: f32 = m[m.len() - 20..].iter().map(|s| s.loss).sum::<f32>() / 20.0;
    eprintln!(
        "tiny: {} params, {steps} steps in {secs:.1}s ({:.1} steps/s), loss {first:.4} -> {last:.4} (mean of last 20)",
        summary.params,
        steps as f64 / secs
    );
    assert!(last < 0.1 * first, "loss {first} -> {last}: not below 10%");

    // Samples from each caption are nearest that caption's latent.
    let ck = curate_gen::train::Checkpoint::load(
        summary.last_checkpoint.as_ref().unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let model = ck.build_model(true, &Device::Cpu).unwrap();
    let uncond = text.encode(&[""], 16).unwrap();
    let targets: Vec<Tensor> = lat
        .iter()
        .map(|(v, s)| Tensor::from_slice(v, (1, s[0], s[1], s[2]), &Device::Cpu).unwrap())
        .collect();
    for (k, caption) in CAPTIONS.iter().enumerate() {
        let cond = text.encode(&[caption], 16).unwrap();
        for seed in [1u64, 2] {
            let z = curate_gen::sample::sample(
                &model,
                &cond,
                &uncond,
                &curate_gen::sample::SampleOptions {
                    steps: 20,
                    cfg_scale: 1.0,
                    shift: 1.0,
                    seed,
                    latent_hw: (8, 8),
                },
            )
            .unwrap();
            let d: Vec<f32> = targets
                .iter()
                .map(|t| {
                    (&z - t)
                        .unwrap()
                        .sqr()
                        .unwrap()
                        .mean_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .collect();
            let nearest = d
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            eprintln!("caption {k} seed {seed}: mse to latents {d:?}");
            assert_eq!(
                nearest, k,
                "caption {k} seed {seed}: sample nearest latent {nearest} ({d:?})"
            );
        }
    }
}

#[test]
fn stopped_and_resumed_run_repeats_the_uninterrupted_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("latents");
    write_stage(&stage);
    let text = T5Encoder::load(&repo().join("fixtures/gen/t5-tiny"), &Device::Cpu).unwrap();
    // EMA on, σ > 0 and dropout so that every piece of state matters.
    let mut cfg = config(0.25, 0.05);
    cfg.train.optim.ema_decay = Some(0.9);
    cfg.train.batch_size = 3; // batches of 3 and 1: epochs turn over
    let index = || LatentIndex::open(&shards(&stage)).unwrap();
    let a = tmp.path().join("a");
    curate_gen::train::train(
        &cfg,
        &opts(&a, 14, 4, false, None),
        index(),
        (&text).into(),
        &mut |_, _| {},
    )
    .unwrap();
    let b = tmp.path().join("b");
    let s1 = curate_gen::train::train(
        &cfg,
        &opts(&b, 14, 4, false, Some(9)),
        index(),
        (&text).into(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(s1.end_step, 9);
    // Not resuming into a folder with checkpoints is refused.
    let err = curate_gen::train::train(
        &cfg,
        &opts(&b, 14, 4, false, None),
        index(),
        (&text).into(),
        &mut |_, _| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--resume"), "{err}");
    let s2 = curate_gen::train::train(
        &cfg,
        &opts(&b, 14, 4, true, None),
        index(),
        (&text).into(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((s2.start_step, s2.end_step), (9, 14));
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 14);
    assert_eq!(mb.len(), 14);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.step, x.loss.to_bits(), x.epoch),
            (y.step, y.loss.to_bits(), y.epoch),
            "step {}",
            x.step
        );
        assert_eq!(x.grad_norm.to_bits(), y.grad_norm.to_bits());
    }
    // The final checkpoints hold the same weights, moments and EMA.
    let ca = curate_gen::train::Checkpoint::load(
        &a.join("checkpoints/step-00000014.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let cb = curate_gen::train::Checkpoint::load(
        &b.join("checkpoints/step-00000014.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(ca.rng_state, cb.rng_state);
    for (k, t) in &ca.tensors {
        let u = &cb.tensors[k];
        let d = (t - u)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
}

#[test]
fn a_bounded_text_cache_gives_the_unbounded_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = tmp.path().join("latents");
    write_stage(&stage);
    let text = T5Encoder::load(&repo().join("fixtures/gen/t5-tiny"), &Device::Cpu).unwrap();
    let mut cfg = config(0.25, 0.05);
    cfg.train.batch_size = 3;
    let run = |name: &str, bytes: usize| {
        let out = tmp.path().join(name);
        let mut o = opts(&out, 8, 8, false, None);
        o.text_cache_bytes = bytes;
        let index = LatentIndex::open(&shards(&stage)).unwrap();
        curate_gen::train::train(&cfg, &o, index, (&text).into(), &mut |_, _| {}).unwrap();
        metrics(&out).iter().map(|m| m.loss).collect::<Vec<_>>()
    };
    let unbounded = run("unbounded", usize::MAX);
    assert_eq!(unbounded.len(), 8);
    // 0 bytes: every caption is evicted after its step and encoded again.
    assert_eq!(run("none", 0), unbounded);
}
