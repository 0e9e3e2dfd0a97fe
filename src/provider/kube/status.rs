//! Writes route status conditions and Events, on the Lease holder only.
//!
//! In: the desired status of every route after each build, and leadership.
//! Out: `status` subresource patches (only where the conditions differ from what the
//! object shows), and a Warning Event when a route is newly rejected or loses a backend.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::FallbackRoute;
use crate::index::cluster::{DesiredCondition, DesiredStatus, ObjKey};

/// Name of this controller in Events and as field manager.
const CONTROLLER: &str = "fallthrough";
/// Status patches in flight at once. A write costs the API server far more than it
/// costs us (admission, managedFields, an etcd commit, a watch event per watcher): in
/// `bench/controller` 64 at once wrote no faster than 16, so more would only queue in
/// the API server's priority and fairness, ahead of other clients.
const CONCURRENT_WRITES: usize = 16;
/// Tries of one write in a round before it waits for the next round.
const ATTEMPTS: u32 = 4;
/// The pause after a failed write that did not say how long to wait; doubles per try.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause, whatever a `Retry-After` asks.
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// Re-check every route this often, to repair writes that failed.
const RESYNC: Duration = Duration::from_secs(30);

/// The statuses a build wants, shared by the status writers without copies.
pub type Statuses = Arc<Vec<DesiredStatus>>;

/// What this writer last wrote per route (a fingerprint of the generation and
/// conditions): skips rewriting before the watch echoes it.
type Written = HashMap<ObjKey, u64>;

fn fingerprint(desired: &DesiredStatus) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    desired.generation.hash(&mut h);
    for c in &desired.conditions {
        (c.type_, c.status, c.reason, &c.message).hash(&mut h);
    }
    h.finish()
}

/// When the next write may go: every writer of a round waits for it, so one 429 (or
/// failure) slows all of them down instead of each retrying at once.
#[derive(Default)]
struct Pacer(Mutex<Option<Instant>>);

impl Pacer {
    async fn ready(&self) {
        let until = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_PAUSE);
        let mut at = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *at = Some(at.map_or(until, |t| t.max(until)));
    }
}

/// How long the API server asked us to wait: a 429's `retryAfterSeconds` (what priority
/// and fairness sends with its `Retry-After`), or `None` for an error that did not say.
fn retry_after(err: &kube::Error) -> Option<Duration> {
    match err {
        kube::Error::Api(status) if status.code == 429 => Some(Duration::from_secs(
            status
                .details
                .as_ref()
                .map_or(1, |d| u64::from(d.retry_after_seconds.max(1))),
        )),
        _ => None,
    }
}

/// Writes statuses while this replica leads, for the life of the process.
pub async fn write(
    client: Client,
    identity: String,
    mut statuses: watch::Receiver<Statuses>,
    mut leader: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(identity.clone()),
        },
    );
    // The field manager names the replica, so managedFields show who wrote status.
    let params = PatchParams {
        field_manager: Some(identity),
        ..PatchParams::default()
    };
    let mut written = Written::new();
    let pacer = Pacer::default();
    loop {
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                // Another replica may have written in between: trust only the objects.
                written.clear();
            }
            () = tokio::time::sleep(RESYNC) => written.clear(),
        }
        if !*leader.borrow() {
            continue;
        }
        let current = statuses.borrow().clone();
        let todo: Vec<usize> = (0..current.len())
            .filter(|&i| needs_write(&current[i], &written))
            .collect();
        let done: Vec<Option<&DesiredStatus>> = futures_util::stream::iter(todo)
            .map(|i| {
                let (client, recorder, params, pacer) = (&client, &recorder, &params, &pacer);
                let desired = &current[i];
                async move {
                    write_one(client, recorder, params, pacer, desired)
                        .await
                        .then_some(desired)
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for d in done.into_iter().flatten() {
            written.insert(d.key.clone(), fingerprint(d));
        }
    }
}

/// One route's status, tried up to [`ATTEMPTS`] times at the pace the API server asks;
/// whether it was written.
async fn write_one(
    client: &Client,
    recorder: &Recorder,
    params: &PatchParams,
    pacer: &Pacer,
    desired: &DesiredStatus,
) -> bool {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        pacer.ready().await;
        let err = match patch(client, recorder, params, desired).await {
            Ok(()) => return true,
            // Refused for what it is (not for load): the same write would be refused again.
            Err(kube::Error::Api(status))
                if (400..500).contains(&status.code) && status.code != 429 =>
            {
                tracing::warn!(route = %desired.key, error = %status, "the API server refused the route status");
                return false;
            }
            Err(err) => err,
        };
        let wait = retry_after(&err).unwrap_or(backoff);
        backoff *= 2;
        pacer.pause(wait);
        if attempt == ATTEMPTS {
            tracing::warn!(route = %desired.key, error = %err, "writing route status failed; will retry");
        } else {
            tracing::debug!(route = %desired.key, error = %err, ?wait, "writing route status failed; retrying");
        }
    }
    false
}

