//! TLS checks: the handshake (STARTTLS, RFC 3207, or implicit TLS, RFC
//! 8314), protocol version and cipher suite, the certificate (chain, name,
//! expiry, key size), and whether the server accepts TLS 1.0/1.1 — found
//! with a ClientHello built by hand, since rustls rightly cannot offer
//! them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{CertificateError, Error as TlsError};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::conversation::TlsDetails;
use super::report::{CheckResult, Section, Status};

/// How strictly a certificate problem counts, as in the real world: an
/// MX reached with opportunistic TLS still gets mail from senders that do
/// not verify, but a domain that publishes MTA-STS `enforce` or DANE tells
/// senders to refuse, and submission clients always verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Port 25 without a published policy: senders use any certificate.
    Opportunistic,
    /// The domain publishes MTA-STS in `enforce` mode (RFC 8461 §5).
    MtaStsEnforce,
    /// The MX host has DNSSEC-validated TLSA records (RFC 7672 §2.2).
    Dane,
    /// Submission (587, 465): mail clients verify the certificate.
    Submission,
}

impl Strictness {
    /// The status of a certificate problem under this strictness.
    pub fn certificate_problem(self) -> Status {
        match self {
            Strictness::Opportunistic => Status::Warn,
            _ => Status::Fail,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Strictness::Opportunistic => {
                "opportunistic senders still deliver, verifying ones (MTA-STS, DANE) will not"
            }
            Strictness::MtaStsEnforce => "the domain's MTA-STS policy is enforce: senders refuse",
            Strictness::Dane => "DANE senders check the certificate",
            Strictness::Submission => "mail clients verify the certificate and refuse",
        }
    }
}

/// What the checks need from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject, as text.
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// DNS names in subjectAltName (or the subject CN when there are none).
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// `RSA`, `EC` or another algorithm name.
    pub key_algorithm: &'static str,
    /// The key size in bits (0 when unknown).
    pub key_bits: usize,
}

impl CertFacts {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertFacts, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            // RFC 6125 §6.4.4: the CN only when there is no DNS-ID.
            for cn in cert.subject().iter_common_name() {
                if let Ok(text) = cn.as_str() {
                    names.push(text.to_ascii_lowercase());
                }
            }
        }
        let spki = cert.public_key();
        let (key_algorithm, key_bits) = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let modulus: Vec<u8> = rsa
                    .modulus
                    .iter()
                    .copied()
                    .skip_while(|b| *b == 0)
                    .collect();
                let bits = match modulus.first() {
                    Some(first) => modulus.len() * 8 - first.leading_zeros() as usize,
                    None => 0,
                };
                ("RSA", bits)
            }
            Ok(PublicKey::EC(point)) => ("EC", point.key_size()),
            Ok(other) => ("other", other.key_size()),
            Err(_) => {
                // Ed25519 and other keys x509-parser does not model.
                ("other", 0)
            }
        };
        Ok(CertFacts {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_after: cert.validity().not_after.timestamp(),
            not_before: cert.validity().not_before.timestamp(),
            key_algorithm,
            key_bits,
        })
    }

    /// Whether one of the names matches `host` (RFC 6125 §6.4: a wildcard
    /// only as the whole left-most label, never matching a dot).
    pub fn matches(&self, host: &str) -> bool {
        name_matches(&self.names, host)
    }

    /// Whole days until expiry (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// Whether any of `names` matches `host` (RFC 6125 §6.4.3 wildcards).
pub fn name_matches(names: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|name| {
        let name = name.trim_end_matches('.');
        if let Some(suffix) = name.strip_prefix("*.") {
            match host.split_once('.') {
                Some((first, rest)) => !first.is_empty() && rest == suffix,
                None => false,
            }
        } else {
            name == host
        }
    })
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The outcome of the certificate checks, for callers that decide more
/// (MTA-STS `enforce`, DANE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertVerdict {
    /// The chain leads to a trusted root and is within its validity.
    pub trusted: bool,
    /// The leaf is valid for the expected name.
    pub name_ok: bool,
}

