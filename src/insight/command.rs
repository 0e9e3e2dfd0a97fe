//! `fallthrough paths`: read every replica's `/paths`, merge, print.
//!
//! In: admin URLs (`--admin`), or a cluster to find the fallthrough pods in, whose
//! `/paths` it reads through the API server's pod proxy (`get` on `pods/proxy`).
//! Out: the merged report as a table or JSON on stdout; progress and unreadable
//! replicas on stderr.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

use super::merge::{merge, render_table};
use super::report::{Class, PathsReport};
use crate::cli::PathsArgs;

/// How long one replica may take to answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest report read from one replica.
const MAX_REPORT: usize = 256 * 1024 * 1024;

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// An `--admin` value is not an http URL.
    #[error("--admin {0:?} is not an admin URL: give it like http://10.0.0.7:9090")]
    BadUrl(String),
    /// No replica could be read.
    #[error("no replica could be read (see the errors above)")]
    NoReplica,
    /// No pod matched.
    #[error("no running pod matches {selector} in namespace {namespace}: check --namespace and --selector")]
    NoPods {
        /// The namespace searched.
        namespace: String,
        /// The label selector used.
        selector: String,
    },
    /// The cluster could not be reached or listed.
    #[error("cannot list the fallthrough pods: {0}; give --kubeconfig (or KUBECONFIG), and the rights to list pods and get pods/proxy in that namespace, or read replicas directly with --admin URL")]
    Kube(String),
    /// The runtime could not start.
    #[error("cannot start: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Why one replica could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}: {1}")]
    Status(http::StatusCode, String),
    #[error("its report is larger than {MAX_REPORT} bytes")]
    TooLarge,
    #[error("its report is not JSON of this version: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Kube(String),
}

/// Runs `fallthrough paths`.
pub fn paths(args: PathsArgs) -> Result<(), PathsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(gather(&args))?;
    let mut report = report;
    report.filter(args.route.as_deref(), args.class, None);
    if args.json {
        report.filter(None, None, Some(args.limit));
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialise")
        );
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", render_table(&report, args.limit, now));
    }
    Ok(())
}

async fn gather(args: &PathsArgs) -> Result<PathsReport, PathsError> {
    let mut reports = Vec::new();
    if args.admin.is_empty() {
        for (name, result) in from_cluster(args).await? {
            keep(&mut reports, &name, result);
        }
    } else {
        for url in &args.admin {
            let uri: http::Uri = format!("{}/paths", url.trim_end_matches('/'))
                .parse()
                .map_err(|_| PathsError::BadUrl(url.clone()))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(PathsError::BadUrl(url.clone()));
            }
            keep(&mut reports, url, read_url(&uri).await);
        }
    }
    if reports.is_empty() {
        return Err(PathsError::NoReplica);
    }
    Ok(merge(reports))
}

fn keep(reports: &mut Vec<PathsReport>, name: &str, result: Result<PathsReport, ReadError>) {
    match result {
        Ok(report) => {
            eprintln!("read {name}: {} routes with traffic", report.routes.len());
            reports.push(report);
        }
        Err(err) => eprintln!("cannot read {name}: {err}; left out"),
    }
}

async fn read_url(uri: &http::Uri) -> Result<PathsReport, ReadError> {
    let authority = uri.authority().expect("checked").clone();
    let read = async {
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_REPORT)
            .collect()
            .await
            .map_err(|_| ReadError::TooLarge)?
            .to_bytes();
        if status != http::StatusCode::OK {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            return Err(ReadError::Status(status, text));
        }
        Ok(serde_json::from_slice(&body)?)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| ReadError::Timeout(READ_TIMEOUT))?
}

async fn from_cluster(
    args: &PathsArgs,
) -> Result<Vec<(String, Result<PathsReport, ReadError>)>, PathsError> {
    let kube = |e: &dyn std::fmt::Display| PathsError::Kube(e.to_string());
    let config = crate::provider::kube::config(args.kubeconfig.as_deref())
        .await
        .map_err(PathsError::Kube)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| kube(&e))?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &namespace);
    let list = pods
        .list(&ListParams::default().labels(&args.selector))
        .await
        .map_err(|e| kube(&e))?;
    let running: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    if running.is_empty() {
        return Err(PathsError::NoPods {
            namespace,
            selector: args.selector.clone(),
        });
    }
    let mut out = Vec::new();
    for pod in running {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let result = match pod_port(&pod, &args.port) {
            Some(port) => {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy/paths");
                read_through_proxy(&client, &path).await
            }
            None => Err(ReadError::Kube(format!(
                "it has no container port named {:?}: give --port with the admin port's name or number",
                args.port
            ))),
        };
        out.push((format!("pod {namespace}/{name}"), result));
    }
    Ok(out)
}

/// The pod's port named `port`, or `port` itself when it is a number: the pod proxy
/// takes numbers only.
fn pod_port(pod: &Pod, port: &str) -> Option<i32> {
    if let Ok(n) = port.parse() {
        return Some(n);
    }
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(port))
        .map(|p| p.container_port)
}

async fn read_through_proxy(client: &kube::Client, path: &str) -> Result<PathsReport, ReadError> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .expect("a valid request");
    let text = tokio::time::timeout(READ_TIMEOUT, client.request_text(req))
        .await
        .map_err(|_| ReadError::Timeout(READ_TIMEOUT))?
        .map_err(|e| {
            ReadError::Kube(format!(
                "{e} (reading through the API server's pod proxy needs get on pods/proxy)"
            ))
        })?;
    Ok(serde_json::from_str(&text)?)
}

/// Parses `--class`.
pub fn parse_class(value: &str) -> Result<Class, String> {
    Class::from_name(value)
        .ok_or_else(|| format!("{value:?} is not a class: use legacy, migrated or missing"))
}
