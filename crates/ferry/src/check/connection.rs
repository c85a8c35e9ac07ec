//! Connection checks: TCP reachability and the greeting (RFC 5321 §3.1,
//! §4.3.1, §4.5.3.2).

use std::time::Duration;

use smtp_proto::Reply;

use super::conversation::{ProbeError, show};
use super::report::{CheckResult, Section, Status};

/// RFC 5321 §4.5.3.2.1: a client waits five minutes for the 220 greeting.
pub const GREETING_WAIT: Duration = Duration::from_secs(300);

/// A greeting slower than this is reported (as info, not as a fault):
/// servers delay on purpose to catch clients that talk first, and
/// senders following RFC 5321 wait five minutes.
pub const SLOW_GREETING: Duration = Duration::from_secs(30);

/// The result of the TCP connect.
pub fn tcp(target: &str, port: u16, result: Result<Duration, &ProbeError>) -> CheckResult {
    match result {
        Ok(elapsed) => CheckResult::new(
            "connection.tcp",
            target,
            Section::Connection,
            Status::Pass,
            format!("connected in {} ms", elapsed.as_millis()),
            "RFC 5321 §3.1",
        ),
        Err(err) => {
            let mut fix = String::from(
                "Check that the server listens on this address and port and that no firewall drops it.",
            );
            if port == 25 {
                fix.push_str(
                    " Many home, office and cloud networks block outbound port 25: \
                     if every MX fails this way, run the check from another network.",
                );
            }
            CheckResult::new(
                "connection.tcp",
                target,
                Section::Connection,
                Status::Fail,
                format!("cannot connect: {err}"),
                "RFC 5321 §3.1",
            )
            .fix(fix)
        }
    }
}

/// The greeting, with how long it took.
pub fn greeting(target: &str, reply: Result<&Reply, &ProbeError>, delay: Duration) -> CheckResult {
    let rfc = "RFC 5321 §3.1, §4.5.3.2.1";
    match reply {
        Ok(reply) if reply.code() == 220 => {
            let evidence = format!("{} after {} ms", show(reply), delay.as_millis());
            if delay > SLOW_GREETING {
                CheckResult::new(
                    "connection.greeting",
                    target,
                    Section::Connection,
                    Status::Info,
                    format!(
                        "{evidence}: a deliberate delay is allowed (senders wait up to 5 minutes), \
                         but impatient clients give up"
                    ),
                    rfc,
                )
            } else {
                CheckResult::new(
                    "connection.greeting",
                    target,
                    Section::Connection,
                    Status::Pass,
                    evidence,
                    rfc,
                )
            }
        }
        Ok(reply) => CheckResult::new(
            "connection.greeting",
            target,
            Section::Connection,
            Status::Fail,
            format!("{} instead of 220: the server refuses this client", show(reply)),
            rfc,
        )
        .fix("Find out why the server refuses connections (a blocklist, a connection limit, a closed service)."),
        Err(err) => CheckResult::new(
            "connection.greeting",
            target,
            Section::Connection,
            Status::Fail,
            format!("no greeting: {err}"),
            rfc,
        )
        .fix("Make the server send its 220 greeting within 5 minutes of the connection."),
    }
}

/// The name the server gives in its greeting (first word of the 220 text).
pub fn greeting_name(reply: &Reply) -> Option<String> {
    reply
        .lines()
        .first()
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_greeting_delay_is_tolerated() {
        let reply = Reply::plain(220, "mx.example.com ESMTP");
        let quick = greeting("t", Ok(&reply), Duration::from_millis(5));
        assert_eq!(quick.status, Status::Pass);
        let slow = greeting("t", Ok(&reply), Duration::from_secs(90));
        assert_eq!(slow.status, Status::Info);
        let refused = greeting("t", Ok(&Reply::plain(554, "go away")), Duration::ZERO);
        assert_eq!(refused.status, Status::Fail);
        assert!(refused.fix.is_some());
    }

    #[test]
    fn port_25_failure_mentions_blocked_outbound_port() {
        let err = ProbeError::Timeout(Duration::from_secs(1));
        let result = tcp("t", 25, Err(&err));
        assert_eq!(result.status, Status::Fail);
        assert!(result.fix.unwrap().contains("outbound port 25"));
        let result = tcp("t", 587, Err(&err));
        assert!(!result.fix.unwrap().contains("outbound port 25"));
    }
}
