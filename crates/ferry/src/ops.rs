//! Operating `ferry relay`: the shared PostgreSQL queue (`--queue`), and
//! the flags of the admin interface and the event log.

use std::time::Duration;

use clap::Args;
use smtp_relay::postgres::{Migrations, PgConfig, PgQueue};

use crate::cli::parse_duration;

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
