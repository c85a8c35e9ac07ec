//! The accounts `ferry serve` accepts for AUTH PLAIN and LOGIN.
//!
//! Two sources: `--user NAME:PASSWORD` (a plain password given on the
//! command line, for tests and demos) and `--users-file FILE`, one
//! `name:hash` per line where the hash is an argon2 PHC string
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), as `argon2` tools and
//! most password libraries print it. Blank lines and lines starting with
//! `#` are ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, PasswordVerifier};

/// A set of accounts.
#[derive(Clone, Default)]
pub struct Users {
    accounts: HashMap<String, Secret>,
}

#[derive(Clone)]
enum Secret {
    Plain(String),
    /// A PHC string already checked to parse.
    Argon2(String),
}

/// Why a user list could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsersError {
    /// A `--user` value without a `:` or with an empty name or password.
    BadSpec(String),
    /// The users file could not be read.
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A line of the users file is wrong.
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The same name appears twice.
    Duplicate(String),
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersError::BadSpec(spec) => write!(
                f,
                "--user {spec:?}: expected NAME:PASSWORD with a non-empty name and password"
            ),
            UsersError::Read { path, message } => write!(f, "{path}: {message}"),
            UsersError::Line {
                path,
                line,
                message,
            } => write!(f, "{path}:{line}: {message}"),
            UsersError::Duplicate(name) => write!(f, "user {name:?} is defined twice"),
        }
    }
}

impl std::error::Error for UsersError {}

impl Users {
    /// An empty set: AUTH is then not offered.
    pub fn new() -> Users {
        Users::default()
    }

    /// True when no account is defined.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// How many accounts are defined.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Adds a `NAME:PASSWORD` value (split at the first `:`, so the
    /// password may contain colons).
    pub fn add_spec(&mut self, spec: &str) -> Result<(), UsersError> {
        let (name, password) = spec
            .split_once(':')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| UsersError::BadSpec(spec.to_owned()))?;
        self.insert(name, Secret::Plain(password.to_owned()))
    }

    /// Reads a users file.
    pub fn load_file(&mut self, path: &Path) -> Result<(), UsersError> {
        let text = std::fs::read_to_string(path).map_err(|err| UsersError::Read {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        self.load_str(&path.display().to_string(), &text)
    }

    /// Reads users-file text; `origin` names it in error messages.
    pub fn load_str(&mut self, origin: &str, text: &str) -> Result<(), UsersError> {
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| UsersError::Line {
                path: origin.to_owned(),
                line: index + 1,
                message,
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected name:hash".into()))?;
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            PasswordHash::new(hash).map_err(|e| {
                err(format!(
                    "user {name:?}: not a PHC password hash ($argon2id$...): {e}"
                ))
            })?;
            if !hash.starts_with("$argon2") {
                return Err(err(format!(
                    "user {name:?}: unsupported hash scheme; use argon2id, argon2i or argon2d"
                )));
            }
            self.insert(name, Secret::Argon2(hash.to_owned()))
                .map_err(|_| err(format!("user {name:?} is defined twice")))?;
        }
        Ok(())
    }

    fn insert(&mut self, name: &str, secret: Secret) -> Result<(), UsersError> {
        if self.accounts.contains_key(name) {
            return Err(UsersError::Duplicate(name.to_owned()));
        }
        self.accounts.insert(name.to_owned(), secret);
        Ok(())
    }

    /// Checks a name and password. Argon2 verification costs tens of
    /// milliseconds of CPU on purpose: call this from a blocking thread.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.accounts.get(name) {
            Some(Secret::Plain(expected)) => {
                constant_time_eq(expected.as_bytes(), password.as_bytes())
            }
            // The algorithm, version and cost come from the PHC string.
            Some(Secret::Argon2(phc)) => match PasswordHash::new(phc) {
                Ok(hash) => Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok(),
                Err(_) => false,
            },
            None => {
                // Spend about as long as a plain comparison would, so the
                // answer time says little about which names exist.
                let _ = constant_time_eq(password.as_bytes(), password.as_bytes());
                false
            }
        }
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print passwords or hashes.
        let mut names: Vec<&String> = self.accounts.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

/// Compares two byte strings in time that depends only on their lengths,
/// not on where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;

    fn hash(password: &str) -> String {
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        // Small parameters keep debug-build tests fast; verification reads
        // them from the PHC string.
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn plain_users() {
        let mut users = Users::new();
        assert!(users.is_empty());
        users.add_spec("alice:s3cr:et").unwrap();
        assert!(users.verify("alice", "s3cr:et"));
        assert!(!users.verify("alice", "s3cr"));
        assert!(!users.verify("alice", "s3cr:etx"));
        assert!(!users.verify("bob", "s3cr:et"));
        assert_eq!(users.len(), 1);
        for bad in ["alice", ":pw", "alice:", ""] {
            assert_eq!(
                Users::new().add_spec(bad),
                Err(UsersError::BadSpec(bad.into()))
            );
        }
        assert_eq!(
            users.add_spec("alice:other"),
            Err(UsersError::Duplicate("alice".into()))
        );
    }

    #[test]
    fn users_file() {
        let text = format!(
            "# accounts\n\n  alice:{}  \nbob:{}\n",
            hash("wonderland"),
            hash("builder")
        );
        let mut users = Users::new();
        users.load_str("users", &text).unwrap();
        assert!(users.verify("alice", "wonderland"));
        assert!(users.verify("bob", "builder"));
        assert!(!users.verify("alice", "builder"));
        assert!(!users.verify("carol", "wonderland"));
        let debug = format!("{users:?}");
        assert!(
            debug.contains("alice") && !debug.contains("argon2"),
            "{debug}"
        );
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let cases = [
            ("# c\nalice\n", 2, "expected name:hash"),
            ("\n:$argon2id$x\n", 2, "empty user name"),
            ("alice:plaintext\n", 1, "not a PHC password hash"),
            ("alice:$5$rounds=5000$abc$def\n", 1, "PHC"),
        ];
        for (text, line, needle) in cases {
            let err = Users::new().load_str("f", text).unwrap_err();
            match &err {
                UsersError::Line { line: l, .. } => assert_eq!(*l, line, "{text:?}"),
                other => panic!("{other:?}"),
            }
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("f:{line}: ")), "{shown}");
            assert!(shown.contains(needle), "{shown} lacks {needle}");
        }
        let dup = format!("a:{h}\na:{h}\n", h = hash("x"));
        let err = Users::new().load_str("f", &dup).unwrap_err();
        assert_eq!(err.to_string(), "f:2: user \"a\" is defined twice");
    }

    #[test]
    fn missing_file() {
        let err = Users::new()
            .load_file(Path::new("/nonexistent/users"))
            .unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/users: "), "{err}");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"\0"));
    }
}
