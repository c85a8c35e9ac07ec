//! The default [`QueueStore`]: a spool directory on local disk holding an
//! append-only log of checksummed records.
//!
//! # Format
//!
//! The spool directory holds segment files `NNNNNNNNNNNNNNNN.log` (16 hex
//! digits, in order). Each starts with the 8-octet magic `FERRYQ01`, then
//! records:
//!
//! ```text
//!   length  u32 LE   octets of payload
//!   crc     u32 LE   CRC-32C of the 4 length octets and the payload
//!   payload          1 octet type, then the fields (integers LE, strings
//!                    and the body prefixed by their length)
//! ```
//!
//! A *message* record holds the whole envelope, every recipient's state and
//! the body; an *update* record holds new states for some recipients of one
//! message. Recovery reads the segments in order and applies the records;
//! at the first record that is short, fails its checksum or does not
//! decode, the segment is cut there. Because a commit returns only after
//! its records (and everything before them) are written and synced, a cut
//! only ever removes records nobody was told about: a half-written message
//! is never delivered and never acknowledged.
//!
//! # Commit path
//!
//! One committer thread owns the active segment. Callers hand it records
//! and wait; it takes every request that is waiting, writes them with one
//! `write`, syncs once (`fdatasync`, with [`Durability::Sync`]), applies
//! them to the in-memory index and only then answers each caller. Many
//! sessions arriving at once therefore share one sync (group commit).
//!
//! When the write or the sync fails (a full disk, an I/O error), every
//! caller of that batch gets the error, with its kind kept
//! ([`io::ErrorKind::StorageFull`] for `ENOSPC`), and nothing of the batch
//! enters the index. The segment may then hold a torn or unsynced tail (a
//! failed `fdatasync` may have dropped the dirty pages and reports it only
//! once), so the committer at once cuts the segment back to its last
//! committed octet and syncs the cut; after a failed sync it continues in a
//! fresh segment. Until that repair succeeds (it is tried again before
//! each commit), every commit fails; once it does, commits go on and a
//! restart finds exactly what was acknowledged.
//!
//! A segment is deleted once it and every older segment hold no message
//! that is still pending; deleting only such a prefix keeps every update
//! record of a pending message on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smtp_proto::command::{BodyType, Notify, OriginalRecipient, Ret};
use tokio::sync::{Notify as Wakeup, oneshot};

use crate::crc32c::Crc32c;
use crate::queue::{
    AttemptReport, Claim, MessageId, MessageKind, NewMessage, QueueStore, QueuedEnvelope,
    QueuedMessage, QueuedRecipient, RecipientState, Recovery, from_unix_millis, unix_millis,
};

/// The first octets of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"FERRYQ01";

/// A new segment is started once the active one is this large.
pub const SEGMENT_TARGET_SIZE: u64 = 64 * 1024 * 1024;

/// The largest record recovery accepts; a length field above it is
/// damage, not a record.
pub const MAX_RECORD_SIZE: u32 = 1 << 30;

/// A commit batch stops taking requests once it holds this many octets.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

const RECORD_MESSAGE: u8 = 1;
const RECORD_UPDATE: u8 = 2;

/// How far a commit goes before the caller hears "done".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Records and directory entries are synced to stable storage
    /// (`fdatasync`, and `fsync` of the directory for new and deleted
    /// segments) before a commit returns. Survives a crash of the machine.
    #[default]
    Sync,
    /// Records are written to the operating system but not synced:
    /// survives `kill -9` of the relay, not a power loss or kernel crash.
    Os,
}

/// A point in the commit path where a [`CommitHook`] is called: for fault
/// injection in tests and for the crash test's named kill points, not for
/// production use.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPoint {
    /// Before a batch is written. An error here acts as a short write:
    /// half the batch reaches the file, then the write fails with that
    /// error (what a file system that fills up does).
    Write,
    /// After the batch was written, before `fdatasync` (only with
    /// [`Durability::Sync`]). An error here stands for a failed sync.
    Sync,
    /// After the batch is written and synced, before the index is updated
    /// and the callers are answered. The hook's result is ignored here: the
    /// batch is durable, only a crash can happen.
    Answer,
}

impl CommitPoint {
    /// Every point, in commit order.
    pub const ALL: [CommitPoint; 3] = [CommitPoint::Write, CommitPoint::Sync, CommitPoint::Answer];

    /// The point's name: `write`, `sync` or `answer`.
    pub fn name(self) -> &'static str {
        match self {
            CommitPoint::Write => "write",
            CommitPoint::Sync => "sync",
            CommitPoint::Answer => "answer",
        }
    }

    /// The point named `name` (see [`CommitPoint::name`]).
    pub fn from_name(name: &str) -> Option<CommitPoint> {
        Self::ALL.into_iter().find(|point| point.name() == name)
    }
}

/// Called by the committer thread at each [`CommitPoint`]; an `Err` at
/// [`CommitPoint::Write`] or [`CommitPoint::Sync`] is taken as that
/// operation's failure. See [`Spool::open_with_commit_hook`].
#[doc(hidden)]
pub type CommitHook = Arc<dyn Fn(CommitPoint) -> io::Result<()> + Send + Sync>;

/// The spool: a [`QueueStore`] on local disk. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<SpoolInner>,
}

#[derive(Debug)]
struct SpoolInner {
    shared: Arc<Shared>,
    commits: Mutex<mpsc::Sender<Request>>,
}

/// What the committer thread and the callers share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    durability: Durability,
    index: Mutex<Index>,
    changed: Wakeup,
    next_id: AtomicU64,
    recovery: Recovery,
    segment_size: u64,
    batches: AtomicU64,
    readers: Mutex<HashMap<u64, Arc<File>>>,
}

