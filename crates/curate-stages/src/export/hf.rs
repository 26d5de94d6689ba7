//! `--format hf`: Hugging Face datasets parquet. `data/train-SSSSS-PPP.parquet`
//! (shard, part; a part is cut at `--max-file-mb`), `image` as
//! `struct<bytes, path>` with the `huggingface` schema metadata naming it an
//! `Image` feature, and a dataset card `README.md` whose YAML `configs`
//! header makes `load_dataset(OUT)` read `data/`. `load_dataset("parquet",
//! data_dir=OUT)` finds the same files by their `train-` names.

use std::path::{Path, PathBuf};

use curate_io::export::{self, ForeignParquet, Sample};
use curate_stage::{Context, Result};

use super::{ExportFormat, ExportSummary, SampleFormat, ShardWriter, Writes};

#[derive(Debug)]
pub struct Hf {
    /// Data files are cut at about this many bytes.
    pub max_file_bytes: u64,
}

const DATA: &str = "data";

impl SampleFormat for Hf {
    fn begin(&self, out: &Path, shard: u32) -> Result<Box<dyn ShardWriter>> {
        let dir = out.join(DATA);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        super::remove_prefixed(
            &dir,
            &[format!("train-{shard:05}-"), format!(".train-{shard:05}-")],
        )?;
        Ok(Box::new(HfShard {
            dir,
            shard,
            part: 0,
            max: self.max_file_bytes as usize,
            file: None,
        }))
    }
}

impl ExportFormat for Hf {
    fn writes(&self) -> Writes<'_> {
        Writes::Samples(self)
    }

    fn owns(&self, name: &str) -> bool {
        name == DATA || name == "README.md"
    }

    fn finish(&self, out: &Path, s: &ExportSummary) -> Result<Vec<String>> {
        let card = format!(
            "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\ntask_categories:\n- text-to-image\n---\n\n\
# Curated text-to-image set\n\nExported by `curate export --format hf`: the images that survived \
deduplication and the aesthetic-score filter, with their captions and quality tags.\n\n\
| | |\n|---|---|\n| samples | {} |\n| not exported (see `part-*.parquet`, status `error`) | {} |\n| shards | {} |\n| size on disk | {:.1} MB |\n\n\
Columns: `image` (Image), `text` (the training caption with its quality tag), `caption`, \
`detailed`, `more-detailed` (one per caption task), `aesthetic_score`, `quality_tag`, `width`, \
`height`, `url`, `key`.\n\n```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/folder\", split=\"train\")\n```\n",
            s.samples,
            s.failures,
            s.shards,
            s.bytes as f64 / 1e6
        );
        let dest = out.join("README.md");
        let tmp = out.join(".README.md.tmp");
        std::fs::write(&tmp, card).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        Ok(vec!["README.md".to_string()])
    }
}

struct HfShard {
    dir: PathBuf,
    shard: u32,
    part: u32,
    max: usize,
    file: Option<(ForeignParquet, String)>,
}

impl ShardWriter for HfShard {
    fn write(&mut self, samples: &[Sample]) -> Result<Vec<String>> {
        if self
            .file
            .as_ref()
            .is_some_and(|(f, _)| f.bytes() >= self.max)
        {
            // Renamed now: a redo of the shard removes its files first.
            let (f, _) = self.file.take().expect("open file");
            f.finish()?;
            self.part += 1;
        }
        if self.file.is_none() {
            let name = format!("train-{:05}-{:03}.parquet", self.shard, self.part);
            let f = ForeignParquet::create(
                &self.dir.join(format!(".{name}.tmp")),
                &self.dir.join(&name),
                export::hf_schema(),
            )?;
            self.file = Some((f, format!("{DATA}/{name}")));
        }
        let (f, name) = self.file.as_mut().expect("open file");
        let batch = export::hf_batch(f.schema(), samples)?;
        f.write(&batch)?;
        Ok(vec![name.clone(); samples.len()])
    }

    fn finish(self: Box<Self>) -> Result<()> {
        match self.file {
            Some((f, _)) => Ok(f.finish()?),
            None => Ok(()),
        }
    }
}
