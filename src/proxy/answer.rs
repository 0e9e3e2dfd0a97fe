//! What streams back to the client: an upstream's response body (whole, or with a part
//! already read), a body fallthrough wrote itself, or a 101's tunnel.
//!
//! In: upstream response bodies ([`ResponseBody`]) and fallthrough's own answers.
//! Out: [`ClientBody`], which the HTTP/1.x server and hyper's HTTP/2 server write out,
//! and which stops the request's timer, and writes its access log line, at its last
//! byte.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::h1::head::RawFields;
use super::upstream::{ResponseBody, Stream};
use crate::access_log::Pending;
use crate::metrics::RequestTimer;

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
    /// The request's access log line, written when the body is done (or dropped).
    log: Option<Pending>,
    /// `X-Request-Id`, written by whoever writes the head: kept out of the header map,
    /// which most answers of the HTTP/1.1 server leave empty (building it cost more
    /// than the rest of the head).
    request_id: Option<http::HeaderValue>,
}

enum ClientKind {
    Empty,
    Full(Option<Bytes>),
    Upstream {
        prefix: VecDeque<Bytes>,
        rest: Option<ResponseBody>,
    },
    /// A 101: after the head, the connection is a tunnel to this upstream, which sent
    /// `early` right behind its head.
    Tunnel(Option<(Stream, Bytes)>),
}

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ClientBody {
    /// No body.
    pub fn empty() -> Self {
        ClientBody {
            kind: ClientKind::Empty,
            timer: None,
            log: None,
            request_id: None,
        }
    }

    /// A body fallthrough wrote itself.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ClientBody {
            kind: ClientKind::Full(Some(bytes.into())),
            timer: None,
            log: None,
            request_id: None,
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
            log: None,
            request_id: None,
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
            log: None,
            request_id: None,
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

    /// The body of a 101 answer: no bytes, a tunnel to `upstream` once the head is sent.
    pub fn tunnel(upstream: Stream, early: Bytes) -> Self {
        ClientBody {
            kind: ClientKind::Tunnel(Some((upstream, early))),
            timer: None,
            log: None,
            request_id: None,
        }
    }

    /// The upstream end of a 101's tunnel, taken out by the server that writes it.
    pub fn take_tunnel(&mut self) -> Option<(Stream, Bytes)> {
        match &mut self.kind {
            ClientKind::Tunnel(tunnel) => tunnel.take(),
            _ => None,
        }
    }

    /// Attaches the request timer, observed when the body is done.
    pub fn timed(mut self, timer: RequestTimer) -> Self {
        self.timer = Some(timer);
        self
    }

    /// Attaches the request timer in place: the body is not moved.
    pub fn time(&mut self, timer: RequestTimer) {
        self.timer = Some(timer);
    }

    /// Sets the answer's `X-Request-Id`.
    pub fn set_request_id(&mut self, id: http::HeaderValue) {
        self.request_id = Some(id);
    }

    /// The answer's `X-Request-Id`, taken out by whoever writes the head.
    pub fn take_request_id(&mut self) -> Option<http::HeaderValue> {
        self.request_id.take()
    }

    /// Attaches the request's access log entry, which counts the body bytes sent and is
    /// logged at the last one.
    pub fn log(&mut self, pending: Pending) {
        self.log = Some(pending);
    }
}

/// A response ready for hyper, which writes only the header map: any raw upstream
/// fields, and the request id, move into it.
pub fn with_header_map(mut resp: http::Response<ClientBody>) -> http::Response<ClientBody> {
    let fields = resp.body_mut().take_fields();
    fields.append_to(resp.headers_mut());
    if let Some(id) = resp.body_mut().take_request_id() {
        resp.headers_mut()
            .insert(http::header::HeaderName::from_static("x-request-id"), id);
    }
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
            ClientKind::Empty | ClientKind::Tunnel(_) => Poll::Ready(None),
            ClientKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ClientKind::Upstream { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => match rest {
                    Some(rest) => Pin::new(rest).poll_frame(cx).map_err(BoxError::from),
                    None => Poll::Ready(None),
                },
            },
        };
        match &polled {
            Poll::Ready(None) => {
                // Stop the clock at the last byte, not whenever hyper drops the body.
                this.timer.take();
                this.log.take();
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(log), Some(data)) = (&mut this.log, frame.data_ref()) {
                    log.sent(data.len());
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ClientKind::Empty | ClientKind::Tunnel(_) => true,
            ClientKind::Full(bytes) => bytes.is_none(),
            ClientKind::Upstream { prefix, rest } => {
                prefix.is_empty() && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ClientKind::Empty | ClientKind::Tunnel(_) => SizeHint::with_exact(0),
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
