//! The FastCGI 1.0 codec, client side: the records we send an application (PHP-FPM)
//! and the records it answers with. Pure: no I/O, no tokio.
//!
//! In: a request's parts to encode (name-value params, body bytes), and bytes read from
//! the application (a `BytesMut` the caller fills, in any split).
//! Out: records appended to a `Vec<u8>`; the answer as [`Record`]s ([`Records`]); the
//! CGI header section at the start of its stdout as a judged status and header map
//! ([`parse_cgi_head`]). A refused answer is an error the caller turns into a 502 and a
//! closed connection: nothing after it is read.
//!
//! One request at a time per connection, always [`REQUEST_ID`]. What the specification
//! leaves optional to a sender (padding to 8 bytes, GET_VALUES) we do not send; what it
//! lets an application send that we have no use for (padding, management records) is
//! read and dropped.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::proxy::h1::codec::{MAX_HEADERS, MAX_HEAD_BYTES};

/// The one request id per connection: PHP-FPM does not multiplex.
pub const REQUEST_ID: u16 = 1;
/// Largest content of one record.
pub const MAX_CONTENT: usize = u16::MAX as usize;
/// Longest name or value a name-value pair can carry (a 31-bit length, spec §3.4).
pub const MAX_NAME_VALUE_LEN: usize = 0x7fff_ffff;

/// `FCGI_VERSION_1`, the only version there is.
const VERSION: u8 = 1;
/// Every record starts with a header of this many bytes (spec §3.3).
const HEADER_LEN: usize = 8;
/// The body of BEGIN_REQUEST and of END_REQUEST (spec §5.1, §5.5).
const FIXED_BODY_LEN: usize = 8;
/// `FCGI_RESPONDER`: the application answers the request (spec §6.2).
const ROLE_RESPONDER: u16 = 1;
/// `FCGI_KEEP_CONN`: the application leaves the connection open after the request.
const KEEP_CONN: u8 = 1;

/// A record's type (spec §8).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    BeginRequest = 1,
    AbortRequest = 2,
    EndRequest = 3,
    Params = 4,
    Stdin = 5,
    Stdout = 6,
    Stderr = 7,
    Data = 8,
    GetValues = 9,
    GetValuesResult = 10,
    UnknownType = 11,
}

impl RecordType {
    /// The type a header's type byte names, if any.
    fn from_byte(byte: u8) -> Option<Self> {
        use RecordType::*;
        const ALL: [RecordType; 11] = [
            BeginRequest,
            AbortRequest,
            EndRequest,
            Params,
            Stdin,
            Stdout,
            Stderr,
            Data,
            GetValues,
            GetValuesResult,
            UnknownType,
        ];
        ALL.into_iter().find(|kind| *kind as u8 == byte)
    }
}

/// Why what the application sent is refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub &'static str);

// --- encoders: append to `out`, never fail ---

/// Appends the header of one record of `kind` for [`REQUEST_ID`], with no padding: the
/// caller writes its `content_len` bytes after it, from where they are (a vectored
/// write leaves a body uncopied).
pub fn put_record_header(out: &mut Vec<u8>, kind: RecordType, content_len: u16) {
    let [id_hi, id_lo] = REQUEST_ID.to_be_bytes();
    let [len_hi, len_lo] = content_len.to_be_bytes();
    // Padding 0: alignment to 8 is a recommendation for speed, not a rule (spec §3.3).
    out.extend_from_slice(&[VERSION, kind as u8, id_hi, id_lo, len_hi, len_lo, 0, 0]);
}

/// Appends BEGIN_REQUEST in the RESPONDER role; `keep_conn` asks the application to
/// leave the connection open for the next request.
pub fn put_begin_request(out: &mut Vec<u8>, keep_conn: bool) {
    put_record_header(out, RecordType::BeginRequest, FIXED_BODY_LEN as u16);
    let [role_hi, role_lo] = ROLE_RESPONDER.to_be_bytes();
    let flags = if keep_conn { KEEP_CONN } else { 0 };
    out.extend_from_slice(&[role_hi, role_lo, flags, 0, 0, 0, 0, 0]);
}

/// Appends one name-value pair to a params payload (spec §3.4). Names and values are
/// arbitrary bytes; each length takes 1 byte below 128, else 4 with the high bit set.
///
/// # Panics
/// When a name or value is longer than [`MAX_NAME_VALUE_LEN`], which no length fits:
/// the heads params are made from are limited far below that.
pub fn put_name_value(payload: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    put_length(payload, name.len());
    put_length(payload, value.len());
    payload.extend_from_slice(name);
    payload.extend_from_slice(value);
}

/// The bytes [`put_name_value`] appends for this pair.
pub fn name_value_len(name: &[u8], value: &[u8]) -> usize {
    let length = |n: usize| if n < 0x80 { 1 } else { 4 };
    length(name.len()) + length(value.len()) + name.len() + value.len()
}

