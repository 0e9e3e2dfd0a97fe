//! Every Prometheus metric fallthrough exports, defined in one place.
//!
//! In: events from the proxy (responses, fallbacks, upstream attempts, errors) and from
//! route providers (reloads, route counts).
//! Out: the Prometheus text format served on the admin port's `/metrics`.
//! Metric and label names are a public interface: dashboards and alerts depend on them.
//! Labels are bounded (namespace, route, backend, service, status code, reason), never
//! the request path.
//!
//! The families every request writes belong to the routes ([`route`]): each route holds
//! one copy of its counts per worker thread, so the workers never write the same
//! counter, and a scrape sums the copies into one series per label set. A route's series
//! are exported while it is served, and leave `/metrics` with it ([`Metrics::serve`]).

mod route;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::proto::MetricType;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::routes::Route;
use route::Families;
pub use route::{RequestTimer, RouteMetrics};

/// Buckets for upstream and request durations: from a fast in-cluster hit to a slow page.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// At most this many copies of the request-path counts. Each copy holds every route's
/// counters, so on a many-core machine with many routes memory, not contention, becomes
/// the limit; past this, workers share copies (still exact: every copy is atomic).
const MAX_COPIES: usize = 8;

/// Label value of `backend` for responses fallthrough wrote itself (no route, upstream error).
pub const SELF_BACKEND: &str = "fallthrough";

/// The families every request writes: name, help, type, labels. Their series belong to
/// the routes ([`RouteMetrics`]) and are written by [`Metrics::encode`].
const REQUEST_FAMILIES: [(&str, &str, MetricType, &[&str]); 6] = [
    (
        "fallthrough_requests_total",
        "Responses sent to clients, by the backend that produced them (primary, fallback, or fallthrough itself).",
        MetricType::COUNTER,
        &["namespace", "route", "backend", "service", "code"],
    ),
    (
        "fallthrough_fallbacks_total",
        "Requests sent to the fallback, by reason (status: the primary answered a fallbackOn status; error: the primary was unreachable; remembered: the primary did not serve the path recently, rememberFallbacks; skip_primary: a skipPrimary prefix).",
        MetricType::COUNTER,
        &["namespace", "route", "reason"],
    ),
    (
        "fallthrough_fallbacks_skipped_total",
        "Requests that should have gone to the fallback but could not be replayed: body_too_large (over maxReplayBytes), replay_budget (the process-wide --max-replay-buffer was spent).",
        MetricType::COUNTER,
        &["namespace", "route", "reason"],
    ),
    (
        "fallthrough_upstream_duration_seconds",
        "Time from sending a request to a backend until its response head, per attempt.",
        MetricType::HISTOGRAM,
        &["namespace", "route", "backend"],
    ),
    (
        "fallthrough_request_duration_seconds",
        "Time from receiving a request until its response body was sent.",
        MetricType::HISTOGRAM,
        &["namespace", "route"],
    ),
    (
        "fallthrough_upstream_errors_total",
        "Failed upstream attempts, by kind (connect, timeout, protocol).",
        MetricType::COUNTER,
        &["namespace", "route", "backend", "kind"],
    ),
];

