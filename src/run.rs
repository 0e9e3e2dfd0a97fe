//! The commands: `run` wires provider, proxy and admin server together; `check` and
//! `crd` print and exit.
//!
//! In: parsed command-line arguments, signals (SIGHUP reloads; SIGTERM/SIGINT drain,
//! a second one exits at once).
//! Out: a running proxy until shutdown, logs, and the process exit status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::EnvFilter;

use crate::admin::{self, Readiness};
use crate::cli::{LogFormat, RunArgs};
use crate::index::cluster::IndexOptions;
use crate::insight::recorder::Insight;
use crate::metrics::Metrics;
use crate::provider::files::{self, RouteFileError};
use crate::provider::kube::traffic::TrafficOptions;
use crate::provider::kube::ControllerOptions;
use crate::proxy::listener::{self, Drained};
use crate::proxy::Proxy;
use crate::routes::{Route, RouteTable, Timeouts};

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
        Some(routes) => runtime.block_on(serve_files(args, routes)),
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

async fn bind(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            what,
            addr,
            flag,
            source,
        })
}

async fn serve_files(args: RunArgs, path: PathBuf) -> Result<(), RunError> {
    let defaults = args.default_timeouts();
    let metrics = Arc::new(Metrics::new(args.workers()));
    let readiness = Arc::new(Readiness::default());
    let proxy = new_proxy(&args, &metrics, default_identity())?;

    let default_cert = DefaultCert::from_args(&args)?;
    let loaded = files::load(&path, defaults).map_err(|errors| {
        log_file_errors(&errors, "cannot start");
        RunError::InvalidRoutes(errors.len())
    })?;
    tracing::info!(routes = loaded.routes.len(), certificates = loaded.certs.len(), path = %path.display(), "routes loaded");
    // Right after reading, before anyone is told we are ready: a certificate rotated from
    // then on differs from this and is picked up by the first poll.
    let certs_seen = cert_fingerprint(&loaded, default_cert.as_ref());
    publish(&proxy, &metrics, loaded.routes.clone());
    publish_certs(&proxy, &metrics, &loaded, default_cert.as_ref());
    metrics.reloaded(true);

    let (http, admin) = bind_both(&args).await?;

    let (changed_tx, changed_rx) = mpsc::channel(1);
    // Without file events (e.g. inotify limits) SIGHUP still reloads.
    let _watcher = files::watch(&path, changed_tx.clone())
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the route files; reload with SIGHUP"))
        .ok();
    tokio::spawn(reload_on_sighup(changed_tx)?);
    tokio::spawn(reload_loop(
        Reloader {
            path,
            defaults,
            default_cert,
            proxy: proxy.clone(),
            metrics: metrics.clone(),
        },
        loaded,
        certs_seen,
        changed_rx,
    ));
    // Ready only once changes are watched: a file written after /readyz said 200 is seen.
    readiness.set_loaded();

    serve_until_stopped(&args, proxy, metrics, readiness, http, admin).await
}

/// The data-plane listeners: for each address, one socket per worker thread.
pub(crate) struct Listeners {
    http: Vec<std::net::TcpListener>,
    https: Vec<std::net::TcpListener>,
}

async fn bind_both(args: &RunArgs) -> Result<(Listeners, TcpListener), RunError> {
    let workers = args.workers();
    let http = bind_workers("HTTP", "http-addr", args.http_addr, workers)?;
    let https = bind_workers("HTTPS", "https-addr", args.https_addr, workers)?;
    let admin = bind("the admin server", "admin-addr", args.admin_addr).await?;
    tracing::info!("listening for HTTP on {}", http[0].local_addr()?);
    tracing::info!("listening for HTTPS on {}", https[0].local_addr()?);
    tracing::info!("admin server listening on {}", admin.local_addr()?);
    Ok((Listeners { http, https }, admin))
}

