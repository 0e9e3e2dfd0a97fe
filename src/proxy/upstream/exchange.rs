//! One HTTP/1.1 exchange on a backend connection: write the request, read the response
//! head, then stream the response body out of the socket.
//!
//! In: a connection, the shared request head, the request body, the deadlines.
//! Out: the backend's response, whose [`ResponseBody`] reads straight from the socket
//! and checks the connection back into the pool after its last byte; or a [`Failed`]
//! exchange. Heads are judged by `h1::codec`, the same codec the client side uses.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::pool;
use super::transport::{Conn, Stream};
use super::{Failed, ResponseBody, UpstreamError};
use crate::proxy::body::UpstreamBody;
use crate::proxy::h1::codec::{
    self, put_chunk_size, put_content_length, put_field, put_last_chunk, Asked, Decoded,
    ResponseFraming, ResponseHead,
};
use crate::proxy::h1::head::RawFields;
use crate::proxy::h1::upstream_head::UpstreamHead;

/// Request bodies up to this size are copied behind the head and written in one call.
const COALESCE_BYTES: usize = 16 * 1024;

/// The deadlines of one exchange.
#[derive(Clone, Copy)]
pub(super) struct Deadlines {
    /// The response head must arrive by then (a request without a body), or within
    /// `response_header` of the body's last byte being sent.
    pub(super) head_by: Instant,
    pub(super) response_header: Duration,
    /// Longest wait for the backend to take or give a byte of a body.
    pub(super) read_idle: Duration,
}

/// Writes the request and reads the response head on `conn`.
pub(super) async fn exchange(
    mut conn: Box<Conn>,
    head: &UpstreamHead,
    body: UpstreamBody,
    deadlines: Deadlines,
) -> Result<Response<ResponseBody>, Failed> {
    let mut deadline = deadlines.head_by;
    let asked = Asked {
        head: head.parts.method == Method::HEAD,
        upgrade: head.upgrade,
    };
    let bodyless = if body.is_end_stream() {
        Some(body)
    } else {
        // An upload is timed by the backend taking its bytes, not by the response-header
        // timeout: that starts once the request is fully sent.
        Box::pin(write_request(&mut conn, head, body, deadlines.read_idle)).await?;
        deadline = Instant::now() + deadlines.response_header;
        None
    };
    let mut timer = match conn.timer.take() {
        Some(timer) => timer,
        None => Box::pin(tokio::time::sleep_until(deadline.into())),
    };
    if timer.deadline() > deadline.into() {
        // A route with a shorter timeout than the last request's on this connection.
        timer.as_mut().reset(deadline.into());
    }
    // Pinned here and polled through a plain function: an `async fn` wrapper would take
    // the exchange by value and pin a second copy of it, both copied at each request.
    let mut work = std::pin::pin!(async {
        if let Some(body) = bodyless {
            write_request(&mut conn, head, body, deadlines.read_idle).await?;
        }
        read_response(conn, asked, deadlines.read_idle).await
    });
    let exchanged =
        std::future::poll_fn(|cx| poll_before(&mut timer, deadline, work.as_mut(), cx)).await;
    match exchanged {
        Some(Ok(mut resp)) => {
            if let ResponseBody::Http(body) = resp.body_mut() {
                body.keep_timer(timer);
            }
            Ok(resp)
        }
        Some(Err(failed)) => Err(failed),
        None => Err(UpstreamError::ResponseTimeout.into()),
    }
}

