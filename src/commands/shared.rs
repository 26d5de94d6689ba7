//! Pieces every stage that writes image shards shares.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use arrow_array::{Array, RecordBatch, StringArray};
use curate_core::stage::StageDir;
use curate_io::images;

pub const DUPLICATES_FILE: &str = "exact_duplicates.parquet";

/// Rows of the input that shard `shard` covers.
pub fn shard_range(shard: u32, size: u32, total: usize) -> std::ops::Range<usize> {
    let start = (shard as usize * size as usize).min(total);
    start..(start + size as usize).min(total)
}

/// Lists records whose source bytes equal an earlier record's (input
/// order: shard, then row). Reads only the key, sha256 and status columns.
pub fn write_exact_duplicates(stage: &StageDir, dest: &Path) -> anyhow::Result<usize> {
    let images = images::table();
    let mut first: HashMap<String, String> = HashMap::new();
    let (mut keys, mut shas, mut canon) = (Vec::new(), Vec::new(), Vec::new());
    for shard in 0..stage.num_shards() {
        let batches = curate_io::read_columns(
            &stage.shard_path(shard),
            images,
            Some(&["key", "status", "sha256"]),
        )?;
        for b in batches {
            let col = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .cloned()
                    .with_context(|| format!("column `{n}`"))
            };
            let (key, status, sha) = (col("key")?, col("status")?, col("sha256")?);
            for i in 0..b.num_rows() {
                if status.value(i) != "ok" || !sha.is_valid(i) {
                    continue;
                }
                let s = sha.value(i);
                match first.get(s) {
                    Some(c) => {
                        keys.push(key.value(i).to_string());
                        shas.push(s.to_string());
                        canon.push(c.clone());
                    }
                    None => {
                        first.insert(s.to_string(), key.value(i).to_string());
                    }
                }
            }
        }
    }
    let table = curate_core::schema::get("exact_duplicates")?;
    let schema = curate_io::default_schema(table)?;
    let n = keys.len();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from(keys)),
            std::sync::Arc::new(StringArray::from(shas)),
            std::sync::Arc::new(StringArray::from(canon)),
        ],
    )?;
    curate_io::write_table(table, dest, &[batch], schema)?;
    Ok(n)
}

/// Test hook: `CURATE_TEST_STALL_AFTER_ROWS=N` makes the process stop
/// making progress once N rows of this run are on disk (mid-shard, its
/// temporary file half written), so a test can SIGKILL it at a known point
/// without sleeping.
pub fn test_stall_after_rows() -> Option<u64> {
    std::env::var("CURATE_TEST_STALL_AFTER_ROWS")
        .ok()?
        .parse()
        .ok()
}

pub fn stall(rows: u64) -> ! {
    eprintln!("curate: test hook: stalled after {rows} rows");
    loop {
        std::thread::park();
    }
}
