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
