//! Per-host politeness: a concurrency limit, a token bucket, and a pause
//! that a `Retry-After` on 429/503 imposes on every request to that host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub struct Hosts {
    map: Mutex<HashMap<String, Arc<Host>>>,
    per_host: usize,
    rps: f64,
}

pub struct Host {
    pub slots: Semaphore,
    rps: f64,
    /// Earliest start of the next request (token bucket of size 1).
    next: Mutex<Instant>,
    /// Set by Retry-After: nobody asks this host before then.
    paused_until: Mutex<Option<Instant>>,
}

impl Hosts {
    pub fn new(per_host: usize, rps: f64) -> Self {
        Hosts {
            map: Mutex::default(),
            per_host: per_host.max(1),
            rps,
        }
    }

    pub fn get(&self, host: &str) -> Arc<Host> {
        self.map
            .lock()
            .expect("hosts")
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    slots: Semaphore::new(self.per_host),
                    rps: self.rps,
                    next: Mutex::new(Instant::now()),
                    paused_until: Mutex::new(None),
                })
            })
            .clone()
    }
}

impl Host {
    /// Waits out a pause and this host's rate limit.
    pub async fn wait_turn(&self) {
        loop {
            let pause = *self.paused_until.lock().expect("host");
            match pause {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await
                }
                _ => break,
            }
        }
        if self.rps > 0.0 {
            let slot = {
                let mut next = self.next.lock().expect("host");
                let now = Instant::now();
                let slot = (*next).max(now);
                *next = slot + Duration::from_secs_f64(1.0 / self.rps);
                slot
            };
            tokio::time::sleep_until(slot.into()).await;
        }
    }

    /// Pauses the host until `until` (never shortens a pause).
    pub fn pause(&self, until: Instant) {
        let mut p = self.paused_until.lock().expect("host");
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }
}
