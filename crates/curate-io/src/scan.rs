//! Polars over shards: every lazy scan of a curate table goes through
//! [`scan`], which names the table and checks each file's footer against
//! its schema first, so a query over the wrong folder fails with what was
//! expected and what was found instead of a polars column error.

use std::path::PathBuf;

use curate_core::schema::TableSchema;
use polars::prelude::*;

use crate::IoError;

fn what(table: &TableSchema, files: &[PathBuf]) -> String {
    format!(
        "scanning `{}` in {}{}",
        table.name,
        files
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        if files.len() > 1 {
            format!(" and {} more shards", files.len() - 1)
        } else {
            String::new()
        }
    )
}

/// A lazy scan of parquet `files` holding `table` (a stage's complete
/// shards, or one stage-level file). Columns added to a schema later
/// (nullable) read as null in older files.
pub fn scan(table: &TableSchema, files: &[PathBuf]) -> Result<LazyFrame, IoError> {
    if files.is_empty() {
        return Err(IoError::Invalid {
            what: format!("no files of table `{}` to scan", table.name),
        });
    }
    for f in files {
        let builder = crate::open(f)?;
        table
            .check_readable(builder.schema())
            .map_err(|source| IoError::Schema {
                path: f.clone(),
                source,
            })?;
    }
    let paths = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p))
        .collect::<PolarsResult<Vec<_>>>()
        .map_err(|source| IoError::Polars {
            what: what(table, files),
            source,
        })?;
    let args = ScanArgsParquet {
        allow_missing_columns: true,
        glob: false,
        cache: false,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args).map_err(|source| {
        IoError::Polars {
            what: what(table, files),
            source,
        }
    })
}

/// Runs a query. polars panics on a column type it was built without:
/// that becomes an error naming the query, not a crash.
pub fn collect(lf: LazyFrame, what: &str) -> Result<DataFrame, IoError> {
    guarded(what, || lf.collect())
}

/// Runs `f`, turning a polars panic into an error naming `what`.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> PolarsResult<T>) -> Result<T, IoError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|source| IoError::Polars {
            what: what.to_string(),
            source,
        }),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "polars panicked".into());
            Err(IoError::Polars {
                what: what.to_string(),
                source: PolarsError::ComputeError(msg.into()),
            })
        }
    }
}