/// Pushes the TLS results for a completed handshake: version, cipher,
/// chain, name, expiry, key size.
pub fn report_handshake(
    out: &mut Vec<CheckResult>,
    target: &str,
    host: Option<&str>,
    details: &TlsDetails,
    strictness: Strictness,
) -> CertVerdict {
    let version_status = if details.version.contains("1_3") || details.version.contains("1_2") {
        Status::Pass
    } else {
        Status::Warn
    };
    out.push(
        CheckResult::new(
            "tls.version",
            target,
            Section::Tls,
            version_status,
            format!(
                "{} with {} (handshake {} ms)",
                details.version,
                details.cipher,
                details.elapsed.as_millis()
            ),
            "RFC 8996, RFC 7525 §3.1.1",
        )
        .fix("Enable TLS 1.2 and 1.3."),
    );
    let Some(leaf) = details.chain.first() else {
        out.push(
            CheckResult::new(
                "tls.chain",
                target,
                Section::Tls,
                Status::Fail,
                "the server sent no certificate",
                "RFC 8446 §4.4.2",
            )
            .fix("Configure a certificate chain for the TLS listener."),
        );
        return CertVerdict {
            trusted: false,
            name_ok: false,
        };
    };
    let facts = match CertFacts::parse(leaf.as_ref()) {
        Ok(facts) => facts,
        Err(err) => {
            out.push(
                CheckResult::new(
                    "tls.chain",
                    target,
                    Section::Tls,
                    Status::Fail,
                    err,
                    "RFC 5280",
                )
                .fix("Serve a well-formed X.509 certificate."),
            );
            return CertVerdict {
                trusted: false,
                name_ok: false,
            };
        }
    };
    let severity = strictness.certificate_problem();
    // The verifier checks the chain and the name together; a name error
    // means the chain itself was good.
    let chain_verdict = match &details.verdict {
        Ok(()) => Ok(()),
        Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
        | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
            Ok(())
        }
        Err(err) => Err(err.clone()),
    };
    let trusted = chain_verdict.is_ok();
    let chain_len = details.chain.len();
    match chain_verdict {
        Ok(()) => out.push(CheckResult::new(
            "tls.chain",
            target,
            Section::Tls,
            Status::Pass,
            format!(
                "trusted: issued by {} ({chain_len} certificates sent)",
                facts.issuer
            ),
            "RFC 5280 §6",
        )),
        Err(err) => {
            let expired = matches!(
                err,
                TlsError::InvalidCertificate(CertificateError::Expired)
                    | TlsError::InvalidCertificate(CertificateError::ExpiredContext { .. })
            );
            let fix = if expired {
                "Renew the certificate and reload the server."
            } else if facts.subject == facts.issuer {
                "Replace the self-signed certificate with one from a public CA (for example Let's Encrypt)."
            } else {
                "Serve the full chain (leaf and intermediates) from a CA senders trust."
            };
            out.push(
                CheckResult::new(
                    "tls.chain",
                    target,
                    Section::Tls,
                    severity,
                    format!(
                        "not trusted: {err}; issuer {}; {}",
                        facts.issuer,
                        strictness.why()
                    ),
                    "RFC 5280 §6",
                )
                .fix(fix),
            );
        }
    }
    let name_ok = match host {
        Some(host) if host.parse::<std::net::IpAddr>().is_err() => {
            let ok = facts.matches(host);
            out.push(
                CheckResult::new(
                    "tls.name",
                    target,
                    Section::Tls,
                    if ok { Status::Pass } else { severity },
                    format!("{host} against [{}]", facts.names.join(", ")),
                    "RFC 6125 §6, RFC 7672 §3.2.2",
                )
                .fix(format!(
                    "Get a certificate whose subjectAltName includes {host}."
                )),
            );
            ok
        }
        _ => {
            out.push(CheckResult::new(
                "tls.name",
                target,
                Section::Tls,
                Status::Skip,
                format!(
                    "no host name to match (checked by address); certificate names [{}]",
                    facts.names.join(", ")
                ),
                "RFC 6125 §6",
            ));
            false
        }
    };
    let now = unix_now();
    let days = facts.days_left(now);
    let (status, evidence) = if facts.not_before > now {
        (
            Status::Fail,
            format!("not valid before {} (in the future)", facts.not_before),
        )
    } else if days < 0 {
        (Status::Fail, format!("expired {} days ago", -days))
    } else if days < 14 {
        (Status::Warn, format!("{days} days left"))
    } else {
        (Status::Pass, format!("{days} days left"))
    };
    out.push(
        CheckResult::new(
            "tls.expiry",
            target,
            Section::Tls,
            status,
            evidence,
            "RFC 5280 §4.1.2.5",
        )
        .fix("Renew the certificate (automate it, for example with ACME) and reload the server."),
    );
    let (status, evidence) = match facts.key_algorithm {
        "RSA" if facts.key_bits < 2048 => (Status::Fail, format!("RSA {} bits", facts.key_bits)),
        "RSA" => (Status::Pass, format!("RSA {} bits", facts.key_bits)),
        "EC" if facts.key_bits < 256 => (Status::Warn, format!("EC {} bits", facts.key_bits)),
        "EC" => (Status::Pass, format!("EC {} bits", facts.key_bits)),
        _ => (Status::Info, "key type not measured".to_owned()),
    };
    out.push(
        CheckResult::new(
            "tls.key",
            target,
            Section::Tls,
            status,
            evidence,
            "RFC 7525 §4.3",
        )
        .fix("Use an RSA key of at least 2048 bits or an EC P-256 key."),
    );
    CertVerdict { trusted, name_ok }
}

