//! The node's view of the mesh: the map control sent (peers, filter, DNS
//! configuration) with indexes by address and by name, and the lookups the
//! applications make on it: who is calling (by mesh address), which
//! addresses a mesh name has, which name an address has.

use gatehouse_proto::control::{MapState, Peer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The identity of a caller, as the map names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The mesh address the connection came from.
    pub addr: IpAddr,
    /// Node id.
    pub node_id: String,
    /// Host name.
    pub name: String,
    /// DNS name.
    pub fqdn: String,
    /// Owning user (untagged nodes).
    pub user: Option<String>,
    /// Tags (tagged nodes).
    pub tags: Vec<String>,
}

/// What a name lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A mesh node's addresses.
    Found(Vec<IpAddr>),
    /// A name inside the mesh domain that no node has (or the domain itself).
    NoSuchHost,
    /// A name outside the mesh.
    NotMesh,
    /// No map yet.
    NotReady,
}

/// A map with its indexes.
#[derive(Debug, Clone)]
pub struct Netmap {
    /// The map as control sent it.
    pub state: MapState,
    /// Address → node id (self included).
    by_addr: HashMap<IpAddr, String>,
    /// Host name → node id (self included).
    by_name: HashMap<String, String>,
    /// Shared name → its replicas' node ids (self included), in this
    /// node's order of preference.
    by_service: HashMap<String, Vec<String>>,
}

impl Netmap {
    /// Indexes a map.
    pub fn new(state: MapState) -> Self {
        let mut by_addr = HashMap::new();
        let mut by_name = HashMap::new();
        let mut by_service: HashMap<String, Vec<String>> = HashMap::new();
        let me = &state.self_node.node;
        for p in std::iter::once(me).chain(state.peers.values()) {
            for a in &p.addresses {
                by_addr.insert(*a, p.id.clone());
            }
            by_name.insert(p.name.to_ascii_lowercase(), p.id.clone());
            if let Some(s) = &p.service {
                by_service
                    .entry(s.to_ascii_lowercase())
                    .or_default()
                    .push(p.id.clone());
            }
        }
        // Every node prefers the replicas in its own rotation of one order,
        // so that clients spread over them.
        let turn = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            me.id.hash(&mut h);
            h.finish()
        };
        for ids in by_service.values_mut() {
            ids.sort();
            let k = usize::try_from(turn % ids.len() as u64).unwrap_or(0);
            ids.rotate_left(k);
        }
        Netmap {
            state,
            by_addr,
            by_name,
            by_service,
        }
    }

    /// The mesh domain (`<network>.<suffix>`), lowercase.
    pub fn domain(&self) -> String {
        self.state
            .dns
            .domain
            .trim_end_matches('.')
            .to_ascii_lowercase()
    }

    fn node(&self, id: &str) -> Option<&Peer> {
        if self.state.self_node.node.id == id {
            return Some(&self.state.self_node.node);
        }
        self.state.peers.get(id)
    }

    /// The peer a connection from `addr` comes from (never the node itself).
    pub fn caller(&self, addr: IpAddr) -> Option<Caller> {
        let id = self.by_addr.get(&addr)?;
        let p = self.state.peers.get(id)?;
        Some(Caller {
            addr,
            node_id: p.id.clone(),
            name: p.name.clone(),
            fqdn: p.fqdn.clone(),
            user: p.user.clone(),
            tags: p.tags.clone(),
        })
    }

    /// The node (peer or self) with this host name, FQDN or address; for a
    /// shared name, the replica this node prefers.
    pub fn find(&self, what: &str) -> Option<&Peer> {
        if let Ok(ip) = what.parse::<IpAddr>() {
            return self.node(self.by_addr.get(&ip)?);
        }
        match self.lookup_ids(what) {
            Ok(ids) => ids.first().and_then(|id| self.node(id)),
            Err(_) => None,
        }
    }

    /// The nodes a name stands for: a shared name's replicas (in order of
    /// preference) or one node.
    fn lookup_ids(&self, name: &str) -> Result<&[String], Lookup> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let domain = self.domain();
        let (host, missing) = if name == domain {
            return Err(Lookup::NoSuchHost);
        } else if let Some(h) = name.strip_suffix(&domain).and_then(|h| h.strip_suffix('.')) {
            if h.contains('.') {
                return Err(Lookup::NoSuchHost);
            }
            (h, Lookup::NoSuchHost)
        } else if !name.contains('.') {
            // A bare host name, completed with the search domain.
            (name.as_str(), Lookup::NotMesh)
        } else {
            return Err(Lookup::NotMesh);
        };
        if let Some(ids) = self.by_service.get(host) {
            return Ok(ids);
        }
        self.by_name
            .get(host)
            .map(std::slice::from_ref)
            .ok_or(missing)
    }

    /// Addresses of a mesh name: `<host>.<domain>` or a bare `<host>`; a
    /// shared name has every replica's, the preferred replica's first.
    pub fn lookup(&self, name: &str) -> Lookup {
        match self.lookup_ids(name) {
            Ok(ids) => {
                let addrs: Vec<IpAddr> = ids
                    .iter()
                    .filter_map(|id| self.node(id))
                    .flat_map(|p| p.addresses.iter().copied())
                    .collect();
                if addrs.is_empty() {
                    Lookup::NoSuchHost
                } else {
                    Lookup::Found(addrs)
                }
            }
            Err(l) => l,
        }
    }

    /// The FQDN of the node with this address.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.node(self.by_addr.get(&addr)?).map(|p| p.fqdn.clone())
    }
}

/// A shared, updatable view of the map (`None` until the first map).
#[derive(Debug, Clone)]
pub struct MapView(watch::Receiver<Option<Arc<Netmap>>>);

