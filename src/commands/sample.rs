//! `curate sample`: images from a trained DiT (issue #10): Euler ODE from
//! noise (t = 0) to data (t = 1) with classifier-free guidance, then the
//! FLUX VAE decodes the latents to PNGs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use curate_gen::sample::{sample, SampleOptions};
use curate_gen::t5::T5Encoder;
use curate_gen::train::Checkpoint;
use curate_stage::StageSummary;

use crate::cli::SampleArgs;

fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--image-size {s}: expected HEIGHTxWIDTH"))?;
    let (h, w): (usize, usize) = (h.trim().parse()?, w.trim().parse()?);
    if h % 16 != 0 || w % 16 != 0 || h == 0 || w == 0 {
        bail!("--image-size {s}: both sides must be positive multiples of 16 (VAE 8 × patch 2)");
    }
    Ok((h, w))
}

pub fn run(args: &SampleArgs) -> anyhow::Result<Vec<PathBuf>> {
    let device = curate_gen::device(&args.device)?;
    let (h, w) = parse_size(&args.image_size)?;
    let ck_path = curate_gen::train::resolve_checkpoint(&args.checkpoint)?;
    let ck = Checkpoint::load(&ck_path, &device)?;
    let model = ck.build_model(!args.no_ema, &device)?;
    let text = T5Encoder::load(&args.text_encoder, &device).with_context(|| {
        format!(
            "loading the text encoder from {}",
            args.text_encoder.display()
        )
    })?;
    anyhow::ensure!(
        text.cfg.d_model == model.cfg.text_dim,
        "the text encoder's d_model is {}, the checkpoint's text_dim {}",
        text.cfg.d_model,
        model.cfg.text_dim
    );
    let vae = match &args.vae {
        Some(p) => Some(curate_gen::vae::Vae::load(
            &curate_gen::vae::resolve_weights(p)?,
            &device,
        )?),
        None => None,
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let max = model.cfg.max_text_tokens;
    let uncond = text.encode(&[args.negative_prompt.as_str()], max)?;
    let mut written = Vec::new();
    for (pi, prompt) in args.prompts.iter().enumerate() {
        let cond = text.encode(&[prompt.as_str()], max)?;
        for &seed in &args.seeds {
            let opts = SampleOptions {
                steps: args.steps,
                cfg_scale: args.cfg_scale,
                shift: args.shift,
                seed,
                latent_hw: (h / 8, w / 8),
            };
            let z = sample(&model, &cond, &uncond, &opts)?;
            let stem = format!("sample-{pi:03}-s{seed}");
            let rgb = match &vae {
                Some(vae) => curate_gen::vae::to_rgb8(&vae.decode(&z)?)?.remove(0),
                None => latent_preview(&z)?,
            };
            let (ph, pw) = if vae.is_some() {
                (h, w)
            } else {
                (h / 8, w / 8)
            };
            let img = image::RgbImage::from_raw(pw as u32, ph as u32, rgb).context("image size")?;
            let png = args.output.join(format!("{stem}.png"));
            img.save_with_format(&png, image::ImageFormat::Png)
                .with_context(|| format!("writing {}", png.display()))?;
            if args.save_latents {
                let p = args.output.join(format!("{stem}.safetensors"));
                candle_core::safetensors::save(&[("latent", z.clone())].into_iter().collect(), &p)?;
            }
            tracing::info!("{}: {prompt:?} seed {seed}", png.display());
            written.push(png);
        }
    }
    Ok(written)
}

/// Latent channels 0..3 as an RGB preview at latent resolution (no VAE given).
fn latent_preview(z: &candle_core::Tensor) -> anyhow::Result<Vec<u8>> {
    let x = z.narrow(1, 0, 3)?.clamp(-2f32, 2f32)?;
    Ok(curate_gen::vae::to_rgb8(&(x / 2.0)?)?.remove(0))
}

/// `run` as a pipeline stage (`curate run`): one "shard", the PNGs its records.
pub fn run_stage(args: &SampleArgs) -> anyhow::Result<StageSummary> {
    // A pipeline rerun skips sampling when the same checkpoint and settings
    // already produced every PNG (`sample.json` records what made them).
    let stamp = stage_stamp(args)?;
    let stamp_path = args.output.join("sample.json");
    let pngs_exist = args.prompts.iter().enumerate().all(|(pi, _)| {
        args.seeds.iter().all(|seed| {
            args.output
                .join(format!("sample-{pi:03}-s{seed}.png"))
                .is_file()
        })
    });
    if !args.overwrite
        && pngs_exist
        && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
    {
        return Ok(StageSummary {
            shards_total: 1,
            shards_skipped: 1,
            records: (args.prompts.len() * args.seeds.len()) as u64,
            ..Default::default()
        });
    }
    let written = run(args)?;
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(StageSummary {
        shards_total: 1,
        shards_written: 1,
        records: written.len() as u64,
        ..Default::default()
    })
}

/// What a sampling run depends on: the checkpoint file (name and size) and the settings.
fn stage_stamp(args: &SampleArgs) -> anyhow::Result<String> {
    let ck = if args.checkpoint.is_dir() {
        curate_gen::train::list_checkpoints(&args.checkpoint)
            .pop()
            .map(|(_, p)| p)
    } else {
        Some(args.checkpoint.clone())
    };
    let ck_facts = ck.as_ref().map(|p| {
        (
            p.file_name().map(|n| n.to_string_lossy().into_owned()),
            std::fs::metadata(p).map(|m| m.len()).ok(),
        )
    });
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "checkpoint": ck_facts,
        "prompts": args.prompts,
        "negative_prompt": args.negative_prompt,
        "seeds": args.seeds,
        "image_size": args.image_size,
        "cfg_scale": args.cfg_scale,
        "steps": args.steps,
        "shift": args.shift,
        "no_ema": args.no_ema,
        "vae": args.vae.as_ref().map(|p| p.display().to_string()),
        "text_encoder": args.text_encoder.display().to_string(),
    }))?)
}
