//! Every session's conversation, for the output of a failed test.

use std::fmt;
use std::sync::{Arc, Mutex};

use smtp_server::TranscriptLine;

use crate::faults::FiredRule;

/// The conversations a [`TestServer`](crate::TestServer) had, one
/// [`SessionTranscript`] per connection in the order they started.
///
/// Lines are `C: ...` (client), `S: ...` (server) and `!! ...` (a fault
/// rule fired). AUTH payloads are shown as `***` and message bodies as a
/// summary line, as smtp-server's transcript hook gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    sessions: Vec<SessionTranscript>,
}

/// One session of a [`Transcript`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTranscript {
    id: String,
    lines: Vec<String>,
}

impl SessionTranscript {
    /// The session id (also in the `Received:` header).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lines, in order.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }
}

impl Transcript {
    /// The sessions, in the order they started.
    pub fn sessions(&self) -> &[SessionTranscript] {
        &self.sessions
    }

    /// Every line of every session, in session order.
    pub fn lines(&self) -> Vec<&str> {
        self.sessions
            .iter()
            .flat_map(|session| session.lines.iter().map(String::as_str))
            .collect()
    }

    /// Whether any line contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.lines().iter().any(|line| line.contains(text))
    }
}

impl fmt::Display for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for session in &self.sessions {
            writeln!(f, "--- session {} ---", session.id)?;
            for line in &session.lines {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Collects lines from the server's transcript hook and the fault engine.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder {
    transcript: Arc<Mutex<Transcript>>,
}

impl Recorder {
    fn push(&self, session_id: &str, line: String) {
        let mut transcript = match self.transcript.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match transcript
            .sessions
            .iter_mut()
            .rev()
            .find(|session| session.id == session_id)
        {
            Some(session) => session.lines.push(line),
            None => transcript.sessions.push(SessionTranscript {
                id: session_id.to_owned(),
                lines: vec![line],
            }),
        }
    }

    pub(crate) fn line(&self, line: &TranscriptLine<'_>) {
        self.push(line.session_id, line.to_string());
    }

    pub(crate) fn fired(&self, fired: &FiredRule) {
        self.push(&fired.session_id, format!("!! {fired}"));
    }

    pub(crate) fn snapshot(&self) -> Transcript {
        match self.transcript.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