#[derive(Debug, Default)]
struct Index {
    messages: BTreeMap<u64, Entry>,
    /// Pending messages whose latest message record is in each segment.
    live: BTreeMap<u64, Live>,
    /// Every message with a recipient that is neither final nor claimed,
    /// by the earliest time one is due (milliseconds, rounded up), so
    /// claiming and finding the next due time never scan the whole queue.
    due: BTreeSet<(u64, u64)>,
}

/// A due time as an index key: milliseconds since the epoch, rounded up,
/// so a key not after "now" (rounded down) is never early.
fn due_key(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        u64::try_from(elapsed.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    })
}

/// What of a segment is still needed.
#[derive(Debug, Default, Clone, Copy)]
struct Live {
    /// Pending messages whose latest message record is here.
    count: usize,
    /// Their body octets.
    bytes: u64,
}

#[derive(Debug)]
struct Entry {
    envelope: Arc<QueuedEnvelope>,
    states: Vec<RecipientState>,
    claimed: Vec<bool>,
    body: BodyLocation,
    /// This message's key in [`Index::due`].
    due: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct BodyLocation {
    segment: u64,
    offset: u64,
    len: u64,
}

/// One change for the committer.
#[derive(Debug)]
enum Op {
    Message {
        id: u64,
        envelope: Arc<QueuedEnvelope>,
        states: Vec<RecipientState>,
        body: Bytes,
    },
    Update {
        id: u64,
        outcomes: Vec<(usize, RecipientState)>,
        /// Who changes the states (in memory only: the record on disk
        /// holds the states as finally written).
        source: UpdateSource,
    },
}

/// Where a state update comes from, which decides what it does to claims
/// and holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateSource {
    /// The outcome of a claim ([`QueueStore::record`]): the recipients are
    /// no longer claimed, and a recipient an operator held while the
    /// attempt was in flight stays held (its deferral keeps the hold's
    /// next attempt).
    Attempt,
    /// An operator's hold or release: written as given, and a recipient
    /// in flight stays claimed (its attempt ends as it would have, and is
    /// not started a second time meanwhile).
    Hold,
    /// An operator's flush or deletion: claims stay, and a recipient held
    /// meanwhile stays held.
    Operator,
}

/// Whether a recipient is held (see [`crate::inspect::held_until`]).
fn is_held(state: &RecipientState) -> bool {
    crate::inspect::is_held_state(state)
}

#[derive(Debug)]
struct Request {
    ops: Vec<Op>,
    done: oneshot::Sender<io::Result<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; go on.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.log"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir` and recovers it:
    /// every committed message is back in the queue with its recipients'
    /// last committed states, and a damaged tail is cut off.
    pub fn open(dir: impl Into<PathBuf>, durability: Durability) -> io::Result<Spool> {
        Self::open_with_segment_size(dir, durability, SEGMENT_TARGET_SIZE)
    }

    /// [`Spool::open`] with segments of about `segment_size` octets
    /// (default [`SEGMENT_TARGET_SIZE`]; at least 4 KiB). Smaller segments
    /// reclaim space sooner and are copied forward more often.
    pub fn open_with_segment_size(
        dir: impl Into<PathBuf>,
        durability: Durability,
        segment_size: u64,
    ) -> io::Result<Spool> {
        Self::open_inner(dir.into(), durability, segment_size, None)
    }

    /// [`Spool::open_with_segment_size`] with `hook` called at every
    /// [`CommitPoint`] of every commit: a seam for tests that make writes
    /// and syncs fail, and for the crash test's named kill points. Not for
    /// production use.
    #[doc(hidden)]
    pub fn open_with_commit_hook(
        dir: impl Into<PathBuf>,
        durability: Durability,
        segment_size: u64,
        hook: CommitHook,
    ) -> io::Result<Spool> {
        Self::open_inner(dir.into(), durability, segment_size, Some(hook))
    }

