//! The `captions` table (schemas/captions.json): one row per image and
//! caption task, failures included. `caption` writes it; `encode-latents`
//! and the report read it.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{ArrowError, SchemaRef};
use curate_core::schema::TableSchema;

use crate::status::{status_columns, Outcome};
use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("captions").expect("built-in schema")
}

/// What the schema's metadata records about the captioning.
#[derive(Debug, Clone)]
pub struct CaptionsMeta {
    pub model: String,
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub tasks: Vec<String>,
}

/// The Arrow schema of a shard, with its metadata.
pub fn arrow_schema(meta: &CaptionsMeta) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    m.insert("model".to_string(), meta.model.clone());
    m.insert("num_beams".to_string(), meta.num_beams.to_string());
    m.insert(
        "max_new_tokens".to_string(),
        meta.max_new_tokens.to_string(),
    );
    m.insert("tasks".to_string(), meta.tasks.join(","));
    Ok(Arc::new(s.with_metadata(m)))
}

/// A generated caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    pub text: String,
    /// Generated tokens, without the forced BOS/EOS and padding.
    pub num_tokens: u32,
    /// The length limit cut it before EOS.
    pub truncated: bool,
}

/// One output row: an image, a task and its caption or failure.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionRow {
    pub key: String,
    pub task: String,
    pub result: Outcome<Caption>,
}

/// One batch of rows, all captioned by `model`.
pub fn to_batch(
    schema: &SchemaRef,
    model: &str,
    rows: &[CaptionRow],
) -> Result<RecordBatch, ArrowError> {
    let results: Vec<Outcome<&Caption>> = rows
        .iter()
        .map(|r| r.result.as_ref().map_err(Clone::clone))
        .collect();
    let ok = |i: usize| results[i].as_ref().ok();
    let (status, reason, error) = status_columns(&results);
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.task.as_str()),
        )),
        status,
        reason,
        error,
        Arc::new(
            (0..n)
                .map(|i| ok(i).map(|c| c.text.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            (0..n)
                .map(|i| ok(i).map(|c| c.num_tokens))
                .collect::<UInt32Array>(),
        ),
        Arc::new(
            (0..n)
                .map(|i| ok(i).map(|c| c.truncated))
                .collect::<BooleanArray>(),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(model, n))),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// The failure reasons of `rows`, in order (what a shard's journal counts).
pub fn reasons(rows: &[CaptionRow]) -> impl Iterator<Item = &str> {
    rows.iter()
        .filter_map(|r| r.result.as_ref().err().map(|e| e.0.as_str()))
}

/// The columns [`read`] reads.
pub const COLUMNS: [&str; 8] = [
    "key",
    "task",
    "status",
    "reason",
    "error",
    "caption",
    "num_tokens",
    "truncated",
];

/// Streams a captions shard in batches of `batch_rows` rows (checked against the table first).
pub fn read(
    path: &Path,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<Vec<CaptionRow>, IoError>>, IoError> {
    let batches = crate::stream_columns(path, table(), &COLUMNS, batch_rows)?;
    let path = path.to_path_buf();
    Ok(batches.map(move |b| b.and_then(|b| from_batch(&path, &b))))
}

fn from_batch(path: &Path, batch: &RecordBatch) -> Result<Vec<CaptionRow>, IoError> {
    let s = |n: &str| crate::column::<StringArray>(path, batch, n);
    let (key, task, status) = (s("key")?, s("task")?, s("status")?);
    let (reason, error, caption) = (s("reason")?, s("error")?, s("caption")?);
    let tokens = crate::column::<UInt32Array>(path, batch, "num_tokens")?;
    let truncated = crate::column::<BooleanArray>(path, batch, "truncated")?;
    let text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    Ok((0..batch.num_rows())
        .map(|i| CaptionRow {
            key: key.value(i).to_string(),
            task: task.value(i).to_string(),
            result: if status.value(i) == "ok" {
                Ok(Caption {
                    text: text(caption, i).unwrap_or_default(),
                    num_tokens: if tokens.is_valid(i) {
                        tokens.value(i)
                    } else {
                        0
                    },
                    truncated: truncated.is_valid(i) && truncated.value(i),
                })
            } else {
                Err((
                    text(reason, i).unwrap_or_default(),
                    text(error, i).unwrap_or_default(),
                ))
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_are_read_back_failures_included() {
        let dir = tempfile::tempdir().unwrap();
        let schema = arrow_schema(&CaptionsMeta {
            model: "m".into(),
            num_beams: 3,
            max_new_tokens: 20,
            tasks: vec!["caption".into(), "detailed".into()],
        })
        .unwrap();
        assert_eq!(schema.metadata()["tasks"], "caption,detailed");
        let rows = vec![
            CaptionRow {
                key: "a".into(),
                task: "caption".into(),
                result: Ok(Caption {
                    text: "a cat".into(),
                    num_tokens: 2,
                    truncated: false,
                }),
            },
            CaptionRow {
                key: "b".into(),
                task: "caption".into(),
                result: Err(("inference".into(), "failed".into())),
            },
        ];
        let batch = to_batch(&schema, "m", &rows).unwrap();
        assert_eq!(reasons(&rows).collect::<Vec<_>>(), ["inference"]);
        let dest = dir.path().join("s.parquet");
        crate::write_table(table(), &dest, &[batch], schema.clone()).unwrap();
        let back: Vec<CaptionRow> = read(&dest, 10).unwrap().flat_map(|b| b.unwrap()).collect();
        assert_eq!(back, rows);
    }
}
