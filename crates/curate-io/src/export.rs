//! What `curate export` writes: its own index table (`export_index`,
//! schemas/export_index.json, one per shard) and the files other tools
//! read, which are not curate tables: Hugging Face datasets parquet files
//! (an `Image` feature in the `huggingface` schema metadata) and
//! img2dataset's per-tar sidecar parquet.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use curate_core::schema::TableSchema;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::IoError;

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("export_index").expect("built-in schema")
}

/// One row of the index: where a sample went, or why it did not.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub key: String,
    /// `Ok(file)` or `Err((reason, message))`.
    pub result: Result<String, (String, String)>,
}

/// The index table's Arrow schema, with the format in its metadata.
pub fn index_schema(format: &str) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    m.insert("format".to_string(), format.to_string());
    Ok(Arc::new(s.with_metadata(m)))
}

/// One index batch.
pub fn index_batch(schema: &SchemaRef, rows: &[IndexRow]) -> Result<RecordBatch, IoError> {
    let text = |f: &dyn Fn(&IndexRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let columns = vec![
        text(&|r| Some(r.key.as_str())),
        text(&|r| Some(if r.result.is_ok() { "ok" } else { "error" })),
        text(&|r| r.result.as_ref().err().map(|e| e.0.as_str())),
        text(&|r| r.result.as_ref().err().map(|e| e.1.as_str())),
        text(&|r| r.result.as_ref().ok().map(String::as_str)),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| IoError::Arrow {
        path: PathBuf::from("export index"),
        source,
    })
}

/// One exported sample, as the formats need it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub key: String,
    pub bytes: Vec<u8>,
    /// File extension of the bytes: `jpg`, `png`, `webp`, …
    pub ext: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub url: Option<String>,
    /// The training text: a caption and the quality tag.
    pub text: Option<String>,
    /// Every caption by task (`caption`, `detailed`, `more-detailed`).
    pub captions: Vec<(String, String)>,
    pub score: Option<f32>,
    pub tag: Option<String>,
}

impl Sample {
    pub fn caption(&self, task: &str) -> Option<&str> {
        self.captions
            .iter()
            .find(|(t, _)| t == task)
            .map(|(_, c)| c.as_str())
    }
}

fn parquet_writer(tmp: &Path, schema: SchemaRef) -> Result<ArrowWriter<File>, IoError> {
    let file = File::create(tmp).map_err(|source| IoError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    ArrowWriter::try_new(file, schema, Some(props)).map_err(|source| IoError::Parquet {
        path: tmp.to_path_buf(),
        source,
    })
}

/// A parquet file other tools read, written under `tmp` and renamed to `dest` on finish.
pub struct ForeignParquet {
    tmp: PathBuf,
    dest: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
}

impl ForeignParquet {
    pub fn create(tmp: &Path, dest: &Path, schema: SchemaRef) -> Result<Self, IoError> {
        Ok(ForeignParquet {
            writer: parquet_writer(tmp, schema.clone())?,
            tmp: tmp.to_path_buf(),
            dest: dest.to_path_buf(),
            schema,
        })
    }

    /// Writes a batch as one row group.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), IoError> {
        let err = |source| IoError::Parquet {
            path: self.tmp.clone(),
            source,
        };
        self.writer.write(batch).map_err(err)?;
        self.writer.flush().map_err(|source| IoError::Parquet {
            path: self.tmp.clone(),
            source,
        })
    }

    /// Bytes on disk so far.
    pub fn bytes(&self) -> usize {
        self.writer.bytes_written()
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Closes the file and renames it into place.
    pub fn finish(self) -> Result<(), IoError> {
        self.writer.close().map_err(|source| IoError::Parquet {
            path: self.tmp.clone(),
            source,
        })?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| IoError::Io {
            path: self.dest.clone(),
            source,
        })
    }
}

/// The caption tasks a Hugging Face export has a column for.
pub const CAPTION_TASKS: [&str; 3] = ["caption", "detailed", "more-detailed"];

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

