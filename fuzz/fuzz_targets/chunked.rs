//! The chunked decoder fed in random splits gives the same bytes, trailers and verdict
//! as fed whole.
#![no_main]

use bytes::BytesMut;
use fallthrough::proxy::h1::codec::{ChunkedDecoder, Decoded};
use libfuzzer_sys::fuzz_target;

/// Data, trailers and the verdict ("end", "error", "more") of decoding `input` in
/// pieces whose sizes come from `splits`.
fn decode(input: &[u8], splits: &[u8]) -> (Vec<u8>, String, &'static str) {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut at = 0;
    let mut pieces = splits.iter().cycle();
    while at < input.len() {
        // No splits: the input whole.
        let n = match pieces.next() {
            Some(&piece) => usize::from(piece).max(1),
            None => input.len(),
        }
        .min(input.len() - at);
        buf.extend_from_slice(&input[at..at + n]);
        at += n;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => data.extend_from_slice(&d),
                Ok(Decoded::Trailers(t)) => return (data, format!("{t:?}"), "end"),
                Ok(Decoded::End) => return (data, String::new(), "end"),
                Ok(Decoded::NeedMore) => break,
                Err(_) => return (data, String::new(), "error"),
            }
        }
    }
    (data, String::new(), "more")
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (splits, input) = rest.split_at(usize::from(n % 8).min(rest.len()));
    let whole = decode(input, &[]);
    let split = decode(input, if splits.is_empty() { &[1] } else { splits });
    assert_eq!(whole.2, split.2, "the verdict depends on the split");
    if whole.2 != "error" {
        assert_eq!(whole, split);
    }
});
