//! The `dedup_clusters` table (schemas/dedup_clusters.json): one row per
//! image that entered dedup, with its final cluster across rounds. The
//! dedup stage's one shard; its schema metadata records the settings.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow_schema::{ArrowError, SchemaRef};
use curate_core::schema::TableSchema;

use crate::IoError;

/// The dedup stage's summary beside its clusters shard: settings, images
/// in and kept, clusters, and every round (JSON, not a table).
pub const SUMMARY_FILE: &str = "summary.json";

pub fn table() -> &'static TableSchema {
    curate_core::schema::get("dedup_clusters").expect("built-in schema")
}

/// What the schema's metadata records about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClustersMeta {
    pub eps: f32,
    pub min_samples: usize,
    /// `random`, `first` or `best-score`.
    pub keep: String,
    pub seed: u64,
    /// `random` or `kmeans`.
    pub partition: String,
    pub partition_size: usize,
    pub rounds: usize,
    pub converged: bool,
}

/// The Arrow schema of the shard, with the run's settings as metadata.
pub fn arrow_schema(meta: &ClustersMeta) -> Result<SchemaRef, curate_core::CoreError> {
    let s = table().arrow_schema()?;
    let mut m = s.metadata().clone();
    for (k, v) in [
        ("eps", meta.eps.to_string()),
        ("min_samples", meta.min_samples.to_string()),
        ("keep", meta.keep.clone()),
        ("seed", meta.seed.to_string()),
        ("partition", meta.partition.clone()),
        ("partition_size", meta.partition_size.to_string()),
        ("rounds", meta.rounds.to_string()),
        ("converged", meta.converged.to_string()),
    ] {
        m.insert(k.to_string(), v);
    }
    Ok(Arc::new(s.with_metadata(m)))
}

/// One image's row. `S` is `&str` when writing (keys borrowed from the
/// run's key list), `String` when read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRow<S = String> {
    pub key: S,
    pub cluster_id: Option<i64>,
    pub round: u32,
    pub partition: u32,
    /// `core`, `border` or `noise`.
    pub role: S,
    pub merged_into: Option<S>,
    pub representative: Option<S>,
    pub cosine_to_representative: Option<f32>,
    pub nearest_key: Option<S>,
    pub nearest_cosine: Option<f32>,
    pub cluster_size: u32,
    pub cluster_min_cosine: Option<f32>,
    pub kept: bool,
}

/// The rows as one batch; `schema` is [`arrow_schema`]`(meta)`.
pub fn to_batch<S: AsRef<str>>(
    schema: &SchemaRef,
    rows: &[ClusterRow<S>],
) -> Result<RecordBatch, ArrowError> {
    let text = |f: fn(&ClusterRow<S>) -> &S| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| f(r).as_ref()),
        ))
    };
    let opt_text = |f: fn(&ClusterRow<S>) -> Option<&S>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| f(r).map(AsRef::as_ref))
                .collect::<StringArray>(),
        )
    };
    let float = |f: fn(&ClusterRow<S>) -> Option<f32>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float32Array>())
    };
    let uint = |f: fn(&ClusterRow<S>) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        text(|r| &r.key),
        Arc::new(rows.iter().map(|r| r.cluster_id).collect::<Int64Array>()),
        uint(|r| r.round),
        uint(|r| r.partition),
        text(|r| &r.role),
        opt_text(|r| r.merged_into.as_ref()),
        opt_text(|r| r.representative.as_ref()),
        float(|r| r.cosine_to_representative),
        opt_text(|r| r.nearest_key.as_ref()),
        float(|r| r.nearest_cosine),
        uint(|r| r.cluster_size),
        float(|r| r.cluster_min_cosine),
        Arc::new(rows.iter().map(|r| Some(r.kept)).collect::<BooleanArray>()),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// Reads the whole table of a clusters shard (checked against its schema).
pub fn read(path: &Path) -> Result<Vec<ClusterRow>, IoError> {
    let mut rows = Vec::new();
    for b in crate::read_shard(path, table())? {
        rows.extend(from_batch(path, &b)?);
    }
    Ok(rows)
}

fn from_batch(path: &Path, b: &RecordBatch) -> Result<Vec<ClusterRow>, IoError> {
    let s = |n: &str| crate::column::<StringArray>(path, b, n);
    let u = |n: &str| crate::column::<UInt32Array>(path, b, n);
    let f = |n: &str| crate::column::<Float32Array>(path, b, n);
    let (key, role, merged, rep, near) = (
        s("key")?,
        s("role")?,
        s("merged_into")?,
        s("representative")?,
        s("nearest_key")?,
    );
    let (round, part, size) = (u("round")?, u("partition")?, u("cluster_size")?);
    let (cos_rep, near_cos, min_cos) = (
        f("cosine_to_representative")?,
        f("nearest_cosine")?,
        f("cluster_min_cosine")?,
    );
    let id = crate::column::<Int64Array>(path, b, "cluster_id")?;
    let kept = crate::column::<BooleanArray>(path, b, "kept")?;
    let text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let float = |a: &Float32Array, i: usize| a.is_valid(i).then(|| a.value(i));
    Ok((0..b.num_rows())
        .map(|i| ClusterRow {
            key: key.value(i).to_string(),
            cluster_id: id.is_valid(i).then(|| id.value(i)),
            round: round.value(i),
            partition: part.value(i),
            role: role.value(i).to_string(),
            merged_into: text(merged, i),
            representative: text(rep, i),
            cosine_to_representative: float(cos_rep, i),
            nearest_key: text(near, i),
            nearest_cosine: float(near_cos, i),
            cluster_size: size.value(i),
            cluster_min_cosine: float(min_cos, i),
            kept: kept.value(i),
        })
        .collect())
}
