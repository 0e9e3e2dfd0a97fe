//! The head type and the one field policy, for both directions.
//!
//! In: a head's field lines as the codec accepted them ([`RawFields`]), or a header map
//! (HTTP/2, rewritten heads).
//! Out: the fields the next hop gets: hop-by-hop ones removed (the fixed list and every
//! field any `Connection` line names), trailers filtered ([`is_allowed_trailer`]), and,
//! for requests, the `X-Forwarded-*` fields set ([`UpstreamHead`]). Upgrade requests keep
//! `Connection`/`Upgrade` so the upstream can answer 101.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
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

/// A request head on its way upstream: the client's head, rewritten, and the
/// forwarding fields that go behind its headers.
///
/// The fields are kept out of the header map: inserting them there cost a hashed insert
/// each per request for headers that are only ever written out.
pub struct UpstreamHead {
    pub parts: http::request::Parts,
    /// The client's fields not in `parts`, kept raw: only ever a head with no
    /// forwarding fields and no `Connection` naming fields (see [`RawFields`]).
    pub fields: RawFields,
    /// `X-Forwarded-For`: a trusted proxy's list, if it sent one, then the peer.
    pub forwarded_for: HeaderValue,
    /// The scheme the client used to reach fallthrough (`X-Forwarded-Proto` unless a
    /// trusted proxy sent its own).
    pub forwarded_proto: &'static str,
    /// The host the client asked for, if it named one (`X-Forwarded-Host` unless a
    /// trusted proxy sent its own, and `X-Forwarded-Port`'s source).
    pub forwarded_host: Option<NamedHost>,
    /// `X-Real-IP`: the client the request speaks for (see [`crate::proxy::trust`]).
    pub real_ip: HeaderValue,
    /// `X-Request-Id`, the same on every attempt.
    pub request_id: HeaderValue,
    /// Which fields a trusted proxy sent: kept in `parts` as they are, not set here.
    pub kept: Kept,
    /// The request target sent instead of the client's, when its path was normalised.
    pub target: Option<String>,
    /// The request asks to switch protocols: a 101 answer is expected, not refused.
    pub upgrade: bool,
    /// The client's connection, for FastCGI's `REMOTE_ADDR` and `SERVER_ADDR`.
    pub peers: crate::proxy::fastcgi::params::Peers,
}

/// The forwarding fields a trusted proxy sent, which go upstream as it sent them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub proto: bool,
    pub host: bool,
    pub port: bool,
}

/// What the connection and the trust in its peer decide for the forwarding fields.
pub struct Forwarding<'c> {
    /// The peer's address as text, which `X-Forwarded-For` ends with.
    pub peer: &'c HeaderValue,
    /// The peer is a trusted proxy: its forwarding fields are kept (and its
    /// `X-Forwarded-For` appended to). Otherwise every one is removed.
    pub trusted: bool,
    /// The scheme the client used.
    pub proto: &'static str,
    /// `X-Real-IP`: the client the request speaks for.
    pub real_ip: HeaderValue,
    pub request_id: HeaderValue,
}

/// The host a request named (its authority or `Host`), as it goes upstream.
#[derive(Debug)]
pub enum NamedHost {
    /// From a header map or a target's authority.
    Value(HeaderValue),
    /// A client's `Host` value, sharing the head the codec judged: not checked again.
    Raw(Bytes),
}

impl NamedHost {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            NamedHost::Value(value) => value.as_bytes(),
            NamedHost::Raw(raw) => raw,
        }
    }

    /// The port it names, if any (`host:8080`, `[::1]:8443`).
    fn port(&self) -> Option<&[u8]> {
        let host = self.as_bytes();
        let colon = memchr::memrchr(b':', host)?;
        let port = &host[colon + 1..];
        let bracketed_v6 = host.first() == Some(&b'[');
        let after_bracket = !bracketed_v6 || host[..colon].ends_with(b"]");
        (!port.is_empty() && port.iter().all(u8::is_ascii_digit) && after_bracket).then_some(port)
    }
}

