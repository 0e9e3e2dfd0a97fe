//! The `FallbackRoute` resource: the user-facing schema, shared by route files and the CRD.
//!
//! In: YAML or JSON written by users (files with `--routes`, or objects in the API server).
//! Out: plain serde types that `routes::Route::from_spec` validates into routing data.
//! Doc comments on fields become `kubectl explain` text, so they are written for users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every fallthrough resource.
pub const GROUP: &str = "fallthrough.dev";
/// Version of the `FallbackRoute` schema.
pub const VERSION: &str = "v1alpha1";
/// Kind name of the route resource.
pub const KIND: &str = "FallbackRoute";

/// Default for `fallbackOn`: only "not found" sends a request on.
pub const DEFAULT_FALLBACK_ON: &[u16] = &[404];
/// Default for `maxReplayBytes`: 1 MiB.
pub const DEFAULT_MAX_REPLAY_BYTES: u64 = 1024 * 1024;

/// Sends every request to a legacy primary backend first and, when it answers a
/// `fallbackOn` status (404 by default), the very same request to the fallback backend.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "fallthrough.dev",
    version = "v1alpha1",
    kind = "FallbackRoute",
    namespaced,
    status = "FallbackRouteStatus",
    shortname = "fbr",
    category = "fallthrough",
    printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
    printcolumn = r#"{"name":"Fallback","type":"string","description":"Share of the last 5 minutes' requests the fallback served, over all replicas; - without traffic.","jsonPath":".status.traffic.fallbackShare"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Primary-Service","type":"string","priority":1,"jsonPath":".spec.primary.service.name"}"#,
    printcolumn = r#"{"name":"Fallback-Service","type":"string","priority":1,"jsonPath":".spec.fallback.service.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRouteSpec {
    /// Ingress class that should serve this route; unset means the controller's own class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,

    /// Host names this route serves: exact (`shop.example.com`) or with a leading
    /// wildcard label (`*.shop.example.com`, which matches any subdomain but not the
    /// bare domain). Empty means any host. Matching ignores case and the port.
    #[serde(default)]
    #[schemars(inner(regex(
        pattern = r"^(\*\.)?[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?)*$"
    )))]
    pub hosts: Vec<String>,

    /// Path prefixes this route serves, segment-aware: `/app` matches `/app` and
    /// `/app/x`, not `/apple`. Defaults to `["/"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = r"^/[^?#\s]*$")))]
    pub paths: Option<Vec<String>>,

    /// The legacy backend every request goes to first.
    pub primary: BackendRef,

    /// The new backend that gets the request when the primary answers a `fallbackOn` status.
    pub fallback: BackendRef,

    /// Primary response statuses (300-599) that send the request on to the fallback.
    /// Defaults to `[404]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(range(min = 300, max = 599)))]
    pub fallback_on: Option<Vec<u16>>,

    /// Request bodies up to this many bytes are buffered so they can be replayed to the
    /// fallback. Larger bodies stream to the primary only and are never retried.
    /// Defaults to 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 67108864))]
    pub max_replay_bytes: Option<u64>,

    /// When the fallback answers a `fallbackOn` status too, whose response the client
    /// receives: `fallback` (default) or `primary` (keeps the legacy app's 404 page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_found_from: Option<NotFoundFrom>,

    /// Also send the request to the fallback when the primary cannot be reached
    /// (connection refused or connect timeout). The request has then not reached the
    /// primary, so this is safe for every method. Default false: the client gets 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_on_error: Option<bool>,

    /// Per-route upstream timeouts; unset fields use the proxy's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,

    /// Terminate TLS for this route's hosts (chosen by SNI) with this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Answer plain-HTTP requests with a 308 redirect to the same URL over https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_to_https: Option<bool>,

    /// Path prefixes (segment-aware, like `paths`) that go straight to the fallback
    /// without asking the primary: URLs retired from the legacy app. The longest
    /// matching prefix of `skipPrimary` and `primaryOnly` decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^/[^?#\s]*$")))]
    pub skip_primary: Vec<String>,

    /// Path prefixes (segment-aware, like `paths`) whose primary answer is final, even a
    /// `fallbackOn` status: URLs only the legacy app may answer, e.g. `/wp-admin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^/[^?#\s]*$")))]
    pub primary_only: Vec<String>,

    /// Remember the paths the primary does not serve, and send them straight to the
    /// fallback for `ttl`, in any method. Unset: every request asks the primary first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remember_fallbacks: Option<RememberFallbacks>,
}

/// Remembered fallbacks: after the primary answers a `fallbackOn` status for a path and
/// the fallback serves it, requests for that exact (normalised) path skip the primary
/// for `ttl`. The legacy app does not see a remembered path again until the TTL ends.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RememberFallbacks {
    /// How long a path is remembered, e.g. `10m` or `1h`; then the next request asks
    /// the primary again. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub ttl: Option<String>,
    /// Most paths remembered for this route; past it the least recently used is
    /// forgotten. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_paths: Option<u32>,
}

/// Where a route's certificate comes from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certFile) == has(self.keyFile)").message("set certFile and keyFile together"))]
#[x_kube(validation = Rule::new("has(self.secretName) != has(self.certFile)").message("set either secretName or certFile and keyFile"))]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in the route's namespace (cluster mode; not
    /// available in this version yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Route files: PEM certificate chain, relative to the route file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// Route files: PEM private key, relative to the route file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// Where requests are sent: exactly one of `url` or `service`, spoken to in HTTP/1.1
