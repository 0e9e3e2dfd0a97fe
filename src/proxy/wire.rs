//! Pieces of the HTTP/1.1 wire form written on both sides of the proxy.
//!
//! In: header fields, chunk sizes, comma-separated header values.
//! Out: bytes appended to a write buffer (the client side in `http1`, the upstream side
//! in `upstream`), whether a value lists a token, a `Content-Length` value.

use std::io::Write;

use http::HeaderMap;

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

/// Appends the last chunk of a chunked body, with its trailer fields.
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
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

/// Whether a comma-separated header value lists `token` (case-insensitively).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(parse_content_length(b" 1234 "), Some(1234));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"-1",
            b"1 2",
            b"+1",
            b"0x10",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunks_fields_and_tokens() {
        let mut out = Vec::new();
        put_chunk_size(&mut out, 255);
        put_field(&mut out, b"x-a", b"1");
        put_content_length(&mut out, 1234567890);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("7"));
        put_last_chunk(&mut out, Some(&trailers));
        assert_eq!(
            out,
            b"ff\r\nx-a: 1\r\ncontent-length: 1234567890\r\n0\r\nx-checksum: 7\r\n\r\n"
        );
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
