//! The accept loop: every connection is bounded in number, in how long it may
//! take to say something, and in how long it may sit idle.
//!
//! `axum::serve` runs hyper without a timer, so a client that opens a
//! connection and never finishes its request head (or never sends a byte)
//! holds a file descriptor and a task forever. Here hyper gets a timer and
//! these bounds, each an option of `hookpost serve`:
//!
//! - a connection cap: past it, new connections wait in the kernel's accept
//!   queue (costing this process nothing) until a slot frees;
//! - a header-read timeout, which also covers a connection that sends
//!   nothing at all (HTTP version detection would otherwise wait forever) and
//!   an HTTP/1 connection idle between requests (hyper starts that timer as
//!   soon as it waits for the next request head);
//! - an idle timeout for connections with no request in flight (HTTP/2
//!   clients keep connections open; pings alone do not keep one alive);
//! - HTTP/2 keep-alive pings (a dead peer is noticed) and a cap on
//!   concurrent streams per connection.
//!
//! Request and body timeouts are per request, in [`super::limits`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How the listener bounds its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time allowed for a request head to arrive (from the connection's
    /// start, or from the end of the previous request).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Interval between HTTP/2 pings; a ping unanswered within
    /// `http2_keepalive_timeout` closes the connection.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            http2_max_concurrent_streams: 128,
        }
    }
}

/// Raises this process's open-file limit to its hard limit, so that the
/// connection cap (not the soft limit) is what bounds connections. Returns
/// the soft limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then closes
/// the listening socket (new connections are refused), asks every connection
/// to finish its requests in flight (HTTP/2: GOAWAY), and waits for them.
pub async fn serve(listener: TcpListener, router: axum::Router, limits: ConnectionLimits, shutdown: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Room for a request head past the REST routes' own 16 KiB limit on the
    // request target, so that limit answers in JSON; past this, hyper
    // answers 431 itself.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(128 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // EMFILE and the like: back off rather than spin; the
                    // connections already open keep being served.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY, a response written in several frames waits on
        // Nagle + delayed ACK: ~40 ms per multi-frame gRPC or REST answer.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "setting TCP_NODELAY failed");
        }
        let (builder, router, limits, shutdown) = (builder.clone(), router.clone(), limits.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(&builder, tcp, peer, router, &limits, shutdown).await;
            drop(permit);
        });
    }
    // Close the socket before draining: a client that connects now is
    // refused and goes to another replica. Left open, the kernel would go on
    // completing handshakes into a backlog nobody accepts from, and those
    // connections would hang until the process exits.
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    tcp: TcpStream,
    peer: SocketAddr,
    router: axum::Router,
    limits: &ConnectionLimits,
    shutdown: CancellationToken,
) {
    // Version detection reads before hyper's own header timer starts: a
    // client that connects and stays silent is dropped here.
    let mut first = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = activity.begin();
            let response = router.clone().oneshot(request.map(Body::new));
            async move {
                let response = response.await.unwrap_or_else(|never: Infallible| match never {});
                // The request counts as in flight until its body is sent.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                }))
            }
        })
    };
    // Replies are held back for one scheduler round only while other
    // requests are in flight on the connection (their replies may join).
    let busy = activity.clone();
    let io = super::coalesce::Coalesce::when(tcp, move || busy.in_flight.load(Ordering::Acquire) > 1);
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service));
    tokio::pin!(connection);
    let idle_timeout = limits.idle_timeout;
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            return;
        }
        _ = activity.idle_for(idle_timeout) => tracing::debug!(%peer, "closing an idle connection"),
        _ = shutdown.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_end.lock().expect("activity lock poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), last_end: Mutex::new(Instant::now()) }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = *self.last_end.lock().expect("activity lock poisoned") + timeout;
            if self.in_flight.load(Ordering::Acquire) == 0 && Instant::now() >= deadline {
                return;
            }
            // Busy or not yet due: look again when it could first be due.
            tokio::time::sleep_until(deadline.max(Instant::now() + timeout / 4)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    /// During a rolling restart the stopping replica must refuse new
    /// connections at once (so clients go elsewhere) while the requests it
    /// already has run to completion.
    #[tokio::test]
    async fn once_shutdown_begins_new_connections_are_refused_while_requests_in_flight_finish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (e, r) = (entered.clone(), release.clone());
        let router = axum::Router::new().route(
            "/slow",
            axum::routing::get(move || async move {
                e.notify_one();
                r.notified().await;
                "done"
            }),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, ConnectionLimits::default(), shutdown.clone()));
        let request = tokio::spawn(async move { reqwest::get(format!("http://{addr}/slow")).await?.text().await });
        entered.notified().await;

        shutdown.cancel();
        // The accept loop sees the cancellation asynchronously: poll.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await;
            match connect {
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
                other => {
                    let taken = other.map(|c| c.map(|_| "connected"));
                    assert!(Instant::now() < deadline, "5 s after shutdown began, a new connection: {taken:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(!server.is_finished(), "the server stopped before its request in flight finished");

        release.notify_one();
        assert_eq!(request.await.unwrap().unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server drains").unwrap();
    }
}
