//! The server checks against one address: the connections they open, in
//! order, one at a time.
//!
//! 1. The main session: TCP, greeting, EHLO, AUTH exposure, STARTTLS (or
//!    implicit TLS), the certificate, the fresh EHLO, then NOOP, RSET, an
//!    unknown command, VRFY, EXPN, the pipelined MAIL/RCPT group, SIZE,
//!    the relay probe, AUTH with `--user`, the bare-LF probe and QUIT.
//! 2. The STARTTLS injection probe (when STARTTLS is offered).
//! 3. Two legacy ClientHellos, TLS 1.0 and TLS 1.1.
//! 4. With `--intrusive`, one session per smuggling variant.
//!
//! No DATA is sent outside `--intrusive`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use smtp_proto::Reply;
use smtp_proto::ehlo::Capabilities;

use super::conversation::{Conversation, ProbeError, TlsDetails, server_name, show};
use super::report::{CheckResult, Section, Status};
use super::security::InjectionOutcome;
use super::tls::{CertVerdict, LEGACY_WAIT, LegacyAnswer, Strictness};
use super::{Progress, connection, protocol, security, tls};

/// How long the probes that wait for silence (injection, bare LF,
/// smuggling) wait, at most, for a reply that should not come.
pub const QUIET_WAIT: Duration = Duration::from_secs(3);

/// What every server check needs to know about the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The limit for each network step.
    pub timeout: Duration,
    /// How long to wait for the greeting (RFC 5321 §4.5.3.2.1: 5 minutes).
    pub greeting_timeout: Duration,
    /// Trusted roots: the Mozilla set and `--ca`.
    pub roots: Arc<RootCertStore>,
    /// Record the conversations.
    pub transcript: bool,
    /// The EHLO name; the local address literal when `None`.
    pub helo: Option<String>,
    /// `--user` and the password for authenticated submission.
    pub credentials: Option<(String, String)>,
    /// `--intrusive --rcpt`: the recipient of the smuggling probes.
    pub intrusive_rcpt: Option<String>,
}

/// One server address to check.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// How results name it: `host:port` or `mx.example.com[192.0.2.1]:25`.
    pub label: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The host name for SNI and the certificate, when known.
    pub host: Option<String>,
    /// The mail domain, for `postmaster@domain`.
    pub domain: Option<String>,
    /// TLS from the first byte (port 465, RFC 8314 §3).
    pub implicit_tls: bool,
    /// Submission (587 or 465): clients verify certificates and log in.
    pub submission: bool,
    /// How strictly certificate problems count.
    pub strictness: Strictness,
}

/// Everything one address yielded.
#[derive(Debug, Default)]
pub struct ServerOutcome {
    /// The results, in order.
    pub results: Vec<CheckResult>,
    /// One transcript per connection, when recording.
    pub transcripts: Vec<(String, Vec<String>)>,
    /// Whether TCP connected.
    pub reachable: bool,
    /// What the modern TLS handshake negotiated, when it worked.
    pub tls: Option<TlsDetails>,
    /// The certificate verdict, when TLS worked.
    pub cert: Option<CertVerdict>,
    /// The names the server used in its greeting and EHLO reply.
    pub names: Vec<String>,
}

impl ServerTarget {
    fn tls_name(&self) -> Result<rustls_pki_types::ServerName<'static>, String> {
        match &self.host {
            Some(host) => server_name(host),
            None => server_name(&self.addr.ip().to_string()),
        }
    }

    fn postmaster(&self) -> String {
        match &self.domain {
            Some(domain) => format!("<postmaster@{domain}>"),
            // RFC 5321 §4.5.1: an unqualified postmaster must be accepted.
            None => "<postmaster>".to_owned(),
        }
    }
}

fn ehlo_name(options: &Options, conversation: &Conversation) -> String {
    match &options.helo {
        Some(name) => name.clone(),
        // RFC 5321 §4.1.3 address literal of the local end.
        None => match conversation.local.ip() {
            std::net::IpAddr::V4(ip) => format!("[{ip}]"),
            std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        },
    }
}

