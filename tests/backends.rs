//! Backends beyond plain HTTP over TCP: HTTP over a Unix socket (a sidecar), and HTTPS
//! backends whose certificate is checked against a CA, a name, or nothing at all.

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::{backend, Fallthrough};

/// Serves `name says hello` on every connection `accept` yields.
async fn serve<S, F, Fut>(name: &'static str, mut accept: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    while let Some(stream) = accept().await {
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let body = format!("{name} says hello to {}", req.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(primary: &str, primary_extra: &str, fallback: &str, spec: &str) -> String {
    format!(
        "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: r, namespace: web}}\nspec:\n  primary: {{url: \"{primary}\"{primary_extra}}}\n  fallback: {{url: \"{fallback}\"}}\n{spec}"
    )
}

#[tokio::test]
async fn http_over_a_unix_socket_and_a_missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let listener = Arc::new(tokio::net::UnixListener::bind(&sock).unwrap());
    tokio::spawn(serve("sidecar", move || {
        let listener = listener.clone();
        async move { listener.accept().await.ok().map(|(s, _)| s) }
    }));
    let fallback = backend("new").start().await;
    let ft = Fallthrough::start(&format!(
        "{}---\n{}",
        route(
            &format!("unix:{}", sock.display()),
            "",
            &fallback.url(),
            "  paths: [/app]\n"
        ),
        route(
            &format!("unix:{}", dir.path().join("none.sock").display()),
            "",
            &fallback.url(),
            "  paths: [/gone]\n  fallbackOnError: true\n",
        )
        .replace("name: r,", "name: gone,")
    ))
    .await;
    let (status, _, body) = ft.get("/app/x").await;
    assert_eq!(status, 200);
    assert_eq!(body, "sidecar says hello to /app/x");
    assert!(fallback.seen().is_empty());
    // No such socket: the request never left, so with fallbackOnError it goes on.
    let (status, _, body) = ft.get("/gone/y").await;
    assert_eq!(status, 200);
    assert_eq!(body, "new says hello");
    assert_eq!(
        ft.sample("fallthrough_fallbacks_total{namespace=\"web\",reason=\"error\",route=\"gone\"}")
            .await,
        1.0
    );
}

/// A CA, and an HTTPS backend whose certificate it issued for `backend.test`.
struct TlsBackend {
    port: u16,
    ca_pem: String,
}

async fn tls_backend() -> TlsBackend {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["backend.test".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let chain = vec![leaf.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = Arc::new(listener);
    tokio::spawn(serve("https", move || {
        let listener = listener.clone();
        let acceptor = acceptor.clone();
        async move {
            loop {
                let (tcp, _) = listener.accept().await.ok()?;
                // A refused handshake (the proxy distrusts us) is not the end of the server.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    return Some(tls);
                }
            }
        }
    }));
    TlsBackend {
        port,
        ca_pem: ca_cert.pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn an_https_backend_is_trusted_by_its_ca_and_name_and_refused_otherwise() {
    let tls = tls_backend().await;
    let other = tls_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &tls.ca_pem);
    let wrong_ca = write(dir.path(), "other-ca.pem", &other.ca_pem);
    let fallback = backend("new").start().await;
    let url = format!("https://127.0.0.1:{}", tls.port);
    let doc = |name: &str, path: &str, tls_block: &str| {
        route(
            &url,
            &format!(", tls: {{{tls_block}}}"),
            &fallback.url(),
            &format!("  paths: [{path}]\n"),
        )
        .replace("name: r,", &format!("name: {name},"))
    };
    let routes = [
        doc(
            "good",
            "/good",
            &format!("serverName: backend.test, caFile: \"{ca}\""),
        ),
        doc(
            "wrong-name",
            "/wrong-name",
            &format!("serverName: other.test, caFile: \"{ca}\""),
        ),
        doc(
            "wrong-ca",
            "/wrong-ca",
            &format!("serverName: backend.test, caFile: \"{wrong_ca}\""),
        ),
        doc("system", "/system", "serverName: backend.test"),
        doc(
            "skip",
            "/skip",
            "serverName: backend.test, insecureSkipVerify: true",
        ),
    ]
    .join("---\n");
    let ft = Fallthrough::start(&routes).await;

    let (status, _, body) = ft.get("/good/x").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(body, "https says hello to /good/x");
    for path in ["/wrong-name/x", "/wrong-ca/x", "/system/x"] {
        let (status, _, body) = ft.get(path).await;
        assert_eq!(status, 502, "{path}: {body:?}");
        assert!(
            String::from_utf8_lossy(&body).contains("TLS certificate"),
            "{path}: {body:?}"
        );
    }
    for route in ["wrong-name", "wrong-ca", "system"] {
        let key = format!(
            "fallthrough_upstream_errors_total{{backend=\"primary\",kind=\"tls\",namespace=\"web\",route=\"{route}\"}}"
        );
        assert_eq!(ft.sample(&key).await, 1.0, "{key}");
    }
    assert!(
        ft.log()
            .iter()
            .any(|l| l.contains("TLS") && l.contains("wrong-name")),
        "a refused certificate is logged with its route: {:?}",
        ft.log()
    );
    // Verification switched off, on purpose: served, and said so at startup.
    let (status, _, _) = ft.get("/skip/x").await;
    assert_eq!(status, 200);
    assert!(
        ft.log()
            .iter()
            .any(|l| l.contains("insecureSkipVerify") && l.contains("web/skip")),
        "{:?}",
        ft.log()
    );
    assert!(
        fallback.seen().is_empty(),
        "a TLS refusal is the primary's 502"
    );
}
