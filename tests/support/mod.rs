//! Test support: in-process backends that record what reaches them, the real
//! `fallthrough` binary as a child process, and a small HTTP client. Everything binds
//! 127.0.0.1:0; waits poll a condition with a deadline instead of sleeping.

#![allow(dead_code)]

pub mod fpm;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A request as a backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a backend answers for paths under a prefix.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: Bytes,
    delay: Option<Duration>,
    stream_bytes: Option<u64>,
}

/// Builds a recording backend: `backend("php").status(404).on("/old", 200, "legacy")`.
pub struct BackendBuilder {
    name: String,
    default: Answer,
    rules: Vec<(String, Answer)>,
    hold: Option<(Arc<Notify>, Arc<Notify>)>,
    forced: Option<Arc<std::sync::atomic::AtomicU16>>,
}

pub fn backend(name: &str) -> BackendBuilder {
    BackendBuilder {
        name: name.to_string(),
        default: Answer {
            status: 200,
            body: Bytes::from(format!("{name} says hello")),
            delay: None,
            stream_bytes: None,
        },
        rules: Vec::new(),
        hold: None,
        forced: None,
    }
}

impl BackendBuilder {
    /// Status for every path no rule names.
    pub fn status(mut self, status: u16) -> Self {
        self.default.status = status;
        self
    }

    /// Body for every path no rule names.
    pub fn body(mut self, body: &str) -> Self {
        self.default.body = Bytes::from(body.to_string());
        self
    }

    /// Answer paths starting with `prefix` with `status` and `body`.
    pub fn on(mut self, prefix: &str, status: u16, body: &str) -> Self {
        self.rules.push((
            prefix.to_string(),
            Answer {
                status,
                body: Bytes::from(body.to_string()),
                delay: None,
                stream_bytes: None,
            },
        ));
        self
    }

    /// Wait this long before answering anything.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.default.delay = Some(delay);
        for (_, a) in &mut self.rules {
            a.delay = Some(delay);
        }
        self
    }

    /// Answer with `n` bytes streamed in 64 KiB chunks, never held in memory at once.
    pub fn stream(mut self, n: u64) -> Self {
        self.default.stream_bytes = Some(n);
        self
    }

    /// Signal `arrived` when a request arrives, then answer only once `release` is notified.
    pub fn hold(mut self, arrived: Arc<Notify>, release: Arc<Notify>) -> Self {
        self.hold = Some((arrived, release));
        self
    }

    /// While `status` holds a non-zero status, answer everything with it: a backend
    /// whose answers change during a test.
    pub fn forced(mut self, status: Arc<std::sync::atomic::AtomicU16>) -> Self {
        self.forced = Some(status);
        self
    }

    pub async fn start(self) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(self);
        let recorded = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, recorded) = (state.clone(), recorded.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (state, recorded) = (state.clone(), recorded.clone());
                        async move { Ok::<_, Infallible>(state.answer(req, &recorded).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend { addr, seen }
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        seen: &Mutex<Vec<Seen>>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        });
        if let Some((arrived, release)) = &self.hold {
            arrived.notify_one();
            release.notified().await;
        }
        let answer = self
            .rules
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, a)| a)
            .unwrap_or(&self.default);
        if let Some(d) = answer.delay {
            tokio::time::sleep(d).await;
        }
        let body = match answer.stream_bytes {
            Some(n) => {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let chunks = n.div_ceil(chunk.len() as u64);
                let stream = futures_util::stream::iter((0..chunks).map(move |i| {
                    let len = (n - i * chunk.len() as u64).min(chunk.len() as u64) as usize;
                    Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
                }));
                StreamBody::new(stream).boxed()
            }
            None => Full::new(answer.body.clone()).boxed(),
        };
        let forced = self
            .forced
            .as_ref()
            .map(|f| f.load(std::sync::atomic::Ordering::SeqCst))
            .filter(|s| *s != 0);
        Response::builder()
            .status(forced.unwrap_or(answer.status))
            .header("x-backend", &self.name)
            .body(body)
            .unwrap()
    }
}

/// A running backend.
pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An address nothing listens on (bound, then released).
pub async fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A FallbackRoute document; `extra` is appended to `spec:` (indent two spaces).
pub fn route(name: &str, primary: &str, fallback: &str, extra: &str) -> String {
    format!(
        "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  primary: {{url: \"{primary}\"}}\n  fallback: {{url: \"{fallback}\"}}\n{extra}"
    )
}

