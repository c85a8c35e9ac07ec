//! TLS configuration that can be replaced while the server runs.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls [`ServerConfig`] shared by the server and its owner.
///
/// Clones share the same slot: keep one, hand one to
/// [`ServerBuilder::tls`](crate::ServerBuilder::tls), and call
/// [`TlsConfig::replace`] when the certificate is renewed. Connections
/// already encrypted keep the configuration they started with; new
/// handshakes use the new one.
#[derive(Clone)]
pub struct TlsConfig {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsConfig {
    /// Wraps a rustls configuration.
    pub fn new(config: impl Into<Arc<ServerConfig>>) -> Self {
        Self {
            current: Arc::new(RwLock::new(config.into())),
        }
    }

    /// Builds a configuration from a PEM certificate chain and a PEM
    /// private key (PKCS#8, PKCS#1 or SEC1), with rustls' safe defaults.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Ok(Self::new(server_config_from_pem(cert_chain_pem, key_pem)?))
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a valid Arc: a panic elsewhere cannot
        // leave it half-written.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the configuration for every later handshake.
    pub fn replace(&self, config: impl Into<Arc<ServerConfig>>) {
        let config = config.into();
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// Replaces the certificate and key from PEM, keeping the previous
    /// configuration if they do not load.
    pub fn replace_from_pem(&self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        self.replace(server_config_from_pem(cert_chain_pem, key_pem)?);
        Ok(())
    }
}

/// A generated certificate and the server configuration that uses it, from
/// [`TlsConfig::self_signed`].
#[cfg(feature = "self-signed")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SelfSigned {
    /// The server's TLS configuration, for
    /// [`ServerBuilder::tls`](crate::ServerBuilder::tls).
    pub tls: TlsConfig,
    /// The certificate in PEM, for the client's trust store (for example
    /// smtp-client's `TlsConfig::add_root_certificates_pem`, swaks'
    /// `--tls-ca-path`, `ferry send --ca`). It is its own CA.
    pub certificate_pem: String,
    /// The same certificate in DER.
    pub certificate_der: CertificateDer<'static>,
}

#[cfg(feature = "self-signed")]
impl TlsConfig {
    /// Generates a self-signed certificate for `names` (DNS names, or IP
    /// addresses such as `127.0.0.1` and `::1`, which become IP address
    /// names) with a fresh key that never leaves memory, for tests and
    /// development. Needs the `self-signed` feature (on by default; it
    /// brings rcgen on the ring provider).
    ///
    /// ```
    /// use smtp_server::TlsConfig;
    /// let generated = TlsConfig::self_signed(["localhost", "127.0.0.1"])?;
    /// assert!(generated.certificate_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    /// # let _ = generated.tls;
    /// # Ok::<(), smtp_server::TlsError>(())
    /// ```
    pub fn self_signed<I, S>(names: I) -> Result<SelfSigned, TlsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(TlsError::Certificate(
                "a self-signed certificate needs at least one name".to_owned(),
            ));
        }
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
        let certificate_der = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Rustls)?
                .with_no_client_auth()
                .with_single_cert(vec![certificate_der.clone()], key)
                .map_err(TlsError::Rustls)?;
        Ok(SelfSigned {
            tls: TlsConfig::new(config),
            certificate_pem: certified.cert.pem(),
            certificate_der,
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// A certificate or key that could not be loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate chain PEM holds no certificate or does not parse.
    Certificate(String),
    /// The key PEM holds no private key or does not parse.
    PrivateKey(String),
    /// rustls refused the pair (for example, the key does not match).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(why) => write!(f, "certificate chain: {why}"),
            Self::PrivateKey(why) => write!(f, "private key: {why}"),
            Self::Rustls(error) => write!(f, "TLS configuration: {error}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn server_config_from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Certificate(error.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no certificate found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| TlsError::PrivateKey(error.to_string()))?;
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)
}
