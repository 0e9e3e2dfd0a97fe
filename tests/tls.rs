//! HTTPS through the real binary, checked with a real client (curl): certificates chosen
//! by SNI, HTTP/2 through a fallback, rotation, bad certificates, redirects.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// A CA and leaf certificates it signs, written as PEM files.
struct Pki {
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fallthrough test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        Pki { ca, issuer }
    }

    /// Writes `NAME.pem` and `NAME-key.pem` for `hosts`, with common name `cn`.
    fn leaf(&self, dir: &Path, name: &str, cn: &str, hosts: &[&str]) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Write aside and rename, as cert-manager and editors do.
        for (file, text) in [
            (format!("{name}.pem"), cert.pem()),
            (format!("{name}-key.pem"), key.serialize_pem()),
        ] {
            let tmp = dir.join(format!("{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(file)).unwrap();
        }
    }

    fn write_ca(&self, dir: &Path) -> String {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.ca.pem()).unwrap();
        path.display().to_string()
    }
}

/// Writes `routes` to `dir/routes.yaml` (beside the certificate files) and runs
/// fallthrough on it with `extra` arguments.
async fn start_in(dir: &Path, routes: &str, extra: &[&str]) -> Fallthrough {
    let routes_path = dir.join("routes.yaml");
    std::fs::write(&routes_path, routes).unwrap();
    let routes_arg = routes_path.display().to_string();
    let mut args = vec!["--routes", routes_arg.as_str()];
    args.extend_from_slice(extra);
    Fallthrough::spawn(tempfile::tempdir().unwrap(), routes_path.clone(), &args).await
}

