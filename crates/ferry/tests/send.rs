//! `ferry send` and `ferry bench` as processes against a scripted SMTP
//! server on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread;
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A one-connection SMTP server: refuses recipients whose local part
/// starts with `perm` (550) or `temp` (450), records the message data.
fn scripted_server() -> (String, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        serve_one(stream)
    });
    (addr, handle)
}

fn serve_one(stream: TcpStream) -> Vec<u8> {
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let mut data = Vec::new();
    out.write_all(b"220 scripted ESMTP\r\n").unwrap();
    // Bounded: a well-behaved session needs far fewer lines.
    for _ in 0..100 {
        let mut line = String::new();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-scripted\r\n250 ENHANCEDSTATUSCODES\r\n"
        } else if upper.starts_with("MAIL") {
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:<PERM") {
            b"550 5.1.1 no such user\r\n"
        } else if upper.starts_with("RCPT TO:<TEMP") {
            b"450 4.2.1 try later\r\n"
        } else if upper.starts_with("RCPT") {
            b"250 2.1.5 ok\r\n"
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n").unwrap();
            loop {
                let mut body_line = Vec::new();
                if input.read_until(b'\n', &mut body_line).unwrap_or(0) == 0 {
                    return data;
                }
                if body_line == b".\r\n" {
                    break;
                }
                data.extend_from_slice(&body_line);
            }
            if data.windows(13).any(|w| w == b"REJECT-AT-END") {
                b"554 5.6.0 content refused\r\n"
            } else {
                b"250 2.0.0 queued as 1\r\n"
            }
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 2.0.0 ok\r\n"
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 2.0.0 bye\r\n").unwrap();
            break;
        } else {
            b"502 5.5.1 not here\r\n"
        };
        out.write_all(reply).unwrap();
    }
    data
}

fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn all_accepted_is_exit_0_and_data_is_stuffed() {
    let (addr, server) = scripted_server();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("m.eml");
    std::fs::write(&raw, b"Subject: t\n\n.dot\nend").unwrap();
    let out = ferry(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--raw",
        raw.to_str().unwrap(),
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(
        report,
        serde_json::json!({
            "recipients": [{"address": "b@example.com", "status": "accepted", "code": 250,
                            "enhanced": "2.0.0", "message": "queued as 1"}],
            "reply": {"code": 250, "enhanced": "2.0.0", "message": "queued as 1"},
            "error": null,
            "exit": 0,
        })
    );
    // CRLF-normalised, dot-stuffed, final CRLF added.
    assert_eq!(
        server.join().unwrap(),
        b"Subject: t\r\n\r\n..dot\r\nend\r\n"
    );
}

#[test]
fn permanent_rejection_is_exit_1() {
    let (addr, server) = scripted_server();
    let out = ferry(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--to",
        "perm@example.com",
        "--body",
        "x",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["exit"], 1);
    assert_eq!(report["recipients"][0]["status"], "accepted");
    assert_eq!(report["recipients"][1]["status"], "rejected");
    assert_eq!(report["recipients"][1]["code"], 550);
    assert_eq!(report["recipients"][1]["enhanced"], "5.1.1");
    assert_eq!(report["recipients"][1]["message"], "no such user");
    assert!(!server.join().unwrap().is_empty());
}

#[test]
fn transient_rejection_is_exit_75_with_one_clear_line() {
    let (addr, server) = scripted_server();
    let out = ferry(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--to",
        "temp@example.com",
        "--body",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(75));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("recipient temp@example.com rejected: 450 4.2.1 try later"),
        "{stderr}"
    );
    // The recipient that did get the message is named.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "delivered to b@example.com\n");
    server.join().unwrap();
}

