//! The receiving side: an smtp-server [`Backend`] that enforces relay
//! access and commits each message to the queue before its `250`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use smtp_proto::EnhancedCode;
use smtp_proto::address::Address;
use smtp_proto::command::{MailParameters, RcptParameters};
use smtp_server::{
    Backend, Body, ConnectionInfo, Envelope, IpNet, ReceivedHeader, Session, SmtpError,
};

use crate::clock::Clock;
use crate::queue::{MessageKind, NewMessage, QueueStore, QueuedEnvelope, QueuedRecipient};

/// Who may relay, and which domains are local.
///
/// RFC 5321 §3.6.2 and RFC 5068: a relay accepts mail for a domain it does
/// not serve only from clients it knows (authenticated, or from a trusted
/// network); mail for its own domains is accepted from anyone, as an MX
/// must.
///
/// ```
/// use smtp_relay::receive::RelayAccess;
/// let access = RelayAccess::new(["example.net"], ["127.0.0.0/8".parse().unwrap()]);
/// assert!(access.is_local("bob@EXAMPLE.net"));
/// assert!(!access.is_local("bob@example.org"));
/// assert!(access.may_relay("127.0.0.2".parse().unwrap(), false));
/// assert!(!access.may_relay("192.0.2.1".parse().unwrap(), false));
/// assert!(access.may_relay("192.0.2.1".parse().unwrap(), true));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RelayAccess {
    local_domains: Vec<String>,
    relay_networks: Vec<IpNet>,
}

impl RelayAccess {
    /// Local domains (compared without regard to ASCII case) and the
    /// networks allowed to relay without authenticating.
    pub fn new<D: AsRef<str>>(
        local_domains: impl IntoIterator<Item = D>,
        relay_networks: impl IntoIterator<Item = IpNet>,
    ) -> Self {
        Self {
            local_domains: local_domains
                .into_iter()
                .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            relay_networks: relay_networks.into_iter().collect(),
        }
    }

    /// The loopback networks, the default relay networks.
    pub fn loopback() -> Vec<IpNet> {
        vec![
            "127.0.0.0/8".parse().expect("valid network"),
            "::1/128".parse().expect("valid network"),
        ]
    }

    /// The local domains.
    pub fn local_domains(&self) -> &[String] {
        &self.local_domains
    }

    /// Whether `domain` is one of the local domains.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|local| local.eq_ignore_ascii_case(domain))
    }

    /// Whether the mailbox `address` is in a local domain.
    pub fn is_local(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, domain)| self.is_local_domain(domain))
    }

    /// Whether a client at `ip` may send to foreign domains.
    pub fn may_relay(&self, ip: IpAddr, authenticated: bool) -> bool {
        // An IPv4 client on an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        authenticated || self.relay_networks.iter().any(|net| net.contains(&ip))
    }
}

/// `554 5.7.1`: the recipient is neither local nor may this client relay
/// (RFC 3463 §3.8: delivery not authorized).
pub fn relay_denied() -> SmtpError {
    SmtpError::new(554, EnhancedCode::new(5, 7, 1), "relay access denied")
}

/// The [`Backend`] of a relay: opens one [`RelaySession`] per connection.
pub struct RelayBackend<S> {
    inner: Arc<BackendInner<S>>,
}

struct BackendInner<S> {
    store: S,
    access: RelayAccess,
    hostname: String,
    clock: Arc<dyn Clock>,
    max_message_size: usize,
}

impl<S> Clone for RelayBackend<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for RelayBackend<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBackend")
            .field("hostname", &self.inner.hostname)
            .field("access", &self.inner.access)
            .finish_non_exhaustive()
    }
}

impl<S: QueueStore> RelayBackend<S> {
    /// A backend that queues into `store`, names itself `hostname` in the
    /// `Received:` header it adds, and enforces `access`. Messages longer
    /// than `max_message_size` octets are refused (the server's own size
    /// limit should be the same).
    pub fn new(
        store: S,
        access: RelayAccess,
        hostname: impl Into<String>,
        clock: Arc<dyn Clock>,
        max_message_size: usize,
    ) -> Self {
        Self {
            inner: Arc::new(BackendInner {
                store,
                access,
                hostname: hostname.into(),
                clock,
                max_message_size,
            }),
        }
    }
}

