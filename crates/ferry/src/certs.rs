//! TLS material for `ferry serve` and `ferry send`.
//!
//! Without `--tls-cert`/`--tls-key`, `ferry serve` generates a self-signed
//! certificate at start for its host name, `localhost`, `127.0.0.1` and
//! `::1`, and writes the certificate (never the private key) as
//! [`SELF_SIGNED_FILE`] inside the Maildir directory, beside `tmp/`, `new/`
//! and `cur/`, so that `ferry send --ca mail/ferry-cert.pem` can trust it.
//! A new certificate is made at every start; the key lives only in memory.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The name of the self-signed certificate file written in the Maildir.
pub const SELF_SIGNED_FILE: &str = "ferry-cert.pem";

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Why TLS material could not be made or loaded.
#[derive(Debug)]
pub enum CertError {
    /// A PEM file could not be read or holds nothing usable.
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rcgen could not make the certificate (for example a host name that
    /// is not a valid DNS name).
    Generate(String),
    /// The certificate file could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// rustls refused the certificate or key.
    Tls(rustls::Error),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Pem { path, message } => write!(f, "{}: {message}", path.display()),
            CertError::Generate(message) => {
                write!(f, "cannot generate a self-signed certificate: {message}")
            }
            CertError::Write { path, source } => write!(f, "{}: {source}", path.display()),
            CertError::Tls(err) => write!(f, "TLS configuration refused: {err}"),
        }
    }
}

impl std::error::Error for CertError {}

/// The crypto provider every ferry TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Generates a self-signed certificate for `hostname` plus `localhost`,
/// `127.0.0.1` and `::1`. Returns the identity and the certificate PEM.
pub fn self_signed(hostname: &str) -> Result<(Identity, String), CertError> {
    let mut names = vec![hostname.to_owned()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(extra)) {
            names.push(extra.to_owned());
        }
    }
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| CertError::Generate(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let key = rcgen::KeyPair::generate().map_err(|e| CertError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let pem = cert.pem();
    let identity = Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| CertError::Generate(e.to_string()))?,
    };
    Ok((identity, pem))
}

/// Writes `pem` as [`SELF_SIGNED_FILE`] in `dir` (created when missing),
/// through a temporary file and a rename so a reader never sees half a
/// certificate. Returns the path written.
pub fn write_self_signed(dir: &Path, pem: &str) -> Result<PathBuf, CertError> {
    let path = dir.join(SELF_SIGNED_FILE);
    let tmp = dir.join(format!(".{SELF_SIGNED_FILE}.{}", std::process::id()));
    let result = fs::create_dir_all(dir)
        .and_then(|()| fs::write(&tmp, pem))
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CertError::Write { path, source });
    }
    Ok(path)
}

/// Loads a certificate chain and a private key from PEM files.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, CertError> {
    let pem_err = |path: &Path, message: String| CertError::Pem {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no CERTIFICATE block found".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        pem_err(
            key,
            format!("no usable PRIVATE KEY (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok(Identity {
        chain,
        key: key_der,
    })
}

/// A rustls server configuration for `identity` (TLS 1.2 and 1.3, no
/// client certificates).
pub fn server_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(CertError::Tls)?;
    Ok(Arc::new(config))
}

/// A root store holding exactly the certificates of the PEM file `ca`
/// (`ferry send --ca`): with it, only servers whose chain leads to one of
/// them are trusted.
pub fn ca_roots(ca: &Path) -> Result<RootCertStore, CertError> {
    let pem_err = |message: String| CertError::Pem {
        path: ca.to_owned(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(e.to_string()))? {
        let cert = cert.map_err(|e| pem_err(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| pem_err(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    /// Runs a full TLS handshake in memory; returns the client's error.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        roots: RootCertStore,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..20 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            if let Err(e) = server.process_new_packets() {
                // Let the client read the alert, then report its view.
                let mut alert = Vec::new();
                let _ = server.write_tls(&mut alert);
                let _ = client.read_tls(&mut &alert[..]);
                client.process_new_packets()?;
                return Err(e);
            }
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn self_signed_is_trusted_through_its_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, pem) = self_signed("mx.example.com").unwrap();
        let path = write_self_signed(&dir.path().join("mail"), &pem).unwrap();
        assert_eq!(path, dir.path().join("mail").join(SELF_SIGNED_FILE));
        assert_eq!(fs::read_to_string(&path).unwrap(), pem);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!pem.contains("PRIVATE KEY"));
        let server = server_config(identity).unwrap();
        for name in ["mx.example.com", "localhost", "127.0.0.1", "::1"] {
            handshake(server.clone(), ca_roots(&path).unwrap(), name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let err = handshake(server, ca_roots(&path).unwrap(), "other.example").unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn untrusted_without_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = self_signed("localhost").unwrap();
        let (_, other_pem) = self_signed("localhost").unwrap();
        let other = write_self_signed(dir.path(), &other_pem).unwrap();
        let server = server_config(identity).unwrap();
        let err = handshake(server, ca_roots(&other).unwrap(), "localhost").unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn loads_cert_and_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        fs::write(&cert_path, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        let identity = load_identity(&cert_path, &key_path).unwrap();
        assert_eq!(identity.chain.len(), 1);
        let server = server_config(identity).unwrap();
        handshake(server, ca_roots(&cert_path).unwrap(), "localhost").unwrap();

        // Swapped files, missing files and empty files are clear errors.
        let err = load_identity(&key_path, &cert_path).unwrap_err();
        assert!(err.to_string().contains("cert.pem") || err.to_string().contains("key.pem"));
        let err = load_identity(&dir.path().join("none.pem"), &key_path).unwrap_err();
        assert!(err.to_string().contains("none.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        let err = load_identity(&empty, &key_path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no CERTIFICATE block found", empty.display())
        );
        assert!(ca_roots(&empty).is_err());
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pem) = self_signed("localhost").unwrap();
        let cert_path = dir.path().join("c.pem");
        let key_path = dir.path().join("k.pem");
        fs::write(&cert_path, pem).unwrap();
        fs::write(
            &key_path,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let identity = load_identity(&cert_path, &key_path).unwrap();
        // rustls checks that the key matches the certificate.
        assert!(matches!(server_config(identity), Err(CertError::Tls(_))));
    }

    #[test]
    fn invalid_hostname_is_an_error() {
        assert!(matches!(
            self_signed("hôte.example"),
            Err(CertError::Generate(_))
        ));
    }
}