#[test]
fn a_refusal_at_the_end_of_data_is_the_final_reply() {
    let (addr, server) = scripted_server();
    let out = ferry(&[
        "send",
        "--server",
        &addr,
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--body",
        "REJECT-AT-END",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["reply"]["code"], 554, "{report}");
    assert_eq!(report["reply"]["enhanced"], "5.6.0");
    assert_eq!(report["error"]["kind"], "rejected");
    server.join().unwrap();
}

#[test]
fn starttls_required_but_not_offered_is_exit_75() {
    let (addr, server) = scripted_server();
    let out = ferry(&[
        "send",
        "--server",
        &addr,
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--json",
    ]);
    // TLS trouble is deferred (as Postfix does), never a bounce.
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(json(&out)["error"]["kind"], "tls");
    assert!(
        server.join().unwrap().is_empty(),
        "message data went out in plaintext"
    );
}

#[test]
fn usage_error_connects_to_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    for bad in [
        &["--to", "b@example.com\r\nRSET"][..],
        &["--to", "not-an-address"],
        &["--to", "b@example.com", "--header", "Bcc: x@example.com"],
    ] {
        let out = ferry(
            &[
                &[
                    "send",
                    "--server",
                    &addr,
                    "--tls",
                    "none",
                    "--from",
                    "a@example.com",
                    "--json",
                ],
                bad,
            ]
            .concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert_eq!(json(&out)["error"]["kind"], "usage");
    }
    assert!(
        listener.accept().is_err(),
        "ferry connected despite a usage error"
    );
}

#[test]
fn refused_connection_is_exit_75() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ferry(&[
        "send",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--tls",
        "none",
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(75));
    let report = json(&out);
    assert_eq!(report["error"]["kind"], "connect");
    assert_eq!(
        report["error"]["message"],
        format!("connection refused: 127.0.0.1:{port}")
    );
}

#[test]
fn bench_counts_failures_by_reply() {
    let (addr, server) = scripted_server();
    // One connection, one worker: every message is refused with 550.
    let out = ferry(&[
        "bench",
        "--server",
        &addr,
        "--tls",
        "none",
        "--messages",
        "3",
        "--concurrency",
        "1",
        "--to",
        "perm@example.com",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["messages"], 3);
    assert_eq!(report["failed"], 3);
    assert_eq!(report["errors"]["550 5.1.1"], 3);
    drop(server);
}

/// A one-connection server whose reply to DATA is `data_reply` and, when
/// that is a 354, whose reply to the end of data is `end_reply`.
fn misbehaving_server(
    data_reply: &'static [u8],
    end_reply: &'static [u8],
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut input = BufReader::new(stream);
        out.write_all(b"220 scripted ESMTP\r\n").unwrap();
        for _ in 0..50 {
            let mut line = String::new();
            if input.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                out.write_all(b"250 scripted\r\n").unwrap();
            } else if upper.starts_with("DATA") {
                out.write_all(data_reply).unwrap();
                if !data_reply.starts_with(b"354") {
                    continue;
                }
                loop {
                    let mut body_line = Vec::new();
                    if input.read_until(b'\n', &mut body_line).unwrap_or(0) == 0
                        || body_line == b".\r\n"
                    {
                        break;
                    }
                }
                out.write_all(end_reply).unwrap();
            } else if upper.starts_with("QUIT") {
                out.write_all(b"221 bye\r\n").unwrap();
                return;
            } else {
                out.write_all(b"250 ok\r\n").unwrap();
            }
        }
    });
    (addr, handle)
}

fn send_to(server: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "send",
        "--server",
        server,
        "--from",
        "a@example.com",
        "--to",
        "b@example.com",
        "--body",
        "x",
    ];
    args.extend_from_slice(extra);
    ferry(&args)
}

#[test]
fn a_second_354_is_an_unknown_outcome_exit_75_never_delivered() {
    let (addr, server) = misbehaving_server(b"354 go\r\n", b"354 go again\r\n");
    let out = send_to(&addr, &["--tls", "none"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stdout} {stderr}");
    assert!(!stdout.contains("delivered"), "{stdout}");
    assert!(!stderr.contains("rejected: 354"), "{stderr}");
    assert!(
        stderr.contains("whether the message was delivered is unknown"),
        "{stderr}"
    );
    server.join().unwrap();
}

#[test]
fn a_garbled_end_of_data_reply_is_transient() {
    let (addr, server) = misbehaving_server(b"354 go\r\n", b"2x0 what\r\n");
    let out = send_to(&addr, &["--tls", "none", "--json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(75), "{report}");
    assert_eq!(report["error"]["kind"], "protocol");
    assert_eq!(report["recipients"][0]["status"], "unknown");
    server.join().unwrap();
}

#[test]
fn a_250_to_data_is_a_protocol_error_not_a_delivery() {
    let (addr, server) = misbehaving_server(b"250 sure\r\n", b"");
    let out = send_to(&addr, &["--tls", "none", "--json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(75), "{report}");
    assert_eq!(report["error"]["kind"], "protocol");
    assert_ne!(report["recipients"][0]["status"], "accepted");
    server.join().unwrap();
}

#[test]
fn the_server_may_be_a_connection_url() {
    let (addr, server) = scripted_server();
    let url = format!("smtp://{addr}?tls=none");
    let out = send_to(&url, &["--json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["recipients"][0]["status"], "accepted");
    server.join().unwrap();
    // A URL without tls= requires STARTTLS, which this server lacks.
    let (addr, server) = scripted_server();
    let out = send_to(&format!("smtp://{addr}"), &["--json"]);
    assert_eq!(json(&out)["error"]["kind"], "tls");
    drop(server);
    let out = send_to("ftp://example.com", &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)["error"]["kind"], "usage");
}

#[test]
fn auth_offered_only_after_starttls_says_to_use_starttls() {
    // The scripted server offers neither AUTH nor STARTTLS; this one
    // offers STARTTLS only, as servers that hide AUTH until TLS do.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut input = BufReader::new(stream);
        out.write_all(b"220 scripted ESMTP\r\n").unwrap();
        let mut line = String::new();
        input.read_line(&mut line).unwrap();
        out.write_all(b"250-scripted\r\n250 STARTTLS\r\n").unwrap();
        let mut rest = String::new();
        let _ = input.read_line(&mut rest);
        rest
    });
    let out = send_to(
        &addr,
        &[
            "--tls",
            "none",
            "--user",
            "u",
            "--password",
            "p",
            "--allow-insecure-auth",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("offers AUTH only after STARTTLS: use --tls starttls"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    // Nothing but QUIT followed.
    let rest = server.join().unwrap();
    assert!(rest.is_empty() || rest.starts_with("QUIT"), "{rest:?}");
}
