//! Primary first, fallback on a `fallbackOn` status: the heart of fallthrough.
//!
//! In: a routed client request.
//! Out: the response the client gets, from the primary or the fallback, decided on the
//! primary's response head before any byte goes to the client; or a [`ProxyError`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::body::{read_request_body, read_response_prefix, ClientBody, RequestBody, UpstreamBody};
use super::headers::{is_upgrade, remove_hop_by_hop, RawFields, UpstreamHead};
use super::rescue::ProxyError;
use super::upstream::{self, ResponseBody};
use super::{ConnInfo, RouteRuntime};
use crate::routes::{Answerer, Backend, Route};

/// How much of a primary's "not found" body is read so its connection can be reused
/// (and, with `notFoundFrom: primary`, kept to answer with).
const PRIMARY_BODY_KEEP: usize = 64 * 1024;

pub(super) async fn forward(
    route: &Route,
    rt: &RouteRuntime,
    mut req: Request<Option<Incoming>>,
    fields: RawFields,
    conn: &ConnInfo,
    started: Instant,
    body_timeout: Duration,
) -> Result<Response<ClientBody>, ProxyError> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Without a body to read first, the request's clock times the primary's attempt
    // too: one clock read less on the path most requests take.
    let bodyless = req
        .body()
        .as_ref()
        .is_none_or(http_body::Body::is_end_stream);
    let (parts, body) = req.into_parts();
    let head = prepare_head(parts, fields, conn, upgrade);

    let body = read_request_body(body, route.max_replay_bytes, body_timeout).await?;
    let (body, replay) = match body {
        RequestBody::Replayable(body) => {
            let replay = body.replay();
            (body, replay)
        }
        RequestBody::Streaming(body) => (body, None),
    };

    let primary = match pick(rt, &route.primary, Answerer::Primary) {
        Ok(endpoint) => {
            let started = if bodyless { started } else { Instant::now() };
            let attempt = Attempt::new(Answerer::Primary, endpoint, started);
            send(rt, route, attempt, &head, body).await
        }
        Err(err) => Err(err),
    };
    let primary = match primary {
        Ok(resp) if route.falls_back_on(resp.status().as_u16()) => resp,
        Ok(resp) => return Ok(respond(rt, Answerer::Primary, resp, client_upgrade)),
        Err(err @ (ProxyError::UpstreamConnect { .. } | ProxyError::NoEndpoints(_)))
            if route.fallback_on_error =>
        {
            let Some(replay) = replay else {
                rt.metrics.fallback_skipped_body_too_large();
                return Err(err);
            };
            rt.metrics.fallback_on_error();
            let resp = Box::pin(send_fallback(rt, route, &head, replay)).await?;
            return Ok(respond(rt, Answerer::Fallback, resp, client_upgrade));
        }
        Err(err) => return Err(err),
    };

    let Some(replay) = replay else {
        rt.metrics.fallback_skipped_body_too_large();
        return Ok(respond(rt, Answerer::Primary, primary, client_upgrade));
    };
    rt.metrics.fallback_on_status();
    // Boxed: a primary hit, the hot path, then moves a much smaller future around.
    Box::pin(fall_back(rt, route, &head, primary, replay, client_upgrade)).await
}

/// The primary answered a `fallbackOn` status: the same request goes to the fallback.
async fn fall_back(
    rt: &RouteRuntime,
    route: &Route,
    head: &UpstreamHead,
    primary: Response<ResponseBody>,
    replay: UpstreamBody,
    client_upgrade: Option<OnUpgrade>,
) -> Result<Response<ClientBody>, ProxyError> {
    let kept = keep_primary_answer(route, primary).await;
    let fallback = send_fallback(rt, route, head, replay).await?;
    match kept {
        Some(kept) if route.falls_back_on(fallback.status().as_u16()) => {
            // Neither serves it; `notFoundFrom: primary` keeps the legacy answer.
            Ok(respond_kept(rt, kept))
        }
        _ => Ok(respond(rt, Answerer::Fallback, fallback, client_upgrade)),
    }
}

/// The same request (head and replayed body), sent to the fallback.
async fn send_fallback(
    rt: &RouteRuntime,
    route: &Route,
    head: &UpstreamHead,
    replay: UpstreamBody,
) -> Result<Response<ResponseBody>, ProxyError> {
    let endpoint = pick(rt, &route.fallback, Answerer::Fallback)?;
    let attempt = Attempt::new(Answerer::Fallback, endpoint, Instant::now());
    send(rt, route, attempt, head, replay).await
}

/// A primary response read (in part) while the fallback is asked.
struct KeptAnswer {
    parts: http::response::Parts,
    prefix: Vec<Bytes>,
    rest: Option<ResponseBody>,
}

