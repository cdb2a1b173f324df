//! Questions asked of a compiled policy: the policy's own `tests`, and
//! one-off queries ("may this source reach that destination on this port?").
//!
//! Both use the same semantics: a source stands for every address of every
//! device it names, and the answer is `accept` only if each of those
//! addresses may reach the destination (on some address of the same family
//! of each destination device). Identities with no device in the inventory
//! are evaluated through a representative device: one untagged device of the
//! user, or one device carrying the tag, at an unused mesh address.

use crate::engine::{Engine, EngineError, NodeId, PairRules};
use crate::inventory::Node;
use crate::model::{Policy, PolicyTest, RuleId, Target};
use crate::ports::proto;
use crate::ssh_eval::{SshTestFailure, run_ssh_tests};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Prefix of the names of representative devices.
const REP_PREFIX: &str = "~device-of:";

/// Something addressable: a node, or an address no node has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) node: Option<NodeId>,
    pub(crate) label: String,
    pub(crate) addrs: Vec<IpAddr>,
}

/// The protocols a query asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 towards IPv6 addresses).
    Icmp,
}

impl QueryProto {
    fn number(self, family_v6: bool) -> u8 {
        match self {
            QueryProto::Tcp => proto::TCP,
            QueryProto::Udp => proto::UDP,
            QueryProto::Icmp if family_v6 => proto::ICMPV6,
            QueryProto::Icmp => proto::ICMP,
        }
    }
}

/// The verdict for one (source address, destination address) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairVerdict {
    /// Source device or address.
    pub src: String,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination device or address.
    pub dst: String,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Rules that accept it (empty: denied).
    pub rules: Vec<RuleId>,
    /// Rules that open this port on this address, but to other sources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_sources: Vec<RuleId>,
    /// Rules that let this source reach this address on other ports or protocols.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_ports: Vec<RuleId>,
    /// Routers (subnet routers, exit nodes) through which `via` grants
    /// among `rules` reach the address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryOutcome {
    /// Accept only if every source address may reach the destination.
    pub accept: bool,
    /// Per address pair.
    pub pairs: Vec<PairVerdict>,
}

/// Whether a test entry expected access or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Listed under `accept`.
    Accept,
    /// Listed under `deny`.
    Deny,
}

/// A failed test assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestFailure {
    /// Index in `tests`.
    pub test: usize,
    /// Line of the assertion.
    pub line: u32,
    /// The source as written.
    pub src: String,
    /// Expected outcome.
    pub expect: Expect,
    /// The destination as written.
    pub dst: String,
    /// Why it failed, one line per offending address pair.
    pub reasons: Vec<String>,
}

/// Result of running a policy's tests (`tests` and `sshTests`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// Number of assertions checked, of both kinds.
    pub assertions: usize,
    /// Failed `tests` assertions.
    pub failures: Vec<TestFailure>,
    /// Failed `sshTests` assertions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_failures: Vec<SshTestFailure>,
    /// What holds but deserves attention: nodes carrying tags the policy
    /// does not declare in `tagOwners`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl TestReport {
    /// Whether every assertion held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.ssh_failures.is_empty()
    }

    /// Number of failed assertions, of both kinds.
    pub fn failed(&self) -> usize {
        self.failures.len() + self.ssh_failures.len()
    }
}

/// Runs a policy's `tests` and `sshTests` against an inventory (possibly
/// empty).
pub fn run_tests(policy: &Arc<Policy>, nodes: &[Node]) -> Result<TestReport, EngineError> {
    let mut identities: Vec<&Target> = Vec::new();
    for t in &policy.tests {
        identities.push(&t.src);
        identities.extend(t.accept.iter().chain(&t.deny).map(|d| &d.target));
    }
    let engine = Engine::with_representatives(Arc::clone(policy), nodes, &identities)?;
    let mut report = TestReport::default();
    for (node, tags) in engine.undeclared_tags() {
        report.warnings.push(format!(
            "node {node:?} carries {}, not declared in tagOwners: it stays a tagged node, but no rule can name the tag until it is declared again",
            tags.join(", ")
        ));
    }
    for t in &policy.tests {
        engine.run_test(t, &mut report)?;
    }
    run_ssh_tests(policy, nodes, &mut report)?;
    Ok(report)
}

