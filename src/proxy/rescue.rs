//! The one place where proxy errors become HTTP responses.
//!
//! In: a [`ProxyError`] from any step of handling a request.
//! Out: a short plain-text response with the status the error calls for. Bodies name
//! the condition but never upstream addresses or internals; the log has those.

use http::{header, HeaderValue, Response, StatusCode};

use super::answer::ClientBody;
use super::body::BodyError;
use super::h1::codec::RequestError;
use super::path::PathError;
use crate::routes::Answerer;

/// Everything that can stop a request from getting an upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route serves this host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The request head broke a rule of RFC 9112 or 9110 (the codec's verdict).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The path cannot be normalised.
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    /// The decoded path cannot name a FastCGI script.
    #[error("bad path for a FastCGI backend: {0}")]
    ScriptPath(#[from] super::fastcgi::params::ScriptPathError),
    /// A chunked body too large to buffer, for a FastCGI backend that needs its length.
    #[error(
        "a FastCGI backend needs the length of this chunked body, which is too large to buffer"
    )]
    LengthRequired,
    /// An HTTP/2 request's `host` names another authority than its `:authority`.
    #[error("the host field and :authority disagree")]
    AuthorityMismatch,
    /// An HTTP/1.1 request without a Host header.
    #[error("request has no Host header")]
    MissingHost,
    /// CONNECT is for forward proxies; fallthrough is a reverse proxy.
    #[error("CONNECT is not supported")]
    ConnectMethod,
    /// The client's request body could not be read (malformed chunking, reset).
    #[error("reading the request body failed: {0}")]
    ClientBody(#[source] BodyError),
    /// The client took too long to send its body.
    #[error("the request body did not arrive in time")]
    ClientBodyTimeout,
    /// A backend refused the connection or did not accept it in time; the request
    /// never reached it.
    #[error("cannot connect to the {backend:?} backend: {source}")]
    UpstreamConnect {
        /// Which backend.
        backend: Answerer,
        /// The connect timeout expired (504) rather than a refusal (502).
        timed_out: bool,
        /// The connection error.
        #[source]
        source: super::upstream::UpstreamError,
    },
    /// The TLS handshake with an HTTPS backend failed (its certificate was not
    /// trusted, or not for the server name); the request never reached it.
    #[error("TLS to the {backend:?} backend failed: {source}")]
    UpstreamTls {
        /// Which backend.
        backend: Answerer,
        /// The handshake error.
        #[source]
        source: super::upstream::UpstreamError,
    },
    /// A Service backend has no ready endpoint.
    #[error("the {0:?} backend has no ready endpoints")]
    NoEndpoints(Answerer),
    /// A backend did not send its response head in time.
    #[error("the {0:?} backend did not answer in time")]
    UpstreamTimeout(Answerer),
    /// A backend broke the exchange (reset, malformed response).
    #[error("the {backend:?} backend failed: {source}")]
    Upstream {
        /// Which backend.
        backend: Answerer,
        /// What happened.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Request(err) => err.status(),
            ProxyError::MissingHost
            | ProxyError::ClientBody(_)
            | ProxyError::BadPath(_)
            | ProxyError::ScriptPath(_)
            | ProxyError::AuthorityMismatch => StatusCode::BAD_REQUEST,
            ProxyError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect {
                timed_out: true, ..
            }
            | ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `kind` label of `fallthrough_upstream_errors_total`, for upstream errors.
    pub fn upstream_kind(&self) -> Option<(Answerer, &'static str)> {
        match self {
            ProxyError::UpstreamConnect {
                backend, timed_out, ..
            } => Some((*backend, if *timed_out { "timeout" } else { "connect" })),
            ProxyError::UpstreamTls { backend, .. } => Some((*backend, "tls")),
            ProxyError::UpstreamTimeout(backend) => Some((*backend, "timeout")),
            ProxyError::NoEndpoints(backend) => Some((*backend, "no_endpoints")),
            ProxyError::Upstream { backend, .. } => Some((*backend, "protocol")),
            _ => None,
        }
    }

    /// The access log's `error` field: the condition, as one word.
    pub fn name(&self) -> &'static str {
        if let Some((_, kind)) = self.upstream_kind() {
            return kind;
        }
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Request(RequestError::HeadTooLarge) => "head_too_large",
            ProxyError::Request(RequestError::UnknownCoding) => "unknown_coding",
            ProxyError::Request(RequestError::Version) => "version",
            ProxyError::Request(_) => "malformed",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::ScriptPath(_) => "script_path",
            ProxyError::LengthRequired => "length_required",
            ProxyError::AuthorityMismatch => "authority_mismatch",
            ProxyError::MissingHost => "missing_host",
            ProxyError::ConnectMethod => "connect_method",
            ProxyError::ClientBody(_) => "client_body",
            ProxyError::ClientBodyTimeout => "client_body_timeout",
            _ => "upstream",
        }
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "fallthrough: no route for this host and path\n",
            ProxyError::Request(RequestError::Malformed(_)) => {
                "fallthrough: bad request: the request line or a header field is malformed or breaks HTTP/1.1's rules\n"
            }
            ProxyError::Request(RequestError::HeadTooLarge) => {
                "fallthrough: request header fields too large: at most 64 KiB and 128 fields\n"
            }
            ProxyError::Request(RequestError::UnknownCoding) => {
                "fallthrough: not implemented: only the chunked transfer coding is accepted\n"
            }
            ProxyError::Request(RequestError::Version) => {
                "fallthrough: HTTP version not supported: send HTTP/1.1, HTTP/1.0 or HTTP/2\n"
            }
            ProxyError::BadPath(_) => {
                "fallthrough: bad request: the path has a malformed or NUL percent-encoding\n"
            }
            ProxyError::ScriptPath(_) => {
                "fallthrough: bad request: the decoded path has a . or .. segment\n"
            }
            ProxyError::LengthRequired => {
                "fallthrough: length required: send this upload with a Content-Length; the backend needs its size, and it is too large to buffer\n"
            }
            ProxyError::AuthorityMismatch => {
                "fallthrough: bad request: the host field and :authority name different hosts\n"
            }
            ProxyError::MissingHost => "fallthrough: bad request: missing Host header\n",
            ProxyError::ConnectMethod => "fallthrough: CONNECT is not supported\n",
            ProxyError::ClientBody(_) => "fallthrough: bad request: unreadable request body\n",
            ProxyError::ClientBodyTimeout => "fallthrough: request body timed out\n",
            ProxyError::NoEndpoints(_) => {
                "fallthrough: service unavailable: the backend has no ready endpoints\n"
            }
            ProxyError::UpstreamConnect {
                timed_out: false, ..
            }
            | ProxyError::Upstream { .. } => {
                "fallthrough: bad gateway: the backend could not be reached or failed\n"
            }
            ProxyError::UpstreamTls { .. } => {
                "fallthrough: bad gateway: the backend's TLS certificate was not accepted\n"
            }
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamTimeout(_) => {
                "fallthrough: gateway timeout: the backend did not answer in time\n"
            }
        }
    }
}

/// Turns an error into the response the client receives.
pub fn rescue(err: &ProxyError) -> Response<ClientBody> {
    let status = err.status();
    let mut resp = Response::new(ClientBody::full(err.body()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status.is_client_error() && status != StatusCode::NOT_FOUND {
        // The connection's state is unknown after a broken request: do not reuse it.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