/// The fallthrough binary running with routes from a file in its own temp dir.
pub struct Fallthrough {
    child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    routes_path: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Fallthrough {
    pub async fn start(routes: &str) -> Fallthrough {
        Self::start_with(routes, &[]).await
    }

    pub async fn start_with(routes: &str, args: &[&str]) -> Fallthrough {
        let dir = tempfile::tempdir().unwrap();
        let routes_path = dir.path().join("routes.yaml");
        std::fs::write(&routes_path, routes).unwrap();
        let mut all = vec!["--routes", routes_path.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::spawn(dir, routes_path.clone(), &all).await
    }

    /// Runs `fallthrough run ARGS` on free loopback ports (the binary needs no routes
    /// file in cluster mode).
    pub async fn spawn(dir: tempfile::TempDir, routes_path: PathBuf, args: &[&str]) -> Fallthrough {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fallthrough"))
            .arg("run")
            .args(["--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(["--https-addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the fallthrough binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let find = |marker: &str| {
            log.lock()
                .unwrap()
                .iter()
                .find_map(|l| l.split(marker).nth(1).map(|a| a.trim().parse().unwrap()))
        };
        let (http, https, admin) = wait_for("fallthrough to listen", || {
            Some((
                find("listening for HTTP on ")?,
                find("listening for HTTPS on ")?,
                find("admin server listening on ")?,
            ))
        })
        .await;
        Fallthrough {
            child,
            http,
            https,
            admin,
            routes_path,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Replaces the routes file the way editors do: write aside, then rename over it.
    pub fn write_routes(&self, routes: &str) {
        let tmp = self.routes_path.with_extension("tmp");
        std::fs::write(&tmp, routes).unwrap();
        std::fs::rename(&tmp, &self.routes_path).unwrap();
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let child = &mut self.child;
        wait_for("fallthrough to exit", || child.try_wait().unwrap())
            .await
            .code()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Every sample of a metric family, as "name{labels}" → value (labels sorted as exported).
    pub async fn samples(&self, family: &str) -> HashMap<String, f64> {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(family) && !l.starts_with('#'))
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                let name = key.split('{').next()?;
                if name != family {
                    return None;
                }
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// The value of one sample, 0 if absent.
    pub async fn sample(&self, key: &str) -> f64 {
        let family = key.split('{').next().unwrap();
        self.samples(family).await.get(key).copied().unwrap_or(0.0)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        get(self.http, path).await
    }
}

impl Drop for Fallthrough {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` until it yields a value; fails the test after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async `probe` until it is true; fails the test after [`DEADLINE`].
pub async fn wait_for_async<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one request with a fresh client.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{addr}{pq}").parse().unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(DEADLINE, client.request(Request::from_parts(parts, body)))
        .await
        .expect("response within the deadline")
        .expect("request succeeds");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

/// Deterministic pseudo-random bytes, so a replay mix-up cannot go unnoticed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A response as read off the wire by [`RawConn`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One client connection speaking raw HTTP/1.1, for what a client library hides:
/// pipelining, framing on the wire, when the server closes.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn open(addr: SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
            .await
            .expect("the server answers or closes within the deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "connection closed mid-response");
        }
    }

    async fn fields(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return out;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            out.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads the next response; `head_request` when it answers a HEAD (no body follows).
    pub async fn response(&mut self, head_request: bool) -> RawResponse {
        let status_line = self.line().await;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
        let headers = self.fields().await;
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            chunked: false,
        };
        if head_request || status == 204 || status == 304 {
            return resp;
        }
        if resp.header("transfer-encoding") == Some("chunked") {
            resp.chunked = true;
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                if size == 0 {
                    resp.trailers = self.fields().await;
                    return resp;
                }
                let chunk = self.take(size + 2).await;
                resp.body.extend_from_slice(&chunk[..size]);
            }
        }
        let length: usize = resp
            .header("content-length")
            .expect("a response with neither length nor chunking")
            .parse()
            .unwrap();
        resp.body = self.take(length).await;
        resp
    }

    /// Waits for the server to close the connection (discarding anything unread);
    /// panics if it is still open after the deadline.
    pub async fn wait_closed(&mut self) {
        while self.fill().await {}
    }
}
