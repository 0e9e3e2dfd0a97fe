//! Every Prometheus metric fallthrough exports, defined in one place.
//!
//! In: events from the proxy (responses, fallbacks, upstream attempts, errors) and from
//! route providers (reloads, route counts).
//! Out: the Prometheus text format served on the admin port's `/metrics`.
//! Metric and label names are a public interface: dashboards and alerts depend on them.
//! Labels are bounded (namespace, route, backend, service, status code, reason), never
//! the request path.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::routes::{Answerer, Route};

/// Buckets for upstream and request durations: from a fast in-cluster hit to a slow page.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Label value of `backend` for responses fallthrough wrote itself (no route, upstream error).
pub const SELF_BACKEND: &str = "fallthrough";

/// The process's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    fallbacks: IntCounterVec,
    fallbacks_skipped: IntCounterVec,
    upstream_duration: HistogramVec,
    request_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    routes: IntGauge,
    routes_rejected: IntGauge,
    config_reloads: IntCounterVec,
    config_last_reload_successful: IntGauge,
    tls_expiry: prometheus::GaugeVec,
    tls_handshake_errors: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        Metrics {
            requests: counter(
                &r,
                "fallthrough_requests_total",
                "Responses sent to clients, by the backend that produced them (primary, fallback, or fallthrough itself).",
                &["namespace", "route", "backend", "service", "code"],
            ),
            fallbacks: counter(
                &r,
                "fallthrough_fallbacks_total",
                "Requests sent on to the fallback, by reason (status: the primary answered a fallbackOn status; error: the primary was unreachable).",
                &["namespace", "route", "reason"],
            ),
            fallbacks_skipped: counter(
                &r,
                "fallthrough_fallbacks_skipped_total",
                "Requests that should have gone to the fallback but could not be replayed (body_too_large).",
                &["namespace", "route", "reason"],
            ),
            upstream_duration: histogram(
                &r,
                "fallthrough_upstream_duration_seconds",
                "Time from sending a request to a backend until its response head, per attempt.",
                &["namespace", "route", "backend"],
            ),
            request_duration: histogram(
                &r,
                "fallthrough_request_duration_seconds",
                "Time from receiving a request until its response body was sent.",
                &["namespace", "route"],
            ),
            upstream_errors: counter(
                &r,
                "fallthrough_upstream_errors_total",
                "Failed upstream attempts, by kind (connect, timeout, protocol).",
                &["namespace", "route", "backend", "kind"],
            ),
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
            registry: r,
        }
    }

    /// Pre-resolved handles for one route, so the request path does no label lookups
    /// for the fixed label sets.
    pub fn route(&self, route: &Route) -> RouteMetrics {
        let (ns, name) = (route.namespace.as_str(), route.name.as_str());
        let upstream = |b: Answerer| {
            self.upstream_duration
                .with_label_values(&[ns, name, b.as_str()])
        };
        let common = |b: Answerer| {
            let service = match b {
                Answerer::Primary => &route.primary.name,
                Answerer::Fallback => &route.fallback.name,
            };
            COMMON_CODES.map(|code| {
                self.requests
                    .with_label_values(&[ns, name, b.as_str(), service, &code.to_string()])
            })
        };
        RouteMetrics {
            common: [common(Answerer::Primary), common(Answerer::Fallback)],
            requests: self.requests.clone(),
            labels: [ns.to_string(), name.to_string()],
            services: [route.primary.name.clone(), route.fallback.name.clone()],
            upstream_duration: [upstream(Answerer::Primary), upstream(Answerer::Fallback)],
            request_duration: self.request_duration.with_label_values(&[ns, name]),
            fallback_status: self.fallbacks.with_label_values(&[ns, name, "status"]),
            fallback_error: self.fallbacks.with_label_values(&[ns, name, "error"]),
            skipped_body_too_large: self.fallbacks_skipped.with_label_values(&[
                ns,
                name,
                "body_too_large",
            ]),
            upstream_errors: self.upstream_errors.clone(),
        }
    }

    /// Counts a response fallthrough produced with no route to charge it to.
    pub fn unrouted_response(&self, code: &str) {
        self.requests
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
    requests: IntCounterVec,
    /// `requests_total` per backend (primary, fallback) for [`COMMON_CODES`].
    common: [[IntCounter; COMMON_CODES.len()]; 2],
    labels: [String; 2],
    services: [String; 2],
    upstream_duration: [Histogram; 2],
    request_duration: Histogram,
    fallback_status: IntCounter,
    fallback_error: IntCounter,
    skipped_body_too_large: IntCounter,
    upstream_errors: IntCounterVec,
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
            self.common[slot(backend)][i].inc();
            return;
        }
        let code = code.as_str();
        let [ns, name] = &self.labels;
        self.requests
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
        self.requests
            .with_label_values(&[ns, name, SELF_BACKEND, "", code])
            .inc();
    }

    /// One upstream attempt took `elapsed` to produce a response head (or fail).
    pub fn upstream_attempt(&self, backend: Answerer, elapsed: Duration) {
        self.upstream_duration[slot(backend)].observe(elapsed.as_secs_f64());
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, backend: Answerer, kind: &str) {
        let [ns, name] = &self.labels;
        self.upstream_errors
            .with_label_values(&[ns, name, backend.as_str(), kind])
            .inc();
    }

    /// The request went on to the fallback because of the primary's status.
    pub fn fallback_on_status(&self) {
        self.fallback_status.inc();
    }

    /// The request went on to the fallback because the primary was unreachable.
    pub fn fallback_on_error(&self) {
        self.fallback_error.inc();
    }

    /// The request would have gone on, but its body was over `maxReplayBytes`.
    pub fn fallback_skipped_body_too_large(&self) {
        self.skipped_body_too_large.inc();
    }

    /// The whole request took `elapsed`.
    pub fn request_finished(&self, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
    }
}
