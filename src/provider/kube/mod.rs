//! Routes from the Kubernetes API: the controller half of `fallthrough run`.
//!
//! In: watches on FallbackRoutes, Services and EndpointSlices (all namespaces, or one).
//! Out: route tables published to the proxy whenever what they resolve to changes, the
//! desired status of every route for the status writer, and readiness once every watch
//! has delivered its initial list. If the API server goes away the proxy keeps serving
//! the last table while the watches reconnect with backoff. With `--peers-service`, the
//! Lease holder also sums every replica's `/traffic` into `status.traffic` (`traffic`).

pub mod leader;
pub mod peers;
pub mod status;
pub mod traffic;
pub mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use crate::admin::Readiness;
use crate::api::FallbackRoute;
use crate::index::cluster::{
    ClusterIndex, IndexOptions, Listed, RouteEntry, ServiceEntry, SliceEntry,
};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Controller settings beyond the index's.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// How routes are validated and built.
    pub index: IndexOptions,
    /// Watch one namespace instead of all.
    pub watch_namespace: Option<String>,
    /// Namespace of the status-writer Lease.
    pub lease_namespace: String,
    /// Name of the status-writer Lease.
    pub lease_name: String,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
    /// Where the replicas' `/traffic` reports are, for `status.traffic`; `None`: it is
    /// not written.
    pub traffic: Option<traffic::TrafficOptions>,
}

/// State shared by the watch tasks and the builder.
struct Shared {
    index: Mutex<ClusterIndex>,
    changed: Notify,
    /// Per watched kind: has the initial list arrived?
    synced: [AtomicBool; 4],
}

impl Shared {
    fn all_synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, ClusterIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A kind the index keeps.
trait Indexed: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    const SLOT: usize;
    const KIND: &'static str;
    /// Field selector narrowing the watch.
    const FIELDS: Option<&'static str> = None;
    /// What an initial list holds of each object until the list is complete.
    type Listed: Send;
    fn apply(idx: &mut ClusterIndex, obj: &Self) -> bool;
    fn delete(idx: &mut ClusterIndex, obj: &Self) -> bool;
    fn list(obj: Self) -> Self::Listed;
    fn reset(idx: &mut ClusterIndex, all: Vec<Self::Listed>) -> bool;
}

impl Indexed for FallbackRoute {
    const SLOT: usize = 0;
    const KIND: &'static str = "FallbackRoute";
    type Listed = Listed<RouteEntry>;
    fn apply(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.apply_route(obj)
    }
    fn delete(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.delete_route(obj)
    }
    fn list(obj: Self) -> Self::Listed {
        ClusterIndex::list_route(&obj)
    }
    fn reset(idx: &mut ClusterIndex, all: Vec<Self::Listed>) -> bool {
        idx.reset_routes(all)
    }
}

impl Indexed for Service {
    const SLOT: usize = 1;
    const KIND: &'static str = "Service";
    type Listed = Listed<ServiceEntry>;
    fn apply(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.apply_service(obj)
    }
    fn delete(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.delete_service(obj)
    }
    fn list(obj: Self) -> Self::Listed {
        ClusterIndex::list_service(&obj)
    }
    fn reset(idx: &mut ClusterIndex, all: Vec<Self::Listed>) -> bool {
        idx.reset_services(all)
    }
}

/// Only TLS Secrets are watched and kept: the field selector keeps every other Secret
/// (and its data) out of this process.
impl Indexed for Secret {
    const SLOT: usize = 3;
    const KIND: &'static str = "Secret";
    const FIELDS: Option<&'static str> = Some("type=kubernetes.io/tls");
    type Listed = Secret;
    fn apply(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.apply_secret(obj, crate::tls::unix_now())
    }
    fn delete(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.delete_secret(obj)
    }
    // Secrets are few, and parsed with the time of the reset: kept whole until then.
    fn list(obj: Self) -> Self {
        obj
    }
    fn reset(idx: &mut ClusterIndex, all: Vec<Self>) -> bool {
        idx.reset_secrets(&all, crate::tls::unix_now())
    }
}

