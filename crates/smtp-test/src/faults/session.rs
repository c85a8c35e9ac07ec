//! The fault engine as smtp-server hooks: a [`Backend`] and an
//! [`Authenticator`] that wrap yours and apply the rules at each stage.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use smtp_proto::address::Address;
use smtp_proto::command::{MailParameters, RcptParameters};
use smtp_proto::sasl::Credentials;
use smtp_proto::{EnhancedCode, Reply};
use smtp_server::{
    Authenticator, Backend, Body, ConnectionInfo, Envelope, Identity, SaslStep, Session, SmtpError,
};

use super::engine::{Connection, Decision, Event, FaultEngine};
use super::rules::{Stage, Then};

/// Wraps a [`Backend`] so that the engine's rules apply to its sessions.
///
/// Serve it with [`serve`](super::serve) so that the actions below the
/// protocol (drip, stop reading, closing) reach the connection. Served by
/// smtp-server's own listener, they cannot touch the bytes: a drip sends
/// at full speed, and `close`, `close 421`, `stop-reading` and any `421`
/// reply leave the client with a `421` reply on a connection that stays
/// open.
#[derive(Debug, Clone)]
pub struct FaultBackend<B> {
    inner: B,
    engine: FaultEngine,
}

impl<B> FaultBackend<B> {
    /// Applies `engine`'s rules in front of `inner`.
    pub fn new(inner: B, engine: FaultEngine) -> Self {
        Self { inner, engine }
    }

