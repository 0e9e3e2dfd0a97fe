//! Command-line interface: commands and flags, each flag also settable by environment.
//!
//! In: argv and `FALLTHROUGH_*` variables.
//! Out: a parsed [`Cli`] for `main` to dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::proxy::Limits;
use crate::routes::Timeouts;

/// fallthrough: send every request to the legacy app first, and what it 404s to the new one.
#[derive(Parser, Debug)]
#[command(name = "fallthrough", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy: with --routes, routes from files (no cluster needed); without,
    /// the Kubernetes controller (in-cluster config, or KUBECONFIG / --kubeconfig).
    Run(Box<RunArgs>),
    /// Check route files and exit: prints every error with file and line.
    Check {
        /// A route file (YAML, several documents allowed) or a directory of them.
        #[arg(long, env = "FALLTHROUGH_ROUTES")]
        routes: PathBuf,
    },
    /// Print the FallbackRoute CustomResourceDefinition as YAML.
    Crd,
    /// Which paths each app serves, per route, merged over every replica: legacy (the
    /// old app still serves them), migrated (the new app does), missing (neither).
    Paths(PathsArgs),
}

/// Flags of `fallthrough paths`.
#[derive(clap::Args, Debug)]
pub struct PathsArgs {
    /// A replica's admin URL, e.g. http://10.0.0.7:9090; repeat for each replica.
    /// Without it, the replicas are found in the cluster.
    #[arg(long)]
    pub admin: Vec<String>,
    /// Print the merged report as JSON (the shape of GET /paths).
    #[arg(long)]
    pub json: bool,
    /// Only this route, as namespace/name.
    #[arg(long)]
    pub route: Option<String>,
    /// Only this class: legacy, migrated or missing.
    #[arg(long, value_parser = crate::insight::command::parse_class)]
    pub class: Option<crate::insight::Class>,
    /// Paths shown per class and route.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Cluster: kubeconfig file (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster: the namespace fallthrough runs in (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Cluster: label selector of the fallthrough pods.
    #[arg(long, default_value = "app.kubernetes.io/name=fallthrough")]
    pub selector: String,
    /// Cluster: the pods' admin port, by name or number.
    #[arg(long, default_value = "admin")]
    pub port: String,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Access log format (`--access-log`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// No access log.
    Off,
    /// nginx's combined format, then fallthrough's fields as key=value.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `fallthrough run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Route file or directory of route files; reloaded when they change and on SIGHUP.
    #[arg(long, env = "FALLTHROUGH_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Kubernetes: kubeconfig file (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: watch FallbackRoutes, Services and EndpointSlices in this namespace only.
    #[arg(long, env = "FALLTHROUGH_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Kubernetes: serve routes whose spec.ingressClassName is this (or unset).
    #[arg(long, env = "FALLTHROUGH_INGRESS_CLASS", default_value = "fallthrough")]
    pub ingress_class: String,
    /// Kubernetes: accept `url` backends (otherwise only Services: a namespace user must
    /// not be able to point the proxy at arbitrary hosts).
    #[arg(long, env = "FALLTHROUGH_ALLOW_URL_BACKENDS")]
    pub allow_url_backends: bool,
    /// Kubernetes: namespace of the Lease that picks the one replica writing status.
    #[arg(long, env = "FALLTHROUGH_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Kubernetes: name of that Lease.
    #[arg(
        long,
        env = "FALLTHROUGH_LEASE_NAME",
        default_value = "fallthrough-status"
    )]
    pub lease_name: String,
    /// Kubernetes: the Service whose EndpointSlices list every replica's admin port
    /// (port name `metrics`): the Lease holder sums their `GET /traffic` into each
    /// route's status.traffic (the Fallback column of `kubectl get fbr`). Unset: no
    /// status.traffic is written.
    #[arg(long, env = "FALLTHROUGH_PEERS_SERVICE")]
    pub peers_service: Option<String>,
    /// Kubernetes: namespace of --peers-service (default: --lease-namespace).
    #[arg(long, env = "FALLTHROUGH_PEERS_NAMESPACE")]
    pub peers_namespace: Option<String>,
    /// Kubernetes: how often the Lease holder gathers the replicas' traffic, and at most
    /// how often it writes one route's status.traffic (1s to 5m).
    #[arg(long, env = "FALLTHROUGH_TRAFFIC_INTERVAL", default_value = "1m", value_parser = parse_traffic_interval)]
    pub traffic_interval: Duration,
    /// Kubernetes: TLS Secret (namespace/name) served for unknown or missing SNI.
    #[arg(long, env = "FALLTHROUGH_DEFAULT_CERTIFICATE", value_parser = parse_ns_name)]
    pub default_certificate: Option<(String, String)>,
    /// Kubernetes: this replica's identity in the Lease and in Events (default: host name and PID).
    #[arg(long, env = "FALLTHROUGH_IDENTITY")]
    pub identity: Option<String>,
    /// Address for client HTTP traffic.
    #[arg(long, env = "FALLTHROUGH_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address for client HTTPS traffic (certificates chosen by SNI from the routes' `tls`).
    #[arg(long, env = "FALLTHROUGH_HTTPS_ADDR", default_value = "0.0.0.0:8443")]
    pub https_addr: SocketAddr,
    /// PEM certificate chain served when no route's certificate matches the SNI (or
    /// there is none); without one such handshakes fail. Reloaded when it changes.
    #[arg(
        long,
        env = "FALLTHROUGH_DEFAULT_CERT_FILE",
        requires = "default_key_file"
    )]
    pub default_cert_file: Option<PathBuf>,
    /// PEM private key of --default-cert-file.
    #[arg(
        long,
        env = "FALLTHROUGH_DEFAULT_KEY_FILE",
        requires = "default_cert_file"
    )]
    pub default_key_file: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "FALLTHROUGH_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "FALLTHROUGH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Access log, one line per request: off, text (nginx's combined format, then who
    /// answered and why as key=value) or json. On by default, as in ingress-nginx:
    /// `kubectl logs` shows the traffic.
    #[arg(
        long,
        env = "FALLTHROUGH_ACCESS_LOG",
        value_enum,
        default_value = "text"
    )]
    pub access_log: AccessLogFormat,
    /// Where the access log goes: a file (appended to, created if missing), or - for
    /// stdout. Process logs go to stderr either way.
    #[arg(long, env = "FALLTHROUGH_ACCESS_LOG_PATH", default_value = "-")]
    pub access_log_path: PathBuf,
    /// Peers whose forwarding fields (X-Forwarded-*, X-Real-IP, Forwarded,
    /// X-Request-Id) and PROXY protocol headers are believed: comma-separated CIDRs or
    /// addresses, e.g. 10.0.0.0/8,192.168.1.7. From anyone else those fields are
    /// removed and fallthrough sets its own. Default: nobody.
    #[arg(long, env = "FALLTHROUGH_TRUSTED_PROXIES", default_value = "", value_parser = parse_trusted_proxies)]
    pub trusted_proxies: crate::proxy::trust::TrustedProxies,
    /// Connections from --trusted-proxies start with a PROXY protocol header (v1 or
    /// v2), which names the client; one without it is closed. Others are served as
    /// they come.
    #[arg(long, env = "FALLTHROUGH_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// Data-plane threads; 0 means one per CPU core.
    #[arg(long, env = "FALLTHROUGH_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// On SIGTERM, how long in-flight requests may take to finish before exit.
    #[arg(long, env = "FALLTHROUGH_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Default time to open an upstream connection (routes may override).
    #[arg(long, env = "FALLTHROUGH_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Default time from sending a request upstream to its response head (routes may override).
    #[arg(long, env = "FALLTHROUGH_RESPONSE_HEADER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub response_header_timeout: Duration,
    /// Time a client has to send a complete request head before the connection is closed.
    #[arg(long, env = "FALLTHROUGH_CLIENT_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub client_header_timeout: Duration,
    /// Longest pause between two reads of a request body; then 408 (or, for a body
    /// already streaming to the primary, a broken upload).
    #[arg(long, env = "FALLTHROUGH_CLIENT_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_body_timeout: Duration,
    /// Longest a client may take none of its answer's bytes before the connection closes.
    #[arg(long, env = "FALLTHROUGH_CLIENT_WRITE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub client_write_timeout: Duration,
    /// Longest a backend may take none of a request body's bytes or send none of a
    /// response body's (a primary's 404 body included); then the exchange is given up.
    #[arg(long, env = "FALLTHROUGH_UPSTREAM_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub upstream_read_timeout: Duration,
    /// Bytes all request bodies buffered for replay may hold together; when it is
    /// spent, bodies stream to the primary only (counted as
    /// fallthrough_fallbacks_skipped_total{reason="replay_budget"}).
    #[arg(long, env = "FALLTHROUGH_MAX_REPLAY_BUFFER", default_value_t = 256 * 1024 * 1024)]
    pub max_replay_buffer: u64,
    /// Paths kept per route in each class of the paths report (legacy, migrated,
    /// missing): `GET /paths` on the admin port, `fallthrough paths`.
    #[arg(long, env = "FALLTHROUGH_PATHS_TOP", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub paths_top: u32,
    /// Bytes the paths report's sketches may hold together, over all routes; when it is
    /// spent, requests are still counted but new paths are not listed.
    #[arg(long, env = "FALLTHROUGH_PATHS_MEMORY", default_value_t = 64 * 1024 * 1024)]
    pub paths_memory: usize,
    /// Default lifetime of an idle upstream keep-alive connection (routes may override).
    #[arg(long, env = "FALLTHROUGH_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
}

