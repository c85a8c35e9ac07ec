//! One delivery attempt: the recipients of one message for one
//! [`Destination`], in one transaction, over smtp-client pools (one pool
//! per next hop, so connections are reused across messages).
//!
//! This module is the only place that uses smtp-client.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use smtp_client::{
    Address, ClientConfig, Envelope, Error, ErrorKind, Message, Pool, PoolConfig, Recipient,
    RecipientOutcome, SendResult, Step, Timeouts, Tls, TlsConfig,
};

use crate::clock::Clock;
use crate::queue::{AttemptReport, QueuedEnvelope};
use crate::route::{Destination, HostPort, Router, SmarthostTls};

/// A boxed future, for the object-safe traits below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A mail exchanger of a domain, with its addresses in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchanger's name (for the TLS server name and `Remote-MTA`).
    pub name: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
}

/// Why a domain's mail exchangers are not known: the reply line to record
/// (and report in a DSN's `Diagnostic-Code`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxError {
    /// A temporary DNS failure (SERVFAIL, timeout): try again later.
    Temporary(String),
    /// Permanent: the domain does not exist, has no mail host, or publishes
    /// a null MX (RFC 7505, `556 5.1.10`).
    Permanent(String),
}

/// Finds the mail exchangers of a domain, in the order to try them
/// (RFC 5321 §5.1: by preference, equal preferences shuffled, implicit MX
/// when there is none). [`crate::dns::MxResolver`] is the implementation
/// on real DNS.
pub trait MxLookup: Send + Sync + fmt::Debug + 'static {
    /// The exchangers of `domain`.
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxHost>, MxError>>;
}

impl MxLookup for crate::dns::MxResolver {
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<MxHost>, MxError>> {
        Box::pin(async move {
            match crate::dns::MxResolver::resolve(self, domain).await {
                Ok(targets) => Ok(targets
                    .into_iter()
                    .map(|target| MxHost {
                        name: target.exchange,
                        addresses: target.addresses,
                    })
                    .collect()),
                Err(error) if error.is_temporary() => Err(MxError::Temporary(error.to_string())),
                Err(error) => Err(MxError::Permanent(error.to_string())),
            }
        })
    }
}

/// Final delivery for local domains.
pub trait LocalDelivery: Send + Sync + fmt::Debug + 'static {
    /// Stores `body` for the recipients `recipients` (indexes into
    /// `envelope.recipients`). `Ok` only once it is stored durably.
    fn deliver<'a>(
        &'a self,
        envelope: &'a QueuedEnvelope,
        recipients: &'a [usize],
        body: Bytes,
    ) -> BoxFuture<'a, io::Result<()>>;
}

/// What became of one recipient in an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    /// Delivered or relayed.
    Delivered(AttemptReport),
    /// Not this time (4xx, timeout, connection trouble).
    Temporary(AttemptReport),
    /// Never (5xx).
    Permanent(AttemptReport),
}

impl RecipientResult {
    /// The report.
    pub fn report(&self) -> &AttemptReport {
        match self {
            RecipientResult::Delivered(r)
            | RecipientResult::Temporary(r)
            | RecipientResult::Permanent(r) => r,
        }
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// One result per recipient of the attempt, in order.
    pub results: Vec<RecipientResult>,
    /// No next hop of the destination could be reached (connection
    /// refused, timeout, greeting refused, TLS failure): the whole
    /// destination should back off.
    pub connection_failure: bool,
    /// The next hop offered `DSN` and took the message with its DSN
    /// parameters (`NOTIFY`, `ORCPT`, `RET`, `ENVID`): success notices are
    /// its responsibility now, and this relay issues none (RFC 3461
    /// §5.2.1). False for local delivery and for a next hop without DSN,
    /// where a recipient asking for `NOTIFY=SUCCESS` gets a notice from
    /// here (`delivered`, §5.2.3, or `relayed`, §5.2.2).
    pub dsn_passed_on: bool,
}

/// How deliveries are made.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// The name in `EHLO`.
    pub hello_name: String,
    /// The port of mail exchangers (25; other values are for tests and
    /// labs).
    pub mx_port: u16,
    /// The most connections at once to one next hop.
    pub max_per_destination: usize,
    /// Client timeouts.
    pub timeouts: Timeouts,
    /// Whether a connection stays open in its pool after an attempt, for
    /// the next message to the same host (default `true`). `false` closes
    /// it (`QUIT`) before the attempt returns: for a per-destination cap
    /// counted outside this node (the slots of a queue shared by several
    /// nodes, see [`QueueStore::acquire_slot`](crate::queue::QueueStore::acquire_slot)),
    /// which must bound the connections the destination sees, and an idle
    /// connection kept by one node would not be counted when another node
    /// takes the slot.
    pub reuse_connections: bool,
}