fn family_match(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

impl Engine {
    /// Compiles `policy` over `nodes`, adding a representative device for
    /// each user or tag among `identities` (groups: each member) that has no
    /// device.
    pub fn with_representatives(
        policy: Arc<Policy>,
        nodes: &[Node],
        identities: &[&Target],
    ) -> Result<Engine, EngineError> {
        let mut users: BTreeSet<String> = BTreeSet::new();
        let mut tags: BTreeSet<String> = BTreeSet::new();
        for t in identities {
            match t {
                Target::User(u) => {
                    users.insert(u.clone());
                }
                Target::Group(g) => {
                    users.extend(policy.groups.get(g).into_iter().flatten().cloned())
                }
                Target::Tag(tag) => {
                    tags.insert(tag.clone());
                }
                _ => {}
            }
        }
        users.retain(|u| !nodes.iter().any(|n| n.identity_user() == Some(u)));
        tags.retain(|t| !nodes.iter().any(|n| n.tags.contains(t)));
        let mut all = nodes.to_vec();
        let used: BTreeSet<IpAddr> = nodes.iter().flat_map(|n| n.addresses.clone()).collect();
        let mut v4 = u32::from(Ipv4Addr::new(100, 127, 255, 254));
        let mut v6 = u128::from(
            "fd7a:115c:a1e0:ffff:ffff:ffff:ffff:fffe"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::LOCALHOST),
        );
        let mut next = |used: &BTreeSet<IpAddr>| {
            while used.contains(&IpAddr::V4(Ipv4Addr::from(v4))) {
                v4 -= 1;
            }
            while used.contains(&IpAddr::V6(Ipv6Addr::from(v6))) {
                v6 -= 1;
            }
            let pair = vec![
                IpAddr::V4(Ipv4Addr::from(v4)),
                IpAddr::V6(Ipv6Addr::from(v6)),
            ];
            v4 -= 1;
            v6 -= 1;
            pair
        };
        for u in users {
            all.push(Node {
                name: format!("{REP_PREFIX}{u}"),
                user: Some(u),
                tags: Vec::new(),
                addresses: next(&used),
                routes: Vec::new(),
            });
        }
        for t in tags {
            all.push(Node {
                name: format!("{REP_PREFIX}{t}"),
                user: None,
                tags: vec![t],
                addresses: next(&used),
                routes: Vec::new(),
            });
        }
        Engine::new(policy, all)
    }

    pub(crate) fn node_endpoint(&self, id: NodeId) -> Option<Endpoint> {
        let n = self.get(id)?;
        let label = match n.name.strip_prefix(REP_PREFIX) {
            Some(who) => format!("a device of {who}"),
            None => n.label(),
        };
        Some(Endpoint {
            node: Some(id),
            label,
            addrs: n.addresses.clone(),
        })
    }

    fn ip_endpoint(&self, ip: IpAddr, label: String) -> Endpoint {
        match self.id_by_ip(ip).and_then(|id| self.node_endpoint(id)) {
            Some(mut e) => {
                // A single address of a node stands for that address only.
                e.addrs = vec![ip];
                e
            }
            None => Endpoint {
                node: None,
                label,
                addrs: vec![ip],
            },
        }
    }

    /// Everything a target stands for, as endpoints.
    pub(crate) fn endpoints(&self, t: &Target) -> Vec<Endpoint> {
        let ids: Vec<NodeId> = match t {
            Target::User(u) => self.user_node_ids(u).collect(),
            Target::Group(g) => self
                .policy()
                .groups
                .get(g)
                .into_iter()
                .flatten()
                .flat_map(|u| self.user_node_ids(u).collect::<Vec<_>>())
                .collect(),
            Target::Tag(tag) => self.tag_node_ids(tag).collect(),
            Target::Host(name, net) if net.prefix_len() == net.max_prefix_len() => {
                let label = format!("{name} ({})", net.addr());
                return vec![self.ip_endpoint(net.addr(), label)];
            }
            Target::Cidr(net) if net.prefix_len() == net.max_prefix_len() => {
                return vec![self.ip_endpoint(net.addr(), net.addr().to_string())];
            }
            _ => Vec::new(),
        };
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.node_endpoint(id))
            .collect()
    }

    fn pair_rules(&self, a: IpAddr, dst: &Endpoint, b: IpAddr, proto: u8, port: u16) -> PairRules {
        match dst.node {
            Some(id) => self.explain_pair(a, id, b, proto, port),
            None => self.explain_external(a, b, proto, port),
        }
    }

    /// Why a pair is denied, naming the rules that nearly admit it.
    pub fn why_not(&self, rules: &PairVerdict) -> String {
        let show = |ids: &[RuleId]| -> String {
            ids.iter()
                .map(|id| self.rule_label(*id))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut s = String::new();
        if rules.other_sources.is_empty() && rules.other_ports.is_empty() {
            s.push_str("no acl or grant has a destination covering it");
        } else {
            if !rules.other_sources.is_empty() {
                let _ = write!(
                    s,
                    "opened only to other sources by {}",
                    show(&rules.other_sources)
                );
            }
            if !rules.other_ports.is_empty() {
                if !s.is_empty() {
                    s.push_str("; ");
                }
                let _ = write!(
                    s,
                    "this source is allowed other ports or protocols by {}",
                    show(&rules.other_ports)
                );
            }
        }
        s
    }

    /// `acls[3] (line 40): group:eng -> tag:prod:443`
    pub fn rule_label(&self, id: RuleId) -> String {
        self.policy()
            .rules
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.summary())
            .unwrap_or_else(|| id.to_string())
    }

    /// Evaluates every (source address, destination address) pair.
    fn evaluate(
        &self,
        srcs: &[Endpoint],
        dsts: &[Endpoint],
        protos: &[QueryProto],
        port: u16,
    ) -> Vec<PairVerdict> {
        let mut out = Vec::new();
        for d in dsts {
            for s in srcs {
                for a in &s.addrs {
                    let bs: Vec<&IpAddr> = d.addrs.iter().filter(|b| family_match(a, b)).collect();
                    // One verdict per source address: accepted if some address
                    // of the destination (same family) admits it.
                    let mut best: Option<PairVerdict> = None;
                    for b in bs {
                        let mut rules = PairRules::default();
                        for p in protos {
                            let r = self.pair_rules(*a, d, *b, p.number(b.is_ipv6()), port);
                            for id in r.admitting {
                                if !rules.admitting.contains(&id) {
                                    rules.admitting.push(id);
                                }
                            }
                            rules.other_ports.extend(r.other_ports);
                            rules.other_sources.extend(r.other_sources);
                            for v in r.via {
                                if !rules.via.contains(&v) {
                                    rules.via.push(v);
                                }
                            }
                        }
                        rules.other_ports.dedup();
                        rules.other_sources.dedup();
                        let accepted = !rules.admitting.is_empty();
                        if accepted {
                            rules.other_ports.clear();
                            rules.other_sources.clear();
                        }
                        let v = PairVerdict {
                            src: s.label.clone(),
                            src_ip: *a,
                            dst: d.label.clone(),
                            dst_ip: *b,
                            rules: rules.admitting,
                            other_sources: rules.other_sources,
                            other_ports: rules.other_ports,
                            via: rules.via,
                        };
                        let better = best
                            .as_ref()
                            .is_none_or(|cur| cur.rules.is_empty() && accepted);
                        if better {
                            best = Some(v);
                        }
                    }
                    out.extend(best);
                }
            }
        }
        out
    }

    fn run_test(&self, t: &PolicyTest, report: &mut TestReport) -> Result<(), EngineError> {
        let srcs = self.endpoints(&t.src);
        let src_text = t.src.to_string();
        if srcs.is_empty() {
            return Err(EngineError::Unresolved(format!(
                "tests[{}]: src {src_text:?} resolved to no addresses",
                t.index
            )));
        }
        let protos: Vec<QueryProto> = t
            .protos
            .iter()
            .filter_map(|p| match p {
                proto::TCP => Some(QueryProto::Tcp),
                proto::UDP => Some(QueryProto::Udp),
                _ => None,
            })
            .collect();
        let proto_text = t.protos.names().join(" or ");
        for (expect, list) in [(Expect::Accept, &t.accept), (Expect::Deny, &t.deny)] {
            for d in list {
                report.assertions += 1;
                let dsts = self.endpoints(&d.target);
                let mut reasons = Vec::new();
                if dsts.is_empty() {
                    reasons.push(format!(
                        "{:?} resolved to no addresses",
                        d.target.to_string()
                    ));
                }
                let pairs = self.evaluate(&srcs, &dsts, &protos, d.port);
                if pairs.is_empty() && !dsts.is_empty() {
                    reasons.push("source and destination share no address family".into());
                }
                for p in &pairs {
                    match (expect, p.rules.is_empty()) {
                        (Expect::Accept, true) => reasons.push(format!(
                            "{} ({}) cannot reach {} ({}) port {} over {proto_text}: {}",
                            p.src,
                            p.src_ip,
                            p.dst,
                            p.dst_ip,
                            d.port,
                            self.why_not(p)
                        )),
                        (Expect::Deny, false) => reasons.push(format!(
                            "{} ({}) can reach {} ({}) port {} over {proto_text}, allowed by {}",
                            p.src,
                            p.src_ip,
                            p.dst,
                            p.dst_ip,
                            d.port,
                            p.rules
                                .iter()
                                .map(|id| self.rule_label(*id))
                                .collect::<Vec<_>>()
                                .join("; ")
                        )),
                        _ => {}
                    }
                }
                if !reasons.is_empty() {
                    report.failures.push(TestFailure {
                        test: t.index,
                        line: d.pos.line,
                        src: src_text.clone(),
                        expect,
                        dst: d.text.clone(),
                        reasons,
                    });
                }
            }
        }
        Ok(())
    }

    /// Resolves a query source: a node name, user, `group:`, `tag:`, host
    /// alias or IP.
    fn query_source(&self, src: &str) -> Result<Vec<Endpoint>, EngineError> {
        if let Some(id) = self.id_of(src) {
            return Ok(self.node_endpoint(id).into_iter().collect());
        }
        let unresolved = |what: String| EngineError::Unresolved(what);
        let target = if src.starts_with("group:") {
            if !self.policy().groups.contains_key(src) {
                return Err(unresolved(format!("group not defined in policy: {src:?}")));
            }
            Target::Group(src.into())
        } else if src.starts_with("tag:") {
            Target::Tag(src.into())
        } else if src.contains('@') {
            Target::User(src.into())
        } else if let Some(net) = self.policy().hosts.get(src) {
            Target::Host(src.into(), *net)
        } else if let Ok(ip) = src.parse::<IpAddr>() {
            return Ok(vec![self.ip_endpoint(ip, ip.to_string())]);
        } else {
            return Err(unresolved(format!(
                "unknown source {src:?}: not a node, user, group:, tag:, host alias or IP"
            )));
        };
        let eps = self.endpoints(&target);
        if eps.is_empty() {
            return Err(unresolved(format!(
                "{src:?} has no device with a single address"
            )));
        }
        Ok(eps)
    }

    /// Resolves a query destination: a node name, host alias or IP.
    fn query_destination(&self, dst: &str) -> Result<Endpoint, EngineError> {
        if let Some(id) = self.id_of(dst) {
            return self
                .node_endpoint(id)
                .ok_or_else(|| EngineError::UnknownNode(dst.into()));
        }
        if let Some(net) = self.policy().hosts.get(dst) {
            if net.prefix_len() != net.max_prefix_len() {
                return Err(EngineError::Unresolved(format!(
                    "host {dst:?} is a prefix ({net}); query one address"
                )));
            }
            return Ok(self.ip_endpoint(net.addr(), format!("{dst} ({})", net.addr())));
        }
        match dst.parse::<IpAddr>() {
            Ok(ip) => Ok(self.ip_endpoint(ip, ip.to_string())),
            Err(_) => Err(EngineError::Unresolved(format!(
                "unknown destination {dst:?}: not a node, host alias or IP"
            ))),
        }
    }

    /// May `src` reach `dst` on `port` with `proto`? `src` is a node name,
    /// user, group, tag, host alias or IP; `dst` a node name, host alias or IP.
    pub fn query(
        &self,
        src: &str,
        dst: &str,
        port: u16,
        proto: QueryProto,
    ) -> Result<QueryOutcome, EngineError> {
        let srcs = self.query_source(src)?;
        let d = self.query_destination(dst)?;
        let pairs = self.evaluate(&srcs, std::slice::from_ref(&d), &[proto], port);
        let accept = !pairs.is_empty() && pairs.iter().all(|p| !p.rules.is_empty());
        Ok(QueryOutcome { accept, pairs })
    }
}

