//! `curate dedup EMB -o OUT` and its steps (`plan`, `partition`, `merge`):
//! flags into settings for `curate_stages::dedup`, which holds the stage.

use curate_stages::dedup::{self, DedupRun, DedupSettings, Step};

use super::StageSummary;
use crate::cli::{DedupArgs, DedupSettingsArgs, DedupStep};

pub fn run(args: &DedupArgs) -> anyhow::Result<StageSummary> {
    match &args.step {
        None => {
            let split = args.shards.split()?;
            Ok(dedup::run(&DedupRun {
                input: args.input.clone().expect("clap requires the input"),
                output: args.output.clone().expect("clap requires --output"),
                settings: settings(&args.settings),
                overwrite: args.overwrite,
                split,
                threads: args.threads,
            })?)
        }
        Some(DedupStep::Plan {
            input,
            output,
            settings: s,
            overwrite,
        }) => Ok(next(dedup::plan(input, output, &settings(s), *overwrite)?)),
        Some(DedupStep::Partition {
            dir,
            round,
            part,
            threads,
            shards,
        }) => {
            let split = shards.split()?;
            Ok(dedup::partition(dir, *round, *part, &split, *threads)?)
        }
        Some(DedupStep::Merge { dir, round }) => Ok(next(dedup::merge(dir, *round)?)),
    }
}

/// Prints what to run next (the steps' stdout) and returns the summary.
fn next(step: Step) -> StageSummary {
    if let Some(line) = &step.next {
        println!("{line}");
    }
    step.summary
}

fn settings(a: &DedupSettingsArgs) -> DedupSettings {
    DedupSettings {
        eps: a.eps,
        min_samples: a.min_samples,
        keep: a.keep,
        scores: a.scores.clone(),
        seed: a.seed,
        partition: a.partition,
        partition_size: a.partition_size,
        max_rounds: a.max_rounds,
    }
}
