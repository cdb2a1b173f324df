//! Connection limits for Gatehouse's HTTP listeners. A [`Gate`] owns one
//! listener's cap on open connections and the timeouts a peer must meet:
//! its TLS handshake, each request head, and the time it may sit with no
//! request in flight. It accepts (closing at once what is over the cap),
//! runs handshakes under their timeout, and serves each connection with
//! hyper (HTTP/1.1 with upgrades, and HTTP/2 with keep-alive pings),
//! closing it when a deadline passes. What requests mean, TLS
//! configuration and routing stay with the caller: the edge's listeners, a
//! node's `serve`, control's API.
//!
//! A drop-in for a hyper accept loop:
//!
//! ```no_run
//! # async fn demo(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
//! use gatehouse_limits::{Gate, Limits};
//! let gate = Gate::new(Limits::default());
//! loop {
//!     let (tcp, _peer, slot) = gate.accept(&listener).await;
//!     let (gate, acceptor) = (gate.clone(), acceptor.clone());
//!     tokio::spawn(async move {
//!         let Ok(tls) = gate.handshake(&acceptor, tcp).await else { return };
//!         let svc = hyper::service::service_fn(|_req| async {
//!             Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("hi")))
//!         });
//!         let _ = gate.serve(tls, slot, svc, std::future::pending()).await;
//!     });
//! }
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod activity;
mod config;
mod conn;

pub use activity::Expiry;
pub use config::{LimitsConfig, LimitsConfigError};
pub use conn::{BoxError, Ended, ServeError};

use gatehouse_ops::Chain;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once (after that, new ones are closed at once).
    pub max_connections: usize,
    /// Time from accepting a connection to the end of its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a whole request head: from the end of the handshake for
    /// the first request, and on HTTP/1.1 from the first byte of each
    /// later one. A head trickled a byte at a time gets no more.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2: interval of keep-alive pings (`None`: no pings).
    pub h2_keep_alive_interval: Option<Duration>,
    /// HTTP/2: how long a ping may go unanswered before the connection is
    /// closed.
    pub h2_keep_alive_timeout: Duration,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
}

impl Limits {
    /// The defaults (`docs/public-tier.md`, `docs/node.md`).
    pub const DEFAULT: Limits = Limits {
        max_connections: 4096,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        h2_keep_alive_interval: Some(Duration::from_secs(30)),
        h2_keep_alive_timeout: Duration::from_secs(20),
        h2_max_concurrent_streams: 256,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a set of limits is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A listener must take at least one connection.
    #[error("max_connections must be at least 1")]
    NoConnections,
    /// A timeout of zero would close every connection at once.
    #[error("{0} must be more than zero")]
    ZeroTimeout(&'static str),
    /// HTTP/2 with no stream allowed serves nothing.
    #[error("h2_max_concurrent_streams must be at least 1")]
    NoStreams,
}

impl Limits {
    /// Checks that the limits can serve anything at all.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError::NoConnections);
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err(LimitsError::NoStreams);
        }
        for (name, d) in [
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("header_read_timeout", Some(self.header_read_timeout)),
            ("idle_timeout", Some(self.idle_timeout)),
            ("h2_keep_alive_interval", self.h2_keep_alive_interval),
            ("h2_keep_alive_timeout", Some(self.h2_keep_alive_timeout)),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(LimitsError::ZeroTimeout(name));
            }
        }
        Ok(())
    }
}

/// The metrics of one gate (handles into a [`ListenerMetrics`] family, or
/// unregistered ones).
#[derive(Debug, Clone, Default)]
pub struct GateMetrics {
    /// Connections open.
    pub open: Gauge,
    /// Connections closed at once because the listener was full.
    pub refused: Counter,
    /// Connections closed: TLS handshake not done in time.
    pub handshake_timeouts: Counter,
    /// Connections closed: request head not received in time.
    pub header_timeouts: Counter,
    /// Connections closed for idleness.
    pub idle_closed: Counter,
}

type ListenerLabel = [(&'static str, &'static str); 1];
type ReasonLabel = [(&'static str, &'static str); 2];

/// The metrics of every listener of a process, labelled `listener`; one
/// registration covers them all.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    open: Family<ListenerLabel, Gauge>,
    refused: Family<ListenerLabel, Counter>,
    closed: Family<ReasonLabel, Counter>,
}

