//! Forwarding semantics through the real binary: primary first, fallback on 404.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use support::*;

#[tokio::test]
async fn primary_hit_is_served_by_the_primary_alone() {
    let php = backend("php").on("/old", 200, "legacy page").start().await;
    let py = backend("py").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &py.url(), "")).await;

    let (status, headers, body) = ft.get("/old?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-backend"], "php");
    assert_eq!(body, "legacy page");
    assert!(py.seen().is_empty(), "the fallback must not be asked");
    assert_eq!(php.seen()[0].uri, "/old?x=1");
}

#[tokio::test]
async fn a_primary_404_is_answered_by_the_fallback_with_the_same_request() {
    let php = backend("php").status(404).body("php 404").start().await;
    let py = backend("py").body("python page").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &py.url(), "")).await;

    let req = Request::get("/new/page?q=2")
        .header("host", "shop.example.com")
        .header("x-custom", "kept")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-request-id", "chosen-by-the-client")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(ft.http, req).await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"python page"[..]));
    assert_eq!(headers["x-backend"], "py");
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "an untrusted client's id is replaced: {id}");

    let (to_php, to_py) = (&php.seen()[0], &py.seen()[0]);
    for seen in [to_php, to_py] {
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.uri, "/new/page?q=2");
        assert_eq!(
            seen.headers["host"], "shop.example.com",
            "the client's Host is kept"
        );
        assert_eq!(seen.headers["x-custom"], "kept");
        assert_eq!(
            seen.headers["x-forwarded-for"], "127.0.0.1",
            "an untrusted client's X-Forwarded-For is not believed"
        );
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["x-forwarded-host"], "shop.example.com");
        assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
        assert_eq!(
            seen.headers["x-request-id"],
            id.as_str(),
            "one id, both attempts"
        );
        assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(
            seen.headers["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            seen.headers["tracestate"],
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
    }
}

#[tokio::test]
async fn both_backends_get_the_client_s_fields_minus_hop_by_hop_ones() {
    let php = backend("php").status(404).body("php 404").start().await;
    let py = backend("py").body("python page").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &py.url(), "")).await;
    let mut conn = RawConn::open(ft.http).await;
    for (i, connection) in ["keep-alive", "x-private, keep-alive"].iter().enumerate() {
        conn.write(
            format!(
                "GET /page HTTP/1.1\r\nHost: shop.example.com\r\nAccept: text/html\r\n\
                 Connection: {connection}\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                 X-Private: secret\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let resp = conn.response(false).await;
        assert_eq!((resp.status, &resp.body[..]), (200, &b"python page"[..]));
        for seen in [&php.seen()[i], &py.seen()[i]] {
            let context = format!("Connection: {connection}; seen {:?}", seen.headers);
            assert_eq!(seen.headers["host"], "shop.example.com", "{context}");
            assert_eq!(seen.headers["accept"], "text/html", "{context}");
            let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
            assert_eq!(cookies, ["a=1", "b=2"], "{context}");
            assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1", "{context}");
            assert_eq!(
                seen.headers["x-forwarded-host"], "shop.example.com",
                "{context}"
            );
            for gone in ["keep-alive", "te"] {
                assert!(
                    !seen.headers.contains_key(gone),
                    "{gone} forwarded: {context}"
                );
            }
            assert!(!seen.headers.contains_key("connection"), "{context}");
            assert_eq!(
                seen.headers.contains_key("x-private"),
                i == 0,
                "a field `Connection` names is dropped, others are not: {context}"
            );
        }
    }
}

#[tokio::test]
async fn an_absolute_target_is_routed_and_forwarded_on_its_authority_not_host() {
    let php = backend("php").body("php page").start().await;
    let other = backend("other").body("other page").start().await;
    let routes = [
        route(
            "shop",
            &php.url(),
            &php.url(),
            "  hosts: [shop.example.com]\n",
        ),
        route(
            "other",
            &other.url(),
            &other.url(),
            "  hosts: [other.example.com]\n",
        ),
    ]
    .join("---\n");
    let ft = Fallthrough::start(&routes).await;
    let mut conn = RawConn::open(ft.http).await;
    // RFC 9112 §3.2.2: the target's authority replaces a different Host.
    conn.write(
        b"GET http://shop.example.com/page HTTP/1.1\r\nHost: other.example.com\r\nAccept: text/html\r\n\r\n",
    )
    .await;
    let resp = conn.response(false).await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"php page"[..]));
    let seen = &php.seen()[0];
    assert_eq!(seen.headers["host"], "shop.example.com");
    assert_eq!(seen.headers["accept"], "text/html");
    assert!(other.seen().is_empty());
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is a 400 whatever its target.
    let mut conn = RawConn::open(ft.http).await;
    conn.write(b"GET http://shop.example.com/page HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(conn.response(false).await.status, 400);
    assert_eq!(php.seen().len(), 1);
}

