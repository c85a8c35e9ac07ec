//! `ferry send`: everything decided before connecting.
//!
//! The whole envelope and message are checked and built first, so a usage
//! error (exit 2) never leaves a half-sent transaction behind.

use std::path::Path;

use crate::cli::SendArgs;
use crate::compose::{self, Draft};
use crate::outcome::{Failure, FailureKind};

/// A message ready to go.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The reverse-path (bare address).
    pub from: String,
    /// Every forward-path: To, then Cc, then Bcc, without duplicates.
    pub recipients: Vec<String>,
    /// The message, as composed or read (`--raw`).
    pub message: Vec<u8>,
    /// User name and password for AUTH, if any.
    pub credentials: Option<(String, String)>,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::new(FailureKind::Usage, message)
}

/// Checks one envelope address given on the command line: no CR, LF or
/// NUL, and a valid RFC 5321 mailbox. Returns the bare address.
pub fn envelope_address(flag: &str, value: &str) -> Result<String, Failure> {
    if compose::has_forbidden(value) {
        return Err(usage(format!("{flag} {value:?}: contains CR, LF or NUL")));
    }
    let (_, addr) = compose::split_mailbox(value);
    smtp_proto::address::Address::parse(addr, true)
        .map_err(|e| usage(format!("{flag} {value:?}: {e}")))?;
    Ok(addr.to_owned())
}

/// Builds the envelope, the message and the credentials from the
/// arguments, reading every file named. `env` looks up environment
/// variables (for `--password-env`).
pub fn prepare(args: &SendArgs, env: impl Fn(&str) -> Option<String>) -> Result<Prepared, Failure> {
    let from = envelope_address("--from", &args.from)?;
    let mut recipients: Vec<String> = Vec::new();
    for (flag, values) in [("--to", &args.to), ("--cc", &args.cc), ("--bcc", &args.bcc)] {
        for value in values {
            let addr = envelope_address(flag, value)?;
            if !recipients.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
                recipients.push(addr);
            }
        }
    }
    if recipients.is_empty() {
        return Err(usage("no recipient: give --to, --cc or --bcc"));
    }
    if let Some(helo) = &args.connect.helo
        && (helo.is_empty() || helo.bytes().any(|b| !b.is_ascii_graphic()))
    {
        return Err(usage(format!("--helo {helo:?}: not a host name")));
    }
    let credentials = match (&args.user, &args.password, &args.password_env) {
        (None, _, _) => None,
        (Some(user), Some(password), _) => Some((user.clone(), password.clone())),
        (Some(user), None, Some(var)) => {
            let password =
                env(var).ok_or_else(|| usage(format!("--password-env {var}: variable not set")))?;
            Some((user.clone(), password))
        }
        (Some(_), None, None) => return Err(usage("--user needs --password or --password-env")),
    };
    let message = match &args.raw {
        Some(path) => compose::load_raw(path).map_err(|e| usage(e.to_string()))?,
        None => compose_message(args).map_err(|e| usage(e.to_string()))?,
    };
    Ok(Prepared {
        from,
        recipients,
        message,
        credentials,
    })
}

fn compose_message(args: &SendArgs) -> Result<Vec<u8>, compose::ComposeError> {
    let body = match (&args.body, &args.body_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => compose::load_body(path)?,
        (None, None) => String::new(),
    };
    let headers = args
        .header
        .iter()
        .map(|h| compose::parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let attachments = args
        .attach
        .iter()
        .map(|p| compose::load_attachment(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    Draft {
        from: args.from.clone(),
        to: args.to.clone(),
        cc: args.cc.clone(),
        subject: args.subject.clone(),
        body,
        attachments,
        headers,
    }
    .compose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> SendArgs {
        let argv = ["ferry", "send"].into_iter().chain(extra.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Send(send) => send,
            _ => unreachable!(),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn envelope_from_all_recipient_kinds() {
        let a = args(&[
            "--from",
            "Alice <alice@example.com>",
            "--to",
            "bob@example.com",
            "--cc",
            "Carol <carol@example.org>",
            "--bcc",
            "dan@example.net",
            "--to",
            "BOB@example.com",
            "--subject",
            "hi",
            "--body",
            "hello",
        ]);
        let p = prepare(&a, no_env).unwrap();
        assert_eq!(p.from, "alice@example.com");
        assert_eq!(
            p.recipients,
            vec!["bob@example.com", "carol@example.org", "dan@example.net"]
        );
        let text = String::from_utf8(p.message).unwrap();
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("dan@example.net"), "Bcc leaked into headers");
        assert!(p.credentials.is_none());
    }

    #[test]
    fn usage_errors_before_connecting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--from", "a@example.com"], "no recipient"),
            (
                &["--from", "a@example.com\r\nRCPT TO:<x@y>", "--to", "b@c.d"],
                "CR, LF or NUL",
            ),
            (
                &["--from", "a@example.com", "--to", "b@example.com\n"],
                "CR, LF or NUL",
            ),
            (
                &["--from", "a@example.com", "--to", "b\0@example.com"],
                "CR, LF or NUL",
            ),
            (
                &["--from", "not an address", "--to", "b@example.com"],
                "--from",
            ),
            (&["--from", "a@example.com", "--to", "b@"], "--to"),
            (
                &[
                    "--from",
                    "a@b.c",
                    "--to",
                    "b@c.d",
                    "--header",
                    "Bad Name: x",
                ],
                "--header",
            ),
            (
                &[
                    "--from",
                    "a@b.c",
                    "--to",
                    "b@c.d",
                    "--attach",
                    "/nonexistent/file",
                ],
                "/nonexistent/file",
            ),
            (
                &[
                    "--from",
                    "a@b.c",
                    "--to",
                    "b@c.d",
                    "--user",
                    "u",
                    "--password-env",
                    "NOPE",
                ],
                "NOPE",
            ),
            (
                &["--from", "a@b.c", "--to", "b@c.d", "--user", "u"],
                "--password",
            ),
            (
                &["--from", "a@b.c", "--to", "b@c.d", "--helo", "bad name"],
                "--helo",
            ),
        ];
        for (extra, needle) in cases {
            let err = prepare(&args(extra), no_env).unwrap_err();
            assert_eq!(err.kind, FailureKind::Usage, "{extra:?}");
            assert!(err.message.contains(needle), "{extra:?}: {}", err.message);
        }
    }

    #[test]
    fn raw_and_password_env() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("m.eml");
        std::fs::write(&raw, b"Subject: raw\n\n.dot\n").unwrap();
        let a = args(&[
            "--from",
            "a@b.c",
            "--to",
            "b@c.d",
            "--raw",
            raw.to_str().unwrap(),
            "--user",
            "u",
            "--password-env",
            "PW",
        ]);
        let p = prepare(&a, |v| (v == "PW").then(|| "secret".to_owned())).unwrap();
        assert_eq!(p.message, b"Subject: raw\n\n.dot\n");
        assert_eq!(p.credentials, Some(("u".into(), "secret".into())));
    }
}
