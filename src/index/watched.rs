//! What the index keeps of each watched object, and the pure functions that reduce an
//! object to it.
//!
//! In: FallbackRoutes, Services and EndpointSlices as the API server sends them.
//! Out: their keys, a route's spec and observed status, a Service's ports, a slice's
//! ready addresses: the index's entries, nothing else of the object.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Resource, ResourceExt};

use crate::api::{FallbackRoute, FallbackRouteSpec};

/// The label EndpointSlices carry to name their Service.
pub(super) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A namespaced object's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjKey {
    /// The key of a namespaced object.
    pub fn of(obj: &impl ResourceExt) -> ObjKey {
        ObjKey {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct RouteObj {
    pub(super) spec: FallbackRouteSpec,
    pub(super) generation: Option<i64>,
    pub(super) created: Option<Time>,
}

/// What the cluster currently says about a route: where to report, and its status.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Reference for Events.
    pub reference: ObjectReference,
    /// Conditions as last seen on the object.
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct SvcPort {
    pub(super) name: Option<String>,
    pub(super) port: i32,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Slice {
    pub(super) service: ObjKey,
    /// (port name, port number) pairs.
    pub(super) ports: Vec<(Option<String>, i32)>,
    /// Addresses of ready endpoints.
    pub(super) ready: Vec<String>,
}

pub(super) fn observed(route: &FallbackRoute) -> Arc<Observed> {
    Arc::new(Observed {
        reference: route.object_ref(&()),
        conditions: route
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    })
}

pub(super) fn route_obj(route: &FallbackRoute) -> RouteObj {
    RouteObj {
        spec: route.spec.clone(),
        generation: route.metadata.generation,
        created: route.metadata.creation_timestamp.clone(),
    }
}

pub(super) fn svc_ports(svc: &Service) -> Vec<SvcPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|ports| {
            ports
                .iter()
                .map(|p| SvcPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port: p.port,
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn slice(es: &EndpointSlice) -> Option<Slice> {
    let service = es.labels().get(SERVICE_NAME_LABEL)?.clone();
    let ports = es
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone().filter(|n| !n.is_empty()), p.port?)))
        .collect();
    let ready = es
        .endpoints
        .iter()
        // A missing `ready` means ready, per the EndpointSlice API.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    Some(Slice {
        service: ObjKey {
            namespace: es.namespace().unwrap_or_default(),
            name: service,
        },
        ports,
        ready,
    })
}

/// An object of an initial list as the index will keep it: the watch reduces each object
/// as it arrives, so a list of 10,000 routes is never held as objects and as index
/// entries at once.
pub struct Listed<T>(pub(super) ObjKey, pub(super) T);

/// What the index keeps of a listed route.
pub struct RouteEntry(pub(super) RouteObj, pub(super) Arc<Observed>);

/// What the index keeps of a listed Service.
pub struct ServiceEntry(pub(super) Vec<SvcPort>);

/// What the index keeps of a listed EndpointSlice.
pub struct SliceEntry(pub(super) Option<Slice>);
