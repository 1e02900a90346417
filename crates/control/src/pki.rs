//! The control channel's PKI: the control plane's CA, the certificates it signs for
//! gateways (from a CSR the gateway made, so a gateway's private key never leaves it)
//! and issues to servers, and the rustls configurations that check each side's role.
//!
//! Names (SAN DNS, under the reserved `.invalid` top-level domain, so they never clash
//! with a real name): a gateway is `<gateway-id>.gateway.postern.invalid`, every server
//! `server.postern.invalid`. The CA carries a name constraint to `postern.invalid`.
//!
//! - A gateway (TLS server) accepts a client only with a certificate that chains to the
//!   CA, is for client authentication, and names the server role: a gateway's own
//!   certificate, though the CA signed it, is refused as a client.
//! - A server (TLS client) accepts a gateway only with a certificate that chains to the
//!   CA, is for server authentication, and names the very gateway it meant to reach
//!   ([`gateway_server_name`]): another gateway's valid certificate is refused.
//! - TLS 1.3 only, ALPN `h2`, ECDSA P-256 keys.
//!
//! Lifetimes (every certificate is back-dated by [`CLOCK_SKEW`] for clocks that differ):
//! the CA [`CA_LIFETIME`] (made once, at the control plane's first start); a gateway's
//! certificate [`GATEWAY_LIFETIME`], renewed over the control channel when it nears its
//! end; a server's certificate [`SERVER_LIFETIME`], issued afresh for each connection
//! to a gateway (one signature).
//!
//! Renewal (a gateway's certificate): a server sees the gateway's certificate in the TLS
//! handshake ([`CertificateInfo`]); once it is due ([`CertificateInfo::renew_at`]: a
//! third of its lifetime left, or a threshold of one's own) the server asks the gateway
//! for a request, which the gateway makes from the key it already holds
//! ([`GatewayCertificate::request`]: the key never leaves it, and is never replaced).
//! The CA signs it only if its key is the one the presented certificate carries
//! ([`Ca::renew_gateway`]), so whoever holds a gateway's name cannot swap its key. The
//! gateway takes the certificate only if it chains to its CA, names it and carries its
//! key ([`GatewayCertificate::check`]), then serves every new TLS connection with it
//! ([`GatewayCertificate`] is the rustls certificate resolver of
//! [`gateway_tls_renewable`]); live connections keep theirs.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::GatewayId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData as _, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName as TlsName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The DNS name (SAN) of every server's client certificate: the server role.
pub const SERVER_NAME: &str = "server.postern.invalid";

/// The domain every name of the control channel is under (the CA's name constraint).
pub const DOMAIN: &str = "postern.invalid";

/// How long the control plane's CA is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);

/// How long a gateway's certificate is valid.
pub const GATEWAY_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// How long a server's client certificate is valid.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// How far back every certificate's validity starts.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// ALPN: HTTP/2 over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Why a certificate, key or TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("pem: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("no certificate in the pem")]
    NoCertificate,
    #[error("the key is not the certificate's")]
    KeyMismatch,
    #[error("the certificate does not parse: {0}")]
    Parse(String),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the request's key is not the one the gateway's certificate carries")]
    OtherKey,
    #[error("the certificate is not this gateway's from its ca: {0}")]
    Untrusted(rustls::Error),
}

/// A private key, PEM (PKCS#8): a secret. Its `Debug` shows nothing of it; the caller
/// seals it (the CA's) or writes it to a 0600 file (a gateway's, a server's stays in
/// memory).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn new(pem: String) -> Self {
        KeyPem(pem)
    }

    /// The PEM text, to seal or write to a 0600 file; never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

/// The DNS name of a gateway's certificate: `<gateway-id>.gateway.postern.invalid`.
pub fn gateway_name(gateway: GatewayId) -> String {
    format!("{gateway}.gateway.{DOMAIN}")
}

/// What a server passes to its TLS connector to reach `gateway` and no other.
pub fn gateway_server_name(gateway: GatewayId) -> ServerName<'static> {
    // A uuid's text and fixed labels always make a valid DNS name.
    match ServerName::try_from(gateway_name(gateway)) {
        Ok(name) => name,
        Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
    }
}

