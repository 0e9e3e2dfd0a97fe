//! The HTTP/1.1 codec: where hostile bytes are judged. Pure: no I/O, no tokio.
//!
//! In: bytes read from a client or a backend (a `BytesMut` the caller fills).
//! Out: judged heads ([`RequestHead`], [`ResponseHead`]) with their body framing decided
//! as RFC 9112 §6.3 says, decoded chunked bodies ([`ChunkedDecoder`]), and the encoders
//! both directions write with. A refused head is an error the caller answers (400, 431,
//! 501, 505; 502 for a backend) before it closes the connection: nothing of it is
//! forwarded, and no later bytes are read as a new message.
//!
//! Everything above this module gets already-judged values and never re-parses a head.
//! Where RFC 9112 lets a recipient choose, the choice is nginx's; each is named below.

use std::io::Write;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::head::{
    has_token, is_allowed_trailer, is_field_value, is_forwarded_name, is_hop_by_hop_name,
    names_field, names_fields, FieldScan, RawFields,
};

/// Most field lines a head may carry, from a client or a backend.
pub const MAX_HEADERS: usize = 128;
/// Largest head (and trailer section) accepted, from a client or a backend.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a client's request head is refused; the status says how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not valid HTTP/1.1 syntax, or a field rule of RFC 9112 / 9110 broken.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head did not fit in [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] lines.
    #[error("request head too large (at most 64 KiB and 128 fields)")]
    HeadTooLarge,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1: 501).
    #[error("unsupported transfer coding (only chunked is accepted)")]
    UnknownCoding,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("unsupported HTTP version (HTTP/1.0 and HTTP/1.1 are served)")]
    Version,
}

impl RequestError {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            RequestError::Malformed(_) => StatusCode::BAD_REQUEST,
            RequestError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestError::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            RequestError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }
}

/// How a request body is delimited (RFC 9112 §6.3, rules 4-6 for requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body: no `Content-Length` (or 0) and no `Transfer-Encoding`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head the codec accepted, and what it means for the connection.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    /// The target as sent: origin-form, absolute-form (its authority is the host), `*`
    /// (OPTIONS only) or authority-form (CONNECT only).
    pub uri: Uri,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Every field line, hop-by-hop ones included, sharing the buffer.
    pub fields: RawFields,
    pub framing: RequestFraming,
    /// The connection ends after this exchange: `Connection: close`, or HTTP/1.0 without
    /// `keep-alive`.
    pub close: bool,
    /// `Expect: 100-continue` (other expectations are ignored, as nginx does).
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field: a protocol switch is asked for.
    pub upgrade: bool,
    /// `TE: trailers`: the client accepts trailer fields.
    pub trailers: bool,
    /// The fields cannot go upstream as they are: `Connection` names fields to drop, the
    /// client sent `X-Forwarded-*`, or an absolute-form target replaces `Host`.
    pub rewrite: bool,
}

