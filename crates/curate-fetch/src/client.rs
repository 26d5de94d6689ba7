//! The download client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tokio::sync::Semaphore;

use crate::dns::CachingResolver;
use crate::hosts::Hosts;
use crate::FetchError;

/// How to download.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Requests in flight, all hosts together.
    pub concurrency: usize,
    /// Requests in flight to one host.
    pub per_host_concurrency: usize,
    /// Requests started per second per host (token bucket); 0 = no limit.
    pub per_host_rps: f64,
    /// Attempts after the first, for retryable failures.
    pub retries: u32,
    /// Back-off before retry n: base · 2^(n−1), jittered to 50–100 %, capped at `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; longer ones fail the URL as rate limited.
    pub max_retry_after: Duration,
    pub connect_timeout: Duration,
    /// Whole request, body included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: u64,
    pub max_redirects: usize,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            concurrency: 64,
            per_host_concurrency: 32,
            per_host_rps: 0.0,
            retries: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_bytes: 32 << 20,
            max_redirects: 3,
            user_agent: format!(
                "curate/{} (+https://github.com/; image dataset research)",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Why a URL yielded no image.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of one URL.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    /// Status of the last response, if any arrived.
    pub status: Option<u16>,
    pub attempts: u32,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
    pub failure: Option<Failure>,
    /// First request to last byte, back-off included.
    pub elapsed: Duration,
}

/// Live counters for progress lines.
#[derive(Debug, Default)]
pub struct Stats {
    pub in_flight: AtomicU64,
    pub waiting_to_retry: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
    pub done: AtomicU64,
    pub ok: AtomicU64,
}

struct AttemptError {
    status: Option<u16>,
    failure: Failure,
    retryable: bool,
    retry_after: Option<Duration>,
}

pub struct Client {
    http: reqwest::Client,
    cfg: FetchConfig,
    hosts: Hosts,
    global: Semaphore,
    pub stats: Arc<Stats>,
}

