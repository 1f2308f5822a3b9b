//! Connection timeouts. A client that opens connections and then sends nothing, or a few
//! bytes of a request and no more, must not hold the server's sockets and tasks forever:
//!
//! - a TLS handshake and each HTTP/1 request head must arrive within `header` (hyper's
//!   `header_read_timeout`, which also bounds the wait for the next request on a kept-alive
//!   connection);
//! - a connection on which nothing is read or written for `idle` while none of its requests
//!   is being answered is closed ([`IdleIo`]): before protocol detection, between HTTP/2
//!   streams, and when a client stops reading a download;
//! - a request body that stalls for `idle` is refused (`RequestBodyTimeoutLayer` in the
//!   router), so a slow upload cannot hold a handler either.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The time limits of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A TLS handshake, and each HTTP/1 request head.
    pub header: Duration,
    /// No bytes either way while no request is being answered.
    pub idle: Duration,
}

/// What the requests of one connection are doing, shared by its IO and its service.
#[derive(Default)]
struct Activity {
    /// Requests whose answer's head is not ready yet.
    in_flight: AtomicUsize,
    /// Requests answered so far.
    answered: AtomicU64,
}

/// A request being answered; the connection is not idle while one exists.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.answered.fetch_add(1, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket that fails with `TimedOut` once nothing was read or written for `idle` and no
/// request of its connection is being answered. Checked only while the connection waits on
/// the socket, so a handler working for longer than `idle` is not cut off; a connection
/// whose request was answered meanwhile gets another `idle` from then.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    /// Fires no earlier than `last + idle`; moved forward only when it fires, so a busy
    /// connection costs an `Instant` per read or write, not a timer reset.
    deadline: Pin<Box<Sleep>>,
    /// When bytes last moved either way.
    last: Instant,
    activity: Arc<Activity>,
    answered_seen: u64,
}

impl<T> IdleIo<T> {
    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Whether the connection has been idle too long; registers the waker otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            let answered = self.activity.answered.load(Ordering::SeqCst);
            if self.activity.in_flight.load(Ordering::SeqCst) > 0 || answered != self.answered_seen
            {
                self.answered_seen = answered;
                self.touch();
            }
            let due = self.last + self.idle;
            if due <= Instant::now() {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
        false
    }

    /// What a write gave: bytes written count as activity; a write still pending past the
    /// idle time fails.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service that marks each of its connection's requests in flight
/// until the answer's head is ready.
#[derive(Clone)]
pub struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    /// The socket's peer, given to each request as a [`Peer`] extension.
    peer: Option<Peer>,
}

/// The address of the socket a request came on (the login limiter bounds tries by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer(pub std::net::IpAddr);

impl<B> hyper::service::Service<hyper::Request<B>> for Tracked
where
    TowerToHyperService<Router>: hyper::service::Service<hyper::Request<B>>,
    <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Future:
        Send + 'static,
{
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<hyper::Request<B>>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut req: hyper::Request<B>) -> Self::Future {
        if let Some(p) = self.peer {
            req.extensions_mut().insert(p);
        }
        let guard = InFlight::new(&self.activity);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// A connection's socket and service, closing the socket after `idle` without activity.
pub fn watch_idle<T>(
    io: T,
    router: Router,
    idle: Duration,
    peer: Option<std::net::SocketAddr>,
) -> (IdleIo<T>, Tracked) {
    let activity = Arc::new(Activity::default());
    (
        IdleIo {
            inner: io,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            last: Instant::now(),
            activity: activity.clone(),
            answered_seen: 0,
        },
        Tracked {
            inner: TowerToHyperService::new(router),
            activity,
            peer: peer.map(|a| Peer(a.ip().to_canonical())),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_socket_times_out_unless_a_request_is_answered() {
        let idle = Duration::from_millis(200);
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, svc) = watch_idle(a, Router::new(), idle, None);
        let mut buf = [0u8; 8];
        // Bytes keep it alive.
        for _ in 0..3 {
            tokio::time::sleep(idle / 2).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        // A request being answered keeps it alive past the deadline.
        let guard = InFlight::new(&svc.activity);
        let read = tokio::time::timeout(idle * 3, io.read(&mut buf)).await;
        assert!(read.is_err(), "closed while a request was answered");
        drop(guard);
        // Then, idle: closed within two idle periods.
        let start = Instant::now();
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= idle / 2 && took <= idle * 2 + idle / 2, "{took:?}");
    }
}
