//! Series of routes that leave the table leave `/metrics`: 1,000 routes loaded, some with
//! traffic (hits, fallbacks, an uncommon status, an upstream error, one request still in
//! flight across the reload), then a reload with the one route that was there first.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::sync::Notify;

/// A route for `host`; `name` is also its host's first label.
fn hosted(name: &str, primary: &str, fallback: &str) -> String {
    route(
        name,
        primary,
        fallback,
        &format!("  hosts: [{name}.test]\n"),
    )
}

async fn get_host(ft: &Fallthrough, host: &str, path: &str) -> u16 {
    let req = Request::get(path)
        .header("host", format!("{host}.test"))
        .body(Full::<Bytes>::default())
        .unwrap();
    send(ft.http, req).await.0.as_u16()
}

/// Every series in the scrape (one line per label set, comments left out).
async fn series(ft: &Fallthrough) -> BTreeSet<String> {
    ft.metrics()
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(key, _)| key.to_string()))
        // Reload counters and the route count change with every reload by design.
        .filter(|k| !k.starts_with("fallthrough_config_reloads_total"))
        .collect()
}

/// The lines (with values) of one route's series.
async fn lines_of(ft: &Fallthrough, route: &str) -> Vec<String> {
    let needle = format!(r#"route="{route}""#);
    ft.metrics()
        .await
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&needle))
        .map(str::to_string)
        .collect()
}

async fn wait_routes(ft: &Fallthrough, n: usize) {
    wait_for_async(&format!("{n} routes served"), || async {
        ft.sample("fallthrough_routes").await == n as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_1000_routes_to_1_leaves_the_series_of_the_1() {
    let php = backend("php")
        .on("/new", 404, "not here")
        .on("/gone", 410, "gone")
        .start()
        .await;
    let py = backend("py").start().await;
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let held = backend("held")
        .status(503)
        .hold(arrived.clone(), release.clone())
        .start()
        .await;
    let closed = format!("http://{}", closed_addr().await);
    let survivor = hosted("survivor", &php.url(), &py.url());

    let ft = Fallthrough::start(&survivor).await;
    for path in ["/", "/new", "/gone"] {
        get_host(&ft, "survivor", path).await;
    }
    assert_eq!(get_host(&ft, "nobody", "/").await, 404, "unrouted");
    let baseline = series(&ft).await;
    let survivor_lines = lines_of(&ft, "survivor").await;
    assert!(!survivor_lines.is_empty());

    let mut many = vec![survivor.clone()];
    many.push(hosted("broken", &closed, &py.url()));
    many.push(hosted("slow", &held.url(), &py.url()));
    many.extend((3..1000).map(|i| hosted(&format!("r{i}"), &php.url(), &py.url())));
    ft.write_routes(&many.join("---\n"));
    wait_routes(&ft, 1000).await;
    for i in 3..13 {
        for path in ["/", "/new", "/gone"] {
            get_host(&ft, &format!("r{i}"), path).await;
        }
    }
    assert_eq!(get_host(&ft, "broken", "/").await, 502);
    let addr = ft.http;
    let in_flight = tokio::spawn(async move {
        let req = Request::get("/")
            .header("host", "slow.test")
            .body(Full::<Bytes>::default())
            .unwrap();
        send(addr, req).await.0.as_u16()
    });
    arrived.notified().await;
    let loaded = series(&ft).await;
    assert!(
        loaded.len() > baseline.len() + 1000,
        "1,000 routes show: {} series against {}",
        loaded.len(),
        baseline.len()
    );

    ft.write_routes(&survivor);
    wait_routes(&ft, 1).await;
    // The request on the old table finishes now, with a status no series had yet.
    release.notify_one();
    assert_eq!(in_flight.await.unwrap(), 503);
    let after = series(&ft).await;
    let extra: Vec<_> = after.difference(&baseline).collect();
    let missing: Vec<_> = baseline.difference(&after).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "back to the 1-route series: extra {extra:#?}, missing {missing:#?}"
    );
    assert_eq!(
        lines_of(&ft, "survivor").await,
        survivor_lines,
        "the surviving route's counters are untouched"
    );
}
