//! The shell around [`Activity`]: a socket wrapper that reports reads, a
//! service wrapper that reports request starts and response ends, and the
//! loop that serves one connection with hyper and closes it when its
//! deadline passes.

use crate::activity::{Activity, Expiry};
use crate::{Gate, Slot};
use http::{Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection closed for idleness may take over its graceful
/// close (an HTTP/2 GOAWAY round trip) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// An error of hyper's, or of the service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a connection served by [`Gate::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed it, or the server after a graceful shutdown.
    Closed,
    /// Closed: no complete request head in time.
    HeaderTimeout,
    /// Closed: idle for the idle timeout.
    IdleTimeout,
}

/// Why serving a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// HTTP (a malformed request, a reset, an I/O error).
    #[error("HTTP connection")]
    Http(#[source] BoxError),
}

/// State shared by the socket wrapper, the requests and the watchdog.
#[derive(Debug)]
struct Shared {
    activity: Mutex<Activity>,
    /// Mirrors [`Activity::watching_reads`], so that reads take no lock
    /// unless they may start a request head.
    watching_reads: AtomicBool,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Activity)) {
        let mut a = self.lock();
        f(&mut a);
        self.watching_reads
            .store(a.watching_reads(), Ordering::Relaxed);
        let wake = a.wake_watchdog();
        drop(a);
        if wake {
            self.changed.notify_one();
        }
    }

    /// Resolves once the connection's deadline has passed.
    async fn expired(&self) -> Expiry {
        loop {
            let changed = self.changed.notified();
            let next = self.lock().arm();
            match next {
                None => changed.await,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => continue,
                    }
                    if let Some((at, why)) = self.lock().deadline()
                        && at <= Instant::now()
                    {
                        return why;
                    }
                }
            }
        }
    }
}

/// A request in flight; it ends when dropped.
#[derive(Debug)]
struct InFlight(Arc<Shared>);

impl InFlight {
    fn start(shared: &Arc<Shared>, http2: bool) -> Self {
        shared.update(|a| a.request_started(http2));
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|a| a.request_ended(Instant::now()));
    }
}

pin_project_lite::pin_project! {
    /// A socket that reports reads to the connection's activity.
    #[derive(Debug)]
    struct Watched<IO> {
        #[pin]
        io: IO,
        shared: Arc<Shared>,
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if buf.filled().len() > before && this.shared.watching_reads.load(Ordering::Relaxed) {
            this.shared.update(|a| a.bytes_read(Instant::now()));
        }
        r
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The caller's service, with each request counted until its response
/// ends, and the connection's [`Slot`] in each request's extensions.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    shared: Arc<Shared>,
    slot: Slot,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let flight = InFlight::start(&self.shared, req.version() == Version::HTTP_2);
        req.extensions_mut().insert(self.slot.clone());
        TrackedFuture {
            inner: self.inner.call(req),
            flight: Some(flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`].
    #[derive(Debug)]
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let r = std::task::ready!(this.inner.poll(cx));
        let flight = this.flight.take();
        Poll::Ready(r.map(|resp| resp.map(|inner| TrackedBody { inner, flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body; its request stays in flight until it ends.
    #[derive(Debug)]
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.flight.take();
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Gate {
    /// Serves one connection (after its TLS handshake, if any) with
    /// HTTP/1.1 (upgrades included) and HTTP/2 under this gate's limits,
    /// until the peer closes it, a deadline passes, or `shutdown` resolves
    /// (then requests in flight finish and no new one is taken). `slot`
    /// is the connection's place under the cap, from [`Gate::admit`] or
    /// [`Gate::accept`]; a clone rides in every request's extensions so
    /// that a connection upgraded away from HTTP (WebSocket) can keep it.
    pub async fn serve<IO, S, B>(
        &self,
        io: IO,
        slot: Slot,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ended, ServeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let limits = self.limits();
        let shared = Arc::new(Shared {
            activity: Mutex::new(Activity::new(Instant::now(), limits)),
            watching_reads: AtomicBool::new(false),
            changed: Notify::new(),
        });
        let io = TokioIo::new(Watched {
            io,
            shared: Arc::clone(&shared),
        });
        let service = Tracked {
            inner: service,
            shared: Arc::clone(&shared),
            slot,
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if self.inner.http1_only {
            builder = builder.http1_only();
        }
        // The watchdog times request heads; hyper's own timer would also
        // close HTTP/1.1 connections waiting for their next request.
        builder.http1().header_read_timeout(None);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.h2_keep_alive_interval)
            .keep_alive_timeout(limits.h2_keep_alive_timeout)
            .max_concurrent_streams(limits.h2_max_concurrent_streams);
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        tokio::pin!(shutdown);
        let mut draining = false;
        let mut expired: Option<Expiry> = None;
        let grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    return match (expired, r) {
                        (Some(why), _) => Ok(self.expired(why)),
                        (None, Ok(())) => Ok(Ended::Closed),
                        (None, Err(e)) => Err(ServeError::Http(e)),
                    };
                }
                why = shared.expired(), if expired.is_none() => {
                    expired = Some(why);
                    if why == Expiry::HeaderRead {
                        // No request to finish and nothing useful to say.
                        return Ok(self.expired(why));
                    }
                    if !draining {
                        conn.as_mut().graceful_shutdown();
                    }
                    grace.as_mut().reset(Instant::now() + CLOSE_GRACE);
                }
                () = &mut grace, if expired.is_some() => {
                    return Ok(self.expired(Expiry::Idle));
                }
                () = &mut shutdown, if !draining => {
                    draining = true;
                    if expired.is_none() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }

    fn expired(&self, why: Expiry) -> Ended {
        match why {
            Expiry::HeaderRead => {
                self.inner.metrics.header_timeouts.inc();
                Ended::HeaderTimeout
            }
            Expiry::Idle => {
                self.inner.metrics.idle_closed.inc();
                Ended::IdleTimeout
            }
        }
    }
}
