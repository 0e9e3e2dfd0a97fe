//! Connections to backends: how one is opened, and how bytes are read from it.
//!
//! In: an endpoint, the route's connect and idle timeouts.
//! Out: an open [`Conn`] with its read buffer, read the way the client side reads.
//!
//! [`Transport`] is the seam a backend's protocol plugs into: HTTP/1.1 over TCP is the
//! only one today; FastCGI, TLS and Unix-socket transports join it as variants, each
//! with its own connect here and exchange beside `exchange.rs`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use tokio::net::TcpStream;

use super::UpstreamError;
use crate::proxy::h1::inbound::poll_read_tcp;

/// How requests reach a backend and responses come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 over a TCP connection, kept alive in the worker's pool.
    #[default]
    Http1,
}

/// One open connection to a backend. Boxed from its connect on: a request moves its
/// connection from the pool through the exchange into the response body and back, and
/// each move then copies a pointer rather than the whole connection.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    /// Bytes read from the socket and not yet consumed.
    pub(super) buf: BytesMut,
    /// The request being written; kept with the connection so a request costs no
    /// buffer allocation.
    pub(super) out: Vec<u8>,
    /// The connection's one timer, armed once and moved rather than re-registered: the
    /// response-header deadline, then the body's read-idle deadline.
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) endpoint: Authority,
    pub(super) idle: Duration,
    pub(super) reused: bool,
}

impl Conn {
    /// Reads what the socket has into the buffer: `Ok(0)` at end of stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_tcp(&self.stream, &mut self.buf, cx)
    }
}

/// Opens a connection to `endpoint` over `transport` within `timeout`.
pub(super) async fn connect(
    transport: Transport,
    endpoint: &Authority,
    timeout: Duration,
    idle: Duration,
) -> Result<Box<Conn>, UpstreamError> {
    let Transport::Http1 = transport;
    let failed = |timed_out, source| UpstreamError::Connect {
        endpoint: endpoint.clone(),
        timed_out,
        source,
    };
    let port = endpoint.port_u16().unwrap_or(80);
    let host = endpoint
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let connecting = async {
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, port)).await,
            Err(_) => TcpStream::connect((host, port)).await,
        }
    };
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(failed(false, err)),
        Err(_) => {
            return Err(failed(
                true,
                io::Error::new(io::ErrorKind::TimedOut, "connect timeout expired"),
            ))
        }
    };
    stream.set_nodelay(true).map_err(|e| failed(false, e))?;
    Ok(Box::new(Conn {
        stream,
        buf: BytesMut::new(),
        out: Vec::new(),
        timer: None,
        endpoint: endpoint.clone(),
        idle,
        reused: false,
    }))
}