/// The routes whose series a scrape shows: those of the table now serving.
type Served = Mutex<HashMap<String, Arc<RouteMetrics>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// Copies of each route's request-path counts (one per worker, up to [`MAX_COPIES`]).
    copies: usize,
    /// The served routes' request-path series, written after the registry's by [`Metrics::encode`].
    served: Arc<Served>,
    unrouted: Arc<RouteMetrics>,
    /// Routes with remembered-paths series, to remove them when the route goes.
    remembered_routes: Mutex<HashSet<(String, String)>>,
    routes: IntGauge,
    routes_rejected: IntGauge,
    config_reloads: IntCounterVec,
    config_last_reload_successful: IntGauge,
    tls_expiry: prometheus::GaugeVec,
    /// The label sets `tls_expiry` shows now.
    tls_shown: Mutex<HashSet<(String, String)>>,
    tls_handshake_errors: IntCounterVec,
    remembered_paths: prometheus::IntGaugeVec,
    remembered_evictions: IntCounterVec,
    paths_memory: IntGauge,
    paths_memory_limit: IntGauge,
    access_log_dropped: IntCounter,
    proxy_protocol_refused: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn int_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry, with one copy of the
    /// request-path families per worker thread (up to [`MAX_COPIES`]).
    pub fn new(workers: usize) -> Self {
        let r = Registry::new();
        let copies = workers.clamp(1, MAX_COPIES);
        let served = Arc::new(Served::default());
        let unrouted = Arc::new(RouteMetrics::unrouted(copies));
        Metrics {
            copies,
            served,
            unrouted,
            remembered_routes: Mutex::default(),
            routes: gauge(&r, "fallthrough_routes", "Routes being served."),
            routes_rejected: gauge(
                &r,
                "fallthrough_routes_rejected",
                "Routes left out of the table because they conflict with an earlier route.",
            ),
            config_reloads: counter(
                &r,
                "fallthrough_config_reloads_total",
                "Route reloads, by result (success, failure).",
                &["result"],
            ),
            config_last_reload_successful: gauge(
                &r,
                "fallthrough_config_last_reload_successful",
                "1 if the last route reload succeeded, 0 if the previous table is still serving because it failed.",
            ),
            tls_expiry: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "fallthrough_tls_certificate_expiry_timestamp_seconds",
                        "When each served certificate expires (unix seconds); `secret` names its Secret or file.",
                    ),
                    &["namespace", "secret"],
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            tls_shown: Mutex::default(),
            tls_handshake_errors: counter(
                &r,
                "fallthrough_tls_handshake_errors_total",
                "Failed TLS handshakes, by reason (no_certificate, protocol, timeout, io).",
                &["reason"],
            ),
            remembered_paths: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "fallthrough_remembered_paths",
                        "Paths each route with rememberFallbacks sends straight to the fallback now.",
                    ),
                    &["namespace", "route"],
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            remembered_evictions: counter(
                &r,
                "fallthrough_remembered_evictions_total",
                "Remembered paths dropped, by reason (expired: the ttl ended; capacity: maxPaths was reached, least recently used first; forgotten: the fallback answered a fallbackOn status for it).",
                &["namespace", "route", "reason"],
            ),
            paths_memory: gauge(
                &r,
                "fallthrough_paths_report_bytes",
                "Bytes the paths report's sketches hold, over all routes (path keys and entries).",
            ),
            paths_memory_limit: gauge(
                &r,
                "fallthrough_paths_report_limit_bytes",
                "--paths-memory: past it, requests are still counted but new paths are not listed.",
            ),
            access_log_dropped: int_counter(
                &r,
                "fallthrough_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind (its queue was full) or a write failed.",
            ),
            proxy_protocol_refused: int_counter(
                &r,
                "fallthrough_proxy_protocol_refused_total",
                "Connections from trusted proxies closed, with --proxy-protocol, because they did not start with a valid PROXY protocol header in time.",
            ),
            registry: r,
        }
    }

    /// What the paths report holds, and may hold; set before each scrape.
    pub fn paths_report_memory(&self, used: usize, limit: usize) {
        self.paths_memory.set(used as i64);
        self.paths_memory_limit.set(limit as i64);
    }

    /// The remembered-fallback series of one route with `rememberFallbacks`.
    pub fn remembered(&self, route: &Route) -> RememberedMetrics {
        let labels = [route.namespace.as_str(), route.name.as_str()];
        lock(&self.remembered_routes).insert((labels[0].to_string(), labels[1].to_string()));
        RememberedMetrics {
            paths: self.remembered_paths.with_label_values(&labels),
            evictions: EVICTION_REASONS.map(|reason| {
                self.remembered_evictions
                    .with_label_values(&[labels[0], labels[1], reason])
            }),
        }
    }

    /// The series of the routes of a table about to serve, in its order. A route that
    /// was served already keeps its series and counts (only series whose labels its spec
    /// changed go, see [`RouteMetrics`]); a route that is no longer served leaves
    /// `/metrics` now, remembered-paths series included. Requests still in flight on the
    /// old table write into its copies, which nothing exports any more.
    pub fn serve(&self, routes: &[Route]) -> Vec<Arc<RouteMetrics>> {
        let mut served = lock(&self.served);
        let mut next: HashMap<String, Arc<RouteMetrics>> = HashMap::with_capacity(routes.len());
        let handles = routes
            .iter()
            .map(|route| {
                let key = route.key();
                let kept = next.get(&key).cloned().or_else(|| served.remove(&key));
                let metrics = match kept {
                    Some(m) => {
                        m.reshape(route);
                        m
                    }
                    None => Arc::new(RouteMetrics::new(route, self.copies)),
                };
                next.insert(key, metrics.clone());
                metrics
            })
            .collect();
        *served = next;
        drop(served);
        let remembering: HashSet<(&str, &str)> = routes
            .iter()
            .filter(|r| r.remember.is_some())
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        lock(&self.remembered_routes).retain(|(ns, name)| {
            let keep = remembering.contains(&(ns.as_str(), name.as_str()));
            if !keep {
                // Absent label sets are not an error worth reporting here.
                let _ = self.remembered_paths.remove_label_values(&[ns, name]);
                for reason in EVICTION_REASONS {
                    let _ = self
                        .remembered_evictions
                        .remove_label_values(&[ns, name, reason]);
                }
            }
            keep
        });
        handles
    }

    /// Counts a response fallthrough produced with no route to charge it to.
    pub fn unrouted_response(&self, code: &str) {
        self.unrouted.own_response(code);
    }

    /// Records the outcome of a route reload.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_last_reload_successful.set(i64::from(ok));
    }

    /// Records the size of the table now serving.
    pub fn table_published(&self, served: usize, rejected: usize) {
        self.routes.set(served as i64);
        self.routes_rejected.set(rejected as i64);
    }

    /// The certificates now served, as (namespace, Secret or file, expiry in unix
    /// seconds): their expiry series are set, and those of certificates no longer
    /// served are removed (never all at once: a scrape meanwhile still sees the rest).
    pub fn certificates_served<'a>(
        &self,
        certs: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
    ) {
        let mut shown = lock(&self.tls_shown);
        let mut next = HashSet::new();
        for (namespace, secret, not_after) in certs {
            self.tls_expiry
                .with_label_values(&[namespace, secret])
                .set(not_after as f64);
            next.insert((namespace.to_string(), secret.to_string()));
        }
        for (namespace, secret) in shown.difference(&next) {
            let _ = self.tls_expiry.remove_label_values(&[namespace, secret]);
        }
        *shown = next;
    }

    /// The counter of access log lines dropped, for the access log's writer.
    pub fn access_log_dropped(&self) -> IntCounter {
        self.access_log_dropped.clone()
    }

    /// A trusted proxy's connection had no valid PROXY header.
    pub fn proxy_header_refused(&self) {
        self.proxy_protocol_refused.inc();
    }

    /// A TLS handshake failed.
    pub fn handshake_failed(&self, reason: &str) {
        self.tls_handshake_errors.with_label_values(&[reason]).inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        // Not held while writing: a publish waits for a copy of the list, no more.
        let mut served: Vec<Arc<RouteMetrics>> = lock(&self.served).values().cloned().collect();
        served.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut families = Families::default();
        self.unrouted.export(&mut families);
        for route in served {
            route.export(&mut families);
        }
        families.write(&mut out);
        out
    }
}

