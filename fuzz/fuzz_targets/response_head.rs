//! `parse_response_head` never panics, whatever the request asked (the first byte picks
//! HEAD and upgrade); an accepted final head re-encodes and re-parses equal.
#![no_main]

use bytes::BytesMut;
use fallthrough::proxy::h1::codec::{
    parse_response_head, put_field, Asked, ResponseFraming, ResponseHead,
};
use libfuzzer_sys::fuzz_target;

fn kind(framing: &ResponseFraming) -> String {
    match framing {
        ResponseFraming::Length(n) => format!("length {n}"),
        ResponseFraming::Chunked(_) => "chunked".into(),
        ResponseFraming::UntilClose => "until close".into(),
        ResponseFraming::Switched => "switched".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: first & 1 == 1,
        upgrade: first & 2 == 2,
    };
    let mut buf = BytesMut::from(wire);
    let Ok(Some(ResponseHead::Final {
        parts,
        fields,
        framing,
        keep_alive,
    })) = parse_response_head(&mut buf, asked)
    else {
        return;
    };
    let version = if parts.version == http::Version::HTTP_10 {
        "1.0"
    } else {
        "1.1"
    };
    let mut again = format!("HTTP/{version} {} x\r\n", parts.status.as_u16()).into_bytes();
    let mut listed: Vec<(Vec<u8>, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    listed.extend(fields.all().map(|(n, v)| (n.to_vec(), v.to_vec())));
    for (name, value) in &listed {
        put_field(&mut again, name, value);
    }
    again.extend_from_slice(b"\r\n");
    let mut again = BytesMut::from(&again[..]);
    let Ok(Some(ResponseHead::Final {
        parts: p2,
        framing: f2,
        keep_alive: k2,
        ..
    })) = parse_response_head(&mut again, asked)
    else {
        panic!("a canonical re-encoding of an accepted head is refused");
    };
    assert_eq!(p2.status, parts.status);
    // A rewritten head lost its Content-Length beside Transfer-Encoding on purpose.
    if parts.headers.is_empty() {
        assert_eq!((kind(&f2), k2), (kind(&framing), keep_alive));
    }
});
