//! The routing table: pure data and a pure lookup.
//!
//! In: validated [`Route`]s, in load order (built by `index` from files or watches).
//! Out: an immutable [`RouteTable`] whose [`RouteTable::lookup`] maps (host, path) to a
//! route, plus the [`Conflict`]s of routes that lost a host+path to an earlier one.
//! Nothing here knows about Kubernetes, sockets or tasks, so it is tested in isolation.

use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::time::Duration;

mod backend;
#[cfg(test)]
pub(crate) mod tests;

pub use backend::{Addr, Backend, Endpoint, FastCgi, Protocol, UpstreamTls};

/// Position of a route in its table; stable for the life of one table.
pub type RouteIndex = usize;

/// One validated FallbackRoute, ready to route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Namespace of the route ("default" in files unless given).
    pub namespace: String,
    /// Name of the route.
    pub name: String,
    /// Hosts served; empty means any host.
    pub hosts: Vec<HostMatch>,
    /// Normalised path prefixes (no trailing slash except the root).
    pub paths: Vec<String>,
    /// Where every request goes first.
    pub primary: Backend,
    /// Where the request goes when the primary answers a `fallback_on` status.
    pub fallback: Backend,
    /// Primary statuses that send the request on.
    pub fallback_on: Vec<u16>,
    /// Largest request body buffered for replay.
    pub max_replay_bytes: u64,
    /// Whose response the client gets when both answer a `fallback_on` status.
    pub not_found_from: Answerer,
    /// Whether an unreachable primary sends the request to the fallback.
    pub fallback_on_error: bool,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Plain-HTTP requests get a 308 to https.
    pub redirect_to_https: bool,
    /// Normalised prefixes that skip the primary, or whose primary answer is final.
    pub cut_over: Vec<(String, CutOver)>,
    /// Remembered fallbacks, when enabled.
    pub remember: Option<Remember>,
}

/// What a `skipPrimary` or `primaryOnly` prefix does to the requests it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CutOver {
    /// Straight to the fallback.
    SkipPrimary,
    /// The primary's answer is final.
    PrimaryOnly,
}

/// How a route remembers the paths its primary does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Remember {
    /// How long a path goes straight to the fallback.
    pub ttl: Duration,
    /// Most paths remembered (least recently used forgotten first).
    pub max_paths: usize,
}

impl Route {
    /// Whether the primary's status sends the request on to the fallback.
    pub fn falls_back_on(&self, status: u16) -> bool {
        self.fallback_on.contains(&status)
    }

    /// The `skipPrimary`/`primaryOnly` rule for a normalised path: the longest
    /// matching prefix of either list.
    pub fn cut_over(&self, path: &str) -> Option<CutOver> {
        if self.cut_over.is_empty() {
            return None;
        }
        // Kept longest first, so the first match is the most specific.
        self.cut_over
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, rule)| *rule)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether `other` is this route with only its endpoints changed: what a route
    /// remembers survives such a reload.
    pub fn same_spec(&self, other: &Route) -> bool {
        let backends = |a: &Backend, b: &Backend| a.name == b.name && a.protocol == b.protocol;
        self.namespace == other.namespace
            && self.name == other.name
            && self.hosts == other.hosts
            && self.paths == other.paths
            && backends(&self.primary, &other.primary)
            && backends(&self.fallback, &other.fallback)
            && self.fallback_on == other.fallback_on
            && self.max_replay_bytes == other.max_replay_bytes
            && self.not_found_from == other.not_found_from
            && self.fallback_on_error == other.fallback_on_error
            && self.timeouts == other.timeouts
            && self.redirect_to_https == other.redirect_to_https
            && self.cut_over == other.cut_over
            && self.remember == other.remember
    }
}

/// Which backend produced a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answerer {
    /// The legacy backend.
    Primary,
    /// The new backend.
    Fallback,
}

impl Answerer {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Answerer::Primary => "primary",
            Answerer::Fallback => "fallback",
        }
    }
}

/// Upstream timeouts of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Opening a connection.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub response_header: Duration,
    /// How long an idle pooled connection is kept.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            idle: Duration::from_secs(90),
        }
    }
}

/// How a route names hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// One host name, lower case.
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: any subdomain, at any depth.
    Wildcard(String),
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A route that claimed a host+path an earlier route already had; it is not served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `namespace/name` of the route left out.
    pub rejected: String,
    /// `namespace/name` of the route that keeps the host+path.
    pub winner: String,
    /// The contested host (`*` for any host).
    pub host: String,
    /// The contested path prefix.
    pub path: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "route {} claims host {} path {}, which route {} already serves; {} is not served until the conflict is removed",
            self.rejected, self.host, self.path, self.winner, self.rejected
        )
    }
}

