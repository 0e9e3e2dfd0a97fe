//! Requests to the backends: pick a pooled connection or open one, run one exchange,
//! retry once when a pooled connection turned out to be stale and that is safe.
//!
//! In: an endpoint, the shared request head, a request body, the route's timeouts and
//! the proxy's upstream read timeout.
//! Out: the upstream's response, whose body reads straight from the upstream socket and
//! hands the connection back to this thread's pool after its last byte; or an
//! [`UpstreamError`].
//!
//! Why not a general-purpose client: on a primary hit the proxy does little besides
//! moving one request and one response, so a separate connection task, the channels
//! between it and the request, and a shared pool cost as much as the proxying itself.
//! Here there is no task and no channel: the client's connection task writes the request,
//! parses the response head (`h1::codec`) and polls the body out of the socket, the way
//! nginx's worker does. Each worker thread keeps its own idle connections
//! ([`pool`]), so nothing is shared between threads.

mod exchange;
mod fastcgi;
mod pool;
mod slots;
mod transport;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use http::{Method, Response};

use super::body::{BodyError, UpstreamBody};
use super::fastcgi::params::ScriptPathError;
use super::h1::head::RawFields;
use super::h1::upstream_head::UpstreamHead;
use crate::routes::{Endpoint, Protocol, Timeouts};
use exchange::{exchange, Deadlines};
pub use exchange::{HttpBody, ResponseBodyError};
pub use fastcgi::FastCgiBody;
pub use pool::sweep_idle;
pub use slots::set_workers;
use transport::Conn;
pub use transport::Stream;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection could not be opened; the request never left.
    #[error("connecting to {endpoint} failed: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The connect timeout expired rather than a refusal.
        timed_out: bool,
        /// What the socket said.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed: most often the backend's certificate is not trusted
    /// or not for the server name. The request never left.
    #[error("TLS to {endpoint} failed: {source}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// What rustls said.
        #[source]
        source: io::Error,
    },
    /// The connection broke while sending the request or reading the response.
    #[error("connection to the backend broke: {0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before a complete response head.
    #[error("the backend closed the connection before answering")]
    Closed,
    /// The backend's response is not valid HTTP/1.1.
    #[error("the backend sent a malformed response: {0}")]
    Malformed(&'static str),
    /// The client's request body broke while it was streamed to the backend.
    #[error("the request body could not be read: {0}")]
    RequestBody(#[source] BodyError),
    /// The path cannot name a FastCGI script (answered 400).
    #[error("{0}")]
    ScriptPath(#[from] ScriptPathError),
    /// A request field too large for one FastCGI record (64 KiB), answered 431.
    #[error("a request field is too large for a FastCGI record")]
    ParamTooLarge,
    /// A FastCGI request body of unknown length (chunked) too large to buffer:
    /// `CONTENT_LENGTH` cannot be given (answered 411).
    #[error("a chunked request body above maxReplayBytes cannot go to a FastCGI backend, which needs its length")]
    LengthRequired,
    /// No complete response head before the route's response header timeout.
    #[error("the backend did not answer within the response header timeout")]
    ResponseTimeout,
}

impl UpstreamError {
    /// Whether the connection failed before the request could reach the backend.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }

    /// Whether the TLS handshake failed.
    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamError::Tls { .. })
    }

    /// Whether this is a connect timeout.
    pub fn is_connect_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect {
                timed_out: true,
                ..
            }
        )
    }
}

/// An exchange that failed, and whether the backend had started to answer.
struct Failed {
    error: UpstreamError,
    answered: bool,
}

impl From<UpstreamError> for Failed {
    fn from(error: UpstreamError) -> Self {
        Failed {
            error,
            answered: false,
        }
    }
}

