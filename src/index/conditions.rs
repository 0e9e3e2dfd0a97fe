//! The conditions a FallbackRoute's status carries, as the index decides them.
//!
//! In: whether a route was accepted, and which of its backends did not resolve.
//! Out: its `Accepted`, `ResolvedRefs` and `Programmed` conditions, in that order, each
//! with a reason and a message that says what to do.

use super::Unresolved;
use crate::routes::Answerer;

/// One condition a route should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// `Accepted`, `ResolvedRefs` or `Programmed`.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What a user should know.
    pub message: String,
}

fn condition(
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
    message: impl Into<String>,
) -> DesiredCondition {
    DesiredCondition {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

pub(super) fn rejected(reason: &'static str, message: String) -> Vec<DesiredCondition> {
    vec![
        condition("Accepted", "False", reason, message),
        condition(
            "ResolvedRefs",
            "Unknown",
            "Pending",
            "backends are resolved once the route is accepted",
        ),
        condition(
            "Programmed",
            "False",
            "NotAccepted",
            "the route is not served until it is accepted",
        ),
    ]
}

pub(super) fn accepted(problems: &[(Answerer, Unresolved)]) -> Vec<DesiredCondition> {
    let resolved = match problems.first() {
        None => condition(
            "ResolvedRefs",
            "True",
            "ResolvedRefs",
            "every backend has ready endpoints",
        ),
        Some((_, first)) => {
            let message = problems
                .iter()
                .map(|(which, p)| format!("{}: {p}", which.as_str()))
                .collect::<Vec<_>>()
                .join("; ");
            condition(
                "ResolvedRefs",
                "False",
                first.reason(),
                format!("{message}; requests needing it get 503"),
            )
        }
    };
    vec![
        condition("Accepted", "True", "Accepted", "the route is valid"),
        resolved,
        condition(
            "Programmed",
            "True",
            "Programmed",
            "the route is in the routing table",
        ),
    ]
}
