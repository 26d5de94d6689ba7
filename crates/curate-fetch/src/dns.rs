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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn resolves_once_per_host_within_the_ttl() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = CachingResolver::new(Duration::from_secs(300));
        let first: Vec<SocketAddr> = rt
            .block_on(r.resolve(Name::from_str("localhost").unwrap()))
            .unwrap()
            .collect();
        assert!(
            !first.is_empty() && first.iter().all(|a| a.ip().is_loopback()),
            "{first:?}"
        );
        // Poison the cache entry: a second lookup must come from it, not the system.
        let fake: SocketAddr = "127.0.0.9:0".parse().unwrap();
        r.cache.lock().unwrap().get_mut("localhost").unwrap().1 = vec![fake];
        let second: Vec<SocketAddr> = rt
            .block_on(r.resolve(Name::from_str("localhost").unwrap()))
            .unwrap()
            .collect();
        assert_eq!(second, vec![fake]);
        // Expired entries are looked up again.
        let r0 = CachingResolver::new(Duration::ZERO);
        r0.cache
            .lock()
            .unwrap()
            .insert("localhost".into(), (Instant::now(), vec![fake]));
        let fresh: Vec<SocketAddr> = rt
            .block_on(r0.resolve(Name::from_str("localhost").unwrap()))
            .unwrap()
            .collect();
        assert_ne!(fresh, vec![fake]);
    }
}
