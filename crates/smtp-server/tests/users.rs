//! StaticUsers and the AUTH defences: bounded verification, no user
//! enumeration by timing, per-network failure throttling, bounded users
//! files and argon2 parameters, long AUTH lines.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use argon2::PasswordHasher as _;
use common::{Client, TestBackend, builder};
use smtp_server::smtp_proto::sasl;
use smtp_server::{
    AuthPolicy, AuthThrottle, Authenticator, ConnectionInfo, Credentials, PasswordLimits, Server,
    StaticUsers, UsersError,
};
use tokio::io::DuplexStream;

/// An argon2id PHC string with small parameters, so debug-build tests stay
/// fast; verification reads the parameters from the string.
fn hash(password: &str, memory_kib: u32, iterations: u32) -> String {
    let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let params = argon2::Params::new(memory_kib, iterations, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn info(ip: &str) -> ConnectionInfo {
    let ip: IpAddr = ip.parse().unwrap();
    ConnectionInfo::new(SocketAddr::new(ip, 40000), "192.0.2.1:25".parse().unwrap())
}

fn credentials(authzid: Option<&str>, username: &str, password: &str) -> Credentials {
    let credentials = Credentials::password(username, password);
    match authzid {
        Some(authzid) => credentials.with_authzid(authzid),
        None => credentials,
    }
}

/// A server with `users`, AUTH allowed without TLS (in-memory streams).
fn server(users: StaticUsers, throttle: AuthThrottle) -> Server<TestBackend> {
    builder(&TestBackend::new())
        .auth(users, AuthPolicy::new().allow_insecure(true))
        .auth_throttle(throttle)
        .build()
        .unwrap()
}

/// Opens an in-memory session from `ip`, greeted.
async fn session(server: &Server<TestBackend>, ip: &str) -> Client<DuplexStream> {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let server = server.clone();
    let info = info(ip);
    tokio::spawn(async move {
        let _ = server.serve_connection(server_side, info).await;
    });
    let mut client = Client::new(client);
    client.hello().await;
    client
}

/// One AUTH PLAIN attempt; the reply.
async fn auth_plain(client: &mut Client<DuplexStream>, user: &str, password: &str) -> String {
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, user, password)
        ))
        .await;
    client.reply().await
}

#[tokio::test]
async fn plain_users_and_the_authorization_identity_rule() {
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let info = info("192.0.2.10");
    let ok = |c: Credentials| {
        let users = users.clone();
        let info = info.clone();
        async move { users.authenticate(&info, "PLAIN", &c).await.is_ok() }
    };
    assert!(ok(credentials(None, "alice", "secret")).await);
    assert!(ok(credentials(Some("alice"), "alice", "secret")).await);
    assert!(!ok(credentials(None, "alice", "wrong")).await);
    assert!(!ok(credentials(None, "alice", "secret!")).await);
    assert!(!ok(credentials(None, "bob", "secret")).await);
    // Asking to act as another identity is refused even with the right
    // password (RFC 4616 §2).
    assert!(!ok(credentials(Some("admin"), "alice", "secret")).await);
    // A token is not a password, even one equal to the password.
    assert!(!ok(Credentials::oauth2("alice", "secret")).await);
}

#[tokio::test]
async fn argon2_users_over_the_wire() {
    let mut users = StaticUsers::new();
    users
        .add_argon2("alice", &hash("wonderland", 64, 1))
        .unwrap();
    let server = server(users, AuthThrottle::disabled());
    let mut client = session(&server, "192.0.2.10").await;
    assert!(
        auth_plain(&mut client, "alice", "builder")
            .await
            .starts_with("535 5.7.8")
    );
    assert!(
        auth_plain(&mut client, "alice", "wonderland")
            .await
            .starts_with("235 2.7.0")
    );
}

