//! One stage folder as the report sees it: the runtime's [`Upstream`]
//! (manifest and journal, in any state) plus what the report adds.

use std::ops::Deref;
use std::path::{Path, PathBuf};

use curate_stage::Upstream;

use crate::error::ReportError;

/// One stage folder. Derefs to its [`Upstream`] (`dir`, `manifest`, `shards`).
#[derive(Debug, Clone)]
pub struct Stage {
    /// Folder name (the pipeline's stage name).
    pub name: String,
    pub upstream: Upstream,
    /// Files of the complete shards that exist, in shard order.
    pub files: Vec<PathBuf>,
    /// Outside the reported directory (an upstream stage named by a manifest).
    pub external: bool,
}

impl Deref for Stage {
    type Target = Upstream;
    fn deref(&self) -> &Upstream {
        &self.upstream
    }
}

impl Stage {
    /// Reads `dir` in whatever state it is; `None` when it is not a stage folder.
    pub fn load(dir: &Path, external: bool) -> Result<Option<Stage>, ReportError> {
        let Some(upstream) = Upstream::load(dir)? else {
            return Ok(None);
        };
        let files = upstream
            .files()
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| upstream.manifest.stage.clone());
        Ok(Some(Stage {
            name,
            upstream,
            files,
            external,
        }))
    }

    /// The table its shards hold.
    pub fn schema(&self) -> &str {
        self.upstream.table_name()
    }

    /// Rows in complete shards.
    pub fn records(&self) -> u64 {
        self.upstream.rows()
    }

    pub fn failures(&self) -> u64 {
        self.shards.iter().map(|r| r.failures).sum()
    }

    /// Seconds of work over the complete shards (summed over tasks).
    pub fn work_seconds(&self) -> f64 {
        self.shards.iter().map(|r| r.duration_s).sum()
    }

    /// Wall-clock seconds from the first shard's start to the last shard's end.
    pub fn wall_seconds(&self) -> Option<f64> {
        let start = self
            .shards
            .iter()
            .map(|r| r.completed_unix as f64 - r.duration_s)
            .fold(f64::INFINITY, f64::min);
        let end = self
            .shards
            .iter()
            .map(|r| r.completed_unix as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        (end >= start).then_some((end - start).max(0.0))
    }

    /// The stage this one read, when its input is a stage folder.
    pub fn upstream_location(&self) -> Option<PathBuf> {
        (self.manifest.inputs.kind == "stage")
            .then(|| PathBuf::from(&self.manifest.inputs.location))
    }
}
