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

mod chunked;
mod request;
mod response;

use std::io::Write;

use http::HeaderMap;

use super::head::is_allowed_trailer;
pub use chunked::{ChunkedDecoder, ChunkedError, Decoded};
pub use request::{parse_request_head, RequestError, RequestFraming, RequestHead};
pub use response::{parse_response_head, Asked, ResponseError, ResponseFraming, ResponseHead};

/// Most field lines a head may carry, from a client or a backend.
pub const MAX_HEADERS: usize = 128;
/// Largest head (and trailer section) accepted, from a client or a backend.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
pub(super) const MAX_CHUNK_LINE: usize = 4096;

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

/// Consumes CRLF or LF lines at the front of `buf` (RFC 9112 §2.2).
fn skip_empty_lines(buf: &mut bytes::BytesMut) {
    use bytes::Buf;
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

#[cfg(test)]
mod tests;
