//! FastCGI backends against a real PHP-FPM (php-fpm8.2, a child process of each test)
//! and a real Python fallback (gunicorn/Flask): what PHP sees of a request, how its
//! answers come back, and the fallback on PHP-FPM's "File not found." 404.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::fpm::{php_root, Gunicorn, PhpFpm};
use support::{backend, send, Fallthrough};

/// A route whose primary is `fpm` speaking FastCGI, with `fastcgi` settings `extra`
/// (YAML flow entries), and whose fallback is `fallback`. `maxConnections` is the
/// pool's `pm.max_children`, as the README tells users to set it.
fn fcgi_route(fpm: &PhpFpm, extra: &str, fallback: &str, spec: &str) -> String {
    format!(
        "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: shop, namespace: web}}\nspec:\n  primary:\n    url: \"{}\"\n    fastcgi: {{documentRoot: \"{}\", maxConnections: {}{extra}}}\n  fallback: {{url: \"{fallback}\"}}\n{spec}",
        fpm.url(),
        php_root().display(),
        fpm.max_children,
    )
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    })
}

#[tokio::test]
async fn php_scripts_answer_with_the_cgi_variables_nginx_sends() {
    let fpm = PhpFpm::unix(2).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        ", params: {APP_ENV: test}",
        &fallback.url(),
        "",
    ))
    .await;
    let req = Request::get("/shop/cart.php/extra?x=1&y=%20")
        .header("host", "shop.test:8080")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("proxy", "http://evil.test:3128")
        .header("x_user", "evil")
        .header("x.user", "evil")
        .header("x-user", "ok")
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(ft.http, req).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers["content-type"], "application/json");
    let seen = json(&body);
    let root = php_root().display().to_string();
    assert_eq!(seen["script_name"], "/shop/cart.php");
    assert_eq!(seen["script_filename"], format!("{root}/shop/cart.php"));
    assert_eq!(seen["path_info"], "/extra");
    assert_eq!(seen["query_string"], "x=1&y=%20");
    assert_eq!(seen["request_uri"], "/shop/cart.php/extra?x=1&y=%20");
    assert_eq!(
        seen["http_proxy"], false,
        "httpoxy: HTTP_PROXY is never sent"
    );
    assert_eq!(seen["cookie"], "a=1; b=2", "cookie fields join with '; '");
    assert_eq!(seen["cookies"]["b"], "2");
    assert_eq!(seen["remote_addr"], "127.0.0.1");
    assert_eq!(seen["server_name"], "shop.test");
    assert_eq!(seen["server_port"], "8080", "the public port, from Host");
    assert_eq!(seen["https"], Value::Null, "plain HTTP: no HTTPS=on");
    assert_eq!(seen["app_env"], "test", "params from the fastcgi block");
    assert_eq!(
        seen["x_user"], "ok",
        "a name with _ is dropped, not merged with x-user"
    );
    assert!(fallback.seen().is_empty(), "a PHP answer is final");

    // A path ending in / runs the index script.
    let (status, _, body) = ft.get("/?q").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["script_name"], "/index.php");
    assert_eq!(json(&body)["query_string"], "q");
}

#[tokio::test]
async fn remote_addr_is_the_client_a_trusted_proxy_names() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let route = fcgi_route(&fpm, "", &fallback.url(), "");
    for (trusted, remote_addr, forwarded_for) in [
        ("127.0.0.1", "198.51.100.7", "198.51.100.7, 127.0.0.1"),
        ("10.0.0.0/8", "127.0.0.1", "127.0.0.1"),
    ] {
        let ft = Fallthrough::start_with(&route, &["--trusted-proxies", trusted]).await;
        let req = Request::get("/index.php")
            .header("host", "shop.test")
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-request-id", "from-the-lb")
            .body(Full::default())
            .unwrap();
        let (status, headers, body) = send(ft.http, req).await;
        assert_eq!(status, StatusCode::OK);
        let seen = json(&body);
        assert_eq!(seen["remote_addr"], remote_addr, "trusting {trusted}");
        assert_eq!(seen["forwarded_for"], forwarded_for, "trusting {trusted}");
        assert_eq!(
            seen["request_id"],
            headers["x-request-id"].to_str().unwrap(),
            "PHP gets the id the client gets"
        );
    }
}

