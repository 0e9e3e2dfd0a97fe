//! The head type and the one field policy, for both directions.
//!
//! In: a head's field lines as the codec accepted them ([`RawFields`]), or a header map
//! (HTTP/2, rewritten heads).
//! Out: the fields the next hop gets: hop-by-hop ones removed (the fixed list and every
//! field any `Connection` line names), trailers filtered ([`is_allowed_trailer`]), and,
//! for requests, the forwarding fields judged ([`is_forwarding_name`]; the head that goes
//! upstream is `super::upstream_head`'s). Upgrade requests keep
//! `Connection`/`Upgrade` so the upstream can answer 101.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    is_hop_by_hop_name(name.as_str().as_bytes())
}

/// [`is_fixed_hop_by_hop`] for a name as it came off the wire, in any case.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        // Not hop-by-hop in RFC 9110, but answered here: the body is read before a
        // backend sees the request, so no backend may answer 100 to it.
        6 => &[b"expect"],
        7 => &[b"upgrade", b"trailer"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        19 => &[b"proxy-authorization"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// A message's header fields as they came off the wire: the lines after the request or
/// status line, shared with the read buffer. Used for a client request read by the lean
/// HTTP/1.1 path, and for any upstream response.
///
/// Why: most heads pass through unchanged, and copying these lines to the next hop as
/// they are ([`RawFields::end_to_end`]) saves building a header map and writing it back
/// out, which cost about as much as parsing the head. Only a head that needs no
/// rewriting beyond dropping hop-by-hop fields is kept this way; hyper's paths turn
/// it into a header map ([`RawFields::append_to`]).
#[derive(Default, Debug)]
pub struct RawFields {
    lines: Bytes,
    /// Where the `Host` value is in `lines`, when the lean HTTP/1.1 path saw one:
    /// routing and the upstream head both need it.
    host: Option<(usize, usize)>,
    /// Where to cut `lines` so they can be copied in a few slices, when the parser found
    /// that possible (see [`FieldScan`]); relative to `lines`.
    spans: Option<Spans>,
}

/// Most fields a head may drop on the way and still be copied in slices.
const MAX_CUTS: usize = 3;

/// A head's field lines as the next hop gets them: everything up to `end` but the
/// `cuts`, each a whole line. Every line is `name: value\r\n` with a value that needs
/// no trimming, so copying them is writing what [`RawFields::end_to_end`] yields.
#[derive(Clone, Copy, Debug)]
pub struct Spans {
    cuts: [(u32, u32); MAX_CUTS],
    cut_count: u8,
    end: u32,
    /// What the parser learnt on the way about the fields kept or cut.
    pub facts: FieldFacts,
}

/// What a parser noted about a head's fields while scanning them, for its writer.
#[derive(Clone, Copy, Default, Debug)]
pub struct FieldFacts {
    /// The `Content-Length` value, if the head had one.
    pub content_length: Option<u64>,
    /// Whether the head has a `Date` field.
    pub dated: bool,
}

/// Follows a head's fields as httparse returns them (slices of the buffer given to
/// [`FieldScan::new`]), to learn whether the lines the next hop gets can be copied in a
/// few slices rather than rewritten field by field.
///
/// Why: nearly every head is written canonically (`name: value\r\n`, one space) and
/// carries at most a couple of hop-by-hop fields. Writing it field by field meant two
/// `memchr` calls and four small copies per field, each way, at every request.
pub struct FieldScan<'b> {
    buf: &'b [u8],
    cuts: [(u32, u32); MAX_CUTS],
    cut_count: usize,
    /// Where the last field's line ended.
    end: usize,
    copyable: bool,
    /// What the parser notes for its writer.
    pub facts: FieldFacts,
}

impl<'b> FieldScan<'b> {
    /// Starts following the fields of the head at the front of `buf`.
    pub fn new(buf: &'b [u8]) -> Self {
        FieldScan {
            buf,
            cuts: [(0, 0); MAX_CUTS],
            cut_count: 0,
            end: 0,
            copyable: buf.len() <= u32::MAX as usize,
            facts: FieldFacts::default(),
        }
    }

    /// Notes one field, in order; `cut` when the next hop must not get it.
    #[inline]
    pub fn see(&mut self, name: &[u8], value: &[u8], cut: bool) {
        if !self.copyable {
            return;
        }
        let base = self.buf.as_ptr() as usize;
        let start = name.as_ptr() as usize - base;
        let colon = start + name.len();
        let value_start = value.as_ptr() as usize - base;
        let line_end = value_start + value.len() + 2;
        let canonical = value_start == colon + 2
            && self.buf.get(colon..value_start) == Some(b": ")
            && !matches!(value.last(), None | Some(b' ' | b'\t'))
            && self.buf.get(line_end - 2..line_end) == Some(b"\r\n");
        if !canonical || (cut && self.cut_count == MAX_CUTS) {
            self.copyable = false;
            return;
        }
        if cut {
            self.cuts[self.cut_count] = (start as u32, line_end as u32);
            self.cut_count += 1;
        }
        self.end = line_end;
    }

    /// The slices to copy, if the head of `len` bytes allows it; relative to the head.
    pub fn finish(self, len: usize) -> Option<Spans> {
        let ends_canonically = self.buf.get(len.saturating_sub(2)..len) == Some(b"\r\n");
        // With no field at all, nothing is copied and `end` stays 0.
        let complete = self.end == 0 || self.end + 2 == len;
        (self.copyable && ends_canonically && complete).then_some(Spans {
            cuts: self.cuts,
            cut_count: self.cut_count as u8,
            end: self.end as u32,
            facts: self.facts,
        })
    }
}

impl RawFields {
    /// The fields of `head`, a complete response head httparse accepted, with the
    /// slices to copy them in if its [`FieldScan`] found some. `first` is where its
    /// first field line starts, when the parser knows (it has one).
    pub fn of_head(head: &Bytes, first: Option<usize>, spans: Option<Spans>) -> Self {
        let start = first
            .or_else(|| memchr::memchr(b'\n', head).map(|nl| nl + 1))
            .unwrap_or(head.len());
        RawFields {
            lines: head.slice(start..),
            host: None,
            spans: spans.and_then(|spans| spans.shifted(start as u32)),
        }
    }

    /// The fields of `head`, a complete request head httparse accepted, whose `Host`
    /// value is at `host` (a byte range of `head`).
    pub fn of_request_head(
        head: &Bytes,
        first: Option<usize>,
        host: Option<(usize, usize)>,
        spans: Option<Spans>,
    ) -> Self {
        let mut fields = RawFields::of_head(head, first, spans);
        let skipped = head.len() - fields.lines.len();
        fields.host = host.map(|(start, end)| (start - skipped, end - skipped));
        fields
    }

    /// Appends the end-to-end fields, less any the parser chose to cut, in a few slices,
    /// and returns what the parser noted about them; `None`, with nothing written, when
    /// the parser found the lines cannot be copied that way (see [`FieldScan`]).
    pub fn copy_to(&self, out: &mut Vec<u8>) -> Option<FieldFacts> {
        let spans = self.spans.as_ref()?;
        let mut at = 0;
        for &(start, end) in &spans.cuts[..usize::from(spans.cut_count)] {
            out.extend_from_slice(&self.lines[at..start as usize]);
            at = end as usize;
        }
        out.extend_from_slice(&self.lines[at..spans.end as usize]);
        Some(spans.facts)
    }

    /// Every field, hop-by-hop ones included: name and value (trimmed, as httparse
    /// reads them).
    pub fn all(&self) -> Lines<'_> {
        Lines(&self.lines)
    }

    /// The fields a client may see: hop-by-hop ones left out.
    pub fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.all().filter(|(name, _)| !is_hop_by_hop_name(name))
    }

    /// The first field named `name` (in any case), sharing the head.
    pub fn get(&self, name: &[u8]) -> Option<HeaderValue> {
        let (_, value) = self.all().find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        HeaderValue::from_maybe_shared(self.lines.slice_ref(value)).ok()
    }

    /// The `Host` value, sharing the head (the codec judged it a valid host).
    pub fn host_bytes(&self) -> Option<Bytes> {
        let (start, end) = self.host?;
        Some(self.lines.slice(start..end))
    }

    /// The `Host` field, if it is text.
    pub fn host(&self) -> Option<&str> {
        let (start, end) = self.host?;
        std::str::from_utf8(&self.lines[start..end]).ok()
    }

    /// Every field, hop-by-hop ones included, in a header map with room for `extra`
    /// more, values still sharing the head; `None` if a name or value is not valid.
    /// For a head that must be rewritten.
    pub fn into_full_map(self, extra: usize) -> Option<HeaderMap> {
        let mut headers = HeaderMap::new();
        headers.reserve(self.all().count() + extra);
        for (name, value) in self.all() {
            let name = HeaderName::from_bytes(name).ok()?;
            let value = HeaderValue::from_maybe_shared(self.lines.slice_ref(value)).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }

    /// Appends the end-to-end fields to `headers`, values still sharing the head.
    pub fn append_to(self, headers: &mut HeaderMap) {
        for (name, value) in self.end_to_end() {
            // Both were validated when the head was read.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.lines.slice_ref(value)),
            ) {
                headers.append(name, value);
            }
        }
    }
}

