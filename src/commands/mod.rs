//! One file per command.

mod bench;
pub mod caption;
pub mod dedup;
mod doctor;
pub mod embed;
pub mod encode_latents;
pub mod fetch;
pub mod ingest;
pub mod pixels;
mod report;
pub mod run;
pub mod sample;
pub mod score;
mod setup;
pub mod shared;
pub mod slurm;
mod status;
pub mod train;

use crate::cli::{Cli, Command};

/// What a stage did, for the runner and the closing log line.
#[derive(Debug, Default, Clone)]
pub struct StageSummary {
    pub shards_total: u32,
    pub shards_written: u32,
    pub shards_skipped: u32,
    pub records: u64,
    pub failures: u64,
    pub reasons: std::collections::BTreeMap<String, u64>,
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
        Command::DecodeLatents(args) => encode_latents::decode(&args),
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
