//! The commands: `run` wires provider, proxy and admin server together; `check` and
//! `crd` print and exit.
//!
//! In: parsed command-line arguments, signals (SIGHUP reloads; SIGTERM/SIGINT drain,
//! a second one exits at once).
//! Out: a running proxy until shutdown, logs, and the process exit status.

mod file_mode;
mod listen;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::admin::{self, Readiness};
use crate::cli::{LogFormat, RunArgs};
use crate::index::cluster::IndexOptions;
use crate::insight::recorder::Insight;
use crate::metrics::Metrics;
use crate::provider::files;
use crate::provider::kube::traffic::TrafficOptions;
use crate::provider::kube::ControllerOptions;
use crate::proxy::listener::{self, Drained};
use crate::proxy::Proxy;
use crate::routes::{RouteTable, Timeouts};

/// Why a command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable Kubernetes configuration or client.
    #[error("cannot reach Kubernetes: {0}; give --kubeconfig (or KUBECONFIG), run in a cluster, or pass --routes FILE|DIR to run without one")]
    Kube(String),
    /// The route files are invalid at startup; every error was logged.
    #[error("{0} error(s) in the route files (listed above); fix them and start again")]
    InvalidRoutes(usize),
    /// A listening address is taken or not allowed.
    #[error("cannot listen for {what} on {addr}: {source}; choose another address with --{flag}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The flag that sets it.
        flag: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or signal handlers could not start.
    #[error("cannot start: {0}")]
    Runtime(#[from] std::io::Error),
    /// The default certificate flags are unusable.
    #[error("--default-cert-file: {0}")]
    DefaultCert(String),
    /// `--proxy-protocol` without anyone to accept it from.
    #[error("--proxy-protocol needs --trusted-proxies: a PROXY header is only believed from a trusted proxy (give the load balancer's addresses or subnet)")]
    ProxyProtocolUntrusted,
    /// The access log file cannot be opened.
    #[error("--access-log-path {path}: {source}")]
    AccessLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CRD could not be rendered.
    #[error("cannot render the CRD: {0}")]
    Crd(#[from] serde_saphyr::SerializeError),
}

/// Logs to stderr as text or JSON; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// `fallthrough run`.
pub fn run(args: RunArgs) -> Result<(), RunError> {
    init_logging(args.log_format);
    // The control plane (admin, reloads, watches) is light; the data plane has its own
    // threads (see `proxy::listener::serve_workers`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fallthrough-control")
        .enable_all()
        .build()?;
    match args.routes.clone() {
        Some(routes) => runtime.block_on(file_mode::serve_files(args, routes)),
        None => runtime.block_on(serve_cluster(args)),
    }
}

/// `fallthrough check`: validates route files, prints every problem.
pub fn check(path: &Path) -> Result<(), RunError> {
    match files::load(path, Timeouts::default()) {
        Ok(loaded) => {
            let (table, conflicts) = RouteTable::build(loaded.routes);
            for conflict in &conflicts {
                eprintln!("warning: {conflict}");
            }
            println!(
                "{}: {} route(s) OK, {} left out by conflicts",
                path.display(),
                table.routes().len(),
                conflicts.len()
            );
            Ok(())
        }
        Err(errors) => {
            for err in &errors {
                eprintln!("error: {err}");
            }
            Err(RunError::InvalidRoutes(errors.len()))
        }
    }
}

/// `fallthrough crd`: the CustomResourceDefinition generated from the Rust types.
pub fn crd_yaml() -> Result<String, RunError> {
    use kube::CustomResourceExt;
    // Long one-line strings (descriptions, patterns) stay on one line rather than
    // being folded (`>-`): a regex or a sentence reads and greps as written.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    Ok(serde_saphyr::to_string_with_options(
        &crate::api::FallbackRoute::crd(),
        options,
    )?)
}

async fn kube_client(args: &RunArgs) -> Result<kube::Client, RunError> {
    let config = crate::provider::kube::config(args.kubeconfig.as_deref())
        .await
        .map_err(RunError::Kube)?;
    kube::Client::try_from(config).map_err(|e| RunError::Kube(e.to_string()))
}

