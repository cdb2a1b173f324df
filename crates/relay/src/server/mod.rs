//! The relay server: a registry of connected clients by node key, packet
//! forwarding between them, and the HTTP front ([`RelayServer::handle`] to
//! mount on an existing hyper or axum server, [`RelayServer::serve_connection`]
//! for a listener of its own).

mod admission;
mod conn;
mod http;
mod metrics;
mod stun;

pub use admission::{Admission, KeySet};
pub use http::{PATHS, meta_certificate};
pub use metrics::RelayMetrics;
pub use stun::serve_stun;

use crate::frame::{Frame, MAX_FRAME};
use crate::handshake::PrivateKey;
use crate::ratelimit::Rate;
use bytes::{Bytes, BytesMut};
use gatehouse_disco::NodePublicKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// Settings of a relay server.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// A KeepAlive goes to an otherwise silent client this often (plus
    /// jitter); Tailscale's clients give up after 120 s of silence.
    pub keepalive: Duration,
    /// Random extra delay added to each keepalive interval.
    pub keepalive_jitter: Duration,
    /// Time for the DERP handshake (and for the HTTP request before it).
    pub handshake_timeout: Duration,
    /// Time to write one batch of frames to a client before it is dropped.
    pub write_timeout: Duration,
    /// Per-client limit on what a client sends, announced in ServerInfo;
    /// packets over it are dropped. `None`: no limit.
    pub rate_limit: Option<Rate>,
    /// Packets queued per destination (and as many disco packets) before
    /// the oldest are dropped.
    pub queue_depth: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(60),
            keepalive_jitter: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(2),
            rate_limit: None,
            queue_depth: 32,
        }
    }
}

/// A configuration the relay cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A burst below one full packet would block full-size packets forever.
    #[error("rate limit burst {0} is below one full packet ({min} bytes)", min = MIN_BURST)]
    BurstTooSmall(u32),
    /// A zero rate.
    #[error("rate limit of 0 bytes per second")]
    ZeroRate,
    /// A rate above what the protocol can announce.
    #[error("rate limit values must be below 2^31")]
    RateTooLarge,
    /// No queue.
    #[error("queue depth must be at least 1")]
    ZeroQueue,
}

/// The smallest burst: one SendPacket frame of a full packet, as the
/// client counts it.
pub const MIN_BURST: u32 = (crate::frame::HEADER_LEN + MAX_FRAME) as u32;

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum CloseReason {
    Open = 0,
    Revoked = 1,
    Shutdown = 2,
}

const CONTROL_QUEUE: usize = 64;

#[derive(Debug, Default)]
struct Queue {
    control: VecDeque<Frame>,
    disco: VecDeque<(NodePublicKey, Bytes)>,
    packets: VecDeque<(NodePublicKey, Bytes)>,
}

/// One connected client.
#[derive(Debug)]
pub(crate) struct Client {
    id: u64,
    key: NodePublicKey,
    /// Declared CanAckPings: a Go client, which handles Health and
    /// Restarting (tailscale-rs 0.6 treats them as fatal).
    can_ack_pings: bool,
    queue: Mutex<Queue>,
    wake: Notify,
    close: AtomicU8,
    preferred: AtomicBool,
    /// Peers this client sent packets to: they learn when it leaves.
    sent_to: Mutex<HashSet<NodePublicKey>>,
}

impl Client {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a packet; the oldest goes when the queue is full. Returns
    /// whether one was dropped.
    fn push_packet(&self, src: NodePublicKey, packet: Bytes, disco: bool, depth: usize) -> bool {
        let dropped = {
            let mut q = self.lock();
            let q = if disco { &mut q.disco } else { &mut q.packets };
            let full = q.len() >= depth;
            if full {
                q.pop_front();
            }
            q.push_back((src, packet));
            full
        };
        self.wake.notify_one();
        dropped
    }

    fn push_control(&self, f: Frame) {
        {
            let mut q = self.lock();
            if q.control.len() >= CONTROL_QUEUE {
                return;
            }
            q.control.push_back(f);
        }
        self.wake.notify_one();
    }

