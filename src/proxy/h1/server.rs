//! The HTTP/1.x server: one connection loop for every HTTP/1.0 and HTTP/1.1 client, over
//! plain TCP or TLS (ALPN `http/1.1`, or none).
//!
//! In: an accepted client connection.
//! Out: every request on it read through `h1::codec`, handed to [`Proxy::handle`], and
//! its answer written here: keep-alive, pipelining, request bodies (streamed through
//! [`H1Body`]), `Expect: 100-continue`, HTTP/1.0, upgrades (a tunnel once a backend
//! answers 101), and the header, body and write timeouts. A refused head gets its 4xx
//! or 5xx from `rescue` and the connection closes. A cleartext connection that opens
//! with the HTTP/2 preface is handed to hyper's HTTP/2 server ([`Served::HandOff`]).
//!
//! Why our own: on a proxied request hyper's general machinery (a dispatcher, a body
//! channel, a boxed header timer re-armed per request, a clock read for `Date`) cost
//! about as much CPU as all of fallthrough's own work. Here the header timer is armed
//! once per connection and only re-armed when it fires early, `Date` comes from a string
//! the worker's one-second tick refreshes, and a small response leaves in one write.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::codec::{
    self, parse_content_length, put_chunk_size, put_content_length, put_field, put_last_chunk,
    RequestFraming, RequestHead,
};
use super::head::{has_token, RawFields};
use super::inbound::{poll_read_tcp, AnyRead, H1Body, Home, Inbound};
use crate::proxy::answer::ClientBody;
use crate::proxy::body::ClientRequestBody;
use crate::proxy::deadline::within;
use crate::proxy::rescue::ProxyError;
use crate::proxy::{ConnInfo, Proxy};

/// Response bytes gathered before a write; larger body frames are written as they are.
const COALESCE_BYTES: usize = 16 * 1024;
/// What a cleartext HTTP/2 connection opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a cleartext connection left this module.
pub enum Served {
    /// Closed: by the client, on shutdown, after `Connection: close`, a refused head, a
    /// timeout or a write error.
    Closed,
    /// The HTTP/2 preface arrived: hyper takes over the connection with these bytes,
    /// already read from it, in front.
    HandOff(Bytes, TcpStream),
}

