//! Request bodies on their way to the backends, and the replay copy.
//!
//! In: the client's request body ([`ClientRequestBody`]: HTTP/1.x from `h1`, HTTP/2
//! from hyper, or none).
//! Out: [`UpstreamBody`], a request body that can be sent again when it was small enough
//! to buffer (the replay).
//! Bodies over the route's replay limit, or arriving while the process-wide
//! [`ReplayBudget`] is spent, are never truncated: what was read so far is chained in
//! front of the unread rest and sent once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::h1::inbound::{H1Body, H1BodyError};

/// A client's request body, whichever protocol brought it.
pub enum ClientRequestBody {
    /// HTTP/1.x, read by fallthrough's own server.
    H1(H1Body),
    /// HTTP/2, read by hyper.
    H2(Incoming),
    /// Either, with its bytes counted for the access log.
    Counted(Box<ClientRequestBody>, Arc<AtomicU64>),
}

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// HTTP/1.x.
    #[error(transparent)]
    H1(#[from] H1BodyError),
    /// HTTP/2.
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl Body for ClientRequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientRequestBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            ClientRequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            ClientRequestBody::Counted(b, count) => {
                let polled = Pin::new(b.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(data))) = &polled {
                    if let Some(data) = data.data_ref() {
                        count.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientRequestBody::H1(b) => b.is_end_stream(),
            ClientRequestBody::H2(b) => b.is_end_stream(),
            ClientRequestBody::Counted(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientRequestBody::H1(b) => b.size_hint(),
            ClientRequestBody::H2(b) => b.size_hint(),
            ClientRequestBody::Counted(b, _) => b.size_hint(),
        }
    }
}

/// The bytes all buffered replay bodies of the process may hold together
/// (`--max-replay-buffer`): a bound on memory whatever clients send.
#[derive(Debug)]
pub struct ReplayBudget {
    left: AtomicU64,
}

impl ReplayBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Arc<Self> {
        Arc::new(ReplayBudget {
            left: AtomicU64::new(bytes),
        })
    }

    /// Takes `bytes` from the budget, if that many are left.
    fn take(self: &Arc<Self>, bytes: u64) -> Option<Held> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .ok()?;
        Some(Held {
            budget: self.clone(),
            bytes,
        })
    }

    /// Bytes left, for tests and metrics.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }
}

/// Bytes taken from the budget, given back when the buffered body is dropped.
#[derive(Debug)]
struct Held {
    budget: Arc<ReplayBudget>,
    bytes: u64,
}