/// unless a `fastcgi` block (FastCGI, e.g. PHP-FPM) or `tls` block (HTTPS) says otherwise.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.service)").message("set exactly one of url or service"))]
#[x_kube(validation = Rule::new("!(has(self.fastcgi) && has(self.tls))").message("a backend speaks FastCGI or HTTPS, not both: remove fastcgi or tls"))]
pub struct BackendRef {
    /// A fixed upstream: `http://host:port`, `https://host:port`, `fastcgi://host:port`
    /// (with a `fastcgi` block) or a Unix socket, `unix:/run/php/php-fpm.sock` (HTTP, or
    /// FastCGI with a `fastcgi` block). Used in route files; in a cluster only when the
    /// controller runs with `--allow-url-backends`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^((https?|fastcgi)://[^/?#@]+/?|unix:/[^\x00]+)$"))]
    pub url: Option<String>,

    /// A Service in the route's namespace, resolved to its ready endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,

    /// Speak FastCGI to this backend (PHP-FPM) instead of HTTP, mapping each request
    /// onto a script under `documentRoot` as nginx's `fastcgi_pass` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastcgi: Option<FastCgiSpec>,

    /// Speak HTTPS to this backend (a Service's endpoints; a `https://` url implies
    /// it). Follows Gateway API's BackendTLSPolicy: the name to verify, the CA to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsSpec>,
}

/// How requests map onto the FastCGI application's scripts.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FastCgiSpec {
    /// Directory of the scripts on the FastCGI server (not on the proxy), absolute:
    /// `SCRIPT_FILENAME` is this followed by the script's path, e.g. `/var/www/html`.
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    pub document_root: String,
    /// Script run for paths ending in `/`, as nginx's `fastcgi_index`. Default
    /// `index.php`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^/\x00]+$"))]
    pub index: Option<String>,
    /// Script that runs every path naming no script (no segment ending in
    /// `splitPath`), as frameworks like Laravel and Symfony expect, e.g. `/index.php`.
    /// Unset: such paths run `documentRoot` + path, and PHP-FPM answers 404 for the
    /// ones that do not exist, which sends them on to the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    pub front_controller: Option<String>,
    /// Where a path splits into the script and `PATH_INFO`: after the first segment
    /// ending with this. Default `.php` (`/shop/cart.php/extra` runs `/shop/cart.php`
    /// with `PATH_INFO` `/extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\.[^/\x00]+$"))]
    pub split_path: Option<String>,
    /// Extra FastCGI params sent with every request (after the standard ones, so they
    /// may override them), e.g. `{APP_ENV: prod}`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    /// Most connections open to one endpoint across the proxy. PHP-FPM serves one
    /// connection per worker process for as long as it stays open, so set this at
    /// most to the pool's `pm.max_children`; requests beyond it wait (up to the connect
    /// timeout) for a free connection. Default 5, PHP-FPM's default `pm.max_children`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_connections: Option<u32>,
}

/// TLS to a backend.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.caFile) && has(self.caSecretName))").message("set at most one of caFile or caSecretName"))]
pub struct BackendTlsSpec {
    /// The name sent as SNI and that the backend's certificate must carry (Gateway
    /// API's `hostname`). Default: the url's host; required for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*$"
    ))]
    pub server_name: Option<String>,
    /// Route files: a PEM file of the CAs to trust, relative to the route file's
    /// directory. Unset (and no `caSecretName`): the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Cluster: a Secret in the route's namespace whose `ca.crt` holds the CAs to trust
    /// (cert-manager's layout). Unset: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
    /// Do not verify the backend's certificate at all: anyone on the path can read and
    /// change the traffic. Logged at startup. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// A Kubernetes Service and one of its ports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Name of the Service, in the route's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Service port, by number (`80`) or by name (`http`).
    pub port: IntOrString,
}

/// Whose response the client gets when neither backend serves the request.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum NotFoundFrom {
    /// The fallback's response (status, headers and body).
    #[default]
    Fallback,
    /// The primary's response, e.g. to keep the legacy app's 404 page.
    Primary,
}

/// Upstream timeouts, as durations like `500ms`, `5s` or `1m30s`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Time allowed to open a connection to a backend. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub connect: Option<String>,
    /// Time allowed from sending a request until the backend's response head arrives.
    /// Default 60s. On expiry the client gets 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub response_header: Option<String>,
    /// How long an unused keep-alive connection to a backend stays open. Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub idle: Option<String>,
}

/// Observed state of a route, written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRouteStatus {
    /// `Accepted` (the route is valid, allowed and not in conflict), `ResolvedRefs`
    /// (its Services exist and have ready endpoints) and `Programmed` (it is in the
    /// routing table the proxies serve).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Who served this route's recent requests, summed over every replica; written by
    /// the status-writing replica at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficStatus>,
}

/// Recent traffic of a route over all replicas.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    /// Share of `requests` the fallback answered, as a whole percentage (`73%`), or `-`
    /// when the window saw no request.
    pub fallback_share: String,
    /// Requests answered in the window, by any backend or by fallthrough itself.
    pub requests: u64,
    /// Of those, the ones the fallback answered.
    pub fallback_requests: u64,
    /// The window the counts cover, e.g. `5m0s` (shorter just after a restart).
    pub window: String,
    /// Distinct paths the primary served since the replicas started (an estimate:
    /// exact for a handful, typically within 7% beyond): what still depends on the
    /// legacy app.
    pub legacy_paths: u64,
    /// Replicas whose counts were summed.
    pub replicas: u32,
    /// When these figures were gathered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