fn put_length(out: &mut Vec<u8>, len: usize) {
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            assert!(
                len <= MAX_NAME_VALUE_LEN,
                "a FastCGI name or value over 2 GiB"
            );
            // Fits: checked just above.
            let long = len as u32 | 0x8000_0000;
            out.extend_from_slice(&long.to_be_bytes());
        }
    }
}

/// Appends `payload` as records of `kind`, each of at most [`MAX_CONTENT`] bytes;
/// nothing when it is empty (an empty record would end the stream).
///
/// For STDIN. Not for a PARAMS payload over [`MAX_CONTENT`]: PHP-FPM decodes each PARAMS
/// record on its own and refuses a pair cut between two; [`put_params`] cuts between
/// pairs.
pub fn put_stream(out: &mut Vec<u8>, kind: RecordType, payload: &[u8]) {
    for content in payload.chunks(MAX_CONTENT) {
        // `chunks` gives at most MAX_CONTENT, u16::MAX, bytes.
        put_record_header(out, kind, content.len() as u16);
        out.extend_from_slice(content);
    }
}

/// Appends a params payload (pairs from [`put_name_value`]) as PARAMS records that each
/// hold whole pairs, as PHP-FPM needs; nothing when it is empty. Refused, with nothing
/// appended, when one pair is over [`MAX_CONTENT`] (no record holds it) or `payload` is
/// not a list of pairs.
pub fn put_params(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), RecordError> {
    let before = out.len();
    put_whole_pairs(out, payload).inspect_err(|_| out.truncate(before))
}

fn put_whole_pairs(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), RecordError> {
    let mut start = 0;
    let mut at = 0;
    while at < payload.len() {
        let end = next_pair(payload, at)?.2;
        if end - start <= MAX_CONTENT {
            at = end;
            continue;
        }
        if at == start {
            return Err(RecordError("a param over the size of one record"));
        }
        // This record ends before the pair; the pair starts the next.
        put_stream(out, RecordType::Params, &payload[start..at]);
        start = at;
    }
    put_stream(out, RecordType::Params, &payload[start..]);
    Ok(())
}

/// Appends the empty record that ends a stream (PARAMS or STDIN).
pub fn put_stream_end(out: &mut Vec<u8>, kind: RecordType) {
    put_record_header(out, kind, 0);
}

/// Appends END_REQUEST, as an application ends a request: for fake backends in tests.
pub fn put_end_request(out: &mut Vec<u8>, app_status: u32, protocol_status: u8) {
    put_record_header(out, RecordType::EndRequest, FIXED_BODY_LEN as u16);
    out.extend_from_slice(&app_status.to_be_bytes());
    out.extend_from_slice(&[protocol_status, 0, 0, 0]);
}

/// A name and its value, as bytes: what a params payload is a list of.
pub type NameValue<'p> = (&'p [u8], &'p [u8]);

/// Decodes a params payload back into its pairs, in order. For fake backends in tests
/// and the fuzz target: the proxy itself never receives params.
pub fn parse_name_values(payload: &[u8]) -> Result<Vec<NameValue<'_>>, RecordError> {
    let mut pairs = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let (name, value, end) = next_pair(payload, at)?;
        pairs.push((name, value));
        at = end;
    }
    Ok(pairs)
}

/// The pair that starts at `at` in `payload`, and where it ends.
fn next_pair(payload: &[u8], at: usize) -> Result<(&[u8], &[u8], usize), RecordError> {
    let (name_len, at) = read_length(payload, at)?;
    let (value_len, at) = read_length(payload, at)?;
    let cut_short = RecordError("a name-value pair cut short");
    let name_end = at.checked_add(name_len).ok_or(cut_short)?;
    let end = name_end.checked_add(value_len).ok_or(cut_short)?;
    let name = payload.get(at..name_end).ok_or(cut_short)?;
    let value = payload.get(name_end..end).ok_or(cut_short)?;
    Ok((name, value, end))
}

/// The length that starts at `at`, and where it ends.
fn read_length(payload: &[u8], at: usize) -> Result<(usize, usize), RecordError> {
    let cut_short = RecordError("a name-value length cut short");
    match payload.get(at) {
        None => Err(cut_short),
        Some(&short) if short < 0x80 => Ok((usize::from(short), at + 1)),
        Some(_) => match payload.get(at..at + 4) {
            Some(&[a, b, c, d]) => {
                let long = u32::from_be_bytes([a & 0x7f, b, c, d]);
                Ok((long as usize, at + 4))
            }
            _ => Err(cut_short),
        },
    }
}

// --- decoder of what the application sends back for REQUEST_ID ---