#[tokio::test]
async fn status_and_a_bare_location_become_the_http_status() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    let (status, _, body) = ft.get("/created.php").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "created\n");
    let (status, headers, _) = ft.get("/moved.php").await;
    assert_eq!(
        status,
        StatusCode::FOUND,
        "a Location with no Status is a 302"
    );
    assert_eq!(headers["location"], "/elsewhere");
}

#[tokio::test]
async fn a_missing_script_falls_back_to_python_with_the_body_intact_on_both_sides() {
    let fpm = PhpFpm::unix(2).await;
    let python = Gunicorn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let seen_file = dir.path().join("seen");
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        &format!(", params: {{SEEN_FILE: \"{}\"}}", seen_file.display()),
        &python.url(),
        "",
    ))
    .await;
    let body = support::noise(300 * 1024, 7);
    let sha = sha256_hex(&body);

    // No such script: PHP-FPM's "Primary script unknown" 404 sends it on.
    let req = Request::post("/gone.php?from=legacy")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (status, _, answer) = send(ft.http, req).await;
    assert_eq!(status, 200, "{answer:?}");
    let seen = json(&answer);
    assert_eq!(seen["app"], "python");
    assert_eq!(seen["path"], "/gone.php");
    assert_eq!(seen["body_sha256"], sha.as_str());

    // A script that reads the body and yields with a 404: both sides saw all of it.
    let req = Request::post("/yield.php")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (status, _, answer) = send(ft.http, req).await;
    assert_eq!(status, 200);
    assert_eq!(json(&answer)["body_sha256"], sha.as_str());
    assert_eq!(std::fs::read_to_string(&seen_file).unwrap(), sha);
    assert_eq!(
        ft.sample(
            "fallthrough_fallbacks_total{namespace=\"web\",reason=\"status\",route=\"shop\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_front_controller_runs_every_path_that_names_no_script() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        ", frontController: /app/front.php",
        &fallback.url(),
        "",
    ))
    .await;
    for path in ["/users/42?tab=posts", "/", "/blog/"] {
        let (status, _, body) = ft.get(path).await;
        assert_eq!(status, 200, "{path}");
        let seen = json(&body);
        assert_eq!(seen["script_name"], "/app/front.php", "{path}");
        assert_eq!(
            seen["request_uri"], path,
            "the framework routes on REQUEST_URI"
        );
    }
    // A path naming a script still runs that script.
    let (_, _, body) = ft.get("/index.php").await;
    assert_eq!(json(&body)["script_name"], "/index.php");
}

#[tokio::test]
async fn a_50_mib_upload_streams_to_php_without_being_held() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        "",
        &fallback.url(),
        "  maxReplayBytes: 65536\n",
    ))
    .await;
    let (status, _, _) = ft.get("/index.php").await;
    assert_eq!(status, 200);
    let before = ft.peak_rss_kib();
    let body = support::noise(50 * 1024 * 1024, 3);
    let sha = sha256_hex(&body);
    let req = Request::put("/index.php")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (status, _, answer) = send(ft.http, req).await;
    assert_eq!(status, 200);
    let seen = json(&answer);
    assert_eq!(seen["body_sha256"], sha.as_str());
    assert_eq!(seen["content_length"], "52428800");
    let grown = ft.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "the proxy's peak memory grew by {grown} KiB for a 50 MiB upload"
    );
}

