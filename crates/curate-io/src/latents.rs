//! The `latents` table (schemas/latents.json): the one row type
//! [`LatentRow`] that encode-latents writes and the trainer and
//! `decode-latents` read, its typed writer ([`to_batch`], [`arrow_schema`]), its
//! readers ([`rows`], [`row_groups`], [`read_row_group`]) and the one
//! half-float decoder ([`decode`]).

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt16Type, UInt32Type};
use arrow_array::{
    new_null_array, Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, UInt16Array,
    UInt32Array,
};
use arrow_schema::{DataType, SchemaRef};
use curate_core::schema::TableSchema;
use parquet::arrow::ProjectionMask;

use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("latents").expect("built-in schema")
}

/// The columns [`rows`] needs (the others are read when a batch has them).
pub const COLUMNS: [&str; 7] = [
    "key",
    "status",
    "bucket_h",
    "bucket_w",
    "latent",
    "latent_shape",
    "latent_dtype",
];

/// Storage dtype of `latent` (the `latent_dtype` column and the `dtype` metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentDtype {
    Bf16,
    F16,
    F32,
}

impl LatentDtype {
    pub fn name(self) -> &'static str {
        match self {
            LatentDtype::Bf16 => "bf16",
            LatentDtype::F16 => "f16",
            LatentDtype::F32 => "f32",
        }
    }

    pub fn parse(name: &str) -> Option<LatentDtype> {
        match name {
            "bf16" => Some(LatentDtype::Bf16),
            "f16" => Some(LatentDtype::F16),
            "f32" => Some(LatentDtype::F32),
            _ => None,
        }
    }

    /// Bytes per value.
    pub fn width(self) -> usize {
        match self {
            LatentDtype::Bf16 | LatentDtype::F16 => 2,
            LatentDtype::F32 => 4,
        }
    }
}

/// One row of the `latents` table. A reader fills the optional columns a
/// batch holds (the others are `None`, `stage` 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatentRow {
    pub key: String,
    /// `ok` or `error`.
    pub status: String,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// Resolution stage: 256 or 512.
    pub stage: u16,
    /// (bucket_h, bucket_w).
    pub bucket: Option<(u32, u32)>,
    /// Little-endian [C, H, W] values in `dtype`.
    pub bytes: Option<Vec<u8>>,
    /// [C, H, W] when ok.
    pub shape: Option<[usize; 3]>,
    pub dtype: Option<String>,
    pub caption: Option<String>,
    pub caption_task: Option<String>,
    pub score: Option<f32>,
    pub tag: Option<String>,
    /// (orig_width, orig_height).
    pub orig: Option<(u32, u32)>,
    /// (resized_width, resized_height).
    pub resized: Option<(u32, u32)>,
    /// (crop_left, crop_top).
    pub crop: Option<(u32, u32)>,
}

impl LatentRow {
    /// An ok row of `values` ([C, H, W]) stored as `dtype` at stage 256,
    /// bucket H·8 × W·8 (tests and benchmarks).
    pub fn from_values(
        key: &str,
        caption: Option<String>,
        values: &[f32],
        shape: [usize; 3],
        dtype: LatentDtype,
    ) -> LatentRow {
        LatentRow {
            key: key.to_string(),
            status: "ok".into(),
            stage: 256,
            bucket: Some(((shape[1] * 8) as u32, (shape[2] * 8) as u32)),
            bytes: Some(encode(values, dtype)),
            shape: Some(shape),
            dtype: Some(dtype.name().to_string()),
            caption,
            ..Default::default()
        }
    }

    /// An error row of `reason` (the message is the reason too) at stage 256.
    pub fn failed(key: &str, caption: Option<String>, reason: &str) -> LatentRow {
        LatentRow {
            key: key.to_string(),
            status: "error".into(),
            reason: Some(reason.to_string()),
            error: Some(reason.to_string()),
            stage: 256,
            caption,
            ..Default::default()
        }
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }

    /// The latent as f32, C·H·W values.
    pub fn to_f32(&self) -> Result<Vec<f32>, IoError> {
        let (Some(bytes), Some(shape), Some(dtype)) = (&self.bytes, self.shape, &self.dtype) else {
            return Err(IoError::Invalid {
                what: format!(
                    "latent of `{}`: no latent (status {})",
                    self.key, self.status
                ),
            });
        };
        decode(bytes, dtype, shape.iter().product()).map_err(|e| IoError::Invalid {
            what: format!("latent of `{}`: {e} for shape {shape:?}", self.key),
        })
    }
}

