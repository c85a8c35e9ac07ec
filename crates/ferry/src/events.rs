//! Where `ferry relay` sends its events: one JSON object per line in
//! `--event-log FILE` (reopened on SIGHUP, so it can be rotated), and
//! POSTed to `--webhook URL` (`http://` or `https://`) in batches.
//!
//! The webhook never slows delivery: events wait in a bounded buffer
//! (`--webhook-buffer`, default 10,000) while the webhook is slow or down
//! and are retried with backoff (1 s doubling to 30 s) until it takes
//! them, in order. Past the buffer, new events are dropped for the
//! webhook (never for the event log), counted in
//! `ferry_events_dropped_total` and logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use smtp_relay::observe::{Event, EventSink};
use tokio::sync::mpsc;

/// The webhook's HTTP client: hyper-util's pooled client (keep-alive
/// between batches) over hyper-rustls, for `http://` and `https://`.
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook's URL, checked: `http://` or `https://` with a host.
fn webhook_uri(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{url}: only http:// and https:// URLs are supported"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url}: no host"));
    }
    Ok(uri)
}

/// The roots an `https://` webhook's certificate must chain to: the CAs of
/// `ca` only, or else the system's (rustls-native-certs: the platform
/// store, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set) and the webpki
/// roots.
fn webhook_roots(ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    if let Some(ca) = ca {
        return crate::certs::ca_roots(ca).map_err(|e| e.to_string());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate store could not be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates for the webhook");
    Ok(roots)
}

fn webhook_client(ca: Option<&Path>) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(webhook_roots(ca)?)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// POSTs one batch; the status, or why there is none.
async fn post(client: &HttpClient, uri: &hyper::Uri, body: &Bytes) -> Result<u16, String> {
    let request = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            // The source says what failed (refused, certificate, …).
            match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            }
        })?;
        let status = response.status().as_u16();
        // Read to the end, so the connection can serve the next batch.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{uri}: no answer within 10 s"))?
}

/// An event as one JSON line (without the newline).
pub fn event_json(event: &Event) -> String {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let mut value = json!({
        "event": event.kind.as_str(),
        "at": unix(event.at),
        "id": event.id.to_string(),
        "recipients": event.recipients,
    });
    let object = value.as_object_mut().expect("an object");
    if event.kind == smtp_relay::observe::EventKind::Accept {
        object.insert(
            "sender".to_owned(),
            json!(event.sender.clone().unwrap_or_else(|| "<>".to_owned())),
        );
    }
    if let Some(size) = event.size {
        object.insert("size".to_owned(), json!(size));
    }
    if let Some(diagnostic) = &event.diagnostic {
        object.insert("diagnostic".to_owned(), json!(diagnostic));
    }
    if let Some(remote) = &event.remote_mta {
        object.insert("remote_mta".to_owned(), json!(remote));
    }
    if let Some(next) = event.next_attempt {
        object.insert("next_attempt".to_owned(), json!(unix(next)));
    }
    value.to_string()
}

/// The event log file.
pub struct EventLog {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl EventLog {
    /// Opens (appending to) `path`.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Arc<Self>> {
        let path = path.into();
        let file = open_log(&path)?;
        Ok(Arc::new(Self {
            path,
            file: Mutex::new(file),
        }))
    }

    /// Opens the file again (after it was moved away for rotation).
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = open_log(&self.path)?;
        *self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = file;
        Ok(())
    }

    /// Reopens the file at every SIGHUP, until the process ends.
    pub fn reopen_on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let log = Arc::clone(self);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match log.reopen() {
                    Ok(()) => tracing::info!(path = %log.path.display(), "event log reopened"),
                    Err(e) => {
                        tracing::error!(path = %log.path.display(), error = %e, "cannot reopen the event log")
                    }
                }
            }
        });
        Ok(())
    }

    fn write(&self, line: &str) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line, so concurrent lines never interleave.
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        if let Err(e) = file.write_all(&buffer) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the event log");
        }
    }
}

