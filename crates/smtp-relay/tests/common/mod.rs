//! Test harness: scripted fake MX servers on smtp-server, and a whole relay
//! (receiving server, spool, scheduler) on loopback with a manual clock.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use smtp_proto::EnhancedCode;
use smtp_proto::address::Address;
use smtp_proto::command::{MailParameters, RcptParameters};
use smtp_relay::clock::{Clock, ManualClock};
use smtp_relay::deliver::{Deliverer, DeliveryConfig, LocalDelivery, MxLookup};
use smtp_relay::queue::{QueuedMessage, RecipientState};
use smtp_relay::receive::{RelayAccess, RelayBackend};
use smtp_relay::route::{HostPort, Router, Smarthost};
use smtp_relay::scheduler::{Scheduler, SchedulerConfig};
use smtp_relay::spool::{Durability, Spool};
use smtp_server::{Backend, Body, ConnectionInfo, Envelope, IpNet, Server, Session, SmtpError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Where the manual clock starts.
pub fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// One message a fake MX accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub from: Option<String>,
    pub mail: MailParameters,
    pub recipients: Vec<(String, RcptParameters)>,
    pub body: Vec<u8>,
    /// Who authenticated, if anyone.
    pub identity: Option<String>,
}

/// How a fake MX answers.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Answer the connection with this instead of a greeting.
    pub greeting: Option<(u16, &'static str)>,
    /// Recipients refused at RCPT with (code, enhanced code, text).
    pub rcpt_replies: Vec<(&'static str, u16, &'static str)>,
    /// The first N messages get `451 4.3.0` at the end of data.
    pub data_451_times: usize,
    /// Offer DSN.
    pub dsn: bool,
    /// Offer STARTTLS (a certificate for `localhost` made now) and AUTH
    /// after it, for this user and password.
    pub tls_auth: Option<(&'static str, &'static str)>,
}

#[derive(Debug, Default)]
pub struct MxLog {
    pub sessions: AtomicUsize,
    pub data_attempts: AtomicUsize,
    pub delivered: Mutex<Vec<Delivered>>,
}

#[derive(Clone)]
struct MxBackend {
    script: Arc<Script>,
    log: Arc<MxLog>,
}

struct MxSession {
    script: Arc<Script>,
    log: Arc<MxLog>,
    rcpt_params: Vec<RcptParameters>,
}

impl Backend for MxBackend {
    type Session = MxSession;
    async fn new_session(&self, _info: &ConnectionInfo) -> Result<MxSession, SmtpError> {
        self.log.sessions.fetch_add(1, Ordering::SeqCst);
        if let Some((code, text)) = self.script.greeting {
            let class = (code / 100) as u8;
            return Err(SmtpError::new(code, EnhancedCode::new(class, 3, 2), text));
        }
        Ok(MxSession {
            script: Arc::clone(&self.script),
            log: Arc::clone(&self.log),
            rcpt_params: Vec::new(),
        })
    }
}

impl Session for MxSession {
    async fn rcpt(
        &mut self,
        _transaction: &Envelope,
        to: &Address,
        parameters: &RcptParameters,
    ) -> Result<(), SmtpError> {
        for (address, code, enhanced) in &self.script.rcpt_replies {
            if to.as_str().eq_ignore_ascii_case(address) {
                let enhanced = EnhancedCode::parse(enhanced).unwrap();
                return Err(SmtpError::new(*code, enhanced, "scripted refusal"));
            }
        }
        self.rcpt_params.push(parameters.clone());
        Ok(())
    }

    async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.map_err(SmtpError::other)?);
        }
        let attempt = self.log.data_attempts.fetch_add(1, Ordering::SeqCst);
        if attempt < self.script.data_451_times {
            return Err(SmtpError::new(
                451,
                EnhancedCode::new(4, 3, 0),
                "scripted temporary failure",
            ));
        }
        self.log.delivered.lock().unwrap().push(Delivered {
            from: envelope.from.as_ref().map(|a| a.as_str().to_owned()),
            mail: envelope.mail_parameters.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| (r.address.as_str().to_owned(), r.parameters.clone()))
                .collect(),
            body: bytes,
            identity: envelope.identity.as_ref().map(|i| i.name.clone()),
        });
        Ok(())
    }
}

