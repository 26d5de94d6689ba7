//! The `dedup_keep` table (schemas/dedup_keep.json): the images that
//! survive deduplication, one row each, written once per dedup stage as
//! [`FILE`] in its folder. `caption --keep` and `encode-latents --keep` read it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array};
use curate_core::schema::TableSchema;

use crate::IoError;

/// Its file in the dedup stage's folder.
pub const FILE: &str = "keep.parquet";

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("dedup_keep").expect("built-in schema")
}

/// One kept image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepRow {
    pub key: String,
    /// The cluster it represents; `None` for a noise singleton.
    pub cluster_id: Option<i64>,
    /// Images it stands for, itself included.
    pub cluster_size: u32,
}

fn schema_error(path: &Path) -> impl FnOnce(curate_core::CoreError) -> IoError + '_ {
    move |source| IoError::Schema {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the table to `dest` (atomically).
pub fn write(dest: &Path, rows: &[KeepRow]) -> Result<(), IoError> {
    let table = table();
    let schema = crate::default_schema(table).map_err(schema_error(dest))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        )),
        Arc::new(rows.iter().map(|r| r.cluster_id).collect::<Int64Array>()),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.cluster_size),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|source| IoError::Arrow {
        path: dest.to_path_buf(),
        source,
    })?;
    crate::write_table(table, dest, &[batch], schema).map(|_| ())
}

/// Reads the whole table (checked against its schema).
pub fn read(path: &Path) -> Result<Vec<KeepRow>, IoError> {
    let mut rows = Vec::new();
    for b in crate::read_columns(path, table(), Some(&["key", "cluster_id", "cluster_size"]))? {
        let missing = |column: &str| IoError::MissingColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
        };
        let key = b
            .column_by_name("key")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing("key"))?;
        let id = b
            .column_by_name("cluster_id")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| missing("cluster_id"))?;
        let size = b
            .column_by_name("cluster_size")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| missing("cluster_size"))?;
        rows.extend((0..b.num_rows()).map(|i| KeepRow {
            key: key.value(i).to_string(),
            cluster_id: id.is_valid(i).then(|| id.value(i)),
            cluster_size: size.value(i),
        }));
    }
    Ok(rows)
}

/// The kept keys (only the `key` column is read).
pub fn read_keys(path: &Path) -> Result<HashSet<String>, IoError> {
    let mut keys = HashSet::new();
    for b in crate::read_columns(path, table(), Some(&["key"]))? {
        let k = b.column(0).as_string::<i32>();
        keys.extend((0..b.num_rows()).map(|i| k.value(i).to_string()));
    }
    Ok(keys)
}