/// Binds `addr` once per worker with `SO_REUSEPORT`, so the kernel spreads new
/// connections evenly over the workers.
///
/// Why: with one socket shared by every worker, the worker that wakes first accepts a
/// whole burst of connections (all of wrk's 32, at times), and one core then serves
/// them while the others idle. nginx (`reuseport`) and Envoy (by default) do the same.
/// A plain bind comes first, so an address anything else holds, another fallthrough
/// included, is refused as before rather than shared.
fn bind_workers(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, RunError> {
    let failed = |source| RunError::Bind {
        what,
        addr,
        flag,
        source,
    };
    // With port 0, the port the system picks here is the one the workers share.
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|probe| probe.local_addr())
        .map_err(failed)?;
    (0..workers.max(1))
        .map(|_| reuse_port_listener(bound).map_err(failed))
        .collect()
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As tokio's `TcpListener::bind`: a restart need not wait for old connections.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// `--default-cert-file`/`--default-key-file`: served when no route's certificate fits.
struct DefaultCert {
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl DefaultCert {
    fn from_args(args: &RunArgs) -> Result<Option<DefaultCert>, RunError> {
        match (&args.default_cert_file, &args.default_key_file) {
            (None, None) => Ok(None),
            (Some(cert_file), Some(key_file)) => {
                let default = DefaultCert {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                };
                default.read()?;
                Ok(Some(default))
            }
            _ => Err(RunError::DefaultCert(
                "give --default-cert-file and --default-key-file together".into(),
            )),
        }
    }

    fn read(&self) -> Result<crate::tls::Certificate, RunError> {
        files::read_certificate(&self.cert_file, &self.key_file)
            .map_err(|e| RunError::DefaultCert(format!("{}: {e}", self.cert_file.display())))
    }
}

/// Builds the SNI store from the routes' certificates (first route for a host wins) and
/// the default certificate, and swaps it in.
fn publish_certs(
    proxy: &Proxy,
    metrics: &Metrics,
    loaded: &files::Loaded,
    default: Option<&DefaultCert>,
) {
    let mut store = crate::tls::CertStore::default();
    let mut served: Vec<(&str, String, i64)> = Vec::new();
    for rc in &loaded.certs {
        store.add(&rc.hosts, &rc.cert);
        let name = rc.cert_file.display().to_string();
        served.push((&rc.namespace, name, rc.cert.not_after));
    }
    if let Some(default) = default {
        match default.read() {
            Ok(cert) => {
                let name = default.cert_file.display().to_string();
                served.push(("", name, cert.not_after));
                store.set_default(&cert);
            }
            Err(err) => tracing::error!("the default certificate is not served: {err}"),
        }
    }
    metrics.certificates_served(served.iter().map(|(ns, name, t)| (*ns, name.as_str(), *t)));
    proxy.publish_certs(store);
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
    let (http, admin) = bind_both(&args).await?;
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
    listeners: Listeners,
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

fn publish(proxy: &Proxy, metrics: &Metrics, routes: Vec<Route>) {
    let (table, conflicts) = RouteTable::build(routes);
    for conflict in &conflicts {
        tracing::error!("{conflict}");
    }
    metrics.table_published(table.routes().len(), conflicts.len());
    proxy.publish(table);
}

fn log_file_errors(errors: &[RouteFileError], outcome: &str) {
    for err in errors {
        tracing::error!("{outcome}: {err}");
    }
}

/// What a file reload needs.
struct Reloader {
    path: PathBuf,
    defaults: Timeouts,
    default_cert: Option<DefaultCert>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
}

type Fingerprint = Vec<Option<(u64, std::time::SystemTime)>>;

/// Size and modification time of every certificate file in use, to notice rotation.
fn cert_fingerprint(loaded: &files::Loaded, default: Option<&DefaultCert>) -> Fingerprint {
    let defaults = default
        .into_iter()
        .flat_map(|d| [&d.cert_file, &d.key_file]);
    loaded
        .certs
        .iter()
        .flat_map(|c| [&c.cert_file, &c.key_file])
        .chain(defaults)
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        })
        .collect()
}

/// The certificate and key files a load read, in order.
fn cert_files(loaded: &files::Loaded) -> Vec<(&std::path::Path, &std::path::Path)> {
    loaded
        .certs
        .iter()
        .map(|c| (c.cert_file.as_path(), c.key_file.as_path()))
        .collect()
}

async fn reload_loop(
    r: Reloader,
    mut serving: files::Loaded,
    mut certs_seen: Fingerprint,
    mut changed_rx: mpsc::Receiver<()>,
) {
    // Certificates may live outside the watched directory (cert-manager, mounted
    // Secrets): their files are polled so a renewal is served within a second.
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            changed = changed_rx.recv() => {
                if changed.is_none() {
                    return;
                }
                // Outside the select: a poll tick must not cancel a change half-taken.
                files::settle(&mut changed_rx).await;
            }
            _ = poll.tick() => {
                let now = cert_fingerprint(&serving, r.default_cert.as_ref());
                if now == certs_seen {
                    continue;
                }
                certs_seen = now;
                tracing::info!("a certificate file changed; reloading");
            }
        }
        // Taken before the files are read, so a rotation that lands during the read (a
        // new certificate next to the old key, say) still differs at the next poll.
        let before = cert_fingerprint(&serving, r.default_cert.as_ref());
        let (load_path, defaults) = (r.path.clone(), r.defaults);
        // File reads and YAML parsing stay off the proxy's worker threads.
        let loaded = tokio::task::spawn_blocking(move || files::load(&load_path, defaults)).await;
        match loaded {
            Ok(Ok(loaded)) => {
                r.metrics.reloaded(true);
                if loaded.routes != serving.routes {
                    tracing::info!(routes = loaded.routes.len(), "routes reloaded");
                    publish(&r.proxy, &r.metrics, loaded.routes.clone());
                }
                publish_certs(&r.proxy, &r.metrics, &loaded, r.default_cert.as_ref());
                certs_seen = if cert_files(&loaded) == cert_files(&serving) {
                    before
                } else {
                    cert_fingerprint(&loaded, r.default_cert.as_ref())
                };
                serving = loaded;
            }
            Ok(Err(errors)) => {
                r.metrics.reloaded(false);
                log_file_errors(&errors, "reload failed, previous routes keep serving");
            }
            Err(join) => {
                r.metrics.reloaded(false);
                tracing::error!(error = %join, "reload failed, previous routes keep serving");
            }
        }
    }
}

fn reload_on_sighup(
    changed_tx: mpsc::Sender<()>,
) -> Result<impl std::future::Future<Output = ()>, RunError> {
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading routes");
            let _ = changed_tx.try_send(());
        }
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
