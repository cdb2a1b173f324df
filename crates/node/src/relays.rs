//! The node's connections to relays (docs/decisions/0029-paths-through-nat.md):
//! one to its home region, kept open, and one to each other region a
//! datagram must go through, opened on demand and closed after it has been
//! idle a while. The data plane decides what goes through a relay; this
//! module only carries datagrams between it and the relays' HTTPS
//! connections, and reports what it sees.

use bytes::Bytes;
use gatehouse_proto::control::{RelayMap, RelayRegion};
use gatehouse_relay::{ClientConfig, Event, NodePublicKey, PrivateKey, RelayClient};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Datagrams queued per region before new ones are dropped.
const QUEUE: usize = 512;
/// A region other than home with no datagram for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);

/// Where datagrams a relay delivered go: `(region, sender, datagram)`.
pub type Deliver = Arc<dyn Fn(u16, NodePublicKey, Bytes) + Send + Sync>;

/// What the node shows about one relay region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// The region's code.
    pub code: String,
    /// Whether it is the node's home region.
    pub home: bool,
    /// Whether the connection is up now.
    pub connected: bool,
    /// Since when it is up or down (unix seconds).
    pub since: Option<i64>,
    /// Connections made (the first included).
    pub connects: u64,
}

/// Counters over every region.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Connections made to relays (reconnects included).
    pub connects: AtomicU64,
    /// Connections lost.
    pub disconnects: AtomicU64,
    /// Datagrams sent to relays.
    pub sent: AtomicU64,
    /// Datagrams relays delivered.
    pub received: AtomicU64,
    /// Datagrams dropped: no such region, or its queue full.
    pub dropped: AtomicU64,
}

struct Region {
    tx: mpsc::Sender<(NodePublicKey, Bytes)>,
    last_used: Instant,
    status: Arc<Mutex<RelayStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    map: RelayMap,
    home: Option<u16>,
    regions: BTreeMap<u16, Region>,
}

