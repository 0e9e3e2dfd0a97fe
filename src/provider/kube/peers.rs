//! The other replicas, and what they counted: their `GET /traffic` reports.
//!
//! In: the EndpointSlices of the metrics Service (`kubernetes.io/service-name=<svc>`),
//! and each ready endpoint's admin port.
//! Out: the peers to ask ([`peers`], pure) and each one's [`TrafficReport`] ([`fetch`]),
//! within a deadline and a size cap; a peer that fails is left out of the round.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::insight::report::TrafficReport;

/// The metrics Service's port name (charts/fallthrough, `service-metrics.yaml`).
pub const PORT_NAME: &str = "metrics";
/// Largest `/traffic` answer read: about 650 bytes a route, so some 50,000 routes.
const MAX_REPORT_BYTES: usize = 32 * 1024 * 1024;

/// A replica to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Who it is from one round to the next: `pod namespace/name` when the endpoint
    /// names its pod, else its address.
    pub key: String,
    /// Its admin listener.
    pub addr: SocketAddr,
}

/// The ready endpoints of `slices`, on the port named `port_name` (or a slice's only
/// port), one per pod: a dual-stack pod in an IPv4 and an IPv6 slice is asked once.
pub fn peers(slices: &[EndpointSlice], port_name: &str) -> Vec<Peer> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for slice in slices {
        let Some(port) = slice_port(slice, port_name) else {
            continue;
        };
        // A missing `ready` means ready, per the EndpointSlice API.
        let ready = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for endpoint in ready {
            // Consumers use the first address (the API allows more, for the same pod).
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            let key = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| {
                    let name = r.name.as_deref()?;
                    Some(format!(
                        "pod {}/{name}",
                        r.namespace.as_deref().unwrap_or("")
                    ))
                })
                .unwrap_or_else(|| addr.to_string());
            if seen.insert(key.clone()) {
                out.push(Peer { key, addr });
            }
        }
    }
    out
}

fn slice_port(slice: &EndpointSlice, port_name: &str) -> Option<u16> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let named = ports.iter().find(|p| p.name.as_deref() == Some(port_name));
    let port = match (named, ports) {
        (Some(p), _) => p,
        (None, [only]) => only,
        _ => return None,
    };
    u16::try_from(port.port?).ok()
}

/// Why a peer's report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// It answered 404: a replica of an older version, without `/traffic`.
    #[error("GET /traffic answered 404: a replica of an older version serves no /traffic")]
    NotServed,
    /// It answered, but neither 200 nor 404.
    #[error("GET /traffic answered {0}")]
    Status(u16),
    /// The body broke off or was over the cap.
    #[error("reading the answer: {0}")]
    Body(String),
    /// The body is not a traffic report.
    #[error("the answer is not a traffic report: {0}")]
    Json(#[from] serde_json::Error),
}

/// `GET http://<addr>/traffic`, all of it within `deadline`.
pub async fn fetch(addr: SocketAddr, deadline: Duration) -> Result<TrafficReport, PeerError> {
    tokio::time::timeout(deadline, exchange(addr))
        .await
        .map_err(|_| PeerError::Timeout(deadline))?
}

