//! A route's `primary` or `fallback`, validated into a [`Backend`]: where it is (a URL,
//! a Unix socket, or a Service's ready endpoints) and how it is spoken to (HTTP,
//! HTTPS with its trust, or FastCGI with its script mapping).
//!
//! In: a [`BackendRef`] and the validation [`Context`].
//! Out: the backend, with why its endpoints did not resolve if they did not; or the
//! [`InvalidRoute`] that says what to change.

use std::path::PathBuf;
use std::sync::Arc;

use http::uri::Authority;
use http::Uri;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Context, InvalidRoute, Services, Unresolved};
use crate::api::{BackendRef, BackendTlsSpec, FastCgiSpec, ServiceRef};
use crate::routes::{Addr, Backend, FastCgi, Protocol, UpstreamTls};

/// Validates one backend reference.
pub(super) fn backend(
    namespace: &str,
    which: &'static str,
    spec: &BackendRef,
    ctx: &Context<'_>,
) -> Result<(Backend, Option<Unresolved>), InvalidRoute> {
    match (&spec.url, &spec.service) {
        (Some(url), None) => {
            let backend = url_backend(namespace, which, url, spec, ctx)?;
            if !ctx.allow_url_backends {
                return Err(InvalidRoute::UrlNotAllowed(which));
            }
            Ok((backend, None))
        }
        (None, Some(svc)) => match ctx.services {
            Some(services) => service_backend(namespace, which, svc, spec, services, ctx),
            None => Err(InvalidRoute::ServiceOutsideCluster(which)),
        },
        _ => Err(InvalidRoute::BackendKind(which)),
    }
}

fn service_backend(
    namespace: &str,
    which: &'static str,
    svc: &ServiceRef,
    spec: &BackendRef,
    services: &dyn Services,
    ctx: &Context<'_>,
) -> Result<(Backend, Option<Unresolved>), InvalidRoute> {
    if svc.name.is_empty() {
        return Err(InvalidRoute::BackendKind(which));
    }
    let port = match &svc.port {
        IntOrString::Int(n) => n.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    // A Service's certificate is usually issued for its cluster DNS name.
    let default_name = format!("{}.{namespace}.svc", svc.name);
    let protocol = protocol(namespace, which, spec, Some(&default_name), ctx)?;
    let (endpoints, problem) = match services.endpoints(namespace, &svc.name, &svc.port) {
        Ok(endpoints) => (endpoints, None),
        Err(problem) => (Vec::new(), Some(problem)),
    };
    let backend = Backend::new(
        format!("{namespace}/{}:{port}", svc.name),
        protocol,
        endpoints.into_iter().map(Addr::Tcp),
    );
    Ok((backend, problem))
}

/// How the backend is spoken to, from its `fastcgi` and `tls` blocks; `tls_name` is
/// the name a `tls` block verifies when it names none.
fn protocol(
    namespace: &str,
    which: &'static str,
    spec: &BackendRef,
    tls_name: Option<&str>,
    ctx: &Context<'_>,
) -> Result<Protocol, InvalidRoute> {
    match (&spec.fastcgi, &spec.tls) {
        (Some(_), Some(_)) => Err(InvalidRoute::BackendTls {
            which,
            why: "a backend speaks FastCGI or HTTPS, not both: remove fastcgi or tls".into(),
        }),
        (Some(fcgi), None) => Ok(Protocol::FastCgi(Arc::new(fastcgi(which, fcgi)?))),
        (None, Some(tls)) => Ok(Protocol::Https(Arc::new(upstream_tls(
            namespace, which, tls, tls_name, ctx,
        )?))),
        (None, None) => Ok(Protocol::Http),
    }
}

fn url_backend(
    namespace: &str,
    which: &'static str,
    url: &str,
    spec: &BackendRef,
    ctx: &Context<'_>,
) -> Result<Backend, InvalidRoute> {
    let bad = |why| InvalidRoute::BadUrl {
        which,
        url: url.to_string(),
        why,
    };
    if let Some(path) = url.strip_prefix("unix:") {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(bad("a Unix socket is written unix:/absolute/path.sock"));
        }
        if spec.tls.is_some() {
            return Err(bad("a Unix socket is spoken to in the clear: remove tls"));
        }
        let protocol = protocol(namespace, which, spec, None, ctx)?;
        return Ok(Backend::new(
            url.to_string(),
            protocol,
            [Addr::Unix(PathBuf::from(path))],
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("write it as http://host:port, https://host:port, fastcgi://host:port or unix:/path.sock"))?;
    let default_port =
        match (uri.scheme_str(), &spec.fastcgi, &spec.tls) {
            (Some("http"), None, None) => 80,
            (Some("http"), Some(_), _) => return Err(bad(
                "a backend with a fastcgi block is written fastcgi://host:port or unix:/path.sock",
            )),
            (Some("http"), None, Some(_)) => {
                return Err(bad(
                    "a backend with a tls block is written https://host:port",
                ))
            }
            (Some("https"), None, _) => 443,
            (Some("https"), Some(_), _) => {
                return Err(bad(
                    "FastCGI is spoken in the clear: write fastcgi://host:port",
                ))
            }
            (Some("fastcgi"), Some(_), _) => 9000,
            (Some("fastcgi"), None, _) => {
                return Err(bad(
                    "a fastcgi:// backend needs a fastcgi block with at least documentRoot",
                ))
            }
            _ => {
                return Err(bad(
                    "it must start with http://, https://, fastcgi:// or unix:",
                ))
            }
        };
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in URLs are not supported"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad(
            "it must not carry a path or query: requests keep their own path",
        ));
    }
    let authority: Authority = match authority.port_u16() {
        Some(_) => authority.clone(),
        None => format!("{}:{default_port}", authority.host())
            .parse()
            .map_err(|_| bad("it has no valid host"))?,
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let protocol = match uri.scheme_str() {
        // An https:// url is TLS with or without a tls block.
        Some("https") => {
            let tls = spec.tls.clone().unwrap_or_default();
            Protocol::Https(Arc::new(upstream_tls(
                namespace,
                which,
                &tls,
                Some(&host),
                ctx,
            )?))
        }
        _ => protocol(namespace, which, spec, None, ctx)?,
    };
    Ok(Backend::new(
        authority.to_string(),
        protocol,
        [Addr::Tcp(authority)],
    ))
}

