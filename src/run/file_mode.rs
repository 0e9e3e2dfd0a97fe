//! File mode (`run --routes`): the routes and certificates of a directory, served and
//! reloaded on change, on SIGHUP, and when a certificate file is rotated.
//!
//! In: the route files and the default certificate's flags. Out: tables and certificate
//! stores published to the proxy; a reload that fails keeps the last good ones serving.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::{default_identity, listen, new_proxy, serve_until_stopped, RunError};
use crate::admin::Readiness;
use crate::cli::RunArgs;
use crate::metrics::Metrics;
use crate::provider::files::{self, RouteFileError};
use crate::proxy::Proxy;
use crate::routes::{Route, RouteTable, Timeouts};

pub(super) async fn serve_files(args: RunArgs, path: PathBuf) -> Result<(), RunError> {
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

    let (http, admin) = listen::bind_both(&args).await?;

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
