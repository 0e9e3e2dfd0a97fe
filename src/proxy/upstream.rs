//! Upstream HTTP clients with keep-alive pools, one set per data-plane thread.
//!
//! In: upstream requests, with the connect and idle timeouts of their route.
//! Out: response futures. Each worker thread keeps its own pools, so an upstream
//! connection lives on the thread that uses it: no request or response ever crosses
//! threads, as in nginx's worker model. Pools are keyed by timeouts, so they survive
//! route reloads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpstreamBody;

type UpstreamClient = Client<HttpConnector, UpstreamBody>;

thread_local! {
    static CLIENTS: RefCell<HashMap<(Duration, Duration), UpstreamClient>> = RefCell::new(HashMap::new());
}

fn build(connect: Duration, idle: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        // The client's own Host header is kept; never invent one from the upstream URL.
        .set_host(false)
        .build(connector)
}

/// Sends `req` on this thread's pool for the given timeouts.
pub fn request(connect: Duration, idle: Duration, req: Request<UpstreamBody>) -> ResponseFuture {
    CLIENTS.with(|clients| {
        clients
            .borrow_mut()
            .entry((connect, idle))
            .or_insert_with(|| build(connect, idle))
            .request(req)
    })
}
