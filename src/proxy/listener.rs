//! Accepts client connections and drives HTTP/1.1 and cleartext HTTP/2 on them.
//!
//! In: bound listening sockets (one per worker and address), the proxy, and a shutdown
//! signal.
//! Out: served connections. The data plane runs one single-threaded runtime per worker
//! thread (one per core by default), each accepting from its own socket (`SO_REUSEPORT`:
//! the kernel spreads new connections over them), so a connection, its requests and
//! their upstream connections stay on one thread (the nginx worker model: no
//! cross-thread wake-ups per request). On shutdown the listener
//! closes at once, open connections finish their in-flight requests (keep-alive ones are
//! told to close) for up to the grace period, and what is left after that is dropped.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `reason` label of a failed handshake.
fn handshake_reason(err: &std::io::Error) -> &'static str {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(_)) => "no_certificate",
        Some(_) => "protocol",
        None => "io",
    }
}

use super::headers::RawFields;
use super::{http1, ConnInfo, Proxy};

/// Largest request head accepted; larger ones get 431.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How often a worker does its housekeeping.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// How draining ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// The grace period ran out; remaining connections were dropped.
    GraceExpired,
}

/// Serves on one thread per pair of listening sockets (`http[i]`, `https[i]`: each
/// worker its own, bound with `SO_REUSEPORT`) until `stop_rx` turns true, then drains
/// for up to `grace`.
pub async fn serve_workers(
    proxy: Arc<Proxy>,
    http: Vec<std::net::TcpListener>,
    https: Vec<std::net::TcpListener>,
    stop_rx: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<Drained> {
    let tls = TlsAcceptor::from(proxy.tls_config());
    let mut finished = Vec::with_capacity(http.len());
    for (worker, (socket, tls_socket)) in http.into_iter().zip(https).enumerate() {
        let tls = tls.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let (proxy, stop_rx) = (proxy.clone(), stop_rx.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("fallthrough-worker-{worker}"))
            .spawn(move || {
                crate::shard::enter_worker(worker);
                let drained = runtime.block_on(async move {
                    let (listener, tls_listener) = match (
                        TcpListener::from_std(socket),
                        TcpListener::from_std(tls_socket),
                    ) {
                        (Ok(l), Ok(t)) => (l, t),
                        (Err(err), _) | (_, Err(err)) => {
                            tracing::error!(error = %err, "worker cannot use the listening sockets");
                            return Drained::Clean;
                        }
                    };
                    let housekeeping = tokio::spawn(housekeeping());
                    let (plain, secure) = tokio::join!(
                        serve(proxy.clone(), listener, None, stop_rx.clone(), grace),
                        serve(proxy, tls_listener, Some(tls), stop_rx, grace),
                    );
                    housekeeping.abort();
                    if plain == Drained::Clean && secure == Drained::Clean {
                        Drained::Clean
                    } else {
                        Drained::GraceExpired
                    }
                });
                let _ = done_tx.send(drained);
            })?;
        finished.push(done_rx);
    }
    let mut result = Drained::Clean;
    for done in finished {
        if done.await != Ok(Drained::Clean) {
            result = Drained::GraceExpired;
        }
    }
    Ok(result)
}

/// A worker thread's housekeeping, run for as long as the worker: once a second it
/// closes idle upstream connections whose idle timeout has passed and refreshes the
/// cached `Date` header.
///
/// The tick matters beyond that. Tokio's timer wakes its driver through an eventfd
/// whenever a timer is armed earlier than the driver's next planned wake-up; with no
/// other timer pending, that is every per-request timer hyper arms on the connections
/// it serves (one more write and epoll round trip each). A tick always due within a
/// second keeps those 30-second deadlines later than the next wake-up.
async fn housekeeping() {
    let mut tick = tokio::time::interval(TICK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        super::upstream::sweep_idle(std::time::Instant::now());
        super::http1::refresh_date();
    }
}

/// Serves connections (over TLS when `tls` is given) until `stop` turns true, then
/// drains for up to `grace`.
async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Drained {
    let mut stop_accepting = stop.clone();
    let shutdown = async move {
        let _ = stop_accepting.wait_for(|stop| *stop).await;
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Like nginx's client_header_timeout, a stalled head is closed without an answer.
        .header_read_timeout(proxy.limits().header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let info = ConnInfo::new(peer, tls.is_some());
                let conn_info = info.clone();
                let service_proxy = proxy.clone();
                let service = service_fn(move |req| {
                    let proxy = service_proxy.clone();
                    let info = info.clone();
                    async move {
                        let resp = proxy.handle(req.map(Some), RawFields::default(), &info).await;
                        Ok::<_, Infallible>(super::body::with_header_map(resp))
                    }
                });
                match &tls {
                    None => {
                        // Plain requests are served by `http1`; hyper takes over the
                        // connection at the first request that is anything else. The
                        // watcher makes draining wait for the connection either way.
                        let watcher = graceful.watcher();
                        let (proxy, builder, stop) = (proxy.clone(), builder.clone(), stop.clone());
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let read = match http1::serve(&proxy, &mut stream, &conn_info, &stop).await {
                                http1::Served::Closed => return,
                                http1::Served::HandOff(read) => read,
                            };
                            let io = TokioIo::new(http1::Rewound::new(read, stream));
                            let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
                            if let Err(err) = watcher.watch(conn).await {
                                tracing::debug!(error = %err, %peer, "client connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let (acceptor, builder, proxy) = (acceptor.clone(), builder.clone(), proxy.clone());
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(err)) => {
                                    proxy.handshake_failed(handshake_reason(&err));
                                    tracing::debug!(error = %err, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    proxy.handshake_failed("timeout");
                                    return;
                                }
                            };
                            // ALPN h2 decided the protocol: no sniffing, so a client that agreed
                            // on h2 and then sends something else is closed, not answered.
                            // (HTTP/2 has no Upgrade; HTTP/1.1 keeps upgrade support.)
                            let io = TokioIo::new(stream);
                            let served = if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
                                let builder = builder.http2_only();
                                watcher.watch(builder.serve_connection(io, service).into_owned()).await
                            } else {
                                watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned()).await
                            };
                            if let Err(err) = served {
                                tracing::debug!(error = %err, %peer, "client connection ended with an error");
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::debug!(grace = ?grace, "worker stopped accepting connections; draining in-flight requests");
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => Drained::Clean,
        Err(_) => Drained::GraceExpired,
    }
}
