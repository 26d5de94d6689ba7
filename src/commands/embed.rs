//! `curate embed IMAGES -o EMB --model DIR`: CLIP image embeddings. The
//! stage is `curate_stages::embed`; this file turns the flags into its settings.

use curate_io::embeddings::Dtype;
use curate_stage::pixels::DecodeSettings;
use curate_stage::StageSummary;
use curate_stages::embed::{Embed, EmbedSettings};
use curate_stages::onnx_model::OnnxImageSettings;

pub use curate_stages::embed::CLIP_CANDIDATES;

use crate::cli::{EmbedArgs, FloatDtype, OnnxImageArgs};

pub fn run(args: &EmbedArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let mut stage = Embed::open(&EmbedSettings {
        input: args.input.clone(),
        model: args.model.clone(),
        input_name: args.input_name.clone(),
        output_name: args.output_name.clone(),
        model_id: args.model_id.clone(),
        dtype: match args.dtype {
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::F32 => Dtype::F32,
        },
        onnx: onnx_settings(&args.onnx),
    })?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}

/// The ONNX image-model flags (embed, score, caption) as the library's settings.
pub fn onnx_settings(args: &OnnxImageArgs) -> OnnxImageSettings {
    OnnxImageSettings {
        model: args.model_options(),
        decode: DecodeSettings {
            scale: args.decode_scale,
            max_pixels: args.max_pixels,
            batch_size: args.batch_size as usize,
            threads: args.decode_threads,
        },
        runtime_dirs: crate::paths::onnxruntime_dirs(),
    }
}
