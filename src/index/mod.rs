//! Turns user-written `FallbackRoute` specs into validated routes and route tables.
//!
//! In: (namespace, name, [`FallbackRouteSpec`]) from a provider (route files today).
//! Out: [`Route`]s or an [`InvalidRoute`] that says what to fix, and whole
//! [`RouteTable`] snapshots with the conflicts found while building them.
//! Pure functions: providers decide what to do with errors (log, keep serving, report).

use std::time::Duration;

use http::uri::Authority;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{self, FallbackRouteSpec};
use crate::routes::{Answerer, Backend, CutOver, HostMatch, Remember, Route, Timeouts};
use backends::backend;

mod backends;
pub mod cluster;
mod conditions;
#[cfg(test)]
mod tests;
mod watched;

/// What validation needs to know beyond the spec.
pub struct Context<'a> {
    /// Timeouts for routes that set none.
    pub defaults: Timeouts,
    /// Whether `url` backends may be used (always in files; by flag in a cluster).
    pub allow_url_backends: bool,
    /// Resolves `service` backends; `None` outside a cluster.
    pub services: Option<&'a dyn Services>,
    /// Reads the CA bundles backends' `tls` blocks name; `None`: only system roots.
    pub trust: Option<&'a dyn Trust>,
}

impl Context<'_> {
    /// Route files: URLs only.
    pub fn files(defaults: Timeouts) -> Context<'static> {
        Context {
            defaults,
            allow_url_backends: true,
            services: None,
            trust: None,
        }
    }
}

/// Looks up a Service port's ready endpoints.
pub trait Services {
    /// The ready endpoints (`ip:port`) behind port `port` of Service `namespace/name`.
    fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: &IntOrString,
    ) -> Result<Vec<Authority>, Unresolved>;
}

/// Reads the CA bundle a backend's `tls` block names.
pub trait Trust {
    /// The PEM of `caFile` (route files) or `caSecretName` (cluster); `None` when the
    /// block names neither. The error says what is missing or unreadable.
    fn ca_pem(&self, namespace: &str, tls: &api::BackendTlsSpec)
        -> Result<Option<Vec<u8>>, String>;
}

/// A backend reference that does not lead to a ready endpoint. The route is still
/// served; its requests to that backend get 503 until this clears.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// No such Service.
    #[error("Service {0} does not exist")]
    ServiceNotFound(String),
    /// The Service has no such port.
    #[error("Service {service} has no port {port}")]
    PortNotFound {
        /// `namespace/name`.
        service: String,
        /// The port as written.
        port: String,
    },
    /// The Service exists but none of its endpoints is ready.
    #[error("Service {0} has no ready endpoints")]
    NoReadyEndpoints(String),
    /// The TLS Secret is missing or unusable; HTTPS keeps its last good certificate.
    #[error("TLS Secret {secret}: {why}")]
    Certificate {
        /// `namespace/name`.
        secret: String,
        /// What is wrong (never key material).
        why: String,
    },
}

impl Unresolved {
    /// The `ResolvedRefs` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Unresolved::ServiceNotFound(_) => "BackendNotFound",
            Unresolved::PortNotFound { .. } => "PortNotFound",
            Unresolved::NoReadyEndpoints(_) => "NoReadyEndpoints",
            Unresolved::Certificate { .. } => "InvalidCertificateRef",
        }
    }
}

/// A route that passed validation, with the backends that did not resolve.
#[derive(Debug)]
pub struct Validated {
    /// The route to serve.
    pub route: Route,
    /// Backends without ready endpoints, and why.
    pub unresolved: Vec<(Answerer, Unresolved)>,
}

/// Upper bound on `maxReplayBytes`: replay buffers live in memory.
pub const MAX_REPLAY_LIMIT: u64 = 64 * 1024 * 1024;