/// Reads the primary's "not found" body so its connection returns to the pool, keeping
/// it only when `notFoundFrom: primary` may need it.
async fn keep_primary_answer(route: &Route, resp: Response<ResponseBody>) -> Option<KeptAnswer> {
    let (mut parts, mut body) = resp.into_parts();
    body.take_fields().append_to(&mut parts.headers);
    match route.not_found_from {
        Answerer::Primary => {
            // A broken body answers with what was read; the fallback may still serve.
            let (prefix, rest) = read_response_prefix(body, PRIMARY_BODY_KEEP)
                .await
                .unwrap_or_default();
            Some(KeptAnswer {
                parts,
                prefix,
                rest,
            })
        }
        Answerer::Fallback => {
            // An error or an oversized body only costs the connection's reuse.
            let _ = read_response_prefix(body, PRIMARY_BODY_KEEP).await;
            None
        }
    }
}

/// Rewrites the client's request head into the head every upstream attempt shares.
fn prepare_head(
    mut parts: Parts,
    fields: RawFields,
    conn: &ConnInfo,
    upgrade: bool,
) -> UpstreamHead {
    let sent = parts.headers.get(header::HOST).cloned();
    let host = match sent.or_else(|| fields.host_value()) {
        Some(host) => Some(host),
        None => {
            // HTTP/2 clients send :authority, and HTTP/1.1 ones may send an absolute
            // URI without Host: HTTP/1.1 upstreams need Host.
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = &host {
                parts.headers.insert(header::HOST, host.clone());
            }
            host
        }
    };
    remove_hop_by_hop(&mut parts.headers, upgrade);
    UpstreamHead::new(parts, fields, &conn.client_ip, conn.proto, host)
}

/// The next endpoint of `backend`, or 503 when it has none ready.
fn pick<'r>(
    rt: &RouteRuntime,
    backend: &'r Backend,
    which: Answerer,
) -> Result<&'r Authority, ProxyError> {
    backend.endpoint(rt.next_turn(which)).ok_or_else(|| {
        rt.metrics.upstream_error(which, "no_endpoints");
        ProxyError::NoEndpoints(which)
    })
}

/// Who an upstream attempt goes to, and when its clock started.
struct Attempt<'r> {
    backend: Answerer,
    endpoint: &'r Authority,
    started: Instant,
}

impl<'r> Attempt<'r> {
    fn new(backend: Answerer, endpoint: &'r Authority, started: Instant) -> Self {
        Attempt {
            backend,
            endpoint,
            started,
        }
    }
}

/// One upstream attempt, timed and classified.
async fn send(
    rt: &RouteRuntime,
    route: &Route,
    attempt: Attempt<'_>,
    head: &UpstreamHead,
    body: UpstreamBody,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Attempt {
        backend,
        endpoint,
        started,
    } = attempt;
    // Boxed: the exchange is most of the request's state, and a future is copied whole
    // into each caller's state as it starts; on the heap it is written once.
    let result = Box::pin(upstream::send(
        endpoint,
        &route.timeouts,
        started,
        head,
        body,
    ))
    .await;
    rt.metrics.upstream_attempt(backend, started.elapsed());
    let err = match result {
        Ok(resp) => return Ok(resp),
        Err(upstream::UpstreamError::ResponseTimeout) => ProxyError::UpstreamTimeout(backend),
        Err(e) if e.is_connect() => ProxyError::UpstreamConnect {
            backend,
            timed_out: e.is_connect_timeout(),
            source: e,
        },
        Err(e) => ProxyError::Upstream {
            backend,
            source: Box::new(e),
        },
    };
    if let Some((backend, kind)) = err.upstream_kind() {
        rt.metrics.upstream_error(backend, kind);
    }
    Err(err)
}

/// Streams an upstream response to the client, tunnelling it when it switched protocols.
fn respond(
    rt: &RouteRuntime,
    backend: Answerer,
    resp: Response<ResponseBody>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ClientBody> {
    let (mut parts, body) = resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let body = if switching {
        if let (Some(client), Some((upstream, early))) = (client_upgrade, body.into_tunnel()) {
            tunnel(client, upstream, early);
        }
        ClientBody::empty()
    } else {
        ClientBody::upstream(body)
    };
    rt.metrics.response(backend, parts.status);
    remove_hop_by_hop(&mut parts.headers, switching);
    // The upstream's protocol version is its own business; hyper speaks the client's.
    parts.version = Version::default();
    Response::from_parts(parts, body)
}

fn respond_kept(rt: &RouteRuntime, kept: KeptAnswer) -> Response<ClientBody> {
    let KeptAnswer {
        mut parts,
        prefix,
        rest,
    } = kept;
    rt.metrics.response(Answerer::Primary, parts.status);
    remove_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::default();
    Response::from_parts(parts, ClientBody::upstream_prefixed(prefix, rest))
}

/// Copies bytes both ways once client and upstream have both switched protocols.
fn tunnel(client: OnUpgrade, mut upstream: tokio::net::TcpStream, early: Bytes) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        // Bytes the backend sent right behind its 101 head belong to the new protocol.
        if let Err(err) = client.write_all(&early).await {
            tracing::debug!(error = %err, "tunnel closed");
            return;
        }
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %err, "tunnel closed");
        }
    });
}