#[tokio::test]
async fn unknown_users_cost_a_verification_like_known_ones() {
    let mut users = StaticUsers::new();
    users
        .add_argon2("alice", &hash("wonderland", 8192, 2))
        .unwrap();
    let info = info("192.0.2.10");
    let time = |name: &'static str| {
        let users = users.clone();
        let info = info.clone();
        async move {
            let start = Instant::now();
            let result = users
                .authenticate(&info, "PLAIN", &credentials(None, name, "guess"))
                .await;
            assert!(result.is_err());
            start.elapsed()
        }
    };
    // Warm up, then take the best of five of each, interleaved (the least
    // disturbed by other load on the machine).
    time("alice").await;
    let before = users.stats().verifications;
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..5 {
        known = known.min(time("alice").await);
        unknown = unknown.min(time("nobody").await);
    }
    // Every attempt ran one argon2 verification, the unknown name too: the
    // deterministic part of the check.
    assert_eq!(users.stats().verifications - before, 10);
    // And the times are alike (without the dummy hash an unknown name
    // answers in microseconds, a known one in milliseconds).
    assert!(
        unknown * 3 >= known,
        "an unknown user answers much faster than a known one: {unknown:?} vs {known:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_are_bounded_and_do_not_starve_a_valid_login() {
    let limits = PasswordLimits {
        max_concurrent: 2,
        ..PasswordLimits::default()
    };
    let mut users = StaticUsers::with_limits(limits);
    users
        .add_argon2("alice", &hash("wonderland", 4096, 1))
        .unwrap();
    users.add_argon2("bob", &hash("builder", 4096, 1)).unwrap();
    let server = server(users.clone(), AuthThrottle::disabled());
    // What one login costs on this machine, unloaded.
    let mut single = Duration::MAX;
    for _ in 0..3 {
        let mut client = session(&server, "192.0.2.99").await;
        let start = Instant::now();
        assert!(
            auth_plain(&mut client, "bob", "builder")
                .await
                .starts_with("235")
        );
        single = single.min(start.elapsed());
    }

    // 150 connections from five addresses, each trying a wrong password.
    let mut attackers = Vec::new();
    for index in 0..150 {
        let server = server.clone();
        attackers.push(tokio::spawn(async move {
            let ip = format!("198.51.100.{}", index % 5 + 1);
            let mut client = session(&server, &ip).await;
            auth_plain(&mut client, "alice", "guess").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut valid = session(&server, "192.0.2.10").await;
    let start = Instant::now();
    let answer = auth_plain(&mut valid, "bob", "builder").await;
    let waited = start.elapsed();
    assert!(answer.starts_with("235"), "{answer}");
    for attacker in attackers {
        let reply = attacker.await.unwrap();
        assert!(reply.starts_with("535"), "{reply}");
    }
    let stats = users.stats();
    assert_eq!(stats.verifications, 154);
    assert!(
        stats.peak_in_flight <= 2,
        "{} verifications ran at once (each takes its argon2 memory)",
        stats.peak_in_flight
    );
    // The valid login queues behind about one attempt per attacking
    // network (five, two at a time), not behind all 150 (75 times one
    // login with two slots, more with the CPU shared by 150 threads).
    assert!(
        waited < single * 30,
        "valid login took {waited:?}, one login alone {single:?}"
    );
}

#[tokio::test]
async fn slow_verifications_time_out_with_454() {
    let limits = PasswordLimits {
        max_concurrent: 1,
        verify_timeout: Duration::from_millis(1),
        ..PasswordLimits::default()
    };
    let mut users = StaticUsers::with_limits(limits);
    // Tens of milliseconds, optimised or not.
    users
        .add_argon2("alice", &hash("wonderland", 16384, 4))
        .unwrap();
    let server = server(users.clone(), AuthThrottle::disabled());
    let mut client = session(&server, "192.0.2.10").await;
    let answer = auth_plain(&mut client, "alice", "wonderland").await;
    assert!(answer.starts_with("454 4.7.0"), "{answer}");
    assert_eq!(users.stats().timeouts, 1);
}

#[tokio::test]
async fn the_queue_for_a_verification_slot_times_out_with_454() {
    let limits = PasswordLimits {
        max_concurrent: 1,
        queue_timeout: Duration::from_millis(1),
        ..PasswordLimits::default()
    };
    let mut users = StaticUsers::with_limits(limits);
    users
        .add_argon2("alice", &hash("wonderland", 16384, 4))
        .unwrap();
    let first = {
        let users = users.clone();
        tokio::spawn(async move {
            users
                .authenticate(
                    &info("192.0.2.10"),
                    "PLAIN",
                    &credentials(None, "alice", "x"),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Another network: it waits for the only slot and gives up.
    let second = users
        .authenticate(
            &info("192.0.2.20"),
            "PLAIN",
            &credentials(None, "alice", "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(second.as_reply().map(|r| r.code()), Some(454));
    assert!(first.await.unwrap().is_err());
}

#[test]
fn argon2_parameters_are_bounded_at_load() {
    let mut users = StaticUsers::new();
    let salt_and_hash = "c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4";
    for (params, needle) in [
        ("m=4194304,t=2,p=1", "memory cost"),
        ("m=19456,t=4000000,p=1", "iteration count"),
        ("m=19456,t=2,p=64", "parallelism"),
    ] {
        let phc = format!("$argon2id$v=19${params}${salt_and_hash}");
        let err = users.add_argon2("mallory", &phc).unwrap_err();
        assert!(
            matches!(&err, UsersError::Hash { message, .. } if message.contains(needle)),
            "{err}"
        );
    }
    assert!(users.is_empty());
    // The same parameters pass under raised limits.
    let mut generous = StaticUsers::with_limits(PasswordLimits {
        argon2_max_memory_kib: 4 * 1024 * 1024,
        ..PasswordLimits::default()
    });
    generous
        .add_argon2(
            "mallory",
            &format!("$argon2id$v=19$m=4194304,t=2,p=1${salt_and_hash}"),
        )
        .unwrap();
}

#[test]
fn users_files_are_bounded_before_they_are_read() {
    let dir = std::env::temp_dir().join(format!("smtp-server-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let limits = PasswordLimits {
        max_file_size: 4096,
        max_line: 256,
        ..PasswordLimits::default()
    };
    // Larger than the cap.
    let big = dir.join("big");
    std::fs::write(&big, "#".repeat(5000)).unwrap();
    let err = StaticUsers::with_limits(limits.clone())
        .load_file(&big)
        .unwrap_err();
    assert!(
        matches!(err, UsersError::FileTooLarge { max: 4096, .. }),
        "{err}"
    );
    // An endless device is refused without reading it whole.
    if std::path::Path::new("/dev/zero").exists() {
        let err = StaticUsers::with_limits(limits.clone())
            .load_file(std::path::Path::new("/dev/zero"))
            .unwrap_err();
        assert!(matches!(err, UsersError::FileTooLarge { .. }), "{err}");
    }
    // A line past the cap.
    let long = dir.join("long");
    std::fs::write(&long, format!("# ok\nalice:{}\n", "x".repeat(300))).unwrap();
    let err = StaticUsers::with_limits(limits.clone())
        .load_file(&long)
        .unwrap_err();
    assert!(
        matches!(err, UsersError::Line { line: 2, ref message, .. } if message.contains("longer than 256")),
        "{err}"
    );
    // A good file loads.
    let good = dir.join("good");
    std::fs::write(
        &good,
        format!(
            "# accounts\n\n  alice:{}  \nbob:{}\n",
            hash("a", 64, 1),
            hash("b", 64, 1)
        ),
    )
    .unwrap();
    let mut users = StaticUsers::with_limits(limits);
    users.load_file(&good).unwrap();
    assert_eq!(users.len(), 2);
    let debug = format!("{users:?}");
    assert!(
        debug.contains("alice") && !debug.contains("argon2id"),
        "{debug}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn failures_are_throttled_across_connections() {
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let throttle = AuthThrottle {
        max_failures: 3,
        delay: Duration::from_millis(40),
        delay_max: Duration::from_millis(80),
        ..AuthThrottle::default()
    };
    let server = server(users, throttle);
    // One failure per connection: the per-connection limit never fires,
    // the shared count does.
    let mut delays = Vec::new();
    for _ in 0..3 {
        let mut client = session(&server, "203.0.113.5").await;
        let start = Instant::now();
        assert!(
            auth_plain(&mut client, "alice", "guess")
                .await
                .starts_with("535")
        );
        delays.push(start.elapsed());
    }
    assert!(delays[0] >= Duration::from_millis(40), "{delays:?}");
    assert!(delays[1] >= Duration::from_millis(80), "{delays:?}");
    // Locked out now: even the right password is refused, on a new
    // connection, at once.
    let mut client = session(&server, "203.0.113.5").await;
    let answer = auth_plain(&mut client, "alice", "secret").await;
    assert!(answer.starts_with("454 4.7.0"), "{answer}");
    // An IPv4-mapped IPv6 address is the same client.
    let mut mapped = session(&server, "::ffff:203.0.113.5").await;
    assert!(
        auth_plain(&mut mapped, "alice", "secret")
            .await
            .starts_with("454")
    );
    // Another address is not affected.
    let mut other = session(&server, "203.0.113.6").await;
    assert!(
        auth_plain(&mut other, "alice", "secret")
            .await
            .starts_with("235")
    );
}

#[tokio::test]
async fn ipv6_clients_are_counted_by_slash_64() {
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let throttle = AuthThrottle {
        max_failures: 2,
        delay: Duration::ZERO,
        ..AuthThrottle::default()
    };
    let server = server(users, throttle);
    for ip in ["2001:db8:5:6::1", "2001:db8:5:6::2"] {
        let mut client = session(&server, ip).await;
        assert!(
            auth_plain(&mut client, "alice", "guess")
                .await
                .starts_with("535")
        );
    }
    let mut same_64 = session(&server, "2001:db8:5:6:ffff::9").await;
    assert!(
        auth_plain(&mut same_64, "alice", "secret")
            .await
            .starts_with("454")
    );
    let mut next_64 = session(&server, "2001:db8:5:7::1").await;
    assert!(
        auth_plain(&mut next_64, "alice", "secret")
            .await
            .starts_with("235")
    );
}

#[tokio::test]
async fn auth_lines_may_carry_a_12288_octet_response() {
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let server = server(users, AuthThrottle::disabled());
    let mut client = session(&server, "192.0.2.10").await;
    // A long initial response (an OAuth token, say), RFC 4954 §4: the
    // server decodes it and refuses it as credentials, not as a long line.
    let long = "A".repeat(12_000);
    client.send(format!("AUTH PLAIN {long}\r\n")).await;
    let answer = client.reply().await;
    assert!(
        answer.starts_with("501") || answer.starts_with("535"),
        "{answer}"
    );
    assert!(!answer.contains("too long"), "{answer}");
    // At the limit itself: a 12288-octet response still fits; LOGIN then
    // asks for the password, and `*` cancels.
    let at_limit = "A".repeat(12_288);
    client.send(format!("AUTH LOGIN {at_limit}\r\n")).await;
    client.expect("334 ").await;
    client.send("*\r\n").await;
    client.expect("501").await;
    // Other commands keep the ordinary limit.
    client.send(format!("NOOP {}\r\n", "x".repeat(4000))).await;
    client.expect("500 5.5.2").await;
    // And an AUTH line past the SASL limit is refused as too long.
    client
        .send(format!("AUTH PLAIN {}\r\n", "A".repeat(13_000)))
        .await;
    client.expect("500 5.5.2").await;
}

#[tokio::test]
async fn a_dual_stack_listener_counts_ipv4_clients_as_ipv4() {
    // On `[::]` an IPv4 client appears as `::ffff:127.0.0.1`; its failures
    // must count under 127.0.0.1 whichever way it connects. Skipped where
    // the machine has no IPv6.
    let users = StaticUsers::from_plain([("alice", "secret")]).unwrap();
    let throttle = AuthThrottle {
        max_failures: 1,
        delay: Duration::ZERO,
        ..AuthThrottle::default()
    };
    let server = builder(&TestBackend::new())
        .listen("[::]:0".parse().unwrap())
        .listen("127.0.0.1:0".parse().unwrap())
        .auth(users, AuthPolicy::new().allow_insecure(true))
        .auth_throttle(throttle)
        .build()
        .unwrap();
    let Ok(listening) = server.bind().await else {
        eprintln!("no IPv6 listener here; skipped");
        return;
    };
    let handle = listening.spawn();
    let dual_port = handle.local_addrs()[0].port();
    let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", dual_port)).await else {
        eprintln!("the IPv6 listener is not dual-stack here; skipped");
        return;
    };
    let mut client = Client::new(stream);
    client.hello().await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "guess")
        ))
        .await;
    client.expect("535").await;
    // The plain IPv4 listener sees 127.0.0.1: the same network, refused.
    let stream = tokio::net::TcpStream::connect(handle.local_addrs()[1])
        .await
        .unwrap();
    let mut client = Client::new(stream);
    client.hello().await;
    client
        .send(format!(
            "AUTH PLAIN {}\r\n",
            sasl::plain_response(None, "alice", "secret")
        ))
        .await;
    client.expect("454 4.7.0").await;
    handle.abort().await;
}