/// Runs every server check against `target`.
pub async fn check(target: &ServerTarget, options: &Options, progress: &Progress) -> ServerOutcome {
    let mut outcome = ServerOutcome::default();
    let label = target.label.as_str();
    progress.show(&format!("{label}: connecting"));
    let main = main_session(target, options, &mut outcome).await;
    if !outcome.reachable {
        return outcome;
    }
    let starttls_offered = main.starttls_offered;
    if !target.implicit_tls {
        progress.show(&format!("{label}: STARTTLS injection"));
        let result = injection_probe(target, options, &mut outcome, starttls_offered).await;
        outcome.results.push(security::injection(label, result));
    }
    progress.show(&format!("{label}: legacy TLS versions"));
    legacy_probes(
        target,
        options,
        &mut outcome,
        starttls_offered || target.implicit_tls,
    )
    .await;
    if let Some(rcpt) = &options.intrusive_rcpt {
        progress.show(&format!("{label}: smuggling variants"));
        for (name, bytes) in security::SMUGGLING_VARIANTS {
            let result = smuggling_probe(target, options, &mut outcome, rcpt, name, bytes).await;
            let result = security::smuggling(
                label,
                name,
                result.as_ref().map(|r| r.as_ref()).map_err(Clone::clone),
            );
            outcome.results.push(result);
        }
    }
    outcome
}

struct MainFacts {
    starttls_offered: bool,
}

fn push(outcome: &mut ServerOutcome, result: CheckResult) {
    outcome.results.push(result);
}

fn finish(outcome: &mut ServerOutcome, conversation: Conversation, what: &str) {
    let label = format!("{} ({what})", conversation.peer);
    let lines = conversation.into_transcript();
    if !lines.is_empty() {
        outcome.transcripts.push((label, lines));
    }
}