/// Polls `exchange`: its output when it completes, `None` once `deadline` has passed.
///
/// Why not `tokio::time::timeout`: that registers and removes a timer per request. The
/// connection's timer is armed once and, when it fires before the current deadline
/// (it was set for an earlier request), pushed back to it: with the same timeout on
/// every request it fires at most once per timeout period, whatever the traffic.
fn poll_before<F: Future>(
    timer: &mut Pin<Box<tokio::time::Sleep>>,
    deadline: Instant,
    exchange: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Option<F::Output>> {
    if let Poll::Ready(out) = exchange.poll(cx) {
        return Poll::Ready(Some(out));
    }
    while timer.as_mut().poll(cx).is_ready() {
        if Instant::now() >= deadline {
            return Poll::Ready(None);
        }
        timer.as_mut().reset(deadline.into());
    }
    Poll::Pending
}

/// How the request body is framed on the wire.
enum Framing {
    Length,
    Chunked,
}

/// Writes the head and the body.
async fn write_request(
    conn: &mut Conn,
    head: &UpstreamHead,
    body: UpstreamBody,
    send_idle: Duration,
) -> Result<(), UpstreamError> {
    let framing = encode_head(head, &body, &conn.host, &mut conn.out);
    match framing {
        None => conn.stream.write_all(&conn.out).await?,
        // Boxed: most requests have no body, and their future stays small.
        Some(framing) => Box::pin(write_body(conn, framing, body, send_idle)).await?,
    }
    if let Stream::Tls(_) = conn.stream {
        // TLS may hold the last record back until flushed; TCP writes are immediate.
        within(send_idle, conn.stream.flush()).await?;
    }
    Ok(())
}

/// Writes the request head in HTTP/1.1 wire form into `out`; how the body that follows
/// is framed (`None`: no body).
///
/// A request that named no host (HTTP/1.0 allows that; HTTP/1.1 does not, RFC 9112
/// §3.2) gets the endpoint's, as nginx's default `Host: $proxy_host` does.
fn encode_head(
    upstream: &UpstreamHead,
    body: &UpstreamBody,
    endpoint_host: &str,
    out: &mut Vec<u8>,
) -> Option<Framing> {
    let head = &upstream.parts;
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(upstream.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut client_sent_length = false;
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            // Re-stated below from the body actually sent.
            client_sent_length = true;
            continue;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // The codec cut `Content-Length` with the hop-by-hop fields.
    if let Some(facts) = upstream.fields.copy_to(out) {
        client_sent_length |= facts.content_length.is_some();
    } else {
        for (name, value) in upstream.fields.end_to_end() {
            if name.eq_ignore_ascii_case(b"content-length") {
                client_sent_length = true;
                continue;
            }
            put_field(out, name, value);
        }
    }
    if upstream.forwarded_host.is_none() {
        put_field(out, b"host", endpoint_host.as_bytes());
    }
    for (name, value) in upstream.forwarded() {
        put_field(out, name.as_bytes(), value);
    }
    let framing = match body.exact_len() {
        Some(0) if body.is_end_stream() => {
            if client_sent_length
                || matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            None
        }
        Some(len) => {
            put_content_length(out, len);
            Some(Framing::Length)
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Some(Framing::Chunked)
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Runs one write within `idle`: a backend that stops taking bytes is given up on.
pub(super) async fn within<T>(
    idle: Duration,
    write: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    crate::proxy::deadline::within(idle, write)
        .await
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the backend took no request bytes within the upstream read timeout",
            ))
        })
}

async fn write_within(stream: &mut Stream, data: &[u8], idle: Duration) -> io::Result<()> {
    within(idle, stream.write_all(data)).await
}

/// Writes `head` and then `data` in one system call where the socket takes both, without
/// copying `data` behind `head` first.
pub(super) async fn write_pair(
    stream: &mut Stream,
    head: &[u8],
    data: &[u8],
    idle: Duration,
) -> io::Result<()> {
    let slices = [io::IoSlice::new(head), io::IoSlice::new(data)];
    let written = within(idle, stream.write_vectored(&slices)).await?;
    // A short write (the socket buffer filled up) is finished with plain writes.
    if written < head.len() {
        write_within(stream, &head[written..], idle).await?;
        write_within(stream, data, idle).await
    } else {
        let rest = &data[written - head.len()..];
        if rest.is_empty() {
            return Ok(());
        }
        write_within(stream, rest, idle).await
    }
}

/// Writes the head in the connection's `out` and the body behind it; small bodies go
/// in the same write.
async fn write_body(
    conn: &mut Conn,
    framing: Framing,
    mut body: UpstreamBody,
    idle: Duration,
) -> Result<(), UpstreamError> {
    let Conn { stream, out, .. } = conn;
    let mut trailers = None;
    // The first data frame of a sized body leaves with the head in one vectored write,
    // uncopied (a replayed body is usually one frame). Later small frames are copied
    // into `out` and leave together: many tiny frames must not cost a write each.
    let mut pending: Option<Bytes> = None;
    let mut first = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(UpstreamError::RequestBody)?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if let Some(before) = pending.take() {
            // It fitted behind `out` when it came, and `out` has not grown since.
            out.extend_from_slice(&before);
        }
        let fits = out.len() + data.len() <= COALESCE_BYTES;
        let first_frame = std::mem::replace(&mut first, false);
        match framing {
            Framing::Length if fits && first_frame => pending = Some(data),
            Framing::Length if fits => out.extend_from_slice(&data),
            Framing::Length => {
                write_pair(stream, out, &data, idle).await?;
                out.clear();
            }
            Framing::Chunked => {
                put_chunk_size(out, data.len());
                if out.len() + data.len() <= COALESCE_BYTES {
                    out.extend_from_slice(&data);
                } else {
                    write_pair(stream, out, &data, idle).await?;
                    out.clear();
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Framing::Chunked = framing {
        put_last_chunk(out, trailers.as_ref());
    }
    match pending {
        Some(data) => write_pair(stream, out, &data, idle).await?,
        None if !out.is_empty() => write_within(stream, out, idle).await?,
        None => {}
    }
    Ok(())
}

async fn read_response(
    mut conn: Box<Conn>,
    asked: Asked,
    read_idle: Duration,
) -> Result<Response<ResponseBody>, Failed> {
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            let parsed = codec::parse_response_head(&mut conn.buf, asked).map_err(|e| Failed {
                error: UpstreamError::Malformed(e.0),
                answered,
            })?;
            match parsed {
                Some(ResponseHead::Informational) => continue,
                Some(ResponseHead::Final {
                    parts,
                    fields,
                    framing,
                    keep_alive,
                }) => {
                    let body = HttpBody {
                        conn: Some(conn),
                        fields,
                        framing,
                        keep_alive,
                        read_idle,
                        waiting_since: None,
                    };
                    return Ok(Response::from_parts(parts, ResponseBody::Http(body)));
                }
                None => {}
            }
        }
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx))
            .await
            .map_err(|e| Failed {
                error: UpstreamError::Io(e),
                answered,
            })?;
        if n == 0 {
            return Err(Failed {
                error: UpstreamError::Closed,
                answered,
            });
        }
    }
}

