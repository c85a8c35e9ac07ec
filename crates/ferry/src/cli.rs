//! The command-line interface: `ferry serve`, `ferry send`, `ferry bench`,
//! `ferry relay`, `ferry queue`, `ferry check`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

/// Receive, send and load-test SMTP mail.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive mail over SMTP (or LMTP) into a Maildir, or discard it.
    Serve(ServeArgs),
    /// Send one message.
    Send(SendArgs),
    /// Load-test an SMTP server.
    Bench(BenchArgs),
    /// Relay mail: accept it into a durable queue and deliver it onwards
    /// (MX, routes, a smarthost, or a local Maildir), with retries and
    /// bounces.
    Relay(Box<RelayArgs>),
    /// Look into and act on a running relay's queue (through its --admin
    /// interface): list, show, summary, flush, hold, release, delete.
    Queue(crate::queue::QueueArgs),
    /// Check a mail domain's DNS policy and servers, or one SMTP server.
    ///
    /// A domain gets its MX set, SPF, DMARC, DKIM, MTA-STS, TLS-RPT and DANE
    /// checked, then every address of every MX host; HOST:PORT is one
    /// server (port 465 means implicit TLS). Each check prints pass, warn,
    /// fail, info or skip with the evidence, the RFC and, for warn and
    /// fail, how to fix it.
    Check(Box<CheckArgs>),
}

/// What `--bare-lf` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BareLf {
    /// Refuse a message with a bare CR or LF (550 5.5.2).
    Reject,
    /// Store such a message as it arrived.
    Accept,
}

