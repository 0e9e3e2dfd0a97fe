//! Backends as routing data: where a route's requests go, and in what protocol.
//!
//! In: what `index` validated from a route's `primary` or `fallback` (a URL, or a
//! Service's ready endpoints, plus its `fastcgi` or `tls` block).
//! Out: a [`Backend`]: its endpoints (TCP or Unix socket), each with the key its pooled
//! connections are filed under, and its [`Protocol`] (HTTP/1.1, HTTPS, FastCGI).
//! Nothing here opens a socket; the proxy's `upstream` module does, reading this.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use http::uri::Authority;

/// An upstream a route sends requests to: one URL, or a Service's ready endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// Name used in metrics and logs (`host:port`, `unix:/path`, or
    /// `namespace/service:port`).
    pub name: String,
    /// How requests are spoken to it.
    pub protocol: Protocol,
    /// Addresses requests are spread over; empty when a Service has no ready endpoint.
    pub endpoints: Vec<Endpoint>,
}

impl Backend {
    /// A backend speaking `protocol` to `addrs`.
    pub fn new(name: String, protocol: Protocol, addrs: impl IntoIterator<Item = Addr>) -> Self {
        let endpoints = addrs
            .into_iter()
            .map(|addr| Endpoint::new(addr, &protocol))
            .collect();
        Backend {
            name,
            protocol,
            endpoints,
        }
    }

    /// The endpoint for the `n`th request (round robin), if any is ready.
    pub fn endpoint(&self, n: usize) -> Option<&Endpoint> {
        match self.endpoints.len() {
            0 => None,
            len => Some(&self.endpoints[n % len]),
        }
    }
}

/// Where a backend's connections go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// A host (name or IP) and port.
    Tcp(Authority),
    /// A Unix stream socket (a sidecar beside PHP-FPM or gunicorn).
    Unix(PathBuf),
}

/// One address of a backend, with the key its idle connections are pooled under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where connections go.
    pub addr: Addr,
    /// The address together with how it is spoken to: a connection is only reused for
    /// the same protocol (and, for HTTPS, the same server name and trust). For plain
    /// HTTP it is the authority itself, `host:port`.
    pool_key: Box<str>,
    /// The address as the access log shows it: `host:port` or `unix:/path`.
    shown: Arc<str>,
}

impl Endpoint {
    fn new(addr: Addr, protocol: &Protocol) -> Self {
        let place = match &addr {
            Addr::Tcp(authority) => authority.as_str().to_string(),
            Addr::Unix(path) => format!("unix:{}", path.display()),
        };
        let shown: Arc<str> = Arc::from(place.as_str());
        let pool_key = match protocol {
            Protocol::Http => place,
            Protocol::Https(tls) => {
                format!("https|{}|{:016x}|{place}", tls.server_name, tls.trust_id)
            }
            Protocol::FastCgi(_) => format!("fastcgi|{place}"),
        };
        Endpoint {
            addr,
            pool_key: pool_key.into(),
            shown,
        }
    }

    /// The key this endpoint's idle connections are kept under.
    pub fn pool_key(&self) -> &str {
        &self.pool_key
    }

    /// The address as the access log shows it: `host:port` or `unix:/path`.
    pub fn shown(&self) -> Arc<str> {
        self.shown.clone()
    }

    /// The TCP authority, if this is a TCP endpoint.
    pub fn authority(&self) -> Option<&Authority> {
        match &self.addr {
            Addr::Tcp(authority) => Some(authority),
            Addr::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Addr::Tcp(authority) => f.write_str(authority.as_str()),
            Addr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a backend is spoken to.
#[derive(Clone, Debug, PartialEq)]
pub enum Protocol {
    /// HTTP/1.1 in the clear.
    Http,
    /// HTTP/1.1 over TLS.
    Https(Arc<UpstreamTls>),
    /// FastCGI, as PHP-FPM speaks it.
    FastCgi(Arc<FastCgi>),
}

impl Protocol {
    /// The `fastcgi` settings, for a FastCGI backend.
    pub fn fastcgi(&self) -> Option<&FastCgi> {
        match self {
            Protocol::FastCgi(fcgi) => Some(fcgi),
            _ => None,
        }
    }
}

/// TLS to a backend: who it must prove to be, and by whose authority.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// The name sent in SNI and checked against the certificate.
    pub server_name: String,
    /// Where the trusted CAs come from: `system`, `file:PATH` or `secret:NS/NAME`.
    pub ca: String,
    /// Certificates are not checked at all (logged at startup).
    pub insecure_skip_verify: bool,
    /// Tells trust settings apart (a hash of the CA bundle's bytes and
    /// `insecure_skip_verify`): a pooled connection verified under one is never reused
    /// under another.
    pub trust_id: u64,
    /// The client settings built from the above, once per table.
    pub config: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        // The config is built from the other fields (and the CA's bytes, which `ca`
        // names): two equal settings may hold separately built configs.
        self.server_name == other.server_name
            && self.ca == other.ca
            && self.trust_id == other.trust_id
            && self.insecure_skip_verify == other.insecure_skip_verify
            && Arc::ptr_eq(&self.config, &other.config)
    }
}

/// How requests are mapped onto PHP scripts: nginx's `fastcgi_pass` with
/// `fastcgi_split_path_info` and `fastcgi_index`, as the `fastcgi` block sets them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastCgi {
    /// The scripts' directory on the FastCGI server, absolute, without a trailing
    /// slash (`SCRIPT_FILENAME` = this + `SCRIPT_NAME`).
    pub document_root: String,
    /// The script for paths ending in `/` (`index.php`).
    pub index: String,
    /// The script (`/index.php`) that runs for paths naming no script, if any.
    pub front_controller: Option<String>,
    /// Where a path splits into script and `PATH_INFO`: after the first segment that
    /// ends with this (`.php`).
    pub split_path: String,
    /// Extra params, sent after the standard ones (so they may override them).
    pub params: Vec<(String, String)>,
    /// Most connections kept to one endpoint, over every worker: each holds a PHP-FPM
    /// worker while it is open, so at most `pm.max_children`.
    pub max_connections: usize,
}

/// Defaults of the `fastcgi` block.
impl FastCgi {
    /// `index` when unset.
    pub const DEFAULT_INDEX: &'static str = "index.php";
    /// `splitPath` when unset.
    pub const DEFAULT_SPLIT_PATH: &'static str = ".php";
    /// `maxConnections` when unset: PHP-FPM's own default `pm.max_children`.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 5;
}
