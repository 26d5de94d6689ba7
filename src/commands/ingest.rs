//! `curate ingest DIR`: a local folder of images → image shards. The stage
//! is `curate_stages::ingest`; this file turns the flags into its settings.

use curate_stage::StageSummary;
use curate_stages::ingest::{Ingest, IngestSettings};
use curate_stages::validate::{self, ImageSettings};

use crate::cli::{ImageArgs, IngestArgs, StorePolicy, Verify};

pub fn run(args: &IngestArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let mut stage = Ingest::new(IngestSettings {
        input: args.input.clone(),
        shard_size: args.shard_size,
        image: image_settings(&args.image),
    })?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}

/// The image flags of ingest and fetch as the library's settings.
pub fn image_settings(args: &ImageArgs) -> ImageSettings {
    ImageSettings {
        store: match args.store {
            StorePolicy::Auto => validate::StorePolicy::Auto,
            StorePolicy::Original => validate::StorePolicy::Original,
            StorePolicy::Reencoded => validate::StorePolicy::Reencoded,
        },
        max_pixels: args.max_pixels,
        jpeg_quality: args.jpeg_quality,
        verify: match args.verify {
            Verify::Full => validate::Verify::Full,
            Verify::Header => validate::Verify::Header,
        },
        threads: args.threads,
    }
}