/// Serves a cleartext connection until it closes, or hands it to HTTP/2.
pub async fn serve_tcp(
    proxy: &Proxy,
    stream: TcpStream,
    info: &ConnInfo,
    stop: &watch::Receiver<bool>,
) -> Served {
    let mut buf = BytesMut::new();
    // Sniffed before anything else: a prefix of the preface could still be HTTP/2.
    let header_timeout = proxy.limits().header_timeout;
    let sniffed = tokio::time::timeout(header_timeout, async {
        while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
            match std::future::poll_fn(|cx| poll_read_tcp(&stream, &mut buf, cx)).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    if sniffed != Ok(true) {
        return Served::Closed;
    }
    if buf.starts_with(H2_PREFACE) {
        return Served::HandOff(buf.freeze(), stream);
    }
    let (read, write) = stream.into_split();
    serve(proxy, Inbound::new(Box::new(read), buf), write, info, stop).await;
    Served::Closed
}

/// Serves an HTTP/1.x connection over any stream (TLS, or an in-memory pipe in the fuzz
/// target) until it closes.
pub async fn serve_io<S>(proxy: &Proxy, stream: S, info: &ConnInfo, stop: &watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let inbound = Inbound::new(Box::new(AnyRead(read)), BytesMut::new());
    serve(proxy, inbound, write, info, stop).await;
}

/// The connection loop: read a head, answer it, until the connection ends.
async fn serve<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    mut inbound: Box<Inbound>,
    mut write: W,
    info: &ConnInfo,
    stop: &watch::Receiver<bool>,
) {
    let limits = proxy.limits();
    let header_timeout = limits.header_timeout;
    let mut out = Vec::new();
    // Armed once: when it fires it is pushed back to the current head's deadline, so a
    // busy connection costs the timer nothing per request.
    let mut expiry = pin!(tokio::time::sleep(header_timeout));
    let mut expiry_polled = false;
    let mut watching = stop.clone();
    let mut stopping = pin!(watching.changed());
    // `stopping` is polled once, to have shutdown wake this task; after that the stop
    // flag is read directly: polling it at every request took a lock every connection
    // shares.
    let mut stop_registered = false;
    let mut waiting_since = Instant::now();
    loop {
        let head = loop {
            match codec::parse_request_head(&mut inbound.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(err) => {
                    let mut resp = proxy.unrouted(&ProxyError::Request(err));
                    let answer = Answer::closing();
                    let (framing, _) = put_head(&mut out, &mut resp, answer);
                    let body = Pin::new(resp.body_mut());
                    let _ = write_body(&mut write, &mut out, body, framing, answer, &limits).await;
                    let _ = write.shutdown().await;
                    return;
                }
            }
            let read = std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = inbound.poll_fill(cx) {
                    return Poll::Ready(Some(read));
                }
                // An idle keep-alive connection closes at shutdown; a half-sent head
                // gets its header timeout.
                if inbound.buf.is_empty() {
                    if stop.has_changed().unwrap_or(true) {
                        return Poll::Ready(None);
                    }
                    if !stop_registered {
                        stop_registered = true;
                        if stopping.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                    }
                }
                // The timer keeps the waker of its first poll, and this connection's
                // task never changes: later waits only look at whether it fired. Polled
                // outside tokio's budget: a sleep refused for budget would create no
                // timer, and then none would ever fire for this connection.
                if !expiry_polled || expiry.is_elapsed() {
                    expiry_polled = true;
                    let mut unbudgeted = tokio::task::unconstrained(expiry.as_mut());
                    if Pin::new(&mut unbudgeted).poll(cx).is_ready() {
                        let due = waiting_since + header_timeout;
                        if Instant::now() >= due {
                            return Poll::Ready(None);
                        }
                        expiry.as_mut().reset(due.into());
                        // Polled again so the new deadline is registered with this task.
                        let mut unbudgeted = tokio::task::unconstrained(expiry.as_mut());
                        let _ = Pin::new(&mut unbudgeted).poll(cx);
                    }
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                // End of stream, a socket error, shutdown or the header timeout: like
                // nginx, close without an answer.
                _ => return,
            }
        };
        let mut answer = Answer::of(&head);
        answer.close |= stop.has_changed().unwrap_or(true);
        if head.expect_continue
            && head.framing != RequestFraming::Empty
            && !write_within(
                &mut write,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                limits.write_timeout,
            )
            .await
        {
            return;
        }
        let (req, fields, home) = match into_request(head, inbound, limits.body_timeout) {
            Ok(parts) => parts,
            Err(err) => {
                let mut resp = proxy.unrouted(&err);
                let answer = Answer::closing();
                let (framing, _) = put_head(&mut out, &mut resp, answer);
                let body = Pin::new(resp.body_mut());
                let _ = write_body(&mut write, &mut out, body, framing, answer, &limits).await;
                let _ = write.shutdown().await;
                return;
            }
        };
        // The answer stays where `handle` left it: taking it apart would copy it.
        let mut resp = proxy.handle(req, fields, info).await;
        inbound = match home {
            Where::Kept(kept) => kept,
            Where::Lent(home) => match home.lock().ok().and_then(|mut h| h.take()) {
                Some((back, whole)) => {
                    // An unread body cannot be told from the next request: close after.
                    answer.close |= !whole;
                    back
                }
                None => return,
            },
        };
        let framing = put_head(&mut out, &mut resp, answer);
        if let Some((upstream, early)) = resp.body_mut().take_tunnel() {
            if flush(&mut write, &mut out, &limits).await {
                tunnel(inbound, write, upstream, early).await;
            }
            return;
        }
        let body = Pin::new(resp.body_mut());
        let kept =
            write_body(&mut write, &mut out, body, framing.0, answer, &limits).await && !framing.1;
        if !kept {
            let _ = write.shutdown().await;
            return;
        }
        waiting_since = Instant::now();
    }
}

/// Where the connection's reader is while a request is handled.
enum Where {
    /// No body: the loop kept it.
    Kept(Box<Inbound>),
    /// Lent to the request's body, which puts it back here when it ends or is dropped.
    Lent(Home),
}

/// What [`Proxy::handle`] takes: the request, its raw fields, where the reader went.
type Handed = (Request<Option<ClientRequestBody>>, RawFields, Where);

/// The request [`Proxy::handle`] takes, built from a judged head; its body, if any,
/// reads from `inbound`.
fn into_request(
    head: RequestHead,
    inbound: Box<Inbound>,
    body_timeout: Duration,
) -> Result<Handed, ProxyError> {
    let RequestHead {
        method,
        uri,
        version,
        mut fields,
        framing,
        upgrade,
        rewrite,
        ..
    } = head;
    let mut req = Request::new(None);
    if rewrite || upgrade {
        // Room for the fields the upstream head may add.
        let Some(headers) = std::mem::take(&mut fields).into_full_map(3) else {
            return Err(ProxyError::Request(codec::RequestError::Malformed(
                "invalid field",
            )));
        };
        *req.headers_mut() = headers;
    }
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    let home = if framing == RequestFraming::Empty {
        Where::Kept(inbound)
    } else {
        let home: Home = Arc::new(Mutex::new(None));
        let body = H1Body::new(inbound, framing, body_timeout, home.clone());
        *req.body_mut() = Some(ClientRequestBody::H1(body));
        Where::Lent(home)
    };
    Ok((req, fields, home))
}

/// What the answer to a request must honour.
#[derive(Clone, Copy)]
struct Answer {
    /// The connection ends after this answer.
    close: bool,
    /// HEAD: the answer carries no body.
    head_only: bool,
    /// `TE: trailers`: the client accepts trailer fields in a chunked answer.
    trailers: bool,
    /// An HTTP/1.0 client: no chunked answers, keep-alive only when asked.
    http10: bool,
}

impl Answer {
    fn of(head: &RequestHead) -> Self {
        Answer {
            close: head.close,
            head_only: head.method == http::Method::HEAD,
            trailers: head.trailers,
            http10: head.version == Version::HTTP_10,
        }
    }

    /// For a refused request: the connection closes after the answer.
    fn closing() -> Self {
        Answer {
            close: true,
            head_only: false,
            trailers: false,
            http10: false,
        }
    }
}

/// How the answer's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 with no known length: the end of the connection ends the body.
    UntilClose,
}