/// Parses and judges the request head at the front of `buf`, consuming it when it is
/// accepted; `Ok(None)` when more bytes are needed.
///
/// Empty lines before the request line are consumed and ignored (RFC 9112 §2.2).
pub fn parse_request_head(buf: &mut BytesMut) -> Result<Option<RequestHead>, RequestError> {
    skip_empty_lines(buf);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(RequestError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(httparse::Error::Version) if names_a_version(buf) => return Err(RequestError::Version),
        Err(httparse::Error::HeaderName) => return Err(malformed("invalid field name")),
        Err(httparse::Error::HeaderValue) => return Err(malformed("invalid field value")),
        Err(httparse::Error::Token) => return Err(malformed("invalid method")),
        Err(_) => return Err(malformed("invalid request line")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(RequestError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(malformed("invalid request line"));
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| malformed("invalid method"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let target = range(target.as_bytes());
    let mut facts = Facts::default();
    let mut scan = FieldScan::new(buf);
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let cut = facts.see_request_field(name, h.value)?;
        if cut == Cut::Host {
            facts.host = Some(range(h.value));
        }
        scan.see(name, h.value, cut == Cut::Yes);
    }
    scan.facts.content_length = facts.length;
    let framing = facts.request_framing(version)?;
    let spans = scan.finish(len);
    if version == Version::HTTP_11 && facts.hosts == 0 {
        return Err(malformed("HTTP/1.1 request without Host"));
    }
    if facts.hosts > 1 {
        return Err(malformed("more than one Host field"));
    }
    let head = buf.split_to(len).freeze();
    let uri = parse_target(head.slice(target.0..target.1), &method)?;
    let absolute = uri.authority().is_some() && method != Method::CONNECT;
    Ok(Some(RequestHead {
        close: if version == Version::HTTP_11 {
            facts.close
        } else {
            !facts.keep_alive || facts.close
        },
        expect_continue: facts.expect_continue && version == Version::HTTP_11,
        upgrade: facts.connection_upgrade && facts.upgrade_field,
        trailers: facts.te_trailers,
        rewrite: facts.rewrite || absolute,
        fields: RawFields::of_request_head(&head, facts.host, spans),
        method,
        uri,
        version,
        framing,
    }))
}

/// Whether the request line ends in a well-formed `HTTP/d.d` that is not 1.0 or 1.1
/// (505), rather than in something that is no version at all (400).
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts[..], [_, _, v] if v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit())
}

fn malformed(why: &'static str) -> RequestError {
    RequestError::Malformed(why)
}

/// Consumes CRLF or LF lines at the front of `buf`.
fn skip_empty_lines(buf: &mut BytesMut) {
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    // A lone trailing CR may start the next CRLF: keep it until its LF shows.
    let skip = if skip > 0 && buf[skip - 1] == b'\r' {
        skip - 1
    } else {
        skip
    };
    buf.advance(skip);
}

/// The request target as a URI, if its form suits the method (RFC 9112 §3.2) and
/// `http::Uri` takes it: a target httparse accepts but `Uri` does not (`<`, say) is a
/// 400, never a silently dropped request.
fn parse_target(target: Bytes, method: &Method) -> Result<Uri, RequestError> {
    let bad = malformed("invalid request target");
    let first = target.first().copied();
    let asterisk = &target[..] == b"*";
    let uri = Uri::from_maybe_shared(target).map_err(|_| bad)?;
    let ok = match first {
        _ if *method == Method::CONNECT => {
            // authority-form: host:port and nothing else.
            uri.scheme().is_none()
                && uri.path_and_query().is_none_or(|p| p.as_str().is_empty())
                && uri.authority().is_some_and(|a| a.port().is_some())
        }
        Some(b'/') => true,
        Some(b'*') => asterisk && *method == Method::OPTIONS,
        _ => {
            let scheme = uri.scheme_str().unwrap_or("");
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && uri
                    .authority()
                    .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'))
        }
    };
    if ok {
        Ok(uri)
    } else {
        Err(bad)
    }
}

/// What a field line means for the head being judged.
#[derive(PartialEq, Eq)]
enum Cut {
    /// Sent on as it is.
    No,
    /// Hop-by-hop, or restated by the proxy: never sent on as it came.
    Yes,
    /// The `Host` field: kept, and its place remembered.
    Host,
}

/// What a request's fields said, gathered in one pass.
#[derive(Default)]
struct Facts {
    hosts: u8,
    host: Option<(usize, usize)>,
    lengths: u8,
    length: Option<u64>,
    /// `Transfer-Encoding` was present; `chunked` was its last coding, exactly once.
    transfer_encoding: bool,
    chunked_last: bool,
    chunked_count: u8,
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    connection_upgrade: bool,
    upgrade_field: bool,
    expect_continue: bool,
    te_trailers: bool,
    rewrite: bool,
}

impl Facts {
    fn see_request_field(&mut self, name: &[u8], value: &[u8]) -> Result<Cut, RequestError> {
        if !is_field_value(value) {
            return Err(malformed("invalid field value"));
        }
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        Ok(match name.len() {
            4 if is(b"host") => {
                self.hosts = self.hosts.saturating_add(1);
                if !is_host_value(value) {
                    return Err(malformed("invalid Host"));
                }
                Cut::Host
            }
            14 if is(b"content-length") => {
                // nginx: a repeated Content-Length is refused, even with equal values.
                self.lengths = self.lengths.saturating_add(1);
                if self.lengths > 1 {
                    return Err(malformed("more than one Content-Length"));
                }
                self.length =
                    Some(parse_content_length(value).ok_or(malformed("invalid Content-Length"))?);
                Cut::Yes
            }
            17 if is(b"transfer-encoding") => {
                self.transfer_encoding = true;
                for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if coding.is_empty() {
                        continue;
                    }
                    if self.chunked_last {
                        // Anything after chunked: the body has no determinable end.
                        return Err(malformed("chunked is not the last transfer coding"));
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        self.chunked_last = true;
                        self.chunked_count += 1;
                    } else {
                        self.other_coding = true;
                    }
                }
                Cut::Yes
            }
            10 if is(b"connection") => {
                // Every Connection line counts, not only the first.
                self.close |= has_token(value, b"close");
                self.keep_alive |= has_token(value, b"keep-alive");
                self.connection_upgrade |= has_token(value, b"upgrade");
                if names_field(value, b"host") || names_field(value, b"content-length") {
                    return Err(malformed("Connection names a field every hop needs"));
                }
                self.rewrite |= names_fields(value);
                Cut::Yes
            }
            6 if is(b"expect") => {
                self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
                Cut::Yes
            }
            7 if is(b"upgrade") => {
                self.upgrade_field = true;
                Cut::Yes
            }
            2 if is(b"te") => {
                self.te_trailers |= has_token(value, b"trailers");
                Cut::Yes
            }
            _ if is_forwarded_name(name) => {
                self.rewrite = true;
                Cut::No
            }
            _ if is_hop_by_hop_name(name) => Cut::Yes,
            _ => Cut::No,
        })
    }

    /// RFC 9112 §6.1 and §6.3 for requests; nginx's choices where the RFC allows one.
    fn request_framing(&self, version: Version) -> Result<RequestFraming, RequestError> {
        if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if self.lengths > 0 {
                // RFC 9112 §6.1 allows refusing it; nginx does, and smuggling needs it.
                return Err(malformed("both Transfer-Encoding and Content-Length"));
            }
            if self.other_coding {
                return Err(RequestError::UnknownCoding);
            }
            if self.chunked_count != 1 || !self.chunked_last {
                return Err(malformed("invalid Transfer-Encoding"));
            }
            return Ok(RequestFraming::Chunked);
        }
        Ok(match self.length {
            None | Some(0) => RequestFraming::Empty,
            Some(n) => RequestFraming::Length(n),
        })
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9110 §7.2): a reg-name, IPv4 or
/// bracketed IPv6 literal, no userinfo, no path.
fn is_host_value(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        Some(colon) if !value[colon..].contains(&b']') => (&value[..colon], &value[colon + 1..]),
        _ => (value, &b""[..]),
    };
    if !port.iter().all(u8::is_ascii_digit) || port.len() > 5 {
        return false;
    }
    if let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        return !inner.is_empty()
            && inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    }
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

