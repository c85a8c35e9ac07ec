//! `ferry relay`: smtp-relay's queue, router and scheduler behind the same
//! listeners, TLS, accounts and limits as `ferry serve`, with local
//! delivery into a Maildir.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use smtp_client::{Credentials, TlsConfig};
use smtp_relay::clock::{Clock, TokioClock};
use smtp_relay::deliver::{BoxFuture, Deliverer, DeliveryConfig, LocalDelivery, MxLookup};
use smtp_relay::dns::MxResolver;
use smtp_relay::inspect::QueueInspect;
use smtp_relay::observe::Observed;
use smtp_relay::queue::{QueueStore, QueuedEnvelope};
use smtp_relay::receive::{RelayAccess, RelayBackend};
use smtp_relay::route::{HostPort, Router, Smarthost, SmarthostTls};
use smtp_relay::scheduler::{RetryPolicy, Scheduler, SchedulerConfig};
use smtp_relay::spool::{Durability, Spool};
use smtp_server::Extensions;

use crate::cli::{DurabilityMode, RelayArgs, SmarthostTlsMode};
use crate::listener;
use crate::maildir::Maildir;

/// Local delivery into a Maildir: one file per message with
/// `Return-Path:` and one `Delivered-To:` per local recipient in front of
/// the queued message (which already starts with the relay's
/// `Received:`). The file is synced and renamed into `new/` before the
/// recipients count as delivered.
#[derive(Debug, Clone)]
pub struct MaildirDelivery {
    maildir: Maildir,
}

impl MaildirDelivery {
    /// Delivers into `maildir`.
    pub fn new(maildir: Maildir) -> Self {
        Self { maildir }
    }
}

impl LocalDelivery for MaildirDelivery {
    fn deliver<'a>(
        &'a self,
        envelope: &'a QueuedEnvelope,
        recipients: &'a [usize],
        body: Bytes,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            let mut header = Vec::with_capacity(64 + 64 * recipients.len());
            header.extend_from_slice(b"Return-Path: <");
            if let Some(sender) = &envelope.sender {
                header.extend_from_slice(sender.as_bytes());
            }
            header.extend_from_slice(b">\r\n");
            for &n in recipients {
                header.extend_from_slice(b"Delivered-To: ");
                header.extend_from_slice(envelope.recipients[n].address.as_bytes());
                header.extend_from_slice(b"\r\n");
            }
            self.maildir.deliver(vec![header], body).await.map(|_| ())
        })
    }
}

/// Parses `DOMAIN=HOST:PORT`.
pub fn parse_route(text: &str) -> Result<(String, HostPort), String> {
    let (domain, hop) = text
        .split_once('=')
        .ok_or_else(|| format!("--route {text:?}: expected DOMAIN=HOST:PORT"))?;
    if domain.is_empty() || domain.contains(['@', ' ', '[']) {
        return Err(format!("--route {text:?}: {domain:?} is not a domain"));
    }
    let hop: HostPort = hop.parse().map_err(|e| format!("--route {e}"))?;
    Ok((domain.to_ascii_lowercase(), hop))
}

