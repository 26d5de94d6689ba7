//! `curate train`: the oboro DiT trained with I-CFM on latent shards (issue #10).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use curate_gen::t5::T5Encoder;
use curate_gen::train::{data::LatentIndex, RunConfig, TrainOptions};

use super::shared::Upstream;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Latent stage directories (`encode-latents` output); their shards are read together.
    #[arg(required = true)]
    pub input: Vec<PathBuf>,
    /// Output folder: checkpoints/step-NNNNNNNN.safetensors, metrics.jsonl, config.json.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model + recipe config (pipelines/configs/dit-tiny.json, dit-report.json).
    #[arg(long)]
    pub config: PathBuf,
    /// T5 encoder folder: config.json, model.safetensors, tokenizer.json (Hugging Face layout).
    #[arg(long)]
    pub text_encoder: PathBuf,
    /// Total optimiser steps.
    #[arg(long)]
    pub steps: u64,
    /// Seed of the initial weights, the data order and every draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the last step).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Checkpoints kept in the output folder (older ones are deleted).
    #[arg(long, default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Continue from the newest checkpoint in --output (exactly: same losses on the CPU).
    #[arg(long)]
    pub resume: bool,
    /// Stop after this step (checkpoint written) although --steps stays the schedule's horizon (time-limited jobs).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Override the config's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override the config's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// candle device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Discard the output folder's checkpoints and metrics first.
    #[arg(long)]
    pub overwrite: bool,
    /// Accepted for `curate run` (training is one process).
    #[arg(long, hide = true)]
    pub shard_index: Option<u32>,
    /// Accepted for `curate run` (training is one process).
    #[arg(long, hide = true)]
    pub num_shards: Option<u32>,
}

/// Test hook: stall (never returning) right after the checkpoint of this step is in place.
fn stall_after_checkpoint() -> Option<u64> {
    std::env::var("CURATE_TEST_STALL_AFTER_CHECKPOINT")
        .ok()?
        .parse()
        .ok()
}

pub fn run(args: &TrainArgs) -> anyhow::Result<curate_gen::train::TrainSummary> {
    let mut cfg = RunConfig::load(&args.config)?;
    if let Some(b) = args.batch_size {
        anyhow::ensure!(b > 0, "--batch-size must be > 0");
        cfg.train.batch_size = b;
    }
    if let Some(lr) = args.lr {
        cfg.train.optim.lr = lr;
    }
    let device = curate_gen::device(&args.device)?;
    if args.overwrite {
        for p in [
            args.output.join("checkpoints"),
            args.output.join("metrics.jsonl"),
        ] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    let mut shards = Vec::new();
    for dir in &args.input {
        let up = Upstream::open(dir, &["latents"])?;
        for r in &up.shards {
            shards.push(dir.join(&r.file));
        }
    }
    let index = LatentIndex::open(&shards)?;
    let text = T5Encoder::load(&args.text_encoder, &device).with_context(|| {
        format!(
            "loading the text encoder from {}",
            args.text_encoder.display()
        )
    })?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    std::fs::write(
        args.output.join("config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )
    .with_context(|| format!("writing {}/config.json", args.output.display()))?;
    let opts = TrainOptions {
        out_dir: args.output.clone(),
        steps: args.steps,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep_checkpoints,
        resume: args.resume,
        stop_after: args.stop_after,
        device,
    };
    tracing::info!(
        "train: {} latents in {} row groups, {} steps, batch {}",
        index.rows(),
        index.groups.len(),
        args.steps,
        cfg.train.batch_size
    );
    let stall = stall_after_checkpoint();
    let summary = curate_gen::train::train(&cfg, &opts, index, &text, &mut |step, path| {
        tracing::info!("checkpoint {}", path.display());
        if stall == Some(step) {
            super::shared::stall(step);
        }
    })?;
    tracing::info!(
        "train: steps {}..{}, {} parameters, loss {:?} → {:?}",
        summary.start_step,
        summary.end_step,
        summary.params,
        summary.first_loss,
        summary.last_loss
    );
    Ok(summary)
}

/// `run` as a pipeline stage (`curate run`): one "shard", skipped when the
/// run had already reached --steps (pass `resume = true` so reruns continue).
pub fn run_stage(args: &TrainArgs) -> anyhow::Result<super::StageSummary> {
    let s = run(args)?;
    let did = s.end_step > s.start_step;
    Ok(super::StageSummary {
        shards_total: 1,
        shards_written: u32::from(did),
        shards_skipped: u32::from(!did),
        records: s.end_step - s.start_step,
        ..Default::default()
    })
}
