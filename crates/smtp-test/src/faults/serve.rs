//! The accept loop that puts a [`FaultStream`] under every connection.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::task::Poll;

use smtp_server::{Backend, ConnectionInfo, Server};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::session::{FaultBackend, SHUTDOWN_GRACE};
use super::wire::FaultStream;

/// Pause after a failed `accept` (for example when out of file
/// descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Serves `server` on `listeners` until `shutdown` completes, with the
/// fault engine's wire actions (drip, stop reading, closing without a
/// reply) in effect on every connection.
///
/// Each accepted connection goes to [`Server::serve_connection`] over a
/// stream the engine controls. After `shutdown`, sessions get five seconds
/// to finish and are then cut. smtp-server's connection limits, PROXY
/// protocol and implicit TLS belong to its own listener and do not apply
/// here; `STARTTLS` does.
pub async fn serve<B: Backend>(
    server: Server<FaultBackend<B>>,
    listeners: impl IntoIterator<Item = TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let listeners: Vec<TcpListener> = listeners.into_iter().collect();
    let engine = server.backend().engine().clone();
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_any(&listeners) => accepted,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = ConnectionInfo::new(peer, local);
        let wire = engine.attach(&info.id);
        let server = server.clone();
        let engine = engine.clone();
        tasks.spawn(async move {
            let id = info.id.clone();
            if let Err(error) = server
                .serve_connection(FaultStream::new(stream, wire), info)
                .await
            {
                tracing::debug!(%error, "connection ended with an error");
            }
            engine.detach(&id);
        });
    }
    drop(listeners);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Waits for a connection on any listener.
async fn accept_any(listeners: &[TcpListener]) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    if listeners.is_empty() {
        return std::future::pending().await;
    }
    poll_fn(|cx| {
        for listener in listeners {
            if let Poll::Ready(result) = listener.poll_accept(cx) {
                return Poll::Ready(result);
            }
        }
        Poll::Pending
    })
    .await
}
