//! `curate export WORK_DIR -o OUT --format hf|webdataset|kohya|musubi`: the curated set
//! in the formats other tools load. The stage is `curate_stages::export`;
//! this file turns the flags into its settings.

use curate_stage::StageSummary;
use curate_stages::export::{Export, ExportSettings, Format};

use crate::cli::{ExportArgs, ExportFormat};

pub fn settings(args: &ExportArgs) -> ExportSettings {
    ExportSettings {
        work_dir: args.work_dir.clone(),
        output: args.output.clone(),
        format: match args.format {
            ExportFormat::Hf => Format::Hf,
            ExportFormat::Webdataset => Format::WebDataset,
            ExportFormat::Kohya => Format::Kohya,
            ExportFormat::Musubi => Format::Musubi,
        },
        images: args.images.clone(),
        dedup: args.dedup.clone(),
        score: args.score.clone(),
        captions: args.captions.clone(),
        latents: args.latents.clone(),
        sample_posterior: args.sample_posterior,
        allow_missing: args.allow_missing.clone(),
        caption_mix: args.caption_mix.clone(),
        no_tag: args.no_tag,
        seed: args.seed,
        max_file_bytes: args.max_file_mb << 20,
    }
}

pub fn run(args: &ExportArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let mut stage = Export::open(&settings(args))?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
