//! Accepts client connections and drives HTTP/1.x (`h1::server`) and HTTP/2 (hyper) on
//! them.
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

use super::body::ClientRequestBody;
use super::h1::codec::MAX_HEAD_BYTES;
use super::h1::head::RawFields;
use super::h1::server::{self, Served};
use super::proxy_protocol;
use super::{ConnInfo, Proxy};

/// HTTP/2 streams a connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;
/// HTTP/2 flow-control windows: the request body bytes a stream, and a whole
/// connection, may have in flight unread. With the replay budget, they bound what one
/// HTTP/2 connection can make the proxy hold.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

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
    super::upstream::set_workers(http.len());
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
                    let housekeeping = tokio::spawn(housekeeping(proxy.clone()));
                    let (plain, secure) = tokio::join!(
                        serve(proxy.clone(), listener, None, stop_rx.clone(), grace),
                        serve(proxy.clone(), tls_listener, Some(tls), stop_rx, grace),
                    );
                    housekeeping.abort();
                    // What this worker logged while draining.
                    proxy.flush_access_log();
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
/// closes idle upstream connections whose idle timeout has passed, refreshes the
/// cached `Date` header and hands its access log lines to the writer.
///
/// The tick matters beyond that. Tokio's timer wakes its driver through an eventfd
/// whenever a timer is armed earlier than the driver's next planned wake-up; with no
/// other timer pending, that is every per-request timer hyper arms on the connections
/// it serves (one more write and epoll round trip each). A tick always due within a
/// second keeps those 30-second deadlines later than the next wake-up.
async fn housekeeping(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(TICK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        super::upstream::sweep_idle(std::time::Instant::now());
        server::refresh_date();
        proxy.flush_access_log();
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
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
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
                let mut stream = stream;
                // The watcher makes draining wait for the connection, whoever serves it.
                let watcher = graceful.watcher();
                let (proxy, h2, stop) = (proxy.clone(), h2.clone(), stop.clone());
                match &tls {
                    None => {
                        tokio::spawn(async move {
                            let Some(info) = conn_info(&proxy, &mut stream, peer, false).await else {
                                return;
                            };
                            let (read, stream) = match server::serve_tcp(&proxy, stream, &info, &stop).await {
                                Served::Closed => return,
                                Served::HandOff(read, stream) => (read, stream),
                            };
                            let io = TokioIo::new(Rewound::new(read, stream));
                            let service = h2_service(proxy.clone(), info);
                            if let Err(err) = watcher.watch(h2.serve_connection(io, service)).await {
                                tracing::debug!(error = %err, %peer, "client connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let Some(info) = conn_info(&proxy, &mut stream, peer, true).await else {
                                return;
                            };
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
                            // ALPN decided the protocol: no sniffing, so a client that agreed
                            // on h2 and then sends something else is closed, not answered.
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let io = TokioIo::new(stream);
                                let service = h2_service(proxy.clone(), info);
                                if let Err(err) = watcher.watch(h2.serve_connection(io, service)).await {
                                    tracing::debug!(error = %err, %peer, "client connection ended with an error");
                                }
                            } else {
                                server::serve_io(&proxy, stream, &info, &stop).await;
                                drop(watcher);
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

/// What the proxy knows of a new connection from `peer`: whether it is a trusted
/// proxy, and, with `--proxy-protocol`, the client its PROXY header names. `None`: a
/// trusted proxy's connection without a valid header, closed.
async fn conn_info(
    proxy: &Proxy,
    stream: &mut tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    tls: bool,
) -> Option<ConnInfo> {
    let front = proxy.front();
    let mut client = peer;
    if front.proxy_protocol && front.trusted.trusts(peer.ip()) {
        match proxy_protocol::read_header(stream, proxy.limits().header_timeout).await {
            Ok(Some(named)) => client = named,
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(error = %err, %peer, "closing a trusted proxy's connection");
                proxy.proxy_header_refused();
                return None;
            }
        }
    }
    let mut info = ConnInfo::new(client, tls).judged(&front.trusted);
    if let Ok(local) = stream.local_addr() {
        info = info.at(local);
    }
    Some(info)
}

/// What hyper's HTTP/2 server calls for each request of a connection.
fn h2_service(
    proxy: Arc<Proxy>,
    info: ConnInfo,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::answer::ClientBody>,
    Error = Infallible,
    Future = impl std::future::Future<
        Output = Result<http::Response<super::answer::ClientBody>, Infallible>,
    > + Send,
> + Clone {
    service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        let info = info.clone();
        async move {
            let req = req.map(|body| Some(ClientRequestBody::H2(body)));
            let resp = proxy.handle(req, RawFields::default(), &info).await;
            Ok::<_, Infallible>(super::answer::with_header_map(resp))
        }
    })
}

/// A connection handed to HTTP/2: the bytes already read come first.
struct Rewound {
    read: bytes::Bytes,
    stream: tokio::net::TcpStream,
}

impl Rewound {
    fn new(read: bytes::Bytes, stream: tokio::net::TcpStream) -> Self {
        Rewound { read, stream }
    }
}

impl tokio::io::AsyncRead for Rewound {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use bytes::Buf;
        let this = self.get_mut();
        if this.read.is_empty() {
            return std::pin::Pin::new(&mut this.stream).poll_read(cx, out);
        }
        let n = this.read.len().min(out.remaining());
        out.put_slice(&this.read[..n]);
        this.read.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Rewound {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
