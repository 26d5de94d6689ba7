//! Statistics over shards with polars: lazy scans of the complete shards,
//! projecting only the columns a statistic needs (never `bytes` or
//! `latent`), aggregated before anything is collected.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::ReportError;

/// A lazy scan of parquet `files` (a stage's complete shards).
pub fn scan(files: &[PathBuf]) -> Result<LazyFrame, ReportError> {
    let what = || {
        format!(
            "scanning {}{}",
            files
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            if files.len() > 1 {
                format!(" and {} more shards", files.len() - 1)
            } else {
                String::new()
            }
        )
    };
    let paths = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p))
        .collect::<PolarsResult<Vec<_>>>()
        .map_err(|e| ReportError::polars(what(), e))?;
    let args = ScanArgsParquet {
        // Shards written before nullable columns were appended to a schema.
        allow_missing_columns: true,
        glob: false,
        cache: false,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
        .map_err(|e| ReportError::polars(what(), e))
}

/// Runs a query. polars panics on a column type it was built without:
/// that becomes an error naming the query, not a crash.
pub fn collect(lf: LazyFrame, what: &str) -> Result<DataFrame, ReportError> {
    guarded(what, || lf.collect())
}

fn guarded<T>(what: &str, f: impl FnOnce() -> PolarsResult<T>) -> Result<T, ReportError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| ReportError::polars(what, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "polars panicked".into());
            Err(ReportError::polars(
                what,
                polars::error::PolarsError::ComputeError(msg.into()),
            ))
        }
    }
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

/// The names of the columns the shards have (from the first shard's footer).
pub fn columns(files: &[PathBuf]) -> Result<Vec<String>, ReportError> {
    let Some(first) = files.first() else {
        return Ok(Vec::new());
    };
    let mut lf = scan(std::slice::from_ref(first))?;
    let schema = guarded(&format!("schema of {}", first.display()), || {
        lf.collect_schema()
    })?;
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

/// Files of a stage folder's complete shards, in journal order.
pub fn shard_files(dir: &Path, journal: &[curate_core::stage::ShardRecord]) -> Vec<PathBuf> {
    journal
        .iter()
        .map(|r| dir.join(&r.file))
        .filter(|p| p.is_file())
        .collect()
}

/// Rounds `x` down to a multiple of `step`.
pub fn floor_to(x: f64, step: f64) -> f64 {
    (x / step).floor() * step
}

/// Rounds `x` up to a multiple of `step`.
pub fn ceil_to(x: f64, step: f64) -> f64 {
    (x / step).ceil() * step
}
