//! A whole relay (receiving server, spool, scheduler) on loopback with a
//! manual clock, and the small client helpers its tests use. The next
//! hops are the scripted servers of [`super::fake_mx`].
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smtp_proto::address::Address;
use smtp_relay::clock::{Clock, ManualClock};
use smtp_relay::deliver::{Deliverer, DeliveryConfig, LocalDelivery, MxLookup};
use smtp_relay::queue::{QueuedMessage, RecipientState};
use smtp_relay::receive::{RelayAccess, RelayBackend};
use smtp_relay::route::{HostPort, Router, Smarthost};
use smtp_relay::scheduler::{Scheduler, SchedulerConfig};
use smtp_relay::spool::{Durability, Spool};
use smtp_server::{IpNet, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Where the manual clock starts.
pub fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
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
