//! What the ONNX image-model stages (`embed`, `score`, `caption`) share:
//! the session and decode settings their flags turn into, the ONNX model
//! as the runtime's [`BatchModel`], and the size of an ONNX file for the
//! manifest.

use std::path::{Path, PathBuf};

use curate_onnx::session::ModelOptions;
use curate_onnx::vision::ImageModel;
use curate_onnx::Runtime;
use curate_stage::pixels::{BatchModel, DecodeSettings};
use curate_stage::{BoxError, Result, StageError};

/// Session and decoding settings of an image-model stage.
#[derive(Debug, Clone)]
pub struct OnnxImageSettings {
    pub model: ModelOptions,
    pub decode: DecodeSettings,
    /// Folders searched for the ONNX Runtime library (`curate setup` installs it there).
    pub runtime_dirs: Vec<PathBuf>,
}

impl OnnxImageSettings {
    /// The ONNX Runtime, loaded once per process.
    pub fn runtime(&self) -> Result<&'static Runtime> {
        curate_onnx::init(&self.runtime_dirs).map_err(StageError::other)
    }
}

/// An ONNX image model (pixels in, one vector per image out) for the decode pool.
pub struct OnnxImageModel(pub ImageModel);

impl BatchModel for OnnxImageModel {
    fn run_batch(
        &mut self,
        n: usize,
        h: u32,
        w: u32,
        pixels: Vec<f32>,
    ) -> std::result::Result<Vec<Vec<f32>>, BoxError> {
        self.0.run(n, h, w, pixels).map_err(Into::into)
    }
}

/// Size of a file in bytes (0 when it cannot be read), for the manifest.
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The manifest's description of how pictures are prepared.
pub fn preprocess_json(spec: &curate_vision::preprocess::PixelSpec) -> serde_json::Value {
    serde_json::to_value(spec).expect("plain data")
}
