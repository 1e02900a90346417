//! The API-SSL service's certificate: self-signed, generated when the router starts
//! (as a RouterOS admin would make one with `/certificate add … sign`), with its PEM and
//! SHA-256 fingerprint available so a client under test can pin it.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// A generated certificate and what a client needs to trust it.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint_sha256: String,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint_sha256", &self.fingerprint_sha256)
            .finish()
    }
}

impl TlsIdentity {
    /// A new self-signed certificate for `identity` (as a DNS name), `localhost` and
    /// `address`.
    pub fn generate(identity: &str, address: IpAddr) -> Result<TlsIdentity, Error> {
        let names = vec![
            identity.to_string(),
            "localhost".to_string(),
            address.to_string(),
        ];
        let key =
            rcgen::generate_simple_self_signed(names).map_err(|e| Error::Tls(e.to_string()))?;
        let cert_der = key.cert.der().clone();
        let cert_pem = key.cert.pem();
        let private =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], private)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let fingerprint_sha256 = hex::encode(Sha256::digest(cert_der.as_ref()));
        Ok(TlsIdentity {
            cert_der,
            cert_pem,
            fingerprint_sha256,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }
}
