//! The `images` table (schemas/images.json) ⇄ [`ImageRecord`].

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, StringBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array,
    UInt8Array,
};
use arrow_schema::{ArrowError, SchemaRef};
use curate_core::record::{DownloadFacts, ImageRecord, Status, Stored};
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
    let mut url = StringBuilder::new();
    let mut page_url = StringBuilder::new();
    let mut http_status = UInt16Builder::with_capacity(n);
    let mut attempts = UInt8Builder::with_capacity(n);
    let mut fetch_ms = UInt32Builder::with_capacity(n);
    for r in records {
        let d = r.download.as_ref();
        url.append_option(d.map(|d| d.url.as_str()));
        page_url.append_option(d.and_then(|d| d.page_url.as_deref()));
        http_status.append_option(d.and_then(|d| d.http_status));
        attempts.append_option(d.map(|d| d.attempts));
        fetch_ms.append_option(d.map(|d| d.fetch_ms));
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
        Arc::new(url.finish()),
        Arc::new(page_url.finish()),
        Arc::new(http_status.finish()),
        Arc::new(attempts.finish()),
        Arc::new(fetch_ms.finish()),
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
    // Appended after the first shards were written: absent in older shards.
    let url = col::<StringArray>(batch, "url").ok();
    let page_url = col::<StringArray>(batch, "page_url").ok();
    let http_status = col::<UInt16Array>(batch, "http_status").ok();
    let attempts = col::<UInt8Array>(batch, "attempts").ok();
    let fetch_ms = col::<UInt32Array>(batch, "fetch_ms").ok();
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
                download: url.filter(|u| u.is_valid(i)).map(|u| DownloadFacts {
                    url: u.value(i).to_string(),
                    page_url: page_url.and_then(|p| opt_str(p, i)),
                    http_status: http_status.filter(|h| h.is_valid(i)).map(|h| h.value(i)),
                    attempts: attempts.filter(|a| a.is_valid(i)).map_or(0, |a| a.value(i)),
                    fetch_ms: fetch_ms.filter(|f| f.is_valid(i)).map_or(0, |f| f.value(i)),
                }),
            })
        })
        .collect()
}
