//! The runtime's error: what a stage's work for a shard returns.

/// A boxed error from a model, a decoder or another library crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the stage runtime and of the stages built on it. Each names
/// what was expected and what was found; `Context` adds where it happened
/// and keeps the cause as its source (so `{:#}` prints `where: cause`).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Core(#[from] curate_core::CoreError),
    #[error(transparent)]
    Io(#[from] curate_io::IoError),
    #[error(transparent)]
    Decode(#[from] curate_vision::DecodeError),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A bad configuration or input, said in full.
    #[error("{0}")]
    Invalid(String),
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Other(BoxError),
}

pub type Result<T, E = StageError> = std::result::Result<T, E>;

impl StageError {
    /// A bad configuration or input: `message` names what was expected and what was found.
    pub fn invalid(message: impl Into<String>) -> Self {
        StageError::Invalid(message.into())
    }

    /// Any other library's error.
    pub fn other(e: impl Into<BoxError>) -> Self {
        StageError::Other(e.into())
    }
}

/// `anyhow`-style context on results and options, for library crates.
pub trait Context<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T>;
    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| StageError::Context {
            context: context.to_string(),
            source: e.into(),
        })
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| StageError::Context {
            context: f().to_string(),
            source: e.into(),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| StageError::Invalid(context.to_string()))
    }

    fn with_context<C: std::fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| StageError::Invalid(f().to_string()))
    }
}

/// Returns early with [`StageError::Invalid`] and a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::StageError::Invalid(format!($($arg)*)).into())
    };
}
