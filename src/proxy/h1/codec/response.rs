//! Response heads from backends: the status line, framing (RFC 9112 §6.3), reuse.
//!
//! In: bytes from a backend and what the request asked. Out: a judged [`ResponseHead`].

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::{StatusCode, Version};

use super::{parse_content_length, skip_empty_lines, ChunkedDecoder, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::proxy::h1::head::{has_token, is_hop_by_hop_name, names_fields, FieldScan, RawFields};

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
    let mut request_id = false;
    for h in parsed.headers.iter() {
        // httparse's strict parse already admits only `HeaderValue` bytes.
        let name = h.name.as_bytes();
        fields.see(name, h.value);
        request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        scan.facts.dated |= name.eq_ignore_ascii_case(b"date");
        scan.see(name, h.value, is_hop_by_hop_name(name));
    }
    if let Some(Ok(length)) = fields.length {
        scan.facts.content_length = Some(length);
    }
    let spans = scan.finish(len);
    let (framing, keep_alive) = response_framing(status, version, &fields, asked)?;
    // Kept raw unless a field must be rewritten: a 101 keeps `Upgrade`, both framings
    // lose `Content-Length`, `Connection` may name more fields to drop, and the proxy
    // sets `X-Request-Id` in the map, where it replaces an echo of it.
    let both_framings = fields.transfer_encoding.is_some() && fields.content_length;
    let rewrite = status == StatusCode::SWITCHING_PROTOCOLS
        || both_framings
        || fields.connection_names_fields
        || request_id;
    let first = parsed
        .headers
        .first()
        .map(|h| h.name.as_ptr() as usize - buf.as_ptr() as usize);
    let head = buf.split_to(len).freeze();
    let raw = RawFields::of_head(&head, first, spans);
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
