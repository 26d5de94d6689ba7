//! The stage runtime: what every stage shares, so a stage only says what
//! one shard holds.
//!
//! - [`Upstream`]: a finished (or, for the report, any) stage folder read by a later stage.
//! - [`Stage`] and [`run`]: the owned-shard loop with resume, the kill -9
//!   contract, Slurm task splits, progress, stage-level outputs and the
//!   closing line.
//! - [`TableShard`] / [`ImageShard`]: one shard written under a temporary
//!   name, renamed and journalled on commit.
//! - [`pixels`]: the bounded decode pool of the image-model stages.
//! - [`progress`]: bars on a terminal, `tracing` lines otherwise.
//!
//! Layering: curate-core (records, manifests) → curate-io (tables) →
//! curate-stage (this crate) → curate-stages (one file per stage) → the binary.

mod error;
pub mod images;
pub mod pixels;
pub mod progress;
mod runner;
mod shard;
mod upstream;

pub use error::{BoxError, Context, Result, StageError};
pub use runner::{
    open_output, run, shard_done, stage_done_line, RunOptions, ShardOutput, Stage, StageSummary,
};
pub use shard::{shard_range, stall, ImageShard, StallHook, TableShard, BATCH_ROWS};
pub use upstream::Upstream;
