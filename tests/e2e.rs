//! End-to-end against a real kube-apiserver + etcd, real PHP and gunicorn "pods", and the
//! controller running with only its restricted identity.
//!
//! Needs root (network namespaces) and the Go-built binaries: `scripts/test` runs these
//! with `--ignored --test-threads=1` after building them. The tests share one cluster
//! and run one at a time; each uses its own namespace and Lease.

#[path = "e2e/cluster.rs"]
mod cluster;
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use cluster::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{send, Fallthrough};

const NEEDS: &str = "needs root and the Go-built cluster binaries: run scripts/test";

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = Cluster::start();
        c.install_crd();
        c
    })
}

fn namespace(name: &str) -> String {
    let ns = format!("e2e-{name}");
    let _ = cluster().kubectl(&["create", "namespace", &ns]);
    ns
}

/// A PHP pod behind Service `legacy` (port name `web`), a Python pod behind Service `new`
/// (port name `http`), and FallbackRoute `route` joining them for `hosts`.
fn deploy_shop(ns: &str, route: &str, hosts: &[&str]) -> (Pod, Pod) {
    let c = cluster();
    let (php, py) = (Pod::php(), Pod::python());
    c.apply(&service_yaml(ns, "legacy", "web", 8080, &[&php], &[]));
    c.apply(&service_yaml(ns, "new", "http", 8000, &[&py], &[]));
    c.apply(&route_yaml(ns, route, hosts, "legacy", "new", ""));
    (php, py)
}

