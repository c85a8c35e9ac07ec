//! Group commit for a directory's fsync.
//!
//! A Maildir delivery is durable once its file is fsynced and the rename
//! into `new/` is on stable storage, which takes an fsync of `new/`
//! (POSIX leaves directory durability to the file system; Linux needs
//! it). One directory fsync makes every rename done before it durable, so
//! sessions whose messages complete together can share one: each
//! delivery, after its rename, takes a ticket; at most one fsync runs at a
//! time; a delivery whose ticket an fsync started after has covered
//! returns at once, and otherwise runs the next fsync itself, for every
//! ticket taken so far. No delivery returns (and so no 250 is sent) before
//! an fsync that started after its rename has succeeded.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The fsync that makes renames in one directory durable; a test may count
/// or delay it.
pub type SyncFn = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// Shares one directory fsync between the deliveries that wait for it at
/// the same time.
pub struct GroupSync {
    sync: SyncFn,
    /// Tickets handed out: each stands for renames already done.
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    completed: AtomicU64,
    /// Held while an fsync runs.
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GroupSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSync")
            .field("requested", &self.requested.load(Ordering::Relaxed))
            .field("completed", &self.completed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl GroupSync {
    /// Group commit for fsyncs of the directory `dir`.
    pub fn for_dir(dir: PathBuf) -> GroupSync {
        GroupSync::with(Arc::new(move || std::fs::File::open(&dir)?.sync_all()))
    }

    /// Group commit for any sync: `sync` makes durable what was done
    /// before it started.
    pub fn with(sync: SyncFn) -> GroupSync {
        GroupSync {
            sync,
            requested: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Returns once what the caller did before calling (a rename) is
    /// durable: after an fsync that started after this call began has
    /// succeeded. An error means this caller's fsync failed; nothing is
    /// known to be durable then.
    pub async fn sync(&self) -> io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = self.running.lock().await;
        if self.completed.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to `upto` was taken after its rename, so an
        // fsync that starts now covers them all.
        let upto = self.requested.load(Ordering::SeqCst);
        let sync = Arc::clone(&self.sync);
        tokio::task::spawn_blocking(move || sync())
            .await
            .map_err(|err| io::Error::other(format!("directory sync stopped: {err}")))??;
        self.completed.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A sync that records, for each run, how many "renames" had been done
    /// when it started, and takes a little time.
    fn recording() -> (SyncFn, Arc<AtomicU64>, Arc<Mutex<Vec<u64>>>) {
        let renamed = Arc::new(AtomicU64::new(0));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (seen, log) = (Arc::clone(&renamed), Arc::clone(&runs));
        let sync: SyncFn = Arc::new(move || {
            log.lock().unwrap().push(seen.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        });
        (sync, renamed, runs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_caller_returns_before_a_sync_that_started_after_its_rename() {
        let (sync, renamed, runs) = recording();
        let group = Arc::new(GroupSync::with(sync));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let (group, renamed, runs) =
                (Arc::clone(&group), Arc::clone(&renamed), Arc::clone(&runs));
            tasks.spawn(async move {
                // The rename: the n-th one done.
                let mine = renamed.fetch_add(1, Ordering::SeqCst) + 1;
                group.sync().await.unwrap();
                // Some sync that has finished saw this rename done.
                let covered = runs.lock().unwrap().iter().any(|&seen| seen >= mine);
                assert!(covered, "rename {mine} returned before a sync covered it");
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
        let runs = runs.lock().unwrap().len();
        assert!((1..=40).contains(&runs), "{runs} syncs");
    }

    #[tokio::test]
    async fn callers_waiting_together_share_one_sync() {
        let (sync, renamed, runs) = recording();
        let group = Arc::new(GroupSync::with(sync));
        // Hold the sync lock so that every caller queues behind it.
        let held = group.running.lock().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (group, renamed) = (Arc::clone(&group), Arc::clone(&renamed));
            tasks.spawn(async move {
                renamed.fetch_add(1, Ordering::SeqCst);
                group.sync().await
            });
        }
        while group.requested.load(Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        drop(held);
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap().unwrap();
        }
        assert_eq!(*runs.lock().unwrap(), [10], "one sync for all ten");
    }

    #[tokio::test]
    async fn a_failed_sync_is_reported_and_the_next_caller_syncs_again() {
        let calls = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&calls);
        let group = GroupSync::with(Arc::new(move || {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(io::Error::other("disk on fire"))
            } else {
                Ok(())
            }
        }));
        assert!(group.sync().await.is_err());
        group.sync().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
