//! The live mesh: every node in memory, the policy compiled over them, and
//! one map stream per connected node. Changes mark only the streams they
//! touch (using the policy engine's change sets); each stream then computes
//! its own delta against what it last sent, so many changes coalesce and
//! nothing recomputes the world.

use crate::store::NodeRow;
use gatehouse_policy::{Engine, EngineError, Node, NodeFilter, Policy, SshGrant};
use gatehouse_proto::control::{DnsConfig, FullMap, MapDelta, Peer, RelayMap, SelfNode};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The resolver address nodes serve mesh names on.
pub const MESH_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100));

/// A node as control keeps it in memory.
#[derive(Debug, Clone)]
struct Entry {
    row: NodeRow,
    /// Bumped on every change peers can see.
    version: u64,
    /// Whether the node is in the compiled policy (not expired).
    live: bool,
    /// Its disco public key, as it last announced (kept in memory: a node
    /// announces it again on every new map stream).
    disco_key: Option<String>,
    /// Its home relay region, as it last announced.
    home_relay: Option<u16>,
}

/// What a stream still has to look at.
#[derive(Debug, Default)]
struct Pending {
    recheck_peers: bool,
    changed_peers: HashSet<String>,
    /// Peers that came online or went offline.
    online_changed: HashSet<String>,
    filter: bool,
    ssh: bool,
    self_node: bool,
    relays: bool,
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    notify: Arc<Notify>,
    pending: Pending,
}

/// What a stream last sent.
#[derive(Debug)]
pub struct Sent {
    peers: HashMap<String, u64>,
    filter: NodeFilter,
    ssh: Vec<SshGrant>,
    self_version: u64,
    relays_version: u64,
}

/// A node's open map stream.
#[derive(Debug)]
pub struct StreamHandle {
    /// The node.
    pub node_id: String,
    /// Woken when there is something to look at.
    pub notify: Arc<Notify>,
    generation: u64,
    sent: Sent,
}

/// The stream must end: the node was deleted or expired, or another stream
/// for it replaced this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

#[derive(Debug)]
struct State {
    domain: String,
    relays: RelayMap,
    relays_version: u64,
    ula: [u16; 3],
    policy: Arc<Policy>,
    engine: Engine,
    nodes: HashMap<String, Entry>,
    by_name: HashMap<String, String>,
    by_fingerprint: HashMap<String, String>,
    /// Node ids by WireGuard public key (base64).
    by_wg_key: HashMap<String, String>,
    used_v4: BTreeSet<u32>,
    streams: HashMap<String, Slot>,
    next_generation: u64,
    next_version: u64,
}

/// The live mesh.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    /// Bumped whenever a node leaves the mesh (removed, expired): whoever
    /// admits nodes (the embedded relay) checks its clients again.
    members: tokio::sync::watch::Sender<u64>,
}

/// Nodes tagged under an earlier policy keep tags the current one does
/// not declare: they stay tagged, but no rule can name those tags.
fn warn_undeclared(engine: &Engine) {
    for (node, tags) in engine.undeclared_tags() {
        tracing::warn!(
            node,
            ?tags,
            "node carries tags the policy does not declare in tagOwners"
        );
    }
}

fn engine_node(r: &NodeRow) -> Node {
    let mut addresses = Vec::new();
    if let Ok(a) = r.ipv4.parse() {
        addresses.push(a);
    }
    if let Ok(a) = r.ipv6.parse() {
        addresses.push(a);
    }
    Node {
        name: r.name.clone(),
        user: r.user.clone(),
        tags: r.tags.clone(),
        addresses,
        // Control approves no subnet routes or exit nodes yet.
        routes: Vec::new(),
    }
}

impl State {
    fn peer_of(&self, e: &Entry) -> Peer {
        let r = &e.row;
        let mut addresses = Vec::new();
        if let Ok(a) = r.ipv4.parse::<IpAddr>() {
            addresses.push(a);
        }
        if let Ok(a) = r.ipv6.parse::<IpAddr>() {
            addresses.push(a);
        }
        Peer {
            id: r.id.clone(),
            name: r.name.clone(),
            fqdn: format!("{}.{}", r.name, self.domain),
            wireguard_key: r.wg_key.clone(),
            addresses,
            endpoints: r
                .endpoints
                .iter()
                .filter_map(|s| s.parse::<SocketAddr>().ok())
                .collect(),
            disco_key: e.disco_key.clone(),
            home_relay: e.home_relay,
            user: if r.tags.is_empty() {
                r.user.clone()
            } else {
                None
            },
            tags: r.tags.clone(),
            key_expiry: r.key_expiry,
            service: r.service.clone(),
            online: Some(self.streams.contains_key(&r.id)),
        }
    }

