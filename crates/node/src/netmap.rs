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
}

impl Netmap {
    /// Indexes a map.
    pub fn new(state: MapState) -> Self {
        let mut by_addr = HashMap::new();
        let mut by_name = HashMap::new();
        let me = &state.self_node.node;
        for p in std::iter::once(me).chain(state.peers.values()) {
            for a in &p.addresses {
                by_addr.insert(*a, p.id.clone());
            }
            by_name.insert(p.name.to_ascii_lowercase(), p.id.clone());
        }
        Netmap {
            state,
            by_addr,
            by_name,
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

    /// The node (peer or self) with this host name, FQDN or address.
    pub fn find(&self, what: &str) -> Option<&Peer> {
        if let Ok(ip) = what.parse::<IpAddr>() {
            return self.node(self.by_addr.get(&ip)?);
        }
        match self.lookup_id(what) {
            Ok(id) => self.node(id),
            Err(_) => None,
        }
    }

    fn lookup_id(&self, name: &str) -> Result<&String, Lookup> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let domain = self.domain();
        let host = if name == domain {
            return Err(Lookup::NoSuchHost);
        } else if let Some(h) = name.strip_suffix(&domain).and_then(|h| h.strip_suffix('.')) {
            if h.contains('.') {
                return Err(Lookup::NoSuchHost);
            }
            h
        } else if !name.contains('.') {
            // A bare host name, completed with the search domain.
            return self.by_name.get(&name).ok_or(Lookup::NotMesh);
        } else {
            return Err(Lookup::NotMesh);
        };
        self.by_name.get(host).ok_or(Lookup::NoSuchHost)
    }

    /// Addresses of a mesh name: `<host>.<domain>` or a bare `<host>`.
    pub fn lookup(&self, name: &str) -> Lookup {
        match self.lookup_id(name) {
            Ok(id) => match self.node(id) {
                Some(p) => Lookup::Found(p.addresses.clone()),
                None => Lookup::NoSuchHost,
            },
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
    use gatehouse_policy::NodeFilter;
    use gatehouse_proto::control::{DnsConfig, FullMap, SelfNode};

    pub(crate) fn peer(id: &str, name: &str, v4: &str, v6: &str) -> Peer {
        Peer {
            id: id.into(),
            name: name.into(),
            fqdn: format!("{name}.test.gatehouse.internal"),
            wireguard_key: String::new(),
            addresses: vec![v4.parse().unwrap(), v6.parse().unwrap()],
            endpoints: Vec::new(),
            relays: Vec::new(),
            user: None,
            tags: Vec::new(),
            key_expiry: 0,
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
            dns: DnsConfig {
                domain: "test.gatehouse.internal".into(),
                nameserver: "100.100.100.100".parse().unwrap(),
                search: vec!["test.gatehouse.internal".into()],
            },
        }))
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
