//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy fetched over
//! HTTPS from `mta-sts.<domain>` with certificate validation, no
//! redirects and `text/plain`, its `mode`, `max_age` and `mx` lines, and
//! whether `enforce` would deliver to every MX today.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::conversation::{server_name, tls_client};
use super::dns::{Dns, tag_list};
use super::report::{CheckResult, Section, Status};

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// A policy body larger than this is refused (RFC 8461 §3.3 suggests
/// limiting it; 64 KiB as the RFC's example).
pub const POLICY_MAX: usize = 64 * 1024;

/// The policy mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Senders must not deliver to an MX that fails validation.
    Enforce,
    /// Failures are reported (TLS-RPT) but mail is delivered.
    Testing,
    /// No policy in force.
    None,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `max_age`, in seconds.
    pub max_age: u64,
    /// The `mx` patterns.
    pub mx: Vec<String>,
}

/// Parses a policy body (RFC 8461 §3.2).
pub fn parse_policy(body: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in body.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line:?} is not key: value"))?;
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("mode {other:?} is not enforce, testing or none")),
                })
            }
            "max_age" => {
                let age: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?} is not a number"))?;
                if age > MAX_AGE_LIMIT {
                    return Err(format!("max_age {age} is over {MAX_AGE_LIMIT}"));
                }
                max_age = Some(age);
            }
            "mx" => mx.push(value.to_ascii_lowercase()),
            // Unknown keys are ignored (§3.2).
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no version: STSv1 line".into());
    }
    let mode = mode.ok_or("no mode line")?;
    let max_age = max_age.ok_or("no max_age line")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx line".into());
    }
    Ok(Policy { mode, max_age, mx })
}

/// Whether `host` matches an `mx` pattern (RFC 8461 §4.1: a leading `*.`
/// stands for exactly one label).
pub fn mx_matches(patterns: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|p| match p.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => *p == host,
    })
}

/// An HTTP response, as far as the checks need it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The Content-Type header.
    pub content_type: Option<String>,
    /// The Location header (for redirects).
    pub location: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// Reads an HTTP/1.1 response: status line, headers, then a body framed
/// by Content-Length, chunked encoding or the end of the connection.
pub fn parse_http(raw: &[u8]) -> Result<HttpResponse, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_type = None;
    let mut location = None;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_owned()),
            "location" => location = Some(value.to_owned()),
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk size")?;
            let size_text = String::from_utf8_lossy(&rest[at..at + line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            at += line_end + 2;
            if size == 0 {
                break;
            }
            let chunk = rest.get(at..at + size).ok_or("truncated chunk")?;
            body.extend_from_slice(chunk);
            at += size + 2;
        }
        body
    } else if let Some(length) = length {
        rest.get(..length)
            .ok_or("body shorter than Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        content_type,
        location,
        body,
    })
}

/// Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461
/// §3.3) from `addr`, validating the certificate for the host name.
pub async fn fetch(
    addr: SocketAddr,
    host: &str,
    roots: &Arc<RootCertStore>,
    limit: Duration,
) -> Result<HttpResponse, String> {
    let (config, verifier) = tls_client(roots, &[b"http/1.1"])?;
    let name = server_name(host)?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        if let Some(Err(err)) = verifier_verdict(&verifier) {
            return Err(format!("the certificate of {host} is not valid: {err}"));
        }
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-check\r\n\
             Accept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() > POLICY_MAX + 16 * 1024 {
                        return Err(format!("the response is over {POLICY_MAX} octets"));
                    }
                }
                // A server that closes without close_notify still sent
                // its whole response when the framing says so.
                Err(err) if !raw.is_empty() && err.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break;
                }
                Err(err) => return Err(format!("reading the response: {err}")),
            }
        }
        parse_http(&raw)
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| format!("no answer from https://{host} within {} s", limit.as_secs()))?
}

fn verifier_verdict(
    verifier: &Arc<super::conversation::RecordingVerifier>,
) -> Option<Result<(), rustls::Error>> {
    verifier.verdict()
}