impl Client {
    pub fn new(cfg: FetchConfig) -> Result<Self, FetchError> {
        // One process-wide TLS provider; a second install is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let max_redirects = cfg.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let scheme = attempt.url().scheme();
            if scheme != "http" && scheme != "https" {
                let msg = format!("redirect to a non-http URL {}", attempt.url());
                attempt.error(msg)
            } else if attempt.previous().len() > max_redirects {
                attempt.error(format!("more than {max_redirects} redirects"))
            } else if attempt.previous().contains(attempt.url()) {
                let msg = format!("redirect loop at {}", attempt.url());
                attempt.error(msg)
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .redirect(policy)
            .pool_max_idle_per_host(cfg.per_host_concurrency)
            .dns_resolver(Arc::new(CachingResolver::new(Duration::from_secs(300))))
            .build()
            .map_err(|e| FetchError::Client {
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            hosts: Hosts::new(cfg.per_host_concurrency, cfg.per_host_rps),
            global: Semaphore::new(cfg.concurrency.max(1)),
            cfg,
            stats: Arc::default(),
        })
    }

    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// Downloads one URL with retries. Never fails: problems are in the result.
    pub async fn fetch(&self, url: &str) -> Download {
        let started = Instant::now();
        let mut out = Download {
            url: url.to_string(),
            status: None,
            attempts: 0,
            content_type: None,
            body: None,
            failure: None,
            elapsed: Duration::ZERO,
        };
        let parsed = match Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            Ok(u) => {
                out.failure = Some(Failure {
                    reason: "invalid_url",
                    message: format!(
                        "unsupported URL scheme `{}` (http and https only)",
                        u.scheme()
                    ),
                });
                return out;
            }
            Err(e) => {
                out.failure = Some(Failure {
                    reason: "invalid_url",
                    message: format!("invalid URL: {e}"),
                });
                return out;
            }
        };
        let host = self.hosts.get(parsed.host_str().unwrap_or_default());
        loop {
            out.attempts += 1;
            let result = {
                // The host's slot and turn first: a paused or rate-limited
                // host must not hold global permits other hosts could use.
                let _slot = host.slots.acquire().await.expect("never closed");
                host.wait_turn().await;
                let _global = self.global.acquire().await.expect("never closed");
                self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = self.attempt(parsed.clone()).await;
                self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                r
            };
            match result {
                Ok((status, content_type, body)) => {
                    self.stats
                        .bytes
                        .fetch_add(body.len() as u64, Ordering::Relaxed);
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    out.status = Some(status);
                    out.content_type = content_type;
                    out.body = Some(body);
                    break;
                }
                Err(e) => {
                    out.status = e.status;
                    let retry_after_too_long =
                        e.retry_after.is_some_and(|d| d > self.cfg.max_retry_after);
                    if !e.retryable || out.attempts > self.cfg.retries || retry_after_too_long {
                        let mut failure = e.failure;
                        if out.attempts > 1 {
                            failure.message =
                                format!("{} (after {} attempts)", failure.message, out.attempts);
                        }
                        if retry_after_too_long {
                            failure.message = format!(
                                "{}; Retry-After {:?} exceeds --max-retry-after",
                                failure.message,
                                e.retry_after.unwrap_or_default()
                            );
                        }
                        out.failure = Some(failure);
                        break;
                    }
                    let wait = match e.retry_after {
                        Some(d) => {
                            host.pause(Instant::now() + d);
                            d
                        }
                        None => self.backoff(url, out.attempts),
                    };
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.waiting_to_retry.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    self.stats.waiting_to_retry.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.stats.done.fetch_add(1, Ordering::Relaxed);
        out.elapsed = started.elapsed();
        out
    }

    /// base · 2^(n−1), capped, jittered to 50–100 % (deterministic per URL and attempt).
    fn backoff(&self, url: &str, attempt: u32) -> Duration {
        let exp = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.cfg.backoff_max);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in url.bytes().chain(attempt.to_le_bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let jitter = 0.5 + (h % 1000) as f64 / 2000.0;
        exp.mul_f64(jitter)
    }

    async fn attempt(&self, url: Url) -> Result<(u16, Option<String>, Vec<u8>), AttemptError> {
        let fail = |status: Option<u16>, reason, message: String, retryable| AttemptError {
            status,
            failure: Failure { reason, message },
            retryable,
            retry_after: None,
        };
        let mut resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return Err(classify_send_error(&e)),
        };
        let status = resp.status();
        let code = status.as_u16();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let retryable = matches!(code, 408 | 425 | 429 | 500 | 502 | 503 | 504);
            let reason = if code == 429 {
                "rate_limited"
            } else {
                "http_error"
            };
            let mut e = fail(
                Some(code),
                reason,
                format!("HTTP {code} {}", status.canonical_reason().unwrap_or(""))
                    .trim_end()
                    .to_string(),
                retryable,
            );
            if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                e.retry_after = retry_after;
            }
            return Err(e);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(len) = resp.content_length() {
            if len > self.cfg.max_bytes {
                return Err(fail(
                    Some(code),
                    "too_large",
                    format!(
                        "Content-Length {len} exceeds --max-bytes {}",
                        self.cfg.max_bytes
                    ),
                    false,
                ));
            }
        }
        let mut body =
            Vec::with_capacity(resp.content_length().unwrap_or(0).min(self.cfg.max_bytes) as usize);
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > self.cfg.max_bytes {
                        return Err(fail(
                            Some(code),
                            "too_large",
                            format!("body exceeds --max-bytes {}", self.cfg.max_bytes),
                            false,
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return Err(fail(
                        Some(code),
                        "timeout",
                        format!("body timed out after {} bytes", body.len()),
                        true,
                    ))
                }
                Err(e) => {
                    return Err(fail(
                        Some(code),
                        "truncated",
                        format!("body ended after {} bytes: {}", body.len(), error_chain(&e)),
                        true,
                    ))
                }
            }
        }
        Ok((code, content_type, body))
    }
}

fn classify_send_error(e: &reqwest::Error) -> AttemptError {
    let message = error_chain(e);
    let (reason, retryable) = if e.is_timeout() {
        ("timeout", true)
    } else if e.is_redirect() {
        ("redirect", false)
    } else if e.is_builder() {
        ("invalid_url", false)
    } else {
        // Connect failures, resets, a connection closed before a response.
        ("connection", true)
    };
    AttemptError {
        status: e.status().map(|s| s.as_u16()),
        failure: Failure { reason, message },
        retryable,
        retry_after: None,
    }
}

/// "a: b: c" from an error and its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// `Retry-After`: delta-seconds or an HTTP-date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let c = Client::new(FetchConfig {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..FetchConfig::default()
        })
        .unwrap();
        for n in 1..8u32 {
            let full = Duration::from_millis((100u64 << (n - 1)).min(1000));
            let d = c.backoff("http://x/y.jpg", n);
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
        }
        assert_ne!(
            c.backoff("http://x/a.jpg", 3),
            c.backoff("http://x/b.jpg", 3)
        );
    }
}
