//! Primary first, fallback on a `fallbackOn` status: the heart of fallthrough.
//!
//! In: a routed client request.
//! Out: the response the client gets, from the primary or the fallback, decided on the
//! primary's response head before any byte goes to the client; or a [`ProxyError`].
//! The policy itself is pure ([`after_primary`], [`after_fallback`]) and table-tested
//! without sockets; the rest of this file is the I/O it decides.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};

use super::answer::{read_response_prefix, ClientBody};
use super::body::BodyError;
use super::body::{
    read_request_body, ClientRequestBody, NoReplay, ReadBodyError, ReplayBudget, RequestBody,
    UpstreamBody,
};
use super::h1::head::{is_upgrade, remove_hop_by_hop, RawFields};
use super::h1::inbound::H1BodyError;
use super::h1::upstream_head::{Forwarding, NamedHost, UpstreamHead};
use super::rescue::ProxyError;
use super::trail::Trail;
use super::upstream::{self, ResponseBody};
use super::{ConnInfo, Limits, RouteRuntime};
use crate::insight::Class;
use crate::routes::{Answerer, Backend, CutOver, Endpoint, Protocol, Route};

/// How a routed request is to be forwarded.
pub(super) struct How<'p> {
    /// When the request's head was read.
    pub started: Instant,
    pub limits: &'p Limits,
    pub budget: &'p Arc<ReplayBudget>,
    /// The normalised path the request was routed on.
    pub path: &'p str,
    /// Whether `path` differs from the one the client sent: then upstreams get `path`.
    pub rewritten: bool,
    /// The client the request speaks for (`X-Real-IP`, FastCGI's `REMOTE_ADDR`).
    pub client: std::net::IpAddr,
    /// `X-Request-Id`, the same on both attempts.
    pub request_id: HeaderValue,
    /// The access log's notes.
    pub trail: &'p Trail,
}

/// How much of a primary's "not found" body is read so its connection can be reused
/// (and, with `notFoundFrom: primary`, kept to answer with).
const PRIMARY_BODY_KEEP: usize = 64 * 1024;

pub(super) async fn forward(
    route: &Route,
    rt: &RouteRuntime,
    req: Request<Option<ClientRequestBody>>,
    fields: RawFields,
    conn: &ConnInfo,
    how: How<'_>,
) -> Result<Response<ClientBody>, ProxyError> {
    let started = how.started;
    let upgrade = is_upgrade(req.headers());
    // Without a body to read first, the request's clock times the primary's attempt
    // too: one clock read less on the path most requests take.
    let bodyless = req
        .body()
        .as_ref()
        .is_none_or(http_body::Body::is_end_stream);
    let (parts, body) = req.into_parts();
    let trail = how.trail;
    let asked = Asked {
        conn,
        client: how.client,
        request_id: how.request_id,
        upgrade,
        rewritten_path: how.rewritten.then(|| how.path.to_owned()),
    };
    let head = prepare_head(parts, fields, asked);
    let read_idle = how.limits.upstream_read_timeout;
    let at = Routed {
        path: how.path,
        started,
        trail,
    };
    let rule = route.cut_over(how.path);
    let direct = match rule {
        Some(CutOver::SkipPrimary) => Some(Direct::SkipPrimary),
        Some(CutOver::PrimaryOnly) => None,
        None => rt
            .remembered
            .as_ref()
            .filter(|memory| memory.recall(how.path, started))
            .map(|_| Direct::Remembered),
    };
    if let Some(direct) = direct {
        let body = if bodyless {
            UpstreamBody::empty()
        } else {
            UpstreamBody::once(body)
        };
        let straight = Straight {
            direct,
            at,
            read_idle,
        };
        return Box::pin(straight_to_fallback(rt, route, &head, body, straight)).await;
    }
    let primary_only = rule == Some(CutOver::PrimaryOnly);

    let limit = route.max_replay_bytes;
    let body = match body {
        // Most requests: no body future to build and move around.
        _ if bodyless => RequestBody::Replayable(UpstreamBody::empty()),
        body => read_request_body(body, limit, how.budget, how.limits.body_timeout)
            .await
            .map_err(|err| match err {
                ReadBodyError::Timeout
                | ReadBodyError::Broken(BodyError::H1(H1BodyError::Stalled)) => {
                    ProxyError::ClientBodyTimeout
                }
                ReadBodyError::Broken(err) => ProxyError::ClientBody(err),
            })?,
    };
    let (body, replay, no_replay) = match body {
        RequestBody::Replayable(body) => {
            let replay = body.replay();
            (body, replay, None)
        }
        RequestBody::Streaming(body, why) => (body, None, Some(why)),
    };
    let skipped = || match no_replay {
        Some(NoReplay::BudgetSpent) => {
            trail.skipped("replay_budget");
            rt.metrics.fallback_skipped_replay_budget()
        }
        _ => {
            trail.skipped("body_too_large");
            rt.metrics.fallback_skipped_body_too_large()
        }
    };

    let primary = match pick(rt, &route.primary, Answerer::Primary) {
        Ok(endpoint) => {
            let started = if bodyless { started } else { Instant::now() };
            let attempt = Attempt::new(
                Answerer::Primary,
                &route.primary.protocol,
                endpoint,
                started,
                trail,
            );
            send(rt, route, attempt, &head, body, read_idle).await
        }
        Err(err) => Err(err),
    };
    // Matched one value at a time: a tuple of the three would copy each into it.
    match after_primary(
        route,
        primary_outcome(&primary),
        replay.is_some(),
        primary_only,
    ) {
        Next::Fallback(trigger) => {
            let Some(replay) = replay else {
                // `after_primary` only falls back on a replayable body.
                return primary.map(|resp| respond(rt, route, Answerer::Primary, resp, at, false));
            };
            match trigger {
                Trigger::Status => rt.metrics.fallback_on_status(),
                Trigger::Unreachable => rt.metrics.fallback_on_error(),
            }
            trail.fell_back(trigger.name());
            match primary {
                // Boxed: a primary hit, the hot path, then moves a much smaller future.
                Ok(primary) => {
                    Box::pin(fall_back(rt, route, &head, primary, replay, at, read_idle)).await
                }
                Err(_) => {
                    let resp =
                        Box::pin(send_fallback(rt, route, &head, replay, read_idle, trail)).await?;
                    Ok(respond(rt, route, Answerer::Fallback, resp, at, false))
                }
            }
        }
        Next::Skipped => {
            skipped();
            primary.map(|resp| respond(rt, route, Answerer::Primary, resp, at, true))
        }
        Next::Primary => primary.map(|resp| respond(rt, route, Answerer::Primary, resp, at, false)),
    }
}