impl Spans {
    /// The same slices, relative to `start` bytes further into the head; `None` if a
    /// field began before it (no field does after a start line).
    fn shifted(mut self, start: u32) -> Option<Self> {
        let shift = |at: u32| at.checked_sub(start);
        for cut in &mut self.cuts[..usize::from(self.cut_count)] {
            *cut = (shift(cut.0)?, shift(cut.1)?);
        }
        // No field: nothing to copy.
        self.end = shift(self.end).unwrap_or(0);
        Some(self)
    }
}

/// The fields of a validated head, one line at a time.
pub struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // httparse allows no space before the colon, so the name is all that precedes it;
        // the blank line that ends the head has none.
        let colon = memchr::memchr(b':', self.0)?;
        let rest = &self.0[colon + 1..];
        let nl = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let field = (&self.0[..colon], trim_ows(&rest[..nl]));
        self.0 = rest.get(nl + 1..).unwrap_or_default();
        Some(field)
    }
}

/// A field value without the optional whitespace (and `\r`) around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &value[start..end]
}

/// Whether a `Connection` value names fields to drop: any token but `close` and
/// `keep-alive`.
pub fn names_fields(connection: &[u8]) -> bool {
    connection
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Whether a `Connection` value lists `field` as an option (case-insensitively).
pub fn names_field(connection: &[u8], field: &[u8]) -> bool {
    has_token(connection, field)
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a field may be sent on as a trailer (RFC 9110 §6.5.1): not hop-by-hop, and
/// none of the fields that frame, route, authenticate or describe how to process the
/// message, which a recipient could otherwise be tricked into merging into the head.
pub fn is_allowed_trailer(name: &[u8]) -> bool {
    const REFUSED: &[&[u8]] = &[
        b"content-length",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"host",
        b"authorization",
        b"cookie",
        b"set-cookie",
        b"cache-control",
        b"expires",
        b"age",
        b"location",
        b"vary",
        b"www-authenticate",
        b"expect",
        b"range",
        b"max-forwards",
    ];
    let conditional = name.len() > 3 && name[..3].eq_ignore_ascii_case(b"if-");
    // Forwarding fields as trailers would reach a backend that merges trailers into
    // the head unvetted by the trust policy.
    !(conditional
        || is_hop_by_hop_name(name)
        || is_forwarding_name(name)
        || REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r)))
}

