//! The two line formats, pure: an [`Entry`] in, one line (with its `\n`) appended.
//!
//! Text is nginx's `combined` format, so the tools that read ingress-nginx's log read
//! its start, followed by the rest as `key=value` (a quoted value when a client chose
//! it). JSON is one object per line with every field always present, `null` when it
//! has no value. Client-chosen bytes are escaped as nginx does (`\xHH` in text; JSON
//! escapes in JSON, invalid UTF-8 replaced), and each is cut at [`MAX_FIELD`] bytes.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use http::Version;

use super::{Entry, Tried};

/// Longest client-chosen field (method, host, target, referer, user agent, request id)
/// logged whole; longer ones are cut, and end with `...`. Escaped, one field takes at
/// most four times this in a text line, so a line stays under 52 KiB.
pub const MAX_FIELD: usize = 2048;

/// Appends `entry` as a text line.
pub fn text(entry: &Entry, out: &mut Vec<u8>) {
    let rfc3339 = humantime::format_rfc3339_millis(entry.time).to_string();
    let _ = write!(out, "{} - - [{}] \"", entry.client, time_local(&rfc3339));
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
                let _ = write!(out, " {name}_duration={}", seconds(*duration));
            }
            None => {
                let _ = write!(out, " {name}=- {name}_status=- {name}_duration=-");
            }
        }
    }
    let _ = write!(
        out,
        " fallback_reason={} fallback_skipped={} error={} bytes_received={} duration={} request_id=\"",
        entry.fallback_reason.unwrap_or("-"),
        entry.fallback_skipped.unwrap_or("-"),
        entry.error.unwrap_or("-"),
        entry.bytes_received,
        seconds(entry.duration),
    );
    escaped_text(out, entry.request_id.as_bytes());
    out.extend_from_slice(b"\"\n");
}

/// Appends `entry` as a JSON line.
pub fn json(entry: &Entry, out: &mut Vec<u8>) {
    let time = humantime::format_rfc3339_millis(entry.time);
    let _ = write!(
        out,
        "{{\"time\":\"{time}\",\"client\":\"{}\",\"method\":",
        entry.client
    );
    json_str(out, entry.method.as_str().as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_opt(out, entry.host.as_deref().map(str::as_bytes));
    out.extend_from_slice(b",\"target\":");
    json_str(out, target(entry).as_bytes());
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes_sent\":{},\"bytes_received\":{},\"duration\":{}",
        protocol(entry.version),
        entry.status,
        entry.bytes_sent,
        entry.bytes_received,
        seconds(entry.duration)
    );
    out.extend_from_slice(b",\"route\":");
    json_opt(out, entry.route.as_deref().map(str::as_bytes));
    let _ = write!(out, ",\"backend\":\"{}\"", entry.backend);
    for (name, tried) in [("primary", &entry.primary), ("fallback", &entry.fallback)] {
        let _ = write!(out, ",\"{name}_addr\":");
        json_opt(out, tried.as_ref().map(|t| t.addr.as_bytes()));
        let _ = write!(out, ",\"{name}_status\":");
        match tried.as_ref().and_then(|t| t.status) {
            Some(status) => {
                let _ = write!(out, "{status}");
            }
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(out, ",\"{name}_duration\":");
        match tried {
            Some(t) => {
                let _ = write!(out, "{}", seconds(t.duration));
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    for (name, value) in [
        ("fallback_reason", entry.fallback_reason),
        ("fallback_skipped", entry.fallback_skipped),
        ("error", entry.error),
    ] {
        let _ = write!(out, ",\"{name}\":");
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

/// nginx's `$time_local` in UTC (`03/Dec/2026:18:04:05 +0000`), from RFC 3339 text.
fn time_local(rfc3339: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`, as humantime writes it.
    let month = rfc3339
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{}/{month}/{}:{} +0000",
        rfc3339.get(8..10).unwrap_or("01"),
        rfc3339.get(0..4).unwrap_or("1970"),
        rfc3339.get(11..19).unwrap_or("00:00:00"),
    )
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Seconds with microseconds, as a number.
fn seconds(duration: Duration) -> String {
    format!("{:.6}", duration.as_secs_f64())
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
