//! What the controller's state costs per route, counted by the allocator: the index of
//! 10,000 FallbackRoutes, the table and statuses a build makes of them, and the proxy's
//! per-route state once they are published. Prints the figures (`--nocapture`) and
//! asserts the budget that keeps a 10,000-route controller within its RSS goal.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use fallthrough::api::{BackendRef, FallbackRoute, FallbackRouteSpec, ServiceRef};
use fallthrough::index::cluster::{ClusterIndex, IndexOptions};
use fallthrough::insight::recorder::Insight;
use fallthrough::metrics::Metrics;
use fallthrough::proxy::{Limits, Proxy};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Bytes allocated and not yet freed, by every thread of this test binary.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const ROUTES: usize = 10_000;
const NS: &str = "bench";

fn backend(name: &str, port: IntOrString) -> BackendRef {
    BackendRef {
        service: Some(ServiceRef {
            name: name.into(),
            port,
        }),
        ..Default::default()
    }
}

/// A route as the API server lists it: with the managedFields a `kubectl create` leaves.
fn route(i: usize) -> FallbackRoute {
    let mut r = FallbackRoute::new(
        &format!("r{i}"),
        FallbackRouteSpec {
            hosts: vec![format!("h{i}.bench.test")],
            primary: backend("legacy", IntOrString::Int(80)),
            fallback: backend("new", IntOrString::String("http".into())),
            ..Default::default()
        },
    );
    let fields = serde_json::json!({"f:spec": {".": {}, "f:fallback": {".": {}, "f:service": {".": {}, "f:name": {}, "f:port": {}}}, "f:hosts": {}, "f:primary": {".": {}, "f:service": {".": {}, "f:name": {}, "f:port": {}}}}});
    r.metadata = ObjectMeta {
        name: Some(format!("r{i}")),
        namespace: Some(NS.into()),
        uid: Some(format!("6f1c2d3e-0000-4000-8000-{i:012}")),
        resource_version: Some(format!("{}", 1000 + i)),
        generation: Some(1),
        creation_timestamp: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
        )),
        managed_fields: Some(vec![ManagedFieldsEntry {
            api_version: Some("fallthrough.dev/v1alpha1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                fields,
            )),
            manager: Some("controller_bench".into()),
            operation: Some("Update".into()),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            )),
            ..Default::default()
        }]),
        ..Default::default()
    };
    r
}

fn service(name: &str, port: (Option<&str>, i32)) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: port.0.map(String::from),
                port: port.1,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(svc: &str, port: (Option<&str>, i32), addr: &str) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(NS.into()),
            name: Some(format!("{svc}-abc")),
            labels: Some([("kubernetes.io/service-name".to_string(), svc.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![addr.into()],
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: port.0.map(String::from),
            port: Some(port.1),
            ..Default::default()
        }]),
    }
}

fn per_route(bytes: isize) -> String {
    format!(
        "{:.1} MiB ({} B per route)",
        bytes as f64 / (1 << 20) as f64,
        bytes / ROUTES as isize
    )
}

#[test]
fn the_controller_state_of_10k_routes_fits_its_budget() {
    let workers = 2;
    let at_start = live();
    let full: Vec<FallbackRoute> = (0..ROUTES).map(route).collect();
    let list_full = live() - at_start;
    // As the watch does: each object slimmed and reduced to the index's entry as it
    // arrives; only the entries are held until the list is done.
    let before = live();
    let entries: Vec<_> = full
        .iter()
        .map(|r| {
            let mut r = r.clone();
            fallthrough::provider::kube::slim(&mut r);
            ClusterIndex::list_route(&r)
        })
        .collect();
    let list = live() - before;
    drop(full);

    let mut index = ClusterIndex::new(IndexOptions {
        ingress_class: "fallthrough".into(),
        allow_url_backends: false,
        defaults: Default::default(),
        default_certificate: None,
    });
    index.reset_services(
        [
            service("legacy", (None, 80)),
            service("new", (Some("http"), 80)),
        ]
        .iter()
        .map(ClusterIndex::list_service)
        .collect(),
    );
    index.reset_slices(
        [
            slice("legacy", (None, 8080), "10.0.0.1"),
            slice("new", (Some("http"), 8000), "10.0.0.2"),
        ]
        .iter()
        .map(ClusterIndex::list_slice)
        .collect(),
    );
    let before = live();
    index.reset_routes(entries);
    let indexed = list + live() - before;

    let before = live();
    let built = index.build();
    let built_bytes = live() - before;
    let table_bytes = {
        let before = live();
        let copy = built.table.routes().to_vec();
        let bytes = live() - before;
        drop(copy);
        bytes
    };

    let metrics = Arc::new(Metrics::new(workers));
    let insight = Insight::new(10, 64 << 20, "bench".into());
    let proxy = Proxy::new(
        metrics.clone(),
        insight,
        Limits::default(),
        workers,
        fallthrough::proxy::Front::default(),
    );
    let (table, statuses) = (built.table, built.statuses);
    let before = live();
    proxy.publish(table);
    let published = live() - before;
    let before = live();
    let scrape = metrics.encode();
    let scrape_bytes = scrape.len();
    drop(scrape);
    let after_scrape = live() - before;

    println!("listed FallbackRoutes as sent: {}", per_route(list_full));
    println!(
        "listed FallbackRoutes as held until the initial list is done (index entries): {}",
        per_route(list)
    );
    println!("index: {}", per_route(indexed));
    println!(
        "build (table + {} statuses): {}",
        statuses.len(),
        per_route(built_bytes)
    );
    println!("  of which the table: {}", per_route(table_bytes));
    println!(
        "publish (per-route proxy state, metric series): {}",
        per_route(published)
    );
    println!(
        "a scrape: {scrape_bytes} bytes of text; kept after it: {}",
        per_route(after_scrape)
    );
    let total = indexed + built_bytes + published;
    println!("total kept: {}", per_route(total));
    // 4.1 KB per route when written (it was 22 KB, 18.9 KB of it metric series), with
    // room for what a route may reasonably grow by.
    assert!(
        total < 48 << 20,
        "the controller's state of 10,000 routes grew to {}",
        per_route(total)
    );
    assert!(
        list < list_full / 2,
        "index entries, not objects, are held during the initial list"
    );
}