async fn main_session(
    target: &ServerTarget,
    options: &Options,
    outcome: &mut ServerOutcome,
) -> MainFacts {
    let label = target.label.as_str();
    let mut facts = MainFacts {
        starttls_offered: false,
    };
    let port = target.addr.port();
    let (mut conv, elapsed) =
        match Conversation::connect(target.addr, options.timeout, options.transcript).await {
            Ok(pair) => pair,
            Err(err) => {
                push(outcome, connection::tcp(label, port, Err(&err)));
                return facts;
            }
        };
    outcome.reachable = true;
    push(outcome, connection::tcp(label, port, Ok(elapsed)));
    let name = match target.tls_name() {
        Ok(name) => name,
        Err(err) => {
            push(
                outcome,
                CheckResult::new(
                    "tls.name",
                    label,
                    Section::Tls,
                    Status::Skip,
                    err,
                    "RFC 6066 §3",
                ),
            );
            finish(outcome, conv, "main");
            return facts;
        }
    };
    if target.implicit_tls {
        match conv.start_tls(&options.roots, name.clone()).await {
            Ok(details) => {
                push(
                    outcome,
                    CheckResult::new(
                        "tls.implicit",
                        label,
                        Section::Tls,
                        Status::Pass,
                        format!("TLS from the first byte, {}", details.version),
                        "RFC 8314 §3",
                    ),
                );
                let verdict = tls::report_handshake(
                    &mut outcome.results,
                    label,
                    target.host.as_deref(),
                    &details,
                    target.strictness,
                );
                outcome.cert = Some(verdict);
                outcome.tls = Some(details);
            }
            Err(err) => {
                push(
                    outcome,
                    CheckResult::new("tls.implicit", label, Section::Tls, Status::Fail, err.to_string(), "RFC 8314 §3")
                        .fix("Serve TLS on this port from the first byte (port 465), or use STARTTLS on 587."),
                );
                finish(outcome, conv, "main");
                return facts;
            }
        }
    }
    let started = Instant::now();
    let greeting = conv.reply_within(options.greeting_timeout).await;
    push(
        outcome,
        connection::greeting(label, greeting.as_ref(), started.elapsed()),
    );
    match &greeting {
        Ok(reply) if reply.code() == 220 => {
            if let Some(name) = connection::greeting_name(reply) {
                outcome.names.push(name);
            }
        }
        _ => {
            finish(outcome, conv, "main");
            return facts;
        }
    }
    let helo = ehlo_name(options, &conv);
    let ehlo = conv.command(&format!("EHLO {helo}")).await;
    let (result, caps) = protocol::ehlo(label, ehlo.as_ref());
    push(outcome, result);
    let Some(mut caps) = caps else {
        let _ = conv.command(&format!("HELO {helo}")).await;
        finish(outcome, conv, "main");
        return facts;
    };
    outcome.names.push(caps.domain.clone());
    push(outcome, protocol::extensions(label, &caps));
    push(
        outcome,
        security::auth_before_tls(label, &caps, conv.is_tls()),
    );
    facts.starttls_offered = caps.starttls;

    if !target.implicit_tls {
        let mut fallback = false;
        if caps.starttls {
            match conv.command("STARTTLS").await {
                Ok(reply) if reply.code() == 220 => {
                    let early = conv.buffered().to_vec();
                    if !early.is_empty() {
                        push(
                            outcome,
                            CheckResult::new(
                                "tls.starttls",
                                label,
                                Section::Tls,
                                Status::Fail,
                                format!(
                                    "bytes after 220 before the handshake: {}",
                                    String::from_utf8_lossy(&early)
                                ),
                                "RFC 3207 §4.2",
                            )
                            .fix(
                                "Send nothing between the 220 reply to STARTTLS and the handshake.",
                            ),
                        );
                    }
                    match conv.start_tls(&options.roots, name.clone()).await {
                        Ok(details) => {
                            if early.is_empty() {
                                push(
                                    outcome,
                                    CheckResult::new(
                                        "tls.starttls",
                                        label,
                                        Section::Tls,
                                        Status::Pass,
                                        format!(
                                            "{} then handshake in {} ms",
                                            show(&reply),
                                            details.elapsed.as_millis()
                                        ),
                                        "RFC 3207 §4",
                                    ),
                                );
                            }
                            let verdict = tls::report_handshake(
                                &mut outcome.results,
                                label,
                                target.host.as_deref(),
                                &details,
                                target.strictness,
                            );
                            outcome.cert = Some(verdict);
                            outcome.tls = Some(details);
                            let ehlo = conv.command(&format!("EHLO {helo}")).await;
                            let (result, after) = protocol::ehlo_after_tls(label, ehlo.as_ref());
                            push(outcome, result);
                            match after {
                                Some(after) => caps = after,
                                None => {
                                    finish(outcome, conv, "main");
                                    return facts;
                                }
                            }
                        }
                        Err(err) => {
                            push(
                                outcome,
                                CheckResult::new(
                                    "tls.starttls",
                                    label,
                                    Section::Tls,
                                    Status::Fail,
                                    format!("{} but {err}; senders fall back to plaintext or give up", show(&reply)),
                                    "RFC 3207 §4",
                                )
                                .fix("Fix the TLS configuration: the handshake must complete with a TLS 1.2 or 1.3 client."),
                            );
                            fallback = true;
                        }
                    }
                }
                other => {
                    push(
                        outcome,
                        CheckResult::new(
                            "tls.starttls",
                            label,
                            Section::Tls,
                            Status::Fail,
                            format!(
                                "STARTTLS offered but refused: {}",
                                match &other {
                                    Ok(r) => show(r),
                                    Err(e) => e.to_string(),
                                }
                            ),
                            "RFC 3207 §4",
                        )
                        .fix("Make STARTTLS work or stop offering it."),
                    );
                }
            }
        } else {
            let status = if target.strictness == Strictness::Opportunistic && !target.submission {
                Status::Warn
            } else {
                Status::Fail
            };
            push(
                outcome,
                CheckResult::new(
                    "tls.starttls",
                    label,
                    Section::Tls,
                    status,
                    "STARTTLS is not offered: all mail to this server travels in plaintext",
                    "RFC 3207 §4, RFC 8461 §5, RFC 7672 §2.2",
                )
                .fix("Configure a certificate and enable STARTTLS."),
            );
        }
        if fallback {
            // What an opportunistic sender does after a failed handshake:
            // a new connection without TLS. The remaining checks run there.
            finish(outcome, conv, "main, failed TLS");
            match plain_session(target, options).await {
                Ok((fresh, fresh_caps)) => {
                    conv = fresh;
                    caps = fresh_caps;
                }
                Err(err) => {
                    push(
                        outcome,
                        CheckResult::new(
                            "protocol.noop",
                            label,
                            Section::Protocol,
                            Status::Skip,
                            format!("no plaintext session after the failed handshake: {err}"),
                            "RFC 5321 §4.1.1.9",
                        ),
                    );
                    return facts;
                }
            }
        }
    }

    let noop = conv.command("NOOP").await;
    push(
        outcome,
        protocol::simple(
            "protocol.noop",
            label,
            noop.as_ref(),
            &[250],
            "RFC 5321 §4.1.1.9",
            "Answer NOOP with 250.",
        ),
    );
    let rset = conv.command("RSET").await;
    push(
        outcome,
        protocol::simple(
            "protocol.rset",
            label,
            rset.as_ref(),
            &[250],
            "RFC 5321 §4.1.1.5",
            "Answer RSET with 250.",
        ),
    );
    let unknown = conv.command("XFERRYCHECK").await;
    push(
        outcome,
        protocol::simple(
            "protocol.unknown-command",
            label,
            unknown.as_ref(),
            &[500, 502],
            "RFC 5321 §4.2.4",
            "Answer unknown commands with 500 (or 502).",
        ),
    );
    let vrfy = conv.command("VRFY postmaster").await;
    push(
        outcome,
        security::enumeration("security.vrfy", label, "VRFY postmaster", vrfy.as_ref()),
    );
    let expn = conv.command("EXPN postmaster").await;
    push(
        outcome,
        security::enumeration("security.expn", label, "EXPN postmaster", expn.as_ref()),
    );

    let mut authenticated = false;
    if let Some((user, password)) = &options.credentials {
        authenticated = authenticate(target, &mut conv, &caps, user, password, outcome).await;
    }

    let postmaster = target.postmaster();
    let group = [
        "MAIL FROM:<>".to_owned(),
        format!("RCPT TO:{postmaster}"),
        "MAIL FROM:<>".to_owned(),
        "RSET".to_owned(),
    ];
    let mut replies = Vec::new();
    if caps.pipelining {
        let bytes: String = group.iter().map(|c| format!("{c}\r\n")).collect();
        match conv.send_raw(bytes.as_bytes()).await {
            Ok(()) => {
                for _ in 0..group.len() {
                    let reply = conv.reply().await;
                    let stop = reply.is_err();
                    replies.push(reply);
                    if stop {
                        break;
                    }
                }
            }
            Err(err) => replies.push(Err(err)),
        }
    } else {
        for command in &group {
            let reply = conv.command(command).await;
            let stop = reply.is_err();
            replies.push(reply);
            if stop {
                break;
            }
        }
    }
    protocol::mail_group(
        &mut outcome.results,
        label,
        &postmaster,
        caps.pipelining,
        target.submission,
        &replies,
    );

    match caps.size {
        Some(limit) if limit > 0 => {
            let reply = conv
                .command(&format!("MAIL FROM:<> SIZE={}", limit + 1))
                .await;
            push(
                outcome,
                protocol::size_over_limit(label, limit, reply.as_ref()),
            );
            let _ = conv.command("RSET").await;
        }
        _ => push(
            outcome,
            CheckResult::new(
                "protocol.size-limit",
                label,
                Section::Protocol,
                Status::Skip,
                "no fixed SIZE limit announced",
                "RFC 1870 §6.1",
            ),
        ),
    }

    if authenticated {
        push(
            outcome,
            CheckResult::new(
                "security.open-relay",
                label,
                Section::Security,
                Status::Skip,
                "authenticated: relaying is expected",
                "RFC 5321 §3.6.2",
            ),
        );
    } else {
        let mut own: Vec<&str> = Vec::new();
        own.extend(target.domain.as_deref());
        own.extend(target.host.as_deref());
        own.extend(outcome.names.iter().map(String::as_str));
        let (foreign, sender) = security::foreign_domains(&own);
        let rcpt = format!("ferry-relay-check@{foreign}");
        let mail = conv
            .command(&format!("MAIL FROM:<ferry-check@{sender}>"))
            .await;
        let rcpt_reply = match &mail {
            Ok(r) if r.code() / 100 == 2 => Some(conv.command(&format!("RCPT TO:<{rcpt}>")).await),
            _ => None,
        };
        push(
            outcome,
            security::open_relay(
                label,
                &rcpt,
                mail.as_ref(),
                rcpt_reply.as_ref().map(|r| r.as_ref()),
            ),
        );
        let _ = conv.command("RSET").await;
    }

    // The bare-LF probe last: a lenient server answers twice, a strict
    // one once, and either way the session goes on to QUIT.
    let first = match conv.send_raw(b"RSET\nNOOP\r\n").await {
        Ok(()) => conv.reply().await,
        Err(err) => Err(err),
    };
    let second = if first.is_ok() {
        conv.reply_within(QUIET_WAIT.min(options.timeout))
            .await
            .ok()
    } else {
        None
    };
    push(
        outcome,
        security::bare_lf(label, first.as_ref(), second.as_ref()),
    );
    if !matches!(first, Err(ProbeError::Closed)) {
        let quit = conv.command("QUIT").await;
        let closed = quit.is_ok()
            && matches!(
                conv.unsolicited(QUIET_WAIT.min(options.timeout)).await,
                Err(ProbeError::Closed) | Err(ProbeError::Io(_))
            );
        push(outcome, protocol::quit(label, quit.as_ref(), closed));
    }
    finish(outcome, conv, "main");
    facts
}

