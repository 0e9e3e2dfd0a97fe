//! What an operator reads and relies on, through the real binary: the access log line of
//! each kind of request (parsed, field by field), the trust in forwarding fields from
//! trusted and untrusted peers, the PROXY protocol v1 and v2, and request ids.

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::*;

/// The access log's lines so far, each parsed.
fn json_lines(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits for the access log to hold `n` lines (a worker hands its lines over once a
/// second) and returns them.
async fn logged(path: &PathBuf, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} access log lines"), || {
        let lines = json_lines(path);
        (lines.len() >= n).then_some(lines)
    })
    .await
}

async fn with_log(
    routes: &str,
    format: &str,
    extra: &[&str],
) -> (Fallthrough, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut args = vec![
        "--access-log",
        format,
        "--access-log-path",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let ft = Fallthrough::start_with(routes, &args).await;
    (ft, path, dir)
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "shop.example.com")
        .header("user-agent", "ops-test/1")
        .header("referer", "https://shop.example.com/from")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test]
async fn each_kind_of_request_is_one_json_line_saying_who_answered_and_why() {
    let php = backend("php")
        .status(404)
        .body("php 404")
        .on("/old", 200, "legacy page")
        .start()
        .await;
    let py = backend("py").body("python page").start().await;
    let dead = closed_addr().await;
    let routes = format!(
        "{}\n---\n{}",
        route(
            "shop",
            &php.url(),
            &py.url(),
            "  hosts: [shop.example.com]\n  maxReplayBytes: 8\n  skipPrimary: [/blog]\n"
        ),
        route(
            "gone",
            &format!("http://{dead}"),
            &py.url(),
            "  hosts: [gone.example.com]\n"
        ),
    );
    let (ft, path, _dir) = with_log(&routes, "json", &[]).await;

    let (status, hit_headers, _) = send(ft.http, post("/old/page?x=1", b"abc")).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(ft.http, post("/new", b"abc")).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(ft.http, post("/new", b"more than eight bytes")).await;
    assert_eq!(status, 404, "too large to replay: the primary's 404");
    let (status, _, _) = send(ft.http, post("/blog/1", b"")).await;
    assert_eq!(status, 200);
    let gone = Request::get("/x")
        .header("host", "gone.example.com")
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(ft.http, gone).await;
    assert_eq!(status, 502);
    let nowhere = Request::get("/x")
        .header("host", "elsewhere.example.com")
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(ft.http, nowhere).await;
    assert_eq!(status, 404);

    // Workers hand their lines over on their own ticks: found by what was asked.
    let lines = logged(&path, 6).await;
    let find = |host: &str, target: &str, bytes: u64| {
        lines
            .iter()
            .find(|l| l["host"] == host && l["target"] == target && l["bytes_received"] == bytes)
            .unwrap_or_else(|| panic!("a line for {host}{target}: {lines:#?}"))
    };
    let shop = "shop.example.com";
    let hit = find(shop, "/old/page?x=1", 3);
    let fallback = find(shop, "/new", 3);
    let skipped = find(shop, "/new", 21);
    let skip_primary = find(shop, "/blog/1", 0);
    let error = find("gone.example.com", "/x", 0);
    let unrouted = find("elsewhere.example.com", "/x", 0);
    let php_addr = php.addr.to_string();
    let py_addr = py.addr.to_string();

    // A hit: the primary alone.
    assert_eq!(hit["client"], "127.0.0.1");
    assert_eq!(hit["method"], "POST");
    assert_eq!(hit["host"], "shop.example.com");
    assert_eq!(hit["target"], "/old/page?x=1");
    assert_eq!(hit["protocol"], "HTTP/1.1");
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["bytes_sent"], "legacy page".len());
    assert_eq!(hit["bytes_received"], 3);
    assert!(hit["duration"].as_f64().unwrap() > 0.0);
    assert_eq!(hit["route"], "web/shop");
    assert_eq!(hit["backend"], "primary");
    assert_eq!(hit["primary_addr"], php_addr.as_str());
    assert_eq!(hit["primary_status"], 200);
    assert!(hit["primary_duration"].as_f64().unwrap() > 0.0);
    assert_eq!(hit["fallback_addr"], Value::Null);
    assert_eq!(hit["fallback_status"], Value::Null);
    assert_eq!(hit["fallback_reason"], Value::Null);
    assert_eq!(hit["fallback_skipped"], Value::Null);
    assert_eq!(hit["error"], Value::Null);
    assert_eq!(
        hit["request_id"],
        hit_headers["x-request-id"].to_str().unwrap()
    );
    assert_eq!(hit["user_agent"], "ops-test/1");
    assert_eq!(hit["referer"], "https://shop.example.com/from");
    assert!(hit["time"].as_str().unwrap().ends_with('Z'));

    // A fallback: both attempts, and why.
    assert_eq!(fallback["backend"], "fallback");
    assert_eq!(fallback["status"], 200);
    assert_eq!(fallback["primary_status"], 404);
    assert_eq!(fallback["fallback_addr"], py_addr.as_str());
    assert_eq!(fallback["fallback_status"], 200);
    assert!(fallback["fallback_duration"].as_f64().unwrap() > 0.0);
    assert_eq!(fallback["fallback_reason"], "status");
    assert_eq!(fallback["bytes_received"], 3);
    assert_eq!(fallback["bytes_sent"], "python page".len());

    // A skipped fallback: the body was too large to replay.
    assert_eq!(skipped["backend"], "primary");
    assert_eq!(skipped["status"], 404);
    assert_eq!(skipped["fallback_reason"], Value::Null);
    assert_eq!(skipped["fallback_skipped"], "body_too_large");
    assert_eq!(skipped["fallback_addr"], Value::Null);
    assert_eq!(skipped["bytes_received"], "more than eight bytes".len());

    // skipPrimary: the fallback only.
    assert_eq!(skip_primary["backend"], "fallback");
    assert_eq!(skip_primary["fallback_reason"], "skip_primary");
    assert_eq!(skip_primary["primary_addr"], Value::Null);

    // An upstream error: fallthrough answered, and says what failed where.
    assert_eq!(error["status"], 502);
    assert_eq!(error["backend"], "fallthrough");
    assert_eq!(error["route"], "web/gone");
    assert_eq!(error["error"], "connect");
    assert_eq!(error["primary_addr"], dead.to_string().as_str());
    assert_eq!(error["primary_status"], Value::Null);

    // No route.
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["route"], Value::Null);
    assert_eq!(unrouted["backend"], "fallthrough");
    assert_eq!(unrouted["error"], "no_route");

    assert_eq!(ft.sample("fallthrough_access_log_dropped_total").await, 0.0);
}

