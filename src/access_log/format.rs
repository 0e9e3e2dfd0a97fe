//! The two line formats, pure: an [`Entry`] in, one line (with its `\n`) appended.
//!
//! Text is nginx's `combined` format, so the tools that read ingress-nginx's log read
//! its start, followed by the rest as `key=value` (a quoted value when a client chose
//! it). JSON is one object per line with every field always present, `null` when it
//! has no value. Client-chosen bytes are escaped as nginx does (`\xHH` in text; JSON
//! escapes in JSON, invalid UTF-8 replaced), and each is cut at [`MAX_FIELD`] bytes.

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use super::{Entry, Tried};

/// Longest client-chosen field (method, host, target, referer, user agent, request id)
/// logged whole; longer ones are cut, and end with `...`. Escaped, one field takes at
/// most four times this in a text line, so a line stays under 52 KiB.
pub const MAX_FIELD: usize = 2048;

/// Appends `entry` as a text line.
pub fn text(entry: &Entry, out: &mut Vec<u8>) {
    let _ = write!(out, "{} - - [", entry.client);
    time_local(out, entry.time);
    out.extend_from_slice(b"] \"");
    escaped_text(out, entry.method.as_str().as_bytes());
    out.push(b' ');
    escaped_text(out, target(entry).as_bytes());
    let _ = write!(
        out,
        " {}\" {} {} \"",
        protocol(entry.version),
        entry.status,
        entry.bytes_sent
    );
    escaped_text(out, header_or_dash(entry.referer.as_ref()));
    out.extend_from_slice(b"\" \"");
    escaped_text(out, header_or_dash(entry.user_agent.as_ref()));
    out.extend_from_slice(b"\" host=\"");
    escaped_text(
        out,
        entry.host.as_deref().map_or(b"-".as_slice(), str::as_bytes),
    );
    out.push(b'"');
    let _ = write!(
        out,
        " route={} backend={}",
        entry.route.as_deref().unwrap_or("-"),
        entry.backend
    );
    for (name, tried) in [("primary", &entry.primary), ("fallback", &entry.fallback)] {
        match tried {
            Some(Tried {
                addr,
                status,
                duration,
            }) => {
                // A route's author chose the address: escaped like a client's bytes.
                let _ = write!(out, " {name}=");
                escaped_text(out, addr.as_bytes());
                let _ = write!(out, " {name}_status=");
                match status {
                    Some(status) => {
                        let _ = write!(out, "{status}");
                    }
                    None => out.push(b'-'),
                }
                let _ = write!(out, " {name}_duration=");
                seconds(out, *duration);
            }
            None => {
                let _ = write!(out, " {name}=- {name}_status=- {name}_duration=-");
            }
        }
    }
    let _ = write!(
        out,
        " fallback_reason={} fallback_skipped={} error={} bytes_received={} duration=",
        entry.fallback_reason.unwrap_or("-"),
        entry.fallback_skipped.unwrap_or("-"),
        entry.error.unwrap_or("-"),
        entry.bytes_received,
    );
    seconds(out, entry.duration);
    out.extend_from_slice(b" request_id=\"");
    escaped_text(out, entry.request_id.as_bytes());
    out.extend_from_slice(b"\"\n");
}