impl fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("hello_name", &self.hello_name)
            .field("mx_port", &self.mx_port)
            .field("max_per_destination", &self.max_per_destination)
            .field("reuse_connections", &self.reuse_connections)
            .finish_non_exhaustive()
    }
}

impl DeliveryConfig {
    /// Defaults: port 25, 20 connections per destination (as Postfix's
    /// `default_destination_concurrency_limit`), the client's timeouts.
    pub fn new(hello_name: impl Into<String>) -> Self {
        Self {
            hello_name: hello_name.into(),
            mx_port: 25,
            max_per_destination: 20,
            timeouts: Timeouts::default(),
            reuse_connections: true,
        }
    }
}

/// Which pool a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    /// The name for SNI, when it differs from `host` (an MX name for an
    /// address).
    server_name: Option<String>,
    smarthost: bool,
    requiretls: bool,
    /// Never STARTTLS: the retry after a failed opportunistic handshake.
    plaintext: bool,
}

/// Makes delivery attempts.
pub struct Deliverer {
    config: DeliveryConfig,
    router: Router,
    resolver: Option<Arc<dyn MxLookup>>,
    local: Option<Arc<dyn LocalDelivery>>,
    clock: Arc<dyn Clock>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("config", &self.config)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

/// One line for a client error: its reply when the server gave one.
fn diagnostic(error: &Error) -> String {
    match error.reply() {
        Some(reply) => reply.to_string(),
        None => error.to_string(),
    }
}

fn connection_level(error: &Error) -> bool {
    matches!(
        error.step(),
        Step::Connect | Step::TlsHandshake | Step::Greeting | Step::Hello | Step::StartTls
    ) && !matches!(error.kind(), ErrorKind::InvalidInput)
}

impl Deliverer {
    /// A deliverer routing with `router`; `resolver` is needed for MX
    /// delivery and `local` for local domains.
    pub fn new(
        config: DeliveryConfig,
        router: Router,
        resolver: Option<Arc<dyn MxLookup>>,
        local: Option<Arc<dyn LocalDelivery>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            config,
            router,
            resolver,
            local,
            clock,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The configuration.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        let pools: Vec<Pool> = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, pool)| pool)
            .collect();
        for pool in pools {
            pool.close().await;
        }
    }

    fn report(&self, remote: Option<&str>, diagnostic: impl Into<String>) -> AttemptReport {
        AttemptReport {
            remote_mta: remote.map(str::to_owned),
            diagnostic: diagnostic.into(),
            at: self.clock.now(),
        }
    }

    fn all(
        &self,
        count: usize,
        make: impl Fn(AttemptReport) -> RecipientResult,
        remote: Option<&str>,
        diagnostic: &str,
    ) -> Vec<RecipientResult> {
        (0..count)
            .map(|_| make(self.report(remote, diagnostic)))
            .collect()
    }

    /// Delivers `body` to the recipients `recipients` of `envelope`, which
    /// all route to `destination`.
    pub async fn attempt(
        &self,
        destination: &Destination,
        envelope: &QueuedEnvelope,
        recipients: &[usize],
        body: Bytes,
    ) -> AttemptOutcome {
        let count = recipients.len();
        match destination {
            Destination::Local => {
                let Some(local) = &self.local else {
                    return AttemptOutcome {
                        results: self.all(
                            count,
                            RecipientResult::Temporary,
                            None,
                            "451 4.3.5 no local delivery configured",
                        ),
                        connection_failure: false,
                        dsn_passed_on: false,
                    };
                };
                let results = match local.deliver(envelope, recipients, body).await {
                    Ok(()) => self.all(count, RecipientResult::Delivered, None, "250 2.0.0 stored"),
                    Err(err) => {
                        tracing::error!(error = %err, "local delivery failed");
                        self.all(
                            count,
                            RecipientResult::Temporary,
                            None,
                            &format!("451 4.3.0 local delivery failed: {err}"),
                        )
                    }
                };
                AttemptOutcome {
                    results,
                    connection_failure: false,
                    dsn_passed_on: false,
                }
            }
            Destination::Route(hop) => {
                let hops = [(hop.clone(), None)];
                self.send_via(&hops, false, envelope, recipients, body)
                    .await
            }
            Destination::Smarthost => {
                let Some(smarthost) = self.router.smarthost() else {
                    return AttemptOutcome {
                        results: self.all(
                            count,
                            RecipientResult::Temporary,
                            None,
                            "451 4.3.5 no smarthost configured",
                        ),
                        connection_failure: false,
                        dsn_passed_on: false,
                    };
                };
                let hops = [(smarthost.address.clone(), None)];
                self.send_via(&hops, true, envelope, recipients, body).await
            }
            Destination::Mx(domain) => self.send_mx(domain, envelope, recipients, body).await,
        }
    }

    async fn send_mx(
        &self,
        domain: &str,
        envelope: &QueuedEnvelope,
        recipients: &[usize],
        body: Bytes,
    ) -> AttemptOutcome {
        let count = recipients.len();
        let port = self.config.mx_port;
        // RFC 5321 §4.1.3: a domain literal names the host itself.
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let literal = literal.strip_prefix("IPv6:").unwrap_or(literal);
            return match literal.parse::<IpAddr>() {
                Ok(ip) => {
                    let hops = [(
                        HostPort {
                            host: ip.to_string(),
                            port,
                        },
                        None,
                    )];
                    self.send_via(&hops, false, envelope, recipients, body)
                        .await
                }
                Err(_) => AttemptOutcome {
                    results: self.all(
                        count,
                        RecipientResult::Permanent,
                        None,
                        "553 5.1.2 invalid address literal",
                    ),
                    connection_failure: false,
                    dsn_passed_on: false,
                },
            };
        }
        let Some(resolver) = &self.resolver else {
            return AttemptOutcome {
                results: self.all(
                    count,
                    RecipientResult::Temporary,
                    None,
                    "451 4.4.3 no DNS resolver configured",
                ),
                connection_failure: false,
                dsn_passed_on: false,
            };
        };
        let hosts = match resolver.resolve(domain).await {
            Ok(hosts) => hosts,
            Err(MxError::Temporary(diagnostic)) => {
                return AttemptOutcome {
                    results: self.all(count, RecipientResult::Temporary, None, &diagnostic),
                    connection_failure: true,
                    dsn_passed_on: false,
                };
            }
            // RFC 7505 §4.2: a null MX fails at once (556 5.1.10), as does
            // a domain that does not exist.
            Err(MxError::Permanent(diagnostic)) => {
                return AttemptOutcome {
                    results: self.all(count, RecipientResult::Permanent, None, &diagnostic),
                    connection_failure: false,
                    dsn_passed_on: false,
                };
            }
        };
        // RFC 5321 §5.1: every address of an exchanger before the next.
        let hops: Vec<(HostPort, Option<String>)> = hosts
            .iter()
            .flat_map(|mx| {
                mx.addresses.iter().map(|ip| {
                    (
                        HostPort {
                            host: ip.to_string(),
                            port,
                        },
                        Some(mx.name.trim_end_matches('.').to_owned()),
                    )
                })
            })
            .collect();
        if hops.is_empty() {
            return AttemptOutcome {
                results: self.all(
                    count,
                    RecipientResult::Temporary,
                    None,
                    &format!("451 4.4.4 no address for the exchangers of {domain}"),
                ),
                connection_failure: true,
                dsn_passed_on: false,
            };
        }
        self.send_via(&hops, false, envelope, recipients, body)
            .await
    }

    fn pool(&self, key: PoolKey) -> Result<Pool, String> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let mut builder = ClientConfig::builder(key.host.clone())
            .port(key.port)
            .hello_name(self.config.hello_name.clone())
            .timeouts(self.config.timeouts);
        if key.smarthost {
            let smarthost = self
                .router
                .smarthost()
                .ok_or_else(|| "no smarthost configured".to_owned())?;
            builder = builder
                .tls(match smarthost.tls {
                    SmarthostTls::Starttls => Tls::Required,
                    SmarthostTls::Implicit => Tls::Implicit,
                    SmarthostTls::Opportunistic if key.requiretls => Tls::Required,
                    SmarthostTls::Opportunistic => Tls::Opportunistic,
                })
                .tls_config(smarthost.tls_config.clone());
            if let Some(credentials) = &smarthost.credentials {
                builder = builder.credentials(credentials.clone());
            }
        } else {
            // RFC 7435: encrypt when the peer offers it, without insisting
            // on a certificate nobody checks for MX hosts (MTA-STS and DANE
            // are what authenticates them, and come later). REQUIRETLS
            // (RFC 8689 §4.2) insists on TLS and a valid certificate.
            let mut tls = TlsConfig::new();
            if let Some(name) = &key.server_name {
                tls = tls.server_name(name.clone());
            }
            if key.requiretls {
                builder = builder.tls(Tls::Required);
            } else if key.plaintext {
                builder = builder.tls(Tls::None);
            } else {
                tls = tls.dangerous_accept_invalid_certs(true);
                builder = builder.tls(Tls::Opportunistic);
            }
            builder = builder.tls_config(tls);
        }
        let config = builder.build().map_err(|e| e.to_string())?;
        let pool = Pool::new(
            config,
            PoolConfig {
                max_connections: self.config.max_per_destination.max(1),
                ..PoolConfig::default()
            },
        );
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    fn client_envelope(
        &self,
        envelope: &QueuedEnvelope,
        recipients: &[usize],
    ) -> Result<Envelope, String> {
        let mut builder = Envelope::builder();
        if let Some(sender) = &envelope.sender {
            let from = Address::parse(sender, true)
                .map_err(|e| format!("553 5.1.7 bad sender address: {e}"))?;
            builder = builder.from(from);
        }
        for &n in recipients {
            let queued = &envelope.recipients[n];
            let address = Address::parse(&queued.address, true)
                .map_err(|e| format!("553 5.1.3 bad recipient address: {e}"))?;
            let mut recipient = Recipient::from(address);
            // RFC 3461 §5.2: the DSN parameters travel with the message;
            // the client sends them when the next hop offers DSN.
            if let Some(notify) = queued.notify {
                recipient = recipient.notify(notify);
            }
            if let Some(orcpt) = &queued.orcpt {
                recipient = recipient.orcpt(orcpt.addr_type.clone(), orcpt.address.clone());
            }
            builder = builder.recipient(recipient);
        }
        if let Some(ret) = envelope.ret {
            builder = builder.ret(ret);
        }
        if let Some(envid) = &envelope.envid {
            builder = builder.envid(envid.clone());
        }
        builder
            .smtputf8(envelope.smtputf8)
            .requiretls(envelope.requiretls)
            .build()
            .map_err(|e| format!("554 5.6.0 cannot relay this envelope: {e}"))
    }

    async fn send_via(
        &self,
        hops: &[(HostPort, Option<String>)],
        smarthost: bool,
        envelope: &QueuedEnvelope,
        recipients: &[usize],
        body: Bytes,
    ) -> AttemptOutcome {
        let count = recipients.len();
        let client_envelope = match self.client_envelope(envelope, recipients) {
            Ok(e) => e,
            Err(diagnostic) => {
                return AttemptOutcome {
                    results: self.all(count, RecipientResult::Permanent, None, &diagnostic),
                    connection_failure: false,
                    dsn_passed_on: false,
                };
            }
        };
        let mut last_failure = String::from("451 4.4.1 no next hop reachable");
        for (hop, name) in hops {
            let remote = name.clone().unwrap_or_else(|| hop.host.clone());
            let mut plaintext = false;
            let sent = loop {
                let key = PoolKey {
                    host: hop.host.clone(),
                    port: hop.port,
                    server_name: name.clone(),
                    smarthost,
                    requiretls: envelope.requiretls,
                    plaintext,
                };
                let pool = match self.pool(key) {
                    Ok(pool) => pool,
                    Err(err) => {
                        return AttemptOutcome {
                            results: self.all(
                                count,
                                RecipientResult::Temporary,
                                None,
                                &format!("451 4.3.5 {err}"),
                            ),
                            connection_failure: false,
                            dsn_passed_on: false,
                        };
                    }
                };
                let mut message = Message::from_bytes(body.clone());
                if let Some(body_type) = envelope.body_type {
                    message = message.body_type(body_type);
                }
                let sent = pool.send(&client_envelope, message).await;
                if !self.config.reuse_connections {
                    // Back in the pool idle by now: closed before the
                    // caller gives its slot up.
                    pool.close().await;
                }
                // RFC 7435 §3: opportunistic security falls back to
                // cleartext rather than not communicate. A failed STARTTLS
                // handshake ends its connection, so the host is tried once
                // more on a fresh one without STARTTLS. Never for a
                // smarthost or for REQUIRETLS mail, which insist on TLS.
                let tls_failed = sent.as_ref().is_err_and(|error| {
                    error.kind() == ErrorKind::Tls
                        && matches!(error.step(), Step::StartTls | Step::TlsHandshake)
                });
                if tls_failed && !plaintext && !smarthost && !envelope.requiretls {
                    tracing::info!(next_hop = %hop, "STARTTLS failed; trying again without TLS");
                    plaintext = true;
                    continue;
                }
                break sent;
            };
            match sent {
                Ok(result) => {
                    return AttemptOutcome {
                        results: self.map_result(&result, &remote),
                        connection_failure: false,
                        dsn_passed_on: result.dsn_offered,
                    };
                }
                Err(error) if connection_level(&error) => {
                    // RFC 5321 §5.1: a host that cannot be reached, refuses
                    // the session at its greeting or fails TLS set-up is
                    // skipped for the next one.
                    tracing::debug!(next_hop = %hop, error = %error, "next hop unusable");
                    last_failure = match (error.reply(), error.kind()) {
                        (Some(reply), _) => format!("{reply} (at {hop})"),
                        (None, ErrorKind::Tls | ErrorKind::TlsUnavailable) => {
                            format!("451 4.7.5 {error} (at {hop})")
                        }
                        (None, _) => format!("451 4.4.1 {error} (at {hop})"),
                    };
                }
                Err(error) if error.step() == Step::Auth => {
                    // Our credentials or the server's AUTH are broken: keep
                    // the mail and try again, as a 5xx here says nothing
                    // about the recipients.
                    tracing::warn!(next_hop = %hop, error = %error, "authentication failed");
                    return AttemptOutcome {
                        results: self.all(
                            count,
                            RecipientResult::Temporary,
                            Some(&remote),
                            &format!("451 4.7.0 {}", diagnostic(&error)),
                        ),
                        connection_failure: true,
                        dsn_passed_on: false,
                    };
                }
                Err(error) => {
                    return AttemptOutcome {
                        results: self.map_error(&error, &remote, count),
                        connection_failure: false,
                        dsn_passed_on: false,
                    };
                }
            }
        }
        AttemptOutcome {
            results: self.all(count, RecipientResult::Temporary, None, &last_failure),
            connection_failure: true,
            dsn_passed_on: false,
        }
    }

    fn map_outcome(
        &self,
        outcome: &RecipientOutcome,
        remote: &str,
        fallback: &str,
    ) -> RecipientResult {
        let text = outcome
            .reply()
            .map_or_else(|| fallback.to_owned(), ToString::to_string);
        let report = self.report(Some(remote), text);
        if outcome.accepted {
            RecipientResult::Delivered(report)
        } else if outcome.reply().is_some_and(|r| r.is_permanent()) {
            RecipientResult::Permanent(report)
        } else {
            RecipientResult::Temporary(report)
        }
    }

    fn map_result(&self, result: &SendResult, remote: &str) -> Vec<RecipientResult> {
        let fallback = result
            .reply
            .as_ref()
            .map_or_else(|| "250 accepted".to_owned(), ToString::to_string);
        result
            .recipients
            .iter()
            .map(|outcome| self.map_outcome(outcome, remote, &fallback))
            .collect()
    }

    fn map_error(&self, error: &Error, remote: &str, count: usize) -> Vec<RecipientResult> {
        let text = diagnostic(error);
        if error.recipients().len() == count {
            return error
                .recipients()
                .iter()
                .map(|outcome| {
                    if outcome.accepted {
                        // Accepted at RCPT but the transaction failed later.
                        let report = self.report(Some(remote), text.clone());
                        if error.is_transient() {
                            RecipientResult::Temporary(report)
                        } else {
                            RecipientResult::Permanent(report)
                        }
                    } else {
                        self.map_outcome(outcome, remote, &text)
                    }
                })
                .collect();
        }
        if error.is_transient() {
            self.all(count, RecipientResult::Temporary, Some(remote), &text)
        } else {
            self.all(count, RecipientResult::Permanent, Some(remote), &text)
        }
    }
}