/// How the primary attempt ended, as far as the policy cares.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// It answered with this status.
    Status(u16),
    /// The request never reached it: the connection was refused or timed out, or it has
    /// no ready endpoint.
    Unreachable,
    /// It failed after the request may have reached it (a reset, a timeout, a malformed
    /// answer): never retried, the primary may have acted.
    Failed,
}

fn primary_outcome(primary: &Result<Response<ResponseBody>, ProxyError>) -> Outcome {
    match primary {
        Ok(resp) => Outcome::Status(resp.status().as_u16()),
        Err(
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::NoEndpoints(_),
        ) => Outcome::Unreachable,
        Err(_) => Outcome::Failed,
    }
}

/// What comes after the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The primary's answer, or its error, is the client's.
    Primary,
    /// The same request goes to the fallback.
    Fallback(Trigger),
    /// The fallback would be asked, but the body was not kept for replay: the primary's
    /// answer or error stands, and the skipped fallback is counted.
    Skipped,
}

/// Why the fallback is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// A `fallbackOn` status.
    Status,
    /// An unreachable primary, with `fallbackOnError`.
    Unreachable,
}

impl Trigger {
    /// The `reason` of `fallthrough_fallbacks_total` and the access log.
    fn name(self) -> &'static str {
        match self {
            Trigger::Status => "status",
            Trigger::Unreachable => "error",
        }
    }
}

/// The policy after the primary, pure: a `fallbackOn` status, or an unreachable primary
/// with `fallbackOnError`, sends the request on when its body can be replayed, unless
/// the path is `primaryOnly`.
fn after_primary(route: &Route, outcome: Outcome, replayable: bool, primary_only: bool) -> Next {
    if primary_only {
        return Next::Primary;
    }
    let trigger = match outcome {
        Outcome::Status(status) if route.falls_back_on(status) => Trigger::Status,
        Outcome::Unreachable if route.fallback_on_error => Trigger::Unreachable,
        _ => return Next::Primary,
    };
    if replayable {
        Next::Fallback(trigger)
    } else {
        Next::Skipped
    }
}

