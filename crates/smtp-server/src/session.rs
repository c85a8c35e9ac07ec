//! The traits a receiver implements, and the values they are given.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use smtp_proto::address::Address;
use smtp_proto::command::{MailParameters, RcptParameters};
use smtp_proto::{EnhancedCode, Reply};
use tokio::sync::mpsc;

use crate::error::SmtpError;

/// Returns a session id unique within the process: a time prefix and a
/// counter.
fn next_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<u64> = OnceLock::new();
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08X}{count:06X}", start & 0xffff_ffff)
}

/// What the server knows about a connection when it opens a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Identifier of the session, unique within the process; it also
    /// appears in the tracing span and the `Received:` header.
    pub id: String,
    /// The peer of the transport connection (a proxy's address when the
    /// connection came through a PROXY protocol proxy).
    pub remote_addr: SocketAddr,
    /// The local address of the transport connection.
    pub local_addr: SocketAddr,
    /// The addresses a trusted proxy reported with the PROXY protocol.
    pub proxied: Option<ProxiedAddresses>,
    /// TLS details when the connection started with TLS (RFC 8314).
    /// Sessions upgraded with `STARTTLS` see the TLS details in
    /// [`Envelope::tls`].
    pub tls: Option<TlsInfo>,
}

impl ConnectionInfo {
    /// Information about a connection between `remote_addr` and
    /// `local_addr`, with a fresh session id.
    pub fn new(remote_addr: SocketAddr, local_addr: SocketAddr) -> Self {
        Self {
            id: next_session_id(),
            remote_addr,
            local_addr,
            proxied: None,
            tls: None,
        }
    }

    /// The client's address: the one given by the PROXY protocol if any,
    /// else the transport peer.
    pub fn client_addr(&self) -> SocketAddr {
        self.proxied
            .as_ref()
            .map_or(self.remote_addr, |proxied| proxied.source)
    }
}

/// The original addresses of a proxied connection (PROXY protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxiedAddresses {
    /// The client the proxy accepted.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// Details of an established TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// Protocol version, for example `TLSv1.3`.
    pub version: String,
    /// Negotiated cipher suite, for example `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// Server name the client asked for (SNI).
    pub server_name: Option<String>,
}

/// The identity an [`Authenticator`](crate::Authenticator) established.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The authenticated user name.
    pub name: String,
    /// The identity the client asked to act as (SASL authorization
    /// identity), when it asked for one and the authenticator allowed it.
    pub authorization: Option<String>,
}

impl Identity {
    /// An identity for `name` with no separate authorization identity.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            authorization: None,
        }
    }

    /// The same identity acting as `authorization` (the SASL authorization
    /// identity, RFC 4616 §2), for an authenticator that granted `name`
    /// the right to act as someone else.
    ///
    /// ```
    /// use smtp_server::Identity;
    /// let identity = Identity::new("helpdesk").with_authorization("alice");
    /// assert_eq!(identity.authorization.as_deref(), Some("alice"));
    /// ```
    pub fn with_authorization(mut self, authorization: impl Into<String>) -> Self {
        self.authorization = Some(authorization.into());
        self
    }
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path.
    pub address: Address,
    /// `NOTIFY` and `ORCPT` (RFC 3461).
    pub parameters: RcptParameters,
}

/// A read-only view of the session and its transaction, given to the
/// `mail`, `rcpt` and data hooks of [`Session`].
///
/// The session part (greeting, TLS, identity, client address, session id)
/// is always filled in. The transaction part grows as commands succeed: in
/// [`Session::mail`] it is empty, in [`Session::rcpt`] it has the sender
/// and the recipients accepted so far, in [`Session::data`] it is the
/// whole envelope of the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The name the client gave in `HELO`, `EHLO` or `LHLO` (empty before
    /// the greeting, and again after `STARTTLS` until the next one).
    pub helo: String,
    /// Whether the client greeted with `EHLO` or `LHLO` (extended SMTP).
    pub extended: bool,
    /// Whether this is an LMTP session (RFC 2033).
    pub lmtp: bool,
    /// The reverse-path; `None` is the null path `<>` (bounces).
    pub from: Option<Address>,
    /// `MAIL` parameters: `SIZE`, `BODY`, `SMTPUTF8`, DSN's `RET` and
    /// `ENVID`, `AUTH=`, `REQUIRETLS`.
    pub mail_parameters: MailParameters,
    /// Accepted recipients, in the order they were accepted (in
    /// [`Session::rcpt`], those before the one being checked).
    pub recipients: Vec<Recipient>,
    /// The authenticated identity, if any.
    pub identity: Option<Identity>,
    /// TLS details if the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// The client's address (see [`ConnectionInfo::client_addr`]).
    pub client_addr: Option<SocketAddr>,
    /// The session id (see [`ConnectionInfo::id`]).
    pub session_id: String,
}

