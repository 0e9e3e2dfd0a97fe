//! A whole HTTP/1.x server connection (`h1::server::serve_io`) driven from an in-memory
//! duplex, with the fuzz input as everything the client sends, in front of two real
//! recording backends on loopback (the primary answers 404 for paths under `/f`, so the
//! fallback is exercised too).
//!
//! The invariants, checked against a model that reads the same input with the codec:
//! - nothing reaches a backend that the codec did not accept from the client: the
//!   requests each backend receives are, in order, a subsequence of the requests the
//!   model accepted, with the same method, the normalised path, and the same body (or a
//!   prefix of it, when the upload broke off);
//! - every byte a backend receives is a request the codec accepts;
//! - one answer per request: the client's bytes are a sequence of well-formed responses,
//!   no more than one per request (plus one for a refused head); fewer only when the
//!   last answer said the connection closes.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use fallthrough::metrics::Metrics;
use fallthrough::proxy::h1::codec::{
    parse_request_head, parse_response_head, Asked, ChunkedDecoder, Decoded, RequestFraming,
    ResponseFraming, ResponseHead,
};
use fallthrough::proxy::h1::server::serve_io;
use fallthrough::proxy::{path, ConnInfo, Limits, Proxy};
use fallthrough::routes::{Addr, Answerer, Backend, Protocol, Route, RouteTable, Timeouts};
use http::Method;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as a backend or the model saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    body: Vec<u8>,
    /// The body arrived whole.
    whole: bool,
}

/// What the model read from the client's bytes.
#[derive(Debug, Default)]
struct Model {
    requests: Vec<Seen>,
    /// The codec refused a head: one more answer (the error) is owed.
    refused: bool,
}

/// Reads one body of `framing` from the front of `buf`: its bytes, and whether it is whole.
fn take_body(buf: &mut BytesMut, framing: RequestFraming) -> (Vec<u8>, bool) {
    match framing {
        RequestFraming::Empty => (Vec::new(), true),
        RequestFraming::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let take = n.min(buf.len());
            (buf.split_to(take).to_vec(), take == n)
        }
        RequestFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            loop {
                match decoder.decode(buf) {
                    Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                    Ok(Decoded::Trailers(_) | Decoded::End) => return (body, true),
                    Ok(Decoded::NeedMore) | Err(_) => return (body, false),
                }
            }
        }
    }
}

/// The path a backend should get for a target: normalised as the proxy routes it.
fn routed_path(uri: &http::Uri) -> Option<String> {
    match uri.path() {
        "*" => Some("*".into()),
        p => path::normalize(p).ok().map(|p| p.into_owned()),
    }
}

fn model(input: &[u8]) -> Model {
    let mut buf = BytesMut::from(input);
    let mut model = Model::default();
    loop {
        match parse_request_head(&mut buf) {
            Err(_) => {
                model.refused = true;
                return model;
            }
            Ok(None) => return model,
            Ok(Some(head)) => {
                let (body, whole) = take_body(&mut buf, head.framing);
                let path = routed_path(&head.uri).unwrap_or_default();
                // An upgrade the backend did not take (these never answer 101) leaves
                // the connection HTTP/1.1 (RFC 9110 §7.8): what follows is the next request.
                let stop = head.close || !whole;
                model.requests.push(Seen {
                    method: head.method,
                    path,
                    body,
                    whole,
                });
                if stop {
                    return model;
                }
            }
        }
    }
}

/// A backend that records every request and answers each with an empty `status`
/// (404 for paths under `/f` when `primary`), then closes: nothing is pooled, so what one
/// iteration sent never reaches the next.
async fn backend(primary: bool) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let accepting = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_one(conn, primary, record.clone()));
        }
    });
    Recorder {
        addr,
        seen,
        accepting,
    }
}

/// A recording backend of one iteration; its listener closes when this is dropped, so
/// iterations do not pile up sockets.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<Result<Seen, String>>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn serve_one(
    mut conn: TcpStream,
    primary: bool,
    seen: Arc<Mutex<Vec<Result<Seen, String>>>>,
) {
    let mut buf = BytesMut::new();
    let head = loop {
        match parse_request_head(&mut buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(err) => {
                seen.lock().unwrap().push(Err(format!(
                    "a backend got a head the codec refuses: {err:?} in {buf:?}"
                )));
                return;
            }
        }
        if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    };
    let path = head.uri.path().to_string();
    let (body, whole) = loop {
        let (body, whole) = take_body(&mut buf.clone(), head.framing);
        if whole || conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            break (body, whole);
        }
    };
    let status = if primary && path.starts_with("/f") {
        "404 Not Found"
    } else {
        "200 OK"
    };
    seen.lock().unwrap().push(Ok(Seen {
        method: head.method,
        path,
        body,
        whole,
    }));
    if whole {
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = conn.write_all(answer.as_bytes()).await;
    }
}

