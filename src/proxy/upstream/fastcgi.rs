//! One FastCGI exchange on a backend connection (PHP-FPM): BEGIN_REQUEST, the
//! request's params, the body as STDIN; then the CGI header section of STDOUT as the
//! response head, and the rest of STDOUT as the response body.
//!
//! In: a connection, the backend's `fastcgi` settings, the request head and body, the
//! client's addresses, the deadlines.
//! Out: the response, whose [`FastCgiBody`] decodes STDOUT records straight off the
//! socket and checks the connection back in after END_REQUEST; or a [`Failed`]
//! exchange. Records and the CGI head are judged by `proxy::fastcgi::codec`; STDERR
//! goes to the log, bounded and rate-limited, never to the client.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::exchange::{within, write_pair, Deadlines, ResponseBodyError};
use super::transport::Conn;
use super::{pool, Failed, ResponseBody, UpstreamError};
use crate::proxy::body::UpstreamBody;
use crate::proxy::fastcgi::codec::{self, Record, RecordType, Records, MAX_CONTENT};
use crate::proxy::fastcgi::params;
use crate::proxy::h1::upstream_head::UpstreamHead;
use crate::routes::{Endpoint, FastCgi, Protocol, Timeouts};

/// Request bodies are sent in writes of about this size; smaller frames are gathered.
const WRITE_BYTES: usize = 64 * 1024;

