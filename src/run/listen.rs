//! The listening sockets of `run`: the data plane's, one per worker, and the admin
//! server's.
//!
//! In: the addresses from the flags. Out: bound listeners, or a `RunError::Bind` naming
//! the flag to change.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::RunError;
use crate::cli::RunArgs;

async fn bind(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind {
            what,
            addr,
            flag,
            source,
        })
}

/// The data-plane listeners: for each address, one socket per worker thread.
pub(crate) struct Listeners {
    pub(super) http: Vec<std::net::TcpListener>,
    pub(super) https: Vec<std::net::TcpListener>,
}

pub(super) async fn bind_both(args: &RunArgs) -> Result<(Listeners, TcpListener), RunError> {
    let workers = args.workers();
    let http = bind_workers("HTTP", "http-addr", args.http_addr, workers)?;
    let https = bind_workers("HTTPS", "https-addr", args.https_addr, workers)?;
    let admin = bind("the admin server", "admin-addr", args.admin_addr).await?;
    tracing::info!("listening for HTTP on {}", http[0].local_addr()?);
    tracing::info!("listening for HTTPS on {}", https[0].local_addr()?);
    tracing::info!("admin server listening on {}", admin.local_addr()?);
    Ok((Listeners { http, https }, admin))
}

/// Binds `addr` once per worker with `SO_REUSEPORT`, so the kernel spreads new
/// connections evenly over the workers.
///
/// Why: with one socket shared by every worker, the worker that wakes first accepts a
/// whole burst of connections (all of wrk's 32, at times), and one core then serves
/// them while the others idle. nginx (`reuseport`) and Envoy (by default) do the same.
/// A plain bind comes first, so an address anything else holds, another fallthrough
/// included, is refused as before rather than shared.
fn bind_workers(
    what: &'static str,
    flag: &'static str,
    addr: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, RunError> {
    let failed = |source| RunError::Bind {
        what,
        addr,
        flag,
        source,
    };
    // With port 0, the port the system picks here is the one the workers share.
    let bound = std::net::TcpListener::bind(addr)
        .and_then(|probe| probe.local_addr())
        .map_err(failed)?;
    (0..workers.max(1))
        .map(|_| reuse_port_listener(bound).map_err(failed))
        .collect()
}

fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As tokio's `TcpListener::bind`: a restart need not wait for old connections.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
