//! The admin server: `/metrics`, `/healthz`, `/readyz`, `/paths`, `/traffic`.
//!
//! In: the metrics registry, a readiness flag set by the route provider, and the
//! proxy's migration insight.
//! Out: plain HTTP/1.1 answers for Prometheus, the kubelet's probes, `fallthrough
//! paths` (`/paths`, JSON) and the status writer (`/traffic`, JSON).
//! `/readyz` is 503 until routes are loaded and again once draining starts, so load
//! balancers stop sending before the listener closes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::insight::recorder::Insight;
use crate::insight::Class;
use crate::metrics::Metrics;

/// Whether this process should receive traffic.
#[derive(Default)]
pub struct Readiness {
    routes_loaded: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Routes are loaded: ready unless draining.
    pub fn set_loaded(&self) {
        self.routes_loaded.store(true, Ordering::Release);
    }

    /// Shutdown has begun: never ready again.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to serve.
    pub fn is_ready(&self) -> bool {
        self.routes_loaded.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct Sources {
    /// For `/metrics`.
    pub metrics: Arc<Metrics>,
    /// For `/readyz`.
    pub readiness: Arc<Readiness>,
    /// For `/paths` and `/traffic`.
    pub insight: Arc<Insight>,
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(listener: TcpListener, sources: Sources, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let sources = sources.clone();
                let service = service_fn(move |req| {
                    let resp = answer(&req, &sources);
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

fn answer<B>(req: &Request<B>, sources: &Sources) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    let readiness = &sources.readiness;
    match req.uri().path() {
        "/paths" => match PathsQuery::parse(req.uri().query().unwrap_or("")) {
            Ok(query) => {
                let mut report = sources.insight.paths();
                report.filter(query.route.as_deref(), query.class, query.limit);
                json(&report)
            }
            Err(why) => text_owned(StatusCode::BAD_REQUEST, why),
        },
        "/traffic" => json(&sources.insight.traffic()),
        "/metrics" => {
            let (used, limit) = sources.insight.memory();
            sources.metrics.paths_report_memory(used, limit);
            let mut resp = Response::new(Full::new(Bytes::from(sources.metrics.encode())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: routes not loaded yet, or shutting down\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /paths or /traffic\n",
        ),
    }
}

/// The filters of `GET /paths`: `route=namespace/name`, `class=legacy|migrated|missing`,
/// `limit=N` (paths per class).
#[derive(Debug, Default, PartialEq)]
struct PathsQuery {
    route: Option<String>,
    class: Option<Class>,
    limit: Option<usize>,
}

impl PathsQuery {
    fn parse(query: &str) -> Result<PathsQuery, String> {
        let mut out = PathsQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "route" => out.route = Some(value.into_owned()),
                "class" => {
                    let class = Class::from_name(&value).ok_or_else(|| {
                        format!("class={value} is not a class: use legacy, migrated or missing\n")
                    })?;
                    out.class = Some(class);
                }
                "limit" => {
                    out.limit = Some(value.parse().map_err(|_| {
                        format!("limit={value} is not a number of paths: use e.g. limit=20\n")
                    })?)
                }
                other => {
                    return Err(format!(
                        "{other} is not a filter of /paths: use route=namespace/name, class= or limit=\n"
                    ))
                }
            }
        }
        Ok(out)
    }
}

fn json(body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("reports serialise");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_filters() {
        assert_eq!(PathsQuery::parse(""), Ok(PathsQuery::default()));
        assert_eq!(
            PathsQuery::parse("route=web%2Fshop&class=missing&limit=5"),
            Ok(PathsQuery {
                route: Some("web/shop".into()),
                class: Some(Class::Missing),
                limit: Some(5),
            })
        );
        assert_eq!(
            PathsQuery::parse("route=web/shop").map(|q| q.route),
            Ok(Some("web/shop".into()))
        );
        for (bad, says) in [
            ("class=old", "use legacy, migrated or missing"),
            ("limit=ten", "use e.g. limit=20"),
            ("sort=count", "not a filter of /paths"),
        ] {
            let err = PathsQuery::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
