//! HTTP downloads for `curate fetch`: many requests in flight, per-host
//! concurrency and rate limits, retries with exponential back-off and
//! jitter that honour `Retry-After`, connect and total timeouts, a body
//! size cap, few redirects, http(s) only, cached DNS.
//!
//! Every outcome is a [`Download`]: a body, or a [`Failure`] with a short
//! reason (`http_error`, `rate_limited`, `timeout`, `connection`,
//! `redirect`, `too_large`, `truncated`, `invalid_url`) and a message.

mod client;
mod dns;
mod hosts;

pub use client::{Client, Download, Failure, FetchConfig, Stats};

#[cfg(feature = "test-server")]
pub mod testing;

/// Configuration errors (the run stops); per-URL problems are [`Failure`]s.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("building the HTTP client: {message}")]
    Client { message: String },
    #[error("starting the async runtime: {source}")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
}
