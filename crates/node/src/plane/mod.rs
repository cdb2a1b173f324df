//! The data plane as the node sees it: something that takes the peers and
//! inbound filter from control's map, hands over inbound connections the
//! filter allowed, and opens connections to mesh addresses. The node's
//! applications see only streams, never packets.
//!
//! [`mesh`] implements it over the WireGuard data plane (`crates/mesh`:
//! user-space WireGuard and TCP/IP, or a TUN device), the default;
//! [`loopback`] over kernel TCP with mutual TLS between nodes on one
//! machine, kept selectable for tests of the layers above and for
//! comparison.

pub mod loopback;
pub mod mesh;

use gatehouse_filter::NodeFilter;
use gatehouse_proto::control::{EndpointsRequest, Peer, RelayMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream an application can use.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A stream of any kind.
pub type BoxStream = Box<dyn Stream>;

/// An inbound connection the filter allowed.
#[derive(Debug)]
pub struct Connection<S> {
    /// The stream.
    pub stream: S,
    /// The caller's mesh address and port.
    pub remote: SocketAddr,
    /// The node's mesh address and the port called.
    pub local: SocketAddr,
}

/// What the data plane says about itself (for `gatehouse node status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneStatus {
    /// Which data plane (`loopback`, `mesh`).
    pub kind: String,
    /// Local addresses it listens on.
    pub listen: Vec<SocketAddr>,
    /// Per peer (node id): the path in use and counters.
    pub peers: BTreeMap<String, PeerPath>,
    /// Inbound connections refused by the filter (or from unknown nodes);
    /// on the mesh, connection attempts (TCP SYNs, retransmissions
    /// included) the filter dropped.
    pub refused: u64,
    /// The node's WireGuard public key (mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The TUN device in use (mesh, TUN mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun: Option<String>,
    /// The home relay region's code (mesh, when relays are in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<String>,
    /// Open relay connections, by region code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relays: BTreeMap<String, crate::relays::RelayStatus>,
    /// Addresses the node learned its NAT gives it (STUN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reflexive: Vec<SocketAddr>,
}

/// The data plane's view of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The endpoint used to reach it.
    pub endpoint: Option<SocketAddr>,
    /// Connections opened to it.
    pub connections_out: u64,
    /// Connections accepted from it.
    pub connections_in: u64,
    /// Connections from it refused by the filter.
    pub refused_in: u64,
    /// Last time a connection or ping to or from it succeeded (unix seconds).
    pub last_ok: Option<i64>,
    /// Last completed WireGuard handshake (unix seconds; mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<i64>,
    /// Bytes of IP packets sent to it (mesh).
    #[serde(default)]
    pub tx_bytes: u64,
    /// Bytes of IP packets received from it, before filtering (mesh).
    #[serde(default)]
    pub rx_bytes: u64,
    /// The path data takes now: `direct <ip:port>` or `relay <region>`
    /// (mesh; none before the first handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Round trip of the last disco pong on that path, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Whether the peer answers now (mesh: a recent handshake, and traffic
    /// sent to it answered).
    #[serde(default)]
    pub reachable: bool,
    /// Since when it is reachable (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable_since: Option<i64>,
}

/// The interface between the node and its data plane.
pub trait DataPlane: Send + Sync + 'static {
    /// The streams it produces.
    type Stream: Stream;

    /// Peers and inbound filter from control's map; called on every map
    /// change, idempotent. The filter is enforced inside the data plane:
    /// a connection it refuses never reaches [`DataPlane::accept`].
    fn apply(&self, peers: &[Peer], filter: &NodeFilter);

    /// The next inbound connection the filter allowed; `None` once shut down.
    fn accept(&self) -> impl Future<Output = Option<Connection<Self::Stream>>> + Send;

    /// Opens a connection to a mesh address.
    fn connect(
        &self,
        dst: SocketAddr,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// Round trip of a path-level probe to a peer's mesh address (not
    /// subject to the filter: it reaches the peer's data plane, no stack).
    fn ping(&self, dst: IpAddr) -> impl Future<Output = std::io::Result<Duration>> + Send;

    /// Local endpoints to announce to control.
    fn endpoints(&self) -> Vec<SocketAddr>;

    /// What to announce to control: endpoints (local and reflexive), disco
    /// key and home relay.
    fn announcement(&self) -> EndpointsRequest {
        EndpointsRequest::direct(self.endpoints())
    }

    /// Signalled when the announcement changed (a new reflexive address or
    /// home relay) and should be sent again.
    fn announce_wanted(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    /// The relays from control's map.
    fn apply_relays(&self, _relays: &RelayMap) {}

    /// Metrics read out at each scrape (bytes by path kind, relays).
    fn collector(&self) -> Option<Box<dyn prometheus_client::collector::Collector>> {
        None
    }

    /// A disco ping to a peer: round trip, and how the pong travelled
    /// (`via relay <region>`, `via <ip:port>`), as `tailscale ping` says.
    fn path_ping(
        &self,
        _dst: IpAddr,
    ) -> impl Future<Output = std::io::Result<(Duration, String)>> + Send {
        std::future::ready(Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this data plane has no path discovery",
        )))
    }

    /// Paths and counters.
    fn status(&self) -> PlaneStatus;

    /// Stops accepting and closes its sockets.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// Opens streams to mesh addresses: what the local proxies need of a data
/// plane, object-safe.
pub trait Dial: Send + Sync + std::fmt::Debug {
    /// Opens a stream to `dst`.
    fn dial(
        &self,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + '_>>;
}

/// A [`Dial`] over a data plane.
#[derive(Debug)]
pub struct PlaneDialer<P>(pub Arc<P>);

impl<P: DataPlane + std::fmt::Debug> Dial for PlaneDialer<P> {
    fn dial(
        &self,
        dst: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<BoxStream>> + Send + '_>> {
        Box::pin(async move {
            let s = self.0.connect(dst).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}