    fn open_inner(
        dir: PathBuf,
        durability: Durability,
        segment_size: u64,
        hook: Option<CommitHook>,
    ) -> io::Result<Spool> {
        let segment_size = segment_size.max(4096);
        fs::create_dir_all(&dir)?;
        let mut segments: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".log")
                && hex.len() == 16
                && let Ok(segment) = u64::from_str_radix(hex, 16)
            {
                segments.push(segment);
            }
        }
        segments.sort_unstable();

        let mut index = Index::default();
        let mut recovery = Recovery::default();
        let mut max_id = 0u64;
        for &segment in &segments {
            let path = segment_path(&dir, segment);
            let cut = replay(&path, segment, &mut index, &mut max_id)?;
            if let Some((valid, total)) = cut {
                recovery.truncated_bytes += total - valid;
                tracing::warn!(
                    segment = %path.display(),
                    valid,
                    cut = total - valid,
                    "cutting an incomplete record off the spool"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                if valid < SEGMENT_MAGIC.len() as u64 {
                    // Not even the header made it: the segment never held
                    // a committed record.
                    drop(file);
                    fs::remove_file(&path)?;
                } else {
                    file.set_len(valid)?;
                    file.sync_all()?;
                }
            }
        }
        recovery.messages = index.messages.len();
        recovery.pending_recipients = index
            .messages
            .values()
            .map(|entry| entry.states.iter().filter(|s| !s.is_final()).count())
            .sum();

        // Always append to a fresh segment: the old tail stays as recovery
        // left it.
        let active = segments.last().map_or(1, |last| last + 1);
        let file = create_segment(&dir, active, durability)?;
        index.live.entry(active).or_default();
        let next_id = (max_id + 1).max(unix_millis(SystemTime::now()) << 16);
        let shared = Arc::new(Shared {
            dir,
            durability,
            index: Mutex::new(index),
            changed: Wakeup::new(),
            next_id: AtomicU64::new(next_id),
            recovery,
            segment_size,
            batches: AtomicU64::new(0),
            readers: Mutex::new(HashMap::new()),
        });
        // Segments that hold nothing pending go now.
        delete_finished_prefix(&shared, active)?;
        let (sender, receiver) = mpsc::channel();
        let committer = Committer {
            shared: Arc::clone(&shared),
            file,
            segment: active,
            position: SEGMENT_MAGIC.len() as u64,
            broken: None,
            hook,
        };
        std::thread::Builder::new()
            .name("spool-commit".to_owned())
            .spawn(move || committer.run(&receiver))?;
        Ok(Spool {
            inner: Arc::new(SpoolInner {
                shared,
                commits: Mutex::new(sender),
            }),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// The durability setting.
    pub fn durability(&self) -> Durability {
        self.inner.shared.durability
    }

    /// How many commit batches (one write and, with [`Durability::Sync`],
    /// one sync each) the spool made since it opened.
    pub fn commit_batches(&self) -> u64 {
        self.inner.shared.batches.load(Ordering::Relaxed)
    }

    async fn commit(&self, ops: Vec<Op>) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        lock(&self.inner.commits)
            .send(Request { ops, done })
            .map_err(|_| io::Error::other("the spool committer has stopped"))?;
        wait.await
            .map_err(|_| io::Error::other("the spool committer has stopped"))?
    }

    fn new_id(&self) -> u64 {
        self.inner.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Commits an operator's state changes for `id` (and `notices`), as
    /// `source` says (see [`UpdateSource`]).
    pub(crate) async fn update(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
        source: UpdateSource,
    ) -> io::Result<()> {
        let mut ops = Vec::with_capacity(notices.len() + 1);
        for notice in notices {
            let states = vec![RecipientState::Queued; notice.envelope.recipients.len()];
            ops.push(Op::Message {
                id: self.new_id(),
                envelope: Arc::new(notice.envelope),
                states,
                body: notice.body,
            });
        }
        ops.push(Op::Update {
            id: id.0,
            outcomes,
            source,
        });
        self.commit(ops).await
    }
}

fn create_segment(dir: &Path, segment: u64, durability: Durability) -> io::Result<File> {
    let path = segment_path(dir, segment);
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)?;
    let started = file.write_all(SEGMENT_MAGIC).and_then(|()| {
        if durability == Durability::Sync {
            file.sync_all()?;
            sync_dir(dir)?;
        }
        Ok(())
    });
    if let Err(err) = started {
        // A full disk can leave a partial header: remove it so the next
        // try can create the segment again (recovery would drop it too).
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(err);
    }
    Ok(file)
}

/// Replays one segment into `index`. Returns `Some((valid, total))` when
/// the file holds octets past the last good record.
fn replay(
    path: &Path,
    segment: u64,
    index: &mut Index,
    max_id: &mut u64,
) -> io::Result<Option<(u64, u64)>> {
    let file = File::open(path)?;
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut magic = [0u8; 8];
    if total < 8 || reader.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
        return Ok(Some((0, total)));
    }
    let mut position = SEGMENT_MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        if position == total {
            return Ok(None);
        }
        let mut header = [0u8; 8];
        if reader.read_exact(&mut header).is_err() {
            return Ok(Some((position, total)));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_SIZE || u64::from(len) > total - position - 8 {
            return Ok(Some((position, total)));
        }
        payload.clear();
        payload.resize(len as usize, 0);
        if reader.read_exact(&mut payload).is_err() {
            return Ok(Some((position, total)));
        }
        let mut check = Crc32c::new();
        check.update(&header[..4]);
        check.update(&payload);
        if check.finish() != crc {
            return Ok(Some((position, total)));
        }
        let payload_start = position + 8;
        match decode_record(&payload) {
            Some(Decoded::Message {
                id,
                envelope,
                states,
                body_offset,
                body_len,
            }) => {
                *max_id = (*max_id).max(id);
                let body = BodyLocation {
                    segment,
                    offset: payload_start + body_offset,
                    len: body_len,
                };
                index.insert(id, Arc::new(envelope), states, body);
            }
            Some(Decoded::Update { id, outcomes }) => {
                *max_id = (*max_id).max(id);
                // An update for a message that is gone refers to one that
                // finished and whose record was deleted.
                index.apply(id, outcomes, true);
            }
            None => return Ok(Some((position, total))),
        }
        position = payload_start + u64::from(len);
    }
}

impl Index {
    fn insert(
        &mut self,
        id: u64,
        envelope: Arc<QueuedEnvelope>,
        states: Vec<RecipientState>,
        body: BodyLocation,
    ) {
        if let Some(old) = self.messages.remove(&id) {
            if let Some(key) = old.due {
                self.due.remove(&(key, id));
            }
            self.forget(old.body);
        }
        if states.iter().all(RecipientState::is_final) {
            return;
        }
        let live = self.live.entry(body.segment).or_default();
        live.count += 1;
        live.bytes += body.len;
        let claimed = vec![false; states.len()];
        self.messages.insert(
            id,
            Entry {
                envelope,
                states,
                claimed,
                body,
                due: None,
            },
        );
        self.reindex(id);
    }