    fn dns(&self) -> DnsConfig {
        DnsConfig {
            domain: self.domain.clone(),
            nameserver: MESH_DNS,
            search: vec![self.domain.clone()],
        }
    }

    fn ids_of(&self, names: impl IntoIterator<Item = String>) -> Vec<String> {
        names
            .into_iter()
            .filter_map(|n| self.by_name.get(&n).cloned())
            .collect()
    }

    fn peer_ids(&self, id: &str) -> Vec<String> {
        let Some(e) = self.nodes.get(id) else {
            return Vec::new();
        };
        if !e.live {
            return Vec::new();
        }
        let names = self.engine.peers(&e.row.name).unwrap_or_default();
        self.ids_of(names)
    }

    fn filter_of(&self, id: &str) -> NodeFilter {
        self.nodes
            .get(id)
            .filter(|e| e.live)
            .and_then(|e| self.engine.filter(&e.row.name).ok())
            .unwrap_or_else(|| NodeFilter {
                node: String::new(),
                addresses: Vec::new(),
                rules: Vec::new(),
            })
    }

    /// The node's SSH policy (none for a node not in the mesh).
    fn ssh_of(&self, id: &str) -> Vec<SshGrant> {
        self.nodes
            .get(id)
            .filter(|e| e.live)
            .and_then(|e| self.engine.ssh_rules(&e.row.name).ok())
            .unwrap_or_default()
    }

    fn mark(&mut self, id: &str, f: impl FnOnce(&mut Pending)) {
        if let Some(slot) = self.streams.get_mut(id) {
            f(&mut slot.pending);
            slot.notify.notify_one();
        }
    }

    fn apply_changes(&mut self, cs: gatehouse_policy::ChangeSet) {
        for id in self.ids_of(cs.peers) {
            self.mark(&id, |p| p.recheck_peers = true);
        }
        for id in self.ids_of(cs.filters) {
            self.mark(&id, |p| p.filter = true);
        }
        for id in self.ids_of(cs.ssh) {
            self.mark(&id, |p| p.ssh = true);
        }
    }

    /// Tells every peer of `id` that its entry changed.
    fn peer_changed(&mut self, id: &str) {
        for p in self.peer_ids(id) {
            let id = id.to_string();
            self.mark(&p, move |pending| {
                pending.changed_peers.insert(id);
            });
        }
    }

    /// Tells every peer of `id` that it came online or went offline.
    fn online_changed(&mut self, id: &str) {
        for p in self.peer_ids(id) {
            let id = id.to_string();
            self.mark(&p, move |pending| {
                pending.online_changed.insert(id);
            });
        }
    }

    fn bump(&mut self, id: &str) {
        self.next_version += 1;
        let v = self.next_version;
        if let Some(e) = self.nodes.get_mut(id) {
            e.version = v;
        }
    }
}