/// What the request asked that decides how its response is read.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// HEAD: the response has no body whatever its fields say.
    pub head: bool,
    /// The request asked to switch protocols: only then is a 101 acceptable.
    pub upgrade: bool,
}

/// Why a backend's response is refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the backend sent a malformed response: {0}")]
pub struct ResponseError(pub &'static str);

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug)]
pub enum ResponseFraming {
    /// Exactly this many bytes (0: no body, as for HEAD, 204 and 304).
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the backend closes the connection.
    UntilClose,
    /// 101: the connection now belongs to the tunnel.
    Switched,
}

/// A parsed response head.
// Returned once per response head and matched at once: boxing the large variant
// would cost an allocation per response to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ResponseHead {
    /// A 1xx other than 101, consumed: the final response follows.
    Informational,
    /// A final response: its status line, its fields (raw, or in `parts` when they had
    /// to be rewritten), its framing, and whether the connection can be reused after it.
    Final {
        parts: http::response::Parts,
        fields: RawFields,
        framing: ResponseFraming,
        keep_alive: bool,
    },
}

/// Parses and judges the response head at the front of `buf`, consuming it when it is
/// accepted; `Ok(None)` when more bytes are needed.
pub fn parse_response_head(
    buf: &mut BytesMut,
    asked: Asked,
) -> Result<Option<ResponseHead>, ResponseError> {
    skip_empty_lines(buf);
    if buf.is_empty() {
        return Ok(None);
    }
    let bad = |why| Err(ResponseError(why));
    // Nothing here is zeroed for all the headers allowed: a response has a handful.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) => return bad("response head too large"),
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return bad("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return bad("too many response headers"),
        Err(_) => return bad("invalid response head"),
    };
    let Some(status) = parsed
        .code
        .filter(|c| (100..600).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return bad("invalid status code");
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if status == StatusCode::SWITCHING_PROTOCOLS && !asked.upgrade {
        return bad("101 Switching Protocols to a request that asked for no upgrade");
    }
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(ResponseHead::Informational));
    }
    let mut fields = FramingFields::default();
    let mut scan = FieldScan::new(buf);
    for h in parsed.headers.iter() {
        if !is_field_value(h.value) {
            return bad("invalid header value");
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
    let (framing, keep_alive) = response_framing(status, version, &fields, asked)?;
    // Kept raw unless a field must be rewritten: a 101 keeps `Upgrade`, both framings
    // lose `Content-Length`, `Connection` may name more fields to drop.
    let both_framings = fields.transfer_encoding.is_some() && fields.content_length;
    let rewrite = status == StatusCode::SWITCHING_PROTOCOLS
        || both_framings
        || fields.connection_names_fields;
    let head = buf.split_to(len).freeze();
    let raw = RawFields::of_head(&head, spans);
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    if !rewrite {
        return Ok(Some(ResponseHead::Final {
            parts,
            fields: raw,
            framing,
            keep_alive,
        }));
    }
    parts.headers = raw
        .into_full_map(0)
        .ok_or(ResponseError("invalid header field"))?;
    if both_framings {
        // RFC 9112 §6.3: a Content-Length beside Transfer-Encoding is never sent on.
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    Ok(Some(ResponseHead::Final {
        parts,
        fields: RawFields::default(),
        framing,
        keep_alive,
    }))
}

/// What a response's fields say about its framing, gathered in one pass.
#[derive(Default)]
struct FramingFields<'h> {
    /// The `Transfer-Encoding` values, every line joined as one list.
    transfer_encoding: Option<Vec<&'h [u8]>>,
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
            let codings = value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty());
            self.transfer_encoding
                .get_or_insert_with(Vec::new)
                .extend(codings);
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.close |= has_token(value, b"close");
            self.connection_names_fields |= names_fields(value);
        }
    }
}