/// The Hugging Face datasets schema: `image` as `struct<bytes, path>`, the
/// texts, score, tag, size, url and key, and the `huggingface` metadata that
/// makes `datasets` read `image` as an `Image` feature.
pub fn hf_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("image", DataType::Struct(image_fields()), true),
        Field::new("text", DataType::Utf8, true),
    ];
    for t in CAPTION_TASKS {
        fields.push(Field::new(t, DataType::Utf8, true));
    }
    fields.extend([
        Field::new("aesthetic_score", DataType::Float32, true),
        Field::new("quality_tag", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, false),
    ]);
    let value = |dtype: &str| serde_json::json!({"dtype": dtype, "_type": "Value"});
    let mut features = serde_json::Map::new();
    features.insert("image".into(), serde_json::json!({"_type": "Image"}));
    features.insert("text".into(), value("string"));
    for t in CAPTION_TASKS {
        features.insert(t.into(), value("string"));
    }
    features.insert("aesthetic_score".into(), value("float32"));
    features.insert("quality_tag".into(), value("string"));
    features.insert("width".into(), value("uint32"));
    features.insert("height".into(), value("uint32"));
    features.insert("url".into(), value("string"));
    features.insert("key".into(), value("string"));
    let meta = serde_json::json!({"info": {"features": features}});
    let mut m = std::collections::HashMap::new();
    m.insert("huggingface".to_string(), meta.to_string());
    Arc::new(Schema::new(fields).with_metadata(m))
}

fn texts<'a>(samples: &'a [Sample], f: impl Fn(&'a Sample) -> Option<&'a str>) -> ArrayRef {
    Arc::new(samples.iter().map(f).collect::<StringArray>())
}

/// One Hugging Face batch.
pub fn hf_batch(schema: &SchemaRef, samples: &[Sample]) -> Result<RecordBatch, IoError> {
    let mut image = StructBuilder::new(
        image_fields(),
        vec![
            Box::new(BinaryBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    );
    for s in samples {
        image
            .field_builder::<BinaryBuilder>(0)
            .expect("bytes builder")
            .append_value(&s.bytes);
        image
            .field_builder::<StringBuilder>(1)
            .expect("path builder")
            .append_value(format!("{}.{}", s.key, s.ext));
        image.append(true);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(image.finish()),
        texts(samples, |s| s.text.as_deref()),
    ];
    for t in CAPTION_TASKS {
        columns.push(texts(samples, move |s| s.caption(t)));
    }
    columns.extend([
        Arc::new(samples.iter().map(|s| s.score).collect::<Float32Array>()) as ArrayRef,
        texts(samples, |s| s.tag.as_deref()),
        Arc::new(samples.iter().map(|s| s.width).collect::<UInt32Array>()),
        Arc::new(samples.iter().map(|s| s.height).collect::<UInt32Array>()),
        texts(samples, |s| s.url.as_deref()),
        texts(samples, |s| Some(s.key.as_str())),
    ]);
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| IoError::Arrow {
        path: PathBuf::from("hf batch"),
        source,
    })
}

/// img2dataset's sidecar parquet schema (one row per sample of the tar).
pub fn sidecar_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("url", DataType::Utf8, true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("key", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("aesthetic_score", DataType::Float32, true),
        Field::new("quality_tag", DataType::Utf8, true),
    ]))
}

/// One sidecar batch.
pub fn sidecar_batch(schema: &SchemaRef, samples: &[Sample]) -> Result<RecordBatch, IoError> {
    let columns: Vec<ArrayRef> = vec![
        texts(samples, |s| s.url.as_deref()),
        texts(samples, |s| s.text.as_deref()),
        texts(samples, |s| Some(s.key.as_str())),
        texts(samples, |_| Some("success")),
        texts(samples, |_| None),
        Arc::new(samples.iter().map(|s| s.width).collect::<UInt32Array>()),
        Arc::new(samples.iter().map(|s| s.height).collect::<UInt32Array>()),
        Arc::new(samples.iter().map(|s| s.score).collect::<Float32Array>()),
        texts(samples, |s| s.tag.as_deref()),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|source| IoError::Arrow {
        path: PathBuf::from("sidecar batch"),
        source,
    })
}
