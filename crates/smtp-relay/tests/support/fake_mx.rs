//! Scriptable fake MX servers for delivery tests, built on smtp-server and
//! bound to loopback addresses (`127.0.0.x`).
//!
//! A [`FakeMx`] is a real SMTP server (ESMTP, PIPELINING, CHUNKING,
//! 8BITMIME, SMTPUTF8, DSN and, unless switched off, STARTTLS with a
//! certificate made at start) whose behaviour a [`Script`] bends:
//!
//! - `greeting_reply(421, ..)`: answer every connection with that reply
//!   instead of the greeting, then close;
//! - `slow_greeting(d)`: wait `d` before the greeting;
//! - `temp_fail_data(n)`: the first `n` messages get `451 4.3.0` at the end
//!   of data, the ones after are accepted;
//! - `drop_after_data(n)`: for the first `n` messages the connection is cut
//!   after the whole body arrived, without any reply (the case RFC 5321
//!   §6.1 warns about: the client cannot know whether the message was
//!   taken);
//! - `reject_rcpt(addr, 550, "5.1.1", ..)`: refuse chosen recipients;
//! - `data_delay(d)`: hold the reply to the end of data for `d`;
//! - `no_starttls()`: do not offer STARTTLS;
//! - `extensions(..)`: choose the other ESMTP extensions;
//! - `auth(user, password)`: offer AUTH after STARTTLS and take only this
//!   account (the identity is recorded with each message);
//! - [`Script::plain`]: a plain ESMTP server, without STARTTLS and DSN.
//!
//! Drops come before temporary failures: with `drop_after_data(1)` and
//! `temp_fail_data(1)` the first message is dropped, the second gets 451,
//! the third is accepted.
//!
//! Every message whose body arrived completely is recorded byte for byte
//! (after dot-unstuffing, exactly what the client meant to send) with its
//! envelope and what the fake did with it; every command line the clients
//! sent is kept as it came over the wire ([`FakeMx::commands`]);
//! connections are counted, with the most that were open at once.
//!
//! ```ignore
//! let mxs = FakeMx::start_group(&[ip(2), ip(3)], vec![Script::new(), Script::new().temp_fail_data(1)]).await?;
//! // both listen on the same port: mxs[0].addr().port() == mxs[1].addr().port()
//! ```
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use smtp_proto::address::Address;
use smtp_proto::command::{MailParameters, RcptParameters};
use smtp_proto::{EnhancedCode, Reply};
use smtp_server::{
    Backend, Body, ConnectionInfo, Direction, Envelope, Extensions, LineKind, Server, Session,
    SmtpError, TlsConfig,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// The address `127.0.0.last`.
pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// How a fake MX behaves. [`Script::new`] accepts everything.
#[derive(Debug, Clone)]
pub struct Script {
    greeting_reply: Option<Reply>,
    greeting_delay: Duration,
    temp_fail_data: usize,
    drop_after_data: usize,
    data_delay: Duration,
    rcpt_replies: Vec<(String, Reply)>,
    starttls: bool,
    extensions: Extensions,
    hostname: String,
    auth: Option<(String, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// Accept every connection, recipient and message; offer STARTTLS and
    /// every extension.
    pub fn new() -> Self {
        Self {
            greeting_reply: None,
            greeting_delay: Duration::ZERO,
            temp_fail_data: 0,
            drop_after_data: 0,
            data_delay: Duration::ZERO,
            rcpt_replies: Vec::new(),
            starttls: true,
            extensions: Extensions::default(),
            hostname: "localhost".to_owned(),
            auth: None,
        }
    }

    /// A plain ESMTP server: every extension but DSN, no STARTTLS. A relay
    /// reports success itself after handing mail to it.
    pub fn plain() -> Self {
        Self::new().no_starttls().extensions(Extensions {
            dsn: false,
            ..Extensions::default()
        })
    }

    /// Offer AUTH (after STARTTLS only) for this one account, and refuse
    /// other credentials at once (no delayed replies).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Answer each connection with this reply instead of the greeting, and
    /// close it (e.g. `421 4.3.2`).
    pub fn greeting_reply(mut self, code: u16, enhanced: &str, text: &str) -> Self {
        self.greeting_reply = Some(reply(code, enhanced, text));
        self
    }

    /// Wait this long before the greeting.
    pub fn slow_greeting(mut self, delay: Duration) -> Self {
        self.greeting_delay = delay;
        self
    }

    /// The first `times` messages (after the dropped ones) get
    /// `451 4.3.0` at the end of data.
    pub fn temp_fail_data(mut self, times: usize) -> Self {
        self.temp_fail_data = times;
        self
    }

    /// Cut the connection without a reply after the body of each of the
    /// first `times` messages.
    pub fn drop_after_data(mut self, times: usize) -> Self {
        self.drop_after_data = times;
        self
    }

    /// Hold the reply to the end of data this long.
    pub fn data_delay(mut self, delay: Duration) -> Self {
        self.data_delay = delay;
        self
    }

    /// Refuse `address` (compared without case) at RCPT with this reply.
    pub fn reject_rcpt(mut self, address: &str, code: u16, enhanced: &str, text: &str) -> Self {
        self.rcpt_replies
            .push((address.to_ascii_lowercase(), reply(code, enhanced, text)));
        self
    }

    /// Do not offer STARTTLS.
    pub fn no_starttls(mut self) -> Self {
        self.starttls = false;
        self
    }

    /// The ESMTP extensions to offer (STARTTLS is set by
    /// [`no_starttls`](Self::no_starttls)).
    pub fn extensions(mut self, extensions: Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// The name in the greeting and in the certificate (default
    /// `localhost`).
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = hostname.to_owned();
        self
    }
}

fn reply(code: u16, enhanced: &str, text: &str) -> Reply {
    let enhanced = EnhancedCode::parse(enhanced).expect("a valid enhanced status code");
    Reply::new(code, enhanced, text.to_owned())
}

/// What the fake did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `250`: the message was taken.
    Accepted,
    /// `451 4.3.0` at the end of data.
    TempFailed,
    /// The connection was cut after the body, without a reply.
    Dropped,
}

/// One message whose body arrived completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The EHLO/HELO name.
    pub helo: String,
    /// The reverse-path; `None` for `<>`.
    pub from: Option<String>,
    /// The MAIL parameters (SIZE, BODY, SMTPUTF8, RET, ENVID, ...).
    pub mail: MailParameters,
    /// The accepted recipients with their parameters (NOTIFY, ORCPT).
    pub recipients: Vec<(String, RcptParameters)>,
    /// The message, byte for byte.
    pub body: Vec<u8>,
    /// The session was encrypted (STARTTLS).
    pub tls: bool,
    /// Who authenticated, if anyone.
    pub identity: Option<String>,
    /// What the fake answered.
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
struct State {
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    messages: AtomicUsize,
    rcpt_commands: AtomicUsize,
    received: Mutex<Vec<Received>>,
    commands: Mutex<Vec<String>>,
    kills: Mutex<HashMap<String, Arc<Notify>>>,
    changed: Notify,
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<State>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

#[derive(Clone)]
struct MxBackend {
    script: Arc<Script>,
    state: Arc<State>,
}

struct MxSession {
    script: Arc<Script>,
    state: Arc<State>,
    kill: Arc<Notify>,
    helo: String,
}

impl Backend for MxBackend {
    type Session = MxSession;

    async fn new_session(&self, info: &ConnectionInfo) -> Result<MxSession, SmtpError> {
        if !self.script.greeting_delay.is_zero() {
            tokio::time::sleep(self.script.greeting_delay).await;
        }
        if let Some(reply) = &self.script.greeting_reply {
            return Err(SmtpError::reply(reply.clone()));
        }
        let kill = self
            .state
            .kills
            .lock()
            .unwrap()
            .get(&info.id)
            .cloned()
            .unwrap_or_default();
        Ok(MxSession {
            script: Arc::clone(&self.script),
            state: Arc::clone(&self.state),
            kill,
            helo: String::new(),
        })
    }
}

impl Session for MxSession {
    async fn helo(&mut self, domain: &str) -> Result<(), SmtpError> {
        self.helo = domain.to_owned();
        Ok(())
    }

    async fn rcpt(
        &mut self,
        _transaction: &Envelope,
        to: &Address,
        _parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        self.state.rcpt_commands.fetch_add(1, Ordering::SeqCst);
        let to = to.as_str().to_ascii_lowercase();
        match self.script.rcpt_replies.iter().find(|(a, _)| *a == to) {
            Some((_, reply)) => Err(SmtpError::reply(reply.clone())),
            None => Ok(()),
        }
    }

    async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(SmtpError::other)?);
        }
        let index = self.state.messages.fetch_add(1, Ordering::SeqCst);
        let script = &self.script;
        let outcome = if index < script.drop_after_data {
            Outcome::Dropped
        } else if index < script.drop_after_data + script.temp_fail_data {
            Outcome::TempFailed
        } else {
            Outcome::Accepted
        };
        self.state.received.lock().unwrap().push(Received {
            helo: self.helo.clone(),
            from: envelope.from.as_ref().map(|a| a.as_str().to_owned()),
            mail: envelope.mail_parameters.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| (r.address.as_str().to_owned(), r.parameters.clone()))
                .collect(),
            body: bytes,
            tls: envelope.tls.is_some(),
            identity: envelope.identity.as_ref().map(|i| i.name.clone()),
            outcome,
        });
        self.state.changed.notify_waiters();
        if !script.data_delay.is_zero() {
            tokio::time::sleep(script.data_delay).await;
        }
        match outcome {
            Outcome::Accepted => Ok(()),
            Outcome::TempFailed => Err(SmtpError::new(
                451,
                EnhancedCode::new(4, 3, 0),
                "scripted temporary failure",
            )),
            Outcome::Dropped => {
                // The connection task drops the session's stream as soon
                // as it sees the signal; this hook never returns a reply.
                self.kill.notify_one();
                std::future::pending().await
            }
        }
    }
}