/// Parses the target of a query source into the identity it names, so that
/// a representative device can stand in when it has none.
pub fn query_identity(policy: &Policy, src: &str) -> Option<Target> {
    if src.starts_with("group:") && policy.groups.contains_key(src) {
        Some(Target::Group(src.into()))
    } else if src.starts_with("tag:") && policy.tag_owners.contains_key(src) {
        Some(Target::Tag(src.into()))
    } else if src.contains('@') {
        Some(Target::User(src.into()))
    } else {
        None
    }
}

/// Why a policy was refused by [`check_policy`].
#[derive(Debug, thiserror::Error)]
pub enum PolicyRefused {
    /// The file is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::parse::PolicyError),
    /// The inventory breaks a structural rule (names, addresses).
    #[error(transparent)]
    Inventory(#[from] EngineError),
    /// Some of the policy's own tests fail.
    #[error("{} of {} policy test assertions failed", .0.failed(), .0.assertions)]
    TestsFailed(TestReport),
}

/// Parses a policy, checks it against the inventory and runs its tests: the
/// policy is accepted only if all of that succeeds, as a control server must
/// before replacing its policy.
pub fn check_policy(text: &str, nodes: &[Node]) -> Result<Arc<Policy>, PolicyRefused> {
    let policy = Arc::new(crate::parse::parse_policy(text)?);
    let report = run_tests(&policy, nodes)?;
    if !report.passed() {
        return Err(PolicyRefused::TestsFailed(report));
    }
    Ok(policy)
}