fn needs_write(desired: &DesiredStatus, written: &Written) -> bool {
    if written.get(&desired.key) == Some(&fingerprint(desired)) {
        return false;
    }
    let Some(observed) = &desired.observed else {
        return true;
    };
    observed.conditions.len() != desired.conditions.len()
        || !desired.conditions.iter().all(|want| {
            observed.conditions.iter().any(|have| {
                have.type_ == want.type_
                    && have.status == want.status
                    && have.reason == want.reason
                    && have.message == want.message
                    && have.observed_generation == desired.generation
            })
        })
}

/// The conditions to write: a condition keeps its transition time while its status holds.
fn conditions(desired: &DesiredStatus, now: &Time) -> Vec<Condition> {
    desired
        .conditions
        .iter()
        .map(|want| {
            let since = desired
                .observed
                .iter()
                .flat_map(|o| o.conditions.iter())
                .find(|have| have.type_ == want.type_ && have.status == want.status)
                .map_or_else(|| now.clone(), |have| have.last_transition_time.clone());
            Condition {
                type_: want.type_.into(),
                status: want.status.into(),
                reason: want.reason.into(),
                message: want.message.clone(),
                observed_generation: desired.generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Problems that are new since the object's last status, worth an Event.
fn new_problems(desired: &DesiredStatus) -> Vec<&DesiredCondition> {
    desired
        .conditions
        .iter()
        .filter(|want| want.status == "False" && want.type_ != "Programmed")
        .filter(|want| {
            !desired
                .observed
                .iter()
                .flat_map(|o| o.conditions.iter())
                .any(|have| {
                    have.type_ == want.type_
                        && have.status == want.status
                        && have.reason == want.reason
                })
        })
        .collect()
}

async fn patch(
    client: &Client,
    recorder: &Recorder,
    params: &PatchParams,
    desired: &DesiredStatus,
) -> Result<(), kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let body = serde_json::json!({ "status": { "conditions": conditions(desired, &now) } });
    let api: Api<FallbackRoute> = Api::namespaced(client.clone(), &desired.key.namespace);
    match api
        .patch_status(&desired.key.name, params, &Patch::Merge(&body))
        .await
    {
        Ok(_) => {}
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(err) => return Err(err),
    }
    if let Some(observed) = &desired.observed {
        for problem in new_problems(desired) {
            let event = Event {
                type_: EventType::Warning,
                reason: problem.reason.into(),
                note: Some(problem.message.clone()),
                action: "Route".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, &observed.reference).await {
                tracing::warn!(route = %desired.key, error = %err, "publishing an Event failed");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::cluster::Observed;

    fn want(type_: &'static str, status: &'static str, reason: &'static str) -> DesiredCondition {
        DesiredCondition {
            type_,
            status,
            reason,
            message: format!("{type_} is {status}"),
        }
    }

    fn desired(observed: Option<Vec<Condition>>) -> DesiredStatus {
        DesiredStatus {
            key: ObjKey {
                namespace: "web".into(),
                name: "shop".into(),
            },
            generation: Some(2),
            conditions: vec![
                want("Accepted", "False", "Conflicted"),
                want("Programmed", "False", "NotAccepted"),
            ],
            observed: observed.map(|conditions| {
                Arc::new(Observed {
                    reference: Default::default(),
                    conditions,
                })
            }),
        }
    }

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn unchanged_conditions_are_not_rewritten() {
        let d = desired(None);
        let now = at(100);
        let current = conditions(&d, &now);
        assert!(needs_write(&d, &Written::new()));
        let same = desired(Some(current.clone()));
        assert!(!needs_write(&same, &Written::new()));
        let mut stale = current;
        stale[0].observed_generation = Some(1);
        assert!(
            needs_write(&desired(Some(stale)), &Written::new()),
            "a new generation is written"
        );
    }

    #[test]
    fn transition_times_hold_while_the_status_holds() {
        let earlier = conditions(&desired(None), &at(100));
        let mut d = desired(Some(earlier));
        d.conditions[0].reason = "Invalid";
        let next = conditions(&d, &at(200));
        assert_eq!(
            next[0].last_transition_time,
            at(100),
            "still False: time kept"
        );
        d.conditions[0].status = "True";
        let next = conditions(&d, &at(300));
        assert_eq!(
            next[0].last_transition_time,
            at(300),
            "became True: time moves"
        );
    }

    #[test]
    fn events_are_for_new_problems_only() {
        let d = desired(None);
        let reasons: Vec<_> = new_problems(&d).iter().map(|c| c.reason).collect();
        assert_eq!(
            reasons,
            ["Conflicted"],
            "Programmed=False follows from it: no second event"
        );
        let seen = desired(Some(conditions(&d, &at(1))));
        assert!(new_problems(&seen).is_empty());
    }
}