impl Indexed for EndpointSlice {
    const SLOT: usize = 2;
    const KIND: &'static str = "EndpointSlice";
    type Listed = Listed<SliceEntry>;
    fn apply(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.apply_slice(obj)
    }
    fn delete(idx: &mut ClusterIndex, obj: &Self) -> bool {
        idx.delete_slice(obj)
    }
    fn list(obj: Self) -> Self::Listed {
        ClusterIndex::list_slice(&obj)
    }
    fn reset(idx: &mut ClusterIndex, all: Vec<Self::Listed>) -> bool {
        idx.reset_slices(all)
    }
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The API server's configuration: from `kubeconfig` when given, else in-cluster, then
/// `KUBECONFIG` or `~/.kube/config`. The error is the reason, for the caller to phrase.
pub async fn config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, String> {
    match kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
}

/// Runs the controller until the process stops.
pub async fn run(
    client: Client,
    options: ControllerOptions,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) {
    let shared = Arc::new(Shared {
        index: Mutex::new(ClusterIndex::new(options.index.clone())),
        changed: Notify::new(),
        synced: Default::default(),
    });
    let ns = &options.watch_namespace;
    tokio::spawn(watch_kind(
        api::<FallbackRoute>(&client, ns),
        shared.clone(),
    ));
    tokio::spawn(watch_kind(api::<Service>(&client, ns), shared.clone()));
    tokio::spawn(watch_kind(
        api::<EndpointSlice>(&client, ns),
        shared.clone(),
    ));
    tokio::spawn(watch_kind(api::<Secret>(&client, ns), shared.clone()));

    let (leader_tx, leader_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(status::Statuses::default());
    tokio::spawn(leader::elect(client.clone(), options.clone(), leader_tx));
    if let Some(traffic) = options.traffic.clone() {
        tokio::spawn(traffic::run(
            client.clone(),
            traffic,
            options.identity.clone(),
            leader_rx.clone(),
            status_rx.clone(),
        ));
    }
    tokio::spawn(status::write(
        client,
        options.identity.clone(),
        status_rx,
        leader_rx,
    ));
    build_loop(shared, proxy, metrics, readiness, status_tx).await;
}

/// Drops what the index never reads and the API server sends with every object: the
/// field managers' records and `kubectl apply`'s copy of the whole object. Done as each
/// object arrives, so an initial list of 10,000 routes is held without them.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

async fn watch_kind<K: Indexed>(api: Api<K>, shared: Arc<Shared>) {
    let mut events = watcher(api).default_backoff().modify(slim::<K>).boxed();
    let mut initial = Vec::new();
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                initial.clear();
                false
            }
            Ok(Event::InitApply(obj)) => {
                initial.push(K::list(obj));
                false
            }
            Ok(Event::InitDone) => {
                let changed = K::reset(&mut shared.index(), std::mem::take(&mut initial));
                let first = !shared.synced[K::SLOT].swap(true, Ordering::AcqRel);
                if first {
                    tracing::info!(kind = K::KIND, "initial list received");
                }
                changed || first
            }
            Ok(Event::Apply(obj)) => K::apply(&mut shared.index(), &obj),
            Ok(Event::Delete(obj)) => K::delete(&mut shared.index(), &obj),
            Err(err) => {
                tracing::warn!(kind = K::KIND, error = %err, "watch failed; retrying with backoff, the last routes keep serving");
                false
            }
        };
        if changed {
            shared.changed.notify_one();
        }
    }
}

fn watcher<K: Indexed>(api: Api<K>) -> impl futures_util::Stream<Item = watcher::Result<Event<K>>> {
    let mut config = watcher::Config::default();
    if let Some(fields) = K::FIELDS {
        config = config.fields(fields);
    }
    watcher::watcher(api, config)
}

/// Swaps in the certificates of a build; open connections keep theirs.
fn publish_certs(proxy: &Proxy, metrics: &Metrics, built: &crate::index::cluster::Built) {
    let mut store = crate::tls::CertStore::default();
    metrics.certificates_served(built.certs.iter().chain(&built.default_cert).map(|hc| {
        let (ns, name) = hc.secret.split_once('/').unwrap_or(("", &hc.secret));
        (ns, name, hc.cert.not_after)
    }));
    for hc in &built.certs {
        store.add(&hc.hosts, &hc.cert);
    }
    if let Some(default) = &built.default_cert {
        store.set_default(&default.cert);
    }
    proxy.publish_certs(store);
}

async fn build_loop(
    shared: Arc<Shared>,
    proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    status_tx: watch::Sender<status::Statuses>,
) {
    let mut first = true;
    loop {
        shared.changed.notified().await;
        if !shared.all_synced() {
            continue;
        }
        let building = shared.clone();
        // Building is synchronous and can take milliseconds with many routes: keep it
        // off the proxy's worker threads.
        let Ok(mut built) = tokio::task::spawn_blocking(move || building.index().build()).await
        else {
            continue;
        };
        publish_certs(&proxy, &metrics, &built);
        let routes = built.table.routes();
        // Compared with what the proxy serves, not with a copy of it kept here.
        if first || !proxy.serves(routes) {
            tracing::info!(
                routes = routes.len(),
                rejected = built.rejected,
                "routing table updated"
            );
            metrics.table_published(routes.len(), built.rejected);
            metrics.reloaded(true);
            proxy.publish(std::mem::take(&mut built.table));
            first = false;
        }
        readiness.set_loaded();
        status_tx.send_replace(Arc::new(built.statuses));
    }
}
