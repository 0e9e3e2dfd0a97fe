//! The data plane: accepts client requests and answers them from the primary or fallback.
//!
//! In: route tables published by a provider ([`Proxy::publish`]) and client connections
//! ([`listener::serve_workers`]).
//! Out: responses to clients, upstream requests, and metrics.
//! Request phases: pick route → read (and maybe buffer) the body → primary → decide on
//! its response head → maybe fallback → stream the chosen response. Nothing is sent to
//! the client before the decision.

pub mod answer;
pub mod body;
mod deadline;
pub mod fastcgi;
mod forward;
pub mod h1;
pub mod listener;
pub mod path;
pub mod proxy_protocol;
pub mod remembered;
pub mod rescue;
mod trail;
pub mod trust;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response, Version};

use crate::access_log::{AccessLog, Entry, Pending};
use crate::insight::recorder::{Insight, RouteRecord};
use crate::metrics::{Metrics, RouteMetrics};
use crate::routes::RouteTable;
use crate::shard::{CacheLine, PerWorker};
use answer::ClientBody;
use body::{ClientRequestBody, ReplayBudget};
use h1::head::RawFields;
use rescue::{rescue, ProxyError};
use trail::Trail;
use trust::TrustedProxies;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A routing table plus what the proxy needs per route at request time.
pub struct Snapshot {
    table: RouteTable,
    runtimes: Vec<RouteRuntime>,
}

/// Per-route request-time state, parallel to the table's routes.
struct RouteRuntime {
    /// `namespace/name`, as the access log names it.
    key: Arc<str>,
    metrics: Arc<RouteMetrics>,
    /// The paths sent straight to the fallback, with `rememberFallbacks`; carried over
    /// to the next table while the route's spec stays the same.
    remembered: Option<Arc<remembered::Remembered>>,
    /// Its paths report and running totals, kept for as long as the route is served.
    record: Arc<RouteRecord>,
    /// Round-robin position per backend (primary, fallback), per worker like nginx's.
    turns: PerWorker<[AtomicUsize; 2]>,
}

impl RouteRuntime {
    fn next_turn(&self, backend: crate::routes::Answerer) -> usize {
        let slot = match backend {
            crate::routes::Answerer::Primary => 0,
            crate::routes::Answerer::Fallback => 1,
        };
        self.turns.local()[slot].fetch_add(1, Ordering::Relaxed)
    }
}

/// What the proxy knows about one client connection.
#[derive(Clone)]
pub struct ConnInfo {
    /// The peer's address as text, which `X-Forwarded-For` ends with.
    client_ip: HeaderValue,
    /// The peer is a trusted proxy (`--trusted-proxies`): its forwarding fields count.
    trusted: bool,
    proto: &'static str,
    peers: fastcgi::params::Peers,
}

impl ConnInfo {
    /// A connection from `peer` (the TCP peer, or the client a trusted proxy's PROXY
    /// header named), over TLS or not.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a valid header");
        ConnInfo {
            client_ip: ip,
            trusted: false,
            proto: if tls { "https" } else { "http" },
            peers: fastcgi::params::Peers {
                client: peer,
                ..fastcgi::params::Peers::UNKNOWN
            },
        }
    }

    /// The same connection, which reached the proxy's listener at `local`.
    pub fn at(mut self, local: SocketAddr) -> Self {
        self.peers.server = local;
        self
    }

    /// The same connection, its peer judged by `trusted`.
    pub fn judged(mut self, trusted: &TrustedProxies) -> Self {
        self.trusted = trusted.trusts(self.peers.client.ip());
        self
    }
}

/// What stands in front of the proxy, and what it tells about each request: the
/// trusted proxies, the PROXY protocol, the access log.
#[derive(Clone, Default)]
pub struct Front {
    /// Peers whose forwarding fields and PROXY headers are believed.
    pub trusted: TrustedProxies,
    /// Connections from trusted proxies start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Where each request's line goes, if anywhere.
    pub access_log: Option<Arc<AccessLog>>,
}

