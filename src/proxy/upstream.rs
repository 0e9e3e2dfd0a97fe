//! HTTP/1.1 to the backends: keep-alive connections per data-plane thread, each request
//! written and its response read by the task that serves the client.
//!
//! In: an endpoint, the shared request head, a request body, and the route's connect and
//! idle timeouts.
//! Out: the upstream's response, whose body reads straight from the upstream socket and
//! hands the connection back to this thread's pool after its last byte; or an
//! [`UpstreamError`].
//!
//! Why not a general-purpose client: on a primary hit the proxy does little besides
//! moving one request and one response, so a separate connection task, the channels
//! between it and the request, and a shared pool cost as much as the proxying itself.
//! Here there is no task and no channel: the client's connection task writes the request,
//! parses the response head (httparse) and polls the body out of the socket, the way
//! nginx's worker does. Each worker thread keeps its own idle connections (nginx's
//! per-worker `keepalive`), so nothing is shared between threads.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::headers::{
    is_field_value, is_hop_by_hop_name, names_fields, FieldScan, RawFields, UpstreamHead,
};
use super::wire::{
    has_token, parse_content_length, put_chunk_size, put_content_length, put_field, put_last_chunk,
};
use crate::routes::Timeouts;

/// Largest response head (and trailer section) accepted from a backend.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers a backend's response may carry.
const MAX_HEADERS: usize = 128;
/// Read buffer granted to a connection at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Request bodies up to this size are copied behind the head and written in one call.
const COALESCE_BYTES: usize = 16 * 1024;
/// Idle connections kept per endpoint and thread (nginx's `keepalive 128` per worker).
const MAX_IDLE_PER_ENDPOINT: usize = 128;

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
    RequestBody(#[source] hyper::Error),
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

/// One open connection to a backend. Boxed from its connect on: a request moves its
/// connection from the pool through the exchange into the response body and back, and
/// each move then copies a pointer rather than the whole connection.
struct Conn {
    stream: TcpStream,
    /// Bytes read from the socket and not yet consumed.
    buf: BytesMut,
    /// The request being written; kept with the connection so a request costs no
    /// buffer allocation.
    out: Vec<u8>,
    /// The response header timer, armed once per connection (see [`before`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    endpoint: Authority,
    idle: Duration,
    reused: bool,
}

struct IdleConn {
    conn: Box<Conn>,
    expires: Instant,
}

struct Pool {
    /// By endpoint (`host:port`); a plain string key, hashed cheaply, as it is hashed
    /// twice per request.
    idle: rustc_hash::FxHashMap<Box<str>, Vec<IdleConn>>,
    /// The time of the last sweep, which idle timeouts count from: a connection may
    /// close up to one tick before its idle timeout, the safe side of the backend's own
    /// keep-alive timeout, and checking one in reads no clock.
    swept_at: Instant,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        idle: Default::default(),
        swept_at: Instant::now(),
    });
}

