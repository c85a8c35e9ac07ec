//! A [`QueueStore`] in PostgreSQL, shared by many relay nodes (feature
//! `postgres`).
//!
//! # Guarantees
//!
//! - **Acceptance**: a message, its envelope and its recipients are
//!   inserted in one transaction, and [`QueueStore::enqueue`] returns only
//!   after `COMMIT`. What "committed" means is the server's
//!   `synchronous_commit`: with a synchronous standby, a `250` means the
//!   message is on two machines. Messages arriving together share one
//!   transaction (group commit, see [`PgQueue::commit_batches`]).
//! - **Claims**: due recipients are claimed with `FOR UPDATE SKIP LOCKED`,
//!   so nodes never wait for each other, and each claim writes a *lease*
//!   (owner node, expiry) and increments the recipient's *fencing counter*.
//!   A node renews its leases while its attempts run (every third of the
//!   lease); a node that dies stops renewing, and its recipients are due
//!   again for every node when the lease runs out.
//! - **Fencing**: an outcome is written only where the fencing counter is
//!   still the one the claim returned. A node that lost its lease (it was
//!   paused, or cut off from the database) and comes back can therefore
//!   never overwrite a newer outcome: its stale result is discarded, the
//!   attempt counts as "in flight at a crash" (RFC 5321 §6.1: at least
//!   once).
//! - **Per-destination caps across nodes**: [`QueueStore::acquire_slot`]
//!   takes one of the destination's rows in `ferry_slots`, leased like the
//!   recipients.
//! - **Wake-ups**: every enqueue, release and hand-back sends
//!   `NOTIFY ferry_queue`; each node `LISTEN`s on its own connection, so an
//!   idle node wakes at once instead of polling. A slow poll (the lease
//!   time) remains only to notice leases of dead nodes running out.
//!
//! The schema is in `migrations/`; [`PgQueue::connect`] applies what is
//! missing (or refuses and lists it, with [`Migrations::Refuse`]).
//!
//! Connections are plain TCP or a Unix socket (`host=/run/postgresql`);
//! TLS to the database is not offered: run the database on the relay's
//! host or a private network, or tunnel it.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use smtp_proto::command::{BodyType, Notify, OriginalRecipient, Ret};
use tokio::sync::{Notify as Wakeup, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Transaction};

use crate::queue::{
    AttemptReport, Claim, MessageId, MessageKind, NewMessage, QueueStore, QueuedEnvelope,
    QueuedMessage, QueuedRecipient, RecipientState, Recovery, Slot,
};

/// The schema migrations shipped with the crate, in order: (version,
/// name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "0001_queue",
    include_str!("../migrations/0001_queue.sql"),
)];

/// The payload of the notification an operator's flush sends: every node
/// forgets its destination backoff (see [`QueueStore::flushes`]).
const FLUSH: &str = "flush";

/// The channel of `LISTEN`/`NOTIFY` wake-ups.
pub const CHANNEL: &str = "ferry_queue";

/// A key for `pg_advisory_xact_lock` that serializes migrations of nodes
/// starting together.
const MIGRATION_LOCK: i64 = 0x6665_7272_795f_6d67;

/// What [`PgQueue::connect`] does about a schema that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Migrations {
    /// Apply the missing migrations (each in its own transaction).
    #[default]
    Apply,
    /// Apply nothing; fail with the SQL that would be applied.
    Refuse,
}

/// How to reach the database and how this node behaves.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style connection string or `postgres://` URL.
    pub url: String,
    /// This node's name in leases (unique per running node).
    pub node: String,
    /// How long a claim or slot stays leased without renewal (default
    /// 60 s); a dead node's work is taken over within this time.
    pub lease: Duration,
    /// Connections for claims, outcomes and reads (default 4), besides
    /// the committer's and the listener's.
    pub connections: usize,
    /// Migrations to apply or refuse.
    pub migrations: Migrations,
}

impl PgConfig {
    /// Defaults for `url`, with a node name made of the host name, the
    /// process id and the start time.
    pub fn new(url: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "node".to_owned());
        let started = crate::queue::unix_millis(SystemTime::now());
        Self {
            url: url.into(),
            node: format!("{host}-{}-{started:x}", std::process::id()),
            lease: Duration::from_secs(60),
            connections: 4,
            migrations: Migrations::Apply,
        }
    }
}

fn db_error(err: tokio_postgres::Error) -> io::Error {
    io::Error::other(format!("postgresql: {err}"))
}

/// The migrations a database at `current` still needs, as one SQL text.
pub fn pending_sql(current: i32) -> String {
    let mut out = String::new();
    for (version, name, sql) in MIGRATIONS {
        if *version > current {
            out.push_str(&format!("-- migration {version}: {name}\n{sql}\n"));
        }
    }
    out
}

/// The queue in PostgreSQL. Cheap to clone; background tasks (lease
/// renewal, `LISTEN`, the committer) stop when the last clone is dropped.
#[derive(Clone)]
pub struct PgQueue {
    inner: Arc<PgInner>,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue")
            .field("node", &self.inner.config.node)
            .finish_non_exhaustive()
    }
}