impl Envelope {
    /// The RFC 3848 / RFC 6531 protocol name for the `with` clause of a
    /// `Received:` header: `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPSA`, `LMTP`,
    /// `UTF8SMTPS`, and so on.
    pub fn protocol(&self) -> String {
        let mut name = String::new();
        if self.mail_parameters.smtputf8 {
            name.push_str(if self.lmtp { "UTF8LMTP" } else { "UTF8SMTP" });
        } else if self.lmtp {
            name.push_str("LMTP");
        } else if self.extended {
            name.push_str("ESMTP");
        } else {
            return "SMTP".to_owned();
        }
        if self.tls.is_some() {
            name.push('S');
        }
        if self.identity.is_some() {
            name.push('A');
        }
        name
    }
}

/// Why a message body stream stopped before its normal end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// The message is larger than the size limit; the client gets
    /// `552 5.3.4` whatever the handler returns.
    TooLarge,
    /// The message holds a bare CR or LF and the policy rejects it; the
    /// client gets `550 5.5.2` whatever the handler returns.
    BareLineEnding,
    /// The transaction ended without a complete message: the client reset
    /// it, disconnected, timed out, or the server is shutting down.
    Aborted,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLarge => "message exceeds the size limit",
            Self::BareLineEnding => "message contains a bare CR or LF",
            Self::Aborted => "message transfer aborted",
        })
    }
}

impl std::error::Error for BodyError {}

/// The message body as it arrives: dot-unstuffed (DATA) or as sent (BDAT),
/// in chunks of at most a read buffer each.
///
/// The stream ends (`None`) after the last octet of a complete message that
/// passed the size and line-ending checks. If it yields an `Err` instead,
/// the message is not valid and the client will get an error reply whatever
/// the handler returns. The library never buffers the whole body: reading
/// slowly slows the client down.
pub struct Body {
    receiver: mpsc::Receiver<BodyMessage>,
    finished: bool,
}

/// What the connection sends to a [`Body`]. The stream ends cleanly only
/// on an explicit `End`, so a transfer cut short can never look complete.
#[derive(Debug)]
pub(crate) enum BodyMessage {
    Chunk(Bytes),
    End,
    Error(BodyError),
}

impl Body {
    pub(crate) fn new(receiver: mpsc::Receiver<BodyMessage>) -> Self {
        Self {
            receiver,
            finished: false,
        }
    }

    /// Reads the whole body into memory. The server's own size limit
    /// ([`Limits::max_message_size`](crate::Limits::max_message_size))
    /// bounds it: past the limit the stream fails with
    /// [`BodyError::TooLarge`]. For handlers that need the whole message at
    /// once; streaming handlers use the [`Stream`] impl. With `?` in a hook
    /// the error becomes the matching reply (see
    /// [`From<BodyError> for SmtpError`](SmtpError#impl-From%3CBodyError%3E-for-SmtpError)).
    ///
    /// ```
    /// # use smtp_server::{Body, Envelope, Session, SmtpError};
    /// struct Collect(Vec<Vec<u8>>);
    ///
    /// impl Session for Collect {
    ///     async fn data(&mut self, _envelope: &Envelope, body: Body) -> Result<(), SmtpError> {
    ///         self.0.push(body.read_to_end().await?);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub async fn read_to_end(self) -> Result<Vec<u8>, BodyError> {
        self.read_to_end_max(usize::MAX).await
    }

    /// Like [`Body::read_to_end`], with a lower cap of the handler's own:
    /// fails with [`BodyError::TooLarge`] past `max` octets.
    pub async fn read_to_end_max(mut self, max: usize) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut self).await {
            let chunk = chunk?;
            if out.len().saturating_add(chunk.len()) > max {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("finished", &self.finished)
            .finish()
    }
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(BodyMessage::Chunk(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(BodyMessage::End)) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(BodyMessage::Error(error))) => {
                self.finished = true;
                Poll::Ready(Some(Err(error)))
            }
            // The connection went away without ending the message.
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Err(BodyError::Aborted)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Opens a [`Session`] for each connection. Shared by all connections.
pub trait Backend: Send + Sync + 'static {
    /// The per-connection state.
    type Session: Session;

    /// Called once a connection is accepted (after the PROXY header and the
    /// implicit TLS handshake, before the greeting). An error is sent
    /// instead of the greeting (an internal error as `421 4.3.0`) and the
    /// connection is closed.
    fn new_session(
        &self,
        info: &ConnectionInfo,
    ) -> impl Future<Output = Result<Self::Session, SmtpError>> + Send;
}

