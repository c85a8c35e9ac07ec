//! Maildir delivery (the format described at <https://cr.yp.to/proto/maildir.html>).
//!
//! A message is written under `tmp/`, fsynced, renamed into `new/`, and the
//! `new/` directory is fsynced, all before [`Delivery::commit`] returns. Only
//! then may the server answer 250 (RFC 5321 §6.1: a 250 after DATA means the
//! receiver has taken responsibility for the message). Any failure removes
//! every file this delivery created, so a 451 never leaves a half-written or
//! a duplicated message behind.
//!
//! The body is streamed: chunks are buffered up to [`WRITE_BUFFER`] octets and
//! then written by the blocking thread pool, one hop per buffer for all the
//! files of a delivery, so memory per delivery stays bounded whatever the
//! message size.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

/// How many body octets are gathered before one write to disk.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// A Maildir: a directory with `tmp/`, `new/` and `cur/`.
///
/// Cheap to clone; clones share the delivery counter that keeps file names
/// unique within this process.
#[derive(Debug, Clone)]
pub struct Maildir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    host: String,
    sequence: AtomicU64,
}

/// The trace fields written in front of every stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The reverse-path without brackets; `None` for the null path `<>`.
    pub return_path: Option<String>,
    /// The recipients this copy is delivered to, one `Delivered-To:` each.
    pub delivered_to: Vec<String>,
    /// The value of the `Received:` field (without the field name and
    /// without the final CRLF; it may already be folded with CRLF + space).
    pub received: String,
}

impl TraceHeaders {
    /// The header block: `Return-Path: <sender>`, one `Delivered-To: rcpt`
    /// per recipient (no angle brackets, as Postfix writes it) and the
    /// `Received:` field, each ending with CRLF (RFC 5322 §3.6.7, RFC 5321
    /// §4.4).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + 64 * self.delivered_to.len());
        out.extend_from_slice(b"Return-Path: <");
        if let Some(path) = &self.return_path {
            out.extend_from_slice(path.as_bytes());
        }
        out.extend_from_slice(b">\r\n");
        for rcpt in &self.delivered_to {
            out.extend_from_slice(b"Delivered-To: ");
            out.extend_from_slice(rcpt.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Received: ");
        out.extend_from_slice(self.received.as_bytes());
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// What a `Received:` field says about one transaction (RFC 5321 §4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    /// The name the client gave in HELO, EHLO or LHLO.
    pub helo: &'a str,
    /// The client's address.
    pub peer: std::net::IpAddr,
    /// This server's host name.
    pub by: &'a str,
    /// The protocol type (RFC 3848, RFC 6531 §3.7.3), for example `ESMTPS`.
    pub with: &'a str,
    /// The transaction id.
    pub id: &'a str,
    /// The recipient, when the copy is for exactly one.
    pub for_rcpt: Option<&'a str>,
    /// The RFC 5322 date-time of receipt.
    pub date: &'a str,
}

impl Received<'_> {
    /// The field value, folded over three lines:
    /// `from HELO ([IP])\r\n\tby HOST (ferry) with ESMTPS id ID\r\n\tfor <rcpt>; DATE`.
    pub fn value(&self) -> String {
        let helo: String = self
            .helo
            .chars()
            .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | ';'))
            .collect();
        let peer = match self.peer {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("IPv6:{ip}"),
        };
        let mut out = format!(
            "from {helo} ([{peer}])\r\n\tby {} (ferry) with {} id {}",
            self.by, self.with, self.id
        );
        if let Some(rcpt) = self.for_rcpt {
            out.push_str("\r\n\tfor <");
            out.push_str(rcpt);
            out.push('>');
        }
        out.push_str("; ");
        out.push_str(self.date);
        out
    }
}

/// The current date-time in RFC 5322 §3.3 form.
pub fn rfc5322_now() -> String {
    mail_builder::headers::date::Date::now().to_rfc822()
}