/// Whose answer the client gets once the fallback answered `status`: the fallback's,
/// unless it too answered a `fallbackOn` status and `notFoundFrom: primary` keeps the
/// legacy one.
fn after_fallback(route: &Route, status: u16) -> Answerer {
    if route.not_found_from == Answerer::Primary && route.falls_back_on(status) {
        Answerer::Primary
    } else {
        Answerer::Fallback
    }
}

/// Why a request skips the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direct {
    /// Its path is remembered: the primary did not serve it recently.
    Remembered,
    /// A `skipPrimary` prefix.
    SkipPrimary,
}

/// What a request that skips the primary needs to know besides its head.
struct Straight<'p> {
    direct: Direct,
    /// The normalised path (as remembered) and when the request came.
    at: Routed<'p>,
    read_idle: std::time::Duration,
}

/// A request that skips the primary: its body streams to the fallback as it comes.
async fn straight_to_fallback(
    rt: &RouteRuntime,
    route: &Route,
    head: &UpstreamHead,
    body: UpstreamBody,
    how: Straight<'_>,
) -> Result<Response<ClientBody>, ProxyError> {
    match how.direct {
        Direct::Remembered => rt.metrics.fallback_remembered(),
        Direct::SkipPrimary => rt.metrics.fallback_skip_primary(),
    }
    how.at.trail.fell_back(match how.direct {
        Direct::Remembered => "remembered",
        Direct::SkipPrimary => "skip_primary",
    });
    let fallback = send_fallback(rt, route, head, body, how.read_idle, how.at.trail).await?;
    if how.direct == Direct::Remembered && route.falls_back_on(fallback.status().as_u16()) {
        // The new app does not serve it either (any more): ask the primary next time.
        if let Some(memory) = &rt.remembered {
            memory.forget(how.at.path);
        }
    }
    Ok(respond(
        rt,
        route,
        Answerer::Fallback,
        fallback,
        how.at,
        false,
    ))
}

/// The primary answered a `fallbackOn` status: the same request goes to the fallback.
/// When the fallback serves it and the route remembers fallbacks, the path is
/// remembered.
async fn fall_back(
    rt: &RouteRuntime,
    route: &Route,
    head: &UpstreamHead,
    primary: Response<ResponseBody>,
    replay: UpstreamBody,
    at: Routed<'_>,
    read_idle: std::time::Duration,
) -> Result<Response<ClientBody>, ProxyError> {
    let kept = keep_primary_answer(route, primary).await;
    let fallback = send_fallback(rt, route, head, replay, read_idle, at.trail).await?;
    let served = !route.falls_back_on(fallback.status().as_u16());
    if served {
        if let Some(memory) = &rt.remembered {
            memory.remember(at.path, at.started);
        }
    }
    match (after_fallback(route, fallback.status().as_u16()), kept) {
        (Answerer::Primary, Some(kept)) => Ok(respond_kept(rt, kept, at)),
        _ => Ok(respond(rt, route, Answerer::Fallback, fallback, at, false)),
    }
}

/// The same request (head and replayed body), sent to the fallback.
async fn send_fallback(
    rt: &RouteRuntime,
    route: &Route,
    head: &UpstreamHead,
    replay: UpstreamBody,
    read_idle: std::time::Duration,
    trail: &Trail,
) -> Result<Response<ResponseBody>, ProxyError> {
    let endpoint = pick(rt, &route.fallback, Answerer::Fallback)?;
    let attempt = Attempt::new(
        Answerer::Fallback,
        &route.fallback.protocol,
        endpoint,
        Instant::now(),
        trail,
    );
    send(rt, route, attempt, head, replay, read_idle).await
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

/// What the upstream head is built from, besides the client's head.
struct Asked<'c> {
    conn: &'c ConnInfo,
    /// The client the request speaks for.
    client: std::net::IpAddr,
    request_id: HeaderValue,
    upgrade: bool,
    /// The normalised path the request was routed on, when it differs from the sent one.
    rewritten_path: Option<String>,
}

