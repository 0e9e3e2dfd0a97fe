//! One route's request-path series, owned by the route rather than by a metric vector.
//!
//! In: what the proxy counts per request on a route (responses, fallbacks, upstream
//! attempts and errors, durations), each into the current worker's copy.
//! Out: the route's series as Prometheus text, summed over the copies, added to the
//! families of a scrape ([`Families`]) for as long as the route is served.
//!
//! Why owned: a route that leaves the table must leave `/metrics`, and a request still
//! in flight on the old table must not bring its series back. With prometheus's vectors
//! a late `with_label_values` re-creates a removed child, forever; here the series live
//! in the route's [`RouteMetrics`], which a scrape sees only while the route is served
//! (see `Metrics::serve`), so a late write lands in memory nobody exports and is freed
//! with the last request that holds it. Counters are fixed slots exported even at zero
//! (so `rate()` works at once); a histogram is allocated on its first observation, so an
//! idle route costs a few hundred bytes, not a set of histograms per worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use prometheus::proto::MetricType;

use super::{DURATION_BUCKETS, SELF_BACKEND};
use crate::routes::{Answerer, CutOver, Route};
use crate::shard::PerWorker;

/// Statuses whose response counters exist from the start, at 0 (nearly all of this
/// product's traffic); other statuses get a series when first counted.
const COMMON_CODES: [u16; 2] = [200, 404];

/// `fallthrough_fallbacks_total` reasons, in slot order.
const FALLBACK_REASONS: [&str; 4] = ["status", "error", "remembered", "skip_primary"];
/// `fallthrough_fallbacks_skipped_total` reasons, in slot order.
const SKIPPED_REASONS: [&str; 2] = ["body_too_large", "replay_budget"];
const REMEMBERED: usize = 2;
const SKIP_PRIMARY: usize = 3;

/// Backend slots: primary, fallback, and fallthrough's own answers.
const BACKENDS: [&str; 3] = ["primary", "fallback", SELF_BACKEND];
const OWN: usize = 2;