/// The control plane's certificate authority.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA: an ECDSA P-256 key and a self-signed certificate, valid
    /// [`CA_LIFETIME`], that may sign only end-entity certificates under [`DOMAIN`].
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        // Unique per CA, so a certificate of another CA is told apart by its issuer.
        let tag: [u8; 4] = rand::random();
        params.distinguished_name = name(&format!(
            "Postern control plane CA {:08x}",
            u32::from_be_bytes(tag)
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName(DOMAIN.into())],
            excluded_subtrees: vec![],
        });
        validity(&mut params, CA_LIFETIME);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key)?;
        let issuer_key = KeyPair::from_pem(&key.serialize_pem())?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
            issuer: Issuer::new(params, issuer_key),
        })
    }

    /// The CA as stored: its certificate and its (unsealed) key, which must match.
    pub fn from_pem(cert_pem: &str, key_pem: &KeyPem) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem.expose())?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer_key = KeyPair::from_pem(key_pem.expose())?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key,
            issuer: Issuer::from_ca_cert_der(&der, issuer_key)?,
        })
    }

    /// The CA's certificate, PEM: what both sides trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM: a secret, sealed by the caller before it is stored.
    pub fn key_pem(&self) -> KeyPem {
        KeyPem(self.key.serialize_pem())
    }

    /// Signs a gateway's request (PEM, PKCS#10, its signature checked: the gateway holds
    /// the key) for [`GATEWAY_LIFETIME`], server authentication only, with the one name
    /// [`gateway_name`]`(gateway)` whatever the request asked for. Returns the
    /// certificate, PEM.
    pub fn sign_gateway(&self, csr_pem: &str, gateway: GatewayId) -> Result<String, PkiError> {
        self.sign_gateway_for(csr_pem, gateway, GATEWAY_LIFETIME)
    }

    /// [`Ca::sign_gateway`] for another lifetime (a lab's, a test's: a certificate near
    /// its end).
    pub fn sign_gateway_for(
        &self,
        csr_pem: &str,
        gateway: GatewayId,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign_request(request, gateway, lifetime)
    }

    /// A gateway's renewal: signs its request as [`Ca::sign_gateway`] does, but only if
    /// the request's key is the one `current` (the certificate the gateway presented in
    /// its TLS handshake) carries: [`PkiError::OtherKey`] otherwise.
    pub fn renew_gateway(
        &self,
        csr_pem: &str,
        gateway: GatewayId,
        current: &CertificateInfo,
    ) -> Result<String, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        if request.public_key.der_bytes() != current.public_key.as_slice() {
            return Err(PkiError::OtherKey);
        }
        self.sign_request(request, gateway, GATEWAY_LIFETIME)
    }

    fn sign_request(
        &self,
        request: CertificateSigningRequestParams,
        gateway: GatewayId,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let params = leaf(
            &gateway_name(gateway),
            ExtendedKeyUsagePurpose::ServerAuth,
            lifetime,
        )?;
        let cert = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(cert.pem())
    }

    /// A server's client certificate and its new key, for [`SERVER_LIFETIME`]: client
    /// authentication only, SAN [`SERVER_NAME`]; `name` (the server's, for people
    /// reading the certificate) goes in the subject's common name.
    pub fn issue_server(&self, name: &str) -> Result<(String, KeyPem), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf(
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ClientAuth,
            SERVER_LIFETIME,
        )?;
        params.distinguished_name = self::name(&format!("{name} ({SERVER_NAME})"));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), KeyPem(key.serialize_pem())))
    }
}

/// A gateway's new key pair and its certificate request, made on the gateway at join:
/// `(key, csr_pem)`. The key stays on the gateway (a 0600 file); the request goes to
/// the control plane, which signs it with [`Ca::sign_gateway`].
pub fn gateway_request() -> Result<(KeyPem, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Postern gateway");
    let csr = params.serialize_request(&key)?;
    Ok((KeyPem(key.serialize_pem()), csr.pem()?))
}