/// Why a route spec cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRoute {
    /// A host is not a valid DNS name or leading wildcard.
    #[error("host {0:?} is not a host name: use names like shop.example.com or *.example.com, without scheme, port or path")]
    BadHost(String),
    /// A path prefix is malformed.
    #[error("path {0:?} is not a path prefix: it must start with / and carry no query (?) or fragment (#)")]
    BadPath(String),
    /// `paths: []` would serve nothing.
    #[error("paths is empty: leave it out to serve every path, or list prefixes such as \"/\"")]
    NoPaths,
    /// A backend names neither or both of url and service.
    #[error("{0} must set exactly one of url or service")]
    BackendKind(&'static str),
    /// A backend URL cannot be used.
    #[error("{which} url {url:?} is not usable: {why}")]
    BadUrl {
        /// `primary` or `fallback`.
        which: &'static str,
        /// The URL as written.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A URL backend where only Services are allowed.
    #[error("{0} uses a url backend, which this controller does not allow (a namespace user could point the proxy at any host): use a service backend, or run the controller with --allow-url-backends")]
    UrlNotAllowed(&'static str),
    /// Service backends are only resolvable with a cluster.
    #[error("{0} uses a service backend, which needs a cluster: in route files give {{url: \"http://host:port\"}}")]
    ServiceOutsideCluster(&'static str),
    /// A backend's `fastcgi` block cannot be used.
    #[error("{which}.fastcgi: {why}")]
    FastCgi {
        /// `primary` or `fallback`.
        which: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A backend's `tls` block cannot be used.
    #[error("{which}.tls: {why}")]
    BackendTls {
        /// `primary` or `fallback`.
        which: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The TLS source does not fit where routes come from.
    #[error("tls: {0}")]
    Tls(&'static str),
    /// A `fallbackOn` status is out of range.
    #[error("fallbackOn status {0} is not allowed: use statuses from 300 to 599, e.g. [404, 410]")]
    BadStatus(u16),
    /// `fallbackOn: []` would never fall back.
    #[error("fallbackOn is empty: leave it out for [404]")]
    NoStatuses,
    /// `maxReplayBytes` above [`MAX_REPLAY_LIMIT`].
    #[error("maxReplayBytes {0} is above the limit of {MAX_REPLAY_LIMIT} bytes (64 MiB): replay buffers are held in memory")]
    ReplayTooLarge(u64),
    /// A `skipPrimary` or `primaryOnly` prefix is malformed or in both lists.
    #[error("{field} {path:?}: {why}")]
    BadCutOver {
        /// `skipPrimary` or `primaryOnly`.
        field: &'static str,
        /// The prefix as written.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `rememberFallbacks` cannot be used.
    #[error("rememberFallbacks.{field} {value:?}: {why}")]
    BadRemember {
        /// `ttl` or `maxPaths`.
        field: &'static str,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A timeout is not a positive duration.
    #[error("timeouts.{field} {value:?} is not a duration: write it like 500ms, 5s or 2m")]
    BadTimeout {
        /// Which timeout.
        field: &'static str,
        /// The value as written.
        value: String,
    },
}

impl InvalidRoute {
    /// The `Accepted` condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            InvalidRoute::UrlNotAllowed(_) => "UrlBackendNotAllowed",
            _ => "Invalid",
        }
    }
}

/// Validates one spec into a route.
pub fn route_from_spec(
    namespace: &str,
    name: &str,
    spec: &FallbackRouteSpec,
    ctx: &Context<'_>,
) -> Result<Validated, InvalidRoute> {
    let hosts = spec
        .hosts
        .iter()
        .map(|h| parse_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let paths = match &spec.paths {
        None => vec!["/".to_string()],
        Some(p) if p.is_empty() => return Err(InvalidRoute::NoPaths),
        Some(p) => p.iter().map(|p| parse_path(p)).collect::<Result<_, _>>()?,
    };
    let fallback_on = match &spec.fallback_on {
        None => api::DEFAULT_FALLBACK_ON.to_vec(),
        Some(s) if s.is_empty() => return Err(InvalidRoute::NoStatuses),
        Some(s) => {
            if let Some(bad) = s.iter().find(|s| !(300..=599).contains(*s)) {
                return Err(InvalidRoute::BadStatus(*bad));
            }
            s.clone()
        }
    };
    let max_replay_bytes = spec
        .max_replay_bytes
        .unwrap_or(api::DEFAULT_MAX_REPLAY_BYTES);
    if max_replay_bytes > MAX_REPLAY_LIMIT {
        return Err(InvalidRoute::ReplayTooLarge(max_replay_bytes));
    }
    let mut unresolved = Vec::new();
    let primary = backend(namespace, "primary", &spec.primary, ctx)?;
    let fallback = backend(namespace, "fallback", &spec.fallback, ctx)?;
    let mut take = |which, (backend, problem): (Backend, Option<Unresolved>)| {
        if let Some(problem) = problem {
            unresolved.push((which, problem));
        }
        backend
    };
    let primary = take(Answerer::Primary, primary);
    let fallback = take(Answerer::Fallback, fallback);
    let route = Route {
        namespace: namespace.to_string(),
        name: name.to_string(),
        hosts,
        paths,
        primary,
        fallback,
        fallback_on,
        max_replay_bytes,
        not_found_from: match spec.not_found_from.unwrap_or_default() {
            api::NotFoundFrom::Fallback => Answerer::Fallback,
            api::NotFoundFrom::Primary => Answerer::Primary,
        },
        fallback_on_error: spec.fallback_on_error.unwrap_or(false),
        timeouts: timeouts(spec.timeouts.as_ref(), ctx.defaults)?,
        redirect_to_https: spec.redirect_to_https.unwrap_or(false),
        cut_over: cut_over(spec)?,
        remember: remember(spec.remember_fallbacks.as_ref())?,
    };
    check_tls(spec.tls.as_ref(), ctx)?;
    Ok(Validated { route, unresolved })
}

fn check_tls(tls: Option<&api::TlsSpec>, ctx: &Context<'_>) -> Result<(), InvalidRoute> {
    let Some(tls) = tls else { return Ok(()) };
    let files = tls.cert_file.is_some() || tls.key_file.is_some();
    match (ctx.services.is_some(), &tls.secret_name, files) {
        (_, Some(_), true) => Err(InvalidRoute::Tls(
            "set either secretName or certFile and keyFile",
        )),
        (false, Some(_), _) => Err(InvalidRoute::Tls(
            "secretName needs a cluster: in route files give certFile and keyFile",
        )),
        (true, Some(_), _) => Ok(()),
        (true, None, _) => Err(InvalidRoute::Tls(
            "certFile and keyFile are for route files: in a cluster use secretName",
        )),
        (false, None, _) if tls.cert_file.is_none() || tls.key_file.is_none() => {
            Err(InvalidRoute::Tls("set certFile and keyFile together"))
        }
        (false, None, _) => Ok(()),
    }
}

fn parse_host(host: &str) -> Result<HostMatch, InvalidRoute> {
    let bad = || InvalidRoute::BadHost(host.to_string());
    let lower = host.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(bad());
    }
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn parse_path(path: &str) -> Result<String, InvalidRoute> {
    if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace) {
        return Err(InvalidRoute::BadPath(path.to_string()));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// `skipPrimary` and `primaryOnly` as one list, longest prefix first.
fn cut_over(spec: &FallbackRouteSpec) -> Result<Vec<(String, CutOver)>, InvalidRoute> {
    let mut rules: Vec<(String, CutOver)> = Vec::new();
    for (field, list, rule) in [
        ("skipPrimary", &spec.skip_primary, CutOver::SkipPrimary),
        ("primaryOnly", &spec.primary_only, CutOver::PrimaryOnly),
    ] {
        for written in list {
            let bad = |why| InvalidRoute::BadCutOver {
                field,
                path: written.clone(),
                why,
            };
            let prefix = parse_path(written).map_err(|_| {
                bad("not a path prefix: it must start with / and carry no query (?) or fragment (#)")
            })?;
            if let Some((_, other)) = rules.iter().find(|(p, _)| *p == prefix) {
                return Err(bad(if *other == rule {
                    "listed twice: remove one"
                } else {
                    "is in both skipPrimary and primaryOnly: keep it in one"
                }));
            }
            rules.push((prefix, rule));
        }
    }
    rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    Ok(rules)
}

/// Default `rememberFallbacks.ttl`.
const DEFAULT_REMEMBER_TTL: Duration = Duration::from_secs(3600);
/// Default `rememberFallbacks.maxPaths`.
const DEFAULT_REMEMBER_PATHS: u32 = 10_000;
/// Upper bound on `rememberFallbacks.maxPaths`, as the schema says.
const MAX_REMEMBER_PATHS: u32 = 1_000_000;

fn remember(spec: Option<&api::RememberFallbacks>) -> Result<Option<Remember>, InvalidRoute> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let ttl = match &spec.ttl {
        None => DEFAULT_REMEMBER_TTL,
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d > Duration::ZERO => d,
            _ => {
                return Err(InvalidRoute::BadRemember {
                    field: "ttl",
                    value: v.clone(),
                    why: "not a duration: write it like 10m or 1h",
                })
            }
        },
    };
    let max_paths = spec.max_paths.unwrap_or(DEFAULT_REMEMBER_PATHS);
    if !(1..=MAX_REMEMBER_PATHS).contains(&max_paths) {
        return Err(InvalidRoute::BadRemember {
            field: "maxPaths",
            value: max_paths.to_string(),
            why: "must be from 1 to 1000000",
        });
    }
    Ok(Some(Remember {
        ttl,
        max_paths: max_paths as usize,
    }))
}

fn timeouts(spec: Option<&api::Timeouts>, defaults: Timeouts) -> Result<Timeouts, InvalidRoute> {
    let Some(spec) = spec else {
        return Ok(defaults);
    };
    let parse = |field, value: &Option<String>, default| match value {
        None => Ok(default),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if d > Duration::ZERO => Ok(d),
            _ => Err(InvalidRoute::BadTimeout {
                field,
                value: v.clone(),
            }),
        },
    };
    Ok(Timeouts {
        connect: parse("connect", &spec.connect, defaults.connect)?,
        response_header: parse(
            "responseHeader",
            &spec.response_header,
            defaults.response_header,
        )?,
        idle: parse("idle", &spec.idle, defaults.idle)?,
    })
}