fn slot(b: Answerer) -> usize {
    match b {
        Answerer::Primary => 0,
        Answerer::Fallback => 1,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counts stay usable if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One route's series: its labels and a copy of its counts per worker.
pub struct RouteMetrics {
    namespace: String,
    name: String,
    /// `false` for the series of requests no route took (namespace="" route=""): only
    /// fallthrough's own answers, no fixed series.
    routed: bool,
    shape: Mutex<Shape>,
    copies: PerWorker<Counts>,
}

/// What of a route's spec shows in its series; changes with the spec while the route
/// stays.
#[derive(Clone, PartialEq)]
struct Shape {
    /// The `service` label of each backend's responses.
    services: [String; 2],
    /// Whether the route can take these ways to the fallback (`rememberFallbacks`, a
    /// `skipPrimary` prefix): only then are their series exported.
    remembered: bool,
    skip_primary: bool,
}

impl Shape {
    fn of(route: &Route) -> Shape {
        Shape {
            services: [route.primary.name.clone(), route.fallback.name.clone()],
            remembered: route.remember.is_some(),
            skip_primary: route
                .cut_over
                .iter()
                .any(|(_, rule)| *rule == CutOver::SkipPrimary),
        }
    }
}

/// One worker's counts of one route.
#[derive(Default)]
struct Counts {
    /// `requests_total` per backend (primary, fallback) for [`COMMON_CODES`].
    common: [[AtomicU64; COMMON_CODES.len()]; 2],
    fallbacks: [AtomicU64; FALLBACK_REASONS.len()],
    skipped: [AtomicU64; SKIPPED_REASONS.len()],
    upstream_duration: [OnceLock<Arc<Hist>>; 2],
    request_duration: OnceLock<Arc<Hist>>,
    /// The label sets that take a lookup: other status codes, error kinds.
    rare: Mutex<Rare>,
}

#[derive(Default)]
struct Rare {
    /// `requests_total` by (backend slot, code), for codes not in [`COMMON_CODES`].
    responses: HashMap<(usize, u16), u64>,
    /// `upstream_errors_total` by (backend slot, kind): a handful of kinds, scanned.
    errors: Vec<(usize, String, u64)>,
}

/// A duration histogram over [`DURATION_BUCKETS`]: a count per bucket (the last one past
/// the largest bound) and the sum. The total count is the buckets' sum, so the two
/// always agree in a scrape.
pub(super) struct Hist {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_bits: AtomicU64,
}

impl Hist {
    fn new() -> Self {
        Hist {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn observe(&self, seconds: f64) {
        let i = DURATION_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        // Each copy is written by one worker: the loop runs once.
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }
}

fn lazy(h: &OnceLock<Arc<Hist>>) -> &Arc<Hist> {
    h.get_or_init(|| Arc::new(Hist::new()))
}

impl RouteMetrics {
    /// A route's series, at zero, in `copies` per-worker copies.
    pub(super) fn new(route: &Route, copies: usize) -> Self {
        RouteMetrics {
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            routed: true,
            shape: Mutex::new(Shape::of(route)),
            copies: PerWorker::new(copies, Counts::default),
        }
    }

    /// The series of responses no route took.
    pub(super) fn unrouted(copies: usize) -> Self {
        RouteMetrics {
            namespace: String::new(),
            name: String::new(),
            routed: false,
            shape: Mutex::new(Shape {
                services: Default::default(),
                remembered: false,
                skip_primary: false,
            }),
            copies: PerWorker::new(copies, Counts::default),
        }
    }

    /// The route stays with `route`'s spec: its counts are kept, but a series whose
    /// labels the spec changed goes (a backend's new Service starts its responses at 0),
    /// and so does a way to the fallback the route no longer has.
    pub(super) fn reshape(&self, route: &Route) {
        let next = Shape::of(route);
        let mut shape = lock(&self.shape);
        if *shape == next {
            return;
        }
        for counts in self.copies.all() {
            for b in 0..2 {
                if shape.services[b] != next.services[b] {
                    counts.common[b]
                        .iter()
                        .for_each(|c| c.store(0, Ordering::Relaxed));
                    lock(&counts.rare).responses.retain(|(s, _), _| *s != b);
                }
            }
            if !next.remembered {
                counts.fallbacks[REMEMBERED].store(0, Ordering::Relaxed);
            }
            if !next.skip_primary {
                counts.fallbacks[SKIP_PRIMARY].store(0, Ordering::Relaxed);
            }
        }
        *shape = next;
    }

    /// (namespace, name), the order of a scrape.
    pub(super) fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn local(&self) -> &Counts {
        self.copies.local()
    }

    /// A response from `backend` reached the client with status `code`.
    pub fn response(&self, backend: Answerer, code: http::StatusCode) {
        let counts = self.local();
        match COMMON_CODES.iter().position(|c| *c == code.as_u16()) {
            Some(i) => {
                counts.common[slot(backend)][i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                *lock(&counts.rare)
                    .responses
                    .entry((slot(backend), code.as_u16()))
                    .or_default() += 1
            }
        }
    }

    /// fallthrough answered the client itself (an upstream error, no route).
    pub fn own_response(&self, code: &str) {
        let code = code.parse().unwrap_or_default();
        *lock(&self.local().rare)
            .responses
            .entry((OWN, code))
            .or_default() += 1;
    }

    /// One upstream attempt took `elapsed` to produce a response head (or fail).
    pub fn upstream_attempt(&self, backend: Answerer, elapsed: Duration) {
        lazy(&self.local().upstream_duration[slot(backend)]).observe(elapsed.as_secs_f64());
    }

    /// An upstream attempt failed.
    pub fn upstream_error(&self, backend: Answerer, kind: &str) {
        let (b, mut rare) = (slot(backend), lock(&self.local().rare));
        match rare
            .errors
            .iter_mut()
            .find(|(s, k, _)| *s == b && k == kind)
        {
            Some((_, _, n)) => *n += 1,
            None => rare.errors.push((b, kind.to_string(), 1)),
        }
    }

    fn fallback(&self, reason: usize) {
        self.local().fallbacks[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// The request went on to the fallback because of the primary's status.
    pub fn fallback_on_status(&self) {
        self.fallback(0);
    }

    /// The request went on to the fallback because the primary was unreachable.
    pub fn fallback_on_error(&self) {
        self.fallback(1);
    }

    /// The request went straight to the fallback: its path was remembered.
    pub fn fallback_remembered(&self) {
        self.fallback(REMEMBERED);
    }

    /// The request went straight to the fallback: a `skipPrimary` prefix.
    pub fn fallback_skip_primary(&self) {
        self.fallback(SKIP_PRIMARY);
    }

    /// The request would have gone on, but its body was over `maxReplayBytes`.
    pub fn fallback_skipped_body_too_large(&self) {
        self.local().skipped[0].fetch_add(1, Ordering::Relaxed);
    }

    /// The request would have gone on, but the replay budget was spent when it came.
    pub fn fallback_skipped_replay_budget(&self) {
        self.local().skipped[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts timing a whole request; the time is recorded when the timer is dropped.
    pub fn request_timer(&self, started: Instant) -> RequestTimer {
        RequestTimer {
            started,
            histogram: lazy(&self.local().request_duration).clone(),
        }
    }

    /// Adds this route's series, summed over the copies, to a scrape.
    pub(super) fn export(&self, into: &mut Families) {
        let shape = lock(&self.shape).clone();
        let (ns, name) = (self.namespace.as_str(), self.name.as_str());
        let sum = |f: &dyn Fn(&Counts) -> u64| -> u64 { self.copies.all().map(f).sum() };
        let mut responses: HashMap<(usize, u16), u64> = HashMap::new();
        let mut errors: HashMap<(usize, String), u64> = HashMap::new();
        for counts in self.copies.all() {
            let rare = lock(&counts.rare);
            for (k, n) in &rare.responses {
                *responses.entry(*k).or_default() += n;
            }
            for (b, kind, n) in &rare.errors {
                *errors.entry((*b, kind.clone())).or_default() += n;
            }
        }
        let service = |b: usize| shape.services.get(b).map_or("", String::as_str);
        let mut request = |b: usize, code: u16, n: u64| {
            let code = code.to_string();
            into.push(
                REQUESTS,
                counter(
                    &[
                        ("backend", BACKENDS[b]),
                        ("code", &code),
                        ("namespace", ns),
                        ("route", name),
                        ("service", service(b)),
                    ],
                    n,
                ),
            );
        };
        if self.routed {
            for b in 0..2 {
                for (i, code) in COMMON_CODES.into_iter().enumerate() {
                    request(b, code, sum(&|c| c.common[b][i].load(Ordering::Relaxed)));
                }
            }
        }
        let mut responses: Vec<_> = responses.into_iter().collect();
        responses.sort_unstable();
        for ((b, code), n) in responses {
            request(b, code, n);
        }
        if !self.routed {
            return;
        }
        for (i, reason) in FALLBACK_REASONS.into_iter().enumerate() {
            let shown = match i {
                REMEMBERED => shape.remembered,
                SKIP_PRIMARY => shape.skip_primary,
                _ => true,
            };
            if shown {
                let n = sum(&|c| c.fallbacks[i].load(Ordering::Relaxed));
                let labels = [("namespace", ns), ("reason", reason), ("route", name)];
                into.push(FALLBACKS, counter(&labels, n));
            }
        }
        for (i, reason) in SKIPPED_REASONS.into_iter().enumerate() {
            let n = sum(&|c| c.skipped[i].load(Ordering::Relaxed));
            let labels = [("namespace", ns), ("reason", reason), ("route", name)];
            into.push(SKIPPED, counter(&labels, n));
        }
        let mut errors: Vec<_> = errors.into_iter().collect();
        errors.sort_unstable();
        for ((b, kind), n) in errors {
            let labels = [
                ("backend", BACKENDS[b]),
                ("kind", kind.as_str()),
                ("namespace", ns),
                ("route", name),
            ];
            into.push(UPSTREAM_ERRORS, counter(&labels, n));
        }
        for (b, backend) in BACKENDS[..2].iter().enumerate() {
            let copies = self
                .copies
                .all()
                .filter_map(|c| c.upstream_duration[b].get());
            if let Some(h) = histogram(copies) {
                let labels = [("backend", *backend), ("namespace", ns), ("route", name)];
                into.push(UPSTREAM_DURATION, with_labels(h, &labels));
            }
        }
        if let Some(h) = histogram(self.copies.all().filter_map(|c| c.request_duration.get())) {
            let labels = [("namespace", ns), ("route", name)];
            into.push(REQUEST_DURATION, with_labels(h, &labels));
        }
    }
}

/// A scrape's request-path families as Prometheus text, filled route by route: written
/// straight to text, since 10,000 routes' series as prometheus's structures would take
/// several times the text's size for the length of a scrape.
#[derive(Default)]
pub(super) struct Families {
    text: [String; 6],
}

const REQUESTS: usize = 0;
const FALLBACKS: usize = 1;
const SKIPPED: usize = 2;
const UPSTREAM_DURATION: usize = 3;
const REQUEST_DURATION: usize = 4;
const UPSTREAM_ERRORS: usize = 5;

/// One series: its labels (`a="x",b="y"`) and value.
enum Sample {
    Counter(String, u64),
    Histogram(String, Summed),
}

/// A histogram summed over the copies: per-bucket counts (the last past every bound) and sum.
struct Summed {
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
}

impl Families {
    fn push(&mut self, family: usize, sample: Sample) {
        use std::fmt::Write;
        let name = super::REQUEST_FAMILIES[family].0;
        let out = &mut self.text[family];
        // Writing to a String cannot fail.
        let _ = match sample {
            Sample::Counter(labels, n) => writeln!(out, "{name}{{{labels}}} {n}"),
            Sample::Histogram(labels, h) => {
                let mut cumulative = 0;
                for (le, n) in DURATION_BUCKETS.iter().zip(h.counts) {
                    cumulative += n;
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                let count: u64 = h.counts.iter().sum();
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                writeln!(out, "{name}_count{{{labels}}} {count}")
            }
        };
    }

    /// Appends the families with any series, with their `# HELP` and `# TYPE` lines.
    pub(super) fn write(self, out: &mut Vec<u8>) {
        for ((name, help, kind, _), text) in super::REQUEST_FAMILIES.iter().zip(self.text) {
            if text.is_empty() {
                continue;
            }
            let kind = match kind {
                MetricType::HISTOGRAM => "histogram",
                _ => "counter",
            };
            out.extend_from_slice(
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes(),
            );
            out.extend_from_slice(text.as_bytes());
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

fn counter(pairs: &[(&str, &str)], n: u64) -> Sample {
    Sample::Counter(labels(pairs), n)
}

fn with_labels(h: Summed, pairs: &[(&str, &str)]) -> Sample {
    Sample::Histogram(labels(pairs), h)
}

/// The sum of some copies of a histogram; `None` if none was ever observed.
fn histogram<'a>(copies: impl Iterator<Item = &'a Arc<Hist>>) -> Option<Summed> {
    let mut summed = Summed {
        counts: [0; DURATION_BUCKETS.len() + 1],
        sum: 0.0,
    };
    let mut any = false;
    for h in copies {
        any = true;
        for (total, c) in summed.counts.iter_mut().zip(&h.counts) {
            *total += c.load(Ordering::Relaxed);
        }
        summed.sum += f64::from_bits(h.sum_bits.load(Ordering::Relaxed));
    }
    any.then_some(summed)
}

/// Observes a whole request's duration once, on drop (after the last byte of the
/// response was written, or when the client went away). Holds its histogram, so a
/// reload during a long download still records into the right one.
pub struct RequestTimer {
    started: Instant,
    histogram: Arc<Hist>,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
