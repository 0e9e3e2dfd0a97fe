//! `parse_request_head` never panics; a head it accepts re-encodes and re-parses equal,
//! and httparse's own parse of the same bytes agrees on method, target and fields
//! (differential: the codec may refuse more than httparse, never accept more).
#![no_main]

use bytes::BytesMut;
use fallthrough::proxy::h1::codec::{parse_request_head, put_field};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let before = buf.len();
    let Ok(Some(head)) = parse_request_head(&mut buf) else {
        return;
    };
    let consumed = &data[..before - buf.len()];
    let fields: Vec<(Vec<u8>, Vec<u8>)> = head
        .fields
        .all()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();

    // Differential: httparse, strict, on the consumed bytes without leading empty lines.
    let start = consumed
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(consumed.len());
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut strict = httparse::Request::new(&mut slots);
    match strict.parse(&consumed[start..]) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!("the codec accepted what httparse refuses: {other:?}"),
    }
    assert_eq!(strict.method, Some(head.method.as_str()));
    let target = strict.path.expect("a complete request has a target");
    assert_eq!(head.uri, target, "the target differs from httparse's");
    let strict_fields: Vec<(Vec<u8>, Vec<u8>)> = strict
        .headers
        .iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect();
    assert_eq!(strict_fields, fields, "fields differ from httparse's");

    // Re-encoded canonically, it parses to the same head.
    let version = if head.version == http::Version::HTTP_10 {
        "1.0"
    } else {
        "1.1"
    };
    let mut wire = format!("{} {target} HTTP/{version}\r\n", head.method).into_bytes();
    for (name, value) in &fields {
        put_field(&mut wire, name, value);
    }
    wire.extend_from_slice(b"\r\n");
    let mut again = BytesMut::from(&wire[..]);
    let reparsed = parse_request_head(&mut again)
        .expect("a canonical re-encoding is accepted")
        .expect("and complete");
    assert!(again.is_empty());
    assert_eq!(reparsed.method, head.method);
    assert_eq!(reparsed.uri, head.uri);
    assert_eq!(reparsed.version, head.version);
    assert_eq!(reparsed.framing, head.framing);
    assert_eq!(
        (
            reparsed.close,
            reparsed.upgrade,
            reparsed.expect_continue,
            reparsed.trailers
        ),
        (
            head.close,
            head.upgrade,
            head.expect_continue,
            head.trailers
        )
    );
});
