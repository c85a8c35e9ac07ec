//! `cargo xtask crash-test [--rounds N] [--clients N]`: proves that a 250
//! from `ferry relay` means the message is on stable storage.
//!
//! It starts `ferry serve --maildir` as a counting sink, and `ferry relay
//! --durability sync` routed to it. Several client threads submit messages
//! and log every one the relay answered `250` for. The relay is killed with
//! SIGKILL and restarted on the same spool, N times: in turn at a random
//! moment, and at a named point of the spool's commit path (the relay
//! started with `FERRY_RELAY_CRASH_AT=write|sync|answer:K` kills itself
//! with SIGKILL at the K-th commit to reach that point: before the batch is
//! written, written but not synced, synced but no session answered). Then
//! the load stops, the relay drains, and every acknowledged message must be
//! in the sink at least once. Duplicates are counted (allowed only for
//! deliveries in flight at a kill, RFC 5321 §6.1).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A tiny xorshift generator: kill times need no better randomness.
struct Random(u64);

impl Random {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Random(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// How one round kills the relay.
#[derive(Debug, Clone)]
enum Kill {
    /// SIGKILL from here after a random pause.
    Random,
    /// The relay kills itself at the K-th commit reaching this point.
    At(&'static str, u64),
}

/// The environment variable `ferry relay` reads its kill point from.
const CRASH_AT_ENV: &str = "FERRY_RELAY_CRASH_AT";

/// The commit points, in the order the rounds use them.
const POINTS: [&str; 3] = ["write", "sync", "answer"];

/// Round `round` (from 0): a random kill, then one at each commit point,
/// in turn.
fn kill_for(round: u32, random: &mut Random) -> Kill {
    match round % 4 {
        0 => Kill::Random,
        n => Kill::At(POINTS[n as usize - 1], 1 + random.below(30)),
    }
}

/// A child process that prints `listening on ADDR`; `crash_at` goes to
/// its environment as [`CRASH_AT_ENV`].
fn spawn_with(
    ferry: &Path,
    args: &[String],
    crash_at: Option<String>,
) -> Result<(Child, SocketAddr), String> {
    let mut command = Command::new(ferry);
    command.args(args).env_remove(CRASH_AT_ENV);
    if let Some(point) = crash_at {
        command.env(CRASH_AT_ENV, point);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", ferry.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("no `listening on` line".to_owned());
        }
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let addr = rest
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|e| format!("{line}: {e}"))?;
                    // Keep reading so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return Ok((child, addr));
                }
            }
            _ => {
                let _ = child.kill();
                return Err(format!("{} exited before listening", ferry.display()));
            }
        }
    }
}

/// A child process that prints `listening on ADDR`.
fn spawn(ferry: &Path, args: &[String]) -> Result<(Child, SocketAddr), String> {
    spawn_with(ferry, args, None)
}

/// Starts the relay for a round that ends with `kill`.
fn spawn_relay(ferry: &Path, args: &[String], kill: &Kill) -> Result<(Child, SocketAddr), String> {
    match kill {
        Kill::Random => spawn_with(ferry, args, None),
        Kill::At(point, count) => spawn_with(ferry, args, Some(format!("{point}:{count}"))),
    }
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line);
        }
    }
}

/// Submits one message; `Ok(true)` only for a 250 after the data.
fn submit(addr: SocketAddr, token: &str) -> std::io::Result<bool> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    if !read_reply(&mut reader)?.starts_with("220") {
        return Ok(false);
    }
    let mut step = |line: &str, expect: &str| -> std::io::Result<bool> {
        writer.write_all(line.as_bytes())?;
        Ok(read_reply(&mut reader)?.starts_with(expect))
    };
    let ok = step("EHLO crash.test\r\n", "250")?
        && step("MAIL FROM:<load@crash.test>\r\n", "250")?
        && step("RCPT TO:<sink@sink.test>\r\n", "250")?
        && step("DATA\r\n", "354")?;
    if !ok {
        return Ok(false);
    }
    let body = format!(
        "Subject: {token}\r\nX-Token: {token}\r\n\r\n{}\r\n.\r\n",
        "x".repeat(512)
    );
    let accepted = step(&body, "250")?;
    let _ = step("QUIT\r\n", "221");
    Ok(accepted)
}

/// The tokens of the messages in the sink's Maildir, with their counts.
fn sink_tokens(maildir: &Path) -> HashMap<String, usize> {
    let mut tokens = HashMap::new();
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return tokens;
    };
    for entry in entries.flatten() {
        let mut text = String::new();
        if std::fs::File::open(entry.path())
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            continue;
        }
        if let Some(token) = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Token: "))
            .map(|t| t.trim().to_owned())
        {
            *tokens.entry(token).or_insert(0) += 1;
        }
    }
    tokens
}

