//! The `embeddings` table (schemas/embeddings.json): one L2-normalised
//! image embedding per row of the matching image shard, failures included.
//! `embed` writes it; `score --from-embeddings` and `dedup` read it.

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, SchemaRef};
use curate_core::schema::TableSchema;

use crate::status::{status_columns, Outcome};
use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("embeddings").expect("built-in schema")
}

/// Storage type of the `embedding` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    /// Its name in the schema metadata and the manifest (`f16`, `f32`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }

    fn item_type(self) -> DataType {
        match self {
            Dtype::F16 => DataType::Float16,
            Dtype::F32 => DataType::Float32,
        }
    }
}

/// What the schema's metadata records about the embeddings.
#[derive(Debug, Clone)]
pub struct EmbeddingsMeta {
    pub model: String,
    pub dim: usize,
    pub dtype: Dtype,
    /// The ONNX output tensor read.
    pub output: String,
}

fn list_field(dtype: Dtype) -> Arc<Field> {
    Arc::new(Field::new_list_field(dtype.item_type(), true))
}

/// The Arrow schema of a shard, with its metadata.
pub fn arrow_schema(meta: &EmbeddingsMeta) -> Result<SchemaRef, curate_core::CoreError> {
    let list = DataType::FixedSizeList(list_field(meta.dtype), meta.dim as i32);
    let s = table().arrow_schema_with(&[("embedding", list)])?;
    let mut m = s.metadata().clone();
    m.insert("model".to_string(), meta.model.clone());
    m.insert("dim".to_string(), meta.dim.to_string());
    m.insert("dtype".to_string(), meta.dtype.as_str().to_string());
    m.insert("normalized".to_string(), "true".to_string());
    m.insert("output".to_string(), meta.output.clone());
    Ok(Arc::new(s.with_metadata(m)))
}

/// One batch: per key, its (already normalised) embedding of `meta.dim`
/// values, or the failure. `schema` is [`arrow_schema`]`(meta)`.
pub fn to_batch(
    schema: &SchemaRef,
    meta: &EmbeddingsMeta,
    keys: &[String],
    rows: &[Outcome<Vec<f32>>],
) -> Result<RecordBatch, ArrowError> {
    let (n, dim) = (rows.len(), meta.dim);
    let mut values = Vec::with_capacity(n * dim);
    let mut valid = Vec::with_capacity(n);
    for (key, r) in keys.iter().zip(rows) {
        match r {
            Ok(e) if e.len() == dim => {
                values.extend_from_slice(e);
                valid.push(true);
            }
            Ok(e) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "key {key}: {} values, expected {dim}",
                    e.len()
                )))
            }
            Err(_) => {
                values.extend(std::iter::repeat_n(0f32, dim));
                valid.push(false);
            }
        }
    }
    let values: ArrayRef = match meta.dtype {
        Dtype::F32 => Arc::new(Float32Array::from(values)),
        Dtype::F16 => Arc::new(Float16Array::from(
            values
                .into_iter()
                .map(half::f16::from_f32)
                .collect::<Vec<_>>(),
        )),
    };
    let list = FixedSizeListArray::try_new(
        list_field(meta.dtype),
        dim as i32,
        values,
        Some(valid.into()),
    )?;
    let (status, reason, error) = status_columns(rows);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            keys.iter().map(String::as_str),
        )),
        status,
        reason,
        error,
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            meta.model.as_str(),
            n,
        ))),
        Arc::new(list),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// One row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub key: String,
    /// `ok` or `error`.
    pub status: String,
    pub model: String,
    /// The stored values as f32; `None` when the row failed.
    pub embedding: Option<Vec<f32>>,
}

impl Embedding {
    /// The embedding of an `ok` row.
    pub fn ok(&self) -> Option<&[f32]> {
        self.embedding.as_deref().filter(|_| self.status == "ok")
    }
}

/// A batch of rows read back, with the embeddings' dimension.
#[derive(Debug, Clone)]
pub struct EmbeddingBatch {
    pub dim: usize,
    pub rows: Vec<Embedding>,
}

/// The columns [`read`] reads.
pub const COLUMNS: [&str; 4] = ["key", "status", "model", "embedding"];

/// Streams an embeddings shard in batches of `batch_rows` rows (checked
/// against the table first): bounded memory however large the shard.
pub fn read(
    path: &Path,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<EmbeddingBatch, IoError>>, IoError> {
    let batches = crate::stream_columns(path, table(), &COLUMNS, batch_rows)?;
    let path = path.to_path_buf();
    Ok(batches.map(move |b| b.and_then(|b| from_batch(&path, &b))))
}

fn from_batch(path: &Path, batch: &RecordBatch) -> Result<EmbeddingBatch, IoError> {
    let s = |n: &str| crate::column::<StringArray>(path, batch, n);
    let (key, status, model) = (s("key")?, s("status")?, s("model")?);
    let emb = crate::column::<FixedSizeListArray>(path, batch, "embedding")?;
    let rows = (0..batch.num_rows())
        .map(|i| Embedding {
            key: key.value(i).to_string(),
            status: status.value(i).to_string(),
            model: model.value(i).to_string(),
            embedding: (!emb.is_null(i)).then(|| {
                let v = emb.value(i);
                match v.data_type() {
                    DataType::Float16 => v
                        .as_primitive::<Float16Type>()
                        .values()
                        .iter()
                        .map(|h| h.to_f32())
                        .collect(),
                    _ => v.as_primitive::<Float32Type>().values().to_vec(),
                }
            }),
        })
        .collect();
    Ok(EmbeddingBatch {
        dim: emb.value_length() as usize,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_are_read_back_failures_included() {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddingsMeta {
            model: "m".into(),
            dim: 2,
            dtype: Dtype::F16,
            output: "image_embeds".into(),
        };
        let schema = arrow_schema(&meta).unwrap();
        assert_eq!(schema.metadata()["dtype"], "f16");
        let keys = vec!["a".to_string(), "b".to_string()];
        let rows = vec![
            Ok(vec![0.6, 0.8]),
            Err(("undecodable".to_string(), "bad".to_string())),
        ];
        let batch = to_batch(&schema, &meta, &keys, &rows).unwrap();
        let dest = dir.path().join("s.parquet");
        crate::write_table(table(), &dest, &[batch], schema.clone()).unwrap();
        let back: Vec<EmbeddingBatch> = read(&dest, 10).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(back[0].dim, 2);
        let r = &back[0].rows;
        assert_eq!((r[0].key.as_str(), r[0].status.as_str()), ("a", "ok"));
        let e = r[0].ok().unwrap();
        assert!((e[0] - 0.6).abs() < 1e-3 && (e[1] - 0.8).abs() < 1e-3);
        assert_eq!(r[1].status, "error");
        assert!(r[1].ok().is_none() && r[1].embedding.is_none());
        assert!(to_batch(&schema, &meta, &keys[..1], &[Ok(vec![1.0])]).is_err());
    }
}
