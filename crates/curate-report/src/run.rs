//! What a work directory holds: its stage folders (by manifest), the
//! upstream links between them, and its training metrics files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use curate_core::stage::MANIFEST;

use crate::error::ReportError;
use crate::stage::Stage;
use crate::train::{find_metrics, MetricsFile};

/// A work directory's stages, in creation (pipeline) order.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub stages: Vec<Stage>,
    pub metrics: Vec<MetricsFile>,
}

impl Run {
    /// Reads `dir`: a work directory of stage folders, or one stage folder.
    /// Upstream stages outside it that manifests name are loaded too
    /// (marked external) so images can be found.
    pub fn discover(dir: &Path) -> Result<Run, ReportError> {
        let mut stages = Vec::new();
        if dir.join(MANIFEST).is_file() {
            if let Some(s) = Stage::load(dir, false)? {
                stages.push(s);
            }
        } else {
            let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io(dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| ReportError::io(dir, e))?.path();
                if path.join(MANIFEST).is_file() {
                    if let Some(s) = Stage::load(&path, false)? {
                        stages.push(s);
                    }
                }
            }
            // Creation order: the manifest's second, then the journal folder's
            // birth time (made when the stage opened, finer than a second).
            let born = |s: &Stage| {
                std::fs::metadata(s.dir.join("journal"))
                    .and_then(|m| m.created())
                    .ok()
            };
            stages.sort_by_cached_key(|s| (s.manifest.created_unix, born(s), s.name.clone()));
        }
        // Upstream stages outside the directory.
        let mut i = 0;
        while i < stages.len() {
            if let Some(loc) = stages[i].upstream_location() {
                let known = stages.iter().any(|s| same_dir(&s.dir, &loc))
                    || stages
                        .iter()
                        .any(|s| Some(s.name.as_str()) == file_name(&loc));
                if !known && loc.join(MANIFEST).is_file() {
                    if let Some(s) = Stage::load(&loc, true)? {
                        stages.push(s);
                    }
                }
            }
            i += 1;
        }
        let metrics = find_metrics(dir, &stages)?;
        Ok(Run {
            dir: dir.to_path_buf(),
            stages,
            metrics,
        })
    }

    /// The stages to report on (not the external ones).
    pub fn reported(&self) -> impl Iterator<Item = &Stage> {
        self.stages.iter().filter(|s| !s.external)
    }

    /// The stage `stage` read from: the folder its manifest names, else a
    /// stage of this run with that folder's name (a moved work directory).
    pub fn upstream<'a>(&'a self, stage: &Stage) -> Option<&'a Stage> {
        let loc = stage.upstream_location()?;
        self.stages
            .iter()
            .find(|s| same_dir(&s.dir, &loc))
            .or_else(|| {
                self.stages
                    .iter()
                    .find(|s| Some(s.name.as_str()) == file_name(&loc))
            })
    }

    /// The `images` stage at the start of `stage`'s input chain.
    pub fn images_of<'a>(&'a self, stage: &'a Stage) -> Option<&'a Stage> {
        let mut cur = stage;
        for _ in 0..16 {
            if cur.schema() == "images" {
                return Some(cur);
            }
            cur = self.upstream(cur)?;
        }
        None
    }

    /// Page file names, one per reported stage, unique.
    pub fn page_names(&self) -> HashMap<PathBuf, String> {
        let mut used: Vec<String> = vec!["index".into(), "style".into(), "report".into()];
        let mut out = HashMap::new();
        for s in self.reported() {
            let mut base: String = s
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if base.is_empty() {
                base = s.manifest.stage.clone();
            }
            let mut name = base.clone();
            let mut n = 2;
            while used.iter().any(|u| u.eq_ignore_ascii_case(&name)) {
                name = format!("{base}-{n}");
                n += 1;
            }
            used.push(name.clone());
            out.insert(s.dir.clone(), name);
        }
        out
    }
}

fn file_name(p: &Path) -> Option<&str> {
    p.file_name().and_then(|n| n.to_str())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