/// A scripted SMTP server on loopback.
pub struct FakeMx {
    pub addr: SocketAddr,
    pub log: Arc<MxLog>,
    /// The certificate STARTTLS presents, with `tls_auth`.
    pub certificate_pem: Option<String>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeMx {
    pub async fn start(script: Script) -> FakeMx {
        Self::start_at("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_at(addr: SocketAddr, script: Script) -> FakeMx {
        let log = Arc::new(MxLog::default());
        let extensions = smtp_server::Extensions {
            dsn: script.dsn,
            ..smtp_server::Extensions::default()
        };
        let tls_auth = script.tls_auth;
        let mut builder = Server::builder(MxBackend {
            script: Arc::new(script),
            log: Arc::clone(&log),
        })
        .hostname("mx.test")
        .extensions(extensions)
        .listen(addr);
        let mut certificate_pem = None;
        if let Some((user, password)) = tls_auth {
            let certified =
                rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            let cert = certified.cert.pem();
            let key = certified.signing_key.serialize_pem();
            builder = builder
                .tls(smtp_server::TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap())
                .auth(users(&[(user, password)]), smtp_server::AuthPolicy::new())
                // Tests refuse credentials on purpose: no delayed replies.
                .auth_throttle(smtp_server::AuthThrottle::disabled());
            certificate_pem = Some(cert);
        }
        let server = builder.build().unwrap();
        let listening = server.bind().await.unwrap();
        let addr = listening.local_addrs()[0];
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            let _ = listening
                .serve(async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeMx {
            addr,
            log,
            certificate_pem,
            stop: Some(stop),
        }
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        self.log.delivered.lock().unwrap().clone()
    }

    pub fn sessions(&self) -> usize {
        self.log.sessions.load(Ordering::SeqCst)
    }

    pub fn data_attempts(&self) -> usize {
        self.log.data_attempts.load(Ordering::SeqCst)
    }
}

impl Drop for FakeMx {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How to set up a relay.
pub struct RelayOptions {
    pub local_domains: Vec<String>,
    pub relay_networks: Vec<IpNet>,
    pub routes: Vec<(String, SocketAddr)>,
    pub smarthost: Option<Smarthost>,
    pub resolver: Option<Arc<dyn MxLookup>>,
    pub local: Option<Arc<dyn LocalDelivery>>,
    pub mx_port: u16,
    pub scheduler: SchedulerConfig,
    pub listen: SocketAddr,
    pub authenticator: bool,
    pub max_per_destination: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            local_domains: Vec::new(),
            relay_networks: RelayAccess::loopback(),
            routes: Vec::new(),
            smarthost: None,
            resolver: None,
            local: None,
            mx_port: 25,
            scheduler: SchedulerConfig::new("relay.test"),
            listen: "127.0.0.1:0".parse().unwrap(),
            authenticator: false,
            max_per_destination: 20,
        }
    }
}

/// smtp-server's accounts with these names and plain passwords.
pub fn users(accounts: &[(&str, &str)]) -> smtp_server::StaticUsers {
    let mut users = smtp_server::StaticUsers::new();
    for (name, password) in accounts {
        users.add_plain(*name, *password).unwrap();
    }
    users
}

/// smtp-server's accounts with `user`/`secret`.
pub fn test_users() -> smtp_server::StaticUsers {
    users(&[("user", "secret")])
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    pub spool: Spool,
    pub clock: Arc<ManualClock>,
    pub scheduler: Scheduler<Spool>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn start(dir: &std::path::Path, options: RelayOptions) -> Relay {
        let clock = Arc::new(ManualClock::new(start_time()));
        Self::start_with_clock(dir, options, clock).await
    }

    pub async fn start_with_clock(
        dir: &std::path::Path,
        options: RelayOptions,
        clock: Arc<ManualClock>,
    ) -> Relay {
        let spool = Spool::open(dir, Durability::Os).unwrap();
        let access = RelayAccess::new(&options.local_domains, options.relay_networks.clone());
        let mut router = Router::new(access.clone());
        for (domain, addr) in &options.routes {
            router.add_route(
                domain,
                HostPort {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                },
            );
        }
        if let Some(smarthost) = options.smarthost {
            router.set_smarthost(smarthost);
        }
        let dyn_clock: Arc<dyn Clock> = clock.clone();
        let mut delivery = DeliveryConfig::new("relay.test");
        delivery.mx_port = options.mx_port;
        delivery.max_per_destination = options.max_per_destination;
        delivery.timeouts = smtp_client::Timeouts::uniform(Duration::from_secs(5));
        let deliverer = Deliverer::new(
            delivery,
            router,
            options.resolver,
            options.local,
            Arc::clone(&dyn_clock),
        );
        let backend = RelayBackend::new(
            spool.clone(),
            access,
            "relay.test",
            Arc::clone(&dyn_clock),
            10 * 1024 * 1024,
        );
        let mut builder = Server::builder(backend)
            .hostname("relay.test")
            .listen(options.listen);
        if options.authenticator {
            builder = builder.auth(
                test_users(),
                smtp_server::AuthPolicy::new().allow_insecure(true),
            );
        }
        let server = builder.build().unwrap();
        let listening = server.bind().await.unwrap();
        let addr = listening.local_addrs()[0];
        let scheduler = Scheduler::new(spool.clone(), deliverer, dyn_clock, options.scheduler);
        let handle = scheduler.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_server_tx, stop_server_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut server_stop = stop_server_rx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = listening
                .serve(async move {
                    let _ = server_stop.wait_for(|stop| *stop).await;
                })
                .await;
        }));
        let mut scheduler_stop = stop_server_rx;
        tasks.push(tokio::spawn(async move {
            scheduler
                .run(async move {
                    let _ = scheduler_stop.wait_for(|stop| *stop).await;
                })
                .await;
        }));
        tasks.push(tokio::spawn(async move {
            let _ = stopped.await;
            let _ = stop_server_tx.send(true);
        }));
        Relay {
            addr,
            spool,
            clock,
            scheduler: handle,
            stop: Some(stop),
            tasks,
        }
    }

    /// Stops the relay and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    pub fn clock_now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn messages(&self) -> Vec<QueuedMessage> {
        self.spool.snapshot()
    }

    /// Advances the clock and lets the scheduler act on it.
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every 10 ms for up to 10 s.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether every recipient of every queued message is deferred (and none
/// claimed any more, as far as the queue shows).
pub fn all_deferred(messages: &[QueuedMessage]) -> bool {
    messages.iter().all(|m| {
        m.states
            .iter()
            .all(|s| matches!(s, RecipientState::Deferred { .. }))
    })
}

/// Submits one message with smtp-client (plaintext) and returns the result.
pub async fn submit(
    relay: SocketAddr,
    envelope: &smtp_client::Envelope,
    message: &str,
) -> Result<smtp_client::SendResult, smtp_client::Error> {
    let config = smtp_client::ClientConfig::builder(relay.ip().to_string())
        .port(relay.port())
        .tls(smtp_client::Tls::None)
        .hello_name("client.test")
        .build()
        .unwrap();
    smtp_client::Client::new(config)
        .send(envelope, message.to_owned())
        .await
}

pub fn address(text: &str) -> Address {
    Address::parse(text, true).unwrap()
}

/// A raw SMTP conversation: sends each line and returns every reply line.
pub struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connects from `source` (a loopback address) to `server`.
    pub async fn connect_from(source: &str, server: SocketAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream: TcpStream = socket.connect(server).await.unwrap();
        let (read, writer) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = raw.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        raw
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            assert!(!line.is_empty(), "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
    }

    /// Sends `line` and reads the reply.
    pub async fn command(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}
