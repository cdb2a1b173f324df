//! The inventory: the nodes a policy is evaluated against. Offline it is a
//! YAML or JSON file; the control server builds the same [`Node`] values
//! from its database.
//!
//! ```yaml
//! nodes:
//!   - name: alice-laptop
//!     user: alice@example.com
//!     addresses: [100.64.0.1, "fd7a:115c:a1e0::1"]
//!   - name: grafana
//!     tags: [tag:k8s]
//!     addresses: [100.64.0.10]
//!   - name: office-router
//!     tags: [tag:router]
//!     addresses: [100.64.0.20]
//!     routes: [192.168.1.0/24]       # approved subnet routes; 0.0.0.0/0 and ::/0 make an exit node
//! ```

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// One mesh node as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique node name (the host part of its DNS name).
    pub name: String,
    /// The user who owns the node. For a tagged node this is who registered
    /// it; its identity is then its tags, not the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tags; a node with tags is a tagged node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Mesh addresses: at most one IPv4 and one IPv6.
    pub addresses: Vec<IpAddr>,
    /// Approved routes the node forwards to: subnet routes, and `0.0.0.0/0`
    /// or `::/0` for an exit node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
}

impl Node {
    /// Whether the node is tagged (identity by tags, not by user).
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }

    /// The user whose devices this node counts among (untagged nodes only).
    pub fn identity_user(&self) -> Option<&str> {
        if self.is_tagged() {
            None
        } else {
            self.user.as_deref()
        }
    }

    /// Whether the node is an exit node (routes `0.0.0.0/0` or `::/0`).
    pub fn is_exit_node(&self) -> bool {
        self.routes.iter().any(|r| r.prefix_len() == 0)
    }

    /// The subnet routes the node forwards to (exit routes excluded).
    pub fn subnet_routes(&self) -> impl Iterator<Item = &IpNet> {
        self.routes.iter().filter(|r| r.prefix_len() != 0)
    }

    /// Human label: `name (user)` or `name (tag:a,tag:b)`.
    pub fn label(&self) -> String {
        if self.is_tagged() {
            format!("{} ({})", self.name, self.tags.join(","))
        } else {
            format!("{} ({})", self.name, self.user.as_deref().unwrap_or("?"))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    nodes: Vec<Node>,
}

/// Why an inventory was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file is not valid YAML/JSON of the expected shape.
    #[error("invalid inventory")]
    Syntax(#[source] serde_yaml_ng::Error),
    /// A node breaks a rule of the inventory.
    #[error("inventory node {node:?}: {message}")]
    Node {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses an inventory from YAML or JSON text and checks it.
pub fn parse_inventory(text: &str) -> Result<Vec<Node>, InventoryError> {
    let file: InventoryFile = serde_yaml_ng::from_str(text).map_err(InventoryError::Syntax)?;
    check_nodes(&file.nodes)?;
    Ok(file.nodes)
}

/// Checks the structural rules of a set of nodes: unique names and
/// addresses, one address per family, an owner for every untagged node.
pub fn check_nodes(nodes: &[Node]) -> Result<(), InventoryError> {
    let mut names = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for n in nodes {
        let fail = |message: String| InventoryError::Node {
            node: n.name.clone(),
            message,
        };
        if n.name.is_empty() {
            return Err(fail("empty name".into()));
        }
        if !names.insert(n.name.as_str()) {
            return Err(fail("name used by more than one node".into()));
        }
        if n.addresses.is_empty() {
            return Err(fail("no addresses".into()));
        }
        if n.addresses.iter().filter(|a| a.is_ipv4()).count() > 1
            || n.addresses.iter().filter(|a| a.is_ipv6()).count() > 1
        {
            return Err(fail("at most one IPv4 and one IPv6 address".into()));
        }
        for a in &n.addresses {
            if !addrs.insert(*a) {
                return Err(fail(format!("address {a} used by more than one node")));
            }
        }
        if n.tags.is_empty() && n.user.is_none() {
            return Err(fail("an untagged node needs a user".into()));
        }
        if let Some(u) = &n.user
            && !u.contains('@')
        {
            return Err(fail(format!("user {u:?} is not a login (name@domain)")));
        }
        for t in &n.tags {
            if !t.starts_with("tag:") {
                return Err(fail(format!("{t:?} is not a tag (tag:name)")));
            }
        }
        for r in &n.routes {
            if r.trunc() != *r {
                return Err(fail(format!(
                    "route {r} has host bits set; did you mean {}?",
                    r.trunc()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json() {
        let y = parse_inventory(
            "nodes:\n  - name: a\n    user: a@x.com\n    addresses: [100.64.0.1, 'fd7a::1']\n  - name: b\n    tags: [tag:web]\n    addresses: [100.64.0.2]\n",
        )
        .unwrap();
        assert_eq!(y.len(), 2);
        assert!(y[1].is_tagged());
        assert_eq!(y[0].identity_user(), Some("a@x.com"));
        let j = parse_inventory(
            r#"{"nodes":[{"name":"a","user":"a@x.com","addresses":["100.64.0.1","fd7a::1"]},{"name":"b","tags":["tag:web"],"addresses":["100.64.0.2"]}]}"#,
        )
        .unwrap();
        assert_eq!(y, j);
    }

    #[test]
    fn refuses_bad_nodes() {
        let bad = [
            (
                "nodes: [{name: a, addresses: [100.64.0.1]}]",
                "needs a user",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: [100.64.0.1]}, {name: a, user: a@x, addresses: [100.64.0.2]}]",
                "more than one node",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: [100.64.0.1]}, {name: b, user: a@x, addresses: [100.64.0.1]}]",
                "address 100.64.0.1",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: []}]",
                "no addresses",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: [100.64.0.1, 100.64.0.2]}]",
                "one IPv4",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: [nope]}]",
                "invalid",
            ),
            (
                "nodes: [{name: a, tags: [web], addresses: [100.64.0.1]}]",
                "not a tag",
            ),
            (
                "nodes: [{name: a, user: a@x, addresses: [100.64.0.1], x: 1}]",
                "unknown field",
            ),
            (
                "nodes: [{name: a, tags: [tag:r], addresses: [100.64.0.1], routes: [10.0.0.1/8]}]",
                "did you mean 10.0.0.0/8",
            ),
        ];
        for (text, want) in bad {
            let e = gatehouse_ops::chain(&parse_inventory(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
