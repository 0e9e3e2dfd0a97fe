//! Every Prometheus metric fallthrough exports, defined in one place.
//!
//! In: events from the proxy (responses, fallbacks, upstream attempts, errors) and from
//! route providers (reloads, route counts).
//! Out: the Prometheus text format served on the admin port's `/metrics`.
//! Metric and label names are a public interface: dashboards and alerts depend on them.
//! Labels are bounded (namespace, route, backend, service, status code, reason), never
//! the request path.
//!
//! The families every request writes exist once per worker thread ([`PerWorker`]), so
//! the workers never write the same counter; a scrape sums the copies into one series
//! per label set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::routes::{Answerer, Route};
use crate::shard::PerWorker;

/// Buckets for upstream and request durations: from a fast in-cluster hit to a slow page.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// At most this many copies of the request-path families. Each copy holds every route's
/// series, so on a many-core machine with many routes memory, not contention, becomes
/// the limit; past this, workers share copies (still exact: every copy is atomic).
const MAX_COPIES: usize = 8;

/// Label value of `backend` for responses fallthrough wrote itself (no route, upstream error).
pub const SELF_BACKEND: &str = "fallthrough";

/// The process's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    /// What requests write, one copy per worker; registered as one [`Summed`] collector.
    per_request: Arc<PerWorker<RequestFamilies>>,
    routes: IntGauge,
    routes_rejected: IntGauge,
    config_reloads: IntCounterVec,
    config_last_reload_successful: IntGauge,
    tls_expiry: prometheus::GaugeVec,
    tls_handshake_errors: IntCounterVec,
    remembered_paths: prometheus::IntGaugeVec,
    remembered_evictions: IntCounterVec,
    paths_memory: IntGauge,
    paths_memory_limit: IntGauge,
    access_log_dropped: IntCounter,
    proxy_protocol_refused: IntCounter,
}

