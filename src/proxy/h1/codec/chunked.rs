//! The chunked transfer coding's decoder (RFC 9112 §7.1), for request and response
//! bodies alike.
//!
//! In: body bytes, in any split. Out: data, the filtered trailer section, the end.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::{MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::proxy::h1::head::{is_allowed_trailer, is_field_value};

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
        // No trailers: an empty line, CRLF or a bare LF (accepted in heads too).
        for end in [&b"\r\n"[..], b"\n"] {
            if buf.starts_with(end) {
                buf.advance(end.len());
                self.state = Chunked::Done;
                return Ok(Decoded::End);
            }
        }
        if buf.len() < 2 {
            // A lone first byte is judged as httparse would judge it with more behind:
            // CR, or the start of a field name (any tchar, RFC 9110 §5.6.2).
            if buf.first().is_some_and(|&b| b != b'\r' && !is_tchar(b)) {
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

/// Whether `b` may be in a token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether what follows a chunk size is nothing or chunk extensions (`;name[=value]`,
/// with optional spaces or tabs before each `;`). Extensions are read and dropped.
fn is_chunk_ext(rest: &[u8]) -> bool {
    // BWS is spaces and tabs only: a CR here is a bare CR, refused.
    let start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(rest.len());
    let rest = &rest[start..];
    rest.is_empty()
        || (rest.starts_with(b";")
            && rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80))
}