    /// Puts `id` back in [`Index::due`] under its earliest unclaimed due
    /// time.
    fn reindex(&mut self, id: u64) {
        let Some(entry) = self.messages.get_mut(&id) else {
            return;
        };
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, id));
        }
        let received = entry.envelope.received_at;
        let key = entry
            .states
            .iter()
            .zip(&entry.claimed)
            .filter(|(_, claimed)| !**claimed)
            .filter_map(|(state, _)| state.due_at(received))
            .map(due_key)
            .min();
        entry.due = key;
        if let Some(key) = key {
            self.due.insert((key, id));
        }
    }

    fn apply(&mut self, id: u64, outcomes: Vec<(usize, RecipientState)>, unclaim: bool) {
        let Some(entry) = self.messages.get_mut(&id) else {
            return;
        };
        for (recipient, state) in outcomes {
            if let Some(slot) = entry.states.get_mut(recipient) {
                *slot = state;
                if unclaim || slot.is_final() {
                    entry.claimed[recipient] = false;
                }
            }
        }
        if entry.states.iter().all(RecipientState::is_final) {
            let (body, key) = (entry.body, entry.due);
            self.messages.remove(&id);
            if let Some(key) = key {
                self.due.remove(&(key, id));
            }
            self.forget(body);
        } else {
            self.reindex(id);
        }
    }

    /// A message record at `body` is no longer the latest of a pending
    /// message.
    fn forget(&mut self, body: BodyLocation) {
        if let Some(live) = self.live.get_mut(&body.segment) {
            live.count = live.count.saturating_sub(1);
            live.bytes = live.bytes.saturating_sub(body.len);
        }
    }

    /// The message's latest record is now the copy at `body`; its states
    /// and claims stay as they are.
    fn relocate(&mut self, id: u64, body: BodyLocation) {
        let Some(entry) = self.messages.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.body, body);
        self.forget(old);
        let live = self.live.entry(body.segment).or_default();
        live.count += 1;
        live.bytes += body.len;
    }
}

