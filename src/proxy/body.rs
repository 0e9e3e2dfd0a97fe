//! Request and response bodies on their way through the proxy.
//!
//! In: the client's request body (`Incoming`, or none) and upstream response bodies.
//! Out: [`UpstreamBody`], a request body that can be sent again when it was small enough
//! to buffer (the replay), and [`ClientBody`], what streams back to the client.
//! Bodies over the replay limit are never truncated: what was read so far is chained in
//! front of the unread rest and sent once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::headers::RawFields;
use super::rescue::ProxyError;
use super::upstream::ResponseBody;
use crate::metrics::RequestTimer;

/// A request body as read from the client, ready to send upstream.
pub enum RequestBody {
    /// The whole body is in memory: it can be sent any number of times.
    Replayable(UpstreamBody),
    /// The body is larger than the replay limit: it can be sent once.
    Streaming(UpstreamBody),
}

/// Reads the client's body into memory when it fits in `limit` bytes, within `timeout`.
///
/// A declared `Content-Length` over the limit is not read at all; a body that turns out
/// to be larger while reading keeps the read part and streams the rest. Bodyless
/// requests (most of them) return at once, without arming a timer.
pub async fn read_request_body(
    body: Option<Incoming>,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<RequestBody, ProxyError> {
    let Some(body) = body.filter(|b| !b.is_end_stream()) else {
        return Ok(RequestBody::Replayable(UpstreamBody::empty()));
    };
    if body.size_hint().lower() > limit {
        return Ok(RequestBody::Streaming(UpstreamBody::stream(
            VecDeque::new(),
            body,
        )));
    }
    // Boxed: kept out of the request future, which every bodyless request moves around.
    Box::pin(tokio::time::timeout(timeout, buffer(body, limit)))
        .await
        .map_err(|_| ProxyError::ClientBodyTimeout)?
        .map_err(ProxyError::ClientBody)
}

async fn buffer(mut body: Incoming, limit: u64) -> Result<RequestBody, hyper::Error> {
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                total += data.len() as u64;
                chunks.push(data);
                if total > limit {
                    return Ok(RequestBody::Streaming(UpstreamBody::stream(
                        chunks.into(),
                        body,
                    )));
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
        chunks, total, trailers,
    )))
}

/// A buffered body and its trailers, shared between the primary and fallback sends.
struct Buffered {
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
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
        rest: Incoming,
    },
}

impl UpstreamBody {
    fn empty() -> Self {
        UpstreamBody {
            kind: UpstreamKind::Empty,
        }
    }

    fn full(chunks: Vec<Bytes>, len: u64, trailers: Option<HeaderMap>) -> Self {
        UpstreamBody {
            kind: UpstreamKind::Full {
                buffered: Arc::new(Buffered {
                    chunks,
                    len,
                    trailers,
                }),
                next: 0,
                trailers_sent: false,
            },
        }
    }

    fn stream(prefix: VecDeque<Bytes>, rest: Incoming) -> Self {
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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

/// Reads up to `limit` bytes of an upstream response body. When the body ends within
/// the limit the connection goes back to the pool and the bytes are returned whole;
/// otherwise what was read is returned with the unread rest.
pub async fn read_response_prefix(
    mut body: ResponseBody,
    limit: usize,
) -> Result<(Vec<Bytes>, Option<ResponseBody>), BoxError> {
    let mut chunks = Vec::new();
    let mut total = 0;
    if body.size_hint().lower() > limit as u64 {
        return Ok((chunks, Some(body)));
    }
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len();
            chunks.push(data);
            if total > limit {
                return Ok((chunks, Some(body)));
            }
        }
    }
    Ok((chunks, None))
}

/// A response body on its way to the client. Records the request's duration when it is
/// dropped: after the last byte was written, or when the client went away.
pub struct ClientBody {
    kind: ClientKind,
    timer: Option<RequestTimer>,
}

enum ClientKind {
    Empty,
    Full(Option<Bytes>),
    Upstream {
        prefix: VecDeque<Bytes>,
        rest: Option<ResponseBody>,
    },
}

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ClientBody {
    /// No body.
    pub fn empty() -> Self {
        ClientBody {
            kind: ClientKind::Empty,
            timer: None,
        }
    }

    /// A body fallthrough wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ClientBody {
            kind: ClientKind::Full(Some(bytes.into())),
            timer: None,
        }
    }

    /// An upstream body streamed through.
    pub fn upstream(body: ResponseBody) -> Self {
        ClientBody {
            kind: ClientKind::Upstream {
                prefix: VecDeque::new(),
                rest: Some(body),
            },
            timer: None,
        }
    }

    /// An upstream body part of which was already read.
    pub fn upstream_prefixed(prefix: Vec<Bytes>, rest: Option<ResponseBody>) -> Self {
        ClientBody {
            kind: ClientKind::Upstream {
                prefix: prefix.into(),
                rest,
            },
            timer: None,
        }
    }

    /// The upstream head's fields if they were kept raw, taken out: whoever writes the
    /// response head writes them too (see [`RawFields`]).
    pub fn take_fields(&mut self) -> RawFields {
        match &mut self.kind {
            ClientKind::Upstream {
                rest: Some(rest), ..
            } => rest.take_fields(),
            _ => RawFields::default(),
        }
    }

    /// Attaches the request timer, observed when the body is done.
    pub fn timed(mut self, timer: RequestTimer) -> Self {
        self.timer = Some(timer);
        self
    }
}

/// A response ready for hyper, which writes only the header map: any raw upstream
/// fields move into it.
pub fn with_header_map(mut resp: http::Response<ClientBody>) -> http::Response<ClientBody> {
    let fields = resp.body_mut().take_fields();
    fields.append_to(resp.headers_mut());
    resp
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            ClientKind::Empty => Poll::Ready(None),
            ClientKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ClientKind::Upstream { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => match rest {
                    Some(rest) => Pin::new(rest).poll_frame(cx).map_err(BoxError::from),
                    None => Poll::Ready(None),
                },
            },
        };
        if let Poll::Ready(None) = polled {
            // Stop the clock at the last byte, not whenever hyper drops the body.
            this.timer.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ClientKind::Empty => true,
            ClientKind::Full(bytes) => bytes.is_none(),
            ClientKind::Upstream { prefix, rest } => {
                prefix.is_empty() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ClientKind::Empty => SizeHint::with_exact(0),
            ClientKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ClientKind::Upstream { prefix, rest } => {
                let read: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                match rest {
                    None => SizeHint::with_exact(read),
                    Some(rest) => {
                        let hint = rest.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(read + hint.lower());
                        if let Some(upper) = hint.upper() {
                            out.set_upper(read + upper);
                        }
                        out
                    }
                }
            }
        }
    }
}