impl Maildir {
    /// Opens the Maildir at `root`, creating `root`, `tmp/`, `new/` and
    /// `cur/` when they are missing. `host` becomes the last part of every
    /// file name (with `/` and `:` escaped as the Maildir convention asks).
    pub fn open(root: impl Into<PathBuf>, host: &str) -> io::Result<Maildir> {
        let root = root.into();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Maildir {
            inner: Arc::new(Inner {
                root,
                host: escape_host(host),
                sequence: AtomicU64::new(0),
            }),
        })
    }

    /// The Maildir's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// A file name that no other delivery on this host uses:
    /// `seconds.MmicrosecondsPpidQsequence.host`.
    pub fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seq = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            seq,
            self.inner.host
        )
    }

    /// Starts a delivery of one message into one file per entry of
    /// `copies`: each entry is the header block of that copy (see
    /// [`TraceHeaders::to_bytes`]). An SMTP transaction has one copy; an
    /// LMTP transaction one per accepted recipient.
    pub async fn begin(&self, copies: Vec<Vec<u8>>) -> io::Result<Delivery> {
        let this = self.clone();
        blocking(move || {
            let mut delivery = Delivery {
                maildir: this.clone(),
                tmp: Vec::with_capacity(copies.len()),
                files: Some(Vec::with_capacity(copies.len())),
                pending: BytesMut::new(),
                committed: false,
            };
            for header in copies {
                let name = this.unique_name();
                let path = this.inner.root.join("tmp").join(&name);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                // Record the path first so that a failed write below still
                // removes the file when `delivery` is dropped.
                delivery.tmp.push((path, name));
                file.write_all(&header)?;
                if let Some(files) = delivery.files.as_mut() {
                    files.push(file);
                }
            }
            Ok(delivery)
        })
        .await
    }

    /// Delivers a message whose body is already in memory: convenient for
    /// tests and small messages.
    pub async fn deliver(&self, copies: Vec<Vec<u8>>, body: Bytes) -> io::Result<Vec<PathBuf>> {
        let mut delivery = self.begin(copies).await?;
        delivery.write(body).await?;
        delivery.commit().await
    }
}

/// A delivery in progress. Dropping it without [`commit`](Delivery::commit)
/// removes its temporary files.
#[derive(Debug)]
pub struct Delivery {
    maildir: Maildir,
    /// Path in `tmp/` and file name of every copy, in order.
    tmp: Vec<(PathBuf, String)>,
    /// The open files; `None` only while a write is running on the blocking
    /// pool (or after it failed there).
    files: Option<Vec<File>>,
    pending: BytesMut,
    committed: bool,
}

