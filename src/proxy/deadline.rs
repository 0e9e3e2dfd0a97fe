//! A time limit on one wait, without a timer for the waits that need none.
//!
//! In: a future (a socket write, a request body being buffered) and its limit; or a
//! body's read that found no bytes, its idle limit and its timer.
//! Out: its output, or `None` once the limit has passed ([`within`]); or readiness once
//! the read has waited too long ([`poll_idle`]).
//!
//! Why: most writes complete at once into the socket buffer and most small bodies come
//! with their head; a `tokio::time::timeout` around each would make and drop a timer
//! (and read the clock) per request for nothing. The future is polled once first; only
//! if it must wait is the timer armed.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `work`'s output, or `None` when it did not complete within `limit` of its first wait.
pub async fn within<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
    {
        return Some(done);
    }
    tokio::time::timeout(limit, work).await.ok()
}

/// For a body read that found no bytes: ready once `idle` has passed since the reads
/// began to wait (`since`, set now if unset; the caller clears it when bytes come).
///
/// Only a body that makes its task wait reads the clock, and its one timer is made
/// once and moved to each new deadline, never registered per read.
pub fn poll_idle(
    timer: &mut Option<Pin<Box<Sleep>>>,
    since: &mut Option<Instant>,
    idle: Duration,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let due = *since.get_or_insert_with(Instant::now) + idle;
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
    if timer.deadline() != due {
        timer.as_mut().reset(due);
    }
    timer.as_mut().poll(cx)
}
