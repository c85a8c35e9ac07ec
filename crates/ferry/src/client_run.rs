//! Running `ferry send` and `ferry bench` with smtp-client.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_client::{
    Address, AuthMechanism, Client, ClientConfig, ClientConfigBuilder, Credentials, Envelope,
    ErrorKind, Pool, PoolConfig, RecipientOutcomes, Step, Timeouts, Tls, TlsConfig,
};

use crate::bench;
use crate::cli::{
    AuthChoice, BenchArgs, ConnectArgs, Pipelining, SendArgs, TlsMode, system_hostname,
};
use crate::outcome::{Failure, FailureKind, RecipientResult, ReplySummary, SendOutcome};
use crate::report::BenchReport;
use crate::send::{self, Prepared};

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6 literals).
pub fn split_server(server: &str) -> Result<(String, u16), Failure> {
    let bad = || {
        Failure::new(
            FailureKind::Usage,
            format!("--server {server:?}: expected HOST:PORT"),
        )
    };
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The mechanism `--auth` pins; `None` lets the client choose.
pub fn auth_mechanism(choice: AuthChoice) -> Option<AuthMechanism> {
    match choice {
        AuthChoice::Auto => None,
        AuthChoice::Plain => Some(AuthMechanism::Plain),
        AuthChoice::Login => Some(AuthMechanism::Login),
    }
}

/// The TLS mode a `--tls` value stands for.
fn tls_of(mode: TlsMode) -> Tls {
    match mode {
        TlsMode::None => Tls::None,
        TlsMode::Opportunistic => Tls::Opportunistic,
        TlsMode::Starttls => Tls::Required,
        TlsMode::Implicit => Tls::Implicit,
    }
}

/// `--server` as a connection URL (`smtp://`, `smtps://`, `lmtp://`, see
/// smtp-client's `ClientConfig::builder_from_url`) or `HOST:PORT`. An
/// explicit `--tls` overrides the URL's mode; without either, STARTTLS is
/// required.
fn server_builder(connect: &ConnectArgs) -> Result<ClientConfigBuilder, Failure> {
    let builder = if connect.server.contains("://") {
        ClientConfig::builder_from_url(&connect.server).map_err(|e| {
            Failure::new(FailureKind::Usage, format!("--server: {}", error_chain(&e)))
        })?
    } else {
        let (host, port) = split_server(&connect.server)?;
        ClientConfig::builder(host).port(port).tls(Tls::Required)
    };
    Ok(match connect.tls {
        Some(mode) => builder.tls(tls_of(mode)),
        None => builder,
    })
}

/// Builds the client configuration shared by send and bench. `auth` is
/// only used with credentials (given here or in a `--server` URL).
pub fn client_config(
    connect: &ConnectArgs,
    credentials: Option<(String, String)>,
    auth: Option<AuthMechanism>,
    allow_plaintext_auth: bool,
    pipelining: bool,
    transcript: bool,
) -> Result<ClientConfig, Failure> {
    let usage = |e: String| Failure::new(FailureKind::Usage, e);
    let mut tls_config = TlsConfig::new();
    if let Some(ca) = &connect.ca {
        let pem = std::fs::read(ca).map_err(|e| usage(format!("{}: {e}", ca.display())))?;
        tls_config = tls_config
            .add_root_certificates_pem(&pem)
            .map_err(|e| usage(format!("{}: {}", ca.display(), error_chain(&e))))?
            .webpki_roots(false);
    }
    if connect.insecure {
        tls_config = tls_config.dangerous_accept_invalid_certs(true);
    }
    let mut builder = server_builder(connect)?
        .tls_config(tls_config)
        .allow_plaintext_auth(allow_plaintext_auth)
        .pipelining(pipelining)
        .timeouts(Timeouts::uniform(Duration::from_secs(
            connect.timeout.max(1),
        )));
    if let Some(helo) = &connect.helo {
        builder = builder.hello_name(helo.clone());
    } else if !connect.server.contains("helo=") {
        builder = builder.hello_name(system_hostname());
    }
    if let Some((user, password)) = credentials {
        builder = builder.credentials(Credentials::password(user, password));
    }
    if let Some(mechanism) = auth {
        builder = builder.auth_mechanism(mechanism);
    }
    if transcript {
        builder = builder.transcript(|line| eprintln!("[{}] {line}", line.session_id));
    }
    builder.build().map_err(|e| usage(error_chain(&e)))
}

/// The error and each of its causes once, `: `-separated (as anyhow's
/// `{:#}` prints them).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// Maps a client error to the report's failure.
pub fn failure_of(err: &smtp_client::Error, server: &str) -> Failure {
    let text = error_chain(err);
    let lower = text.to_ascii_lowercase();
    let (kind, message) = match err.kind() {
        ErrorKind::InvalidInput => (FailureKind::Usage, text.clone()),
        ErrorKind::Timeout => (FailureKind::Timeout, text.clone()),
        ErrorKind::Io | ErrorKind::Closed if err.step() == Step::Connect => {
            if lower.contains("refused") {
                (
                    FailureKind::Connect,
                    format!("connection refused: {server}"),
                )
            } else {
                (
                    FailureKind::Connect,
                    format!("cannot connect to {server}: {text}"),
                )
            }
        }
        ErrorKind::Io | ErrorKind::Closed => (FailureKind::ConnectionLost, text.clone()),
        ErrorKind::Tls if lower.contains("causedasendentity") => (
            FailureKind::Certificate,
            format!(
                "certificate not trusted: {server} presented a CA certificate \
                 (basicConstraints CA:TRUE) as its own; a server needs an end-entity \
                 certificate ({text})"
            ),
        ),
        ErrorKind::Tls if lower.contains("certificate") => (
            FailureKind::Certificate,
            format!("certificate not trusted: {text}"),
        ),
        ErrorKind::Tls if lower.contains("greeted in plain text") => (
            FailureKind::Tls,
            format!(
                "{server}: the server greeted in plain text: use --tls starttls \
                 (port 587/25) or implicit TLS on 465 ({text})"
            ),
        ),
        ErrorKind::Tls | ErrorKind::TlsUnavailable => (FailureKind::Tls, text.clone()),
        ErrorKind::Auth if lower.contains("without tls") => (
            FailureKind::Auth,
            "not sending the password over an unencrypted connection: \
             use --tls starttls or --tls implicit, or allow it with --allow-insecure-auth"
                .to_owned(),
        ),
        ErrorKind::Auth if lower.contains("usually offered only after") => (
            FailureKind::Auth,
            format!(
                "{server} offers AUTH only after STARTTLS: use --tls starttls \
                 (or --tls opportunistic)"
            ),
        ),
        ErrorKind::Auth if lower.starts_with("authentication failed") => {
            (FailureKind::Auth, text.clone())
        }
        ErrorKind::Auth => (FailureKind::Auth, format!("authentication failed: {text}")),
        ErrorKind::Protocol | ErrorKind::Unsupported => (FailureKind::Protocol, text.clone()),
        _ => (FailureKind::Rejected, text.clone()),
    };
    Failure {
        kind,
        message,
        reply: err.reply().map(ReplySummary::from),
        // The library decides what may pass later.
        transient: err.is_transient(),
    }
}

/// Sends the prepared message; never fails, the outcome says what happened.
pub async fn send_prepared(args: &SendArgs, prepared: Prepared) -> SendOutcome {
    let config = match client_config(
        &args.connect,
        prepared.credentials.clone(),
        auth_mechanism(args.auth),
        args.allow_insecure_auth,
        true,
        args.transcript,
    ) {
        Ok(c) => c,
        Err(f) => return SendOutcome::failed(f),
    };
    let envelope = match Envelope::new(prepared.from.as_str(), &prepared.recipients) {
        Ok(e) => e,
        Err(e) => return SendOutcome::failed(failure_of(&e, &args.connect.server)),
    };
    let result = Client::new(config).send(&envelope, prepared.message).await;
    // Every recipient's fate, however the send ended, from the library.
    let recipients = result
        .recipient_outcomes()
        .iter()
        .map(RecipientResult::from)
        .collect();
    match result {
        Ok(result) => SendOutcome {
            recipients,
            reply: result.reply.as_ref().map(ReplySummary::from),
            error: None,
        },
        Err(err) => SendOutcome {
            recipients,
            // A refusal at the end of data is the transaction's final reply.
            reply: err
                .reply()
                .filter(|reply| err.step() == Step::DataEnd && reply.code() >= 400)
                .map(ReplySummary::from),
            error: Some(failure_of(&err, &args.connect.server)),
        },
    }
}

/// Runs `ferry send`: prints the JSON object or the problem lines and
/// returns the exit code.
pub async fn run_send(args: SendArgs) -> i32 {
    let outcome = match send::prepare(&args, |var| std::env::var(var).ok()) {
        Ok(prepared) => send_prepared(&args, prepared).await,
        Err(failure) => SendOutcome::failed(failure),
    };
    if args.json {
        println!("{}", outcome.to_json());
    }
    if !args.json || outcome.exit_code() != 0 {
        for line in outcome.problems() {
            eprintln!("ferry send: {line}");
        }
    }
    // Delivered means accepted, as smtp-client reports it: never inferred
    // from a reply code (a second 354 is no delivery).
    let delivered: Vec<&str> = outcome
        .recipients
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.address.as_str())
        .collect();
    if !args.json && outcome.exit_code() != 0 && !delivered.is_empty() {
        // A partial failure still delivered to some: say to whom.
        println!("delivered to {}", delivered.join(", "));
    }
    if !args.json && outcome.exit_code() == 0 {
        let accepted = delivered.len();
        println!(
            "sent to {accepted} recipient{}: {}",
            if accepted == 1 { "" } else { "s" },
            outcome
                .reply
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
    }
    outcome.exit_code()
}

/// Runs `ferry bench`; returns the exit code (0 when every message was
/// delivered, 1 otherwise, 2 on usage errors). With `--duration` the run
/// ends at the deadline whatever the server does: sends still in flight
/// are cancelled and counted as such, and a run that delivered nothing
/// exits 1.
pub async fn run_bench(args: BenchArgs) -> i32 {
    let usage = |message: String| {
        eprintln!("ferry bench: {message}");
        2
    };
    let from = match send::envelope_address("--from", &args.from) {
        Ok(a) => a,
        Err(f) => return usage(f.message),
    };
    let to = match send::envelope_address("--to", &args.to) {
        Ok(a) => a,
        Err(f) => return usage(f.message),
    };
    let recipients: Vec<Address> = if args.recipients == 1 {
        vec![to.parse().expect("checked above")]
    } else {
        let (local, domain) = to.rsplit_once('@').unwrap_or((to.as_str(), "localhost"));
        (1..=args.recipients)
            .filter_map(|i| format!("{local}+{i}@{domain}").parse().ok())
            .collect()
    };
    let envelope = match Envelope::new(from.as_str(), recipients) {
        Ok(e) => e,
        Err(e) => return usage(e.to_string()),
    };
    let config = match client_config(
        &args.connect,
        None,
        None,
        false,
        args.pipelining == Pipelining::Auto,
        false,
    ) {
        Ok(c) => c,
        Err(f) => return usage(f.message),
    };
    let concurrency = args.concurrency as usize;
    let pool = Pool::new(
        config,
        PoolConfig {
            max_connections: concurrency,
            max_messages_per_connection: usize::try_from(args.messages_per_connection)
                .unwrap_or(usize::MAX),
            ..PoolConfig::default()
        },
    );
    let limit = match (args.messages, args.duration) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(secs)) => Limit::Until(Instant::now() + Duration::from_secs(secs)),
        (None, None) => Limit::Count(1000),
    };
    let total = match limit {
        Limit::Count(n) => Some(n),
        Limit::Until(_) => None,
    };
    let progress = progress_bar(total, args.json);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let pool = pool.clone();
        let envelope = envelope.clone();
        let next = Arc::clone(&next);
        let progress = progress.clone();
        let (size, from, to) = (args.size, from.clone(), to.clone());
        tasks.spawn(async move {
            let mut report = BenchReport::default();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let more = match limit {
                    Limit::Count(n) => index < n,
                    Limit::Until(deadline) => Instant::now() < deadline,
                };
                if !more {
                    break;
                }
                let message = bench::message(size, index, &from, &to);
                let len = message.len() as u64;
                let t0 = Instant::now();
                let sent = match limit {
                    Limit::Count(_) => pool.send(&envelope, message).await,
                    // --duration is a hard bound: a send still in flight
                    // (a server that never greets, a slow reply) is
                    // cancelled at the deadline.
                    Limit::Until(deadline) => {
                        let deadline = tokio::time::Instant::from_std(deadline);
                        match tokio::time::timeout_at(deadline, pool.send(&envelope, message)).await
                        {
                            Ok(sent) => sent,
                            Err(_) => {
                                report.cancelled += 1;
                                break;
                            }
                        }
                    }
                };
                match sent {
                    Ok(result) if result.is_complete() => report.delivered(t0.elapsed(), len),
                    Ok(result) => {
                        let cause = result
                            .rejected()
                            .find_map(|o| o.reply().map(reply_cause))
                            .unwrap_or_else(|| "rejected".to_owned());
                        report.failed(cause);
                    }
                    // The pool itself waits before reconnecting after a
                    // failed connect or a refused greeting, and holds
                    // sends under a server's per-client limit, so this
                    // loop never hammers the server.
                    Err(err) => report.failed(error_cause(&err)),
                }
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
            }
            report
        });
    }
    let mut report = BenchReport {
        concurrency,
        ..BenchReport::default()
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(part) => report.merge(&part),
            Err(err) => report.failed(format!("worker stopped: {err}")),
        }
    }
    report.elapsed = started.elapsed();
    // QUIT to idle connections, but never past a short bound: the server
    // may be the one that never answers.
    let _ = tokio::time::timeout(POOL_CLOSE_LIMIT, pool.close()).await;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    let _ = std::io::stdout().flush();
    let nothing_delivered = report.delivered == 0 && report.cancelled > 0;
    if report.failed == 0 && !nothing_delivered {
        0
    } else {
        1
    }
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    Count(u64),
    Until(Instant),
}

