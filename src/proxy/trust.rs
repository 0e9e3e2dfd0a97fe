//! Whom fallthrough believes: the trusted proxies (`--trusted-proxies`), the client a
//! request speaks for, and its request id.
//!
//! In: a connection's peer address and the forwarding fields a request carries
//! (`X-Forwarded-For`, `X-Request-Id`).
//! Out: whether a peer is trusted, the client address (for the access log, FastCGI's
//! `REMOTE_ADDR` and `X-Real-IP`), and the request's id. Pure; which fields are kept or
//! replaced on the way upstream is decided in [`super::h1::upstream_head::UpstreamHead`].
//!
//! Why a list and not "trust everyone": a client that can set `X-Forwarded-For` can
//! pose as any address to the apps behind, and Traefik's issue tracker is full of users
//! bitten by trusting too widely. Nothing is trusted unless named.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;

/// A `--trusted-proxies` entry that is neither an address nor a CIDR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an IP address or CIDR: give a comma-separated list such as 10.0.0.0/8,192.168.1.7,fd00::/8")]
pub struct BadTrustedProxy(pub String);

/// The peers whose forwarding fields and PROXY protocol headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// Longest request id kept from a trusted peer; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs and bare addresses (a bare address is a
    /// /32 or /128). Empty: nobody is trusted.
    pub fn parse(list: &str) -> Result<Self, BadTrustedProxy> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| BadTrustedProxy(entry.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy. An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`,
    /// on a dual-stack socket) is judged as the IPv4 address it is.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client a request from `peer` speaks for. From an untrusted peer, the peer.
    /// From a trusted one, `X-Forwarded-For` (every line, in order) is walked from the
    /// right: the first address not trusted is the client, as nginx's
    /// `real_ip_recursive on` and Traefik do. An entry that is not an address ends the
    /// walk at the last trusted one: nothing after garbage is believed.
    pub fn client<'v>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'v [u8]>,
    ) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let lines: Vec<&[u8]> = forwarded_for.collect();
        let mut client = peer;
        for entry in lines
            .iter()
            .rev()
            .flat_map(|line| line.rsplit(|&b| b == b','))
        {
            match forwarded_address(entry.trim_ascii()) {
                Some(ip) if self.trusts(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry's address: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .or_else(|_| text.trim_start_matches('[').trim_end_matches(']').parse())
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The request's id: a trusted peer's `X-Request-Id` when it is 1 to [`MAX_REQUEST_ID`]
/// visible ASCII characters, otherwise a new one.
pub fn request_id(kept: Option<&HeaderValue>) -> HeaderValue {
    match kept {
        Some(id)
            if (1..=MAX_REQUEST_ID).contains(&id.len())
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => new_request_id(),
    }
}

/// A new request id: 32 lowercase hex digits (128 random bits), the form of nginx's
/// `$request_id` that ingress-nginx sends as `X-Request-ID`. Not a secret, so a fast
/// per-thread generator will do.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (pair, byte) in text
        .chunks_exact_mut(2)
        .zip(fastrand::u128(..).to_le_bytes())
    {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_parse_with_bare_addresses_and_refuse_garbage() {
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8,").unwrap();
        assert!(t.trusts(ip("10.1.2.3")));
        assert!(t.trusts(ip("192.168.1.7")));
        assert!(!t.trusts(ip("192.168.1.8")));
        assert!(t.trusts(ip("fd00::1")));
        assert!(
            t.trusts(ip("::ffff:10.9.9.9")),
            "IPv4 on a dual-stack socket"
        );
        assert!(!t.trusts(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert_eq!(
            TrustedProxies::parse("10.0.0.0/8,lb.example.com"),
            Err(BadTrustedProxy("lb.example.com".into()))
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_address() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // peer, X-Forwarded-For lines, the client, why.
        let rows: &[(&str, &[&str], &str, &str)] = &[
            (
                "203.0.113.9",
                &["1.2.3.4"],
                "203.0.113.9",
                "untrusted peer: its own address",
            ),
            (
                "10.0.0.2",
                &[],
                "10.0.0.2",
                "trusted peer, no field: the peer",
            ),
            ("10.0.0.2", &["198.51.100.7"], "198.51.100.7", "one hop"),
            (
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.7, 10.0.0.1"],
                "198.51.100.7",
                "spoofed left part ignored",
            ),
            (
                "10.0.0.2",
                &["6.6.6.6", "198.51.100.7"],
                "198.51.100.7",
                "several lines are one list",
            ),
            (
                "10.0.0.2",
                &["10.0.0.5, 10.0.0.1"],
                "10.0.0.5",
                "all trusted: the left-most",
            ),
            (
                "10.0.0.2",
                &["198.51.100.7, garbage, 10.0.0.1"],
                "10.0.0.1",
                "garbage stops the walk",
            ),
            (
                "10.0.0.2",
                &["198.51.100.7:4711"],
                "198.51.100.7",
                "with a port",
            ),
            (
                "10.0.0.2",
                &["[2001:db8::1]:443"],
                "2001:db8::1",
                "IPv6 with a port",
            ),
            ("10.0.0.2", &["2001:db8::1"], "2001:db8::1", "IPv6"),
        ];
        for (peer, lines, want, why) in rows {
            let got = t.client(ip(peer), lines.iter().map(|l| l.as_bytes()));
            assert_eq!(got, ip(want), "{why}");
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
        let kept = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&kept)), kept);
        for bad in ["", "has space", &"x".repeat(MAX_REQUEST_ID + 1)] {
            let bad = HeaderValue::from_str(bad).unwrap();
            assert_eq!(request_id(Some(&bad)).len(), 32, "{bad:?} replaced");
        }
        assert_eq!(request_id(None).len(), 32);
    }
}