impl ListenerMetrics {
    /// Registers the families: `connections` (open), `connections_refused`
    /// (over the cap) and `connections_timed_out` (by `reason`:
    /// `handshake`, `header`, `idle`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "Connections open, by listener",
            self.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because their listener was full",
            self.refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed by a timeout, by listener and reason",
            self.closed.clone(),
        );
    }

    /// The metrics of the listener named `listener`.
    pub fn gate(&self, listener: &'static str) -> GateMetrics {
        let l = [("listener", listener)];
        let reason = |r| {
            self.closed
                .get_or_create(&[("listener", listener), ("reason", r)])
                .clone()
        };
        GateMetrics {
            open: self.open.get_or_create(&l).clone(),
            refused: self.refused.get_or_create(&l).clone(),
            handshake_timeouts: reason("handshake"),
            header_timeouts: reason("header"),
            idle_closed: reason("idle"),
        }
    }
}

/// A connection's place under its listener's cap, released when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Slot(#[allow(dead_code)] Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake took longer than the handshake timeout.
    #[error("TLS handshake timed out")]
    TimedOut,
    /// The handshake failed.
    #[error("TLS handshake")]
    Tls(#[source] std::io::Error),
}

/// One listener's limits, cap and metrics. Cheap to clone: clones share the
/// cap.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    limits: Limits,
    permits: Arc<Semaphore>,
    metrics: GateMetrics,
    http1_only: bool,
}

impl Gate {
    /// A gate with unregistered metrics.
    pub fn new(limits: Limits) -> Self {
        Self::with_metrics(limits, GateMetrics::default())
    }

    /// A gate counting into `metrics` (see [`ListenerMetrics::gate`]).
    pub fn with_metrics(limits: Limits, metrics: GateMetrics) -> Self {
        let permits = Arc::new(Semaphore::new(
            limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Gate {
            inner: Arc::new(GateInner {
                limits,
                permits,
                metrics,
                http1_only: false,
            }),
        }
    }

    /// The same gate serving HTTP/1.1 only.
    pub fn http1_only(self) -> Self {
        Gate {
            inner: Arc::new(GateInner {
                limits: self.inner.limits.clone(),
                permits: Arc::clone(&self.inner.permits),
                metrics: self.inner.metrics.clone(),
                http1_only: true,
            }),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Connections open under this gate now.
    pub fn open(&self) -> usize {
        self.inner.limits.max_connections - self.inner.permits.available_permits()
    }

    /// A place for a new connection, or `None` (counted as refused) when
    /// the listener is full. The caller closes a refused connection at once.
    pub fn admit(&self) -> Option<Slot> {
        match Arc::clone(&self.inner.permits).try_acquire_owned() {
            Ok(permit) => {
                self.inner.metrics.open.inc();
                Some(Slot(Arc::new(SlotInner {
                    _permit: permit,
                    open: self.inner.metrics.open.clone(),
                })))
            }
            Err(_) => {
                self.inner.metrics.refused.inc();
                None
            }
        }
    }

    /// The next connection this gate admits. Connections over the cap are
    /// closed as soon as they are accepted (rather than left waiting in the
    /// kernel's queue, where a client could not tell a full listener from
    /// a slow one); accept errors (out of file descriptors) pause the loop
    /// briefly instead of spinning.
    pub async fn accept(&self, listener: &TcpListener) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => match self.admit() {
                    Some(slot) => return (tcp, peer, slot),
                    None => {
                        tracing::debug!(%peer, max = self.inner.limits.max_connections, "listener full: connection closed");
                        drop(tcp);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs a TLS handshake under the handshake timeout.
    pub async fn handshake<IO>(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        io: IO,
    ) -> Result<tokio_rustls::server::TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.inner.limits.handshake_timeout, acceptor.accept(io)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(e)) => Err(HandshakeError::Tls(e)),
            Err(_) => {
                self.inner.metrics.handshake_timeouts.inc();
                Err(HandshakeError::TimedOut)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let zero = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(zero.validate(), Err(LimitsError::NoConnections));
        let idle = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert_eq!(
            idle.validate(),
            Err(LimitsError::ZeroTimeout("idle_timeout"))
        );
        let no_ping = Limits {
            h2_keep_alive_interval: None,
            ..Limits::default()
        };
        assert_eq!(no_ping.validate(), Ok(()));
    }

    #[test]
    fn the_cap_counts_slots_until_every_clone_is_dropped() {
        let metrics = ListenerMetrics::default();
        let gate = Gate::with_metrics(
            Limits {
                max_connections: 2,
                ..Limits::default()
            },
            metrics.gate("test"),
        );
        let a = gate.admit().unwrap();
        let b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        assert_eq!(gate.open(), 2);
        let a2 = a.clone();
        drop(a);
        assert!(gate.admit().is_none(), "a clone still holds the place");
        drop(a2);
        let c = gate.admit().unwrap();
        assert_eq!(gate.open(), 2);
        let m = metrics.gate("test");
        assert_eq!(m.open.get(), 2);
        assert_eq!(m.refused.get(), 2);
        drop((b, c));
        assert_eq!(m.open.get(), 0);
        assert_eq!(gate.open(), 0);
    }
}
