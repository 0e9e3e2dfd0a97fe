//! The data plane: accepts client requests and answers them from the primary or fallback.
//!
//! In: route tables published by a provider ([`Proxy::publish`]) and client connections
//! ([`listener::serve_workers`]).
//! Out: responses to clients, upstream requests, and metrics.
//! Request phases: pick route → read (and maybe buffer) the body → primary → decide on
//! its response head → maybe fallback → stream the chosen response. Nothing is sent to
//! the client before the decision.

pub mod body;
mod forward;
pub mod headers;
mod http1;
pub mod listener;
pub mod rescue;
mod upstream;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;

use crate::metrics::{Metrics, RouteMetrics};
use crate::routes::RouteTable;
use crate::shard::{CacheLine, PerWorker};
use body::ClientBody;
use headers::RawFields;
use rescue::{rescue, ProxyError};

/// A routing table plus what the proxy needs per route at request time.
pub struct Snapshot {
    table: RouteTable,
    runtimes: Vec<RouteRuntime>,
}

/// Per-route request-time state, parallel to the table's routes.
struct RouteRuntime {
    metrics: Arc<RouteMetrics>,
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
    client_ip: HeaderValue,
    proto: &'static str,
}

impl ConnInfo {
    /// A connection from `peer`, over TLS or not.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP is a valid header");
        ConnInfo {
            client_ip: ip,
            proto: if tls { "https" } else { "http" },
        }
    }
}

/// How long clients may take to send their requests.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// A complete request head; then the connection is closed.
    pub header_timeout: Duration,
    /// A request body being buffered for replay; then 408.
    pub body_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// The proxy: the current snapshot, shared by every data-plane thread.
pub struct Proxy {
    limits: ClientLimits,
    certs: Arc<crate::tls::SniResolver>,
    /// The same snapshot behind one reference count per worker: each request holds the
    /// snapshot it started with, and counting that on a shared count would make the
    /// workers write one cache line on every request.
    snapshot: PerWorker<ArcSwap<CacheLine<Arc<Snapshot>>>>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// A proxy for `workers` data-plane threads, serving an empty table: every request
    /// gets 404 until routes are published.
    pub fn new(metrics: Arc<Metrics>, limits: ClientLimits, workers: usize) -> Arc<Self> {
        let empty = Arc::new(Snapshot {
            table: RouteTable::default(),
            runtimes: Vec::new(),
        });
        Arc::new(Proxy {
            limits,
            certs: Arc::default(),
            snapshot: PerWorker::new(workers, || ArcSwap::from_pointee(CacheLine(empty.clone()))),
            metrics,
        })
    }

    /// Swaps in a new table. Requests already in flight finish on the table they started with.
    pub fn publish(&self, table: RouteTable) {
        let runtimes = table
            .routes()
            .iter()
            .map(|route| RouteRuntime {
                metrics: Arc::new(self.metrics.route(route)),
                turns: self.snapshot.map(|_| Default::default()),
            })
            .collect();
        let snapshot = Arc::new(Snapshot { table, runtimes });
        for copy in self.snapshot.all() {
            copy.store(Arc::new(CacheLine(snapshot.clone())));
        }
    }

    /// Handles one client request; never fails, errors become responses. The body is
    /// `None` for requests the lean HTTP/1.1 path read, which never have one; that path
    /// may also keep the head's fields raw, in `fields` rather than the request's map.
    pub async fn handle(
        &self,
        req: Request<Option<Incoming>>,
        fields: RawFields,
        conn: &ConnInfo,
    ) -> Response<ClientBody> {
        let started = Instant::now();
        let held = self.snapshot.local().load_full();
        let snapshot = &held.0;
        if req.method() == Method::CONNECT {
            return self.unrouted(&ProxyError::ConnectMethod);
        }
        let host = match request_host(&req).or_else(|| fields.host()) {
            Some(host) => host,
            None if req.version() >= Version::HTTP_11 => {
                return self.unrouted(&ProxyError::MissingHost)
            }
            None => "",
        };
        let Some(idx) = snapshot.table.lookup(host, req.uri().path()) else {
            return self.unrouted(&ProxyError::NoRoute);
        };
        let route = snapshot.table.route(idx);
        let rt = &snapshot.runtimes[idx];
        if route.redirect_to_https && conn.proto == "http" {
            return https_redirect(&req, host);
        }
        let body_timeout = self.limits.body_timeout;
        match forward::forward(route, rt, req, fields, conn, started, body_timeout).await {
            Ok(resp) => resp.map(|b| b.timed(rt.metrics.request_timer(started))),
            Err(err) => {
                tracing::warn!(
                    route = %format_args!("{}/{}", route.namespace, route.name),
                    error = %err,
                    "request failed"
                );
                let resp = rescue(&err);
                rt.metrics.own_response(resp.status().as_str());
                resp.map(|b| b.timed(rt.metrics.request_timer(started)))
            }
        }
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

    /// Counts a failed TLS handshake.
    pub fn handshake_failed(&self, reason: &str) {
        self.metrics.handshake_failed(reason);
    }

    /// The limits this proxy was built with.
    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    fn unrouted(&self, err: &ProxyError) -> Response<ClientBody> {
        let resp = rescue(err);
        self.metrics.unrouted_response(resp.status().as_str());
        resp
    }
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

/// The host a request is for: the URI's authority (HTTP/2, absolute-form), else `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
