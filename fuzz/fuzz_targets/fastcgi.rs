//! The FastCGI codec: the answer decoder fed in random splits gives the same stdout,
//! stderr and verdict as fed whole; the CGI head parser judges every prefix of a head
//! as the head itself; name-value pairs come back as they were encoded.
//!
//! The first byte picks the check (its low two bits) and, for the decoder, how many
//! split sizes follow it (the next three).
#![no_main]

use bytes::BytesMut;
use fallthrough::proxy::fastcgi::codec::{
    name_value_len, parse_cgi_head, parse_name_values, put_name_value, put_params, NameValue,
    Record, Records, MAX_CONTENT,
};
use libfuzzer_sys::fuzz_target;

/// Stdout, stderr and the verdict ("end <app> <protocol>, left <n>", the error, or
/// "more") of decoding `input` in pieces whose sizes come from `splits`.
fn decode(input: &[u8], splits: &[u8]) -> (Vec<u8>, Vec<u8>, String) {
    let mut records = Records::new();
    let mut buf = BytesMut::new();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
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
            match records.next(&mut buf) {
                Ok(None) => break,
                Ok(Some(Record::Stdout(b))) => {
                    assert!(!b.is_empty(), "an empty Stdout");
                    stdout.extend_from_slice(&b);
                }
                Ok(Some(Record::Stderr(b))) => {
                    assert!(!b.is_empty(), "an empty Stderr");
                    stderr.extend_from_slice(&b);
                }
                Ok(Some(Record::End {
                    app_status,
                    protocol_status,
                })) => {
                    assert!(records.next(&mut buf).is_err(), "a call after End");
                    let left = buf.len() + input.len() - at;
                    let verdict = format!("end {app_status} {protocol_status}, left {left}");
                    return (stdout, stderr, verdict);
                }
                Err(err) => return (stdout, stderr, format!("error: {err}")),
            }
        }
    }
    (stdout, stderr, "more".into())
}

fn records_agree(splits: usize, rest: &[u8]) {
    let (splits, input) = rest.split_at(splits.min(rest.len()));
    let whole = decode(input, &[]);
    let split = decode(input, if splits.is_empty() { &[1] } else { splits });
    assert_eq!(whole, split, "the answer depends on the split");
    // The stdout the exchange hands the head parser.
    cgi_head_prefixes_agree(&whole.0);
}

/// A head's verdict as a comparable string.
fn cgi_verdict(input: &[u8]) -> Option<String> {
    match parse_cgi_head(input) {
        Ok(None) => None,
        Ok(Some((head, consumed))) => {
            Some(format!("{} {:?} {consumed}", head.status, head.headers))
        }
        Err(err) => Some(format!("error: {err}")),
    }
}

fn cgi_head_prefixes_agree(input: &[u8]) {
    let whole = cgi_verdict(input);
    let consumed = match parse_cgi_head(input) {
        Ok(Some((_, consumed))) => {
            assert!(consumed <= input.len());
            assert_eq!(cgi_verdict(&input[..consumed]), whole, "the head alone");
            Some(consumed)
        }
        _ => None,
    };
    // Every prefix when short, else about 64 of them and those just before the end.
    let end = consumed.unwrap_or(input.len());
    let step = (end / 64).max(1);
    let near_end = end.saturating_sub(3)..end;
    for len in (0..end).step_by(step).chain(near_end) {
        let prefix = cgi_verdict(&input[..len]);
        match (&prefix, consumed) {
            (None, _) => {}
            (Some(_), Some(_)) => panic!("a prefix of a head judged: {prefix:?} of {whole:?}"),
            (Some(_), None) => assert_eq!(prefix, whole, "a prefix judged otherwise"),
        }
    }
}

/// Pairs cut out of `rest`: three bytes give a name's length (up to 511) and a value's
/// (up to 1023), then the bytes that follow are the name and the value.
fn pairs_of(rest: &[u8]) -> Vec<NameValue<'_>> {
    let mut pairs = Vec::new();
    let mut at = 0;
    while let Some(&[a, b, c]) = rest.get(at..at + 3) {
        at += 3;
        let name_len = usize::from(a) | usize::from(c & 1) << 8;
        let value_len = usize::from(b) | usize::from(c & 6) << 7;
        let name_end = (at + name_len).min(rest.len());
        let value_end = (name_end + value_len).min(rest.len());
        pairs.push((&rest[at..name_end], &rest[name_end..value_end]));
        at = value_end;
    }
    pairs
}

fn pairs_round_trip(rest: &[u8]) {
    let pairs = pairs_of(rest);
    let mut payload = Vec::new();
    for (name, value) in &pairs {
        put_name_value(&mut payload, name, value);
    }
    let len: usize = pairs.iter().map(|(n, v)| name_value_len(n, v)).sum();
    assert_eq!(payload.len(), len, "name_value_len");
    assert_eq!(parse_name_values(&payload).unwrap(), pairs);
    // As PHP-FPM reads PARAMS: each record's content decodes on its own.
    let mut records = Vec::new();
    put_params(&mut records, &payload).expect("no pair here is over a record");
    let mut decoded = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let len = usize::from(u16::from_be_bytes([records[at + 4], records[at + 5]]));
        assert!(len > 0 && len <= MAX_CONTENT);
        decoded.extend(parse_name_values(&records[at + 8..at + 8 + len]).unwrap());
        at += 8 + len;
    }
    assert_eq!(decoded, pairs, "PARAMS records of whole pairs");
}

fn parsed_pairs_re_encode(rest: &[u8]) {
    let Ok(pairs) = parse_name_values(rest) else {
        return;
    };
    let mut payload = Vec::new();
    for (name, value) in &pairs {
        put_name_value(&mut payload, name, value);
    }
    assert_eq!(parse_name_values(&payload).unwrap(), pairs);
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick & 3 {
        0 => records_agree(usize::from(pick >> 2 & 7), rest),
        1 => cgi_head_prefixes_agree(rest),
        2 => pairs_round_trip(rest),
        _ => parsed_pairs_re_encode(rest),
    }
});
