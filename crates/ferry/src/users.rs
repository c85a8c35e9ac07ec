//! The accounts `ferry serve` accepts for AUTH PLAIN and LOGIN, loaded into
//! smtp-server's [`StaticUsers`].
//!
//! Two sources: `--user NAME:PASSWORD` (a plain password given on the
//! command line, for tests and demos) and `--users-file FILE`, one
//! `name:hash` per line where the hash is an argon2 PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), as `argon2` tools and
//! most password libraries print it. Blank lines and lines starting with
//! `#` are ignored. The library bounds the file's size, its line length and
//! the argon2 parameters, and verifies hashes in a bounded queue.

use std::path::Path;

use smtp_server::StaticUsers;

/// Splits a `--user NAME:PASSWORD` value at the first `:`, so the password
/// may contain colons.
pub fn parse_spec(spec: &str) -> Result<(&str, &str), String> {
    spec.split_once(':')
        .filter(|(name, password)| !name.is_empty() && !password.is_empty())
        .ok_or_else(|| {
            format!("--user {spec:?}: expected NAME:PASSWORD with a non-empty name and password")
        })
}

/// The accounts from `--user` values and an optional users file. Errors
/// are one line for people.
pub fn load(specs: &[String], file: Option<&Path>) -> Result<StaticUsers, String> {
    let mut users = StaticUsers::new();
    for spec in specs {
        let (name, password) = parse_spec(spec)?;
        users
            .add_plain(name, password)
            .map_err(|e| format!("--user: {e}"))?;
    }
    if let Some(path) = file {
        users.load_file(path).map_err(|e| e.to_string())?;
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs() {
        assert_eq!(parse_spec("alice:s3cr:et"), Ok(("alice", "s3cr:et")));
        for bad in ["alice", ":pw", "alice:", ""] {
            let err = parse_spec(bad).unwrap_err();
            assert!(err.contains("NAME:PASSWORD"), "{err}");
        }
        let users = load(&["alice:x".into(), "bob:y".into()], None).unwrap();
        assert_eq!(users.len(), 2);
        let err = load(&["alice:x".into(), "alice:y".into()], None).unwrap_err();
        assert_eq!(err, "--user: user \"alice\" is defined twice");
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("# c\nalice\n", "users:2: expected name:hash"),
            ("\n:$argon2id$x\n", "users:2: empty user name"),
            (
                "alice:plaintext\n",
                "users:1: user \"alice\": not a PHC password hash",
            ),
            ("alice:$5$rounds=5000$abc$def\n", "users:1: user \"alice\""),
            // One verification would take 4 GiB: refused at start, not at
            // the first AUTH.
            (
                "alice:$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$k9ohroejZy1PN5E1SbHNPug6vB8eQAahb5SOAp6iGF4\n",
                "users:1: user \"alice\": argon2 memory cost",
            ),
        ];
        for (text, start) in cases {
            let path = dir.path().join("users");
            std::fs::write(&path, text).unwrap();
            let err = load(&[], Some(&path)).unwrap_err();
            let shown = err.replacen(&dir.path().display().to_string(), "", 1);
            assert!(shown.trim_start_matches('/').starts_with(start), "{err}");
        }
    }

    #[test]
    fn missing_file() {
        let err = load(&[], Some(Path::new("/nonexistent/users"))).unwrap_err();
        assert!(err.starts_with("/nonexistent/users: "), "{err}");
    }
}