fn fastcgi(which: &'static str, spec: &FastCgiSpec) -> Result<FastCgi, InvalidRoute> {
    let bad = |why: &str| InvalidRoute::FastCgi {
        which,
        why: why.to_string(),
    };
    let root = spec.document_root.trim_end_matches('/');
    if !spec.document_root.starts_with('/') || spec.document_root.contains('\0') {
        return Err(bad(
            "documentRoot must be an absolute path on the FastCGI server, like /var/www/html",
        ));
    }
    let index = spec.index.as_deref().unwrap_or(FastCgi::DEFAULT_INDEX);
    if index.is_empty() || index.contains(['/', '\0']) {
        return Err(bad("index must be a file name, like index.php"));
    }
    let front_controller = match &spec.front_controller {
        Some(front) if !front.starts_with('/') || front.contains('\0') || front.contains("/..") => {
            return Err(bad(
                "frontController must be a script path under documentRoot, like /index.php",
            ))
        }
        front => front.clone(),
    };
    let split_path = spec
        .split_path
        .as_deref()
        .unwrap_or(FastCgi::DEFAULT_SPLIT_PATH);
    if !split_path.starts_with('.') || split_path.len() < 2 || split_path.contains(['/', '\0']) {
        return Err(bad("splitPath must be a file extension, like .php"));
    }
    if let Some((name, _)) = spec
        .params
        .iter()
        .find(|(name, value)| name.is_empty() || name.contains('\0') || value.contains('\0'))
    {
        return Err(bad(&format!(
            "params {name:?}: names must be non-empty and neither names nor values may hold a NUL"
        )));
    }
    let max_connections = match spec.max_connections {
        None => FastCgi::DEFAULT_MAX_CONNECTIONS,
        Some(0) => return Err(bad("maxConnections must be at least 1")),
        Some(n) => n as usize,
    };
    Ok(FastCgi {
        document_root: if root.is_empty() { "/" } else { root }.to_string(),
        index: index.to_string(),
        front_controller,
        split_path: split_path.to_string(),
        params: spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_connections,
    })
}

fn upstream_tls(
    namespace: &str,
    which: &'static str,
    spec: &BackendTlsSpec,
    default_name: Option<&str>,
    ctx: &Context<'_>,
) -> Result<UpstreamTls, InvalidRoute> {
    let bad = |why: String| InvalidRoute::BackendTls { which, why };
    let server_name = match (&spec.server_name, default_name) {
        (Some(name), _) => name.clone(),
        (None, Some(name)) => name.to_string(),
        (None, None) => {
            return Err(bad(
                "set serverName, the name the backend's certificate carries".into(),
            ))
        }
    };
    if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return Err(bad(format!(
            "serverName {server_name:?} is not a DNS name or IP address"
        )));
    }
    let insecure = spec.insecure_skip_verify.unwrap_or(false);
    let (ca, pem) = match (&spec.ca_file, &spec.ca_secret_name) {
        (Some(_), Some(_)) => return Err(bad("set at most one of caFile or caSecretName".into())),
        (None, None) => ("system".to_string(), None),
        (file, secret) => {
            let Some(trust) = ctx.trust else {
                return Err(bad(
                    "caFile and caSecretName need a route file or a cluster".into(),
                ));
            };
            let name = match (file, secret) {
                (Some(file), _) => format!("file:{file}"),
                (_, Some(secret)) => format!("secret:{namespace}/{secret}"),
                _ => unreachable!("one of them is set"),
            };
            (name, trust.ca_pem(namespace, spec).map_err(bad)?)
        }
    };
    let config = crate::tls::client::config(pem.as_deref(), insecure)
        .map_err(|err| bad(format!("{ca}: {err}")))?;
    let trust_id = {
        use std::hash::{Hash, Hasher};
        let mut hasher = rustc_hash::FxHasher::default();
        (pem.as_deref(), insecure).hash(&mut hasher);
        hasher.finish()
    };
    Ok(UpstreamTls {
        server_name,
        ca,
        insecure_skip_verify: insecure,
        trust_id,
        config,
    })
}
