use std::path::PathBuf;

/// Errors of the shared contracts. Each names what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("schema `{schema}`: {message}")]
    SchemaDefinition { schema: String, message: String },

    #[error("unknown schema `{name}`; known schemas: {known}")]
    UnknownSchema { name: String, known: String },

    #[error("table `{schema}` v{version} does not match the data: {problems}")]
    SchemaMismatch {
        schema: String,
        version: u32,
        problems: String,
    },

    #[error(
        "{dir} holds stage `{found_stage}` written with a different configuration \
         ({differences}); rerun with --overwrite to discard it, or choose another output directory"
    )]
    ConfigChanged {
        dir: PathBuf,
        found_stage: String,
        differences: String,
    },

    #[error("{dir} holds stage `{found}`, expected stage `{expected}`")]
    WrongStage {
        dir: PathBuf,
        expected: String,
        found: String,
    },

    #[error("invalid shard split: {message}")]
    Split { message: String },
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
