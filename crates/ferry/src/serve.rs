//! `ferry serve`: an smtp-server [`Backend`] that stores into a Maildir
//! (or discards), and the command that wires it, smtp-server's
//! [`StaticUsers`](smtp_server::StaticUsers) and TLS to the flags.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use smtp_server::smtp_proto::EnhancedCode;
use smtp_server::{
    AuthPolicy, Backend, BareLineEndings, Body, ConnectionInfo, Envelope, Extensions, Limits,
    Server, Session, SmtpError, Timeouts, TlsConfig,
};
use smtp_test::faults::{self, FaultAuthenticator, FaultBackend, FaultEngine, Faults};

use crate::certs;
use crate::cli::{BareLf, ServeArgs, system_hostname};
use crate::fd_limit;
use crate::maildir::Maildir;
use crate::serve_config as config;
use crate::store::{self, Store};
use crate::users;

/// Opens one [`StoreSession`] per connection.
#[derive(Debug, Clone)]
pub struct StoreBackend {
    store: Store,
    hostname: Arc<str>,
}

impl StoreBackend {
    /// A backend that stores accepted messages in `store`, naming itself
    /// `hostname` in Received fields.
    pub fn new(store: Store, hostname: &str) -> Self {
        StoreBackend {
            store,
            hostname: hostname.into(),
        }
    }
}

/// `452 4.3.1` (RFC 3463 §3.4, mail system full).
fn insufficient_storage() -> SmtpError {
    SmtpError::new(
        452,
        EnhancedCode::new(4, 3, 1),
        "Insufficient system storage, try again later",
    )
}

/// One connection's session: it only acts on the message.
#[derive(Debug)]
pub struct StoreSession {
    backend: StoreBackend,
}

impl Backend for StoreBackend {
    type Session = StoreSession;

    async fn new_session(&self, _info: &ConnectionInfo) -> Result<StoreSession, SmtpError> {
        Ok(StoreSession {
            backend: self.clone(),
        })
    }
}

/// `451 4.3.0`: the message could not be stored; the client keeps it and
/// tries again later (RFC 3463 §3.4: mail system issue).
fn storage_error(err: &std::io::Error) -> SmtpError {
    tracing::error!(error = %err, "storing a message failed");
    SmtpError::new(
        451,
        EnhancedCode::new(4, 3, 0),
        "Requested action aborted: local error in storage",
    )
}

impl Session for StoreSession {
    /// `452 4.3.1` while the Maildir's file system has less free space
    /// than [`Maildir::min_free_space`] plus the declared `SIZE=`, like
    /// Postfix's `queue_minfree`: a full disk is found before the body is
    /// read.
    async fn mail(
        &mut self,
        _session: &Envelope,
        _from: Option<&smtp_server::Address>,
        parameters: &smtp_server::MailParameters,
    ) -> Result<(), SmtpError> {
        let Store::Maildir(maildir) = &self.backend.store else {
            return Ok(());
        };
        let threshold = maildir.min_free_space();
        if threshold == 0 {
            return Ok(());
        }
        let needed = threshold.saturating_add(parameters.size.unwrap_or(0));
        match maildir.free_space() {
            Ok(free) if free < needed => {
                tracing::warn!(free, needed, "too little free space: refusing mail");
                Err(insufficient_storage())
            }
            Ok(_) => Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the free space of the Maildir");
                Ok(())
            }
        }
    }

    async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let recipients: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str().to_owned())
            .collect();
        let peer = envelope
            .client_addr
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let protocol = envelope.protocol();
        let info = store::Envelope {
            sender: envelope.from.as_ref().map(|a| a.as_str()),
            recipients: &recipients,
            helo: &envelope.helo,
            peer,
            protocol: &protocol,
            lmtp: envelope.lmtp,
            id: &envelope.session_id,
        };
        let mut incoming = self
            .backend
            .store
            .begin(&info, &self.backend.hostname)
            .await
            .map_err(|e| storage_error(&e))?;
        while let Some(chunk) = body.next().await {
            // A body error (too large, bare line ending, aborted) drops
            // `incoming`, which removes the partial files; the library
            // sends the reply that matches the error.
            let chunk = chunk?;
            incoming.write(chunk).await.map_err(|e| storage_error(&e))?;
        }
        let stored = incoming.commit().await.map_err(|e| storage_error(&e))?;
        tracing::info!(
            files = stored.len(),
            recipients = recipients.len(),
            "message stored"
        );
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One line about the rules in force.
fn describe(faults: &Faults) -> String {
    let rules = match faults.rules().len() {
        1 => "1 rule".to_owned(),
        n => format!("{n} rules"),
    };
    if faults.has_magic() {
        format!("{rules} and the magic addresses")
    } else {
        rules
    }
}

