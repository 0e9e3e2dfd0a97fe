//! The last five minutes of every replica's `/traffic` counters, summed per route.
//!
//! In: each round's reports, one per replica that answered: counters that run from 0
//! since that replica started (its `started` changes when it restarts).
//! Out: per route, the requests and fallback requests of the window over every replica
//! that answered, the span the counts cover, and the replicas' legacy-paths sketches
//! merged. Pure: the caller brings the clock and the reports.
//!
//! A replica's part is its latest counters minus its oldest sample in the window. One
//! that started within the window counts from 0 at its start; one that vanished (or did
//! not answer this round) adds nothing; one running since before the window and seen
//! for the first time cannot be windowed yet: it is *warming*, and the round's totals
//! are incomplete.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::insight::distinct::Distinct;
use crate::insight::report::TrafficReport;

/// The span the share in `kubectl get` covers.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);

/// Samples kept per replica, about: older ones are thinned to this many over the window.
const SAMPLES_PER_WINDOW: u32 = 10;

/// Who a replica is from one round to the next: its pod, or its address.
pub type PeerKey = String;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    fallback: u64,
}

impl Counts {
    /// What was counted since `base`; a counter that went back without a restart is
    /// read as counting from 0.
    fn since(self, base: Counts) -> Counts {
        if self.requests >= base.requests && self.fallback >= base.fallback {
            Counts {
                requests: self.requests - base.requests,
                fallback: self.fallback - base.fallback,
            }
        } else {
            self
        }
    }
}

#[derive(Debug)]
struct Sample {
    at_ms: u64,
    routes: HashMap<Arc<str>, Counts>,
}

/// One replica run (one `started`) as seen in the window.
#[derive(Debug)]
struct History {
    started: u64,
    /// Oldest first; the last is the latest.
    samples: VecDeque<Sample>,
    /// The latest legacy-paths sketch of each route.
    sketches: HashMap<Arc<str>, Distinct>,
}

/// A route's sum over the replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTotals {
    /// Requests answered in the window.
    pub requests: u64,
    /// Of those, the ones the fallback answered.
    pub fallback: u64,
    /// Distinct legacy paths since the replicas started, all replicas merged.
    pub legacy: Distinct,
}

/// A round's sum over the replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Replicas whose counts were summed.
    pub replicas: u32,
    /// Replicas that answered but cannot be windowed yet (see the module docs).
    pub warming: u32,
    /// What the counts cover: the longest span of a summed replica.
    pub span: Duration,
    /// By `namespace/name`: every route a summed replica reported.
    pub routes: BTreeMap<String, RouteTotals>,
}

/// A legacy-paths sketch that did not parse: which replica, which route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSketch {
    /// The replica.
    pub peer: PeerKey,
    /// The route.
    pub route: String,
}

