//! `curate train`: the oboro DiT trained with I-CFM on latent shards (issue #10).

use anyhow::Context;
use curate_gen::t5::T5Encoder;
use curate_gen::train::text::{TextSource, TextStore};
use curate_gen::train::{data::LatentIndex, RunConfig, TrainOptions};
use curate_stage::StageSummary;

use crate::cli::TrainArgs;

/// Test hook: stall (never returning) right after the metrics line of this
/// step, whether or not a checkpoint follows (a kill between checkpoints).
fn stall_after_step() -> Option<u64> {
    std::env::var("CURATE_TEST_STALL_AFTER_STEP")
        .ok()?
        .parse()
        .ok()
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
            args.output.join(curate_io::train_metrics::FILE),
        ] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            } else if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    let index = LatentIndex::from_stages(&args.input)?;
    let encoder = match &args.text_encoder {
        Some(dir) => Some(
            T5Encoder::load(dir, &device)
                .with_context(|| format!("loading the text encoder from {}", dir.display()))?,
        ),
        None => None,
    };
    let text = match &encoder {
        Some(enc) => TextSource::Encoder(enc),
        None => TextSource::Stored(TextStore::open(&args.text, &args.input)?),
    };
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
        text_cache_bytes: args.text_cache_mb.saturating_mul(1 << 20),
        init_from: args.init_from.clone(),
    };
    tracing::info!(
        "train: {} latents in {} row groups, {} steps, batch {}",
        index.rows(),
        index.groups.len(),
        args.steps,
        cfg.train.batch_size
    );
    let stall = stall_after_checkpoint();
    let stall_step = stall_after_step();
    let summary = curate_gen::train::train(&cfg, &opts, index, text, &mut |step, checkpoint| {
        if let Some(path) = checkpoint {
            tracing::info!("checkpoint {}", path.display());
            if stall == Some(step) {
                curate_stage::stall(step);
            }
        }
        if stall_step == Some(step) {
            curate_stage::stall(step);
        }
    })?;
    tracing::info!(
        "train: steps {}..{}, {} parameters, loss {}",
        summary.start_step,
        summary.end_step,
        summary.params,
        match (summary.first_loss, summary.last_loss) {
            (Some(a), Some(b)) => format!("{a:.4} → {b:.4}"),
            _ => "none (no step ran)".to_string(),
        }
    );
    Ok(summary)
}

/// `run` as a pipeline stage (`curate run`): one "shard", skipped when the
/// run had already reached --steps (pass `resume = true` so reruns continue).
pub fn run_stage(args: &TrainArgs) -> anyhow::Result<StageSummary> {
    let s = run(args)?;
    let did = s.end_step > s.start_step;
    Ok(StageSummary {
        shards_total: 1,
        shards_written: u32::from(did),
        shards_skipped: u32::from(!did),
        records: s.end_step - s.start_step,
        ..Default::default()
    })
}