/// How long `ferry bench` waits for the pool's QUITs at the end.
const POOL_CLOSE_LIMIT: Duration = Duration::from_secs(2);

fn reply_cause(reply: &smtp_client::Reply) -> String {
    match reply.enhanced() {
        Some(e) => format!("{} {e}", reply.code()),
        None => reply.code().to_string(),
    }
}

fn error_cause(err: &smtp_client::Error) -> String {
    if let Some(reply) = err.reply() {
        return reply_cause(reply);
    }
    if let Some(reply) = err.recipients().iter().find_map(|o| o.reply()) {
        return reply_cause(reply);
    }
    let text = err.to_string();
    match err.kind() {
        ErrorKind::Timeout => format!("timeout during {}", err.step().as_str()),
        ErrorKind::Io | ErrorKind::Closed
            if err.step() == Step::Connect && text.to_ascii_lowercase().contains("refused") =>
        {
            "connection refused".to_owned()
        }
        ErrorKind::Io | ErrorKind::Closed => {
            format!("connection error during {}", err.step().as_str())
        }
        ErrorKind::Tls | ErrorKind::TlsUnavailable => format!("tls: {text}"),
        _ => err.to_string(),
    }
}

/// A progress bar on standard error, only when it is a terminal and the
/// output is not JSON.
fn progress_bar(total: Option<u64>, json: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos}/{len} messages  {per_sec}  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_choice_pins_the_mechanism() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        for (value, expected) in [
            ("auto", None),
            ("plain", Some(AuthMechanism::Plain)),
            ("login", Some(AuthMechanism::Login)),
        ] {
            let argv = [
                "ferry",
                "send",
                "--from",
                "a@b",
                "--to",
                "c@d",
                "--user",
                "u",
                "--password",
                "p",
                "--auth",
                value,
            ];
            let Command::Send(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!()
            };
            let config = client_config(
                &args.connect,
                Some(("u".into(), "p".into())),
                auth_mechanism(args.auth),
                false,
                true,
                false,
            )
            .unwrap();
            assert_eq!(config.auth_mechanism(), expected, "{value}");
        }
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            split_server("127.0.0.1:2525").unwrap(),
            ("127.0.0.1".into(), 2525)
        );
        assert_eq!(split_server("[::1]:25").unwrap(), ("::1".into(), 25));
        assert_eq!(
            split_server("mx.example:587").unwrap(),
            ("mx.example".into(), 587)
        );
        for bad in ["mx.example", ":25", "mx:0", "mx:http", "mx:70000"] {
            assert_eq!(
                split_server(bad).unwrap_err().kind,
                FailureKind::Usage,
                "{bad}"
            );
        }
    }
}
