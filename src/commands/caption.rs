//! `curate caption IMAGES -o OUT --model DIR`: captions, one row per image
//! and task, by a caption model (`--model-type`, Florence-2 by default).
//! `--keep DEDUP_DIR` captions only the images a dedup run kept. The stage
//! is `curate_stages::caption`; this file turns the flags into its settings.

use curate_stage::StageSummary;
use curate_stages::caption::{CaptionModelSettings, CaptionSettings, CaptionStage, ModelType};

use crate::cli::{CaptionArgs, CaptionModelType};

pub fn run(args: &CaptionArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let onnx = super::embed::onnx_settings(&args.onnx);
    let mut stage = CaptionStage::open(&CaptionSettings {
        input: args.input.clone(),
        model_type: match args.model_type {
            CaptionModelType::Florence2 => ModelType::Florence2,
        },
        model: CaptionModelSettings {
            dir: args.model.clone(),
            variant: args.variant.clone(),
            num_beams: args.num_beams,
            max_new_tokens: args.max_new_tokens,
            kv_cache: !args.no_kv_cache,
            options: onnx.model,
            runtime_dirs: onnx.runtime_dirs,
        },
        tasks: args.task.clone(),
        keep: args.keep.clone(),
        model_id: args.model_id.clone(),
        decode: onnx.decode,
    })?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
