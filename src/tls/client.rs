//! TLS to HTTPS backends: which certificates a backend may present.
//!
//! In: a backend's trust settings (the PEM of the CAs to trust, or the system's roots;
//! or no verification at all, when a user says so explicitly).
//! Out: a rustls [`ClientConfig`] for the upstream connections, built once per route
//! table, or an [`InvalidCa`] that says what to fix.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a backend's CA bundle cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCa {
    /// No `CERTIFICATE` block in the PEM.
    #[error("no PEM CERTIFICATE block found: give the CA certificates in PEM form")]
    NoCertificate,
    /// A certificate block is not a usable CA certificate.
    #[error("a certificate in the CA bundle cannot be used as a trust anchor")]
    BadCertificate,
    /// The system has no trusted roots to default to.
    #[error("the system has no trusted root certificates (install ca-certificates) and no CA was given: set caFile or caSecretName")]
    NoSystemRoots,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_roots(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The system's roots, read once: every backend that names no CA shares one config.
static SYSTEM: LazyLock<Option<Arc<ClientConfig>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "reading the system's trusted root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    (added > 0).then(|| Arc::new(with_roots(roots)))
});

/// The client config for a backend that trusts `ca_pem` (PEM CA certificates), or
/// the system's roots when `None`; with `insecure_skip_verify`, one that checks nothing.
pub fn config(
    ca_pem: Option<&[u8]>,
    insecure_skip_verify: bool,
) -> Result<Arc<ClientConfig>, InvalidCa> {
    if insecure_skip_verify {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
            .with_no_client_auth();
        return Ok(Arc::new(config));
    }
    let Some(pem) = ca_pem else {
        return SYSTEM.clone().ok_or(InvalidCa::NoSystemRoots);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|_| InvalidCa::NoCertificate)?;
    if certs.is_empty() {
        return Err(InvalidCa::NoCertificate);
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|_| InvalidCa::BadCertificate)?;
    }
    Ok(Arc::new(with_roots(roots)))
}

/// `insecureSkipVerify: true`: any certificate is accepted, signatures still checked
/// so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
