//! `curate report DIR`: the static HTML report of a run (crates/curate-report).
//! Reads the stage folders only; writes `DIR/report/` (or `--out`).

use anyhow::Context;

use crate::cli::ReportArgs;

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let opts = curate_report::Options {
        dir: args.dir.clone(),
        out: args.out.clone(),
        page_size: args.page_size,
        max_clusters: args.max_clusters,
        max_members: args.max_members,
        thumb_size: args.thumb_size,
        sweep: args.eps_sweep.clone(),
    };
    let written = curate_report::write_report(&opts)
        .with_context(|| format!("report of {}", args.dir.display()))?;
    println!("{}", written.index.display());
    Ok(())
}