fn route(primary: &str, fallback: &str) -> Route {
    let backend = |addr: &str| {
        Backend::new(
            addr.to_string(),
            Protocol::Http,
            [Addr::Tcp(addr.parse().unwrap())],
        )
    };
    Route {
        namespace: "fuzz".into(),
        name: "all".into(),
        hosts: Vec::new(),
        paths: vec!["/".into()],
        primary: backend(primary),
        fallback: backend(fallback),
        fallback_on: vec![404],
        max_replay_bytes: 64 * 1024,
        not_found_from: Answerer::Fallback,
        fallback_on_error: false,
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(2),
            idle: Duration::from_secs(1),
        },
        redirect_to_https: false,
        cut_over: Vec::new(),
        remember: None,
    }
}

/// Checks that `got`, in order, is a subsequence of the model's requests.
fn check_subsequence(who: &str, got: &[Result<Seen, String>], model: &[Seen]) {
    let mut candidates = model.iter();
    for seen in got {
        let seen = match seen {
            Ok(seen) => seen,
            Err(why) => panic!("{who}: {why}"),
        };
        let matched = candidates.any(|m| {
            m.method == seen.method
                && m.path == seen.path
                && if seen.whole {
                    m.whole && m.body == seen.body
                } else {
                    m.body.starts_with(&seen.body)
                }
        });
        assert!(
            matched,
            "{who} got a request the client did not send as such: {seen:?}\nclient's: {model:?}"
        );
    }
}

/// The final answers in the client's bytes, each with whether it kept the connection.
fn answers(mut out: BytesMut, model: &Model) -> Vec<(u16, bool)> {
    let mut finals = Vec::new();
    while !out.is_empty() {
        let asked = Asked {
            head: model
                .requests
                .get(finals.len())
                .is_some_and(|r| r.method == Method::HEAD),
            upgrade: false,
        };
        let (status, framing, keep) = match parse_response_head(&mut out, asked) {
            Ok(Some(ResponseHead::Informational)) => continue,
            Ok(Some(ResponseHead::Final {
                parts,
                framing,
                keep_alive,
                ..
            })) => (parts.status.as_u16(), framing, keep_alive),
            Ok(None) => panic!("the client got half a response head: {out:?}"),
            Err(err) => panic!("the client got bytes that are no response: {err} in {out:?}"),
        };
        match framing {
            ResponseFraming::Length(n) => {
                let n = usize::try_from(n).unwrap();
                assert!(out.len() >= n, "a response body was cut short: {out:?}");
                let _ = out.split_to(n);
            }
            ResponseFraming::Chunked(mut decoder) => loop {
                match decoder.decode(&mut out) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::Trailers(_) | Decoded::End) => break,
                    other => panic!("a chunked answer is broken: {other:?} in {out:?}"),
                }
            },
            ResponseFraming::UntilClose => out.clear(),
            ResponseFraming::Switched => {
                panic!("a 101 reached the client, and no backend sent one")
            }
        }
        finals.push((status, keep));
    }
    finals
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fuzz_target!(|input: &[u8]| {
    let model = model(input);
    runtime().block_on(async {
        let primary = backend(true).await;
        let fallback = backend(false).await;
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            upstream_read_timeout: Duration::from_secs(2),
            replay_budget: 1024 * 1024,
        };
        let insight = fallthrough::insight::recorder::Insight::new(10, 1 << 20, "fuzz".into());
        let proxy = Proxy::new(
            Arc::new(Metrics::new(1)),
            insight,
            limits,
            1,
            fallthrough::proxy::Front::default(),
        );
        proxy.publish(RouteTable::build([route(&primary.addr, &fallback.addr)]).0);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let info = ConnInfo::new("10.0.0.1:40000".parse().unwrap(), false);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let conn = async {
            serve_io(&proxy, server, &info, &stop).await;
        };
        let send = async {
            let _ = to_server.write_all(input).await;
            let _ = to_server.shutdown().await;
        };
        let receive = async {
            let mut out = BytesMut::new();
            while from_server.read_buf(&mut out).await.unwrap_or(0) > 0 {}
            out
        };
        let ((), (), out) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(conn, send, receive)
        })
        .await
        .expect("the connection neither answered nor closed within 20 s");

        let got = primary.seen.lock().unwrap().clone();
        check_subsequence("the primary", &got, &model.requests);
        let got = fallback.seen.lock().unwrap().clone();
        check_subsequence("the fallback", &got, &model.requests);

        let finals = answers(out, &model);
        let owed = model.requests.len() + usize::from(model.refused);
        assert!(
            finals.len() <= owed,
            "{} answers to {owed} requests: {finals:?}",
            finals.len()
        );
        let whole = model.requests.iter().filter(|r| r.whole).count() + usize::from(model.refused);
        if finals.len() < whole {
            assert!(
                finals.last().is_some_and(|(_, keep)| !keep),
                "{} answers to {whole} whole requests, and none said close: {finals:?}\n{model:?}",
                finals.len()
            );
        }
        if model.refused && finals.len() == owed {
            let (status, keep) = finals[owed - 1];
            assert!(
                status >= 400 && !keep,
                "a refused head got {status} (keep-alive {keep})"
            );
        }
    });
});