/// `ferry serve`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Stored files start with Return-Path, one Delivered-To per recipient and a \
Received header, then the message exactly as received. Without --tls-cert a self-signed \
certificate is generated at start and written as ferry-cert.pem in the Maildir directory, \
for `ferry send --ca`."
)]
pub struct ServeArgs {
    /// Listeners, TLS, accounts and limits.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// The Maildir to deliver into (tmp/, new/ and cur/ are created).
    #[arg(long, value_name = "DIR", default_value = "mail")]
    pub maildir: PathBuf,
    /// Accept and discard every message (for benchmarks).
    #[arg(long)]
    pub sink: bool,
    /// Speak LMTP (RFC 2033): LHLO, and one reply and one file per recipient.
    #[arg(long)]
    pub lmtp: bool,
    /// Refuse MAIL with 452 4.3.1 while the Maildir's file system has less
    /// free space than this, in octets; 0 turns the check off [default:
    /// 1.5 times --max-message-size].
    #[arg(long, value_name = "OCTETS")]
    pub min_free_space: Option<u64>,
    /// Misbehave on purpose: fault rules from FILE (one per line, see
    /// docs/testing.md), or `magic` for the magic addresses (550@...,
    /// 451@..., 421@..., slow-5s@...). SIGHUP reloads the file. Connections
    /// are then served without the connection limits.
    #[arg(long, value_name = "FILE|magic", conflicts_with_all = ["tls_listen", "proxy_protocol"])]
    pub faults: Option<String>,
    /// Threads that accept and serve connections, each with its own
    /// accept loop on the same port (SO_REUSEPORT) and its own
    /// single-threaded runtime, so a session never moves between threads
    /// [default: the number of CPUs]. With --faults: always 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// How a receiving command listens: shared by `ferry serve` and
/// `ferry relay`.
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Address to listen on for SMTP (repeatable).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    pub listen: Vec<SocketAddr>,
    /// Address to listen on with implicit TLS, as on port 465 (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<SocketAddr>,
    /// Name in the greeting, EHLO reply, Received headers and certificate
    /// [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Certificate chain (PEM) for STARTTLS and --tls-listen.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Do not offer STARTTLS.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_listen", "require_tls"])]
    pub no_tls: bool,
    /// An account for AUTH PLAIN and LOGIN (repeatable).
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// Accounts for AUTH, one `name:argon2-PHC-hash` per line (at most
    /// 16 MiB; argon2 parameters up to m=256 MiB, t=16, p=16).
    #[arg(long, value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Refuse mail from clients that have not authenticated (530 5.7.0).
    #[arg(long)]
    pub require_auth: bool,
    /// Refuse mail before STARTTLS (530 5.7.0).
    #[arg(long)]
    pub require_tls: bool,
    /// Offer AUTH over unencrypted connections too.
    #[arg(long)]
    pub allow_insecure_auth: bool,
    /// Largest message accepted, in octets (announced with SIZE).
    #[arg(long, value_name = "BYTES", default_value_t = 26_214_400, value_parser = at_least::<1>)]
    pub max_message_size: u64,
    /// Most recipients per message (the next one gets 452 4.5.3). The
    /// default is the 100 RFC 5321 §4.5.3.1.8 asks a server to be able to
    /// buffer; submission services often allow fewer.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = at_least::<1>)]
    pub max_recipients: u64,
    /// Most connections at once; refused at start when the file descriptor
    /// limit cannot hold it [default: 1000, lowered to what that limit
    /// holds].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub max_connections: Option<u64>,
    /// Most connections at once from one IP address [default: 20].
    #[arg(long, value_name = "N", value_parser = at_least::<1>)]
    pub max_connections_per_ip: Option<u64>,
    /// Idle timeout per command, in seconds: sets the command, data and
    /// data-termination timeouts at once [default: the RFC 5321 §4.5.3.2
    /// values].
    #[arg(long, value_name = "SECS", value_parser = seconds::<1>)]
    pub timeout: Option<u64>,
    /// Waiting for the next command, in seconds (overrides --timeout)
    /// [default: 300].
    #[arg(long, value_name = "SECS", value_parser = seconds::<1>)]
    pub command_timeout: Option<u64>,
    /// Waiting for the next block of message data, in seconds (overrides
    /// --timeout) [default: 180].
    #[arg(long, value_name = "SECS", value_parser = seconds::<1>)]
    pub data_timeout: Option<u64>,
    /// Storing a message after its end arrived, in seconds (overrides
    /// --timeout) [default: 600].
    #[arg(long, value_name = "SECS", value_parser = seconds::<1>)]
    pub data_termination_timeout: Option<u64>,
    /// Total lifetime of one connection, in seconds, whatever it does.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = seconds::<1>)]
    pub session_timeout: u64,
    /// Time allowed for a TLS handshake, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = seconds::<1>)]
    pub tls_handshake_timeout: u64,
    /// Time allowed for the PROXY header to arrive, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = seconds::<1>)]
    pub proxy_header_timeout: u64,
    /// Pause before the greeting, in seconds; a client that talks during
    /// it gets 554 5.5.0.
    #[arg(long, value_name = "SECS", default_value_t = 0, value_parser = seconds::<0>)]
    pub greeting_delay: u64,
    /// Time connections get to finish after SIGTERM, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = seconds::<0>)]
    pub shutdown_timeout: u64,
    /// Longest command line in octets, CRLF included; at least 512
    /// (RFC 5321 §4.5.3.1.4).
    #[arg(long, value_name = "OCTETS", default_value_t = 2048, value_parser = at_least::<512>)]
    pub max_line_length: u64,
    /// Protocol errors before 421 4.7.0 and close.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_errors: u32,
    /// Failed AUTH attempts on one connection before 421 4.7.0 and close.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_auth_failures: u32,
    /// NOOP, RSET, HELP, VRFY and EXPN commands allowed between two
    /// messages before each further one counts as a protocol error.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_junk_commands: u32,
    /// Slowest accepted message transfer, in octets per second: DATA or
    /// BDAT must end within the data timeout plus one second per this many
    /// octets received. 0 turns the check off.
    #[arg(long, value_name = "OCTETS", default_value_t = 500)]
    pub min_data_rate: u64,
    /// Largest PROXY protocol header, in octets; at least 108.
    #[arg(long, value_name = "OCTETS", default_value_t = 4096, value_parser = at_least::<108>)]
    pub proxy_header_max: u64,
    /// Open connections from which on the server is under stress: shorter
    /// timeouts (--stress-timeout), one protocol error and one junk
    /// command allowed [default: 3/4 of --max-connections, rounded up, at
    /// least 2].
    #[arg(long, value_name = "N", value_parser = at_least::<1>, conflicts_with = "no_stress")]
    pub stress_connections: Option<u64>,
    /// Command and data timeout under stress, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = seconds::<1>, conflicts_with = "no_stress")]
    pub stress_timeout: u64,
    /// Never shorten timeouts or limits under load.
    #[arg(long)]
    pub no_stress: bool,
    /// What to do with a bare CR or LF in a message.
    #[arg(long, value_enum, default_value_t = BareLf::Reject)]
    pub bare_lf: BareLf,
    /// Accept a PROXY protocol header from these trusted sources (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub proxy_protocol: Vec<IpNet>,
    /// Print the SMTP conversation as `C:`/`S:` lines, each prefixed with
    /// its session id; AUTH payloads are masked and message bodies shown
    /// by size only.
    #[arg(long)]
    pub transcript: bool,
}