/// `--user`: AUTH over TLS only, then MAIL FROM of a foreign domain.
async fn authenticate(
    target: &ServerTarget,
    conv: &mut Conversation,
    caps: &Capabilities,
    user: &str,
    password: &str,
    outcome: &mut ServerOutcome,
) -> bool {
    let label = target.label.as_str();
    let rfc = "RFC 4954 §4, RFC 8314 §3";
    if !conv.is_tls() {
        push(
            outcome,
            CheckResult::new(
                "security.auth-credentials",
                label,
                Section::Security,
                Status::Skip,
                "no TLS: credentials are never sent in plaintext",
                rfc,
            ),
        );
        return false;
    }
    push(
        outcome,
        CheckResult::new(
            "security.auth-after-tls",
            label,
            Section::Security,
            if caps.auth.is_empty() {
                Status::Fail
            } else {
                Status::Pass
            },
            if caps.auth.is_empty() {
                "no AUTH offered after TLS".to_owned()
            } else {
                format!("AUTH {}", caps.auth.join(" "))
            },
            rfc,
        )
        .fix("Offer AUTH PLAIN (or LOGIN) once the session is encrypted."),
    );
    let reply = if caps.supports_auth("PLAIN") {
        let response = smtp_proto::sasl::plain_response(None, user, password);
        conv.command(&format!("AUTH PLAIN {response}")).await
    } else if caps.supports_auth("LOGIN") {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        match conv.command("AUTH LOGIN").await {
            Ok(r) if r.code() == 334 => match conv.command(&b64.encode(user)).await {
                Ok(r) if r.code() == 334 => conv.command(&b64.encode(password)).await,
                other => other,
            },
            other => other,
        }
    } else {
        push(
            outcome,
            CheckResult::new(
                "security.auth-credentials",
                label,
                Section::Security,
                Status::Skip,
                "neither PLAIN nor LOGIN offered",
                rfc,
            ),
        );
        return false;
    };
    let accepted = matches!(&reply, Ok(r) if r.code() == 235);
    push(
        outcome,
        CheckResult::new(
            "security.auth-credentials",
            label,
            Section::Security,
            if accepted { Status::Pass } else { Status::Fail },
            match &reply {
                Ok(r) => show(r),
                Err(e) => e.to_string(),
            },
            "RFC 4954 §6",
        )
        .fix("Check the user name and password (and that the account may submit)."),
    );
    if accepted {
        let own = user
            .rsplit_once('@')
            .map(|(_, d)| d)
            .into_iter()
            .chain(target.domain.as_deref())
            .collect::<Vec<_>>();
        let (foreign, _) = security::foreign_domains(&own);
        let mail = conv
            .command(&format!("MAIL FROM:<ferry-check@{foreign}>"))
            .await;
        let result = match &mail {
            Ok(r) if r.code() / 100 == 2 => CheckResult::new(
                "security.auth-foreign-sender",
                label,
                Section::Security,
                Status::Warn,
                format!("MAIL FROM:<ferry-check@{foreign}> as {user} → {}: any sender address is accepted", show(r)),
                "RFC 6409 §6.1",
            )
            .fix("Restrict authenticated users to their own sender addresses (Postfix: reject_sender_login_mismatch)."),
            Ok(r) => CheckResult::new(
                "security.auth-foreign-sender",
                label,
                Section::Security,
                Status::Pass,
                format!("MAIL FROM:<ferry-check@{foreign}> → {}", show(r)),
                "RFC 6409 §6.1",
            ),
            Err(e) => CheckResult::new("security.auth-foreign-sender", label, Section::Security, Status::Info, e.to_string(), "RFC 6409 §6.1"),
        };
        push(outcome, result);
        let _ = conv.command("RSET").await;
    }
    accepted
}