fn counter_family(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = counter_family(name, help, labels);
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram_family(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    HistogramVec::new(opts, labels).expect("valid metric definition")
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

/// The families written on the request path: one worker's copy.
struct RequestFamilies {
    requests: IntCounterVec,
    fallbacks: IntCounterVec,
    fallbacks_skipped: IntCounterVec,
    upstream_duration: HistogramVec,
    request_duration: HistogramVec,
    upstream_errors: IntCounterVec,
}

impl RequestFamilies {
    fn new() -> Self {
        RequestFamilies {
            requests: counter_family(
                "fallthrough_requests_total",
                "Responses sent to clients, by the backend that produced them (primary, fallback, or fallthrough itself).",
                &["namespace", "route", "backend", "service", "code"],
            ),
            fallbacks: counter_family(
                "fallthrough_fallbacks_total",
                "Requests sent to the fallback, by reason (status: the primary answered a fallbackOn status; error: the primary was unreachable; remembered: the primary did not serve the path recently, rememberFallbacks; skip_primary: a skipPrimary prefix).",
                &["namespace", "route", "reason"],
            ),
            fallbacks_skipped: counter_family(
                "fallthrough_fallbacks_skipped_total",
                "Requests that should have gone to the fallback but could not be replayed: body_too_large (over maxReplayBytes), replay_budget (the process-wide --max-replay-buffer was spent).",
                &["namespace", "route", "reason"],
            ),
            upstream_duration: histogram_family(
                "fallthrough_upstream_duration_seconds",
                "Time from sending a request to a backend until its response head, per attempt.",
                &["namespace", "route", "backend"],
            ),
            request_duration: histogram_family(
                "fallthrough_request_duration_seconds",
                "Time from receiving a request until its response body was sent.",
                &["namespace", "route"],
            ),
            upstream_errors: counter_family(
                "fallthrough_upstream_errors_total",
                "Failed upstream attempts, by kind (connect, timeout, protocol).",
                &["namespace", "route", "backend", "kind"],
            ),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 6] {
        [
            &self.requests,
            &self.fallbacks,
            &self.fallbacks_skipped,
            &self.upstream_duration,
            &self.request_duration,
            &self.upstream_errors,
        ]
    }
}

/// Exports the workers' copies of [`RequestFamilies`] as one set of series, summed.
struct Summed(Arc<PerWorker<RequestFamilies>>);

impl Collector for Summed {
    fn desc(&self) -> Vec<&Desc> {
        let first = self.0.all().next().expect("at least one copy");
        first
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut copies = self
            .0
            .all()
            .map(|f| f.collectors().into_iter().flat_map(|c| c.collect()));
        let mut total: Vec<MetricFamily> = copies.next().expect("at least one copy").collect();
        for copy in copies {
            for (into, from) in total.iter_mut().zip(copy) {
                add_family(into, from);
            }
        }
        total
    }
}

/// Adds `from`'s series to `into`'s (the same family from another worker).
fn add_family(into: &mut MetricFamily, mut from: MetricFamily) {
    debug_assert_eq!(into.name(), from.name());
    let key = |m: &Metric| -> Vec<String> {
        m.get_label().iter().map(|l| l.value().to_owned()).collect()
    };
    let mut at: HashMap<Vec<String>, usize> = into
        .get_metric()
        .iter()
        .enumerate()
        .map(|(i, m)| (key(m), i))
        .collect();
    let kind = into.get_field_type();
    for m in from.take_metric() {
        match at.get(&key(&m)) {
            Some(&i) => add_series(kind, &mut into.mut_metric()[i], &m),
            None => {
                at.insert(key(&m), into.get_metric().len());
                into.mut_metric().push(m);
            }
        }
    }
}

/// Adds one series' counts to another's with the same labels.
fn add_series(kind: MetricType, into: &mut Metric, from: &Metric) {
    match kind {
        MetricType::COUNTER => {
            let mut c = into.get_counter().clone();
            c.set_value(c.get_value() + from.get_counter().get_value());
            into.set_counter(c);
        }
        MetricType::HISTOGRAM => {
            let (mut h, add) = (into.get_histogram().clone(), from.get_histogram());
            h.set_sample_count(h.get_sample_count() + add.get_sample_count());
            h.set_sample_sum(h.get_sample_sum() + add.get_sample_sum());
            let mut buckets = h.get_bucket().to_vec();
            for (b, a) in buckets.iter_mut().zip(add.get_bucket()) {
                b.set_cumulative_count(b.cumulative_count() + a.cumulative_count());
            }
            h.set_bucket(buckets);
            into.set_histogram(h);
        }
        _ => unreachable!("only counters and histograms are written per worker"),
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry, with one copy of the
    /// request-path families per worker thread (up to [`MAX_COPIES`]).
    pub fn new(workers: usize) -> Self {
        let r = Registry::new();
        let copies = workers.min(MAX_COPIES);
        let per_request = Arc::new(PerWorker::new(copies, RequestFamilies::new));
        r.register(Box::new(Summed(per_request.clone())))
            .expect("metric registered once");
        Metrics {
            per_request,
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
        RememberedMetrics {
            paths: self.remembered_paths.with_label_values(&labels),
            evictions: ["expired", "capacity", "forgotten"].map(|reason| {
                self.remembered_evictions
                    .with_label_values(&[labels[0], labels[1], reason])
            }),
        }
    }

    /// Pre-resolved handles for one route, so the request path does no label lookups
    /// for the fixed label sets.
    pub fn route(&self, route: &Route) -> RouteMetrics {
        let (ns, name) = (route.namespace.as_str(), route.name.as_str());
        let services = [route.primary.name.clone(), route.fallback.name.clone()];
        let series = self.per_request.map(|f| {
            let upstream = |b: Answerer| {
                f.upstream_duration
                    .with_label_values(&[ns, name, b.as_str()])
            };
            let common = |b: Answerer| {
                COMMON_CODES.map(|code| {
                    f.requests.with_label_values(&[
                        ns,
                        name,
                        b.as_str(),
                        &services[slot(b)],
                        &code.to_string(),
                    ])
                })
            };
            RouteSeries {
                common: [common(Answerer::Primary), common(Answerer::Fallback)],
                upstream_duration: [upstream(Answerer::Primary), upstream(Answerer::Fallback)],
                request_duration: f.request_duration.with_label_values(&[ns, name]),
                fallback_status: f.fallbacks.with_label_values(&[ns, name, "status"]),
                fallback_error: f.fallbacks.with_label_values(&[ns, name, "error"]),
                skipped_body_too_large: f.fallbacks_skipped.with_label_values(&[
                    ns,
                    name,
                    "body_too_large",
                ]),
                skipped_budget: f
                    .fallbacks_skipped
                    .with_label_values(&[ns, name, "replay_budget"]),
                // Only for routes that can take these ways: no idle series elsewhere.
                fallback_remembered: route
                    .remember
                    .map(|_| f.fallbacks.with_label_values(&[ns, name, "remembered"])),
                fallback_skip_primary: route
                    .cut_over
                    .iter()
                    .any(|(_, rule)| *rule == crate::routes::CutOver::SkipPrimary)
                    .then(|| f.fallbacks.with_label_values(&[ns, name, "skip_primary"])),
            }
        });
        RouteMetrics {
            series,
            families: self.per_request.clone(),
            labels: [ns.to_string(), name.to_string()],
            services,
        }
    }

    /// Counts a response fallthrough produced with no route to charge it to.
    pub fn unrouted_response(&self, code: &str) {
        self.per_request
            .local()
            .requests
            .with_label_values(&["", "", SELF_BACKEND, "", code])
            .inc();
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

    /// Forgets every certificate's expiry before a new set is published.
    pub fn certificates_replaced(&self) {
        self.tls_expiry.reset();
    }

    /// A served certificate and when it expires.
    pub fn certificate_expiry(&self, namespace: &str, secret: &str, not_after: i64) {
        self.tls_expiry
            .with_label_values(&[namespace, secret])
            .set(not_after as f64);
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
        out
    }
}

/// Statuses whose response counters are resolved up front (nearly all of this
/// product's traffic); their series exist from the start, at 0, so `rate()` works at once.
const COMMON_CODES: [u16; 2] = [200, 404];

/// Metric handles for one route.
pub struct RouteMetrics {
    /// The route's fixed series, in each worker's copy of the families.
    series: PerWorker<RouteSeries>,
    /// For the rare label sets (other status codes, error kinds).
    families: Arc<PerWorker<RequestFamilies>>,
    labels: [String; 2],
    services: [String; 2],
}

/// A route's fixed series in one worker's copy of the families.
struct RouteSeries {
    /// `requests_total` per backend (primary, fallback) for [`COMMON_CODES`].
    common: [[IntCounter; COMMON_CODES.len()]; 2],
    upstream_duration: [Histogram; 2],
    request_duration: Histogram,
    fallback_status: IntCounter,
    fallback_error: IntCounter,
    skipped_body_too_large: IntCounter,
    skipped_budget: IntCounter,
    fallback_remembered: Option<IntCounter>,
    fallback_skip_primary: Option<IntCounter>,
}

fn slot(b: Answerer) -> usize {
    match b {
        Answerer::Primary => 0,
        Answerer::Fallback => 1,
    }
}

impl RouteMetrics {
    /// A response from `backend` reached the client with status `code`.
    pub fn response(&self, backend: Answerer, code: http::StatusCode) {
        if let Some(i) = COMMON_CODES.iter().position(|c| *c == code.as_u16()) {
            self.series.local().common[slot(backend)][i].inc();
            return;
        }
        let code = code.as_str();
        let [ns, name] = &self.labels;
        self.families
            .local()
            .requests
            .with_label_values(&[
                ns,
                name,
                backend.as_str(),
                &self.services[slot(backend)],
                code,
            ])
            .inc();
    }

    /// fallthrough answered the client itself (an upstream error).
    pub fn own_response(&self, code: &str) {
        let [ns, name] = &self.labels;
        self.families
            .local()
            .requests
            .with_label_values(&[ns, name, SELF_BACKEND, "", code])
            .inc();
    }

    /// One upstream attempt took `elapsed` to produce a response head (or fail).
    pub fn upstream_attempt(&self, backend: Answerer, elapsed: Duration) {
        self.series.local().upstream_duration[slot(backend)].observe(elapsed.as_secs_f64());
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, backend: Answerer, kind: &str) {
        let [ns, name] = &self.labels;
        self.families
            .local()
            .upstream_errors
            .with_label_values(&[ns, name, backend.as_str(), kind])
            .inc();
    }

    /// The request went on to the fallback because of the primary's status.
    pub fn fallback_on_status(&self) {
        self.series.local().fallback_status.inc();
    }

    /// The request went on to the fallback because the primary was unreachable.
    pub fn fallback_on_error(&self) {
        self.series.local().fallback_error.inc();
    }

    /// The request went straight to the fallback: its path was remembered.
    pub fn fallback_remembered(&self) {
        if let Some(c) = &self.series.local().fallback_remembered {
            c.inc();
        }
    }

    /// The request went straight to the fallback: a `skipPrimary` prefix.
    pub fn fallback_skip_primary(&self) {
        if let Some(c) = &self.series.local().fallback_skip_primary {
            c.inc();
        }
    }

    /// The request would have gone on, but its body was over `maxReplayBytes`.
    pub fn fallback_skipped_body_too_large(&self) {
        self.series.local().skipped_body_too_large.inc();
    }

    /// The request would have gone on, but the replay budget was spent when it came.
    pub fn fallback_skipped_replay_budget(&self) {
        self.series.local().skipped_budget.inc();
    }

    /// Starts timing a whole request; the time is recorded when the timer is dropped.
    pub fn request_timer(&self, started: Instant) -> RequestTimer {
        RequestTimer {
            started,
            histogram: self.series.local().request_duration.clone(),
        }
    }
}

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

/// Observes a whole request's duration once, on drop (after the last byte of the
/// response was written, or when the client went away). Holds its series, so a reload
/// during a long download still records into the right one.
pub struct RequestTimer {
    started: Instant,
    histogram: Histogram,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::tests::mk_route;

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
        let shop = metrics.route(&mk_route("shop", &[], &["/"]));
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
}
