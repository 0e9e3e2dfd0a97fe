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
//! connect timeout, for one: idle connections are kept per worker thread (`pool`), so a
//! thread that checks a connection in while another thread has requests waiting closes
//! it instead, which frees its slot for the waiter; a waiter on the same thread gets the
//! connection itself, still open (`pool::checkin`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// The connections of one endpoint.
#[derive(Debug)]
pub(super) struct Slots {
    max: usize,
    open: AtomicUsize,
    /// Requests waiting for a connection, on any thread.
    wanted: AtomicUsize,
    freed: Notify,
}

/// Leave for one open connection; it is given back when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Slot {
    /// Whether a request anywhere waits for a connection to this endpoint.
    pub(super) fn wanted(&self) -> bool {
        self.0.wanted.load(Ordering::Acquire) > 0
    }
}

/// Every endpoint's slots, shared by the threads; each thread caches what it looked up.
static ALL: LazyLock<Mutex<FxHashMap<Box<str>, Arc<Slots>>>> = LazyLock::new(Default::default);

thread_local! {
    static CACHED: RefCell<FxHashMap<Box<str>, Arc<Slots>>> = RefCell::default();
}

/// The slots of the endpoint with pool key `key`, capped at `max`. A new `max` (the
/// route changed) starts a new count; connections under the old one keep theirs.
pub(super) fn of(key: &str, max: usize) -> Arc<Slots> {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if let Some(slots) = cached.get(key).filter(|s| s.max == max) {
            return slots.clone();
        }
        let mut all = ALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slots = match all.get(key).filter(|s| s.max == max) {
            Some(slots) => slots.clone(),
            None => {
                let slots = Arc::new(Slots {
                    max,
                    open: AtomicUsize::new(0),
                    wanted: AtomicUsize::new(0),
                    freed: Notify::new(),
                });
                all.insert(key.into(), slots.clone());
                slots
            }
        };
        cached.insert(key.into(), slots.clone());
        slots
    })
}

impl Slots {
    /// A slot if fewer than `max` connections are open.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::Acquire);
        while open < self.max {
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => open = now,
            }
        }
        None
    }

    /// Counts a request as waiting while `wait` runs (see [`Slot::wanted`]).
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
    fn a_new_cap_starts_a_new_count() {
        let two = of("fastcgi|test-recap", 2);
        let _held = two.try_take();
        let three = of("fastcgi|test-recap", 3);
        assert!(!Arc::ptr_eq(&two, &three));
        assert_eq!(three.open.load(Ordering::Acquire), 0);
    }
}