#[tokio::test]
async fn post_and_put_bodies_are_replayed_byte_identical() {
    let php = backend("php").status(404).start().await;
    let py = backend("py").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &py.url(), "")).await;

    let fixed = noise(300 * 1024, 1);
    let req = Request::post("/form")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(fixed.clone())))
        .unwrap();
    let (status, ..) = send(ft.http, req).await;
    assert_eq!(status, 200);

    // A chunked body of unknown length, sent in pieces.
    let chunked = noise(200 * 1024, 2);
    let pieces: Vec<_> = chunked
        .chunks(7000)
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(pieces));
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = Request::put(format!("http://{}/upload", ft.http))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();

    let (php, py) = (php.seen(), py.seen());
    assert_eq!(
        (php[0].method.as_str(), py[0].method.as_str()),
        ("POST", "POST")
    );
    assert!(
        php[0].body == fixed && py[0].body == fixed,
        "POST body differs"
    );
    assert_eq!(
        (php[1].method.as_str(), py[1].method.as_str()),
        ("PUT", "PUT")
    );
    assert!(
        php[1].body == chunked && py[1].body == chunked,
        "PUT body differs"
    );
}

#[tokio::test]
async fn bodies_over_the_replay_limit_go_to_the_primary_only_and_are_counted() {
    let php = backend("php").status(404).body("php 404").start().await;
    let py = backend("py").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  maxReplayBytes: 1024\n",
    ))
    .await;

    // Declared too large by Content-Length.
    let big = noise(4096, 3);
    let req = Request::post("/upload")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let (status, _, body) = send(ft.http, req).await;
    assert_eq!((status.as_u16(), body.as_ref()), (404, &b"php 404"[..]));

    // Discovered too large while buffering a chunked body.
    let pieces: Vec<_> = big
        .chunks(512)
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = Request::post(format!("http://{}/upload", ft.http))
        .body(StreamBody::new(futures_util::stream::iter(pieces)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 404);

    assert!(
        py.seen().is_empty(),
        "an unreplayable body must not reach the fallback"
    );
    for seen in php.seen() {
        assert!(
            seen.body == big,
            "the primary gets the whole body, never truncated"
        );
    }
    let skipped = ft
        .sample(r#"fallthrough_fallbacks_skipped_total{namespace="web",reason="body_too_large",route="shop"}"#)
        .await;
    assert_eq!(skipped, 2.0);
}

#[tokio::test]
async fn when_both_answer_404_not_found_from_picks_the_response() {
    let php = backend("php")
        .status(404)
        .body("legacy 404 page")
        .start()
        .await;
    let py = backend("py").status(404).body("python 404").start().await;
    let routes = format!(
        "{}---\n{}",
        route(
            "default-fallback",
            &php.url(),
            &py.url(),
            "  hosts: [a.test]\n"
        ),
        route(
            "keep-legacy",
            &php.url(),
            &py.url(),
            "  hosts: [b.test]\n  notFoundFrom: primary\n"
        )
    );
    let ft = Fallthrough::start(&routes).await;

    let get_host = |host: &'static str| {
        send(
            ft.http,
            Request::get("/gone")
                .header("host", host)
                .body(Full::default())
                .unwrap(),
        )
    };
    let (status, headers, body) = get_host("a.test").await;
    assert_eq!((status.as_u16(), body.as_ref()), (404, &b"python 404"[..]));
    assert_eq!(headers["x-backend"], "py");

    let (status, headers, body) = get_host("b.test").await;
    assert_eq!(
        (status.as_u16(), body.as_ref()),
        (404, &b"legacy 404 page"[..])
    );
    assert_eq!(
        headers["x-backend"], "php",
        "the primary's headers come with its body"
    );
    assert_eq!(py.seen().len(), 2, "the fallback was asked both times");
}

#[tokio::test]
async fn fallback_on_lists_the_statuses_that_send_requests_on() {
    let php = backend("php")
        .on("/gone", 410, "gone")
        .on("/missing", 404, "missing")
        .on("/broken", 500, "php error")
        .start()
        .await;
    let py = backend("py").body("python").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  fallbackOn: [404, 410]\n",
    ))
    .await;

    assert_eq!(ft.get("/gone").await.2, "python");
    assert_eq!(ft.get("/missing").await.2, "python");
    let (status, _, body) = ft.get("/broken").await;
    assert_eq!((status.as_u16(), body.as_ref()), (500, &b"php error"[..]));
    assert_eq!(py.seen().len(), 2);
}