/// Waits for the greeting (up to the greeting timeout) and wants a 220.
async fn expect_greeting(conv: &mut Conversation, options: &Options) -> Result<(), String> {
    let greeting = conv
        .reply_within(options.greeting_timeout)
        .await
        .map_err(|e| e.to_string())?;
    if greeting.code() != 220 {
        return Err(format!("greeting {}", show(&greeting)));
    }
    Ok(())
}

/// Sends EHLO with the name the checks use and returns the reply.
async fn send_ehlo(conv: &mut Conversation, options: &Options) -> Result<Reply, String> {
    let helo = ehlo_name(options, conv);
    conv.command(&format!("EHLO {helo}"))
        .await
        .map_err(|e| e.to_string())
}

/// Connect, greeting, EHLO — no TLS. For auxiliary connections; errors
/// are reported by the caller as a skip.
async fn plain_session(
    target: &ServerTarget,
    options: &Options,
) -> Result<(Conversation, Capabilities), String> {
    let (mut conv, _) = Conversation::connect(target.addr, options.timeout, options.transcript)
        .await
        .map_err(|e| e.to_string())?;
    expect_greeting(&mut conv, options).await?;
    let ehlo = send_ehlo(&mut conv, options).await?;
    if ehlo.code() != 250 {
        return Err(format!("EHLO {}", show(&ehlo)));
    }
    Ok((conv, Capabilities::from_reply(&ehlo)))
}

