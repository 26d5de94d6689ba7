//! Command-line definitions: one subcommand per stage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod export;
mod import_embeddings;
mod train;
pub use export::{ExportArgs, ExportFormat};
pub use import_embeddings::ImportEmbeddingsArgs;
pub use train::{SampleArgs, TrainArgs};

#[derive(Debug, Parser)]
#[command(
    name = "curate",
    version,
    about = "Turn lists of copyright-cleared image URLs into training-ready data for text-to-image diffusion models",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Progress display: bars on a terminal, log lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest a local folder of images into image shards.
    Ingest(IngestArgs),
    /// Download URL lists (Megalith-10m parquet, or text) into image shards.
    Fetch(Box<FetchArgs>),
    /// CLIP image embeddings through ONNX Runtime (CPU or CUDA), HF-exact preprocessing.
    Embed(EmbedArgs),
    /// Near-duplicate removal: iterative partitioned DBSCAN on CLIP embeddings (cos >= --eps).
    Dedup(Box<DedupArgs>),
    /// Florence-2 captions through ONNX Runtime, token-exact with transformers' generate.
    Caption(Box<CaptionArgs>),
    /// Aesthetic scores (Aesthetic Predictor V2.5 through ONNX Runtime, or a head on CLIP embeddings) into quality tags.
    Score(Box<ScoreArgs>),
    /// Select the training images, resize/crop them into buckets and encode FLUX-VAE latents.
    EncodeLatents(Box<EncodeLatentsArgs>),
    /// Encode a latents stage's training texts once with the frozen T5 encoder (training then never runs T5).
    EncodeText(Box<EncodeTextArgs>),
    /// Decode latent shards back to PNGs with the VAE (to check them).
    DecodeLatents(DecodeLatentsArgs),
    /// Export the curated set for other tools: HF datasets parquet, WebDataset tars, kohya / musubi latent caches.
    Export(Box<ExportArgs>),
    /// Embeddings made elsewhere (a key + vector parquet, or clip-retrieval's img_emb/*.npy) as an embeddings stage `dedup` reads.
    ImportEmbeddings(Box<ImportEmbeddingsArgs>),
    /// Train the oboro DiT with I-CFM on latent shards (resumable checkpoints, metrics JSONL).
    Train(Box<TrainArgs>),
    /// Sample images from a trained DiT: Euler ODE with classifier-free guidance, VAE decode to PNG.
    Sample(Box<SampleArgs>),
    /// Static HTML report of a run: stage statistics, dedup clusters with thumbnails, charts (works offline).
    Report(ReportArgs),
    /// Run a pipeline file's stages in order, skipping complete ones.
    Run(RunArgs),
    /// Per-stage progress of a work directory, from the manifests.
    Status(StatusArgs),
    /// What this machine offers: ONNX Runtime, execution providers, candle devices.
    Doctor(DoctorArgs),
    /// Install the pinned ONNX Runtime wheel into the project-local folder.
    Setup(SetupArgs),
    /// Throughput (images/s) and peak memory of a stage on generated photos.
    Bench(BenchArgs),
}

/// Which shards this process writes: its place among the Slurm array tasks sharing a stage.
#[derive(Debug, Clone, Args)]
pub struct ShardArgs {
    /// This task's index among --num-tasks tasks [default: $SLURM_ARRAY_TASK_ID − $SLURM_ARRAY_TASK_MIN, else 0].
    #[arg(long = "task-index", alias = "shard-index", value_name = "I")]
    pub task_index: Option<u32>,
    /// Number of tasks sharing the work; task I writes shards s with s mod N = I [default: $SLURM_ARRAY_TASK_COUNT, else 1].
    #[arg(long = "num-tasks", alias = "num-shards", value_name = "N")]
    pub num_tasks: Option<u32>,
}