#[tokio::test]
async fn an_unreachable_primary_is_502_unless_fallback_on_error() {
    let dead = format!("http://{}", closed_addr().await);
    let py = backend("py").body("python").start().await;
    let routes = format!(
        "{}---\n{}",
        route("strict", &dead, &py.url(), "  paths: [/strict]\n"),
        route(
            "lenient",
            &dead,
            &py.url(),
            "  paths: [/lenient]\n  fallbackOnError: true\n"
        )
    );
    let ft = Fallthrough::start(&routes).await;

    let (status, headers, body) = ft.get("/strict").await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(body.len() < 200 && std::str::from_utf8(&body).unwrap().contains("bad gateway"));
    assert!(py.seen().is_empty());

    let (status, _, body) = ft.get("/lenient").await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"python"[..]));

    let errors = ft
        .sample(r#"fallthrough_upstream_errors_total{backend="primary",kind="connect",namespace="web",route="strict"}"#)
        .await;
    assert_eq!(errors, 1.0);
    let on_error = ft
        .sample(r#"fallthrough_fallbacks_total{namespace="web",reason="error",route="lenient"}"#)
        .await;
    assert_eq!(on_error, 1.0);
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let php = backend("php")
        .delay(std::time::Duration::from_secs(5))
        .start()
        .await;
    let py = backend("py").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  timeouts: {responseHeader: 200ms}\n",
    ))
    .await;

    let (status, _, body) = ft.get("/slow").await;
    assert_eq!(status, 504);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("gateway timeout"));
    assert!(
        py.seen().is_empty(),
        "a timed-out primary may have acted: no fallback"
    );
}

#[tokio::test]
async fn routes_sharing_a_backend_keep_their_own_response_header_timeouts() {
    let php = backend("php")
        .delay(std::time::Duration::from_secs(1))
        .on("/fast", 200, "fast")
        .start()
        .await;
    let py = backend("py").start().await;
    let routes = [
        route(
            "patient",
            &php.url(),
            &py.url(),
            "  hosts: [patient.test]\n",
        ),
        route(
            "hasty",
            &php.url(),
            &py.url(),
            "  hosts: [hasty.test]\n  timeouts: {responseHeader: 200ms}\n",
        ),
    ]
    .join("---\n");
    // One worker: every request below uses the same pooled backend connection.
    let ft = Fallthrough::start_with(&routes, &["--workers", "1"]).await;
    let to = |host: &str, path: &str| {
        let req = http::Request::get(path).header("host", host);
        send(ft.http, req.body(http_body_util::Full::default()).unwrap())
    };

    assert_eq!(to("hasty.test", "/fast").await.0, 200);
    assert_eq!(
        to("patient.test", "/slow").await.0,
        200,
        "a short timeout of the previous request on the connection does not cut this one"
    );
    assert_eq!(
        to("hasty.test", "/slow").await.0,
        504,
        "a long timeout of the previous request on the connection does not delay this one"
    );
    assert_eq!(to("patient.test", "/fast").await.0, 200);
}

#[tokio::test]
async fn hosts_and_paths_pick_the_most_specific_route() {
    let a = backend("exact").start().await;
    let b = backend("wildcard").start().await;
    let c = backend("any-api").start().await;
    let d = backend("any-root").start().await;
    let routes = [
        route(
            "exact",
            &a.url(),
            &a.url(),
            "  hosts: [shop.example.com]\n  paths: [/]\n",
        ),
        route("wild", &b.url(), &b.url(), "  hosts: [\"*.example.com\"]\n"),
        route("api", &c.url(), &c.url(), "  paths: [/api]\n"),
        route("root", &d.url(), &d.url(), ""),
    ]
    .join("---\n");
    let ft = Fallthrough::start(&routes).await;

    for (host, path, expected) in [
        ("shop.example.com", "/api/x", "exact"),
        ("Shop.Example.com:8080", "/", "exact"),
        ("blog.example.com", "/api", "wildcard"),
        ("other.org", "/api/v1", "any-api"),
        ("other.org", "/apiary", "any-root"),
    ] {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let (_, headers, _) = send(ft.http, req).await;
        assert_eq!(headers["x-backend"], expected, "{host}{path}");
    }
}

#[tokio::test]
async fn requests_no_route_serves_get_404_from_fallthrough() {
    let php = backend("php").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &php.url(),
        "  hosts: [shop.test]\n",
    ))
    .await;
    let req = Request::get("/")
        .header("host", "elsewhere.test")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(ft.http, req).await;
    assert_eq!(status, 404);
    assert!(std::str::from_utf8(&body).unwrap().contains("no route"));
    assert!(php.seen().is_empty());
}

/// A backend that switches protocols on `Upgrade: echo` and echoes bytes back.
async fn echo_upgrade_backend() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.unwrap());
                        let (mut r, mut w) = tokio::io::split(&mut io);
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "echo")
                            .body(Full::<Bytes>::default())
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_are_tunnelled_to_the_backend_that_answers_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let php = backend("php").status(404).start().await;
    let ws = echo_upgrade_backend().await;
    let ft = Fallthrough::start(&route("chat", &php.url(), &format!("http://{ws}"), "")).await;

    let mut stream = tokio::net::TcpStream::connect(ft.http).await.unwrap();
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: chat.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");

    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut echoed))
        .await
        .expect("echo within the deadline")
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    assert_eq!(
        php.seen()[0].headers["upgrade"],
        "echo",
        "the primary was asked first"
    );
}