/// The node's relay connections.
pub struct Relays {
    key: PrivateKey,
    tls: Arc<rustls::ClientConfig>,
    deliver: Deliver,
    inner: Mutex<Inner>,
    counters: Arc<RelayCounters>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relays")
            .field("key", &self.key.public())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The URL of a region's first relay.
pub fn region_url(r: &RelayRegion) -> Option<String> {
    let n = r.nodes.first()?;
    let host = if n.host.contains(':') {
        format!("[{}]", n.host)
    } else {
        n.host.clone()
    };
    Some(format!("https://{host}:{}", n.port))
}

impl Relays {
    /// Relay connections as `key` (the node's WireGuard key), trusting
    /// `tls`'s roots; what relays deliver goes to `deliver`.
    pub fn new(key: PrivateKey, tls: Arc<rustls::ClientConfig>, deliver: Deliver) -> Self {
        Relays {
            key,
            tls,
            deliver,
            inner: Mutex::new(Inner {
                map: RelayMap::default(),
                home: None,
                regions: BTreeMap::new(),
            }),
            counters: Arc::new(RelayCounters::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The relay map from control; connections to regions it no longer has
    /// (or whose relays changed) are closed.
    pub fn set_map(&self, map: &RelayMap) {
        let mut inner = self.lock();
        if inner.map == *map {
            return;
        }
        let old = std::mem::replace(&mut inner.map, map.clone());
        let stale: Vec<u16> = inner
            .regions
            .keys()
            .copied()
            .filter(|id| {
                let now = map.regions.iter().find(|r| r.id == *id);
                let before = old.regions.iter().find(|r| r.id == *id);
                now.is_none() || now != before
            })
            .collect();
        for id in stale {
            inner.regions.remove(&id);
        }
        if inner
            .home
            .is_some_and(|h| !map.regions.iter().any(|r| r.id == h))
        {
            inner.home = None;
        }
        let home = inner.home;
        drop(inner);
        if let Some(h) = home {
            self.set_home(Some(h));
        }
    }

    /// The relay map in use.
    pub fn map(&self) -> RelayMap {
        self.lock().map.clone()
    }

    /// Makes `region` the home (connected and kept open), or none.
    pub fn set_home(&self, region: Option<u16>) {
        let mut inner = self.lock();
        let before = inner.home;
        inner.home = region;
        if let Some(b) = before
            && Some(b) != region
            && let Some(r) = inner.regions.get(&b)
        {
            lock_status(&r.status).home = false;
        }
        if let Some(h) = region {
            self.ensure(&mut inner, h);
            if let Some(r) = inner.regions.get(&h) {
                lock_status(&r.status).home = true;
            }
        }
    }

    /// The home region.
    pub fn home(&self) -> Option<u16> {
        self.lock().home
    }

    /// Sends `datagram` to `to` through `region`, connecting first if
    /// needed. Never waits: dropped (and counted) when the region is
    /// unknown or its queue is full.
    pub fn send(&self, region: u16, to: NodePublicKey, datagram: Bytes) {
        let mut inner = self.lock();
        if !self.ensure(&mut inner, region) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(r) = inner.regions.get_mut(&region) else {
            return;
        };
        r.last_used = Instant::now();
        match r.tx.try_send((to, datagram)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_full_or_closed) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes connections to regions other than home that have been idle
    /// for [`IDLE`]; returns how many.
    pub fn close_idle(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let home = inner.home;
        let idle: Vec<u16> = inner
            .regions
            .iter()
            .filter(|(id, r)| Some(**id) != home && now.duration_since(r.last_used) >= IDLE)
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            inner.regions.remove(id);
        }
        idle.len()
    }

    /// Per open region, what the node shows.
    pub fn status(&self) -> BTreeMap<u16, RelayStatus> {
        self.lock()
            .regions
            .iter()
            .map(|(id, r)| (*id, lock_status(&r.status).clone()))
            .collect()
    }

    /// The counters.
    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    /// Opens the connection to `region` if it is not open; false when the
    /// map has no such region.
    fn ensure(&self, inner: &mut Inner, region: u16) -> bool {
        if inner.regions.contains_key(&region) {
            return true;
        }
        let Some(r) = inner.map.regions.iter().find(|r| r.id == region) else {
            return false;
        };
        let Some(url) = region_url(r) else {
            return false;
        };
        let mut cfg = ClientConfig::new(url, Arc::clone(&self.tls));
        cfg.home = inner.home == Some(region);
        let client = RelayClient::start(cfg, self.key.clone());
        let (tx, rx) = mpsc::channel(QUEUE);
        let status = Arc::new(Mutex::new(RelayStatus {
            code: r.code.clone(),
            home: inner.home == Some(region),
            connected: false,
            since: Some(unix_now()),
            connects: 0,
        }));
        let task = tokio::spawn(pump(
            region,
            client,
            rx,
            Arc::clone(&self.deliver),
            Arc::clone(&status),
            Arc::clone(&self.counters),
        ));
        inner.regions.insert(
            region,
            Region {
                tx,
                last_used: Instant::now(),
                status,
                task,
            },
        );
        true
    }
}

fn lock_status(s: &Mutex<RelayStatus>) -> MutexGuard<'_, RelayStatus> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// One region's connection: datagrams out from the queue, what the relay
/// delivers to `deliver`, the connection's state into `status`.
async fn pump(
    region: u16,
    mut client: RelayClient,
    mut out: mpsc::Receiver<(NodePublicKey, Bytes)>,
    deliver: Deliver,
    status: Arc<Mutex<RelayStatus>>,
    counters: Arc<RelayCounters>,
) {
    loop {
        tokio::select! {
            next = out.recv() => {
                let Some((to, datagram)) = next else { return };
                if client.send(to, datagram).await.is_err() {
                    return;
                }
            }
            ev = client.recv() => match ev {
                None => return,
                Some(Event::Packet { src, data }) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    deliver(region, src, data);
                }
                Some(Event::Connected(_)) => {
                    counters.connects.fetch_add(1, Ordering::Relaxed);
                    let mut s = lock_status(&status);
                    s.connected = true;
                    s.connects += 1;
                    s.since = Some(unix_now());
                    tracing::debug!(region, "relay connected");
                }
                Some(Event::Disconnected(why)) => {
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    let mut s = lock_status(&status);
                    s.connected = false;
                    s.since = Some(unix_now());
                    tracing::info!(region, reason = %why, "relay connection lost; reconnecting");
                }
                Some(Event::PeerGone { key, reason }) => {
                    tracing::debug!(region, peer = %key.to_base64(), ?reason, "peer gone from relay");
                }
                Some(Event::Health(problem)) => {
                    if problem.is_empty() {
                        tracing::info!(region, "relay healthy again");
                    } else {
                        tracing::warn!(region, %problem, "relay reports a problem");
                    }
                }
                Some(Event::Restarting { reconnect_in, .. }) => {
                    tracing::info!(region, ?reconnect_in, "relay restarting");
                }
            },
        }
    }
}
