//! The request head on its way upstream, and the one policy for the forwarding fields.
//!
//! In: the client's request parts and raw fields, and what the connection and the trust
//! in its peer decided ([`Forwarding`]: see `crate::proxy::trust`).
//! Out: [`UpstreamHead`], which both attempts share: the client's fields less the
//! forwarding ones nobody vouches for, and fallthrough's own `X-Forwarded-*`,
//! `X-Real-IP` and `X-Request-Id`, written behind them by the HTTP/1.1 exchange and
//! turned into CGI params for FastCGI.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::head::{is_forwarding_name, RawFields};

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
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

    use crate::proxy::h1::head::tests::map;

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