    fn close_with(&self, why: CloseReason) {
        let _ = self
            .close
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.wake.notify_one();
    }

    fn closing(&self) -> CloseReason {
        match self.close.load(Ordering::Acquire) {
            1 => CloseReason::Revoked,
            2 => CloseReason::Shutdown,
            _ => CloseReason::Open,
        }
    }

    /// Moves queued frames into `out`, control frames first, up to about
    /// `budget` bytes. Returns (packets, packet bytes, more left).
    fn drain(&self, out: &mut BytesMut, budget: usize) -> (u64, u64, bool) {
        let mut q = self.lock();
        while let Some(f) = q.control.pop_front() {
            crate::frame::encode(&f, out);
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for from_disco in [true, false] {
            loop {
                if out.len() >= budget {
                    break;
                }
                let next = if from_disco {
                    q.disco.pop_front()
                } else {
                    q.packets.pop_front()
                };
                let Some((src, p)) = next else { break };
                crate::frame::encode_recv_packet(out, &src, &p);
                n += 1;
                bytes += p.len() as u64;
            }
        }
        let more = !q.disco.is_empty() || !q.packets.is_empty();
        if q.packets.is_empty() && q.packets.capacity() > 0 {
            q.packets = VecDeque::new();
        }
        if q.disco.is_empty() && q.disco.capacity() > 0 {
            q.disco = VecDeque::new();
        }
        (n, bytes, more)
    }
}

/// A DERP relay server. Cheap to share (`Arc`); every connection task
/// holds one.
pub struct RelayServer {
    key: PrivateKey,
    config: RelayConfig,
    admission: Arc<dyn Admission>,
    clients: RwLock<HashMap<NodePublicKey, Vec<Arc<Client>>>>,
    next_id: AtomicU64,
    health: Mutex<Option<String>>,
    shutting_down: AtomicBool,
    all_gone: Notify,
    metrics: RelayMetrics,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("key", &self.key.public())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// A relay with private key `key` (its identity towards clients; keep it
    /// stable across restarts), admitting the clients `admission` admits.
    pub fn new(
        key: PrivateKey,
        config: RelayConfig,
        admission: Arc<dyn Admission>,
    ) -> Result<Arc<Self>, ConfigError> {
        if let Some(r) = config.rate_limit {
            if r.per_sec == 0 {
                return Err(ConfigError::ZeroRate);
            }
            if r.burst < MIN_BURST {
                return Err(ConfigError::BurstTooSmall(r.burst));
            }
            if r.per_sec > i32::MAX as u32 || r.burst > i32::MAX as u32 {
                return Err(ConfigError::RateTooLarge);
            }
        }
        if config.queue_depth == 0 {
            return Err(ConfigError::ZeroQueue);
        }
        Ok(Arc::new(Self {
            key,
            config,
            admission,
            clients: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            health: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
            all_gone: Notify::new(),
            metrics: RelayMetrics::default(),
        }))
    }

    /// The relay's public key (what clients learn from ServerKey).
    pub fn public_key(&self) -> NodePublicKey {
        self.key.public()
    }

