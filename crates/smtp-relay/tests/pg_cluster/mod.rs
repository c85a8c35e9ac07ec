//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, `postgres` on a free loopback port, one fresh database per
//! test, and a watchdog that stops the cluster and removes its directory
//! when the test process exits (whether it passed, failed or panicked).
//!
//! When running as root the server runs as the `postgres` user (PostgreSQL
//! refuses to run as root), through `runuser`. Without the binaries the
//! tests are skipped with a loud message, unless `FERRY_REQUIRE_POSTGRES`
//! is set (CI sets it): then a missing PostgreSQL fails them.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
}

fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
        .collect();
    found.sort();
    if let Some(dir) = found.pop() {
        return Some(dir);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("initdb").exists().then_some(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no user {user}"))
}

/// Runs a PostgreSQL program, as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn start() -> Option<Cluster> {
    let Some(bin) = bin_dir() else {
        if std::env::var_os("FERRY_REQUIRE_POSTGRES").is_some() {
            panic!("FERRY_REQUIRE_POSTGRES is set but no PostgreSQL binaries were found");
        }
        eprintln!(
            "\n\n!!!!!!!! SKIPPING PostgreSQL tests: no initdb/pg_ctl found \
             (install the Debian package `postgresql`) !!!!!!!!\n"
        );
        return None;
    };
    let dir = std::env::temp_dir().join(format!(
        "ferry-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        std::os::unix::fs::chown(
            &dir,
            Some(id_of("postgres", "-u")),
            Some(id_of("postgres", "-g")),
        )
        .unwrap();
    }
    let data = dir.join("data");
    let status = pg_command(&bin, "initdb")
        .args(["-D"])
        .arg(&data)
        .args(["-U", "ferry", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("initdb runs");
    assert!(status.success(), "initdb failed");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
         -c shared_buffers=64MB",
        dir.display()
    );
    let status = pg_command(&bin, "pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("log"))
        .args(["-w", "-t", "60", "start"])
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl runs");
    assert!(status.success(), "the test cluster did not start");
    // The watchdog outlives this process by design: it stops the cluster
    // and removes its directory once the test process is gone.
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
         {runuser} {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        runuser = if is_root() {
            "runuser -u postgres --"
        } else {
            ""
        },
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let status = Command::new("sh")
        .args(["-c", &format!("( {stop} ) </dev/null >/dev/null 2>&1 &")])
        .status()
        .expect("the watchdog starts");
    assert!(status.success());
    Some(Cluster { port, dir })
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The cluster of this test process, started on first use.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER.get_or_init(start).as_ref()
}

/// A new, empty database; its connection string. `None` when PostgreSQL
/// is not installed (and not required).
pub async fn database() -> Option<String> {
    let cluster = tokio::task::spawn_blocking(cluster).await.unwrap()?;
    let name = format!("t{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    let admin = format!(
        "host=127.0.0.1 port={} user=ferry dbname=postgres",
        cluster.port
    );
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test cluster accepts connections");
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    Some(format!(
        "host=127.0.0.1 port={} user=ferry dbname={name}",
        cluster.port
    ))
}

/// A connection for assertions on the tables themselves.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
