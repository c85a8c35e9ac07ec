//! What `ferry serve` and `ferry relay` share: turning [`ListenerArgs`]
//! (listeners, TLS, accounts, limits, timeouts, stress mode, PROXY
//! protocol, transcript) into an smtp-server [`ServerBuilder`], and
//! serving until a signal.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use smtp_server::{
    AuthPolicy, Backend, BareLineEndings, Extensions, Limits, Server, ServerBuilder, StaticUsers,
    TlsConfig,
};

use crate::certs;
use crate::cli::{BareLf, ListenerArgs, system_hostname};
use crate::fd_limit;
use crate::serve::shutdown_signal;
use crate::serve_config as config;
use crate::users;

/// The host name to use: `--hostname` or the system's, checked.
pub fn hostname(args: &ListenerArgs) -> Result<String, String> {
    let hostname = args.hostname.clone().unwrap_or_else(system_hostname);
    if hostname.is_empty() || !hostname.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("--hostname {hostname:?}: not a host name"));
    }
    Ok(hostname)
}

/// The accounts from `--user` and `--users-file` with the AUTH policy
/// from `--require-auth` and `--allow-insecure-auth`: what the caller
/// hands to [`ServerBuilder::auth`], directly or wrapped.
#[derive(Debug)]
pub struct Accounts {
    /// The accounts.
    pub users: StaticUsers,
    /// When AUTH is offered and whether it is required.
    pub policy: AuthPolicy,
}

/// Everything from the flags but AUTH: a builder for `backend` and, when
/// accounts were given, the [`Accounts`] to install on it.
#[derive(Debug)]
pub struct Prepared<B: Backend> {
    /// The server builder with listeners, TLS, limits, timeouts, stress
    /// mode, PROXY protocol and transcript set.
    pub builder: ServerBuilder<B>,
    /// The accounts, if any were given.
    pub accounts: Option<Accounts>,
}

/// Builds the server for `backend` from the flags, printing start-up
/// warnings prefixed with `command`. Without `--tls-cert` a self-signed
/// certificate is generated and written into `cert_dir`.
pub fn prepare<B: Backend>(
    backend: B,
    args: &ListenerArgs,
    command: &str,
    hostname: &str,
    cert_dir: &Path,
    extensions: Extensions,
    lmtp: bool,
) -> Result<Prepared<B>, String> {
    let warn = |message: &str| eprintln!("{command}: warning: {message}");
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
    for warning in config::proxy_warnings(&args.proxy_protocol) {
        warn(&warning);
    }
    let soft = fd_limit::raise_nofile();
    let (max_connections, fd_warning) = fd_limit::fit_connections(
        args.max_connections
            .unwrap_or(smtp_server::DEFAULT_MAX_CONNECTIONS as u64),
        args.max_connections.is_some(),
        soft,
    )?;
    if let Some(warning) = fd_warning {
        warn(&warning);
    }

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
                    warn(&format!("--tls-cert {}: {warning}", cert.display()));
                }
                identity
            }
            _ => {
                let (identity, pem) = certs::self_signed(hostname).map_err(|e| e.to_string())?;
                let path = certs::write_self_signed(cert_dir, &pem).map_err(|e| e.to_string())?;
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
    if let Some(n) = args.max_connections_per_ip {
        limits.max_connections_per_ip = count(n);
    }
    config::apply_limit_flags(&mut limits, args, max_connections);

    let mut builder = Server::builder(backend)
        .hostname(hostname.to_owned())
        .limits(limits)
        .timeouts(config::timeouts_from(args))
        .stress(config::stress_from(args))
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout))
        .extensions(extensions)
        .require_tls(args.require_tls)
        .lmtp(lmtp)
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
    }
    let accounts = (!users.is_empty()).then(|| Accounts {
        users,
        policy: AuthPolicy::new()
            .allow_insecure(args.allow_insecure_auth)
            .require(args.require_auth),
    });
    Ok(Prepared { builder, accounts })
}