fn smarthost(args: &RelayArgs) -> Result<Option<Smarthost>, String> {
    let Some(text) = &args.smarthost else {
        return Ok(None);
    };
    let address: HostPort = text.parse().map_err(|e| format!("--smarthost {e}"))?;
    let credentials = match (&args.smarthost_user, &args.smarthost_password_env) {
        (Some(user), Some(var)) => {
            let password = std::env::var(var)
                .map_err(|_| format!("--smarthost-password-env {var}: the variable is not set"))?;
            Some(Credentials::password(user.clone(), password))
        }
        _ => None,
    };
    let mut tls_config = TlsConfig::new();
    if let Some(path) = &args.smarthost_ca {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        tls_config = tls_config
            .webpki_roots(false)
            .add_root_certificates_pem(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(Smarthost {
        address,
        // Credentials always travel over TLS: both modes insist on it.
        tls: match args.smarthost_tls {
            SmarthostTlsMode::Starttls => SmarthostTls::Starttls,
            SmarthostTlsMode::Implicit => SmarthostTls::Implicit,
        },
        credentials,
        tls_config,
    }))
}

/// Everything `ferry relay` runs, built from its flags.
struct Setup {
    access: RelayAccess,
    deliverer: Deliverer,
    scheduler: SchedulerConfig,
    hostname: String,
    clock: Arc<dyn Clock>,
}

fn setup(args: &RelayArgs) -> Result<Setup, String> {
    let hostname = listener::hostname(&args.listener)?;
    let routes = args
        .route
        .iter()
        .map(|r| parse_route(r))
        .collect::<Result<Vec<_>, _>>()?;
    let relay_networks = if args.relay_network.is_empty() {
        RelayAccess::loopback()
    } else {
        args.relay_network.clone()
    };
    let access = RelayAccess::new(&args.local_domain, relay_networks);
    let unrouted_local = args.local_domain.iter().any(|d| {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        !routes.iter().any(|(domain, _)| *domain == d)
    });
    let local: Option<Arc<dyn LocalDelivery>> = match &args.maildir {
        Some(dir) => {
            let maildir =
                Maildir::open(dir, &hostname).map_err(|e| format!("{}: {e}", dir.display()))?;
            Some(Arc::new(MaildirDelivery::new(maildir)))
        }
        None if unrouted_local => {
            return Err("--local-domain needs --maildir (or a --route for that domain)".to_owned());
        }
        None => None,
    };
    let mut router = Router::new(access.clone());
    for (domain, hop) in routes {
        router.add_route(&domain, hop);
    }
    let smarthost = smarthost(args)?;
    let needs_dns = smarthost.is_none();
    if let Some(smarthost) = smarthost {
        router.set_smarthost(smarthost);
    }
    let resolver: Option<Arc<dyn MxLookup>> = if needs_dns {
        let resolver = match args.dns_server {
            Some(addr) => MxResolver::with_server(addr),
            None => MxResolver::system(),
        }
        .map_err(|e| {
            format!("cannot set up DNS for MX delivery: {e}; give --dns-server or --smarthost")
        })?;
        Some(Arc::new(resolver))
    } else {
        None
    };
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let mut delivery = DeliveryConfig::new(hostname.clone());
    delivery.mx_port = args.mx_port;
    delivery.max_per_destination = usize::try_from(args.max_per_destination).unwrap_or(usize::MAX);
    // On a shared queue the cap is counted in its slot table, across nodes:
    // a connection left idle in this node's pool would be outside it.
    delivery.reuse_connections = args.ops.queue.is_none();
    let deliverer = Deliverer::new(delivery, router, resolver, local, Arc::clone(&clock));
    let mut scheduler = SchedulerConfig::new(hostname.clone());
    scheduler.retry = RetryPolicy {
        first: args.retry_min,
        max: args.retry_max.max(args.retry_min),
        schedule: args.retry_schedule.clone(),
    };
    scheduler.max_queue_lifetime = args.max_queue_lifetime;
    scheduler.delay_warning = args.delay_warning;
    Ok(Setup {
        access,
        deliverer,
        scheduler,
        hostname,
        clock,
    })
}

/// The environment variable naming a point of the spool's commit path
/// where the relay kills itself with SIGKILL, for `cargo xtask
/// crash-test`: `POINT:N`, the N-th commit (N ≥ 1) to reach `write` (before
/// the batch is written), `sync` (written, not synced) or `answer` (synced,
/// no session answered yet). Read once at start; a test hook, not an
/// operator's setting.
pub const CRASH_AT_ENV: &str = "FERRY_RELAY_CRASH_AT";

/// The commit hook [`CRASH_AT_ENV`] asks for, if it is set.
fn crash_point() -> Result<Option<smtp_relay::spool::CommitHook>, String> {
    use smtp_relay::spool::CommitPoint;
    use std::sync::atomic::{AtomicU64, Ordering};
    let Ok(value) = std::env::var(CRASH_AT_ENV) else {
        return Ok(None);
    };
    let invalid = || format!("{CRASH_AT_ENV}={value}: expected write|sync|answer:N with N >= 1");
    let (name, count) = value.split_once(':').ok_or_else(invalid)?;
    let point = CommitPoint::from_name(name).ok_or_else(invalid)?;
    let count: u64 = count.parse().ok().filter(|&n| n >= 1).ok_or_else(invalid)?;
    eprintln!("{CRASH_AT_ENV}: the relay kills itself at commit {count} reaching `{name}`");
    let reached = AtomicU64::new(0);
    Ok(Some(Arc::new(move |at: CommitPoint| {
        if at == point && reached.fetch_add(1, Ordering::SeqCst) + 1 == count {
            // SIGKILL from outside the process, as the crash test's other
            // kills: no destructor, flush or exit code of ours runs.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            loop {
                std::thread::park();
            }
        }
        Ok(())
    })))
}