/// Little-endian `dtype` bytes of `n` values → f32: the one bf16/f16/f32
/// decoder of the latents. The error says what was expected and found.
pub fn decode(bytes: &[u8], dtype: &str, n: usize) -> Result<Vec<f32>, String> {
    let kind = LatentDtype::parse(dtype)
        .ok_or_else(|| format!("latent_dtype `{dtype}`, expected bf16, f16 or f32"))?;
    if bytes.len() != n * kind.width() {
        return Err(format!(
            "{} bytes, expected {} ({n} {dtype} values)",
            bytes.len(),
            n * kind.width()
        ));
    }
    Ok(match kind {
        LatentDtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        LatentDtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        LatentDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}

/// f32 values → little-endian `dtype` bytes (round to nearest even).
pub fn encode(values: &[f32], dtype: LatentDtype) -> Vec<u8> {
    match dtype {
        LatentDtype::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        LatentDtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        LatentDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn missing(name: &str) -> IoError {
    IoError::Invalid {
        what: format!("latents batch: column `{name}` missing or of the wrong type"),
    }
}

/// The rows of a batch read with (at least) [`COLUMNS`].
pub fn rows(batch: &RecordBatch) -> Result<Vec<LatentRow>, IoError> {
    let col = |n: &str| batch.column_by_name(n);
    let s = |n: &str| {
        col(n)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing(n))
    };
    let u = |n: &str| {
        col(n)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| missing(n))
    };
    let opt_s = |n: &str| col(n).and_then(|c| c.as_string_opt::<i32>());
    let opt_u = |n: &str| col(n).and_then(|c| c.as_primitive_opt::<UInt32Type>());
    let (key, status, dtype) = (s("key")?, s("status")?, s("latent_dtype")?);
    let (bh, bw) = (u("bucket_h")?, u("bucket_w")?);
    let latent = col("latent").ok_or_else(|| missing("latent"))?;
    let latent_bytes = |i: usize| -> Option<Vec<u8>> {
        if latent.is_null(i) {
            return None;
        }
        match latent.as_binary_opt::<i32>() {
            Some(a) => Some(a.value(i).to_vec()),
            None => latent.as_binary_opt::<i64>().map(|a| a.value(i).to_vec()),
        }
    };
    if latent.as_binary_opt::<i32>().is_none() && latent.as_binary_opt::<i64>().is_none() {
        return Err(missing("latent"));
    }
    let shape = col("latent_shape")
        .and_then(|c| c.as_fixed_size_list_opt())
        .ok_or_else(|| missing("latent_shape"))?;
    let (reason, error, caption, task, tag) = (
        opt_s("reason"),
        opt_s("error"),
        opt_s("caption"),
        opt_s("caption_task"),
        opt_s("tag"),
    );
    let stage = col("stage").and_then(|c| c.as_primitive_opt::<UInt16Type>());
    let score = col("score").and_then(|c| c.as_primitive_opt::<Float32Type>());
    let pairs = |a: &str, b: &str| (opt_u(a), opt_u(b));
    let (ow, oh) = pairs("orig_width", "orig_height");
    let (rw, rh) = pairs("resized_width", "resized_height");
    let (cl, ct) = pairs("crop_left", "crop_top");
    let text = |a: Option<&arrow_array::StringArray>, i: usize| {
        a.and_then(|a| a.is_valid(i).then(|| a.value(i).to_string()))
    };
    let pair = |a: Option<&UInt32Array>, b: Option<&UInt32Array>, i: usize| match (a, b) {
        (Some(a), Some(b)) if a.is_valid(i) && b.is_valid(i) => Some((a.value(i), b.value(i))),
        _ => None,
    };
    Ok((0..batch.num_rows())
        .map(|i| LatentRow {
            key: key.value(i).to_string(),
            status: status.value(i).to_string(),
            reason: text(reason, i),
            error: text(error, i),
            stage: stage.map_or(0, |s| s.value(i)),
            bucket: pair(Some(bh), Some(bw), i),
            bytes: latent_bytes(i),
            shape: (!shape.is_null(i)).then(|| {
                let v = shape.value(i);
                let v = v.as_primitive::<UInt32Type>();
                [
                    v.value(0) as usize,
                    v.value(1) as usize,
                    v.value(2) as usize,
                ]
            }),
            dtype: text(Some(dtype), i),
            caption: text(caption, i),
            caption_task: text(task, i),
            score: score.and_then(|s| s.is_valid(i).then(|| s.value(i))),
            tag: text(tag, i),
            orig: pair(ow, oh, i),
            resized: pair(rw, rh, i),
            crop: pair(cl, ct, i),
        })
        .collect())
}

/// What a shard's schema metadata records about the encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentsMeta {
    /// latent = (z − shift_factor) × scale_factor.
    pub shift_factor: f64,
    pub scale_factor: f64,
    /// Model id or file name of the VAE weights.
    pub vae: String,
    /// `mean` or `mean-logvar`.
    pub store: String,
    pub dtype: LatentDtype,
    /// Resolution stage: 256 or 512.
    pub stage: u16,
    /// The stage's bucket table as JSON `[[h, w], …]`.
    pub buckets: String,
    pub seed: u64,
    pub max_upscale: f64,
    /// Caption task weights as a JSON object; empty when no captions were joined.
    pub caption_mix: String,
}

/// The table's Arrow schema, with `meta` as its metadata when given.
pub fn arrow_schema(meta: Option<&LatentsMeta>) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    if let Some(meta) = meta {
        for (k, v) in [
            ("shift_factor", meta.shift_factor.to_string()),
            ("scale_factor", meta.scale_factor.to_string()),
            ("vae", meta.vae.clone()),
            ("store", meta.store.clone()),
            ("dtype", meta.dtype.name().to_string()),
            ("stage", meta.stage.to_string()),
            ("buckets", meta.buckets.clone()),
            ("seed", meta.seed.to_string()),
            ("max_upscale", meta.max_upscale.to_string()),
            ("caption_mix", meta.caption_mix.clone()),
        ] {
            m.insert(k.to_string(), v);
        }
    }
    Ok(Arc::new(s.with_metadata(m)))
}

