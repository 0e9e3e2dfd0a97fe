//! The top paths of one class of one route, in bounded memory: Space-Saving.
//!
//! In: one path per request ([`TopK::add`]).
//! Out: at most `k` paths with their counts ([`TopK::report`]). Space-Saving
//! (Metwally et al., 2005) keeps `k` counters; an unseen path, when all are taken,
//! replaces the smallest and inherits its count + 1, remembering that count as its
//! `error`. So every listed count is at most `error` above the truth, and any path seen
//! more than `requests / k` times is always listed.
//!
//! Memory: each entry costs its path's bytes plus [`ENTRY_OVERHEAD`], charged to a
//! process-wide [`Budget`]. Paths are kept to [`MAX_PATH_BYTES`], so a sketch holds at
//! most `k × (MAX_PATH_BYTES + ENTRY_OVERHEAD)` bytes. When the budget is spent, requests
//! are still counted in [`TopK::requests`] (class totals stay exact), but a sketch adds no
//! new entry, and replaces a path only with one that is no longer.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;

use super::report::{Class, ClassPaths, PathCount};

/// Longest path kept, in bytes; a longer one is kept as its first bytes (on a character
/// boundary) followed by `…`, and all paths sharing that beginning count as one.
pub const MAX_PATH_BYTES: usize = 256;

/// Bytes charged per entry besides its path: the entry itself and its hash-table slot,
/// with the slack of their tables' growth and the allocator's rounding, as measured by
/// `bench/paths-memory` (RSS growth over charged bytes).
pub const ENTRY_OVERHEAD: usize =
    2 * std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<usize>();

/// What a path's own allocation costs: its bytes rounded up to the allocator's 16.
fn key_cost(len: usize) -> usize {
    len.div_ceil(16) * 16
}

/// Bytes every sketch of the process may hold together.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            limit: limit_bytes,
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .is_ok()
    }

    /// Charges `bytes` even past the limit: for what must exist to count at all.
    pub fn force(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Returns `bytes` charged before.
    pub fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

struct Entry {
    path: Box<str>,
    count: u64,
    error: u64,
    last_seen: u64,
}

/// A Space-Saving sketch of at most `k` paths.
pub struct TopK {
    k: usize,
    entries: Vec<Entry>,
    /// Indexes into `entries`, by the hash of their path. Randomly keyed: clients
    /// choose paths, and must not be able to make them collide.
    table: HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    requests: u64,
    /// Bytes charged to the budget for the entries held.
    charged: usize,
}

fn kept(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= MAX_PATH_BYTES {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut cut = MAX_PATH_BYTES - '…'.len_utf8();
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &path[..cut]))
}

impl TopK {
    /// An empty sketch of `k` paths; allocates nothing until the first [`TopK::add`].
    pub fn new(k: usize) -> TopK {
        TopK {
            k: k.max(1),
            entries: Vec::new(),
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            requests: 0,
            charged: 0,
        }
    }

    /// Counts one request for `path` at `now` (unix seconds).
    pub fn add(&mut self, path: &str, now: u64, budget: &Budget) {
        self.requests += 1;
        let path = kept(path);
        let hash = self.hasher.hash_one(path.as_ref());
        let entries = &mut self.entries;
        if let Some(&i) = self.table.find(hash, |&i| *entries[i].path == *path) {
            let e = &mut entries[i];
            e.count += 1;
            e.last_seen = now;
            return;
        }
        if entries.len() < self.k {
            let cost = key_cost(path.len()) + ENTRY_OVERHEAD;
            if !budget.take(cost) {
                return;
            }
            self.charged += cost;
            entries.push(Entry {
                path: path.into(),
                count: 1,
                error: 0,
                last_seen: now,
            });
            let hasher = &self.hasher;
            self.table.insert_unique(hash, entries.len() - 1, |&j| {
                hasher.hash_one(&*entries[j].path)
            });
            return;
        }
        // Full: the smallest entry makes way, and its count becomes the newcomer's error.
        let min = (0..entries.len())
            .min_by_key(|&i| entries[i].count)
            .expect("a full sketch has entries");
        let (old, new) = (key_cost(entries[min].path.len()), key_cost(path.len()));
        if new > old {
            if !budget.take(new - old) {
                return;
            }
            self.charged += new - old;
        } else {
            budget.give(old - new);
            self.charged -= old - new;
        }
        let old_hash = self.hasher.hash_one(&*entries[min].path);
        if let Ok(slot) = self.table.find_entry(old_hash, |&i| i == min) {
            slot.remove();
        }
        let floor = entries[min].count;
        entries[min] = Entry {
            path: path.into(),
            count: floor + 1,
            error: floor,
            last_seen: now,
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, min, |&j| hasher.hash_one(&*entries[j].path));
    }

    /// Every request added, listed or not.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Bytes charged to the budget for this sketch: give them back when it goes.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// The listed paths, most requests first; `share` is over `route_requests`.
    pub fn report(&self, class: Class, route_requests: u64) -> ClassPaths {
        let mut order: Vec<&Entry> = self.entries.iter().collect();
        order.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
        let floor = if self.entries.len() >= self.k {
            self.entries.iter().map(|e| e.count).min().unwrap_or(0)
        } else {
            0
        };
        ClassPaths {
            class,
            requests: self.requests,
            floor,
            paths: order
                .into_iter()
                .map(|e| PathCount {
                    path: e.path.to_string(),
                    count: e.count,
                    error: e.error,
                    share: if route_requests == 0 {
                        0.0
                    } else {
                        e.count as f64 / route_requests as f64
                    },
                    last_seen: e.last_seen,
                })
                .collect(),
        }
    }