/// Deletes the oldest segments while they hold nothing pending, never the
/// active one.
fn delete_finished_prefix(shared: &Shared, active: u64) -> io::Result<()> {
    let mut removed = Vec::new();
    {
        let mut index = lock(&shared.index);
        while let Some((&segment, live)) = index.live.first_key_value() {
            if segment >= active || live.count > 0 {
                break;
            }
            index.live.remove(&segment);
            removed.push(segment);
        }
    }
    if removed.is_empty() {
        return Ok(());
    }
    for segment in &removed {
        lock(&shared.readers).remove(segment);
        match fs::remove_file(segment_path(&shared.dir, *segment)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    if shared.durability == Durability::Sync {
        sync_dir(&shared.dir)?;
    }
    Ok(())
}

/// Why a commit failed, kept so every caller of the batch gets an error of
/// the same kind (a full disk must stay recognisable as one).
#[derive(Debug, Clone)]
struct Failure {
    kind: io::ErrorKind,
    message: String,
    /// The sync failed: the file's cached pages are of unknown state.
    sync: bool,
}

impl Failure {
    fn new(context: &str, err: &io::Error) -> Failure {
        Failure {
            kind: err.kind(),
            message: format!("{context}: {err}"),
            sync: false,
        }
    }

    fn of_write(err: &WriteError) -> Failure {
        let (context, err, sync) = match err {
            WriteError::Write(err) => ("spool write failed", err, false),
            WriteError::Sync(err) => ("spool sync failed", err, true),
        };
        Failure {
            sync,
            ..Failure::new(context, err)
        }
    }

    fn to_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// Which step of writing a batch failed.
#[derive(Debug)]
enum WriteError {
    Write(io::Error),
    Sync(io::Error),
}

impl From<WriteError> for io::Error {
    fn from(err: WriteError) -> io::Error {
        match err {
            WriteError::Write(err) | WriteError::Sync(err) => err,
        }
    }
}

struct Committer {
    shared: Arc<Shared>,
    file: File,
    segment: u64,
    /// The end of the last committed record in the active segment.
    position: u64,
    /// Set after a write or sync failed: the active segment may hold a
    /// torn or unsynced tail past `position` (a failed fsync may have
    /// dropped dirty pages), so it is cut back and left before anything
    /// more is committed ([`Committer::repair`]).
    broken: Option<Failure>,
    hook: Option<CommitHook>,
}

impl Committer {
    fn run(mut self, receiver: &mpsc::Receiver<Request>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            let mut bytes = batch[0].ops.iter().map(Op::size_hint).sum::<usize>();
            while bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(request) => {
                        bytes += request.ops.iter().map(Op::size_hint).sum::<usize>();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&mut batch);
            for request in batch {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(failure) => Err(failure.to_error()),
                };
                let _ = request.done.send(answer);
            }
        }
    }

    fn fault(&self, point: CommitPoint) -> io::Result<()> {
        match &self.hook {
            Some(hook) => hook(point),
            None => Ok(()),
        }
    }

    /// After a failed write or sync: cuts the active segment back to its
    /// last committed record and syncs the cut, so nothing of the failed
    /// batch can come back at recovery. After a failed sync it also starts
    /// a fresh segment (unless nothing was committed in this one yet): the
    /// file's cached pages are of unknown state, and no later record should
    /// follow them.
    fn repair(&mut self) -> Result<(), Failure> {
        let Some(cause) = self.broken.take() else {
            return Ok(());
        };
        let rotate = cause.sync && self.position > SEGMENT_MAGIC.len() as u64;
        let repaired = self
            .file
            .set_len(self.position)
            .and_then(|()| {
                if self.shared.durability == Durability::Sync {
                    self.file.sync_all()?;
                }
                Ok(())
            })
            .map_err(|err| (err, "cutting the spool back failed"))
            .and_then(|()| {
                if rotate {
                    self.rotate()
                        .map_err(|err| (err, "starting a new spool segment failed"))
                } else {
                    Ok(())
                }
            });
        if let Err((err, what)) = repaired {
            let failure = Failure::new(&format!("{}; {what}", cause.message), &err);
            self.broken = Some(cause);
            return Err(failure);
        }
        // Copying messages forward into the new segment can fail too.
        if let Some(failure) = &self.broken {
            return Err(failure.clone());
        }
        tracing::warn!(
            cause = %cause.message,
            segment = self.segment,
            "cut a failed commit off the spool; the next commit starts clean"
        );
        Ok(())
    }

    fn commit(&mut self, batch: &mut [Request]) -> Result<(), Failure> {
        if self.broken.is_some() {
            self.repair()?;
        }
        if self.position >= self.shared.segment_size {
            self.rotate()
                .map_err(|err| Failure::new("cannot start a new spool segment", &err))?;
            if let Some(failure) = &self.broken {
                return Err(failure.clone());
            }
        }
        self.keep_holds(batch);
        let mut buffer = Vec::with_capacity(
            batch
                .iter()
                .flat_map(|r| &r.ops)
                .map(Op::size_hint)
                .sum::<usize>(),
        );
        let mut bodies = Vec::new();
        for request in batch.iter() {
            for op in &request.ops {
                let start = buffer.len();
                let body_offset = encode_record(op, &mut buffer);
                if let Some((offset, len)) = body_offset {
                    bodies.push(BodyLocation {
                        segment: self.segment,
                        offset: self.position + (start + 8) as u64 + offset,
                        len,
                    });
                }
            }
        }
        if let Err(err) = self.write(&buffer) {
            let failure = Failure::of_write(&err);
            tracing::error!(
                error = %failure.message,
                "a commit failed; its messages are refused"
            );
            self.broken = Some(failure.clone());
            // Cut the failed batch off now, so not even a crash before the
            // next commit brings it back. If that fails too, the next
            // commit tries again first (and until then a restart may find
            // some of these records: delivered though refused, a duplicate
            // of the client's retry, never a loss).
            if let Err(still) = self.repair() {
                tracing::warn!(error = %still.message, "the spool cannot repair itself yet");
            }
            return Err(failure);
        }
        let _ = self.fault(CommitPoint::Answer);
        self.position += buffer.len() as u64;
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        // Acceptances only: a request with an update is an outcome (with
        // its notifications), as on the PostgreSQL store.
        crate::observe::record_commit_batch(
            batch
                .iter()
                .filter(|r| !r.ops.iter().any(|op| matches!(op, Op::Update { .. })))
                .count(),
        );
        {
            let mut index = lock(&self.shared.index);
            let mut bodies = bodies.into_iter();
            for request in batch.iter_mut() {
                for op in request.ops.drain(..) {
                    match op {
                        Op::Message {
                            id,
                            envelope,
                            states,
                            ..
                        } => {
                            if let Some(body) = bodies.next() {
                                index.insert(id, envelope, states, body);
                            }
                        }
                        Op::Update {
                            id,
                            outcomes,
                            source,
                        } => index.apply(id, outcomes, source == UpdateSource::Attempt),
                    }
                }
            }
        }
        self.shared.changed.notify_one();
        if let Err(err) = delete_finished_prefix(&self.shared, self.segment) {
            tracing::warn!(error = %err, "cannot delete a finished spool segment");
        }
        Ok(())
    }

    /// Before the batch is written: an attempt's outcome (or a flush) for
    /// a recipient an operator held meanwhile keeps the hold (a deferral's
    /// next attempt stays the hold's), and a recipient already final
    /// (delivered, or deleted while its attempt was in flight) keeps its
    /// final state whoever writes: an operator's hold read before the
    /// delivery was recorded does not bring it back. Earlier updates in
    /// the same batch count as already applied, so the records on disk say
    /// what the index will.
    fn keep_holds(&self, batch: &mut [Request]) {
        if !batch
            .iter()
            .flat_map(|r| &r.ops)
            .any(|op| matches!(op, Op::Update { .. }))
        {
            return;
        }
        let index = lock(&self.shared.index);
        // (message, recipient) → (held, final) after the updates so far.
        let mut overlay: HashMap<(u64, usize), (bool, bool)> = HashMap::new();
        for request in batch.iter_mut() {
            for op in &mut request.ops {
                let Op::Update {
                    id,
                    outcomes,
                    source,
                } = op
                else {
                    continue;
                };
                outcomes.retain_mut(|(n, state)| {
                    let (held, done) = overlay.get(&(*id, *n)).copied().unwrap_or_else(|| {
                        index
                            .messages
                            .get(id)
                            .and_then(|entry| entry.states.get(*n))
                            .map_or((false, false), |s| (is_held(s), s.is_final()))
                    });
                    if done {
                        return false;
                    }
                    if *source != UpdateSource::Hold
                        && held
                        && let RecipientState::Deferred { next_attempt, .. } = state
                    {
                        *next_attempt = crate::inspect::held_until();
                    }
                    overlay.insert((*id, *n), (is_held(state), state.is_final()));
                    true
                });
            }
        }
    }

    fn write(&mut self, buffer: &[u8]) -> Result<(), WriteError> {
        if let Err(err) = self.fault(CommitPoint::Write) {
            // A short write, as a file system that fills up gives.
            let _ = self.file.write_all(&buffer[..buffer.len() / 2]);
            return Err(WriteError::Write(err));
        }
        self.file.write_all(buffer).map_err(WriteError::Write)?;
        if self.shared.durability == Durability::Sync {
            self.fault(CommitPoint::Sync).map_err(WriteError::Sync)?;
            self.file.sync_data().map_err(WriteError::Sync)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        let file = create_segment(&self.shared.dir, next, self.shared.durability)?;
        lock(&self.shared.index).live.entry(next).or_default();
        self.file = file;
        self.segment = next;
        self.position = SEGMENT_MAGIC.len() as u64;
        // The old active segment may now be deletable.
        delete_finished_prefix(&self.shared, next)?;
        if let Err(err) = self.compact() {
            tracing::warn!(error = %err, "cannot copy pending messages forward");
        }
        Ok(())
    }

    /// Copies forward the pending messages of the oldest sealed segment
    /// when they are a small part of it (a few long-deferred messages must
    /// not keep a whole segment, and every segment after it, on disk).
    /// Each copy is a full message record with the current states, written
    /// and synced before the index points at it; updates committed later
    /// follow it in the log, so replay ends in the same state.
    fn compact(&mut self) -> io::Result<()> {
        let moves: Vec<(u64, Arc<QueuedEnvelope>, Vec<RecipientState>, BodyLocation)> = {
            let index = lock(&self.shared.index);
            let Some((&oldest, live)) = index.live.first_key_value() else {
                return Ok(());
            };
            if oldest >= self.segment
                || live.count == 0
                || live.bytes > self.shared.segment_size / 4
            {
                return Ok(());
            }
            index
                .messages
                .iter()
                .filter(|(_, entry)| entry.body.segment == oldest)
                .map(|(&id, entry)| {
                    (
                        id,
                        Arc::clone(&entry.envelope),
                        entry.states.clone(),
                        entry.body,
                    )
                })
                .collect()
        };
        let Some(oldest) = moves.first().map(|m| m.3.segment) else {
            return Ok(());
        };
        let source = File::open(segment_path(&self.shared.dir, oldest))?;
        let mut buffer = Vec::new();
        let mut relocated = Vec::with_capacity(moves.len());
        for (id, envelope, states, body) in moves {
            let mut bytes = vec![0u8; usize::try_from(body.len).map_err(io::Error::other)?];
            source.read_exact_at(&mut bytes, body.offset)?;
            let op = Op::Message {
                id,
                envelope,
                states,
                body: Bytes::from(bytes),
            };
            let start = buffer.len();
            if let Some((offset, len)) = encode_record(&op, &mut buffer) {
                relocated.push((
                    id,
                    BodyLocation {
                        segment: self.segment,
                        offset: self.position + (start + 8) as u64 + offset,
                        len,
                    },
                ));
            }
        }
        if let Err(err) = self.write(&buffer) {
            self.broken = Some(Failure::of_write(&err));
            return Err(err.into());
        }
        self.position += buffer.len() as u64;
        {
            let mut index = lock(&self.shared.index);
            for (id, body) in relocated {
                index.relocate(id, body);
            }
        }
        tracing::debug!(segment = oldest, "copied pending messages forward");
        delete_finished_prefix(&self.shared, self.segment)
    }
}

impl Op {
    fn size_hint(&self) -> usize {
        match self {
            Op::Message { body, envelope, .. } => body.len() + 128 + envelope.recipients.len() * 96,
            Op::Update { outcomes, .. } => 32 + outcomes.len() * 96,
        }
    }
}

impl QueueStore for Spool {
    async fn enqueue(&self, message: NewMessage) -> io::Result<MessageId> {
        let id = self.new_id();
        let states = vec![RecipientState::Queued; message.envelope.recipients.len()];
        self.commit(vec![Op::Message {
            id,
            envelope: Arc::new(message.envelope),
            states,
            body: message.body,
        }])
        .await?;
        Ok(MessageId(id))
    }

    async fn claim_due(&self, now: SystemTime, max: usize) -> Vec<Claim> {
        let mut index = lock(&self.inner.shared.index);
        let now_key = unix_millis(now);
        let candidates: Vec<u64> = index
            .due
            .iter()
            .take_while(|(key, _)| *key <= now_key)
            .take(max)
            .map(|&(_, id)| id)
            .collect();
        let mut claims = Vec::new();
        for id in candidates {
            let Some(entry) = index.messages.get_mut(&id) else {
                continue;
            };
            let received = entry.envelope.received_at;
            let due: Vec<usize> = (0..entry.states.len())
                .filter(|&n| {
                    !entry.claimed[n] && entry.states[n].due_at(received).is_some_and(|t| t <= now)
                })
                .collect();
            if due.is_empty() {
                continue;
            }
            for &n in &due {
                entry.claimed[n] = true;
            }
            claims.push(Claim {
                message: QueuedMessage {
                    id: MessageId(id),
                    envelope: Arc::clone(&entry.envelope),
                    states: entry.states.clone(),
                },
                recipients: due,
            });
            index.reindex(id);
        }
        claims
    }

    async fn record(
        &self,
        id: MessageId,
        outcomes: Vec<(usize, RecipientState)>,
        notices: Vec<NewMessage>,
    ) -> io::Result<()> {
        let mut ops = Vec::with_capacity(notices.len() + 1);
        for notice in notices {
            let states = vec![RecipientState::Queued; notice.envelope.recipients.len()];
            ops.push(Op::Message {
                id: self.new_id(),
                envelope: Arc::new(notice.envelope),
                states,
                body: notice.body,
            });
        }
        ops.push(Op::Update {
            id: id.0,
            outcomes,
            source: UpdateSource::Attempt,
        });
        self.commit(ops).await
    }

    async fn release(&self, id: MessageId, recipients: &[usize]) {
        {
            let mut index = lock(&self.inner.shared.index);
            if let Some(entry) = index.messages.get_mut(&id.0) {
                for &n in recipients {
                    if let Some(claimed) = entry.claimed.get_mut(n) {
                        *claimed = false;
                    }
                }
            }
            index.reindex(id.0);
        }
        self.inner.shared.changed.notify_one();
    }

    async fn is_held(&self, id: MessageId) -> bool {
        lock(&self.inner.shared.index)
            .messages
            .get(&id.0)
            .is_some_and(|entry| entry.states.iter().any(is_held))
    }

    async fn body(&self, id: MessageId) -> io::Result<Bytes> {
        let location = lock(&self.inner.shared.index)
            .messages
            .get(&id.0)
            .map(|entry| entry.body)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such message"))?;
        let shared = Arc::clone(&self.inner.shared);
        tokio::task::spawn_blocking(move || {
            let file = {
                let mut readers = lock(&shared.readers);
                match readers.get(&location.segment) {
                    Some(file) => Arc::clone(file),
                    None => {
                        let file =
                            Arc::new(File::open(segment_path(&shared.dir, location.segment))?);
                        readers.insert(location.segment, Arc::clone(&file));
                        file
                    }
                }
            };
            let len = usize::try_from(location.len).map_err(io::Error::other)?;
            let mut body = vec![0u8; len];
            file.read_exact_at(&mut body, location.offset)?;
            Ok(Bytes::from(body))
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn next_due(&self) -> Option<SystemTime> {
        let index = lock(&self.inner.shared.index);
        index.due.first().map(|&(key, _)| from_unix_millis(key))
    }

    async fn changed(&self) {
        self.inner.shared.changed.notified().await;
    }

    async fn messages(&self) -> Vec<QueuedMessage> {
        self.snapshot()
    }

    fn recovery(&self) -> Recovery {
        self.inner.shared.recovery.clone()
    }
}

impl Spool {
    /// Every message in the queue now (what [`QueueStore::messages`]
    /// returns), without waiting.
    pub fn snapshot(&self) -> Vec<QueuedMessage> {
        lock(&self.inner.shared.index)
            .messages
            .iter()
            .map(|(&id, entry)| QueuedMessage {
                id: MessageId(id),
                envelope: Arc::clone(&entry.envelope),
                states: entry.states.clone(),
            })
            .collect()
    }

    /// Up to `limit` messages after `after` (in id order) for which `keep`
    /// says yes: a page of a listing that never copies the whole queue.
    pub fn page(
        &self,
        after: Option<MessageId>,
        limit: usize,
        mut keep: impl FnMut(&QueuedMessage) -> bool,
    ) -> Vec<QueuedMessage> {
        let index = lock(&self.inner.shared.index);
        let start = after.map_or(0, |id| id.0.saturating_add(1));
        let mut page = Vec::new();
        for (&id, entry) in index.messages.range(start..) {
            if page.len() >= limit {
                break;
            }
            let message = QueuedMessage {
                id: MessageId(id),
                envelope: Arc::clone(&entry.envelope),
                states: entry.states.clone(),
            };
            if keep(&message) {
                page.push(message);
            }
        }
        page
    }

    /// One queued message.
    pub fn message(&self, id: MessageId) -> Option<QueuedMessage> {
        lock(&self.inner.shared.index)
            .messages
            .get(&id.0)
            .map(|entry| QueuedMessage {
                id,
                envelope: Arc::clone(&entry.envelope),
                states: entry.states.clone(),
            })
    }
}

// ---- record encoding -------------------------------------------------------

struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn len(&mut self, len: usize) {
        self.u32(u32::try_from(len).unwrap_or(u32::MAX));
    }
    fn str(&mut self, value: &str) {
        self.len(value.len());
        self.0.extend_from_slice(value.as_bytes());
    }
    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            Some(value) => {
                self.u8(1);
                self.str(value);
            }
            None => self.u8(0),
        }
    }
    fn time(&mut self, time: SystemTime) {
        self.u64(unix_millis(time));
    }
    fn report(&mut self, report: &AttemptReport) {
        self.opt_str(report.remote_mta.as_deref());
        self.str(&report.diagnostic);
        self.time(report.at);
    }
    fn state(&mut self, state: &RecipientState) {
        match state {
            RecipientState::Queued => self.u8(0),
            RecipientState::Deferred {
                attempts,
                next_attempt,
                last,
                warned,
            } => {
                self.u8(1);
                self.u32(*attempts);
                self.time(*next_attempt);
                self.u8(u8::from(*warned));
                self.report(last);
            }
            RecipientState::Delivered { last } => {
                self.u8(2);
                self.report(last);
            }
            RecipientState::Failed { last } => {
                self.u8(3);
                self.report(last);
            }
        }
    }
}

/// Appends one framed record for `op`; for a message, returns where its
/// body starts within the payload and its length.
fn encode_record(op: &Op, out: &mut Vec<u8>) -> Option<(u64, u64)> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let mut body_at = None;
    {
        let mut e = Encoder(out);
        match op {
            Op::Message {
                id,
                envelope,
                states,
                body,
            } => {
                e.u8(RECORD_MESSAGE);
                e.u64(*id);
                e.u8(match envelope.kind {
                    MessageKind::Normal => 0,
                    MessageKind::Notification => 1,
                });
                e.time(envelope.received_at);
                e.opt_str(envelope.sender.as_deref());
                e.u8(match envelope.ret {
                    None => 0,
                    Some(Ret::Full) => 1,
                    Some(Ret::Headers) => 2,
                });
                e.opt_str(envelope.envid.as_deref());
                e.u8(u8::from(envelope.smtputf8));
                e.u8(match envelope.body_type {
                    None => 0,
                    Some(BodyType::SevenBit) => 1,
                    Some(BodyType::EightBitMime) => 2,
                    Some(BodyType::BinaryMime) => 3,
                });
                e.u8(u8::from(envelope.requiretls));
                e.len(envelope.recipients.len());
                for (recipient, state) in envelope.recipients.iter().zip(states) {
                    e.str(&recipient.address);
                    e.u8(match recipient.notify {
                        None => 0,
                        Some(Notify::Never) => 1,
                        Some(Notify::On {
                            success,
                            failure,
                            delay,
                        }) => {
                            0x10 | u8::from(success) | u8::from(failure) << 1 | u8::from(delay) << 2
                        }
                    });
                    match &recipient.orcpt {
                        Some(orcpt) => {
                            e.u8(1);
                            e.str(&orcpt.addr_type);
                            e.str(&orcpt.address);
                        }
                        None => e.u8(0),
                    }
                    e.state(state);
                }
                e.u64(body.len() as u64);
                body_at = Some(((e.0.len() - start - 8) as u64, body.len() as u64));
                e.0.extend_from_slice(body);
            }
            Op::Update { id, outcomes, .. } => {
                e.u8(RECORD_UPDATE);
                e.u64(*id);
                e.len(outcomes.len());
                for (recipient, state) in outcomes {
                    e.len(*recipient);
                    e.state(state);
                }
            }
        }
    }
    let len = u32::try_from(out.len() - start - 8).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut crc = Crc32c::new();
    crc.update(&len.to_le_bytes());
    crc.update(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.finish().to_le_bytes());
    body_at
}

enum Decoded {
    Message {
        id: u64,
        envelope: QueuedEnvelope,
        states: Vec<RecipientState>,
        body_offset: u64,
        body_len: u64,
    },
    Update {
        id: u64,
        outcomes: Vec<(usize, RecipientState)>,
    },
}

struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(b);
        Some(u64::from_le_bytes(array))
    }
    fn str(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
    fn opt_str(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => self.str().map(Some),
            _ => None,
        }
    }
    fn time(&mut self) -> Option<SystemTime> {
        self.u64().map(from_unix_millis)
    }
    fn report(&mut self) -> Option<AttemptReport> {
        Some(AttemptReport {
            remote_mta: self.opt_str()?,
            diagnostic: self.str()?,
            at: self.time()?,
        })
    }
    fn state(&mut self) -> Option<RecipientState> {
        Some(match self.u8()? {
            0 => RecipientState::Queued,
            1 => RecipientState::Deferred {
                attempts: self.u32()?,
                next_attempt: self.time()?,
                warned: match self.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
                last: self.report()?,
            },
            2 => RecipientState::Delivered {
                last: self.report()?,
            },
            3 => RecipientState::Failed {
                last: self.report()?,
            },
            _ => return None,
        })
    }
}

