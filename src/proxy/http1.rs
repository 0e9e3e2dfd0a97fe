//! Cleartext HTTP/1.1 served without hyper, for the requests most traffic is made of.
//!
//! In: an accepted cleartext TCP connection.
//! Out: answers written to it, or the connection handed to hyper ([`Served::HandOff`]).
//! A well-formed HTTP/1.1 request without a body, an upgrade or `Expect` (GET, HEAD,
//! DELETE, ...) is parsed here with httparse, answered by [`Proxy::handle`] and written
//! here. The first request that is anything else (a body, an upgrade, HTTP/1.0, CONNECT,
//! h2c, a malformed or oversized head) is handed to hyper together with every byte
//! already read, and hyper serves the rest of the connection: the rare and the error
//! cases have one implementation, hyper's, and answer exactly as before (400, 431, 408).
//!
//! Why: on a proxied request hyper's general machinery (a dispatcher, a body channel, a
//! boxed header timer re-armed per request, a clock read for `Date`) cost about as much
//! CPU as all of fallthrough's own work. Here the header timer is armed once per
//! connection and only re-armed when it fires early, `Date` comes from a string the
//! worker's one-second tick refreshes, and a small response leaves in one write.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::ClientBody;
use super::headers::{
    is_field_value, is_forwarded_name, is_hop_by_hop_name, names_fields, FieldScan, RawFields,
};
use super::upstream::poll_read_into;
use super::wire::{
    has_token, parse_content_length, put_chunk_size, put_content_length, put_field, put_last_chunk,
};
use super::{ConnInfo, Proxy};

/// Most headers a request served here may carry (hyper's limit: more are handed over
/// and answered 431 there).
const MAX_HEADERS: usize = 100;
/// A head still incomplete at this size is handed over (and answered 431).
const MAX_HEAD_BYTES: usize = super::listener::MAX_HEAD_BYTES;
/// Response bytes gathered before a write; larger body frames are written as they are.
const COALESCE_BYTES: usize = 16 * 1024;

/// How a connection left this module.
pub(super) enum Served {
    /// Closed: by the client, on shutdown, after `Connection: close`, on a header
    /// timeout or a write error.
    Closed,
    /// A request this module does not serve arrived: hyper takes over the connection
    /// with these bytes, already read from it, in front.
    HandOff(Bytes),
}

/// Serves `stream` until it closes or needs hyper. `stop` turning true closes it
/// between requests.
pub(super) async fn serve(
    proxy: &Proxy,
    stream: &mut TcpStream,
    info: &ConnInfo,
    stop: &watch::Receiver<bool>,
) -> Served {
    let header_timeout = proxy.limits().header_timeout;
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // Armed once: when it fires it is pushed back to the current head's deadline, so a
    // busy connection costs the timer nothing per request.
    let mut expiry = pin!(tokio::time::sleep(header_timeout));
    let mut watching = stop.clone();
    let mut stopping = pin!(watching.changed());
    // `stopping` is polled once, to have shutdown wake this task; after that the stop
    // flag is read directly: polling it at every request took a lock every connection
    // shares.
    let mut stop_registered = false;
    let mut waiting_since = Instant::now();
    loop {
        let head = loop {
            match parse(&mut buf) {
                Parsed::Simple(head) => break head,
                Parsed::Other => return Served::HandOff(buf.freeze()),
                Parsed::Partial if buf.len() >= MAX_HEAD_BYTES => {
                    return Served::HandOff(buf.freeze())
                }
                Parsed::Partial => {}
            }
            let read = std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = poll_read_into(stream, &mut buf, cx) {
                    return Poll::Ready(Some(read));
                }
                // An idle keep-alive connection closes at shutdown; a half-sent head
                // gets its header timeout.
                if buf.is_empty() {
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
                if expiry.as_mut().poll(cx).is_ready() {
                    let due = waiting_since + header_timeout;
                    if Instant::now() >= due {
                        return Poll::Ready(None);
                    }
                    expiry.as_mut().reset(due.into());
                    // Polled again so the new deadline is registered with this task.
                    let _ = expiry.as_mut().poll(cx);
                }
                Poll::Pending
            })
            .await;
            match read {
                Some(Ok(n)) if n > 0 => {}
                // End of stream, a socket error, shutdown or the header timeout: like
                // hyper (and nginx), close without an answer.
                _ => return Served::Closed,
            }
        };
        let SimpleHead {
            req,
            fields,
            mut answer,
        } = head;
        answer.close |= stop.has_changed().unwrap_or(true);
        let (parts, mut body) = proxy.handle(req, fields, info).await.into_parts();
        let (framing, close) = put_head(&mut out, &parts, &mut body, answer);
        drop(parts);
        let body = pin!(body);
        let kept = write_body(stream, &mut out, body, framing, answer.trailers).await && !close;
        if !kept {
            let _ = stream.shutdown().await;
            return Served::Closed;
        }
        waiting_since = Instant::now();
    }
}

