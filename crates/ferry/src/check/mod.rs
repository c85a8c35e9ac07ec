//! `ferry check`: tells why mail to a domain fails and whether a mail
//! server is set up right.
//!
//! A target with a port (`mx.example.com:25`, `[2001:db8::1]:587`,
//! `smtp.example.com:465`) is one server; every address it resolves to is
//! checked. Port 465 means implicit TLS (RFC 8314 §3).
//!
//! | module | what it checks |
//! | --- | --- |
//! | [`connection`] | TCP reachability, the greeting |
//! | [`tls`] | STARTTLS or implicit TLS, certificate, protocol versions |
//! | [`protocol`] | EHLO, extensions, pipelining, null sender, postmaster, SIZE, NOOP/RSET/QUIT |
//! | [`security`] | STARTTLS injection, open relay, VRFY/EXPN, AUTH exposure, bare LF, smuggling |
//! | [`dns`] | MX, SPF, DMARC, DKIM, TLS-RPT, DANE records, reverse DNS |
//! | [`policy`] | MTA-STS record, policy over HTTPS, the enforce verdict |
//! | [`server`] | the order of connections against one address |
//! | [`report`] | results, the table, JSON, exit status |
//!
//! Safety: nothing is ever sent with DATA unless `--intrusive --rcpt` is
//! given; one connection at a time per host; every step is bounded by
//! `--timeout`; credentials are never sent without TLS.

pub mod connection;
pub mod conversation;
pub mod dns;
pub mod policy;
pub mod protocol;
pub mod report;
pub mod security;
pub mod server;
pub mod tls;

use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::cli::CheckArgs;
use report::Report;
use tls::Strictness;

/// The progress line: shown on standard error only when it is a terminal,
/// and cleared before the report is printed.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// A progress line that shows only on a terminal.
    pub fn new() -> Self {
        Progress {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// No progress line (for library callers and tests).
    pub fn silent() -> Self {
        Progress { enabled: false }
    }

    /// Replaces the progress line.
    pub fn show(&self, text: &str) {
        if self.enabled {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{}", report::one_line(text));
            let _ = err.flush();
        }
    }

    /// Removes the progress line.
    pub fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// What the user asked to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: a host name or address, and a port.
    Server {
        /// The host name or IP address as given (brackets removed).
        host: String,
        /// The port.
        port: u16,
    },
    /// A mail domain.
    Domain(String),
}

impl Target {
    /// Parses `host:port`, `[v6]:port`, or a bare domain.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the target is empty".into());
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Target::Server {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if text.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{text}: an address needs a port (for example {text}:25)"
            ));
        }
        if let Some((host, port)) = text.rsplit_once(':') {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{text}: {port:?} is not a port number"))?;
            if port == 0 {
                return Err(format!("{text}: port 0"));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            check_name(host)?;
            return Ok(Target::Server {
                host: host.to_ascii_lowercase(),
                port,
            });
        }
        check_name(text)?;
        Ok(Target::Domain(
            text.trim_end_matches('.').to_ascii_lowercase(),
        ))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a host or domain name"))
    }
}

/// Builds the server-check options from the flags, or a usage error.
pub fn options(args: &CheckArgs) -> Result<server::Options, String> {
    let mut extra: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(path) = &args.ca {
        let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            extra.push(cert.map_err(|e| format!("--ca {}: {e}", path.display()))?);
        }
        if extra.is_empty() {
            return Err(format!(
                "--ca {}: no certificate in the file",
                path.display()
            ));
        }
    }
    let credentials = match (&args.user, &args.password_env) {
        (Some(user), Some(var)) => {
            let password = std::env::var(var)
                .map_err(|_| format!("--password-env {var}: the variable is not set"))?;
            Some((user.clone(), password))
        }
        (Some(_), None) => return Err("--user needs --password-env".into()),
        _ => None,
    };
    Ok(server::Options {
        timeout: Duration::from_secs(args.timeout),
        greeting_timeout: Duration::from_secs(args.greeting_timeout),
        roots: conversation::root_store(&extra),
        transcript: args.transcript,
        helo: args.helo.clone(),
        credentials,
        intrusive_rcpt: if args.intrusive {
            args.rcpt.clone()
        } else {
            None
        },
    })
}

