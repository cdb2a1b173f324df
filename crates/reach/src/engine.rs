//! The reachability engine: who may open which connections to whom.
//!
//! A connection from A to B is allowed when A's egress allows it (or A is
//! outside the cluster) and B's ingress allows it (or B is outside). For each
//! direction: an endpoint no policy isolates allows everything; an isolated
//! one allows the union of the matching allow rules of every policy that
//! selects it; deny rules (Cilium) then remove what they match, whatever
//! allowed it.

use crate::conns::{ConnSet, IpRanges, Proto, format_range};
use crate::manifest::Location;
use crate::model::{Cluster, Entity, Peer, PolicyRef, PortItem, PortVal, Rule, Workload};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The pods of workload `i` (an index into [`Cluster::workloads`]).
    Workload(usize),
    /// Addresses outside the cluster, `lo..=hi` (IPv4). A rule matches only
    /// when it matches the whole range.
    External(u32, u32),
}

#[derive(Debug, Clone, Default)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }
}

/// Which list of a policy a rule is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// `ingress`.
    Ingress,
    /// `egress`.
    Egress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egressDeny`.
    EgressDeny,
}

impl Section {
    /// The field name.
    pub fn name(self) -> &'static str {
        match self {
            Section::Ingress => "ingress",
            Section::Egress => "egress",
            Section::IngressDeny => "ingressDeny",
            Section::EgressDeny => "egressDeny",
        }
    }
}

/// A rule, compiled: which workloads and external addresses it matches and
/// which ports it opens.
#[derive(Debug, Clone)]
struct CRule {
    pods: BitSet,
    ext: IpRanges,
    fixed: ConnSet,
    named: Vec<(Option<Proto>, String)>,
    policy: usize,
    section: Section,
    index: usize,
    at: Location,
}

/// A rule that took part in a verdict.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleRef {
    /// Its policy.
    pub policy: PolicyRef,
    /// Its list.
    pub section: Section,
    /// Its position in the list (0-based).
    pub index: usize,
    /// Where it is written.
    pub at: Location,
}

/// One direction of a verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    /// Whether the endpoint is in the cluster (an external side is not checked).
    pub checked: bool,
    /// Policies that make the endpoint default-deny in this direction.
    pub isolated_by: Vec<PolicyRef>,
    /// Allow rules that admit the connection.
    pub allowed_by: Vec<RuleRef>,
    /// Deny rules that refuse it.
    pub denied_by: Vec<RuleRef>,
    /// The outcome for this direction.
    pub allowed: bool,
}

/// The answer to "may A open PORT/PROTO to B?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Both directions allow it.
    pub allowed: bool,
    /// The source's egress.
    pub egress: Side,
    /// The destination's ingress.
    pub ingress: Side,
}

/// One line of `reach list`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Connection {
    /// Source: `ns/name[Kind]` or IP ranges (shared between lines).
    pub src: Arc<str>,
    /// Destination.
    pub dst: Arc<str>,
    /// What is allowed (shared between lines with the same outcome).
    pub conns: Arc<ConnSet>,
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} => {} : {}", self.src, self.dst, self.conns)
    }
}

/// Per workload and direction: the rules that apply and whether it is isolated.
#[derive(Debug, Clone, Default)]
struct Dir {
    isolated_by: Vec<usize>,
    allow: Vec<usize>,
    deny: Vec<usize>,
}

impl Dir {
    fn open(&self) -> bool {
        self.isolated_by.is_empty() && self.deny.is_empty()
    }
}

/// The compiled cluster.
#[derive(Debug, Clone)]
pub struct Engine {
    cluster: Cluster,
    rules: Vec<CRule>,
    ingress: Vec<Dir>,
    egress: Vec<Dir>,
    by_name: BTreeMap<(String, String), Vec<usize>>,
}

fn compile_peers(c: &Cluster, peers: Option<&Vec<Peer>>) -> (BitSet, IpRanges) {
    let n = c.workloads.len();
    let mut pods = BitSet::new(n);
    let mut ext = IpRanges::default();
    let Some(peers) = peers else {
        for i in 0..n {
            pods.set(i);
        }
        return (pods, IpRanges::all());
    };
    for p in peers {
        match p {
            Peer::Ips(r) => ext.union_with(r),
            Peer::Entity(Entity::World) => ext = IpRanges::all(),
            Peer::Entity(Entity::All) => ext = IpRanges::all(),
            _ => {}
        }
        if matches!(
            p,
            Peer::Pods { .. } | Peer::Endpoints { .. } | Peer::Entity(_)
        ) {
            for (i, w) in c.workloads.iter().enumerate() {
                if c.selects(p, w) {
                    pods.set(i);
                }
            }
        }
    }
    (pods, ext)
}

fn compile_ports(ports: Option<&Vec<PortItem>>) -> (ConnSet, Vec<(Option<Proto>, String)>) {
    let Some(items) = ports else {
        return (ConnSet::all(), Vec::new());
    };
    let mut fixed = ConnSet::none();
    let mut named = Vec::new();
    for it in items {
        let protos: &[Proto] = match &it.proto {
            Some(p) => std::slice::from_ref(p),
            None => &Proto::ALL,
        };
        match &it.port {
            PortVal::All => protos.iter().for_each(|&p| fixed.add(p, 0, 65535)),
            PortVal::Range(lo, hi) => protos.iter().for_each(|&p| fixed.add(p, *lo, *hi)),
            PortVal::Named(n) => named.push((it.proto, n.clone())),
        }
    }
    (fixed, named)
}

impl Engine {
    /// Compiles a cluster: resolves every selector once.
    pub fn new(cluster: Cluster) -> Engine {
        let n = cluster.workloads.len();
        let mut rules = Vec::new();
        let mut ingress = vec![Dir::default(); n];
        let mut egress = vec![Dir::default(); n];
        for (pi, p) in cluster.policies.iter().enumerate() {
            let selected: Vec<usize> = (0..n)
                .filter(|&i| cluster.selects(&p.subject, &cluster.workloads[i]))
                .collect();
            let mut add = |list: &[Rule], section: Section| -> Vec<usize> {
                list.iter()
                    .map(|r| {
                        let (pods, ext) = compile_peers(&cluster, r.peers.as_ref());
                        let (fixed, named) = compile_ports(r.ports.as_ref());
                        rules.push(CRule {
                            pods,
                            ext,
                            fixed,
                            named,
                            policy: pi,
                            section,
                            index: r.index,
                            at: r.at.clone(),
                        });
                        rules.len() - 1
                    })
                    .collect()
            };
            let ia = add(&p.ingress, Section::Ingress);
            let ea = add(&p.egress, Section::Egress);
            let id = add(&p.ingress_deny, Section::IngressDeny);
            let ed = add(&p.egress_deny, Section::EgressDeny);
            for &i in &selected {
                if p.isolates_ingress {
                    ingress[i].isolated_by.push(pi);
                }
                if p.isolates_egress {
                    egress[i].isolated_by.push(pi);
                }
                ingress[i].allow.extend(&ia);
                egress[i].allow.extend(&ea);
                ingress[i].deny.extend(&id);
                egress[i].deny.extend(&ed);
            }
        }
        let mut by_name: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, w) in cluster.workloads.iter().enumerate() {
            by_name
                .entry((w.namespace.clone(), w.name.clone()))
                .or_default()
                .push(i);
        }
        Engine {
            cluster,
            rules,
            ingress,
            egress,
            by_name,
        }
    }

    /// The model this engine was built from.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Workloads named `ns/name` (one per kind that uses the name).
    pub fn find(&self, ns: &str, name: &str) -> &[usize] {
        self.by_name
            .get(&(ns.to_string(), name.to_string()))
            .map_or(&[], Vec::as_slice)
    }

    fn matches(&self, r: &CRule, e: Endpoint) -> bool {
        match e {
            Endpoint::Workload(i) => r.pods.get(i),
            Endpoint::External(lo, hi) => r.ext.covers(lo, hi),
        }
    }

    /// The ports `r` opens towards `dst` (named ports resolve on `dst`'s pods).
    fn rule_conns(&self, r: &CRule, dst: Endpoint) -> ConnSet {
        let mut c = r.fixed.clone();
        if let Endpoint::Workload(d) = dst {
            let w: &Workload = &self.cluster.workloads[d];
            for (proto, name) in &r.named {
                for cp in w.named_port(name) {
                    if proto.is_none_or(|p| p == cp.proto) {
                        c.add(cp.proto, cp.port, cp.port);
                    }
                }
            }
        }
        c
    }

    /// What `dir` (of the endpoint `owner`) allows with `peer`; `dst` is the
    /// connection's destination (where named ports resolve).
    fn side(&self, dir: &Dir, peer: Endpoint, dst: Endpoint) -> ConnSet {
        let mut allow = if dir.isolated_by.is_empty() {
            ConnSet::all()
        } else {
            let mut a = ConnSet::none();
            for &ri in &dir.allow {
                let r = &self.rules[ri];
                if self.matches(r, peer) {
                    a.union_with(&self.rule_conns(r, dst));
                }
            }
            a
        };
        for &ri in &dir.deny {
            let r = &self.rules[ri];
            if self.matches(r, peer) {
                allow = allow.minus(&self.rule_conns(r, dst));
            }
        }
        allow
    }

    /// Every connection allowed from `src` to `dst`.
    pub fn conns(&self, src: Endpoint, dst: Endpoint) -> ConnSet {
        let out = match src {
            Endpoint::Workload(s) => self.side(&self.egress[s], dst, dst),
            Endpoint::External(..) => ConnSet::all(),
        };
        if out.is_empty() {
            return out;
        }
        let inn = match dst {
            Endpoint::Workload(d) => self.side(&self.ingress[d], src, dst),
            Endpoint::External(..) => ConnSet::all(),
        };
        out.intersect(&inn)
    }

    fn explain_side(&self, dir: &Dir, peer: Endpoint, dst: Endpoint, p: Proto, port: u16) -> Side {
        let rref = |ri: usize| {
            let r = &self.rules[ri];
            RuleRef {
                policy: self.cluster.policies[r.policy].id.clone(),
                section: r.section,
                index: r.index,
                at: r.at.clone(),
            }
        };
        let hit = |ri: &usize| {
            let r = &self.rules[*ri];
            self.matches(r, peer) && self.rule_conns(r, dst).contains(p, port)
        };
        let allowed_by: Vec<RuleRef> = dir
            .allow
            .iter()
            .filter(|ri| hit(ri))
            .map(|&ri| rref(ri))
            .collect();
        let denied_by: Vec<RuleRef> = dir
            .deny
            .iter()
            .filter(|ri| hit(ri))
            .map(|&ri| rref(ri))
            .collect();
        let mut isolated_by: Vec<PolicyRef> = dir
            .isolated_by
            .iter()
            .map(|&pi| self.cluster.policies[pi].id.clone())
            .collect();
        isolated_by.sort();
        isolated_by.dedup();
        let allowed = (isolated_by.is_empty() || !allowed_by.is_empty()) && denied_by.is_empty();
        Side {
            checked: true,
            isolated_by,
            allowed_by,
            denied_by,
            allowed,
        }
    }

    /// May `src` open `port`/`proto` to `dst`? With the rules that decide.
    pub fn query(&self, src: Endpoint, dst: Endpoint, proto: Proto, port: u16) -> Verdict {
        let open = Side {
            checked: false,
            allowed: true,
            ..Side::default()
        };
        let egress = match src {
            Endpoint::Workload(s) => self.explain_side(&self.egress[s], dst, dst, proto, port),
            Endpoint::External(..) => open.clone(),
        };
        let ingress = match dst {
            Endpoint::Workload(d) => self.explain_side(&self.ingress[d], src, dst, proto, port),
            Endpoint::External(..) => open,
        };
        Verdict {
            allowed: egress.allowed && ingress.allowed,
            egress,
            ingress,
        }
    }

    /// The external address ranges that policies tell apart: every IPv4
    /// address falls in exactly one, and every rule matches a range whole
    /// or not at all.
    pub fn external_ranges(&self) -> Vec<(u32, u32)> {
        let mut cuts: Vec<u64> = vec![0, 1 << 32];
        for r in &self.rules {
            for &(lo, hi) in &r.ext.0 {
                cuts.push(u64::from(lo));
                cuts.push(u64::from(hi) + 1);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .filter_map(|w| {
                let lo = u32::try_from(w[0]).ok()?;
                let hi = u32::try_from(w[1] - 1).ok()?;
                Some((lo, hi))
            })
            .collect()
    }

    /// Every allowed connection, netpol-analyzer style, sorted. Workload
    /// pairs include a workload with itself (its replicas talk to each other).
    pub fn list(&self) -> Vec<Connection> {
        let names: Vec<Arc<str>> = self
            .cluster
            .workloads
            .iter()
            .map(|w| Arc::from(w.display()))
            .collect();
        let mut out = Vec::new();
        self.list_workload_pairs(&names, &mut out);
        self.list_external(&names, &mut out);
        out.sort();
        out
    }

    /// Every allowed workload-to-workload connection.
    fn list_workload_pairs(&self, names: &[Arc<str>], out: &mut Vec<Connection>) {
        let n = names.len();
        let all = Arc::new(ConnSet::all());
        // Per source: cache of egress outcomes by matching-rule signature.
        let mut egress_cache: Vec<HashMap<(u64, u64), Arc<ConnSet>>> = vec![HashMap::new(); n];
        let mut in_sig = vec![(0u64, 0u64); n];
        for d in 0..n {
            let dst = Endpoint::Workload(d);
            let din = &self.ingress[d];
            let in_fast = din.allow.len() <= 64 && din.deny.len() <= 64;
            let mut in_cache: HashMap<(u64, u64), Arc<ConnSet>> = HashMap::new();
            if in_fast && !din.open() {
                in_sig.iter_mut().for_each(|s| *s = (0, 0));
                for (b, &ri) in din.allow.iter().enumerate() {
                    for s in self.rules[ri].pods.ones() {
                        in_sig[s].0 |= 1 << b;
                    }
                }
                for (b, &ri) in din.deny.iter().enumerate() {
                    for s in self.rules[ri].pods.ones() {
                        in_sig[s].1 |= 1 << b;
                    }
                }
            }
            for s in 0..n {
                let src = Endpoint::Workload(s);
                let inn = if din.open() {
                    Arc::clone(&all)
                } else if in_fast {
                    let sig = in_sig[s];
                    if !din.isolated_by.is_empty() && sig.0 == 0 {
                        continue;
                    }
                    in_cache
                        .entry(sig)
                        .or_insert_with(|| Arc::new(self.side(din, src, dst)))
                        .clone()
                } else {
                    Arc::new(self.side(din, src, dst))
                };
                if inn.is_empty() {
                    continue;
                }
                let out_conns = self.egress_to(s, d, &all, &mut egress_cache[s]);
                // Share the set when one side allows everything.
                let c = if out_conns.is_all() {
                    inn
                } else if inn.is_all() {
                    out_conns
                } else {
                    Arc::new(out_conns.intersect(&inn))
                };
                if !c.is_empty() {
                    out.push(Connection {
                        src: Arc::clone(&names[s]),
                        dst: Arc::clone(&names[d]),
                        conns: c,
                    });
                }
            }
        }
    }

    /// What workload `s`'s egress allows towards workload `d`, through a
    /// cache keyed by which of `s`'s egress rules match `d` (rules with
    /// named ports depend on `d` itself and bypass the cache).
    fn egress_to(
        &self,
        s: usize,
        d: usize,
        all: &Arc<ConnSet>,
        cache: &mut HashMap<(u64, u64), Arc<ConnSet>>,
    ) -> Arc<ConnSet> {
        let sout = &self.egress[s];
        let dst = Endpoint::Workload(d);
        if sout.open() {
            return Arc::clone(all);
        }
        let cacheable = sout.allow.len() <= 64
            && sout.deny.len() <= 64
            && sout
                .allow
                .iter()
                .chain(&sout.deny)
                .all(|&ri| self.rules[ri].named.is_empty());
        if !cacheable {
            return Arc::new(self.side(sout, dst, dst));
        }
        let mut sig = (0u64, 0u64);
        for (b, &ri) in sout.allow.iter().enumerate() {
            if self.rules[ri].pods.get(d) {
                sig.0 |= 1 << b;
            }
        }
        for (b, &ri) in sout.deny.iter().enumerate() {
            if self.rules[ri].pods.get(d) {
                sig.1 |= 1 << b;
            }
        }
        if !sout.isolated_by.is_empty() && sig.0 == 0 {
            return Arc::new(ConnSet::none());
        }
        cache
            .entry(sig)
            .or_insert_with(|| Arc::new(self.side(sout, dst, dst)))
            .clone()
    }

    /// Every allowed connection between a workload and outside addresses.
    fn list_external(&self, names: &[Arc<str>], out: &mut Vec<Connection>) {
        let ranges = self.external_ranges();
        for (i, name) in names.iter().enumerate() {
            let w = Endpoint::Workload(i);
            let mut inbound: BTreeMap<ConnSet, IpRanges> = BTreeMap::new();
            let mut outbound: BTreeMap<ConnSet, IpRanges> = BTreeMap::new();
            for &(lo, hi) in &ranges {
                let e = Endpoint::External(lo, hi);
                let c = self.conns(e, w);
                if !c.is_empty() {
                    inbound
                        .entry(c)
                        .or_default()
                        .union_with(&IpRanges(vec![(lo, hi)]));
                }
                let c = self.conns(w, e);
                if !c.is_empty() {
                    outbound
                        .entry(c)
                        .or_default()
                        .union_with(&IpRanges(vec![(lo, hi)]));
                }
            }
            for (conns, ips) in inbound {
                out.push(Connection {
                    src: Arc::from(ips.display()),
                    dst: Arc::clone(name),
                    conns: Arc::new(conns),
                });
            }
            for (conns, ips) in outbound {
                out.push(Connection {
                    src: Arc::clone(name),
                    dst: Arc::from(ips.display()),
                    conns: Arc::new(conns),
                });
            }
        }
    }

    /// The baseline for `list`: every pair evaluated from the model directly,
    /// re-matching every selector of every policy each time (no compilation).
    /// Used by tests and the benchmark to check [`Engine::list`].
    pub fn naive_conns(cluster: &Cluster, src: Endpoint, dst: Endpoint) -> ConnSet {
        let side = |owner: usize, peer: Endpoint, egress: bool| -> ConnSet {
            let w = &cluster.workloads[owner];
            let mut isolated = false;
            let mut allow = ConnSet::none();
            let mut deny = ConnSet::none();
            let dst_w = match dst {
                Endpoint::Workload(d) => Some(&cluster.workloads[d]),
                Endpoint::External(..) => None,
            };
            for p in &cluster.policies {
                if !cluster.selects(&p.subject, w) {
                    continue;
                }
                let (iso, allows, denies) = if egress {
                    (p.isolates_egress, &p.egress, &p.egress_deny)
                } else {
                    (p.isolates_ingress, &p.ingress, &p.ingress_deny)
                };
                isolated |= iso;
                for (rules, acc) in [(allows, &mut allow), (denies, &mut deny)] {
                    for r in rules {
                        if naive_peer_match(cluster, r, peer) {
                            acc.union_with(&naive_ports(r, dst_w));
                        }
                    }
                }
            }
            let base = if isolated { allow } else { ConnSet::all() };
            base.minus(&deny)
        };
        let out = match src {
            Endpoint::Workload(s) => side(s, dst, true),
            Endpoint::External(..) => ConnSet::all(),
        };
        let inn = match dst {
            Endpoint::Workload(d) => side(d, src, false),
            Endpoint::External(..) => ConnSet::all(),
        };
        out.intersect(&inn)
    }

    /// `lo-hi` display for an external range.
    pub fn range_name(lo: u32, hi: u32) -> String {
        format_range(lo, hi)
    }
}

fn naive_peer_match(c: &Cluster, r: &Rule, peer: Endpoint) -> bool {
    let Some(peers) = &r.peers else { return true };
    peers.iter().any(|p| match peer {
        Endpoint::Workload(i) => c.selects(p, &c.workloads[i]),
        Endpoint::External(lo, hi) => match p {
            Peer::Ips(r) => r.covers(lo, hi),
            Peer::Entity(Entity::World | Entity::All) => true,
            _ => false,
        },
    })
}

fn naive_ports(r: &Rule, dst: Option<&Workload>) -> ConnSet {
    let Some(items) = &r.ports else {
        return ConnSet::all();
    };
    let mut c = ConnSet::none();
    for it in items {
        for p in Proto::ALL {
            if it.proto.is_some_and(|x| x != p) {
                continue;
            }
            match &it.port {
                PortVal::All => c.add(p, 0, 65535),
                PortVal::Range(lo, hi) => c.add(p, *lo, *hi),
                PortVal::Named(n) => {
                    for cp in dst.into_iter().flat_map(|w| w.named_port(n)) {
                        if cp.proto == p {
                            c.add(p, cp.port, cp.port);
                        }
                    }
                }
            }
        }
    }
    c
}
