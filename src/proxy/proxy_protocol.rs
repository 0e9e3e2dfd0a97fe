//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on connections from
//! trusted proxies, with `--proxy-protocol`.
//!
//! In: a freshly accepted TCP connection whose peer is a trusted proxy.
//! Out: the client address its header names (none for v2 `LOCAL` and v1 `UNKNOWN`:
//! a load balancer's own health check), with exactly the header read: the bytes after
//! it (a TLS handshake, an HTTP request) stay in the socket for whoever serves it.
//! Parsing is the `ppp` crate's; [`header_len`] only finds where the header ends.
//!
//! Why peek: reading ahead would take bytes that belong to TLS. The header is peeked,
//! and only bytes known to be part of it are read, so no other buffer is needed; bytes
//! are read as soon as they are known to be header, so a slow sender is never peeked
//! at twice for the same bytes (no busy loop).

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted, TLVs included (v1 is at most 107 bytes). AWS, GCP and
/// Azure add TLVs of tens of bytes; past this the connection is closed.
pub const MAX_HEADER: usize = 4096;

/// Why a trusted proxy's connection was closed before it was served.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection did not start with a PROXY protocol header ({0}): configure the load balancer to send PROXY protocol v1 or v2, or leave out --proxy-protocol")]
    Invalid(String),
    #[error("the PROXY protocol header is longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("the PROXY protocol header did not arrive in time")]
    Timeout,
    #[error("the connection closed before its PROXY protocol header ended")]
    Closed,
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;

/// Where the PROXY header at the front of `bytes` ends, once it is whole and valid:
/// `Ok(None)` when more bytes are needed.
///
/// A v1 header ends at its CRLF, found here: `ppp` judges a v1 header cut short as
/// invalid rather than incomplete. A v2 header's length is in its first 16 bytes.
pub fn header_len(bytes: &[u8]) -> Result<Option<usize>, ProxyHeaderError> {
    const V1: &[u8] = b"PROXY ";
    let v1 = bytes.starts_with(V1) || V1.starts_with(bytes);
    let len = if v1 {
        match memchr::memmem::find(&bytes[..bytes.len().min(V1_MAX)], b"\r\n") {
            Some(cr) => cr + 2,
            None if bytes.len() < V1_MAX => return Ok(None),
            None => return Err(ProxyHeaderError::TooLong),
        }
    } else {
        let parsed = HeaderResult::parse(bytes);
        if parsed.is_incomplete() {
            return Ok(None);
        }
        match parsed {
            HeaderResult::V2(Ok(header)) => header.len(),
            HeaderResult::V1(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
            HeaderResult::V2(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
            HeaderResult::V1(Ok(_)) => unreachable!("a v1 header starts with PROXY"),
        }
    };
    client_of(&bytes[..len])?;
    Ok(Some(len))
}

/// The client a complete header names; `None` for a proxy's own connection.
pub fn client_of(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    Ok(match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(header)) => match header.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        },
        HeaderResult::V2(Ok(header)) if header.command == v2::Command::Local => None,
        HeaderResult::V2(Ok(header)) => match header.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::Unix(_) | v2::Addresses::Unspecified => None,
        },
        HeaderResult::V1(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
        HeaderResult::V2(Err(err)) => return Err(ProxyHeaderError::Invalid(err.to_string())),
    })
}

/// Reads the PROXY header at the start of `stream` within `timeout`, and returns the
/// client it names.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header: Vec<u8> = Vec::with_capacity(128);
    let mut peeked = vec![0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER - header.len();
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let known = header.len();
        header.extend_from_slice(&peeked[..n]);
        match header_len(&header)? {
            Some(len) => {
                header.truncate(len);
                stream.read_exact(&mut peeked[..len - known]).await?;
                return client_of(&header);
            }
            // Every byte seen is the header's: read them, and wait for more.
            None if header.len() < MAX_HEADER => {
                stream.read_exact(&mut peeked[..n]).await?;
            }
            None => return Err(ProxyHeaderError::TooLong),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn headers_are_measured_and_read() {
        let tcp4 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n".to_vec();
        let tcp6 = b"PROXY TCP6 2001:db8::9 2001:db8::1 51000 443\r\n".to_vec();
        let unknown = b"PROXY UNKNOWN\r\n".to_vec();
        let v2_tcp4 = v2(
            1,
            0x11,
            &[203, 0, 113, 9, 10, 0, 0, 1, 0xc7, 0x38, 1, 187],
            &[],
        );
        let v2_tlv = v2(
            1,
            0x11,
            &[203, 0, 113, 9, 10, 0, 0, 1, 0xc7, 0x38, 1, 187],
            &[4, 0, 1, 0],
        );
        let v2_local = v2(0, 0x00, &[], &[]);
        let client = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let rows: Vec<(&[u8], Option<SocketAddr>, &str)> = vec![
            (&tcp4, client("203.0.113.9:51000"), "v1 TCP4"),
            (&tcp6, client("[2001:db8::9]:51000"), "v1 TCP6"),
            (&unknown, None, "v1 UNKNOWN: the proxy's own"),
            (&v2_tcp4, client("203.0.113.9:51000"), "v2 TCP4"),
            (&v2_tlv, client("203.0.113.9:51000"), "v2 with a TLV"),
            (&v2_local, None, "v2 LOCAL: a health check"),
        ];
        for (header, want, why) in rows {
            let mut with_more = header.to_vec();
            with_more.extend_from_slice(b"\x16\x03\x01 the TLS handshake");
            assert_eq!(header_len(&with_more).unwrap(), Some(header.len()), "{why}");
            for cut in 0..header.len() {
                assert_eq!(
                    header_len(&header[..cut]).unwrap(),
                    None,
                    "{why} cut at {cut}"
                );
            }
            assert_eq!(client_of(header).unwrap(), want, "{why}");
        }
    }

    #[test]
    fn what_is_not_a_header_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS ClientHello",
            b"PROXY TCP4 203.0.113.9\r\n",
            b"PROXY TCP4 999.0.113.9 10.0.0.1 1 2\r\n",
        ] {
            assert!(
                header_len(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert!(header_len(long.as_bytes()).is_err(), "v1 past 107 bytes");
    }

    #[tokio::test]
    async fn only_the_header_is_read_from_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            // In two pieces: the rest of the header comes later.
            c.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 ")
                .await
                .unwrap();
            c.flush().await.unwrap();
            tokio::task::yield_now().await;
            c.write_all(b"51000 443\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
            c
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let named = read_header(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(named, Some("203.0.113.9:51000".parse().unwrap()));
        let mut rest = [0u8; 16];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        drop(client.await.unwrap());
    }
}
