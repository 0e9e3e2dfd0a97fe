//! Controller figures against a real kube-apiserver: how fast a route change is served,
//! and what the initial sync costs with 1,000 and 10,000 FallbackRoutes. Prints figures;
//! asserts only that things work (timings are not asserted: shared machines vary).
//! Run by `bench/controller` (release build).

#[path = "e2e/cluster.rs"]
mod cluster;
mod support;

use std::time::{Duration, Instant};

use cluster::*;
use fallthrough::api::{BackendRef, FallbackRoute, FallbackRouteSpec, ServiceRef};
use futures_util::StreamExt;
use http::Request;
use http_body_util::Full;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use support::{send, Fallthrough};

const NS: &str = "bench";

fn backend(name: &str, port: IntOrString) -> BackendRef {
    BackendRef {
        url: None,
        service: Some(ServiceRef {
            name: name.into(),
            port,
        }),
        ..Default::default()
    }
}

fn route(name: &str, host: &str) -> FallbackRoute {
    let mut r = FallbackRoute::new(
        name,
        FallbackRouteSpec {
            hosts: vec![host.into()],
            primary: backend("legacy", IntOrString::Int(80)),
            fallback: backend("new", IntOrString::String("http".into())),
            ..Default::default()
        },
    );
    r.metadata.namespace = Some(NS.into());
    r
}