    /// Its metrics, to register in the process's registry.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Connections open now.
    pub fn client_count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Whether a client with `key` is connected.
    pub fn is_connected(&self, key: &NodePublicKey) -> bool {
        self.read().contains_key(key)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodePublicKey, Vec<Arc<Client>>>> {
        self.clients.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodePublicKey, Vec<Arc<Client>>>> {
        self.clients.write().unwrap_or_else(|p| p.into_inner())
    }

    fn all_clients(&self) -> Vec<Arc<Client>> {
        self.read().values().flatten().cloned().collect()
    }

    /// Asks the admission again about every connected client and closes
    /// those no longer admitted. Call it whenever the admitted set shrinks
    /// (a node deleted, expired, its key rotated). Returns how many closed.
    pub fn revalidate(&self) -> usize {
        let mut n = 0;
        for c in self.all_clients() {
            if !self.admission.admits(&c.key) {
                tracing::info!(key = %c.key, "relay: closing a client no longer admitted");
                c.close_with(CloseReason::Revoked);
                n += 1;
            }
        }
        n
    }

    /// Sets (or with `None`, clears) the health problem told to clients that
    /// understand Health frames, now and on connecting.
    pub fn set_health(&self, problem: Option<String>) {
        let text = problem.clone().unwrap_or_default();
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = problem;
        for c in self.all_clients().into_iter().filter(|c| c.can_ack_pings) {
            c.push_control(Frame::Health(text.clone()));
        }
    }

    /// Graceful stop: refuses new clients, tells the connected ones that
    /// understand it to reconnect in `reconnect_in` and keep trying for
    /// `try_for` (Restarting), closes every connection and waits (at most
    /// the write timeout and a second) for them to end.
    pub async fn shutdown(&self, reconnect_in: Duration, try_for: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        for c in self.all_clients() {
            if c.can_ack_pings {
                c.push_control(Frame::Restarting {
                    reconnect_in,
                    try_for,
                });
            }
            c.close_with(CloseReason::Shutdown);
        }
        let wait = self.config.write_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, async {
            loop {
                let gone = self.all_gone.notified();
                if self.client_count() == 0 {
                    return;
                }
                gone.await;
            }
        })
        .await;
    }

    fn register(&self, key: NodePublicKey, can_ack_pings: bool) -> Arc<Client> {
        let c = Arc::new(Client {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key,
            can_ack_pings,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            close: AtomicU8::new(CloseReason::Open as u8),
            preferred: AtomicBool::new(false),
            sent_to: Mutex::new(HashSet::new()),
        });
        self.write().entry(key).or_default().push(Arc::clone(&c));
        self.metrics.clients.inc();
        c
    }

    fn unregister(&self, c: &Arc<Client>) {
        let last = {
            let mut map = self.write();
            let mut last = false;
            if let Some(v) = map.get_mut(&c.key) {
                v.retain(|x| x.id != c.id);
                if v.is_empty() {
                    map.remove(&c.key);
                    last = true;
                }
            }
            if map.is_empty() {
                self.all_gone.notify_waiters();
            }
            last
        };
        self.metrics.clients.dec();
        if c.preferred.swap(false, Ordering::AcqRel) {
            self.metrics.home_clients.dec();
        }
        if !last {
            return;
        }
        // Its last connection is gone: tell the peers it sent to.
        let peers: Vec<NodePublicKey> =
            std::mem::take(&mut *c.sent_to.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for p in peers {
            if let Some(dst) = self.active(&p) {
                dst.push_control(Frame::PeerGone {
                    key: c.key,
                    reason: crate::frame::PeerGoneReason::Disconnected,
                });
            }
        }
    }

    /// The connection that receives packets for `key`: the most recent one
    /// to connect or to send.
    fn active(&self, key: &NodePublicKey) -> Option<Arc<Client>> {
        self.read().get(key).and_then(|v| v.last().cloned())
    }

    /// A sender with several connections makes the one it sends on active.
    fn note_sender(&self, c: &Arc<Client>) {
        let is_last = self
            .read()
            .get(&c.key)
            .is_none_or(|v| v.len() == 1 || v.last().is_some_and(|l| l.id == c.id));
        if is_last {
            return;
        }
        if let Some(v) = self.write().get_mut(&c.key)
            && let Some(i) = v.iter().position(|x| x.id == c.id)
        {
            let me = v.remove(i);
            v.push(me);
        }
    }

    /// Forwards `packet` from `from` to `dst`. Returns false when `dst` is
    /// not connected here.
    fn forward(&self, from: &Arc<Client>, dst: NodePublicKey, packet: Bytes, disco: bool) -> bool {
        let Some(to) = self.active(&dst) else {
            self.metrics.drop_packet("unknown_destination");
            return false;
        };
        if to.push_packet(from.key, packet, disco, self.config.queue_depth) {
            self.metrics.drop_packet("queue_full");
        }
        let mut sent = from.sent_to.lock().unwrap_or_else(|p| p.into_inner());
        if !sent.contains(&dst) {
            sent.insert(dst);
        }
        true
    }
}
