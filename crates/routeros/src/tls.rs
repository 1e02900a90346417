//! TLS to a router (`api-ssl`, port 8729): a pinned certificate, or an explicit opt-in to
//! accept any certificate.
//!
//! RouterOS routers almost always present self-signed certificates, so web PKI does not
//! help; Postern pins the certificate it expects instead (by its DER, its PEM, or the
//! SHA-256 fingerprint of its DER). There is no default that accepts anything: the only
//! way to skip the check is [`TlsMode::InsecureAcceptAnyCertificate`]. Either way the
//! handshake signature is verified, so the peer must hold the certificate's private key.

use std::fmt;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The SHA-256 digest of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate in a PEM document.
    pub fn of_pem(pem: &[u8]) -> Result<Self, Error> {
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| Error::TlsConfig(format!("no certificate in pem: {e}")))?;
        Ok(Self::of_der(cert.as_ref()))
    }

    /// Parses 64 hex digits, with or without `:` between bytes (as `openssl x509
    /// -fingerprint -sha256` prints them), in either case.
    pub fn from_hex(text: &str) -> Result<Self, Error> {
        let digits: String = text
            .trim()
            .chars()
            .filter(|c| *c != ':' && !c.is_whitespace())
            .collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out)
            .map_err(|_| Error::TlsConfig("a sha-256 fingerprint is 64 hex digits".to_string()))?;
        Ok(Self(out))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for CertFingerprint {
    /// Lowercase hex, bytes separated by `:`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

/// How the router's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Accept only a certificate with this fingerprint.
    Pinned(CertFingerprint),
    /// Accept any certificate at all: a man in the middle goes unnoticed. For tests and
    /// for a first contact whose fingerprint is then pinned, never a default.
    InsecureAcceptAnyCertificate,
}

impl TlsMode {
    /// Pins a DER-encoded certificate.
    pub fn pinned_der(der: &[u8]) -> Self {
        Self::Pinned(CertFingerprint::of_der(der))
    }

    /// Pins the first certificate of a PEM document.
    pub fn pinned_pem(pem: &[u8]) -> Result<Self, Error> {
        Ok(Self::Pinned(CertFingerprint::of_pem(pem)?))
    }

    /// Pins a certificate by its SHA-256 fingerprint in hex.
    pub fn pinned_sha256(hex: &str) -> Result<Self, Error> {
        Ok(Self::Pinned(CertFingerprint::from_hex(hex)?))
    }
}

#[derive(Debug)]
struct Verifier {
    pin: Option<CertFingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if CertFingerprint::of_der(end_entity.as_ref()) == pin => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::General(
                "the router's certificate does not match the pinned fingerprint".to_string(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A connector for `mode`, on the ring provider (no process-wide default is installed).
pub fn connector(mode: &TlsMode) -> Result<tokio_rustls::TlsConnector, Error> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Verifier {
        pin: match mode {
            TlsMode::Pinned(pin) => Some(*pin),
            TlsMode::InsecureAcceptAnyCertificate => None,
        },
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_common_spelling() {
        let fp = CertFingerprint::of_der(b"not really a certificate");
        let plain = hex::encode(fp.as_bytes());
        let colons = fp.to_string();
        assert_eq!(colons.len(), 95);
        for text in [
            plain.clone(),
            plain.to_uppercase(),
            colons.clone(),
            colons.to_uppercase(),
        ] {
            assert_eq!(CertFingerprint::from_hex(&text).unwrap(), fp, "{text}");
        }
        for bad in [
            "",
            "abc",
            &plain[..62],
            &format!("{plain}00"),
            &format!("g{}", &plain[1..]),
        ] {
            assert!(CertFingerprint::from_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert!(TlsMode::pinned_pem(b"hello").is_err());
    }
}
