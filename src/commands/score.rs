//! `curate score IMAGES -o OUT --model DIR`: aesthetic scores and quality
//! tags, from the pictures or (`--from-embeddings HEAD`) from an `embed`
//! stage. The stage is `curate_stages::score`; this file turns the flags
//! into its settings.

use curate_core::bands::Bands;
use curate_stage::StageSummary;
use curate_stages::score::{Score, ScoreInput, ScoreSettings};

use crate::cli::ScoreArgs;

pub fn run(args: &ScoreArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let bands =
        Bands::parse(&args.bands, args.drop_below).map_err(|e| anyhow::anyhow!("--bands: {e}"))?;
    let source = match &args.from_embeddings {
        Some(head) => ScoreInput::Embeddings { head: head.clone() },
        None => ScoreInput::Pixels {
            model: args
                .model
                .clone()
                .expect("clap requires --model without --from-embeddings"),
            input_name: args.input_name.clone(),
            output_name: args.output_name.clone(),
            onnx: super::embed::onnx_settings(&args.onnx),
        },
    };
    let mut stage = Score::open(&ScoreSettings {
        input: args.input.clone(),
        source,
        model_id: args.model_id.clone(),
        bands,
    })?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