/// Sends the request to the FastCGI `endpoint`, as `upstream::send` does for HTTP:
/// a pooled connection or a new one within `maxConnections`, one exchange, and once
/// more on a new connection when a pooled one turned out stale and that is safe.
pub(super) async fn send(
    fcgi: &FastCgi,
    protocol: &Protocol,
    endpoint: &Endpoint,
    timeouts: &Timeouts,
    read_idle: Duration,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, UpstreamError> {
    // PHP-FPM needs CONTENT_LENGTH; a chunked body within maxReplayBytes was buffered.
    if body.exact_len().is_none() {
        return Err(UpstreamError::LengthRequired);
    }
    let Some(script) = params::script_of(fcgi, head)? else {
        // A primary that has no such script answers 404: PHP-FPM is not asked.
        return Ok(no_script());
    };
    let conn = match pool::checkout(endpoint.pool_key(), Instant::now()) {
        Some(conn) => conn,
        None => super::open(protocol, endpoint, timeouts).await?,
    };
    // It may have waited for a connection (the connect timeout's budget): the response
    // header timeout starts once it has one.
    let deadlines = Deadlines {
        head_by: Instant::now() + timeouts.response_header,
        response_header: timeouts.response_header,
        read_idle,
    };
    let retry = super::replay_for_retry(&conn, head, &body);
    match exchange(conn, fcgi, head, &script, body, deadlines).await {
        Ok(resp) => Ok(resp),
        Err(failed) => match retry {
            Some(body) if failed.may_retry() => {
                let conn = super::open(protocol, endpoint, timeouts).await?;
                exchange(conn, fcgi, head, &script, body, deadlines)
                    .await
                    .map_err(|f| f.error)
            }
            _ => Err(failed.error),
        },
    }
}

/// Writes the request and reads the response head on `conn`, the head due by
/// `head_by` (a bodyless request) or within `response_header` of the body's end.
async fn exchange(
    mut conn: Box<Conn>,
    fcgi: &FastCgi,
    head: &UpstreamHead,
    script: &params::Script,
    body: UpstreamBody,
    deadlines: Deadlines,
) -> Result<Response<ResponseBody>, Failed> {
    let Deadlines {
        head_by,
        response_header,
        read_idle,
    } = deadlines;
    // A body of unknown length was refused before: `CONTENT_LENGTH` must be known.
    let length = body.exact_len().unwrap_or(0);
    let mut payload = Vec::with_capacity(2048);
    params::encode(fcgi, head, script, length, &mut payload);
    let out = &mut conn.out;
    out.clear();
    codec::put_begin_request(out, true);
    // Whole pairs per record, as PHP-FPM reads them; a pair over one record's 64 KiB
    // is a head far over what the client side admits.
    codec::put_params(out, &payload).map_err(|_| Failed::from(UpstreamError::ParamTooLarge))?;
    codec::put_stream_end(out, RecordType::Params);
    let mut deadline = head_by;
    if length == 0 {
        codec::put_stream_end(out, RecordType::Stdin);
        within(read_idle, conn.stream.write_all(&conn.out))
            .await
            .map_err(|e| Failed::from(UpstreamError::Io(e)))?;
    } else {
        // The whole upload within the response-header timeout: a body that streams
        // (above maxReplayBytes) holds a PHP-FPM worker while it comes, and a client
        // trickling it byte by byte must not hold one for ever.
        let upload = Box::pin(write_stdin(&mut conn, body, read_idle));
        match tokio::time::timeout(response_header, upload).await {
            Ok(sent) => sent?,
            Err(_) => return Err(UpstreamError::ResponseTimeout.into()),
        }
        deadline = Instant::now() + response_header;
    }
    let asked_head = head.parts.method == Method::HEAD;
    let reading = read_head(conn, asked_head, read_idle);
    let mut resp = match tokio::time::timeout_at(deadline.into(), reading).await {
        Ok(read) => read?,
        Err(_) => return Err(UpstreamError::ResponseTimeout.into()),
    };
    // Read ahead, as nginx's `fastcgi_buffering`: an answer that fits gives its PHP-FPM
    // worker back at once, however slowly the client reads it. Each read is timed by
    // the read timeout, as the body's are.
    if let ResponseBody::FastCgi(body) = resp.body_mut() {
        body.read_ahead().await.map_err(|e| Failed {
            error: UpstreamError::Io(io::Error::other(e)),
            answered: true,
        })?;
    }
    Ok(resp)
}

/// Writes what is in `conn.out` and then the body as STDIN records, as it arrives:
/// never more than about [`WRITE_BYTES`] of it held here.
async fn write_stdin(
    conn: &mut Conn,
    mut body: UpstreamBody,
    idle: Duration,
) -> Result<(), Failed> {
    let Conn { stream, out, .. } = conn;
    let io = |e: io::Error| Failed::from(UpstreamError::Io(e));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failed::from(UpstreamError::RequestBody(e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for piece in data.chunks(MAX_CONTENT) {
            codec::put_record_header(out, RecordType::Stdin, piece.len() as u16);
            if out.len() + piece.len() <= WRITE_BYTES {
                out.extend_from_slice(piece);
                continue;
            }
            write_pair(stream, out, piece, idle).await.map_err(io)?;
            out.clear();
        }
    }
    codec::put_stream_end(out, RecordType::Stdin);
    within(idle, stream.write_all(out)).await.map_err(io)
}

/// Reads records until the CGI header section is complete.
async fn read_head(
    mut conn: Box<Conn>,
    asked_head: bool,
    read_idle: Duration,
) -> Result<Response<ResponseBody>, Failed> {
    let mut records = Records::new();
    let mut stdout = BytesMut::new();
    let mut answered = false;
    let failed = |error, answered| Failed { error, answered };
    loop {
        match records.next(&mut conn.buf) {
            Err(err) => return Err(failed(UpstreamError::Malformed(err.0), answered)),
            Ok(Some(Record::Stdout(data))) => {
                answered = true;
                stdout.extend_from_slice(&data);
                let parsed = codec::parse_cgi_head(&stdout)
                    .map_err(|e| failed(UpstreamError::Malformed(e.0), true))?;
                if let Some((cgi, consumed)) = parsed {
                    let _ = stdout.split_to(consumed);
                    let mut body = FastCgiBody {
                        conn: Some(conn),
                        reserved: Reserved(0),
                        records,
                        ready: VecDeque::new(),
                        ended: false,
                        discard: asked_head,
                        read_idle,
                        waiting_since: None,
                        timer: None,
                    };
                    body.push(stdout.freeze());
                    // Small answers are usually whole by now: their length is then known.
                    body.decode_buffered()
                        .map_err(|e| failed(UpstreamError::Malformed(e.0), true))?;
                    let mut resp = Response::new(ResponseBody::FastCgi(Box::new(body)));
                    *resp.status_mut() = cgi.status;
                    *resp.headers_mut() = cgi.headers;
                    return Ok(resp);
                }
                continue;
            }
            Ok(Some(Record::Stderr(data))) => {
                log_stderr(&conn.key, &data);
                continue;
            }
            Ok(Some(Record::End {
                protocol_status, ..
            })) => {
                let why = match protocol_status {
                    1 => "PHP-FPM cannot take more than one request per connection",
                    2 => "PHP-FPM is overloaded and refused the request",
                    3 => "PHP-FPM does not take the responder role",
                    _ => "PHP-FPM ended the request before its response headers",
                };
                return Err(failed(UpstreamError::Malformed(why), answered));
            }
            Ok(None) => {}
        }
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx))
            .await
            .map_err(|e| failed(UpstreamError::Io(e), answered))?;
        if n == 0 {
            return Err(failed(UpstreamError::Closed, answered));
        }
        answered |= !conn.buf.is_empty();
    }
}

