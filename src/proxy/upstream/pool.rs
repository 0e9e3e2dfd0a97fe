//! Idle upstream connections, kept per data-plane thread (nginx's per-worker
//! `keepalive`): nothing here is shared between threads.
//!
//! In: connections whose response ended cleanly ([`checkin`]), and the worker's tick
//! ([`sweep_idle`]).
//! Out: the most recently used live connection to an endpoint ([`checkout`]).
//! A FastCGI connection coming back goes first to a request on this thread that waits
//! for one ([`wait_for_handoff`]), and is closed rather than kept while requests on
//! other threads wait (see `slots`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::oneshot;

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
    /// Requests on this thread waiting for a FastCGI connection, by pool key, oldest
    /// first.
    waiting: rustc_hash::FxHashMap<Box<str>, Waiting>,
}

/// The requests on one thread waiting for connections to one endpoint.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<oneshot::Sender<Box<Conn>>>,
    /// Handed a connection and not yet woken to take it: still counted among the
    /// endpoint's waiters, though no longer waiting.
    handed: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        idle: Default::default(),
        swept_at: Instant::now(),
        waiting: Default::default(),
    });
}

/// The most recently used idle connection to `endpoint` that is still open, if any.
pub(super) fn checkout(key: &str, now: Instant) -> Option<Box<Conn>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.idle.get_mut(key)?;
        while let Some(entry) = idle.pop() {
            if entry.expires > now && entry.conn.still_open() {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to its endpoint.
pub(super) fn checkin(mut conn: Box<Conn>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if let Some(slot) = &conn.slot {
            let (waiters, over_share) = (slot.waiters(), slot.over_share());
            if !conn.still_open() {
                // Closed, or bytes the backend sent unasked: not for the next request.
                return;
            }
            let (local, handed) = pool.waiting.get_mut(&*conn.key).map_or((0, 0), |waiting| {
                waiting.queue.retain(|w| !w.is_closed());
                (waiting.queue.len(), waiting.handed)
            });
            // Requests on other threads wait too. Theirs get a connection by its
            // closing, which frees its slot for them at the price of a reconnect: so a
            // thread keeps its share of the cap for its own waiters, and gives back what
            // it holds above it (see `Slot::over_share`).
            let remote = waiters.saturating_sub(local + handed);
            if remote > 0 && (local == 0 || over_share) {
                return;
            }
            if let Some(waiting) = pool.waiting.get_mut(&*conn.key) {
                while let Some(waiter) = waiting.queue.pop_front() {
                    conn.reused = true;
                    match waiter.send(conn) {
                        Ok(()) => {
                            waiting.handed += 1;
                            return;
                        }
                        // That request gave up waiting just now.
                        Err(back) => conn = back,
                    }
                }
            }
            if remote > 0 {
                return;
            }
        }
        let expires = pool.swept_at + conn.idle;
        let key = &*conn.key;
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
    super::slots::sweep();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.swept_at = now;
        pool.idle.retain(|_, conns| {
            // A FastCGI connection idle here while requests elsewhere wait for one is
            // closed, so one of them can open it.
            conns.retain(|c| {
                c.expires > now && c.conn.slot.as_ref().is_none_or(|s| s.waiters() == 0)
            });
            !conns.is_empty()
        });
        pool.waiting.retain(|_, waiting| {
            waiting.queue.retain(|w| !w.is_closed());
            !waiting.queue.is_empty() || waiting.handed > 0
        });
    });
}

/// Queues the calling request for the next FastCGI connection to `key` that is
/// checked in on this thread.
pub(super) fn wait_for_handoff(key: &str) -> oneshot::Receiver<Box<Conn>> {
    let (tx, rx) = oneshot::channel();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if !pool.waiting.contains_key(key) {
            pool.waiting.insert(key.into(), Waiting::default());
        }
        if let Some(waiting) = pool.waiting.get_mut(key) {
            waiting.queue.push_back(tx);
        }
    });
    rx
}

/// A request that waited took the connection handed to it (see [`wait_for_handoff`]).
pub(super) fn took_handoff(key: &str) {
    POOL.with(|pool| {
        if let Some(waiting) = pool.borrow_mut().waiting.get_mut(key) {
            waiting.handed = waiting.handed.saturating_sub(1);
        }
    });
}
