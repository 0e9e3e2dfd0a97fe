//! The access log: one line per request, who answered it and why, written off the
//! request path.
//!
//! In: an [`Entry`] for each request, completed when its response's last byte is sent
//! (or the client goes away), from any worker.
//! Out: lines on stdout or in a file ([`format`] has both forms), and
//! `fallthrough_access_log_dropped_total` for the lines the writer could not keep up
//! with.
//!
//! Why batches and a thread: a `write` per request on the worker would make every
//! request wait on the disk (or on whoever reads stdout). Each worker appends to its
//! own buffer; a full buffer, or the worker's once-a-second tick, hands the batch to one
//! writer thread through a queue of [`QUEUED_BATCHES`]. When the queue is full the batch
//! is dropped and its lines counted, never queued without bound. The memory this can
//! hold is `(workers + QUEUED_BATCHES) × (BATCH_BYTES + one line)`: a line holds each
//! client-chosen field cut at [`format::MAX_FIELD`] bytes, under 52 KiB escaped, so at
//! worst about 2 MiB with two workers, and 1.2 MiB for ordinary lines. Besides, each
//! response still streaming keeps its entry, which shares the request head's buffer
//! (already within the per-connection head budget).

pub mod format;

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;

use crate::shard::PerWorker;

/// A worker hands its buffer to the writer once it holds this much.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches waiting for the writer; past this, batches are dropped and counted.
pub const QUEUED_BATCHES: usize = 16;

/// Longest the exit waits for the writer to write what is queued.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The line format (`--access-log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// nginx's `combined` format, then the rest as `key=value`.
    Text,
    /// One JSON object per line, every field always present (`null` when it has none).
    Json,
}

/// What the log says of one request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When its head was read.
    pub time: SystemTime,
    /// The client it speaks for (see `proxy::trust`).
    pub client: IpAddr,
    pub method: Method,
    /// The host it named, if any.
    pub host: Option<Box<str>>,
    /// The request target as the client sent it (not normalised).
    pub target: Uri,
    pub version: Version,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    /// Response body bytes sent (nginx's `$body_bytes_sent`).
    pub bytes_sent: u64,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// From its head being read to its answer's last byte.
    pub duration: Duration,
    /// `namespace/name`; `None` when no route matched.
    pub route: Option<Arc<str>>,
    /// Who produced the answer: `primary`, `fallback` or `fallthrough`.
    pub backend: &'static str,
    pub primary: Option<Tried>,
    pub fallback: Option<Tried>,
    /// Why the fallback was asked: `status`, `error`, `remembered`, `skip_primary`.
    pub fallback_reason: Option<&'static str>,
    /// Why it was not, though the primary's answer called for it: `body_too_large`,
    /// `replay_budget`.
    pub fallback_skipped: Option<&'static str>,
    /// fallthrough's own error, when it answered (`no_route`, `connect`, `timeout`...).
    pub error: Option<&'static str>,
    pub request_id: HeaderValue,
}

/// One upstream attempt.
#[derive(Debug, Clone)]
pub struct Tried {
    /// The endpoint: `host:port` or `unix:/path`.
    pub addr: Arc<str>,
    /// Its response status; `None` when it gave none (refused, timed out, broken).
    pub status: Option<u16>,
    /// From sending the request to its response head (or the failure).
    pub duration: Duration,
}

/// Where lines go.
pub enum Sink {
    Stdout,
    File(std::fs::File),
    /// Anything else that takes bytes (a test's slow reader).
    Writer(Box<dyn Write + Send>),
}

/// What the writer thread is sent.
enum Batch {
    Lines(Vec<u8>),
    /// Everything sent before it is written: acknowledge.
    Flush(mpsc::Sender<()>),
}

/// The access log of a running proxy: a buffer per worker and the writer thread.
pub struct AccessLog {
    format: Format,
    buffers: PerWorker<Mutex<Buffer>>,
    queue: SyncSender<Batch>,
    dropped: IntCounter,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    lines: u64,
}

impl AccessLog {
    /// Starts the writer thread for `workers` workers; lines that cannot be written
    /// (a full queue, a failed write) count in `dropped`.
    pub fn start(
        format: Format,
        sink: Sink,
        workers: usize,
        dropped: IntCounter,
    ) -> std::io::Result<Arc<Self>> {
        let (queue, batches) = mpsc::sync_channel(QUEUED_BATCHES);
        let failed = dropped.clone();
        std::thread::Builder::new()
            .name("fallthrough-access-log".into())
            .spawn(move || write_batches(sink, batches, failed))?;
        Ok(Arc::new(AccessLog {
            format,
            buffers: PerWorker::new(workers, || Mutex::new(Buffer::default())),
            queue,
            dropped,
        }))
    }

    /// Logs one finished request, into the calling worker's buffer.
    pub fn log(&self, entry: &Entry) {
        let mut buffer = self
            .buffers
            .local()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match self.format {
            Format::Text => format::text(entry, &mut buffer.bytes),
            Format::Json => format::json(entry, &mut buffer.bytes),
        }
        buffer.lines += 1;
        if buffer.bytes.len() >= BATCH_BYTES {
            self.hand_over(&mut buffer);
        }
    }

