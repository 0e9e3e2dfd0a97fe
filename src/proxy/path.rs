//! Path normalisation, before routing.
//!
//! In: the path of an origin-form request target, without its query.
//! Out: the path the proxy routes on and forwards, or why the request is refused (400).
//!
//! Why: a route's path must be a boundary. A backend that resolves `/public/../internal`
//! itself would serve `/internal` to a request routed under `/public`; so the proxy
//! resolves it first, routes on the result, and forwards the result. The rules are
//! RFC 3986 §6.2.2 and §5.2.4 with Envoy's `normalize_path` choices, plus nginx's
//! `merge_slashes`.

use std::borrow::Cow;

/// Why a path is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding (a % not followed by two hex digits)")]
    BadPercentEncoding,
    /// `%00`: no backend should be handed a NUL.
    #[error("the path encodes a NUL byte (%00)")]
    EncodedNul,
    /// Not an absolute path.
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// The normalised form of `path`; borrowed (no allocation) when it is already normal.
///
/// Encoded unreserved characters are decoded (`%7e` → `~`, `%2e` → `.`), other
/// encodings keep their meaning with upper-case hex (`%2f` → `%2F`: an encoded slash is
/// data, not a separator), runs of `/` merge, and dot-segments are removed, `..` above
/// the root staying at the root.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether nothing in `path` needs work: the common case, one scan, no allocation.
fn is_normal(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' if !is_kept_encoding(path.get(i + 1..i + 3)) => return false,
            b'/' if prev == b'/' => return false,
            b'/' | b'.' if prev == b'.' && is_dot_segment_end(path, i) => return false,
            b'.' if prev == b'/' && is_dot_segment_end(path, i + 1) => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

/// Whether `%` followed by `hex` stays as it is: upper-case hex, neither NUL nor an
/// unreserved character.
fn is_kept_encoding(hex_digits: Option<&[u8]>) -> bool {
    let Some(&[h, l]) = hex_digits else {
        return false;
    };
    let upper = |b: u8| b.is_ascii_digit() || (b'A'..=b'F').contains(&b);
    if !upper(h) || !upper(l) {
        return false;
    }
    let byte = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
    byte != 0 && !(byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
}

/// Whether a segment that began with dots ends at `end` as `.` or `..`.
fn is_dot_segment_end(path: &[u8], end: usize) -> bool {
    let start = path[..end]
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(0, |s| s + 1);
    let segment = &path[start
        ..path[end..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(path.len(), |n| end + n)];
    segment == b"." || segment == b".."
}

/// Decodes encoded unreserved characters and upper-cases the hex of the others.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).and_then(|&h| hex(h)),
            path.get(i + 2).and_then(|&l| hex(l)),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let byte = hi << 4 | lo;
        if byte == 0 {
            return Err(PathError::EncodedNul);
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                path[i + 1].to_ascii_uppercase(),
                path[i + 2].to_ascii_uppercase(),
            ]);
        }
        i += 3;
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §5.2.4 over an absolute path, merging empty segments on the way.
fn remove_dot_segments(path: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        match segment {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        // Only ASCII bytes were decoded, and only into ASCII: the input was a &str.
        out.push_str(std::str::from_utf8(segment).unwrap_or_default());
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_as_rfc_3986_says() {
        let rows: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/../b", Ok("/b")),
            ("/public/../internal", Ok("/internal")),
            ("/public/%2e%2e/internal", Ok("/internal")),
            ("/public/%2E%2e/internal", Ok("/internal")),
            ("/public/.%2e/internal", Ok("/internal")),
            ("/a//b", Ok("/a/b")),
            ("///a", Ok("/a")),
            ("/..", Ok("/")),
            ("/../../a", Ok("/a")),
            ("/a/b/..", Ok("/a/")),
            ("/a/.", Ok("/a/")),
            ("/%41%62c", Ok("/Abc")),
            ("/a%2fb", Ok("/a%2Fb")),
            ("/a/..%2Fb", Ok("/a/..%2Fb")),
            ("/a%5c..%5cb", Ok("/a%5C..%5Cb")),
            ("/%7e", Ok("/~")),
            ("/a.b/..c/...", Ok("/a.b/..c/...")),
            ("/.well-known/x", Ok("/.well-known/x")),
            ("/a/.b", Ok("/a/.b")),
            ("/a%zz", Err(PathError::BadPercentEncoding)),
            ("/a%2", Err(PathError::BadPercentEncoding)),
            ("/a%00", Err(PathError::EncodedNul)),
            ("a/b", Err(PathError::NotAbsolute)),
        ];
        for (path, want) in rows {
            let got = normalize(path).map(|p| p.into_owned());
            assert_eq!(got, want.map(str::to_string), "{path:?}");
        }
    }

    #[test]
    fn common_paths_are_borrowed() {
        for path in [
            "/",
            "/shop/cart",
            "/a/b.css",
            "/api/v1/items/42",
            "/a/.b/c.",
            "/x..y",
        ] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(_))), "{path:?}");
        }
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        let alphabet = b"/.%2eEab0fF";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 12) as usize;
            let mut path = String::from("/");
            let mut s = seed;
            for _ in 0..len {
                path.push(alphabet[(s % alphabet.len() as u64) as usize] as char);
                s /= alphabet.len() as u64;
            }
            let Ok(normal) = normalize(&path) else {
                continue;
            };
            let again = normalize(&normal).expect("a normal form stays valid");
            assert_eq!(again, normal, "{path:?}");
            assert!(matches!(again, Cow::Borrowed(_)), "{path:?} → {normal:?}");
            for bad in ["//", "/./", "/../", "%2e", "%2E"] {
                assert!(!normal.contains(bad), "{path:?} → {normal:?}");
            }
            assert!(
                !normal.ends_with("/.") && !normal.ends_with("/.."),
                "{path:?} → {normal:?}"
            );
        }
    }
}
