//! The reports one replica serves on its admin port, as plain serde types: `GET /paths`
//! ([`PathsReport`]) and `GET /traffic` ([`TrafficReport`]). Their JSON is a public
//! interface (`fallthrough paths --json` prints the same shape) and is what replicas
//! exchange, so fields are only ever added.

use serde::{Deserialize, Serialize};

/// Which app served a path.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The primary served it: the client got the primary's answer, not a `fallbackOn`
    /// status.
    Legacy,
    /// The fallback served it: the client got the fallback's answer, not a `fallbackOn`
    /// status (after the primary's `fallbackOn` status, a remembered path, or a
    /// `skipPrimary` prefix).
    Migrated,
    /// Neither served it: the fallback answered a `fallbackOn` status too, or a
    /// `primaryOnly` path's primary did.
    Missing,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 3] = [Class::Legacy, Class::Migrated, Class::Missing];

    /// The class named `name` (as [`Class::as_str`] gives it).
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The name used in JSON and in `?class=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Legacy => "legacy",
            Class::Migrated => "migrated",
            Class::Missing => "missing",
        }
    }
}

/// `GET /paths`: the top paths of every route with traffic, by class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PathsReport {
    /// The replicas merged into this report (host names), one for a single replica.
    pub replicas: Vec<String>,
    /// Paths kept per class and route (`--paths-top`).
    pub top: u32,
    /// Routes with at least one classified request, by `namespace/name`.
    pub routes: Vec<RoutePaths>,
}

impl PathsReport {
    /// Keeps only route `route` (`namespace/name`), class `class`, and the first
    /// `limit` paths of each class, where given.
    pub fn filter(&mut self, route: Option<&str>, class: Option<Class>, limit: Option<usize>) {
        if let Some(route) = route {
            self.routes.retain(|r| r.route == route);
        }
        for r in &mut self.routes {
            if let Some(class) = class {
                r.classes.retain(|c| c.class == class);
            }
            if let Some(limit) = limit {
                for c in &mut r.classes {
                    c.paths.truncate(limit);
                }
            }
        }
    }
}

/// One route's report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoutePaths {
    /// `namespace/name`.
    pub route: String,
    /// Classified requests, all classes: what `share` divides by.
    pub requests: u64,
    /// The classes with traffic, in [`Class::ALL`] order.
    pub classes: Vec<ClassPaths>,
}

/// One class of one route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClassPaths {
    /// Which class.
    pub class: Class,
    /// Requests of this class, exact (whether or not their path is listed).
    pub requests: u64,
    /// When the sketch is full, the count of its smallest entry: a path not listed was
    /// seen at most this often. 0 while every path seen is listed.
    pub floor: u64,
    /// The top paths, most requests first.
    pub paths: Vec<PathCount>,
}

/// One path's count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathCount {
    /// The path as routed (normalised, no query string).
    pub path: String,
    /// Requests counted for it: at most `error` more than the true count.
    pub count: u64,
    /// How much of `count` may belong to paths it replaced in the sketch (Space-Saving's
    /// overestimate); 0 means exact.
    pub error: u64,
    /// `count` over the route's `requests`, from 0 to 1.
    pub share: f64,
    /// When it was last seen, in unix seconds.
    pub last_seen: u64,
}

/// `GET /traffic`: every route's running totals, for the status writer to sum.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficReport {
    /// This replica's host name.
    pub replica: String,
    /// When this process started (unix seconds): counters restart from 0 when it changes.
    pub started: u64,
    /// Routes with traffic since the process started.
    pub routes: Vec<RouteTraffic>,
}

/// One route's running totals in one replica, since it started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteTraffic {
    /// `namespace/name`.
    pub route: String,
    /// Responses sent, by any backend or by fallthrough itself.
    pub requests: u64,
    /// Of those, the ones the fallback produced.
    pub fallback: u64,
    /// A distinct-count sketch of the legacy paths (HyperLogLog registers, hex), which
    /// merges across replicas.
    pub legacy_paths: String,
}