/// Posts events to a webhook from a bounded buffer.
pub struct Webhook {
    sender: mpsc::Sender<String>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Webhook {
    /// Starts the sender task for `url` (`http://` or `https://`) with room
    /// for `buffer` events; an `https://` server's certificate must chain
    /// to a CA of the PEM file `ca`, or without it to a system or webpki
    /// root.
    pub fn start(url: &str, buffer: usize, ca: Option<&Path>) -> Result<Arc<Self>, String> {
        let uri = webhook_uri(url)?;
        let client = webhook_client(ca)?;
        let (sender, mut receiver) = mpsc::channel::<String>(buffer.max(1));
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while receiver.recv_many(&mut batch, 100).await > 0 {
                let mut body = batch.join("\n");
                body.push('\n');
                let body = Bytes::from(body);
                let mut wait = Duration::from_secs(1);
                loop {
                    match post(&client, &uri, &body).await {
                        Ok(status) if (200..300).contains(&status) => break,
                        Ok(status) => tracing::warn!(status, "webhook refused events; retrying"),
                        Err(e) => tracing::warn!(error = %e, "webhook unreachable; retrying"),
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
                batch.clear();
            }
        });
        Ok(Arc::new(Self {
            sender,
            dropped: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// How many events were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, line: String) {
        if self.sender.try_send(line).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("ferry_events_dropped_total").increment(1);
            tracing::warn!("webhook buffer full; event dropped for the webhook");
        }
    }
}

/// The event log and the webhook together.
#[derive(Default)]
pub struct Sinks {
    /// The event log.
    pub log: Option<Arc<EventLog>>,
    /// The webhook.
    pub webhook: Option<Arc<Webhook>>,
}

impl EventSink for Sinks {
    fn emit(&self, event: &Event) {
        if self.log.is_none() && self.webhook.is_none() {
            return;
        }
        let line = event_json(event);
        if let Some(log) = &self.log {
            log.write(&line);
        }
        if let Some(webhook) = &self.webhook {
            webhook.send(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_relay::observe::EventKind;
    use smtp_relay::queue::MessageId;

    #[test]
    fn events_are_one_json_line() {
        let event = Event {
            kind: EventKind::Deferral,
            at: UNIX_EPOCH + Duration::from_secs(100),
            id: MessageId(255),
            sender: None,
            recipients: vec!["b@example.net".to_owned()],
            diagnostic: Some("451 4.3.0 \"busy\"".to_owned()),
            remote_mta: Some("mx.example.net".to_owned()),
            next_attempt: Some(UNIX_EPOCH + Duration::from_secs(400)),
            size: None,
        };
        let line = event_json(&event);
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "deferral");
        assert_eq!(value["id"], "00000000000000FF");
        assert_eq!(value["diagnostic"], "451 4.3.0 \"busy\"");
        assert_eq!(value["next_attempt"], 400.0);
    }

    fn event(n: u64) -> Event {
        Event {
            kind: EventKind::Accept,
            at: UNIX_EPOCH + Duration::from_secs(n),
            id: MessageId(n),
            sender: Some("a@example.com".to_owned()),
            recipients: vec!["b@example.net".to_owned()],
            diagnostic: None,
            remote_mta: None,
            next_attempt: None,
            size: Some(10),
        }
    }

    #[tokio::test]
    async fn the_webhook_gets_events_in_order_and_drops_past_its_buffer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Reserve a port with nothing listening yet: the webhook is down.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let webhook = Webhook::start(&format!("http://127.0.0.1:{port}/hook"), 3, None).unwrap();
        let sinks = Sinks {
            log: None,
            webhook: Some(Arc::clone(&webhook)),
        };
        for n in 0..10 {
            sinks.emit(&event(n));
            // Let the sender take its first batch before the buffer fills.
            tokio::task::yield_now().await;
        }
        assert!(webhook.dropped() >= 6, "dropped {}", webhook.dropped());
        assert!(webhook.dropped() <= 7, "dropped {}", webhook.dropped());
        // The webhook comes up: the buffered events arrive, in order.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut ids = Vec::new();
        while ids.len() < 10 - webhook.dropped() as usize {
            let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .expect("the webhook retried")
                .unwrap();
            let mut raw = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let n = stream.read(&mut buffer).await.unwrap();
                raw.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&raw);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    // Header names in any case (hyper sends them lower-case).
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().to_owned())
                        })
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= length {
                        assert!(head.starts_with("POST /hook HTTP/1.1"));
                        for line in body.lines() {
                            let value: serde_json::Value = serde_json::from_str(line).unwrap();
                            ids.push(value["id"].as_str().unwrap().to_owned());
                        }
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "in order");
        assert_eq!(ids[0], MessageId(0).to_string(), "the oldest are kept");
    }

    #[test]
    fn the_log_is_reopened_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::open(&path).unwrap();
        log.write("one");
        std::fs::rename(&path, dir.path().join("events.log.1")).unwrap();
        log.write("two");
        log.reopen().unwrap();
        log.write("three");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("events.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
