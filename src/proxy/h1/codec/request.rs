//! Request heads: the request line, the field rules, the body's framing.
//!
//! In: bytes from a client. Out: a judged [`RequestHead`], or why it is refused.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode, Uri, Version};

use super::{parse_content_length, skip_empty_lines, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::proxy::h1::head::{
    has_token, is_forwarding_name, is_hop_by_hop_name, names_field, names_fields, FieldScan,
    RawFields,
};

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
    /// client sent forwarding fields (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`,
    /// `X-Request-Id`), or an absolute-form target replaces `Host`.
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
    let first = parsed.headers.first().map(|h| range(h.name.as_bytes()).0);
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
        fields: RawFields::of_request_head(&head, first, facts.host, spans),
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
        // No value check here: httparse's strict parse admits exactly the bytes
        // `HeaderValue` does (HTAB, SP to `~`, obs-text), tested in `codec::tests`.
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
            _ if is_forwarding_name(name) => {
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
