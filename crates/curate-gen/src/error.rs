//! The errors of curate-gen: configuration problems (a weight file that is
//! missing, a tensor with the wrong name or shape) name what was expected
//! and what was found.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable safetensors file: {why}")]
    Safetensors { path: PathBuf, why: String },
    #[error("{path}: missing tensor `{name}` (expected by {what}); the file has e.g. {found}")]
    MissingTensor {
        path: PathBuf,
        name: String,
        what: String,
        found: String,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    BadShape {
        path: PathBuf,
        name: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A latents shard that cannot be read (curate-io names the file).
    #[error(transparent)]
    Table(#[from] curate_io::IoError),
    /// An input stage that is not a complete latents stage, or a shard that cannot be written.
    #[error(transparent)]
    Stage(#[from] curate_stage::StageError),
}

pub type Result<T, E = GenError> = std::result::Result<T, E>;