/// curl over HTTPS to `host` (resolved to the proxy); returns (exit code, stdout, stderr).
/// Runs off the test's runtime, which also runs the in-process backends.
async fn curl(
    ft: &Fallthrough,
    ca: &str,
    host: &str,
    path: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let port = ft.https.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-v", "--max-time", "10", "--cacert", ca])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(format!("https://{host}:{port}{path}"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("curl runs (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_route(
    name: &str,
    hosts: &str,
    primary: &str,
    fallback: &str,
    cert: &str,
    extra: &str,
) -> String {
    route(
        name,
        primary,
        fallback,
        &format!(
            "  hosts: {hosts}\n  tls: {{certFile: {cert}.pem, keyFile: {cert}-key.pem}}\n{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_picks_certificates_by_sni_and_speaks_http2_through_a_fallback() {
    let php = backend("php")
        .status(404)
        .on("/old", 200, "legacy page")
        .start()
        .await;
    let py = backend("py").body("python page").start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.leaf(dir.path(), "shop", "shop v1", &["shop.test"]);
    pki.leaf(dir.path(), "blog", "blog", &["*.blog.test"]);
    let ca = pki.write_ca(dir.path());
    let routes = [
        tls_route(
            "shop",
            "[shop.test]",
            &php.url(),
            &py.url(),
            "shop",
            "  redirectToHttps: true\n",
        ),
        tls_route(
            "blog",
            "[\"*.blog.test\"]",
            &php.url(),
            &py.url(),
            "blog",
            "",
        ),
    ]
    .join("---\n");
    let ft = start_in(dir.path(), &routes, &[]).await;

    // SNI selects the certificate curl verifies against the host name.
    let (code, out, err) = curl(&ft, &ca, "shop.test", "/old", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("200 2"), "HTTP/2 by ALPN: {out}");
    assert!(out.starts_with("legacy page"), "{out}");
    assert!(err.contains("CN=shop v1"), "{err}");
    let (code, out, err) = curl(&ft, &ca, "a.blog.test", "/new", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("python page") && out.ends_with("200 2"),
        "HTTP/2 through the fallback: {out}"
    );
    assert!(err.contains("CN=blog"), "{err}");
    let (_, out, _) = curl(&ft, &ca, "shop.test", "/new", &["--http1.1"]).await;
    assert!(
        out.starts_with("python page") && out.ends_with("200 1.1"),
        "{out}"
    );
    let seen = &py.seen()[0];
    assert_eq!(seen.headers["x-forwarded-proto"], "https");

    // No certificate for the name and no default: the handshake fails, and is counted.
    let (code, _, _) = curl(&ft, &ca, "unknown.test", "/", &[]).await;
    assert_ne!(code, 0, "a handshake without a certificate must fail");
    let failed = ft
        .sample(r#"fallthrough_tls_handshake_errors_total{reason="no_certificate"}"#)
        .await;
    assert!(failed >= 1.0, "handshake failures are counted: {failed}");
    let expiry = ft
        .samples("fallthrough_tls_certificate_expiry_timestamp_seconds")
        .await;
    assert_eq!(expiry.len(), 2, "{expiry:?}");

    // Plain HTTP to a route with redirectToHttps gets a 308 to the same URL.
    let req = http::Request::get("/old?q=1")
        .header("host", "shop.test:8080")
        .body(Default::default())
        .unwrap();
    let (status, headers, _) = send(ft.http, req).await;
    assert_eq!(status, 308);
    assert_eq!(headers["location"], "https://shop.test/old?q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_at_once_and_a_bad_one_keeps_the_old() {
    let php = backend("php").start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.leaf(dir.path(), "shop", "shop v1", &["shop.test"]);
    let ca = pki.write_ca(dir.path());
    let ft = start_in(
        dir.path(),
        &tls_route("shop", "[shop.test]", &php.url(), &php.url(), "shop", ""),
        &[],
    )
    .await;
    assert!(curl(&ft, &ca, "shop.test", "/", &[])
        .await
        .2
        .contains("CN=shop v1"));

    // Renewal: new files in place; new handshakes present the new certificate.
    pki.leaf(dir.path(), "shop", "shop v2", &["shop.test"]);
    let start = std::time::Instant::now();
    while !curl(&ft, &ca, "shop.test", "/", &[])
        .await
        .2
        .contains("CN=shop v2")
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the renewed certificate was not served"
        );
    }

    // A key that does not match: the reload fails, v2 keeps serving, the key stays secret.
    let other = tempfile::tempdir().unwrap();
    pki.leaf(other.path(), "stray", "stray", &["shop.test"]);
    std::fs::copy(
        other.path().join("stray-key.pem"),
        dir.path().join("shop-key.pem.tmp"),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join("shop-key.pem.tmp"),
        dir.path().join("shop-key.pem"),
    )
    .unwrap();
    let start = std::time::Instant::now();
    while ft
        .sample(r#"fallthrough_config_reloads_total{result="failure"}"#)
        .await
        < 1.0
    {
        assert!(start.elapsed() < DEADLINE, "the bad key was never noticed");
    }
    let (code, _, err) = curl(&ft, &ca, "shop.test", "/", &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("CN=shop v2"),
        "the last good certificate keeps serving: {err}"
    );
    let log = ft.log().join("\n");
    assert!(log.contains("does not match the certificate"), "{log}");
    assert!(
        !log.contains("PRIVATE KEY"),
        "key material must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs h2spec, built from Go modules by scripts/e2e-binaries: run scripts/test"]
async fn h2spec_finds_no_conformance_failure_on_the_https_listener() {
    let h2spec = std::path::PathBuf::from(std::env::var("FALLTHROUGH_E2E_BIN").expect(
        "FALLTHROUGH_E2E_BIN is not set: run scripts/test, or export FALLTHROUGH_E2E_BIN=$(scripts/e2e-binaries --print-dir)",
    ))
    .join("h2spec");
    let php = backend("php").status(404).start().await;
    let py = backend("py").start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.leaf(dir.path(), "default", "h2spec", &["localhost"]);
    let (cert, key) = (
        dir.path().join("default.pem").display().to_string(),
        dir.path().join("default-key.pem").display().to_string(),
    );
    let args = ["--default-cert-file", &cert, "--default-key-file", &key];
    let ft = start_in(dir.path(), &route("any", &php.url(), &py.url(), ""), &args).await;
    let port = ft.https.port().to_string();
    let mut cmd = Command::new(h2spec);
    cmd.args(["-t", "-k", "-h", "127.0.0.1", "-p", &port, "-o", "5"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.lines().last().unwrap_or_default().to_string();
    println!("h2spec: {summary}");
    assert!(
        summary.contains("tests,") && summary.ends_with(" 0 failed"),
        "h2spec found failures:\n{report}"
    );
}

/// One request over a fresh TLS connection (so every request is a new handshake):
/// the common name of the certificate the server presented and the response status.
async fn fresh_tls_request(
    addr: std::net::SocketAddr,
    roots: std::sync::Arc<rustls::RootCertStore>,
) -> Result<(String, u16), String> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no certificate")?;
    let cn = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| e.to_string())?
        .1
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "shop.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok((cn, resp.status().as_u16()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificates_under_load_fails_no_request() {
    let php = backend("php").start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.leaf(dir.path(), "shop", "shop v0", &["shop.test"]);
    let routes = tls_route("shop", "[shop.test]", &php.url(), &php.url(), "shop", "");
    let ft = start_in(dir.path(), &routes, &[]).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let roots = std::sync::Arc::new(roots);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (stop, roots, addr) = (stop.clone(), roots.clone(), ft.https);
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match fresh_tls_request(addr, roots.clone()).await {
                        Ok((_, 200)) => ok += 1,
                        other => failures.push(format!("{other:?}")),
                    }
                }
                (ok, failures)
            })
        })
        .collect();
    for version in 1..=5 {
        let cn = format!("shop v{version}");
        pki.leaf(dir.path(), "shop", &cn, &["shop.test"]);
        let start = std::time::Instant::now();
        while fresh_tls_request(ft.https, roots.clone())
            .await
            .map(|r| r.0)
            != Ok(cn.clone())
        {
            assert!(start.elapsed() < DEADLINE, "{cn} was not served");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failures) = (0, Vec::new());
    for l in loops {
        let (o, f) = l.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    assert!(ok > 20, "the load ran ({ok} requests)");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across 5 rotations: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs h2load (Debian package nghttp2-client): run scripts/test"]
async fn h2load_over_http2_through_a_fallback_gets_all_answers() {
    let php = backend("php").status(404).start().await;
    let py = backend("py").body("python page").start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    pki.leaf(dir.path(), "shop", "shop", &["shop.test"]);
    let ft = start_in(
        dir.path(),
        &tls_route("shop", "[]", &php.url(), &py.url(), "shop", ""),
        &[],
    )
    .await;
    let url = format!("https://127.0.0.1:{}/new", ft.https.port());
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", "2000", "-c", "8", "-m", "10", &url]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("h2load runs (apt-get install nghttp2-client)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Application protocol: h2"), "{report}");
    assert!(
        report.contains("2000 succeeded, 0 failed, 0 errored"),
        "{report}"
    );
    assert!(report.contains("status codes: 2000 2xx"), "{report}");
    assert_eq!(
        py.seen().len(),
        2000,
        "every request went through the fallback"
    );
}
