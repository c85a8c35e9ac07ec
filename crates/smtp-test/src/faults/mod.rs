//! Scripted faults: a small rule language, and an engine that applies it
//! to a server (the [`TestServer`](crate::TestServer) and `ferry serve
//! --faults`).
//!
//! # The rule language
//!
//! One rule per line: a stage, any number of conditions, an action. `#`
//! starts a comment; blank lines are skipped. Words are case-insensitive;
//! patterns and texts are in double quotes (`\"` and `\\` escape).
//!
//! ```text
//! rcpt to "*@blocked.test" reply 550 5.1.1 "no such user"
//! mail rate 3/min per connection reply 421 4.7.0 "too many messages"
//! rcpt to "*@slow.test" greylist 30s
//! greeting delay 10s
//! end-of-data chance 10% reply 451 4.3.0 "try again"
//! seed 42
//! magic
//! ```
//!
//! **Stages** (where the rule is checked): `connect` (accepted, nothing
//! sent), `greeting` (before the `220`), `ehlo` (also `helo`, `lhlo`),
//! `auth` (once the credentials are in), `mail`, `rcpt` (per recipient),
//! `data` (`DATA`/`BDAT`: after the `354`, before the message is read),
//! `end-of-data` (also `eod`: the message is in, its reply is next),
//! `quit` (before the `221`; the connection closes whatever the reply).
//!
//! **Conditions** (all must hold):
//! - `from "GLOB"`: the sender (`""` is `<>`); from `mail` on.
//! - `to "GLOB"`: the recipient at `rcpt`, any recipient at `data` and
//!   `end-of-data`.
//! - `client "GLOB"`: the client's IP address, such as `"127.0.0.*"`.
//! - `message N`: the server-wide message number (counted at each `MAIL`,
//!   from 1); ranges `N..M`, `N..`, `..M`.
//! - `connection N`: the server-wide connection number; ranges as above.
//! - `rate K/min [per client|connection|server]`: more than `K` messages
//!   (counted at `MAIL`, this one included) in the last minute (`/s`,
//!   `/h` also work) from this client (the default), in this connection,
//!   or overall.
//! - `chance P`: with probability `P` (`0.1` or `10%`), drawn from a
//!   generator seeded by `seed N` (0 by default), so a run is reproducible.
//!
//! Globs match the whole text, case-insensitively: `*` any run, `?` one
//! character.
//!
//! **Actions**: zero or more of `delay DURATION` (wait before answering)
//! and `drip DURATION` (send the reply one octet per interval), then at
//! most one of:
//! - `reply CODE [X.Y.Z] ["TEXT" ...]`: answer this instead (4xx or 5xx;
//!   each text is one line of a multi-line reply). A `421` closes the
//!   connection once sent (RFC 5321 §3.8).
//! - `close`: drop the connection without a reply; `close 421` sends
//!   `421 4.3.2` first.
//! - `greylist [DURATION]`: `451 4.7.1` until the same client, sender and
//!   recipient(s) try again at least `DURATION` (default 60s) after their
//!   first attempt.
//! - `drop` (`data`, `end-of-data`): answer `250` and discard the message.
//! - `stop-reading [DURATION]`: stop reading and answering for `DURATION`
//!   (default 60s), then close without a reply.
//! - `accept`: go on as usual (the default, for rules with only a delay or
//!   a drip).
//!
//! Durations: `500ms`, `5s`, `2m`, `1h`. The first rule that matches, in
//! file order, fires; the others are not checked for that event.
//!
//! **Magic addresses** (the line `magic`, or [`Faults::magic`]): a
//! recipient (at `rcpt`) or sender (at `mail`) whose local part is a reply
//! code, optionally followed by `-` or `+` and anything, gets that reply:
//! `550@example.com` gets `550 5.1.1`, `451-again@example.com` gets
//! `451 4.3.0`, `421@example.com` gets `421 4.3.2` and the connection
//! closes; `slow-5s@example.com` is accepted after five seconds.
//!
//! Parse errors name the line and column:
//!
//! ```
//! use smtp_test::faults::Faults;
//! let err = Faults::parse("rcpt to \"*@x.test\" reply 55 \"no\"").unwrap_err();
//! assert_eq!(err.to_string(),
//!     "line 1, column 26: expected a reply code from 400 to 599, found \"55\"");
//! ```
//!
//! # How the actions reach the wire
//!
//! Replies, delays, greylisting and dropped messages are smtp-server
//! hooks ([`FaultBackend`], [`FaultAuthenticator`]). Dripping, stopping to
//! read and closing without a reply act on the bytes: [`serve`] wraps each
//! connection's stream so the hooks can reach it. At `data`, a reply comes
//! after the message: the `354` is the server's, and it reads the message
//! before it answers.

mod engine;
mod rules;
mod serve;
mod session;
mod wire;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use engine::{FaultEngine, FiredRule};
pub use rules::{Action, Condition, CountRange, Glob, ParseError, RateScope, Rule, Stage, Then};
pub use serve::serve;
pub use session::{FaultAuthenticator, FaultBackend, FaultSession};

/// A parsed set of fault rules. [`Faults::default`] has none.
///
/// ```
/// use smtp_test::faults::{Faults, Stage};
/// let faults = Faults::parse(r#"
///     rcpt to "*@blocked.test" reply 550 5.1.1 "no such user"
///     greeting delay 2s
/// "#)?;
/// assert_eq!(faults.rules().len(), 2);
/// assert_eq!(faults.rules()[1].stage, Stage::Greeting);
/// # Ok::<(), smtp_test::faults::ParseError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    rules: rules::RuleSet,
}

impl Faults {
    /// Parses rules written in the [rule language](self).
    pub fn parse(source: &str) -> Result<Self, ParseError> {
        Ok(Self {
            rules: rules::parse(source)?,
        })
    }

    /// Only the built-in magic addresses.
    pub fn magic() -> Self {
        let mut faults = Self::default();
        faults.rules.magic = true;
        faults
    }

    /// `magic` for the word `magic`, otherwise the rules in the file at
    /// `spec` (what `ferry serve --faults` takes).
    pub fn load(spec: &str) -> Result<Self, LoadError> {
        if spec == "magic" {
            return Ok(Self::magic());
        }
        let path = Path::new(spec);
        let source = std::fs::read_to_string(path).map_err(|error| LoadError {
            spec: spec.to_owned(),
            cause: error.to_string(),
        })?;
        Self::parse(&source).map_err(|error| LoadError {
            spec: spec.to_owned(),
            cause: error.to_string(),
        })
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules.rules
    }

    /// Whether the magic addresses are on.
    pub fn has_magic(&self) -> bool {
        self.rules.magic
    }

    /// Whether a rule counts messages over time.
    pub(crate) fn uses_rates(&self) -> bool {
        self.rules.rules.iter().any(|rule| {
            rule.conditions
                .iter()
                .any(|condition| matches!(condition, Condition::Rate { .. }))
        })
    }

    /// The seed of the `chance` generator, if one was given.
    pub fn seed(&self) -> Option<u64> {
        self.rules.seed
    }
}

impl FromStr for Faults {
    type Err = ParseError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        Self::parse(source)
    }
}

/// A rule file that could not be read or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    spec: String,
    cause: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.spec, self.cause)
    }
}

impl std::error::Error for LoadError {}