fn invalid(what: String) -> IoError {
    IoError::Invalid { what }
}

/// `rows` as one batch of `schema` (see [`arrow_schema`]); columns the
/// rows do not fill are null.
pub fn to_batch(rows: &[LatentRow], schema: &SchemaRef) -> Result<RecordBatch, IoError> {
    let strings = |f: &dyn Fn(&LatentRow) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let u32s = |f: &dyn Fn(&LatentRow) -> Option<u32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<UInt32Array>())
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let array: ArrayRef = match field.name().as_str() {
            "key" => strings(&|r| Some(&r.key)),
            "status" => strings(&|r| Some(&r.status)),
            "reason" => strings(&|r| r.reason.as_deref()),
            "error" => strings(&|r| r.error.as_deref()),
            "stage" => Arc::new(rows.iter().map(|r| r.stage).collect::<UInt16Array>()),
            "bucket_h" => u32s(&|r| r.bucket.map(|b| b.0)),
            "bucket_w" => u32s(&|r| r.bucket.map(|b| b.1)),
            "latent" => {
                let mut b = BinaryBuilder::new();
                for r in rows {
                    b.append_option(r.bytes.as_deref());
                }
                Arc::new(b.finish())
            }
            "latent_shape" => {
                let child = match field.data_type() {
                    DataType::FixedSizeList(f, 3) => f.clone(),
                    other => {
                        return Err(invalid(format!(
                        "latents schema: latent_shape is {other}, expected a fixed-size list of 3"
                    )))
                    }
                };
                let values: UInt32Array = rows
                    .iter()
                    .flat_map(|r| r.shape.unwrap_or([0; 3]))
                    .map(|d| Some(d as u32))
                    .collect();
                let nulls = arrow_buffer::NullBuffer::from(
                    rows.iter().map(|r| r.shape.is_some()).collect::<Vec<_>>(),
                );
                let list = FixedSizeListArray::try_new(child, 3, Arc::new(values), Some(nulls))
                    .map_err(|e| invalid(format!("latents batch: latent_shape: {e}")))?;
                Arc::new(list)
            }
            "latent_dtype" => strings(&|r| r.dtype.as_deref()),
            "caption" => strings(&|r| r.caption.as_deref()),
            "caption_task" => strings(&|r| r.caption_task.as_deref()),
            "score" => Arc::new(rows.iter().map(|r| r.score).collect::<Float32Array>()),
            "tag" => strings(&|r| r.tag.as_deref()),
            "orig_width" => u32s(&|r| r.orig.map(|o| o.0)),
            "orig_height" => u32s(&|r| r.orig.map(|o| o.1)),
            "resized_width" => u32s(&|r| r.resized.map(|o| o.0)),
            "resized_height" => u32s(&|r| r.resized.map(|o| o.1)),
            "crop_left" => u32s(&|r| r.crop.map(|o| o.0)),
            "crop_top" => u32s(&|r| r.crop.map(|o| o.1)),
            _ => new_null_array(field.data_type(), rows.len()),
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| invalid(format!("latents batch: {e}")))
}

