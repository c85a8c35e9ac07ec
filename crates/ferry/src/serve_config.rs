//! How `ferry serve` and `ferry relay` turn their listener flags into the server's limits, timeouts
//! and stress settings, and the checks it makes at start.

use std::time::Duration;

use smtp_server::{Limits, Timeouts};

use crate::cli::ListenerArgs;
use crate::maildir::{self, Maildir};

/// Warnings about `--proxy-protocol` networks: one that trusts every
/// source (any client may then forge its address), and one with host bits
/// set (it trusts the whole network, which may not be what was meant).
pub(crate) fn proxy_warnings(trusted: &[smtp_server::IpNet]) -> Vec<String> {
    let mut warnings = Vec::new();
    for net in trusted {
        if net.prefix_len() == 0 {
            warnings.push(format!(
                "--proxy-protocol {net} trusts every source: any client can forge its \
                 address with a PROXY header"
            ));
        } else if net.addr() != net.network() {
            warnings.push(format!(
                "--proxy-protocol {net} has host bits set: it trusts all of {}",
                net.trunc()
            ));
        }
    }
    warnings
}

/// Whole seconds as a duration.
pub(crate) fn seconds(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// Sets the limits from the flags beyond size, recipients and
/// connections per address; `max_connections` is what fits in the file
/// descriptor limit.
pub(crate) fn apply_limit_flags(limits: &mut Limits, args: &ListenerArgs, max_connections: u64) {
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    limits.max_connections = count(max_connections);
    limits.max_line = count(args.max_line_length);
    limits.max_errors = args.max_errors;
    limits.max_auth_failures = args.max_auth_failures;
    limits.max_junk_commands = args.max_junk_commands;
    limits.min_data_rate = args.min_data_rate;
    limits.proxy_header_max = count(args.proxy_header_max);
}

/// The server's timeouts from the flags: a specific flag wins over
/// `--timeout`, which wins over the default.
pub(crate) fn timeouts_from(args: &ListenerArgs) -> Timeouts {
    let mut timeouts = Timeouts::default();
    let pick = |specific: Option<u64>, default: Duration| {
        specific.or(args.timeout).map_or(default, seconds)
    };
    timeouts.command = pick(args.command_timeout, timeouts.command);
    timeouts.data_block = pick(args.data_timeout, timeouts.data_block);
    timeouts.data_termination = pick(args.data_termination_timeout, timeouts.data_termination);
    timeouts.session = seconds(args.session_timeout);
    timeouts.tls_handshake = seconds(args.tls_handshake_timeout);
    timeouts.proxy_header = seconds(args.proxy_header_timeout);
    timeouts.greeting_delay = seconds(args.greeting_delay);
    timeouts
}

/// Stress mode from the flags.
pub(crate) fn stress_from(args: &ListenerArgs) -> smtp_server::Stress {
    smtp_server::Stress {
        enabled: !args.no_stress,
        high_water: args
            .stress_connections
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        timeout: seconds(args.stress_timeout),
        ..smtp_server::Stress::default()
    }
}

/// How often `tmp/` is swept for crash leftovers while serving.
pub(crate) const TMP_CLEAN_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Removes crash leftovers from `tmp/`, logging what it did.
pub(crate) fn clean_tmp(maildir: &Maildir) {
    match maildir.clean_tmp(maildir::TMP_MAX_AGE) {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed leftovers older than 36 hours from tmp/"),
        Err(err) => tracing::warn!(error = %err, "cannot clean tmp/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::StoreBackend;
    use crate::store::Store;
    use smtp_server::smtp_proto::command::MailParameters;
    use smtp_server::{Backend, ConnectionInfo, IpNet, Session};

    #[test]
    fn proxy_networks_that_trust_too_much_are_warned_about() {
        let nets: Vec<IpNet> = [
            "0.0.0.0/0",
            "::/0",
            "10.1.2.3/8",
            "127.0.0.1/32",
            "fd00::/8",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let warnings = proxy_warnings(&nets);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("0.0.0.0/0 trusts every source"));
        assert!(warnings[1].contains("::/0 trusts every source"));
        assert!(warnings[2].contains("10.1.2.3/8 has host bits set: it trusts all of 10.0.0.0/8"));
    }

    #[test]
    fn flags_reach_the_server_configuration() {
        use crate::cli::{Cli, Command};
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["ferry", "serve"].iter().chain(args).copied();
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Serve(serve) => serve,
                _ => panic!(),
            }
        };
        let args = parse(&[
            "--timeout",
            "30",
            "--data-timeout",
            "40",
            "--session-timeout",
            "600",
            "--max-errors",
            "5",
            "--max-junk-commands",
            "7",
            "--min-data-rate",
            "0",
            "--max-line-length",
            "1000",
            "--stress-connections",
            "50",
            "--stress-timeout",
            "3",
        ]);
        let args = args.listener;
        let timeouts = timeouts_from(&args);
        assert_eq!(timeouts.command, seconds(30));
        assert_eq!(timeouts.data_block, seconds(40));
        assert_eq!(timeouts.data_termination, seconds(30));
        assert_eq!(timeouts.session, seconds(600));
        let mut limits = Limits::default();
        apply_limit_flags(&mut limits, &args, 100);
        assert_eq!(
            (
                limits.max_errors,
                limits.max_junk_commands,
                limits.min_data_rate,
                limits.max_line
            ),
            (5, 7, 0, 1000)
        );
        let stress = stress_from(&args);
        assert_eq!((stress.high_water, stress.timeout), (Some(50), seconds(3)));
        assert!(!stress_from(&parse(&["--no-stress"]).listener).enabled);
        assert_eq!(timeouts_from(&parse(&[]).listener), Timeouts::default());
    }

    #[tokio::test]
    #[allow(clippy::field_reassign_with_default)]
    async fn mail_is_refused_with_452_when_free_space_is_below_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(dir.path(), "mx").unwrap();
        let free = maildir.free_space().unwrap();
        let info = ConnectionInfo::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:2525".parse().unwrap(),
        );
        let params = MailParameters::default();
        let envelope = smtp_server::Envelope::default();
        let backend = StoreBackend::new(Store::Maildir(maildir.clone()), "mx");
        let mut session = backend.new_session(&info).await.unwrap();
        // Off by default in the library type.
        session.mail(&envelope, None, &params).await.unwrap();
        // More than the file system has free: refused.
        maildir.set_min_free_space(free * 2);
        let err = session.mail(&envelope, None, &params).await.unwrap_err();
        let reply = err.as_reply().unwrap().to_string();
        assert!(reply.starts_with("452 4.3.1"), "{reply}");
        // A small threshold passes, unless the declared size does not fit.
        maildir.set_min_free_space(1);
        session.mail(&envelope, None, &params).await.unwrap();
        let mut big = MailParameters::default();
        big.size = Some(free.saturating_mul(2));
        assert!(session.mail(&envelope, None, &big).await.is_err());
    }
}