/// A controller (and proxy) with the restricted identity, watching `ns`.
async fn controller(ns: &str, lease: &str, identity: &str) -> Fallthrough {
    let mut args = cluster().controller_args(ns, lease, identity);
    args.extend(["--shutdown-grace".to_string(), "1s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ft = Fallthrough::spawn(tempfile::tempdir().unwrap(), Default::default(), &args).await;
    let admin = ft.admin;
    support::wait_for_async("controller /readyz", || async move {
        support::get(admin, "/readyz").await.0 == 200
    })
    .await;
    ft
}

async fn get_host(ft: &Fallthrough, host: &str, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(ft.http, req).await;
    (status.as_u16(), headers, body)
}

fn served_by(headers: &http::HeaderMap) -> &str {
    headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Waits until `host`+`path` is answered with `status` by `who` ("" = any).
async fn eventually_served(ft: &Fallthrough, host: &str, path: &str, status: u16, who: &str) {
    let start = std::time::Instant::now();
    loop {
        let (s, headers, _) = get_host(ft, host, path).await;
        if s == status && (who.is_empty() || served_by(&headers) == who) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{host}{path}: still {s} from {:?}, wanted {status} from {who:?}",
            served_by(&headers)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `status.conditions` of a route as (type, status, reason, message, observedGeneration).
fn conditions(ns: &str, route: &str) -> Vec<(String, String, String, String, i64)> {
    let out = cluster().kubectl_ok(&["get", "fallbackroute", "-n", ns, route, "-o", "json"]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (
                s("type"),
                s("status"),
                s("reason"),
                s("message"),
                c["observedGeneration"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

fn generation(ns: &str, route: &str) -> i64 {
    cluster()
        .kubectl_ok(&[
            "get",
            "fallbackroute",
            "-n",
            ns,
            route,
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .parse()
        .unwrap()
}

/// Waits until the route's condition `type_` has `status` and `reason` for its current
/// generation; returns its message. On timeout, the route's actual conditions are shown.
fn wait_condition(ns: &str, route: &str, type_: &str, status: &str, reason: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let generation = generation(ns, route);
        let now = conditions(ns, route);
        let found = now
            .iter()
            .find(|(t, s, r, _, g)| t == type_ && s == status && r == reason && *g == generation);
        if let Some((.., message, _)) = found {
            return message.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{ns}/{route}: no {type_}={status} ({reason}) for generation {generation}; conditions are {now:#?}\nall routes in {ns}:\n{}",
            cluster().kubectl_ok(&[
                "get", "fallbackroutes", "-n", ns, "-o",
                "jsonpath={range .items[*]}{.metadata.name} created {.metadata.creationTimestamp}: {range .status.conditions[*]}{.type}={.status}/{.reason} {end}{\"\\n\"}{end}",
            ])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests in a loop until stopped; counts good and bad answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        addr: std::net::SocketAddr,
        host: &'static str,
        paths: &'static [&'static str],
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..4)
            .map(|i| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let client: Client<_, Full<Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let path = paths[n % paths.len()];
                        let req = Request::get(format!("http://{addr}{path}"))
                            .header("host", host)
                            .body(Full::default())
                            .unwrap();
                        let good = match client.request(req).await {
                            Ok(resp) => {
                                resp.status() == 200 && resp.into_body().collect().await.is_ok()
                            }
                            Err(_) => false,
                        };
                        if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until `n` more requests have been answered.
    async fn run_for_more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) + n;
        let start = std::time::Instant::now();
        while self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < target {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the load stalled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop and returns (ok, failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn no_forbidden(ft: &Fallthrough) {
    assert_no_forbidden(ft.log(), "the restricted identity");
}

async fn reloads(ft: &Fallthrough) -> f64 {
    ft.sample(r#"fallthrough_config_reloads_total{result="success"}"#)
        .await
}

/// Waits until the controller has published another table after `before`.
async fn next_table(ft: &Fallthrough, before: f64) {
    support::wait_for_async("a new routing table", || async move {
        reloads(ft).await > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn php_serves_what_it_knows_and_python_the_rest_through_services() {
    let _ = NEEDS;
    let c = cluster();
    let ns = namespace("basics");
    let _pods = deploy_shop(&ns, "shop", &["shop.test"]);
    let ft = controller(&ns, "basics", "basics-1").await;

    eventually_served(&ft, "shop.test", "/about.php", 200, "legacy-php").await;
    let (status, headers, _) = get_host(&ft, "shop.test", "/products/3").await;
    assert_eq!((status, served_by(&headers)), (200, "new-python"));
    let (status, headers, body) = get_host(&ft, "shop.test", "/nothing-here").await;
    assert_eq!(
        (status, served_by(&headers)),
        (404, "new-python"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    let payload = support::noise(4096, 7);
    let req = Request::post("/api/echo")
        .header("host", "shop.test")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let (status, _, body) = send(ft.http, req).await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sha = String::from_utf8(
        std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&payload)?;
                child.wait_with_output()
            })
            .unwrap()
            .stdout,
    )
    .unwrap();
    let echoed = echo.to_string();
    assert!(
        echoed.contains(sha.split_whitespace().next().unwrap()),
        "the Python pod got another body: {echoed}"
    );

    for type_ in ["Accepted", "ResolvedRefs", "Programmed"] {
        wait_condition(&ns, "shop", type_, "True", type_);
    }
    let printed = c.kubectl_ok(&["get", "fallbackroutes", "-n", &ns, "-o", "wide"]);
    assert!(
        printed.contains("FALLBACK ")
            && printed.contains("PROGRAMMED")
            && printed.contains("PRIMARY-SERVICE")
            && printed.contains("legacy")
            && printed.contains("True"),
        "{printed}"
    );
    no_forbidden(&ft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn a_php_fpm_service_is_spoken_to_in_fastcgi() {
    let c = cluster();
    let ns = namespace("fpm");
    let fpm = Pod::php_fpm();
    let py = Pod::python();
    c.apply(&service_yaml(&ns, "legacy-fpm", "fcgi", 9000, &[&fpm], &[]));
    c.apply(&service_yaml(&ns, "new", "http", 8000, &[&py], &[]));
    let root = repo().join("demo/legacy");
    let route = |name: &str, root: &str| {
        format!(
            "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [\"fpm.test\"]\n  primary:\n    service: {{name: legacy-fpm, port: 80}}\n    fastcgi: {{documentRoot: \"{root}\", frontController: /router.php, maxConnections: 2}}\n  fallback: {{service: {{name: new, port: http}}}}\n"
        )
    };
    // The schema refuses what it can before the controller sees it.
    let refused = c.try_apply(&route("relative", "var/www")).unwrap_err();
    assert!(refused.contains("documentRoot"), "{refused}");
    let explained = c.kubectl_ok(&["explain", "fallbackroute.spec.primary.fastcgi"]);
    for field in [
        "documentRoot",
        "frontController",
        "maxConnections",
        "pm.max_children",
    ] {
        assert!(
            explained.contains(field),
            "kubectl explain lacks {field}: {explained}"
        );
    }
    c.apply(&route("shop", &root.display().to_string()));
    let ft = controller(&ns, "fpm", "fpm-1").await;

    eventually_served(&ft, "fpm.test", "/about.php", 200, "legacy-php").await;
    let (status, headers, _) = get_host(&ft, "fpm.test", "/products/3").await;
    assert_eq!((status, served_by(&headers)), (200, "new-python"));
    let req = Request::post("/contact.php")
        .header("host", "fpm.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("name=Ada&message=hello+fpm")))
        .unwrap();
    let (status, headers, body) = send(ft.http, req).await;
    assert_eq!((status.as_u16(), served_by(&headers)), (200, "legacy-php"));
    assert!(
        String::from_utf8_lossy(&body).contains("hello fpm"),
        "{body:?}"
    );
    let req = Request::post("/api/echo")
        .header("host", "fpm.test")
        .body(Full::new(Bytes::from(support::noise(4096, 11))))
        .unwrap();
    let (status, headers, _) = send(ft.http, req).await;
    assert_eq!((status.as_u16(), served_by(&headers)), (200, "new-python"));
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    no_forbidden(&ft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn scaling_endpoints_up_and_down_under_load_fails_no_request() {
    let c = cluster();
    let ns = namespace("scaling");
    let (mut a, mut b, extra) = (Pod::php(), Pod::php(), Pod::php());
    let py = Pod::python();
    c.apply(&service_yaml(&ns, "legacy", "web", 8080, &[&a, &b], &[]));
    c.apply(&service_yaml(&ns, "new", "http", 8000, &[&py], &[]));
    c.apply(&route_yaml(
        &ns,
        "shop",
        &["shop.test"],
        "legacy",
        "new",
        "",
    ));
    let ft = controller(&ns, "scaling", "scaling-1").await;
    eventually_served(&ft, "shop.test", "/about.php", 200, "legacy-php").await;

    let load = Load::start(
        ft.http,
        "shop.test",
        &["/about.php", "/products/1", "/products/3"],
    );
    // Up: a third pod joins.
    let before = reloads(&ft).await;
    c.apply(&service_yaml(
        &ns,
        "legacy",
        "web",
        8080,
        &[&a, &b, &extra],
        &[],
    ));
    next_table(&ft, before).await;
    // Down, the way Kubernetes does it: unready first, then the process goes.
    let before = reloads(&ft).await;
    c.apply(&service_yaml(
        &ns,
        "legacy",
        "web",
        8080,
        &[&b, &extra],
        &[&a],
    ));
    next_table(&ft, before).await;
    a.stop();
    let before = reloads(&ft).await;
    c.apply(&service_yaml(
        &ns,
        "legacy",
        "web",
        8080,
        &[&extra],
        &[&a, &b],
    ));
    next_table(&ft, before).await;
    b.stop();
    load.run_for_more(200).await;
    let (ok, failed) = load.finish().await;
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed while scaling",
        ok + failed
    );
    no_forbidden(&ft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn editing_a_route_takes_effect_and_deleting_it_stops_it() {
    let c = cluster();
    let ns = namespace("edit");
    let _pods = deploy_shop(&ns, "shop", &["a.test"]);
    let ft = controller(&ns, "edit", "edit-1").await;
    eventually_served(&ft, "a.test", "/about.php", 200, "legacy-php").await;
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    assert_eq!(generation(&ns, "shop"), 1);

    // Move the route to another host: generation 2, and the conditions follow it.
    c.apply(&route_yaml(&ns, "shop", &["b.test"], "legacy", "new", ""));
    eventually_served(&ft, "b.test", "/about.php", 200, "legacy-php").await;
    let (status, _, body) = get_host(&ft, "a.test", "/about.php").await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no route"));
    assert_eq!(generation(&ns, "shop"), 2);
    for type_ in ["Accepted", "ResolvedRefs", "Programmed"] {
        wait_condition(&ns, "shop", type_, "True", type_);
    }
    assert!(
        conditions(&ns, "shop").iter().all(|c| c.4 == 2),
        "observedGeneration 2: {:?}",
        conditions(&ns, "shop")
    );

    c.kubectl_ok(&["delete", "fallbackroute", "-n", &ns, "shop"]);
    eventually_served(&ft, "b.test", "/about.php", 404, "").await;
    no_forbidden(&ft);
}

/// Events about a route, as "reason: note" lines.
fn events(ns: &str, route: &str) -> String {
    cluster().kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "--field-selector",
        &format!("regarding.name={route}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.note}{\"\\n\"}{end}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn invalid_and_conflicting_routes_get_conditions_and_events_while_others_serve() {
    let c = cluster();
    let ns = namespace("invalid");
    let _pods = deploy_shop(&ns, "good", &["good.test"]);
    let ft = controller(&ns, "invalid", "invalid-1").await;
    eventually_served(&ft, "good.test", "/about.php", 200, "legacy-php").await;

    // The schema refuses what it can, with a message a user understands.
    let both = route_yaml(&ns, "both", &["x.test"], "legacy", "new", "").replace(
        "primary: {service: {name: legacy, port: 80}}",
        "primary: {service: {name: legacy, port: 80}, url: \"http://10.0.0.1\"}",
    );
    let refused = c.try_apply(&both).unwrap_err();
    assert!(
        refused.contains("set exactly one of url or service"),
        "{refused}"
    );
    let refused = c
        .try_apply(&route_yaml(
            &ns,
            "bad-status",
            &["x.test"],
            "legacy",
            "new",
            "  fallbackOn: [200]\n",
        ))
        .unwrap_err();
    assert!(
        refused.contains("fallbackOn") && refused.contains("300"),
        "{refused}"
    );

    // What only the controller can judge gets a condition and an Event.
    let url = route_yaml(&ns, "by-url", &["url.test"], "legacy", "new", "").replace(
        "primary: {service: {name: legacy, port: 80}}",
        "primary: {url: \"http://10.0.0.1:80\"}",
    );
    c.apply(&url);
    // Creation times have whole seconds, and a tie goes to the alphabetically first
    // route: let a full second pass so "good" is older by the clock.
    let created = c.kubectl_ok(&[
        "get",
        "fallbackroute",
        "-n",
        &ns,
        "good",
        "-o",
        "jsonpath={.metadata.creationTimestamp}",
    ]);
    let created: k8s_openapi::jiff::Timestamp = created.parse().unwrap();
    wait_until(
        "a new second after the good route's creation",
        Duration::from_secs(5),
        || k8s_openapi::jiff::Timestamp::now().as_second() > created.as_second(),
    );
    c.apply(&route_yaml(
        &ns,
        "copycat",
        &["good.test"],
        "legacy",
        "new",
        "",
    ));
    c.apply(&route_yaml(
        &ns,
        "dangling",
        &["dangling.test"],
        "missing",
        "new",
        "",
    ));

    let message = wait_condition(&ns, "by-url", "Accepted", "False", "UrlBackendNotAllowed");
    assert!(message.contains("--allow-url-backends"), "{message}");
    let message = wait_condition(&ns, "copycat", "Accepted", "False", "Conflicted");
    assert!(
        message.contains(&format!("{ns}/good")),
        "the winner is named: {message}"
    );
    wait_condition(&ns, "copycat", "Programmed", "False", "NotAccepted");
    let message = wait_condition(&ns, "dangling", "ResolvedRefs", "False", "BackendNotFound");
    assert!(message.contains(&format!("{ns}/missing")), "{message}");
    wait_condition(&ns, "dangling", "Programmed", "True", "Programmed");
    let (status, _, body) = get_host(&ft, "dangling.test", "/about.php").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));

    wait_until(
        "Events for the rejected routes",
        Duration::from_secs(30),
        || {
            events(&ns, "by-url").contains("UrlBackendNotAllowed")
                && events(&ns, "copycat").contains("Conflicted")
                && events(&ns, "dangling").contains("BackendNotFound")
        },
    );
    let (status, headers, _) = get_host(&ft, "good.test", "/about.php").await;
    assert_eq!(
        (status, served_by(&headers)),
        (200, "legacy-php"),
        "the good route kept serving"
    );
    wait_condition(&ns, "good", "Accepted", "True", "Accepted");
    no_forbidden(&ft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn restarting_the_api_server_mid_load_fails_no_request() {
    let c = cluster();
    let ns = namespace("restart");
    let _pods = deploy_shop(&ns, "shop", &["shop.test"]);
    let ft = controller(&ns, "restart", "restart-1").await;
    eventually_served(&ft, "shop.test", "/products/3", 200, "new-python").await;

    let load = Load::start(ft.http, "shop.test", &["/about.php", "/products/3"]);
    c.stop_apiserver();
    load.run_for_more(300).await;
    c.start_again();
    load.run_for_more(300).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the restart",
        ok + failed
    );

    // The controller is back on its watches: a change made now is served.
    c.apply(&route_yaml(
        &ns,
        "shop",
        &["moved.test"],
        "legacy",
        "new",
        "",
    ));
    eventually_served(&ft, "moved.test", "/about.php", 200, "legacy-php").await;
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    assert!(
        ft.log().iter().any(|l| l.contains("watch failed")),
        "the outage was noticed and logged"
    );
}

/// Field managers that wrote the route's status.
fn status_writers(ns: &str, route: &str) -> Vec<String> {
    let out = cluster().kubectl_ok(&[
        "get",
        "fallbackroute",
        "-n",
        ns,
        route,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["subresource"] == "status")
        .filter_map(|f| f["manager"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn with_two_controllers_both_serve_and_exactly_one_writes_status() {
    let c = cluster();
    let ns = namespace("leader");
    let _pods = deploy_shop(&ns, "shop", &["shop.test"]);
    let replicas = [
        (
            "replica-one",
            controller(&ns, "leader", "replica-one").await,
        ),
        (
            "replica-two",
            controller(&ns, "leader", "replica-two").await,
        ),
    ];
    for (_, ft) in &replicas {
        eventually_served(ft, "shop.test", "/products/3", 200, "new-python").await;
    }
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    let holder = || {
        c.kubectl_ok(&[
            "get",
            "lease",
            "-n",
            SYSTEM_NAMESPACE,
            "leader",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let leader = holder();
    assert!(
        leader == "replica-one" || leader == "replica-two",
        "holder {leader:?}"
    );
    assert_eq!(
        status_writers(&ns, "shop"),
        std::slice::from_ref(&leader),
        "only the Lease holder writes status"
    );

    // The leader goes away; the other takes the Lease and writes the next change.
    let gone = replicas.iter().position(|(id, _)| *id == leader).unwrap();
    let (stays, survivor) = (replicas[1 - gone].0, &replicas[1 - gone].1);
    replicas[gone].1.signal("KILL");
    c.apply(&route_yaml(
        &ns,
        "shop",
        &["shop.test", "www.shop.test"],
        "legacy",
        "new",
        "",
    ));
    wait_until(
        "the other replica to take over status",
        Duration::from_secs(60),
        || holder() == stays,
    );
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    assert!(
        status_writers(&ns, "shop").contains(&stays.to_string()),
        "{:?}",
        status_writers(&ns, "shop")
    );
    eventually_served(survivor, "www.shop.test", "/products/3", 200, "new-python").await;
    no_forbidden(survivor);
}

/// Applies TLS Secret `name` holding a fresh self-signed certificate for `host`, with
/// common name `cn`; `stray_key` stores a key that does not match.
fn tls_secret(ns: &str, name: &str, host: &str, cn: &str, stray_key: bool) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).unwrap();
    let key_pem = if stray_key {
        rcgen::KeyPair::generate().unwrap().serialize_pem()
    } else {
        key.serialize_pem()
    };
    // Built directly: kubectl create secret tls refuses a mismatched pair, but other
    // writers (a botched renewal, a hand edit) do not.
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    k8s_openapi::ByteString(cert.pem().into_bytes()),
                ),
                (
                    "tls.key".to_string(),
                    k8s_openapi::ByteString(key_pem.into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let mut yaml = serde_json::to_value(&secret).unwrap();
    yaml["apiVersion"] = "v1".into();
    yaml["kind"] = "Secret".into();
    cluster().apply(&yaml.to_string());
}

/// The common name of the certificate served over HTTPS for `host`.
async fn served_cn(ft: &Fallthrough, host: &str) -> String {
    let port = ft.https.port();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-v", "-k", "--max-time", "10", "-o", "/dev/null"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}/about.php"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    err.lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: CN="))
        .unwrap_or("(no certificate)")
        .to_string()
}

async fn eventually_cn(ft: &Fallthrough, host: &str, cn: &str) {
    let start = std::time::Instant::now();
    loop {
        let served = served_cn(ft, host).await;
        if served == cn {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{host}: still serves {served:?}, wanted {cn:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn https_certificates_come_from_secrets_rotate_and_survive_a_bad_update() {
    let c = cluster();
    let ns = namespace("tls");
    let _pods = deploy_shop(&ns, "shop", &["shop.test"]);
    tls_secret(&ns, "shop-tls", "shop.test", "shop v1", false);
    c.apply(&route_yaml(
        &ns,
        "shop",
        &["shop.test"],
        "legacy",
        "new",
        "  tls: {secretName: shop-tls}\n",
    ));
    c.apply(&route_yaml(
        &ns,
        "nocert",
        &["nocert.test"],
        "legacy",
        "new",
        "  tls: {secretName: missing}\n",
    ));
    let ft = controller(&ns, "tls", "tls-1").await;
    eventually_cn(&ft, "shop.test", "shop v1").await;

    // cert-manager renews: the new certificate is used by new handshakes.
    tls_secret(&ns, "shop-tls", "shop.test", "shop v2", false);
    eventually_cn(&ft, "shop.test", "shop v2").await;

    // A broken update: the route says so, an Event is written, v2 keeps serving.
    tls_secret(&ns, "shop-tls", "shop.test", "shop v3", true);
    let message = wait_condition(
        &ns,
        "shop",
        "ResolvedRefs",
        "False",
        "InvalidCertificateRef",
    );
    assert!(
        message.contains("does not match") && message.contains("last good"),
        "{message}"
    );
    assert_eq!(served_cn(&ft, "shop.test").await, "shop v2");
    wait_until(
        "an Event about the certificate",
        Duration::from_secs(30),
        || events(&ns, "shop").contains("InvalidCertificateRef"),
    );
    let missing = wait_condition(
        &ns,
        "nocert",
        "ResolvedRefs",
        "False",
        "InvalidCertificateRef",
    );
    assert!(missing.contains(&format!("{ns}/missing")), "{missing}");
    let (status, headers, _) = get_host(&ft, "nocert.test", "/about.php").await;
    assert_eq!(
        (status, served_by(&headers)),
        (200, "legacy-php"),
        "plain HTTP still serves"
    );
    let log = ft.log().join("\n");
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material must never be logged"
    );
    no_forbidden(&ft);
}

/// `fallthrough paths` in cluster mode: it lists the Running pods matching the selector
/// and reads each one's /paths through the API server's pod proxy, saying which RBAC it
/// lacks. The "replicas" are static /paths reports served from network namespaces.
#[test]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
fn paths_reads_every_replica_through_the_pod_proxy() {
    let c = cluster();
    let ns = namespace("paths");
    let report = |replica: &str, paths: serde_json::Value, requests: u64| {
        serde_json::json!({"replicas": [replica], "top": 100, "routes": [{
        "route": "web/shop", "requests": requests, "classes": [
            {"class": "legacy", "requests": requests, "floor": 0, "paths": paths}
        ]}]})
    };
    let replicas = [
        report(
            "a",
            serde_json::json!([{"path": "/old", "count": 3, "error": 0, "share": 1.0, "lastSeen": 1000}]),
            3,
        ),
        report(
            "b",
            serde_json::json!([
                {"path": "/old", "count": 1, "error": 0, "share": 0.5, "lastSeen": 2000},
                {"path": "/x", "count": 1, "error": 0, "share": 0.5, "lastSeen": 1500}
            ]),
            2,
        ),
    ];
    let dirs: Vec<tempfile::TempDir> = replicas
        .iter()
        .map(|r| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("paths"), r.to_string()).unwrap();
            dir
        })
        .collect();
    let servers: Vec<Pod> = dirs
        .iter()
        .map(|dir| {
            let dir = dir.path().display().to_string();
            let serve = [
                "python3",
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "{ip}",
                "--directory",
            ];
            let mut command = serve.to_vec();
            command.push(&dir);
            Pod::start_ready(9090, &command, Some("/paths"))
        })
        .collect();
    let pod = |name: &str, port_name: &str, label: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app.kubernetes.io/name: {label}}}}}\n\
             spec: {{containers: [{{name: controller, image: fallthrough:e2e, ports: [{{name: {port_name}, containerPort: 9090}}]}}]}}\n"
        )
    };
    let running = |name: &str, ip: &str| {
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
        );
        c.kubectl_ok(&[
            "-n",
            &ns,
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    };
    c.apply(&pod("ft-a", "admin", "fallthrough"));
    c.apply(&pod("ft-b", "admin", "fallthrough"));
    c.apply(&pod("ft-noport", "http", "fallthrough"));
    c.apply(&pod("ft-pending", "admin", "fallthrough"));
    c.apply(&pod("other", "admin", "something-else"));
    running("ft-a", &servers[0].ip);
    running("ft-b", &servers[1].ip);
    running("ft-noport", &servers[0].ip);
    running("other", &servers[0].ip);

    let paths = |kubeconfig: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
            .args(["paths", "--kubeconfig"])
            .arg(kubeconfig)
            .args(extra)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };

    // Without list on pods.
    let (ok, _, err) = paths(&c.controller_kubeconfig, &["-n", &ns]);
    assert!(!ok);
    assert!(
        err.contains("the rights to list pods and get pods/proxy in that namespace"),
        "{err}"
    );

    // With list on pods, without get on pods/proxy.
    c.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: list-pods, namespace: {ns}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [pods], verbs: [list]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: list-pods, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: list-pods}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {CONTROLLER_USER}}}]\n"
    ));
    wait_until("the Role to apply", Duration::from_secs(30), || {
        !paths(&c.controller_kubeconfig, &["-n", &ns])
            .2
            .contains("cannot list the fallthrough pods")
    });
    let (ok, _, err) = paths(&c.controller_kubeconfig, &["-n", &ns]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&format!("cannot read pod {ns}/ft-a: "))
            && err.contains(
                "(reading through the API server's pod proxy needs get on pods/proxy); left out"
            ),
        "{err}"
    );
    assert!(err.contains("no replica could be read"), "{err}");

    // As the admin: the two readable replicas, merged.
    let (ok, out, err) = paths(&c.admin_kubeconfig, &["-n", &ns, "--json"]);
    assert!(ok, "{err}");
    let merged: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = serde_json::json!({"replicas": ["a", "b"], "top": 100, "routes": [{
    "route": "web/shop", "requests": 5, "classes": [{"class": "legacy", "requests": 5, "floor": 0, "paths": [
        {"path": "/old", "count": 4, "error": 0, "share": 0.8, "lastSeen": 2000},
        {"path": "/x", "count": 1, "error": 0, "share": 0.2, "lastSeen": 1500}
    ]}]}]});
    assert_eq!(merged, want, "{err}");
    assert!(
        err.contains(&format!("read pod {ns}/ft-a: 1 routes with traffic")),
        "{err}"
    );
    assert!(
        err.contains(&format!("read pod {ns}/ft-b: 1 routes with traffic")),
        "{err}"
    );
    assert!(
        err.contains(
            "/ft-noport: it has no container port named \"admin\": give --port with the admin port's name or number"
        ),
        "{err}"
    );
    assert!(
        !err.contains("ft-pending") && !err.contains("other"),
        "{err}"
    );

    let (ok, out, err) = paths(
        &c.admin_kubeconfig,
        &["-n", &ns, "--port", "9090", "--route", "web/shop"],
    );
    assert!(ok, "{err}");
    // ft-noport's IP is ft-a's server: read twice, its 3 requests count twice.
    assert!(
        out.starts_with("web/shop  8 requests  legacy 100.0%\n"),
        "{out}"
    );
    assert!(
        err.contains(&format!("read pod {ns}/ft-noport")),
        "a port number needs no name: {err}"
    );

    let (ok, _, err) = paths(&c.admin_kubeconfig, &["-n", "default"]);
    assert!(!ok);
    assert!(
        err.contains(
            "no running pod matches app.kubernetes.io/name=fallthrough in namespace default"
        ),
        "{err}"
    );
}

// ---- The share in `kubectl get`: status.traffic, summed over the replicas ----

/// Name of the metrics Service, as the chart's (`<fullname>-metrics`).
const METRICS_SERVICE: &str = "fallthrough-metrics";

/// The chart's metrics Service, selectorless here, and the EndpointSlice the endpoint
/// controller would write for it: admin listeners at `ready` and `not_ready` addresses.
fn metrics_service_yaml(ns: &str, port: u16, ready: &[&str], not_ready: &[&str]) -> String {
    let endpoint = |ip: &&str, ready: bool| {
        format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n")
    };
    let endpoints: String = ready
        .iter()
        .map(|ip| endpoint(ip, true))
        .chain(not_ready.iter().map(|ip| endpoint(ip, false)))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {METRICS_SERVICE}, namespace: {ns}}}\nspec:\n  ports:\n  - {{name: metrics, port: 9090, targetPort: admin}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {METRICS_SERVICE}-e2e\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {METRICS_SERVICE}, endpointslice.kubernetes.io/managed-by: e2e}}\n\
         addressType: IPv4\nports:\n- {{name: metrics, port: {port}, protocol: TCP}}\nendpoints:\n{endpoints}"
    )
}

/// A controller replica like [`controller`]'s, with its admin port on `admin` (an
/// address an EndpointSlice can name) and, when it holds the Lease, summing the traffic
/// of the peers behind [`METRICS_SERVICE`] in `ns` every second.
struct Replica {
    http: std::net::SocketAddr,
    log: std::path::PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(ns: &str, lease: &str, identity: &str, admin: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fallthrough.log");
        let mut args = cluster().controller_args(ns, lease, identity);
        args.extend(
            [
                "--shutdown-grace=1s",
                "--http-addr=127.0.0.1:0",
                "--https-addr=127.0.0.1:0",
                &format!("--admin-addr={admin}"),
                &format!("--peers-service={METRICS_SERVICE}"),
                &format!("--peers-namespace={ns}"),
                "--traffic-interval=1s",
            ]
            .map(String::from),
        );
        let child = spawn_tied(
            std::process::Command::new(env!("CARGO_BIN_EXE_fallthrough"))
                .arg("run")
                .args(&args)
                .env("RUST_LOG", "info"),
            &log,
        );
        let mut replica = Replica {
            http: "0.0.0.0:0".parse().unwrap(),
            log,
            child,
            _dir: dir,
        };
        let find = |lines: &[String], marker: &str| {
            lines
                .iter()
                .find_map(|l| l.split(marker).nth(1).map(|a| a.trim().parse().unwrap()))
        };
        let (http, admin) = support::wait_for("the replica to listen", || {
            let lines = replica.log();
            Some((
                find(&lines, "listening for HTTP on ")?,
                find(&lines, "admin server listening on ")?,
            ))
        })
        .await;
        replica.http = http;
        support::wait_for_async("replica /readyz", || async move {
            support::get(admin, "/readyz").await.0 == 200
        })
        .await;
        replica
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// GETs `path` for `host` and checks who answered.
    async fn served(&self, host: &str, path: &str, who: &str) {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::default())
            .unwrap();
        let (status, headers, _) = send(self.http, req).await;
        assert_eq!((status.as_u16(), served_by(&headers)), (200, who), "{path}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The FALLBACK column of `kubectl get fbr` for `route` (empty when it shows none).
fn fallback_column(ns: &str, route: &str) -> String {
    let out = cluster().kubectl_ok(&["get", "fbr", "-n", ns, route]);
    let mut lines = out.lines();
    let (header, row) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    // Columns are aligned: the value starts where its header does.
    let at = header
        .find("FALLBACK")
        .unwrap_or_else(|| panic!("no FALLBACK column: {out}"));
    row.get(at..)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// `status.traffic` of `route`.
fn traffic_status(ns: &str, route: &str) -> serde_json::Value {
    let out = cluster().kubectl_ok(&["get", "fallbackroute", "-n", ns, route, "-o", "json"]);
    let obj: serde_json::Value = serde_json::from_str(&out).unwrap();
    obj["status"]["traffic"].clone()
}

/// Waits until `kubectl get fbr` shows `share` for `route`; returns its status.traffic.
/// On timeout, shows what it does show and the end of the replicas' logs.
fn wait_share(ns: &str, route: &str, share: &str, replicas: &[&Replica]) -> serde_json::Value {
    let start = std::time::Instant::now();
    while fallback_column(ns, route) != share {
        if start.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| {
                    let log = r.log();
                    log[log.len().saturating_sub(30)..].join("\n")
                })
                .collect();
            panic!(
                "kubectl get fbr {route} does not show FALLBACK {share}:\n{}\nstatus.traffic: {}\nlogs:\n{}",
                cluster().kubectl_ok(&["get", "fbr", "-n", ns, route]),
                traffic_status(ns, route),
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    traffic_status(ns, route)
}

/// (requests, fallbackRequests, replicas, legacyPaths) of a status.traffic.
fn figures(traffic: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| {
        traffic[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {traffic}"))
    };
    (
        n("requests"),
        n("fallbackRequests"),
        n("replicas"),
        n("legacyPaths"),
    )
}

/// A stand-in for a replica's admin port at `addr`: answers every request with
/// `status` and `body`.
async fn fake_peer(
    addr: std::net::SocketAddr,
    status: u16,
    body: String,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// A `/traffic` answer as report.rs defines it: `(route, requests, fallback, legacy paths)`.
fn traffic_json(replica: &str, started: u64, routes: &[(&str, u64, u64, &[&str])]) -> String {
    use fallthrough::insight::distinct::Distinct;
    use fallthrough::insight::report::{RouteTraffic, TrafficReport};
    let report = TrafficReport {
        replica: replica.into(),
        started,
        routes: routes
            .iter()
            .map(|(route, requests, fallback, paths)| {
                let mut legacy = Distinct::default();
                paths.iter().for_each(|p| legacy.add(p));
                RouteTraffic {
                    route: route.to_string(),
                    requests: *requests,
                    fallback: *fallback,
                    legacy_paths: legacy.to_hex(),
                }
            })
            .collect(),
    };
    serde_json::to_string(&report).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn the_lease_holder_sums_its_peers_traffic_into_status_and_leaves_the_conditions_be() {
    let c = cluster();
    let ns = namespace("traffic-sum");
    c.apply(&route_yaml(
        &ns,
        "shop",
        &["shop.test"],
        "legacy",
        "new",
        "",
    ));
    c.apply(&route_yaml(
        &ns,
        "blog",
        &["blog.test"],
        "legacy",
        "new",
        "",
    ));
    let [a, b, broken, gone] = [1, 2, 3, 4].map(|n| c.host_address(n));
    let port = free_port();
    let at = |ip: &str| -> std::net::SocketAddr { format!("{ip}:{port}").parse().unwrap() };
    // Started a minute ago: their counters are the window's.
    let started = k8s_openapi::jiff::Timestamp::now().as_second() as u64 - 60;
    let shop = format!("{ns}/shop");
    let blog = format!("{ns}/blog");
    let _a = fake_peer(
        at(&a),
        200,
        traffic_json(
            "ft-a",
            started,
            &[
                (&shop, 30, 3, &["/about.php", "/news.php"]),
                (&blog, 0, 0, &[]),
                ("elsewhere/unknown", 9, 9, &[]),
            ],
        ),
    )
    .await;
    let _b = fake_peer(
        at(&b),
        200,
        traffic_json(
            "ft-b",
            started,
            &[(&shop, 10, 7, &["/news.php", "/contact.php"])],
        ),
    )
    .await;
    let _broken = fake_peer(at(&broken), 500, "oops".into()).await;
    c.apply(&metrics_service_yaml(
        &ns,
        port,
        &[&a, &b, &broken],
        &[&gone],
    ));
    let writer = Replica::start(&ns, "traffic-sum", "traffic-sum-1", "127.0.0.1:0").await;

    let traffic = wait_share(&ns, "shop", "25%", &[&writer]);
    assert_eq!(figures(&traffic), (40, 10, 2, 3), "{traffic}");
    let window = traffic["window"].as_str().unwrap();
    assert!(
        window.starts_with("1m"),
        "a minute since the peers started: {window}"
    );
    assert!(traffic["observedAt"].is_string(), "{traffic}");
    let blog_traffic = wait_share(&ns, "blog", "-", &[&writer]);
    assert_eq!(figures(&blog_traffic), (0, 0, 2, 0), "{blog_traffic}");

    // The conditions status.rs wrote are still there, and its next write keeps traffic.
    wait_condition(&ns, "shop", "ResolvedRefs", "False", "BackendNotFound");
    c.apply(&service_yaml(&ns, "legacy", "web", 8080, &[], &[]));
    c.apply(&service_yaml(&ns, "new", "http", 8000, &[], &[]));
    wait_condition(&ns, "shop", "ResolvedRefs", "False", "NoReadyEndpoints");
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    assert_eq!(figures(&traffic_status(&ns, "shop")), (40, 10, 2, 3));

    let log = writer.log().join("\n");
    assert!(
        log.contains(&format!("cannot read {}/traffic", at(&broken))),
        "the failing peer is logged: {log}"
    );
    assert!(
        !log.contains(&gone),
        "a not-ready endpoint is not asked: {log}"
    );
    assert_no_forbidden(writer.log(), "the restricted identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn two_replicas_traffic_shows_summed_in_the_fallback_column_of_kubectl_get() {
    let c = cluster();
    let ns = namespace("traffic");
    let _pods = deploy_shop(&ns, "shop", &["shop.test"]);
    let (ip_a, ip_b, ip_gone) = (c.host_address(11), c.host_address(12), c.host_address(13));
    let port = free_port();
    c.apply(&metrics_service_yaml(
        &ns,
        port,
        &[&ip_a, &ip_b],
        &[&ip_gone],
    ));
    let a = Replica::start(&ns, "traffic", "traffic-a", &format!("{ip_a}:{port}")).await;
    let b = Replica::start(&ns, "traffic", "traffic-b", &format!("{ip_b}:{port}")).await;

    // 30 requests the legacy app serves and 10 that fall back, split unevenly so that
    // neither replica alone shows 25%: a 20 and 2 (9%), b 10 and 8 (44%).
    const LEGACY: [&str; 3] = ["/about.php", "/contact.php", "/news.php"];
    for (replica, legacy, fallback) in [(&a, 20, 2), (&b, 10, 8)] {
        for i in 0..legacy {
            replica
                .served("shop.test", LEGACY[i % 3], "legacy-php")
                .await;
        }
        for i in 0..fallback {
            let path = format!("/products/{}", i % 3 + 3);
            replica.served("shop.test", &path, "new-python").await;
        }
    }

    let traffic = wait_share(&ns, "shop", "25%", &[&a, &b]);
    assert_eq!(figures(&traffic), (40, 10, 2, 3), "{traffic}");
    wait_condition(&ns, "shop", "Programmed", "True", "Programmed");
    let holder = c.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        SYSTEM_NAMESPACE,
        "traffic",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(
        status_writers(&ns, "shop"),
        [holder],
        "only the Lease holder writes status, traffic included"
    );
    for replica in [&a, &b] {
        let log = replica.log().join("\n");
        assert!(
            !log.contains(&ip_gone),
            "a not-ready endpoint is not asked: {log}"
        );
        assert_no_forbidden(replica.log(), "the restricted identity");
    }
}
