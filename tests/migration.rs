//! Migration features through the real binary: remembered fallbacks, `skipPrimary` and
//! `primaryOnly`, with recording backends.

mod support;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn paths_seen(b: &Backend) -> Vec<String> {
    b.seen().into_iter().map(|s| s.uri).collect()
}

#[tokio::test]
async fn a_remembered_path_skips_the_primary_until_its_ttl_ends() {
    let php = backend("php")
        .status(404)
        .on("/old", 200, "legacy")
        .start()
        .await;
    let py = backend("py").body("python page").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  rememberFallbacks: {ttl: 2s}\n",
    ))
    .await;

    // Taken before the request: the TTL runs from when the proxy read it.
    let remembered_at = Instant::now();
    let (status, headers, _) = ft.get("/new?page=1").await;
    assert_eq!(
        (status.as_u16(), headers["x-backend"].to_str().unwrap()),
        (200, "py")
    );
    assert_eq!(paths_seen(&php), ["/new?page=1"], "asked once: a 404");

    // Within the TTL: straight to the fallback, whatever the method or query.
    let (status, _, _) = ft.get("/new?page=2").await;
    assert_eq!(status, 200);
    let post = Request::post("/new")
        .header("host", "shop.example.com")
        .body(Full::new(Bytes::from_static(b"form=1")))
        .unwrap();
    let (status, _, _) = send(ft.http, post).await;
    assert_eq!(status, 200);
    let asked_within = remembered_at.elapsed();
    assert!(
        asked_within < std::time::Duration::from_secs(2),
        "the requests above took {asked_within:?}, longer than the TTL: the test proves nothing"
    );
    assert_eq!(
        paths_seen(&php),
        ["/new?page=1"],
        "the primary is not asked again"
    );
    let to_py = py.seen();
    assert_eq!(to_py.len(), 3);
    assert_eq!(
        (to_py[2].method.as_str(), &to_py[2].body[..]),
        ("POST", &b"form=1"[..])
    );

    // Other paths still ask the primary, and a primary hit is never remembered.
    assert_eq!(ft.get("/old").await.0, 200);
    assert_eq!(ft.get("/old").await.0, 200);
    assert_eq!(paths_seen(&php).len(), 3);

    assert_eq!(
        ft.sample(
            r#"fallthrough_fallbacks_total{namespace="web",reason="remembered",route="shop"}"#
        )
        .await,
        2.0
    );
    assert_eq!(
        ft.sample(r#"fallthrough_remembered_paths{namespace="web",route="shop"}"#)
            .await,
        1.0
    );

    // After the TTL the next request asks the primary again.
    wait_for_async("the primary to be asked for /new again", || async {
        ft.get("/new").await;
        paths_seen(&php)
            .iter()
            .filter(|p| p.starts_with("/new"))
            .count()
            == 2
    })
    .await;
    assert!(remembered_at.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(
        ft.sample(r#"fallthrough_remembered_evictions_total{namespace="web",reason="expired",route="shop"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_remembered_path_the_fallback_404s_is_forgotten() {
    let php = backend("php").status(404).start().await;
    // The new app serves /moving at first, then takes it away.
    let taken_away = Arc::new(AtomicU16::new(0));
    let py = backend("py")
        .on("/moving", 200, "new")
        .status(404)
        .forced(taken_away.clone())
        .start()
        .await;
    let shop = route(
        "shop",
        &php.url(),
        &py.url(),
        "  rememberFallbacks: {ttl: 1h, maxPaths: 100}\n",
    );
    let ft = Fallthrough::start(&shop).await;

    assert_eq!(ft.get("/moving").await.0, 200);
    assert_eq!(ft.get("/moving").await.0, 200);
    assert_eq!(paths_seen(&php).len(), 1, "remembered after the first");

    // Both 404: a missing path is not remembered.
    assert_eq!(ft.get("/nowhere").await.0, 404);
    assert_eq!(ft.get("/nowhere").await.0, 404);
    assert_eq!(
        paths_seen(&php).len(),
        3,
        "/nowhere asks the primary each time"
    );

    // A reload that adds another route leaves this one's memory alone.
    let other = backend("other").start().await;
    let blog = route(
        "blog",
        &other.url(),
        &other.url(),
        "  hosts: [blog.example.com]\n",
    );
    ft.write_routes(&format!("{shop}---\n{blog}"));
    wait_for_async("the reload", || async {
        ft.sample(r#"fallthrough_config_reloads_total{result="success"}"#)
            .await
            >= 1.0
    })
    .await;
    assert_eq!(ft.get("/moving").await.0, 200);
    assert_eq!(
        paths_seen(&php).len(),
        3,
        "still remembered after the reload"
    );

    taken_away.store(404, Ordering::SeqCst);
    assert_eq!(ft.get("/moving").await.0, 404);
    assert_eq!(
        paths_seen(&php).len(),
        3,
        "the fallback was asked straight away"
    );
    assert_eq!(ft.get("/moving").await.0, 404);
    assert_eq!(
        paths_seen(&php).len(),
        4,
        "forgotten: the primary is asked again"
    );
    assert_eq!(
        ft.sample(r#"fallthrough_remembered_evictions_total{namespace="web",reason="forgotten",route="shop"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn skip_primary_and_primary_only_prefixes() {
    let php = backend("php").status(404).body("legacy 404").start().await;
    let py = backend("py").body("python").start().await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  skipPrimary: [/blog, /wp-admin/new]\n  primaryOnly: [/wp-admin]\n",
    ))
    .await;

    // skipPrimary: the primary never sees it; a body streams straight through.
    let upload = Request::post("/blog/post")
        .header("host", "shop.example.com")
        .body(Full::new(Bytes::from(vec![b'x'; 3 * 1024 * 1024])))
        .unwrap();
    let (status, headers, _) = send(ft.http, upload).await;
    assert_eq!(
        (status.as_u16(), headers["x-backend"].to_str().unwrap()),
        (200, "py")
    );
    assert_eq!(
        py.seen()[0].body.len(),
        3 * 1024 * 1024,
        "above maxReplayBytes, sent once"
    );
    assert_eq!(
        ft.get("/blogger").await.1["x-backend"],
        "py",
        "segment-aware: /blogger is not /blog"
    );
    assert_eq!(paths_seen(&php), ["/blogger"]);

    // primaryOnly: the primary's 404 is final.
    let (status, headers, body) = ft.get("/wp-admin/login.php").await;
    assert_eq!(
        (
            status.as_u16(),
            headers["x-backend"].to_str().unwrap(),
            &body[..]
        ),
        (404, "php", &b"legacy 404"[..])
    );
    // The longest prefix decides: /wp-admin/new is skipPrimary inside primaryOnly /wp-admin.
    assert_eq!(ft.get("/wp-admin/new/x").await.1["x-backend"], "py");
    assert_eq!(paths_seen(&php), ["/blogger", "/wp-admin/login.php"]);

    assert_eq!(
        ft.sample(
            r#"fallthrough_fallbacks_total{namespace="web",reason="skip_primary",route="shop"}"#
        )
        .await,
        2.0
    );
    assert_eq!(
        ft.sample(&format!(
            r#"fallthrough_requests_total{{backend="fallback",code="200",namespace="web",route="shop",service="{}"}}"#,
            py.addr
        ))
        .await,
        3.0,
        "counted by the backend label, as every answer"
    );
}

#[test]
fn fallthrough_check_explains_a_bad_cut_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yaml");
    std::fs::write(
        &path,
        route(
            "shop",
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "  skipPrimary: [/blog]\n  primaryOnly: [/blog/]\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
        .args(["check", "--routes", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            r#"primaryOnly "/blog/": is in both skipPrimary and primaryOnly: keep it in one"#
        ),
        "{err}"
    );
}

/// `GET /paths` as (class, path, count) rows of one route, and the route's requests.
async fn paths_rows(ft: &Fallthrough, query: &str) -> (u64, Vec<(String, String, u64)>) {
    let (status, _, body) = get(ft.admin, &format!("/paths?{query}")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let route = &report["routes"][0];
    let mut rows = Vec::new();
    for class in route["classes"].as_array().unwrap() {
        for path in class["paths"].as_array().unwrap() {
            rows.push((
                class["class"].as_str().unwrap().to_string(),
                path["path"].as_str().unwrap().to_string(),
                path["count"].as_u64().unwrap(),
            ));
        }
    }
    (route["requests"].as_u64().unwrap(), rows)
}

#[tokio::test]
async fn the_paths_report_says_which_app_serves_which_path() {
    let php = backend("php")
        .status(404)
        .on("/old", 200, "legacy")
        .start()
        .await;
    let py = backend("py")
        .on("/gone", 404, "no")
        .body("python")
        .start()
        .await;
    let ft = Fallthrough::start(&route(
        "shop",
        &php.url(),
        &py.url(),
        "  skipPrimary: [/blog]\n",
    ))
    .await;

    for path in [
        "/old",
        "/old?x=1",
        "/old/../old",
        "/old/page",
        "/new",
        "/new?y",
        "/gone",
        "/blog/a",
    ] {
        ft.get(path).await;
    }
    let row = |c: &str, p: &str, n: u64| (c.to_string(), p.to_string(), n);
    let (requests, rows) = paths_rows(&ft, "route=web/shop").await;
    assert_eq!(requests, 8);
    assert_eq!(
        rows,
        [
            row("legacy", "/old", 3),
            row("legacy", "/old/page", 1),
            row("migrated", "/new", 2),
            row("migrated", "/blog/a", 1),
            row("missing", "/gone", 1),
        ],
        "normalised as routed, the query string dropped"
    );
    let (_, rows) = paths_rows(&ft, "class=legacy&limit=1").await;
    assert_eq!(rows, [row("legacy", "/old", 3)]);

    let (status, _, body) = get(ft.admin, "/paths?class=old").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("use legacy, migrated or missing"));

    let (status, _, body) = get(ft.admin, "/traffic").await;
    assert_eq!(status, 200);
    let traffic: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(traffic["routes"][0]["route"], "web/shop");
    assert_eq!(traffic["routes"][0]["requests"], 8);
    assert_eq!(
        traffic["routes"][0]["fallback"], 4,
        "/new twice, /gone, /blog/a"
    );
}

#[tokio::test]
async fn fallthrough_paths_merges_the_reports_of_two_replicas() {
    let php = backend("php")
        .status(404)
        .on("/old", 200, "legacy")
        .start()
        .await;
    let py = backend("py").start().await;
    let shop = route("shop", &php.url(), &py.url(), "");
    let (a, b) = (
        Fallthrough::start(&shop).await,
        Fallthrough::start(&shop).await,
    );
    for (ft, paths) in [
        (&a, ["/old", "/old", "/new"]),
        (&b, ["/old", "/new", "/new"]),
    ] {
        for p in paths {
            ft.get(p).await;
        }
    }
    let admin = |ft: &Fallthrough| format!("http://{}", ft.admin);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
            .args(["paths", "--admin", &admin(&a), "--admin", &admin(&b)])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (json, progress) = run(&["--json"]);
    assert_eq!(
        progress
            .lines()
            .filter(|l| l.starts_with("read http://"))
            .count(),
        2,
        "{progress}"
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["replicas"].as_array().unwrap().len(), 2);
    let route = &report["routes"][0];
    assert_eq!(
        (route["route"].as_str(), route["requests"].as_u64()),
        (Some("web/shop"), Some(6))
    );
    let counts: Vec<(&str, &str, u64)> = route["classes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["paths"].as_array().unwrap().iter().map(move |p| {
                (
                    c["class"].as_str().unwrap(),
                    p["path"].as_str().unwrap(),
                    p["count"].as_u64().unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(counts, [("legacy", "/old", 3), ("migrated", "/new", 3)]);

    let (table, _) = run(&["--class", "migrated"]);
    assert!(
        table.starts_with("web/shop  6 requests  migrated 50.0%\n"),
        "{table}"
    );
    assert!(
        table.contains("  migrated  /new          3   50.0%"),
        "{table}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
        .args(["paths", "--admin", "ftp://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give it like http://10.0.0.7:9090"));
}