#[tokio::test]
async fn the_text_line_is_combined_then_key_values() {
    let php = backend("php").status(404).start().await;
    let py = backend("py").body("python page").start().await;
    let (ft, path, _dir) = with_log(&route("shop", &php.url(), &py.url(), ""), "text", &[]).await;
    let mut req = post("/a%20b?q=1", b"abc");
    req.headers_mut().insert(
        "user-agent",
        http::HeaderValue::from_static("ops \"test\" \\1"),
    );
    let (status, headers, _) = send(ft.http, req).await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let line = wait_for("a text line", || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
    })
    .await;
    // combined: $remote_addr - $remote_user [$time_local] "$request" $status
    // $body_bytes_sent "$http_referer" "$http_user_agent"
    let (combined, rest) = line.split_once(" host=").unwrap();
    let parts: Vec<&str> = combined.split('"').collect();
    assert!(parts[0].starts_with("127.0.0.1 - - ["), "{line}");
    assert!(parts[0].trim_end().ends_with("+0000]"), "{line}");
    assert_eq!(parts[1], "POST /a%20b?q=1 HTTP/1.1");
    assert_eq!(parts[2], " 200 11 ");
    assert_eq!(parts[3], "https://shop.example.com/from");
    assert_eq!(
        parts[5], "ops \\x22test\\x22 \\x5C1",
        "escaped as nginx does"
    );
    let fields: std::collections::HashMap<&str, &str> = rest
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(fields["route"], "web/shop");
    assert_eq!(fields["backend"], "fallback");
    assert_eq!(fields["primary"], php.addr.to_string().as_str());
    assert_eq!(fields["primary_status"], "404");
    assert_eq!(fields["fallback"], py.addr.to_string().as_str());
    assert_eq!(fields["fallback_status"], "200");
    assert_eq!(fields["fallback_reason"], "status");
    assert_eq!(fields["fallback_skipped"], "-");
    assert_eq!(fields["error"], "-");
    assert_eq!(fields["bytes_received"], "3");
    assert_eq!(fields["request_id"], format!("\"{id}\""));
}

