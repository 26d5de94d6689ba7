//! Shared contracts of every curate stage.
//!
//! * [`schema`]: the Arrow schema of every table, kept as versioned JSON in
//!   `schemas/` and compiled in, so writers and readers check shards against
//!   the same data.
//! * [`stage`]: the stage directory — manifest, per-shard journal, the
//!   resume rules (skip complete shards, redo partial ones) and the
//!   configuration check that refuses to mix runs.
//! * [`split`]: which shards this process owns (`--shard-index/--num-shards`,
//!   defaulting from the Slurm array variables).
//! * [`record`]: record types shared by stages and the stable record key.

pub mod bands;
pub mod error;
pub mod hash;
pub mod record;
pub mod rng;
pub mod schema;
pub mod split;
pub mod stage;

pub use error::CoreError;

/// The curate version written into every manifest.
pub const CURATE_VERSION: &str = env!("CARGO_PKG_VERSION");