/// A FastCGI response body: STDOUT content, decoded off the socket as the client takes
/// it. After END_REQUEST the connection goes back to the pool; dropped early, it is
/// closed (PHP-FPM would go on writing the rest of the response into it).
pub struct FastCgiBody {
    conn: Option<Box<Conn>>,
    /// The share of [`READ_AHEAD_BUDGET`] this answer's read-ahead holds.
    reserved: Reserved,
    records: Records,
    /// STDOUT decoded and not yet taken.
    ready: VecDeque<Bytes>,
    /// END_REQUEST arrived.
    ended: bool,
    /// A HEAD request: the script's output is read and dropped.
    discard: bool,
    read_idle: Duration,
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Most of one answer read ahead of the client.
const READ_AHEAD: usize = 256 * 1024;
/// Most read ahead over all answers of the process: past it, answers stream as the
/// client reads them, holding their PHP-FPM worker until then.
const READ_AHEAD_BUDGET: usize = 64 * 1024 * 1024;
static READ_AHEAD_LEFT: AtomicUsize = AtomicUsize::new(READ_AHEAD_BUDGET);

/// Bytes taken from [`READ_AHEAD_LEFT`], given back when dropped.
struct Reserved(usize);

impl Reserved {
    fn take(bytes: usize) -> Reserved {
        let taken = READ_AHEAD_LEFT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
            left.checked_sub(bytes)
        });
        Reserved(if taken.is_ok() { bytes } else { 0 })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        READ_AHEAD_LEFT.fetch_add(self.0, Ordering::AcqRel);
    }
}

