//! `curate encode-text LATENTS -o OUT --text-encoder T5_DIR`: a latents
//! stage's training texts encoded once by the frozen T5, so `train --text`
//! never runs it. The stage is `curate_stages::encode_text`; this file
//! turns the flags into its settings.

use curate_stage::StageSummary;
use curate_stages::encode_latents::LatentDtype;
use curate_stages::encode_text::{EncodeText, EncodeTextSettings};

use crate::cli::{EncodeTextArgs, TextDtype};

/// The flags as the library's settings.
pub fn settings(args: &EncodeTextArgs) -> EncodeTextSettings {
    EncodeTextSettings {
        input: args.input.clone(),
        text_encoder: args.text_encoder.clone(),
        model_id: args.model_id.clone(),
        device: args.device.clone(),
        max_length: args.max_length as usize,
        dtype: match args.dtype {
            TextDtype::Bf16 => LatentDtype::Bf16,
            TextDtype::F32 => LatentDtype::F32,
        },
        batch_size: args.batch_size as usize,
    }
}

pub fn run(args: &EncodeTextArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let mut stage = EncodeText::open(&settings(args))?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
