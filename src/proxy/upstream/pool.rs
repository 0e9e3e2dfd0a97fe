//! Idle upstream connections, kept per data-plane thread (nginx's per-worker
//! `keepalive`): nothing here is shared between threads.
//!
//! In: connections whose response ended cleanly ([`checkin`]), and the worker's tick
//! ([`sweep_idle`]).
//! Out: the most recently used live connection to an endpoint ([`checkout`]).

use std::cell::RefCell;
use std::io;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::Authority;
use tokio::net::TcpStream;

use super::transport::Conn;

/// Idle connections kept per endpoint and thread (nginx's `keepalive 128` per worker).
const MAX_IDLE_PER_ENDPOINT: usize = 128;

struct IdleConn {
    conn: Box<Conn>,
    expires: Instant,
}

struct Pool {
    /// By endpoint (`host:port`); a plain string key, hashed cheaply, as it is hashed
    /// twice per request.
    idle: rustc_hash::FxHashMap<Box<str>, Vec<IdleConn>>,
    /// The time of the last sweep, which idle timeouts count from: a connection may
    /// close up to one tick before its idle timeout, the safe side of the backend's own
    /// keep-alive timeout, and checking one in reads no clock.
    swept_at: Instant,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        idle: Default::default(),
        swept_at: Instant::now(),
    });
}

/// The most recently used idle connection to `endpoint` that is still open, if any.
pub(super) fn checkout(endpoint: &Authority, now: Instant) -> Option<Box<Conn>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.idle.get_mut(endpoint.as_str())?;
        while let Some(entry) = idle.pop() {
            if entry.expires > now && still_open(&entry.conn.stream) {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to its endpoint.
pub(super) fn checkin(conn: Box<Conn>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let expires = pool.swept_at + conn.idle;
        let key = conn.endpoint.as_str();
        if !pool.idle.contains_key(key) {
            pool.idle.insert(key.into(), Vec::new());
        }
        let Some(idle) = pool.idle.get_mut(key) else {
            return;
        };
        if idle.len() >= MAX_IDLE_PER_ENDPOINT {
            // The oldest goes: the busiest connections stay warm.
            idle.remove(0);
        }
        idle.push(IdleConn { conn, expires });
    });
}

/// Closes this thread's idle upstream connections whose idle timeout has passed; the
/// worker's housekeeping tick calls it.
pub fn sweep_idle(now: Instant) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.swept_at = now;
        pool.idle.retain(|_, conns| {
            conns.retain(|c| c.expires > now);
            !conns.is_empty()
        });
    });
}

/// Whether an idle connection can take a request: the peer has neither closed it nor
/// sent anything unasked. Costs no system call unless the socket was signalled readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