#[tokio::test]
async fn a_trusted_proxys_fields_are_kept_and_name_the_client() {
    let php = backend("php").status(404).start().await;
    let py = backend("py").body("python page").start().await;
    let (ft, path, _dir) = with_log(
        &route("shop", &php.url(), &py.url(), ""),
        "json",
        &["--trusted-proxies", "127.0.0.1/32,10.0.0.0/8"],
    )
    .await;
    let req = Request::get("/x")
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("x-request-id", "lb-chosen-1")
        .header("x-real-ip", "6.6.6.6")
        .header("x_forwarded_host", "evil.example.com")
        .body(Full::default())
        .unwrap();
    let (status, headers, _) = send(ft.http, req).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-request-id"], "lb-chosen-1",
        "a trusted proxy's id is kept"
    );
    for seen in [&php.seen()[0], &py.seen()[0]] {
        let h = &seen.headers;
        assert_eq!(
            h["x-forwarded-for"],
            "6.6.6.6, 198.51.100.7, 10.1.2.3, 127.0.0.1"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "kept");
        assert_eq!(h["x-forwarded-host"], "www.example.com", "kept");
        assert_eq!(
            h["x-real-ip"], "198.51.100.7",
            "the right-most untrusted address"
        );
        assert_eq!(h["x-request-id"], "lb-chosen-1");
        assert_eq!(
            h["x-real-ip"], "198.51.100.7",
            "whatever X-Real-IP came through"
        );
        assert!(
            h.get("x_forwarded_host").is_none(),
            "nothing vouches for it"
        );
    }
    let lines = logged(&path, 1).await;
    assert_eq!(lines[0]["client"], "198.51.100.7");
    assert_eq!(lines[0]["request_id"], "lb-chosen-1");
}

#[tokio::test]
async fn an_untrusted_peers_fields_are_removed_and_replaced() {
    let php = backend("php").body("legacy").start().await;
    let (ft, path, _dir) = with_log(
        &route("shop", &php.url(), &php.url(), ""),
        "json",
        &["--trusted-proxies", "10.0.0.0/8"],
    )
    .await;
    let req = Request::get("/x")
        .header("host", "shop.example.com:8080")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("x-forwarded-port", "443")
        .header("x-forwarded-prefix", "/admin")
        .header("x-real-ip", "198.51.100.7")
        .header("forwarded", "for=198.51.100.7;proto=https")
        .header("x-request-id", "spoofed")
        .header("x_forwarded_for", "198.51.100.7")
        .body(Full::default())
        .unwrap();
    let (_, headers, _) = send(ft.http, req).await;
    assert_ne!(headers["x-request-id"], "spoofed");
    let h = &php.seen()[0].headers;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
    assert_eq!(h["x-forwarded-port"], "8080");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-request-id"], headers["x-request-id"]);
    assert!(h.get("forwarded").is_none());
    assert!(h.get("x-forwarded-prefix").is_none());
    assert!(
        h.get("x_forwarded_for").is_none(),
        "nor spelt with underscores"
    );
    assert_eq!(logged(&path, 1).await[0]["client"], "127.0.0.1");
}

