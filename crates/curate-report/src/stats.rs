//! Statistics over shards with polars: lazy scans of the complete shards
//! (through `curate_io::scan`, which checks each file against the table),
//! projecting only the columns a statistic needs (never `bytes` or
//! `latent`), aggregated before anything is collected.

use std::path::Path;

use curate_core::schema::TableSchema;
use curate_io::IoError;
use polars::prelude::*;

use crate::error::ReportError;
use crate::stage::Stage;

/// A polars failure keeps naming the query it was; other errors are the file's.
fn from_io(e: IoError) -> ReportError {
    match e {
        IoError::Polars { what, source } => ReportError::Polars { what, source },
        e => ReportError::Shard(e),
    }
}

/// A lazy scan of a stage's complete shards (each checked against the
/// stage's table first).
pub fn scan(stage: &Stage) -> Result<LazyFrame, ReportError> {
    let table = curate_core::schema::get(stage.schema())?;
    curate_io::scan::scan(table, &stage.files).map_err(from_io)
}

/// A lazy scan of one stage-level file holding `table` (e.g. `exact_duplicates`).
pub fn scan_file(table: &TableSchema, path: &Path) -> Result<LazyFrame, ReportError> {
    curate_io::scan::scan(table, &[path.to_path_buf()]).map_err(from_io)
}

/// Runs a query; a polars panic becomes an error naming the query.
pub fn collect(lf: LazyFrame, what: &str) -> Result<DataFrame, ReportError> {
    curate_io::scan::collect(lf, what).map_err(from_io)
}

fn series<'a>(df: &'a DataFrame, name: &str) -> Result<&'a Series, ReportError> {
    df.column(name)
        .map(|c| c.as_materialized_series())
        .map_err(|e| ReportError::polars(format!("column `{name}`"), e))
}

/// A column as optional floats (any numeric type).
pub fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>, ReportError> {
    let s = series(df, name)?
        .cast(&DataType::Float64)
        .map_err(|e| ReportError::polars(format!("column `{name}` as float"), e))?;
    let ca = s
        .f64()
        .map_err(|e| ReportError::polars(format!("column `{name}`"), e))?;
    Ok(ca.iter().collect())
}

/// A column as optional signed integers (any integer type).
pub fn i64s(df: &DataFrame, name: &str) -> Result<Vec<Option<i64>>, ReportError> {
    let s = series(df, name)?
        .cast(&DataType::Int64)
        .map_err(|e| ReportError::polars(format!("column `{name}` as integer"), e))?;
    let ca = s
        .i64()
        .map_err(|e| ReportError::polars(format!("column `{name}`"), e))?;
    Ok(ca.iter().collect())
}

/// A column as optional strings (any type, cast).
pub fn strs(df: &DataFrame, name: &str) -> Result<Vec<Option<String>>, ReportError> {
    let s = series(df, name)?
        .cast(&DataType::String)
        .map_err(|e| ReportError::polars(format!("column `{name}` as text"), e))?;
    let ca = s
        .str()
        .map_err(|e| ReportError::polars(format!("column `{name}`"), e))?;
    Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
}

/// A column as optional booleans.
pub fn bools(df: &DataFrame, name: &str) -> Result<Vec<Option<bool>>, ReportError> {
    let s = series(df, name)?;
    let ca = s
        .bool()
        .map_err(|e| ReportError::polars(format!("column `{name}`"), e))?;
    Ok(ca.iter().collect())
}

/// The names of the columns a stage's shards have (from the first shard's footer).
pub fn columns(stage: &Stage) -> Result<Vec<String>, ReportError> {
    let Some(first) = stage.files.first() else {
        return Ok(Vec::new());
    };
    let table = curate_core::schema::get(stage.schema())?;
    let mut lf = scan_file(table, first)?;
    let schema = curate_io::scan::guarded(&format!("schema of {}", first.display()), || {
        lf.collect_schema()
    })
    .map_err(from_io)?;
    Ok(schema.iter_names().map(|n| n.to_string()).collect())
}

