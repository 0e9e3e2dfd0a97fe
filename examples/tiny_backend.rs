//! Tiny, fast HTTP/1.1 backend used by `bench/run`.
//!
//! Usage: `tiny_backend --addr 127.0.0.1:0 --mode primary|fallback`
//!
//! Prints `listening on ADDR` as its first stdout line, then serves HTTP/1.1
//! with keep-alive until killed.
//!
//! * `primary`:  paths starting with `/hit` -> 200, everything else -> 404.
//! * `fallback`: 200 for everything.
//!
//! Request bodies are always drained completely before answering, so a
//! replayed POST body really crosses the wire both times.
//!
//! Runtime: a `current_thread` tokio runtime (one thread per backend process).
//! That keeps each backend's CPU use bounded to one core and identical for
//! every front being compared, so the fronts differ only in themselves.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// ~100-byte bodies; `Full` has an exact size hint, so hyper sends Content-Length.
const HIT_BODY: &[u8] =
    b"primary: hit -- this is a small response body from the legacy app, about one hundred bytes long.\n";
const NOT_FOUND_BODY: &[u8] =
    b"primary: 404 not found -- the legacy app does not know this path, ask the new app instead.....\n";
const FALLBACK_BODY: &[u8] =
    b"fallback: ok -- this is a small response body from the new app, about one hundred bytes long...\n";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Primary,
    Fallback,
}

fn usage() -> ! {
    eprintln!("usage: tiny_backend --addr HOST:PORT --mode primary|fallback");
    std::process::exit(2);
}

fn parse_args() -> (SocketAddr, Mode) {
    let mut addr: Option<SocketAddr> = None;
    let mut mode: Option<Mode> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match key.as_str() {
            "--addr" => {
                let v = value();
                addr = Some(v.parse().unwrap_or_else(|e| {
                    eprintln!("tiny_backend: bad --addr {v:?}: {e}");
                    std::process::exit(2)
                }));
            }
            "--mode" => {
                mode = Some(match value().as_str() {
                    "primary" => Mode::Primary,
                    "fallback" => Mode::Fallback,
                    _ => usage(),
                })
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    (
        addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        mode.unwrap_or_else(|| usage()),
    )
}

async fn handle(mode: Mode, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_hit = req.uri().path().starts_with("/hit");
    // Drain the request body fully before answering.
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let (status, text) = match mode {
        Mode::Fallback => (StatusCode::OK, FALLBACK_BODY),
        Mode::Primary if is_hit => (StatusCode::OK, HIT_BODY),
        Mode::Primary => (StatusCode::NOT_FOUND, NOT_FOUND_BODY),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, "text/plain".parse().unwrap());
    Ok(resp)
}

fn main() {
    let (addr, mode) = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!("tiny_backend: bind {addr}: {e}");
            std::process::exit(1)
        });
        let local = listener.local_addr().expect("local_addr");
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {local}");
            let _ = out.flush();
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // e.g. EMFILE under a connection storm: back off briefly.
                    eprintln!("tiny_backend: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(mode, req));
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
