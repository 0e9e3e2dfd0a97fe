//! The client side of the wire, through the real binary and a raw HTTP/1.1 client:
//! keep-alive, pipelining, a connection whose requests change kind (bodyless requests
//! take a lean path, the rest hyper's), `Connection: close`, HEAD, the idle timeout, and
//! idle connections at shutdown.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n")
}

#[tokio::test]
async fn one_connection_carries_pipelined_gets_and_requests_with_bodies() {
    let php = backend("php")
        .status(404)
        .on("/a", 200, "page a")
        .on("/b", 200, "page b")
        .start()
        .await;
    let py = backend("py").body("python page").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &py.url(), "")).await;
    let mut conn = RawConn::open(ft.http).await;

    // Three requests in one write: answered in order.
    conn.write(format!("{}{}{}", get("/a"), get("/new"), get("/b")).as_bytes())
        .await;
    for expected in ["page a", "python page", "page b"] {
        let resp = conn.response(false).await;
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, expected.as_bytes())
        );
        let date = resp.header("date").expect("every answer is dated");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date:?}");
    }

    // A body on the same connection, then bodyless requests again.
    conn.write(b"POST /form HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let resp = conn.response(false).await;
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"python page"[..])
    );
    conn.write(get("/a").as_bytes()).await;
    assert_eq!(conn.response(false).await.body, b"page a");

    let posts: Vec<_> = py
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].body.as_ref(),
        b"hello",
        "the body reached the fallback whole"
    );
    assert_eq!(
        posts[0].headers["x-forwarded-for"], "127.0.0.1",
        "the handed-over connection still knows its client"
    );
}

#[tokio::test]
async fn head_and_connection_close_are_honoured() {
    let php = backend("php").body("legacy page").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &php.url(), "")).await;
    let mut conn = RawConn::open(ft.http).await;

    conn.write(b"HEAD /page HTTP/1.1\r\nHost: shop\r\n\r\n")
        .await;
    let resp = conn.response(true).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length"),
        Some("11"),
        "HEAD keeps the length"
    );
    // Had the HEAD answer carried a body, this answer would not parse.
    conn.write(b"GET /page HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        .await;
    let resp = conn.response(false).await;
    assert_eq!(resp.body, b"legacy page");
    assert_eq!(resp.header("connection"), Some("close"));
    // The server closes after Connection: close.
    conn.wait_closed().await;
}

#[tokio::test]
async fn idle_connections_close_after_the_header_timeout_and_busy_ones_do_not() {
    let php = backend("php").start().await;
    let timeout = Duration::from_millis(300);
    let ft = Fallthrough::start_with(
        &route("shop", &php.url(), &php.url(), ""),
        &["--client-header-timeout", "300ms"],
    )
    .await;

    // Busy for several timeouts: every request is answered on the one connection.
    let mut busy = RawConn::open(ft.http).await;
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < timeout * 4 {
        busy.write(get("/page").as_bytes()).await;
        assert_eq!(busy.response(false).await.status, 200);
        answered += 1;
    }
    assert!(answered > 4);

    // Idle after one answer: closed once the timeout has passed, not before.
    let mut idle = RawConn::open(ft.http).await;
    idle.write(get("/page").as_bytes()).await;
    assert_eq!(idle.response(false).await.status, 200);
    let answered_at = Instant::now();
    idle.wait_closed().await;
    assert!(
        answered_at.elapsed() >= timeout - Duration::from_millis(50),
        "closed after {:?}, before the timeout",
        answered_at.elapsed()
    );
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let php = backend("php").start().await;
    let mut ft = Fallthrough::start_with(
        &route("shop", &php.url(), &php.url(), ""),
        // Longer than the test's deadline: only closing idle connections lets it pass.
        &["--shutdown-grace", "60s"],
    )
    .await;
    let mut idle = RawConn::open(ft.http).await;
    idle.write(get("/page").as_bytes()).await;
    assert_eq!(idle.response(false).await.status, 200);

    ft.signal("TERM");
    idle.wait_closed().await;
    assert_eq!(ft.wait_exit().await, Some(0));
}