fn decode_record(payload: &[u8]) -> Option<Decoded> {
    let mut d = Decoder {
        bytes: payload,
        at: 0,
    };
    let decoded = match d.u8()? {
        RECORD_MESSAGE => {
            let id = d.u64()?;
            let kind = match d.u8()? {
                0 => MessageKind::Normal,
                1 => MessageKind::Notification,
                _ => return None,
            };
            let received_at = d.time()?;
            let sender = d.opt_str()?;
            let ret = match d.u8()? {
                0 => None,
                1 => Some(Ret::Full),
                2 => Some(Ret::Headers),
                _ => return None,
            };
            let envid = d.opt_str()?;
            let smtputf8 = d.u8()? == 1;
            let body_type = match d.u8()? {
                0 => None,
                1 => Some(BodyType::SevenBit),
                2 => Some(BodyType::EightBitMime),
                3 => Some(BodyType::BinaryMime),
                _ => return None,
            };
            let requiretls = d.u8()? == 1;
            let count = d.u32()? as usize;
            let mut recipients = Vec::new();
            let mut states = Vec::new();
            for _ in 0..count {
                let address = d.str()?;
                let notify = match d.u8()? {
                    0 => None,
                    1 => Some(Notify::Never),
                    bits if bits & 0xf0 == 0x10 => Some(Notify::On {
                        success: bits & 1 != 0,
                        failure: bits & 2 != 0,
                        delay: bits & 4 != 0,
                    }),
                    _ => return None,
                };
                let orcpt = match d.u8()? {
                    0 => None,
                    1 => Some(OriginalRecipient {
                        addr_type: d.str()?,
                        address: d.str()?,
                    }),
                    _ => return None,
                };
                recipients.push(QueuedRecipient {
                    address,
                    notify,
                    orcpt,
                });
                states.push(d.state()?);
            }
            let body_len = d.u64()?;
            let body_offset = d.at as u64;
            d.take(usize::try_from(body_len).ok()?)?;
            Decoded::Message {
                id,
                envelope: QueuedEnvelope {
                    sender,
                    ret,
                    envid,
                    smtputf8,
                    body_type,
                    requiretls,
                    received_at,
                    kind,
                    recipients,
                },
                states,
                body_offset,
                body_len,
            }
        }
        RECORD_UPDATE => {
            let id = d.u64()?;
            let count = d.u32()? as usize;
            let mut outcomes = Vec::new();
            for _ in 0..count {
                let recipient = d.u32()? as usize;
                outcomes.push((recipient, d.state()?));
            }
            Decoded::Update { id, outcomes }
        }
        _ => return None,
    };
    // Trailing octets mean the record is not what was written.
    (d.at == payload.len()).then_some(decoded)
}