/// Runs the crash test.
pub(crate) fn run(ferry: &Path, args: &[String]) -> Result<(), String> {
    let mut rounds = 5u32;
    let mut clients = 4usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--rounds needs a number")?;
            }
            "--clients" => {
                clients = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--clients needs a number")?;
            }
            other => return Err(format!("crash-test: unknown argument {other}")),
        }
    }
    let work = std::env::temp_dir().join(format!(
        "ferry-crash-test-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = run_in(ferry, &work, rounds, clients);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "crash-test: the spool and sink are left in {}",
            work.display()
        );
    }
    result
}

fn run_in(ferry: &Path, work: &Path, rounds: u32, clients: usize) -> Result<(), String> {
    let sink_dir = work.join("sink");
    let spool = work.join("spool");
    let (mut sink, sink_addr) = spawn(
        ferry,
        &[
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--no-tls".into(),
            "--maildir".into(),
            sink_dir.display().to_string(),
        ],
    )?;
    let relay_args: Vec<String> = vec![
        "relay".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--no-tls".into(),
        "--hostname".into(),
        "relay.crash.test".into(),
        "--spool".into(),
        spool.display().to_string(),
        "--durability".into(),
        "sync".into(),
        "--route".into(),
        format!("sink.test={sink_addr}"),
        "--retry-schedule".into(),
        "1s".into(),
    ];
    let mut random = Random::new();
    let mut kill = kill_for(0, &mut random);
    let (relay, relay_addr) = spawn_relay(ferry, &relay_args, &kill)?;
    let relay = Arc::new(Mutex::new(relay));
    let address = Arc::new(Mutex::new(relay_addr));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for client in 0..clients {
        let address = Arc::clone(&address);
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let token = format!("c{client}-m{n}");
                n += 1;
                let addr = *address.lock().unwrap_or_else(|e| e.into_inner());
                match submit(addr, &token) {
                    Ok(true) => acknowledged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(token),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }
    let mut named_kills = 0u32;
    for round in 1..=rounds {
        let how = match &kill {
            Kill::Random => {
                std::thread::sleep(Duration::from_millis(200 + random.below(800)));
                let mut child = relay.lock().unwrap_or_else(|e| e.into_inner());
                // SIGKILL: no shutdown code runs.
                let _ = child.kill();
                let _ = child.wait();
                "at a random moment".to_owned()
            }
            Kill::At(point, count) => {
                // The relay kills itself under the load; wait for it.
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut child = relay.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        named_kills += 1;
                        break format!("at commit {count} reaching `{point}`");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break format!("by hand: commit {count} never reached `{point}`");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let acked = acknowledged.lock().unwrap_or_else(|e| e.into_inner()).len();
        println!(
            "crash-test: round {round}/{rounds}: killed the relay {how} ({acked} acknowledged so far)"
        );
        kill = if round == rounds {
            Kill::Random
        } else {
            kill_for(round, &mut random)
        };
        // The last relay runs without a kill point and drains the queue.
        let (child, addr) = if round == rounds {
            spawn(ferry, &relay_args)?
        } else {
            spawn_relay(ferry, &relay_args, &kill)?
        };
        *relay.lock().unwrap_or_else(|e| e.into_inner()) = child;
        *address.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let acknowledged: Vec<String> = acknowledged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let wanted: HashSet<&String> = acknowledged.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tokens = sink_tokens(&sink_dir);
    while wanted.iter().any(|t| !tokens.contains_key(*t)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        tokens = sink_tokens(&sink_dir);
    }
    {
        let mut child = relay.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let missing: Vec<&&String> = wanted
        .iter()
        .filter(|t| !tokens.contains_key(**t))
        .collect();
    let duplicates: usize = tokens.values().map(|n| n.saturating_sub(1)).sum();
    println!(
        "crash-test: {} acknowledged, {} in the sink ({} duplicates), {} missing, {rounds} kills ({named_kills} at commit points)",
        wanted.len(),
        tokens.len(),
        duplicates,
        missing.len()
    );
    if wanted.is_empty() {
        return Err("crash-test: no message was acknowledged; the load never ran".to_owned());
    }
    // A duplicate comes only from an attempt in flight at a kill, and at
    // most --max-per-destination (20) attempts run at once.
    let in_flight_bound = rounds as usize * 20;
    if duplicates > in_flight_bound {
        return Err(format!(
            "crash-test: {duplicates} duplicates, more than {in_flight_bound} attempts could have been in flight"
        ));
    }
    if !missing.is_empty() {
        let sample: Vec<&str> = missing.iter().take(10).map(|t| t.as_str()).collect();
        return Err(format!(
            "crash-test: {} acknowledged messages never reached the sink, e.g. {sample:?}",
            missing.len()
        ));
    }
    Ok(())
}

/// The `ferry` binary of a debug build.
pub(crate) fn ferry_binary(root: &Path) -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("debug")
        .join("ferry")
}
