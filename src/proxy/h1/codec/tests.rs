//! The codec against RFC 9112 and RFC 9110 §5 and §7.6, one row per rule: raw bytes in,
//! the verdict out. Rows name the section they check; nginx's choices are marked.

use bytes::BytesMut;
use http::HeaderMap;

use super::*;

/// What the codec made of a request head, as one comparable string.
fn request_verdict(wire: &str) -> String {
    let mut buf = BytesMut::from(wire.as_bytes());
    match parse_request_head(&mut buf) {
        Ok(None) => "incomplete".into(),
        Err(err) => err.status().as_u16().to_string(),
        Ok(Some(head)) => {
            let framing = match head.framing {
                RequestFraming::Empty => "empty".to_string(),
                RequestFraming::Length(n) => format!("length {n}"),
                RequestFraming::Chunked => "chunked".into(),
            };
            let mut flags = String::new();
            for (set, name) in [
                (head.close, " close"),
                (head.expect_continue, " continue"),
                (head.upgrade, " upgrade"),
                (head.trailers, " trailers"),
                (head.rewrite, " rewrite"),
            ] {
                if set {
                    flags.push_str(name);
                }
            }
            format!(
                "{} {} {:?} {framing}{flags}, left {:?}",
                head.method,
                head.uri,
                head.version,
                String::from_utf8_lossy(&buf)
            )
        }
    }
}