/// The samples of every replica over the window.
#[derive(Debug)]
pub struct Window {
    span_ms: u64,
    /// Kept samples are at least this far apart (but the latest).
    spacing_ms: u64,
    /// How much older than the window the oldest kept sample may be: half a round, so
    /// the sample taken one window ago stays the baseline despite timing jitter.
    slack_ms: u64,
    now_ms: u64,
    replicas: HashMap<PeerKey, History>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Window {
    /// A window of `span`, sampled once per `interval`.
    pub fn new(span: Duration, interval: Duration) -> Window {
        let spacing_ms = millis(span) / u64::from(SAMPLES_PER_WINDOW);
        Window {
            span_ms: millis(span),
            spacing_ms,
            slack_ms: millis(interval).max(spacing_ms) / 2,
            now_ms: 0,
            replicas: HashMap::new(),
        }
    }

    /// Forgets every sample (leadership lost: the next holder starts afresh).
    pub fn clear(&mut self) {
        self.replicas.clear();
    }

    /// Whether no replica has a sample.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Records a round at `now_ms` (unix milliseconds) with the reports of the replicas
    /// that answered, and drops what fell out of the window. Returns the sketches that
    /// did not parse (counted as empty).
    pub fn round(&mut self, now_ms: u64, reports: Vec<(PeerKey, TrafficReport)>) -> Vec<BadSketch> {
        self.now_ms = now_ms;
        let mut bad = Vec::new();
        for (peer, report) in reports {
            let history = self
                .replicas
                .entry(peer.clone())
                .or_insert_with(|| History {
                    started: report.started,
                    samples: VecDeque::new(),
                    sketches: HashMap::new(),
                });
            if history.started != report.started {
                // Restarted: its counters begin again from 0.
                history.started = report.started;
                history.samples.clear();
            }
            history.record(now_ms, report, self.spacing_ms, &peer, &mut bad);
        }
        let oldest = now_ms.saturating_sub(self.span_ms + self.slack_ms);
        self.replicas.retain(|_, h| {
            while h.samples.front().is_some_and(|s| s.at_ms < oldest) {
                h.samples.pop_front();
            }
            !h.samples.is_empty()
        });
        bad
    }

    /// The sum over the replicas that answered in the last round.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        let window_start = self.now_ms.saturating_sub(self.span_ms);
        for history in self.replicas.values() {
            let Some(latest) = history.samples.back().filter(|s| s.at_ms == self.now_ms) else {
                continue;
            };
            let started_ms = history.started.saturating_mul(1000);
            let (base, from_ms) = if started_ms >= window_start {
                (None, started_ms.min(self.now_ms))
            } else if history.samples.len() >= 2 {
                let oldest = &history.samples[0];
                (Some(&oldest.routes), oldest.at_ms)
            } else {
                totals.warming += 1;
                continue;
            };
            totals.replicas += 1;
            totals.span = totals
                .span
                .max(Duration::from_millis(self.now_ms - from_ms));
            for (route, now) in &latest.routes {
                let before = base.and_then(|b| b.get(route)).copied().unwrap_or_default();
                let counted = now.since(before);
                let sum = totals.routes.entry(route.to_string()).or_default();
                sum.requests += counted.requests;
                sum.fallback += counted.fallback;
                if let Some(sketch) = history.sketches.get(route) {
                    sum.legacy.merge(sketch);
                }
            }
        }
        totals
    }
}