impl MapView {
    /// A view and the sender that updates it.
    pub fn channel() -> (watch::Sender<Option<Arc<Netmap>>>, MapView) {
        let (tx, rx) = watch::channel(None);
        (tx, MapView(rx))
    }

    /// The current map.
    pub fn current(&self) -> Option<Arc<Netmap>> {
        self.0.borrow().clone()
    }

    /// Waits for the next change; `false` once the sender is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Name lookups, as the DNS resolver and the proxies need them.
pub trait Names: Send + Sync + std::fmt::Debug {
    /// Addresses of a name.
    fn lookup(&self, name: &str) -> Lookup;
    /// The FQDN of a mesh address, if a node has it.
    fn reverse(&self, addr: IpAddr) -> Option<String>;
    /// The mesh domain, once known.
    fn domain(&self) -> Option<String>;
}

impl Names for MapView {
    fn lookup(&self, name: &str) -> Lookup {
        match self.current() {
            Some(m) => m.lookup(name),
            None => Lookup::NotReady,
        }
    }

    fn reverse(&self, addr: IpAddr) -> Option<String> {
        self.current()?.name_of(addr)
    }

    fn domain(&self) -> Option<String> {
        self.current().map(|m| m.domain())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gatehouse_filter::NodeFilter;
    use gatehouse_proto::control::{DnsConfig, FullMap, SelfNode};

    pub(crate) fn peer(id: &str, name: &str, v4: &str, v6: &str) -> Peer {
        Peer {
            id: id.into(),
            name: name.into(),
            fqdn: format!("{name}.test.gatehouse.internal"),
            wireguard_key: String::new(),
            addresses: vec![v4.parse().unwrap(), v6.parse().unwrap()],
            endpoints: Vec::new(),
            disco_key: None,
            home_relay: None,
            user: None,
            tags: Vec::new(),
            key_expiry: 0,
            service: None,
            online: None,
        }
    }

    pub(crate) fn sample() -> Netmap {
        let mut laptop = peer("n1", "laptop", "100.64.0.1", "fd01::1");
        laptop.user = Some("alice@example.com".into());
        let mut blog = peer("n2", "blog", "100.64.0.2", "fd01::2");
        blog.tags = vec!["tag:k8s".into()];
        Netmap::new(MapState::from_full(FullMap {
            self_node: SelfNode {
                node: blog,
                serving_cert: String::new(),
            },
            peers: vec![laptop],
            filter: NodeFilter {
                node: "blog".into(),
                addresses: Vec::new(),
                rules: Vec::new(),
            },
            ssh: Vec::new(),
            dns: DnsConfig {
                domain: "test.gatehouse.internal".into(),
                nameserver: "100.100.100.100".parse().unwrap(),
                search: vec!["test.gatehouse.internal".into()],
            },
            relays: Default::default(),
        }))
    }

    #[test]
    fn a_shared_name_resolves_to_every_replica() {
        let mut state = sample().state;
        for (id, name, v4, v6) in [
            ("n3", "web", "100.64.0.3", "fd01::3"),
            ("n4", "web-1", "100.64.0.4", "fd01::4"),
        ] {
            let mut p = peer(id, name, v4, v6);
            p.service = Some("web".into());
            state.peers.insert(id.into(), p);
        }
        let m = Netmap::new(state);
        let Lookup::Found(addrs) = m.lookup("web.test.gatehouse.internal") else {
            panic!("web not found");
        };
        let mut sorted = addrs.clone();
        sorted.sort();
        let want: Vec<IpAddr> = ["100.64.0.3", "100.64.0.4", "fd01::3", "fd01::4"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(sorted, want);
        // One replica's addresses, then the other's.
        let first = m.find("web").unwrap();
        assert_eq!(addrs[..2], first.addresses[..]);
        assert_eq!(m.lookup("web"), Lookup::Found(addrs));
        // Each replica keeps its own name.
        assert_eq!(
            m.lookup("web-1.test.gatehouse.internal"),
            Lookup::Found(vec![
                "100.64.0.4".parse().unwrap(),
                "fd01::4".parse().unwrap()
            ])
        );
    }

    #[test]
    fn lookups() {
        let m = sample();
        let blog = Lookup::Found(vec![
            "100.64.0.2".parse().unwrap(),
            "fd01::2".parse().unwrap(),
        ]);
        assert_eq!(m.lookup("blog.test.gatehouse.internal"), blog);
        assert_eq!(m.lookup("BLOG.Test.gatehouse.internal."), blog);
        assert_eq!(m.lookup("blog"), blog);
        assert_eq!(m.lookup("nope.test.gatehouse.internal"), Lookup::NoSuchHost);
        assert_eq!(
            m.lookup("a.blog.test.gatehouse.internal"),
            Lookup::NoSuchHost
        );
        assert_eq!(m.lookup("test.gatehouse.internal"), Lookup::NoSuchHost);
        assert_eq!(m.lookup("nope"), Lookup::NotMesh);
        assert_eq!(m.lookup("example.com"), Lookup::NotMesh);
        assert_eq!(m.lookup("xtest.gatehouse.internal"), Lookup::NotMesh);
        let c = m.caller("fd01::1".parse().unwrap()).unwrap();
        assert_eq!(c.user.as_deref(), Some("alice@example.com"));
        assert!(m.caller("100.64.0.2".parse().unwrap()).is_none(), "self");
        assert_eq!(
            m.name_of("100.64.0.2".parse().unwrap()).as_deref(),
            Some("blog.test.gatehouse.internal")
        );
        assert_eq!(m.find("laptop").map(|p| p.id.as_str()), Some("n1"));
        assert_eq!(m.find("100.64.0.1").map(|p| p.id.as_str()), Some("n1"));
    }
}