/// Every limit and timeout the data plane enforces, in one place; each is read by the
/// code that enforces it. Defaults follow nginx's.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A complete request head; then the connection is closed without an answer
    /// (nginx's `client_header_timeout`, 60 s there; 30 s here).
    pub header_timeout: Duration,
    /// Longest pause between two reads of a request body (nginx's
    /// `client_body_timeout`); then 408, or a broken upload if it was already streaming.
    pub body_timeout: Duration,
    /// Longest a client may take no bytes of its answer (nginx's `send_timeout`); then
    /// the connection is closed.
    pub write_timeout: Duration,
    /// Longest a backend may take no bytes of a request body or send none of a response
    /// body (nginx's `proxy_send_timeout` and `proxy_read_timeout`).
    pub upstream_read_timeout: Duration,
    /// Bytes all buffered replay bodies of the process may hold together.
    pub replay_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            upstream_read_timeout: Duration::from_secs(60),
            replay_budget: 256 * 1024 * 1024,
        }
    }
}

/// The proxy: the current snapshot, shared by every data-plane thread.
pub struct Proxy {
    limits: Limits,
    budget: Arc<ReplayBudget>,
    certs: Arc<crate::tls::SniResolver>,
    /// The same snapshot behind one reference count per worker: each request holds the
    /// snapshot it started with, and counting that on a shared count would make the
    /// workers write one cache line on every request.
    snapshot: PerWorker<ArcSwap<CacheLine<Arc<Snapshot>>>>,
    metrics: Arc<Metrics>,
    insight: Arc<Insight>,
    front: Front,
}

impl Proxy {
    /// A proxy for `workers` data-plane threads, serving an empty table: every request
    /// gets 404 until routes are published.
    pub fn new(
        metrics: Arc<Metrics>,
        insight: Arc<Insight>,
        limits: Limits,
        workers: usize,
        front: Front,
    ) -> Arc<Self> {
        let empty = Arc::new(Snapshot {
            table: RouteTable::default(),
            runtimes: Vec::new(),
        });
        Arc::new(Proxy {
            limits,
            budget: ReplayBudget::new(limits.replay_budget),
            certs: Arc::default(),
            snapshot: PerWorker::new(workers, || ArcSwap::from_pointee(CacheLine(empty.clone()))),
            metrics,
            insight,
            front,
        })
    }

    /// Swaps in a new table. Requests already in flight finish on the table they started with.
    pub fn publish(&self, table: RouteTable) {
        for route in table.routes() {
            for backend in [&route.primary, &route.fallback] {
                if let crate::routes::Protocol::Https(tls) = &backend.protocol {
                    if tls.insecure_skip_verify {
                        tracing::warn!(
                            route = %format_args!("{}/{}", route.namespace, route.name),
                            backend = %backend.name,
                            "insecureSkipVerify: this backend's TLS certificate is not checked; anyone on the network path can read and change its traffic"
                        );
                    }
                }
            }
        }
        let previous = self.snapshot.all().next().map(|copy| copy.load_full());
        let kept: HashMap<String, (&crate::routes::Route, &RouteRuntime)> = previous
            .iter()
            .flat_map(|p| p.0.table.routes().iter().zip(&p.0.runtimes))
            .map(|(route, rt)| (route.key(), (route, rt)))
            .collect();
        // Kept routes keep their series; removed routes' series leave `/metrics` here.
        let metrics = self.metrics.serve(table.routes());
        let runtimes = table
            .routes()
            .iter()
            .zip(metrics)
            .map(|(route, metrics)| {
                let before = kept.get(&route.key());
                let remembered = route.remember.map(|remember| {
                    match before.and_then(|(old, rt)| {
                        rt.remembered.clone().filter(|_| old.same_spec(route))
                    }) {
                        Some(memory) => memory,
                        None => Arc::new(remembered::Remembered::new(
                            remember,
                            self.metrics.remembered(route),
                        )),
                    }
                });
                RouteRuntime {
                    key: Arc::from(format!("{}/{}", route.namespace, route.name)),
                    metrics,
                    remembered,
                    record: self.insight.route(&route.key()),
                    turns: self.snapshot.map(|_| Default::default()),
                }
            })
            .collect();
        self.insight
            .retain(&table.routes().iter().map(|r| r.key()).collect());
        let snapshot = Arc::new(Snapshot { table, runtimes });
        for copy in self.snapshot.all() {
            copy.store(Arc::new(CacheLine(snapshot.clone())));
        }
    }

