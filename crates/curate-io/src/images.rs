//! The `images` table (schemas/images.json) ⇄ [`ImageRecord`].

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, StringBuilder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_schema::{ArrowError, SchemaRef};
use curate_core::record::{ImageRecord, Status, Stored};
use curate_core::schema::{self, TableSchema};

/// The `images` table schema.
pub fn table() -> &'static TableSchema {
    schema::get("images").expect("images schema is compiled in")
}

/// Its Arrow schema.
pub fn arrow_schema() -> SchemaRef {
    Arc::new(
        table()
            .arrow_schema()
            .expect("images schema has no open types"),
    )
}

/// Builds one batch from records.
pub fn to_batch(records: &[ImageRecord]) -> Result<RecordBatch, ArrowError> {
    let n = records.len();
    let mut key = StringBuilder::with_capacity(n, n * 16);
    let mut source = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut format = StringBuilder::new();
    let mut mode = StringBuilder::new();
    let mut width = UInt32Builder::with_capacity(n);
    let mut height = UInt32Builder::with_capacity(n);
    let mut orientation = UInt8Builder::with_capacity(n);
    let mut file_size = UInt64Builder::with_capacity(n);
    let mut sha256 = StringBuilder::with_capacity(n, n * 64);
    let mut stored = StringBuilder::new();
    let mut stored_format = StringBuilder::new();
    let total: usize = records
        .iter()
        .filter_map(|r| r.bytes.as_ref())
        .map(Vec::len)
        .sum();
    let mut bytes = BinaryBuilder::with_capacity(n, total);
    for r in records {
        key.append_value(&r.key);
        source.append_value(&r.source);
        status.append_value(r.status.as_str());
        reason.append_option(r.reason.as_deref());
        error.append_option(r.error.as_deref());
        format.append_option(r.format.as_deref());
        mode.append_option(r.mode.as_deref());
        width.append_option(r.width);
        height.append_option(r.height);
        orientation.append_option(r.orientation);
        file_size.append_value(r.file_size);
        sha256.append_option(r.sha256.as_deref());
        stored.append_option(r.stored.map(Stored::as_str));
        stored_format.append_option(r.stored_format.as_deref());
        bytes.append_option(r.bytes.as_deref());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(key.finish()),
        Arc::new(source.finish()),
        Arc::new(status.finish()),
        Arc::new(reason.finish()),
        Arc::new(error.finish()),
        Arc::new(format.finish()),
        Arc::new(mode.finish()),
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(orientation.finish()),
        Arc::new(file_size.finish()),
        Arc::new(sha256.finish()),
        Arc::new(stored.finish()),
        Arc::new(stored_format.finish()),
        Arc::new(bytes.finish()),
    ];
    RecordBatch::try_new(arrow_schema(), columns)
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            ArrowError::SchemaError(format!("images batch has no usable column `{name}`"))
        })
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

/// Reads records back from a full `images` batch.
pub fn from_batch(batch: &RecordBatch) -> Result<Vec<ImageRecord>, ArrowError> {
    let key = col::<StringArray>(batch, "key")?;
    let source = col::<StringArray>(batch, "source")?;
    let status = col::<StringArray>(batch, "status")?;
    let reason = col::<StringArray>(batch, "reason")?;
    let error = col::<StringArray>(batch, "error")?;
    let format = col::<StringArray>(batch, "format")?;
    let mode = col::<StringArray>(batch, "mode")?;
    let width = col::<UInt32Array>(batch, "width")?;
    let height = col::<UInt32Array>(batch, "height")?;
    let orientation = col::<UInt8Array>(batch, "orientation")?;
    let file_size = col::<UInt64Array>(batch, "file_size")?;
    let sha256 = col::<StringArray>(batch, "sha256")?;
    let stored = col::<StringArray>(batch, "stored")?;
    let stored_format = col::<StringArray>(batch, "stored_format")?;
    let bytes = col::<BinaryArray>(batch, "bytes")?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(ImageRecord {
                key: key.value(i).to_string(),
                source: source.value(i).to_string(),
                status: match status.value(i) {
                    "ok" => Status::Ok,
                    "error" => Status::Error,
                    other => {
                        return Err(ArrowError::InvalidArgumentError(format!(
                            "status `{other}` is neither ok nor error"
                        )))
                    }
                },
                reason: opt_str(reason, i),
                error: opt_str(error, i),
                format: opt_str(format, i),
                mode: opt_str(mode, i),
                width: width.is_valid(i).then(|| width.value(i)),
                height: height.is_valid(i).then(|| height.value(i)),
                orientation: orientation.is_valid(i).then(|| orientation.value(i)),
                file_size: file_size.value(i),
                sha256: opt_str(sha256, i),
                stored: match stored.is_valid(i).then(|| stored.value(i)) {
                    Some("original") => Some(Stored::Original),
                    Some("reencoded") => Some(Stored::Reencoded),
                    _ => None,
                },
                stored_format: opt_str(stored_format, i),
                bytes: bytes.is_valid(i).then(|| bytes.value(i).to_vec()),
            })
        })
        .collect()
}
