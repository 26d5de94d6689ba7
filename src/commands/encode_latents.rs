//! `curate encode-latents IMAGES -o OUT --stage 256|512 --vae ae.safetensors`:
//! the training set, pre-encoded so training never touches pixels. The
//! stage is `curate_stages::encode_latents`; this file turns the flags into
//! its settings.

use anyhow::Context;
use curate_stage::StageSummary;
use curate_stages::encode_latents::{
    EncodeLatents, EncodeLatentsSettings, LatentDtype, LatentStore, SelectSettings,
};
use curate_vision::buckets::Resolution;

use crate::cli::{self, EncodeLatentsArgs};

/// The flags as the library's settings.
pub fn settings(args: &EncodeLatentsArgs) -> anyhow::Result<EncodeLatentsSettings> {
    let resolution =
        Resolution::from_number(args.stage.parse()?).context("--stage must be 256 or 512")?;
    Ok(EncodeLatentsSettings {
        input: args.input.clone(),
        resolution,
        vae: args.vae.clone(),
        vae_id: args.vae_id.clone(),
        device: args.device.clone(),
        select: SelectSettings {
            keep: args.keep.clone(),
            scores: args.scores.clone(),
            captions: args.captions.clone(),
            caption_mix: args.caption_mix.clone(),
            no_tag: args.no_tag,
            require_caption: args.require_caption,
            seed: args.seed,
        },
        store: match args.store {
            cli::LatentStore::Mean => LatentStore::Mean,
            cli::LatentStore::MeanLogvar => LatentStore::MeanLogvar,
        },
        dtype: match args.dtype {
            cli::LatentDtype::Bf16 => LatentDtype::Bf16,
            cli::LatentDtype::F16 => LatentDtype::F16,
            cli::LatentDtype::F32 => LatentDtype::F32,
        },
        batch_size: args.batch_size as usize,
        rows_per_group: args.rows_per_group as usize,
        max_upscale: args.max_upscale,
        decode_threads: args.decode_threads,
        decode_scale: args.decode_scale,
        max_pixels: args.max_pixels,
    })
}

pub fn run(args: &EncodeLatentsArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let settings = settings(args)?;
    let mut stage = EncodeLatents::open(&settings)?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