impl ShardArgs {
    /// The shards this task owns (flags, else the Slurm array environment).
    pub fn split(&self) -> Result<curate_core::split::ShardSplit, curate_core::CoreError> {
        curate_core::split::ShardSplit::from_env(self.task_index, self.num_tasks)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorePolicy {
    /// Keep source bytes for plain JPEG/PNG/WebP (8-bit RGB or grey, upright); re-encode the rest.
    Auto,
    /// Always keep the source bytes.
    Original,
    /// Always store upright 8-bit RGB, re-encoded (JPEG sources as JPEG, others as PNG).
    Reencoded,
}

/// How images are checked and stored (ingest and fetch).
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// What the `bytes` column holds.
    #[arg(long, value_enum, default_value_t = StorePolicy::Auto)]
    pub store: StorePolicy,
    /// Largest width × height decoded; larger images are recorded as `too_large`.
    #[arg(long, default_value_t = 178_956_970)]
    pub max_pixels: u64,
    /// JPEG quality when re-encoding a JPEG source.
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// How images are checked: `full` decodes every pixel; `header` checks headers and the
    /// container's structure (JPEG markers and end-of-image, PNG CRCs, lengths) without
    /// decoding, and decodes only what must be re-encoded.
    #[arg(long, value_enum, default_value_t = Verify::Full)]
    pub verify: Verify,
    /// Decoding threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Full,
    Header,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Folder of images (jpg, png, webp, gif; searched recursively).
    pub input: PathBuf,
    /// Stage directory to write (manifest, journal, part-NNNNN.parquet).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Images per output shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u32,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// URL lists: parquet files (Megalith-10m: url, url_highres, url_source) or text files with one URL per line.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Stage directory to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Parquet column holding the URLs (Megalith-10m: `url`, or `url_highres` for 1024 px).
    #[arg(long, default_value = "url")]
    pub url_col: String,
    /// Parquet column holding the photo page, kept as provenance when the list has it.
    #[arg(long, default_value = "url_source")]
    pub page_col: String,
    /// Resolve relative URLs in the lists against this base (not part of the configuration hash).
    #[arg(long)]
    pub base_url: Option<String>,
    /// URLs per output shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u32,
    /// Requests in flight, all hosts together.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Requests in flight to one host.
    #[arg(long, default_value_t = 32)]
    pub per_host_concurrency: usize,
    /// Requests started per second per host (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    pub per_host_rps: f64,
    /// Retries of a retryable failure (429, 5xx, timeout, connection, truncated body).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// First back-off in seconds, doubled per retry, jittered; a Retry-After header replaces it.
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,
    /// Longest Retry-After honoured, in seconds; longer fails the URL as rate_limited.
    #[arg(long, default_value_t = 300.0)]
    pub max_retry_after: f64,
    /// Connect timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Timeout for a whole request (body included), in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Largest body accepted, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_bytes: u64,
    /// Redirects followed at most.
    #[arg(long, default_value_t = 3)]
    pub max_redirects: usize,
    /// User-Agent header.
    #[arg(long)]
    pub user_agent: Option<String>,
    /// Bodies smaller than this are rejected as `placeholder` (Flickr answers rate limits with ~100-byte bodies).
    #[arg(long, default_value_t = 1000)]
    pub min_bytes: u64,
    /// sha256 of a host's placeholder image ("photo unavailable"); repeat for several.
    #[arg(long = "placeholder-sha256", value_name = "HEX")]
    pub placeholder_sha256: Vec<String>,
    /// Images whose shorter side is below this are `too_small`.
    #[arg(long, default_value_t = 0)]
    pub min_side: u32,
    /// Downscale larger images to this long side (Lanczos) and re-encode.
    #[arg(long)]
    pub max_side: Option<u32>,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Re-attempt only the failed URLs (retryable reasons) of complete shards, rewriting them.
    #[arg(long)]
    pub retry_failed: bool,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file (TOML); see pipelines/demo.toml.
    pub pipeline: PathBuf,
    /// Work directory for the stage outputs [default: the file's `work_dir`].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Run only these stages (by name).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Pass --overwrite to every stage.
    #[arg(long)]
    pub overwrite: bool,
    /// Where stages run: in this process, or as chained Slurm array jobs (sbatch).
    #[arg(long, value_enum, default_value_t = Executor::Local)]
    pub executor: Executor,
    /// slurm: wait for the jobs, then check that every stage completed (needed with `serve`).
    #[arg(long)]
    pub wait: bool,
    /// Check the file and print each stage's command (and, for slurm, render the scripts) without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Executor {
    Local,
    Slurm,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A work directory (holding stage directories) or one stage directory.
    pub dir: PathBuf,
    /// Also check each complete shard's parquet footer.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A work directory (holding stage directories) or one stage directory.
    pub dir: PathBuf,
    /// Output folder [default: DIR/report; for a stage directory, <stage>-report beside it].
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Clusters per cluster page.
    #[arg(long, default_value_t = 50)]
    pub page_size: usize,
    /// Clusters shown in each order (largest first, lowest similarity first); the rest are counted.
    #[arg(long, default_value_t = 5000)]
    pub max_clusters: usize,
    /// Members shown per cluster (a longer chain says how many more it has).
    #[arg(long, default_value_t = 500)]
    pub max_members: usize,
    /// Longer side of the thumbnails in pixels (small JPEGs, made once and reused by reruns).
    #[arg(long, default_value_t = 160)]
    pub thumb_size: u32,
    /// Thresholds of the dedup eps sweep (the run's eps is added).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.8,0.85,0.9,0.92,0.95,0.97,0.98,0.99"
    )]
    pub eps_sweep: Vec<f64>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Install onnxruntime-gpu (CUDA execution provider) instead of the CPU wheel.
    #[arg(long)]
    pub gpu: bool,
    /// Install folder [default: $CURATE_HOME, else .curate in the curate checkout].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Python interpreter whose pip installs the wheel.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Reinstall even when the pinned version is present.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchStage {
    Ingest,
    Fetch,
    /// CLIP preprocessing alone (one core, all cores; full and reduced DCT decode) and `embed` end to end.
    Embed,
    /// Florence-2 generation alone on 32 photos: captions/s and tokens/s at batch sizes 1, 8
    /// and 32, with and without the KV cache (default model: the tiny fixture).
    Caption,
    /// Dedup on synthetic unit vectors with planted near-duplicates: one exact partition
    /// (GFLOP/s of the kernel), or the partitioned rounds (--partition-size < --rows).
    Dedup,
    /// encode-latents: the stage's preprocessing alone (decode + resize + crop + to-float, one
    /// core; stage 256 and 512, full and reduced DCT decode), then the VAE encoder at 256² and
    /// 512² (`--vae`, default the tiny fixture; pass real-size weights for real figures).
    Latents,
    /// Every table synthesised at --rows rows in the real schemas (--shards shards), then dedup
    /// (k-means, to convergence, killed after round 1 and resumed), the encode-latents
    /// selection, the train loader's plan and 1,000 batches, `report` and `status` at that
    /// size: time and peak RSS per part (`--results FILE` compares several N).
    Scale,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The stage to measure.
    #[arg(value_enum)]
    pub stage: BenchStage,
    /// Measure on this folder instead of generated photos.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Generated photos (half at --width × --height, half at 500 px long side).
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Generated photo width (every third is portrait).
    #[arg(long, default_value_t = 1024)]
    pub width: u32,
    /// Generated photo height.
    #[arg(long, default_value_t = 768)]
    pub height: u32,
    /// fetch: URLs in the list (the photos repeat under distinct URLs).
    #[arg(long, default_value_t = 5000)]
    pub urls: usize,
    /// fetch: requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How images are checked (see `curate fetch --help`).
    #[arg(long, value_enum, default_value_t = Verify::Full)]
    pub verify: Verify,
    /// Keep the generated photos in this folder (to compare other tools on the same files).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// embed, score: the model folder [default: the tiny fixture model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// dedup: synthetic embeddings (groups of 1–4: 60% of them planted near-copies of a base, cos 0.93–0.99).
    #[arg(long, default_value_t = 50_000)]
    pub rows: usize,
    /// dedup: embedding dimension.
    #[arg(long, default_value_t = 768)]
    pub dim: usize,
    /// dedup: partition size (>= --rows: one exact partition).
    #[arg(long, default_value_t = 1_000_000_000)]
    pub partition_size: usize,
    /// dedup: partitioning rule for the partitioned benchmark.
    #[arg(long, default_value = "random")]
    pub partition: curate_dedup::partition::Rule,
    /// dedup: rounds at most (partitioned benchmark).
    #[arg(long, default_value_t = 20)]
    pub max_rounds: u32,
    /// latents: VAE weights (ae.safetensors) [default: the tiny fixture].
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// latents: VAE encoder timing repetitions per size.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// dedup: also write vectors.f32 and our labels.i32 here (for fixtures/dedup/sklearn_bench.py --compare).
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// scale: shards per table [default: --rows / 1000].
    #[arg(long)]
    pub shards: Option<usize>,
    /// scale: the work directory of synthesised stages [default: $TMPDIR/curate-scale-N]; kept.
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// scale: append this run's figures (JSON lines) here and compare with the runs already in it.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// scale: run one part in this process (the children the benchmark starts).
    #[arg(long, hide = true)]
    pub part: Option<String>,
    /// scale --part exec: the curate command to run.
    #[arg(last = true, hide = true)]
    pub exec: Vec<String>,
}

