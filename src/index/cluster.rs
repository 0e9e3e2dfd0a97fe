//! The in-memory index of what the cluster watches deliver.
//!
//! In: FallbackRoutes, Services and EndpointSlices, applied, deleted or reset per kind
//! (synchronously; callers hold no lock across an await).
//! Out: [`Built`]: a routing table with every Service backend resolved to its ready
//! endpoints, and for each route the conditions it should carry (`Accepted`,
//! `ResolvedRefs`, `Programmed`). Building is a pure function of the index.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::uri::Authority;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use super::conditions::DesiredCondition;
use super::conditions::{accepted, rejected};
use super::watched::{observed, route_obj, slice, svc_ports, RouteObj, Slice, SvcPort};
pub use super::watched::{Listed, ObjKey, Observed, RouteEntry, ServiceEntry, SliceEntry};
use super::{route_from_spec, Context, Services, Unresolved};
use crate::api::{FallbackRoute, FallbackRouteSpec};
use crate::routes::{Answerer, HostMatch, RouteTable, Timeouts};
use crate::tls::{Certificate, InvalidCertificate};

/// Settings of the controller that shape the table.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Routes with another `ingressClassName` are left to other controllers.
    pub ingress_class: String,
    /// Whether `url` backends are accepted.
    pub allow_url_backends: bool,
    /// Timeouts for routes that set none.
    pub defaults: Timeouts,
    /// TLS Secret served for unknown or missing SNI.
    pub default_certificate: Option<ObjKey>,
}