/// A running fake MX. Dropping it stops the server and cuts its
/// connections.
pub struct FakeMx {
    addr: SocketAddr,
    state: Arc<State>,
    certificate_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeMx {
    /// Starts a fake on `ip` and a free port.
    pub async fn start(ip: Ipv4Addr, script: Script) -> io::Result<FakeMx> {
        Self::start_on(SocketAddr::new(IpAddr::V4(ip), 0), script).await
    }

    /// Starts a fake on `addr` (port 0 picks one).
    pub async fn start_on(addr: SocketAddr, script: Script) -> io::Result<FakeMx> {
        let listener = TcpListener::bind(addr).await?;
        Self::serve(listener, script)
    }

    /// Starts one fake per address, all on the same port, as MX delivery to
    /// a fixed port (`--mx-port`) needs.
    pub async fn start_group(ips: &[Ipv4Addr], scripts: Vec<Script>) -> io::Result<Vec<FakeMx>> {
        assert_eq!(ips.len(), scripts.len(), "one script per address");
        let Some(first) = ips.first() else {
            return Ok(Vec::new());
        };
        let mut last_error = None;
        'attempt: for _ in 0..50 {
            let listener = TcpListener::bind((*first, 0)).await?;
            let port = listener.local_addr()?.port();
            let mut listeners = vec![listener];
            for ip in &ips[1..] {
                match TcpListener::bind((*ip, port)).await {
                    Ok(listener) => listeners.push(listener),
                    Err(error) => {
                        last_error = Some(error);
                        continue 'attempt;
                    }
                }
            }
            return listeners
                .into_iter()
                .zip(scripts)
                .map(|(listener, script)| Self::serve(listener, script))
                .collect();
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no common free port")))
    }

    fn serve(listener: TcpListener, script: Script) -> io::Result<FakeMx> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let mut builder = Server::builder(MxBackend {
            script: Arc::new(script.clone()),
            state: Arc::clone(&state),
        })
        .hostname(script.hostname.clone())
        .extensions(script.extensions.clone());
        let commands = Arc::clone(&state);
        builder = builder.transcript(move |line| {
            if line.direction == Direction::Client && line.kind == LineKind::Wire {
                commands.commands.lock().unwrap().push(line.text.to_owned());
            }
        });
        let mut certificate_pem = None;
        if script.starttls {
            let certified = rcgen::generate_simple_self_signed(vec![script.hostname.clone()])
                .map_err(io::Error::other)?;
            let cert_pem = certified.cert.pem();
            let key_pem = certified.signing_key.serialize_pem();
            let tls = TlsConfig::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
                .map_err(io::Error::other)?;
            builder = builder.tls(tls);
            certificate_pem = Some(cert_pem);
            if let Some((user, password)) = &script.auth {
                let mut users = smtp_server::StaticUsers::new();
                users.add_plain(user, password).map_err(io::Error::other)?;
                builder = builder
                    .auth(users, smtp_server::AuthPolicy::new())
                    // Tests refuse credentials on purpose: no delayed replies.
                    .auth_throttle(smtp_server::AuthThrottle::disabled());
            }
        }
        let server = builder.build().map_err(io::Error::other)?;
        let task_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            // Dropping the JoinSet (when the fake is dropped and this task
            // aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let Ok((stream, peer)) = accepted else {
                    continue;
                };
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                let info = ConnectionInfo::new(peer, local);
                let kill = Arc::new(Notify::new());
                task_state
                    .kills
                    .lock()
                    .unwrap()
                    .insert(info.id.clone(), Arc::clone(&kill));
                task_state.connections.fetch_add(1, Ordering::SeqCst);
                let open = task_state.open.fetch_add(1, Ordering::SeqCst) + 1;
                task_state.max_open.fetch_max(open, Ordering::SeqCst);
                task_state.changed.notify_waiters();
                let guard = OpenGuard(Arc::clone(&task_state));
                let server = server.clone();
                let state = Arc::clone(&task_state);
                connections.spawn(async move {
                    let id = info.id.clone();
                    tokio::select! {
                        _ = server.serve_connection(stream, info) => {}
                        () = kill.notified() => {}
                    }
                    state.kills.lock().unwrap().remove(&id);
                    drop(guard);
                });
            }
        });
        Ok(FakeMx {
            addr,
            state,
            certificate_pem,
            task,
        })
    }

    /// Where the fake listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the certificate STARTTLS presents, if offered.
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    /// Every message whose body arrived, in order, whatever the answer.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The messages the fake took (answered 250).
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.outcome == Outcome::Accepted)
            .collect()
    }

    /// Every command line clients sent, in order, as on the wire without
    /// its CRLF (AUTH secrets masked; message data not included).
    pub fn commands(&self) -> Vec<String> {
        self.state.commands.lock().unwrap().clone()
    }

    /// The command lines that start with `verb` (compared without case),
    /// e.g. `"RCPT"`.
    pub fn commands_starting(&self, verb: &str) -> Vec<String> {
        self.commands()
            .into_iter()
            .filter(|line| {
                line.get(..verb.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(verb))
            })
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// RCPT commands seen, accepted or not.
    pub fn rcpt_commands(&self) -> usize {
        self.state.rcpt_commands.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` messages were accepted, at most
    /// `timeout`; returns whether they were.
    pub async fn wait_accepted(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.accepted().len() >= count)
            .await
    }

    /// Waits until `condition` holds (checked whenever a connection opens
    /// or closes or a message arrives), at most `timeout`.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so no change is missed.
            changed.as_mut().enable();
            if condition() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return condition();
            }
        }
    }
}

impl Drop for FakeMx {
    fn drop(&mut self) {
        self.task.abort();
    }
}