/// Rewrites the client's request head into the head every upstream attempt shares.
///
/// The host is the target's authority when it has one (HTTP/2's `:authority`, an
/// HTTP/1.1 absolute-form target: RFC 9112 §3.2.2 has it replace `Host`), else the
/// client's `Host`.
fn prepare_head(mut parts: Parts, fields: RawFields, asked: Asked<'_>) -> UpstreamHead {
    let conn = asked.conn;
    let host = match parts.uri.authority() {
        Some(authority) => {
            let host = HeaderValue::from_str(authority.as_str()).ok();
            if let Some(host) = &host {
                parts.headers.insert(header::HOST, host.clone());
            }
            host.map(NamedHost::Value)
        }
        None => parts
            .headers
            .get(header::HOST)
            .cloned()
            .map(NamedHost::Value)
            .or_else(|| fields.host_bytes().map(NamedHost::Raw)),
    };
    let target = asked.rewritten_path.map(|path| match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    });
    remove_hop_by_hop(&mut parts.headers, asked.upgrade);
    let mut peers = conn.peers;
    let real_ip = if asked.client == peers.client.ip() {
        conn.client_ip.clone()
    } else {
        peers.client.set_ip(asked.client);
        HeaderValue::from_str(&asked.client.to_string()).expect("an IP is a valid header")
    };
    let forwarding = Forwarding {
        peer: &conn.client_ip,
        trusted: conn.trusted,
        proto: conn.proto,
        real_ip,
        request_id: asked.request_id,
    };
    let mut head = UpstreamHead::new(parts, fields, forwarding, host);
    head.target = target;
    head.upgrade = asked.upgrade;
    head.peers = peers;
    head
}

/// The next endpoint of `backend`, or 503 when it has none ready.
fn pick<'r>(
    rt: &RouteRuntime,
    backend: &'r Backend,
    which: Answerer,
) -> Result<&'r Endpoint, ProxyError> {
    backend.endpoint(rt.next_turn(which)).ok_or_else(|| {
        rt.metrics.upstream_error(which, "no_endpoints");
        ProxyError::NoEndpoints(which)
    })
}

/// Who an upstream attempt goes to, when its clock started, and where it is noted.
struct Attempt<'r> {
    backend: Answerer,
    protocol: &'r Protocol,
    endpoint: &'r Endpoint,
    started: Instant,
    trail: &'r Trail,
}