/// Why a remembered path was dropped, in [`RememberedMetrics::evicted`]'s order.
const EVICTION_REASONS: [&str; 3] = ["expired", "capacity", "forgotten"];

/// One route's remembered-paths gauge and eviction counters.
pub struct RememberedMetrics {
    paths: prometheus::IntGauge,
    /// expired, capacity, forgotten.
    evictions: [IntCounter; 3],
}

impl RememberedMetrics {
    /// How many paths the route remembers now.
    pub fn set_len(&self, len: usize) {
        self.paths.set(len as i64);
    }

    /// A remembered path was dropped for `reason` (expired, capacity or forgotten).
    pub fn evicted(&self, reason: &str) {
        let i = match reason {
            "expired" => 0,
            "capacity" => 1,
            _ => 2,
        };
        self.evictions[i].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::tests::mk_route;
    use crate::routes::Answerer;
    use std::time::{Duration, Instant};

    /// The value of the one line starting with `series ` in the text format.
    fn value(text: &str, series: &str) -> f64 {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{series} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{series} once in:\n{text}");
        lines[0].rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_scrape_sums_what_each_worker_counted() {
        // Two copies for three workers: the third shares the first's copy.
        let metrics = Metrics::new(2);
        let shop = metrics.serve(&[mk_route("shop", &[], &["/"])]).remove(0);
        std::thread::scope(|s| {
            for (worker, hits) in [(0, 3), (1, 2), (2, 1)] {
                let shop = &shop;
                s.spawn(move || {
                    crate::shard::enter_worker(worker);
                    for _ in 0..hits {
                        shop.response(Answerer::Primary, http::StatusCode::OK);
                        shop.upstream_attempt(Answerer::Primary, Duration::from_millis(2));
                        drop(shop.request_timer(Instant::now()));
                    }
                    // Label sets resolved at request time, in each worker's copy.
                    shop.response(Answerer::Fallback, http::StatusCode::SERVICE_UNAVAILABLE);
                    shop.upstream_error(Answerer::Fallback, "connect");
                    shop.fallback_on_status();
                });
            }
        });
        let text = String::from_utf8(metrics.encode()).unwrap();
        let labels = r#"namespace="web",route="shop""#;
        for (series, expected) in [
            (
                format!(
                    r#"fallthrough_requests_total{{backend="primary",code="200",{labels},service="127.0.0.1:1"}}"#
                ),
                6.0,
            ),
            (
                format!(
                    r#"fallthrough_requests_total{{backend="primary",code="404",{labels},service="127.0.0.1:1"}}"#
                ),
                0.0,
            ),
            (
                format!(
                    r#"fallthrough_requests_total{{backend="fallback",code="503",{labels},service="127.0.0.1:2"}}"#
                ),
                3.0,
            ),
            (
                format!(
                    r#"fallthrough_upstream_errors_total{{backend="fallback",kind="connect",{labels}}}"#
                ),
                3.0,
            ),
            (
                r#"fallthrough_fallbacks_total{namespace="web",reason="status",route="shop"}"#
                    .to_string(),
                3.0,
            ),
            (
                format!(
                    r#"fallthrough_upstream_duration_seconds_count{{backend="primary",{labels}}}"#
                ),
                6.0,
            ),
            (
                format!(
                    r#"fallthrough_upstream_duration_seconds_bucket{{backend="primary",{labels},le="0.001"}}"#
                ),
                0.0,
            ),
            (
                format!(
                    r#"fallthrough_upstream_duration_seconds_bucket{{backend="primary",{labels},le="0.0025"}}"#
                ),
                6.0,
            ),
            (
                format!(r#"fallthrough_request_duration_seconds_count{{{labels}}}"#),
                6.0,
            ),
        ] {
            assert_eq!(value(&text, &series), expected, "{series}");
        }
        let sum = value(
            &text,
            &format!(r#"fallthrough_upstream_duration_seconds_sum{{backend="primary",{labels}}}"#),
        );
        assert!((sum - 0.012).abs() < 1e-9, "sum {sum}");
    }

    /// Every series line (not `#` lines) naming `route="NAME"`.
    fn lines_of(text: &str, route: &str) -> Vec<String> {
        let needle = format!(r#"route="{route}""#);
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    fn scrape(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).unwrap()
    }

    #[test]
    fn a_removed_route_leaves_metrics_and_late_writes_do_not_bring_it_back() {
        let metrics = Metrics::new(2);
        let mut remembering = mk_route("old", &["old.test"], &["/"]);
        remembering.remember = Some(crate::routes::Remember {
            ttl: Duration::from_secs(60),
            max_paths: 10,
        });
        let kept = mk_route("kept", &["kept.test"], &["/"]);
        let remembered = metrics.remembered(&remembering);
        let handles = metrics.serve(&[kept.clone(), remembering]);
        let (kept_m, old) = (&handles[0], &handles[1]);
        kept_m.response(Answerer::Primary, http::StatusCode::OK);
        kept_m.response(Answerer::Fallback, http::StatusCode::BAD_GATEWAY);
        kept_m.fallback_on_status();
        drop(kept_m.request_timer(Instant::now()));
        old.response(Answerer::Primary, http::StatusCode::OK);
        old.upstream_error(Answerer::Primary, "connect");
        remembered.set_len(3);
        remembered.evicted("expired");
        metrics.unrouted_response("404");
        let before = scrape(&metrics);
        assert!(!lines_of(&before, "old").is_empty());
        assert!(before.contains(r#"fallthrough_remembered_paths{namespace="web",route="old"} 3"#));

        let again = metrics.serve(std::slice::from_ref(&kept));
        assert!(
            Arc::ptr_eq(&again[0], kept_m),
            "a kept route keeps its series"
        );
        // Requests in flight on the old table finish after the reload, some with rare
        // label sets that a metric vector would create anew.
        old.response(Answerer::Fallback, http::StatusCode::SERVICE_UNAVAILABLE);
        old.own_response("502");
        old.upstream_error(Answerer::Fallback, "timeout");
        old.upstream_attempt(Answerer::Primary, Duration::from_millis(1));
        drop(old.request_timer(Instant::now()));
        remembered.set_len(4);
        remembered.evicted("capacity");

        let after = scrape(&metrics);
        assert_eq!(lines_of(&after, "old"), Vec::<String>::new(), "{after}");
        assert_eq!(
            lines_of(&after, "kept"),
            lines_of(&before, "kept"),
            "the kept route's series are untouched"
        );
        assert_eq!(
            value(
                &after,
                r#"fallthrough_requests_total{backend="fallthrough",code="404",namespace="",route="",service=""}"#
            ),
            1.0,
            "the unrouted series stay"
        );
    }

    #[test]
    fn a_changed_service_label_starts_afresh_and_the_rest_is_kept() {
        let metrics = Metrics::new(1);
        let route = mk_route("shop", &["shop.test"], &["/"]);
        let m = metrics.serve(std::slice::from_ref(&route)).remove(0);
        m.response(Answerer::Primary, http::StatusCode::OK);
        m.response(Answerer::Primary, http::StatusCode::FOUND);
        m.response(Answerer::Fallback, http::StatusCode::OK);
        m.fallback_on_status();
        let mut moved = route.clone();
        moved.primary.name = "web/php-v2:80".into();
        let again = metrics.serve(&[moved]).remove(0);
        assert!(Arc::ptr_eq(&again, &m));
        let text = scrape(&metrics);
        let shop = lines_of(&text, "shop");
        assert!(
            !shop.iter().any(|l| l.contains(r#"service="127.0.0.1:1""#)),
            "old-label series go: {shop:#?}"
        );
        let labels = r#"namespace="web",route="shop""#;
        for (series, expected) in [
            (
                format!(
                    r#"fallthrough_requests_total{{backend="primary",code="200",{labels},service="web/php-v2:80"}}"#
                ),
                0.0,
            ),
            (
                format!(
                    r#"fallthrough_requests_total{{backend="fallback",code="200",{labels},service="127.0.0.1:2"}}"#
                ),
                1.0,
            ),
            (
                r#"fallthrough_fallbacks_total{namespace="web",reason="status",route="shop"}"#
                    .to_string(),
                1.0,
            ),
        ] {
            assert_eq!(value(&text, &series), expected, "{series}");
        }
    }

    #[test]
    fn certificates_no_longer_served_lose_their_expiry() {
        let metrics = Metrics::new(1);
        metrics.certificates_served([("web", "a", 100), ("web", "b", 200)]);
        metrics.certificates_served([("web", "b", 300)]);
        let text = scrape(&metrics);
        let expiry: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fallthrough_tls_certificate_expiry_timestamp_seconds{"))
            .collect();
        assert_eq!(
            expiry,
            [
                r#"fallthrough_tls_certificate_expiry_timestamp_seconds{namespace="web",secret="b"} 300"#
            ]
        );
    }
}