/// Removes the forwarding fields (see [`is_forwarding_name`]) whose names `pick` picks.
fn remove_forwarding(headers: &mut HeaderMap, pick: impl Fn(&str) -> bool) {
    let sent: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_forwarding_name(n.as_str().as_bytes()) && pick(n.as_str()))
        .cloned()
        .collect();
    for name in sent {
        headers.remove(name);
    }
}

static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl UpstreamHead {
    /// Builds the upstream head. Forwarding fields the client sent (see
    /// [`is_forwarding_name`]) are taken out of `parts`, or, from a trusted proxy,
    /// kept: its `X-Forwarded-For` becomes the start of ours and its
    /// `X-Forwarded-Proto`, `-Host`, `-Port` (every `X-Forwarded-*` spelt with dashes)
    /// and `Forwarded` go on as they are. `X-Real-IP` is always fallthrough's: the client
    /// it found, which the access log and FastCGI's `REMOTE_ADDR` name too (an L7 load
    /// balancer passes a client's own `X-Real-IP` through), as ingress-nginx sets it.
    /// So is `Expect` taken out: the proxy reads the body before the upstream sees the
    /// request, so any 100-continue is over.
    pub fn new(
        mut parts: http::request::Parts,
        fields: RawFields,
        how: Forwarding<'_>,
        host: Option<NamedHost>,
    ) -> Self {
        let mut forwarded_for = how.peer.clone();
        let mut kept = Kept::default();
        // One pass over the names; most requests carry none of these.
        let sent_any = parts
            .headers
            .keys()
            .any(|n| n == header::EXPECT || is_forwarding_name(n.as_str().as_bytes()));
        if sent_any {
            parts.headers.remove(header::EXPECT);
            if how.trusted {
                let prior: Vec<u8> = parts
                    .headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect::<Vec<_>>()
                    .join(&b", "[..]);
                if !prior.is_empty() {
                    let joined = [&prior[..], b", ", how.peer.as_bytes()].concat();
                    forwarded_for = HeaderValue::from_bytes(&joined).unwrap_or(forwarded_for);
                }
                parts.headers.remove(&X_FORWARDED_FOR);
                // Its id was read by the proxy and goes on as ours.
                parts.headers.remove(&X_REQUEST_ID);
                parts.headers.remove(&X_REAL_IP);
                // A client behind the proxy may have sent these: nothing vouches for them.
                remove_forwarding(&mut parts.headers, |n| n.contains('_'));
                kept = Kept {
                    proto: parts.headers.contains_key(&X_FORWARDED_PROTO),
                    host: parts.headers.contains_key(&X_FORWARDED_HOST),
                    port: parts.headers.contains_key(&X_FORWARDED_PORT),
                };
            } else {
                remove_forwarding(&mut parts.headers, |_| true);
            }
        }
        UpstreamHead {
            parts,
            fields,
            forwarded_for,
            forwarded_proto: how.proto,
            forwarded_host: host,
            real_ip: how.real_ip,
            request_id: how.request_id,
            kept,
            target: None,
            upgrade: false,
            peers: crate::proxy::fastcgi::params::Peers::UNKNOWN,
        }
    }

    /// The request target in origin-form, as the backend gets it.
    pub fn target(&self) -> &str {
        match &self.target {
            Some(target) => target,
            None => match self.parts.uri.path_and_query().map(|pq| pq.as_str()) {
                Some(pq) if pq.starts_with('/') || pq == "*" => pq,
                _ => "/",
            },
        }
    }

    /// The forwarding fields fallthrough sets, in the order they are written:
    /// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` (the port the client named in
    /// its host, else 80 or 443 by scheme, as Traefik sets it), `X-Real-IP`,
    /// `X-Request-Id`; less those a trusted proxy sent.
    pub fn forwarded(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let port = || {
            let named = self.forwarded_host.as_ref().and_then(NamedHost::port);
            named.unwrap_or(match self.forwarded_proto {
                "https" => b"443",
                _ => b"80",
            })
        };
        let kept = self.kept;
        [
            Some(("x-forwarded-for", self.forwarded_for.as_bytes())),
            (!kept.proto).then_some(("x-forwarded-proto", self.forwarded_proto.as_bytes())),
            self.forwarded_host
                .as_ref()
                .filter(|_| !kept.host)
                .map(|h| ("x-forwarded-host", h.as_bytes())),
            (!kept.port).then(|| ("x-forwarded-port", port())),
            Some(("x-real-ip", self.real_ip.as_bytes())),
            Some(("x-request-id", self.request_id.as_bytes())),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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

    fn upstream(trusted: bool, sent: &[(&str, &str)], host: &'static str) -> UpstreamHead {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.headers = map(sent);
        let peer = HeaderValue::from_static("10.0.0.1");
        let how = Forwarding {
            peer: &peer,
            trusted,
            proto: "https",
            real_ip: HeaderValue::from_static("198.51.100.7"),
            request_id: HeaderValue::from_static("id-1"),
        };
        let host = Some(NamedHost::Value(HeaderValue::from_static(host)));
        UpstreamHead::new(parts, RawFields::default(), how, host)
    }

    fn written(head: &UpstreamHead) -> Vec<(String, String)> {
        let text = |n: &str, v: &[u8]| (n.to_string(), String::from_utf8_lossy(v).into_owned());
        let map = head
            .parts
            .headers
            .iter()
            .map(|(n, v)| text(n.as_str(), v.as_bytes()));
        map.chain(head.forwarded().map(|(n, v)| text(n, v)))
            .collect()
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "gopher"),
        ("x-forwarded-host", "spoofed"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/admin"),
        ("x_forwarded_for", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-request-id", "theirs"),
        ("accept", "*/*"),
    ];

    #[test]
    fn an_untrusted_peers_forwarding_fields_are_replaced() {
        let head = upstream(false, SPOOFED, "shop:8443");
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(
            written(&head),
            [
                pair("accept", "*/*"),
                pair("x-forwarded-for", "10.0.0.1"),
                pair("x-forwarded-proto", "https"),
                pair("x-forwarded-host", "shop:8443"),
                pair("x-forwarded-port", "8443"),
                pair("x-real-ip", "198.51.100.7"),
                pair("x-request-id", "id-1"),
            ]
        );
    }

    #[test]
    fn a_trusted_peers_fields_are_kept_and_appended_to() {
        let head = upstream(true, SPOOFED, "shop");
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        let mut got = written(&head);
        got.sort();
        assert_eq!(
            got,
            [
                pair("accept", "*/*"),
                pair("forwarded", "for=6.6.6.6"),
                pair("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
                pair("x-forwarded-host", "spoofed"),
                pair("x-forwarded-port", "1"),
                pair("x-forwarded-prefix", "/admin"),
                pair("x-forwarded-proto", "gopher"),
                pair("x-real-ip", "198.51.100.7"),
                pair("x-request-id", "id-1"),
            ],
            "each once: the trusted proxy's id was read into ours; the client it found is \
             X-Real-IP; underscore spellings nothing vouches for are gone"
        );
        // Nothing sent: fallthrough's own, the port by scheme.
        let head = upstream(true, &[], "shop");
        let fields: Vec<_> = head.forwarded().map(|(n, _)| n).collect();
        assert_eq!(
            fields,
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-real-ip",
                "x-request-id"
            ]
        );
        assert_eq!(
            head.forwarded().nth(3).unwrap().1,
            b"443",
            "https without a port"
        );
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

    #[test]
    fn the_port_is_the_hosts_when_it_names_one() {
        for (host, port) in [
            ("shop", "443"),
            ("shop:8443", "8443"),
            ("[::1]:8080", "8080"),
            ("[::1]", "443"),
            ("shop:", "443"),
        ] {
            let head = upstream(false, &[], host);
            let got = head.forwarded().find(|(n, _)| *n == "x-forwarded-port");
            assert_eq!(got.unwrap().1, port.as_bytes(), "{host}");
        }
    }
}
