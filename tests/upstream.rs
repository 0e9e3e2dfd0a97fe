//! The upstream side of the wire, through the real binary: every HTTP/1.1 response
//! framing a backend may use, keep-alive reuse, backends that close idle connections,
//! and malformed answers.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the scripted backend does after answering.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// A backend speaking raw bytes: `answer(method, path)` gives the response bytes.
/// Counts connections and reports each one it closes.
struct Scripted {
    url: String,
    connections: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn scripted(answer: fn(&str, &str) -> (Vec<u8>, After)) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                serve_scripted(conn, answer).await;
                let _ = closed_tx.send(());
            });
        }
    });
    Scripted {
        url,
        connections,
        closed,
    }
}

async fn serve_scripted(mut conn: TcpStream, answer: fn(&str, &str) -> (Vec<u8>, After)) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap().to_uppercase(), words.next().unwrap());
        let (response, after) = answer(&method, path);
        buf.drain(..head_end + length);
        if conn.write_all(&response).await.is_err() || after == After::Close {
            return;
        }
    }
}

fn framings(_method: &str, path: &str) -> (Vec<u8>, After) {
    let keep = |s: &str| (s.as_bytes().to_vec(), After::KeepOpen);
    match path {
        "/length" => keep("HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-from: php\r\n\r\nhello world"),
        "/chunked" => keep(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n1;ext=ignored\r\n \r\n5\r\nworld\r\n0\r\nx-checksum: 7\r\n\r\n",
        ),
        "/chunked-404" => keep(
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n9\r\nnot here\n\r\n0\r\n\r\n",
        ),
        "/head" => keep("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
        "/hints" => keep(
            "HTTP/1.1 103 Early Hints\r\nlink: </app.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
        ),
        "/until-close" => (
            b"HTTP/1.1 200 OK\r\n\r\nread until the backend closes".to_vec(),
            After::Close,
        ),
        "/conflicting-length" => keep(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        ),
        "/garbage" => keep("HTTP/1.1 two hundred\r\n\r\n"),
        "/fields" => keep(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Set-Cookie: a=1\r\nX-Case:  Kept As Is \r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\
             Trailer: x-sum\r\nProxy-Connection: keep-alive\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nok",
        ),
        // Written canonically: copied in slices around its hop-by-hop fields.
        "/fields-canonical" => keep(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Set-Cookie: a=1\r\nX-Case: Kept As Is\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nok",
        ),
        "/fields-named" => keep(
            "HTTP/1.1 200 OK\r\nConnection: x-private, keep-alive\r\nX-Private: secret\r\n\
             Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok",
        ),
        _ => keep("HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnope"),
    }
}

#[tokio::test]
async fn every_response_framing_reaches_the_client_intact() {
    let mut php = scripted(framings).await;
    let py = backend("py").body("python page").start().await;
    let ft =
        Fallthrough::start_with(&route("shop", &php.url, &py.url(), ""), &["--workers", "1"]).await;

    let (status, headers, body) = ft.get("/length").await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"hello world"[..]));
    assert_eq!(headers["x-from"], "php");

    let (status, _, body) = ft.get("/chunked").await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"hello world"[..]));

    let (status, _, body) = ft.get("/hints").await;
    assert_eq!(
        (status.as_u16(), body.as_ref()),
        (200, &b"final"[..]),
        "1xx answers are skipped"
    );

    let head = Request::head("/head")
        .body(Full::<Bytes>::default())
        .unwrap();
    let (status, headers, body) = send(ft.http, head).await;
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    assert_eq!(
        headers["content-length"], "1000",
        "HEAD keeps the length of the GET"
    );

    // A chunked 404 is read to its end so the connection is reused; the fallback answers.
    let (status, headers, body) = ft.get("/chunked-404").await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"python page"[..]));
    assert_eq!(headers["x-backend"], "py");

    assert_eq!(
        php.connections.load(Ordering::SeqCst),
        1,
        "one keep-alive connection carried every request so far"
    );

    let (status, _, body) = ft.get("/until-close").await;
    assert_eq!(
        (status.as_u16(), body.as_ref()),
        (200, &b"read until the backend closes"[..])
    );
    php.closed.recv().await.unwrap();
    let (status, _, body) = ft.get("/length").await;
    assert_eq!((status.as_u16(), body.as_ref()), (200, &b"hello world"[..]));
    assert_eq!(php.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn response_fields_reach_the_client_without_hop_by_hop_ones() {
    let php = scripted(framings).await;
    let ft = Fallthrough::start(&route("shop", &php.url, &php.url, "")).await;
    let mut conn = RawConn::open(ft.http).await;
    // A GET is served by fallthrough's own HTTP/1.1 path, a POST with a body by hyper's.
    for request in [
        "GET {path} HTTP/1.1\r\nHost: shop\r\n\r\n",
        "POST {path} HTTP/1.1\r\nHost: shop\r\nContent-Length: 1\r\n\r\nx",
    ] {
        for path in ["/fields", "/fields-canonical", "/fields-named"] {
            conn.write(request.replace("{path}", path).as_bytes()).await;
            let resp = conn.response(false).await;
            let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n.as_str()).collect();
            let context = format!("{path} for {request:?}: {names:?}");
            assert_eq!(
                (resp.status, &resp.body[..]),
                (200, &b"ok"[..]),
                "{context}"
            );
            let cookies: Vec<&str> = resp
                .headers
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(cookies, ["a=1", "b=2"], "{context}");
            for gone in ["keep-alive", "trailer", "proxy-connection", "x-private"] {
                assert!(resp.header(gone).is_none(), "{gone} forwarded: {context}");
            }
            assert_eq!(resp.header("connection"), None, "{context}");
            let once = |name| names.iter().filter(|n| **n == name).count();
            assert_eq!((once("content-length"), once("date")), (1, 1), "{context}");
            if path != "/fields-named" {
                assert_eq!(resp.header("x-case"), Some("Kept As Is"), "{context}");
                assert_eq!(
                    resp.header("date"),
                    Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                    "the backend's Date is kept: {context}"
                );
            }
        }
    }
}

