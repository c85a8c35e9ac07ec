//! Operating `ferry relay`: the shared PostgreSQL queue (`--queue`), the
//! admin interface (`--admin`) and the events (`--event-log`, `--webhook`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use smtp_relay::inspect::QueueInspect;
use smtp_relay::observe::EventSink;
use smtp_relay::postgres::{Migrations, PgConfig, PgQueue};

use crate::admin;
use crate::cli::parse_duration;
use crate::events::{EventLog, Sinks, Webhook};

/// `ferry relay` flags for running it in production.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Keep the queue in PostgreSQL instead of --spool, shared by every
    /// node given the same database (postgres://USER@HOST/DB, or
    /// "host=/run/postgresql dbname=ferry" for a Unix socket; plain TCP
    /// or Unix socket only, no TLS to the database).
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
    /// This node's name in the shared queue's leases [default: host name,
    /// process id and start time].
    #[arg(long, value_name = "NAME", requires = "queue")]
    pub queue_node: Option<String>,
    /// How long a claim lasts without renewal: a dead node's work is
    /// taken over within this time.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration,
          requires = "queue")]
    pub queue_lease: Duration,
    /// Do not migrate the queue schema: if it is behind, print the SQL
    /// that would be applied and exit.
    #[arg(long, requires = "queue")]
    pub no_migrate: bool,
    /// Serve the admin interface (queue listing and actions, /metrics) on
    /// this address; loopback only unless --admin-token-env is given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// The environment variable holding the admin interface's bearer
    /// token (then every request needs "Authorization: Bearer TOKEN").
    #[arg(long, value_name = "VAR", requires = "admin")]
    pub admin_token_env: Option<String>,
    /// Append every accept, attempt, delivery, deferral, bounce and
    /// expiry to this file as one JSON line (reopened on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub event_log: Option<PathBuf>,
    /// POST events (newline-delimited JSON) to this http:// or https://
    /// URL, retrying while it is down; events past --webhook-buffer are
    /// dropped for the webhook and counted in ferry_events_dropped_total.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Trust only the CA certificates in this PEM file for an https://
    /// webhook [default: the system's roots (SSL_CERT_FILE and
    /// SSL_CERT_DIR are honoured) and the webpki roots].
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub webhook_ca: Option<PathBuf>,
    /// How many events wait for the webhook at most.
    #[arg(long, value_name = "N", default_value_t = 10_000, requires = "webhook")]
    pub webhook_buffer: usize,
}

/// The admin token, read from the variable --admin-token-env names.
pub fn admin_token(args: &OpsArgs) -> Result<Option<String>, String> {
    match &args.admin_token_env {
        None => Ok(None),
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => Ok(Some(token)),
            _ => Err(format!("--admin-token-env {var}: the variable is not set")),
        },
    }
}

/// The event sinks the flags ask for.
pub fn event_sinks(args: &OpsArgs) -> Result<Option<Arc<dyn EventSink>>, String> {
    if args.event_log.is_none() && args.webhook.is_none() {
        return Ok(None);
    }
    let mut sinks = Sinks::default();
    if let Some(path) = &args.event_log {
        let log = EventLog::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        log.reopen_on_sighup()
            .map_err(|e| format!("cannot watch for SIGHUP: {e}"))?;
        sinks.log = Some(log);
    }
    if let Some(url) = &args.webhook {
        sinks.webhook = Some(
            Webhook::start(url, args.webhook_buffer, args.webhook_ca.as_deref())
                .map_err(|e| format!("--webhook {e}"))?,
        );
    }
    Ok(Some(Arc::new(sinks)))
}

/// Starts the admin interface if --admin was given; it stops when `stop`
/// turns true.
pub async fn start_admin<S: QueueInspect + Send + Sync + 'static>(
    args: &OpsArgs,
    store: S,
    reporting_mta: String,
    on_flush: Arc<dyn Fn() + Send + Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, String> {
    let Some(addr) = args.admin else {
        return Ok(None);
    };
    let token = admin_token(args)?;
    admin::check_address(addr, token.as_deref())?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
        ])
        .map_err(|e| e.to_string())?
        // A count, not a time: messages per group commit.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("ferry_commit_batch_size".to_owned()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--admin {addr}: {e}"))?;
    println!(
        "admin interface on http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let app = admin::router(admin::AdminState {
        store,
        reporting_mta,
        token,
        metrics: Some(metrics),
        on_flush: Some(on_flush),
    });
    Ok(Some(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = admin::serve(listener, app, shutdown).await {
            tracing::error!(error = %e, "the admin interface stopped");
        }
    })))
}

/// Connects to the shared queue as the flags say.
pub async fn open_postgres(url: &str, args: &OpsArgs) -> Result<PgQueue, String> {
    let mut config = PgConfig::new(url);
    if let Some(node) = &args.queue_node {
        config.node = node.clone();
    }
    config.lease = args.queue_lease;
    config.migrations = if args.no_migrate {
        Migrations::Refuse
    } else {
        Migrations::Apply
    };
    PgQueue::connect(config)
        .await
        .map_err(|e| format!("--queue: {e}"))
}
