//! The `scores` table (schemas/scores.json): an aesthetic score and its
//! quality tag per image, failures included. `score` writes it; `dedup`
//! and `encode-latents` read it.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, SchemaRef};
use curate_core::bands::Bands;
use curate_core::schema::TableSchema;

use crate::status::{status_columns, Outcome};
use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("scores").expect("built-in schema")
}

/// The Arrow schema of a shard, with its metadata: the model, what was
/// scored (`pixels` or `embeddings`) and the bands.
pub fn arrow_schema(
    model: &str,
    input: &str,
    bands: &Bands,
) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    m.insert("model".to_string(), model.to_string());
    m.insert("input".to_string(), input.to_string());
    m.insert("bands".to_string(), bands.to_json());
    m.insert("drop_below".to_string(), bands.drop_below.to_string());
    Ok(Arc::new(s.with_metadata(m)))
}

/// One batch: per key, its score (tagged with `bands`) or the failure.
pub fn to_batch(
    schema: &SchemaRef,
    model: &str,
    bands: &Bands,
    keys: &[String],
    rows: &[Outcome<f32>],
) -> Result<RecordBatch, ArrowError> {
    let tagged: Vec<Option<curate_core::bands::Tagged>> = rows
        .iter()
        .map(|r| r.as_ref().ok().map(|&v| bands.tag(v)))
        .collect();
    let (status, reason, error) = status_columns(rows);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(String::as_str),
        )),
        status,
        reason,
        error,
        Arc::new(
            rows.iter()
                .map(|r| r.as_ref().ok().copied())
                .collect::<Float32Array>(),
        ),
        Arc::new(
            tagged
                .iter()
                .map(|t| t.as_ref().and_then(|t| t.tag.as_deref()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            tagged
                .iter()
                .map(|t| t.as_ref().map(|t| t.dropped))
                .collect::<BooleanArray>(),
        ),
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            model,
            keys.len(),
        ))),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// One row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub key: String,
    /// `ok` or `error`.
    pub status: String,
    pub score: Option<f32>,
    pub tag: Option<String>,
    pub dropped: Option<bool>,
}

/// The columns [`read`] reads.
pub const COLUMNS: [&str; 5] = ["key", "status", "score", "tag", "dropped"];

/// Streams a scores shard in batches of `batch_rows` rows (checked against the table first).
pub fn read(
    path: &Path,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<Vec<Score>, IoError>>, IoError> {
    let batches = crate::stream_columns(path, table(), &COLUMNS, batch_rows)?;
    let path = path.to_path_buf();
    Ok(batches.map(move |b| b.and_then(|b| from_batch(&path, &b))))
}

fn from_batch(path: &Path, batch: &RecordBatch) -> Result<Vec<Score>, IoError> {
    let s = |n: &str| crate::column::<StringArray>(path, batch, n);
    let (key, status, tag) = (s("key")?, s("status")?, s("tag")?);
    let score = crate::column::<Float32Array>(path, batch, "score")?;
    let dropped = crate::column::<BooleanArray>(path, batch, "dropped")?;
    Ok((0..batch.num_rows())
        .map(|i| Score {
            key: key.value(i).to_string(),
            status: status.value(i).to_string(),
            score: score.is_valid(i).then(|| score.value(i)),
            tag: tag.is_valid(i).then(|| tag.value(i).to_string()),
            dropped: dropped.is_valid(i).then(|| dropped.value(i)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_tagged_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let bands = Bands::default();
        let schema = arrow_schema("m", "pixels", &bands).unwrap();
        let keys: Vec<String> = ["a", "b", "c"].iter().map(|k| k.to_string()).collect();
        let rows = vec![
            Ok(6.5),
            Ok(3.0),
            Err(("source_error".to_string(), "x".to_string())),
        ];
        let batch = to_batch(&schema, "m", &bands, &keys, &rows).unwrap();
        let dest = dir.path().join("s.parquet");
        crate::write_table(table(), &dest, &[batch], schema.clone()).unwrap();
        let back: Vec<Score> = read(&dest, 10).unwrap().flat_map(|b| b.unwrap()).collect();
        assert_eq!(back[0].tag.as_deref(), Some("excellent score"));
        assert_eq!(back[0].dropped, Some(false));
        assert_eq!(
            (back[1].tag.as_deref(), back[1].dropped),
            (None, Some(true))
        );
        assert_eq!(back[2].status, "error");
        assert_eq!((back[2].score, back[2].dropped), (None, None));
    }
}
