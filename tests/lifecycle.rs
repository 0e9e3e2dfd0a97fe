//! The process around the proxy: reloads, draining, memory, malformed input, metrics.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_a_request_loop_fail_no_request() {
    let php = backend("php").status(404).start().await;
    let py_a = backend("py-a").start().await;
    let py_b = backend("py-b").start().await;
    let variant = |i: usize| {
        let fallback = if i.is_multiple_of(2) {
            py_a.url()
        } else {
            py_b.url()
        };
        route("shop", &php.url(), &fallback, "")
    };
    let ft = Fallthrough::start(&variant(0)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), ft.http);
        loops.push(tokio::spawn(async move {
            let client: Client<_, Full<bytes::Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{addr}/page"))
                    .body(Full::default())
                    .unwrap();
                let good = match client.request(req).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let reloads = r#"fallthrough_config_reloads_total{result="success"}"#;
    for i in 1..=50 {
        let before = ft.sample(reloads).await;
        ft.write_routes(&variant(i));
        let served = if i.is_multiple_of(2) { "py-a" } else { "py-b" };
        // A reload has taken effect once a fresh request lands on the new fallback.
        let start = std::time::Instant::now();
        loop {
            let (_, headers, _) = ft.get("/probe").await;
            if headers["x-backend"] == served && ft.sample(reloads).await > before {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "reload {i} did not take effect");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "the request loop ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_previous_routes_serving() {
    let php = backend("php").status(404).start().await;
    let py = backend("py").body("python").start().await;
    let good = route("shop", &php.url(), &py.url(), "");
    let ft = Fallthrough::start(&good).await;

    ft.write_routes(&format!("{good}  fallbackOn: [200]\n"));
    let failed = r#"fallthrough_config_reloads_total{result="failure"}"#;
    let start = std::time::Instant::now();
    while ft.sample(failed).await < 1.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the bad reload was never attempted"
        );
    }
    assert_eq!(
        ft.sample("fallthrough_config_last_reload_successful").await,
        0.0
    );
    assert_eq!(
        ft.get("/x").await.2,
        "python",
        "the previous table still serves"
    );
    // The log arrives through a pipe, maybe after the metric: wait for it.
    wait_for("the error naming file, line and problem in the log", || {
        ft.log()
            .into_iter()
            .any(|l| l.contains("routes.yaml:1:") && l.contains("fallbackOn status 200"))
            .then_some(())
    })
    .await;

    // A fixed file recovers.
    ft.write_routes(&good);
    let start = std::time::Instant::now();
    while ft.sample("fallthrough_config_last_reload_successful").await < 1.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the fixed file was not reloaded"
        );
    }
}

#[tokio::test]
async fn sighup_reloads_the_routes() {
    let php = backend("php").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &php.url(), "")).await;
    let reloads = r#"fallthrough_config_reloads_total{result="success"}"#;
    assert_eq!(ft.sample(reloads).await, 1.0);
    ft.signal("HUP");
    let start = std::time::Instant::now();
    while ft.sample(reloads).await < 2.0 {
        assert!(start.elapsed() < DEADLINE, "SIGHUP did not reload");
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let php = backend("php")
        .hold(arrived.clone(), release.clone())
        .start()
        .await;
    let mut ft = Fallthrough::start(&route("shop", &php.url(), &php.url(), "")).await;
    let addr = ft.http;

    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    arrived.notified().await;
    ft.signal("TERM");

    // Draining: not ready, and the listener is closed to new connections.
    let admin = ft.admin;
    let start = std::time::Instant::now();
    loop {
        let refused = TcpStream::connect(addr).await.is_err();
        let ready = match TcpStream::connect(admin).await {
            Ok(_) => get(admin, "/readyz").await.0 == 200,
            Err(_) => false,
        };
        if refused && !ready {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "still accepting after SIGTERM");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        get(admin, "/healthz").await.0,
        200,
        "probes keep answering while draining"
    );
    release.notify_one();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_ref()),
        (200, &b"php says hello"[..])
    );
    assert_eq!(ft.wait_exit().await, Some(0));
}

