//! Table schemas as data.
//!
//! Every table a stage writes is described by `schemas/<name>.json` (see
//! `schemas/README.md` for the format). The files are compiled into the
//! binary, so a shard is always checked against the schema of the curate
//! version that reads it. Readers refuse a shard whose schema version differs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Parquet/Arrow metadata key holding the table name.
pub const META_SCHEMA: &str = "curate.schema";
/// Parquet/Arrow metadata key holding the table version.
pub const META_SCHEMA_VERSION: &str = "curate.schema_version";

/// The JSON files compiled in, by table name.
const BUILTIN: &[(&str, &str)] = &[
    ("url_list", include_str!("../../../schemas/url_list.json")),
    ("images", include_str!("../../../schemas/images.json")),
    (
        "exact_duplicates",
        include_str!("../../../schemas/exact_duplicates.json"),
    ),
    (
        "embeddings",
        include_str!("../../../schemas/embeddings.json"),
    ),
    (
        "dedup_clusters",
        include_str!("../../../schemas/dedup_clusters.json"),
    ),
    (
        "dedup_keep",
        include_str!("../../../schemas/dedup_keep.json"),
    ),
    ("captions", include_str!("../../../schemas/captions.json")),
    ("scores", include_str!("../../../schemas/scores.json")),
    ("latents", include_str!("../../../schemas/latents.json")),
    (
        "export_index",
        include_str!("../../../schemas/export_index.json"),
    ),
    (
        "text_embeddings",
        include_str!("../../../schemas/text_embeddings.json"),
    ),
    (
        "train_metrics",
        include_str!("../../../schemas/train_metrics.json"),
    ),
];

/// One table schema, as stored in `schemas/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub name: String,
    pub version: u32,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<Vec<String>>,
    pub fields: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TypeSpec,
    pub nullable: bool,
    pub description: String,
}

/// A type string, or a list of alternatives (a stage option picks one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TypeSpec {
    One(String),
    AnyOf(Vec<String>),
}

impl TypeSpec {
    pub fn alternatives(&self) -> Vec<&str> {
        match self {
            TypeSpec::One(s) => vec![s.as_str()],
            TypeSpec::AnyOf(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A parsed column type. `FixedSizeList` with `size: None` accepts any size.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnType {
    Primitive(DataType),
    List(DataType),
    FixedSizeList { item: DataType, size: Option<i32> },
}

impl ColumnType {
    /// Parses the grammar of `schemas/README.md`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(inner) = strip_generic(s, "list") {
            return Ok(ColumnType::List(parse_primitive(inner)?));
        }
        if let Some(inner) = strip_generic(s, "fixed_size_list") {
            let (item, size) = inner
                .split_once(',')
                .ok_or_else(|| format!("`{s}`: expected fixed_size_list<T,N> or <T,*>"))?;
            let size = match size.trim() {
                "*" => None,
                n => Some(
                    n.parse::<i32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("`{s}`: size must be a positive integer or *"))?,
                ),
            };
            return Ok(ColumnType::FixedSizeList {
                item: parse_primitive(item)?,
                size,
            });
        }
        Ok(ColumnType::Primitive(parse_primitive(s)?))
    }

    /// The Arrow type; `size` fills a `fixed_size_list<T,*>`.
    pub fn to_arrow(&self, size: Option<i32>) -> Result<DataType, String> {
        Ok(match self {
            ColumnType::Primitive(t) => t.clone(),
            ColumnType::List(t) => DataType::List(Arc::new(Field::new_list_field(t.clone(), true))),
            ColumnType::FixedSizeList { item, size: fixed } => {
                let n = fixed.or(size).ok_or("fixed_size_list<T,*> needs a size")?;
                DataType::FixedSizeList(Arc::new(Field::new_list_field(item.clone(), true)), n)
            }
        })
    }

    /// Whether an Arrow type is an instance of this column type.
    /// List item field names and nullability are not compared.
    pub fn accepts(&self, actual: &DataType) -> bool {
        match (self, actual) {
            (ColumnType::Primitive(t), a) => t == a,
            (ColumnType::List(t), DataType::List(f) | DataType::LargeList(f)) => f.data_type() == t,
            (ColumnType::FixedSizeList { item, size }, DataType::FixedSizeList(f, n)) => {
                f.data_type() == item && size.is_none_or(|s| s == *n)
            }
            _ => false,
        }
    }
}

fn strip_generic<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    s.strip_prefix(name)?
        .trim()
        .strip_prefix('<')?
        .strip_suffix('>')
}

