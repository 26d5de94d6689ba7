//! The `train_metrics` table (schemas/train_metrics.json): one JSON object
//! per logged optimiser step, which `curate train` appends to [`FILE`] in
//! its output folder (JSONL, not parquet: a line is on disk as soon as the
//! step is) and the report reads.

use curate_core::schema::TableSchema;

/// Its file in the training output folder.
pub const FILE: &str = "metrics.jsonl";

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("train_metrics").expect("built-in schema")
}