/// Sends the request to `endpoint` and reads the response head, which must arrive
/// within `timeouts.response_header` of `started` (of the body's last byte, for a
/// request with a body). Body bytes either way may pause for at most `read_idle`.
///
/// A request that fails on a reused keep-alive connection before any byte of an answer
/// arrived (the backend closed it while it sat in the pool) is sent once more on a new
/// connection when that is safe: an idempotent method and a body that can be replayed.
pub async fn send(
    protocol: &Protocol,
    endpoint: &Endpoint,
    timeouts: &Timeouts,
    read_idle: Duration,
    started: Instant,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, UpstreamError> {
    if let Protocol::FastCgi(fcgi) = protocol {
        // Boxed: the HTTP path below, most requests, keeps its small future.
        return Box::pin(fastcgi::send(
            fcgi, protocol, endpoint, timeouts, read_idle, head, body,
        ))
        .await;
    }
    let deadlines = Deadlines {
        head_by: started + timeouts.response_header,
        response_header: timeouts.response_header,
        read_idle,
    };
    let conn = match pool::checkout(endpoint.pool_key(), started) {
        Some(conn) => conn,
        // Boxed, like every rare path here: the request future stays small.
        None => Box::pin(open(protocol, endpoint, timeouts)).await?,
    };
    let retry = replay_for_retry(&conn, head, &body);
    // Boxed: the exchange is most of the request's state, and a future is copied whole
    // into each caller's state as it starts; on the heap it is written once. (Boxing
    // this function's future instead put 1.6 KB on mimalloc's slow path per attempt.)
    match Box::pin(exchange(conn, head, body, deadlines)).await {
        Ok(resp) => Ok(resp),
        Err(failed) => match retry {
            Some(body) if failed.may_retry() => {
                tracing::debug!(%endpoint, error = %failed.error, "pooled connection was stale; retrying on a new one");
                let conn = Box::pin(open(protocol, endpoint, timeouts)).await?;
                Box::pin(exchange(conn, head, body, deadlines))
                    .await
                    .map_err(|f| f.error)
            }
            _ => Err(failed.error),
        },
    }
}

/// The body to send again if the exchange on `conn` fails as a stale pooled connection
/// does: a reused connection, an idempotent method and a body that can be replayed.
fn replay_for_retry(conn: &Conn, head: &UpstreamHead, body: &UpstreamBody) -> Option<UpstreamBody> {
    if conn.reused && is_idempotent(&head.parts.method) {
        body.replay()
    } else {
        None
    }
}

impl Failed {
    /// Whether it failed as a connection the backend had closed while it sat in the
    /// pool: before any byte of an answer, and not by timing out.
    fn may_retry(&self) -> bool {
        !self.answered && !matches!(self.error, UpstreamError::ResponseTimeout)
    }
}

/// A new connection to `endpoint`; for FastCGI, once one is free under
/// `maxConnections`, waiting at most the connect timeout, or one handed over by a
/// request on this thread that finished with it.
async fn open(
    protocol: &Protocol,
    endpoint: &Endpoint,
    timeouts: &Timeouts,
) -> Result<Box<Conn>, UpstreamError> {
    let Some(fcgi) = protocol.fastcgi() else {
        return transport::connect(protocol, endpoint, timeouts.connect, timeouts.idle, None).await;
    };
    let slots = slots::of(endpoint.pool_key(), fcgi.max_connections);
    let slot = match slots.try_take() {
        Some(slot) => slot,
        None => {
            let handoff = pool::wait_for_handoff(endpoint.pool_key());
            let waited = slots
                .waiting(async {
                    tokio::select! {
                        biased;
                        Ok(conn) = handoff => Ok(conn),
                        slot = slots.take_freed(timeouts.connect) => Err(slot),
                    }
                })
                .await;
            match waited {
                Ok(conn) => {
                    pool::took_handoff(endpoint.pool_key());
                    return Ok(conn);
                }
                Err(Some(slot)) => slot,
                Err(None) => {
                    return Err(UpstreamError::Connect {
                        endpoint: endpoint.to_string(),
                        timed_out: true,
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "all {} connections (fastcgi maxConnections) stayed busy for the connect timeout",
                                fcgi.max_connections
                            ),
                        ),
                    })
                }
            }
        }
    };
    // The connect time counts from here: waiting for the slot used its own budget.
    transport::connect(
        protocol,
        endpoint,
        timeouts.connect,
        timeouts.idle,
        Some(slot),
    )
    .await
}

/// A backend's response body, read off its connection as the client takes it.
pub enum ResponseBody {
    /// An HTTP/1.1 response's body.
    Http(HttpBody),
    /// A FastCGI response's STDOUT; boxed, so the HTTP body, most answers, moves as
    /// few bytes as it did alone.
    FastCgi(Box<FastCgiBody>),
}

impl ResponseBody {
    /// The head's fields if they were kept raw, taken out (empty the second time).
    pub fn take_fields(&mut self) -> RawFields {
        match self {
            ResponseBody::Http(body) => body.take_fields(),
            ResponseBody::FastCgi(_) => RawFields::default(),
        }
    }

    /// For a 101 answer: the connection and what the backend already sent past the head.
    pub fn into_tunnel(self) -> Option<(Stream, Bytes)> {
        match self {
            ResponseBody::Http(body) => body.into_tunnel(),
            ResponseBody::FastCgi(_) => None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            ResponseBody::Http(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::FastCgi(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Http(body) => body.is_end_stream(),
            ResponseBody::FastCgi(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Http(body) => body.size_hint(),
            ResponseBody::FastCgi(body) => body.size_hint(),
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