/// An ONNX image model and how its input is prepared (embed, score).
#[derive(Debug, Clone, Args)]
pub struct OnnxImageArgs {
    /// Where inference runs: cpu, cuda or cuda:N (needs `curate setup --gpu`; never falls back to the CPU silently).
    #[arg(long, default_value = "cpu")]
    pub device: curate_onnx::session::Device,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's choice).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Allow TF32 matrix products on CUDA: faster, ~1e-3 relative error (off: CUDA outputs
    /// match the CPU's to float32 rounding).
    #[arg(long)]
    pub cuda_tf32: bool,
    /// Images per inference batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Decoding and preprocessing threads (0 = all cores); they run ahead of inference through a bounded queue.
    #[arg(long, default_value_t = 0)]
    pub decode_threads: usize,
    /// `full` (default) decodes every pixel as the Hugging Face reference does, so model inputs
    /// equal its processor's. `reduced` decodes JPEGs at 1/2, 1/4 or 1/8 DCT scale when the
    /// result still covers the model's input: embed ran 1.5× faster end to end (171 vs 115
    /// images/s, tiny CLIP, 2 cores, `curate bench embed`), at a mean 0.002 off the reference
    /// inputs (lowest cosine 0.979 to the reference embeddings on unseen photos).
    #[arg(long, default_value = "full")]
    pub decode_scale: curate_vision::preprocess::DecodeScale,
    /// Largest width × height decoded; larger images are recorded as `too_large`.
    #[arg(long, default_value_t = 178_956_970)]
    pub max_pixels: u64,
}