/// A gateway's TLS server: its certificate (`cert_pem`, its chain if any), its key, and
/// the CA whose servers it accepts. Requires a client certificate that chains to the
/// CA and names [`SERVER_NAME`]. TLS 1.3, ALPN `h2`.
pub fn gateway_tls(
    cert_pem: &str,
    key: &KeyPem,
    ca_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    let mut config =
        gateway_tls_builder(ca_pem)?.with_single_cert(chain(cert_pem)?, private_key(key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// [`gateway_tls`] with a certificate that a renewal may replace: every new connection
/// gets the one `certificate` holds then.
pub fn gateway_tls_renewable(
    certificate: Arc<GatewayCertificate>,
) -> Result<rustls::ServerConfig, PkiError> {
    let ca_pem = certificate.ca_pem.clone();
    let mut config = gateway_tls_builder(&ca_pem)?.with_cert_resolver(certificate);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn gateway_tls_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, PkiError>
{
    let provider = provider();
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
            .build()?;
    let verifier = RoleVerifier {
        inner,
        name: ServerName::DnsName(
            rustls_pki_types::DnsName::try_from(SERVER_NAME)
                .map_err(|e| PkiError::Parse(e.to_string()))?,
        ),
    };
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier)))
}

/// What a renewal needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Its subject's public key (the bits of the SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

impl CertificateInfo {
    /// From a certificate, DER.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, PkiError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
        let time = |t: x509_parser::time::ASN1Time| {
            DateTime::from_timestamp(t.timestamp(), 0)
                .ok_or_else(|| PkiError::Parse("a validity date out of range".into()))
        };
        Ok(CertificateInfo {
            not_before: time(cert.validity().not_before)?,
            not_after: time(cert.validity().not_after)?,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// From the first certificate of a PEM chain.
    pub fn from_pem(pem: &str) -> Result<CertificateInfo, PkiError> {
        let certs = chain(pem)?;
        let first = certs.first().ok_or(PkiError::NoCertificate)?;
        CertificateInfo::from_der(first)
    }

    /// When it is due for renewal: `renew_before` ahead of its end, or, with `None`, when
    /// a third of its lifetime is left.
    pub fn renew_at(&self, renew_before: Option<Duration>) -> DateTime<Utc> {
        let ahead = match renew_before {
            Some(d) => chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
            None => (self.not_after - self.not_before) / 3,
        };
        self.not_after
            .checked_sub_signed(ahead)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// The certificate a gateway serves now, and its facts.
struct Current {
    certified: Arc<CertifiedKey>,
    pem: String,
    info: CertificateInfo,
}

/// A gateway's control-channel identity, renewable in place: its key (kept, never
/// shown), the CA it trusts, and the certificate it serves now. As rustls' certificate
/// resolver (see [`gateway_tls_renewable`]) it hands every new TLS connection the
/// current certificate; [`GatewayCertificate::install`] replaces it.
pub struct GatewayCertificate {
    gateway: GatewayId,
    key: KeyPair,
    signing: Arc<dyn rustls::sign::SigningKey>,
    ca_pem: String,
    verifier: Arc<WebPkiServerVerifier>,
    current: RwLock<Arc<Current>>,
}

impl fmt::Debug for GatewayCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCertificate")
            .field("gateway", &self.gateway)
            .field("not_after", &self.info().not_after)
            .finish_non_exhaustive()
    }
}

impl GatewayCertificate {
    /// Gateway `gateway`'s certificate (`cert_pem`, its chain if any), its key and the CA
    /// it trusts ([`PkiError::KeyMismatch`] if the key is not the certificate's). The
    /// certificate is taken as it is (a gateway starts with what it has); renewals are
    /// checked.
    pub fn new(
        gateway: GatewayId,
        cert_pem: &str,
        key: &KeyPem,
        ca_pem: &str,
    ) -> Result<GatewayCertificate, PkiError> {
        let provider = provider();
        let signing = provider.key_provider.load_private_key(private_key(key)?)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
                .build()
                .map_err(|e| PkiError::Parse(e.to_string()))?;
        let key_pair = KeyPair::from_pem(key.expose())?;
        let current = current_of(cert_pem, &key_pair, &signing)?;
        Ok(GatewayCertificate {
            gateway,
            key: key_pair,
            signing,
            ca_pem: ca_pem.to_owned(),
            verifier,
            current: RwLock::new(Arc::new(current)),
        })
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whose certificate this is.
    pub fn gateway(&self) -> GatewayId {
        self.gateway
    }

    /// The certificate served now, PEM.
    pub fn pem(&self) -> String {
        self.current().pem.clone()
    }

    /// The facts of the certificate served now.
    pub fn info(&self) -> CertificateInfo {
        self.current().info.clone()
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate request (PEM, PKCS#10) made with the key the gateway holds: what a
    /// server signs with [`Ca::renew_gateway`].
    pub fn request(&self) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name("Postern gateway");
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    /// Whether `cert_pem` may replace the certificate served now: it chains to the CA, is
    /// valid now, is for server authentication, names this gateway and carries its key.
    pub fn check(&self, cert_pem: &str) -> Result<CertificateInfo, PkiError> {
        let certs = chain(cert_pem)?;
        let (first, rest) = certs.split_first().ok_or(PkiError::NoCertificate)?;
        self.verifier
            .verify_server_cert(
                first,
                rest,
                &gateway_server_name(self.gateway),
                &[],
                UnixTime::now(),
            )
            .map_err(PkiError::Untrusted)?;
        let info = CertificateInfo::from_der(first)?;
        if info.public_key.as_slice() != self.key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        Ok(info)
    }

    /// Checks `cert_pem` ([`GatewayCertificate::check`]) and serves it to every new
    /// connection from now on; live connections keep the one they have.
    pub fn install(&self, cert_pem: &str) -> Result<CertificateInfo, PkiError> {
        self.check(cert_pem)?;
        let current = Arc::new(current_of(cert_pem, &self.key, &self.signing)?);
        let info = current.info.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = current;
        Ok(info)
    }
}

/// A certificate served with `key` (its signing half `signing`): the key must be its.
fn current_of(
    cert_pem: &str,
    key: &KeyPair,
    signing: &Arc<dyn rustls::sign::SigningKey>,
) -> Result<Current, PkiError> {
    let certs = chain(cert_pem)?;
    let first = certs.first().ok_or(PkiError::NoCertificate)?;
    let info = CertificateInfo::from_der(first)?;
    if info.public_key.as_slice() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(Current {
        certified: Arc::new(CertifiedKey::new(certs, signing.clone())),
        pem: cert_pem.to_owned(),
        info,
    })
}

impl ResolvesServerCert for GatewayCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().certified.clone())
    }
}

/// A server's TLS client: its client certificate, its key, and the CA its gateways'
/// certificates chain to. Connect with [`gateway_server_name`] of the gateway meant:
/// the default verifier then accepts that gateway's certificate and no other. TLS 1.3,
/// ALPN `h2`.
pub fn server_tls(
    cert_pem: &str,
    key: &KeyPem,
    ca_pem: &str,
) -> Result<rustls::ClientConfig, PkiError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain(cert_pem)?, private_key(key)?)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(certs)
}

fn private_key(key: &KeyPem) -> Result<PrivateKeyDer<'static>, PkiError> {
    Ok(PrivateKeyDer::from_pem_slice(key.expose().as_bytes())?)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Postern");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and 16 bytes long whatever the draw.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// An end-entity certificate's parameters: one DNS name, one purpose.
fn leaf(
    dns_name: &str,
    purpose: ExtendedKeyUsagePurpose,
    lifetime: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
    params.distinguished_name = name(dns_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    validity(&mut params, lifetime);
    Ok(params)
}

/// The web PKI's client verifier (chain to the CA, client authentication, validity),
/// then the role: the certificate must name [`SERVER_NAME`].
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[TlsName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_ca_comes_back_and_refuses_another_key() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let other = Ca::generate().unwrap();
        assert!(matches!(
            Ca::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(!format!("{ca:?} {:?}", ca.key_pem()).contains("PRIVATE"));
    }

    #[test]
    fn a_gateway_gets_its_own_name_whatever_it_asked_for() {
        let ca = Ca::generate().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let id = GatewayId::new();
        let pem = ca.sign_gateway(&csr, id).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(
            format!("{:?}", san.general_names),
            format!("[DNSName(\"{}\")]", gateway_name(id))
        );
        assert!(!cert.is_ca());
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 365);
    }

    #[test]
    fn a_request_that_is_not_one_is_refused() {
        let ca = Ca::generate().unwrap();
        assert!(ca.sign_gateway("nonsense", GatewayId::new()).is_err());
        let (_, csr) = gateway_request().unwrap();
        // One character of the body changed: still PEM, no longer the gateway's request.
        let line = csr.lines().nth(3).unwrap();
        let flipped = if line.starts_with('A') { "B" } else { "A" };
        let tampered = csr.replacen(line, &format!("{flipped}{}", &line[1..]), 1);
        assert_ne!(tampered, csr);
        assert!(ca.sign_gateway(&tampered, GatewayId::new()).is_err());
    }

    /// A gateway of `ca` whose certificate is near its end (one minute left).
    fn near_its_end(ca: &Ca) -> (GatewayId, KeyPem, String, GatewayCertificate) {
        let id = GatewayId::new();
        let (key, csr) = gateway_request().unwrap();
        let pem = ca
            .sign_gateway_for(&csr, id, Duration::from_secs(60))
            .unwrap();
        let cert = GatewayCertificate::new(id, &pem, &key, ca.cert_pem()).unwrap();
        (id, key, pem, cert)
    }

    #[test]
    fn a_renewal_keeps_the_key_and_moves_the_end() {
        let ca = Ca::generate().unwrap();
        let (id, _, pem, cert) = near_its_end(&ca);
        let old = cert.info();
        assert_eq!(old, CertificateInfo::from_pem(&pem).unwrap());
        // A third of its lifetime (5 min back-dated + 1 min) is 2 min: due now.
        assert!(old.renew_at(None) < Utc::now());
        assert!(old.renew_at(Some(Duration::from_secs(10))) > Utc::now());
        let renewed = ca
            .renew_gateway(&cert.request().unwrap(), id, &old)
            .unwrap();
        let info = cert.install(&renewed).unwrap();
        assert_eq!(cert.pem(), renewed);
        assert_eq!(info.public_key, old.public_key);
        assert!(info.not_after - old.not_after > chrono::Duration::days(364));
        assert!(info.renew_at(None) > Utc::now() + chrono::Duration::days(200));
    }

    #[test]
    fn a_request_with_another_key_is_not_renewed() {
        let ca = Ca::generate().unwrap();
        let (id, _, _, cert) = near_its_end(&ca);
        let (_, other) = gateway_request().unwrap();
        assert!(matches!(
            ca.renew_gateway(&other, id, &cert.info()),
            Err(PkiError::OtherKey)
        ));
    }

    #[test]
    fn a_gateway_takes_only_its_own_certificate_from_its_ca() {
        let ca = Ca::generate().unwrap();
        let (id, key, pem, cert) = near_its_end(&ca);
        let request = cert.request().unwrap();
        let other_ca = Ca::generate().unwrap();
        let (_, other_key) = gateway_request().unwrap();
        let refused = [
            ("another ca", other_ca.sign_gateway(&request, id).unwrap()),
            (
                "another gateway",
                ca.sign_gateway(&request, GatewayId::new()).unwrap(),
            ),
            ("another key", ca.sign_gateway(&other_key, id).unwrap()),
            ("a server's", ca.issue_server("s").unwrap().0),
            ("not a certificate", "nonsense".to_owned()),
        ];
        for (what, forged) in refused {
            assert!(cert.install(&forged).is_err(), "{what} was taken");
            assert_eq!(cert.pem(), pem, "{what} replaced the certificate");
        }
        // The key given at the start must be the certificate's.
        let (stranger, _) = gateway_request().unwrap();
        assert!(matches!(
            GatewayCertificate::new(id, &pem, &stranger, ca.cert_pem()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(!format!("{cert:?}").contains(key.expose()));
    }
}
