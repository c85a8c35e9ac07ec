//! `ferry serve`: an smtp-server [`Backend`] that stores into a Maildir
//! (or discards), and the command that wires it, smtp-server's
//! [`StaticUsers`](smtp_server::StaticUsers) and TLS to the flags.

use std::io::Write as _;
use std::sync::Arc;

use futures::StreamExt;
use smtp_server::smtp_proto::EnhancedCode;
use smtp_server::{Backend, Body, ConnectionInfo, Envelope, Extensions, Session, SmtpError};
use smtp_test::faults::{self, FaultAuthenticator, FaultBackend, FaultEngine, Faults};

use crate::cli::ServeArgs;
use crate::listener;
use crate::maildir::Maildir;
use crate::serve_config as config;
use crate::store::{self, Store};

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
/// tries again later (RFC 3463 §3.4: mail system issue). A full file system
/// (`ENOSPC`, or a quota) while writing the body gives `452 4.3.1`, as the
/// free-space check at MAIL does.
fn storage_error(err: &std::io::Error) -> SmtpError {
    tracing::error!(error = %err, "storing a message failed");
    if matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        return insufficient_storage();
    }
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
        if let Store::Sink = self.backend.store {
            // Nothing is stored, so nothing about the envelope is copied.
            // A body error (too large, bare line ending, aborted) still
            // gets its reply from the library.
            let mut octets = 0;
            while let Some(chunk) = body.next().await {
                octets += chunk?.len();
            }
            tracing::debug!(octets, "message discarded");
            return Ok(());
        }
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

/// Serves `backend` behind the fault engine: smtp-test's accept loop on
/// plain listeners so the wire faults (drip, stop reading, closing
/// without a reply) reach each connection; the rules are reloaded from
/// `spec` on SIGHUP. `--tls-listen` and `--proxy-protocol` are refused
/// with `--faults`.
async fn serve_with_faults(
    backend: StoreBackend,
    engine: FaultEngine,
    spec: &str,
    extensions: Extensions,
    hostname: &str,
    args: &ServeArgs,
) -> Result<(), String> {
    let backend = FaultBackend::new(backend, engine.clone());
    let listener::Prepared {
        mut builder,
        accounts,
    } = listener::prepare(
        backend,
        &args.listener,
        "ferry serve",
        hostname,
        &args.maildir,
        extensions,
        args.lmtp,
    )?;
    if let Some(accounts) = accounts {
        builder = builder.auth(
            FaultAuthenticator::new(accounts.users, engine.clone()),
            accounts.policy,
        );
    }
    if args.listener.transcript {
        engine.on_fire(|fired| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{}] !! {fired}", fired.session_id);
        });
    }
    let server = builder.build().map_err(|e| e.to_string())?;
    let cannot_listen = |e: std::io::Error| listener::cannot_listen(&args.listener, &e);
    let mut listeners = Vec::new();
    for addr in &args.listener.listen {
        listeners.push(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(cannot_listen)?,
        );
    }
    let addrs: Vec<_> = listeners
        .iter()
        .filter_map(|listener| listener.local_addr().ok())
        .collect();
    listener::print_listening(&args.listener, &addrs);
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "faults from {spec}: {}", describe(&engine.faults()));
        let _ = out.flush();
    }
    tokio::spawn(reload_on_hangup(spec.to_owned(), engine.clone()));
    faults::serve(server, listeners, shutdown_signal())
        .await
        .map_err(|e| format!("server stopped: {e}"))
}

/// Runs `ferry serve` until SIGINT or SIGTERM. Prints `listening on ADDR`
/// per listener once they are bound. Errors are one line for people.
///
/// Without `--faults` it serves on `--threads` threads (see
/// [`listener::serve_threads`]); call it on a single-threaded runtime,
/// which then serves the first accept loop. With `--faults` every
/// connection is served by the calling runtime.
pub async fn run(args: ServeArgs) -> Result<(), String> {
    let hostname = listener::hostname(&args.listener)?;
    let store = if args.sink {
        Store::Sink
    } else {
        let maildir = Maildir::open(&args.maildir, &hostname)
            .map_err(|e| format!("{}: {e}", args.maildir.display()))?;
        config::clean_tmp(&maildir);
        // Postfix's default: 1.5 times the message size limit must be free.
        let max_message_size = args.listener.max_message_size;
        maildir.set_min_free_space(
            args.min_free_space
                .unwrap_or(max_message_size.saturating_add(max_message_size / 2)),
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

    // ferry serve is a final destination that cannot send mail, so it cannot
    // honour NOTIFY=SUCCESS with a delivery report (RFC 3461 §5.2.2):
    // it does not offer DSN at all rather than promise what it won't do.
    let extensions = Extensions {
        dsn: false,
        ..Extensions::default()
    };
    let backend = StoreBackend::new(store, &hostname);
    match &args.faults {
        Some(spec) => {
            let engine = FaultEngine::new(Faults::load(spec).map_err(|e| e.to_string())?);
            serve_with_faults(backend, engine, spec, extensions, &hostname, &args).await?;
        }
        // Without --faults no rule can ever fire (they are only loaded
        // from the file, also on SIGHUP), so the hooks run unwrapped: no
        // fault engine bookkeeping (a shared table of open connections, a
        // counter and a lock per message) on the path of every command.
        None => {
            let listener::Prepared {
                mut builder,
                accounts,
            } = listener::prepare(
                backend,
                &args.listener,
                "ferry serve",
                &hostname,
                &args.maildir,
                extensions,
                args.lmtp,
            )?;
            if let Some(accounts) = accounts {
                builder = builder.auth(accounts.users, accounts.policy);
            }
            let threads = match args.threads {
                Some(n) => usize::from(n),
                None => std::thread::available_parallelism().map_or(1, usize::from),
            };
            let server = builder
                .reuse_port(threads > 1)
                .build()
                .map_err(|e| e.to_string())?;
            listener::serve_threads(server, &args.listener, threads).await?;
        }
    }
    println!("shut down");
    Ok(())
}
