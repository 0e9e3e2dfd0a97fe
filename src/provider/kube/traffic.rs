//! `status.traffic` of every route: the share of the last five minutes' requests the
//! fallback served over all replicas, written by the Lease holder only.
//!
//! In: leadership, the routes the index knows, and once per `--traffic-interval` every
//! ready replica's `GET /traffic` (found through the metrics Service's EndpointSlices).
//! Out: JSON merge patches of `status.traffic` alone (the conditions `status.rs` writes
//! are other keys of `status`: neither patch touches the other's), bounded three ways:
//! per route at most once an interval and only when what `kubectl get` shows moved
//! ([`should_write`]); at most [`WRITES_PER_SECOND`] writes a second, [`CONCURRENT_WRITES`]
//! at once; and a refused or failed write (429, 5xx, no answer) ends the round's writes,
//! the rest waiting for the next round, so an API server shedding load is not pressed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::{watch, Mutex};

use super::peers::{self, Peer, PeerError};
use super::window::{self, PeerKey, RouteTotals, Totals, Window};
use crate::api::{FallbackRoute, TrafficStatus};
use crate::index::cluster::ObjKey;
use crate::insight::report::TrafficReport;

/// Status writes a second, over all routes.
pub const WRITES_PER_SECOND: u32 = 10;
/// Status writes in flight at once.
pub const CONCURRENT_WRITES: usize = 4;
/// How long one peer may take to answer `/traffic`.
const PEER_DEADLINE: Duration = Duration::from_secs(2);
/// Peers asked at once.
const CONCURRENT_PEERS: usize = 8;
/// A failing peer (or EndpointSlice list) is logged as a warning at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5 * 60);

/// Where the peers are and how often to ask them (`--peers-service` and friends).
#[derive(Clone, Debug)]
pub struct TrafficOptions {
    /// The metrics Service whose EndpointSlices list the replicas' admin ports.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// How often the Lease holder gathers and (at most) writes.
    pub interval: Duration,
}

/// What was last written for a route, to judge whether the next figures are news.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The round it was written in.
    pub at: Instant,
    /// The share in basis points; `None` is `-`.
    pub share: Option<u32>,
    /// The distinct legacy paths estimate.
    pub legacy_paths: u64,
    /// Replicas summed.
    pub replicas: u32,
}

/// Whether `next` is worth a write after `last`: at most once an interval, and only when
/// the share moved by a percentage point or more (or to or from `-`), the replicas
/// summed changed, or the legacy paths moved materially (by 1 below 20, else by 5%:
/// about the sketch's own error). Request counts and the window alone are not news.
pub fn should_write(last: Option<&Shown>, next: &Shown, interval: Duration) -> bool {
    let Some(last) = last else {
        return true;
    };
    if next.at.saturating_duration_since(last.at) < interval {
        return false;
    }
    let share_moved = match (last.share, next.share) {
        (Some(a), Some(b)) => a.abs_diff(b) >= 100,
        (a, b) => a.is_some() != b.is_some(),
    };
    let (a, b) = (last.legacy_paths, next.legacy_paths);
    let paths_moved = a.abs_diff(b) * 20 >= a.max(b).max(20);
    share_moved || paths_moved || last.replicas != next.replicas
}

/// The share in basis points (`None` without requests).
fn share_bp(requests: u64, fallback: u64) -> Option<u32> {
    if requests == 0 {
        return None;
    }
    let bp = (u128::from(fallback.min(requests)) * 10_000 + u128::from(requests) / 2)
        / u128::from(requests);
    Some(bp as u32)
}

/// `73%`, or `-` without requests. `0%` and `100%` only when exact: a last few
/// requests on the legacy app must not read as "all migrated".
pub fn share_text(requests: u64, fallback: u64) -> String {
    let Some(bp) = share_bp(requests, fallback) else {
        return "-".into();
    };
    let percent = match (bp + 50) / 100 {
        0 if fallback > 0 => 1,
        100 if fallback < requests => 99,
        p => p,
    };
    format!("{percent}%")
}

