//! Rows of the `latents` table (schemas/latents.json) as encode-latents
//! writes them and the trainer and `decode-latents` read them.

use arrow_array::cast::AsArray;
use arrow_array::types::UInt32Type;
use arrow_array::{Array, RecordBatch};

use crate::IoError;

/// The columns [`rows`] needs.
pub const COLUMNS: [&str; 7] = [
    "key",
    "status",
    "bucket_h",
    "bucket_w",
    "latent",
    "latent_shape",
    "latent_dtype",
];

/// One latent row (optional columns are read when the batch has them).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentRow {
    pub key: String,
    pub status: String,
    /// [C, H, W] when ok.
    pub shape: Option<[usize; 3]>,
    pub dtype: Option<String>,
    pub bytes: Option<Vec<u8>>,
    pub bucket: Option<(u32, u32)>,
    pub caption: Option<String>,
}

fn missing(name: &str) -> IoError {
    IoError::Invalid {
        what: format!("latents batch: column `{name}` missing or of the wrong type"),
    }
}

/// The rows of a batch read with (at least) [`COLUMNS`].
pub fn rows(batch: &RecordBatch) -> Result<Vec<LatentRow>, IoError> {
    let s = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing(n))
    };
    let u = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| missing(n))
    };
    let (key, status, dtype) = (s("key")?, s("status")?, s("latent_dtype")?);
    let (bh, bw) = (u("bucket_h")?, u("bucket_w")?);
    let latent = batch
        .column_by_name("latent")
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| missing("latent"))?;
    let shape = batch
        .column_by_name("latent_shape")
        .and_then(|c| c.as_fixed_size_list_opt())
        .ok_or_else(|| missing("latent_shape"))?;
    let caption = batch
        .column_by_name("caption")
        .and_then(|c| c.as_string_opt::<i32>());
    let opt_s =
        |a: &arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    Ok((0..batch.num_rows())
        .map(|i| LatentRow {
            key: key.value(i).to_string(),
            status: status.value(i).to_string(),
            shape: (!shape.is_null(i)).then(|| {
                let v = shape.value(i);
                let v = v.as_primitive::<UInt32Type>();
                [
                    v.value(0) as usize,
                    v.value(1) as usize,
                    v.value(2) as usize,
                ]
            }),
            dtype: opt_s(dtype, i),
            bytes: (!latent.is_null(i)).then(|| latent.value(i).to_vec()),
            bucket: (!bh.is_null(i) && !bw.is_null(i)).then(|| (bh.value(i), bw.value(i))),
            caption: caption.and_then(|c| opt_s(c, i)),
        })
        .collect())
}

impl LatentRow {
    /// The latent as f32, C·H·W values (little-endian bf16, f16 or f32 bytes).
    pub fn to_f32(&self) -> Result<Vec<f32>, IoError> {
        let bad = |why: String| IoError::Invalid {
            what: format!("latent of `{}`: {why}", self.key),
        };
        let (Some(bytes), Some(shape), Some(dtype)) = (&self.bytes, self.shape, &self.dtype) else {
            return Err(bad(format!("no latent (status {})", self.status)));
        };
        let n = shape.iter().product::<usize>();
        let width = match dtype.as_str() {
            "bf16" | "f16" => 2,
            "f32" => 4,
            other => return Err(bad(format!("dtype `{other}`, expected bf16, f16 or f32"))),
        };
        if bytes.len() != n * width {
            return Err(bad(format!(
                "{} bytes, expected {n} {dtype} values for shape {shape:?}",
                bytes.len()
            )));
        }
        Ok(match dtype.as_str() {
            "bf16" => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            "f16" => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}
