//! Remembered fallbacks: the paths a route's primary does not serve, for a while.
//!
//! In: a path whose primary answered a `fallbackOn` status and whose fallback served
//! it ([`Remembered::remember`]); a remembered path the fallback did not serve after all
//! ([`Remembered::forget`]); every request's path ([`Remembered::recall`]).
//! Out: whether a request goes straight to the fallback. At most `maxPaths` paths are
//! held per route, least recently used forgotten first, each for `ttl`; paths longer
//! than [`MAX_REMEMBERED_PATH`] are never remembered, so a route's memory is bounded by
//! `maxPaths × (MAX_REMEMBERED_PATH + per-entry overhead)`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::metrics::RememberedMetrics;
use crate::routes::Remember;

/// Longest path remembered, in bytes. Longer ones always ask the primary: real pages
/// are far shorter, and it bounds what a client can make the proxy hold.
pub const MAX_REMEMBERED_PATH: usize = 1024;

/// One route's remembered paths, shared by every worker.
pub struct Remembered {
    ttl: Duration,
    max_paths: usize,
    /// Path → when it stops being remembered. Unbounded by type, bounded by `max_paths`
    /// by hand: a bounded `LruCache` allocates its whole capacity up front.
    paths: Mutex<LruCache<Box<str>, Instant>>,
    metrics: RememberedMetrics,
}

impl Remembered {
    /// An empty memory for a route with `remember` set.
    pub fn new(remember: Remember, metrics: RememberedMetrics) -> Self {
        metrics.set_len(0);
        Remembered {
            ttl: remember.ttl,
            max_paths: remember.max_paths,
            paths: Mutex::new(LruCache::unbounded()),
            metrics,
        }
    }

    /// Whether `path` goes straight to the fallback at `now`. An expired path is
    /// forgotten here, so the request asks the primary again.
    pub fn recall(&self, path: &str, now: Instant) -> bool {
        let mut paths = self.lock();
        let Some(until) = paths.get(path) else {
            return false;
        };
        if *until > now {
            return true;
        }
        paths.pop(path);
        self.metrics.set_len(paths.len());
        drop(paths);
        self.metrics.evicted("expired");
        false
    }

    /// Remembers `path` from `now` for the TTL.
    pub fn remember(&self, path: &str, now: Instant) {
        if path.len() > MAX_REMEMBERED_PATH {
            return;
        }
        let mut paths = self.lock();
        paths.put(path.into(), now + self.ttl);
        let mut evicted = 0;
        while paths.len() > self.max_paths {
            paths.pop_lru();
            evicted += 1;
        }
        self.metrics.set_len(paths.len());
        drop(paths);
        for _ in 0..evicted {
            self.metrics.evicted("capacity");
        }
    }

    /// Forgets `path`: the fallback does not serve it either.
    pub fn forget(&self, path: &str) {
        let mut paths = self.lock();
        if paths.pop(path).is_some() {
            self.metrics.set_len(paths.len());
            drop(paths);
            self.metrics.evicted("forgotten");
        }
    }

    /// How many paths are remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no path is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Box<str>, Instant>> {
        // A panic while holding it leaves a consistent cache: keep serving from it.
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routes::tests::mk_route;

    fn memory(ttl: u64, max_paths: usize) -> (Remembered, Metrics) {
        let metrics = Metrics::new(1);
        let route = mk_route("shop", &[], &["/"]);
        let remember = Remember {
            ttl: Duration::from_secs(ttl),
            max_paths,
        };
        (
            Remembered::new(remember, metrics.remembered(&route)),
            metrics,
        )
    }

    #[test]
    fn a_path_is_recalled_within_its_ttl_and_asked_again_after() {
        let (m, _metrics) = memory(60, 10);
        let t0 = Instant::now();
        assert!(!m.recall("/new", t0), "nothing remembered yet");
        m.remember("/new", t0);
        assert!(m.recall("/new", t0 + Duration::from_secs(59)));
        assert!(!m.recall("/new/x", t0), "exact paths only");
        assert!(!m.recall("/new", t0 + Duration::from_secs(60)), "expired");
        assert!(m.is_empty(), "an expired path is dropped");
    }

    #[test]
    fn forgotten_paths_ask_the_primary_again() {
        let (m, _metrics) = memory(60, 10);
        let t0 = Instant::now();
        m.remember("/gone", t0);
        m.forget("/gone");
        assert!(!m.recall("/gone", t0));
    }

    #[test]
    fn at_most_max_paths_least_recently_used_first_out() {
        let (m, metrics) = memory(60, 2);
        let t0 = Instant::now();
        m.remember("/a", t0);
        m.remember("/b", t0);
        assert!(m.recall("/a", t0), "/a is now the most recent");
        m.remember("/c", t0);
        assert_eq!(m.len(), 2);
        assert!(m.recall("/a", t0) && m.recall("/c", t0));
        assert!(!m.recall("/b", t0), "the least recently used went");
        let long = format!("/{}", "x".repeat(MAX_REMEMBERED_PATH));
        m.remember(&long, t0);
        assert!(!m.recall(&long, t0), "too long to remember");
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(
            text.contains(r#"fallthrough_remembered_paths{namespace="web",route="shop"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"fallthrough_remembered_evictions_total{namespace="web",reason="capacity",route="shop"} 1"#
            ),
            "{text}"
        );
    }
}