/// Whether a client-sent field is one fallthrough sets itself, or believes only from a
/// trusted proxy: every `X-Forwarded-*`, `X-Real-IP`, `Forwarded` and `X-Request-Id`,
/// in any case, and spelt with `_` for `-` too: servers that map both to the same CGI
/// name (`HTTP_X_FORWARDED_FOR`) would otherwise take `X_Forwarded_For` as the real one.
pub fn is_forwarding_name(name: &[u8]) -> bool {
    let same = |got: &[u8], want: &[u8]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(&a, &b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
    };
    match name.len() {
        9 => same(name, b"x-real-ip") || same(name, b"forwarded"),
        12 => same(name, b"x-request-id"),
        n => n > 12 && same(&name[..12], b"x-forwarded-"),
    }
}

/// Whether `value` may be a field value: what [`HeaderValue`] accepts.
pub fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::EXPECT,
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHORIZATION,
    ]
}

/// Whether the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"upgrade"))
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for the next hop.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names, no hashing, before any removal.
    if !headers.keys().any(is_fixed_hop_by_hop) {
        return;
    }
    // Every Connection line counts, not only the first.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .filter(|n| n != header::UPGRADE && n != header::CONNECTION)
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade = keep_upgrade
        .then(|| headers.remove(header::UPGRADE))
        .flatten();
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A header map of `pairs`, in order.
    pub(in crate::proxy::h1) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn raw_fields_read_as_httparse_does_and_leave_hop_by_hop_ones_out() {
        let head = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nHost:  a:8080 \r\nKeep-Alive: 5\r\nx-empty:\r\n\
              Set-Cookie: a=1; Path=/\nTE: trailers\r\nSet-Cookie:\tb=2\r\n\r\n",
        );
        let fields = RawFields::of_request_head(&head, None, Some((24, 30)), None);
        let all: Vec<_> = fields.all().collect();
        let expected: [(&[u8], &[u8]); 6] = [
            (b"Host", b"a:8080"),
            (b"Keep-Alive", b"5"),
            (b"x-empty", b""),
            (b"Set-Cookie", b"a=1; Path=/"),
            (b"TE", b"trailers"),
            (b"Set-Cookie", b"b=2"),
        ];
        assert_eq!(all, expected);
        let kept: Vec<_> = fields.end_to_end().map(|(n, _)| n).collect();
        assert_eq!(
            kept,
            [&b"Host"[..], b"x-empty", b"Set-Cookie", b"Set-Cookie"]
        );
        assert_eq!(fields.host(), Some("a:8080"));
        let mut map = HeaderMap::new();
        fields.append_to(&mut map);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
        assert!(!map.contains_key("te") && !map.contains_key("keep-alive"));
    }

    /// The bytes a response head's fields are copied as when they can be copied in
    /// slices, checked against writing its end-to-end fields one by one.
    fn copied(head: &'static [u8]) -> Option<Vec<u8>> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut slots);
        let Ok(httparse::Status::Complete(len)) = parsed.parse(head) else {
            panic!("not a complete head: {head:?}");
        };
        let mut scan = FieldScan::new(head);
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            scan.see(name, h.value, is_hop_by_hop_name(name));
        }
        let fields = RawFields::of_head(&Bytes::from_static(head), None, scan.finish(len));
        let mut out = Vec::new();
        fields.copy_to(&mut out)?;
        let mut one_by_one = Vec::new();
        for (name, value) in fields.end_to_end() {
            crate::proxy::h1::codec::put_field(&mut one_by_one, name, value);
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&one_by_one),
            "{head:?}"
        );
        Some(out)
    }

    #[test]
    fn canonical_fields_are_copied_in_slices_around_the_hop_by_hop_ones() {
        let copy = |head| copied(head).map(|out| String::from_utf8(out).unwrap());
        assert_eq!(
            copy(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nA: 1\r\nKeep-Alive: t=5\r\n\
                   B: 2, 3\r\nTE: trailers\r\n\r\nbody"
            )
            .as_deref(),
            Some("A: 1\r\nB: 2, 3\r\n")
        );
        assert_eq!(
            copy(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n").as_deref(),
            Some("A: 1\r\nB: 2\r\n")
        );
        assert_eq!(
            copy(b"HTTP/1.1 204 No Content\r\n\r\n").as_deref(),
            Some("")
        );
        assert_eq!(
            copy(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").as_deref(),
            Some("")
        );
    }

    #[test]
    fn fields_written_any_other_way_are_left_to_the_field_by_field_path() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nA:  1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nA:1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: 1 \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: 1\nB: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: 1\r\n\n",
            // More hop-by-hop fields than there are cuts.
            b"HTTP/1.1 200 OK\r\nConnection: a\r\nKeep-Alive: 1\r\nTE: t\r\nTrailer: x\r\n\r\n",
        ] {
            assert_eq!(copied(head), None, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarding_names_in_any_spelling_and_never_as_trailers() {
        for name in [
            "X-Forwarded-For",
            "x_forwarded_for",
            "X-FORWARDED-PREFIX",
            "x_forwarded_host",
            "X-Real-IP",
            "x_real_ip",
            "Forwarded",
            "x-request-id",
            "X_Request_Id",
        ] {
            assert!(is_forwarding_name(name.as_bytes()), "{name}");
            assert!(!is_allowed_trailer(name.as_bytes()), "{name} as a trailer");
        }
        for name in [
            "x-forwarded",
            "x-real-ips",
            "forwarded-for",
            "x-request",
            "x_custom",
        ] {
            assert!(!is_forwarding_name(name.as_bytes()), "{name}");
        }
        assert!(is_allowed_trailer(b"x-checksum"));
    }
}
