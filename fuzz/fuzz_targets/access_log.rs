//! The access log's two formats on hostile client-chosen bytes (host, target, referer,
//! user agent, request id): the JSON line always parses, with every field, and the text
//! line stays one line whose quoted values hold no raw quote.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fallthrough::access_log::{format, Entry};
use http::{HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(5, |&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let (host, target, referer, agent, id) = (next(), next(), next(), next(), next());
    let value = |b: &[u8]| HeaderValue::from_bytes(b).ok();
    let entry = Entry {
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_320_245),
        client: "203.0.113.9".parse().unwrap(),
        method: Method::GET,
        host: std::str::from_utf8(host).ok().map(Box::from),
        target: Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/")),
        version: Version::HTTP_11,
        referer: value(referer),
        user_agent: value(agent),
        status: 200,
        bytes_sent: 1,
        bytes_received: 2,
        duration: Duration::from_micros(3),
        route: Some(Arc::from("web/shop")),
        backend: "primary",
        primary: None,
        fallback: None,
        fallback_reason: None,
        fallback_skipped: None,
        error: None,
        request_id: value(id).unwrap_or(HeaderValue::from_static("-")),
    };
    let mut json = Vec::new();
    format::json(&entry, &mut json);
    assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1);
    let parsed: serde_json::Value = serde_json::from_slice(&json).expect("a JSON line");
    assert_eq!(parsed.as_object().unwrap().len(), 24);
    let mut text = Vec::new();
    format::text(&entry, &mut text);
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    assert_eq!(text.last(), Some(&b'\n'));
    // The combined part has exactly six quotes (request, referer, user agent), then
    // host and request id: ten in all, however the values were chosen.
    assert_eq!(text.iter().filter(|&&b| b == b'"').count(), 10, "{}", String::from_utf8_lossy(&text));
});