/// How `ferry relay` commits a message before it answers 250.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityMode {
    /// Write and fsync the queue (data and directory entries) before the
    /// 250: an accepted message survives a crash or power loss.
    Sync,
    /// Write but do not fsync: survives `kill -9` of ferry, not a power
    /// loss or a kernel crash.
    Os,
}

/// How `ferry relay` protects the connection to its smarthost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmarthostTlsMode {
    /// STARTTLS, required.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `ferry relay`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Durability: with --durability sync (the default) the 250 after DATA \
is sent only once the message and its envelope are fsynced to the spool, so an accepted \
message survives a crash or power loss; messages arriving together share one fsync (group \
commit). With --durability os the spool is written but not synced: an accepted message \
survives kill -9 of ferry, but not a power loss or kernel crash.

Memory: each session holds the message it is receiving in memory until the spool has committed it, so receiving can take up to --max-connections times --max-message-size (25 GiB with the defaults of 1000 and 25 MiB, if every session sends a largest message at once); size the two together for the memory the relay may use. Deliveries read each body back from the spool and hold it while it is sent: up to 1000 messages at once.

Relay access: mail for a --local-domain is accepted from anyone; any other recipient only from \
an authenticated client or a --relay-network (default: loopback only). Everyone else gets \
554 5.7.1 relay access denied.

Routing, per recipient domain: --local-domain (into --maildir, or its --route), then --route, \
then --smarthost, else the domain's MX records. Durations take s, m, h or d (300, 5m, 4h, 5d)."
)]
pub struct RelayArgs {
    /// Listeners, TLS, accounts and limits.
    #[command(flatten)]
    pub listener: ListenerArgs,
    /// The queue directory.
    #[arg(long, value_name = "DIR", default_value = "spool")]
    pub spool: PathBuf,
    /// When a message counts as accepted: sync (fsynced) or os (written).
    #[arg(long, value_enum, default_value_t = DurabilityMode::Sync)]
    pub durability: DurabilityMode,
    /// A domain this relay is the final destination for (repeatable).
    #[arg(long, value_name = "DOMAIN")]
    pub local_domain: Vec<String>,
    /// The Maildir that mail for --local-domain is delivered into.
    #[arg(long, value_name = "DIR")]
    pub maildir: Option<PathBuf>,
    /// Clients allowed to relay without authenticating (repeatable)
    /// [default: 127.0.0.0/8 and ::1].
    #[arg(long, value_name = "CIDR")]
    pub relay_network: Vec<IpNet>,
    /// Send mail for DOMAIN to HOST:PORT, or to `[IP]:PORT` (repeatable).
    #[arg(long, value_name = "DOMAIN=HOST:PORT")]
    pub route: Vec<String>,
    /// Send everything not local and not routed through this host.
    #[arg(long, value_name = "HOST:PORT")]
    pub smarthost: Option<String>,
    /// How to protect the smarthost connection.
    #[arg(long, value_enum, default_value_t = SmarthostTlsMode::Starttls, requires = "smarthost")]
    pub smarthost_tls: SmarthostTlsMode,
    /// User name for AUTH at the smarthost (sent over TLS only).
    #[arg(long, value_name = "NAME", requires_all = ["smarthost", "smarthost_password_env"])]
    pub smarthost_user: Option<String>,
    /// The environment variable holding the smarthost password.
    #[arg(long, value_name = "VAR", requires = "smarthost_user")]
    pub smarthost_password_env: Option<String>,
    /// Trust only the certificates in this PEM file for the smarthost.
    #[arg(long, value_name = "PEM", requires = "smarthost")]
    pub smarthost_ca: Option<PathBuf>,
    /// The DNS resolver to ask for MX records [default: the system's].
    #[arg(long, value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,
    /// Connect to mail exchangers on this port instead of 25 (for tests
    /// and labs only).
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub mx_port: u16,
    /// Most connections at once to one destination. With --queue, across
    /// every node sharing the queue, idle ones included: each delivery then
    /// closes its connection.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = at_least::<1>)]
    pub max_per_destination: u64,
    /// Fixed retry delays, the last repeating (for example 5m,30m,2h).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_duration,
          conflicts_with_all = ["retry_min", "retry_max"])]
    pub retry_schedule: Vec<std::time::Duration>,
    /// The first retry delay; later ones double.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub retry_min: std::time::Duration,
    /// The longest retry delay.
    #[arg(long, value_name = "DURATION", default_value = "4h", value_parser = parse_duration)]
    pub retry_max: std::time::Duration,
    /// How long a message may wait before undelivered recipients bounce.
    #[arg(long, value_name = "DURATION", default_value = "5d", value_parser = parse_duration)]
    pub max_queue_lifetime: std::time::Duration,
    /// When to warn senders who asked for NOTIFY=DELAY.
    #[arg(long, value_name = "DURATION", default_value = "4h", value_parser = parse_duration)]
    pub delay_warning: std::time::Duration,
    /// The shared queue, the admin interface and the event log.
    #[command(flatten)]
    pub ops: crate::ops::OpsArgs,
}