/// One piece of the application's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Bytes of the response: the CGI header section, then the body. Never empty.
    Stdout(Bytes),
    /// Bytes of the application's error log. Never empty.
    Stderr(Bytes),
    /// END_REQUEST: the request is over. `protocol_status` is returned as sent: 0
    /// REQUEST_COMPLETE, 1 CANT_MPX_CONN, 2 OVERLOADED, 3 UNKNOWN_ROLE, others unknown.
    End {
        app_status: u32,
        protocol_status: u8,
    },
}

/// The decoder of an application's answer to [`REQUEST_ID`]: fed any split of the
/// wire bytes, it gives the same stdout and stderr bytes, and the same end or error.
/// It holds no bytes itself: waiting for a record header or END_REQUEST's body, it
/// leaves them in the caller's buffer.
#[derive(Debug, Default)]
pub struct Records {
    state: State,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a record header.
    #[default]
    Header,
    /// In the content of a STDOUT or STDERR record: `left` bytes, then `padding`.
    Stream {
        stdout: bool,
        left: usize,
        padding: usize,
    },
    /// Bytes to drop (padding, a management record), then a record header.
    Skip(usize),
    /// Before END_REQUEST's body; `rest` is what follows it in the record.
    EndBody {
        rest: usize,
    },
    /// After END_REQUEST's body, `left` bytes to drop before the end is reported: the
    /// caller finds the buffer empty after the end only if the record was all read.
    EndRest {
        left: usize,
        app_status: u32,
        protocol_status: u8,
    },
    Done,
}

impl Records {
    /// A decoder before the answer's first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether END_REQUEST was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next piece of the answer out of `buf`, consuming what it reads; `Ok(None)`
    /// when `buf` holds no complete piece yet.
    ///
    /// Stdout and stderr content is returned as soon as any of it is in `buf` (a 64 KiB
    /// record streams out in parts), never empty. Empty (stream-end) STDOUT and STDERR
    /// records and padding are consumed silently, and so are management records
    /// (request id 0). After [`Record::End`] every call is an error: the caller checks
    /// that `buf` is empty before it reuses the connection.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Record>, RecordError> {
        loop {
            match self.state {
                State::Header => {
                    let Some(&header) = buf.first_chunk::<HEADER_LEN>() else {
                        return Ok(None);
                    };
                    self.state = judge_header(header)?;
                    buf.advance(HEADER_LEN);
                }
                State::Stream {
                    left: 0, padding, ..
                } => self.state = State::Skip(padding),
                State::Stream {
                    stdout,
                    left,
                    padding,
                } => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let content = buf.split_to(left.min(buf.len())).freeze();
                    let left = left - content.len();
                    self.state = State::Stream {
                        stdout,
                        left,
                        padding,
                    };
                    return Ok(Some(if stdout {
                        Record::Stdout(content)
                    } else {
                        Record::Stderr(content)
                    }));
                }
                State::Skip(0) => self.state = State::Header,
                State::Skip(left) => match drop_some(buf, left) {
                    Some(left) => self.state = State::Skip(left),
                    None => return Ok(None),
                },
                State::EndBody { rest } => {
                    let Some(&[a, b, c, d, protocol_status, ..]) =
                        buf.first_chunk::<FIXED_BODY_LEN>()
                    else {
                        return Ok(None);
                    };
                    buf.advance(FIXED_BODY_LEN);
                    self.state = State::EndRest {
                        left: rest,
                        app_status: u32::from_be_bytes([a, b, c, d]),
                        protocol_status,
                    };
                }
                State::EndRest {
                    left: 0,
                    app_status,
                    protocol_status,
                } => {
                    self.state = State::Done;
                    return Ok(Some(Record::End {
                        app_status,
                        protocol_status,
                    }));
                }
                State::EndRest {
                    left,
                    app_status,
                    protocol_status,
                } => match drop_some(buf, left) {
                    Some(left) => {
                        self.state = State::EndRest {
                            left,
                            app_status,
                            protocol_status,
                        }
                    }
                    None => return Ok(None),
                },
                State::Done => return Err(RecordError("a record after END_REQUEST")),
            }
        }
    }
}

/// Drops up to `left` bytes from the front of `buf`: how many are still to drop after,
/// or `None` when `buf` was empty.
fn drop_some(buf: &mut BytesMut, left: usize) -> Option<usize> {
    if buf.is_empty() {
        return None;
    }
    let n = left.min(buf.len());
    buf.advance(n);
    Some(left - n)
}

