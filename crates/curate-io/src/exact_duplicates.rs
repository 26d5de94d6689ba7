//! The `exact_duplicates` table: records whose source bytes equal an
//! earlier record's (same sha256), written once per image stage.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};

use crate::IoError;

/// Its file in the image stage's folder.
pub const FILE: &str = "exact_duplicates.parquet";

/// One duplicate: its key, the shared sha256, and the first record's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub key: String,
    pub sha256: String,
    pub canonical: String,
}

pub fn table() -> &'static curate_core::schema::TableSchema {
    curate_core::schema::get("exact_duplicates").expect("built-in schema")
}

/// Writes the table to `dest` (atomically).
pub fn write(dest: &Path, rows: &[Duplicate]) -> Result<(), IoError> {
    let table = table();
    let schema = crate::default_schema(table).map_err(|source| IoError::Schema {
        path: dest.to_path_buf(),
        source,
    })?;
    let col = |f: fn(&Duplicate) -> &str| -> Arc<StringArray> {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![col(|d| &d.key), col(|d| &d.sha256), col(|d| &d.canonical)],
    )
    .map_err(|source| IoError::Arrow {
        path: dest.to_path_buf(),
        source,
    })?;
    crate::write_table(table, dest, &[batch], schema).map(|_| ())
}
