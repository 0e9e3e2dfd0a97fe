//! What the proxy records of each route's requests, for `/paths` and `/traffic`.
//!
//! In: one call per answered request ([`RouteRecord::record`]): its routed path, its
//! [`Class`] (none for fallthrough's own errors and skipped fallbacks), and whether the
//! fallback answered.
//! Out: [`Insight::paths`] and [`Insight::traffic`], this replica's reports.
//!
//! A route's counts are allocated on its first request and kept, under their route's
//! `namespace/name`, across table reloads for as long as the route is served. Each
//! route's counts sit behind their own lock: a request holds it for a hash lookup and a
//! few increments, and only the admin endpoints ever wait for it otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::distinct::Distinct;
use super::report::{Class, PathsReport, RoutePaths, RouteTraffic, TrafficReport};
use super::sketch::{Budget, TopK};

/// Every route's records, and what they share.
pub struct Insight {
    shared: Arc<Shared>,
    routes: Mutex<HashMap<String, Arc<RouteRecord>>>,
}

struct Shared {
    top: usize,
    budget: Budget,
    /// This replica's name in reports.
    replica: String,
    /// Process start, as an `Instant` and in unix seconds: request clocks convert to
    /// wall time without reading the wall clock per request.
    started: Instant,
    started_unix: u64,
}

/// One route's counts, shared by every worker and by successive tables.
pub struct RouteRecord {
    shared: Arc<Shared>,
    counts: Mutex<Option<Box<Counts>>>,
}

struct Counts {
    /// Legacy, migrated, missing: [`Class::ALL`] order.
    classes: [TopK; 3],
    legacy_paths: Distinct,
    /// Every response, classified or not.
    requests: u64,
    /// The ones the fallback produced.
    fallback: u64,
}

/// What a route's counts cost besides their sketches' entries (the counters, the three
/// empty sketches, the 256-byte distinct sketch), charged to the budget, even past its
/// limit, on the route's first request: the requests must be counted whatever happens.
const ROUTE_OVERHEAD: usize = 1024;

fn slot(class: Class) -> usize {
    match class {
        Class::Legacy => 0,
        Class::Migrated => 1,
        Class::Missing => 2,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counts stay consistent if a holder panicked: keep counting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Insight {
    /// Records with `top` paths per class and route, all sketches together within
    /// `memory` bytes of path keys; `replica` names this process in reports.
    pub fn new(top: usize, memory: usize, replica: String) -> Arc<Insight> {
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Arc::new(Insight {
            shared: Arc::new(Shared {
                top,
                budget: Budget::new(memory),
                replica,
                started: Instant::now(),
                started_unix,
            }),
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// The record of route `key` (`namespace/name`): the one it had in the previous
    /// table, or a new one.
    pub fn route(&self, key: &str) -> Arc<RouteRecord> {
        lock(&self.routes)
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(RouteRecord {
                    shared: self.shared.clone(),
                    counts: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Drops the records of routes no longer served.
    pub fn retain(&self, served: &std::collections::HashSet<String>) {
        lock(&self.routes).retain(|key, _| served.contains(key));
    }

    /// Bytes of path keys held by every sketch, and the limit.
    pub fn memory(&self) -> (usize, usize) {
        (self.shared.budget.used(), self.shared.budget.limit())
    }

    /// This replica's `/paths` report: every route with traffic, sorted by name.
    pub fn paths(&self) -> PathsReport {
        let mut routes: Vec<RoutePaths> = self
            .records()
            .into_iter()
            .filter_map(|(route, record)| {
                let counts = lock(&record.counts);
                let counts = counts.as_ref()?;
                let requests: u64 = counts.classes.iter().map(TopK::requests).sum();
                let classes = Class::ALL
                    .into_iter()
                    .filter(|c| counts.classes[slot(*c)].requests() > 0)
                    .map(|c| counts.classes[slot(c)].report(c, requests))
                    .collect();
                Some(RoutePaths {
                    route,
                    requests,
                    classes,
                })
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        PathsReport {
            replicas: vec![self.shared.replica.clone()],
            top: self.shared.top as u32,
            routes,
        }
    }

    /// This replica's `/traffic` report: running totals since it started.
    pub fn traffic(&self) -> TrafficReport {
        let mut routes: Vec<RouteTraffic> = self
            .records()
            .into_iter()
            .filter_map(|(route, record)| {
                let counts = lock(&record.counts);
                let counts = counts.as_ref()?;
                Some(RouteTraffic {
                    route,
                    requests: counts.requests,
                    fallback: counts.fallback,
                    legacy_paths: counts.legacy_paths.to_hex(),
                })
            })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        TrafficReport {
            replica: self.shared.replica.clone(),
            started: self.shared.started_unix,
            routes,
        }
    }

    fn records(&self) -> Vec<(String, Arc<RouteRecord>)> {
        // Copied out so no route's lock is taken under the map's.
        lock(&self.routes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Shared {
    fn unix(&self, at: Instant) -> u64 {
        self.started_unix + at.saturating_duration_since(self.started).as_secs()
    }
}

impl Drop for RouteRecord {
    fn drop(&mut self) {
        if let Some(counts) = lock(&self.counts).as_ref() {
            let charged: usize = counts.classes.iter().map(TopK::charged).sum();
            let charged = charged + ROUTE_OVERHEAD;
            self.shared.budget.give(charged);
        }
    }
}

impl RouteRecord {
    /// Counts one answered request for `path` that arrived `at`: in `class` when it has
    /// one, and as the fallback's when `by_fallback`.
    pub fn record(&self, path: &str, class: Option<Class>, by_fallback: bool, at: Instant) {
        let mut counts = lock(&self.counts);
        let counts = counts.get_or_insert_with(|| {
            self.shared.budget.force(ROUTE_OVERHEAD);
            Box::new(Counts {
                classes: [0; 3].map(|_| TopK::new(self.shared.top)),
                legacy_paths: Distinct::default(),
                requests: 0,
                fallback: 0,
            })
        });
        counts.requests += 1;
        counts.fallback += u64::from(by_fallback);
        if let Some(class) = class {
            counts.classes[slot(class)].add(path, self.shared.unix(at), &self.shared.budget);
            if class == Class::Legacy {
                counts.legacy_paths.add(path);
            }
        }
    }
}