/// What follows a record header (spec §3.3), or why the record is refused.
fn judge_header(header: [u8; HEADER_LEN]) -> Result<State, RecordError> {
    let [version, kind, id_hi, id_lo, len_hi, len_lo, padding, _reserved] = header;
    if version != VERSION {
        return Err(RecordError("a record of a FastCGI version other than 1"));
    }
    let kind = RecordType::from_byte(kind).ok_or(RecordError("a record of an unknown type"))?;
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let padding = usize::from(padding);
    use RecordType::*;
    match (u16::from_be_bytes([id_hi, id_lo]), kind) {
        // Management records (spec §4): answers to queries we never send; dropped.
        (0, GetValuesResult | UnknownType) => Ok(State::Skip(len + padding)),
        (0, _) => Err(RecordError("a request's record type with request id 0")),
        (REQUEST_ID, Stdout | Stderr) => Ok(State::Stream {
            stdout: kind == Stdout,
            left: len,
            padding,
        }),
        (REQUEST_ID, EndRequest) if len < FIXED_BODY_LEN => {
            Err(RecordError("END_REQUEST shorter than 8 bytes"))
        }
        // A longer END_REQUEST than the spec's 8 bytes: the rest is read and dropped.
        (REQUEST_ID, EndRequest) => Ok(State::EndBody {
            rest: len - FIXED_BODY_LEN + padding,
        }),
        (REQUEST_ID, GetValuesResult | UnknownType) => {
            Err(RecordError("a management record type with a request id"))
        }
        (REQUEST_ID, _) => Err(RecordError("a record type an application never sends")),
        _ => Err(RecordError("a record for a request id we did not send")),
    }
}

// --- the CGI response header section at the start of stdout (RFC 3875 §6) ---

/// A judged CGI header section: the response's status and its header fields, without
/// `Status`, `Content-Length` and `Transfer-Encoding`.
#[derive(Debug)]
pub struct CgiHead {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
}

/// Why an application's CGI header section is refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CgiError(pub &'static str);

/// Parses the CGI header section at the front of `buf` by the HTTP/1.1 codec's rules
/// (httparse, strict: field names are tokens, values `HeaderValue` bytes, no obs-fold,
/// no whitespace before the colon; lines end in CRLF or bare LF, as CGI allows), with
/// its limits. `Ok(Some((head, consumed)))` once its blank line is in `buf`, `Ok(None)`
/// before; over [`MAX_HEAD_BYTES`] it is an error even while incomplete, so a caller
/// that buffers until `Some` holds no more than that.
///
/// The status: a `Status` field's (RFC 3875 §6.3.3), else 302 with a `Location`
/// (§6.3.2: nginx and Apache answer a local redirect the same), else 200.
pub fn parse_cgi_head(buf: &[u8]) -> Result<Option<(CgiHead, usize)>, CgiError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    // Only what a head may span is read: a byte past the limit cannot change the verdict
    // (too large), so a longer buffer is judged as any of its prefixes over the limit is.
    let within = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let (len, fields) = match httparse::parse_headers(within, &mut slots) {
        Ok(httparse::Status::Complete(complete)) => complete,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(CgiError("CGI header section too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CgiError("too many CGI header fields")),
        Err(httparse::Error::HeaderName) => return Err(CgiError("invalid CGI field name")),
        Err(httparse::Error::HeaderValue) => return Err(CgiError("invalid CGI field value")),
        Err(_) => return Err(CgiError("malformed CGI header section")),
    };
    let mut status = None;
    let mut location = false;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"status") {
            // Two would leave the status to whichever one a reader believes.
            if status.replace(parse_status(field.value)?).is_some() {
                return Err(CgiError("more than one CGI Status field"));
            }
            continue;
        }
        // The records frame the body, and the proxy frames it again for the client: a
        // length or coding the script set describes neither, and passed on it would be
        // a second framing the client might believe.
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            continue;
        }
        location |= name.eq_ignore_ascii_case(b"location");
        // httparse's strict parse already admits only token names and `HeaderValue`
        // bytes (a test of the h1 codec says so); these only convert.
        let name = HeaderName::from_bytes(name).map_err(|_| CgiError("invalid CGI field name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| CgiError("invalid CGI field value"))?;
        headers.append(name, value);
    }
    let status = status.unwrap_or(if location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(Some((CgiHead { status, headers }, len)))
}

/// A `Status` value: three digits of a final status, then nothing or SP and a reason
/// phrase (dropped: HTTP/2 has none, HTTP/1.1 clients ignore it).
fn parse_status(value: &[u8]) -> Result<StatusCode, CgiError> {
    let malformed = CgiError("malformed CGI Status");
    let (digits, reason) = value.split_at_checked(3).ok_or(malformed)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(reason.is_empty() || reason[0] == b' ') {
        return Err(malformed);
    }
    let code = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    match code {
        // A 1xx cannot end the head: which response would the body be?
        100..=199 => Err(CgiError("an informational CGI Status")),
        200..=599 => StatusCode::from_u16(code).map_err(|_| malformed),
        _ => Err(CgiError("a CGI Status out of range")),
    }
}

#[cfg(test)]
mod tests;