impl Delivery {
    /// Appends one body chunk to every copy.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if self.pending.is_empty() && chunk.len() >= WRITE_BUFFER {
            return self.write_out(chunk).await;
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= WRITE_BUFFER {
            let data = self.pending.split().freeze();
            self.write_out(data).await?;
        }
        Ok(())
    }

    async fn write_out(&mut self, data: Bytes) -> io::Result<()> {
        let mut files = self
            .files
            .take()
            .ok_or_else(|| io::Error::other("an earlier write to the Maildir failed"))?;
        let (files, result) = blocking(move || {
            let result = files.iter_mut().try_for_each(|f| f.write_all(&data));
            Ok((files, result))
        })
        .await?;
        self.files = Some(files);
        result
    }

    /// Finishes the delivery: writes what is buffered, fsyncs every file,
    /// renames each into `new/` and fsyncs `new/`. Returns the final paths.
    /// On failure nothing of this delivery is left in the Maildir.
    pub async fn commit(mut self) -> io::Result<Vec<PathBuf>> {
        if !self.pending.is_empty() {
            let data = self.pending.split().freeze();
            self.write_out(data).await?;
        }
        let files = self
            .files
            .take()
            .ok_or_else(|| io::Error::other("an earlier write to the Maildir failed"))?;
        let tmp = self.tmp.clone();
        let new_dir = self.maildir.inner.root.join("new");
        let result = blocking(move || {
            for file in &files {
                file.sync_all()?;
            }
            drop(files);
            let mut done = Vec::with_capacity(tmp.len());
            for (path, name) in &tmp {
                let target = new_dir.join(name);
                if let Err(err) = fs::rename(path, &target) {
                    remove_all(&done);
                    return Err(err);
                }
                done.push(target);
            }
            if let Err(err) = sync_dir(&new_dir) {
                remove_all(&done);
                // Best effort: the removal itself is not made durable when
                // the directory cannot be synced.
                let _ = sync_dir(&new_dir);
                return Err(err);
            }
            Ok(done)
        })
        .await;
        // Whatever happened, the tmp files are gone or renamed (the drop
        // below removes leftovers), so mark the delivery as finished only on
        // success.
        if result.is_ok() {
            self.committed = true;
        }
        result
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.files = None;
        for (path, _) in &self.tmp {
            // A file may already be gone (renamed then removed); ignore that.
            let _ = fs::remove_file(path);
        }
    }
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// fsync on a directory makes a rename in it durable (POSIX leaves this to
/// the file system; Linux needs it).
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| io::Error::other(format!("Maildir writer stopped: {err}")))?
}

