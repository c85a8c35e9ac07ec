//! What `ferry serve` and `ferry relay` share: turning [`ListenerArgs`]
//! (listeners, TLS, accounts, limits, PROXY protocol, transcript) into a
//! running smtp-server, and serving until a signal.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use smtp_server::{
    AuthPolicy, Backend, BareLineEndings, Extensions, Limits, Server, Timeouts, TlsConfig,
};

use crate::certs;
use crate::cli::{BareLf, ListenerArgs, system_hostname};
use crate::serve::{UsersAuthenticator, shutdown_signal};
use crate::users::Users;

/// The host name to use: `--hostname` or the system's, checked.
pub fn hostname(args: &ListenerArgs) -> Result<String, String> {
    let hostname = args.hostname.clone().unwrap_or_else(system_hostname);
    if hostname.is_empty() || !hostname.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("--hostname {hostname:?}: not a host name"));
    }
    Ok(hostname)
}

/// Builds the server for `backend` from the flags. Without `--tls-cert` a
/// self-signed certificate is generated and written into `cert_dir`.
pub fn build<B: Backend>(
    backend: B,
    args: &ListenerArgs,
    hostname: &str,
    cert_dir: &Path,
    extensions: Extensions,
    lmtp: bool,
) -> Result<Server<B>, String> {
    let mut users = Users::new();
    for spec in &args.user {
        users.add_spec(spec).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.users_file {
        users.load_file(path).map_err(|e| e.to_string())?;
    }
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
    let tls = if args.no_tls {
        None
    } else {
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                certs::load_identity(cert, key).map_err(|e| e.to_string())?
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

    let mut limits = Limits::default();
    limits.max_message_size = args.max_message_size;
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    limits.max_recipients = count(args.max_recipients);
    if let Some(n) = args.max_connections {
        limits.max_connections = count(n);
    }
    if let Some(n) = args.max_connections_per_ip {
        limits.max_connections_per_ip = count(n);
    }
    let mut builder = Server::builder(backend)
        .hostname(hostname.to_owned())
        .limits(limits)
        .extensions(extensions)
        .require_tls(args.require_tls)
        .lmtp(lmtp)
        .bare_line_endings(match args.bare_lf {
            BareLf::Reject => BareLineEndings::Reject,
            BareLf::Accept => BareLineEndings::Accept,
        });
    if let Some(secs) = args.timeout {
        let d = Duration::from_secs(secs);
        let mut timeouts = Timeouts::default();
        timeouts.command = d;
        timeouts.data_block = d;
        timeouts.data_termination = d;
        builder = builder.timeouts(timeouts);
    }
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
        builder = builder.auth(UsersAuthenticator::new(users), policy);
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
    builder.build().map_err(|e| e.to_string())
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
    let listening = server.bind().await.map_err(|e| {
        let addrs: Vec<String> = args
            .listen
            .iter()
            .chain(&args.tls_listen)
            .map(ToString::to_string)
            .collect();
        format!("cannot listen on {}: {e}", addrs.join(", "))
    })?;
    let addrs = listening.local_addrs();
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
        let _ = out.flush();
    }
    listening
        .serve(shutdown)
        .await
        .map_err(|e| format!("server stopped: {e}"))
}
