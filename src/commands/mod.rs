//! One file per command.

mod bench;
pub mod bench_scale;
pub mod caption;
pub mod decode_latents;
pub mod dedup;
mod doctor;
pub mod embed;
pub mod encode_latents;
pub mod encode_text;
pub mod export;
pub mod fetch;
pub mod import_embeddings;
pub mod ingest;
mod report;
pub mod run;
pub mod sample;
pub mod score;
mod setup;
pub mod slurm;
mod status;
pub mod train;

use crate::cli::{Cli, Command};

pub use curate_stage::StageSummary;

/// Runs a stage into `output` as this task's share (`split`, from the flags).
fn run_stage(
    stage: &mut dyn curate_stage::Stage,
    output: &std::path::Path,
    overwrite: bool,
    split: curate_core::split::ShardSplit,
) -> anyhow::Result<StageSummary> {
    let opts = curate_stage::RunOptions {
        output: output.to_path_buf(),
        overwrite,
        split,
    };
    Ok(curate_stage::run(stage, &opts)?)
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest::run(&args).map(|_| ()),
        Command::Fetch(args) => fetch::run(&args).map(|_| ()),
        Command::Embed(args) => embed::run(&args).map(|_| ()),
        Command::Dedup(args) => dedup::run(&args).map(|_| ()),
        Command::Score(args) => score::run(&args).map(|_| ()),
        Command::Caption(args) => caption::run(&args).map(|_| ()),
        Command::EncodeLatents(args) => encode_latents::run(&args).map(|_| ()),
        Command::EncodeText(args) => encode_text::run(&args).map(|_| ()),
        Command::DecodeLatents(args) => decode_latents::run(&args),
        Command::Export(args) => export::run(&args).map(|_| ()),
        Command::ImportEmbeddings(args) => import_embeddings::run(&args).map(|_| ()),
        Command::Train(args) => train::run(&args).map(|_| ()),
        Command::Sample(args) => sample::run(&args).map(|_| ()),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Setup(args) => setup::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Report(args) => report::run(&args),
    }
}
