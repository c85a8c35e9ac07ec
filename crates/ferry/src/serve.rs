//! `ferry serve`: an smtp-server [`Backend`] that stores into a Maildir
//! (or discards), an [`Authenticator`] over [`Users`], and the command
//! that wires them to the flags.

use std::sync::Arc;

use futures::StreamExt;
use smtp_server::smtp_proto::EnhancedCode;
use smtp_server::smtp_proto::sasl::Credentials;
use smtp_server::{
    Authenticator, Backend, Body, ConnectionInfo, Envelope, Extensions, Identity, Session,
    SmtpError, invalid_credentials,
};

use crate::cli::ServeArgs;
use crate::listener;
use crate::maildir::Maildir;
use crate::store::{self, Store};
use crate::users::Users;

/// Opens one [`StoreSession`] per connection.
#[derive(Debug, Clone)]
pub struct StoreBackend {
    store: Store,
    hostname: Arc<str>,
}

impl StoreBackend {
    /// A backend that stores accepted messages in `store`, naming itself
    /// `hostname` in Received fields.
    pub fn new(store: Store, hostname: &str) -> Self {
        StoreBackend {
            store,
            hostname: hostname.into(),
        }
    }
}

/// One connection's session: it only acts on the message.
#[derive(Debug)]
pub struct StoreSession {
    backend: StoreBackend,
}

impl Backend for StoreBackend {
    type Session = StoreSession;

    async fn new_session(&self, _info: &ConnectionInfo) -> Result<StoreSession, SmtpError> {
        Ok(StoreSession {
            backend: self.clone(),
        })
    }
}

/// `451 4.3.0`: the message could not be stored; the client keeps it and
/// tries again later (RFC 3463 §3.4: mail system issue).
fn storage_error(err: &std::io::Error) -> SmtpError {
    tracing::error!(error = %err, "storing a message failed");
    SmtpError::new(
        451,
        EnhancedCode::new(4, 3, 0),
        "Requested action aborted: local error in storage",
    )
}

impl Session for StoreSession {
    async fn data(&mut self, envelope: &Envelope, mut body: Body) -> Result<(), SmtpError> {
        let recipients: Vec<String> = envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str().to_owned())
            .collect();
        let peer = envelope
            .client_addr
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let protocol = envelope.protocol();
        let info = store::Envelope {
            sender: envelope.from.as_ref().map(|a| a.as_str()),
            recipients: &recipients,
            helo: &envelope.helo,
            peer,
            protocol: &protocol,
            lmtp: envelope.lmtp,
            id: &envelope.session_id,
        };
        let mut incoming = self
            .backend
            .store
            .begin(&info, &self.backend.hostname)
            .await
            .map_err(|e| storage_error(&e))?;
        while let Some(chunk) = body.next().await {
            // A body error (too large, bare line ending, aborted) drops
            // `incoming`, which removes the partial files; the library
            // sends the reply that matches the error.
            let chunk = chunk.map_err(SmtpError::other)?;
            incoming.write(chunk).await.map_err(|e| storage_error(&e))?;
        }
        let stored = incoming.commit().await.map_err(|e| storage_error(&e))?;
        tracing::info!(
            files = stored.len(),
            recipients = recipients.len(),
            "message stored"
        );
        Ok(())
    }
}

/// Checks PLAIN and LOGIN credentials against [`Users`].
#[derive(Debug, Clone)]
pub struct UsersAuthenticator {
    users: Arc<Users>,
}

impl UsersAuthenticator {
    /// An authenticator for `users`.
    pub fn new(users: Users) -> Self {
        UsersAuthenticator {
            users: Arc::new(users),
        }
    }
}

impl Authenticator for UsersAuthenticator {
    async fn authenticate(
        &self,
        _info: &ConnectionInfo,
        _mechanism: &str,
        credentials: &Credentials,
    ) -> Result<Identity, SmtpError> {
        // RFC 4616 §2: an authorization identity other than the login
        // itself asks to act as someone else; ferry grants no such right.
        if credentials
            .authzid
            .as_deref()
            .is_some_and(|authzid| authzid != credentials.authcid)
        {
            return Err(invalid_credentials());
        }
        let users = Arc::clone(&self.users);
        let name = credentials.authcid.clone();
        let password = credentials.password.clone();
        // Password hashing is deliberately slow: keep it off the reactor.
        let ok = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false);
        if ok {
            Ok(Identity::new(credentials.authcid.clone()))
        } else {
            Err(invalid_credentials())
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `ferry serve` until SIGINT or SIGTERM. Prints `listening on ADDR`
/// per listener once they are bound. Errors are one line for people.
pub async fn run(args: ServeArgs) -> Result<(), String> {
    let hostname = listener::hostname(&args.listener)?;
    let store = if args.sink {
        Store::Sink
    } else {
        let maildir = Maildir::open(&args.maildir, &hostname)
            .map_err(|e| format!("{}: {e}", args.maildir.display()))?;
        Store::Maildir(maildir)
    };
    // ferry serve is a final destination that cannot send mail, so it cannot
    // honour NOTIFY=SUCCESS with a delivery report (RFC 3461 §5.2.2):
    // it does not offer DSN at all rather than promise what it won't do.
    let mut extensions = Extensions::default();
    extensions.dsn = false;
    let server = listener::build(
        StoreBackend::new(store, &hostname),
        &args.listener,
        &hostname,
        &args.maildir,
        extensions,
        args.lmtp,
    )?;
    listener::serve(server, &args.listener).await?;
    println!("shut down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> UsersAuthenticator {
        let mut users = Users::new();
        users.add_spec("alice:secret").unwrap();
        UsersAuthenticator::new(users)
    }

    fn credentials(authzid: Option<&str>, authcid: &str, password: &str) -> Credentials {
        Credentials {
            authzid: authzid.map(str::to_owned),
            authcid: authcid.to_owned(),
            password: password.to_owned(),
        }
    }

    #[tokio::test]
    async fn plain_credentials_are_checked_including_the_authorization_identity() {
        let info = ConnectionInfo::new(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:2525".parse().unwrap(),
        );
        let auth = authenticator();
        let (auth, info) = (&auth, &info);
        let ok = |c: Credentials| async move { auth.authenticate(info, "PLAIN", &c).await.is_ok() };
        assert!(ok(credentials(None, "alice", "secret")).await);
        assert!(ok(credentials(Some("alice"), "alice", "secret")).await);
        assert!(!ok(credentials(None, "alice", "wrong")).await);
        assert!(!ok(credentials(None, "bob", "secret")).await);
        // Asking to act as another identity is refused even with the
        // right password.
        assert!(!ok(credentials(Some("admin"), "alice", "secret")).await);
    }
}