#[tokio::test]
async fn a_chunked_body_is_measured_for_php_or_refused_with_411_when_too_large() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        "",
        &fallback.url(),
        "  maxReplayBytes: 65536\n",
    ))
    .await;
    let mut conn = support::RawConn::open(ft.http).await;
    conn.write(b"POST /index.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    let resp = conn.response(false).await;
    assert_eq!(resp.status, 200);
    let seen: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(seen["content_length"], "5");
    assert_eq!(seen["body_sha256"], sha256_hex(b"hello").as_str());

    let mut conn = support::RawConn::open(ft.http).await;
    let chunk = vec![b'x'; 70_000];
    conn.write(
        b"POST /index.php HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n11170\r\n",
    )
    .await;
    conn.write(&chunk).await;
    conn.write(b"\r\n0\r\n\r\n").await;
    let resp = conn.response(false).await;
    assert_eq!(
        resp.status,
        411,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
}

#[tokio::test]
async fn two_php_workers_answer_fifty_concurrent_requests() {
    let fpm = PhpFpm::unix(2).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    let http = ft.http;
    let tasks: Vec<_> = (0..50)
        .map(|i| tokio::spawn(async move { support::get(http, &format!("/slow.php?{i}")).await }))
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200, "request {i}: {body:?}");
        assert_eq!(body, format!("slow {i}\n"));
    }
}

#[tokio::test]
async fn php_fpm_restarting_under_load_leaves_nothing_hanging() {
    let mut fpm = PhpFpm::unix(2).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    let http = ft.http;
    let load: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..15 {
                    statuses.push(support::get(http, "/slow.php").await.0);
                }
                statuses
            })
        })
        .collect();
    fpm.restart().await;
    for task in load {
        // Each request ends (`get` fails the test past its deadline): answered, or a
        // short 502 for the ones PHP-FPM dropped.
        for status in task.await.unwrap() {
            assert!(status == 200 || status == 502, "{status}");
        }
    }
    let (status, _, _) = ft.get("/index.php").await;
    assert_eq!(status, 200, "the restarted PHP-FPM serves again");
}

#[tokio::test]
async fn php_fpm_over_tcp_and_an_unreachable_one() {
    let fpm = PhpFpm::tcp(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    let (status, _, body) = ft.get("/index.php").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["script_name"], "/index.php");
    drop(fpm);
    let (status, _, body) = ft.get("/index.php").await;
    assert_eq!(status, 502, "{body:?}");
}

#[tokio::test]
async fn a_decoded_dot_segment_never_reaches_php() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    let (status, _, _) = ft.get("/shop%2F..%2F..%2Fetc/passwd.php").await;
    assert_eq!(status, 400);
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[tokio::test]
async fn paths_naming_no_script_fall_back_without_asking_php() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(&fpm, "", &fallback.url(), "")).await;
    // Asked, PHP-FPM would answer these 403 (not a .php file) or, with its default
    // cgi.fix_pathinfo, run the uploaded .phar for the directory-looking path.
    for path in [
        "/robots.txt",
        "/uploads/evil.phar",
        "/uploads/evil.phar/",
        "/about",
    ] {
        let (status, _, body) = ft.get(path).await;
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"new says hello"[..]),
            "{path}"
        );
    }
    assert_eq!(fallback.seen().len(), 4);
    // A directory runs its index: PHP-FPM answers, here its 404 for a missing one.
    let (status, _, body) = ft.get("/shop/").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"new says hello"[..]));
    assert!(
        fpm.log()
            .iter()
            .any(|l| l.contains("Primary script unknown"))
            || fallback.seen().len() == 5,
        "PHP-FPM was asked for /shop/index.php"
    );
}

#[tokio::test]
async fn a_trickled_upload_gives_its_php_worker_back_at_the_response_header_timeout() {
    let fpm = PhpFpm::unix(1).await;
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&fcgi_route(
        &fpm,
        "",
        &fallback.url(),
        "  maxReplayBytes: 1024\n  timeouts: {responseHeader: 1s, connect: 10s}\n",
    ))
    .await;
    let mut slow = support::RawConn::open(ft.http).await;
    slow.write(b"POST /index.php HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        .await;
    slow.write(&[b'x'; 2048]).await;
    // The one PHP worker is the trickler's until its upload times out; then this one runs.
    let (status, _, body) = ft.get("/index.php").await;
    assert_eq!(status, 200, "{body:?}");
    let resp = slow.response(false).await;
    assert_eq!(resp.status, 504);
}