/// Parses `300`, `30s`, `5m`, `4h` or `5d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 30s, 5m, 4h, 5d)"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    if value == 0 {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(std::time::Duration::from_secs(
        value.saturating_mul(seconds),
    ))
}

/// How `ferry send` and `ferry bench` use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Plain text only.
    None,
    /// STARTTLS when offered, plain text otherwise.
    Opportunistic,
    /// STARTTLS, or fail.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `--auth` for `ferry send`: which SASL mechanism carries the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthChoice {
    /// PLAIN when the server offers it, else LOGIN.
    Auto,
    /// PLAIN only (RFC 4616); fail if the server does not offer it.
    Plain,
    /// LOGIN only; fail if the server does not offer it.
    Login,
}

/// `--pipelining` for `ferry bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pipelining {
    /// Pipeline when the server offers PIPELINING.
    Auto,
    /// One command at a time.
    Off,
}

/// Connection options shared by `send` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The server to talk to: HOST:PORT, or a connection URL such as
    /// smtp://user:pass@host:587 (STARTTLS), smtps://host:465 (implicit
    /// TLS), smtp://host:25?tls=opportunistic or lmtp://host:24.
    #[arg(long, value_name = "HOST:PORT|URL", default_value = "127.0.0.1:2525")]
    pub server: String,
    /// TLS mode; certificates and host names are verified unless --insecure
    /// [default: starttls, or what the --server URL says].
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// Skip certificate and host name checks.
    #[arg(long)]
    pub insecure: bool,
    /// Trust only the certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Time limit for each network step, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = seconds::<1>)]
    pub timeout: u64,
    /// Name to give in EHLO [default: the system host name].
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
}

