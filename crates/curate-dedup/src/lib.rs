//! Near-duplicate removal by DBSCAN on L2-normalised embeddings, as in the
//! oboro report (§IV-A2): embeddings split into subsets, DBSCAN per subset
//! with cosine similarity ≥ eps, one representative per cluster plus every
//! noise point survive, and the survivors are re-partitioned and clustered
//! again until a round removes nothing.
//!
//! - [`kernel`]: the exact ε-neighbourhood graph of a set of unit vectors,
//!   by blocked matrix products (the `gemm` crate) and a threshold; memory
//!   bounded by the block size and the number of neighbour pairs.
//! - [`dbscan`]: DBSCAN on that graph, labelling exactly as scikit-learn's
//!   `dbscan_inner` does (clusters numbered in order of their first core
//!   point; a border point goes to the first cluster that reaches it).
//! - [`partition`]: random and spherical k-means partitioning.
//! - [`driver`]: rounds, representatives, checkpoints and the final tables.

pub mod dbscan;
pub mod driver;
pub mod kernel;
pub mod partition;
pub mod rng;

/// Errors of the dedup library.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("embeddings: expected {expected} floats ({rows} rows × {dim}), found {found}")]
    Shape {
        rows: usize,
        dim: usize,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Checkpoint {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("invalid setting `{name}`: {message}")]
    Setting { name: &'static str, message: String },
    #[error("task {task} of the shared dedup failed ({path}): {message}; rerun it, then this one")]
    PeerFailed {
        task: u32,
        path: std::path::PathBuf,
        message: String,
    },
}
