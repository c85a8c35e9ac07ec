//! What this disk does for concurrent small durable writes, the limit for
//! `ferry serve --maildir`: each of `--writers` threads repeatedly writes a
//! small file, fsyncs it, renames it into another directory and fsyncs
//! that directory (the Maildir delivery step), for `--seconds`. Prints the
//! deliveries per second and the fsyncs per second, as JSON with `--json`.
//!
//! `--mode` picks how the syncs are made:
//!
//! - `each` (default): every writer syncs its own file and the directory,
//!   as above;
//! - `group-syncfs`: writers only write their file and wait; one committer
//!   takes every file waiting, makes them durable with one `syncfs(2)`,
//!   renames them all and syncs the directory once, then releases the
//!   writers (group commit);
//! - `group-fdatasync`: the same, with one `fdatasync` per file of the
//!   group made by the committer instead of `syncfs`;
//! - `group-dir`: every writer syncs its own file (in parallel, as in
//!   `each`); the committer renames the files waiting and syncs the
//!   directory once for them (group commit of the directory sync only).
//!
//! ```sh
//! cargo run --release -p ferry-benches --bin fsync-rate -- --dir target/fsync-probe --writers 50
//! ```
//!
//! The count is bounded by time; the files are removed at the end.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

struct Options {
    dir: PathBuf,
    writers: usize,
    seconds: f64,
    size: usize,
    json: bool,
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Each,
    GroupSyncfs,
    GroupFdatasync,
    GroupDir,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        dir: PathBuf::from("target/fsync-probe"),
        writers: 50,
        seconds: 3.0,
        size: 1024,
        json: false,
        mode: Mode::Each,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => options.dir = PathBuf::from(value()?),
            "--writers" => {
                options.writers = value()?.parse().map_err(|e| format!("--writers: {e}"))?
            }
            "--seconds" => {
                options.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--size" => options.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--json" => options.json = true,
            "--mode" => {
                options.mode = match value()?.as_str() {
                    "each" => Mode::Each,
                    "group-syncfs" => Mode::GroupSyncfs,
                    "group-fdatasync" => Mode::GroupFdatasync,
                    "group-dir" => Mode::GroupDir,
                    other => return Err(format!("unknown --mode {other}")),
                }
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(1..=1000).contains(&options.writers) {
        return Err("--writers must be 1 to 1000".into());
    }
    if !(0.1..=60.0).contains(&options.seconds) {
        return Err("--seconds must be 0.1 to 60".into());
    }
    Ok(options)
}

/// One delivery: write, fsync the file, rename it into `new`, fsync `new`.
fn deliver(tmp: &Path, new: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let staged = tmp.join(name);
    let mut file = File::create(&staged)?;
    file.write_all(body)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&staged, new.join(name))?;
    File::open(new)?.sync_all()
}

/// A file written but not yet durable, and the writer waiting for it.
struct Staged {
    file: File,
    name: String,
    done: mpsc::Sender<std::io::Result<()>>,
}

/// The group committer: every file waiting is synced (one `syncfs`, or
/// one `fdatasync` each), renamed, and the directory synced once.
fn committer(mode: Mode, tmp: &Path, new: &Path, queue: &mpsc::Receiver<Staged>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        group.extend(queue.try_iter());
        let result = (|| -> std::io::Result<()> {
            if mode == Mode::GroupSyncfs {
                rustix::fs::syncfs(&group[0].file)?;
            } else if mode == Mode::GroupFdatasync {
                for staged in &group {
                    staged.file.sync_data()?;
                }
            }
            for staged in &group {
                fs::rename(tmp.join(&staged.name), new.join(&staged.name))?;
            }
            File::open(new)?.sync_all()
        })();
        for staged in group {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
            };
            let _ = staged.done.send(answer);
        }
    }
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("fsync-rate: {message}");
            return ExitCode::from(2);
        }
    };
    let (tmp, new) = (options.dir.join("tmp"), options.dir.join("new"));
    for dir in [&tmp, &new] {
        if let Err(error) = fs::create_dir_all(dir) {
            eprintln!("fsync-rate: {}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let body = vec![b'x'; options.size];
    let (submit, queue) = mpsc::channel::<Staged>();
    let group = if options.mode == Mode::Each {
        None
    } else {
        let (mode, tmp, new) = (options.mode, tmp.clone(), new.clone());
        Some(std::thread::spawn(move || {
            committer(mode, &tmp, &new, &queue)
        }))
    };
    let started = Instant::now();
    let threads: Vec<_> = (0..options.writers)
        .map(|writer| {
            let (tmp, new, done, count, body, submit) = (
                tmp.clone(),
                new.clone(),
                Arc::clone(&done),
                Arc::clone(&count),
                body.clone(),
                submit.clone(),
            );
            let mode = options.mode;
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut index = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let name = format!("{writer}.{index}");
                    if mode == Mode::Each {
                        deliver(&tmp, &new, &name, &body)?;
                    } else {
                        let mut file = File::create(tmp.join(&name))?;
                        file.write_all(&body)?;
                        if mode == Mode::GroupDir {
                            file.sync_all()?;
                        }
                        let (answer, wait) = mpsc::channel();
                        submit
                            .send(Staged {
                                file,
                                name,
                                done: answer,
                            })
                            .map_err(|_| std::io::Error::other("committer stopped"))?;
                        wait.recv()
                            .map_err(|_| std::io::Error::other("committer stopped"))??;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    index += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(options.seconds));
    done.store(true, Ordering::Relaxed);
    let mut failed = None;
    for thread in threads {
        if let Ok(Err(error)) = thread.join() {
            failed = Some(error);
        }
    }
    drop(submit);
    if let Some(group) = group {
        let _ = group.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = fs::remove_dir_all(&options.dir);
    if let Some(error) = failed {
        eprintln!("fsync-rate: {error}");
        return ExitCode::FAILURE;
    }
    let deliveries = count.load(Ordering::Relaxed) as f64 / elapsed;
    let mode = match options.mode {
        Mode::Each => "each",
        Mode::GroupSyncfs => "group-syncfs",
        Mode::GroupFdatasync => "group-fdatasync",
        Mode::GroupDir => "group-dir",
    };
    if options.json {
        println!(
            "{{\"mode\":\"{mode}\",\"writers\":{},\"size\":{},\"deliveries_per_second\":{deliveries:.1}}}",
            options.writers, options.size,
        );
    } else if options.mode == Mode::Each {
        println!(
            "{} writers, {}-octet files: {deliveries:.0} deliveries/s (file fsync + rename + directory fsync), {:.0} fsyncs/s",
            options.writers,
            options.size,
            2.0 * deliveries
        );
    } else {
        let what = if options.mode == Mode::GroupDir {
            "own file fsync; renames and one directory fsync per group"
        } else {
            "one sync pass, renames and one directory fsync per group"
        };
        println!(
            "{} writers, {}-octet files, {mode}: {deliveries:.0} deliveries/s ({what})",
            options.writers, options.size,
        );
    }
    ExitCode::SUCCESS
}