impl History {
    fn record(
        &mut self,
        now_ms: u64,
        report: TrafficReport,
        spacing_ms: u64,
        peer: &str,
        bad: &mut Vec<BadSketch>,
    ) {
        let previous = self.samples.back().map(|s| &s.routes);
        let mut routes = HashMap::with_capacity(report.routes.len());
        let mut sketches = HashMap::with_capacity(report.routes.len());
        for r in report.routes {
            // The same name in every sample of a replica shares one allocation.
            let name = previous
                .and_then(|p| p.get_key_value(r.route.as_str()))
                .map_or_else(|| Arc::from(r.route.as_str()), |(k, _)| k.clone());
            let sketch = Distinct::from_hex(&r.legacy_paths).unwrap_or_else(|_| {
                bad.push(BadSketch {
                    peer: peer.to_string(),
                    route: r.route.clone(),
                });
                Distinct::default()
            });
            sketches.insert(name.clone(), sketch);
            let counts = Counts {
                requests: r.requests,
                fallback: r.fallback,
            };
            routes.insert(name, counts);
        }
        // Thinning: the latest sample replaces the one before it while those two are
        // closer than the spacing, so a short interval keeps ~10 samples, not hundreds.
        let n = self.samples.len();
        if n >= 2 && self.samples[n - 1].at_ms - self.samples[n - 2].at_ms < spacing_ms {
            self.samples.pop_back();
        }
        self.samples.push_back(Sample {
            at_ms: now_ms,
            routes,
        });
        self.sketches = sketches;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    /// The rounds' clock starts here (unix ms); replicas' `started` is in seconds.
    const T0: u64 = 1_700_000_000_000;

    fn at(minutes: f64) -> u64 {
        T0.checked_add_signed((minutes * MIN as f64) as i64)
            .unwrap()
    }

    fn started(minutes: f64) -> u64 {
        at(minutes) / 1000
    }

    /// A replica's report, from a JSON fixture as `/traffic` serves it:
    /// `(route, requests, fallback)` per route, every route's legacy paths `paths`.
    fn report(started: u64, routes: &[(&str, u64, u64)], paths: &[&str]) -> TrafficReport {
        let mut sketch = Distinct::default();
        for p in paths {
            sketch.add(p);
        }
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .map(|(route, requests, fallback)| {
                serde_json::json!({
                    "route": route, "requests": requests, "fallback": fallback,
                    "legacyPaths": sketch.to_hex(),
                })
            })
            .collect();
        let json =
            serde_json::json!({"replica": "fallthrough-abc", "started": started, "routes": routes});
        serde_json::from_value(json).expect("the fixture is a TrafficReport")
    }

    type Round<'a> = (f64, Vec<(&'a str, TrafficReport)>);

    fn run(rounds: Vec<Round<'_>>) -> Totals {
        let mut w = Window::new(WINDOW, Duration::from_secs(60));
        for (minutes, reports) in rounds {
            let reports = reports
                .into_iter()
                .map(|(k, r)| (k.to_string(), r))
                .collect();
            assert_eq!(w.round(at(minutes), reports), []);
        }
        w.totals()
    }

    fn shop(t: &Totals) -> (u64, u64) {
        t.routes
            .get("web/shop")
            .map_or((0, 0), |r| (r.requests, r.fallback))
    }

    /// (what, rounds, replicas summed, warming, span in seconds, web/shop requests and fallback)
    type Row<'a> = (&'a str, Vec<Round<'a>>, u32, u32, u64, (u64, u64));

    #[test]
    fn sums_the_window_over_replicas() {
        let old = started(-60.0);
        let shop = |req, fb| report(old, &[("web/shop", req, fb)], &[]);
        let rows: Vec<Row> = vec![
            (
                "steady: latest minus the sample one window ago, over both replicas",
                (0..=6)
                    .map(|m| {
                        let m = m as u64;
                        (
                            m as f64,
                            vec![
                                ("a", shop(100 + 10 * m, 5 * m)),
                                ("b", shop(50 + 30 * m, 0)),
                            ],
                        )
                    })
                    .collect(),
                2,
                0,
                300,
                // a: 160-110 = 50, 30-5 = 25; b: 230-80 = 150, 0.
                (200, 25),
            ),
            (
                "a replica that restarted within the window counts from 0 at its start",
                vec![
                    (0.0, vec![("a", shop(1000, 500)), ("b", shop(10, 1))]),
                    (1.0, vec![("a", shop(1100, 550)), ("b", shop(20, 2))]),
                    (
                        2.0,
                        vec![
                            ("a", report(started(1.5), &[("web/shop", 40, 10)], &[])),
                            ("b", shop(30, 3)),
                        ],
                    ),
                ],
                2,
                0,
                120,
                // a: 40 and 10 since its restart; b: 30-10, 3-1.
                (60, 12),
            ),
            (
                "a new replica that started within the window counts from 0",
                vec![
                    (0.0, vec![("a", shop(100, 0))]),
                    (1.0, vec![("a", shop(110, 0))]),
                    (
                        2.0,
                        vec![
                            ("a", shop(120, 0)),
                            ("b", report(started(1.8), &[("web/shop", 7, 7)], &[])),
                        ],
                    ),
                ],
                2,
                0,
                120,
                (27, 7),
            ),
            (
                "a replica gone (or not answering) stops contributing",
                vec![
                    (0.0, vec![("a", shop(100, 10)), ("b", shop(100, 90))]),
                    (1.0, vec![("a", shop(200, 20)), ("b", shop(200, 180))]),
                    (2.0, vec![("a", shop(300, 30))]),
                ],
                1,
                0,
                120,
                (200, 20),
            ),
            (
                "just after start: the window is the real span",
                vec![
                    (
                        0.0,
                        vec![("a", report(started(-0.5), &[("web/shop", 3, 1)], &[]))],
                    ),
                    (
                        1.0,
                        vec![("a", report(started(-0.5), &[("web/shop", 8, 2)], &[]))],
                    ),
                ],
                1,
                0,
                90,
                (8, 2),
            ),
            (
                "first seen, running since before the window: warming, not summed",
                vec![(
                    0.0,
                    vec![
                        ("a", shop(1000, 100)),
                        ("b", report(started(-1.0), &[("web/shop", 4, 4)], &[])),
                    ],
                )],
                1,
                1,
                60,
                (4, 4),
            ),
            (
                "a second sample ends the warming, over the one minute seen",
                vec![
                    (0.0, vec![("a", shop(1000, 100))]),
                    (1.0, vec![("a", shop(1060, 160))]),
                ],
                1,
                0,
                60,
                (60, 60),
            ),
            (
                "no traffic in the window: the route is there with 0 requests",
                vec![
                    (0.0, vec![("a", shop(500, 50))]),
                    (3.0, vec![("a", shop(500, 50))]),
                ],
                1,
                0,
                180,
                (0, 0),
            ),
            (
                "a counter that went back without a restart counts from 0",
                vec![
                    (0.0, vec![("a", shop(500, 50))]),
                    (1.0, vec![("a", shop(20, 5))]),
                ],
                1,
                0,
                60,
                (20, 5),
            ),
        ];
        for (what, rounds, replicas, warming, span, want) in rows {
            let t = run(rounds);
            assert_eq!(
                (t.replicas, t.warming, t.span.as_secs(), self::shop(&t)),
                (replicas, warming, span, want),
                "{what}"
            );
        }
    }

    #[test]
    fn samples_older_than_the_window_are_dropped_and_short_intervals_thinned() {
        let mut w = Window::new(WINDOW, Duration::from_secs(1));
        let old = started(-60.0);
        for s in 0..=600u64 {
            let r = report(old, &[("web/shop", s, s / 2)], &[]);
            w.round(T0 + s * 1000, vec![("a".into(), r)]);
        }
        let h = &w.replicas["a"];
        assert!(
            h.samples.len() <= SAMPLES_PER_WINDOW as usize + 2,
            "{}",
            h.samples.len()
        );
        let t = w.totals();
        // The oldest kept sample is within half a thinning step of the window's start.
        assert!((285..=315).contains(&t.span.as_secs()), "{:?}", t.span);
        assert_eq!(shop(&t).0, t.span.as_secs());

        // Ten minutes without an answer: the replica's history is gone.
        w.round(T0 + 1_300_000, vec![]);
        assert!(w.is_empty());
    }

    #[test]
    fn legacy_paths_merge_across_replicas_and_bad_sketches_are_reported() {
        let mut w = Window::new(WINDOW, Duration::from_secs(60));
        let s = started(-1.0);
        let a = report(s, &[("web/shop", 3, 0)], &["/a.php", "/b.php"]);
        let b = report(s, &[("web/shop", 3, 0)], &["/b.php", "/c.php"]);
        let mut broken = report(s, &[("web/shop", 1, 0)], &[]);
        broken.routes[0].legacy_paths = "zz".into();
        let bad = w.round(
            at(0.0),
            vec![("a".into(), a), ("b".into(), b), ("c".into(), broken)],
        );
        assert_eq!(
            bad,
            [BadSketch {
                peer: "c".into(),
                route: "web/shop".into()
            }]
        );
        let t = w.totals();
        assert_eq!(t.replicas, 3);
        assert_eq!(t.routes["web/shop"].legacy.estimate(), 3);
        assert_eq!(t.routes["web/shop"].requests, 7);
    }

    #[test]
    fn a_route_only_some_replicas_report_sums_what_they_have() {
        let s = started(-1.0);
        let t = run(vec![(
            0.0,
            vec![
                (
                    "a",
                    report(s, &[("web/shop", 4, 1), ("web/blog", 2, 2)], &[]),
                ),
                ("b", report(s, &[("web/shop", 6, 1)], &[])),
            ],
        )]);
        assert_eq!(shop(&t), (10, 2));
        assert_eq!(
            (t.routes["web/blog"].requests, t.routes["web/blog"].fallback),
            (2, 2)
        );
    }
}
