//! The cap on connections to one FastCGI endpoint, across every worker thread.
//!
//! In: a request that needs a connection to a FastCGI endpoint, and connections that
//! close or come back idle.
//! Out: a [`Slot`] that lets one more connection exist (held by the connection until it
//! closes), or `None` when none freed up in time.
//!
//! Why a cap at all: PHP-FPM gives each open connection a worker process of its own
//! for as long as the connection stays open, busy or idle. A proxy that kept more
//! connections than the pool's `pm.max_children` would leave the extra ones waiting in
//! PHP-FPM's listen queue for a worker that never frees up. So connections are counted
//! per endpoint over the whole process, and a request beyond the cap waits, within the
//! connect timeout, for one. Idle connections are kept per worker thread (`pool`), and
//! a connection never leaves its thread, so each thread keeps its share of the cap
//! (the cap over the workers) for its own waiters, handing a finished connection to
//! the next of them still open; what it holds above its share, borrowed while other
//! threads were quiet, it closes when requests on other threads wait, freeing its slot
//! for them (`pool::checkin`). An idle connection is closed on the worker's tick while
//! any request waits.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// The connections of one endpoint.
#[derive(Debug)]
pub(super) struct Slots {
    /// The cap, as the route table last set it. Routes that share an endpoint share
    /// its count; the cap is the one their table set last.
    max: AtomicUsize,
    open: AtomicUsize,
    /// Requests waiting for a connection, on any thread.
    wanted: AtomicUsize,
    freed: Notify,
}

/// Leave for one open connection; it is given back when dropped. A connection never
/// leaves the worker thread that opened it, so neither does its slot.
#[derive(Debug)]
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            let key = Arc::as_ptr(&self.0) as usize;
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        });
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// How many data-plane workers share each cap (set once when they start).
static WORKERS: AtomicUsize = AtomicUsize::new(1);

/// Sets how many worker threads share each endpoint's cap.
pub fn set_workers(workers: usize) {
    WORKERS.store(workers.max(1), Ordering::Relaxed);
}

impl Slot {
    /// Whether this thread holds more connections to the endpoint than its share of the
    /// cap (the cap divided over the workers): the ones above it were borrowed from
    /// threads with less traffic, and go back when those have requests waiting.
    pub(super) fn over_share(&self) -> bool {
        let workers = WORKERS.load(Ordering::Relaxed);
        let max = self.0.max.load(Ordering::Relaxed);
        let index = crate::shard::worker_index() % workers;
        let share = max / workers + usize::from(index < max % workers);
        let held = HELD.with(|held| {
            held.borrow()
                .get(&(Arc::as_ptr(&self.0) as usize))
                .copied()
                .unwrap_or(0)
        });
        held > share
    }

    /// How many requests, on any thread, wait for a connection to this endpoint.
    pub(super) fn waiters(&self) -> usize {
        self.0.wanted.load(Ordering::Acquire)
    }
}

/// Every endpoint's slots, shared by the threads; each thread caches what it looked up.
static ALL: LazyLock<Mutex<FxHashMap<Box<str>, Arc<Slots>>>> = LazyLock::new(Default::default);

thread_local! {
    static CACHED: RefCell<FxHashMap<Box<str>, Arc<Slots>>> = RefCell::default();
    /// Connections open on this thread, by endpoint (the address of its `Slots`).
    static HELD: RefCell<FxHashMap<usize, usize>> = RefCell::default();
}

/// The slots of the endpoint with pool key `key`, capped at `max` from now on: one
/// count per endpoint, whatever its routes say (a new cap below the connections open
/// lets no new one open until enough have closed).
pub(super) fn of(key: &str, max: usize) -> Arc<Slots> {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if let Some(slots) = cached.get(key) {
            if slots.max.load(Ordering::Relaxed) != max {
                slots.max.store(max, Ordering::Relaxed);
            }
            return slots.clone();
        }
        let mut all = ALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots = match all.get(key) {
            Some(slots) => slots.clone(),
            None => {
                let slots = Arc::new(Slots {
                    max: AtomicUsize::new(max),
                    open: AtomicUsize::new(0),
                    wanted: AtomicUsize::new(0),
                    freed: Notify::new(),
                });
                // Endpoints come and go with pods: forget those nothing refers to any more.
                all.retain(|_, s| Arc::strong_count(s) > 1);
                all.insert(key.into(), slots.clone());
                slots
            }
        };
        slots.max.store(max, Ordering::Relaxed);
        cached.insert(key.into(), slots.clone());
        slots
    })
}

/// Forgets, on this thread, the endpoints with no connection open and nobody waiting,
/// so the maps do not grow with endpoint churn; the worker's tick calls it.
pub(super) fn sweep() {
    CACHED.with(|cached| {
        cached.borrow_mut().retain(|_, s| {
            s.open.load(Ordering::Acquire) > 0 || s.wanted.load(Ordering::Acquire) > 0
        });
    });
}

impl Slots {
    /// A slot if fewer than `max` connections are open.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::Acquire);
        while open < self.max.load(Ordering::Relaxed) {
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    HELD.with(|held| {
                        *held
                            .borrow_mut()
                            .entry(Arc::as_ptr(self) as usize)
                            .or_insert(0) += 1;
                    });
                    return Some(Slot(self.clone()));
                }
                Err(now) => open = now,
            }
        }
        None
    }

    /// Counts a request as waiting while `wait` runs (see [`Slot::waiters`]).
    pub(super) async fn waiting<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.wanted.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.wanted);
        wait.await
    }

    /// Waits up to `timeout` for a connection to close anywhere and takes its slot.
    pub(super) async fn take_freed(self: &Arc<Self>, timeout: Duration) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a slot freed in between still wakes us.
            freed.as_mut().enable();
            if let Some(slot) = self.try_take() {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_more_than_max_are_open_and_a_closed_one_frees_its_slot() {
        let slots = of("fastcgi|test-cap", 2);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none(), "the third must wait");
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take_freed(Duration::from_secs(20)).await })
        };
        tokio::task::yield_now().await;
        drop(a);
        let _c = waiter
            .await
            .unwrap()
            .expect("a closed connection lets the waiter in");
        let none = slots.take_freed(Duration::from_millis(10)).await;
        assert!(none.is_none(), "still two open: the wait times out");
    }

    #[test]
    fn routes_sharing_an_endpoint_share_its_count() {
        let two = of("fastcgi|test-shared", 2);
        let _a = two.try_take().unwrap();
        let _b = two.try_take().unwrap();
        let three = of("fastcgi|test-shared", 3);
        assert!(Arc::ptr_eq(&two, &three), "one count per endpoint");
        let _c = three.try_take().expect("the cap is now three");
        assert!(
            of("fastcgi|test-shared", 2).try_take().is_none(),
            "back to two: none"
        );
    }
}