/// Puts a response's head in `out`: how its body is framed, and whether the connection
/// ends after it. Upstream fields kept raw are taken from its body and copied as the
/// backend wrote them.
fn put_head(out: &mut Vec<u8>, resp: &mut Response<ClientBody>, answer: Answer) -> (Framing, bool) {
    out.clear();
    let fields = resp.body_mut().take_fields();
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut dated, mut close) = (None, false, answer.close);
    for (name, value) in resp.headers() {
        if name == header::CONNECTION && !switching {
            // Only fallthrough's own answers carry one (upstream ones lost theirs as
            // hop-by-hop): `close` after a broken request.
            close |= has_token(value.as_bytes(), b"close");
            continue;
        } else if name == header::CONTENT_LENGTH {
            length = parse_content_length(value.as_bytes());
        } else if name == header::DATE {
            dated = true;
        }
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(facts) = fields.copy_to(out) {
        length = length.or(facts.content_length);
        dated |= facts.dated;
    } else {
        for (name, value) in fields.end_to_end() {
            if name.eq_ignore_ascii_case(b"content-length") {
                length = parse_content_length(value);
            } else if name.eq_ignore_ascii_case(b"date") {
                dated = true;
            }
            put_field(out, name, value);
        }
    }
    if let Some(id) = resp.body_mut().take_request_id() {
        put_field(out, b"x-request-id", id.as_bytes());
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        DATE.with(|date| out.extend_from_slice(&date.borrow()));
        out.extend_from_slice(b"\r\n");
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if answer.head_only || bodyless {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = resp.body().size_hint().exact() {
        put_content_length(out, n);
        Framing::Length(n)
    } else if answer.http10 {
        close = true;
        Framing::UntilClose
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if switching {
        // The tunnel follows; the backend's `Connection: upgrade` went out above.
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if answer.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// Streams `body` behind the head already in `out`; whether it ended as framed.
///
/// Called straight from [`serve`], not through a function that also writes the head:
/// each level of `async fn` is a future copied whole when it starts, at every request.
async fn write_body<W: AsyncWrite + Unpin>(
    stream: &mut W,
    out: &mut Vec<u8>,
    mut body: Pin<&mut ClientBody>,
    framing: Framing,
    answer: Answer,
    limits: &crate::proxy::Limits,
) -> bool {
    if framing == Framing::None {
        return flush(stream, out, limits).await;
    }
    let mut sent: u64 = 0;
    loop {
        // A frame ready now joins what is buffered; otherwise the buffer goes first, so
        // the client sees the head while a slow backend thinks.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
        {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() && !flush(stream, out, limits).await {
                    return false;
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            // The client sees a short or unterminated body and the connection closes:
            // there is no way to signal a broken body mid-stream.
            Some(Err(_)) => {
                let _ = flush(stream, out, limits).await;
                return false;
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Framing::Chunked, Ok(t), true) =
                    (framing, frame.into_trailers(), answer.trailers)
                {
                    put_last_chunk(out, Some(&t));
                    return flush(stream, out, limits).await;
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if framing == Framing::Chunked {
            put_chunk_size(out, data.len());
        }
        if out.len() + data.len() <= COALESCE_BYTES {
            out.extend_from_slice(&data);
        } else if !flush(stream, out, limits).await
            || !write_within(stream, &data, limits.write_timeout).await
        {
            return false;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => put_last_chunk(out, None),
        Framing::Length(n) if n != sent => {
            let _ = flush(stream, out, limits).await;
            return false;
        }
        _ => {}
    }
    flush(stream, out, limits).await
}

async fn flush<W: AsyncWrite + Unpin>(
    stream: &mut W,
    out: &mut Vec<u8>,
    limits: &crate::proxy::Limits,
) -> bool {
    let written = write_within(stream, out, limits.write_timeout).await;
    out.clear();
    written
}

/// Writes `data` and flushes it, giving up when the client takes none of it for
/// `timeout` (nginx's `send_timeout`).
async fn write_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    data: &[u8],
    timeout: Duration,
) -> bool {
    let writing = async {
        stream.write_all(data).await?;
        stream.flush().await
    };
    matches!(within(timeout, writing).await, Some(Ok(())))
}

/// Copies bytes both ways once client and backend have switched protocols, until both
/// directions end. Bytes the client sent behind its request head go first.
async fn tunnel<W: AsyncWrite + Unpin>(
    mut inbound: Box<Inbound>,
    mut client: W,
    upstream: crate::proxy::upstream::Stream,
    early: Bytes,
) {
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let _ = client.flush().await;
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let to_upstream = async {
        loop {
            if !inbound.buf.is_empty() {
                let chunk = inbound.buf.split();
                up_write.write_all(&chunk).await?;
            }
            match std::future::poll_fn(|cx| inbound.poll_fill(cx)).await? {
                0 => return up_write.shutdown().await,
                _ => continue,
            }
        }
    };
    let to_client = async {
        tokio::io::copy(&mut up_read, &mut client).await?;
        client.shutdown().await
    };
    let (up, down): (io::Result<()>, io::Result<()>) = tokio::join!(to_upstream, to_client);
    if let Err(err) = up.and(down) {
        tracing::debug!(error = %err, "tunnel closed");
    }
}

thread_local! {
    /// The `Date` of this second (IMF-fixdate), refreshed by [`refresh_date`] on the
    /// worker's tick.
    static DATE: RefCell<Vec<u8>> = RefCell::new(date_now());
}

fn date_now() -> Vec<u8> {
    httpdate::fmt_http_date(SystemTime::now()).into_bytes()
}

/// Brings this thread's cached `Date` up to the current second.
pub fn refresh_date() {
    DATE.with(|date| *date.borrow_mut() = date_now());
}