impl Hub {
    /// Builds the live mesh from stored nodes and the current policy.
    /// Nodes whose key expired before `now` are kept but not in the mesh.
    pub fn new(
        domain: String,
        relays: RelayMap,
        ula: [u16; 3],
        policy: Arc<Policy>,
        rows: Vec<NodeRow>,
        now: i64,
    ) -> Result<Self, EngineError> {
        let live: Vec<Node> = rows
            .iter()
            .filter(|r| r.key_expiry > now)
            .map(engine_node)
            .collect();
        let engine = Engine::new(Arc::clone(&policy), live)?;
        warn_undeclared(&engine);
        let mut st = State {
            domain,
            relays,
            relays_version: 0,
            ula,
            policy,
            engine,
            nodes: HashMap::new(),
            by_name: HashMap::new(),
            by_fingerprint: HashMap::new(),
            by_wg_key: HashMap::new(),
            used_v4: BTreeSet::new(),
            streams: HashMap::new(),
            next_generation: 0,
            next_version: 0,
        };
        for r in rows {
            st.next_version += 1;
            if let Ok(a) = r.ipv4.parse::<Ipv4Addr>() {
                st.used_v4.insert(u32::from(a));
            }
            st.by_name.insert(r.name.clone(), r.id.clone());
            st.by_fingerprint
                .insert(r.cert_fingerprint.clone(), r.id.clone());
            st.by_wg_key.insert(r.wg_key.clone(), r.id.clone());
            st.nodes.insert(
                r.id.clone(),
                Entry {
                    live: r.key_expiry > now,
                    row: r,
                    version: st.next_version,
                    disco_key: None,
                    home_relay: None,
                },
            );
        }
        Ok(Hub {
            state: Mutex::new(st),
            members: tokio::sync::watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed
        // in a way later readers depend on; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.lock().policy)
    }

    /// The inventory the policy is evaluated against (live nodes).
    pub fn inventory(&self) -> Vec<Node> {
        let st = self.lock();
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut v: Vec<Node> = st
            .nodes
            .values()
            .filter(|e| e.live)
            .map(|e| engine_node(&e.row))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The shared name and tags of every node holding `label` as its name
    /// or as its shared name.
    pub fn name_holders(&self, label: &str) -> Vec<(Option<String>, Vec<String>)> {
        let st = self.lock();
        #[allow(clippy::disallowed_methods)] // every holder is checked alike
        st.nodes
            .values()
            .filter(|e| e.row.name == label || e.row.service.as_deref() == Some(label))
            .map(|e| (e.row.service.clone(), e.row.tags.clone()))
            .collect()
    }

    /// Chooses a unique name and free addresses for a new node. Shared
    /// names of replicas count as taken.
    pub fn allocate(&self, hostname: &str) -> (String, Ipv4Addr, Ipv6Addr) {
        let st = self.lock();
        let base = gatehouse_names::to_label(hostname);
        let mut name = base.clone();
        let mut k = 1;
        let taken = |n: &str| {
            #[allow(clippy::disallowed_methods)] // `any`: order does not matter
            let shared = st
                .nodes
                .values()
                .any(|e| e.row.service.as_deref() == Some(n));
            st.by_name.contains_key(n) || shared
        };
        while taken(&name) {
            let suffix = format!("-{k}");
            let keep = 63usize.saturating_sub(suffix.len());
            name = format!("{}{suffix}", &base[..base.len().min(keep)]);
            k += 1;
        }
        let first = u32::from(Ipv4Addr::new(100, 64, 0, 1));
        let last = u32::from(Ipv4Addr::new(100, 127, 255, 254));
        let reserved = |a: u32| {
            let ip = Ipv4Addr::from(a);
            ip == Ipv4Addr::new(100, 100, 100, 100)
                || (ip.octets()[0..3] == [100, 115, 92] || ip.octets()[0..3] == [100, 115, 93])
        };
        // Walk the used addresses in order: the first gap is the lowest free one.
        let mut a = first;
        for &u in st.used_v4.range(first..=last) {
            while reserved(a) {
                a += 1;
            }
            if a < u {
                break;
            }
            if a == u {
                a += 1;
            }
        }
        while reserved(a) || st.used_v4.contains(&a) {
            a += 1;
        }
        let v4 = Ipv4Addr::from(a);
        let [p0, p1, p2] = st.ula;
        let v6 = Ipv6Addr::new(p0, p1, p2, 0, 0, 0, (a >> 16) as u16, a as u16);
        (name, v4, v6)
    }

    /// Whether a WireGuard key is already registered.
    pub fn has_wireguard_key(&self, key: &str) -> bool {
        self.lock().by_wg_key.contains_key(key)
    }

    /// Whether the node with this WireGuard public key (base64) is in the
    /// mesh now (registered, key not expired): who may use the relay.
    pub fn is_member(&self, wg_key: &str) -> bool {
        let st = self.lock();
        st.by_wg_key
            .get(wg_key)
            .and_then(|id| st.nodes.get(id))
            .is_some_and(|e| e.live)
    }

    /// Changes whenever a node leaves the mesh.
    pub fn departures(&self) -> tokio::sync::watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// Adds a freshly registered node.
    pub fn add_node(&self, row: NodeRow) -> Result<(), EngineError> {
        let mut st = self.lock();
        let cs = st.engine.upsert_node(engine_node(&row))?;
        if let Ok(a) = row.ipv4.parse::<Ipv4Addr>() {
            st.used_v4.insert(u32::from(a));
        }
        st.next_version += 1;
        st.by_name.insert(row.name.clone(), row.id.clone());
        st.by_fingerprint
            .insert(row.cert_fingerprint.clone(), row.id.clone());
        st.by_wg_key.insert(row.wg_key.clone(), row.id.clone());
        let id = row.id.clone();
        let version = st.next_version;
        st.nodes.insert(
            id,
            Entry {
                row,
                version,
                live: true,
                disco_key: None,
                home_relay: None,
            },
        );
        st.apply_changes(cs);
        Ok(())
    }

    /// Takes a node out of the mesh (deleted, or expired when `keep`).
    fn take_out(st: &mut State, id: &str) {
        let Some(e) = st.nodes.get(id) else { return };
        if e.live {
            let name = e.row.name.clone();
            if let Ok(cs) = st.engine.remove_node(&name) {
                st.apply_changes(cs);
            }
        }
        if let Some(e) = st.nodes.get_mut(id) {
            e.live = false;
        }
        st.mark(id, |p| p.closed = true);
    }

    /// Removes a node entirely.
    pub fn remove_node(&self, id: &str) -> Option<NodeRow> {
        let mut st = self.lock();
        Self::take_out(&mut st, id);
        let e = st.nodes.remove(id)?;
        st.by_name.remove(&e.row.name);
        st.by_fingerprint.remove(&e.row.cert_fingerprint);
        if st.by_wg_key.get(&e.row.wg_key).is_some_and(|i| i == id) {
            st.by_wg_key.remove(&e.row.wg_key);
        }
        if let Ok(a) = e.row.ipv4.parse::<Ipv4Addr>() {
            st.used_v4.remove(&u32::from(a));
        }
        drop(st);
        self.members.send_modify(|g| *g += 1);
        Some(e.row)
    }

    /// Marks a node's key expired at `at`: it leaves every peer's map.
    pub fn expire_node(&self, id: &str, at: i64) -> bool {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(id) else {
            return false;
        };
        e.row.key_expiry = at;
        Self::take_out(&mut st, id);
        drop(st);
        self.members.send_modify(|g| *g += 1);
        true
    }

    /// Nodes whose key has expired by `now` but are still in the mesh.
    pub fn due_for_expiry(&self, now: i64) -> Vec<String> {
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut due: Vec<String> = self
            .lock()
            .nodes
            .values()
            .filter(|e| e.live && e.row.key_expiry <= now)
            .map(|e| e.row.id.clone())
            .collect();
        due.sort();
        due
    }

    /// The earliest key expiry among live nodes.
    pub fn next_expiry(&self) -> Option<i64> {
        #[allow(clippy::disallowed_methods)] // `min`: order does not matter
        self.lock()
            .nodes
            .values()
            .filter(|e| e.live)
            .map(|e| e.row.key_expiry)
            .min()
    }

    /// Replaces a node's endpoints, disco key and home relay; its peers
    /// get the change.
    pub fn set_endpoints(
        &self,
        id: &str,
        endpoints: Vec<String>,
        disco_key: Option<String>,
        home_relay: Option<u16>,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.nodes.get_mut(id) {
            if e.row.endpoints == endpoints
                && e.disco_key == disco_key
                && e.home_relay == home_relay
            {
                return;
            }
            e.row.endpoints = endpoints;
            e.disco_key = disco_key;
            e.home_relay = home_relay;
        } else {
            return;
        }
        st.bump(id);
        st.peer_changed(id);
    }

    /// Replaces a node's WireGuard key (a rotation); its peers are told.
    pub fn set_wireguard_key(&self, id: &str, key: &str) {
        let mut st = self.lock();
        let Some(e) = st.nodes.get_mut(id) else {
            return;
        };
        let old = std::mem::replace(&mut e.row.wg_key, key.to_string());
        st.by_wg_key.remove(&old);
        st.by_wg_key.insert(key.to_string(), id.to_string());
        st.bump(id);
        st.peer_changed(id);
        st.mark(id, |p| p.self_node = true);
        drop(st);
        // The old key may no longer use the relay.
        self.members.send_modify(|g| *g += 1);
    }

    /// Records what a node runs (shown to administrators; peers do not
    /// see it).
    pub fn set_client(&self, id: &str, client: crate::store::ClientInfo) {
        if let Some(e) = self.lock().nodes.get_mut(id) {
            e.row.client = client;
        }
    }

    /// Replaces the relay map; every stream gets it.
    pub fn set_relays(&self, relays: RelayMap) {
        let mut st = self.lock();
        if st.relays == relays {
            return;
        }
        st.relays = relays;
        st.relays_version += 1;
        #[allow(clippy::disallowed_methods)] // every stream is marked: order does not matter
        for slot in st.streams.values_mut() {
            slot.pending.relays = true;
            slot.notify.notify_one();
        }
    }

    /// The relay map nodes are given.
    pub fn relays(&self) -> RelayMap {
        self.lock().relays.clone()
    }

    /// Replaces a node's serving certificate; its own stream gets it.
    pub fn set_serving_cert(&self, id: &str, pem: String) {
        let mut st = self.lock();
        if let Some(e) = st.nodes.get_mut(id) {
            e.row.serving_cert = pem;
        }
        st.bump(id);
        st.mark(id, |p| p.self_node = true);
    }

    /// Swaps the policy (already checked against the inventory); every stream
    /// rechecks its peers and filter.
    pub fn set_policy(&self, policy: Arc<Policy>) -> Result<(), EngineError> {
        let mut st = self.lock();
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut live: Vec<Node> = st
            .nodes
            .values()
            .filter(|e| e.live)
            .map(|e| engine_node(&e.row))
            .collect();
        live.sort_by(|a, b| a.name.cmp(&b.name));
        st.engine = Engine::new(Arc::clone(&policy), live)?;
        warn_undeclared(&st.engine);
        st.policy = policy;
        // Every stream is marked and woken: order does not matter.
        #[allow(clippy::disallowed_methods)]
        #[allow(clippy::disallowed_methods)]
        // every stream is marked: order does not matter
        for slot in st.streams.values_mut() {
            slot.pending.recheck_peers = true;
            slot.pending.filter = true;
            slot.pending.ssh = true;
            slot.notify.notify_one();
        }
        Ok(())
    }

    /// The node a machine certificate belongs to, if it is live.
    pub fn node_by_fingerprint(&self, fp: &str) -> Option<NodeRow> {
        let st = self.lock();
        let id = st.by_fingerprint.get(fp)?;
        st.nodes.get(id).filter(|e| e.live).map(|e| e.row.clone())
    }

    /// The node a machine credential registered, live or expired.
    pub fn node_registered_by(&self, credential: &str) -> Option<NodeRow> {
        let st = self.lock();
        let id = st.by_fingerprint.get(credential)?;
        st.nodes.get(id).map(|e| e.row.clone())
    }

    /// A node by id.
    pub fn node(&self, id: &str) -> Option<NodeRow> {
        self.lock().nodes.get(id).map(|e| e.row.clone())
    }

    /// Every node with whether it has a stream open, sorted by name.
    pub fn list(&self) -> Vec<(Peer, NodeRow, bool)> {
        let st = self.lock();
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut out: Vec<(Peer, NodeRow, bool)> = st
            .nodes
            .values()
            .map(|e| {
                (
                    st.peer_of(e),
                    e.row.clone(),
                    st.streams.contains_key(&e.row.id),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    /// Number of open streams.
    pub fn stream_count(&self) -> usize {
        self.lock().streams.len()
    }

    fn self_node(st: &State, e: &Entry) -> SelfNode {
        SelfNode {
            node: st.peer_of(e),
            serving_cert: e.row.serving_cert.clone(),
        }
    }

    /// Opens the map stream of a node: its full map, and a handle for deltas.
    /// A previous stream of the same node is closed.
    pub fn open_stream(&self, id: &str) -> Option<(FullMap, StreamHandle)> {
        let mut st = self.lock();
        let (full, e, sent_peers) = Self::full_map_of(&st, id)?;
        let (filter, ssh) = (full.filter.clone(), full.ssh.clone());
        st.next_generation += 1;
        let generation = st.next_generation;
        let notify = Arc::new(Notify::new());
        if let Some(old) = st.streams.insert(
            id.to_string(),
            Slot {
                generation,
                notify: Arc::clone(&notify),
                pending: Pending::default(),
            },
        ) {
            // The replaced stream learns it is closed from the generation.
            old.notify.notify_one();
        } else {
            st.online_changed(id);
        }
        Some((
            full,
            StreamHandle {
                node_id: id.to_string(),
                notify,
                generation,
                sent: Sent {
                    peers: sent_peers,
                    filter,
                    ssh,
                    self_version: e.version,
                    relays_version: st.relays_version,
                },
            },
        ))
    }

    /// A node's whole map now, without opening a stream (a one-off request).
    pub fn full_map(&self, id: &str) -> Option<FullMap> {
        let st = self.lock();
        Self::full_map_of(&st, id).map(|(full, _, _)| full)
    }

    /// The full map of a live node, the node, and the peer versions in it.
    fn full_map_of(st: &State, id: &str) -> Option<(FullMap, Entry, HashMap<String, u64>)> {
        let e = st.nodes.get(id).filter(|e| e.live)?.clone();
        let mut peer_ids = st.peer_ids(id);
        peer_ids.sort();
        let peers: Vec<Peer> = peer_ids
            .iter()
            .filter_map(|p| st.nodes.get(p).map(|pe| st.peer_of(pe)))
            .collect();
        let sent_peers = peer_ids
            .iter()
            .filter_map(|p| st.nodes.get(p).map(|pe| (p.clone(), pe.version)))
            .collect();
        let full = FullMap {
            self_node: Self::self_node(st, &e),
            peers,
            filter: st.filter_of(id),
            ssh: st.ssh_of(id),
            dns: st.dns(),
            relays: st.relays.clone(),
        };
        Some((full, e, sent_peers))
    }

    /// Ends a stream (the connection went away).
    pub fn close_stream(&self, h: &StreamHandle) {
        let mut st = self.lock();
        if st
            .streams
            .get(&h.node_id)
            .is_some_and(|s| s.generation == h.generation)
        {
            st.streams.remove(&h.node_id);
            st.online_changed(&h.node_id);
        }
    }

    /// What changed for this stream since it last sent (empty if nothing).
    pub fn delta(&self, h: &mut StreamHandle) -> Result<MapDelta, Closed> {
        let mut st = self.lock();
        let pending = match st.streams.get_mut(&h.node_id) {
            Some(slot) if slot.generation == h.generation => std::mem::take(&mut slot.pending),
            _ => return Err(Closed),
        };
        if pending.closed {
            st.streams.remove(&h.node_id);
            return Err(Closed);
        }
        let Some(me) = st.nodes.get(&h.node_id).filter(|e| e.live).cloned() else {
            st.streams.remove(&h.node_id);
            return Err(Closed);
        };
        let mut d = MapDelta::default();
        if pending.self_node || me.version != h.sent.self_version {
            d.self_node = Some(Self::self_node(&st, &me));
            h.sent.self_version = me.version;
        }
        if pending.relays && h.sent.relays_version != st.relays_version {
            h.sent.relays_version = st.relays_version;
            d.relays = Some(st.relays.clone());
        }
        if pending.filter {
            let f = st.filter_of(&h.node_id);
            if f != h.sent.filter {
                h.sent.filter = f.clone();
                d.filter = Some(f);
            }
        }
        if pending.ssh {
            let rules = st.ssh_of(&h.node_id);
            if rules != h.sent.ssh {
                h.sent.ssh = rules.clone();
                d.ssh = Some(rules);
            }
        }
        if pending.recheck_peers {
            let now: HashSet<String> = st.peer_ids(&h.node_id).into_iter().collect();
            #[allow(clippy::disallowed_methods)] // sorted below
            let mut removed: Vec<String> = h
                .sent
                .peers
                .keys()
                .filter(|p| !now.contains(*p))
                .cloned()
                .collect();
            removed.sort();
            for p in &removed {
                h.sent.peers.remove(p);
            }
            #[allow(clippy::disallowed_methods)] // sorted next
            let mut ids: Vec<&String> = now.iter().collect();
            ids.sort();
            for p in ids {
                if let Some(pe) = st.nodes.get(p)
                    && h.sent.peers.get(p) != Some(&pe.version)
                {
                    h.sent.peers.insert(p.clone(), pe.version);
                    d.peers_upsert.push(st.peer_of(pe));
                }
            }
            d.peers_removed = removed;
        } else {
            let mut changed: Vec<String> = pending.changed_peers.into_iter().collect();
            changed.sort();
            for p in changed {
                let Some(sent_version) = h.sent.peers.get(&p).copied() else {
                    continue;
                };
                match st.nodes.get(&p).filter(|e| e.live) {
                    Some(pe) if pe.version != sent_version => {
                        h.sent.peers.insert(p.clone(), pe.version);
                        d.peers_upsert.push(st.peer_of(pe));
                    }
                    Some(_) => {}
                    None => {
                        h.sent.peers.remove(&p);
                        d.peers_removed.push(p);
                    }
                }
            }
        }
        for p in pending.online_changed {
            if h.sent.peers.contains_key(&p) {
                d.online.insert(p.clone(), st.streams.contains_key(&p));
            }
        }
        Ok(d)
    }
}