    /// What this sketch holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.entries.iter().map(|e| e.path.len()).sum::<usize>()
            + self.table.capacity() * (std::mem::size_of::<usize>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(top: &TopK) -> Vec<(String, u64, u64)> {
        top.report(Class::Legacy, top.requests())
            .paths
            .into_iter()
            .map(|p| (p.path, p.count, p.error))
            .collect()
    }

    #[test]
    fn counts_exactly_while_every_path_fits() {
        let budget = Budget::new(1 << 20);
        let mut top = TopK::new(4);
        for (i, p) in ["/a", "/b", "/a", "/c", "/a", "/b"].into_iter().enumerate() {
            top.add(p, 100 + i as u64, &budget);
        }
        let report = top.report(Class::Legacy, 12);
        assert_eq!(report.floor, 0, "not full: unlisted paths were never seen");
        assert_eq!(report.requests, 6);
        let rows: Vec<_> = report
            .paths
            .iter()
            .map(|p| (p.path.as_str(), p.count, p.error, p.share, p.last_seen))
            .collect();
        assert_eq!(
            rows,
            [
                ("/a", 3, 0, 0.25, 104),
                ("/b", 2, 0, 2.0 / 12.0, 105),
                ("/c", 1, 0, 1.0 / 12.0, 103)
            ]
        );
    }

    #[test]
    fn a_newcomer_replaces_the_smallest_and_inherits_its_count_as_error() {
        let budget = Budget::new(1 << 20);
        let mut top = TopK::new(2);
        for p in ["/a", "/a", "/b", "/c"] {
            top.add(p, 0, &budget);
        }
        assert_eq!(counts(&top), [("/a".into(), 2, 0), ("/c".into(), 2, 1)]);
        assert_eq!(top.report(Class::Legacy, 4).floor, 2);
        // /b again: it replaces /c (or /a: both 2), with error 2.
        top.add("/b", 0, &budget);
        assert_eq!(top.requests(), 5);
        let rows = counts(&top);
        assert!(rows.contains(&("/b".into(), 3, 2)), "{rows:?}");
    }

    #[test]
    fn frequent_paths_are_always_listed_and_counts_bound_the_truth() {
        let budget = Budget::new(1 << 24);
        let mut top = TopK::new(10);
        let mut truth = std::collections::HashMap::new();
        // Heavy hitters among a long tail of one-off paths.
        for i in 0..20_000u64 {
            let path = match i % 10 {
                0..=2 => "/home".to_string(),
                3..=4 => "/shop".to_string(),
                5 => "/cart".to_string(),
                _ => format!("/tail/{i}"),
            };
            *truth.entry(path.clone()).or_insert(0u64) += 1;
            top.add(&path, 0, &budget);
        }
        let rows = counts(&top);
        for (path, count, error) in &rows {
            let real = truth[path];
            assert!(
                count - error <= real && real <= *count,
                "{path}: {count}-{error} vs {real}"
            );
        }
        for heavy in ["/home", "/shop", "/cart"] {
            assert!(
                rows.iter().any(|r| r.0 == heavy),
                "{heavy} over n/k is listed: {rows:?}"
            );
        }
        assert_eq!(rows[0].0, "/home");
    }

    #[test]
    fn long_paths_are_kept_truncated() {
        let budget = Budget::new(1 << 20);
        let mut top = TopK::new(4);
        let long = format!("/{}", "é".repeat(300));
        top.add(&long, 0, &budget);
        top.add(&format!("{long}/other"), 0, &budget);
        let rows = counts(&top);
        assert_eq!(rows.len(), 1, "both share their first bytes: {rows:?}");
        assert!(rows[0].0.len() <= MAX_PATH_BYTES && rows[0].0.ends_with('…'));
        assert_eq!(rows[0].1, 2);
    }

    #[test]
    fn a_spent_budget_stops_new_entries_but_not_the_counting() {
        let budget = Budget::new(2 * (key_cost(2) + ENTRY_OVERHEAD));
        let mut top = TopK::new(10);
        for p in ["/a", "/b", "/c", "/a"] {
            top.add(p, 0, &budget);
        }
        assert_eq!(counts(&top), [("/a".into(), 2, 0), ("/b".into(), 1, 0)]);
        assert_eq!(top.requests(), 4, "the class total stays exact");
        assert_eq!(budget.used(), budget.limit());
        assert_eq!(top.charged(), budget.used());
    }

    #[test]
    fn the_charge_per_entry_is_what_the_readme_says() {
        assert_eq!(ENTRY_OVERHEAD, 96, "update the README's Memory paragraph");
        assert_eq!((key_cost(1), key_cost(16), key_cost(17)), (16, 16, 32));
    }

    #[test]
    fn memory_stays_bounded_under_a_million_distinct_paths() {
        let k = 100;
        let budget = Budget::new(usize::MAX);
        let mut top = TopK::new(k);
        for i in 0..1_000_000u64 {
            top.add(
                &format!("/attack/{i:032x}/{}", "x".repeat((i % 300) as usize)),
                0,
                &budget,
            );
        }
        let bound = k * (MAX_PATH_BYTES + ENTRY_OVERHEAD);
        assert!(top.heap_bytes() <= bound, "{} > {bound}", top.heap_bytes());
        assert!(budget.used() <= bound, "{} > {bound}", budget.used());
        assert_eq!(budget.used(), top.charged());
        assert_eq!(top.requests(), 1_000_000);
    }
}
