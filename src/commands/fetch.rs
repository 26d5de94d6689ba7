//! `curate fetch LISTS…`: URL lists → image shards. The stage is
//! `curate_stages::fetch`; this file turns the flags into its settings.

use std::time::Duration;

use curate_fetch::FetchConfig;
use curate_stage::StageSummary;
use curate_stages::fetch::{Fetch, FetchSettings};

use crate::cli::FetchArgs;

pub fn run(args: &FetchArgs) -> anyhow::Result<StageSummary> {
    let split = args.shards.split()?;
    let client = FetchConfig {
        concurrency: args.concurrency,
        per_host_concurrency: args.per_host_concurrency,
        per_host_rps: args.per_host_rps,
        retries: args.retries,
        backoff_base: Duration::from_secs_f64(args.backoff.max(0.0)),
        backoff_max: Duration::from_secs(120),
        max_retry_after: Duration::from_secs_f64(args.max_retry_after.max(0.0)),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout.max(0.001)),
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        max_bytes: args.max_bytes,
        max_redirects: args.max_redirects,
        user_agent: args
            .user_agent
            .clone()
            .unwrap_or_else(|| FetchConfig::default().user_agent),
    };
    let mut stage = Fetch::new(FetchSettings {
        inputs: args.inputs.clone(),
        url_col: args.url_col.clone(),
        page_col: args.page_col.clone(),
        base_url: args.base_url.clone(),
        shard_size: args.shard_size,
        client,
        min_bytes: args.min_bytes,
        placeholder_sha256: args.placeholder_sha256.clone(),
        min_side: args.min_side,
        max_side: args.max_side,
        image: super::ingest::image_settings(&args.image),
        retry_failed: args.retry_failed,
    })?;
    super::run_stage(&mut stage, &args.output, args.overwrite, split)
}