fn checked(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder<std::fs::File>, IoError> {
    crate::open_checked(path, table())
}

/// Row groups of the latents shard at `path` (checked against the table).
/// Every row group holds one bucket.
pub fn row_groups(path: &Path) -> Result<usize, IoError> {
    Ok(checked(path)?.metadata().num_row_groups())
}

/// One schema metadata value of the latents shard at `path` (see [`LatentsMeta`]).
pub fn metadata(path: &Path, key: &str) -> Result<Option<String>, IoError> {
    Ok(checked(path)?.schema().metadata().get(key).cloned())
}

/// Some columns of row group `row_group` of the latents shard at `path`.
pub fn read_row_group(
    path: &Path,
    row_group: usize,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, IoError> {
    let builder = checked(path)?;
    let mut idx = Vec::with_capacity(columns.len());
    for c in columns {
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
    builder
        .with_row_groups(vec![row_group])
        .with_projection(mask)
        .build()
        .map_err(|source| IoError::Parquet {
            path: path.to_path_buf(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IoError::Arrow {
            path: path.to_path_buf(),
            source,
        })
}

/// Per row of row group `row_group`: the latent's [C, H, W] when the row is
/// ok and has a shape, else `None` (reads only `status` and `latent_shape`).
pub fn ok_shapes(path: &Path, row_group: usize) -> Result<Vec<Option<[usize; 3]>>, IoError> {
    let mut out = Vec::new();
    for batch in read_row_group(path, row_group, &["status", "latent_shape"])? {
        let status = batch
            .column_by_name("status")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing("status"))?;
        let shape = batch
            .column_by_name("latent_shape")
            .and_then(|c| c.as_fixed_size_list_opt())
            .ok_or_else(|| missing("latent_shape"))?;
        out.extend((0..batch.num_rows()).map(|r| {
            (status.value(r) == "ok" && shape.is_valid(r)).then(|| {
                let v = shape.value(r);
                let v = v.as_primitive::<UInt32Type>();
                [
                    v.value(0) as usize,
                    v.value(1) as usize,
                    v.value(2) as usize,
                ]
            })
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_batch() {
        let mut ok = LatentRow::from_values(
            "a",
            Some("cap".into()),
            &[0.5, -1.0, 2.0, 0.0],
            [1, 2, 2],
            LatentDtype::Bf16,
        );
        ok.score = Some(5.5);
        ok.crop = Some((3, 4));
        let bad = LatentRow::failed("b", None, "inference");
        let batch = to_batch(&[ok.clone(), bad.clone()], &arrow_schema(None).unwrap()).unwrap();
        let back = rows(&batch).unwrap();
        assert_eq!(back, vec![ok.clone(), bad]);
        assert_eq!(back[0].to_f32().unwrap(), vec![0.5, -1.0, 2.0, 0.0]);
    }

    #[test]
    fn decode_names_what_is_wrong() {
        assert!(decode(&[0; 3], "bf16", 2).unwrap_err().contains("3 bytes"));
        assert!(decode(&[0; 4], "f64", 2).unwrap_err().contains("f64"));
        let f16 = encode(&[1.5, -2.0], LatentDtype::F16);
        assert_eq!(decode(&f16, "f16", 2).unwrap(), vec![1.5, -2.0]);
    }
}