impl OnnxImageArgs {
    /// The session options these flags ask for.
    pub fn model_options(&self) -> curate_onnx::session::ModelOptions {
        curate_onnx::session::ModelOptions {
            device: self.device,
            threads: self.threads,
            tf32: self.cuda_tf32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatDtype {
    F16,
    F32,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image stage directory (the output of `fetch` or `ingest`).
    pub input: PathBuf,
    /// Stage directory to write (one embedding shard per image shard).
    #[arg(short, long)]
    pub output: PathBuf,
    /// CLIP vision model: an .onnx file, or a folder holding onnx/vision_model.onnx
    /// (transformers.js export), vision_model.onnx, visual.onnx or model.onnx, with its
    /// preprocessor_config.json beside it or one folder up (else OpenAI CLIP's defaults).
    #[arg(long)]
    pub model: PathBuf,
    /// Input tensor name (open_clip-style exports: `image`).
    #[arg(long, default_value = "pixel_values")]
    pub input_name: String,
    /// Output tensor name: the projected embedding (open_clip-style exports: `embedding`).
    #[arg(long, default_value = "image_embeds")]
    pub output_name: String,
    /// Model id stored with every row [default: config.json's _name_or_path, else the folder name].
    #[arg(long)]
    pub model_id: Option<String>,
    /// Storage type of the (L2-normalised) embeddings.
    #[arg(long, value_enum, default_value_t = FloatDtype::F16)]
    pub dtype: FloatDtype,
    #[command(flatten)]
    pub onnx: OnnxImageArgs,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

/// How dedup clusters (recorded in the stage's configuration).
#[derive(Debug, Clone, Args)]
pub struct DedupSettingsArgs {
    /// Cosine-similarity threshold: images a and b are neighbours when cos(a, b) >= eps.
    /// (DBSCAN with L2 tolerance sqrt(2 - 2·eps) on unit vectors; scikit-learn's
    /// metric="cosine" with eps = 1 - this.)
    #[arg(long, default_value_t = 0.9)]
    pub eps: f32,
    /// DBSCAN's min_samples, counting the image itself: core images have at least this many
    /// images within eps; border images are within eps of a core image; the rest is noise.
    #[arg(long, default_value_t = 2)]
    pub min_samples: usize,
    /// Which image of a cluster is kept: `random` (seeded; the report's rule), `first`
    /// (first in input order), `best-score` (highest aesthetic score; needs --scores).
    #[arg(long, default_value = "random")]
    pub keep: curate_dedup::driver::Keep,
    /// Scores stage (`curate score` output) for --keep best-score.
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Seed of the random partitions and of --keep random.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How survivors are split into subsets each round: `random` (the report's) or `kmeans`
    /// (spherical k-means: near-duplicates share a subset, fewer rounds, fewer missed pairs).
    #[arg(long, default_value = "random")]
    pub partition: curate_dedup::partition::Rule,
    /// Largest subset clustered exactly (memory and time grow with its square).
    #[arg(long, default_value_t = 50_000)]
    pub partition_size: usize,
    /// Stop after this many rounds even if the last one still removed images.
    #[arg(long, default_value_t = 10)]
    pub max_rounds: u32,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DedupArgs {
    #[command(subcommand)]
    pub step: Option<DedupStep>,
    /// Embeddings stage directory (the output of `embed`).
    #[arg(required = true)]
    pub input: Option<PathBuf>,
    /// Stage directory to write: clusters (part-00000.parquet), keep.parquet, summary.json, state/.
    #[arg(short, long, required = true)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub settings: DedupSettingsArgs,
    /// Threads for the similarity kernel (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    /// Several processes (Slurm array tasks) may run the same command: each computes the
    /// partitions p with p mod N = I of every round and waits for the others' files; task 0
    /// writes the final tables.
    #[command(flatten)]
    pub shards: ShardArgs,
}

/// The steps of a distributed run (plain `curate dedup` runs them all in one process).
#[derive(Debug, Subcommand)]
pub enum DedupStep {
    /// Read the embeddings, write the state (vectors, keys, settings) and plan round 1.
    Plan {
        /// Embeddings stage directory.
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        settings: DedupSettingsArgs,
        #[arg(long)]
        overwrite: bool,
    },
    /// Cluster the partitions of a round that this task owns (parts p with p mod N = I; see
    /// --shard-index/--num-shards), reading only their vectors. Finished parts are skipped.
    Partition {
        /// The dedup stage directory made by `plan`.
        dir: PathBuf,
        #[arg(long)]
        round: u32,
        /// Only this part (else every part this task owns).
        #[arg(long)]
        part: Option<u32>,
        #[arg(long, default_value_t = 0)]
        threads: usize,
        #[command(flatten)]
        shards: ShardArgs,
    },
    /// Merge a round: survivors, round summary; then plan the next round, or write the final
    /// tables when the round removed nothing or was the last.
    Merge {
        dir: PathBuf,
        #[arg(long)]
        round: u32,
    },
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Image stage directory (`fetch`/`ingest` output); with --from-embeddings, an embeddings stage (`embed` output).
    pub input: PathBuf,
    /// Stage directory to write (one score shard per input shard).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The predictor as one ONNX model (`pixel_values` → `score`): a .onnx file or a folder
    /// with model.onnx and preprocessor_config.json (export your own with
    /// pipelines/tools/export_aesthetic_v2_5.py; the weights are AGPL and not shipped).
    #[arg(long, required_unless_present = "from_embeddings")]
    pub model: Option<PathBuf>,
    /// Score CLIP embeddings with a LAION-style MLP head instead (safetensors: linear layers
    /// applied in order, no activations, e.g. layers.{0,2,4,6,7}); no second image pass.
    #[arg(long, value_name = "HEAD.safetensors", conflicts_with = "model")]
    pub from_embeddings: Option<PathBuf>,
    /// Input tensor name.
    #[arg(long, default_value = "pixel_values")]
    pub input_name: String,
    /// Output tensor name.
    #[arg(long, default_value = "score")]
    pub output_name: String,
    /// Model id stored with every row [default: config.json's _name_or_path, else the file or folder name].
    #[arg(long)]
    pub model_id: Option<String>,
    /// Quality bands as LOWER_EDGE:TAG, lower edges inclusive (the report's defaults).
    #[arg(
        long,
        default_value = "6.0:excellent score,5.2:good score,4.0:average score"
    )]
    pub bands: String,
    /// Scores strictly below this are dropped (excluded from training; no tag).
    #[arg(long, default_value_t = 4.0)]
    pub drop_below: f32,
    #[command(flatten)]
    pub onnx: OnnxImageArgs,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

/// The caption models (`curate_stages::caption::ModelType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptionModelType {
    /// Florence-2, onnx-community export.
    Florence2,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// Image stage directory (`fetch`/`ingest` output).
    pub input: PathBuf,
    /// Stage directory to write (one caption shard per image shard; a row per image and task).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Florence-2 export folder (onnx-community layout): onnx/{vision_encoder, embed_tokens,
    /// encoder_model, decoder_model_merged}.onnx, tokenizer.json, preprocessor_config.json,
    /// generation_config.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Which caption model the --model folder holds.
    #[arg(long, value_enum, default_value_t = CaptionModelType::Florence2)]
    pub model_type: CaptionModelType,
    /// File-name suffix of the ONNX files to use, e.g. `_fp16` or `_quantized`.
    #[arg(long, default_value = "")]
    pub variant: String,
    /// Tasks, comma-separated: caption (<CAPTION>), detailed (<DETAILED_CAPTION>),
    /// more-detailed (<MORE_DETAILED_CAPTION>); each image is captioned once per task.
    #[arg(
        long,
        default_value = "caption,detailed,more-detailed",
        value_delimiter = ','
    )]
    pub task: Vec<String>,
    /// Beams (1 = greedy) [default: the model's generation_config.json, 3 for Florence-2].
    #[arg(long)]
    pub num_beams: Option<usize>,
    /// Longest caption, in tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Rerun the decoder on the whole sequence every step instead of feeding it its
    /// keys/values (slower; for checking).
    #[arg(long)]
    pub no_kv_cache: bool,
    /// Caption only the images a dedup stage kept (its keep.parquet).
    #[arg(long, value_name = "DEDUP_DIR")]
    pub keep: Option<PathBuf>,
    /// Model id stored with every row [default: config.json's _name_or_path, else the folder name].
    #[arg(long)]
    pub model_id: Option<String>,
    #[command(flatten)]
    pub onnx: OnnxImageArgs,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatentStore {
    /// The posterior mean (16 channels).
    Mean,
    /// The mean, then the unscaled log-variance (32 channels).
    MeanLogvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentDtype {
    Bf16,
    F16,
    F32,
}

#[derive(Debug, Args)]
pub struct EncodeLatentsArgs {
    /// Image stage directory (`fetch`/`ingest` output).
    pub input: PathBuf,
    /// Stage directory to write (one latent shard per image shard, row groups by bucket).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Resolution stage: 256 (short edge 256, random 256×256 crop) or 512 (~262144 px buckets).
    #[arg(long, value_parser = ["256", "512"])]
    pub stage: String,
    /// FLUX VAE weights: `ae.safetensors` (Black Forest Labs' keys) or a diffusers
    /// AutoencoderKL (`diffusion_pytorch_model.safetensors`, or its folder).
    #[arg(long)]
    pub vae: PathBuf,
    /// Only images a dedup stage kept (its keep.parquet).
    #[arg(long, value_name = "DEDUP_DIR")]
    pub keep: Option<PathBuf>,
    /// Only images a score stage scored and did not drop; their score and quality tag are joined.
    #[arg(long, value_name = "SCORE_DIR")]
    pub scores: Option<PathBuf>,
    /// Caption stage(s) whose captions are joined (repeat the flag for several).
    #[arg(long, value_name = "CAPTION_DIR")]
    pub captions: Vec<PathBuf>,
    /// Weights of the caption tasks when an image has several, e.g.
    /// `caption=1,detailed=2,more-detailed=1` (0 never picks a task). The pick is seeded by key.
    #[arg(long, default_value = "caption=1,detailed=1,more-detailed=1")]
    pub caption_mix: String,
    /// Leave the quality tag out of the training text (by default it is `caption, tag`).
    #[arg(long)]
    pub no_tag: bool,
    /// Only images that have a caption (by default an image without one gets a null caption).
    #[arg(long)]
    pub require_caption: bool,
    /// What to store: the posterior mean, or the mean and the log-variance.
    #[arg(long, value_enum, default_value = "mean")]
    pub store: LatentStore,
    /// Storage dtype of the latents (compute is f32).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: LatentDtype,
    /// candle device for the VAE: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Images per VAE call (images of one bucket).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Rows per row group of the output (each row group is one bucket).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub rows_per_group: u32,
    /// Seed of the crop positions and caption choices (each is a pure function of seed and key).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest allowed upscale; images needing more are recorded as `too_small`.
    #[arg(long, default_value_t = 1.0)]
    pub max_upscale: f64,
    /// Image decoding threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub decode_threads: usize,
    /// JPEG decoding: `full` (default; every pixel, as Pillow) or `reduced` (DCT scaling while the
    /// picture still covers the resize target: preprocessing 1.7× faster at stage 256, 153 vs
    /// 87.9 images/s per core, `curate bench latents`, with pixels off Pillow's).
    #[arg(long, default_value = "full")]
    pub decode_scale: curate_vision::preprocess::DecodeScale,
    /// Largest width × height decoded; larger images are recorded as `too_large`.
    #[arg(long, default_value_t = 178_956_970)]
    pub max_pixels: u64,
    /// Model id stored in the metadata [default: the weight file's name].
    #[arg(long)]
    pub vae_id: Option<String>,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Args)]
pub struct EncodeTextArgs {
    /// Latents stage directory (`encode-latents --captions …` output): its `caption` column is encoded.
    pub input: PathBuf,
    /// Stage directory to write (one text shard per latents shard, row for row, plus unconditional.parquet).
    #[arg(short, long)]
    pub output: PathBuf,
    /// T5 encoder folder: config.json, model.safetensors, tokenizer.json (Hugging Face layout).
    #[arg(long)]
    pub text_encoder: PathBuf,
    /// Token limit, </s> kept last: the DiT config's `max_text_tokens`.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_length: u32,
    /// Storage dtype of the hidden states (compute is f32): bf16 halves the disk; f32 gives
    /// exactly the on-the-fly encoder's values.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: TextDtype,
    /// Texts per encoder call (texts of one token count go together, so nothing is padded).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// candle device for T5: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Model id stored in the metadata [default: the folder's name].
    #[arg(long)]
    pub model_id: Option<String>,
    /// Discard this directory's previous output if it was made with another configuration.
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub shards: ShardArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextDtype {
    Bf16,
    F32,
}

#[derive(Debug, Args)]
pub struct DecodeLatentsArgs {
    /// Latent stage directory (`encode-latents` output).
    pub input: PathBuf,
    /// Folder for the PNGs (`<key>.png`).
    #[arg(short, long)]
    pub output: PathBuf,
    /// FLUX VAE weights (as for encode-latents).
    #[arg(long)]
    pub vae: PathBuf,
    /// Only these keys (comma-separated) [default: the first --limit ok rows].
    #[arg(long, value_delimiter = ',')]
    pub keys: Vec<String>,
    /// Most images decoded.
    #[arg(long, default_value_t = 16)]
    pub limit: usize,
    /// candle device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}