/// A span as Go and kubectl print durations: `5m0s`, `42s`.
pub fn window_text(span: Duration) -> String {
    let s = (span.as_millis() + 500) / 1000;
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `status.traffic` of one route from a round's totals.
pub fn status_of(route: &RouteTotals, totals: &Totals, observed_at: Time) -> TrafficStatus {
    TrafficStatus {
        fallback_share: share_text(route.requests, route.fallback),
        requests: route.requests,
        fallback_requests: route.fallback,
        window: window_text(totals.span),
        legacy_paths: route.legacy.estimate(),
        replicas: totals.replicas,
        observed_at: Some(observed_at),
    }
}

/// One route's write of a round.
struct Write {
    key: ObjKey,
    status: TrafficStatus,
    shown: Shown,
}

/// The writes of a round: routes the index knows whose figures are news, those never
/// written (then the longest unwritten) first, at most `cap`.
fn plan(
    totals: &Totals,
    known: &HashMap<String, ObjKey>,
    written: &HashMap<ObjKey, Shown>,
    round: Instant,
    interval: Duration,
    cap: usize,
) -> Vec<Write> {
    let observed_at = Time(k8s_openapi::jiff::Timestamp::now());
    let mut todo: Vec<Write> = totals
        .routes
        .iter()
        .filter_map(|(name, route)| {
            let key = known.get(name)?;
            let shown = Shown {
                at: round,
                share: share_bp(route.requests, route.fallback),
                legacy_paths: route.legacy.estimate(),
                replicas: totals.replicas,
            };
            should_write(written.get(key), &shown, interval).then(|| Write {
                key: key.clone(),
                status: status_of(route, totals, observed_at.clone()),
                shown,
            })
        })
        .collect();
    todo.sort_by_key(|w| written.get(&w.key).map(|s| s.at));
    todo.truncate(cap);
    todo
}

/// Logs a recurring problem as a warning at most every [`LOG_EVERY`] per subject.
#[derive(Default)]
struct Quiet {
    warned: HashMap<String, Instant>,
}

impl Quiet {
    fn failed(&mut self, subject: &str, error: &dyn std::fmt::Display, what: &str) {
        let now = Instant::now();
        let due = self
            .warned
            .get(subject)
            .is_none_or(|at| now.duration_since(*at) >= LOG_EVERY);
        if due {
            self.warned.insert(subject.to_string(), now);
            tracing::warn!(about = %subject, error = %error, "{what} (logged again in 5 minutes if it persists)");
        } else {
            tracing::debug!(about = %subject, error = %error, "{what}");
        }
    }

    fn recovered(&mut self, subject: &str) {
        if self.warned.remove(subject).is_some() {
            tracing::info!(about = %subject, "works again");
        }
    }
}

/// Gathers and writes while this replica leads, for the life of the process.
pub async fn run(
    client: Client,
    options: TrafficOptions,
    identity: String,
    mut leader: watch::Receiver<bool>,
    routes: watch::Receiver<super::status::Statuses>,
) {
    tracing::info!(service = %options.service, namespace = %options.namespace, interval = ?options.interval, "the Lease holder will sum the replicas' traffic into status.traffic");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &options.namespace);
    let params = PatchParams {
        field_manager: Some(identity),
        ..PatchParams::default()
    };
    let cap = (u128::from(WRITES_PER_SECOND) * options.interval.as_millis() / 1000).max(1);
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window = Window::new(window::WINDOW, options.interval);
    let mut written: HashMap<ObjKey, Shown> = HashMap::new();
    let mut quiet = Quiet::default();
    loop {
        let round = ticker.tick().await.into_std();
        if !*leader.borrow_and_update() {
            // The next holder starts afresh; so does this one if it leads again.
            window.clear();
            written.clear();
            continue;
        }
        let reports = gather(&slices, &options.service, &mut quiet).await;
        let bad = window.round(unix_ms(), reports);
        if let Some(first) = bad.first() {
            let what = format!("{} legacyPaths sketch(es) do not parse and count as empty (is a replica another version?)", bad.len());
            let error = format!("{}, route {}", first.peer, first.route);
            quiet.failed("legacyPaths", &error, &what);
        }
        let totals = window.totals();
        if totals.warming > 0 {
            tracing::debug!(
                warming = totals.warming,
                "replicas seen for the first time count from the next round"
            );
            continue;
        }
        let known: HashMap<String, ObjKey> = routes
            .borrow()
            .iter()
            .map(|d| (d.key.to_string(), d.key.clone()))
            .collect();
        // Deleted routes are forgotten; one created again under the name starts afresh.
        written.retain(|key, _| known.contains_key(&key.to_string()));
        let todo = plan(
            &totals,
            &known,
            &written,
            round,
            options.interval,
            cap as usize,
        );
        written.extend(write_all(&client, &params, todo, &leader).await);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Every ready peer's report; peers that fail are logged and left out.
async fn gather(
    slices: &Api<EndpointSlice>,
    service: &str,
    quiet: &mut Quiet,
) -> Vec<(PeerKey, TrafficReport)> {
    // resourceVersion=0: served from the API server's cache, not from etcd.
    let selector = format!("kubernetes.io/service-name={service}");
    let listed = match slices
        .list(&ListParams::default().labels(&selector).match_any())
        .await
    {
        Ok(list) => {
            quiet.recovered(&selector);
            list.items
        }
        Err(err) => {
            quiet.failed(&selector, &err, "cannot list the peers' EndpointSlices; no traffic figures this round (check RBAC for endpointslices in this namespace)");
            return Vec::new();
        }
    };
    let answers: Vec<(Peer, Result<TrafficReport, PeerError>)> =
        futures_util::stream::iter(peers::peers(&listed, peers::PORT_NAME))
            .map(|peer| async move {
                let answer = peers::fetch(peer.addr, PEER_DEADLINE).await;
                (peer, answer)
            })
            .buffer_unordered(CONCURRENT_PEERS)
            .collect()
            .await;
    answers
        .into_iter()
        .filter_map(|(peer, answer)| match answer {
            Ok(report) => {
                quiet.recovered(&peer.key);
                Some((peer.key, report))
            }
            Err(err) => {
                let what = format!("cannot read {}/traffic; left out of this round", peer.addr);
                quiet.failed(&peer.key, &err, &what);
                None
            }
        })
        .collect()
}

/// What became of one write.
enum Outcome {
    Written(ObjKey, Shown),
    /// Not sent: throttled, or leadership lost.
    Skipped,
    /// The route is gone.
    Gone,
    /// Refused for a reason of its own (the next round may try again).
    Refused(ObjKey, kube::Error),
    /// The API server is shedding load or unreachable: the round's writes stop.
    Throttled(ObjKey, kube::Error),
}

/// Sends the round's writes, paced and bounded; returns what was written.
async fn write_all(
    client: &Client,
    params: &PatchParams,
    todo: Vec<Write>,
    leader: &watch::Receiver<bool>,
) -> Vec<(ObjKey, Shown)> {
    if todo.is_empty() {
        return Vec::new();
    }
    let pace = Mutex::new(tokio::time::interval(
        Duration::from_secs(1) / WRITES_PER_SECOND,
    ));
    let stop = AtomicBool::new(false);
    let outcomes: Vec<Outcome> = futures_util::stream::iter(todo)
        .map(|w| {
            let (pace, stop) = (&pace, &stop);
            async move {
                pace.lock().await.tick().await;
                if stop.load(Ordering::Relaxed) || !*leader.borrow() {
                    return Outcome::Skipped;
                }
                let outcome = patch(client, params, w).await;
                if matches!(outcome, Outcome::Throttled(..)) {
                    stop.store(true, Ordering::Relaxed);
                }
                outcome
            }
        })
        .buffer_unordered(CONCURRENT_WRITES)
        .collect()
        .await;
    let mut done = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Written(key, shown) => done.push((key, shown)),
            Outcome::Skipped | Outcome::Gone => {}
            Outcome::Refused(key, err) => {
                tracing::warn!(route = %key, error = %err, "writing status.traffic failed; the next round tries again");
            }
            Outcome::Throttled(key, err) => {
                tracing::warn!(route = %key, error = %err, "writing status.traffic failed; no more writes until the next round");
            }
        }
    }
    done
}

