//! TLS certificates and their selection by SNI.
//!
//! In: PEM certificate chains and private keys (from route files today), and the hosts
//! of the routes that name them.
//! Out: validated [`Certificate`]s, a [`CertStore`] mapping host names to them, and the
//! rustls [`SniResolver`] the HTTPS listener asks on every handshake; it reads whichever
//! store was published last, so new handshakes use a new certificate at once while open
//! connections keep theirs. Private key material never appears in errors or logs.
//! The client side, TLS to HTTPS backends, is in [`client`].

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::routes::HostMatch;

pub mod client;

/// Why a certificate and key cannot be served. Messages name the problem, never the key.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCertificate {
    /// No `CERTIFICATE` block in the certificate PEM.
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    /// No private key block in the key PEM.
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey,
    /// The key type is not one rustls can sign with.
    #[error("the private key type is not supported (use RSA, ECDSA P-256/P-384 or Ed25519)")]
    UnsupportedKey,
    /// The key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The leaf certificate cannot be parsed.
    #[error("the certificate cannot be parsed as X.509")]
    Unparseable,
    /// The leaf certificate has expired.
    #[error("the certificate expired at {0} (unix time)")]
    Expired(i64),
}

/// A certificate chain and key ready to serve.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter, in unix seconds.
    pub not_after: i64,
}

/// Parses and checks a certificate chain and its key: present, matching, not expired at `now`.
pub fn parse(cert_pem: &[u8], key_pem: &[u8], now: i64) -> Result<Certificate, InvalidCertificate> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| InvalidCertificate::NoCertificate)?;
    let leaf = chain.first().ok_or(InvalidCertificate::NoCertificate)?;
    let not_after = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| InvalidCertificate::Unparseable)?
        .1
        .validity()
        .not_after
        .timestamp();
    if not_after < now {
        return Err(InvalidCertificate::Expired(not_after));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| InvalidCertificate::NoKey)?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| InvalidCertificate::UnsupportedKey)?;
    let certified = CertifiedKey::new(chain, signer);
    if certified.keys_match().is_err() {
        return Err(InvalidCertificate::KeyMismatch);
    }
    Ok(Certificate {
        key: Arc::new(certified),
        not_after,
    })
}

/// Seconds since the Unix epoch, for certificate expiry checks.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Certificates by the host names they serve.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    any: Option<Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Serves `cert` for `hosts` (empty: any host without a more specific certificate).
    /// The first certificate given for a host keeps it.
    pub fn add(&mut self, hosts: &[HostMatch], cert: &Certificate) {
        if hosts.is_empty() {
            self.any.get_or_insert_with(|| cert.key.clone());
        }
        for host in hosts {
            let (map, name) = match host {
                HostMatch::Exact(h) => (&mut self.exact, h),
                HostMatch::Wildcard(suffix) => (&mut self.wildcard, suffix),
            };
            map.entry(name.clone()).or_insert_with(|| cert.key.clone());
        }
    }

    /// The certificate for clients that send no SNI or an unknown name.
    pub fn set_default(&mut self, cert: &Certificate) {
        self.default = Some(cert.key.clone());
    }

    /// The certificate for `sni`: exact name, then the longest wildcard, then a route
    /// for any host, then the default.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let named = sni.and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            self.exact.get(&sni).or_else(|| {
                sni.match_indices('.')
                    .filter(|(i, _)| *i > 0)
                    .find_map(|(i, _)| self.wildcard.get(&sni[i..]))
            })
        });
        named
            .or(self.any.as_ref())
            .or(self.default.as_ref())
            .cloned()
    }

    /// Whether any certificate is configured at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any.is_none()
            && self.default.is_none()
    }
}

/// Picks a certificate by SNI from the last published store.
#[derive(Debug, Default)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    /// Swaps in a new store; handshakes already done keep their certificate.
    pub fn publish(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // None aborts the handshake with an alert: no certificate for that name.
        self.store.load().find(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_parses_and_mismatches_are_refused_without_showing_the_key() {
        let (cert, key) = generate(&["shop.test"]);
        let (_, other_key) = generate(&["other.test"]);
        let parsed = parse(cert.as_bytes(), key.as_bytes(), 0).unwrap();
        assert!(parsed.not_after > 0);
        let err = parse(cert.as_bytes(), other_key.as_bytes(), 0).unwrap_err();
        assert_eq!(err, InvalidCertificate::KeyMismatch);
        assert!(!err.to_string().contains("PRIVATE"), "{err}");
        assert_eq!(
            parse(b"junk", key.as_bytes(), 0).unwrap_err(),
            InvalidCertificate::NoCertificate
        );
        assert_eq!(
            parse(cert.as_bytes(), b"junk", 0).unwrap_err(),
            InvalidCertificate::NoKey
        );
        let expired = parse(cert.as_bytes(), key.as_bytes(), i64::MAX).unwrap_err();
        assert!(matches!(expired, InvalidCertificate::Expired(_)));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_any_then_default() {
        let make = |n: &str| {
            let (c, k) = generate(&[n]);
            parse(c.as_bytes(), k.as_bytes(), 0).unwrap()
        };
        let (shop, blog, default) = (make("shop.test"), make("*.blog.test"), make("default.test"));
        let mut store = CertStore::default();
        store.add(&[HostMatch::Exact("shop.test".into())], &shop);
        store.add(&[HostMatch::Wildcard(".blog.test".into())], &blog);
        assert!(Arc::ptr_eq(
            &store.find(Some("SHOP.test")).unwrap(),
            &shop.key
        ));
        assert!(Arc::ptr_eq(
            &store.find(Some("a.b.blog.test")).unwrap(),
            &blog.key
        ));
        assert!(
            store.find(Some("unknown.test")).is_none(),
            "no default: the handshake fails"
        );
        store.set_default(&default);
        assert!(Arc::ptr_eq(&store.find(None).unwrap(), &default.key));
        assert!(Arc::ptr_eq(
            &store.find(Some("unknown.test")).unwrap(),
            &default.key
        ));
    }
}