/// The status a route should have after a build.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    /// Which route.
    pub key: ObjKey,
    /// The generation the conditions describe.
    pub generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed`, in that order.
    pub conditions: Vec<DesiredCondition>,
    /// The object as last seen, to compare with and to attach Events to; shared with the
    /// index, not copied per build.
    pub observed: Option<Arc<Observed>>,
}

/// A TLS Secret as last seen: its certificate if it ever parsed, and what is wrong now.
#[derive(Clone, Debug)]
struct SecretCert {
    last_good: Option<Certificate>,
    problem: Option<InvalidCertificate>,
    /// Its `ca.crt`, which backends' `tls.caSecretName` trusts (cert-manager's layout).
    ca: Option<Vec<u8>>,
}

/// A certificate to serve for some hosts.
#[derive(Clone, Debug)]
pub struct HostCert {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// The route's hosts.
    pub hosts: Vec<HostMatch>,
    /// The certificate (the last good one if the Secret is now broken).
    pub cert: Certificate,
}

/// The result of a build.
pub struct Built {
    /// The table to serve.
    pub table: RouteTable,
    /// Certificates of accepted routes, oldest route first.
    pub certs: Vec<HostCert>,
    /// The default certificate (`--default-certificate`), if its Secret is usable.
    pub default_cert: Option<HostCert>,
    /// Desired status of every route of our class.
    pub statuses: Vec<DesiredStatus>,
    /// Routes left out (invalid, not allowed or in conflict).
    pub rejected: usize,
}

/// FallbackRoutes, Services and EndpointSlices as last seen.
pub struct ClusterIndex {
    options: IndexOptions,
    routes: BTreeMap<ObjKey, RouteObj>,
    /// Kept apart from `routes`: a status write must not look like a route change.
    observed: HashMap<ObjKey, Arc<Observed>>,
    services: HashMap<ObjKey, Vec<SvcPort>>,
    slices: HashMap<ObjKey, Slice>,
    secrets: HashMap<ObjKey, SecretCert>,
}

/// Replaces `map` with `items`, reporting whether anything changed.
fn replace_all<V: PartialEq>(map: &mut HashMap<ObjKey, V>, items: HashMap<ObjKey, V>) -> bool {
    let changed = *map != items;
    *map = items;
    changed
}

impl ClusterIndex {
    /// An empty index.
    pub fn new(options: IndexOptions) -> Self {
        ClusterIndex {
            options,
            routes: BTreeMap::new(),
            observed: HashMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            secrets: HashMap::new(),
        }
    }

    /// A route was created or changed. Returns whether the index changed.
    pub fn apply_route(&mut self, route: &FallbackRoute) -> bool {
        let (key, obj) = (ObjKey::of(route), route_obj(route));
        self.observed.insert(key.clone(), observed(route));
        if self.routes.get(&key) == Some(&obj) {
            return false;
        }
        self.routes.insert(key, obj);
        true
    }

    /// A route was deleted.
    pub fn delete_route(&mut self, route: &FallbackRoute) -> bool {
        let key = ObjKey::of(route);
        self.observed.remove(&key);
        self.routes.remove(&key).is_some()
    }

    /// A route of an initial list, reduced to what the index keeps as it arrives.
    pub fn list_route(route: &FallbackRoute) -> Listed<RouteEntry> {
        Listed(
            ObjKey::of(route),
            RouteEntry(route_obj(route), observed(route)),
        )
    }

    /// The watch re-listed routes: these are all that exist.
    pub fn reset_routes(&mut self, routes: Vec<Listed<RouteEntry>>) -> bool {
        let mut observed = HashMap::with_capacity(routes.len());
        let fresh: BTreeMap<_, _> = routes
            .into_iter()
            .map(|Listed(key, RouteEntry(obj, seen))| {
                observed.insert(key.clone(), seen);
                (key, obj)
            })
            .collect();
        self.observed = observed;
        let changed = fresh != self.routes;
        self.routes = fresh;
        changed
    }

    /// A Service was created or changed.
    pub fn apply_service(&mut self, svc: &Service) -> bool {
        let (key, ports) = (ObjKey::of(svc), svc_ports(svc));
        if self.services.get(&key) == Some(&ports) {
            return false;
        }
        self.services.insert(key, ports);
        true
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) -> bool {
        self.services.remove(&ObjKey::of(svc)).is_some()
    }

    /// A Service of an initial list, reduced to its ports.
    pub fn list_service(svc: &Service) -> Listed<ServiceEntry> {
        Listed(ObjKey::of(svc), ServiceEntry(svc_ports(svc)))
    }

    /// The watch re-listed Services.
    pub fn reset_services(&mut self, svcs: Vec<Listed<ServiceEntry>>) -> bool {
        let fresh = svcs
            .into_iter()
            .map(|Listed(key, ServiceEntry(ports))| (key, ports))
            .collect();
        replace_all(&mut self.services, fresh)
    }

    /// An EndpointSlice was created or changed. Slices without a Service label are ignored.
    pub fn apply_slice(&mut self, es: &EndpointSlice) -> bool {
        let key = ObjKey::of(es);
        match slice(es) {
            Some(s) if self.slices.get(&key) == Some(&s) => false,
            Some(s) => {
                self.slices.insert(key, s);
                true
            }
            None => self.slices.remove(&key).is_some(),
        }
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, es: &EndpointSlice) -> bool {
        self.slices.remove(&ObjKey::of(es)).is_some()
    }

    /// An EndpointSlice of an initial list, reduced to its ports and ready addresses
    /// (nothing, without a Service label).
    pub fn list_slice(es: &EndpointSlice) -> Listed<SliceEntry> {
        Listed(ObjKey::of(es), SliceEntry(slice(es)))
    }

    /// The watch re-listed EndpointSlices.
    pub fn reset_slices(&mut self, slices: Vec<Listed<SliceEntry>>) -> bool {
        let fresh = slices
            .into_iter()
            .filter_map(|Listed(key, SliceEntry(s))| Some((key, s?)))
            .collect();
        replace_all(&mut self.slices, fresh)
    }

    /// A TLS Secret was created or changed. A broken update keeps the last good
    /// certificate; `now` is unix seconds, for the expiry check.
    pub fn apply_secret(&mut self, secret: &Secret, now: i64) -> bool {
        let parsed = parse_secret(secret, now);
        let entry = self
            .secrets
            .entry(ObjKey::of(secret))
            .or_insert(SecretCert {
                last_good: None,
                problem: None,
                ca: None,
            });
        entry.ca = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|b| b.0.clone());
        match parsed {
            Ok(cert) => {
                entry.last_good = Some(cert);
                entry.problem = None;
            }
            Err(problem) => entry.problem = Some(problem),
        }
        true
    }

    /// A TLS Secret was deleted.
    pub fn delete_secret(&mut self, secret: &Secret) -> bool {
        self.secrets.remove(&ObjKey::of(secret)).is_some()
    }

    /// The watch re-listed TLS Secrets.
    pub fn reset_secrets(&mut self, secrets: &[Secret], now: i64) -> bool {
        let keep: std::collections::HashSet<ObjKey> = secrets.iter().map(ObjKey::of).collect();
        self.secrets.retain(|k, _| keep.contains(k));
        for s in secrets {
            self.apply_secret(s, now);
        }
        true
    }

    /// The certificate to serve for a route's `tls.secretName`, and what is wrong with it.
    fn secret_cert(
        &self,
        namespace: &str,
        name: &str,
    ) -> (Option<&Certificate>, Option<Unresolved>) {
        let key = ObjKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let problem = |why: String| Unresolved::Certificate {
            secret: key.to_string(),
            why,
        };
        match self.secrets.get(&key) {
            None => (
                None,
                Some(problem(
                    "does not exist (or is not of type kubernetes.io/tls)".into(),
                )),
            ),
            Some(s) => {
                let issue = s.problem.as_ref().map(|p| {
                    let kept = if s.last_good.is_some() {
                        "; the last good certificate keeps serving"
                    } else {
                        ""
                    };
                    problem(format!("{p}{kept}"))
                });
                (s.last_good.as_ref(), issue)
            }
        }
    }

    fn is_ours(&self, spec: &FallbackRouteSpec) -> bool {
        spec.ingress_class_name
            .as_deref()
            .is_none_or(|c| c == self.options.ingress_class)
    }

    /// Builds the table and every route's desired status. Older routes (by creation
    /// time, then namespace/name) win conflicts.
    pub fn build(&self) -> Built {
        let ctx = Context {
            defaults: self.options.defaults,
            allow_url_backends: self.options.allow_url_backends,
            services: Some(self),
            trust: Some(self),
        };
        let mut ordered: Vec<(&ObjKey, &RouteObj)> = self
            .routes
            .iter()
            .filter(|(_, r)| self.is_ours(&r.spec))
            .collect();
        ordered.sort_by(|a, b| (&a.1.created, a.0).cmp(&(&b.1.created, b.0)));

        let mut statuses = Vec::with_capacity(ordered.len());
        let mut candidates = Vec::new();
        let mut certs: Vec<(ObjKey, HostCert)> = Vec::new();
        let mut unresolved: HashMap<ObjKey, Vec<(Answerer, Unresolved)>> = HashMap::new();
        for (key, obj) in &ordered {
            match route_from_spec(&key.namespace, &key.name, &obj.spec, &ctx) {
                Ok(mut valid) => {
                    let secret = obj.spec.tls.as_ref().and_then(|t| t.secret_name.as_deref());
                    if let Some(secret) = secret {
                        let (cert, problem) = self.secret_cert(&key.namespace, secret);
                        if let Some(cert) = cert {
                            certs.push((
                                (*key).clone(),
                                HostCert {
                                    secret: format!("{}/{secret}", key.namespace),
                                    hosts: valid.route.hosts.clone(),
                                    cert: cert.clone(),
                                },
                            ));
                        }
                        // The certificate's problem is the route's, on whichever backend.
                        valid
                            .unresolved
                            .extend(problem.map(|p| (Answerer::Primary, p)));
                    }
                    unresolved.insert((*key).clone(), valid.unresolved);
                    candidates.push(valid.route);
                }
                Err(invalid) => statuses.push(DesiredStatus {
                    key: (*key).clone(),
                    generation: obj.generation,
                    conditions: rejected(invalid.reason(), invalid.to_string()),
                    observed: self.observed.get(*key).cloned(),
                }),
            }
        }
        let (table, conflicts) = RouteTable::build(candidates);
        let mut rejected_count = statuses.len() + conflicts.len();
        let conflicted: HashMap<&str, String> = conflicts
            .iter()
            .map(|c| (c.rejected.as_str(), c.to_string()))
            .collect();
        for (key, obj) in &ordered {
            let Some(problems) = unresolved.get(*key) else {
                continue;
            };
            let id = key.to_string();
            let conditions = match conflicted.get(id.as_str()) {
                Some(message) => rejected("Conflicted", message.clone()),
                None => accepted(problems),
            };
            statuses.push(DesiredStatus {
                key: (*key).clone(),
                generation: obj.generation,
                conditions,
                observed: self.observed.get(*key).cloned(),
            });
        }
        statuses.sort_by(|a, b| a.key.cmp(&b.key));
        rejected_count = rejected_count.min(ordered.len());
        let certs = certs
            .into_iter()
            .filter(|(key, _)| !conflicted.contains_key(key.to_string().as_str()))
            .map(|(_, c)| c)
            .collect();
        let default_cert = self.options.default_certificate.as_ref().and_then(|key| {
            let cert = self.secrets.get(key)?.last_good.clone()?;
            Some(HostCert {
                secret: key.to_string(),
                hosts: Vec::new(),
                cert,
            })
        });
        Built {
            table,
            certs,
            default_cert,
            statuses,
            rejected: rejected_count,
        }
    }
}

/// The certificate in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
fn parse_secret(secret: &Secret, now: i64) -> Result<Certificate, InvalidCertificate> {
    let data = secret.data.as_ref();
    let field = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
    let cert = field("tls.crt").ok_or(InvalidCertificate::NoCertificate)?;
    let key = field("tls.key").ok_or(InvalidCertificate::NoKey)?;
    crate::tls::parse(cert, key, now)
}

impl super::Trust for ClusterIndex {
    fn ca_pem(
        &self,
        namespace: &str,
        tls: &crate::api::BackendTlsSpec,
    ) -> Result<Option<Vec<u8>>, String> {
        if tls.ca_file.is_some() {
            return Err("caFile is for route files: in a cluster use caSecretName".into());
        }
        let Some(name) = &tls.ca_secret_name else {
            return Ok(None);
        };
        let key = ObjKey {
            namespace: namespace.to_string(),
            name: name.clone(),
        };
        match self.secrets.get(&key) {
            None => Err(format!(
                "Secret {key} does not exist or is not of type kubernetes.io/tls: create it with the CA in its ca.crt"
            )),
            Some(SecretCert { ca: None, .. }) => Err(format!(
                "Secret {key} has no ca.crt: put the CAs to trust in its ca.crt"
            )),
            Some(SecretCert { ca: Some(ca), .. }) => Ok(Some(ca.clone())),
        }
    }
}

impl Services for ClusterIndex {
    fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: &IntOrString,
    ) -> Result<Vec<Authority>, Unresolved> {
        let key = ObjKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let ports = self
            .services
            .get(&key)
            .ok_or_else(|| Unresolved::ServiceNotFound(key.to_string()))?;
        let svc_port = ports
            .iter()
            .find(|p| match port {
                IntOrString::Int(n) => p.port == *n,
                IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
            })
            .ok_or_else(|| Unresolved::PortNotFound {
                service: key.to_string(),
                port: match port {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => s.clone(),
                },
            })?;
        // Endpoint ports are matched to Service ports by name, as kube-proxy does;
        // this is how targetPort (number or name) reaches the pods.
        let mut endpoints: Vec<Authority> = self
            .slices
            .values()
            .filter(|s| s.service == key)
            .filter_map(|s| {
                let (_, port) = s.ports.iter().find(|(n, _)| *n == svc_port.name)?;
                Some(s.ready.iter().filter_map(move |addr| {
                    let host = if addr.contains(':') {
                        format!("[{addr}]:{port}")
                    } else {
                        format!("{addr}:{port}")
                    };
                    host.parse().ok()
                }))
            })
            .flatten()
            .collect();
        // Stable order, so an unchanged cluster builds an identical table.
        endpoints.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        endpoints.dedup();
        if endpoints.is_empty() {
            return Err(Unresolved::NoReadyEndpoints(key.to_string()));
        }
        Ok(endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::super::watched::SERVICE_NAME_LABEL;
    use super::*;
    use crate::api::{BackendRef, ServiceRef};
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    fn svc_ref(name: &str, port: IntOrString) -> BackendRef {
        BackendRef {
            url: None,
            service: Some(ServiceRef {
                name: name.into(),
                port,
            }),
            ..Default::default()
        }
    }

    fn mk_route(ns: &str, name: &str, created_s: i64, spec: FallbackRouteSpec) -> FallbackRoute {
        let mut r = FallbackRoute::new(name, spec);
        r.metadata.namespace = Some(ns.into());
        r.metadata.generation = Some(3);
        r.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created_s).unwrap()));
        r
    }

    fn shop_spec(host: &str) -> FallbackRouteSpec {
        FallbackRouteSpec {
            hosts: vec![host.into()],
            primary: svc_ref("php", IntOrString::Int(80)),
            fallback: svc_ref("py", IntOrString::String("http".into())),
            ..Default::default()
        }
    }

    fn mk_service(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: n.map(String::from),
                            port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn mk_slice(
        ns: &str,
        svc: &str,
        port: (Option<&str>, i32),
        ready: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{svc}-abc")),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: ready
                .iter()
                .map(|(addr, ready)| Endpoint {
                    addresses: vec![addr.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: port.0.map(String::from),
                port: Some(port.1),
                ..Default::default()
            }]),
        }
    }

    fn index() -> ClusterIndex {
        ClusterIndex::new(IndexOptions {
            ingress_class: "fallthrough".into(),
            allow_url_backends: false,
            defaults: Timeouts::default(),
            default_certificate: None,
        })
    }

    fn condition<'a>(built: &'a Built, route: &str, type_: &str) -> &'a DesiredCondition {
        built
            .statuses
            .iter()
            .find(|s| s.key.name == route)
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .unwrap()
    }

    #[test]
    fn service_ports_resolve_to_ready_endpoints_by_port_name() {
        let mut idx = index();
        idx.apply_service(&mk_service("web", "php", &[(None, 80)]));
        idx.apply_service(&mk_service("web", "py", &[(Some("http"), 80)]));
        idx.apply_slice(&mk_slice(
            "web",
            "php",
            (None, 9000),
            &[("10.0.0.1", None), ("10.0.0.2", Some(false))],
        ));
        idx.apply_slice(&mk_slice(
            "web",
            "py",
            (Some("http"), 8000),
            &[("10.0.1.1", Some(true))],
        ));
        idx.apply_route(&mk_route("web", "shop", 1, shop_spec("shop.test")));
        let built = idx.build();
        let route = &built.table.routes()[0];
        assert_eq!(
            route.primary.endpoints[0].authority(),
            Some(&"10.0.0.1:9000".parse::<Authority>().unwrap())
        );
        assert_eq!(
            route.fallback.endpoints[0].authority(),
            Some(&"10.0.1.1:8000".parse::<Authority>().unwrap())
        );
        assert_eq!(route.primary.name, "web/php:80");
        assert_eq!(condition(&built, "shop", "ResolvedRefs").status, "True");
        assert_eq!(condition(&built, "shop", "Programmed").status, "True");
        assert_eq!(built.statuses[0].generation, Some(3));
    }

    #[test]
    fn missing_services_ports_and_endpoints_are_reported_but_the_route_is_served() {
        let mut idx = index();
        idx.apply_route(&mk_route("web", "shop", 1, shop_spec("shop.test")));
        let built = idx.build();
        assert_eq!(
            built.table.routes().len(),
            1,
            "served, with 503s for the missing backends"
        );
        let resolved = condition(&built, "shop", "ResolvedRefs");
        assert_eq!(
            (resolved.status, resolved.reason),
            ("False", "BackendNotFound")
        );
        assert!(
            resolved.message.contains("web/php") && resolved.message.contains("web/py"),
            "{}",
            resolved.message
        );

        idx.apply_service(&mk_service("web", "php", &[(None, 8080)]));
        idx.apply_service(&mk_service("web", "py", &[(Some("http"), 80)]));
        let built = idx.build();
        assert_eq!(
            condition(&built, "shop", "ResolvedRefs").reason,
            "PortNotFound"
        );

        idx.apply_service(&mk_service("web", "php", &[(None, 80)]));
        let built = idx.build();
        assert_eq!(
            condition(&built, "shop", "ResolvedRefs").reason,
            "NoReadyEndpoints"
        );
        assert!(built.table.routes()[0].primary.endpoints.is_empty());
    }

    #[test]
    fn the_older_route_wins_a_conflict_and_the_other_names_it() {
        let mut idx = index();
        idx.apply_route(&mk_route("b", "newer", 200, shop_spec("shop.test")));
        idx.apply_route(&mk_route("a", "older", 100, shop_spec("shop.test")));
        let built = idx.build();
        assert_eq!(built.table.routes()[0].name, "older");
        let accepted = condition(&built, "newer", "Accepted");
        assert_eq!((accepted.status, accepted.reason), ("False", "Conflicted"));
        assert!(accepted.message.contains("a/older"), "{}", accepted.message);
        assert_eq!(condition(&built, "newer", "Programmed").status, "False");
        assert_eq!(built.rejected, 1);
    }

    #[test]
    fn a_backend_trusts_the_ca_crt_of_the_secret_it_names() {
        let mut idx = index();
        let mut spec = shop_spec("tls.test");
        spec.primary.tls = Some(crate::api::BackendTlsSpec {
            server_name: Some("php.internal".into()),
            ca_secret_name: Some("internal-ca".into()),
            ..Default::default()
        });
        idx.apply_route(&mk_route("web", "shop", 1, spec));
        let accepted = condition(&idx.build(), "shop", "Accepted").clone();
        assert_eq!(accepted.status, "False", "no such Secret yet");
        assert!(
            accepted.message.contains("web/internal-ca"),
            "{}",
            accepted.message
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca.internal".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut data = std::collections::BTreeMap::new();
        data.insert(
            "ca.crt".to_string(),
            k8s_openapi::ByteString(ca.pem().into_bytes()),
        );
        let secret = Secret {
            metadata: ObjectMeta {
                namespace: Some("web".into()),
                name: Some("internal-ca".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        };
        idx.apply_secret(&secret, 0);
        let built = idx.build();
        assert_eq!(condition(&built, "shop", "Accepted").status, "True");
        let crate::routes::Protocol::Https(tls) = &built.table.routes()[0].primary.protocol else {
            panic!("the primary speaks HTTPS")
        };
        assert_eq!(tls.server_name, "php.internal");
        assert_eq!(tls.ca, "secret:web/internal-ca");
    }

    #[test]
    fn url_backends_need_permission_and_invalid_routes_are_rejected_alone() {
        let mut idx = index();
        let mut with_url = shop_spec("a.test");
        with_url.primary = BackendRef {
            url: Some("http://10.1.2.3:80".into()),
            service: None,
            ..Default::default()
        };
        idx.apply_route(&mk_route("web", "url", 1, with_url));
        let mut invalid = shop_spec("b.test");
        invalid.fallback_on = Some(vec![200]);
        idx.apply_route(&mk_route("web", "invalid", 2, invalid));
        idx.apply_route(&mk_route("web", "good", 3, shop_spec("c.test")));
        let built = idx.build();
        assert_eq!(
            condition(&built, "url", "Accepted").reason,
            "UrlBackendNotAllowed"
        );
        assert_eq!(condition(&built, "invalid", "Accepted").reason, "Invalid");
        assert!(condition(&built, "invalid", "Accepted")
            .message
            .contains("200"));
        let served: Vec<_> = built
            .table
            .routes()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(served, ["good"]);
    }

    #[test]
    fn routes_of_other_classes_are_ignored_entirely() {
        let mut idx = index();
        let mut other = shop_spec("a.test");
        other.ingress_class_name = Some("nginx".into());
        idx.apply_route(&mk_route("web", "theirs", 1, other));
        let built = idx.build();
        assert!(built.table.routes().is_empty() && built.statuses.is_empty());
    }

    #[test]
    fn applies_report_changes_and_resets_drop_stale_objects() {
        let mut idx = index();
        let route = mk_route("web", "shop", 1, shop_spec("shop.test"));
        assert!(idx.apply_route(&route));
        assert!(
            !idx.apply_route(&route),
            "the same object again changes nothing"
        );
        let svc = mk_service("web", "php", &[(None, 80)]);
        assert!(idx.apply_service(&svc));
        assert!(!idx.apply_service(&svc));
        assert!(idx.reset_routes(Vec::new()));
        assert!(idx.reset_services(Vec::new()));
        assert!(idx.build().table.routes().is_empty());
    }
}