/// Reloads the fault rules from `spec` on each SIGHUP; a file that does
/// not parse leaves the rules in force and says why.
async fn reload_on_hangup(spec: String, engine: FaultEngine) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match Faults::load(&spec) {
                Ok(faults) => {
                    println!("faults reloaded: {}", describe(&faults));
                    engine.replace(faults);
                }
                Err(error) => println!("faults not reloaded, keeping the old rules: {error}"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (spec, engine);
    }
}

/// Runs `ferry serve` until SIGINT or SIGTERM. Prints `listening on ADDR`
/// per listener once they are bound. Errors are one line for people.
pub async fn run(args: ServeArgs) -> Result<(), String> {
    let hostname = args.hostname.clone().unwrap_or_else(system_hostname);
    if hostname.is_empty() || !hostname.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("--hostname {hostname:?}: not a host name"));
    }
    let users = users::load(&args.user, args.users_file.as_deref())?;
    if args.require_auth && users.is_empty() {
        return Err("--require-auth needs --user or --users-file".to_owned());
    }
    // AUTH is only offered over TLS unless allowed in plaintext: without
    // TLS, --require-auth would refuse every message forever.
    if args.require_auth && args.no_tls && args.tls_listen.is_empty() && !args.allow_insecure_auth {
        return Err(
            "--require-auth with --no-tls: no client could authenticate; \
             add --allow-insecure-auth or drop --no-tls"
                .to_owned(),
        );
    }
    let store = if args.sink {
        Store::Sink
    } else {
        let maildir = Maildir::open(&args.maildir, &hostname)
            .map_err(|e| format!("{}: {e}", args.maildir.display()))?;
        config::clean_tmp(&maildir);
        // Postfix's default: 1.5 times the message size limit must be free.
        maildir.set_min_free_space(
            args.min_free_space.unwrap_or(
                args.max_message_size
                    .saturating_add(args.max_message_size / 2),
            ),
        );
        let sweeper = maildir.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(config::TMP_CLEAN_INTERVAL);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let maildir = sweeper.clone();
                let _ = tokio::task::spawn_blocking(move || config::clean_tmp(&maildir)).await;
            }
        });
        Store::Maildir(maildir)
    };
    for warning in config::proxy_warnings(&args.proxy_protocol) {
        config::warn(&warning);
    }
    let soft = fd_limit::raise_nofile();
    let (max_connections, fd_warning) = fd_limit::fit_connections(
        args.max_connections
            .unwrap_or(smtp_server::DEFAULT_MAX_CONNECTIONS as u64),
        args.max_connections.is_some(),
        soft,
    )?;
    if let Some(warning) = fd_warning {
        config::warn(&warning);
    }
    let timeouts: Timeouts = config::timeouts_from(&args);

    let tls = if args.no_tls {
        None
    } else {
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let identity = certs::load_identity(cert, key).map_err(|e| e.to_string())?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                if let Some(warning) = certs::validity_warning(&identity.chain, now) {
                    config::warn(&format!("--tls-cert {}: {warning}", cert.display()));
                }
                identity
            }
            _ => {
                let (identity, pem) = certs::self_signed(&hostname).map_err(|e| e.to_string())?;
                let path =
                    certs::write_self_signed(&args.maildir, &pem).map_err(|e| e.to_string())?;
                println!("self-signed certificate written to {}", path.display());
                identity
            }
        };
        let config = certs::server_config(identity).map_err(|e| e.to_string())?;
        Some(TlsConfig::new(config))
    };

    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let mut limits = Limits {
        max_message_size: args.max_message_size,
        max_recipients: count(args.max_recipients),
        ..Limits::default()
    };
    if let Some(n) = args.max_connections {
        limits.max_connections = count(n);
    }
    if let Some(n) = args.max_connections_per_ip {
        limits.max_connections_per_ip = count(n);
    }
    config::apply_limit_flags(&mut limits, &args, max_connections);

    // ferry serve is a final destination that cannot send mail, so it cannot
    // honour NOTIFY=SUCCESS with a delivery report (RFC 3461 §5.2.2):
    // it does not offer DSN at all rather than promise what it won't do.
    let extensions = Extensions {
        dsn: false,
        ..Extensions::default()
    };
    // Without --faults the engine has no rules and passes every hook on.
    let engine = match &args.faults {
        Some(spec) => FaultEngine::new(Faults::load(spec).map_err(|e| e.to_string())?),
        None => FaultEngine::new(Faults::default()),
    };
    let backend = FaultBackend::new(StoreBackend::new(store, &hostname), engine.clone());
    let mut builder = Server::builder(backend)
        .hostname(hostname.clone())
        .limits(limits)
        .timeouts(timeouts)
        .stress(config::stress_from(&args))
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout))
        .extensions(extensions)
        .require_tls(args.require_tls)
        .lmtp(args.lmtp)
        .bare_line_endings(match args.bare_lf {
            BareLf::Reject => BareLineEndings::Reject,
            BareLf::Accept => BareLineEndings::Accept,
        });
    for addr in &args.listen {
        builder = builder.listen(*addr);
    }
    for addr in &args.tls_listen {
        builder = builder.listen_tls(*addr);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    if !users.is_empty() {
        let policy = AuthPolicy::new()
            .allow_insecure(args.allow_insecure_auth)
            .require(args.require_auth);
        builder = builder.auth(FaultAuthenticator::new(users, engine.clone()), policy);
    }
    if !args.proxy_protocol.is_empty() {
        builder = builder.proxy_protocol(args.proxy_protocol.clone());
    }
    if args.transcript {
        // The server masks AUTH payloads and escapes control bytes before
        // a line reaches this hook.
        builder = builder.transcript(|line| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{}] {line}", line.session_id);
        });
        engine.on_fire(|fired| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{}] !! {fired}", fired.session_id);
        });
    }
    let server = builder.build().map_err(|e| e.to_string())?;
    let cannot_listen = |e: std::io::Error| {
        let addrs: Vec<String> = args
            .listen
            .iter()
            .chain(&args.tls_listen)
            .map(ToString::to_string)
            .collect();
        format!("cannot listen on {}: {e}", addrs.join(", "))
    };
    // With --faults, smtp-test's accept loop serves plain listeners so the
    // wire faults (drip, stop reading, closing without a reply) reach each
    // connection; --tls-listen and --proxy-protocol are refused with it.
    let (listening, fault_listeners) = if args.faults.is_some() {
        let mut listeners = Vec::new();
        for addr in &args.listen {
            listeners.push(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(cannot_listen)?,
            );
        }
        (None, listeners)
    } else {
        (
            Some(server.bind().await.map_err(cannot_listen)?),
            Vec::new(),
        )
    };
    let addrs = match &listening {
        Some(listening) => listening.local_addrs(),
        None => fault_listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect(),
    };
    {
        let mut out = std::io::stdout().lock();
        for (i, addr) in addrs.iter().enumerate() {
            let kind = if i < args.listen.len() {
                ""
            } else {
                " (implicit TLS)"
            };
            let _ = writeln!(out, "listening on {addr}{kind}");
        }
        if let Some(spec) = &args.faults {
            let _ = writeln!(out, "faults from {spec}: {}", describe(&engine.faults()));
        }
        let _ = out.flush();
    }
    match listening {
        Some(listening) => listening.serve(shutdown_signal()).await,
        None => {
            if let Some(spec) = &args.faults {
                tokio::spawn(reload_on_hangup(spec.clone(), engine.clone()));
            }
            faults::serve(server, fault_listeners, shutdown_signal()).await
        }
    }
    .map_err(|e| format!("server stopped: {e}"))?;
    println!("shut down");
    Ok(())
}