/// `ferry send`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 when every recipient was accepted, 75 when every \
failure was transient (4xx, timeout, connection refused or lost, TLS trouble, an unknown \
outcome after the message was sent), 1 on a permanent failure, 2 on usage errors."
)]
pub struct SendArgs {
    /// Connection options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Send AUTH even over an unencrypted connection.
    #[arg(long)]
    pub allow_insecure_auth: bool,
    /// Sender (envelope and From:); `Name <address>` is allowed.
    #[arg(long, value_name = "ADDRESS")]
    pub from: String,
    /// Recipient, in To: (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub to: Vec<String>,
    /// Recipient, in Cc: (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Vec<String>,
    /// Recipient, in no header (repeatable).
    #[arg(long, value_name = "ADDRESS")]
    pub bcc: Vec<String>,
    /// Subject line.
    #[arg(long)]
    pub subject: Option<String>,
    /// Body text.
    #[arg(long, value_name = "TEXT", conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Body text from a file (UTF-8).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Attach a file (repeatable); its type comes from its extension.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Extra header field (repeatable).
    #[arg(long, value_name = "'Name: value'")]
    pub header: Vec<String>,
    /// Send this complete message as it is (`-` reads standard input); only
    /// line ends are normalised to CRLF and leading dots doubled.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["subject", "body", "body_file", "attach", "header"])]
    pub raw: Option<PathBuf>,
    /// User name for AUTH (the mechanism is chosen with --auth).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// AUTH mechanism: auto takes PLAIN when offered, else LOGIN; plain or
    /// login use only that one and fail when the server does not offer it.
    #[arg(long, value_enum, value_name = "MECHANISM", default_value_t = AuthChoice::Auto, requires = "user")]
    pub auth: AuthChoice,
    /// Password for AUTH.
    #[arg(long, requires = "user", conflicts_with = "password_env")]
    pub password: Option<String>,
    /// Read the AUTH password from this environment variable.
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// Print the SMTP conversation as C:/S: lines on standard error.
    #[arg(long)]
    pub transcript: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `ferry bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Connection options.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// How many messages to send [default: 1000 unless --duration].
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Send for this many seconds instead of a fixed count; a hard bound:
    /// sends still in flight then are cancelled.
    #[arg(long, value_name = "SECS", value_parser = seconds::<1>)]
    pub duration: Option<u64>,
    /// How many messages are in flight at once.
    #[arg(long, value_name = "C", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Size of each message in octets, headers included.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,
    /// Recipients per message.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub recipients: u32,
    /// Envelope sender.
    #[arg(long, value_name = "ADDRESS", default_value = "bench@example.com")]
    pub from: String,
    /// Envelope recipient; with --recipients N > 1, `+1` .. `+N` are added
    /// to its local part.
    #[arg(long, value_name = "ADDRESS", default_value = "sink@example.com")]
    pub to: String,
    /// Use PIPELINING when offered.
    #[arg(long, value_enum, default_value_t = Pipelining::Auto)]
    pub pipelining: Pipelining,
    /// Close each connection after this many messages (1: a new
    /// connection, greeting, EHLO and QUIT for every message).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages_per_connection: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `ferry check`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "What is sent by default: EHLO, STARTTLS, NOOP, RSET, an unknown command \
(XFERRYCHECK), VRFY postmaster, EXPN postmaster, MAIL FROM:<> with RCPT TO:<postmaster> (and a \
nested MAIL and RSET, pipelined when offered), MAIL FROM:<> SIZE=<limit+1>, MAIL FROM a reserved \
example domain with RCPT TO a reserved example domain (the open-relay probe), RSET<LF>NOOP<CRLF>, \
STARTTLS<CRLF>RSET<CRLF> in one write (injection probe), two ClientHellos offering only TLS 1.0 \
and TLS 1.1, and QUIT; with --user, AUTH (only over TLS) and MAIL FROM a foreign domain. Without \
--intrusive, DATA is never sent. Connections are opened one at a time.

--intrusive (needs --rcpt) adds, for each of the five end-of-data variants <LF>.<LF>, \
<LF>.<CRLF>, <CRLF>.<LF>, <CR>.<CRLF> and <CRLF>.<CR>: a new session with MAIL FROM:<RCPT>, \
RCPT TO:<RCPT>, DATA and a short message with the subject \"ferry check smuggling probe\" ending \
in that variant; then the connection is dropped without <CRLF>.<CRLF>, so a safe server stores \
nothing. A server that answers 250 has accepted the probe message for RCPT. Use it only on your \
own servers.

Exit status: 0 when no check failed, 1 when one did, 2 on usage errors."
)]
pub struct CheckArgs {
    /// A mail domain (example.com) or one server (HOST:PORT).
    #[arg(value_name = "DOMAIN|HOST:PORT")]
    pub target: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Include the SMTP conversations (AUTH masked) in the report.
    #[arg(long)]
    pub transcript: bool,
    /// Time limit for each network step, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = at_least::<1>)]
    pub timeout: u64,
    /// How long to wait for the 220 greeting, in seconds (RFC 5321
    /// §4.5.3.2.1 asks senders to wait 5 minutes).
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = at_least::<1>)]
    pub greeting_timeout: u64,
    /// Name to give in EHLO [default: the local address literal].
    #[arg(long, value_name = "NAME")]
    pub helo: Option<String>,
    /// Trust the certificates in this PEM file as well as the public roots
    /// (for a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Mail domain of a HOST:PORT target, for `RCPT TO:<postmaster@DOMAIN>`
    /// (default: the unqualified `<postmaster>`).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Use TLS from the first byte (RFC 8314 §3); implied by port 465.
    #[arg(long)]
    pub implicit_tls: bool,
    /// Log in with this user (over TLS only) to check authenticated
    /// submission.
    #[arg(long, value_name = "NAME", requires = "password_env")]
    pub user: Option<String>,
    /// Read the --user password from this environment variable.
    #[arg(long, value_name = "VAR", requires = "user")]
    pub password_env: Option<String>,
    /// Also run the SMTP smuggling probes, which send DATA (see below);
    /// only for your own servers.
    #[arg(long, requires = "rcpt")]
    pub intrusive: bool,
    /// The recipient of the --intrusive probe messages.
    #[arg(long, value_name = "ADDRESS", requires = "intrusive")]
    pub rcpt: Option<String>,
    /// Ask this DNS resolver instead of the system's.
    #[arg(long, value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,
    /// Trust these DNSKEY records (zone-file lines) for DNSSEC instead of
    /// the IANA root keys, for private or test zones.
    #[arg(long, value_name = "FILE")]
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Check the DKIM key published for this selector (repeatable).
    #[arg(long, value_name = "SELECTOR")]
    pub dkim_selector: Vec<String>,
    /// For tests only: connect to MX hosts on this port instead of 25.
    #[arg(long, value_name = "PORT", hide = true)]
    pub test_mx_port: Option<u16>,
    /// For tests only: fetch the MTA-STS policy from this port instead of 443.
    #[arg(long, value_name = "PORT", hide = true)]
    pub test_mta_sts_port: Option<u16>,
}

/// The host name of this machine, for greetings and Received headers:
/// the kernel's idea of it on Linux, else `localhost`.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Longest accepted duration option, in seconds (one day). Bounding every
/// duration keeps deadlines far from overflow, and keeps a session shorter
/// than the Maildir `tmp/` cleaner's 36 hours.
pub const DURATION_MAX_SECS: u64 = 24 * 60 * 60;

/// Parses a number of seconds from `MIN` to [`DURATION_MAX_SECS`].
fn seconds<const MIN: u64>(text: &str) -> Result<u64, String> {
    let value = at_least::<MIN>(text)?;
    if value > DURATION_MAX_SECS {
        return Err(format!(
            "must be at most {DURATION_MAX_SECS} seconds (one day)"
        ));
    }
    Ok(value)
}

/// Parses a whole number no smaller than `MIN`, for flags where a smaller
/// value would make the program useless or break an RFC minimum.
fn at_least<const MIN: u64>(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if value < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferry").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults() {
        let Command::Serve(serve) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            serve.listener.listen,
            vec!["127.0.0.1:2525".parse().unwrap()]
        );
        assert_eq!(serve.maildir, PathBuf::from("mail"));
        assert_eq!(serve.listener.max_message_size, 26_214_400);
        assert_eq!(serve.listener.max_recipients, 100);
        assert_eq!(serve.listener.bare_lf, BareLf::Reject);
        assert!(!serve.sink && !serve.lmtp && !serve.listener.no_tls);
        assert_eq!(serve.threads, None);
        let Command::Serve(serve) = parse(&["serve", "--threads", "3"]).unwrap().command else {
            panic!()
        };
        assert_eq!(serve.threads, Some(3));
        assert!(parse(&["serve", "--threads", "0"]).is_err());
    }

    #[test]
    fn serve_flags() {
        let Command::Serve(serve) = parse(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:2526",
            "--tls-listen",
            "127.0.0.1:4650",
            "--user",
            "a:b",
            "--user",
            "c:d",
            "--proxy-protocol",
            "10.0.0.0/8",
            "--bare-lf",
            "accept",
            "--lmtp",
            "--timeout",
            "30",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(serve.listener.listen.len(), 2);
        assert_eq!(serve.listener.tls_listen.len(), 1);
        assert_eq!(serve.listener.user, vec!["a:b", "c:d"]);
        assert_eq!(serve.listener.proxy_protocol[0].to_string(), "10.0.0.0/8");
        assert_eq!(serve.listener.bare_lf, BareLf::Accept);
        assert_eq!(serve.listener.timeout, Some(30));
    }

    #[test]
    fn serve_refuses_inconsistent_flags() {
        for args in [
            &["serve", "--tls-cert", "c.pem"][..],
            &["serve", "--no-tls", "--require-tls"],
            &["serve", "--no-tls", "--tls-listen", "127.0.0.1:465"],
            &["serve", "--listen", "nowhere"],
            &["serve", "--bare-lf", "maybe"],
            &["serve", "--proxy-protocol", "10.0.0.0/99"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn send_flags() {
        let Command::Send(send) = parse(&[
            "send",
            "--server",
            "mx.example:587",
            "--tls",
            "implicit",
            "--from",
            "a@example.com",
            "--to",
            "b@example.com",
            "--to",
            "c@example.com",
            "--bcc",
            "d@example.com",
            "--header",
            "X-A: 1",
            "--attach",
            "f.pdf",
            "--user",
            "u",
            "--password-env",
            "PW",
            "--json",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(send.connect.server, "mx.example:587");
        assert_eq!(send.connect.tls, Some(TlsMode::Implicit));
        assert_eq!(send.to.len(), 2);
        assert_eq!(send.bcc, vec!["d@example.com"]);
        assert_eq!(send.password_env.as_deref(), Some("PW"));
        assert_eq!(send.auth, AuthChoice::Auto);
        assert!(send.json);
        let Command::Send(send) = parse(&["send", "--from", "a@b", "--to", "c@d"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(send.connect.tls, None);
        assert_eq!(send.connect.server, "127.0.0.1:2525");
    }

    #[test]
    fn send_auth_mechanism() {
        for (value, expected) in [
            ("auto", AuthChoice::Auto),
            ("plain", AuthChoice::Plain),
            ("login", AuthChoice::Login),
        ] {
            let Command::Send(send) = parse(&[
                "send",
                "--from",
                "a@b",
                "--to",
                "c@d",
                "--user",
                "u",
                "--password",
                "p",
                "--auth",
                value,
            ])
            .unwrap()
            .command
            else {
                panic!()
            };
            assert_eq!(send.auth, expected, "{value}");
        }
        for args in [
            &["send", "--from", "a@b", "--to", "c@d", "--auth", "login"][..],
            &[
                "send",
                "--from",
                "a@b",
                "--to",
                "c@d",
                "--user",
                "u",
                "--password",
                "p",
                "--auth",
                "cram-md5",
            ],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn bare_lf_help_names_the_reply_the_server_sends() {
        let mut command = Cli::command();
        let serve = command.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        assert!(help.contains("550 5.5.2"), "{help}");
        assert!(!help.contains("5.6.11"), "{help}");
    }

    #[test]
    fn send_refuses_inconsistent_flags() {
        for args in [
            &["send", "--to", "b@c"][..],
            &["send", "--from", "a@b", "--raw", "-", "--subject", "x"],
            &["send", "--from", "a@b", "--body", "x", "--body-file", "f"],
            &["send", "--from", "a@b", "--password", "x"],
            &[
                "send",
                "--from",
                "a@b",
                "--user",
                "u",
                "--password",
                "p",
                "--password-env",
                "P",
            ],
            &["send", "--from", "a@b", "--tls", "ssl"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn bench_flags() {
        let Command::Bench(bench) = parse(&["bench", "--tls", "none", "--messages", "500"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(bench.messages, Some(500));
        assert_eq!(bench.concurrency, 10);
        assert_eq!(bench.recipients, 1);
        assert_eq!(bench.pipelining, Pipelining::Auto);
        assert_eq!(bench.messages_per_connection, 100);
        for args in [
            &["bench", "--messages", "1", "--duration", "1"][..],
            &["bench", "--concurrency", "0"],
            &["bench", "--recipients", "0"],
            &["bench", "--messages-per-connection", "0"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn hostname_is_usable() {
        let name = system_hostname();
        assert!(!name.is_empty());
        assert!(!name.contains(char::is_whitespace));
    }

    #[test]
    fn limits_below_their_floor_are_usage_errors() {
        for args in [
            &["ferry", "serve", "--max-recipients", "0"][..],
            &["ferry", "serve", "--timeout", "0"],
            &["ferry", "serve", "--max-message-size", "0"],
            &["ferry", "serve", "--max-connections", "0"],
            &[
                "ferry",
                "send",
                "--timeout",
                "0",
                "--from",
                "a@b.c",
                "--to",
                "d@e.f",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
        // RFC 5321's 100 is the default, not a floor: a submission service
        // may allow far fewer.
        for n in ["1", "5", "100"] {
            assert!(Cli::try_parse_from(["ferry", "serve", "--max-recipients", n]).is_ok());
        }
    }

    #[test]
    fn durations_are_bounded() {
        let huge = "9223372036854775807";
        for args in [
            &["ferry", "serve", "--timeout", huge][..],
            &["ferry", "serve", "--session-timeout", "86401"],
            &["ferry", "serve", "--command-timeout", huge],
            &["ferry", "serve", "--data-timeout", huge],
            &["ferry", "serve", "--data-termination-timeout", huge],
            &["ferry", "serve", "--tls-handshake-timeout", huge],
            &["ferry", "serve", "--proxy-header-timeout", huge],
            &["ferry", "serve", "--greeting-delay", huge],
            &["ferry", "serve", "--shutdown-timeout", huge],
            &["ferry", "serve", "--stress-timeout", huge],
            &["ferry", "bench", "--duration", huge],
            &["ferry", "bench", "--duration", "0"],
            &["ferry", "bench", "--timeout", huge],
            &[
                "ferry",
                "send",
                "--timeout",
                huge,
                "--from",
                "a@b.c",
                "--to",
                "d@e.f",
            ],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            let text = err.to_string();
            assert!(
                text.contains("at most 86400") || text.contains("at least"),
                "{args:?}: {text}"
            );
        }
        let Command::Serve(serve) = parse(&["serve", "--session-timeout", "86400"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(serve.listener.session_timeout, 86_400);
    }

    #[test]
    fn every_server_limit_has_a_flag_with_the_library_default() {
        let Command::Serve(serve) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        let serve = serve.listener;
        let limits = smtp_server::Limits::default();
        let timeouts = smtp_server::Timeouts::default();
        assert_eq!(serve.max_line_length, limits.max_line as u64);
        assert_eq!(serve.max_errors, limits.max_errors);
        assert_eq!(serve.max_auth_failures, limits.max_auth_failures);
        assert_eq!(serve.max_junk_commands, limits.max_junk_commands);
        assert_eq!(serve.min_data_rate, limits.min_data_rate);
        assert_eq!(serve.proxy_header_max, limits.proxy_header_max as u64);
        assert_eq!(serve.session_timeout, timeouts.session.as_secs());
        assert_eq!(
            serve.tls_handshake_timeout,
            timeouts.tls_handshake.as_secs()
        );
        assert_eq!(serve.proxy_header_timeout, timeouts.proxy_header.as_secs());
        assert_eq!(serve.greeting_delay, timeouts.greeting_delay.as_secs());
        assert_eq!(
            serve.shutdown_timeout,
            smtp_server::DEFAULT_SHUTDOWN_TIMEOUT.as_secs()
        );
        assert_eq!(
            serve.stress_timeout,
            smtp_server::Stress::default().timeout.as_secs()
        );
        assert!(!serve.no_stress && serve.stress_connections.is_none());
    }

    #[test]
    fn relay_defaults_and_flags() {
        let Command::Relay(relay) = parse(&["relay"]).unwrap().command else {
            panic!()
        };
        assert_eq!(relay.spool, PathBuf::from("spool"));
        assert_eq!(relay.durability, DurabilityMode::Sync);
        assert_eq!(relay.mx_port, 25);
        assert_eq!(relay.max_per_destination, 20);
        assert_eq!(relay.retry_min, std::time::Duration::from_secs(300));
        assert_eq!(relay.retry_max, std::time::Duration::from_secs(4 * 3600));
        assert_eq!(
            relay.max_queue_lifetime,
            std::time::Duration::from_secs(5 * 86_400)
        );
        assert_eq!(
            relay.delay_warning,
            std::time::Duration::from_secs(4 * 3600)
        );
        assert!(relay.relay_network.is_empty());
        let Command::Relay(relay) = parse(&[
            "relay",
            "--durability",
            "os",
            "--local-domain",
            "example.net",
            "--relay-network",
            "10.0.0.0/8",
            "--route",
            "a.example=[::1]:2526",
            "--retry-schedule",
            "1m,10m,1h",
            "--smarthost",
            "smtp.example:465",
            "--smarthost-tls",
            "implicit",
            "--smarthost-user",
            "u",
            "--smarthost-password-env",
            "PW",
        ])
        .unwrap()
        .command
        else {
            panic!()
        };
        assert_eq!(relay.durability, DurabilityMode::Os);
        assert_eq!(relay.retry_schedule.len(), 3);
        assert_eq!(
            relay.retry_schedule[2],
            std::time::Duration::from_secs(3600)
        );
        assert_eq!(relay.smarthost_tls, SmarthostTlsMode::Implicit);
        assert_eq!(
            relay.listener.listen,
            vec!["127.0.0.1:2525".parse().unwrap()]
        );
        for args in [
            &["relay", "--smarthost-user", "u"][..],
            &["relay", "--smarthost", "h:25", "--smarthost-user", "u"],
            &["relay", "--retry-schedule", "1m", "--retry-min", "2m"],
            &["relay", "--durability", "maybe"],
            &["relay", "--retry-min", "0"],
            &["relay", "--max-queue-lifetime", "5y"],
            &["relay", "--relay-network", "10.0.0.0/99"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("300"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("30s"),
            Ok(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            parse_duration("5m"),
            Ok(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            parse_duration("4h"),
            Ok(std::time::Duration::from_secs(14_400))
        );
        assert_eq!(
            parse_duration("5d"),
            Ok(std::time::Duration::from_secs(432_000))
        );
        for bad in ["", "m", "5 m", "-5m", "0", "5w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relay_help_explains_durability_and_relay_access() {
        let mut command = Cli::command();
        let relay = command.find_subcommand_mut("relay").unwrap();
        let help = relay.render_long_help().to_string();
        assert!(help.contains("--durability os"), "{help}");
        assert!(help.contains("not a power loss"), "{help}");
        assert!(help.contains("554 5.7.1 relay access denied"), "{help}");
        assert!(help.contains("--listen"), "{help}");
    }
}
