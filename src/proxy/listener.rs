//! Accepts client connections and drives HTTP/1.1 and cleartext HTTP/2 on them.
//!
//! In: a bound listener, the proxy, and a shutdown signal.
//! Out: served connections. On shutdown the listener closes at once, open connections
//! finish their in-flight requests (keep-alive ones are told to close) for up to the
//! grace period, and what is left after that is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::{ConnInfo, Proxy};

/// Largest request head accepted; larger ones get 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How draining ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the grace period.
    Clean,
    /// The grace period ran out; remaining connections were dropped.
    GraceExpired,
}

/// Serves connections until `shutdown` resolves, then drains for up to `grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Drained {
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
                let info = ConnInfo::http(peer);
                let proxy = proxy.clone();
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    let info = info.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, &info).await) }
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(error = %err, %peer, "client connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(grace = ?grace, "stopped accepting connections; draining in-flight requests");
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => Drained::Clean,
        Err(_) => Drained::GraceExpired,
    }
}