/// The hooks of one SMTP or LMTP session, called in protocol order.
///
/// Every hook may fail with an [`SmtpError`]: a reply error is sent as it
/// is, any other becomes `451 4.3.0` (`554 5.3.0` for the data hooks). A
/// hook that panics ends its connection with `421 4.3.0`; the server and
/// the other connections go on.
pub trait Session: Send + 'static {
    /// `HELO`, `EHLO` or `LHLO` with the client's name. Default: accept.
    fn helo(&mut self, domain: &str) -> impl Future<Output = Result<(), SmtpError>> + Send {
        let _ = domain;
        async { Ok(()) }
    }

    /// The client authenticated as `identity`. Default: nothing.
    fn authenticated(&mut self, identity: &Identity) -> impl Future<Output = ()> + Send {
        let _ = identity;
        async {}
    }

    /// `MAIL FROM`; `from` is `None` for the null reverse-path `<>`.
    /// `session` is the session so far (greeting, TLS, identity); the
    /// transaction starts only once this hook accepts, so its sender and
    /// recipients are still empty. Default: accept (`250 2.1.0`).
    ///
    /// ```
    /// # use smtp_server::{Address, Body, EnhancedCode, Envelope, MailParameters, Session, SmtpError};
    /// struct Submission;
    ///
    /// impl Session for Submission {
    ///     async fn mail(
    ///         &mut self,
    ///         session: &Envelope,
    ///         from: Option<&Address>,
    ///         _parameters: &MailParameters,
    ///     ) -> Result<(), SmtpError> {
    ///         // Authenticated users may only send as themselves.
    ///         let user = session.identity.as_ref().map(|identity| identity.name.as_str());
    ///         match (user, from) {
    ///             (Some(user), Some(from)) if from.as_str() == user => Ok(()),
    ///             _ => Err(SmtpError::new(553, EnhancedCode::new(5, 7, 1), "Sender not owned by you")),
    ///         }
    ///     }
    ///     # async fn data(&mut self, _: &Envelope, _: Body) -> Result<(), SmtpError> { Ok(()) }
    /// }
    /// ```
    fn mail(
        &mut self,
        session: &Envelope,
        from: Option<&Address>,
        parameters: &MailParameters,
    ) -> impl Future<Output = Result<(), SmtpError>> + Send {
        let _ = (session, from, parameters);
        async { Ok(()) }
    }

    /// `RCPT TO`. `transaction` is the session and the transaction so far:
    /// greeting, TLS, identity, the sender and the recipients accepted
    /// before this one. Default: accept (`250 2.1.5`).
    fn rcpt(
        &mut self,
        transaction: &Envelope,
        to: &Address,
        parameters: &RcptParameters,
    ) -> impl Future<Output = Result<(), SmtpError>> + Send {
        let _ = (transaction, to, parameters);
        async { Ok(()) }
    }

    /// The message. `Ok` means the handler takes responsibility for it: the
    /// client gets `250 2.0.0`, provided the body also ended normally (see
    /// [`Body`]). Returning before the stream ends accepts whatever
    /// follows, as long as it passes the size and line-ending checks.
    fn data(
        &mut self,
        envelope: &Envelope,
        body: Body,
    ) -> impl Future<Output = Result<(), SmtpError>> + Send;

    /// The message in an LMTP session: one result per recipient of
    /// `envelope.recipients`, in order (RFC 2033 §4.2). Missing results are
    /// answered `451 4.3.0`. Default: [`Session::data`]'s result for every
    /// recipient.
    fn lmtp_data(
        &mut self,
        envelope: &Envelope,
        body: Body,
    ) -> impl Future<Output = Vec<Result<(), SmtpError>>> + Send {
        async move {
            let result = self.data(envelope, body).await;
            vec![result; envelope.recipients.len()]
        }
    }

    /// `VRFY`. Default: `252 2.5.0`, neither confirming nor denying
    /// (RFC 5321 §3.5.3).
    fn vrfy(&mut self, argument: &str) -> impl Future<Output = Result<Reply, SmtpError>> + Send {
        let _ = argument;
        async {
            Ok(Reply::new(
                252,
                EnhancedCode::new(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ))
        }
    }

    /// The transaction was abandoned: `RSET`, a new greeting during a
    /// transaction, `STARTTLS`, or a `BDAT` transfer cut short. Not called
    /// after a message; the next `MAIL` starts a new transaction anyway.
    /// Default: nothing.
    fn reset(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// `QUIT`, before the `221` reply. An error is sent instead of the
    /// `221`; the connection closes either way (RFC 5321 §4.1.1.10).
    /// Default: `221`.
    fn quit(&mut self) -> impl Future<Output = Result<(), SmtpError>> + Send {
        async { Ok(()) }
    }

    /// The connection is closing. Default: nothing.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