/// A session ready for MAIL: TLS when the server has it, AUTH when
/// credentials were given.
async fn ready_session(target: &ServerTarget, options: &Options) -> Result<Conversation, String> {
    let name = target.tls_name()?;
    let (mut conv, caps) = if target.implicit_tls {
        let (mut conv, _) = Conversation::connect(target.addr, options.timeout, options.transcript)
            .await
            .map_err(|e| e.to_string())?;
        conv.start_tls(&options.roots, name)
            .await
            .map_err(|e| e.to_string())?;
        expect_greeting(&mut conv, options).await?;
        let ehlo = send_ehlo(&mut conv, options).await?;
        (conv, Capabilities::from_reply(&ehlo))
    } else {
        let (mut conv, caps) = plain_session(target, options).await?;
        if caps.starttls {
            let reply = conv.command("STARTTLS").await.map_err(|e| e.to_string())?;
            if reply.code() != 220 {
                return Err(format!("STARTTLS {}", show(&reply)));
            }
            conv.start_tls(&options.roots, name)
                .await
                .map_err(|e| e.to_string())?;
            let ehlo = send_ehlo(&mut conv, options).await?;
            let caps = Capabilities::from_reply(&ehlo);
            (conv, caps)
        } else {
            (conv, caps)
        }
    };
    if let Some((user, password)) = &options.credentials
        && conv.is_tls()
        && caps.supports_auth("PLAIN")
    {
        {
            let response = smtp_proto::sasl::plain_response(None, user, password);
            let reply = conv
                .command(&format!("AUTH PLAIN {response}"))
                .await
                .map_err(|e| e.to_string())?;
            if reply.code() != 235 {
                return Err(format!("AUTH {}", show(&reply)));
            }
        }
    }
    Ok(conv)
}