/// Runs `ferry relay` until SIGINT or SIGTERM: stops accepting, lets open
/// sessions finish, gives deliveries in flight a few seconds and abandons
/// the rest (they are retried from the spool after a restart).
pub async fn run(args: RelayArgs) -> Result<(), String> {
    let setup = setup(&args)?;
    if let Some(url) = &args.ops.queue {
        let store = crate::ops::open_postgres(url, &args.ops).await?;
        let recovery = store.recovery();
        println!(
            "queue in PostgreSQL (node {}): {} messages, {} recipients pending",
            store.node(),
            recovery.messages,
            recovery.pending_recipients
        );
        let result = serve(args, setup, store.clone()).await;
        // Hand what this node still holds to the other nodes at once.
        if let Err(err) = store.release_all().await {
            tracing::warn!(error = %err, "cannot release this node's leases");
        }
        return result;
    }
    let durability = match args.durability {
        DurabilityMode::Sync => Durability::Sync,
        DurabilityMode::Os => Durability::Os,
    };
    let spool = match crash_point()? {
        Some(hook) => Spool::open_with_commit_hook(
            &args.spool,
            durability,
            smtp_relay::spool::SEGMENT_TARGET_SIZE,
            hook,
        ),
        None => Spool::open(&args.spool, durability),
    }
    .map_err(|e| format!("{}: {e}", args.spool.display()))?;
    let recovery = spool.recovery();
    println!(
        "spool {}: {} messages, {} recipients pending{}",
        spool.dir().display(),
        recovery.messages,
        recovery.pending_recipients,
        if recovery.truncated_bytes > 0 {
            format!(
                ", {} octets of an unfinished write cut off",
                recovery.truncated_bytes
            )
        } else {
            String::new()
        }
    );
    serve(args, setup, spool).await
}

/// Serves and delivers out of `store` until SIGINT or SIGTERM.
async fn serve<S: QueueInspect + Send + Sync>(
    args: RelayArgs,
    setup: Setup,
    store: S,
) -> Result<(), String> {
    let Setup {
        access,
        deliverer,
        scheduler,
        hostname,
        clock,
    } = setup;
    // Metrics and events see everything the receiver and the scheduler do
    // to the queue.
    let spool = Observed::new(store, crate::ops::event_sinks(&args.ops)?);
    let max_message_size = usize::try_from(args.listener.max_message_size).unwrap_or(usize::MAX);
    let backend = RelayBackend::new(
        spool.clone(),
        access,
        hostname.clone(),
        clock.clone(),
        max_message_size,
    );
    let listener::Prepared {
        mut builder,
        accounts,
    } = listener::prepare(
        backend,
        &args.listener,
        "ferry relay",
        &hostname,
        &args.spool,
        Extensions::default(),
        false,
    )?;
    if let Some(accounts) = accounts {
        builder = builder.auth(accounts.users, accounts.policy);
    }
    let server = builder.build().map_err(|e| e.to_string())?;
    let scheduler = Scheduler::new(spool.clone(), deliverer, clock, scheduler);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flushed = scheduler.clone();
    let admin = crate::ops::start_admin(
        &args.ops,
        spool.clone(),
        hostname.clone(),
        Arc::new(move || flushed.clear_backoff()),
        stopped.clone(),
    )
    .await?;
    let delivering = tokio::spawn(async move {
        let mut stopped = stopped;
        scheduler
            .run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
    });
    let served = listener::serve(server, &args.listener).await;
    let _ = stop.send(true);
    let _ = delivering.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    let mut out = std::io::stdout().lock();
    let queued = spool
        .summary(std::time::SystemTime::now())
        .await
        .map(|s| s.queued + s.deferred + s.held)
        .unwrap_or(0);
    let _ = writeln!(out, "shut down; {queued} recipients pending");
    Ok(())
}
