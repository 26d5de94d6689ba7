//! The `text_embeddings` table (schemas/text_embeddings.json): the frozen
//! T5 encoder's hidden states of each training text, written by
//! `encode-text` and read by the trainer. Shard `s` mirrors latents shard
//! `s` row for row (same keys, same order), so a latents row group's texts
//! are one row range of the text shard ([`read_range`]); the empty text of
//! caption dropout is the one row of [`UNCONDITIONAL_FILE`].

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{new_null_array, Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::SchemaRef;
use curate_core::schema::TableSchema;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};

use crate::latents::LatentDtype;
use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("text_embeddings").expect("built-in schema")
}

/// The stage-level file holding the encoding of the empty text (key "").
pub const UNCONDITIONAL_FILE: &str = "unconditional.parquet";

/// What a shard's schema metadata records about the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMeta {
    pub model: String,
    pub d_model: usize,
    pub max_length: usize,
    pub dtype: LatentDtype,
    /// The latents stage folder the rows mirror.
    pub latents: String,
}

impl TextMeta {
    /// Reads the metadata of the shard at `path` (checked against the table).
    pub fn read(path: &Path) -> Result<TextMeta, IoError> {
        let builder = checked(path)?;
        let m = builder.schema().metadata();
        let get = |k: &str| -> Result<String, IoError> {
            m.get(k).cloned().ok_or_else(|| IoError::Invalid {
                what: format!(
                    "{}: no `{k}` in the text_embeddings metadata",
                    path.display()
                ),
            })
        };
        let num = |k: &str| -> Result<usize, IoError> {
            get(k)?.parse().map_err(|_| IoError::Invalid {
                what: format!("{}: `{k}` is not a number", path.display()),
            })
        };
        let dtype = get("dtype")?;
        Ok(TextMeta {
            model: get("model")?,
            d_model: num("d_model")?,
            max_length: num("max_length")?,
            dtype: LatentDtype::parse(&dtype).ok_or_else(|| IoError::Invalid {
                what: format!("{}: dtype `{dtype}`, expected bf16 or f32", path.display()),
            })?,
            latents: get("latents")?,
        })
    }
}

/// The table's Arrow schema with `meta` as its metadata.
pub fn arrow_schema(meta: &TextMeta) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    for (k, v) in [
        ("model", meta.model.clone()),
        ("d_model", meta.d_model.to_string()),
        ("max_length", meta.max_length.to_string()),
        ("dtype", meta.dtype.name().to_string()),
        ("latents", meta.latents.clone()),
    ] {
        m.insert(k.to_string(), v);
    }
    Ok(Arc::new(s.with_metadata(m)))
}

/// One row of the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextRow {
    pub key: String,
    /// `ok` or `error`.
    pub status: String,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub caption: Option<String>,
    pub num_tokens: Option<u32>,
    /// Little-endian [num_tokens, d_model] values in `dtype`.
    pub hidden: Option<Vec<u8>>,
    pub dtype: Option<String>,
}

impl TextRow {
    /// An ok row of `values` ([num_tokens, d_model] row-major) stored as `dtype`.
    pub fn ok(key: &str, caption: &str, values: &[f32], tokens: usize, dtype: LatentDtype) -> Self {
        TextRow {
            key: key.to_string(),
            status: "ok".into(),
            caption: Some(caption.to_string()),
            num_tokens: Some(tokens as u32),
            hidden: Some(crate::latents::encode(values, dtype)),
            dtype: Some(dtype.name().to_string()),
            ..Default::default()
        }
    }

