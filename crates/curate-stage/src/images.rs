//! Stage-level outputs of the stages that write `images` (ingest, fetch).

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::Array;
use curate_core::stage::StageDir;
use curate_io::exact_duplicates::{self, Duplicate};
use curate_io::images;

use crate::{Context, Result};

/// [`crate::Stage::finish`] of an image stage: lists exact duplicates in
/// `exact_duplicates.parquet` when this run changed a shard or the file is missing.
pub fn finish_image_stage(stage: &StageDir, name: &str, changed: bool) -> Result<Vec<String>> {
    let dest = stage.dir().join(exact_duplicates::FILE);
    if changed || !dest.exists() {
        let n = write_exact_duplicates(stage, &dest)?;
        tracing::info!("{name}: {n} exact duplicates listed in {}", dest.display());
    }
    Ok(vec![exact_duplicates::FILE.to_string()])
}

/// Lists records whose source bytes equal an earlier record's (input
/// order: shard, then row). Reads only the key, sha256 and status columns.
pub fn write_exact_duplicates(stage: &StageDir, dest: &std::path::Path) -> Result<usize> {
    let mut first: HashMap<String, String> = HashMap::new();
    let mut dups = Vec::new();
    for shard in 0..stage.num_shards() {
        let batches = curate_io::read_columns(
            &stage.shard_path(shard),
            images::table(),
            Some(&["key", "status", "sha256"]),
        )?;
        for b in batches {
            let col = |n: &str| {
                b.column_by_name(n)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .with_context(|| format!("images shard {shard}: no utf8 column `{n}`"))
            };
            let (key, status, sha) = (col("key")?, col("status")?, col("sha256")?);
            for i in 0..b.num_rows() {
                if status.value(i) != "ok" || !sha.is_valid(i) {
                    continue;
                }
                let s = sha.value(i);
                match first.get(s) {
                    Some(c) => dups.push(Duplicate {
                        key: key.value(i).to_string(),
                        sha256: s.to_string(),
                        canonical: c.clone(),
                    }),
                    None => {
                        first.insert(s.to_string(), key.value(i).to_string());
                    }
                }
            }
        }
    }
    exact_duplicates::write(dest, &dups)?;
    Ok(dups.len())
}