/// Appends `entry` as a JSON line. Written a byte string at a time, without `fmt`: it
/// runs once per request on the proxy's workers.
pub fn json(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339_millis(out, entry.time);
    out.extend_from_slice(b"\",\"client\":\"");
    let _ = write!(out, "{}", entry.client);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, entry.method.as_str().as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_opt(out, entry.host.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"target\":");
    json_str(out, target(entry).as_bytes());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(entry.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    number(out, entry.status.into());
    out.extend_from_slice(b",\"bytes_sent\":");
    number(out, entry.bytes_sent);
    out.extend_from_slice(b",\"bytes_received\":");
    number(out, entry.bytes_received);
    out.extend_from_slice(b",\"duration\":");
    seconds(out, entry.duration);
    out.extend_from_slice(b",\"route\":");
    json_opt(out, entry.route.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"backend\":\"");
    out.extend_from_slice(entry.backend.as_bytes());
    out.push(b'"');
    for (keys, tried) in [
        (
            [
                b",\"primary_addr\":".as_slice(),
                b",\"primary_status\":",
                b",\"primary_duration\":",
            ],
            &entry.primary,
        ),
        (
            [
                b",\"fallback_addr\":".as_slice(),
                b",\"fallback_status\":",
                b",\"fallback_duration\":",
            ],
            &entry.fallback,
        ),
    ] {
        out.extend_from_slice(keys[0]);
        json_opt(out, tried.as_ref().map(|t| t.addr.as_bytes()));
        out.extend_from_slice(keys[1]);
        match tried.as_ref().and_then(|t| t.status) {
            Some(status) => number(out, status.into()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(keys[2]);
        match tried {
            Some(t) => seconds(out, t.duration),
            None => out.extend_from_slice(b"null"),
        }
    }
    for (key, value) in [
        (b",\"fallback_reason\":".as_slice(), entry.fallback_reason),
        (b",\"fallback_skipped\":", entry.fallback_skipped),
        (b",\"error\":", entry.error),
    ] {
        out.extend_from_slice(key);
        json_opt(out, value.map(str::as_bytes));
    }
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, entry.request_id.as_bytes());
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, entry.referer.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, entry.user_agent.as_ref().map(|v| v.as_bytes()));
    out.extend_from_slice(b"}\n");
}

/// A decimal number.
fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` in `width` digits, zero-padded.
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// Seconds with microseconds, as a number, rounded as `{:.6}` would.
fn seconds(out: &mut Vec<u8>, duration: Duration) {
    let micros = (duration.as_nanos() + 500) / 1000;
    number(out, (micros / 1_000_000) as u64);
    out.push(b'.');
    padded(out, (micros % 1_000_000) as u64, 6);
}

/// The UTC calendar of `time`: year, month (1-12), day, hour, minute, second, and the
/// millisecond. Days to a date by Howard Hinnant's `civil_from_days`.
fn utc(time: SystemTime) -> [u64; 7] {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), u64::from(since.subsec_millis()));
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    [
        year,
        month,
        day,
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        millis,
    ]
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let [year, month, day, hour, minute, second, millis] = utc(time);
    padded(out, year, 4);
    for (sep, n) in [
        (b'-', month),
        (b'-', day),
        (b'T', hour),
        (b':', minute),
        (b':', second),
    ] {
        out.push(sep);
        padded(out, n, 2);
    }
    out.push(b'.');
    padded(out, millis, 3);
    out.push(b'Z');
}

/// nginx's `$time_local` in UTC: `03/Dec/2026:18:04:05 +0000`.
fn time_local(out: &mut Vec<u8>, time: SystemTime) {
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let [year, month, day, hour, minute, second, _] = utc(time);
    padded(out, day, 2);
    out.push(b'/');
    out.extend_from_slice(MONTHS[(month as usize - 1) % 12]);
    out.push(b'/');
    padded(out, year, 4);
    for n in [hour, minute, second] {
        out.push(b':');
        padded(out, n, 2);
    }
    out.extend_from_slice(b" +0000");
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// The target as sent: origin-form as it is, absolute-form whole.
fn target(entry: &Entry) -> Cow<'_, str> {
    match entry.target.scheme() {
        None => Cow::Borrowed(
            entry
                .target
                .path_and_query()
                .map_or(entry.target.path(), |pq| pq.as_str()),
        ),
        Some(_) => Cow::Owned(entry.target.to_string()),
    }
}

fn header_or_dash(value: Option<&http::HeaderValue>) -> &[u8] {
    value.map_or(b"-", |v| v.as_bytes())
}

/// Client-chosen bytes in a quoted text value: `"`, `\`, controls and non-ASCII as
/// `\xHH` (nginx's `escape=default`), cut at [`MAX_FIELD`].
fn escaped_text(out: &mut Vec<u8>, bytes: &[u8]) {
    let (bytes, cut) = cut(bytes);
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

fn cut(bytes: &[u8]) -> (&[u8], bool) {
    if bytes.len() > MAX_FIELD {
        (&bytes[..MAX_FIELD], true)
    } else {
        (bytes, false)
    }
}

/// A JSON string of client-chosen bytes, cut at [`MAX_FIELD`]; invalid UTF-8 replaced.
fn json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // Most fields are printable ASCII with nothing to escape: copied as they are.
    let plain = |b: &u8| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\';
    if bytes.len() <= MAX_FIELD && bytes.iter().all(plain) {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let (bytes, cut) = cut(bytes);
    let text = String::from_utf8_lossy(bytes);
    let text: Cow<'_, str> = if cut {
        Cow::Owned(format!("{text}..."))
    } else {
        text
    };
    let _ = serde_json::to_writer(&mut *out, text.as_ref());
}

fn json_opt(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => json_str(out, bytes),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_320_245_123),
            client: "203.0.113.9".parse().unwrap(),
            method: Method::POST,
            host: Some("shop.example.com".into()),
            target: "/cart?id=1".parse().unwrap(),
            version: Version::HTTP_11,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8.5")),
            status: 200,
            bytes_sent: 512,
            bytes_received: 12,
            duration: Duration::from_micros(4_250),
            route: Some(Arc::from("web/shop")),
            backend: "fallback",
            primary: Some(Tried {
                addr: Arc::from("10.0.0.5:80"),
                status: Some(404),
                duration: Duration::from_micros(1_000),
            }),
            fallback: Some(Tried {
                addr: Arc::from("unix:/run/app.sock"),
                status: Some(200),
                duration: Duration::from_micros(3_000),
            }),
            fallback_reason: Some("status"),
            fallback_skipped: None,
            error: None,
            request_id: HeaderValue::from_static("0af7651916cd43dd8448eb211c80319c"),
        }
    }

    #[test]
    fn times_are_the_calendar_humantime_gives() {
        // The epoch, leap days, century rules, month ends, and now.
        for secs in [
            0u64,
            59,
            86_399,
            951_782_400,     // 2000-02-29
            951_868_800,     // 2000-03-01
            1_709_164_800,   // 2024-02-29
            1_735_689_599,   // 2024-12-31T23:59:59
            4_107_542_400,   // 2100-03-01 (2100 is no leap year)
            253_402_300_799, // 9999-12-31T23:59:59
        ]
        .into_iter()
        .chain((0..2_000).map(|i| 1_700_000_000 + i * 1_234_567))
        {
            let time = UNIX_EPOCH + Duration::from_millis(secs * 1000 + secs % 1000);
            let mut ours = Vec::new();
            rfc3339_millis(&mut ours, time);
            let theirs = humantime::format_rfc3339_millis(time).to_string();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "at {secs}");
        }
        let mut local = Vec::new();
        time_local(&mut local, UNIX_EPOCH + Duration::from_secs(1_764_785_045));
        assert_eq!(local, b"03/Dec/2025:18:04:05 +0000");
    }

    #[test]
    fn durations_are_seconds_rounded_to_the_microsecond() {
        for (duration, text) in [
            (Duration::ZERO, "0.000000"),
            (Duration::from_nanos(499), "0.000000"),
            (Duration::from_nanos(500), "0.000001"),
            (Duration::from_micros(4_250), "0.004250"),
            (Duration::from_nanos(999_999_500), "1.000000"),
            (
                Duration::from_secs(3_600) + Duration::from_micros(7),
                "3600.000007",
            ),
        ] {
            let mut out = Vec::new();
            seconds(&mut out, duration);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn text_is_combined_then_key_values() {
        let mut out = Vec::new();
        text(&entry(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "203.0.113.9 - - [03/Dec/2026:17:50:45 +0000] \"POST /cart?id=1 HTTP/1.1\" 200 512 \"-\" \"curl/8.5\" \
             host=\"shop.example.com\" route=web/shop backend=fallback \
             primary=10.0.0.5:80 primary_status=404 primary_duration=0.001000 \
             fallback=unix:/run/app.sock fallback_status=200 fallback_duration=0.003000 \
             fallback_reason=status fallback_skipped=- error=- bytes_received=12 duration=0.004250 \
             request_id=\"0af7651916cd43dd8448eb211c80319c\"\n"
        );
    }

    #[test]
    fn json_has_every_field_always() {
        let mut out = Vec::new();
        let mut unrouted = entry();
        unrouted.route = None;
        unrouted.backend = "fallthrough";
        unrouted.primary = None;
        unrouted.fallback = None;
        unrouted.fallback_reason = None;
        unrouted.error = Some("no_route");
        unrouted.status = 404;
        for e in [entry(), unrouted] {
            json(&e, &mut out);
        }
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&lines[0]), keys(&lines[1]), "one schema");
        assert_eq!(keys(&lines[0]).len(), 24);
        let first = &lines[0];
        assert_eq!(first["time"], "2026-12-03T17:50:45.123Z");
        assert_eq!(first["primary_status"], 404);
        assert_eq!(first["fallback_addr"], "unix:/run/app.sock");
        assert_eq!(first["duration"], 0.00425);
        assert_eq!(first["referer"], serde_json::Value::Null);
        let second = &lines[1];
        assert_eq!(second["route"], serde_json::Value::Null);
        assert_eq!(second["primary_duration"], serde_json::Value::Null);
        assert_eq!(second["error"], "no_route");
    }

    #[test]
    fn client_chosen_bytes_are_escaped_and_cut() {
        let mut e = entry();
        e.user_agent = Some(HeaderValue::from_bytes(b"a\"b\\c\xff").unwrap());
        e.target = format!("/{}", "x".repeat(3000)).parse().unwrap();
        let mut out = Vec::new();
        text(&e, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#""a\x22b\x5Cc\xFF""#), "{line}");
        assert!(line.contains(&format!("/{}... HTTP/1.1", "x".repeat(MAX_FIELD - 1))));
        let mut out = Vec::new();
        json(&e, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["user_agent"], "a\"b\\c\u{fffd}");
        assert_eq!(v["target"].as_str().unwrap().len(), MAX_FIELD + 3);
    }
}