    /// Whether the table now serving has exactly these routes.
    pub fn serves(&self, routes: &[crate::routes::Route]) -> bool {
        self.snapshot
            .all()
            .next()
            .is_some_and(|copy| copy.load().0.table.routes() == routes)
    }

    /// Handles one client request; never fails, errors become responses. HTTP/1.x
    /// heads may keep their fields raw, in `fields` rather than the request's map.
    ///
    /// Every answer carries the request's `X-Request-Id`, and, with the access log on,
    /// its line is written at the answer's last byte.
    pub async fn handle(
        &self,
        mut req: Request<Option<ClientRequestBody>>,
        fields: RawFields,
        conn: &ConnInfo,
    ) -> Response<ClientBody> {
        let started = Instant::now();
        let peer = conn.peers.client.ip();
        // Only a trusted proxy's fields are read; nobody else's reach this far intact.
        let (client, request_id) = if conn.trusted {
            let sent = req.headers().get_all(&X_FORWARDED_FOR).iter();
            let client = self
                .front
                .trusted
                .client(peer, sent.map(HeaderValue::as_bytes));
            (client, trust::request_id(req.headers().get(&X_REQUEST_ID)))
        } else {
            (peer, trust::new_request_id())
        };
        let trail = Trail::new(self.front.access_log.is_some());
        let entry = self.front.access_log.as_ref().map(|_| {
            if let Some(counter) = trail.count_received() {
                let body = req.body_mut().take();
                *req.body_mut() = body.map(|b| ClientRequestBody::Counted(Box::new(b), counter));
            }
            entry_of(&req, &fields, client, &request_id)
        });
        // Routing and forwarding, inline: one async fn more around `forward` would copy
        // its whole state once more per request.
        //
        // The path is normalised before routing (see [`path`]) and the normalised path
        // is what the backend gets: a backend never sees a path that would route
        // elsewhere.
        let trail = &trail;
        let mut resp = 'answer: {
            let held = self.snapshot.local().load_full();
            let snapshot = &held.0;
            if req.method() == Method::CONNECT {
                break 'answer self.refused(&ProxyError::ConnectMethod, trail);
            }
            let host = match request_host(&req, &fields) {
                Ok(Some(host)) => host,
                Ok(None) if req.version() >= Version::HTTP_11 => {
                    break 'answer self.refused(&ProxyError::MissingHost, trail)
                }
                Ok(None) => "",
                Err(err) => break 'answer self.refused(&err, trail),
            };
            // A clone shares the URI's bytes: the routed path outlives the request, which
            // moves on upstream, for what the route remembers and records of it.
            let uri = req.uri().clone();
            let target = uri.path();
            let routed = if target == "*" {
                // OPTIONS *: the server itself, routed as its root.
                std::borrow::Cow::Borrowed("/")
            } else {
                match path::normalize(target) {
                    Ok(path) => path,
                    Err(err) => break 'answer self.refused(&ProxyError::BadPath(err), trail),
                }
            };
            let Some(idx) = snapshot.table.lookup(host, &routed) else {
                break 'answer self.refused(&ProxyError::NoRoute, trail);
            };
            let route = snapshot.table.route(idx);
            let rt = &snapshot.runtimes[idx];
            trail.routed(&rt.key);
            if route.redirect_to_https && conn.proto == "http" {
                break 'answer https_redirect(&req, host);
            }
            let how = forward::How {
                started,
                limits: &self.limits,
                budget: &self.budget,
                path: &routed,
                rewritten: matches!(routed, std::borrow::Cow::Owned(_)),
                client,
                request_id: request_id.clone(),
                trail,
            };
            match forward::forward(route, rt, req, fields, conn, how).await {
                // Timed by `forward` as it built the answer: mapping it here would copy it.
                Ok(resp) => resp,
                Err(err) => {
                    tracing::warn!(
                        route = %format_args!("{}/{}", route.namespace, route.name),
                        error = %err,
                        "request failed"
                    );
                    trail.failed(err.name());
                    let resp = rescue(&err);
                    rt.metrics.own_response(resp.status().as_str());
                    rt.record.record("", None, false, started);
                    resp.map(|b| b.timed(rt.metrics.request_timer(started)))
                }
            }
        };
        // An upstream's echo of it went into the map (the codec saw to that): ours wins.
        if !resp.headers().is_empty() {
            resp.headers_mut().remove(&X_REQUEST_ID);
        }
        resp.body_mut().set_request_id(request_id);
        if let (Some(log), Some(mut entry)) = (&self.front.access_log, entry) {
            let received = trail.fill(&mut entry);
            entry.status = resp.status().as_u16();
            resp.body_mut()
                .log(Pending::new(entry, started, log.clone(), received));
        }
        resp
    }

    /// Swaps in new certificates; open connections keep theirs.
    pub fn publish_certs(&self, store: crate::tls::CertStore) {
        self.certs.publish(store);
    }

    /// TLS settings for the HTTPS listener: TLS 1.2 and 1.3, ALPN h2 and http/1.1,
    /// certificates by SNI.
    pub fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Counts a trusted proxy's connection closed for its PROXY header.
    pub fn proxy_header_refused(&self) {
        self.metrics.proxy_header_refused();
    }

    /// Counts a failed TLS handshake.
    pub fn handshake_failed(&self, reason: &str) {
        self.metrics.handshake_failed(reason);
    }

    /// The paths report and running totals of every route served.
    pub fn insight(&self) -> Arc<Insight> {
        self.insight.clone()
    }

    /// The limits this proxy was built with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// fallthrough's answer to a request refused before it had a route (or the codec
    /// refused its head): counted with no route.
    pub(crate) fn unrouted(&self, err: &ProxyError) -> Response<ClientBody> {
        let resp = rescue(err);
        self.metrics.unrouted_response(resp.status().as_str());
        resp
    }

    fn refused(&self, err: &ProxyError, trail: &Trail) -> Response<ClientBody> {
        trail.failed(err.name());
        self.unrouted(err)
    }

    /// Hands the calling worker's access log lines to the writer: once a second.
    pub fn flush_access_log(&self) {
        if let Some(log) = &self.front.access_log {
            log.flush_local();
        }
    }

    /// What stands in front of the proxy.
    pub fn front(&self) -> &Front {
        &self.front
    }
}