    /// An error row: `reason` (see the schema) and its message.
    pub fn failed(key: &str, caption: Option<String>, reason: &str, error: String) -> Self {
        TextRow {
            key: key.to_string(),
            status: "error".into(),
            reason: Some(reason.to_string()),
            error: Some(error),
            caption,
            ..Default::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }

    /// The hidden states as f32, `num_tokens × d_model` values.
    pub fn to_f32(&self, d_model: usize) -> Result<Vec<f32>, IoError> {
        let (Some(bytes), Some(n), Some(dtype)) = (&self.hidden, self.num_tokens, &self.dtype)
        else {
            return Err(IoError::Invalid {
                what: format!(
                    "text of `{}`: no hidden states (status {})",
                    self.key, self.status
                ),
            });
        };
        crate::latents::decode(bytes, dtype, n as usize * d_model).map_err(|e| IoError::Invalid {
            what: format!(
                "text of `{}`: {e} for {n} tokens × {d_model} wide",
                self.key
            ),
        })
    }
}

/// `rows` as one batch of `schema` (see [`arrow_schema`]).
pub fn to_batch(rows: &[TextRow], schema: &SchemaRef) -> Result<RecordBatch, IoError> {
    let strings = |f: &dyn Fn(&TextRow) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let array: ArrayRef = match field.name().as_str() {
            "key" => strings(&|r| Some(&r.key)),
            "status" => strings(&|r| Some(&r.status)),
            "reason" => strings(&|r| r.reason.as_deref()),
            "error" => strings(&|r| r.error.as_deref()),
            "caption" => strings(&|r| r.caption.as_deref()),
            "num_tokens" => Arc::new(rows.iter().map(|r| r.num_tokens).collect::<UInt32Array>()),
            "hidden" => {
                let mut b = BinaryBuilder::new();
                for r in rows {
                    b.append_option(r.hidden.as_deref());
                }
                Arc::new(b.finish())
            }
            "dtype" => strings(&|r| r.dtype.as_deref()),
            _ => new_null_array(field.data_type(), rows.len()),
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| IoError::Invalid {
        what: format!("text_embeddings batch: {e}"),
    })
}

fn missing(name: &str) -> IoError {
    IoError::Invalid {
        what: format!("text_embeddings batch: column `{name}` missing or of the wrong type"),
    }
}

/// The rows of a batch of the table.
pub fn rows(batch: &RecordBatch) -> Result<Vec<TextRow>, IoError> {
    let col = |n: &str| batch.column_by_name(n).ok_or_else(|| missing(n));
    let s = |n: &str| -> Result<&arrow_array::StringArray, IoError> {
        col(n)?.as_string_opt::<i32>().ok_or_else(|| missing(n))
    };
    let (key, status, reason, error, caption, dtype) = (
        s("key")?,
        s("status")?,
        s("reason")?,
        s("error")?,
        s("caption")?,
        s("dtype")?,
    );
    let tokens = col("num_tokens")?
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| missing("num_tokens"))?;
    let hidden = col("hidden")?;
    let bin32 = hidden.as_binary_opt::<i32>();
    let bin64 = hidden.as_binary_opt::<i64>();
    if bin32.is_none() && bin64.is_none() {
        return Err(missing("hidden"));
    }
    let text =
        |a: &arrow_array::StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    Ok((0..batch.num_rows())
        .map(|i| TextRow {
            key: key.value(i).to_string(),
            status: status.value(i).to_string(),
            reason: text(reason, i),
            error: text(error, i),
            caption: text(caption, i),
            num_tokens: tokens.is_valid(i).then(|| tokens.value(i)),
            hidden: hidden.is_valid(i).then(|| match (bin32, bin64) {
                (Some(a), _) => a.value(i).to_vec(),
                (None, Some(a)) => a.value(i).to_vec(),
                (None, None) => Vec::new(),
            }),
            dtype: text(dtype, i),
        })
        .collect())
}

fn checked(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<std::fs::File>, IoError> {
    crate::open_checked(path, table())
}

/// Rows `range` (positions in the shard) of the text shard at `path`,
/// reading only the row groups that hold them.
pub fn read_range(path: &Path, range: Range<u64>) -> Result<Vec<TextRow>, IoError> {
    let builder = checked(path)?;
    let total = builder.metadata().file_metadata().num_rows() as u64;
    if range.end > total {
        return Err(IoError::Invalid {
            what: format!(
                "{}: rows {}..{} wanted, the shard holds {total}",
                path.display(),
                range.start,
                range.end
            ),
        });
    }
    let mut groups = Vec::new();
    let mut first = None;
    let mut start = 0u64;
    for (g, rg) in builder.metadata().row_groups().iter().enumerate() {
        let end = start + rg.num_rows() as u64;
        if end > range.start && start < range.end {
            first.get_or_insert(start);
            groups.push(g);
        }
        start = end;
    }
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let skip = (range.start - first) as usize;
    let take = (range.end - range.start) as usize;
    let selection = RowSelection::from(vec![RowSelector::skip(skip), RowSelector::select(take)]);
    let reader = builder
        .with_row_groups(groups)
        .with_row_selection(selection)
        .build()
        .map_err(|source| IoError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let mut out = Vec::with_capacity(take);
    for b in reader {
        let b = b.map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        out.extend(rows(&b)?);
    }
    Ok(out)
}

/// Every row of the (small) file at `path`.
pub fn read_all(path: &Path) -> Result<Vec<TextRow>, IoError> {
    let n = crate::row_count(path)?;
    read_range(path, 0..n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TextMeta {
        TextMeta {
            model: "t5-tiny".into(),
            d_model: 2,
            max_length: 8,
            dtype: LatentDtype::Bf16,
            latents: "lat".into(),
        }
    }

    #[test]
    fn a_row_range_spanning_row_groups_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let schema = arrow_schema(&meta()).unwrap();
        let rows: Vec<TextRow> = (0..10)
            .map(|i| {
                if i == 4 {
                    TextRow::failed("k4", None, "no_caption", "no caption".into())
                } else {
                    let v = vec![i as f32, -(i as f32), 0.5, 1.0];
                    TextRow::ok(&format!("k{i}"), "a cat", &v, 2, LatentDtype::Bf16)
                }
            })
            .collect();
        let batches: Vec<RecordBatch> = rows
            .chunks(3)
            .map(|c| to_batch(c, &schema).unwrap())
            .collect();
        let dest = tmp.path().join("t.parquet");
        crate::write_table(table(), &dest, &batches, schema).unwrap();
        assert_eq!(TextMeta::read(&dest).unwrap(), meta());
        let got = read_range(&dest, 2..8).unwrap();
        assert_eq!(got, rows[2..8].to_vec());
        assert_eq!(got[0].to_f32(2).unwrap(), vec![2.0, -2.0, 0.5, 1.0]);
        assert!(got[2].to_f32(2).unwrap_err().to_string().contains("k4"));
        assert!(read_range(&dest, 8..11).is_err());
    }
}