/// The MTA-STS checks up to the policy; returns the policy when there is
/// a valid one.
pub async fn check(
    dns: &Dns,
    domain: &str,
    roots: &Arc<RootCertStore>,
    port: u16,
    limit: Duration,
    out: &mut Vec<CheckResult>,
) -> Option<Policy> {
    let name = format!("_mta-sts.{domain}");
    let records: Vec<String> = match dns.txt(&name).await {
        Ok(records) => records
            .into_iter()
            .filter(|r| r.to_ascii_lowercase().starts_with("v=stsv1"))
            .collect(),
        Err(_) => Vec::new(),
    };
    let record = match records.as_slice() {
        [] => {
            out.push(CheckResult::new(
                "dns.mta-sts",
                domain,
                Section::Dns,
                Status::Info,
                format!("no MTA-STS record at {name}: senders use TLS only opportunistically"),
                "RFC 8461 §3.1",
            ));
            return None;
        }
        [one] => one.clone(),
        many => {
            out.push(
                CheckResult::new(
                    "dns.mta-sts",
                    domain,
                    Section::Dns,
                    Status::Fail,
                    format!(
                        "{} MTA-STS records: senders treat that as no policy",
                        many.len()
                    ),
                    "RFC 8461 §3.1",
                )
                .fix("Keep exactly one v=STSv1 record."),
            );
            return None;
        }
    };
    let id_ok = tag_list(&record).ok().and_then(|tags| {
        tags.iter().find(|(n, _)| n == "id").map(|(_, v)| {
            !v.is_empty() && v.len() <= 32 && v.chars().all(|c| c.is_ascii_alphanumeric())
        })
    });
    if id_ok != Some(true) {
        out.push(
            CheckResult::new(
                "dns.mta-sts",
                domain,
                Section::Dns,
                Status::Fail,
                format!("{record}: needs id= of 1 to 32 letters and digits"),
                "RFC 8461 §3.1",
            )
            .fix(
                "Publish \"v=STSv1; id=20260101T000000\" (change id whenever the policy changes).",
            ),
        );
        return None;
    }
    out.push(CheckResult::new(
        "dns.mta-sts",
        domain,
        Section::Dns,
        Status::Pass,
        record,
        "RFC 8461 §3.1",
    ));

    let host = format!("mta-sts.{domain}");
    let policy_fail = |evidence: String, fix: &str| {
        CheckResult::new(
            "dns.mta-sts-policy",
            domain,
            Section::Dns,
            Status::Fail,
            evidence,
            "RFC 8461 §3.3",
        )
        .fix(fix)
    };
    let addrs = match dns.addrs(&host).await {
        Ok(addrs) => addrs,
        Err(err) => {
            out.push(policy_fail(
                format!("{host} does not resolve: {err}"),
                "Publish an A/AAAA record for the policy host.",
            ));
            return None;
        }
    };
    let mut last_error = String::new();
    let mut response = None;
    for ip in addrs {
        match fetch(SocketAddr::new(ip, port), &host, roots, limit).await {
            Ok(r) => {
                response = Some(r);
                break;
            }
            Err(err) => last_error = err,
        }
    }
    let Some(response) = response else {
        out.push(policy_fail(last_error, "Serve the policy over HTTPS with a certificate valid for mta-sts.<domain> from a public CA."));
        return None;
    };
    if (300..400).contains(&response.status) {
        out.push(policy_fail(
            format!(
                "HTTP {} redirect to {}: senders do not follow redirects",
                response.status,
                response.location.as_deref().unwrap_or("?")
            ),
            "Serve the policy directly at /.well-known/mta-sts.txt, without redirects.",
        ));
        return None;
    }
    if response.status != 200 {
        out.push(policy_fail(
            format!("HTTP {}", response.status),
            "Serve the policy at /.well-known/mta-sts.txt with status 200.",
        ));
        return None;
    }
    let media = response
        .content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    if media.as_deref() != Some("text/plain") {
        out.push(policy_fail(
            format!(
                "Content-Type {:?}, not text/plain",
                response.content_type.as_deref().unwrap_or("(none)")
            ),
            "Serve the policy with Content-Type: text/plain.",
        ));
        return None;
    }
    let body = String::from_utf8_lossy(&response.body);
    let policy = match parse_policy(&body) {
        Ok(policy) => policy,
        Err(err) => {
            out.push(policy_fail(
                format!("invalid policy: {err}"),
                "Write the policy as version: STSv1, mode:, mx: and max_age: lines.",
            ));
            return None;
        }
    };
    let mode = match policy.mode {
        Mode::Enforce => "enforce",
        Mode::Testing => "testing",
        Mode::None => "none",
    };
    let evidence = format!(
        "mode {mode}, max_age {}, mx {}",
        policy.max_age,
        policy.mx.join(" ")
    );
    out.push(if policy.max_age < 86_400 && policy.mode != Mode::None {
        CheckResult::new(
            "dns.mta-sts-policy",
            domain,
            Section::Dns,
            Status::Warn,
            format!("{evidence}: max_age under a day protects little"),
            "RFC 8461 §3.2",
        )
        .fix("Raise max_age to weeks (for example 1209600) once the policy is stable.")
    } else {
        CheckResult::new(
            "dns.mta-sts-policy",
            domain,
            Section::Dns,
            Status::Pass,
            evidence,
            "RFC 8461 §3.2",
        )
    });
    Some(policy)
}