async fn patch(client: &Client, params: &PatchParams, w: Write) -> Outcome {
    let api: Api<FallbackRoute> = Api::namespaced(client.clone(), &w.key.namespace);
    // Only status.traffic: the conditions are another key of status, left as they are.
    let body = serde_json::json!({ "status": { "traffic": w.status } });
    match api
        .patch_status(&w.key.name, params, &Patch::Merge(&body))
        .await
    {
        Ok(_) => Outcome::Written(w.key, w.shown),
        Err(kube::Error::Api(e)) if e.code == 404 => Outcome::Gone,
        Err(kube::Error::Api(e)) if e.code != 429 && e.code < 500 => {
            Outcome::Refused(w.key, kube::Error::Api(e))
        }
        Err(err) => Outcome::Throttled(w.key, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insight::distinct::Distinct;

    #[test]
    fn the_share_as_kubectl_shows_it() {
        for (requests, fallback, want) in [
            (0, 0, "-"),
            (40, 10, "25%"),
            (3, 2, "67%"),
            (200, 1, "1%"),
            (1000, 999, "99%"),
            (7, 7, "100%"),
            (9, 0, "0%"),
            (8, 1, "13%"),
        ] {
            assert_eq!(
                share_text(requests, fallback),
                want,
                "{fallback}/{requests}"
            );
        }
    }

    #[test]
    fn windows_print_like_kubectl_durations() {
        for (ms, want) in [
            (300_000, "5m0s"),
            (299_600, "5m0s"),
            (90_000, "1m30s"),
            (42_400, "42s"),
            (0, "0s"),
        ] {
            assert_eq!(window_text(Duration::from_millis(ms)), want);
        }
    }

    #[test]
    fn writes_are_for_news_at_most_once_an_interval() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let shown = |secs: u64, share: Option<u32>, legacy_paths: u64, replicas: u32| Shown {
            at: t0 + Duration::from_secs(secs),
            share,
            legacy_paths,
            replicas,
        };
        let last = shown(0, Some(7300), 100, 2);
        let rows = [
            ("never written", None, shown(0, Some(7300), 100, 2), true),
            (
                "too soon, even with news",
                Some(last),
                shown(59, None, 5, 1),
                false,
            ),
            (
                "nothing moved",
                Some(last),
                shown(60, Some(7350), 102, 2),
                false,
            ),
            (
                "the share moved a point",
                Some(last),
                shown(60, Some(7400), 100, 2),
                true,
            ),
            (
                "down a point",
                Some(last),
                shown(60, Some(7200), 100, 2),
                true,
            ),
            ("to -", Some(last), shown(60, None, 100, 2), true),
            (
                "a replica more",
                Some(last),
                shown(60, Some(7300), 100, 3),
                true,
            ),
            (
                "legacy paths within 5%",
                Some(last),
                shown(60, Some(7300), 104, 2),
                false,
            ),
            (
                "legacy paths by 5%",
                Some(last),
                shown(60, Some(7300), 95, 2),
                true,
            ),
        ];
        for (what, last, next, want) in rows {
            assert_eq!(should_write(last.as_ref(), &next, minute), want, "{what}");
        }
        let few = shown(0, None, 3, 1);
        assert!(
            should_write(Some(&few), &shown(60, None, 4, 1), minute),
            "small counts are exact: every path shows"
        );
        assert!(
            !should_write(Some(&few), &shown(60, None, 3, 1), minute),
            "- stays -"
        );
    }

    fn totals(routes: &[(&str, u64, u64)]) -> Totals {
        Totals {
            replicas: 2,
            warming: 0,
            span: Duration::from_secs(300),
            routes: routes
                .iter()
                .map(|(name, requests, fallback)| {
                    let route = RouteTotals {
                        requests: *requests,
                        fallback: *fallback,
                        legacy: Distinct::default(),
                    };
                    (name.to_string(), route)
                })
                .collect(),
        }
    }

    fn key(ns: &str, name: &str) -> ObjKey {
        ObjKey {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_round_writes_known_routes_with_news_oldest_first_up_to_the_cap() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let known: HashMap<String, ObjKey> = ["web/a", "web/b", "web/c", "web/d"]
            .iter()
            .map(|n| {
                let (ns, name) = n.split_once('/').unwrap();
                (n.to_string(), key(ns, name))
            })
            .collect();
        let at = |secs| Shown {
            at: t0 + Duration::from_secs(secs),
            share: Some(0),
            legacy_paths: 0,
            replicas: 2,
        };
        let written: HashMap<ObjKey, Shown> = [
            (key("web", "a"), at(31)),
            (key("web", "b"), at(0)),
            (key("web", "d"), at(0)),
        ]
        .into();
        let t = totals(&[
            ("web/a", 10, 5),
            ("web/b", 10, 5),
            ("web/c", 10, 5),
            ("web/d", 10, 0),
            ("gone/x", 10, 10),
        ]);
        let round = t0 + Duration::from_secs(90);
        let names =
            |todo: Vec<Write>| -> Vec<String> { todo.iter().map(|w| w.key.to_string()).collect() };
        assert_eq!(
            names(plan(&t, &known, &written, round, minute, 10)),
            ["web/c", "web/b"],
            "c never written, then b; a was written 59 s ago, d shows no news, gone/x is not in the index"
        );
        assert_eq!(
            names(plan(&t, &known, &written, round, minute, 1)),
            ["web/c"]
        );
        let todo = plan(&t, &known, &written, round, minute, 1);
        let s = &todo[0].status;
        assert_eq!(
            (
                s.fallback_share.as_str(),
                s.requests,
                s.fallback_requests,
                s.window.as_str(),
                s.replicas
            ),
            ("50%", 10, 5, "5m0s", 2)
        );
    }

    #[test]
    fn the_patch_is_status_traffic_alone() {
        let status = status_of(
            &RouteTotals {
                requests: 40,
                fallback: 10,
                legacy: Distinct::default(),
            },
            &totals(&[]),
            Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap()),
        );
        let body = serde_json::json!({ "status": { "traffic": status } });
        assert_eq!(
            body,
            serde_json::json!({"status": {"traffic": {
                "fallbackShare": "25%", "requests": 40, "fallbackRequests": 10, "window": "5m0s",
                "legacyPaths": 0, "replicas": 2, "observedAt": "2023-11-14T22:13:20Z",
            }}})
        );
    }
}