    /// The engine.
    pub fn engine(&self) -> &FaultEngine {
        &self.engine
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

/// What a fired rule leaves the hook to do.
enum Outcome {
    /// Call the wrapped hook.
    Proceed,
    /// Accept the message without handing it on.
    Drop,
}

/// Turns a decision into what the client sees. `Err` is the reply.
async fn apply(
    engine: &FaultEngine,
    connection: &Connection,
    decision: Decision,
    event: &Event<'_>,
) -> Result<Outcome, SmtpError> {
    let action = decision.action;
    // Greylisting is judged at the attempt, not after the delay.
    let then = match action.then {
        Then::Greylist { retry_after } => {
            if engine.greylist_passes(event, retry_after) {
                Then::Proceed
            } else {
                Then::Reply(Reply::new(
                    451,
                    EnhancedCode::new(4, 7, 1),
                    "Greylisted, please try again later",
                ))
            }
        }
        other => other,
    };
    if let Some(delay) = action.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(interval) = action.drip {
        connection.wire.drip(interval);
    }
    match then {
        Then::Proceed | Then::Greylist { .. } => Ok(Outcome::Proceed),
        Then::Drop => Ok(Outcome::Drop),
        Then::Reply(reply) => {
            // RFC 5321 §3.8: a 421 closes the transmission channel.
            if reply.code() == 421 {
                connection.wire.close_after_flush();
            }
            Err(SmtpError::reply(reply))
        }
        Then::Close { reply_421: true } => {
            connection.wire.close_after_flush();
            Err(closing())
        }
        Then::Close { reply_421: false } => {
            connection.wire.sever();
            // Never written: the wire is cut.
            Err(closing())
        }
        Then::StopReading { duration } => {
            connection.wire.stop_reading();
            tokio::time::sleep(duration).await;
            connection.wire.sever();
            Err(closing())
        }
    }
}

fn closing() -> SmtpError {
    SmtpError::new(
        421,
        EnhancedCode::new(4, 3, 2),
        "Service not available, closing transmission channel",
    )
}

impl<B: Backend> Backend for FaultBackend<B> {
    type Session = FaultSession<B::Session>;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<Self::Session, SmtpError> {
        let connection = self.engine.open(&info.id, info.client_addr().ip());
        for stage in [Stage::Connect, Stage::Greeting] {
            let event = Event {
                stage,
                connection: &connection,
                message: None,
                from: None,
                to: &[],
            };
            if let Some(decision) = self.engine.decide(&event) {
                apply(&self.engine, &connection, decision, &event).await?;
            }
        }
        let inner = self.inner.new_session(info).await?;
        Ok(FaultSession {
            inner,
            engine: self.engine.clone(),
            connection,
            message: None,
            from: None,
        })
    }
}

/// A session with the engine's rules in front of the wrapped one.
#[derive(Debug)]
pub struct FaultSession<S> {
    inner: S,
    engine: FaultEngine,
    connection: Arc<Connection>,
    message: Option<u64>,
    from: Option<String>,
}

impl<S> FaultSession<S> {
    /// Checks the rules for `stage`; `Err` is the reply that replaces the
    /// usual one.
    async fn check(&mut self, stage: Stage, to: &[String]) -> Result<Outcome, SmtpError> {
        let event = Event {
            stage,
            connection: &self.connection,
            message: self.message,
            from: self.from.as_deref(),
            to,
        };
        match self.engine.decide(&event) {
            Some(decision) => apply(&self.engine, &self.connection, decision, &event).await,
            None => Ok(Outcome::Proceed),
        }
    }
}

/// Reads a body to its end, discarding it; the server answers a bad body
/// itself.
async fn drain(mut body: Body) -> Result<(), SmtpError> {
    while let Some(chunk) = body.next().await {
        chunk.map_err(SmtpError::other)?;
    }
    Ok(())
}

impl<S: Session> Session for FaultSession<S> {
    async fn helo(&mut self, domain: &str) -> Result<(), SmtpError> {
        self.check(Stage::Ehlo, &[]).await?;
        self.inner.helo(domain).await
    }

    async fn authenticated(&mut self, identity: &Identity) {
        self.inner.authenticated(identity).await;
    }

    async fn mail(
        &mut self,
        session: &Envelope,
        from: Option<&Address>,
        parameters: &MailParameters,
    ) -> Result<(), SmtpError> {
        self.message = Some(self.engine.note_message(&self.connection));
        self.from = Some(from.map(|a| a.as_str().to_owned()).unwrap_or_default());
        self.check(Stage::Mail, &[]).await?;
        self.inner.mail(session, from, parameters).await
    }

    async fn rcpt(
        &mut self,
        transaction: &Envelope,
        to: &Address,
        parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        self.check(Stage::Rcpt, &[to.as_str().to_owned()]).await?;
        self.inner.rcpt(transaction, to, parameters).await
    }

    async fn data(&mut self, envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
        let to: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str().to_owned())
            .collect();
        if let Outcome::Drop = self.check(Stage::Data, &to).await? {
            return drain(body).await;
        }
        // End-of-data rules are decided now (everything they test is
        // known) and acted on once the message is in.
        let event = Event {
            stage: Stage::EndOfData,
            connection: &self.connection,
            message: self.message,
            from: self.from.as_deref(),
            to: &to,
        };
        let Some(decision) = self.engine.decide(&event) else {
            return self.inner.data(envelope, body).await;
        };
        let passes_greylist = match decision.action.then {
            Then::Greylist { retry_after } => self.engine.greylist_passes(&event, retry_after),
            _ => false,
        };
        if matches!(decision.action.then, Then::Proceed) || passes_greylist {
            let result = self.inner.data(envelope, body).await;
            let mut decision = decision;
            decision.action.then = Then::Proceed;
            apply(&self.engine, &self.connection, decision, &event).await?;
            return result;
        }
        drain(body).await?;
        match apply(&self.engine, &self.connection, decision, &event).await? {
            Outcome::Drop => Ok(()),
            // Unreachable in practice (Proceed was handled above), but a
            // message that was not handed on is never acknowledged.
            Outcome::Proceed => Err(SmtpError::new(
                451,
                EnhancedCode::new(4, 3, 0),
                "Requested action aborted: local error in processing",
            )),
        }
    }

    async fn vrfy(&mut self, argument: &str) -> Result<Reply, SmtpError> {
        self.inner.vrfy(argument).await
    }

    async fn reset(&mut self) {
        self.from = None;
        self.message = None;
        self.inner.reset().await;
    }

    async fn quit(&mut self) -> Result<(), SmtpError> {
        self.check(Stage::Quit, &[]).await?;
        self.inner.quit().await
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}

impl<S> Drop for FaultSession<S> {
    /// Forgets the connection however the session ended (smtp-server does
    /// not call `close` after a hook panicked).
    fn drop(&mut self) {
        self.engine.detach(&self.connection.id);
    }
}

/// Wraps an [`Authenticator`] so that `auth` rules apply once the client's
/// credentials are in.
#[derive(Debug, Clone)]
pub struct FaultAuthenticator<A> {
    inner: A,
    engine: FaultEngine,
}

impl<A> FaultAuthenticator<A> {
    /// Applies `engine`'s `auth` rules in front of `inner`.
    pub fn new(inner: A, engine: FaultEngine) -> Self {
        Self { inner, engine }
    }
}

impl<A: Authenticator> FaultAuthenticator<A> {
    async fn check(&self, info: &ConnectionInfo) -> Result<(), SmtpError> {
        let connection = self
            .engine
            .connection(&info.id)
            .unwrap_or_else(|| self.engine.open(&info.id, info.client_addr().ip()));
        let event = Event {
            stage: Stage::Auth,
            connection: &connection,
            message: None,
            from: None,
            to: &[],
        };
        if let Some(decision) = self.engine.decide(&event) {
            apply(&self.engine, &connection, decision, &event).await?;
        }
        Ok(())
    }
}

impl<A: Authenticator> Authenticator for FaultAuthenticator<A> {
    fn mechanisms(&self) -> Vec<String> {
        self.inner.mechanisms()
    }

    async fn authenticate(
        &self,
        info: &ConnectionInfo,
        mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        self.check(info).await?;
        self.inner.authenticate(info, mechanism, credentials).await
    }

    async fn step(
        &self,
        info: &ConnectionInfo,
        mechanism: &str,
        responses: &[Vec<u8>],
    ) -> Result<SaslStep, SmtpError> {
        self.check(info).await?;
        self.inner.step(info, mechanism, responses).await
    }
}

/// How long the accept loop gives sessions to finish after shutdown
/// starts.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_server::Server;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Panicky;
    struct PanickySession;

    impl Backend for Panicky {
        type Session = PanickySession;
        async fn new_session(&self, _: &ConnectionInfo) -> Result<PanickySession, SmtpError> {
            Ok(PanickySession)
        }
    }

    impl Session for PanickySession {
        async fn rcpt(
            &mut self,
            _: &Envelope,
            _: &Address,
            _: &RcptParameters,
        ) -> Result<(), SmtpError> {
            panic!("a hook panicked on purpose");
        }

        async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_session_whose_hook_panicked_is_forgotten() {
        let engine = FaultEngine::new(crate::faults::Faults::default());
        let server = Server::builder(FaultBackend::new(Panicky, engine.clone()))
            .build()
            .unwrap();
        let (near, mut far) = tokio::io::duplex(4096);
        let info = ConnectionInfo::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let served = tokio::spawn(async move { server.serve_connection(near, info).await });
        let mut greeting = [0u8; 5];
        far.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"220 l");
        assert_eq!(engine.open_connections(), 1);
        far.write_all(b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        far.read_to_end(&mut out).await.unwrap();
        served.await.unwrap().unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("421 4.3.0"), "{out}");
        assert_eq!(engine.open_connections(), 0);
    }
}
