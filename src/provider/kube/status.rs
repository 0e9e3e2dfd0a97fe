//! Writes route status conditions and Events, on the Lease holder only.
//!
//! In: the desired status of every route after each build, and leadership.
//! Out: `status` subresource patches (only where the conditions differ from what the
//! object shows), and a Warning Event when a route is newly rejected or loses a backend.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::api::FallbackRoute;
use crate::index::cluster::{DesiredCondition, DesiredStatus, ObjKey};

/// Name of this controller in Events and as field manager.
const CONTROLLER: &str = "fallthrough";
/// Status patches in flight at once.
const CONCURRENT_WRITES: usize = 16;
/// Re-check every route this often, to repair writes that failed.
const RESYNC: Duration = Duration::from_secs(30);

/// What this writer last wrote per route: skips rewriting before the watch echoes it.
type Written = HashMap<ObjKey, (Option<i64>, Vec<DesiredCondition>)>;

/// Writes statuses while this replica leads, for the life of the process.
pub async fn write(
    client: Client,
    identity: String,
    mut statuses: watch::Receiver<Vec<DesiredStatus>>,
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
        let todo: Vec<DesiredStatus> = statuses
            .borrow()
            .iter()
            .filter(|d| needs_write(d, &written))
            .cloned()
            .collect();
        let done: Vec<Option<DesiredStatus>> = futures_util::stream::iter(todo)
            .map(|desired| {
                let (client, recorder, params) = (client.clone(), &recorder, &params);
                async move {
                    match patch(&client, recorder, params, &desired).await {
                        Ok(()) => Some(desired),
                        Err(err) => {
                            tracing::warn!(route = %desired.key, error = %err, "writing route status failed; will retry");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for d in done.into_iter().flatten() {
            written.insert(d.key, (d.generation, d.conditions));
        }
    }
}

fn needs_write(desired: &DesiredStatus, written: &Written) -> bool {
    if written.get(&desired.key) == Some(&(desired.generation, desired.conditions.clone())) {
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
            observed: observed.map(|conditions| Observed {
                reference: Default::default(),
                conditions,
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
