//! Turns user-written `FallbackRoute` specs into validated routes and route tables.
//!
//! In: (namespace, name, [`FallbackRouteSpec`]) from a provider (route files today).
//! Out: [`Route`]s or an [`InvalidRoute`] that says what to fix, and whole
//! [`RouteTable`] snapshots with the conflicts found while building them.
//! Pure functions: providers decide what to do with errors (log, keep serving, report).

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::api::{self, BackendRef, FallbackRouteSpec};
use crate::routes::{Answerer, Backend, HostMatch, Route, Timeouts};

#[cfg(test)]
mod tests;

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
    /// Service backends are only resolvable with a cluster.
    #[error("{0} uses a service backend, which needs a cluster: in route files give {{url: \"http://host:port\"}}")]
    ServiceOutsideCluster(&'static str),
    /// A `fallbackOn` status is out of range.
    #[error("fallbackOn status {0} is not allowed: use statuses from 300 to 599, e.g. [404, 410]")]
    BadStatus(u16),
    /// `fallbackOn: []` would never fall back.
    #[error("fallbackOn is empty: leave it out for [404]")]
    NoStatuses,
    /// `maxReplayBytes` above [`MAX_REPLAY_LIMIT`].
    #[error("maxReplayBytes {0} is above the limit of {MAX_REPLAY_LIMIT} bytes (64 MiB): replay buffers are held in memory")]
    ReplayTooLarge(u64),
    /// A timeout is not a positive duration.
    #[error("timeouts.{field} {value:?} is not a duration: write it like 500ms, 5s or 2m")]
    BadTimeout {
        /// Which timeout.
        field: &'static str,
        /// The value as written.
        value: String,
    },
}

/// Validates one spec into a route. `defaults` supplies the timeouts a route leaves out.
pub fn route_from_spec(
    namespace: &str,
    name: &str,
    spec: &FallbackRouteSpec,
    defaults: Timeouts,
) -> Result<Route, InvalidRoute> {
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
    Ok(Route {
        namespace: namespace.to_string(),
        name: name.to_string(),
        hosts,
        paths,
        primary: backend("primary", &spec.primary)?,
        fallback: backend("fallback", &spec.fallback)?,
        fallback_on,
        max_replay_bytes,
        not_found_from: match spec.not_found_from.unwrap_or_default() {
            api::NotFoundFrom::Fallback => Answerer::Fallback,
            api::NotFoundFrom::Primary => Answerer::Primary,
        },
        fallback_on_error: spec.fallback_on_error.unwrap_or(false),
        timeouts: timeouts(spec.timeouts.as_ref(), defaults)?,
    })
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

fn backend(which: &'static str, spec: &BackendRef) -> Result<Backend, InvalidRoute> {
    match (&spec.url, &spec.service) {
        (Some(url), None) => url_backend(which, url),
        (None, Some(_)) => Err(InvalidRoute::ServiceOutsideCluster(which)),
        _ => Err(InvalidRoute::BackendKind(which)),
    }
}

fn url_backend(which: &'static str, url: &str) -> Result<Backend, InvalidRoute> {
    let bad = |why| InvalidRoute::BadUrl {
        which,
        url: url.to_string(),
        why,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("write it as http://host:port"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https upstreams are not supported yet; use http")),
        _ => return Err(bad("it must start with http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in URLs are not supported"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad(
            "it must not carry a path or query: requests keep their own path",
        ));
    }
    let authority: Authority = match authority.port_u16() {
        Some(_) => authority.clone(),
        None => format!("{}:80", authority.host())
            .parse()
            .map_err(|_| bad("it has no valid host"))?,
    };
    Ok(Backend {
        name: authority.to_string(),
        scheme: Scheme::HTTP,
        authority,
    })
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