/// One connection's session.
pub struct RelaySession<S> {
    backend: RelayBackend<S>,
    client: IpAddr,
}

impl<S> fmt::Debug for RelaySession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySession")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl<S: QueueStore> Backend for RelayBackend<S> {
    type Session = RelaySession<S>;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<RelaySession<S>, SmtpError> {
        Ok(RelaySession {
            backend: self.clone(),
            client: info.client_addr().ip(),
        })
    }
}

/// The reply when the queue could not commit the message; the client keeps
/// it and retries (RFC 5321 §4.2.5: never a 250 for what was not stored).
/// A full file system gives `452 4.3.1` (RFC 5321 §4.2.3 "insufficient
/// system storage", RFC 3463 §3.4 "mail system full"), any other failure
/// `451 4.3.0`.
fn queue_error(err: &std::io::Error) -> SmtpError {
    tracing::error!(error = %err, "queueing a message failed");
    if matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        SmtpError::new(
            452,
            EnhancedCode::new(4, 3, 1),
            "Requested action not taken: insufficient system storage",
        )
    } else {
        SmtpError::new(
            451,
            EnhancedCode::new(4, 3, 0),
            "Requested action aborted: local error in queue",
        )
    }
}

impl<S: QueueStore> Session for RelaySession<S> {
    async fn mail(
        &mut self,
        _session: &Envelope,
        _from: Option<&Address>,
        _parameters: &MailParameters,
    ) -> Result<(), SmtpError> {
        Ok(())
    }

    async fn rcpt(
        &mut self,
        transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        let access = &self.backend.inner.access;
        let local = to.domain().is_some_and(|d| access.is_local_domain(d));
        // The session view carries the identity of a successful AUTH.
        let authenticated = transaction.identity.is_some();
        if local || access.may_relay(self.client, authenticated) {
            Ok(())
        } else {
            tracing::info!(client = %self.client, recipient = to.as_str(), "relay access denied");
            Err(relay_denied())
        }
    }

    async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let inner = &self.backend.inner;
        let now = inner.clock.now();
        let received = ReceivedHeader::for_envelope(inner.hostname.clone(), envelope)
            .date(now)
            .to_string();
        let mut message = BytesMut::with_capacity(received.len() + 4096);
        message.extend_from_slice(received.as_bytes());
        while let Some(chunk) = body.next().await {
            // A body error (too large, bare line ending, aborted) gets the
            // library's own reply; nothing is queued.
            let chunk = chunk.map_err(SmtpError::other)?;
            if message.len() + chunk.len() > inner.max_message_size + received.len() {
                return Err(SmtpError::new(
                    552,
                    EnhancedCode::new(5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                ));
            }
            message.extend_from_slice(&chunk);
        }
        let parameters = &envelope.mail_parameters;
        let queued = QueuedEnvelope {
            sender: envelope.from.as_ref().map(|a| a.as_str().to_owned()),
            ret: parameters.ret,
            envid: parameters.envid.clone(),
            smtputf8: parameters.smtputf8,
            body_type: parameters.body,
            requiretls: parameters.requiretls,
            received_at: now,
            kind: MessageKind::Normal,
            recipients: envelope
                .recipients
                .iter()
                .map(|r| QueuedRecipient {
                    address: r.address.as_str().to_owned(),
                    notify: r.parameters.notify,
                    orcpt: r.parameters.orcpt.clone(),
                })
                .collect(),
        };
        let id = inner
            .store
            .enqueue(NewMessage {
                envelope: queued,
                body: Bytes::from(message),
            })
            .await
            .map_err(|e| queue_error(&e))?;
        tracing::info!(
            %id,
            recipients = envelope.recipients.len(),
            session = %envelope.session_id,
            "message queued"
        );
        Ok(())
    }
}
