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
//! | [`server`] | the order of connections against one address |
//! | [`report`] | results, the table, JSON, exit status |
//!
//! Safety: nothing is ever sent with DATA unless `--intrusive --rcpt` is
//! given; one connection at a time per host; every step is bounded by
//! `--timeout`; credentials are never sent without TLS.

pub mod connection;
pub mod conversation;
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
    let mut report = Report::new(&args.target);
    match target {
        Target::Server { host, port } => {
            let addrs = resolve_host(&host, port).await;
            let addrs = match addrs {
                Ok(addrs) => addrs,
                Err(err) => {
                    report.push(
                        report::CheckResult::new(
                            "connection.resolve",
                            &format!("{host}:{port}"),
                            report::Section::Connection,
                            report::Status::Fail,
                            err,
                            "RFC 5321 §5.1",
                        )
                        .fix("Publish A or AAAA records for the host."),
                    );
                    return Ok(report);
                }
            };
            let is_name = host.parse::<IpAddr>().is_err();
            for addr in addrs {
                let label = if is_name {
                    format!("{host}[{}]:{port}", addr.ip())
                } else {
                    addr.to_string()
                };
                let target = server::ServerTarget {
                    label,
                    addr,
                    host: is_name.then(|| host.clone()),
                    domain: args.domain.clone(),
                    implicit_tls: port == 465,
                    submission: matches!(port, 465 | 587),
                    strictness: if matches!(port, 465 | 587) {
                        Strictness::Submission
                    } else {
                        Strictness::Opportunistic
                    },
                };
                let outcome = server::check(&target, &options, progress).await;
                report.results.extend(outcome.results);
                report.transcripts.extend(outcome.transcripts);
            }
        }
        Target::Domain(domain) => {
            return Err(format!(
                "{domain}: give a port to check one server (for example {domain}:25)"
            ));
        }
    }
    Ok(report)
}

async fn resolve_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .collect();
    let mut unique = Vec::new();
    for addr in addrs {
        if !unique.contains(&addr) {
            unique.push(addr);
        }
    }
    if unique.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(unique)
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