/// A request head served here.
struct SimpleHead {
    req: Request<Option<hyper::body::Incoming>>,
    /// The head's fields, unless they were put in `req`'s map.
    fields: RawFields,
    answer: Answer,
}

/// What the answer to a request must honour.
#[derive(Clone, Copy)]
struct Answer {
    /// `Connection: close` (or shutdown): the connection ends after this answer.
    close: bool,
    /// HEAD: the answer carries no body.
    head_only: bool,
    /// `TE: trailers`: the client accepts trailer fields in a chunked answer.
    trailers: bool,
}

// Returned by value once per request: boxing the head would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Simple(SimpleHead),
    /// Not a request served here (or not a valid one): hyper's turn.
    Other,
}

/// Parses a complete request head at the front of `buf`, consuming it when it is served here.
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        (
            s.as_ptr() as usize - base,
            s.as_ptr() as usize - base + s.len(),
        )
    };
    let path = range(path.as_bytes());
    let (mut close, mut trailers, mut rewrite, mut host) = (false, false, false, None);
    let mut scan = FieldScan::new(buf);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if !is_field_value(value) {
            return Parsed::Other;
        }
        // Hop-by-hop fields and `Content-Length` (restated upstream) are cut.
        let mut cut = true;
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.trim_ascii() != b"0" {
                return Parsed::Other;
            }
            scan.facts.content_length = Some(0);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if has_token(value, b"upgrade") {
                return Parsed::Other;
            }
            close |= has_token(value, b"close");
            rewrite |= names_fields(value);
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= has_token(value, b"trailers");
        } else if name.eq_ignore_ascii_case(b"host") {
            host = host.or(Some(range(value)));
            cut = false;
        } else if is_forwarded_name(name) {
            rewrite = true;
        } else {
            cut = is_hop_by_hop_name(name);
        }
        scan.see(name, value, cut);
    }
    let spans = scan.finish(len);
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.1)) else {
        return Parsed::Other;
    };
    // Kept raw unless a field must be rewritten: see `UpstreamHead`.
    let mut fields = RawFields::of_request_head(&head, host, spans);
    let mut req = Request::new(None);
    if rewrite {
        // Room for the fields the upstream head may add.
        let Some(headers) = std::mem::take(&mut fields).into_full_map(3) else {
            return Parsed::Other;
        };
        *req.headers_mut() = headers;
    }
    let head_only = method == Method::HEAD;
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    Parsed::Simple(SimpleHead {
        req,
        fields,
        answer: Answer {
            close,
            head_only,
            trailers,
        },
    })
}

