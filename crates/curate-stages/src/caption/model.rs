//! The caption-model seam: what the `caption` stage asks of a model, and
//! which models there are. Like text-embeddings-inference's `Backend`, the
//! stage only talks to [`CaptionModel`]; each model is one file in this
//! folder. To add one (e.g. a BLIP, GIT or Moondream-style ONNX export):
//! write `caption/<model>.rs` implementing [`CaptionModel`], add a
//! `ModelType` variant (its name, tasks and loader, in `registry.rs`) and the
//! matching value of the binary's `--model-type`.

use std::path::PathBuf;

use curate_io::captions::Caption;
use curate_onnx::session::ModelOptions;
use curate_stage::BoxError;
use curate_vision::preprocess::PixelSpec;

/// A captioning model: pictures in, one caption per picture and task out.
pub trait CaptionModel {
    /// How pictures are prepared for it (a fixed size, so they batch).
    fn pixel_spec(&self) -> &PixelSpec;

    /// Captions `n` pictures (CHW floats of [`Self::pixel_spec`]'s size,
    /// concatenated) for `task` (one of its `ModelType::tasks`): one
    /// caption per picture, in order. An error fails the whole batch; the
    /// stage then retries picture by picture to find the ones that fail.
    fn caption(
        &mut self,
        pixels: &[f32],
        n: usize,
        task: &str,
    ) -> std::result::Result<Vec<Caption>, BoxError>;

    /// Beams searched (1 = greedy), for the shard metadata and the log.
    fn num_beams(&self) -> usize;

    /// The longest caption, in tokens.
    fn max_new_tokens(&self) -> usize;

    /// The model's entries in the stage's manifest configuration (what
    /// changes its captions: decoding settings, file variant, …). A model
    /// other than Florence-2 names itself here (`"model_type": "blip"`), so
    /// its output never resumes another model's; Florence-2 keeps the keys
    /// its manifests have always had.
    fn config(&self) -> serde_json::Map<String, serde_json::Value>;
}

/// How a caption model is loaded (the flags shared by every model).
#[derive(Debug, Clone)]
pub struct CaptionModelSettings {
    /// The export folder.
    pub dir: PathBuf,
    /// File-name suffix of the ONNX files (`_fp16`, `_quantized`, or empty).
    pub variant: String,
    /// Beams (1 = greedy); `None`: the model's own default.
    pub num_beams: Option<usize>,
    pub max_new_tokens: usize,
    /// Feed the decoder its keys/values (else rerun it on the whole sequence each step).
    pub kv_cache: bool,
    pub options: ModelOptions,
    /// Folders searched for the ONNX Runtime library.
    pub runtime_dirs: Vec<PathBuf>,
}