async fn exchange(addr: SocketAddr) -> Result<TrafficReport, PeerError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(PeerError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let request = http::Request::get("/traffic")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .expect("a static request is valid");
    let answer = async {
        let response = sender.send_request(request).await?;
        match response.status() {
            http::StatusCode::OK => {}
            http::StatusCode::NOT_FOUND => return Err(PeerError::NotServed),
            other => return Err(PeerError::Status(other.as_u16())),
        }
        let body = Limited::new(response.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
            .map_err(|e| PeerError::Body(e.to_string()))?
            .to_bytes();
        Ok(serde_json::from_slice(&body)?)
    };
    // The connection is driven here, not in a task of its own: when the deadline drops
    // this future, the socket closes with it.
    tokio::pin!(connection, answer);
    tokio::select! {
        biased;
        result = &mut answer => result,
        ended = &mut connection => match ended {
            Err(e) => Err(e.into()),
            // Closed after answering: what it sent is read to its end (or breaks off).
            Ok(()) => answer.await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("the fixture is an EndpointSlice")
    }

    fn metrics_slice(name: &str, port: u16, endpoints: serde_json::Value) -> EndpointSlice {
        slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "fallthrough",
                "labels": {"kubernetes.io/service-name": "fallthrough-metrics"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
    }

    fn pod(name: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Pod", "namespace": "fallthrough", "name": name})
    }

    #[test]
    fn ready_endpoints_on_the_metrics_port_once_per_pod() {
        let v4 = metrics_slice(
            "m-v4",
            9090,
            serde_json::json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": pod("ft-a")},
                {"addresses": ["10.0.0.2"], "targetRef": pod("ft-b")},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}, "targetRef": pod("ft-c")},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true}},
            ]),
        );
        let mut v6 = metrics_slice(
            "m-v6",
            9090,
            serde_json::json!([{"addresses": ["fd00::1"], "targetRef": pod("ft-a")}]),
        );
        v6.address_type = "IPv6".into();
        let got = peers(&[v4, v6], PORT_NAME);
        let want = [
            ("pod fallthrough/ft-a", "10.0.0.1:9090"),
            ("pod fallthrough/ft-b", "10.0.0.2:9090"),
            ("10.0.0.4:9090", "10.0.0.4:9090"),
        ];
        let got: Vec<(String, String)> = got
            .into_iter()
            .map(|p| (p.key, p.addr.to_string()))
            .collect();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, a)| (k.to_string(), a.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_port_is_found_by_name_or_as_the_only_one() {
        let endpoints = serde_json::json!([{"addresses": ["fd00::7"]}]);
        let mut s = metrics_slice("m", 9191, endpoints);
        assert_eq!(
            peers(std::slice::from_ref(&s), PORT_NAME)[0]
                .addr
                .to_string(),
            "[fd00::7]:9191"
        );
        s.ports.as_mut().unwrap()[0].name = None;
        assert_eq!(
            peers(std::slice::from_ref(&s), PORT_NAME).len(),
            1,
            "the only port"
        );
        let mut other = s.ports.as_ref().unwrap()[0].clone();
        other.name = Some("http".into());
        s.ports.as_mut().unwrap().push(other);
        assert!(
            peers(&[s], PORT_NAME).is_empty(),
            "two ports, none named metrics"
        );
    }

    /// A one-shot HTTP server answering `answer` (raw bytes) to the first request.
    async fn server(answer: Option<&'static str>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /traffic HTTP/1.1\r\n"));
            match answer {
                Some(a) => conn.write_all(a.as_bytes()).await.unwrap(),
                None => std::future::pending().await,
            }
            let _ = conn.shutdown().await;
        });
        addr
    }

    #[tokio::test]
    async fn fetch_reads_a_report_and_names_what_went_wrong() {
        let body = r#"{"replica":"ft-a","started":1700000000,"routes":[{"route":"web/shop","requests":4,"fallback":1,"legacyPaths":""}]}"#;
        let ok: &'static str = Box::leak(
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                .into_boxed_str(),
        );
        let report = fetch(server(Some(ok)).await, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            (report.replica.as_str(), report.routes[0].requests),
            ("ft-a", 4)
        );

        let not_found = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let err = fetch(server(Some(not_found)).await, Duration::from_secs(2)).await;
        assert!(matches!(err, Err(PeerError::NotServed)), "{err:?}");

        let broken = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
        let err = fetch(server(Some(broken)).await, Duration::from_secs(2)).await;
        assert!(matches!(err, Err(PeerError::Status(500))), "{err:?}");

        let garbage = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{]";
        let err = fetch(server(Some(garbage)).await, Duration::from_secs(2)).await;
        assert!(matches!(err, Err(PeerError::Json(_))), "{err:?}");

        let err = fetch(server(None).await, Duration::from_millis(200)).await;
        assert!(matches!(err, Err(PeerError::Timeout(_))), "{err:?}");
    }
}
