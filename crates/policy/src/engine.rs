//! The compiled form of a policy over an inventory: for every node, which
//! rules admit traffic to it and from which addresses; kept up to date
//! incrementally when one node changes.
//!
//! Each rule's source side is resolved once into an [`IpSet`] shared by every
//! node the rule reaches; each node keeps the list of `(rule, destination)`
//! hits that select it. A node change recomputes only the rules whose sources
//! it matches and that node's own hits, and reports which other nodes' filters
//! or peer sets changed.

use crate::inventory::{InventoryError, Node, check_nodes};
use crate::model::{Policy, RuleId, Target};
use crate::ports::{ProtoSet, normalise};
use crate::ssh::{RuleSources, SourcesBefore, SshGrant, SshIndex};
use gatehouse_filter::ipset::{IpSet, IpSetBuilder};
use gatehouse_filter::{FilterRule, NetPortRange, NodeFilter, RoutedPortRange, has_ports};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Index of a node slot inside an [`Engine`].
pub type NodeId = u32;

/// Why the engine refused its input.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The inventory breaks a structural rule.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// A node name that is not in the inventory.
    #[error("no node named {0:?}")]
    UnknownNode(String),
    /// A query or test names something that resolves to no address.
    #[error("{0}")]
    Unresolved(String),
}

/// One selected destination: the rule, which of its `dst` entries, and which
/// of the node's addresses (bit i = `addresses[i]`); or, with `mask` 0, a
/// destination the node forwards to as a subnet router or exit node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    rule: u32,
    dst: u32,
    mask: u8,
}

impl Hit {
    fn routed(&self) -> bool {
        self.mask == 0
    }
}

#[derive(Debug, Clone, Default)]
struct RuleState {
    /// Nodes the rule's sources select (by identity or address), sorted.
    src_nodes: Vec<NodeId>,
    /// Addresses the rule's sources select.
    src: Arc<IpSet>,
    /// Nodes with at least one hit from this rule, other than through
    /// `autogroup:self` (whose sources are per user, not the rule's).
    dst_nodes: BTreeSet<NodeId>,
    /// Whether some destination is `autogroup:self`.
    has_self: bool,
    /// Whether some source is a prefix or `*`: then the source set is more
    /// than its nodes' addresses and is recomputed whole on a change.
    by_prefix: bool,
}

/// How the rules relate to one (source address, destination address,
/// protocol, port): each list is in policy order without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PairRules {
    /// Rules that accept the packet.
    pub admitting: Vec<RuleId>,
    /// Rules that accept this source to this address on other ports or protocols.
    pub other_ports: Vec<RuleId>,
    /// Rules that open this port on this address, but not to this source.
    pub other_sources: Vec<RuleId>,
    /// Nodes through which `via` grants among these reach the address.
    pub via: Vec<String>,
}

impl PairRules {
    fn record(&mut self, id: RuleId, src_ok: bool, port_ok: bool) {
        let list = match (src_ok, port_ok) {
            (true, true) => &mut self.admitting,
            (true, false) => &mut self.other_ports,
            (false, true) => &mut self.other_sources,
            (false, false) => return,
        };
        if !list.contains(&id) {
            list.push(id);
        }
    }
}

/// Which nodes a change touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Nodes whose compiled inbound filter may differ.
    pub filters: BTreeSet<String>,
    /// Nodes whose peer set may differ.
    pub peers: BTreeSet<String>,
    /// Nodes whose SSH policy ([`Engine::ssh_rules`]) differs: exactly
    /// those, so only their devices need it again.
    pub ssh: BTreeSet<String>,
}

/// An engine's SSH state before a node change.
#[derive(Debug, Default)]
struct SshBefore {
    sources: Vec<SourcesBefore>,
    own: Vec<SshGrant>,
}

/// A policy compiled against a set of nodes.
#[derive(Debug, Clone)]
pub struct Engine {
    policy: Arc<Policy>,
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    by_name: HashMap<String, NodeId>,
    by_ip: BTreeMap<IpAddr, NodeId>,
    user_nodes: BTreeMap<String, BTreeSet<NodeId>>,
    tag_nodes: BTreeMap<String, BTreeSet<NodeId>>,
    untagged: BTreeSet<NodeId>,
    tagged: BTreeSet<NodeId>,
    rules: Vec<RuleState>,
    inbound: Vec<Vec<Hit>>,
    ssh: SshIndex,
}

fn full_mask(n: &Node) -> u8 {
    // Nodes have at most two addresses (checked), so two bits suffice.
    (1u8 << n.addresses.len().min(7)) - 1
}