/// An upstream response body, read from the backend's socket as the client takes it.
/// After its last byte the connection goes back to this thread's pool (when the
/// backend keeps it alive); dropped early, the connection is closed.
pub struct HttpBody {
    conn: Option<Box<Conn>>,
    /// The head's fields when they were kept raw (see [`RawFields`]).
    fields: RawFields,
    framing: ResponseFraming,
    keep_alive: bool,
    /// Longest wait for the next body byte (nginx's `proxy_read_timeout`).
    read_idle: Duration,
    /// When the body last had to wait for bytes, if it is waiting now.
    waiting_since: Option<tokio::time::Instant>,
}

/// A response body that broke mid-way.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    /// The backend closed or reset the connection before the end of the body.
    #[error("the backend's response body broke off: {0}")]
    Io(#[from] io::Error),
    /// The chunked encoding was invalid.
    #[error("the backend's response body is malformed: {0}")]
    Malformed(&'static str),
    /// The backend sent no body byte within the upstream read timeout.
    #[error("the backend's response body stalled past the upstream read timeout")]
    Stalled,
}

impl HttpBody {
    /// The head's fields if they were kept raw, taken out (empty the second time).
    pub fn take_fields(&mut self) -> RawFields {
        std::mem::take(&mut self.fields)
    }

    /// Gives the connection its timer back, for its next request.
    pub(super) fn keep_timer(&mut self, timer: Pin<Box<tokio::time::Sleep>>) {
        if let Some(conn) = &mut self.conn {
            conn.timer = Some(timer);
        }
    }

    /// For a 101 answer: the connection and what the backend already sent past the head.
    pub fn into_tunnel(mut self) -> Option<(Stream, Bytes)> {
        match self.framing {
            ResponseFraming::Switched => self.conn.take().map(|c| (c.stream, c.buf.freeze())),
            _ => None,
        }
    }

    /// The body ended: the connection may carry the next request.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && conn.buf.is_empty() {
            pool::checkin(conn);
        }
        self.framing = ResponseFraming::Length(0);
    }

    /// Waits for more body bytes, at most `read_idle` since the last ones.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ResponseBodyError>> {
        let read_idle = self.read_idle;
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if let Poll::Ready(read) = conn.poll_fill(cx) {
            self.waiting_since = None;
            return Poll::Ready(read.map_err(ResponseBodyError::from));
        }
        ready!(crate::proxy::deadline::poll_idle(
            &mut conn.timer,
            &mut self.waiting_since,
            read_idle,
            cx
        ));
        Poll::Ready(Err(ResponseBodyError::Stalled))
    }
}

impl Drop for HttpBody {
    fn drop(&mut self) {
        // A body with nothing left to read (HEAD, 204, a length fully read) is often
        // dropped unpolled: its connection is still good.
        if matches!(self.framing, ResponseFraming::Length(0)) {
            self.finish();
        }
    }
}

impl Body for HttpBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                ResponseFraming::Switched => return Poll::Ready(None),
                ResponseFraming::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                ResponseFraming::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                        let data = conn.buf.split_to(n).freeze();
                        *remaining -= n as u64;
                        if *remaining == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                ResponseFraming::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                ResponseFraming::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(err) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(ResponseBodyError::Malformed(err.0))));
                    }
                },
            }
            match ready!(this.poll_more(cx)) {
                Ok(0) => {
                    let whole = matches!(this.framing, ResponseFraming::UntilClose);
                    this.conn = None;
                    return Poll::Ready(if whole {
                        None
                    } else {
                        Some(Err(ResponseBodyError::Io(
                            io::ErrorKind::UnexpectedEof.into(),
                        )))
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
            || matches!(
                self.framing,
                ResponseFraming::Length(0) | ResponseFraming::Switched
            )
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) | (_, ResponseFraming::Switched) => SizeHint::with_exact(0),
            (_, ResponseFraming::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