/// One MX host's state for the enforce verdict.
#[derive(Debug, Clone)]
pub struct MxTls {
    /// The host name.
    pub host: String,
    /// Whether every address completed TLS with a trusted certificate
    /// valid for the host name; the reason when not.
    pub problem: Option<String>,
}

/// Whether every MX is matched by the policy and presents a valid
/// certificate, i.e. whether `enforce` delivers today (RFC 8461 §4.1, §4.2).
pub fn enforce_verdict(domain: &str, policy: &Policy, hosts: &[MxTls]) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut broken = Vec::new();
    for host in hosts {
        let matched = mx_matches(&policy.mx, &host.host);
        out.push(
            CheckResult::new(
                "dns.mta-sts-mx",
                &host.host,
                Section::Dns,
                if matched {
                    Status::Pass
                } else if policy.mode == Mode::Enforce {
                    Status::Fail
                } else {
                    Status::Warn
                },
                format!(
                    "{} {} the policy's mx {}",
                    host.host,
                    if matched {
                        "matches"
                    } else {
                        "matches none of"
                    },
                    policy.mx.join(" ")
                ),
                "RFC 8461 §4.1",
            )
            .fix(format!(
                "Add mx: {} to the policy (and change the TXT id).",
                host.host
            )),
        );
        if !matched {
            broken.push(format!("{} is not in the policy", host.host));
        } else if let Some(problem) = &host.problem {
            broken.push(format!("{}: {problem}", host.host));
        }
    }
    let result = if broken.is_empty() {
        CheckResult::new(
            "dns.mta-sts-enforce",
            domain,
            Section::Dns,
            Status::Pass,
            format!("enforce delivers to every MX ({} checked)", hosts.len()),
            "RFC 8461 §4.2, §5",
        )
    } else {
        let (status, lead) = match policy.mode {
            Mode::Enforce => (
                Status::Fail,
                "mode enforce: senders that honour it cannot deliver today",
            ),
            _ => (Status::Warn, "switching to enforce would break delivery"),
        };
        CheckResult::new(
            "dns.mta-sts-enforce",
            domain,
            Section::Dns,
            status,
            format!("{lead}: {}", broken.join("; ")),
            "RFC 8461 §4.2, §5",
        )
        .fix("List every MX in the policy and give each a trusted certificate for its name, or keep mode testing until they do.")
    };
    out.push(result);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing() {
        let p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(mx_matches(&p.mx, "mx1.example.com"));
        assert!(mx_matches(&p.mx, "a.example.net"));
        assert!(!mx_matches(&p.mx, "a.b.example.net"));
        assert!(!mx_matches(&p.mx, "mx2.example.com"));
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999\n").is_err());
    }

    #[test]
    fn http_framing() {
        let r = parse_http(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_http(b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (301, Some("https://x/")));
        assert!(parse_http(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn enforce_breaks_on_unlisted_or_untrusted_mx() {
        let policy = Policy {
            mode: Mode::Enforce,
            max_age: 86400,
            mx: vec!["mx1.example.test".into()],
        };
        let ok = MxTls {
            host: "mx1.example.test".into(),
            problem: None,
        };
        let other = MxTls {
            host: "mx2.example.test".into(),
            problem: None,
        };
        let v = enforce_verdict("example.test", &policy, std::slice::from_ref(&ok));
        assert_eq!(v.last().unwrap().status, Status::Pass);
        let v = enforce_verdict("example.test", &policy, &[ok.clone(), other]);
        assert_eq!(v.last().unwrap().status, Status::Fail);
        let bad = MxTls {
            host: "mx1.example.test".into(),
            problem: Some("untrusted".into()),
        };
        let testing = Policy {
            mode: Mode::Testing,
            ..policy
        };
        let v = enforce_verdict("example.test", &testing, &[bad]);
        assert_eq!(v.last().unwrap().status, Status::Warn);
    }
}
