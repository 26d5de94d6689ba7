//! Every stage of curate, one file each, built on the `curate-stage`
//! runtime: a stage is a settings struct (what the command's flags turn
//! into) and an implementation of [`curate_stage::Stage`] (what one shard
//! holds). The binary's `src/commands/<stage>.rs` turns flags into settings
//! and calls [`curate_stage::run`].
//!
//! | stage | file |
//! |---|---|
//! | `ingest` | [`ingest`] |
//! | `fetch` | [`fetch`] |
//! | `embed` | [`embed`] |
//! | `dedup` | [`dedup`] |
//! | `score` | [`score`] |
//! | `caption` | [`caption`] (models in `caption/`) |
//! | `encode-latents` | [`encode_latents`] |
//! | `encode-text` | [`encode_text`] |
//! | `export` | [`export`] (one file per format in `export/`) |
//! | `import-embeddings` | [`import_embeddings`] |

pub mod caption;
pub mod dedup;
pub mod embed;
pub mod encode_latents;
pub mod encode_text;
pub mod export;
pub mod fetch;
pub mod import_embeddings;
pub mod ingest;
pub mod onnx_model;
pub mod score;
pub mod validate;

pub use curate_stage::{Result, StageError, StageSummary};