impl Engine {
    /// Compiles `policy` against `nodes`.
    pub fn new(policy: Arc<Policy>, nodes: Vec<Node>) -> Result<Self, EngineError> {
        check_nodes(&nodes)?;
        let mut e = Engine {
            rules: vec![RuleState::default(); policy.rules.len()],
            policy,
            nodes: Vec::with_capacity(nodes.len()),
            free: Vec::new(),
            by_name: HashMap::with_capacity(nodes.len()),
            by_ip: BTreeMap::new(),
            user_nodes: BTreeMap::new(),
            tag_nodes: BTreeMap::new(),
            untagged: BTreeSet::new(),
            tagged: BTreeSet::new(),
            inbound: Vec::with_capacity(nodes.len()),
            ssh: SshIndex::default(),
        };
        for n in nodes {
            // `TryFromIntError` says only that the number did not fit.
            let id = NodeId::try_from(e.nodes.len())
                .map_err(|_too_many| EngineError::Unresolved("too many nodes".into()))?;
            e.nodes.push(None);
            e.inbound.push(Vec::new());
            e.index(id, n);
        }
        e.compile_all();
        e.ssh = SshIndex::build(&e);
        Ok(e)
    }

    /// The policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Every node, in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).and_then(|id| self.get(*id))
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize).and_then(Option::as_ref)
    }

    pub(crate) fn id_of(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn id_by_ip(&self, ip: IpAddr) -> Option<NodeId> {
        self.by_ip.get(&ip).copied()
    }

    pub(crate) fn user_node_ids(&self, user: &str) -> impl Iterator<Item = NodeId> + '_ {
        self.user_nodes.get(user).into_iter().flatten().copied()
    }

    pub(crate) fn tag_node_ids(&self, tag: &str) -> impl Iterator<Item = NodeId> + '_ {
        self.tag_nodes.get(tag).into_iter().flatten().copied()
    }

    pub(crate) fn tagged_node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.tagged.iter().copied()
    }

    pub(crate) fn untagged_node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.untagged.iter().copied()
    }

    pub(crate) fn live_node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.live_ids()
    }

    /// The sources of `ssh` rule `r`.
    pub(crate) fn ssh_sources(&self, r: usize) -> &RuleSources {
        self.ssh.rule(r)
    }

    /// Nodes carrying tags the policy does not declare in `tagOwners`, with
    /// those tags. Such a node was tagged under an earlier policy: it keeps
    /// its tag identity (it is a tagged node, in no user's devices) and
    /// matches whatever selects the tag, but no rule can name an undeclared
    /// tag, so it is reached only through `autogroup:tagged`, `*` or its
    /// addresses until the tag is declared again.
    pub fn undeclared_tags(&self) -> Vec<(String, Vec<String>)> {
        self.nodes()
            .filter_map(|n| {
                let tags: Vec<String> = n
                    .tags
                    .iter()
                    .filter(|t| !self.policy.tag_owners.contains_key(*t))
                    .cloned()
                    .collect();
                (!tags.is_empty()).then(|| (n.name.clone(), tags))
            })
            .collect()
    }

    /// Users with untagged devices whose login is in `domain`.
    fn domain_users<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.user_nodes.keys().filter(move |u| in_domain(u, domain))
    }

    fn index(&mut self, id: NodeId, n: Node) {
        self.by_name.insert(n.name.clone(), id);
        for a in &n.addresses {
            self.by_ip.insert(*a, id);
        }
        if n.is_tagged() {
            self.tagged.insert(id);
            for t in &n.tags {
                self.tag_nodes.entry(t.clone()).or_default().insert(id);
            }
        } else {
            self.untagged.insert(id);
            if let Some(u) = &n.user {
                self.user_nodes.entry(u.clone()).or_default().insert(id);
            }
        }
        self.nodes[id as usize] = Some(n);
    }

    fn unindex(&mut self, id: NodeId) -> Option<Node> {
        let n = self.nodes.get_mut(id as usize)?.take()?;
        self.by_name.remove(&n.name);
        for a in &n.addresses {
            self.by_ip.remove(a);
        }
        self.tagged.remove(&id);
        self.untagged.remove(&id);
        for t in &n.tags {
            if let Some(s) = self.tag_nodes.get_mut(t) {
                s.remove(&id);
                if s.is_empty() {
                    self.tag_nodes.remove(t);
                }
            }
        }
        if let Some(u) = &n.user {
            if let Some(s) = self.user_nodes.get_mut(u) {
                s.remove(&id);
                if s.is_empty() {
                    self.user_nodes.remove(u);
                }
            }
        }
        Some(n)
    }

    fn live_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| i as NodeId)
    }

    /// Nodes (ids) whose addresses fall in `net`, with the mask of those addresses.
    fn nodes_in(&self, net: &ipnet::IpNet) -> Vec<(NodeId, u8)> {
        let mut out: BTreeMap<NodeId, u8> = BTreeMap::new();
        for (ip, id) in self.by_ip.range(net.network()..=net.broadcast()) {
            if let Some(n) = self.get(*id)
                && let Some(i) = n.addresses.iter().position(|a| a == ip)
            {
                *out.entry(*id).or_default() |= 1 << i;
            }
        }
        out.into_iter().collect()
    }

    /// Users whose devices `autogroup:self` reaches for rule `r`: the users
    /// its sources name (all users for `autogroup:member`).
    fn self_users(&self, r: usize) -> Vec<String> {
        let src = &self.policy.rules[r].src;
        if src.contains(&Target::Member) || src.contains(&Target::All) {
            return self.user_nodes.keys().cloned().collect();
        }
        let mut users = BTreeSet::new();
        for t in src {
            match t {
                Target::User(u) => {
                    users.insert(u.clone());
                }
                Target::Domain(d) => users.extend(self.domain_users(d).cloned()),
                Target::Group(g) => {
                    users.extend(self.policy.groups.get(g).into_iter().flatten().cloned());
                }
                _ => {}
            }
        }
        users.into_iter().collect()
    }

    fn self_admits(&self, r: usize, user: &str) -> bool {
        self.policy.rules[r].src.iter().any(|t| match t {
            Target::Member | Target::All => true,
            Target::User(u) => u == user,
            Target::Domain(d) => in_domain(user, d),
            Target::Group(g) => self
                .policy
                .groups
                .get(g)
                .is_some_and(|m| m.iter().any(|x| x == user)),
            _ => false,
        })
    }

    fn resolve_src(&self, r: usize) -> (Vec<NodeId>, IpSet) {
        let mut ids: Vec<NodeId> = Vec::new();
        let mut by_addr: Vec<NodeId> = Vec::new();
        let mut ips = IpSetBuilder::default();
        for t in &self.policy.rules[r].src {
            match t {
                Target::All | Target::DangerAll => {
                    return (self.live_ids().collect(), IpSet::all());
                }
                Target::User(u) => ids.extend(self.user_node_ids(u)),
                Target::Domain(d) => {
                    let users: Vec<String> = self.domain_users(d).cloned().collect();
                    for u in &users {
                        ids.extend(self.user_node_ids(u));
                    }
                }
                Target::Group(g) => {
                    for u in self.policy.groups.get(g).into_iter().flatten() {
                        ids.extend(self.user_node_ids(u));
                    }
                }
                Target::Tag(tag) => ids.extend(self.tag_node_ids(tag)),
                Target::Host(_, net) | Target::Cidr(net) => {
                    // Only the addresses inside the prefix: the prefix covers them.
                    ips.add_net(*net);
                    by_addr.extend(self.nodes_in(net).into_iter().map(|(id, _)| id));
                }
                Target::Member => ids.extend(self.untagged.iter().copied()),
                Target::Tagged => ids.extend(self.tagged.iter().copied()),
                Target::SelfDevices | Target::Internet => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            if let Some(n) = self.get(*id) {
                for a in &n.addresses {
                    ips.add_ip(*a);
                }
            }
        }
        ids.extend(by_addr);
        ids.sort_unstable();
        ids.dedup();
        (ids, ips.build())
    }

    /// Which of `n`'s addresses a destination target selects in rule `r`.
    fn dst_mask(&self, r: usize, t: &Target, n: &Node) -> u8 {
        let all = full_mask(n);
        let identity = match t {
            Target::All => true,
            Target::User(_)
            | Target::Group(_)
            | Target::Domain(_)
            | Target::Tag(_)
            | Target::Member
            | Target::Tagged => identity_selects(&self.policy, t, n),
            Target::SelfDevices => n.identity_user().is_some_and(|u| self.self_admits(r, u)),
            Target::Internet | Target::DangerAll => false,
            Target::Host(_, net) | Target::Cidr(net) => {
                let mut m = 0;
                for (i, a) in n.addresses.iter().enumerate() {
                    if net.contains(a) {
                        m |= 1 << i;
                    }
                }
                return m;
            }
        };
        if identity { all } else { 0 }
    }

    /// Whether rule `r`'s sources select node `n` (identity or address).
    fn src_selects(&self, r: usize, n: &Node) -> bool {
        self.policy.rules[r].src.iter().any(|t| match t {
            Target::All | Target::DangerAll => true,
            Target::Host(_, net) | Target::Cidr(net) => n.addresses.iter().any(|a| net.contains(a)),
            t => identity_selects(&self.policy, t, n),
        })
    }

    fn compile_all(&mut self) {
        for hits in &mut self.inbound {
            hits.clear();
        }
        for r in 0..self.policy.rules.len() {
            let (src_nodes, src) = self.resolve_src(r);
            let mut dst_nodes = BTreeSet::new();
            let policy = Arc::clone(&self.policy);
            let rule = &policy.rules[r];
            let has_self = rule.dst.iter().any(|d| d.target == Target::SelfDevices);
            let by_prefix = rule.src.iter().any(|t| {
                matches!(
                    t,
                    Target::All | Target::DangerAll | Target::Host(..) | Target::Cidr(_)
                )
            });
            for (di, d) in rule.dst.iter().enumerate() {
                for id in self.live_ids().collect::<Vec<_>>() {
                    if self
                        .get(id)
                        .is_some_and(|n| self.routes_for(r, &d.target, n))
                    {
                        self.inbound[id as usize].push(Hit {
                            rule: r as u32,
                            dst: di as u32,
                            mask: 0,
                        });
                        dst_nodes.insert(id);
                    }
                }
                if !rule.via.is_empty() {
                    // A via grant admits traffic only through its routers.
                    continue;
                }
                let selected: Vec<(NodeId, u8)> = match &d.target {
                    Target::All => self
                        .live_ids()
                        .filter_map(|id| self.get(id).map(|n| (id, full_mask(n))))
                        .collect(),
                    Target::Host(_, net) | Target::Cidr(net) => self.nodes_in(net),
                    Target::Internet | Target::DangerAll => Vec::new(),
                    Target::SelfDevices => {
                        let users = self.self_users(r);
                        users
                            .iter()
                            .flat_map(|u| self.user_node_ids(u))
                            .filter_map(|id| self.get(id).map(|n| (id, full_mask(n))))
                            .collect()
                    }
                    t => self.identity_nodes(t),
                };
                let is_self = d.target == Target::SelfDevices;
                for (id, mask) in selected {
                    if mask != 0 {
                        self.inbound[id as usize].push(Hit {
                            rule: r as u32,
                            dst: di as u32,
                            mask,
                        });
                        if !is_self {
                            dst_nodes.insert(id);
                        }
                    }
                }
            }
            self.rules[r] = RuleState {
                src_nodes,
                src: Arc::new(src),
                dst_nodes,
                has_self,
                by_prefix,
            };
        }
    }

    /// Nodes an identity target (user, group, tag, member, tagged) selects.
    fn identity_nodes(&self, t: &Target) -> Vec<(NodeId, u8)> {
        let ids: Vec<NodeId> = match t {
            Target::User(u) => self.user_node_ids(u).collect(),
            Target::Domain(d) => {
                let mut v: Vec<NodeId> = self
                    .domain_users(d)
                    .flat_map(|u| self.user_node_ids(u))
                    .collect();
                v.sort_unstable();
                v
            }
            Target::Group(g) => {
                let mut v: Vec<NodeId> = self
                    .policy
                    .groups
                    .get(g)
                    .into_iter()
                    .flatten()
                    .flat_map(|u| self.user_node_ids(u))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            Target::Tag(tag) => self.tag_node_ids(tag).collect(),
            Target::Member => self.untagged.iter().copied().collect(),
            Target::Tagged => self.tagged.iter().copied().collect(),
            _ => Vec::new(),
        };
        ids.into_iter()
            .filter_map(|id| self.get(id).map(|n| (id, full_mask(n))))
            .collect()
    }

    /// Whether node `n` forwards traffic for destination `t` of rule `r`:
    /// its approved subnet routes overlap the destination's prefix, or it
    /// is an exit node and the destination is `autogroup:internet` (or,
    /// outside `via` grants, `*`). With `via`, only nodes carrying one of
    /// the listed tags qualify.
    fn routes_for(&self, r: usize, t: &Target, n: &Node) -> bool {
        if n.routes.is_empty() {
            return false;
        }
        let via = &self.policy.rules[r].via;
        if !via.is_empty() && !n.tags.iter().any(|tag| via.contains(tag)) {
            return false;
        }
        match t {
            Target::Host(_, net) | Target::Cidr(net) => n.subnet_routes().any(|r| overlaps(r, net)),
            Target::Internet => n.is_exit_node(),
            Target::All => via.is_empty(),
            _ => false,
        }
    }

    /// The addresses node `n` forwards to for destination `t`: the prefix
    /// as written (Tailscale's choice: a broader prefix is narrowed by the
    /// routes themselves), the internet, or for `*` everything it routes.
    fn routed_nets(t: &Target, n: &Node) -> IpSet {
        match t {
            Target::Host(_, net) | Target::Cidr(net) => IpSet::from_nets([*net]),
            Target::Internet => internet(),
            _ => {
                let subnets = IpSet::from_nets(n.subnet_routes().copied());
                if n.is_exit_node() {
                    subnets.union(&internet())
                } else {
                    subnets
                }
            }
        }
    }

    /// Nodes carrying one of `via` (any node when empty) that forward
    /// traffic to `ip` for destination `t`.
    fn routers_for(&self, r: usize, t: &Target, ip: IpAddr) -> Vec<NodeId> {
        self.live_ids()
            .filter(|id| {
                self.get(*id).is_some_and(|n| {
                    self.routes_for(r, t, n) && Self::routed_nets(t, n).contains(ip) && {
                        // A prefix destination is forwarded only inside the routes.
                        match t {
                            Target::Internet => true,
                            _ => n.routes.iter().any(|net| net.contains(&ip)),
                        }
                    }
                })
            })
            .collect()
    }

    /// Recomputes the hits of one node from scratch.
    fn node_hits(&self, n: &Node) -> Vec<Hit> {
        let mut hits = Vec::new();
        for (r, rule) in self.policy.rules.iter().enumerate() {
            for (di, d) in rule.dst.iter().enumerate() {
                if self.routes_for(r, &d.target, n) {
                    hits.push(Hit {
                        rule: r as u32,
                        dst: di as u32,
                        mask: 0,
                    });
                }
                if !rule.via.is_empty() {
                    continue;
                }
                let mask = self.dst_mask(r, &d.target, n);
                if mask != 0 {
                    hits.push(Hit {
                        rule: r as u32,
                        dst: di as u32,
                        mask,
                    });
                }
            }
        }
        hits
    }

    /// Adds a node, or replaces the node of the same name, recompiling only
    /// what it touches.
    pub fn upsert_node(&mut self, node: Node) -> Result<ChangeSet, EngineError> {
        let existing = self.by_name.get(&node.name).copied();
        // Check structure against the others (names, addresses).
        {
            let others: Vec<Node> = node
                .addresses
                .iter()
                .filter_map(|a| self.by_ip.get(a))
                .filter(|id| Some(**id) != existing)
                .filter_map(|id| self.get(*id).cloned())
                .collect();
            let mut probe = others;
            probe.push(node.clone());
            check_nodes(&probe)?;
        }
        let old_node = existing.and_then(|id| self.get(id)).cloned();
        let ssh_before = self.ssh_snapshot(existing, old_node.as_ref(), Some(&node));
        let (id, old) = match existing {
            Some(id) => (id, self.unindex(id)),
            None => match self.free.pop() {
                Some(id) => (id, None),
                None => {
                    // `TryFromIntError` says only that the number did not fit.
                    let id = NodeId::try_from(self.nodes.len())
                        .map_err(|_too_many| EngineError::Unresolved("too many nodes".into()))?;
                    self.nodes.push(None);
                    self.inbound.push(Vec::new());
                    (id, None)
                }
            },
        };
        let new = node.clone();
        self.index(id, node);
        let mut cs = self.recompile_node(id, old.as_ref(), Some(&new));
        cs.ssh = self.ssh_diff(ssh_before, Some(&new.name));
        Ok(cs)
    }

    /// Removes a node by name.
    pub fn remove_node(&mut self, name: &str) -> Result<ChangeSet, EngineError> {
        let id = self
            .id_of(name)
            .ok_or_else(|| EngineError::UnknownNode(name.into()))?;
        let old_node = self.get(id).cloned();
        let ssh_before = self.ssh_snapshot(Some(id), old_node.as_ref(), None);
        let old = self.unindex(id);
        let mut cs = self.recompile_node(id, old.as_ref(), None);
        self.free.push(id);
        cs.ssh = self.ssh_diff(ssh_before, None);
        Ok(cs)
    }

    /// What an SSH change set needs from before a change of node `id`
    /// (`old` → `new`): the rules' source lists and the node's own SSH
    /// policy.
    fn ssh_snapshot(
        &self,
        id: Option<NodeId>,
        old: Option<&Node>,
        new: Option<&Node>,
    ) -> SshBefore {
        if self.policy.ssh.is_empty() {
            return SshBefore::default();
        }
        SshBefore {
            sources: self.ssh_sources_before(old, new),
            own: id.map(|i| self.ssh_rules_of(i)).unwrap_or_default(),
        }
    }

    /// The nodes whose SSH policy differs from `before`; `changed` is the
    /// node that changed, if it is still there.
    fn ssh_diff(&self, before: SshBefore, changed: Option<&str>) -> BTreeSet<String> {
        if self.policy.ssh.is_empty() {
            return BTreeSet::new();
        }
        let me = changed.and_then(|n| self.id_of(n));
        let mut ids = self.ssh_changed_since(before.sources);
        if let Some(i) = me {
            ids.remove(&i);
            if self.ssh_rules_of(i) != before.own {
                ids.insert(i);
            }
        }
        ids.into_iter()
            .filter_map(|i| self.get(i).map(|n| n.name.clone()))
            .collect()
    }

    fn recompile_node(&mut self, id: NodeId, old: Option<&Node>, new: Option<&Node>) -> ChangeSet {
        let mut ssh = std::mem::take(&mut self.ssh);
        ssh.update(self, id, old, new);
        self.ssh = ssh;
        let mut filters: BTreeSet<NodeId> = BTreeSet::new();
        let mut peers: BTreeSet<NodeId> = BTreeSet::new();
        let users: Vec<&str> = [old, new]
            .into_iter()
            .flatten()
            .filter_map(Node::identity_user)
            .collect();
        // Rules whose sources select the node before or after.
        for r in 0..self.policy.rules.len() {
            let was = old.is_some_and(|n| self.src_selects(r, n));
            let is = new.is_some_and(|n| self.src_selects(r, n));
            if was || is {
                if self.rules[r].by_prefix {
                    let (src_nodes, src) = self.resolve_src(r);
                    self.rules[r].src_nodes = src_nodes;
                    self.rules[r].src = Arc::new(src);
                } else {
                    // Identity sources only: the set is exactly the selected
                    // nodes' addresses, so update it in place.
                    let state = &mut self.rules[r];
                    let set = Arc::make_mut(&mut state.src);
                    if let (true, Some(o)) = (was, old) {
                        o.addresses.iter().for_each(|a| set.remove(*a));
                        if let Ok(k) = state.src_nodes.binary_search(&id) {
                            state.src_nodes.remove(k);
                        }
                    }
                    if let (true, Some(n)) = (is, new) {
                        n.addresses.iter().for_each(|a| set.insert(*a));
                        if let Err(k) = state.src_nodes.binary_search(&id) {
                            state.src_nodes.insert(k, id);
                        }
                    }
                }
                filters.extend(self.rules[r].dst_nodes.iter().copied());
            }
            // autogroup:self sources of the node's user changed.
            if self.rules[r].has_self {
                for u in &users {
                    if self.self_admits(r, u) {
                        filters.extend(self.user_node_ids(u));
                    }
                }
            }
        }
        // The node's own hits, and rule → destination membership.
        let old_hits = std::mem::take(&mut self.inbound[id as usize]);
        for h in &old_hits {
            let (rule, is_self) = self.hit_rule(h);
            if is_self {
                if let Some(u) = old.and_then(Node::identity_user) {
                    peers.extend(self.user_node_ids(u));
                }
            } else {
                self.rules[rule].dst_nodes.remove(&id);
                peers.extend(self.rules[rule].src_nodes.iter().copied());
            }
        }
        if let Some(n) = new {
            let hits = self.node_hits(n);
            for h in &hits {
                let (rule, is_self) = self.hit_rule(h);
                if is_self {
                    if let Some(u) = n.identity_user() {
                        peers.extend(self.user_node_ids(u));
                    }
                } else {
                    self.rules[rule].dst_nodes.insert(id);
                    peers.extend(self.rules[rule].src_nodes.iter().copied());
                }
            }
            self.inbound[id as usize] = hits;
            filters.insert(id);
        }
        peers.extend(filters.iter().copied());
        if new.is_some() {
            peers.insert(id);
        }
        let names = |set: BTreeSet<NodeId>| -> BTreeSet<String> {
            set.into_iter()
                .filter_map(|i| self.get(i).map(|n| n.name.clone()))
                .collect()
        };
        let mut cs = ChangeSet {
            filters: names(filters),
            peers: names(peers),
            ssh: BTreeSet::new(),
        };
        if new.is_none()
            && let Some(o) = old
        {
            cs.peers.remove(&o.name);
        }
        cs
    }

    /// The rule index of a hit, and whether it is through `autogroup:self`.
    fn hit_rule(&self, h: &Hit) -> (usize, bool) {
        let r = h.rule as usize;
        (
            r,
            self.policy.rules[r].dst[h.dst as usize].target == Target::SelfDevices,
        )
    }

    /// `autogroup:self` sources for a device of `user`: the user's untagged devices.
    fn user_set(&self, user: &str) -> Arc<IpSet> {
        let mut b = IpSetBuilder::default();
        for id in self.user_node_ids(user) {
            if let Some(n) = self.get(id) {
                for a in &n.addresses {
                    b.add_ip(*a);
                }
            }
        }
        Arc::new(b.build())
    }

    /// Source set of a hit on node `n`.
    fn hit_src(&self, h: &Hit, n: &Node) -> Arc<IpSet> {
        let d = &self.policy.rules[h.rule as usize].dst[h.dst as usize];
        if d.target == Target::SelfDevices {
            self.user_set(n.identity_user().unwrap_or_default())
        } else {
            Arc::clone(&self.rules[h.rule as usize].src)
        }
    }

    /// The compiled inbound filter of a node.
    pub fn filter(&self, name: &str) -> Result<NodeFilter, EngineError> {
        let id = self
            .id_of(name)
            .ok_or_else(|| EngineError::UnknownNode(name.into()))?;
        Ok(self.filter_of(id))
    }

    pub(crate) fn filter_of(&self, id: NodeId) -> NodeFilter {
        let Some(n) = self.get(id) else {
            return NodeFilter {
                node: String::new(),
                addresses: Vec::new(),
                rules: Vec::new(),
            };
        };
        // Group hits by (rule, protocols, source set): one filter rule each.
        type Group = (u32, ProtoSet, bool, Vec<NetPortRange>, Vec<RoutedPortRange>);
        let mut groups: Vec<Group> = Vec::new();
        for h in &self.inbound[id as usize] {
            let d = &self.policy.rules[h.rule as usize].dst[h.dst as usize];
            let is_self = d.target == Target::SelfDevices;
            let key = (h.rule, d.protos, is_self);
            let idx = match groups.iter().position(|g| (g.0, g.1, g.2) == key) {
                Some(i) => i,
                None => {
                    groups.push((key.0, key.1, key.2, Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            if h.routed() {
                let nets = Arc::new(Self::routed_nets(&d.target, n));
                for p in normalise(&d.ports) {
                    let r = RoutedPortRange {
                        nets: Arc::clone(&nets),
                        ports: p,
                    };
                    if !groups[idx].4.contains(&r) {
                        groups[idx].4.push(r);
                    }
                }
                continue;
            }
            for (i, a) in n.addresses.iter().enumerate() {
                if h.mask & (1 << i) != 0 {
                    for p in normalise(&d.ports) {
                        groups[idx].3.push(NetPortRange { ip: *a, ports: p });
                    }
                }
            }
        }
        let rules = groups
            .into_iter()
            .map(|(rule, protos, is_self, mut dst_ports, routed)| {
                dst_ports.sort();
                dst_ports.dedup();
                let src_ips = if is_self {
                    self.user_set(n.identity_user().unwrap_or_default())
                } else {
                    Arc::clone(&self.rules[rule as usize].src)
                };
                FilterRule {
                    origin: self.policy.rules[rule as usize].id,
                    src_ips,
                    dst_ports,
                    routed,
                    protos,
                }
            })
            .filter(|r| !r.src_ips.is_empty())
            .collect();
        NodeFilter {
            node: n.name.clone(),
            addresses: n.addresses.clone(),
            rules,
        }
    }

    /// Every node's filter, in node order.
    pub fn all_filters(&self) -> Vec<NodeFilter> {
        self.live_ids().map(|id| self.filter_of(id)).collect()
    }

    /// How the rules relate to a packet from `src` to node `dst`'s address
    /// `dst_ip`: which admit it, which reach the address but on other ports
    /// or protocols, which reach it but not from `src`.
    pub(crate) fn explain_pair(
        &self,
        src: IpAddr,
        dst: NodeId,
        dst_ip: IpAddr,
        proto: u8,
        port: u16,
    ) -> PairRules {
        let mut out = PairRules::default();
        let Some(n) = self.get(dst) else {
            return out;
        };
        let Some(ai) = n.addresses.iter().position(|a| *a == dst_ip) else {
            return out;
        };
        for h in &self.inbound[dst as usize] {
            if h.mask & (1 << ai) == 0 {
                continue;
            }
            let rule = &self.policy.rules[h.rule as usize];
            let d = &rule.dst[h.dst as usize];
            let port_ok = d.protos.contains(proto)
                && (!has_ports(proto) || d.ports.iter().any(|p| p.contains(port)));
            let src_ok = self.hit_src(h, n).contains(src);
            out.record(rule.id, src_ok, port_ok);
        }
        out
    }

    /// [`Self::explain_pair`] for an address that is not a node's (a host
    /// alias, a subnet, the internet).
    pub(crate) fn explain_external(
        &self,
        src: IpAddr,
        dst_ip: IpAddr,
        proto: u8,
        port: u16,
    ) -> PairRules {
        let mut out = PairRules::default();
        for (r, rule) in self.policy.rules.iter().enumerate() {
            for d in &rule.dst {
                let mut covers = match &d.target {
                    Target::All => true,
                    Target::Host(_, net) | Target::Cidr(net) => net.contains(&dst_ip),
                    Target::Internet => is_internet(dst_ip),
                    _ => false,
                };
                // A via grant reaches the address only through a router
                // carrying one of its tags.
                let mut routers = Vec::new();
                if covers && !rule.via.is_empty() {
                    routers = self.routers_for(r, &d.target, dst_ip);
                    covers = !routers.is_empty();
                }
                if covers {
                    let port_ok = d.protos.contains(proto)
                        && (!has_ports(proto) || d.ports.iter().any(|p| p.contains(port)));
                    let src_ok = self.rules[r].src.contains(src);
                    out.record(rule.id, src_ok, port_ok);
                    if src_ok && port_ok {
                        for n in routers.iter().filter_map(|id| self.get(*id)) {
                            if !out.via.contains(&n.name) {
                                out.via.push(n.name.clone());
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Nodes this node may reach or be reached by (its netmap peers).
    pub fn peers(&self, name: &str) -> Result<BTreeSet<String>, EngineError> {
        let id = self
            .id_of(name)
            .ok_or_else(|| EngineError::UnknownNode(name.into()))?;
        let me = self
            .get(id)
            .ok_or_else(|| EngineError::UnknownNode(name.into()))?;
        let mut out: BTreeSet<NodeId> = BTreeSet::new();
        // Inbound: whoever a hit on this node admits.
        for h in &self.inbound[id as usize] {
            let d = &self.policy.rules[h.rule as usize].dst[h.dst as usize];
            if d.target == Target::SelfDevices {
                if let Some(u) = me.identity_user() {
                    out.extend(self.user_node_ids(u));
                }
            } else {
                out.extend(self.rules[h.rule as usize].src_nodes.iter().copied());
            }
        }
        // Outbound: destinations of rules whose sources select this node
        // (the self-device case is symmetric and covered above).
        for state in &self.rules {
            if state.src_nodes.binary_search(&id).is_ok() {
                out.extend(state.dst_nodes.iter().copied());
            }
        }
        out.remove(&id);
        Ok(out
            .into_iter()
            .filter_map(|i| self.get(i).map(|n| n.name.clone()))
            .collect())
    }
}

/// Whether an address is on the public internet, what `autogroup:internet`
/// reaches through an exit node (see [`internet`]).
pub fn is_internet(ip: IpAddr) -> bool {
    INTERNET.contains(ip)
}

static INTERNET: std::sync::LazyLock<IpSet> = std::sync::LazyLock::new(internet_set);

/// The public internet as Tailscale's exit nodes filter it: every IPv4
/// address but the private (RFC 1918), shared (100.64.0.0/10, the mesh) and
/// link-local ranges, and global unicast IPv6 (2000::/3) but the mesh's.
pub fn internet() -> IpSet {
    INTERNET.clone()
}

fn internet_set() -> IpSet {
    let net = |s: &str| s.parse::<IpNet>().ok();
    let all = IpSet::from_nets(["0.0.0.0/0", "2000::/3"].into_iter().filter_map(net));
    let private = IpSet::from_nets(
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ]
        .into_iter()
        .filter_map(net),
    );
    all.difference(&private)
}

/// Whether prefixes `a` and `b` share an address.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether a login is in a domain (`user:*@domain`).
fn in_domain(login: &str, domain: &str) -> bool {
    login
        .rsplit_once('@')
        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
}

/// Whether a target naming identities (a user, a group, a tag,
/// `autogroup:member`, `autogroup:tagged`) selects node `n`; any other
/// target selects nothing here.
pub(crate) fn identity_selects(policy: &Policy, t: &Target, n: &Node) -> bool {
    match t {
        Target::User(u) => n.identity_user() == Some(u),
        Target::Domain(d) => n.identity_user().is_some_and(|u| in_domain(u, d)),
        Target::Group(g) => n.identity_user().is_some_and(|u| {
            policy
                .groups
                .get(g)
                .is_some_and(|m| m.iter().any(|x| x == u))
        }),
        Target::Tag(tag) => n.tags.contains(tag),
        Target::Member => !n.is_tagged(),
        Target::Tagged => n.is_tagged(),
        _ => false,
    }
}