#[tokio::test]
async fn chunked_answers_carry_trailers_to_clients_that_accept_them() {
    let php = scripted(framings).await;
    let ft = Fallthrough::start(&route("shop", &php.url, &php.url, "")).await;
    let mut conn = RawConn::open(ft.http).await;
    for (te, trailers) in [
        ("", vec![]),
        ("TE: trailers\r\n", vec![("x-checksum", "7")]),
    ] {
        conn.write(format!("GET /chunked HTTP/1.1\r\nHost: shop\r\n{te}\r\n").as_bytes())
            .await;
        let resp = conn.response(false).await;
        assert!(resp.chunked, "a body of unknown length is chunked");
        assert_eq!(resp.body, b"hello world");
        let got: Vec<_> = resp
            .trailers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, trailers, "with {te:?}");
    }
}

#[tokio::test]
async fn malformed_backend_answers_are_502_with_a_plain_body() {
    let php = scripted(framings).await;
    let py = backend("py").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url, &py.url(), "")).await;
    for path in ["/conflicting-length", "/garbage"] {
        let (status, headers, body) = ft.get(path).await;
        assert_eq!(status, 502, "{path}");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert!(
            String::from_utf8_lossy(&body).starts_with("fallthrough: bad gateway"),
            "{path}: {body:?}"
        );
    }
    let samples = ft.samples("fallthrough_upstream_errors_total").await;
    let key = "fallthrough_upstream_errors_total{backend=\"primary\",kind=\"protocol\",namespace=\"web\",route=\"shop\"}";
    assert_eq!(samples.get(key), Some(&2.0), "{samples:?}");
}

fn one_request_per_connection(_method: &str, _path: &str) -> (Vec<u8>, After) {
    // Like a server whose keep-alive timeout is shorter than any pause between requests:
    // it promises nothing about closing, then closes.
    (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        After::Close,
    )
}

#[tokio::test]
async fn backends_closing_idle_connections_fail_no_request() {
    let mut php = scripted(one_request_per_connection).await;
    let py = backend("py").start().await;
    let ft =
        Fallthrough::start_with(&route("shop", &php.url, &py.url(), ""), &["--workers", "1"]).await;

    for i in 0..20 {
        let req = if i % 2 == 0 {
            Request::get("/page").body(Full::default()).unwrap()
        } else {
            Request::post("/form")
                .body(Full::new(Bytes::from_static(b"a=1")))
                .unwrap()
        };
        let (status, _, body) = send(ft.http, req).await;
        assert_eq!(
            (status.as_u16(), body.as_ref()),
            (200, &b"ok"[..]),
            "request {i}"
        );
        // The backend has closed its side before the next request: a POST must not be
        // written into that dead connection.
        php.closed.recv().await.unwrap();
    }
    // Without waiting, GETs may race the close; they are retried on a fresh connection.
    for i in 0..20 {
        let (status, _, _) = ft.get("/page").await;
        assert_eq!(status, 200, "racing request {i}");
    }
    assert_eq!(
        ft.sample("fallthrough_upstream_errors_total{backend=\"primary\",kind=\"protocol\",namespace=\"web\",route=\"shop\"}")
            .await,
        0.0
    );
}
