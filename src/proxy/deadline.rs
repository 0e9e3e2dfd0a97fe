//! A time limit on one wait, without a timer for the waits that need none.
//!
//! In: a future (a socket write, a request body being buffered) and its limit.
//! Out: its output, or `None` once the limit has passed.
//!
//! Why: most writes complete at once into the socket buffer and most small bodies come
//! with their head; a `tokio::time::timeout` around each would make and drop a timer
//! (and read the clock) per request for nothing. The future is polled once first; only
//! if it must wait is the timer armed.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// `work`'s output, or `None` when it did not complete within `limit` of its first wait.
pub async fn within<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    let mut work = pin!(work);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
    {
        return Some(done);
    }
    tokio::time::timeout(limit, work).await.ok()
}