/// Path prefixes of one host group, longest first.
#[derive(Clone, Debug, Default)]
struct PathSet {
    prefixes: Vec<(String, RouteIndex)>,
}

impl PathSet {
    fn find(&self, path: &str) -> Option<RouteIndex> {
        self.prefixes
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, idx)| *idx)
    }

    fn owner(&self, prefix: &str) -> Option<RouteIndex> {
        self.prefixes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, i)| *i)
    }

    fn sort(&mut self) {
        // Longest prefix first; ties are impossible because duplicates are conflicts.
        self.prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }
}

/// Segment-aware prefix match: `/app` matches `/app` and `/app/x`, never `/apple`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An immutable routing table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    // Fx, not SipHash: every request hashes its host here, and the keys come from
    // configuration, so a client cannot make them collide.
    exact: FxHashMap<String, PathSet>,
    wildcard: FxHashMap<String, PathSet>,
    any: PathSet,
}

impl RouteTable {
    /// Builds a table from routes in load order. A route that claims a host+path an
    /// earlier route already claims is left out whole and reported as a [`Conflict`].
    pub fn build(routes: impl IntoIterator<Item = Route>) -> (RouteTable, Vec<Conflict>) {
        let mut table = RouteTable::default();
        let mut conflicts = Vec::new();
        for route in routes {
            match table.first_conflict(&route) {
                Some(conflict) => conflicts.push(conflict),
                None => table.insert(route),
            }
        }
        for set in table.exact.values_mut().chain(table.wildcard.values_mut()) {
            set.sort();
        }
        table.any.sort();
        (table, conflicts)
    }

    fn first_conflict(&self, route: &Route) -> Option<Conflict> {
        for host in host_keys(route) {
            let Some(set) = self.set(&host) else { continue };
            for path in &route.paths {
                if let Some(owner) = set.owner(path) {
                    let winner = &self.routes[owner];
                    return Some(Conflict {
                        rejected: format!("{}/{}", route.namespace, route.name),
                        winner: format!("{}/{}", winner.namespace, winner.name),
                        host: host.map_or_else(|| "*".to_string(), |h| h.to_string()),
                        path: path.clone(),
                    });
                }
            }
        }
        None
    }

    fn set(&self, host: &Option<HostMatch>) -> Option<&PathSet> {
        match host {
            None => Some(&self.any),
            Some(HostMatch::Exact(h)) => self.exact.get(h),
            Some(HostMatch::Wildcard(s)) => self.wildcard.get(s),
        }
    }

    fn insert(&mut self, route: Route) {
        let idx = self.routes.len();
        for host in host_keys(&route) {
            let set = match host {
                None => &mut self.any,
                Some(HostMatch::Exact(h)) => self.exact.entry(h).or_default(),
                Some(HostMatch::Wildcard(s)) => self.wildcard.entry(s).or_default(),
            };
            for path in &route.paths {
                if set.owner(path).is_none() {
                    set.prefixes.push((path.clone(), idx));
                }
            }
        }
        self.routes.push(route);
    }

    /// Finds the route for a request. `host` may carry a port and any case; `path` is
    /// the URI path without the query. The most specific host group that has a
    /// matching prefix wins (exact, then the longest wildcard suffix, then any host),
    /// and within it the longest prefix.
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteIndex> {
        let host = normalise_host(host);
        if !self.exact.is_empty() {
            if let Some(found) = self.exact.get(host.as_ref()).and_then(|s| s.find(path)) {
                return Some(found);
            }
        }
        if !self.wildcard.is_empty() {
            // Try `.b.example.com`, then `.example.com`, then `.com`: longest suffix first.
            for (i, _) in host.match_indices('.') {
                if i == 0 {
                    continue;
                }
                if let Some(found) = self.wildcard.get(&host[i..]).and_then(|s| s.find(path)) {
                    return Some(found);
                }
            }
        }
        self.any.find(path)
    }

    /// The route at `idx`, as returned by [`RouteTable::lookup`].
    pub fn route(&self, idx: RouteIndex) -> &Route {
        &self.routes[idx]
    }

    /// Every route served, in load order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// The host groups a route is filed under: `None` stands for "any host".
fn host_keys(route: &Route) -> Vec<Option<HostMatch>> {
    if route.hosts.is_empty() {
        vec![None]
    } else {
        route.hosts.iter().cloned().map(Some).collect()
    }
}

/// Lower-cases and strips the port, borrowing when the host is already clean.
fn normalise_host(host: &str) -> Cow<'_, str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: `[::1]:8080`.
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    // Digits back from the end, then a colon: a port (a byte scan, as ports are short).
    let digits = host.bytes().rev().take_while(u8::is_ascii_digit).count();
    match host.len().checked_sub(digits + 1) {
        Some(colon) if host.as_bytes()[colon] == b':' => &host[..colon],
        _ => host,
    }
}
