//! Parquet shards.
//!
//! [`ShardWriter`] writes a shard under a temporary name, checks every
//! batch against the table's schema, and [`ShardWriter::finish`] flushes,
//! fsyncs and renames it into place. [`verify_shard`] reads only the footer:
//! a truncated or foreign file fails it. [`images`] converts image records.

pub mod captions;
pub mod dedup_clusters;
pub mod dedup_keep;
pub mod embeddings;
pub mod exact_duplicates;
pub mod export;
pub mod images;
pub mod latents;
pub mod scan;
pub mod scores;
pub mod status;
pub mod text_embeddings;
pub mod train_metrics;
pub mod url_list;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use curate_core::schema::{TableSchema, META_SCHEMA, META_SCHEMA_VERSION};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Errors reading and writing shards, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable parquet shard: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow_schema::ArrowError,
    },
    #[error("{path}: {source}")]
    Schema {
        path: PathBuf,
        #[source]
        source: curate_core::CoreError,
    },
    #[error("{path}: holds {found} rows, its journal record says {expected}")]
    RowCount {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: no column `{column}`")]
    MissingColumn { path: PathBuf, column: String },
    #[error("{path}: no column `{column}`; the file has: {found}")]
    MissingInputColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{what}")]
    Invalid { what: String },
    #[error("{what}: {source}")]
    Polars {
        what: String,
        #[source]
        source: polars::error::PolarsError,
    },
}

/// Options for one shard file.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Rows per row group; smaller for large rows (image bytes), so memory
    /// stays bounded and partial progress reaches the disk.
    pub row_group_rows: usize,
    /// Row groups are also cut at about this many bytes.
    pub row_group_bytes: Option<usize>,
    pub compression: Compression,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            row_group_rows: 8192,
            row_group_bytes: Some(64 << 20),
            compression: Compression::SNAPPY,
        }
    }
}

/// Writes one shard: temporary name first, final name on [`finish`](Self::finish).
pub struct ShardWriter {
    table: &'static TableSchema,
    schema: SchemaRef,
    tmp: PathBuf,
    dest: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

impl ShardWriter {
    /// Starts writing `dest` (via `tmp`) with `schema`, which must satisfy `table`.
    pub fn create(
        table: &'static TableSchema,
        schema: SchemaRef,
        tmp: &Path,
        dest: &Path,
        options: &ShardOptions,
    ) -> Result<Self, IoError> {
        table
            .check(&schema, None)
            .map_err(|source| IoError::Schema {
                path: dest.to_path_buf(),
                source,
            })?;
        let file = File::create(tmp).map_err(|source| IoError::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        let props = WriterProperties::builder()
            .set_compression(options.compression)
            .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
            .set_max_row_group_bytes(options.row_group_bytes)
            .set_key_value_metadata(Some(vec![
                parquet::file::metadata::KeyValue::new(META_SCHEMA.into(), table.name.clone()),
                parquet::file::metadata::KeyValue::new(
                    META_SCHEMA_VERSION.into(),
                    table.version.to_string(),
                ),
            ]))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|source| {
            IoError::Parquet {
                path: tmp.to_path_buf(),
                source,
            }
        })?;
        Ok(ShardWriter {
            table,
            schema,
            tmp: tmp.to_path_buf(),
            dest: dest.to_path_buf(),
            writer,
            rows: 0,
        })
    }

