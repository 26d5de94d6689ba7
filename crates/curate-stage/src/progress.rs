//! Progress of a stage: indicatif bars on a terminal, plain `tracing`
//! lines otherwise (Slurm logs, CI, pipes). The binary sets the mode once
//! from its flags ([`set_mode`]); the default is log lines.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bar,
    Log,
    None,
}

static MODE: std::sync::OnceLock<ProgressMode> = std::sync::OnceLock::new();

/// Chooses bars, log lines or nothing for every [`Progress`] of this process (first call wins).
pub fn set_mode(mode: ProgressMode) {
    let _ = MODE.set(mode);
}

/// Progress of one stage over a known number of items.
pub struct Progress {
    stage: String,
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    start: Instant,
    last_log: Instant,
    log: bool,
    detail: String,
}

impl Progress {
    pub fn new(stage: &str, total: u64) -> Self {
        let mode = *MODE.get().unwrap_or(&ProgressMode::Log);
        let bar = (mode == ProgressMode::Bar).then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(stage.to_string());
            b
        });
        Progress {
            stage: stage.to_string(),
            bar,
            total,
            done: 0,
            start: Instant::now(),
            last_log: Instant::now(),
            log: mode == ProgressMode::Log,
            detail: String::new(),
        }
    }

    /// Items done; logs at most every 10 s in log mode.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.set_message(format!("{:.1} images/s{}", self.rate(), self.detail));
            b.inc(n);
        } else if self.log && self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            tracing::info!(
                "{}: {}/{} images, {:.1} images/s{}",
                self.stage,
                self.done,
                self.total,
                self.rate(),
                self.detail
            );
        }
    }

    /// Extra figures shown after the rate (", 98.1% ok, 12.0 MB/s").
    pub fn set_detail(&mut self, detail: String) {
        self.detail = detail;
    }

    /// A one-line event (shard done, shard skipped) without tearing the bar.
    pub fn event(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::debug!("{line}")),
            None => tracing::info!("{line}"),
        }
    }

    pub fn rate(&self) -> f64 {
        self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