/// How the answer's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Puts a response's head in `out`: how its body is framed, and whether the connection
/// ends after it. Upstream fields kept raw are taken from `body` and copied as the
/// backend wrote them.
fn put_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &mut ClientBody,
    answer: Answer,
) -> (Framing, bool) {
    out.clear();
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut dated, mut close) = (None, false, answer.close);
    for (name, value) in &parts.headers {
        if name == header::CONNECTION {
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
    let fields = body.take_fields();
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
    } else if let Some(n) = body.size_hint().exact() {
        put_content_length(out, n);
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    // A 1xx here is a backend's mistake: after it nothing about the stream is certain.
    let close = close || status.is_informational();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

/// Streams `body` behind the head already in `out`; whether it ended as framed.
///
/// Called straight from [`serve`], not through a function that also writes the head:
/// each level of `async fn` is a future copied whole when it starts, at every request.
async fn write_body(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    mut body: Pin<&mut ClientBody>,
    framing: Framing,
    trailers_allowed: bool,
) -> bool {
    if framing == Framing::None {
        return flush(stream, out).await;
    }
    let mut sent: u64 = 0;
    loop {
        // A frame ready now joins what is buffered; otherwise the buffer goes first, so
        // the client sees the head while a slow backend thinks.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
        {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() && !flush(stream, out).await {
                    return false;
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            // The client sees a short or unterminated body and the connection closes,
            // as with hyper: there is no way to signal a broken body mid-stream.
            Some(Err(_)) => {
                let _ = flush(stream, out).await;
                return false;
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Framing::Chunked, Ok(t), true) =
                    (framing, frame.into_trailers(), trailers_allowed)
                {
                    put_last_chunk(out, Some(&t));
                    return flush(stream, out).await;
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
        } else if !flush(stream, out).await || stream.write_all(&data).await.is_err() {
            return false;
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => put_last_chunk(out, None),
        Framing::Length(n) if n != sent => {
            let _ = flush(stream, out).await;
            return false;
        }
        _ => {}
    }
    flush(stream, out).await
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    let written = stream.write_all(out).await.is_ok();
    out.clear();
    written
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
pub(super) fn refresh_date() {
    DATE.with(|date| *date.borrow_mut() = date_now());
}

/// A connection handed to hyper: the bytes already read come first.
pub(super) struct Rewound {
    read: Bytes,
    stream: TcpStream,
}

impl Rewound {
    pub(super) fn new(read: Bytes, stream: TcpStream) -> Self {
        Rewound { read, stream }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, out);
        }
        let n = this.read.len().min(out.remaining());
        out.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(head: &str) -> Parsed {
        parse(&mut BytesMut::from(head))
    }

    #[test]
    fn plain_bodyless_requests_are_served_here() {
        let Parsed::Simple(head) =
            parse_str("GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nX-Y: z\r\nTE: trailers\r\n\r\n")
        else {
            panic!("a plain GET goes to hyper");
        };
        assert_eq!(head.req.uri(), "/a?b=1");
        assert!(head.req.headers().is_empty(), "the fields are kept raw");
        assert_eq!(head.fields.host(), Some("shop"));
        let fields: Vec<_> = head.fields.all().collect();
        assert_eq!(
            fields,
            [
                (&b"Host"[..], &b"shop"[..]),
                (b"X-Y", b"z"),
                (b"TE", b"trailers")
            ]
        );
        assert!(head.answer.trailers && !head.answer.close && !head.answer.head_only);
        let Parsed::Simple(head) =
            parse_str("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n")
        else {
            panic!("HEAD goes to hyper");
        };
        assert!(head.answer.close && head.answer.head_only);
    }

    #[test]
    fn everything_else_is_hyper_s() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "HELLO THERE\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n",
        ] {
            assert!(matches!(parse_str(head), Parsed::Other), "{head:?}");
        }
        assert!(matches!(
            parse_str("GET / HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let mut buf = BytesMut::from(
            "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3",
        );
        for path in ["/1", "/2"] {
            let Parsed::Simple(head) = parse(&mut buf) else {
                panic!("pipelined GET {path}");
            };
            assert_eq!(head.req.uri(), path);
        }
        assert!(matches!(parse(&mut buf), Parsed::Partial));
        assert_eq!(&buf[..], b"GET /3");
    }
}