#[tokio::test]
async fn a_second_instance_on_a_taken_address_is_refused_and_names_the_flag() {
    let php = backend("php").start().await;
    let routes = route("shop", &php.url(), &php.url(), "");
    let ft = Fallthrough::start(&routes).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, routes).unwrap();
    // The workers' sockets share their port (SO_REUSEPORT); another process must not.
    let taken = ft.http.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
            .arg("run")
            .args(["--http-addr", &taken])
            .args(["--admin-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0"])
            .args(["--routes".as_ref(), path.as_os_str()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A second instance that shares the port serves forever: give it 20 s to fail.
        for _ in 0..200 {
            if second.try_wait().unwrap().is_some() {
                return second.wait_with_output().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        second.kill().unwrap();
        panic!("a second instance is serving on the address the first one holds");
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second instance started: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {}", ft.http))
            && stderr.contains("--http-addr"),
        "{stderr}"
    );
    let (status, _, _) = ft.get("/").await;
    assert_eq!(status, 200, "the first instance still serves");
}

#[tokio::test]
async fn a_large_streamed_response_does_not_grow_memory() {
    const SIZE: u64 = 1024 * 1024 * 1024;
    let php = backend("php").stream(SIZE).start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &php.url(), "")).await;

    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/download", ft.http))
        .body(Full::default())
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);
    let peak_mib = ft.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "peak RSS {peak_mib} MiB while streaming 1 GiB"
    );
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer to a malformed request");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_400_or_431_and_are_never_forwarded() {
    let php = backend("php").start().await;
    let ft = Fallthrough::start(&route("shop", &php.url(), &php.url(), "")).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let cases: [(&str, &[u8], &str); 6] = [
        ("garbage request line", b"HELLO THERE\r\n\r\n", "400"),
        ("space in header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", "400"),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n", "400"),
        ("broken chunked body", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n", "400"),
        ("two content lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", "400"),
        ("oversized head", huge.as_bytes(), "431"),
    ];
    for (what, request, status) in cases {
        let answer = raw(ft.http, request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: expected {status}, got {:?}",
            answer.lines().next()
        );
    }
    assert!(
        php.seen().is_empty(),
        "a malformed request reached the backend: {:?}",
        php.seen()
    );
}

#[tokio::test]
async fn metrics_count_a_known_traffic_mix_exactly() {
    let php = backend("php")
        .status(404)
        .on("/old", 200, "legacy")
        .start()
        .await;
    let py = backend("py").on("/nowhere", 404, "nope").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  hosts: [shop.test]\n  maxReplayBytes: 10\n",
    ))
    .await;

    let to_shop = |method: &str, path: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.test")
            .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    for _ in 0..3 {
        send(ft.http, to_shop("GET", "/old", "")).await;
    }
    for _ in 0..2 {
        send(ft.http, to_shop("GET", "/new", "")).await;
    }
    send(ft.http, to_shop("GET", "/nowhere", "")).await;
    send(
        ft.http,
        to_shop("POST", "/new", "this body is over ten bytes"),
    )
    .await;
    get(ft.http, "/unrouted").await;

    let php_svc = php.addr.to_string();
    let py_svc = py.addr.to_string();
    let expected = [
        (format!(r#"fallthrough_requests_total{{backend="primary",code="200",namespace="web",route="shop",service="{php_svc}"}}"#), 3.0),
        (format!(r#"fallthrough_requests_total{{backend="fallback",code="200",namespace="web",route="shop",service="{py_svc}"}}"#), 2.0),
        (format!(r#"fallthrough_requests_total{{backend="fallback",code="404",namespace="web",route="shop",service="{py_svc}"}}"#), 1.0),
        (format!(r#"fallthrough_requests_total{{backend="primary",code="404",namespace="web",route="shop",service="{php_svc}"}}"#), 1.0),
        (r#"fallthrough_requests_total{backend="fallthrough",code="404",namespace="",route="",service=""}"#.to_string(), 1.0),
    ];
    let mut requests = ft.samples("fallthrough_requests_total").await;
    // Each route's 200 and 404 series exist from the start, at 0.
    requests.retain(|_, v| *v != 0.0);
    for (key, value) in &expected {
        assert_eq!(requests.get(key), Some(value), "{key} in {requests:#?}");
    }
    assert_eq!(
        requests.len(),
        expected.len(),
        "no other series: {requests:#?}"
    );

    let shop = r#"namespace="web",route="shop""#;
    for (key, value) in [
        (r#"fallthrough_fallbacks_total{namespace="web",reason="status",route="shop"}"#.to_string(), 3.0),
        (r#"fallthrough_fallbacks_skipped_total{namespace="web",reason="body_too_large",route="shop"}"#.to_string(), 1.0),
        (format!(r#"fallthrough_upstream_duration_seconds_count{{backend="primary",{shop}}}"#), 7.0),
        (format!(r#"fallthrough_upstream_duration_seconds_count{{backend="fallback",{shop}}}"#), 3.0),
        (format!(r#"fallthrough_request_duration_seconds_count{{{shop}}}"#), 7.0),
        ("fallthrough_routes".to_string(), 1.0),
        (r#"fallthrough_config_reloads_total{result="success"}"#.to_string(), 1.0),
        ("fallthrough_config_last_reload_successful".to_string(), 1.0),
    ] {
        assert_eq!(ft.sample(&key).await, value, "{key}");
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let php = backend("php").start().await;
    let ft = Fallthrough::start_with(
        &route("shop", &php.url(), &php.url(), ""),
        &[
            "--client-header-timeout",
            "300ms",
            "--client-body-timeout",
            "300ms",
        ],
    )
    .await;

    // A body that never completes: 408, and the primary never sees the request.
    let answer = raw(
        ft.http,
        b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    // A head that never completes: the connection is closed.
    let answer = raw(ft.http, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert!(!answer.contains("200"), "{answer:?}");
    assert!(php.seen().is_empty());
}