#[test]
fn request_heads_follow_rfc_9112() {
    let rows: &[(&str, &str, &str)] = &[
        // §3: the request line.
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1 empty, left \"\"", "plain GET"),
        ("GET /a?b=1 HTTP/1.1\r\nHost: a\r\n\r\nGET", "GET /a?b=1 HTTP/1.1 empty, left \"GET\"", "pipelined: only the head is consumed"),
        ("GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0 empty close, left \"\"", "HTTP/1.0 needs no Host, closes by default"),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET / HTTP/1.0 empty, left \"\"", "HTTP/1.0 keep-alive"),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", "505", "§2.3 unsupported version"),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "505", "§2.3 unsupported version"),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3 one SP between parts"),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "400", "§3 nothing after the version"),
        ("G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3.1 the method is a token"),
        ("GET /<script> HTTP/1.1\r\nHost: a\r\n\r\n", "400", "defect 1: a target http::Uri refuses is a 400, not dropped"),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3.2 no whitespace in the target"),
        ("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3.2 no relative targets"),
        ("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS * HTTP/1.1 empty, left \"\"", "§3.2.4 asterisk-form"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3.2.4 asterisk-form is for OPTIONS only"),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "CONNECT a:443 HTTP/1.1 empty, left \"\"", "§3.2.3 authority-form (answered 405 above)"),
        ("CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n", "400", "§3.2.3 CONNECT takes authority-form only"),
        ("GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", "GET http://b/x HTTP/1.1 empty rewrite, left \"\"", "§3.2.2 absolute-form: its authority replaces Host"),
        ("GET ftp://b/x HTTP/1.1\r\nHost: a\r\n\r\n", "400", "absolute-form other than http(s)"),
        ("GET http://u@b/x HTTP/1.1\r\nHost: b\r\n\r\n", "400", "RFC 9110 §4.2.4 no userinfo"),
        // §2.2: empty lines before the request line are ignored.
        ("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1 empty, left \"\"", "defect 2: leading CRLF"),
        ("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1 empty, left \"\"", "leading LF"),
        ("\r", "incomplete", "a lone CR may start a CRLF"),
        // §3.2: Host.
        ("GET / HTTP/1.1\r\n\r\n", "400", "§3.2 HTTP/1.1 without Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "400", "§3.2 more than one Host"),
        ("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "400", "§3.2 more than one Host, HTTP/1.0 too"),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "400", "§3.2 invalid Host value"),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "400", "§3.2 Host has no path"),
        ("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "400", "§3.2 Host has no userinfo"),
        ("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", "400", "§3.2 port is digits"),
        ("GET / HTTP/1.1\r\nHost: \r\n\r\n", "400", "nginx: empty Host refused"),
        ("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "GET / HTTP/1.1 empty, left \"\"", "IPv6 literal"),
        // §5: field syntax.
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "400", "§5.1 no whitespace before the colon"),
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "400", "§5.2 obs-fold refused"),
        ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", "400", "§2.2 whitespace before the first field"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "400", "RFC 9110 §5.5 no NUL in a value"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", "400", "RFC 9110 §5.5 no bare CR"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX\x7f: 1\r\n\r\n", "400", "field names are tokens"),
        ("GET / HTTP/1.1\nHost: a\n\n", "GET / HTTP/1.1 empty, left \"\"", "§2.2 bare LF line ends accepted, as nginx does"),
        // §6: framing.
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", "POST / HTTP/1.1 length 5, left \"hello\"", "§6.2 Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST / HTTP/1.1 empty, left \"\"", "zero length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "400", "nginx: a repeated Content-Length is refused"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", "400", "§6.3 invalid Content-Length (a list)"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "400", "§6.3 invalid Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", "400", "§6.3 invalid Content-Length"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", "400", "overflow"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", "POST / HTTP/1.1 chunked, left \"\"", "§7.1 chunked"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n", "POST / HTTP/1.1 chunked, left \"\"", "codings are case-insensitive"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "400", "§6.1 TE with CL refused (nginx), never forwarded"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501", "§6.1 unknown coding: 501"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", "501", "§6.1 unknown coding: 501"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "400", "§6.3 chunked not last: 400"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "400", "§7.1 chunked applied twice"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "400", "§6.3 chunked not last (twice)"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", "400", "empty Transfer-Encoding"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400", "§6.1 Transfer-Encoding in HTTP/1.0"),
        // RFC 9110 §7.6.1: Connection.
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET / HTTP/1.1 empty close, left \"\"", "close"),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", "GET / HTTP/1.1 empty close, left \"\"", "defect 4: every Connection line counts"),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "named fields are dropped (rewrite)"),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: x-b\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "a second Connection line names a field"),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n", "400", "defect 4: Connection may not name Host"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nConnection: content-length\r\n\r\n", "400", "Connection may not name Content-Length"),
        ("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "GET /ws HTTP/1.1 empty upgrade rewrite, left \"\"", "§7.8 upgrade"),
        ("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", "GET /ws HTTP/1.1 empty, left \"\"", "Upgrade without Connection: upgrade is dropped"),
        // RFC 9110 §10.1.1: Expect.
        ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "PUT / HTTP/1.1 length 1 continue, left \"\"", "100-continue"),
        ("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", "PUT / HTTP/1.0 length 1 close, left \"\"", "§10.1.1 HTTP/1.0 gets no 100"),
        ("PUT / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", "PUT / HTTP/1.1 empty, left \"\"", "nginx: other expectations ignored"),
        ("GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n", "GET / HTTP/1.1 empty trailers, left \"\"", "TE: trailers"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "X-Forwarded-* are rewritten"),
        ("GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-prefix: /a\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "every X-Forwarded-* is judged by trust"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Real-IP: 1.2.3.4\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "X-Real-IP too"),
        ("GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "RFC 7239 Forwarded too"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n", "GET / HTTP/1.1 empty rewrite, left \"\"", "X-Request-Id too"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Request: abc\r\nX-Real-IPs: 1\r\n\r\n", "GET / HTTP/1.1 empty, left \"\"", "only those names"),
        // Limits.
        ("GET / HTTP/1.1\r\nHost: a\r\n", "incomplete", "partial head"),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(wire, expected, _)| request_verdict(wire) != *expected)
        .map(|(wire, expected, why)| {
            format!(
                "{why}: {wire:?}\n  got  {}\n  want {expected}",
                request_verdict(wire)
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn request_heads_over_the_limits_are_431() {
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(request_verdict(&long), "431");
    let unfinished = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}",
        "a".repeat(MAX_HEAD_BYTES)
    );
    assert_eq!(request_verdict(&unfinished), "431");
    let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(
        request_verdict(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
        "431"
    );
    let most: String = (0..MAX_HEADERS - 1)
        .map(|i| format!("X-{i}: 1\r\n"))
        .collect();
    assert!(
        request_verdict(&format!("GET / HTTP/1.1\r\nHost: a\r\n{most}\r\n")).starts_with("GET")
    );
}

#[test]
fn accepted_request_fields_keep_the_request_line_out() {
    // Defect 2: after a leading CRLF the request line was taken for a field.
    let mut buf = BytesMut::from(&b"\r\nGET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"[..]);
    let head = parse_request_head(&mut buf).unwrap().unwrap();
    let fields: Vec<_> = head.fields.all().collect();
    assert_eq!(fields, [(&b"Host"[..], &b"a"[..]), (b"X-A", b"1")]);
    assert_eq!(head.fields.host(), Some("a"));
}

/// What the codec made of a response head.
fn response_verdict(wire: &str, head: bool, upgrade: bool) -> String {
    let mut buf = BytesMut::from(wire.as_bytes());
    match parse_response_head(&mut buf, Asked { head, upgrade }) {
        Ok(None) => "incomplete".into(),
        Err(err) => format!("502 {}", err.0),
        Ok(Some(ResponseHead::Informational)) => "informational".into(),
        Ok(Some(ResponseHead::Final {
            parts,
            framing,
            keep_alive,
            fields,
        })) => {
            let framing = match framing {
                ResponseFraming::Length(n) => format!("length {n}"),
                ResponseFraming::Chunked(_) => "chunked".into(),
                ResponseFraming::UntilClose => "until close".into(),
                ResponseFraming::Switched => "switched".into(),
            };
            let first = fields
                .end_to_end()
                .next()
                .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            format!(
                "{} {framing}, keep-alive {keep_alive}{}",
                parts.status.as_u16(),
                if first.is_empty() {
                    String::new()
                } else {
                    format!(", first {first}")
                }
            )
        }
    }
}

#[test]
fn response_heads_follow_rfc_9112() {
    let rows: &[(&str, bool, bool, &str, &str)] = &[
        ("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false, false, "200 length 12, keep-alive true, first content-length", "§6.3 rule 6"),
        ("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true, false, "200 length 0, keep-alive true, first content-length", "§6.3 rule 1: HEAD"),
        ("HTTP/1.1 204 No Content\r\n\r\n", false, false, "204 length 0, keep-alive true", "§6.3 rule 1: 204"),
        ("HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", false, false, "304 length 0, keep-alive true, first content-length", "§6.3 rule 1: 304"),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", false, false, "200 chunked, keep-alive true", "§6.3 rule 4"),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", false, false, "200 chunked, keep-alive false", "§6.3 rule 3: TE wins, CL removed, no reuse"),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", false, false, "502 unsupported transfer coding", "defect 4: a coding the client would never hear of"),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false, false, "502 unsupported transfer coding", "unknown coding"),
        ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", false, false, "502 unsupported transfer coding", "chunked twice"),
        ("HTTP/1.1 200 OK\r\n\r\n", false, false, "200 until close, keep-alive false", "§6.3 rule 8"),
        ("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", false, false, "200 length 1, keep-alive false, first content-length", "close"),
        ("HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nconnection: close\r\ncontent-length: 1\r\n\r\n", false, false, "200 length 1, keep-alive false, first content-length", "every Connection line"),
        ("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false, false, "200 length 1, keep-alive false, first content-length", "HTTP/1.0 backend"),
        ("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", false, false, "502 conflicting Content-Length values", "§6.3 rule 5"),
        ("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n", false, false, "200 length 1, keep-alive true, first content-length", "§6.3 rule 5: equal values are one"),
        ("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false, false, "502 invalid Content-Length", "§6.3 rule 5"),
        ("HTTP/1.1 200 OK\r\ncontent-le", false, false, "incomplete", "partial"),
        ("HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n", false, false, "informational", "§15.2 1xx skipped"),
        ("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", false, true, "101 switched, keep-alive false", "101 to an upgrade"),
        ("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", false, false, "502 101 Switching Protocols to a request that asked for no upgrade", "defect 5: unsolicited 101"),
        ("\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n", false, false, "200 length 0, keep-alive true, first x-a", "defect 2: leading CRLF on the response side"),
        ("HTTP/1.1 600 Odd\r\n\r\n", false, false, "502 invalid status code", "status 100-599"),
        ("HTTP/1.1 20 OK\r\n\r\n", false, false, "502 invalid response head", "three digits"),
        ("HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n", false, false, "502 invalid response head", "obs-fold"),
        ("HTTP/1.1 200 OK\r\nx : a\r\n\r\n", false, false, "502 invalid response head", "§5.1 whitespace before colon"),
        ("HTTP/2 200 OK\r\n\r\n", false, false, "502 invalid response head", "version"),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(wire, head, up, expected, _)| response_verdict(wire, *head, *up) != *expected)
        .map(|(wire, head, up, expected, why)| {
            let got = response_verdict(wire, *head, *up);
            format!("{why}: {wire:?}\n  got  {got}\n  want {expected}")
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Decodes `input` fed in pieces of `split` bytes.
fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkedError> {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    for piece in input.chunks(split) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => return Ok((body, Some(t))),
                Decoded::End => return Ok((body, None)),
                Decoded::NeedMore => break,
            }
        }
    }
    Err(ChunkedError("unfinished"))
}

#[test]
fn chunked_bodies_decode_whatever_the_read_boundaries() {
    let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
    for split in 1..wire.len() {
        let (body, trailers) = decode_all(wire, split).unwrap();
        assert_eq!(body, b"hello, world", "split {split}");
        assert!(trailers.is_none());
    }
}

#[test]
fn chunked_trailers_are_kept_and_filtered() {
    let wire = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\ncontent-length: 9\r\nhost: evil\r\n\r\n";
    for split in 1..wire.len() {
        let (body, trailers) = decode_all(wire, split).unwrap();
        assert_eq!(body, b"abc");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-checksum"], "42");
        assert_eq!(
            trailers.len(),
            1,
            "RFC 9110 §6.5.1: framing and routing fields are dropped"
        );
    }
}

/// Found by fuzz/chunked: a trailer name starting with a tchar other than a letter or
/// digit was refused when its first byte arrived alone, and accepted when whole.
#[test]
fn trailer_names_starting_with_any_tchar_decode_whatever_the_read_boundaries() {
    let wire = b"3\r\nabc\r\n0\r\n-x-sum: 1\r\n\r\n";
    for split in 1..wire.len() {
        let (body, trailers) = decode_all(wire, split).unwrap();
        assert_eq!(body, b"abc", "split {split}");
        assert!(trailers.is_some(), "split {split}");
    }
}

/// Found by fuzz/chunked: a bare CR after a chunk size passed as whitespace, and a
/// bare-LF end of the trailer section was refused when it arrived alone. Every split
/// of each input must give the verdict the whole input gives.
#[test]
fn chunked_verdicts_do_not_depend_on_read_boundaries() {
    let rows: &[(&[u8], bool)] = &[
        (b"3\r\nabc\r\n0\r\n\n", true),
        (b"3\r\nabc\r\n0\r\n\nrest", true),
        (b"3\r\nabc\r\n0\r\r\n\r\n", false),
        (b"3\r\r\nabc\r\n0\r\n\r\n", false),
        (b"3 ;x=1\r\nabc\r\n0\t\r\n\r\n", true),
    ];
    for (wire, ok) in rows {
        for split in 1..=wire.len() {
            assert_eq!(
                decode_all(wire, split).is_ok(),
                *ok,
                "{:?} split {split}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

#[test]
fn malformed_chunks_are_refused() {
    for wire in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"5 5\r\nhello\r\n",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    ] {
        for split in 1..=wire.len() {
            assert!(
                decode_all(wire, split).is_err(),
                "{:?} split {split}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

#[test]
fn last_chunks_carry_only_allowed_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("7"));
    trailers.insert(
        "transfer-encoding",
        http::HeaderValue::from_static("chunked"),
    );
    trailers.insert("set-cookie", http::HeaderValue::from_static("a=1"));
    let mut out = Vec::new();
    put_chunk_size(&mut out, 255);
    put_field(&mut out, b"x-a", b"1");
    put_content_length(&mut out, 1234567890);
    put_last_chunk(&mut out, Some(&trailers));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "ff\r\nx-a: 1\r\ncontent-length: 1234567890\r\n0\r\nx-checksum: 7\r\n\r\n"
    );
}

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

/// Why the codec does not check field values itself: for every byte, httparse's strict
/// parse of a request and of a response accepts it in a value exactly when
/// `HeaderValue` does, so every value the codec hands on is one.
#[test]
fn httparse_admits_exactly_the_bytes_header_value_does() {
    for b in 0..=255u8 {
        if b == b'\r' || b == b'\n' {
            continue;
        }
        let value = [b'a', b, b'z'];
        let header_value = http::HeaderValue::from_bytes(&value).is_ok();
        let mut request = b"GET / HTTP/1.1\r\nHost: h\r\nx-v: ".to_vec();
        request.extend_from_slice(&value);
        request.extend_from_slice(b"\r\n\r\n");
        let mut buf = BytesMut::from(&request[..]);
        assert_eq!(
            matches!(parse_request_head(&mut buf), Ok(Some(_))),
            header_value,
            "request value byte {b:#04x}"
        );
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-v: ".to_vec();
        response.extend_from_slice(&value);
        response.extend_from_slice(b"\r\n\r\n");
        let mut buf = BytesMut::from(&response[..]);
        let asked = Asked {
            head: false,
            upgrade: false,
        };
        assert_eq!(
            matches!(parse_response_head(&mut buf, asked), Ok(Some(_))),
            header_value,
            "response value byte {b:#04x}"
        );
    }
}
