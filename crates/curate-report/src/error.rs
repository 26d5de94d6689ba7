use std::path::PathBuf;

/// Why a report could not be written. Each names the file or stage
/// involved; the underlying error is its `source()` (printed by `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Core(#[from] curate_core::CoreError),
    #[error(transparent)]
    Shard(#[from] curate_io::IoError),
    /// Reading a stage folder (manifest, journal).
    #[error(transparent)]
    Runtime(#[from] curate_stage::StageError),
    #[error("{what}")]
    Polars {
        what: String,
        #[source]
        source: polars::error::PolarsError,
    },
    #[error(
        "{dir} holds no stage directories (none with a manifest.json) and no training metrics"
    )]
    NoStages { dir: PathBuf },
    #[error(
        "{out} is inside the stage directory {stage}: the report never writes into a stage's \
         folder; choose another --out"
    )]
    OutInsideStage { out: PathBuf, stage: PathBuf },
    #[error(
        "{out} exists and is not a curate report folder (no report.json, and not empty); \
         choose another --out or remove it"
    )]
    OutNotReport { out: PathBuf },
    #[error("stage {stage}: {message}")]
    Stage { stage: PathBuf, message: String },
    #[error("invalid option: {0}")]
    Options(String),
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn polars(what: impl Into<String>, source: polars::error::PolarsError) -> Self {
        ReportError::Polars {
            what: what.into(),
            source,
        }
    }
}
