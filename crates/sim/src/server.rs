//! The accept loop every service of a router shares (mini-redis style): a bound
//! listener, a shutdown future, a cap on connections, and a graceful drain.
//!
//! While the router is offline (a fault) connections are accepted and reset at once.
//! Each connection's handler gets a token that is cancelled when the router goes
//! offline or the service shuts down; the handler watches it and closes its connection.
//! Shutdown waits up to [`DRAIN_TIMEOUT`] for handlers to finish, then drops them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::router::Router;

/// The most connections one service of one router serves at once; more are closed.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a shutdown waits for connections to end before dropping them.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` completes, running `handle` for each.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => r,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if router.faults().is_offline() {
            crate::net::reset(stream);
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections, closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The handler's token ends the connection when the router goes offline or the
        // service shuts down; the handler closes its side (an SSH session sends its
        // disconnect) and returns.
        let offline = router.faults().connection_token();
        let conn = CancellationToken::new();
        let fut = handle(stream, peer, conn.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let watch = async {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = offline.cancelled() => {}
                }
                conn.cancel();
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = fut => {}
                _ = watch => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}