/// A PROXY protocol v2 header for a TCP over IPv4 or IPv6 connection.
fn proxy_v2(source: std::net::SocketAddr, destination: std::net::SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (source, destination) {
        (std::net::SocketAddr::V4(s), std::net::SocketAddr::V4(d)) => {
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
            0x11
        }
        (std::net::SocketAddr::V6(s), std::net::SocketAddr::V6(d)) => {
            addresses.extend_from_slice(&s.ip().octets());
            addresses.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    // A TLV, as cloud load balancers add (PP2_TYPE_NOOP).
    addresses.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, family]);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(&addresses);
    h
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client_of_a_trusted_proxy() {
    let php = backend("php").body("legacy").start().await;
    let (ft, path, _dir) = with_log(
        &route("shop", &php.url(), &php.url(), ""),
        "json",
        &["--trusted-proxies", "127.0.0.1", "--proxy-protocol"],
    )
    .await;
    let get = b"GET /x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n";

    let mut v1 = RawConn::open(ft.http).await;
    v1.write(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 80\r\n")
        .await;
    v1.write(get).await;
    assert_eq!(v1.response(false).await.status, 200);
    // The header opens the connection only; the next request on it is plain.
    v1.write(get).await;
    assert_eq!(v1.response(false).await.status, 200);

    let mut v2 = RawConn::open(ft.http).await;
    let header = proxy_v2(
        "[2001:db8::9]:51000".parse().unwrap(),
        "[2001:db8::1]:80".parse().unwrap(),
    );
    v2.write(&[&header[..], get].concat()).await;
    assert_eq!(v2.response(false).await.status, 200);

    let mut local = RawConn::open(ft.http).await;
    // LOCAL: the load balancer's own connection (a health check).
    local
        .write(&[&b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"[..], get].concat())
        .await;
    assert_eq!(local.response(false).await.status, 200);

    let seen = php.seen();
    assert_eq!(seen[0].headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen[1].headers["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen[2].headers["x-forwarded-for"], "2001:db8::9");
    assert_eq!(seen[3].headers["x-forwarded-for"], "127.0.0.1");
    let lines = logged(&path, 4).await;
    // Workers hand their lines over on their own ticks: compared as a set.
    let mut clients: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    clients.sort();
    assert_eq!(
        clients,
        ["127.0.0.1", "2001:db8::9", "203.0.113.9", "203.0.113.9"]
    );

    // A trusted proxy's connection without the header is closed unanswered.
    let mut bare = RawConn::open(ft.http).await;
    bare.write(get).await;
    bare.wait_closed().await;
    assert_eq!(
        ft.sample("fallthrough_proxy_protocol_refused_total").await,
        1.0
    );
}

#[tokio::test]
async fn the_proxy_protocol_needs_someone_to_trust() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("r.yaml");
    std::fs::write(
        &routes,
        route("shop", "http://127.0.0.1:1", "http://127.0.0.1:2", ""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
        .args([
            "run",
            "--routes",
            routes.to_str().unwrap(),
            "--proxy-protocol",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--proxy-protocol needs --trusted-proxies"),
        "{stderr}"
    );
}

#[tokio::test]
async fn access_log_off_writes_nothing() {
    let php = backend("php").body("legacy").start().await;
    let (ft, path, _dir) = with_log(&route("shop", &php.url(), &php.url(), ""), "off", &[]).await;
    let (status, headers, _) = ft.get("/x").await;
    assert_eq!(status, 200);
    assert!(
        headers.contains_key("x-request-id"),
        "ids are on with the log off"
    );
    // The request was answered; a line would have been handed over within a second.
    let mut ft = ft;
    ft.signal("TERM");
    ft.wait_exit().await;
    assert!(!path.exists(), "no file is opened");
}
