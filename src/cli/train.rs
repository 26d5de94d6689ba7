//! Flags of `train` and `sample` (one process each: no shard split).

use std::path::PathBuf;

use clap::Args;

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
    /// `encode-text` stage directories, one made from each latents stage: the texts' stored T5
    /// hidden states (training then runs no T5). Without it, --text-encoder encodes on the fly.
    #[arg(
        long = "text",
        value_name = "TEXT_DIR",
        conflicts_with = "text_encoder"
    )]
    pub text: Vec<PathBuf>,
    /// T5 encoder folder (config.json, model.safetensors, tokenizer.json, Hugging Face layout)
    /// to encode the captions on the fly, cached up to --text-cache-mb.
    #[arg(long, required_unless_present = "text")]
    pub text_encoder: Option<PathBuf>,
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
    /// Start a fresh run from this checkpoint's model weights (a file, or a training folder's
    /// newest), with new optimiser state and schedule: stage 512 after stage 256. Same model config.
    #[arg(long, value_name = "CHECKPOINT")]
    pub init_from: Option<PathBuf>,
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
    /// Most MiB of T5 hidden states cached between steps (captions are
    /// encoded on the fly; the oldest are evicted first and re-encoded when they return).
    #[arg(long, default_value_t = 2048)]
    pub text_cache_mb: usize,
    /// Discard the output folder's checkpoints and metrics first.
    #[arg(long)]
    pub overwrite: bool,
    /// Accepted for `curate run` (training is one process).
    #[arg(long, hide = true, alias = "shard-index")]
    pub task_index: Option<u32>,
    /// Accepted for `curate run` (training is one process).
    #[arg(long, hide = true, alias = "num-shards")]
    pub num_tasks: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A checkpoint file (checkpoints/step-N.safetensors) or a training output folder (its newest checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Prompts; each is sampled with every seed.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Unconditional text of classifier-free guidance [default: the empty caption].
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Image size HEIGHTxWIDTH in pixels (multiples of 16).
    #[arg(long, default_value = "256x256")]
    pub image_size: String,
    #[arg(long, default_value_t = 5.0)]
    pub cfg_scale: f64,
    /// Euler steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Timestep shift α as diffusers' FlowMatchEulerDiscreteScheduler(shift=α) (SD3, FLUX): noise
    /// levels σ' = α·σ / (1 + (α−1)·σ); α > 1 spends more steps near the noise (SD3: 3.0); 1 = none.
    #[arg(long, default_value_t = 1.0)]
    pub shift: f64,
    /// Seeds; each prompt is sampled once per seed.
    #[arg(long = "seed", default_values_t = vec![0u64])]
    pub seeds: Vec<u64>,
    /// T5 encoder folder (as for train).
    #[arg(long)]
    pub text_encoder: PathBuf,
    /// FLUX VAE weights to decode with; without it the PNGs show latent channels 0..3 (a preview).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Output folder: sample-PPP-sSEED.png (+ .safetensors with the latent when --save-latents).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Also write each sampled latent ([1, C, H, W], key `latent`).
    #[arg(long)]
    pub save_latents: bool,
    /// Use the raw weights even when the checkpoint has EMA weights.
    #[arg(long)]
    pub no_ema: bool,
    /// candle device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Accepted for `curate run` (PNGs are always rewritten).
    #[arg(long, hide = true)]
    pub overwrite: bool,
    /// Accepted for `curate run` (sampling is one process).
    #[arg(long, hide = true, alias = "shard-index")]
    pub task_index: Option<u32>,
    /// Accepted for `curate run` (sampling is one process).
    #[arg(long, hide = true, alias = "num-shards")]
    pub num_tasks: Option<u32>,
}