/// Runs `ferry check` and returns the report; `Err` is a usage error.
pub async fn check(args: &CheckArgs, progress: &Progress) -> Result<Report, String> {
    let target = Target::parse(&args.target)?;
    let options = options(args)?;
    let anchors = match &args.dnssec_trust_anchor {
        Some(path) => Some(
            hickory_resolver::proto::dnssec::TrustAnchors::from_file(path)
                .map_err(|e| format!("--dnssec-trust-anchor {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let dns = dns::Dns::new(args.dns_server, options.timeout, anchors)?;
    let mut report = Report::new(&args.target);
    match target {
        Target::Server { host, port } => {
            check_server_target(args, &options, &dns, &host, port, progress, &mut report).await;
        }
        Target::Domain(domain) => {
            check_domain(args, &options, &dns, &domain, progress, &mut report).await;
        }
    }
    Ok(report)
}

async fn check_server_target(
    args: &CheckArgs,
    options: &server::Options,
    dns: &dns::Dns,
    host: &str,
    port: u16,
    progress: &Progress,
    report: &mut Report,
) {
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            progress.show(&format!("resolving {host}"));
            match dns.addrs(host).await {
                Ok(addrs) => addrs,
                Err(err) => {
                    report.push(
                        report::CheckResult::new(
                            "connection.resolve",
                            &format!("{host}:{port}"),
                            report::Section::Connection,
                            report::Status::Fail,
                            format!("{host}: {err}"),
                            "RFC 5321 §5.1",
                        )
                        .fix("Publish A or AAAA records for the host."),
                    );
                    return;
                }
            }
        }
    };
    let is_name = host.parse::<IpAddr>().is_err();
    let submission = matches!(port, 465 | 587);
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        let label = if is_name {
            format!("{host}[{ip}]:{port}")
        } else {
            addr.to_string()
        };
        let target = server::ServerTarget {
            label,
            addr,
            host: is_name.then(|| host.to_owned()),
            domain: args.domain.clone(),
            implicit_tls: port == 465 || args.implicit_tls,
            submission,
            strictness: if submission {
                Strictness::Submission
            } else {
                Strictness::Opportunistic
            },
        };
        let outcome = server::check(&target, options, progress).await;
        if outcome.reachable {
            if ip.is_loopback() && args.dns_server.is_none() {
                report.push(report::CheckResult::new(
                    "connection.fcrdns",
                    &target.label,
                    report::Section::Connection,
                    report::Status::Skip,
                    "loopback address: reverse DNS does not apply",
                    "RFC 5321 §4.1.4",
                ));
            } else {
                report.push(dns::fcrdns(dns, &target.label, ip, &outcome.names).await);
            }
        }
        report.results.extend(outcome.results);
        report.transcripts.extend(outcome.transcripts);
    }
}

async fn check_domain(
    args: &CheckArgs,
    options: &server::Options,
    dns: &dns::Dns,
    domain: &str,
    progress: &Progress,
    report: &mut Report,
) {
    progress.show(&format!("{domain}: DNS"));
    let mut results = Vec::new();
    let mx = dns::mx(dns, domain, &mut results).await;
    dns::spf(dns, domain, &mut results).await;
    dns::dmarc(dns, domain, &mut results).await;
    for selector in &args.dkim_selector {
        dns::dkim(dns, domain, selector, &mut results).await;
    }
    dns::tls_rpt(dns, domain, &mut results).await;
    progress.show(&format!("{domain}: MTA-STS"));
    let policy = policy::check(
        dns,
        domain,
        &options.roots,
        args.test_mta_sts_port.unwrap_or(443),
        options.timeout,
        &mut results,
    )
    .await;
    report.results.extend(results);
    let dns::MxSet::Hosts(hosts) = mx else {
        return;
    };
    let port = args.test_mx_port.unwrap_or(25);
    let mut mx_tls = Vec::new();
    for host in &hosts {
        let mut results = Vec::new();
        // RFC 7672 §2.2: the TLSA name always uses port 25.
        let dane = dns::dane_records(dns, &host.name, 25, &mut results).await;
        report.results.extend(results);
        let strictness = match (&dane, &policy) {
            (Some(dane), _) if dane.records.iter().any(|r| r.usage == 2) => Strictness::Dane,
            // DANE-EE (usage 3) ignores names and issuers (RFC 7672 §3.1.1);
            // DANE takes precedence over MTA-STS (RFC 8461 §2).
            (Some(_), _) => Strictness::Opportunistic,
            (None, Some(p)) if p.mode == policy::Mode::Enforce => Strictness::MtaStsEnforce,
            _ => Strictness::Opportunistic,
        };
        let mut problem = None;
        for ip in &host.addrs {
            let addr = SocketAddr::new(*ip, port);
            let target = server::ServerTarget {
                label: format!("{}[{ip}]:{port}", host.name),
                addr,
                host: Some(host.name.clone()),
                domain: Some(domain.to_owned()),
                implicit_tls: false,
                submission: false,
                strictness,
            };
            let outcome = server::check(&target, options, progress).await;
            if outcome.reachable {
                report.push(dns::fcrdns(dns, &target.label, *ip, &outcome.names).await);
            }
            if let Some(dane) = &dane {
                let chain = outcome.tls.as_ref().map(|t| t.chain.as_slice());
                report.push(dns::dane_match(&target.label, dane, chain));
            }
            let why = match (&outcome.tls, outcome.cert) {
                _ if !outcome.reachable => Some(format!("{ip} unreachable")),
                (None, _) => Some(format!("{ip} has no working STARTTLS")),
                (Some(_), Some(cert)) if !cert.trusted => {
                    Some(format!("{ip} certificate not trusted"))
                }
                (Some(_), Some(cert)) if !cert.name_ok => {
                    Some(format!("{ip} certificate not valid for {}", host.name))
                }
                _ => None,
            };
            if problem.is_none() {
                problem = why;
            }
            report.results.extend(outcome.results);
            report.transcripts.extend(outcome.transcripts);
        }
        mx_tls.push(policy::MxTls {
            host: host.name.clone(),
            problem,
        });
    }
    if let Some(policy) = &policy {
        report
            .results
            .extend(policy::enforce_verdict(domain, policy, &mx_tls));
    }
}

/// `ferry check` as a command: prints the report and returns the exit
/// status (0 nothing failed, 1 something failed, 2 usage error).
pub async fn run(args: CheckArgs) -> i32 {
    let progress = Progress::new();
    let result = check(&args, &progress).await;
    progress.clear();
    match result {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            report.exit_code()
        }
        Err(message) => {
            eprintln!("ferry check: {message}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("mx.example.com:25"),
            Ok(Target::Server {
                host: "mx.example.com".into(),
                port: 25
            })
        );
        assert_eq!(
            Target::parse("[::1]:587"),
            Ok(Target::Server {
                host: "::1".into(),
                port: 587
            })
        );
        assert_eq!(
            Target::parse("Example.COM."),
            Ok(Target::Domain("example.com".into()))
        );
        assert!(Target::parse("192.0.2.1").is_err());
        assert!(Target::parse("mx.example.com:x").is_err());
        assert!(Target::parse("bad name:25").is_err());
        assert!(Target::parse("").is_err());
    }
}
