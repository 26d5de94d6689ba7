//! The `status`, `reason` and `error` columns every per-image table
//! (embeddings, scores, captions) carries: one outcome per row.

use std::sync::Arc;

use arrow_array::{ArrayRef, StringArray};

/// Per row: the value, or (reason, message) when it failed.
pub type Outcome<T> = Result<T, (String, String)>;

/// The `status` (`ok`/`error`), `reason` and `error` columns of `rows`.
pub fn status_columns<T>(rows: &[Outcome<T>]) -> (ArrayRef, ArrayRef, ArrayRef) {
    (
        Arc::new(
            rows.iter()
                .map(|r| Some(if r.is_ok() { "ok" } else { "error" }))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.as_ref().err().map(|e| e.0.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|r| r.as_ref().err().map(|e| e.1.as_str()))
                .collect::<StringArray>(),
        ),
    )
}

/// The failure reasons of `rows`, in order (what a shard's journal counts).
pub fn reasons<T>(rows: &[Outcome<T>]) -> impl Iterator<Item = &str> {
    rows.iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.0.as_str()))
}
