//! Per-worker copies of the state every request writes.
//!
//! In: a worker index, set once by each data-plane thread when it starts.
//! Out: [`PerWorker`], which hands each thread its own copy of a value.
//!
//! Why: a write to memory another core wrote last waits for that core's cache line (the
//! line "bounces"). Counters, histograms, round-robin positions and reference counts
//! written by every request would bounce between the worker threads on each request;
//! with one copy per worker each core writes only its own lines, as nginx's worker
//! processes do. Readers that need the whole (a `/metrics` scrape) sum the copies.
//! Copies are still atomic, so a thread that is not a worker (tests, the controller) is
//! correct on copy 0, only not contention-free.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `index` for the rest of its life.
pub fn enter_worker(index: usize) {
    WORKER.set(index);
}

/// The current thread's worker index (0 for threads that are not workers).
pub fn worker_index() -> usize {
    WORKER.get()
}

/// One value per worker thread. Each copy is aligned to a cache line of its own.
pub struct PerWorker<T> {
    copies: Box<[CacheLine<T>]>,
}

/// A value aligned to (and padded to a multiple of) a 64-byte cache line, so whatever is
/// allocated next to it never shares its line.
#[repr(align(64))]
pub struct CacheLine<T>(pub T);

impl<T> PerWorker<T> {
    /// `workers` copies (at least one), each made by `make`.
    pub fn new(workers: usize, mut make: impl FnMut() -> T) -> Self {
        PerWorker {
            copies: (0..workers.max(1)).map(|_| CacheLine(make())).collect(),
        }
    }

    /// A copy of `U` per copy of `T`, made from it (worker `i`'s from worker `i`'s).
    pub fn map<U>(&self, mut make: impl FnMut(&T) -> U) -> PerWorker<U> {
        PerWorker {
            copies: self
                .copies
                .iter()
                .map(|line| CacheLine(make(&line.0)))
                .collect(),
        }
    }

    /// The current thread's copy.
    pub fn local(&self) -> &T {
        &self.copies[WORKER.get() % self.copies.len()].0
    }

    /// Every copy, for readers that sum them.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.copies.iter().map(|line| &line.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_thread_gets_its_own_copy() {
        let counts = PerWorker::new(2, || std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for worker in 0..2 {
                let counts = &counts;
                s.spawn(move || {
                    enter_worker(worker);
                    for _ in 0..=worker {
                        counts
                            .local()
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        let seen: Vec<usize> = counts
            .all()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn copies_never_share_a_cache_line() {
        let copies = PerWorker::new(3, || 0u8);
        let addrs: Vec<usize> = copies.all().map(|c| c as *const u8 as usize).collect();
        assert!(addrs.windows(2).all(|w| w[1] - w[0] >= 64), "{addrs:?}");
    }
}
