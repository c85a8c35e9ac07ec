//! TLS settings and the rustls client configuration built from them.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::Error;

/// How the connection is protected (RFC 3207 STARTTLS, RFC 8314 implicit
/// TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tls {
    /// Plaintext only; `STARTTLS` is never sent.
    None,
    /// `STARTTLS` when the server offers it, plaintext otherwise. A failed
    /// handshake is an error, never a silent fallback on the same connection.
    /// This protects against passive eavesdroppers only: an active attacker
    /// can strip the `STARTTLS` capability.
    #[default]
    Opportunistic,
    /// `STARTTLS` is required: if the server does not offer it or refuses
    /// it, the attempt fails ([`ErrorKind::TlsUnavailable`](crate::ErrorKind::TlsUnavailable))
    /// before anything else is sent.
    Required,
    /// TLS from the first byte (RFC 8314 §3, "submissions" on port 465).
    Implicit,
}

impl Tls {
    /// The usual port for this mode with SMTP: 465 for implicit TLS
    /// (RFC 8314 §7.3), 25 otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            Tls::Implicit => 465,
            _ => 25,
        }
    }
}

/// Certificates and keys for TLS, turned into a rustls configuration by
/// [`TlsConfig::build`].
///
/// By default the server certificate is verified against the Mozilla root
/// store shipped in `webpki-roots`, and the host name the client connects
/// to is sent as SNI and checked against the certificate.
///
/// ```
/// use smtp_client::TlsConfig;
/// let tls = TlsConfig::new().server_name("mail.example.com");
/// assert!(tls.build().is_ok());
/// ```
///
/// A server whose certificate comes from a private CA (a test server, a
/// company relay): trust that CA instead of turning verification off. The
/// certificate is still checked against the name; when the host is an IP
/// address but the certificate names a host, say which name to expect.
///
/// ```no_run
/// use smtp_client::{ClientConfig, Tls, TlsConfig};
/// let ca = std::fs::read("ca.pem").expect("the CA certificate");
/// let config = ClientConfig::builder("127.0.0.1")
///     .port(2525)
///     .tls(Tls::Required)
///     .tls_config(
///         TlsConfig::new()
///             .add_root_certificates_pem(&ca)?
///             .server_name("localhost"),
///     )
///     .build()?;
/// # drop(config);
/// # Ok::<(), smtp_client::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    custom_roots: Vec<CertificateDer<'static>>,
    webpki_roots: Option<bool>,
    client_auth: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    disable_sni: bool,
    accept_invalid_certs: bool,
    rustls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("custom_roots", &self.custom_roots.len())
            .field("webpki_roots", &self.uses_webpki_roots())
            .field("client_certificate", &self.client_auth.is_some())
            .field("server_name", &self.server_name)
            .field("disable_sni", &self.disable_sni)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .field("custom_rustls_config", &self.rustls.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// The defaults: webpki roots, SNI from the host name, no client
    /// certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the certificates in `pem` (one or more `CERTIFICATE` blocks).
    /// Once custom roots are added, the webpki roots are no longer trusted
    /// unless [`TlsConfig::webpki_roots`] turns them back on.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|error| {
                Error::invalid("invalid root certificate PEM").with_source(error)
            })?;
            self.custom_roots.push(certificate);
            added += 1;
        }
        if added == 0 {
            return Err(Error::invalid("no CERTIFICATE block in the root PEM"));
        }
        Ok(self)
    }

    /// Trusts one DER-encoded certificate.
    pub fn add_root_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.custom_roots.push(CertificateDer::from(der.into()));
        self
    }

    /// Whether the built-in webpki roots are trusted. On by default when no
    /// custom roots are given, off otherwise.
    pub fn webpki_roots(mut self, enabled: bool) -> Self {
        self.webpki_roots = Some(enabled);
        self
    }

    /// Presents a client certificate: `chain_pem` holds the certificate
    /// chain (leaf first), `key_pem` its private key (PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn client_certificate_pem(
        mut self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::invalid("invalid client certificate PEM").with_source(error))?;
        if chain.is_empty() {
            return Err(Error::invalid(
                "no CERTIFICATE block in the client certificate PEM",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|error| Error::invalid("invalid client key PEM").with_source(error))?;
        self.client_auth = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The name sent as SNI and checked against the server certificate,
    /// when it differs from the host connected to (for example when
    /// connecting to an IP address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Stops sending the SNI extension. The certificate is still checked
    /// against the server name.
    pub fn disable_sni(mut self) -> Self {
        self.disable_sni = true;
        self
    }

    /// Accepts any server certificate, valid or not, for any name.
    ///
    /// **Dangerous**: an active attacker can read and change everything,
    /// including credentials. Only for tests and for servers whose
    /// certificate is known to be self-signed on a trusted network. The
    /// handshake signatures are still checked, so the peer must hold the
    /// key of the certificate it presents.
    pub fn dangerous_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.accept_invalid_certs = accept;
        self
    }

    /// Uses a ready rustls configuration, overriding roots, client
    /// certificate and the dangerous switch. [`TlsConfig::server_name`]
    /// still applies.
    pub fn rustls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.rustls = Some(config);
        self
    }

    /// The server name set by [`TlsConfig::server_name`].
    pub(crate) fn server_name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    fn uses_webpki_roots(&self) -> bool {
        self.webpki_roots.unwrap_or(self.custom_roots.is_empty())
    }

    /// Builds the rustls client configuration.
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(config) = &self.rustls {
            return Ok(Arc::clone(config));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        if self.uses_webpki_roots() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for certificate in &self.custom_roots {
            roots
                .add(certificate.clone())
                .map_err(|error| Error::invalid("unusable root certificate").with_source(error))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::invalid("no usable TLS protocol version").with_source(error))?
            .with_root_certificates(roots);
        let mut config = match &self.client_auth {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|error| {
                    Error::invalid("unusable client certificate or key").with_source(error)
                })?,
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = !self.disable_sni;
        if self.accept_invalid_certs {
            config
                .dangerous()
                .set_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }));
        }
        Ok(Arc::new(config))
    }
}

/// Parses the name used for SNI and certificate checks.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, Error> {
    let trimmed = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(trimmed.to_owned()).map_err(|error| {
        Error::invalid(format!("invalid TLS server name {name:?}")).with_source(error)
    })
}

/// The verifier behind [`TlsConfig::dangerous_accept_invalid_certs`]: any
/// certificate chain passes, handshake signatures are still verified.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds_with_webpki_roots() {
        let config = TlsConfig::new();
        assert!(config.uses_webpki_roots());
        let built = config.build().unwrap();
        assert!(built.enable_sni);
    }

    #[test]
    fn custom_roots_replace_webpki_roots_unless_asked() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = TlsConfig::new()
            .add_root_certificates_pem(cert.pem().as_bytes())
            .unwrap();
        assert!(!config.uses_webpki_roots());
        assert!(config.clone().webpki_roots(true).uses_webpki_roots());
        config.build().unwrap();
    }

    #[test]
    fn bad_pem_is_an_invalid_input_error() {
        let error = TlsConfig::new()
            .add_root_certificates_pem(b"not a certificate")
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidInput);
        let error = TlsConfig::new()
            .client_certificate_pem(b"", b"")
            .unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn client_certificate_and_sni_switch_apply() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.example".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let built = TlsConfig::new()
            .client_certificate_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap()
            .disable_sni()
            .build()
            .unwrap();
        assert!(!built.enable_sni);
        assert!(built.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn server_names_accept_hosts_and_ip_literals() {
        assert!(server_name("mail.example.com").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