/// Escapes `/` and `:` in a host name as octal, as the Maildir convention
/// does, so the name can be neither a path nor confused with the `:2,`
/// info suffix.
fn escape_host(host: &str) -> String {
    let host = if host.is_empty() { "localhost" } else { host };
    let mut out = String::with_capacity(host.len());
    for c in host.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(rcpts: &[&str]) -> Vec<u8> {
        TraceHeaders {
            return_path: Some("alice@example.com".into()),
            delivered_to: rcpts.iter().map(|r| r.to_string()).collect(),
            received:
                "from client (localhost [127.0.0.1])\r\n\tby mx; Thu, 1 Jan 1970 00:00:00 +0000"
                    .into(),
        }
        .to_bytes()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn trace_headers_layout() {
        let bytes = trace(&["bob@example.com", "carol@example.org"]);
        assert_eq!(
            bytes,
            b"Return-Path: <alice@example.com>\r\n\
              Delivered-To: bob@example.com\r\n\
              Delivered-To: carol@example.org\r\n\
              Received: from client (localhost [127.0.0.1])\r\n\tby mx; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let null = TraceHeaders {
            return_path: None,
            delivered_to: vec![],
            received: "x".into(),
        };
        assert_eq!(null.to_bytes(), b"Return-Path: <>\r\nReceived: x\r\n");
    }

    #[test]
    fn received_field() {
        let r = Received {
            helo: "client.example",
            peer: "127.0.0.1".parse().unwrap(),
            by: "mx.example",
            with: "ESMTPS",
            id: "abc123",
            for_rcpt: Some("bob@example.com"),
            date: "Thu, 1 Jan 1970 00:00:00 +0000",
        };
        assert_eq!(
            r.value(),
            "from client.example ([127.0.0.1])\r\n\tby mx.example (ferry) with ESMTPS id abc123\r\n\tfor <bob@example.com>; Thu, 1 Jan 1970 00:00:00 +0000"
        );
        let r = Received {
            helo: "evil) (x;",
            peer: "::1".parse().unwrap(),
            for_rcpt: None,
            with: "LMTPA",
            ..r
        };
        assert_eq!(
            r.value(),
            "from evil x ([IPv6:::1])\r\n\tby mx.example (ferry) with LMTPA id abc123; Thu, 1 Jan 1970 00:00:00 +0000"
        );
        assert!(rfc5322_now().contains(':'));
    }

    #[test]
    fn open_creates_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/mail");
        let md = Maildir::open(&root, "mx.example").unwrap();
        for sub in ["tmp", "new", "cur"] {
            assert!(root.join(sub).is_dir(), "{sub} missing");
        }
        assert_eq!(md.root(), root);
        // Opening again is fine.
        Maildir::open(&root, "mx.example").unwrap();
    }

    #[test]
    fn unique_names_differ_and_escape_host() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx/evil:host").unwrap();
        let a = md.unique_name();
        let b = md.unique_name();
        assert_ne!(a, b);
        assert!(a.ends_with(".mx\\057evil\\072host"), "{a}");
        assert!(!a.contains('/') && !a.contains(':'));
        let pid = format!("P{}Q", std::process::id());
        assert!(a.contains(&pid), "{a}");
    }

    #[tokio::test]
    async fn delivers_streamed_body_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx").unwrap();
        let mut delivery = md.begin(vec![trace(&["bob@example.com"])]).await.unwrap();
        // Chunks both smaller and larger than the write buffer.
        let mut expected = trace(&["bob@example.com"]);
        for i in 0..50u8 {
            let len = if i % 7 == 0 {
                WRITE_BUFFER + 3
            } else {
                1000 + i as usize
            };
            let chunk = vec![b'a' + (i % 26); len];
            expected.extend_from_slice(&chunk);
            delivery.write(Bytes::from(chunk)).await.unwrap();
        }
        // Nothing visible in new/ before the commit.
        assert!(names(&dir.path().join("new")).is_empty());
        let paths = delivery.commit().await.unwrap();
        assert_eq!(paths.len(), 1);
        assert_eq!(fs::read(&paths[0]).unwrap(), expected);
        assert!(paths[0].starts_with(dir.path().join("new")));
        assert!(names(&dir.path().join("tmp")).is_empty());
    }

    #[tokio::test]
    async fn one_file_per_copy() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx").unwrap();
        let copies = vec![trace(&["bob@example.com"]), trace(&["carol@example.com"])];
        let paths = md
            .deliver(
                copies.clone(),
                Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
            )
            .await
            .unwrap();
        assert_eq!(paths.len(), 2);
        assert_ne!(paths[0], paths[1]);
        for (path, header) in paths.iter().zip(copies) {
            let mut expected = header;
            expected.extend_from_slice(b"Subject: hi\r\n\r\nbody\r\n");
            assert_eq!(fs::read(path).unwrap(), expected);
        }
        assert_eq!(names(&dir.path().join("new")).len(), 2);
    }

    #[tokio::test]
    async fn dropped_delivery_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx").unwrap();
        let mut delivery = md
            .begin(vec![trace(&["a@b"]), trace(&["c@d"])])
            .await
            .unwrap();
        delivery
            .write(Bytes::from(vec![b'x'; 3 * WRITE_BUFFER]))
            .await
            .unwrap();
        assert_eq!(names(&dir.path().join("tmp")).len(), 2);
        drop(delivery);
        assert!(names(&dir.path().join("tmp")).is_empty());
        assert!(names(&dir.path().join("new")).is_empty());
    }

    #[tokio::test]
    async fn failed_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx").unwrap();
        let mut delivery = md
            .begin(vec![trace(&["a@b"]), trace(&["c@d"])])
            .await
            .unwrap();
        delivery
            .write(Bytes::from_static(b"body\r\n"))
            .await
            .unwrap();
        // Make the rename fail: new/ is no longer a directory.
        fs::remove_dir(dir.path().join("new")).unwrap();
        fs::write(dir.path().join("new"), b"not a directory").unwrap();
        let err = delivery.commit().await.unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(names(&dir.path().join("tmp")).is_empty());
        assert_eq!(
            fs::read(dir.path().join("new")).unwrap(),
            b"not a directory"
        );
    }

    #[tokio::test]
    async fn begin_fails_cleanly_without_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::open(dir.path(), "mx").unwrap();
        fs::remove_dir(dir.path().join("tmp")).unwrap();
        assert!(md.begin(vec![trace(&["a@b"])]).await.is_err());
    }
}
