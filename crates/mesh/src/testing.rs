//! Test and benchmark support: a small mesh configured the way
//! control would configure it (peers with keys, addresses and endpoints,
//! filters compiled by the policy engine), without running control.

use crate::{Mesh, MeshConfig, MeshError, Mode};
use gatehouse_filter::NodeFilter;
use gatehouse_policy::{Engine, Node, parse_policy};
use gatehouse_proto::control::Peer;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One node of a test mesh.
#[derive(Clone)]
pub struct TestNode {
    /// Name (also its id).
    pub name: String,
    /// Owner (untagged nodes).
    pub user: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// WireGuard private key.
    pub private_key: [u8; 32],
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// A node with a random key and the addresses `100.64.0.<n>` and
    /// `fd7a:115c:a1e0::<n>`.
    pub fn new(name: &str, n: u8, user: Option<&str>, tags: &[&str]) -> Self {
        TestNode {
            name: name.into(),
            user: user.map(String::from),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            addresses: vec![
                IpAddr::from([100, 64, 0, n]),
                IpAddr::from([0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, u16::from(n)]),
            ],
            private_key: rand::random(),
        }
    }

    /// The first (IPv4) mesh address.
    pub fn ip(&self) -> IpAddr {
        self.addresses[0]
    }

    /// The node as its peers see it, reachable at `endpoint`.
    pub fn peer(&self, endpoint: Option<SocketAddr>) -> Peer {
        Peer {
            id: self.name.clone(),
            name: self.name.clone(),
            fqdn: format!("{}.test.gatehouse.internal", self.name),
            wireguard_key: crate::public_key(&self.private_key),
            addresses: self.addresses.clone(),
            endpoints: endpoint.into_iter().collect(),
            disco_key: None,
            home_relay: None,
            user: if self.tags.is_empty() {
                self.user.clone()
            } else {
                None
            },
            tags: self.tags.clone(),
            key_expiry: 0,
            service: None,
            online: None,
        }
    }

    fn inventory(&self) -> Node {
        Node {
            name: self.name.clone(),
            user: self.user.clone(),
            tags: self.tags.clone(),
            addresses: self.addresses.clone(),
            routes: Vec::new(),
        }
    }

    /// Starts a user-space mesh on loopback for this node.
    pub async fn start(&self) -> Result<Mesh, MeshError> {
        Mesh::start(MeshConfig {
            private_key: self.private_key,
            addresses: self.addresses.clone(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mode: Mode::Userspace,
        })
        .await
    }
}

/// Compiles every node's filter under a policy (HuJSON text).
///
/// # Panics
/// If the policy or the inventory is invalid (a test's own input).
pub fn filters(policy: &str, nodes: &[TestNode]) -> Vec<NodeFilter> {
    let policy = Arc::new(parse_policy(policy).unwrap_or_else(|e| panic!("policy: {e}")));
    let engine = Engine::new(policy, nodes.iter().map(TestNode::inventory).collect())
        .unwrap_or_else(|e| panic!("engine: {e}"));
    nodes
        .iter()
        .map(|n| {
            engine
                .filter(&n.name)
                .unwrap_or_else(|e| panic!("filter: {e}"))
        })
        .collect()
}

/// Starts every node and gives each the others as peers (every node peers
/// with every other, as control does when a filter mentions either side)
/// and its filter.
pub async fn start_all(policy: &str, nodes: &[TestNode]) -> Result<Vec<Mesh>, MeshError> {
    let mut meshes = Vec::new();
    for n in nodes {
        meshes.push(n.start().await?);
    }
    apply_all(policy, nodes, &meshes);
    Ok(meshes)
}

/// Gives every running mesh its peers and filter (again).
pub fn apply_all(policy: &str, nodes: &[TestNode], meshes: &[Mesh]) {
    let filters = filters(policy, nodes);
    for (i, m) in meshes.iter().enumerate() {
        let peers: Vec<Peer> = nodes
            .iter()
            .zip(meshes)
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (n, m))| n.peer(Some(m.status().listen)))
            .collect();
        m.apply(&peers, &filters[i]);
    }
}