async fn serve_cluster(args: RunArgs) -> Result<(), RunError> {
    let client = kube_client(&args).await?;
    let metrics = Arc::new(Metrics::new(args.workers()));
    let readiness = Arc::new(Readiness::default());
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let proxy = new_proxy(&args, &metrics, identity.clone())?;
    let (http, admin) = listen::bind_both(&args).await?;
    let options = ControllerOptions {
        index: IndexOptions {
            ingress_class: args.ingress_class.clone(),
            allow_url_backends: args.allow_url_backends,
            defaults: args.default_timeouts(),
            default_certificate: args
                .default_certificate
                .clone()
                .map(|(namespace, name)| crate::index::cluster::ObjKey { namespace, name }),
        },
        watch_namespace: args.watch_namespace.clone(),
        lease_namespace: args.lease_namespace.clone(),
        lease_name: args.lease_name.clone(),
        identity,
        traffic: args.peers_service.clone().map(|service| TrafficOptions {
            service,
            namespace: args
                .peers_namespace
                .clone()
                .unwrap_or_else(|| args.lease_namespace.clone()),
            interval: args.traffic_interval,
        }),
    };
    tracing::info!(namespace = ?options.watch_namespace, ingress_class = %options.index.ingress_class, identity = %options.identity, "starting the Kubernetes controller");
    tokio::spawn(crate::provider::kube::run(
        client,
        options,
        proxy.clone(),
        metrics.clone(),
        readiness.clone(),
    ));
    serve_until_stopped(&args, proxy, metrics, readiness, http, admin).await
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "fallthrough".into());
    format!("{host}-{}", std::process::id())
}

async fn serve_until_stopped(
    args: &RunArgs,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    listeners: listen::Listeners,
    admin: TcpListener,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(stop_on_signals(readiness.clone(), stop_tx)?);
    let admin_task = tokio::spawn(admin::serve(
        admin,
        admin::Sources {
            metrics: metrics.clone(),
            readiness,
            insight: proxy.insight(),
        },
        // Probes must keep answering while draining (/readyz 503, /healthz 200): the
        // admin server lives until the process exits.
        std::future::pending::<()>(),
    ));
    let workers = args.workers();
    tracing::info!(workers, "serving");
    let front = proxy.front().clone();
    let drained = listener::serve_workers(
        proxy,
        listeners.http,
        listeners.https,
        stop_rx.clone(),
        args.shutdown_grace,
    );
    let drained = drained.await?;
    if let Some(log) = &front.access_log {
        log.close();
    }
    match drained {
        Drained::Clean => tracing::info!("drained; exiting"),
        Drained::GraceExpired => tracing::warn!(
            grace = ?args.shutdown_grace,
            "grace period over with requests still in flight; exiting anyway"
        ),
    }
    admin_task.abort();
    Ok(())
}

/// The proxy the flags describe, its paths report naming this replica `identity`.
fn new_proxy(
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    identity: String,
) -> Result<Arc<Proxy>, RunError> {
    let insight = Insight::new(args.paths_top as usize, args.paths_memory, identity);
    Ok(Proxy::new(
        metrics.clone(),
        insight,
        args.limits(),
        args.workers(),
        front(args, metrics)?,
    ))
}

/// What stands in front of the proxy, from the flags: the trusted proxies, the PROXY
/// protocol, and the access log (its writer thread started).
fn front(args: &RunArgs, metrics: &Metrics) -> Result<crate::proxy::Front, RunError> {
    use crate::access_log::{AccessLog, Format, Sink};
    use crate::cli::AccessLogFormat;
    if args.proxy_protocol && args.trusted_proxies.is_empty() {
        return Err(RunError::ProxyProtocolUntrusted);
    }
    let format = match args.access_log {
        AccessLogFormat::Off => None,
        AccessLogFormat::Text => Some(Format::Text),
        AccessLogFormat::Json => Some(Format::Json),
    };
    let access_log = match format {
        None => None,
        Some(format) => {
            let path = &args.access_log_path;
            let sink = if path.as_os_str() == "-" {
                Sink::Stdout
            } else {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| RunError::AccessLog {
                        path: path.clone(),
                        source,
                    })?;
                Sink::File(file)
            };
            Some(AccessLog::start(
                format,
                sink,
                args.workers(),
                metrics.access_log_dropped(),
            )?)
        }
    };
    Ok(crate::proxy::Front {
        trusted: args.trusted_proxies.clone(),
        proxy_protocol: args.proxy_protocol,
        access_log,
    })
}

fn stop_on_signals(
    readiness: Arc<Readiness>,
    stop_tx: watch::Sender<bool>,
) -> Result<impl std::future::Future<Output = ()>, RunError> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal: draining (send it again to exit at once)");
        readiness.set_draining();
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second shutdown signal: exiting without waiting");
        std::process::exit(130);
    })
}
