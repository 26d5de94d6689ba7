//! A stage folder read by a later stage, the report or the trainer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use curate_core::stage::{Inputs, Manifest, ShardRecord, StageDir};

use crate::{Result, StageError};

/// A stage folder: its manifest and one journal record per complete shard,
/// in shard order. [`Upstream::open`] insists on a complete stage (what a
/// later stage reads); [`Upstream::load`] takes it in any state (what the
/// report and `status` show).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// One journal record per complete shard, by shard number.
    pub shards: Vec<ShardRecord>,
}

impl Upstream {
    /// Opens `dir`, which must be a complete stage writing one of `tables`.
    pub fn open(dir: &Path, tables: &[&str]) -> Result<Upstream> {
        let up = Self::load(dir)?.ok_or_else(|| {
            StageError::invalid(format!(
                "input {} is not a stage directory (no manifest.json); expected the output of a stage writing {}",
                dir.display(),
                tables.join(" or ")
            ))
        })?;
        if !tables.contains(&up.manifest.schema.name.as_str()) {
            return Err(StageError::invalid(format!(
                "input {}: expected a stage writing {}, found `{}` writing {}",
                dir.display(),
                tables.join(" or "),
                up.manifest.stage,
                up.manifest.schema.name
            )));
        }
        if !up.complete() {
            let missing = up.missing();
            let listed: Vec<String> = missing.iter().take(10).map(|s| s.to_string()).collect();
            return Err(StageError::invalid(format!(
                "input {} is incomplete: {} of {} shards done (missing {}{}); finish `{}` first",
                dir.display(),
                up.shards.len(),
                up.manifest.num_shards,
                listed.join(", "),
                if missing.len() > 10 { ", …" } else { "" },
                up.manifest.stage
            )));
        }
        Ok(up)
    }

    /// Reads `dir` in whatever state it is; `None` when it is not a stage folder.
    pub fn load(dir: &Path) -> Result<Option<Upstream>> {
        let Some((manifest, mut journal)) = StageDir::inspect(dir)? else {
            return Ok(None);
        };
        journal.sort_by_key(|r| r.shard);
        journal.dedup_by_key(|r| r.shard);
        Ok(Some(Upstream {
            dir: dir.to_path_buf(),
            manifest,
            shards: journal,
        }))
    }

    /// Every shard is journalled.
    pub fn complete(&self) -> bool {
        self.shards.len() as u32 == self.manifest.num_shards
    }

    /// Shards not yet journalled, in order.
    pub fn missing(&self) -> Vec<u32> {
        let done: HashSet<u32> = self.shards.iter().map(|r| r.shard).collect();
        (0..self.manifest.num_shards)
            .filter(|s| !done.contains(s))
            .collect()
    }

    /// The table this stage writes.
    pub fn table_name(&self) -> &str {
        &self.manifest.schema.name
    }

    /// The fingerprint of what was read: every shard's name, rows and bytes.
    pub fn fingerprint(&self) -> String {
        let mut fp = curate_core::hash::Fingerprint::new();
        fp.add(self.manifest.config_hash.as_bytes());
        for r in &self.shards {
            fp.add(r.file.as_bytes());
            fp.add(&r.records.to_le_bytes());
            fp.add(&r.bytes.to_le_bytes());
        }
        fp.finish()
    }

    /// Rows in complete shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|r| r.records).sum()
    }

    pub fn shard_path(&self, rec: &ShardRecord) -> PathBuf {
        self.dir.join(&rec.file)
    }

    /// Files of the complete shards, in shard order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|r| self.shard_path(r)).collect()
    }

    /// A stage-level output file of this stage (e.g. `keep.parquet`).
    pub fn output(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The manifest description of a stage writing `table` shard for shard
    /// from this one (same shard count, this stage as its input).
    pub fn spec_for(
        &self,
        stage: &str,
        table: &curate_core::schema::TableSchema,
        config: serde_json::Value,
    ) -> curate_core::stage::StageSpec {
        curate_core::stage::StageSpec {
            stage: stage.to_string(),
            schema: table.name.clone(),
            config,
            inputs: self.inputs(),
            num_shards: self.manifest.num_shards,
        }
    }

    /// The `Inputs` of a stage reading this one.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            kind: "stage".into(),
            location: self
                .dir
                .canonicalize()
                .unwrap_or(self.dir.clone())
                .display()
                .to_string(),
            items: self.rows(),
            fingerprint: self.fingerprint(),
            shards: Vec::new(),
        }
    }
}
