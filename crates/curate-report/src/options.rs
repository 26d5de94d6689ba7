//! What to report and how (the command's flags).

use std::path::{Path, PathBuf};

/// What to report and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// A work directory (stage folders), or one stage folder.
    pub dir: PathBuf,
    /// Output folder; default `DIR/report` (for a stage folder: `<stage>-report` beside it).
    pub out: Option<PathBuf>,
    /// Clusters per cluster page.
    pub page_size: usize,
    /// Clusters shown per order (the rest are counted, not shown).
    pub max_clusters: usize,
    /// Members shown per cluster.
    pub max_members: usize,
    /// Longer side of thumbnails, pixels.
    pub thumb_size: u32,
    /// eps-sweep thresholds (the run's eps is added).
    pub sweep: Vec<f64>,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            out: None,
            page_size: 50,
            max_clusters: 5000,
            max_members: 500,
            thumb_size: 160,
            sweep: DEFAULT_SWEEP.to_vec(),
        }
    }

    /// Where the report goes.
    pub fn out_dir(&self) -> PathBuf {
        if let Some(o) = &self.out {
            return o.clone();
        }
        if self.dir.join(curate_core::stage::MANIFEST).is_file() {
            let name = self
                .dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "stage".into());
            let parent = self.dir.parent().unwrap_or(Path::new("."));
            return parent.join(format!("{name}-report"));
        }
        self.dir.join("report")
    }
}

/// Thresholds of the eps sweep unless given.
pub const DEFAULT_SWEEP: [f64; 8] = [0.8, 0.85, 0.9, 0.92, 0.95, 0.97, 0.98, 0.99];