async fn admin_client(c: &Cluster) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&c.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Creates routes `from..to`, 32 at a time, with progress.
async fn create_routes(api: &Api<FallbackRoute>, from: usize, to: usize) {
    let started = Instant::now();
    let created = futures_util::stream::iter(from..to)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &route(&format!("r{i}"), &format!("h{i}.bench.test")),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(32)
        .enumerate()
        .fold(0, |_, (n, ())| async move {
            if (n + 1) % 1000 == 0 {
                eprintln!("bench: created {} routes", from + n + 1);
            }
            n + 1
        })
        .await;
    eprintln!(
        "bench: {created} routes created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn start_controller(c: &Cluster, identity: &str) -> (Fallthrough, Duration) {
    let started = Instant::now();
    let args = c.controller_args(NS, identity, identity);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ft = Fallthrough::spawn(tempfile::tempdir().unwrap(), Default::default(), &args).await;
    let admin = ft.admin;
    loop {
        if support::get(admin, "/readyz").await.0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "controller never became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ft, started.elapsed())
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Seconds until every route in the namespace shows Programmed=True, as a watch sees
/// them. (Listing all routes every 200 ms instead, as this bench first did, spent much
/// of the 2 cores' time on serialising 10,000 objects per list, slowing the writes it
/// measured.)
async fn statuses_written(api: &Api<FallbackRoute>, expected: usize, since: Instant) -> f64 {
    let programmed = |r: &FallbackRoute| {
        r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        let left = Duration::from_secs(600).saturating_sub(since.elapsed());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("statuses not written: {}/{expected}", seen.len()));
        match event.expect("the watch goes on").expect("the watch works") {
            watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                let name = r.metadata.name.clone().unwrap_or_default();
                if programmed(&r) {
                    seen.insert(name);
                } else {
                    seen.remove(&name);
                }
            }
            watcher::Event::Delete(r) => {
                seen.remove(&r.metadata.name.clone().unwrap_or_default());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
        if seen.len() >= expected {
            return since.elapsed().as_secs_f64();
        }
    }
}

/// The API server's own floor for the controller's status writes: 10,000 merge patches
/// sent by this bench with the controller's concurrency (16), while the controller
/// watches. An annotation, not the status, so the controller has nothing to rewrite; the
/// API server does the same work for either (read, patch, admission, etcd, watch event).
async fn patch_floor(api: &Api<FallbackRoute>, total: usize) -> f64 {
    let started = Instant::now();
    futures_util::stream::iter(0..total)
        .map(|i| {
            let api = api.clone();
            async move {
                let body = serde_json::json!({
                    "metadata": { "annotations": { "bench.fallthrough.dev/floor": "1" } }
                });
                api.patch(
                    &format!("r{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&body),
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(16)
        .enumerate()
        .for_each(|(n, ())| async move {
            if (n + 1) % 2000 == 0 {
                eprintln!("bench: floor: {} patches", n + 1);
            }
        })
        .await;
    started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Applies 100 host changes to route `probe` with kubectl and times each until served.
async fn propagation(c: &Cluster, ft: &Fallthrough, label: &str) -> String {
    let mut served_ms = Vec::new();
    let mut kubectl_ms = Vec::new();
    for i in 0..100 {
        let slug: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let host = format!("p{i}-{slug}.bench.test");
        let yaml = format!(
            "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: probe, namespace: {NS}}}\nspec:\n  hosts: [\"{host}\"]\n  primary: {{service: {{name: legacy, port: 80}}}}\n  fallback: {{service: {{name: new, port: http}}}}\n"
        );
        let started = Instant::now();
        let kubeconfig = c.admin_kubeconfig.clone();
        let apply = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            if let Err(err) = kubectl_apply(&kubeconfig, &yaml) {
                panic!("kubectl apply of the probe route failed: {err}");
            }
            t.elapsed()
        });
        loop {
            let req = Request::get("/about.php")
                .header("host", &host)
                .body(Full::default())
                .unwrap();
            if send(ft.http, req).await.0 == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "change {i} never served"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        served_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        kubectl_ms.push(apply.await.unwrap().as_secs_f64() * 1000.0);
    }
    served_ms.sort_by(f64::total_cmp);
    kubectl_ms.sort_by(f64::total_cmp);
    format!(
        "| propagation, {label} | p50 {:.0} ms, p99 {:.0} ms (kubectl apply itself: p50 {:.0} ms) |",
        percentile(&served_ms, 0.5),
        percentile(&served_ms, 0.99),
        percentile(&kubectl_ms, 0.5)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/controller"]
async fn controller_figures() {
    let c = Cluster::start();
    c.install_crd();
    let _ = c.kubectl(&["create", "namespace", NS]);
    let (php, py) = (Pod::php(), Pod::python());
    c.apply(&service_yaml(NS, "legacy", "web", 8080, &[&php], &[]));
    c.apply(&service_yaml(NS, "new", "http", 8000, &[&py], &[]));
    let client = admin_client(&c).await;
    let api: Api<FallbackRoute> = Api::namespaced(client, NS);
    let mut rows = vec!["| figure | value |".to_string(), "|---|---|".to_string()];

    let (ft, _) = start_controller(&c, "bench-small").await;
    eprintln!("bench: propagation with 1 route");
    rows.push(propagation(&c, &ft, "1 route").await);
    drop(ft);

    let mut created = 0;
    for total in [1_000, 10_000] {
        create_routes(&api, created, total).await;
        created = total;
        let identity = format!("bench-{total}");
        let (ft, ready) = start_controller(&c, &identity).await;
        let since = Instant::now() - ready;
        let after_sync = (rss_kib(ft.pid(), "VmRSS:"), rss_kib(ft.pid(), "VmHWM:"));
        let status_s = statuses_written(&api, total, since).await;
        rows.push(format!(
            "| initial sync, {total} routes | ready in {:.2} s; RSS {} MiB (peak {} MiB); all statuses written after {status_s:.1} s |",
            ready.as_secs_f64(),
            after_sync.0 / 1024,
            after_sync.1 / 1024
        ));
        if total == 10_000 {
            eprintln!("bench: propagation with 10,000 routes");
            rows.push(propagation(&c, &ft, "10k routes").await);
            rows.push(format!(
                "| RSS after, 10,000 routes | {} MiB (peak {} MiB) |",
                rss_kib(ft.pid(), "VmRSS:") / 1024,
                rss_kib(ft.pid(), "VmHWM:") / 1024
            ));
            eprintln!("bench: the API server's floor for 10,000 patches");
            rows.push(format!(
                "| floor: 10,000 merge patches sent by the bench, 16 in flight | {:.1} s |",
                patch_floor(&api, total).await
            ));
        }
    }
    println!(
        "\nfallthrough controller figures ({} cores)\n{}",
        std::thread::available_parallelism().unwrap(),
        rows.join("\n")
    );
}