impl<'r> Attempt<'r> {
    fn new(
        backend: Answerer,
        protocol: &'r Protocol,
        endpoint: &'r Endpoint,
        started: Instant,
        trail: &'r Trail,
    ) -> Self {
        Attempt {
            backend,
            protocol,
            endpoint,
            started,
            trail,
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
    read_idle: std::time::Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Attempt {
        backend,
        protocol,
        endpoint,
        started,
        trail,
    } = attempt;
    let result = upstream::send(
        protocol,
        endpoint,
        &route.timeouts,
        read_idle,
        started,
        head,
        body,
    )
    .await;
    let took = started.elapsed();
    rt.metrics.upstream_attempt(backend, took);
    let status = result.as_ref().ok().map(|resp| resp.status().as_u16());
    trail.tried(backend, endpoint, status, took);
    let err = match result {
        Ok(resp) => return Ok(resp),
        Err(upstream::UpstreamError::ResponseTimeout) => ProxyError::UpstreamTimeout(backend),
        Err(upstream::UpstreamError::ScriptPath(e)) => ProxyError::ScriptPath(e),
        Err(upstream::UpstreamError::LengthRequired) => ProxyError::LengthRequired,
        Err(upstream::UpstreamError::ParamTooLarge) => {
            ProxyError::Request(super::h1::codec::RequestError::HeadTooLarge)
        }
        Err(e) if e.is_tls() => ProxyError::UpstreamTls { backend, source: e },
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

/// What a request's answer is recorded under: its routed path, and when it came; and
/// where the access log's notes go.
#[derive(Clone, Copy)]
struct Routed<'p> {
    path: &'p str,
    started: Instant,
    trail: &'p Trail,
}

/// Streams an upstream response to the client; a 101's body is the tunnel to the
/// upstream connection, which the client's server opens once the head is written.
/// `skipped`: a `fallbackOn` answer of the primary that could not be replayed, which no
/// class of the paths report claims.
fn respond(
    rt: &RouteRuntime,
    route: &Route,
    backend: Answerer,
    resp: Response<ResponseBody>,
    at: Routed<'_>,
    skipped: bool,
) -> Response<ClientBody> {
    let not_served = route.falls_back_on(resp.status().as_u16());
    let class = match backend {
        Answerer::Fallback if not_served => Some(Class::Missing),
        Answerer::Fallback => Some(Class::Migrated),
        Answerer::Primary if !not_served => Some(Class::Legacy),
        // A `primaryOnly` path's final "not found".
        Answerer::Primary if !skipped => Some(Class::Missing),
        Answerer::Primary => None,
    };
    rt.record
        .record(at.path, class, backend == Answerer::Fallback, at.started);
    at.trail.answered(backend);
    let started = at.started;
    let (parts, body) = resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let body = if switching {
        // The codec only lets a 101 through to a request that asked to upgrade.
        match body.into_tunnel() {
            Some((upstream, early)) => ClientBody::tunnel(upstream, early),
            None => ClientBody::empty(),
        }
    } else {
        ClientBody::upstream(body)
    };
    let mut resp = Response::from_parts(parts, body);
    resp.body_mut().time(rt.metrics.request_timer(started));
    rt.metrics.response(backend, resp.status());
    remove_hop_by_hop(resp.headers_mut(), switching);
    // The upstream's protocol version is its own business; the server speaks the client's.
    *resp.version_mut() = Version::default();
    resp
}

/// The primary's kept "not found", after the fallback's: a path neither app serves.
fn respond_kept(rt: &RouteRuntime, kept: KeptAnswer, at: Routed<'_>) -> Response<ClientBody> {
    rt.record
        .record(at.path, Some(Class::Missing), false, at.started);
    at.trail.answered(Answerer::Primary);
    let started = at.started;
    let KeptAnswer {
        mut parts,
        prefix,
        rest,
    } = kept;
    rt.metrics.response(Answerer::Primary, parts.status);
    remove_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::default();
    let body = ClientBody::upstream_prefixed(prefix, rest).timed(rt.metrics.request_timer(started));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::tests::mk_route;

    /// The policy, one row per case a user configures: what follows the primary.
    #[test]
    fn after_the_primary() {
        use Next::*;
        use Outcome::*;
        // fallbackOn, fallbackOnError, the primary's outcome, replayable, what follows.
        type Row = (&'static [u16], bool, Outcome, bool, Next, &'static str);
        let rows: &[Row] = &[
            (
                &[404],
                false,
                Status(200),
                true,
                Primary,
                "a hit is the primary's",
            ),
            (
                &[404],
                false,
                Status(404),
                true,
                Fallback(Trigger::Status),
                "404 falls back",
            ),
            (
                &[404],
                false,
                Status(404),
                false,
                Skipped,
                "404 with a body too large to replay: the primary's 404, counted",
            ),
            (
                &[404, 410],
                false,
                Status(410),
                true,
                Fallback(Trigger::Status),
                "every fallbackOn status",
            ),
            (
                &[404],
                false,
                Status(500),
                true,
                Primary,
                "a 5xx is the primary's",
            ),
            (
                &[404],
                false,
                Unreachable,
                true,
                Primary,
                "unreachable without fallbackOnError: its 502",
            ),
            (
                &[404],
                true,
                Unreachable,
                true,
                Fallback(Trigger::Unreachable),
                "unreachable with fallbackOnError",
            ),
            (
                &[404],
                true,
                Unreachable,
                false,
                Skipped,
                "unreachable, body not kept",
            ),
            (
                &[404],
                true,
                Failed,
                true,
                Primary,
                "a reset or timeout is never retried",
            ),
        ];
        for (statuses, on_error, outcome, replayable, want, why) in rows {
            let mut route = mk_route("r", &[], &["/"]);
            route.fallback_on = statuses.to_vec();
            route.fallback_on_error = *on_error;
            assert_eq!(
                after_primary(&route, *outcome, *replayable, false),
                *want,
                "{why}"
            );
            // A primaryOnly path takes the primary's answer whatever it is.
            assert_eq!(
                after_primary(&route, *outcome, *replayable, true),
                Primary,
                "primaryOnly: {why}"
            );
        }
    }

    #[test]
    fn after_the_fallback() {
        let rows = [
            (
                Answerer::Fallback,
                404,
                Answerer::Fallback,
                "notFoundFrom: fallback, the new app's 404",
            ),
            (
                Answerer::Primary,
                404,
                Answerer::Primary,
                "notFoundFrom: primary keeps the legacy 404",
            ),
            (
                Answerer::Primary,
                200,
                Answerer::Fallback,
                "a fallback that serves it answers",
            ),
            (
                Answerer::Primary,
                500,
                Answerer::Fallback,
                "a fallback error is its own",
            ),
        ];
        for (not_found_from, status, want, why) in rows {
            let mut route = mk_route("r", &[], &["/"]);
            route.not_found_from = not_found_from;
            assert_eq!(after_fallback(&route, status), want, "{why}");
        }
    }
}