/// Counts of each value of `column` (as text; null as `None`), largest first.
pub fn value_counts(
    lf: LazyFrame,
    column: &str,
    what: &str,
) -> Result<Vec<(Option<String>, u64)>, ReportError> {
    let df = collect(
        lf.select([col(column).cast(DataType::String).alias("v")])
            .group_by([col("v")])
            .agg([len().alias("n")])
            .sort_by_exprs(
                [col("n"), col("v")],
                SortMultipleOptions::default()
                    .with_order_descending_multi([true, false])
                    .with_nulls_last(true),
            ),
        what,
    )?;
    let v = strs(&df, "v")?;
    let n = i64s(&df, "n")?;
    Ok(v.into_iter()
        .zip(n)
        .map(|(v, n)| (v, n.unwrap_or(0) as u64))
        .collect())
}

/// Summary of one numeric column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub p95: Option<f64>,
}

/// Count, min, max, mean, median and 95th percentile of `column` (nulls ignored).
pub fn summary(lf: LazyFrame, column: &str, what: &str) -> Result<Summary, ReportError> {
    let v = || col(column).cast(DataType::Float64);
    let df = collect(
        lf.select([
            v().count().cast(DataType::Int64).alias("count"),
            v().min().alias("min"),
            v().max().alias("max"),
            v().mean().alias("mean"),
            v().median().alias("median"),
            v().quantile(lit(0.95), QuantileMethod::Linear).alias("p95"),
        ]),
        what,
    )?;
    let one = |name: &str| -> Result<Option<f64>, ReportError> {
        Ok(f64s(&df, name)?.into_iter().next().flatten())
    };
    Ok(Summary {
        count: i64s(&df, "count")?
            .into_iter()
            .next()
            .flatten()
            .unwrap_or(0) as u64,
        min: one("min")?,
        max: one("max")?,
        mean: one("mean")?,
        median: one("median")?,
        p95: one("p95")?,
    })
}

/// Equal-width bins over `[lo, hi]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub lo: f64,
    pub hi: f64,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn width(&self) -> f64 {
        (self.hi - self.lo) / self.counts.len().max(1) as f64
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `[lo, hi)` of bin `i` (the last bin includes `hi`).
    pub fn edges(&self, i: usize) -> (f64, f64) {
        let w = self.width();
        (self.lo + w * i as f64, self.lo + w * (i + 1) as f64)
    }
}

/// Histogram of `column` (nulls ignored) with `bins` equal bins over
/// `[lo, hi]`; values outside are counted in the first or last bin.
pub fn histogram(
    lf: LazyFrame,
    column: &str,
    lo: f64,
    hi: f64,
    bins: usize,
    what: &str,
) -> Result<Histogram, ReportError> {
    let bins = bins.max(1);
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let width = (hi - lo) / bins as f64;
    let df = collect(
        lf.select([col(column).cast(DataType::Float64).alias("v")])
            .filter(col("v").is_not_null())
            .select([((col("v") - lit(lo)) / lit(width))
                .cast(DataType::Int64)
                .alias("bin")])
            .group_by([col("bin")])
            .agg([len().alias("n")]),
        what,
    )?;
    let mut counts = vec![0u64; bins];
    for (b, n) in i64s(&df, "bin")?.into_iter().zip(i64s(&df, "n")?) {
        let b = b.unwrap_or(0).clamp(0, bins as i64 - 1) as usize;
        counts[b] += n.unwrap_or(0) as u64;
    }
    Ok(Histogram { lo, hi, counts })
}

/// Rounds `x` down to a multiple of `step`.
pub fn floor_to(x: f64, step: f64) -> f64 {
    (x / step).floor() * step
}

/// Rounds `x` up to a multiple of `step`.
pub fn ceil_to(x: f64, step: f64) -> f64 {
    (x / step).ceil() * step
}