/// The answer to a request whose path names no script: PHP-FPM's own answer to a
/// script that does not exist, given without asking it.
pub(super) fn no_script() -> Response<ResponseBody> {
    let body = FastCgiBody {
        conn: None,
        reserved: Reserved(0),
        records: Records::new(),
        ready: VecDeque::from([Bytes::from_static(b"File not found.\n")]),
        ended: true,
        discard: false,
        read_idle: Duration::ZERO,
        waiting_since: None,
        timer: None,
    };
    let mut resp = Response::new(ResponseBody::FastCgi(Box::new(body)));
    *resp.status_mut() = http::StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

impl FastCgiBody {
    /// Reads the answer on, up to [`READ_AHEAD`] held, while the budget allows.
    async fn read_ahead(&mut self) -> Result<(), ResponseBodyError> {
        if self.ended || self.discard {
            return Ok(());
        }
        self.reserved = Reserved::take(READ_AHEAD);
        if self.reserved.0 == 0 {
            return Ok(());
        }
        while !self.ended && self.held() < READ_AHEAD {
            if std::future::poll_fn(|cx| self.poll_more(cx)).await? == 0 {
                return Err(ResponseBodyError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            self.decode_buffered()
                .map_err(|e| ResponseBodyError::Malformed(e.0))?;
        }
        Ok(())
    }

    fn held(&self) -> usize {
        self.ready.iter().map(Bytes::len).sum()
    }

    fn push(&mut self, data: Bytes) {
        if !data.is_empty() && !self.discard {
            self.ready.push_back(data);
        }
    }

    /// Decodes every record already in the buffer.
    fn decode_buffered(&mut self) -> Result<(), codec::RecordError> {
        while !self.ended {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            match self.records.next(&mut conn.buf)? {
                Some(Record::Stdout(data)) => self.push(data),
                Some(Record::Stderr(data)) => log_stderr(&conn.key, &data),
                Some(Record::End { .. }) => {
                    self.ended = true;
                    if let Some(conn) = self.conn.take() {
                        // Anything after END_REQUEST is a stream out of step: not reused.
                        if conn.buf.is_empty() {
                            pool::checkin(conn);
                        }
                    }
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Waits for more bytes, at most `read_idle` since the last ones.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, ResponseBodyError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if let Poll::Ready(read) = conn.poll_fill(cx) {
            self.waiting_since = None;
            return Poll::Ready(read.map_err(ResponseBodyError::from));
        }
        ready!(crate::proxy::deadline::poll_idle(
            &mut self.timer,
            &mut self.waiting_since,
            self.read_idle,
            cx
        ));
        Poll::Ready(Err(ResponseBodyError::Stalled))
    }
}

impl Body for FastCgiBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if let Err(err) = this.decode_buffered() {
                this.conn = None;
                return Poll::Ready(Some(Err(ResponseBodyError::Malformed(err.0))));
            }
            if !this.ready.is_empty() || this.ended {
                continue;
            }
            match ready!(this.poll_more(cx)) {
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ResponseBodyError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))));
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
        self.ended && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(self.ready.iter().map(|b| b.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

/// Most STDERR lines logged per second and thread; the rest are counted and summed up.
const STDERR_LINES_PER_SECOND: u32 = 20;
/// Longest piece of STDERR logged at once.
const STDERR_BYTES: usize = 2048;

thread_local! {
    /// This second's start and the lines logged (and dropped) in it.
    static STDERR_BUDGET: Cell<(Option<Instant>, u32, u64)> = const { Cell::new((None, 0, 0)) };
}

/// Logs what a script wrote to STDERR (PHP's warnings and `error_log`): never sent to
/// the client, bounded per line and rate-limited, so a noisy script cannot flood the log.
fn log_stderr(endpoint: &str, data: &[u8]) {
    if data.trim_ascii() == b"Primary script unknown" {
        // PHP-FPM's note for a script that does not exist, which it answers 404: for
        // fallthrough that is a URL the legacy app yields, an everyday event.
        tracing::debug!(endpoint, "FastCGI: no such script");
        return;
    }
    STDERR_BUDGET.with(|budget| {
        let (since, logged, dropped) = budget.get();
        let now = Instant::now();
        let (since, logged, dropped) = match since {
            Some(since) if now.duration_since(since) < Duration::from_secs(1) => {
                (since, logged, dropped)
            }
            _ => {
                if dropped > 0 {
                    tracing::warn!(dropped, "FastCGI stderr lines not logged: over {STDERR_LINES_PER_SECOND} per second");
                }
                (now, 0, 0)
            }
        };
        if logged >= STDERR_LINES_PER_SECOND {
            budget.set((Some(since), logged, dropped + 1));
            return;
        }
        let shown = &data[..data.len().min(STDERR_BYTES)];
        let text = String::from_utf8_lossy(shown);
        tracing::warn!(
            endpoint,
            truncated = data.len() > STDERR_BYTES,
            stderr = %text.trim_end(),
            "FastCGI application wrote to stderr"
        );
        budget.set((Some(since), logged + 1, dropped));
    });
}