impl RunArgs {
    /// The data plane's limits and timeouts.
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.client_header_timeout,
            body_timeout: self.client_body_timeout,
            write_timeout: self.client_write_timeout,
            upstream_read_timeout: self.upstream_read_timeout,
            replay_budget: self.max_replay_buffer,
        }
    }

    /// How many data-plane threads to run: `--workers`, or one per core when it is 0.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The timeouts routes get unless they set their own.
    pub fn default_timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            response_header: self.response_header_timeout,
            idle: self.idle_timeout,
        }
    }
}

fn parse_traffic_interval(value: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    // Shorter would ask every replica more than once a second; longer than the
    // five-minute window would leave no sample inside it to count from.
    if interval < Duration::from_secs(1) || interval > Duration::from_secs(5 * 60) {
        return Err(format!("{value} is not between 1s and 5m"));
    }
    Ok(interval)
}

fn parse_trusted_proxies(value: &str) -> Result<crate::proxy::trust::TrustedProxies, String> {
    crate::proxy::trust::TrustedProxies::parse(value).map_err(|e| e.to_string())
}

fn parse_ns_name(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "{value:?} is not namespace/name, e.g. ingress/wildcard-cert"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_interval_is_between_a_second_and_the_window() {
        assert_eq!(parse_traffic_interval("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_traffic_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_traffic_interval("5m"), Ok(Duration::from_secs(300)));
        for bad in ["500ms", "6m", "0s", "soon"] {
            assert!(parse_traffic_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_flags_parse_with_their_defaults() {
        let cli =
            Cli::try_parse_from(["fallthrough", "run", "--peers-service", "ft-metrics"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.peers_service.as_deref(), Some("ft-metrics"));
        assert_eq!(
            args.peers_namespace, None,
            "the lease namespace, decided in run"
        );
        assert_eq!(args.traffic_interval, Duration::from_secs(60));
    }
}