    /// Hands the calling worker's lines to the writer: its tick, once a second.
    pub fn flush_local(&self) {
        let mut buffer = self
            .buffers
            .local()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if buffer.lines > 0 {
            self.hand_over(&mut buffer);
        }
    }

    /// Hands every worker's lines to the writer and waits, up to [`CLOSE_WAIT`], until
    /// it has written them: on shutdown. A writer stuck on a full disk or an unread
    /// stdout cannot hold the exit up longer.
    pub fn close(&self) {
        for buffer in self.buffers.all() {
            let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
            if buffer.lines > 0 {
                self.hand_over(&mut buffer);
            }
        }
        let (done, written) = mpsc::channel();
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        let mut flush = Batch::Flush(done);
        // The queue may be full: retry until the writer makes room, or give up.
        loop {
            match self.queue.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    flush = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }

    fn hand_over(&self, buffer: &mut Buffer) {
        let lines = std::mem::replace(&mut buffer.bytes, Vec::with_capacity(BATCH_BYTES + 1024));
        let count = std::mem::take(&mut buffer.lines);
        match self.queue.try_send(Batch::Lines(lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(Batch::Lines(mut lines)))
            | Err(TrySendError::Disconnected(Batch::Lines(mut lines))) => {
                self.dropped.inc_by(count);
                // Keep the allocation for the next batch.
                lines.clear();
                buffer.bytes = lines;
            }
            Err(_) => {}
        }
    }
}

/// The writer thread: writes each batch whole, for as long as the proxy runs.
fn write_batches(sink: Sink, batches: mpsc::Receiver<Batch>, dropped: IntCounter) {
    let mut out: Box<dyn Write> = match sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::File(file) => Box::new(file),
        Sink::Writer(writer) => writer,
    };
    let mut warned: Option<std::time::Instant> = None;
    for batch in batches {
        match batch {
            Batch::Lines(lines) => {
                if let Err(err) = out.write_all(&lines).and_then(|()| out.flush()) {
                    dropped.inc_by(lines.iter().filter(|&&b| b == b'\n').count() as u64);
                    // Once a minute at most: a full disk must not flood the process log.
                    if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %err, "writing the access log failed; its lines are dropped and counted in fallthrough_access_log_dropped_total: check the disk or --access-log-path");
                        warned = Some(std::time::Instant::now());
                    }
                }
            }
            Batch::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
}

/// A request's entry, waiting for the last byte of its answer; logged when dropped.
pub struct Pending {
    entry: Box<Entry>,
    started: std::time::Instant,
    log: Arc<AccessLog>,
    /// The request body bytes read so far, while the body may still be arriving.
    received: Option<Arc<AtomicU64>>,
}

impl Pending {
    /// An entry for a request whose head was read at `started`, to go to `log`.
    pub fn new(
        entry: Box<Entry>,
        started: std::time::Instant,
        log: Arc<AccessLog>,
        received: Option<Arc<AtomicU64>>,
    ) -> Self {
        Pending {
            entry,
            started,
            log,
            received,
        }
    }

    /// Counts response body bytes sent.
    pub fn sent(&mut self, bytes: usize) {
        self.entry.bytes_sent += bytes as u64;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.entry.duration = self.started.elapsed();
        if let Some(received) = &self.received {
            self.entry.bytes_received = received.load(Ordering::Relaxed);
        }
        self.log.log(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A writer that takes nothing until it is let go, then counts the lines it gets.
    struct Stuck {
        go: mpsc::Receiver<()>,
        waited: bool,
        lines: Arc<AtomicUsize>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.waited {
                let _ = self.go.recv();
                self.waited = true;
            }
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            self.lines.fetch_add(lines, Ordering::Relaxed);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH,
            client: "203.0.113.9".parse().unwrap(),
            method: Method::GET,
            host: Some("shop.example.com".into()),
            target: Uri::from_static("/"),
            version: Version::HTTP_11,
            referer: None,
            user_agent: None,
            status: 200,
            bytes_sent: 0,
            bytes_received: 0,
            duration: Duration::ZERO,
            route: None,
            backend: "primary",
            primary: None,
            fallback: None,
            fallback_reason: None,
            fallback_skipped: None,
            error: None,
            request_id: HeaderValue::from_static("id"),
        }
    }

    #[test]
    fn a_writer_that_falls_behind_loses_counted_lines_not_memory() {
        let (go, wait) = mpsc::channel();
        let written = Arc::new(AtomicUsize::new(0));
        let sink = Sink::Writer(Box::new(Stuck {
            go: wait,
            waited: false,
            lines: written.clone(),
        }));
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::start(Format::Json, sink, 1, dropped.clone()).unwrap();
        let mut one = Vec::new();
        format::json(&entry(), &mut one);
        // Far more than the queue holds while the writer takes nothing.
        let total = (QUEUED_BATCHES + 8) * BATCH_BYTES / one.len();
        for _ in 0..total {
            log.log(&entry());
        }
        let buffered = log.buffers.local().lock().unwrap().bytes.capacity();
        assert!(buffered <= BATCH_BYTES + 1024 + one.len(), "{buffered}");
        assert!(dropped.get() > 0, "the full queue dropped batches");
        go.send(()).unwrap();
        log.close();
        assert_eq!(
            written.load(Ordering::Relaxed) as u64 + dropped.get(),
            total as u64,
            "every line written or counted"
        );
    }
}
