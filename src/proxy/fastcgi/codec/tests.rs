//! The codec against the FastCGI 1.0 specification and RFC 3875 §6, one row per rule:
//! bytes in, the verdict out. Rows name the section they check.

use bytes::BytesMut;

use super::*;

/// What a list of encoder calls appended.
fn encoded(put: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out);
    out
}

/// A record as an application would write it, `padding` bytes of 0xAA after it.
fn record(kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
    let [id_hi, id_lo] = id.to_be_bytes();
    let [len_hi, len_lo] = u16::try_from(content.len()).unwrap().to_be_bytes();
    let mut out = vec![1, kind, id_hi, id_lo, len_hi, len_lo, padding, 0];
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0xAA, usize::from(padding)));
    out
}

fn stdout(content: &[u8]) -> Vec<u8> {
    record(6, 1, content, 0)
}

fn stderr(content: &[u8]) -> Vec<u8> {
    record(7, 1, content, 0)
}

fn end(app_status: u32, protocol_status: u8) -> Vec<u8> {
    encoded(|out| put_end_request(out, app_status, protocol_status))
}

#[test]
fn encoders_write_the_spec_bytes() {
    let long = |n: usize| vec![b'n'; n];
    let with = |prefix: &[u8], rest: &[&[u8]]| -> Vec<u8> {
        let mut out = prefix.to_vec();
        rest.iter().for_each(|part| out.extend_from_slice(part));
        out
    };
    let big = vec![b'x'; MAX_CONTENT + 1];
    let rows: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (
            encoded(|out| put_begin_request(out, true)),
            vec![1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
            "§5.1 BEGIN_REQUEST, RESPONDER, FCGI_KEEP_CONN",
        ),
        (
            encoded(|out| put_begin_request(out, false)),
            vec![1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            "§5.1 without FCGI_KEEP_CONN the application closes",
        ),
        (
            encoded(|out| put_name_value(out, b"A", b"bc")),
            vec![1, 2, b'A', b'b', b'c'],
            "§3.4 short lengths take one byte",
        ),
        (
            encoded(|out| put_name_value(out, b"", b"")),
            vec![0, 0],
            "§3.4 empty name and value",
        ),
        (
            encoded(|out| put_name_value(out, &long(127), b"")),
            with(&[127, 0], &[&long(127)]),
            "§3.4 127 is the longest one-byte length",
        ),
        (
            encoded(|out| put_name_value(out, &long(128), b"v")),
            with(&[0x80, 0, 0, 128, 1], &[&long(128), b"v"]),
            "§3.4 128 takes four bytes, high bit set",
        ),
        (
            encoded(|out| put_name_value(out, b"N", &long(200))),
            with(&[1, 0x80, 0, 0, 200, b'N'], &[&long(200)]),
            "§3.4 a 200-byte value",
        ),
        (
            encoded(|out| put_name_value(out, &[0xff, 0x00], &[0xfe])),
            vec![2, 1, 0xff, 0x00, 0xfe],
            "§3.4 names and values are bytes, not UTF-8",
        ),
        (
            encoded(|out| put_stream(out, RecordType::Stdin, b"hi")),
            vec![1, 5, 0, 1, 0, 2, 0, 0, b'h', b'i'],
            "§3.3 one STDIN record, no padding",
        ),
        (
            encoded(|out| put_stream(out, RecordType::Stdin, b"")),
            vec![],
            "§3.3 an empty payload writes no record (an empty one ends the stream)",
        ),
        (
            encoded(|out| put_stream(out, RecordType::Stdin, &big[..MAX_CONTENT])),
            with(&[1, 5, 0, 1, 0xff, 0xff, 0, 0], &[&big[..MAX_CONTENT]]),
            "§3.3 65535 bytes fit one record",
        ),
        (
            encoded(|out| put_stream(out, RecordType::Stdin, &big)),
            with(
                &[1, 5, 0, 1, 0xff, 0xff, 0, 0],
                &[&big[..MAX_CONTENT], &[1, 5, 0, 1, 0, 1, 0, 0], b"x"],
            ),
            "§3.3 65536 bytes split at 65535",
        ),
        (
            encoded(|out| put_stream_end(out, RecordType::Params)),
            vec![1, 4, 0, 1, 0, 0, 0, 0],
            "§3.3 the empty record ends PARAMS",
        ),
        (
            encoded(|out| put_stream_end(out, RecordType::Stdin)),
            vec![1, 5, 0, 1, 0, 0, 0, 0],
            "§3.3 the empty record ends STDIN",
        ),
        (
            encoded(|out| put_record_header(out, RecordType::Stdout, 0x1234)),
            vec![1, 6, 0, 1, 0x12, 0x34, 0, 0],
            "§3.3 a header for content written after it",
        ),
        (
            end(0x0102_0304, 3),
            vec![1, 3, 0, 1, 0, 8, 0, 0, 1, 2, 3, 4, 3, 0, 0, 0],
            "§5.5 END_REQUEST (fake backends)",
        ),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(got, want, _)| got != want)
        .map(|(got, want, why)| {
            let head = |b: &[u8]| format!("{:?}", &b[..b.len().min(24)]);
            format!(
                "{why}:\n  got  {} ({} bytes)\n  want {} ({} bytes)",
                head(got),
                got.len(),
                head(want),
                want.len()
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn name_values_round_trip() {
    let long_name = vec![b'N'; 128];
    let long_value = vec![0x80; 70_000];
    let pairs: Vec<NameValue> = vec![
        (b"SCRIPT_FILENAME", b"/srv/index.php"),
        (b"", b""),
        (b"EMPTY", b""),
        (&[0xff, 0x00, 0x0a], &[0xc3, 0x28]),
        (&long_name, b"short"),
        (b"HTTP_X_BIG", &long_value),
        (&[b'n'; 127], &[b'v'; 127]),
    ];
    let mut payload = Vec::new();
    for (name, value) in &pairs {
        let before = payload.len();
        put_name_value(&mut payload, name, value);
        assert_eq!(payload.len() - before, name_value_len(name, value));
    }
    assert_eq!(parse_name_values(&payload).unwrap(), pairs);
}

#[test]
fn name_values_parse_as_spec_3_4_says() {
    #[rustfmt::skip]
    let rows: &[(&[u8], &str, &str)] = &[
        (b"", "[]", "an empty payload has no pairs"),
        (&[0x80, 0, 0, 1, 0, b'a'], r#"[("a", "")]"#, "a four-byte length may carry a short one"),
        (&[1, 1, b'a', b'b', 0, 0], r#"[("a", "b"), ("", "")]"#, "pairs follow one another"),
        (&[1], "error: a name-value length cut short", "the value length is missing"),
        (&[0x80, 0, 0], "error: a name-value length cut short", "a four-byte length cut short"),
        (&[5, 0, b'a'], "error: a name-value pair cut short", "the name is shorter than its length"),
        (&[1, 2, b'a', b'b'], "error: a name-value pair cut short", "the value is shorter than its length"),
        (&[0xff, 0xff, 0xff, 0xff, 0], "error: a name-value pair cut short", "the longest length, no bytes"),
    ];
    for (payload, want, why) in rows {
        let got = match parse_name_values(payload) {
            Ok(pairs) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let pairs: Vec<_> = pairs.iter().map(|(n, v)| (text(n), text(v))).collect();
                format!("{pairs:?}")
            }
            Err(err) => format!("error: {err}"),
        };
        assert_eq!(&got, want, "{why}");
    }
}

#[test]
fn params_records_hold_whole_pairs() {
    // PHP-FPM decodes each PARAMS record on its own: a pair cut between two is refused.
    let value = vec![b'v'; 30_000];
    let mut payload = Vec::new();
    for name in [&b"A"[..], b"B", b"C"] {
        put_name_value(&mut payload, name, &value);
    }
    let out = encoded(|out| put_params(out, &payload).unwrap());
    let mut at = 0;
    let mut names = Vec::new();
    while at < out.len() {
        let len = usize::from(u16::from_be_bytes([out[at + 4], out[at + 5]]));
        assert_eq!(out[at + 1], RecordType::Params as u8);
        let content = &out[at + HEADER_LEN..at + HEADER_LEN + len];
        names.extend(
            parse_name_values(content)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n.to_vec()),
        );
        at += HEADER_LEN + len;
    }
    assert_eq!(names, [b"A", b"B", b"C"], "each record decodes on its own");
    assert!(
        out.len() < payload.len() + 3 * HEADER_LEN,
        "two records, not three"
    );

    let mut huge = Vec::new();
    put_name_value(&mut huge, b"X", &vec![b'v'; MAX_CONTENT]);
    let mut out = b"kept".to_vec();
    assert_eq!(
        put_params(&mut out, &[&payload[..], &huge].concat()),
        Err(RecordError("a param over the size of one record"))
    );
    assert_eq!(out, b"kept", "nothing appended when refused");
    assert_eq!(encoded(|out| put_params(out, b"").unwrap()), b"");
}

/// What a decoder made of `wire` fed in pieces of the sizes `pieces` gives.
#[derive(Debug, PartialEq)]
struct Answer {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    verdict: String,
}

fn decode(wire: &[u8], pieces: impl Iterator<Item = usize>) -> Answer {
    let mut records = Records::new();
    let mut buf = BytesMut::new();
    let mut answer = Answer {
        stdout: Vec::new(),
        stderr: Vec::new(),
        verdict: "more".into(),
    };
    let mut at = 0;
    for piece in pieces {
        if at == wire.len() {
            break;
        }
        let n = piece.clamp(1, wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        loop {
            match records.next(&mut buf) {
                Ok(None) => break,
                Ok(Some(Record::Stdout(b))) => {
                    assert!(!b.is_empty(), "an empty Stdout");
                    answer.stdout.extend_from_slice(&b);
                }
                Ok(Some(Record::Stderr(b))) => {
                    assert!(!b.is_empty(), "an empty Stderr");
                    answer.stderr.extend_from_slice(&b);
                }
                Ok(Some(Record::End {
                    app_status,
                    protocol_status,
                })) => {
                    assert!(records.is_done());
                    assert!(records.next(&mut buf).is_err(), "a call after End");
                    let left = buf.len() + wire.len() - at;
                    answer.verdict = format!("end {app_status} {protocol_status}, left {left}");
                    return answer;
                }
                Err(err) => {
                    answer.verdict = format!("error: {err}");
                    return answer;
                }
            }
        }
    }
    answer
}

/// The answer to `wire` as one line, after checking that every split gives it.
fn records_verdict(wire: &[u8]) -> String {
    let whole = decode(wire, std::iter::once(wire.len()));
    let bytewise = decode(wire, std::iter::repeat(1));
    assert_eq!(whole, bytewise, "fed a byte at a time");
    if wire.len() <= 2048 {
        for cut in 1..wire.len() {
            let split = decode(wire, [cut, wire.len()].into_iter());
            assert_eq!(whole, split, "split at {cut}");
        }
    }
    let show = |b: &[u8]| {
        if b.len() > 40 {
            format!("<{} bytes>", b.len())
        } else {
            format!("{:?}", String::from_utf8_lossy(b))
        }
    };
    format!(
        "out {} err {} {}",
        show(&whole.stdout),
        show(&whole.stderr),
        whole.verdict
    )
}

#[test]
fn records_decode_alike_in_every_split() {
    let cat = |parts: &[&[u8]]| parts.concat();
    let big = vec![b'x'; MAX_CONTENT];
    #[rustfmt::skip]
    let rows: Vec<(Vec<u8>, &str, &str)> = vec![
        (cat(&[&stdout(b"hello"), &stdout(b""), &end(0, 0)]), r#"out "hello" err "" end 0 0, left 0"#, "§6.2 stdout, its end, END_REQUEST"),
        (cat(&[&record(6, 1, b"hi", 6), &record(3, 1, &[0, 0, 0, 1, 0, 0, 0, 0], 3)]), r#"out "hi" err "" end 1 0, left 0"#, "§3.3 padding dropped, END_REQUEST's too"),
        (cat(&[&stdout(b"a"), &stderr(b"oops"), &stdout(b"b"), &end(0, 0)]), r#"out "ab" err "oops" end 0 0, left 0"#, "§6.2 stderr interleaved with stdout"),
        (cat(&[&stderr(b""), &stdout(b""), &record(6, 1, b"", 5), &stdout(b"x"), &end(0, 0)]), r#"out "x" err "" end 0 0, left 0"#, "§3.3 zero-length records consumed silently"),
        (cat(&[&stdout(&big), &end(0, 0)]), r#"out <65535 bytes> err "" end 0 0, left 0"#, "§3.3 the largest record"),
        (cat(&[&record(10, 0, &[1, 1, b'A', b'1'], 4), &record(11, 0, &[9, 0, 0, 0, 0, 0, 0, 0], 0), &stdout(b"x"), &end(0, 0)]), r#"out "x" err "" end 0 0, left 0"#, "§4 management records (id 0) skipped"),
        (end(0x0102_0304, 2), r#"out "" err "" end 16909060 2, left 0"#, "§5.5 appStatus and protocolStatus as sent (OVERLOADED)"),
        (end(0, 9), r#"out "" err "" end 0 9, left 0"#, "§5.5 an unknown protocolStatus is returned for the caller to judge"),
        (record(3, 1, &[0, 0, 0, 7, 0, 0, 0, 0, 9, 9], 3), r#"out "" err "" end 7 0, left 0"#, "END_REQUEST over 8 bytes: the rest dropped"),
        (cat(&[&end(0, 0), &stdout(b"late")]), r#"out "" err "" end 0 0, left 12"#, "bytes after END_REQUEST are left for the caller (who closes)"),
        (stdout(b"abc")[..8].to_vec(), r#"out "" err "" more"#, "a header without its content"),
        (stdout(b"abc")[..5].to_vec(), r#"out "" err "" more"#, "half a header"),
        (end(0, 0)[..15].to_vec(), r#"out "" err "" more"#, "END_REQUEST without its last byte"),
        (cat(&[&stdout(b"abc")[..10]]), r#"out "ab" err "" more"#, "content streams before its record is whole"),
        (vec![], r#"out "" err "" more"#, "nothing yet"),
        (cat(&[&[2], &stdout(b"x")[1..]]), r#"out "" err "" error: a record of a FastCGI version other than 1"#, "§3.3 version 1 only"),
        (cat(&[&[0], &stdout(b"x")[1..]]), r#"out "" err "" error: a record of a FastCGI version other than 1"#, "§3.3 version 0"),
        (record(6, 2, b"x", 0), r#"out "" err "" error: a record for a request id we did not send"#, "§3.3 another request id"),
        (record(6, 0x0100, b"x", 0), r#"out "" err "" error: a record for a request id we did not send"#, "§3.3 the request id is big-endian"),
        (record(6, 0, b"x", 0), r#"out "" err "" error: a request's record type with request id 0"#, "§4 STDOUT as a management record"),
        (record(3, 0, &[0; 8], 0), r#"out "" err "" error: a request's record type with request id 0"#, "§4 END_REQUEST as a management record"),
        (record(10, 1, b"", 0), r#"out "" err "" error: a management record type with a request id"#, "§4 GET_VALUES_RESULT for a request"),
        (record(1, 1, &[0; 8], 0), r#"out "" err "" error: a record type an application never sends"#, "BEGIN_REQUEST from the application"),
        (record(2, 1, b"", 0), r#"out "" err "" error: a record type an application never sends"#, "ABORT_REQUEST from the application"),
        (record(4, 1, b"", 0), r#"out "" err "" error: a record type an application never sends"#, "PARAMS from the application"),
        (record(5, 1, b"", 0), r#"out "" err "" error: a record type an application never sends"#, "STDIN from the application"),
        (record(8, 1, b"", 0), r#"out "" err "" error: a record type an application never sends"#, "DATA from the application"),
        (record(9, 0, b"", 0), r#"out "" err "" error: a request's record type with request id 0"#, "GET_VALUES from the application"),
        (record(0, 1, b"", 0), r#"out "" err "" error: a record of an unknown type"#, "§8 type 0 is no type"),
        (record(12, 0, b"", 0), r#"out "" err "" error: a record of an unknown type"#, "§8 a type after UNKNOWN_TYPE"),
        (record(3, 1, &[0; 7], 0), r#"out "" err "" error: END_REQUEST shorter than 8 bytes"#, "§5.5 END_REQUEST's body is 8 bytes"),
        (cat(&[&stdout(b"a"), &record(6, 3, b"b", 0)]), r#"out "a" err "" error: a record for a request id we did not send"#, "what came before an error is returned alike"),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(wire, want, _)| records_verdict(wire) != *want)
        .map(|(wire, want, why)| format!("{why}:\n  got  {}\n  want {want}", records_verdict(wire)))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn stdout_streams_out_of_a_record_in_parts() {
    let wire = stdout(&vec![b'x'; MAX_CONTENT]);
    let mut records = Records::new();
    let mut buf = BytesMut::from(&wire[..HEADER_LEN + 1000]);
    let Ok(Some(Record::Stdout(part))) = records.next(&mut buf) else {
        panic!("no Stdout before the record is whole");
    };
    assert_eq!(part.len(), 1000);
    assert!(buf.is_empty());
    assert_eq!(records.next(&mut buf), Ok(None));
}

#[test]
fn every_call_after_end_is_an_error() {
    let mut records = Records::new();
    let mut buf = BytesMut::from(&end(0, 0)[..]);
    assert!(matches!(
        records.next(&mut buf),
        Ok(Some(Record::End { .. }))
    ));
    assert!(buf.is_empty(), "END_REQUEST is consumed whole");
    for _ in 0..2 {
        assert_eq!(
            records.next(&mut buf),
            Err(RecordError("a record after END_REQUEST"))
        );
    }
}

/// What parse_cgi_head made of `wire`, with what it left of it.
fn cgi_verdict(wire: &[u8]) -> String {
    match parse_cgi_head(wire) {
        Ok(None) => "incomplete".into(),
        Err(err) => format!("error: {err}"),
        Ok(Some((head, consumed))) => {
            let fields: Vec<String> = head
                .headers
                .iter()
                .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            format!(
                "{} [{}] left {:?}",
                head.status.as_u16(),
                fields.join(" "),
                String::from_utf8_lossy(&wire[consumed..])
            )
        }
    }
}

#[test]
fn cgi_heads_follow_rfc_3875() {
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str)] = &[
        ("Content-Type: text/html\r\n\r\nbody", r#"200 [content-type=text/html] left "body""#, "§6.3.1 a document response is 200"),
        ("Status: 404 Not Found\r\nContent-Type: text/html\r\n\r\nbody", r#"404 [content-type=text/html] left "body""#, "§6.3.3 Status with a reason phrase, removed from the fields"),
        ("Status: 404\r\n\r\n", r#"404 [] left """#, "§6.3.3 Status without a reason phrase"),
        ("status: 201\r\n\r\n", r#"201 [] left """#, "field names are case-insensitive"),
        ("Status: 599\r\n\r\n", r#"599 [] left """#, "the highest status"),
        ("Status: 200\r\n\r\n", r#"200 [] left """#, "the lowest status"),
        ("Status: 404x\r\n\r\n", "error: malformed CGI Status", "§6.3.3 SP between code and reason"),
        ("Status: 4040\r\n\r\n", "error: malformed CGI Status", "§6.3.3 exactly three digits"),
        ("Status: 40\r\n\r\n", "error: malformed CGI Status", "§6.3.3 two digits"),
        ("Status: +40\r\n\r\n", "error: malformed CGI Status", "§6.3.3 digits only"),
        ("Status: \r\n\r\n", "error: malformed CGI Status", "an empty Status"),
        ("Status: 404\tNot Found\r\n\r\n", "error: malformed CGI Status", "§6.3.3 SP, not a tab"),
        ("Status: 100 Continue\r\n\r\n", "error: an informational CGI Status", "a 1xx cannot end the head"),
        ("Status: 101\r\n\r\n", "error: an informational CGI Status", "no protocol switch from a script"),
        ("Status: 600\r\n\r\n", "error: a CGI Status out of range", "no status over 599"),
        ("Status: 099\r\n\r\n", "error: a CGI Status out of range", "no status under 100"),
        ("Status: 200\r\nStatus: 404\r\n\r\n", "error: more than one CGI Status field", "two Status fields are ambiguous"),
        ("Status: 200\r\nstatus: 200\r\n\r\n", "error: more than one CGI Status field", "two Status fields, even equal"),
        ("Location: /elsewhere\r\n\r\n", r#"302 [location=/elsewhere] left """#, "§6.3.2 a local redirect answered as a client redirect, as nginx does"),
        ("Location: http://a/\r\n\r\n", r#"302 [location=http://a/] left """#, "§6.2.3 a client redirect is 302"),
        ("Status: 301 Moved\r\nLocation: http://a/\r\n\r\n", r#"301 [location=http://a/] left """#, "§6.2.4 Status beside Location wins"),
        ("Location: http://a/\r\nStatus: 200\r\n\r\n", r#"200 [location=http://a/] left """#, "Status wins whatever the order"),
        ("Status: 404\nX-A: 1\n\nbody", r#"404 [x-a=1] left "body""#, "§6.1 lines may end in bare LF"),
        ("X-A: 1\r\n\nbody", r#"200 [x-a=1] left "body""#, "CRLF and LF mixed"),
        ("\r\nbody", r#"200 [] left "body""#, "an empty header section"),
        ("\n", r#"200 [] left """#, "an empty header section, LF"),
        ("Set-Cookie: a\r\nSet-Cookie: b\r\n\r\n", "200 [set-cookie=a set-cookie=b] left \"\"", "repeated fields are all kept"),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\nhello", r#"200 [x-a=1] left "hello""#, "the records frame the body: Content-Length and Transfer-Encoding dropped"),
        ("X-A: a\tbé\r\n\r\n", "200 [x-a=a\tbé] left \"\"", "tab and obs-text are field-value bytes"),
        ("X\x7f: 1\r\n\r\n", "error: invalid CGI field name", "field names are tokens"),
        ("X Y: 1\r\n\r\n", "error: invalid CGI field name", "no space in a field name"),
        ("X-A : 1\r\n\r\n", "error: invalid CGI field name", "no whitespace before the colon"),
        (": 1\r\n\r\n", "error: invalid CGI field name", "an empty field name"),
        ("X-A: 1\r\n folded\r\n\r\n", "error: invalid CGI field name", "obs-fold refused"),
        (" X-A: 1\r\n\r\n", "error: invalid CGI field name", "whitespace before the first field"),
        ("X-A: a\x00b\r\n\r\n", "error: invalid CGI field value", "no NUL in a value"),
        ("X-A: a\rb\r\n\r\n", "error: invalid CGI field value", "no bare CR in a value"),
        ("X-A: a\x7fb\r\n\r\n", "error: invalid CGI field value", "no DEL in a value"),
        ("HTTP/1.1 200 OK\r\n\r\n", "error: invalid CGI field name", "a non-parsed-header response is not CGI's"),
        ("X-A\r\n\r\n", "error: invalid CGI field name", "a field line without a colon"),
        ("", "incomplete", "nothing yet"),
        ("Status: 404\r\n", "incomplete", "no blank line yet"),
        ("X-A: 1\r\n\r", "incomplete", "a CR may start the blank line"),
        ("Status: 999\r\n", "incomplete", "a field is judged once the head is whole"),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(wire, want, _)| cgi_verdict(wire.as_bytes()) != *want)
        .map(|(wire, want, why)| {
            format!(
                "{why}: {wire:?}\n  got  {}\n  want {want}",
                cgi_verdict(wire.as_bytes())
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn cgi_heads_over_the_h1_limits_are_refused() {
    let value = "a".repeat(MAX_HEAD_BYTES);
    let too_large = "error: CGI header section too large";
    assert_eq!(
        cgi_verdict(format!("X-A: {value}\r\n\r\n").as_bytes()),
        too_large
    );
    // Refused before the blank line: a caller buffering the head stops growing it.
    assert_eq!(cgi_verdict(format!("X-A: {value}").as_bytes()), too_large);
    // What lies past the limit is not read: the verdict cannot depend on how much of it
    // has arrived (before, a NUL past the limit was an invalid value, and every shorter
    // buffer over the limit too large).
    assert_eq!(
        cgi_verdict(format!("X-A: {value}\0\r\n\r\n").as_bytes()),
        too_large
    );
    let at_limit = format!("X-A: {}\r\n\r\n", &value[..MAX_HEAD_BYTES - 9]);
    assert_eq!(at_limit.len(), MAX_HEAD_BYTES);
    assert!(cgi_verdict(at_limit.as_bytes()).starts_with("200"));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert_eq!(
        cgi_verdict(format!("{many}\r\n").as_bytes()),
        "error: too many CGI header fields"
    );
    let most: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    assert!(cgi_verdict(format!("{most}\r\n").as_bytes()).starts_with("200"));
}