/// The error for listeners that cannot be bound, naming them.
pub fn cannot_listen(args: &ListenerArgs, err: &std::io::Error) -> String {
    let addrs: Vec<String> = args
        .listen
        .iter()
        .chain(&args.tls_listen)
        .map(ToString::to_string)
        .collect();
    format!("cannot listen on {}: {err}", addrs.join(", "))
}

/// Prints `listening on ADDR` for each bound address; those past the
/// `--listen` ones are the implicit-TLS listeners.
pub fn print_listening(args: &ListenerArgs, addrs: &[std::net::SocketAddr]) {
    let mut out = std::io::stdout().lock();
    for (i, addr) in addrs.iter().enumerate() {
        let kind = if i < args.listen.len() {
            ""
        } else {
            " (implicit TLS)"
        };
        let _ = writeln!(out, "listening on {addr}{kind}");
    }
    let _ = out.flush();
}

/// Binds the listeners, prints `listening on ADDR` for each, and serves
/// until SIGINT or SIGTERM; the open sessions then get the server's
/// graceful shutdown.
pub async fn serve<B: Backend>(server: Server<B>, args: &ListenerArgs) -> Result<(), String> {
    serve_until(server, args, shutdown_signal()).await
}

/// [`serve`] until `shutdown` completes.
pub async fn serve_until<B: Backend>(
    server: Server<B>,
    args: &ListenerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let listening = server.bind().await.map_err(|e| cannot_listen(args, &e))?;
    print_listening(args, &listening.local_addrs());
    listening
        .serve(shutdown)
        .await
        .map_err(|e| format!("server stopped: {e}"))
}

/// Serves on `threads` threads until SIGINT or SIGTERM: this one and
/// `threads - 1` more, each with its own accept loop on the same
/// addresses (`SO_REUSEPORT`, so `server` must be built with
/// [`ServerBuilder::reuse_port`]) and its own single-threaded runtime. The
/// kernel spreads new connections among the loops; a session stays on the
/// thread that accepted it, so no reply waits for another thread to be
/// woken. The connection limits hold for all loops together, and every
/// loop shuts down gracefully on the signal. Prints `listening on ADDR`
/// once every loop is bound.
pub async fn serve_threads<B: Backend>(
    server: Server<B>,
    args: &ListenerArgs,
    threads: usize,
) -> Result<(), String> {
    let listening = server.bind().await.map_err(|e| cannot_listen(args, &e))?;
    let addrs = listening.local_addrs();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let mut others = Vec::new();
    for index in 1..threads.max(1) {
        let (server, addrs, stop) = (server.clone(), addrs.clone(), stop_rx.clone());
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("ferry-serve-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listening = match server.bind_at(&addrs) {
                        Ok(listening) => listening,
                        Err(error) => {
                            let message = error.to_string();
                            let _ = bound_tx.send(Err(error));
                            return Err(std::io::Error::other(message));
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    listening.serve(stopped(stop)).await
                })
            })
            .map_err(|e| format!("cannot start a serving thread: {e}"))?;
        others.push(thread);
        match bound_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = stop_tx.send(true);
                return Err(cannot_listen(args, &error));
            }
            Err(_) => {
                let _ = stop_tx.send(true);
                return Err("a serving thread stopped while binding".to_owned());
            }
        }
    }
    print_listening(args, &addrs);
    let signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        }
    });
    let result = listening.serve(stopped(stop_rx)).await;
    // However this loop ended, the others stop too.
    let _ = stop_tx.send(true);
    signal.abort();
    let mut first_error = result.err().map(|e| format!("server stopped: {e}"));
    for thread in others {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        let error = match joined {
            Ok(Ok(Ok(()))) => continue,
            Ok(Ok(Err(error))) => format!("server stopped: {error}"),
            Ok(Err(_)) | Err(_) => "a serving thread panicked".to_owned(),
        };
        first_error.get_or_insert(error);
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