impl Held {
    fn grow(&mut self, bytes: u64) -> bool {
        match self.budget.take(bytes) {
            Some(mut more) => {
                self.bytes += std::mem::take(&mut more.bytes);
                true
            }
            None => false,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// Why a body will be sent once, without a copy to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplay {
    /// Larger than the route's `maxReplayBytes`.
    TooLarge,
    /// The process-wide replay budget was spent.
    BudgetSpent,
}

/// A request body as read from the client, ready to send upstream.
pub enum RequestBody {
    /// The whole body is in memory: it can be sent any number of times.
    Replayable(UpstreamBody),
    /// The body cannot be replayed, and why: it can be sent once.
    Streaming(UpstreamBody, NoReplay),
}

/// Reads the client's body into memory when it fits in `limit` bytes and in the
/// `budget`, within `timeout`.
///
/// A declared `Content-Length` over the limit is not read at all; a body that turns out
/// to be larger while reading, or that finds the budget spent, keeps the read part and
/// streams the rest. Bodyless requests (most of them) return at once, without arming a
/// timer or touching the budget.
pub async fn read_request_body(
    body: Option<ClientRequestBody>,
    limit: u64,
    budget: &Arc<ReplayBudget>,
    timeout: std::time::Duration,
) -> Result<RequestBody, ReadBodyError> {
    let Some(body) = body.filter(|b| !b.is_end_stream()) else {
        return Ok(RequestBody::Replayable(UpstreamBody::empty()));
    };
    let declared = body.size_hint().lower();
    if declared > limit {
        let body = UpstreamBody::stream(VecDeque::new(), body);
        return Ok(RequestBody::Streaming(body, NoReplay::TooLarge));
    }
    let Some(held) = budget.take(declared) else {
        let body = UpstreamBody::stream(VecDeque::new(), body);
        return Ok(RequestBody::Streaming(body, NoReplay::BudgetSpent));
    };
    // Boxed: kept out of the request future, which every bodyless request moves around.
    // A body that came with its head is read at once, with no timer made for it.
    super::deadline::within(timeout, Box::pin(buffer(body, limit, held)))
        .await
        .ok_or(ReadBodyError::Timeout)?
        .map_err(ReadBodyError::Broken)
}

/// Why a body to be buffered for replay could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    /// Not all of it arrived within the client body timeout.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// It broke off or was malformed.
    #[error("reading the request body failed: {0}")]
    Broken(#[source] BodyError),
}

async fn buffer(
    mut body: ClientRequestBody,
    limit: u64,
    mut held: Held,
) -> Result<RequestBody, BodyError> {
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                total += data.len() as u64;
                chunks.push(data);
                let over = if total > limit {
                    Some(NoReplay::TooLarge)
                } else if total > held.bytes && !held.grow(total - held.bytes) {
                    Some(NoReplay::BudgetSpent)
                } else {
                    None
                };
                if let Some(why) = over {
                    // What was read is sent once, then the rest as it comes: the held
                    // bytes go back to the budget once those chunks are sent.
                    let body = UpstreamBody::stream(chunks.into(), body);
                    return Ok(RequestBody::Streaming(body, why));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(RequestBody::Replayable(UpstreamBody::full(
        chunks, total, trailers, held,
    )))
}

/// A buffered body and its trailers, shared between the primary and fallback sends.
struct Buffered {
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
    /// Its share of the replay budget, given back when the last copy is dropped.
    _held: Held,
}

/// A request body sent to a backend.
pub struct UpstreamBody {
    kind: UpstreamKind,
}

enum UpstreamKind {
    Empty,
    Full {
        buffered: Arc<Buffered>,
        next: usize,
        trailers_sent: bool,
    },
    Stream {
        prefix: VecDeque<Bytes>,
        rest: ClientRequestBody,
    },
}

impl UpstreamBody {
    /// No body.
    pub fn empty() -> Self {
        UpstreamBody {
            kind: UpstreamKind::Empty,
        }
    }

    /// The client's body, sent once as it arrives: for a request no other backend will
    /// be asked.
    pub fn once(body: Option<ClientRequestBody>) -> Self {
        match body.filter(|b| !b.is_end_stream()) {
            Some(body) => UpstreamBody::stream(VecDeque::new(), body),
            None => UpstreamBody::empty(),
        }
    }

    fn full(chunks: Vec<Bytes>, len: u64, trailers: Option<HeaderMap>, held: Held) -> Self {
        UpstreamBody {
            kind: UpstreamKind::Full {
                buffered: Arc::new(Buffered {
                    chunks,
                    len,
                    trailers,
                    _held: held,
                }),
                next: 0,
                trailers_sent: false,
            },
        }
    }

    fn stream(prefix: VecDeque<Bytes>, rest: ClientRequestBody) -> Self {
        UpstreamBody {
            kind: UpstreamKind::Stream { prefix, rest },
        }
    }

    /// The body's length when it is known up front and no trailers follow it: then it is
    /// framed by `Content-Length`, else chunked.
    pub fn exact_len(&self) -> Option<u64> {
        match &self.kind {
            UpstreamKind::Empty => Some(0),
            UpstreamKind::Full { buffered, .. } if buffered.trailers.is_none() => {
                Some(buffered.len)
            }
            UpstreamKind::Full { .. } => None,
            UpstreamKind::Stream { prefix, rest } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                rest.size_hint().exact().map(|n| read + n)
            }
        }
    }

    /// A fresh copy of a buffered body, from its start. Streaming bodies cannot be
    /// copied: `None`.
    pub fn replay(&self) -> Option<UpstreamBody> {
        match &self.kind {
            UpstreamKind::Empty => Some(UpstreamBody::empty()),
            UpstreamKind::Full { buffered, .. } => Some(UpstreamBody {
                kind: UpstreamKind::Full {
                    buffered: buffered.clone(),
                    next: 0,
                    trailers_sent: false,
                },
            }),
            UpstreamKind::Stream { .. } => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            UpstreamKind::Empty => Poll::Ready(None),
            UpstreamKind::Full {
                buffered,
                next,
                trailers_sent,
            } => {
                if let Some(chunk) = buffered.chunks.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                match (&buffered.trailers, *trailers_sent) {
                    (Some(t), false) => {
                        *trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(t.clone()))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            UpstreamKind::Stream { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            UpstreamKind::Empty => true,
            UpstreamKind::Full {
                buffered,
                next,
                trailers_sent,
            } => *next >= buffered.chunks.len() && (buffered.trailers.is_none() || *trailers_sent),
            UpstreamKind::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            UpstreamKind::Empty => SizeHint::with_exact(0),
            UpstreamKind::Full { buffered, .. } => SizeHint::with_exact(buffered.len),
            UpstreamKind::Stream { prefix, rest } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(read + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(read + upper);
                }
                hint
            }
        }
    }
}