struct PgInner {
    config: PgConfig,
    pool: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
    changed: Arc<Wakeup>,
    /// The fencing counter of every recipient this node has claimed.
    fences: Mutex<HashMap<(u64, usize), i64>>,
    commits: mpsc::Sender<Enqueue>,
    recovery: Recovery,
    batches: Arc<AtomicU64>,
    /// Flushes announced on the channel by any node (this one included).
    flushes: Arc<AtomicU64>,
    tokens: AtomicU64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PgInner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Enqueue {
    message: NewMessage,
    done: oneshot::Sender<io::Result<MessageId>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn connect_client(url: &str) -> io::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(db_error)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "postgresql connection closed");
        }
    });
    Ok(client)
}

/// Applies (or with `Refuse`, lists) the migrations the database lacks,
/// in one transaction under an advisory lock, so that nodes starting
/// together apply each migration once and a failed one leaves nothing
/// half done (PostgreSQL's DDL is transactional).
async fn migrate(client: &mut Client, mode: Migrations) -> io::Result<()> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ferry_schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db_error)?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM ferry_schema_migrations",
            &[],
        )
        .await
        .map_err(db_error)?
        .get(0);
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(io::Error::other(format!(
            "the queue schema is at version {current}, newer than this relay knows ({latest})"
        )));
    }
    if current == latest {
        return tx.commit().await.map_err(db_error);
    }
    if mode == Migrations::Refuse {
        return Err(io::Error::other(format!(
            "the queue schema is at version {current} and needs migrations (not applied):\n{}",
            pending_sql(current)
        )));
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tracing::info!(version, name, "applying queue schema migration");
        tx.batch_execute(sql).await.map_err(db_error)?;
        tx.execute(
            "INSERT INTO ferry_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}

impl PgQueue {
    /// Connects, brings the schema up to date (or refuses, per
    /// [`PgConfig::migrations`]) and starts this node's background tasks.
    pub async fn connect(config: PgConfig) -> io::Result<PgQueue> {
        let mut first = connect_client(&config.url).await?;
        migrate(&mut first, config.migrations).await?;
        let counts = first
            .query_one(
                "SELECT count(DISTINCT message_id), count(*) FROM ferry_recipients
                 WHERE due_at IS NOT NULL",
                &[],
            )
            .await
            .map_err(db_error)?;
        let recovery = Recovery {
            messages: usize::try_from(counts.get::<_, i64>(0)).unwrap_or(0),
            pending_recipients: usize::try_from(counts.get::<_, i64>(1)).unwrap_or(0),
            truncated_bytes: 0,
        };
        let mut pool = vec![tokio::sync::Mutex::new(Some(first))];
        for _ in 1..config.connections.max(1) {
            pool.push(tokio::sync::Mutex::new(Some(
                connect_client(&config.url).await?,
            )));
        }
        let changed = Arc::new(Wakeup::new());
        let (commits, requests) = mpsc::channel(4096);
        let committer = connect_client(&config.url).await?;
        let batches = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let tasks = vec![
            tokio::spawn(listen(
                config.url.clone(),
                Arc::clone(&changed),
                Arc::clone(&flushes),
            )),
            tokio::spawn(commit_loop(
                config.url.clone(),
                committer,
                requests,
                Arc::clone(&batches),
            )),
        ];
        let queue = PgQueue {
            inner: Arc::new(PgInner {
                config,
                pool,
                next: AtomicUsize::new(0),
                changed,
                fences: Mutex::new(HashMap::new()),
                commits,
                recovery,
                batches,
                flushes,
                tokens: AtomicU64::new(1),
                tasks,
            }),
        };
        // The renewer holds only a weak handle, so dropping the queue stops it.
        let weak = Arc::downgrade(&queue.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let every = inner.config.lease / 3;
                let this = PgQueue { inner };
                if let Err(err) = this.renew_leases().await {
                    tracing::warn!(error = %err, "cannot renew queue leases");
                }
                drop(this);
                tokio::time::sleep(every).await;
            }
        });
        Ok(queue)
    }

    /// This node's name in leases.
    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// How many commit transactions accepted messages so far (fewer than
    /// the messages when arrivals shared one).
    pub fn commit_batches(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }

    /// Runs `f` with a pooled connection, reconnecting a closed one.
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> io::Result<T> {
        let pool = &self.inner.pool;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = None;
        for n in 0..pool.len() {
            if let Ok(g) = pool[(start + n) % pool.len()].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => pool[start % pool.len()].lock().await,
        };
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect_client(&self.inner.config.url).await?);
        }
        let client = guard.as_mut().expect("connected above");
        f(client).await.map_err(db_error)
    }

    /// Extends the leases of every claim and slot this node holds.
    async fn renew_leases(&self) -> io::Result<()> {
        let node = self.inner.config.node.clone();
        let lease = lease_millis(self.inner.config.lease);
        self.with_client(async |c| {
            c.execute(
                "UPDATE ferry_recipients
                 SET lease_until = now() + $2 * interval '1 millisecond'
                 WHERE lease_owner = $1",
                &[&node, &lease],
            )
            .await?;
            c.execute(
                "UPDATE ferry_slots
                 SET lease_until = now() + $2 * interval '1 millisecond'
                 WHERE owner = $1",
                &[&node, &lease],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Gives back every claim and slot this node holds (at shutdown: the
    /// other nodes take the work at once instead of after the lease).
    pub async fn release_all(&self) -> io::Result<()> {
        let node = self.inner.config.node.clone();
        lock(&self.inner.fences).clear();
        self.with_client(async |c| {
            c.execute(
                "UPDATE ferry_recipients SET lease_owner = NULL, lease_until = NULL
                 WHERE lease_owner = $1",
                &[&node],
            )
            .await?;
            c.execute("DELETE FROM ferry_slots WHERE owner = $1", &[&node])
                .await?;
            c.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
            Ok(())
        })
        .await
    }

    /// Loads messages by id with every recipient's state.
    async fn load(&self, ids: Vec<i64>) -> io::Result<Vec<QueuedMessage>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (messages, recipients) = self
            .with_client(async |c| {
                let messages = c
                    .query(
                        &format!("SELECT {MESSAGE_COLUMNS} FROM ferry_messages m WHERE m.id = ANY($1) ORDER BY m.id"),
                        &[&ids],
                    )
                    .await?;
                let recipients = c
                    .query(
                        &format!("SELECT {RECIPIENT_COLUMNS} FROM ferry_recipients r
                         WHERE r.message_id = ANY($1) ORDER BY r.message_id, r.idx"),
                        &[&ids],
                    )
                    .await?;
                Ok((messages, recipients))
            })
            .await?;
        Ok(assemble(&messages, &recipients))
    }

    /// One page of the queue in id order after `after`, for listing
    /// without holding the whole queue in memory: at most `limit`
    /// messages, each with every recipient's state.
    pub async fn page(
        &self,
        after: Option<MessageId>,
        limit: usize,
    ) -> io::Result<Vec<QueuedMessage>> {
        let after = after.map_or(0, |id| id.0 as i64);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<i64> = self
            .with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT id FROM ferry_messages WHERE id > $1 ORDER BY id LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        self.load(ids).await
    }

    async fn try_claim(&self, now: SystemTime, max: usize) -> io::Result<Vec<Claim>> {
        let node = self.inner.config.node.clone();
        let lease = lease_millis(self.inner.config.lease);
        // Enough recipients for `max` messages in the common case; a
        // message whose other recipients were not in the batch is claimed
        // again on the next round.
        let scan = i64::try_from(max.saturating_mul(4).max(16)).unwrap_or(i64::MAX);
        let max = max.max(1);
        let claimed: Vec<(i64, i32, i64)> = self
            .with_client(async |c| {
                let tx = c.transaction().await?;
                let rows = tx
                    .query(
                        "SELECT message_id, idx FROM ferry_recipients
                         WHERE due_at IS NOT NULL AND NOT held AND due_at <= $1
                           AND (lease_until IS NULL OR lease_until < now())
                         ORDER BY due_at
                         LIMIT $2
                         FOR UPDATE SKIP LOCKED",
                        &[&now, &scan],
                    )
                    .await?;
                let mut ids: Vec<i64> = Vec::new();
                let mut take_ids = Vec::new();
                let mut take_idx = Vec::new();
                for row in &rows {
                    let id: i64 = row.get(0);
                    if !ids.contains(&id) {
                        if ids.len() == max {
                            continue;
                        }
                        ids.push(id);
                    }
                    take_ids.push(id);
                    take_idx.push(row.get::<_, i32>(1));
                }
                let updated = tx
                    .query(
                        "UPDATE ferry_recipients r
                         SET lease_owner = $3,
                             lease_until = now() + $4 * interval '1 millisecond',
                             fence = r.fence + 1
                         FROM unnest($1::bigint[], $2::integer[]) AS t(message_id, idx)
                         WHERE r.message_id = t.message_id AND r.idx = t.idx
                         RETURNING r.message_id, r.idx, r.fence",
                        &[&take_ids, &take_idx, &node, &lease],
                    )
                    .await?;
                tx.commit().await?;
                Ok(updated
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            })
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        {
            let mut fences = lock(&self.inner.fences);
            for &(id, idx, fence) in &claimed {
                fences.insert((id as u64, idx as usize), fence);
            }
        }
        let mut ids: Vec<i64> = claimed.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let messages = self.load(ids).await?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let mut recipients: Vec<usize> = claimed
                    .iter()
                    .filter(|c| c.0 as u64 == message.id.0)
                    .map(|c| c.1 as usize)
                    .collect();
                recipients.sort_unstable();
                Claim {
                    message,
                    recipients,
                }
            })
            .collect())
    }

    async fn try_record(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
    ) -> io::Result<bool> {
        let fences: Vec<Option<i64>> = {
            let fences = lock(&self.inner.fences);
            outcomes
                .iter()
                .map(|(n, _)| fences.get(&(id.0, *n)).copied())
                .collect()
        };
        if fences.iter().any(Option::is_none) {
            return Ok(false);
        }
        let mid = id.0 as i64;
        let applied = self
            .with_client(async |c| {
                let tx = c.transaction().await?;
                // Serializes the outcomes of one message, so that the last
                // one to finish sees every other and removes the message.
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM ferry_messages WHERE id = $1 FOR UPDATE",
                        &[&mid],
                    )
                    .await?;
                if exists.is_none() {
                    return Ok(false);
                }
                for ((n, state), fence) in outcomes.iter().zip(&fences) {
                    let row = StateRow::from(state);
                    let updated = tx
                        .execute(
                            "UPDATE ferry_recipients
                             SET state = $4, attempts = $5, due_at = $6, warned = $7,
                                 last_remote = $8, last_diagnostic = $9, last_at = $10,
                                 lease_owner = NULL, lease_until = NULL
                             WHERE message_id = $1 AND idx = $2 AND fence = $3",
                            &[
                                &mid,
                                &(*n as i32),
                                fence,
                                &row.state,
                                &row.attempts,
                                &row.due_at,
                                &row.warned,
                                &row.last_remote,
                                &row.last_diagnostic,
                                &row.last_at,
                            ],
                        )
                        .await?;
                    if updated == 0 {
                        // Fenced off: another node claimed the recipient
                        // after this node's lease ran out.
                        tx.rollback().await?;
                        return Ok(false);
                    }
                }
                for notice in &notices {
                    insert_message(&tx, notice).await?;
                }
                finish_if_done(&tx, mid).await?;
                if !notices.is_empty() {
                    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
                }
                tx.commit().await?;
                Ok(true)
            })
            .await?;
        let mut table = lock(&self.inner.fences);
        for (n, _) in &outcomes {
            table.remove(&(id.0, *n));
        }
        Ok(applied)
    }
}

fn lease_millis(lease: Duration) -> f64 {
    lease.as_millis() as f64
}

const MESSAGE_COLUMNS: &str = "m.id, m.sender, m.ret, m.envid, m.smtputf8, m.body_type, \
     m.requiretls, m.received_at, m.kind";
const RECIPIENT_COLUMNS: &str = "r.message_id, r.idx, r.address, r.notify, r.orcpt_type, \
     r.orcpt, r.state, r.attempts, r.due_at, r.warned, r.last_remote, r.last_diagnostic, \
     r.last_at";

/// Builds messages from rows of [`MESSAGE_COLUMNS`] and
/// [`RECIPIENT_COLUMNS`] (both in message order).
fn assemble(messages: &[Row], recipients: &[Row]) -> Vec<QueuedMessage> {
    let mut by_message: HashMap<i64, Vec<&Row>> = HashMap::new();
    for row in recipients {
        by_message.entry(row.get(0)).or_default().push(row);
    }
    messages
        .iter()
        .map(|m| {
            let id: i64 = m.get(0);
            let rows = by_message.remove(&id).unwrap_or_default();
            let mut list = Vec::with_capacity(rows.len());
            let mut states = Vec::with_capacity(rows.len());
            for r in rows {
                list.push(QueuedRecipient {
                    address: r.get(2),
                    notify: notify_from(r.get(3)),
                    orcpt: match (r.get::<_, Option<String>>(4), r.get::<_, Option<String>>(5)) {
                        (Some(addr_type), Some(address)) => {
                            Some(OriginalRecipient { addr_type, address })
                        }
                        _ => None,
                    },
                });
                states.push(state_from(r));
            }
            QueuedMessage {
                id: MessageId(id as u64),
                envelope: Arc::new(QueuedEnvelope {
                    sender: m.get(1),
                    ret: match m.get::<_, Option<i16>>(2) {
                        Some(1) => Some(Ret::Full),
                        Some(2) => Some(Ret::Headers),
                        _ => None,
                    },
                    envid: m.get(3),
                    smtputf8: m.get(4),
                    body_type: match m.get::<_, Option<i16>>(5) {
                        Some(1) => Some(BodyType::SevenBit),
                        Some(2) => Some(BodyType::EightBitMime),
                        Some(3) => Some(BodyType::BinaryMime),
                        _ => None,
                    },
                    requiretls: m.get(6),
                    received_at: m.get(7),
                    kind: if m.get::<_, i16>(8) == 1 {
                        MessageKind::Notification
                    } else {
                        MessageKind::Normal
                    },
                    recipients: list,
                }),
                states,
            }
        })
        .collect()
}

fn notify_to(notify: Option<Notify>) -> Option<i16> {
    match notify {
        None => None,
        Some(Notify::Never) => Some(0),
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => Some(8 | i16::from(success) | i16::from(failure) << 1 | i16::from(delay) << 2),
    }
}

fn notify_from(value: Option<i16>) -> Option<Notify> {
    match value {
        None => None,
        Some(0) => Some(Notify::Never),
        Some(bits) => Some(Notify::On {
            success: bits & 1 != 0,
            failure: bits & 2 != 0,
            delay: bits & 4 != 0,
        }),
    }
}

fn state_from(r: &Row) -> RecipientState {
    let last = || AttemptReport {
        remote_mta: r.get(10),
        diagnostic: r.get::<_, Option<String>>(11).unwrap_or_default(),
        at: r
            .get::<_, Option<SystemTime>>(12)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    };
    match r.get::<_, i16>(6) {
        1 => RecipientState::Deferred {
            attempts: u32::try_from(r.get::<_, i32>(7)).unwrap_or(0),
            next_attempt: r
                .get::<_, Option<SystemTime>>(8)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            last: last(),
            warned: r.get(9),
        },
        2 => RecipientState::Delivered { last: last() },
        3 => RecipientState::Failed { last: last() },
        _ => RecipientState::Queued,
    }
}

/// A recipient state as columns.
struct StateRow {
    state: i16,
    attempts: i32,
    due_at: Option<SystemTime>,
    warned: bool,
    last_remote: Option<String>,
    last_diagnostic: Option<String>,
    last_at: Option<SystemTime>,
}

impl From<&RecipientState> for StateRow {
    fn from(state: &RecipientState) -> Self {
        let with = |state: i16, last: &AttemptReport| StateRow {
            state,
            attempts: 0,
            due_at: None,
            warned: false,
            last_remote: last.remote_mta.clone(),
            last_diagnostic: Some(last.diagnostic.clone()),
            last_at: Some(last.at),
        };
        match state {
            RecipientState::Queued => StateRow {
                state: 0,
                attempts: 0,
                due_at: Some(SystemTime::UNIX_EPOCH),
                warned: false,
                last_remote: None,
                last_diagnostic: None,
                last_at: None,
            },
            RecipientState::Deferred {
                attempts,
                next_attempt,
                last,
                warned,
            } => StateRow {
                attempts: i32::try_from(*attempts).unwrap_or(i32::MAX),
                due_at: Some(*next_attempt),
                warned: *warned,
                ..with(1, last)
            },
            RecipientState::Delivered { last } => with(2, last),
            RecipientState::Failed { last } => with(3, last),
        }
    }
}

/// Inserts a new message (body, envelope, recipients) in `tx`.
async fn insert_message(
    tx: &Transaction<'_>,
    message: &NewMessage,
) -> Result<i64, tokio_postgres::Error> {
    let hash = Sha256::digest(&message.body).to_vec();
    let envelope = &message.envelope;
    tx.execute(
        "INSERT INTO ferry_bodies (hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
        &[&hash, &message.body.as_ref()],
    )
    .await?;
    let ret: Option<i16> = envelope.ret.map(|r| match r {
        Ret::Full => 1,
        Ret::Headers => 2,
    });
    let body_type: Option<i16> = envelope.body_type.map(|b| match b {
        BodyType::SevenBit => 1,
        BodyType::EightBitMime => 2,
        BodyType::BinaryMime => 3,
    });
    let kind: i16 = match envelope.kind {
        MessageKind::Normal => 0,
        MessageKind::Notification => 1,
    };
    let size = i64::try_from(message.body.len()).unwrap_or(i64::MAX);
    let id: i64 = tx
        .query_one(
            "INSERT INTO ferry_messages
               (sender, ret, envid, smtputf8, body_type, requiretls, received_at, kind,
                body_hash, body_size)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING id",
            &[
                &envelope.sender,
                &ret,
                &envelope.envid,
                &envelope.smtputf8,
                &body_type,
                &envelope.requiretls,
                &envelope.received_at,
                &kind,
                &hash,
                &size,
            ],
        )
        .await?
        .get(0);
    let count = envelope.recipients.len();
    let mut idx = Vec::with_capacity(count);
    let mut address = Vec::with_capacity(count);
    let mut domain = Vec::with_capacity(count);
    let mut notify = Vec::with_capacity(count);
    let mut orcpt_type = Vec::with_capacity(count);
    let mut orcpt = Vec::with_capacity(count);
    for (n, r) in envelope.recipients.iter().enumerate() {
        idx.push(i32::try_from(n).unwrap_or(i32::MAX));
        address.push(r.address.clone());
        domain.push(
            r.address
                .rsplit_once('@')
                .map_or(String::new(), |(_, d)| d.to_ascii_lowercase()),
        );
        notify.push(notify_to(r.notify));
        orcpt_type.push(r.orcpt.as_ref().map(|o| o.addr_type.clone()));
        orcpt.push(r.orcpt.as_ref().map(|o| o.address.clone()));
    }
    tx.execute(
        "INSERT INTO ferry_recipients
           (message_id, idx, address, domain, notify, orcpt_type, orcpt, state, due_at)
         SELECT $1, t.idx, t.address, t.domain, t.notify, t.orcpt_type, t.orcpt, 0, $8
         FROM unnest($2::integer[], $3::text[], $4::text[], $5::smallint[], $6::text[],
                     $7::text[]) AS t(idx, address, domain, notify, orcpt_type, orcpt)",
        &[
            &id,
            &idx,
            &address,
            &domain,
            &notify,
            &orcpt_type,
            &orcpt,
            &envelope.received_at,
        ],
    )
    .await?;
    Ok(id)
}

/// Removes message `id` once every recipient is final, and its body once
/// no message refers to it.
async fn finish_if_done(tx: &Transaction<'_>, id: i64) -> Result<(), tokio_postgres::Error> {
    let gone = tx
        .query_opt(
            "DELETE FROM ferry_messages m WHERE m.id = $1
               AND NOT EXISTS (SELECT 1 FROM ferry_recipients r
                               WHERE r.message_id = $1 AND r.state < 2)
             RETURNING m.body_hash",
            &[&id],
        )
        .await?;
    if let Some(row) = gone {
        let hash: Vec<u8> = row.get(0);
        tx.execute(
            "DELETE FROM ferry_bodies b WHERE b.hash = $1
               AND NOT EXISTS (SELECT 1 FROM ferry_messages m WHERE m.body_hash = $1)",
            &[&hash],
        )
        .await?;
    }
    Ok(())
}

/// The committer: takes every enqueue waiting, inserts them in one
/// transaction, commits once and answers each (group commit).
async fn commit_loop(
    url: String,
    mut client: Client,
    mut requests: mpsc::Receiver<Enqueue>,
    batches: Arc<AtomicU64>,
) {
    const MAX_BATCH: usize = 256;
    let mut batch: Vec<Enqueue> = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if client.is_closed() {
            match connect_client(&url).await {
                Ok(c) => client = c,
                Err(err) => {
                    for request in batch.drain(..) {
                        let _ = request.done.send(Err(io::Error::other(err.to_string())));
                    }
                    continue;
                }
            }
        }
        // A body deleted by a concurrent finish between our insert and
        // our reference fails the foreign key; the second try inserts it.
        let mut result = commit_batch(&mut client, &batch).await;
        if let Err(err) = &result
            && err.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
        {
            result = commit_batch(&mut client, &batch).await;
        }
        match result {
            Ok(ids) => {
                batches.fetch_add(1, Ordering::Relaxed);
                crate::observe::record_commit_batch(ids.len());
                for (request, id) in batch.drain(..).zip(ids) {
                    let _ = request.done.send(Ok(MessageId(id as u64)));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot commit accepted messages");
                for request in batch.drain(..) {
                    let _ = request.done.send(Err(db_error_ref(&err)));
                }
            }
        }
    }
}

fn db_error_ref(err: &tokio_postgres::Error) -> io::Error {
    io::Error::other(format!("postgresql: {err}"))
}

async fn commit_batch(
    client: &mut Client,
    batch: &[Enqueue],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut ids = Vec::with_capacity(batch.len());
    for request in batch {
        ids.push(insert_message(&tx, &request.message).await?);
    }
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    tx.commit().await?;
    Ok(ids)
}

/// Keeps a `LISTEN` connection open and wakes the scheduler at every
/// notification (reconnecting after an error, and waking then too, since
/// notifications may have been missed). A notification whose payload is
/// [`FLUSH`] counts a flush first, so that the scheduler it wakes has
/// already seen it.
async fn listen(url: String, changed: Arc<Wakeup>, flushes: Arc<AtomicU64>) {
    use futures::StreamExt;
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let sql = format!("LISTEN {CHANNEL}");
                let listening = client.batch_execute(&sql);
                tokio::pin!(listening);
                let mut subscribed = false;
                loop {
                    tokio::select! {
                        result = &mut listening, if !subscribed => {
                            subscribed = true;
                            if let Err(err) = result {
                                tracing::warn!(error = %err, "LISTEN failed");
                                break;
                            }
                            changed.notify_one();
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(note))) => {
                                if note.payload() == FLUSH {
                                    flushes.fetch_add(1, Ordering::SeqCst);
                                }
                                changed.notify_one();
                            }
                            Some(Ok(_)) => {}
                            Some(Err(err)) => {
                                tracing::warn!(error = %err, "queue notification connection failed");
                                break;
                            }
                            None => break,
                        },
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot connect to listen for queue changes"),
        }
        changed.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl QueueStore for PgQueue {
    async fn enqueue(&self, message: NewMessage) -> io::Result<MessageId> {
        let (done, answer) = oneshot::channel();
        self.inner
            .commits
            .send(Enqueue { message, done })
            .await
            .map_err(|_| io::Error::other("the queue committer stopped"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the queue committer stopped"))?
    }

    async fn claim_due(&self, now: SystemTime, max: usize) -> Vec<Claim> {
        match self.try_claim(now, max).await {
            Ok(claims) => claims,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim due recipients");
                Vec::new()
            }
        }
    }

    async fn record(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
    ) -> io::Result<()> {
        if self.try_record(id, outcomes, notices).await? {
            Ok(())
        } else {
            tracing::warn!(%id, "lease lost before the outcome was recorded; discarded");
            Err(io::Error::other(
                "lease lost: another node owns these recipients now",
            ))
        }
    }

    async fn release(&self, id: MessageId, recipients: &[usize]) {
        let mut idx = Vec::new();
        let mut fence = Vec::new();
        {
            let mut fences = lock(&self.inner.fences);
            for &n in recipients {
                if let Some(f) = fences.remove(&(id.0, n)) {
                    idx.push(n as i32);
                    fence.push(f);
                }
            }
        }
        if idx.is_empty() {
            return;
        }
        let mid = id.0 as i64;
        let result = self
            .with_client(async |c| {
                c.execute(
                    "UPDATE ferry_recipients r SET lease_owner = NULL, lease_until = NULL
                     FROM unnest($2::integer[], $3::bigint[]) AS t(idx, fence)
                     WHERE r.message_id = $1 AND r.idx = t.idx AND r.fence = t.fence",
                    &[&mid, &idx, &fence],
                )
                .await?;
                c.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
                Ok(())
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(%id, error = %err, "cannot release claims; their leases run out instead");
        }
    }

    async fn body(&self, id: MessageId) -> io::Result<Bytes> {
        let mid = id.0 as i64;
        let row = self
            .with_client(async |c| {
                c.query_opt(
                    "SELECT b.data FROM ferry_messages m JOIN ferry_bodies b ON b.hash = m.body_hash
                     WHERE m.id = $1",
                    &[&mid],
                )
                .await
            })
            .await?;
        match row {
            Some(row) => Ok(Bytes::from(row.get::<_, Vec<u8>>(0))),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such message")),
        }
    }

    async fn next_due(&self) -> Option<SystemTime> {
        let node = self.inner.config.node.clone();
        let result = self
            .with_client(async |c| {
                let row = c
                    .query_one(
                        "SELECT least(
                           (SELECT min(due_at) FROM ferry_recipients
                            WHERE due_at IS NOT NULL AND NOT held AND lease_until IS NULL),
                           (SELECT min(lease_until) FROM ferry_recipients
                            WHERE lease_until IS NOT NULL AND lease_owner <> $1))",
                        &[&node],
                    )
                    .await?;
                Ok(row.get::<_, Option<SystemTime>>(0))
            })
            .await;
        match result {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the next due time");
                // Try again soon rather than sleep forever.
                Some(SystemTime::now() + Duration::from_secs(1))
            }
        }
    }

    async fn changed(&self) {
        // The slow poll notices leases of dead nodes running out (they
        // send no notification).
        let poll = self.inner.config.lease.min(Duration::from_secs(60)) / 2;
        tokio::select! {
            () = self.inner.changed.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }

    async fn messages(&self) -> Vec<QueuedMessage> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self.page(after, 1000).await {
                Ok(page) if page.is_empty() => return all,
                Ok(page) => {
                    after = page.last().map(|m| m.id);
                    all.extend(page);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot list the queue");
                    return all;
                }
            }
        }
    }

    fn recovery(&self) -> Recovery {
        self.inner.recovery.clone()
    }

    async fn is_held(&self, id: MessageId) -> bool {
        match self.held_ids(&[id.0 as i64]).await {
            Ok(held) => held.contains(&id.0),
            Err(err) => {
                // Unknown: go on with the attempt, as before a hold was
                // asked for (the outcome's commit keeps any hold).
                tracing::warn!(%id, error = %err, "cannot read whether a message is held");
                false
            }
        }
    }

    fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::SeqCst)
    }

    async fn acquire_slot(&self, destination: &str, max: usize) -> Option<Slot> {
        let node = self.inner.config.node.clone();
        let lease = lease_millis(self.inner.config.lease);
        let max = i32::try_from(max.max(1)).unwrap_or(i32::MAX);
        let destination = destination.to_owned();
        let mut wait = Duration::from_millis(5);
        loop {
            let token = self.inner.tokens.fetch_add(1, Ordering::Relaxed) as i64;
            // One free slot (never taken, or its lease ran out), taken in
            // one statement; a conflict with a live holder takes nothing.
            let result = self
                .with_client(async |c| {
                    let row = c
                        .query_opt(
                            "WITH free AS (
                               SELECT s FROM generate_series(0, $2 - 1) AS s
                               WHERE NOT EXISTS (
                                 SELECT 1 FROM ferry_slots
                                 WHERE destination = $1 AND slot = s AND lease_until >= now())
                               LIMIT 1)
                             INSERT INTO ferry_slots (destination, slot, owner, token, lease_until)
                             SELECT $1, s, $3, $4, now() + $5 * interval '1 millisecond' FROM free
                             ON CONFLICT (destination, slot) DO UPDATE
                               SET owner = EXCLUDED.owner, token = EXCLUDED.token,
                                   lease_until = EXCLUDED.lease_until
                               WHERE ferry_slots.lease_until < now()
                             RETURNING slot",
                            &[&destination, &max, &node, &token, &lease],
                        )
                        .await?;
                    Ok(row.map(|r| r.get::<_, i32>(0)))
                })
                .await;
            match result {
                Ok(Some(number)) => {
                    return Some(Slot {
                        destination,
                        number: number as u32,
                        token,
                    });
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot take a delivery slot"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    async fn release_slot(&self, slot: Slot) {
        let number = slot.number as i32;
        let node = self.inner.config.node.clone();
        let result = self
            .with_client(async |c| {
                c.execute(
                    "DELETE FROM ferry_slots
                     WHERE destination = $1 AND slot = $2 AND token = $3 AND owner = $4",
                    &[&slot.destination, &number, &slot.token, &node],
                )
                .await
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "cannot give a delivery slot back; its lease runs out instead");
        }
    }
}

impl PgQueue {
    /// Whether message `id` is held (any recipient held).
    async fn held_ids(&self, ids: &[i64]) -> io::Result<std::collections::HashSet<u64>> {
        let ids = ids.to_vec();
        let rows = self
            .with_client(async |c| {
                c.query(
                    "SELECT DISTINCT message_id FROM ferry_recipients
                     WHERE message_id = ANY($1) AND held",
                    &[&ids],
                )
                .await
            })
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }
}

impl crate::inspect::QueueInspect for PgQueue {
    async fn list(
        &self,
        filter: &crate::inspect::Filter,
        after: Option<MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> io::Result<crate::inspect::Page> {
        use crate::inspect::{Listed, Page, StateFilter};
        let limit = limit.max(1);
        let after = after.map_or(0, |id| id.0 as i64);
        let sender = filter.sender.as_ref().map(|s| {
            s.trim_start_matches('<')
                .trim_end_matches('>')
                .to_ascii_lowercase()
        });
        let received_before: Option<SystemTime> = filter.older_than.map(|age| now - age);
        let state: Option<i16> = filter.state.map(|s| match s {
            StateFilter::Queued => 0,
            StateFilter::Deferred => 1,
            StateFilter::Held => 9,
        });
        let domain = filter.domain.as_ref().map(|d| d.to_ascii_lowercase());
        let recipient = filter.recipient.as_ref().map(|r| r.to_ascii_lowercase());
        let recipient_filter = state.is_some() || domain.is_some() || recipient.is_some();
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        // Walks the primary key from the cursor: each page costs its own
        // size, whatever the size of the queue.
        let ids: Vec<i64> = self
            .with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT m.id FROM ferry_messages m
                         WHERE m.id > $1
                           AND ($2::text IS NULL OR lower(coalesce(m.sender, '')) = $2
                                OR ($2 = '' AND m.sender IS NULL))
                           AND ($3::timestamptz IS NULL OR m.received_at <= $3)
                           AND (NOT $4 OR EXISTS (
                             SELECT 1 FROM ferry_recipients r
                             WHERE r.message_id = m.id AND r.state < 2
                               AND ($5::smallint IS NULL
                                    OR ($5 = 9 AND r.held)
                                    OR (NOT r.held AND r.state = $5))
                               AND ($6::text IS NULL OR r.domain = $6)
                               AND ($7::text IS NULL OR lower(r.address) = $7)))
                         ORDER BY m.id LIMIT $8",
                        &[
                            &after,
                            &sender,
                            &received_before,
                            &recipient_filter,
                            &state,
                            &domain,
                            &recipient,
                            &lim,
                        ],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            })
            .await?;
        let held = self.held_ids(&ids).await?;
        let next = (ids.len() == limit).then(|| MessageId(*ids.last().unwrap_or(&0) as u64));
        let messages = self.load(ids).await?;
        Ok(Page {
            messages: messages
                .into_iter()
                .map(|message| Listed {
                    held: held.contains(&message.id.0),
                    message,
                })
                .collect(),
            next,
        })
    }

    async fn get(&self, id: MessageId) -> io::Result<Option<crate::inspect::Listed>> {
        let ids = vec![id.0 as i64];
        let held = self.held_ids(&ids).await?;
        Ok(self
            .load(ids)
            .await?
            .pop()
            .map(|message| crate::inspect::Listed {
                held: held.contains(&message.id.0),
                message,
            }))
    }

    async fn set_held(&self, id: MessageId, held: bool, _now: SystemTime) -> io::Result<bool> {
        let mid = id.0 as i64;
        let updated = self
            .with_client(async |c| {
                let n = c
                    .execute(
                        "UPDATE ferry_recipients SET held = $2 WHERE message_id = $1",
                        &[&mid, &held],
                    )
                    .await?;
                if !held {
                    c.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
                }
                Ok(n)
            })
            .await?;
        Ok(updated > 0)
    }

    async fn remove(
        &self,
        id: MessageId,
        notices: Vec<NewMessage>,
        _now: SystemTime,
    ) -> io::Result<bool> {
        let mid = id.0 as i64;
        self.with_client(async |c| {
            let tx = c.transaction().await?;
            let gone = tx
                .query_opt(
                    "DELETE FROM ferry_messages WHERE id = $1 RETURNING body_hash",
                    &[&mid],
                )
                .await?;
            let Some(row) = gone else {
                return Ok(false);
            };
            let hash: Vec<u8> = row.get(0);
            tx.execute(
                "DELETE FROM ferry_bodies b WHERE b.hash = $1
                   AND NOT EXISTS (SELECT 1 FROM ferry_messages m WHERE m.body_hash = $1)",
                &[&hash],
            )
            .await?;
            for notice in &notices {
                insert_message(&tx, notice).await?;
            }
            if !notices.is_empty() {
                tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn flush(&self, domain: Option<&str>, now: SystemTime) -> io::Result<u64> {
        let domain = domain.map(str::to_ascii_lowercase);
        self.with_client(async |c| {
            let n = c
                .execute(
                    "UPDATE ferry_recipients SET due_at = $2
                     WHERE state = 1 AND due_at > $2 AND NOT held
                       AND ($1::text IS NULL OR domain = $1)",
                    &[&domain, &now],
                )
                .await?;
            // Every node's listener hears it and its scheduler forgets
            // its destination backoff, so the flushed mail is really tried
            // by whichever node claims it.
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &FLUSH])
                .await?;
            Ok(n)
        })
        .await
    }

    async fn summary(&self, now: SystemTime) -> io::Result<crate::inspect::Summary> {
        use crate::inspect::{Pending, Summary};
        // Aggregated in the database: one row per domain, state and
        // minute of age, never one per message.
        let rows = self
            .with_client(async |c| {
                c.query(
                    "SELECT r.domain, r.state, r.held,
                            floor(extract(epoch FROM ($1 - m.received_at)) / 60)::bigint AS minutes,
                            count(*), min(m.received_at)
                     FROM ferry_recipients r JOIN ferry_messages m ON m.id = r.message_id
                     WHERE r.state < 2
                     GROUP BY 1, 2, 3, 4",
                    &[&now],
                )
                .await
            })
            .await?;
        let mut summary = Summary::default();
        for row in rows {
            let domain: String = row.get(0);
            let state: i16 = row.get(1);
            let held: bool = row.get(2);
            let minutes: i64 = row.get(3);
            let count: i64 = row.get(4);
            let oldest: SystemTime = row.get(5);
            let pending = if held {
                Pending::Held
            } else if state == 0 {
                Pending::Queued
            } else {
                Pending::Deferred
            };
            summary.add_count(
                &domain,
                u64::try_from(minutes).unwrap_or(0),
                oldest,
                u64::try_from(count).unwrap_or(0),
                pending,
            );
        }
        Ok(summary)
    }
}
