//! A caching resolver: one lookup per host name per TTL, shared by every
//! connection (millions of Flickr URLs resolve a handful of hosts).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Host name → (when resolved, addresses).
type Cache = Arc<Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>>;

#[derive(Default)]
pub struct CachingResolver {
    cache: Cache,
    ttl: Duration,
}

impl CachingResolver {
    pub fn new(ttl: Duration) -> Self {
        CachingResolver {
            cache: Arc::default(),
            ttl,
        }
    }
}

impl Resolve for CachingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let cache = self.cache.clone();
        let ttl = self.ttl;
        Box::pin(async move {
            let host = name.as_str().to_string();
            if let Some((at, addrs)) = cache.lock().expect("dns cache").get(&host) {
                if at.elapsed() < ttl {
                    let addrs: Addrs = Box::new(addrs.clone().into_iter());
                    return Ok(addrs);
                }
            }
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?
                .collect();
            cache
                .lock()
                .expect("dns cache")
                .insert(host, (Instant::now(), addrs.clone()));
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