/// The access log's entry for a request, before it is answered.
fn entry_of(
    req: &Request<Option<ClientRequestBody>>,
    fields: &RawFields,
    client: std::net::IpAddr,
    request_id: &HeaderValue,
) -> Box<Entry> {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(&name)
            .cloned()
            .or_else(|| fields.get(name.as_str().as_bytes()))
    };
    // Boxed: the request's future holds it across every await, and is copied whole.
    Box::new(Entry {
        time: std::time::SystemTime::now(),
        client,
        method: req.method().clone(),
        host: request_host(req, fields).ok().flatten().map(Box::from),
        target: req.uri().clone(),
        version: req.version(),
        referer: header(http::header::REFERER),
        user_agent: header(http::header::USER_AGENT),
        status: 0,
        bytes_sent: 0,
        bytes_received: 0,
        duration: Duration::ZERO,
        route: None,
        backend: crate::metrics::SELF_BACKEND,
        primary: None,
        fallback: None,
        fallback_reason: None,
        fallback_skipped: None,
        error: None,
        request_id: request_id.clone(),
    })
}

/// 308 to the same URL over https (port 443: the Service in front maps it).
fn https_redirect<B>(req: &Request<B>, host: &str) -> Response<ClientBody> {
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    let mut resp = Response::new(ClientBody::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, value);
    }
    resp
}

/// The host a request is for: the target's authority (HTTP/2's `:authority`, an
/// HTTP/1.1 absolute-form target), else `Host`.
///
/// An absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2: the upstream
/// head is rebuilt with it). An HTTP/2 request whose `host` names another authority
/// than `:authority` is refused (RFC 9113 §8.3.1), as nginx does.
fn request_host<'r>(
    req: &'r Request<Option<ClientRequestBody>>,
    fields: &'r RawFields,
) -> Result<Option<&'r str>, ProxyError> {
    let sent = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| fields.host());
    let Some(authority) = req.uri().authority() else {
        return Ok(sent);
    };
    if req.version() == Version::HTTP_2 {
        if let Some(sent) = sent {
            if !sent.eq_ignore_ascii_case(authority.as_str()) {
                return Err(ProxyError::AuthorityMismatch);
            }
        }
    }
    Ok(Some(authority.as_str()))
}