/// How a response body is delimited (RFC 9112 §6.3), and whether the connection can
/// carry another request after it.
fn response_framing(
    status: StatusCode,
    version: Version,
    fields: &FramingFields<'_>,
    asked: Asked,
) -> Result<(ResponseFraming, bool), ResponseError> {
    let mut keep_alive = version == Version::HTTP_11 && !fields.close;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((ResponseFraming::Switched, false));
    }
    if asked.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((ResponseFraming::Length(0), keep_alive));
    }
    if let Some(codings) = &fields.transfer_encoding {
        let chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
        // Codings the proxy cannot undo would reach the client unannounced: the
        // `Transfer-Encoding` that names them is hop-by-hop.
        if codings.len() != 1 || !codings.iter().all(chunked) {
            return Err(ResponseError("unsupported transfer coding"));
        }
        if fields.content_length {
            // Both framings: a smuggling attempt or a broken backend. Trust
            // Transfer-Encoding (RFC 9112 §6.3) and never reuse the connection.
            keep_alive = false;
        }
        return Ok((ResponseFraming::Chunked(ChunkedDecoder::new()), keep_alive));
    }
    Ok(match fields.length {
        Some(Ok(n)) => (ResponseFraming::Length(n), keep_alive),
        Some(Err(why)) => return Err(ResponseError(why)),
        None => (ResponseFraming::UntilClose, false),
    })
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(pub &'static str);

/// What the decoder produced from the bytes it was given.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The last chunk's trailer fields (only those allowed in trailers), then the end.
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// A chunked body's decoder (RFC 9112 §7.1): fed any split of the wire bytes, it gives
/// the same data, or the same error.
#[derive(Debug, Clone, Copy)]
pub struct ChunkedDecoder {
    state: Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: Chunked::Size,
        }
    }

    /// Whether the last chunk and trailer section were read.
    pub fn is_done(&self) -> bool {
        self.state == Chunked::Done
    }

    /// Decodes what `buf` holds, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        let bad = ChunkedError;
        loop {
            match self.state {
                Chunked::Done => return Ok(Decoded::End),
                Chunked::Size => {
                    let Some(eol) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(bad("chunk size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if eol > MAX_CHUNK_LINE {
                        return Err(bad("chunk size line too long"));
                    }
                    let line = buf[..eol]
                        .strip_suffix(b"\r")
                        .ok_or(bad("chunk size line not ended by CRLF"))?;
                    let digits = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    let rest = &line[digits..];
                    if digits == 0 || digits > 15 || !is_chunk_ext(rest) {
                        return Err(bad("invalid chunk size"));
                    }
                    let size = line[..digits].iter().fold(0u64, |n, &b| {
                        n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0))
                    });
                    buf.advance(eol + 1);
                    self.state = if size == 0 {
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
                    self.state = match remaining - n as u64 {
                        0 => Chunked::DataEnd,
                        left => Chunked::Data(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(bad("chunk data not followed by CRLF"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = Chunked::Size;
                }
                Chunked::Trailers => return self.trailers(buf),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = Chunked::Done;
            return Ok(Decoded::End);
        }
        if buf.len() < 2 {
            if buf.first().is_some_and(|&b| b != b'\r') && !buf[0].is_ascii_alphanumeric() {
                return Err(ChunkedError("invalid trailer section"));
            }
            return Ok(Decoded::NeedMore);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((len, fields))) if len <= MAX_HEAD_BYTES => {
                let mut trailers = HeaderMap::new();
                for f in fields {
                    if !is_allowed_trailer(f.name.as_bytes()) || !is_field_value(f.value) {
                        continue;
                    }
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(f.name.as_bytes()),
                        http::HeaderValue::from_bytes(f.value),
                    ) {
                        trailers.append(name, value);
                    }
                }
                buf.advance(len);
                self.state = Chunked::Done;
                Ok(Decoded::Trailers(trailers))
            }
            Ok(httparse::Status::Complete(_)) => Err(ChunkedError("trailer section too large")),
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                Err(ChunkedError("trailer section too large"))
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(_) => Err(ChunkedError("invalid trailer section")),
        }
    }
}

/// Whether what follows a chunk size is nothing or chunk extensions (`;name[=value]`,
/// with optional whitespace before each `;`). Extensions are read and dropped.
fn is_chunk_ext(rest: &[u8]) -> bool {
    let rest = rest.trim_ascii_start();
    rest.is_empty()
        || (rest.starts_with(b";")
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80))
}

/// Appends one `name: value` field line (a header or a trailer).
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes.
pub fn put_chunk_size(out: &mut Vec<u8>, len: usize) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Appends a `content-length` field.
pub fn put_content_length(out: &mut Vec<u8>, len: u64) {
    let _ = write!(out, "content-length: {len}\r\n");
}

/// Appends the last chunk of a chunked body, with those of its trailer fields that are
/// allowed in trailers.
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if is_allowed_trailer(name.as_str().as_bytes()) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only (whitespace around them aside), no sign.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
