//! The caption models there are (the binary's `--model-type`): one
//! variant per file of this folder, with its name, tasks and loader.

use curate_stage::Result;

use super::model::{CaptionModel, CaptionModelSettings};

/// The caption models there are (the binary's `--model-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelType {
    /// Florence-2, onnx-community export ([`super::florence2`]).
    #[default]
    Florence2,
}

impl ModelType {
    /// Its `--model-type` value.
    pub fn name(self) -> &'static str {
        match self {
            ModelType::Florence2 => "florence2",
        }
    }

    /// The task names it captions for (`--task`).
    pub fn tasks(self) -> Vec<&'static str> {
        match self {
            ModelType::Florence2 => super::florence2::TASKS.to_vec(),
        }
    }

    /// The model id stored when neither `--model-id` nor the folder name gives one.
    pub fn default_id(self) -> &'static str {
        match self {
            ModelType::Florence2 => "florence-2",
        }
    }

    /// Loads the model.
    pub fn load(self, settings: &CaptionModelSettings) -> Result<Box<dyn CaptionModel>> {
        Ok(match self {
            ModelType::Florence2 => Box::new(super::florence2::Florence2::load(settings)?),
        })
    }
}