async fn injection_probe(
    target: &ServerTarget,
    options: &Options,
    outcome: &mut ServerOutcome,
    offered: bool,
) -> Result<InjectionOutcome, String> {
    if !offered {
        return Err("STARTTLS not offered".into());
    }
    let name = target.tls_name()?;
    let (mut conv, _) = plain_session(target, options).await?;
    let result = async {
        conv.send_raw(b"STARTTLS\r\nRSET\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let reply = match conv.reply().await {
            Ok(reply) => reply,
            Err(ProbeError::Closed) => return Ok(InjectionOutcome::Closed),
            Err(err) => return Err(err.to_string()),
        };
        if reply.code() != 220 {
            return Err(format!("STARTTLS refused: {}", show(&reply)));
        }
        let early = conv
            .unsolicited(Duration::from_millis(300))
            .await
            .unwrap_or_default();
        if !early.is_empty() {
            return Ok(InjectionOutcome::AnsweredInPlaintext(
                String::from_utf8_lossy(&early).into_owned(),
            ));
        }
        match conv.start_tls(&options.roots, name).await {
            Ok(_) => {}
            Err(ProbeError::Closed) | Err(ProbeError::Tls(_)) | Err(ProbeError::Io(_)) => {
                return Ok(InjectionOutcome::Closed);
            }
            Err(err) => return Err(err.to_string()),
        }
        match conv.unsolicited(QUIET_WAIT.min(options.timeout)).await {
            Ok(bytes) if !bytes.is_empty() => Ok(InjectionOutcome::AnsweredInsideTls(
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
            Ok(_) => {
                // Prove the session is alive, so silence was not a hang.
                match conv.command("NOOP").await {
                    Ok(r) if r.code() == 250 => Ok(InjectionOutcome::Discarded),
                    Ok(r) => Err(format!("NOOP after the handshake: {}", show(&r))),
                    Err(ProbeError::Closed) => Ok(InjectionOutcome::Closed),
                    Err(err) => Err(err.to_string()),
                }
            }
            Err(ProbeError::Closed) | Err(ProbeError::Io(_)) => Ok(InjectionOutcome::Closed),
            Err(err) => Err(err.to_string()),
        }
    }
    .await;
    finish(outcome, conv, "STARTTLS injection");
    result
}

async fn legacy_probes(
    target: &ServerTarget,
    options: &Options,
    outcome: &mut ServerOutcome,
    tls_possible: bool,
) {
    let label = target.label.as_str();
    let rfc = "RFC 8996 §2-3";
    if !tls_possible {
        push(
            outcome,
            CheckResult::new(
                "tls.legacy-versions",
                label,
                Section::Tls,
                Status::Skip,
                "no TLS offered",
                rfc,
            ),
        );
        return;
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for minor in [1u8, 2] {
        let name = tls::version_name(3, minor);
        match legacy_probe(target, options, outcome, minor).await {
            Ok(LegacyAnswer::ServerHello(major, got)) if (major, got) == (3, minor) => {
                accepted.push(name)
            }
            Ok(LegacyAnswer::ServerHello(major, got)) => refused.push(format!(
                "{name}: ServerHello {}",
                tls::version_name(major, got)
            )),
            Ok(LegacyAnswer::Alert(_, description)) => {
                refused.push(format!("{name}: alert {description}"))
            }
            Ok(LegacyAnswer::Closed) => refused.push(format!("{name}: closed")),
            Ok(LegacyAnswer::NotTls) => refused.push(format!("{name}: not a TLS answer")),
            Err(err) => {
                push(
                    outcome,
                    CheckResult::new(
                        "tls.legacy-versions",
                        label,
                        Section::Tls,
                        Status::Skip,
                        format!("{name} probe: {err}"),
                        rfc,
                    ),
                );
                return;
            }
        }
    }
    let modern = outcome.tls.is_some();
    if accepted.is_empty() {
        push(
            outcome,
            CheckResult::new(
                "tls.legacy-versions",
                label,
                Section::Tls,
                Status::Pass,
                format!("refused: {}", refused.join("; ")),
                rfc,
            ),
        );
    } else {
        let status = if target.submission {
            Status::Fail
        } else {
            Status::Warn
        };
        push(
            outcome,
            CheckResult::new(
                "tls.legacy-versions",
                label,
                Section::Tls,
                status,
                format!("accepts {}", accepted.join(" and ")),
                rfc,
            )
            .fix("Disable TLS 1.0 and 1.1 (allow TLS 1.2 and 1.3 only)."),
        );
    }
    let status = match (modern, accepted.is_empty()) {
        (false, false) => Status::Fail,
        _ => Status::Pass,
    };
    let evidence = match (modern, accepted.is_empty()) {
        (false, false) => format!(
            "TLS works only with {}: modern senders (TLS 1.2+) fail the handshake and fall back to plaintext or give up",
            accepted.join("/")
        ),
        (true, _) => "a TLS 1.2+ client completes the handshake".to_owned(),
        (false, true) => "no TLS version works at all".to_owned(),
    };
    push(
        outcome,
        CheckResult::new(
            "tls.modern-reachable",
            label,
            Section::Tls,
            status,
            evidence,
            "RFC 8996, RFC 7525 §3.1.1",
        )
        .fix("Enable TLS 1.2 and 1.3 with current cipher suites (ECDHE with AES-GCM or ChaCha20)."),
    );
}

async fn legacy_probe(
    target: &ServerTarget,
    options: &Options,
    outcome: &mut ServerOutcome,
    minor: u8,
) -> Result<LegacyAnswer, String> {
    let mut conv = if target.implicit_tls {
        Conversation::connect(target.addr, options.timeout, options.transcript)
            .await
            .map_err(|e| e.to_string())?
            .0
    } else {
        let (mut conv, caps) = plain_session(target, options).await?;
        if !caps.starttls {
            return Err("STARTTLS not offered".into());
        }
        let reply = conv.command("STARTTLS").await.map_err(|e| e.to_string())?;
        if reply.code() != 220 {
            return Err(format!("STARTTLS {}", show(&reply)));
        }
        conv
    };
    let hello = tls::legacy_client_hello(minor, target.host.as_deref());
    let result = async {
        conv.send_binary(
            &hello,
            &format!("ClientHello offering only {}", tls::version_name(3, minor)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + LEGACY_WAIT.min(options.timeout);
        let mut seen = Vec::new();
        loop {
            seen.clear();
            seen.extend_from_slice(conv.buffered());
            if let Some(answer) = tls::parse_legacy_answer(&seen) {
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match conv.read_more(left).await {
                Ok(()) => {}
                Err(ProbeError::Closed) | Err(ProbeError::Io(_)) => {
                    return Ok(LegacyAnswer::Closed);
                }
                Err(err) => return Err(err.to_string()),
            }
        }
    }
    .await;
    conv.note(format!("legacy answer: {result:?}"));
    finish(
        outcome,
        conv,
        &format!("legacy {}", tls::version_name(3, minor)),
    );
    result
}

async fn smuggling_probe(
    target: &ServerTarget,
    options: &Options,
    outcome: &mut ServerOutcome,
    rcpt: &str,
    name: &str,
    ending: &[u8],
) -> Result<Option<Reply>, String> {
    let mut conv = ready_session(target, options).await?;
    let result = async {
        let mail = conv
            .command(&format!("MAIL FROM:<{rcpt}>"))
            .await
            .map_err(|e| e.to_string())?;
        if mail.code() / 100 != 2 {
            return Err(format!("MAIL {}", show(&mail)));
        }
        let reply = conv
            .command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .map_err(|e| e.to_string())?;
        if reply.code() / 100 != 2 {
            return Err(format!("RCPT {}", show(&reply)));
        }
        let data = conv.command("DATA").await.map_err(|e| e.to_string())?;
        if data.code() != 354 {
            return Err(format!("DATA {}", show(&data)));
        }
        let mut body = format!(
            "From: <{rcpt}>\r\nTo: <{rcpt}>\r\nSubject: ferry check smuggling probe {name}\r\n\r\n\
             This probe ends with {name}, which must not end the message.\r\nprobe"
        )
        .into_bytes();
        body.extend_from_slice(ending);
        conv.send_raw(&body).await.map_err(|e| e.to_string())?;
        match conv.reply_within(QUIET_WAIT.min(options.timeout)).await {
            Ok(reply) => Ok(Some(reply)),
            Err(ProbeError::Timeout(_)) => Ok(None),
            Err(ProbeError::Closed) => Ok(None),
            Err(err) => Err(err.to_string()),
        }
    }
    .await;
    // Dropping the connection without <CRLF>.<CRLF> aborts the message.
    conv.note("disconnecting without ending DATA".into());
    finish(outcome, conv, &format!("smuggling {name}"));
    result
}