/// A TLS ClientHello that offers only TLS 1.0 or 1.1 (`minor` 1 or 2)
/// with the cipher suites servers of that era speak, and no
/// `supported_versions` extension, so a server can only answer with that
/// version or an alert (RFC 2246 §7.4.1.2, RFC 4346 §7.4.1.2).
pub fn legacy_client_hello(minor: u8, host: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[3, minor]);
    // The random: uniqueness is all a ClientHello needs of it here.
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for i in 0..32u32 {
        body.push(((seed >> ((i % 16) * 8)) as u8) ^ (i as u8).wrapping_mul(151));
    }
    body.push(0); // no session id
    let suites: [u16; 10] = [
        0xc013, 0xc014, // ECDHE-RSA-AES128/256-SHA
        0xc009, 0xc00a, // ECDHE-ECDSA-AES128/256-SHA
        0x002f, 0x0035, // RSA-AES128/256-SHA
        0x0033, 0x0039, // DHE-RSA-AES128/256-SHA
        0x000a, // RSA-3DES-EDE-CBC-SHA
        0x00ff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression only
    let mut extensions = Vec::new();
    if let Some(host) = host.filter(|h| h.parse::<std::net::IpAddr>().is_err()) {
        // server_name (RFC 6066 §3)
        let name = host.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        extension(&mut extensions, 0x0000, &sni);
    }
    // supported_groups: x25519, secp256r1, secp384r1 (RFC 8422 §5.1.1)
    extension(&mut extensions, 0x000a, &[0, 6, 0, 0x1d, 0, 0x17, 0, 0x18]);
    // ec_point_formats: uncompressed
    extension(&mut extensions, 0x000b, &[1, 0]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![1]; // client_hello
    let len = body.len() as u32;
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 3, 1]; // handshake record, TLS 1.0 record layer
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn extension(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// What a server answered to a legacy ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyAnswer {
    /// A ServerHello with this protocol version (`(3, 1)` is TLS 1.0).
    ServerHello(u8, u8),
    /// A TLS alert (level, description).
    Alert(u8, u8),
    /// The connection closed without a record.
    Closed,
    /// Bytes that are not a TLS record.
    NotTls,
}

/// Reads the first TLS record of the server's answer; `Ok(None)` means
/// more bytes are needed.
pub fn parse_legacy_answer(bytes: &[u8]) -> Option<LegacyAnswer> {
    if bytes.len() < 5 {
        return None;
    }
    let content_type = bytes[0];
    if bytes[1] != 3 {
        return Some(LegacyAnswer::NotTls);
    }
    let fragment = &bytes[5..];
    match content_type {
        21 if fragment.len() >= 2 => Some(LegacyAnswer::Alert(fragment[0], fragment[1])),
        22 if fragment.len() >= 6 => {
            if fragment[0] != 2 {
                return Some(LegacyAnswer::NotTls);
            }
            Some(LegacyAnswer::ServerHello(fragment[4], fragment[5]))
        }
        21 | 22 => None,
        _ => Some(LegacyAnswer::NotTls),
    }
}

/// The name of TLS version `3.minor`.
pub fn version_name(major: u8, minor: u8) -> String {
    match (major, minor) {
        (3, 0) => "SSL 3.0".into(),
        (3, 1) => "TLS 1.0".into(),
        (3, 2) => "TLS 1.1".into(),
        (3, 3) => "TLS 1.2".into(),
        (3, 4) => "TLS 1.3".into(),
        _ => format!("version {major}.{minor}"),
    }
}

/// How long to wait for the server's answer to a legacy ClientHello.
pub const LEGACY_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label_only() {
        let names = vec!["*.example.com".to_owned(), "example.org".to_owned()];
        assert!(name_matches(&names, "mx.example.com"));
        assert!(name_matches(&names, "MX.Example.COM."));
        assert!(!name_matches(&names, "a.b.example.com"));
        assert!(!name_matches(&names, "example.com"));
        assert!(name_matches(&names, "example.org"));
        assert!(!name_matches(&names, "mx.example.org"));
    }

    #[test]
    fn legacy_hello_is_a_well_formed_record() {
        let hello = legacy_client_hello(2, Some("mx.example.com"));
        assert_eq!(&hello[..3], &[22, 3, 1]);
        let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(record_len, hello.len() - 5);
        assert_eq!(hello[5], 1);
        let body_len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
        assert_eq!(body_len, record_len - 4);
        assert_eq!(&hello[9..11], &[3, 2]);
        // Walk the extensions: no supported_versions (43), so only TLS
        // 1.1 is offered.
        let mut at = 11 + 32;
        at += 1 + hello[at] as usize; // session id
        at += 2 + u16::from_be_bytes([hello[at], hello[at + 1]]) as usize; // suites
        at += 1 + hello[at] as usize; // compression
        let end = at + 2 + u16::from_be_bytes([hello[at], hello[at + 1]]) as usize;
        assert_eq!(end, hello.len());
        at += 2;
        let mut kinds = Vec::new();
        while at < end {
            kinds.push(u16::from_be_bytes([hello[at], hello[at + 1]]));
            at += 4 + u16::from_be_bytes([hello[at + 2], hello[at + 3]]) as usize;
        }
        assert_eq!(kinds, vec![0, 10, 11]);
        assert!(hello.windows(14).any(|w| w == b"mx.example.com"));
    }

    #[test]
    fn legacy_answers_are_told_apart() {
        assert_eq!(parse_legacy_answer(&[22, 3, 2]), None);
        assert_eq!(
            parse_legacy_answer(&[22, 3, 2, 0, 10, 2, 0, 0, 6, 3, 2]),
            Some(LegacyAnswer::ServerHello(3, 2))
        );
        assert_eq!(
            parse_legacy_answer(&[21, 3, 1, 0, 2, 2, 70]),
            Some(LegacyAnswer::Alert(2, 70))
        );
        assert_eq!(
            parse_legacy_answer(b"220 hello\r\n"),
            Some(LegacyAnswer::NotTls)
        );
    }

    #[test]
    fn certificate_facts_come_from_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx.example.com".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = CertFacts::parse(cert.der()).unwrap();
        assert_eq!(facts.names, vec!["mx.example.com"]);
        assert_eq!((facts.key_algorithm, facts.key_bits), ("EC", 256));
        assert!(facts.days_left(unix_now()) > 300);
        assert!(facts.matches("mx.example.com"));
    }
}