fn parse_primitive(s: &str) -> Result<DataType, String> {
    Ok(match s.trim() {
        "bool" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" => DataType::Int32,
        "int64" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float16" => DataType::Float16,
        "float32" => DataType::Float32,
        "float64" => DataType::Float64,
        "utf8" => DataType::Utf8,
        "binary" => DataType::Binary,
        "large_binary" => DataType::LargeBinary,
        "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, None),
        other => return Err(format!("unknown type `{other}`")),
    })
}

impl TableSchema {
    /// Parses and validates a schema document.
    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        let schema: TableSchema =
            serde_json::from_str(text).map_err(|e| CoreError::SchemaDefinition {
                schema: "<unparsed>".into(),
                message: e.to_string(),
            })?;
        schema.validate()?;
        Ok(schema)
    }

    fn validate(&self) -> Result<(), CoreError> {
        let err = |message: String| CoreError::SchemaDefinition {
            schema: self.name.clone(),
            message,
        };
        if self.version == 0 {
            return Err(err("version starts at 1".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fields {
            if !seen.insert(&f.name) {
                return Err(err(format!("field `{}` appears twice", f.name)));
            }
            for alt in f.ty.alternatives() {
                ColumnType::parse(alt).map_err(|m| err(format!("field `{}`: {m}", f.name)))?;
            }
        }
        if let Some(key) = &self.key {
            if !self.fields.iter().any(|f| &f.name == key) {
                return Err(err(format!("key `{key}` is not a field")));
            }
        }
        Ok(())
    }

    /// Index of a field by name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The Arrow schema, taking the first alternative of each field.
    /// `fixed_size_list<T,*>` fields need [`TableSchema::arrow_schema_with`].
    pub fn arrow_schema(&self) -> Result<Schema, CoreError> {
        self.arrow_schema_with(&[])
    }

    /// The Arrow schema with the given fields' types chosen by the writer
    /// (an alternative, or the size of a `fixed_size_list<T,*>`).
    pub fn arrow_schema_with(&self, chosen: &[(&str, DataType)]) -> Result<Schema, CoreError> {
        let mut fields = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let dt = match chosen.iter().find(|(n, _)| *n == f.name) {
                Some((_, dt)) => {
                    if !self.accepts(f, dt) {
                        return Err(CoreError::SchemaDefinition {
                            schema: self.name.clone(),
                            message: format!("field `{}` cannot be {dt}", f.name),
                        });
                    }
                    dt.clone()
                }
                None => ColumnType::parse(f.ty.alternatives()[0])
                    .and_then(|t| t.to_arrow(None))
                    .map_err(|m| CoreError::SchemaDefinition {
                        schema: self.name.clone(),
                        message: format!("field `{}`: {m}", f.name),
                    })?,
            };
            fields.push(Field::new(&f.name, dt, f.nullable));
        }
        let metadata = HashMap::from([
            (META_SCHEMA.to_string(), self.name.clone()),
            (META_SCHEMA_VERSION.to_string(), self.version.to_string()),
        ]);
        Ok(Schema::new_with_metadata(fields, metadata))
    }

    fn accepts(&self, f: &FieldSpec, dt: &DataType) -> bool {
        f.ty.alternatives()
            .iter()
            .filter_map(|a| ColumnType::parse(a).ok())
            .any(|t| t.accepts(dt))
    }

    /// Checks an Arrow schema (of a batch being written) against this table:
    /// same fields in the same order, each type one of the alternatives,
    /// and version metadata, when present, equal. `null_counts` (one per
    /// field, when known) catches nulls in non-nullable fields.
    pub fn check(&self, actual: &Schema, null_counts: Option<&[usize]>) -> Result<(), CoreError> {
        self.check_fields(actual, null_counts, false)
    }

    /// Checks a shard being read: as [`check`](Self::check), but a shard
    /// written before nullable fields were appended to this version (a
    /// prefix of the fields, the rest nullable) is accepted.
    pub fn check_readable(&self, actual: &Schema) -> Result<(), CoreError> {
        self.check_fields(actual, None, true)
    }

    fn check_fields(
        &self,
        actual: &Schema,
        null_counts: Option<&[usize]>,
        allow_missing_trailing_nullable: bool,
    ) -> Result<(), CoreError> {
        let mut problems = Vec::new();
        if let Some(v) = actual.metadata().get(META_SCHEMA_VERSION) {
            if v != &self.version.to_string() {
                problems.push(format!(
                    "schema version {v} (this curate reads {})",
                    self.version
                ));
            }
        }
        if let Some(n) = actual.metadata().get(META_SCHEMA) {
            if n != &self.name {
                problems.push(format!("table `{n}`"));
            }
        }
        let expected: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        let found: Vec<&str> = actual.fields().iter().map(|f| f.name().as_str()).collect();
        let older_prefix = allow_missing_trailing_nullable
            && found.len() < expected.len()
            && expected[..found.len()] == found[..]
            && self.fields[found.len()..].iter().all(|f| f.nullable);
        if expected != found && !older_prefix {
            problems.push(format!(
                "columns [{}], expected [{}]",
                found.join(", "),
                expected.join(", ")
            ));
        } else {
            for (i, (spec, field)) in self.fields.iter().zip(actual.fields()).enumerate() {
                if !self.accepts(spec, field.data_type()) {
                    problems.push(format!(
                        "`{}` has type {}, expected {}",
                        spec.name,
                        field.data_type(),
                        spec.ty.alternatives().join(" | ")
                    ));
                }
                if !spec.nullable && null_counts.is_some_and(|n| n.get(i).copied().unwrap_or(0) > 0)
                {
                    problems.push(format!("`{}` holds nulls but is not nullable", spec.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CoreError::SchemaMismatch {
                schema: self.name.clone(),
                version: self.version,
                problems: problems.join("; "),
            })
        }
    }
}

/// All compiled-in schemas, by name.
pub fn registry() -> &'static [TableSchema] {
    static REGISTRY: OnceLock<Vec<TableSchema>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        BUILTIN
            .iter()
            .map(|(name, text)| {
                let s = TableSchema::from_json(text)
                    .unwrap_or_else(|e| panic!("schemas/{name}.json is invalid: {e}"));
                assert_eq!(
                    &s.name, name,
                    "schemas/{name}.json names itself `{}`",
                    s.name
                );
                s
            })
            .collect()
    })
}

/// A compiled-in schema by name.
pub fn get(name: &str) -> Result<&'static TableSchema, CoreError> {
    registry()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| CoreError::UnknownSchema {
            name: name.to_string(),
            known: registry()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The names of the compiled-in schema files (for the test that every
/// `schemas/*.json` is registered).
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_is_compiled_in_and_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                (p.extension()? == "json").then(|| p.file_stem().unwrap().to_string_lossy().into())
            })
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = builtin_names().map(String::from).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled);
        assert_eq!(registry().len(), compiled.len());
    }

    #[test]
    fn json_round_trips() {
        for s in registry() {
            let text = serde_json::to_string_pretty(s).unwrap();
            let back = TableSchema::from_json(&text).unwrap();
            assert_eq!(&back, s, "{} does not round-trip", s.name);
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(
            ColumnType::parse("utf8").unwrap(),
            ColumnType::Primitive(DataType::Utf8)
        );
        assert_eq!(
            ColumnType::parse("list<float32>").unwrap(),
            ColumnType::List(DataType::Float32)
        );
        assert_eq!(
            ColumnType::parse("fixed_size_list<float16, *>").unwrap(),
            ColumnType::FixedSizeList {
                item: DataType::Float16,
                size: None
            }
        );
        assert!(ColumnType::parse("fixed_size_list<float16,0>").is_err());
        assert!(ColumnType::parse("string").is_err());
        let any = ColumnType::parse("fixed_size_list<float32,*>").unwrap();
        assert!(any.accepts(&any.to_arrow(Some(768)).unwrap()));
        assert!(!any.accepts(&DataType::Float32));
    }

    #[test]
    fn check_names_what_differs() {
        let s = get("images").unwrap();
        let mut schema = s.arrow_schema().unwrap();
        assert!(s.check(&schema, None).is_ok());
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[0] = Field::new("key", DataType::Int64, false);
        schema = Schema::new_with_metadata(fields, schema.metadata().clone());
        let e = s.check(&schema, None).unwrap_err().to_string();
        assert!(e.contains("`key` has type Int64, expected utf8"), "{e}");
        // A shard from before nullable fields were appended reads, but is not writable.
        let full = s.arrow_schema().unwrap();
        let n = s.fields.iter().position(|f| f.name == "bytes").unwrap() + 1;
        let prefix =
            Schema::new_with_metadata(full.fields()[..n].to_vec(), full.metadata().clone());
        assert!(s.check_readable(&prefix).is_ok());
        assert!(s.check(&prefix, None).is_err());
        let short = Schema::new_with_metadata(full.fields()[..2].to_vec(), full.metadata().clone());
        assert!(
            s.check_readable(&short).is_err(),
            "non-nullable fields missing"
        );
        let e = get("nope").unwrap_err().to_string();
        assert!(e.contains("known schemas") && e.contains("images"), "{e}");
    }
}