    /// Appends a batch after checking it against the table (types, nulls).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), IoError> {
        let nulls: Vec<usize> = batch.columns().iter().map(|c| c.null_count()).collect();
        self.table
            .check(batch.schema_ref(), Some(&nulls))
            .map_err(|source| IoError::Schema {
                path: self.dest.clone(),
                source,
            })?;
        self.writer
            .write(batch)
            .map_err(|source| IoError::Parquet {
                path: self.tmp.clone(),
                source,
            })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Forces buffered rows out as a row group.
    pub fn flush(&mut self) -> Result<(), IoError> {
        self.writer.flush().map_err(|source| IoError::Parquet {
            path: self.tmp.clone(),
            source,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Closes the file, fsyncs it and renames it to its final name.
    /// Returns the row count and the file size.
    pub fn finish(self) -> Result<(u64, u64), IoError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|source| IoError::Parquet {
                path: self.tmp.clone(),
                source,
            })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IoError::Io { path, source }
        };
        file.sync_all().map_err(io(&self.tmp))?;
        let bytes = file.metadata().map_err(io(&self.tmp))?.len();
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        let _ = curate_core::stage::sync_parent(&self.dest);
        Ok((self.rows, bytes))
    }
}

fn open(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, IoError> {
    let file = File::open(path).map_err(|source| IoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| IoError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens the shard at `path` for reading, its schema checked against `table`.
pub(crate) fn open_checked(
    path: &Path,
    table: &TableSchema,
) -> Result<ParquetRecordBatchReaderBuilder<File>, IoError> {
    let builder = open(path)?;
    table
        .check_readable(builder.schema())
        .map_err(|source| IoError::Schema {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(builder)
}

/// Checks a shard by its footer: readable, the table's schema, and (when
/// given) the expected row count. Returns the row count. Reads no data pages.
pub fn verify_shard(
    path: &Path,
    table: &TableSchema,
    expected_rows: Option<u64>,
) -> Result<u64, IoError> {
    let builder = open_checked(path, table)?;
    let rows = builder.metadata().file_metadata().num_rows() as u64;
    if let Some(expected) = expected_rows {
        if rows != expected {
            return Err(IoError::RowCount {
                path: path.to_path_buf(),
                expected,
                found: rows,
            });
        }
    }
    Ok(rows)
}

/// Reads a whole shard, checked against `table`.
pub fn read_shard(path: &Path, table: &TableSchema) -> Result<Vec<RecordBatch>, IoError> {
    read_columns(path, table, None)
}

/// Reads some columns of a shard (all when `columns` is `None`), checked against `table`.
pub fn read_columns(
    path: &Path,
    table: &TableSchema,
    columns: Option<&[&str]>,
) -> Result<Vec<RecordBatch>, IoError> {
    checked_reader(path, table, columns, None)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            source,
        })
}

/// A reader of `columns` (all when `None`) after checking the shard against `table`.
fn checked_reader(
    path: &Path,
    table: &TableSchema,
    columns: Option<&[&str]>,
    batch_rows: Option<usize>,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, IoError> {
    let builder = open(path)?;
    table
        .check_readable(builder.schema())
        .map_err(|source| IoError::Schema {
            path: path.to_path_buf(),
            source,
        })?;
    let mut builder = match columns {
        None => builder,
        Some(cols) => {
            let mut idx = Vec::with_capacity(cols.len());
            for c in cols {
                idx.push(
                    builder
                        .schema()
                        .index_of(c)
                        .map_err(|_| IoError::MissingColumn {
                            path: path.to_path_buf(),
                            column: c.to_string(),
                        })?,
                );
            }
            let mask = ProjectionMask::roots(builder.parquet_schema(), idx);
            builder.with_projection(mask)
        }
    };
    if let Some(rows) = batch_rows {
        builder = builder.with_batch_size(rows.max(1));
    }
    builder.build().map_err(|source| IoError::Parquet {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a whole table to `dest` atomically (for small stage-level outputs).
pub fn write_table(
    table: &'static TableSchema,
    dest: &Path,
    batches: &[RecordBatch],
    schema: SchemaRef,
) -> Result<u64, IoError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.tmp-{}", curate_core::stage::tmp_suffix()));
    let mut w = ShardWriter::create(table, schema, &tmp, dest, &ShardOptions::default())?;
    for b in batches {
        w.write(b)?;
    }
    Ok(w.finish()?.0)
}

/// Convenience for an `Arc`'d schema from a table's default Arrow schema.
pub fn default_schema(table: &TableSchema) -> Result<SchemaRef, curate_core::CoreError> {
    Ok(Arc::new(table.arrow_schema()?))
}

/// Column `name` of a batch read from `path`, as array type `A`; a missing
/// column (or one of another type) is an error naming the file and column.
pub(crate) fn column<'a, A: Array + 'static>(
    path: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a A, IoError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| IoError::MissingColumn {
            path: path.to_path_buf(),
            column: name.to_string(),
        })
}

/// Row count of a parquet file from its footer.
pub fn row_count(path: &Path) -> Result<u64, IoError> {
    Ok(open(path)?.metadata().file_metadata().num_rows() as u64)
}

/// Streams some columns of a shard in batches of `batch_rows`, checked
/// against `table` first: bounded memory however large the shard.
pub fn stream_columns(
    path: &Path,
    table: &TableSchema,
    columns: &[&str],
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<RecordBatch, IoError>>, IoError> {
    let reader = checked_reader(path, table, Some(columns), Some(batch_rows))?;
    let path = path.to_path_buf();
    Ok(reader.map(move |b| {
        b.map_err(|source| IoError::Arrow {
            path: path.clone(),
            source,
        })
    }))
}
