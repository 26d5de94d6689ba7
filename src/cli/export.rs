//! Flags of `export`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Hugging Face datasets: parquet shards with an `Image` column and a dataset card.
    Hf,
    /// img2dataset-style WebDataset tars (KEY.jpg, KEY.txt, KEY.json) with sidecar parquet and stats.
    Webdataset,
    /// kohya sd-scripts' FLUX latent cache: KEY.jpg, KEY.txt and KEY_WWWWxHHHH_flux.npz, one folder.
    Kohya,
    /// musubi-tuner's Z-Image latent cache (FLUX.1's VAE): KEY.jpg, KEY.txt and KEY_WWWWxHHHH_zi.safetensors.
    Musubi,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A work directory holding the stage folders (`curate run`'s --work-dir); the images,
    /// dedup, score, caption and encode-latents stages are found by their manifests.
    pub work_dir: PathBuf,
    /// Export folder to write (resumable: a stage folder of its own).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The images stage (a folder name inside WORK_DIR or a path) [default: the one the other stages read].
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// The dedup stage whose keep list selects [default: found in WORK_DIR].
    #[arg(long)]
    pub dedup: Option<PathBuf>,
    /// The score stage [default: found in WORK_DIR].
    #[arg(long)]
    pub score: Option<PathBuf>,
    /// Caption stages [default: every caption stage found in WORK_DIR].
    #[arg(long, value_delimiter = ',')]
    pub captions: Vec<PathBuf>,
    /// kohya, musubi: the encode-latents stage to export [default: the one of the images in
    /// WORK_DIR]. Its rows are the selection, its captions the texts.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// kohya, musubi: export a draw z ~ N(mean, exp(logvar)) seeded per key by SEED, as kohya's
    /// own caching samples the posterior, instead of the stored mean. Needs a latents stage
    /// encoded with `--store mean-logvar`.
    #[arg(long, value_name = "SEED")]
    pub sample_posterior: Option<u64>,
    /// Proceed without these stages (comma-separated: dedup, score, caption).
    #[arg(long, value_delimiter = ',')]
    pub allow_missing: Vec<String>,
    /// Caption task weights of the training text when no latents stage gives it
    /// (as encode-latents' --caption-mix).
    #[arg(long, default_value = "caption=1,detailed=1,more-detailed=1")]
    pub caption_mix: String,
    /// Leave the quality tag out of the training text (when no latents stage gives it).
    #[arg(long)]
    pub no_tag: bool,
    /// Seed of the caption choice (when no latents stage gives it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// hf: largest data file, in MB (files are cut at about this size).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_mb: u64,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: super::ShardArgs,
}
