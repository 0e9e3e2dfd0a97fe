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
mod pool;
mod transport;

use std::io;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Method, Response};

use super::body::{BodyError, UpstreamBody};
use super::h1::head::UpstreamHead;
use crate::routes::Timeouts;
pub use exchange::ResponseBody;
use exchange::{exchange, Deadlines};
pub use pool::sweep_idle;
pub use transport::Transport;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection could not be opened; the request never left.
    #[error("connecting to {endpoint} failed: {source}")]
    Connect {
        /// The endpoint.
        endpoint: Authority,
        /// The connect timeout expired rather than a refusal.
        timed_out: bool,
        /// What the socket said.
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
    /// No complete response head before the route's response header timeout.
    #[error("the backend did not answer within the response header timeout")]
    ResponseTimeout,
}

impl UpstreamError {
    /// Whether the connection failed before the request could reach the backend.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
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
    endpoint: &Authority,
    timeouts: &Timeouts,
    read_idle: Duration,
    started: Instant,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let transport = Transport::Http1;
    let deadlines = Deadlines {
        head_by: started + timeouts.response_header,
        response_header: timeouts.response_header,
        read_idle,
    };
    let conn = match pool::checkout(endpoint, started) {
        Some(conn) => conn,
        // Boxed, like every rare path here: the request future stays small.
        None => {
            Box::pin(transport::connect(
                transport,
                endpoint,
                timeouts.connect,
                timeouts.idle,
            ))
            .await?
        }
    };
    let retry = if conn.reused && is_idempotent(&head.parts.method) {
        body.replay()
    } else {
        None
    };
    // Boxed: the exchange is most of the request's state, and a future is copied whole
    // into each caller's state as it starts; on the heap it is written once. (Boxing
    // this function's future instead put 1.6 KB on mimalloc's slow path per attempt.)
    match Box::pin(exchange(conn, head, body, deadlines)).await {
        Ok(resp) => Ok(resp),
        Err(Failed { error, answered }) => match retry {
            Some(body) if !answered && !matches!(error, UpstreamError::ResponseTimeout) => {
                tracing::debug!(%endpoint, %error, "pooled connection was stale; retrying on a new one");
                let conn = Box::pin(transport::connect(
                    transport,
                    endpoint,
                    timeouts.connect,
                    timeouts.idle,
                ))
                .await?;
                Box::pin(exchange(conn, head, body, deadlines))
                    .await
                    .map_err(|f| f.error)
            }
            _ => Err(error),
        },
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
