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

/// The validity period of a DER certificate (RFC 5280 §4.1.2.5), as
/// seconds since the Unix epoch: `(not_before, not_after)`. `None` when the
/// certificate cannot be read that far.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber, signature, issuer, validity, ... }, ... }
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_element(certificate)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, after) = der_element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, not_before, after) = der_element(validity)?;
    let not_before = der_time(tag, not_before)?;
    let (tag, not_after, _) = der_element(after)?;
    Some((not_before, der_time(tag, not_after)?))
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (bytes, rest) = rest.split_at(octets);
        let length = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, RFC 5280 §4.1.2.5.1) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, §4.1.2.5.2) as seconds since the Unix epoch.
fn der_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(contents).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number = |range: std::ops::Range<usize>| digits.get(range)?.parse::<i64>().ok();
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = number(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (number(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| number(rest + 2 * i..rest + 2 * i + 2);
    let (month, day) = (field(0)?, field(1)?);
    let (hour, minute, second) = (field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A warning when the leaf certificate of `chain` is not valid at `now`
/// (seconds since the Unix epoch): expired, or not yet valid. Clients will
/// refuse it, and mail to this server then waits or bounces.
pub fn validity_warning(chain: &[CertificateDer<'_>], now: i64) -> Option<String> {
    let leaf = chain.first()?;
    let Some((not_before, not_after)) = validity(leaf) else {
        return Some("cannot read the validity period of the certificate".to_owned());
    };
    let days = |seconds: i64| seconds.abs() / 86_400;
    if now > not_after {
        Some(format!(
            "the certificate expired {} days ago; clients that verify it will refuse STARTTLS",
            days(now - not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "the certificate is not valid for another {} days; clients that verify it will refuse STARTTLS",
            days(not_before - now)
        ))
    } else {
        None
    }
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

    fn certificate_valid(from: (i32, u8, u8), until: (i32, u8, u8)) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn validity_period_is_read_from_the_certificate() {
        // 2020-01-01 and 2060-06-30 (a GeneralizedTime: after 2049).
        let cert = certificate_valid((2020, 1, 1), (2060, 6, 30));
        assert_eq!(validity(&cert), Some((1_577_836_800, 2_855_779_200)));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(validity(b"not a certificate"), None);
    }

    #[test]
    fn expired_and_future_certificates_are_warned_about() {
        let now = 1_767_225_600; // 2026-01-01
        let expired = certificate_valid((2020, 1, 1), (2025, 1, 1));
        let warning = validity_warning(&[expired], now).unwrap();
        assert!(warning.contains("expired 365 days ago"), "{warning}");
        let future = certificate_valid((2026, 1, 11), (2027, 1, 1));
        let warning = validity_warning(&[future], now).unwrap();
        assert!(
            warning.contains("not valid for another 10 days"),
            "{warning}"
        );
        let current = certificate_valid((2025, 1, 1), (2027, 1, 1));
        assert_eq!(validity_warning(&[current], now), None);
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
