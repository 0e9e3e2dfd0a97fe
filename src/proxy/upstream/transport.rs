//! Connections to backends: how one is opened, and how bytes are read from it.
//!
//! In: an endpoint (TCP or Unix socket), the backend's protocol, the route's connect and
//! idle timeouts.
//! Out: an open [`Conn`] with its read buffer, read the way the client side reads.
//!
//! The backend's [`Protocol`] is the seam: HTTP/1.1 and FastCGI over TCP or a Unix
//! socket, HTTP/1.1 over TLS. Each protocol's exchange runs beside this file
//! (`exchange.rs`, `fastcgi.rs`) over the same [`Stream`].

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::slots::Slot;
use super::UpstreamError;
use crate::proxy::h1::inbound::{poll_read_tcp, READ_CHUNK};
use crate::routes::{Addr, Endpoint, Protocol};

/// A byte stream to a backend.
pub enum Stream {
    /// TCP in the clear.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
    /// TLS over TCP; boxed, as its buffers are large and most backends are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

/// One open connection to a backend. Boxed from its connect on: a request moves its
/// connection from the pool through the exchange into the response body and back, and
/// each move then copies a pointer rather than the whole connection.
pub(super) struct Conn {
    pub(super) stream: Stream,
    /// Bytes read from the socket and not yet consumed.
    pub(super) buf: BytesMut,
    /// The request being written; kept with the connection so a request costs no
    /// buffer allocation.
    pub(super) out: Vec<u8>,
    /// The connection's one timer, armed once and moved rather than re-registered: the
    /// response-header deadline, then the body's read-idle deadline.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The pool key of its endpoint (see [`Endpoint::pool_key`]).
    pub(super) key: Box<str>,
    /// The endpoint's TCP host, for a request that names none (HTTP/1.0 without `Host`).
    pub(super) host: Box<str>,
    pub(super) idle: Duration,
    pub(super) reused: bool,
    /// Its place under a FastCGI backend's `maxConnections`, given back when it closes.
    pub(super) slot: Option<Slot>,
}

impl Conn {
    /// Reads what the socket has into the buffer: `Ok(0)` at end of stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        match &mut self.stream {
            Stream::Tcp(tcp) => poll_read_tcp(tcp, &mut self.buf, cx),
            Stream::Unix(unix) => poll_read_unix(unix, &mut self.buf, cx),
            Stream::Tls(tls) => {
                if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                    self.buf.reserve(READ_CHUNK);
                }
                tokio_util::io::poll_read_buf(Pin::new(tls.as_mut()), cx, &mut self.buf)
            }
        }
    }

    /// Whether an idle connection can take a request: the peer has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket was signalled
    /// readable.
    pub(super) fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let idle =
            |r: io::Result<usize>| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        match &self.stream {
            Stream::Tcp(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => idle(tcp.try_read(&mut probe)),
            },
            Stream::Unix(unix) => match unix.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => idle(unix.try_read(&mut probe)),
            },
            // Any bytes on an idle TLS connection (a close_notify, a late session
            // ticket) cannot be peeked at without reading records: the safe side is to
            // open a new connection.
            Stream::Tls(tls) => tls.get_ref().0.poll_read_ready(&mut cx).is_pending(),
        }
    }
}

fn poll_read_unix(
    stream: &UnixStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match stream.try_read_buf(buf) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Opens a connection to `endpoint` for `protocol` within `timeout`: the TCP or Unix
/// connect and, for HTTPS, the TLS handshake.
pub(super) async fn connect(
    protocol: &Protocol,
    endpoint: &Endpoint,
    timeout: Duration,
    idle: Duration,
    slot: Option<Slot>,
) -> Result<Box<Conn>, UpstreamError> {
    let failed = |timed_out, source| UpstreamError::Connect {
        endpoint: endpoint.to_string(),
        timed_out,
        source,
    };
    let opening = async {
        match &endpoint.addr {
            Addr::Tcp(authority) => {
                let port = authority.port_u16().unwrap_or(80);
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let tcp = match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => TcpStream::connect((ip, port)).await,
                    Err(_) => TcpStream::connect((host, port)).await,
                }
                .map_err(|e| failed(false, e))?;
                tcp.set_nodelay(true).map_err(|e| failed(false, e))?;
                match protocol {
                    Protocol::Https(tls) => {
                        let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                            .map_err(|e| {
                                failed(false, io::Error::new(io::ErrorKind::InvalidInput, e))
                            })?;
                        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                        let tls = connector.connect(name, tcp).await.map_err(|source| {
                            UpstreamError::Tls {
                                endpoint: endpoint.to_string(),
                                source,
                            }
                        })?;
                        Ok(Stream::Tls(Box::new(tls)))
                    }
                    _ => Ok(Stream::Tcp(tcp)),
                }
            }
            Addr::Unix(path) => UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(|e| failed(false, e)),
        }
    };
    let stream = match tokio::time::timeout(timeout, opening).await {
        Ok(opened) => opened?,
        Err(_) => {
            return Err(failed(
                true,
                io::Error::new(io::ErrorKind::TimedOut, "connect timeout expired"),
            ))
        }
    };
    let host = match endpoint.authority() {
        Some(authority) => authority.as_str().into(),
        // A Unix socket has no host name; `localhost` is what a sidecar expects.
        None => "localhost".into(),
    };
    Ok(Box::new(Conn {
        stream,
        buf: BytesMut::new(),
        out: Vec::new(),
        timer: None,
        key: endpoint.pool_key().into(),
        host,
        idle,
        reused: false,
        slot,
    }))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