impl Pool {
    /// The most recently used idle connection that is still open, if any.
    fn checkout(&mut self, endpoint: &Authority, now: Instant) -> Option<Box<Conn>> {
        let idle = self.idle.get_mut(endpoint.as_str())?;
        while let Some(entry) = idle.pop() {
            if entry.expires > now && still_open(&entry.conn.stream) {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&mut self, conn: Box<Conn>) {
        let expires = self.swept_at + conn.idle;
        let key = conn.endpoint.as_str();
        if !self.idle.contains_key(key) {
            self.idle.insert(key.into(), Vec::new());
        }
        let Some(idle) = self.idle.get_mut(key) else {
            return;
        };
        if idle.len() >= MAX_IDLE_PER_ENDPOINT {
            // The oldest goes: the busiest connections stay warm.
            idle.remove(0);
        }
        idle.push(IdleConn { conn, expires });
    }

    fn sweep(&mut self, now: Instant) {
        self.swept_at = now;
        self.idle.retain(|_, conns| {
            conns.retain(|c| c.expires > now);
            !conns.is_empty()
        });
    }
}

/// Closes this thread's idle upstream connections whose idle timeout has passed; the
/// worker's housekeeping tick calls it.
pub(super) fn sweep_idle(now: Instant) {
    POOL.with(|pool| pool.borrow_mut().sweep(now));
}

/// Whether an idle connection can take a request: the peer has neither closed it nor
/// sent anything unasked. Costs no system call unless the socket was signalled readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

async fn connect(
    endpoint: &Authority,
    timeout: Duration,
    idle: Duration,
) -> Result<Box<Conn>, UpstreamError> {
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

/// Sends the request to `endpoint` and reads the response head, which must arrive
/// within `timeouts.response_header` of `started`.
///
/// A request that fails on a reused keep-alive connection before any byte of an answer
/// arrived (the backend closed it while it sat in the pool) is sent once more on a new
/// connection when that is safe: an idempotent method and a body that can be replayed.
pub async fn send(
    endpoint: &Authority,
    timeouts: &Timeouts,
    started: Instant,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, UpstreamError> {
    let deadline = started + timeouts.response_header;
    let pooled = POOL.with(|pool| pool.borrow_mut().checkout(endpoint, started));
    let conn = match pooled {
        Some(conn) => conn,
        // Boxed, like every rare path here: the request future stays small.
        None => Box::pin(connect(endpoint, timeouts.connect, timeouts.idle)).await?,
    };
    let retry = if conn.reused && is_idempotent(&head.parts.method) {
        body.replay()
    } else {
        None
    };
    match exchange(conn, head, body, deadline).await {
        Ok(resp) => Ok(resp),
        Err(Failed { error, answered }) => match retry {
            Some(body) if !answered && !matches!(error, UpstreamError::ResponseTimeout) => {
                tracing::debug!(%endpoint, %error, "pooled connection was stale; retrying on a new one");
                let conn = Box::pin(connect(endpoint, timeouts.connect, timeouts.idle)).await?;
                Box::pin(exchange(conn, head, body, deadline))
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

async fn exchange(
    mut conn: Box<Conn>,
    head: &UpstreamHead,
    body: UpstreamBody,
    deadline: Instant,
) -> Result<Response<ResponseBody>, Failed> {
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
        write_request(&mut conn, head, body).await?;
        read_response(conn, &head.parts.method).await
    });
    let exchanged =
        std::future::poll_fn(|cx| poll_before(&mut timer, deadline, work.as_mut(), cx)).await;
    match exchanged {
        Some(Ok(mut resp)) => {
            resp.body_mut().keep_timer(timer);
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

async fn write_request(
    conn: &mut Conn,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<(), UpstreamError> {
    let framing = encode_head(head, &body, &mut conn.out);
    match framing {
        None => conn
            .stream
            .write_all(&conn.out)
            .await
            .map_err(UpstreamError::Io),
        // Boxed: most requests have no body, and their future stays small.
        Some(framing) => Box::pin(write_body(conn, framing, body)).await,
    }
}

/// Writes the request head in HTTP/1.1 wire form into `out`; how the body that follows
/// is framed (`None`: no body).
fn encode_head(upstream: &UpstreamHead, body: &UpstreamBody, out: &mut Vec<u8>) -> Option<Framing> {
    let head = &upstream.parts;
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
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
    // The lean parser cut `Content-Length` with the hop-by-hop fields.
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

/// Writes the head in the connection's `out` and the body behind it; small bodies go
/// in the same write.
async fn write_body(
    conn: &mut Conn,
    framing: Framing,
    mut body: UpstreamBody,
) -> Result<(), UpstreamError> {
    let Conn { stream, out, .. } = conn;
    let mut trailers = None;
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
        if let Framing::Chunked = framing {
            put_chunk_size(out, data.len());
        }
        if out.len() + data.len() <= COALESCE_BYTES {
            out.extend_from_slice(&data);
        } else {
            stream.write_all(out).await?;
            out.clear();
            stream.write_all(&data).await?;
        }
        if let Framing::Chunked = framing {
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Framing::Chunked = framing {
        put_last_chunk(out, trailers.as_ref());
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
    }
    Ok(())
}

async fn read_response(
    mut conn: Box<Conn>,
    method: &Method,
) -> Result<Response<ResponseBody>, Failed> {
    let mut answered = false;
    loop {
        if !conn.buf.is_empty() {
            answered = true;
            match parse_head(&mut conn.buf, method).map_err(|error| Failed { error, answered })? {
                Some(Parsed::Informational) => continue,
                Some(Parsed::Final(parts, fields, framing, keep_alive)) => {
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::new(conn, fields, framing, keep_alive),
                    ));
                }
                None => {}
            }
        }
        let n = std::future::poll_fn(|cx| poll_fill(&mut conn, cx))
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

/// Reads what the socket has into the connection's buffer: `Ok(0)` at end of stream.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    poll_read_into(&conn.stream, &mut conn.buf, cx)
}

/// Reads what `stream` has into `buf`, growing it by [`READ_CHUNK`] when nearly full:
/// `Ok(0)` at end of stream.
pub(super) fn poll_read_into(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        let spare = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n > 0 && n < spare {
                    // A short read drained the socket (what nginx assumes too): forget
                    // the readiness now rather than pay a read that would block later.
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

// Returned once per response head and matched at once: boxing the large variant
// would cost an allocation per response to save a copy.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A 1xx other than 101, consumed: the final response follows.
    Informational,
    /// A final response: its head (headers in the map or, most often, still raw), how
    /// its body is framed and whether the connection can be reused after it.
    Final(http::response::Parts, RawFields, BodyFraming, bool),
}

/// Parses a complete response head at the front of `buf`, consuming it; `None` when more
/// bytes are needed.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, UpstreamError> {
    // Nothing here is zeroed for all the headers allowed: a response has a handful.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(UpstreamError::Malformed("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpstreamError::Malformed("too many response headers"))
        }
        Err(_) => return Err(UpstreamError::Malformed("invalid response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(UpstreamError::Malformed("invalid status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let mut fields = FramingFields::default();
    let mut scan = FieldScan::new(buf);
    for h in parsed.headers.iter() {
        if !is_field_value(h.value) {
            return Err(UpstreamError::Malformed("invalid header value"));
        }
        let name = h.name.as_bytes();
        fields.see(name, h.value);
        scan.facts.dated |= name.eq_ignore_ascii_case(b"date");
        scan.see(name, h.value, is_hop_by_hop_name(name));
    }
    if let Some(Ok(length)) = fields.length {
        scan.facts.content_length = Some(length);
    }
    let spans = scan.finish(len);
    let (framing, keep_alive) = body_framing(status, version, &fields, method)?;
    // Kept raw unless a field must be rewritten: a 101 keeps `Upgrade`, both framings
    // lose `Content-Length`, `Connection` may name more fields to drop.
    let both_framings = fields.transfer_encoding.is_some() && fields.content_length;
    let rewrite = status == StatusCode::SWITCHING_PROTOCOLS
        || both_framings
        || fields.connection_names_fields;
    let head = buf.split_to(len).freeze();
    let raw = RawFields::of_head(&head, spans);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    if !rewrite {
        return Ok(Some(Parsed::Final(parts, raw, framing, keep_alive)));
    }
    parts.headers = raw
        .into_full_map(0)
        .ok_or(UpstreamError::Malformed("invalid header field"))?;
    if both_framings {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    Ok(Some(Parsed::Final(
        parts,
        RawFields::default(),
        framing,
        keep_alive,
    )))
}

/// What a response's fields say about its framing, gathered in one pass.
#[derive(Default)]
struct FramingFields<'h> {
    /// The last `Transfer-Encoding` field's value.
    transfer_encoding: Option<&'h [u8]>,
    /// Whether any `Content-Length` field was seen.
    content_length: bool,
    /// Their common value, or why there is none.
    length: Option<Result<u64, &'static str>>,
    /// `Connection: close`.
    close: bool,
    /// `Connection` names something other than `close` and `keep-alive`.
    connection_names_fields: bool,
}

impl<'h> FramingFields<'h> {
    fn see(&mut self, name: &[u8], value: &'h [u8]) {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length = true;
            let n = parse_content_length(value).ok_or("invalid Content-Length");
            self.length = match (self.length, n) {
                (None, n) => Some(n),
                (Some(Ok(a)), Ok(b)) if a != b => Some(Err("conflicting Content-Length values")),
                (Some(Ok(_)), Err(e)) => Some(Err(e)),
                (kept, _) => kept,
            };
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.close |= has_token(value, b"close");
            self.connection_names_fields |= names_fields(value);
        }
    }
}

/// How a response body is delimited (RFC 9112 6.3), and whether the connection can carry
/// another request after it.
fn body_framing(
    status: StatusCode,
    version: Version,
    fields: &FramingFields<'_>,
    method: &Method,
) -> Result<(BodyFraming, bool), UpstreamError> {
    let mut keep_alive = version == Version::HTTP_11 && !fields.close;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((BodyFraming::Switched, false));
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyFraming::Length(0), keep_alive));
    }
    if let Some(te) = fields.transfer_encoding {
        let chunked = te
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if fields.content_length {
            // Both framings: a smuggling attempt or a broken backend. Trust
            // Transfer-Encoding (RFC 9112 6.3) and never reuse the connection.
            keep_alive = false;
        }
        return Ok(if chunked {
            (BodyFraming::Chunked(Chunked::Size), keep_alive)
        } else {
            (BodyFraming::UntilClose, false)
        });
    }
    Ok(match fields.length {
        Some(Ok(n)) => (BodyFraming::Length(n), keep_alive),
        Some(Err(why)) => return Err(UpstreamError::Malformed(why)),
        None => (BodyFraming::UntilClose, false),
    })
}

enum BodyFraming {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    /// 101: the connection now belongs to the tunnel.
    Switched,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// An upstream response body, read from the backend's socket as the client takes it.
/// After its last byte the connection goes back to this thread's pool (when the
/// backend keeps it alive); dropped early, the connection is closed.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    /// The head's fields when they were kept raw (see [`RawFields`]).
    fields: RawFields,
    framing: BodyFraming,
    keep_alive: bool,
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
}

impl ResponseBody {
    fn new(conn: Box<Conn>, fields: RawFields, framing: BodyFraming, keep_alive: bool) -> Self {
        ResponseBody {
            conn: Some(conn),
            fields,
            framing,
            keep_alive,
        }
    }

    /// The head's fields if they were kept raw, taken out (empty the second time).
    pub fn take_fields(&mut self) -> RawFields {
        std::mem::take(&mut self.fields)
    }

    /// Gives the connection its response header timer back, for its next request.
    fn keep_timer(&mut self, timer: Pin<Box<tokio::time::Sleep>>) {
        if let Some(conn) = &mut self.conn {
            conn.timer = Some(timer);
        }
    }

    /// For a 101 answer: the connection and what the backend already sent past the head.
    pub fn into_tunnel(mut self) -> Option<(TcpStream, Bytes)> {
        match self.framing {
            BodyFraming::Switched => self.conn.take().map(|c| (c.stream, c.buf.freeze())),
            _ => None,
        }
    }

    /// The body ended: the connection may carry the next request.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && conn.buf.is_empty() {
            POOL.with(|pool| pool.borrow_mut().checkin(conn));
        }
        self.framing = BodyFraming::Length(0);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body with nothing left to read (HEAD, 204, a length fully read) is often
        // dropped unpolled: its connection is still good.
        if matches!(self.framing, BodyFraming::Length(0)) {
            self.finish();
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
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                BodyFraming::Switched => return Poll::Ready(None),
                BodyFraming::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyFraming::Length(remaining) => {
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
                BodyFraming::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyFraming::Chunked(state) => match decode_chunked(state, &mut conn.buf) {
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
                        return Poll::Ready(Some(Err(err)));
                    }
                },
            }
            match ready!(poll_fill(conn, cx)) {
                Ok(0) => {
                    let whole = matches!(this.framing, BodyFraming::UntilClose);
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
                    return Poll::Ready(Some(Err(err.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
            || matches!(self.framing, BodyFraming::Length(0) | BodyFraming::Switched)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) | (_, BodyFraming::Switched) => SizeHint::with_exact(0),
            (_, BodyFraming::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Decodes what `buf` holds of a chunked body, consuming it.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, ResponseBodyError> {
    let malformed = ResponseBodyError::Malformed;
    loop {
        match *state {
            Chunked::Size => {
                let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(malformed("chunk size line too long"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = buf[..eol]
                    .strip_suffix(b"\r")
                    .ok_or(malformed("chunk size line not ended by CRLF"))?;
                let digits = line
                    .iter()
                    .position(|b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                let rest = &line[digits..];
                if digits == 0
                    || digits > 15
                    || !(rest.is_empty() || rest.trim_ascii_start().starts_with(b";"))
                {
                    return Err(malformed("invalid chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, &b| {
                    n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0))
                });
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(remaining) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                let data = buf.split_to(n).freeze();
                *state = match remaining - n as u64 {
                    0 => Chunked::DataEnd,
                    left => Chunked::Data(left),
                };
                return Ok(Decoded::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            if let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(name, value);
                            }
                        }
                        buf.advance(len);
                        Ok(Decoded::Trailers(trailers))
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                        Err(malformed("trailer section too large"))
                    }
                    Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
                    Err(_) => Err(malformed("invalid trailer section")),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        input: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), ResponseBodyError> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in input.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::Trailers(t) => return Ok((body, Some(t))),
                    Decoded::End => return Ok((body, None)),
                    Decoded::NeedMore => break,
                }
            }
        }
        Err(ResponseBodyError::Malformed("unfinished"))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 1..wire.len() {
            let (body, trailers) = decode_all(wire, split).unwrap();
            assert_eq!(body, b"hello, world", "split {split}");
            assert!(trailers.is_none());
        }
    }

    #[test]
    fn chunked_trailers_are_kept() {
        let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n";
        for split in 1..wire.len() {
            let (body, trailers) = decode_all(wire, split).unwrap();
            assert_eq!(body, b"abc");
            assert_eq!(trailers.unwrap()["x-checksum"], "42");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"-5\r\nhello\r\n",
        ] {
            assert!(
                decode_all(wire, wire.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    fn head(wire: &str, method: Method) -> Result<Option<Parsed>, UpstreamError> {
        let mut buf = BytesMut::from(wire.as_bytes());
        parse_head(&mut buf, &method)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |wire: &str, method| match head(wire, method) {
            Ok(Some(Parsed::Final(_, _, framing, keep_alive))) => match framing {
                BodyFraming::Length(n) => format!("length {n}, keep-alive {keep_alive}"),
                BodyFraming::Chunked(_) => format!("chunked, keep-alive {keep_alive}"),
                BodyFraming::UntilClose => format!("until close, keep-alive {keep_alive}"),
                BodyFraming::Switched => "switched".into(),
            },
            Ok(Some(Parsed::Informational)) => "informational".into(),
            Ok(None) => "incomplete".into(),
            Err(_) => "error".into(),
        };
        let get = Method::GET;
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                &get,
                "length 12, keep-alive true",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                &Method::HEAD,
                "length 0, keep-alive true",
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                &get,
                "length 0, keep-alive true",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &get,
                "chunked, keep-alive true",
            ),
            // Both framings: Transfer-Encoding wins and the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                &get,
                "chunked, keep-alive false",
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                &get,
                "until close, keep-alive false",
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                &get,
                "length 1, keep-alive false",
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                &get,
                "length 1, keep-alive false",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                &get,
                "error",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                &get,
                "error",
            ),
            ("HTTP/1.1 200 OK\r\ncontent-le", &get, "incomplete"),
            (
                "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                &get,
                "informational",
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
                &get,
                "switched",
            ),
        ];
        for (wire, method, expected) in cases {
            assert_eq!(
                framing(wire, method.clone()),
                expected,
                "{wire:?} to {method}"
            );
        }
    }

    #[test]
    fn header_values_are_kept_byte_for_byte() {
        let Ok(Some(Parsed::Final(mut parts, fields, ..))) = head(
            "HTTP/1.1 404 Not Found\r\nx-a: 1\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        ) else {
            panic!("not parsed")
        };
        fields.append_to(&mut parts.headers);
        assert_eq!(parts.status, 404);
        assert_eq!(parts.headers["x-a"], "1");
        let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
}
