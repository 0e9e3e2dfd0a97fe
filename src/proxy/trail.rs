//! What happened to one request on its way through the proxy, for its access log line.
//!
//! In: notes from routing and from each upstream attempt ([`Trail`]'s methods), made
//! only when the access log is on.
//! Out: the route, attempts, fallback reason and error of an [`Entry`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access_log::{Entry, Tried};
use crate::routes::{Answerer, Endpoint};

/// One request's notes. A lock rather than a `Cell`: the request's future must be
/// `Send`; nothing else ever takes it, so it is never contended.
pub struct Trail {
    /// Boxed: the request's future holds it across every await, and is copied whole.
    notes: Option<Box<Mutex<Notes>>>,
}

#[derive(Default)]
struct Notes {
    route: Option<Arc<str>>,
    answered: Option<Answerer>,
    primary: Option<Tried>,
    fallback: Option<Tried>,
    reason: Option<&'static str>,
    skipped: Option<&'static str>,
    error: Option<&'static str>,
    received: Option<Arc<AtomicU64>>,
}

impl Trail {
    /// A trail that keeps notes when `on` (the access log is on), or ignores them.
    pub fn new(on: bool) -> Self {
        Trail {
            notes: on.then(Box::default),
        }
    }

    fn note(&self, f: impl FnOnce(&mut Notes)) {
        if let Some(notes) = &self.notes {
            f(&mut notes.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// The request was routed to `route` (`namespace/name`).
    pub fn routed(&self, route: &Arc<str>) {
        self.note(|n| n.route = Some(route.clone()));
    }

    /// An attempt at `backend`'s `endpoint` ended after `took`, with a status or none.
    pub fn tried(
        &self,
        backend: Answerer,
        endpoint: &Endpoint,
        status: Option<u16>,
        took: Duration,
    ) {
        self.note(|n| {
            let tried = Some(Tried {
                addr: endpoint.shown(),
                status,
                duration: took,
            });
            match backend {
                Answerer::Primary => n.primary = tried,
                Answerer::Fallback => n.fallback = tried,
            }
        });
    }

    /// The fallback is asked, for this reason.
    pub fn fell_back(&self, reason: &'static str) {
        self.note(|n| n.reason = Some(reason));
    }

    /// The fallback would have been asked, but was not, for this reason.
    pub fn skipped(&self, reason: &'static str) {
        self.note(|n| n.skipped = Some(reason));
    }

    /// The client gets this backend's answer.
    pub fn answered(&self, backend: Answerer) {
        self.note(|n| n.answered = Some(backend));
    }

    /// fallthrough answered itself, for this error.
    pub fn failed(&self, error: &'static str) {
        self.note(|n| {
            n.error = Some(error);
            n.answered = None;
        });
    }

    /// A counter of the request body bytes read, when the request has a body.
    pub fn count_received(&self) -> Option<Arc<AtomicU64>> {
        let mut counter = None;
        self.note(|n| counter = Some(n.received.get_or_insert_with(Default::default).clone()));
        counter
    }

    /// Writes the notes into `entry`; returns the body counter, read when the entry is
    /// logged (a streamed body may still be arriving now).
    pub fn fill(&self, entry: &mut Entry) -> Option<Arc<AtomicU64>> {
        let mut received = None;
        self.note(|n| {
            entry.route = n.route.take();
            entry.backend = match n.answered {
                Some(backend) => backend.as_str(),
                None => crate::metrics::SELF_BACKEND,
            };
            entry.primary = n.primary.take();
            entry.fallback = n.fallback.take();
            entry.fallback_reason = n.reason;
            entry.fallback_skipped = n.skipped;
            entry.error = n.error;
            received = n.received.take();
        });
        received
    }
}
