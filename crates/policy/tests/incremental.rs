//! Incremental recompilation must agree with compiling from scratch, and the
//! change sets it reports must cover every node whose filter or peers changed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_policy::{Engine, Node, NodeFilter, parse_policy};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

const USERS: &[&str] = &["u0@x.com", "u1@x.com", "u2@x.com", "u3@x.com"];
const TAGS: &[&str] = &["tag:t0", "tag:t1", "tag:t2"];

const SRCS: &[&str] = &[
    "*",
    "u0@x.com",
    "u1@x.com",
    "group:g0",
    "group:g1",
    "tag:t0",
    "tag:t1",
    "autogroup:member",
    "autogroup:tagged",
    "100.64.0.0/29",
    "h1",
];
const USER_SRCS: &[&str] = &["u0@x.com", "u2@x.com", "group:g0", "autogroup:member"];
const DSTS: &[&str] = &[
    "*:443",
    "tag:t0:80",
    "tag:t1:80,443",
    "tag:t2:*",
    "u1@x.com:22",
    "group:g1:22",
    "autogroup:member:8000-8100",
    "autogroup:tagged:9090",
    "100.64.0.4:5432",
    "fd7a:115c:a1e0::/120:53",
    "h1:*",
    "autogroup:internet:*",
];

fn policy_text(rules: &[(Vec<usize>, Vec<usize>, bool)]) -> String {
    let mut acls = Vec::new();
    for (src, dst, own) in rules {
        if *own {
            let s: Vec<String> = src
                .iter()
                .map(|i| format!("{:?}", USER_SRCS[i % USER_SRCS.len()]))
                .collect();
            acls.push(format!(
                r#"{{"action": "accept", "src": [{}], "dst": ["autogroup:self:*"]}}"#,
                s.join(",")
            ));
        } else {
            let s: Vec<String> = src
                .iter()
                .map(|i| format!("{:?}", SRCS[i % SRCS.len()]))
                .collect();
            let d: Vec<String> = dst
                .iter()
                .map(|i| format!("{:?}", DSTS[i % DSTS.len()]))
                .collect();
            acls.push(format!(
                r#"{{"action": "accept", "src": [{}], "dst": [{}]}}"#,
                s.join(","),
                d.join(",")
            ));
        }
    }
    format!(
        r#"{{"groups": {{"group:g0": ["u0@x.com", "u1@x.com"], "group:g1": ["u2@x.com"]}},
            "hosts": {{"h1": "100.64.0.6"}},
            "tagOwners": {{"tag:t0": [], "tag:t1": [], "tag:t2": []}},
            "acls": [{}]}}"#,
        acls.join(",")
    )
}

#[derive(Debug, Clone)]
struct NodeSpec {
    slot: u8,
    identity: u8,
    v6: bool,
}

fn make_node(s: &NodeSpec) -> Node {
    let id = usize::from(s.identity);
    let (user, tags) = if id < USERS.len() {
        (Some(USERS[id].to_string()), Vec::new())
    } else {
        let t = id - USERS.len();
        let mut tags = vec![TAGS[t % TAGS.len()].to_string()];
        if t >= TAGS.len() {
            tags.push(TAGS[(t + 1) % TAGS.len()].to_string());
        }
        (Some(USERS[0].to_string()), tags)
    };
    let mut addresses = vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, s.slot))];
    if s.v6 {
        addresses.push(IpAddr::V6(Ipv6Addr::new(
            0xfd7a,
            0x115c,
            0xa1e0,
            0,
            0,
            0,
            0,
            u16::from(s.slot),
        )));
    }
    Node {
        name: format!("n{}", s.slot),
        user,
        tags,
        addresses,
        routes: Vec::new(),
    }
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        0u8..12,
        0u8..(USERS.len() + 2 * TAGS.len()) as u8,
        any::<bool>(),
    )
        .prop_map(|(slot, identity, v6)| NodeSpec { slot, identity, v6 })
}

fn rule() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, bool)> {
    (
        prop::collection::vec(0usize..64, 1..3),
        prop::collection::vec(0usize..64, 1..3),
        prop::bool::weighted(0.2),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(NodeSpec),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => node_spec().prop_map(Op::Upsert),
        1 => (0u8..12).prop_map(Op::Remove),
    ]
}

type Snapshot = BTreeMap<String, (NodeFilter, BTreeSet<String>)>;

fn snapshot(e: &Engine) -> Snapshot {
    e.nodes()
        .map(|n| {
            (
                n.name.clone(),
                (e.filter(&n.name).unwrap(), e.peers(&n.name).unwrap()),
            )
        })
        .collect()
}

fn dedup_nodes(specs: Vec<NodeSpec>) -> Vec<Node> {
    let mut by_slot = BTreeMap::new();
    for s in specs {
        by_slot.insert(s.slot, make_node(&s));
    }
    by_slot.into_values().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_matches_full(
        rules in prop::collection::vec(rule(), 0..8),
        initial in prop::collection::vec(node_spec(), 0..10),
        ops in prop::collection::vec(op(), 1..8),
    ) {
        let policy = Arc::new(parse_policy(&policy_text(&rules)).unwrap());
        let mut nodes: BTreeMap<String, Node> =
            dedup_nodes(initial).into_iter().map(|n| (n.name.clone(), n)).collect();
        let mut inc = Engine::new(Arc::clone(&policy), nodes.values().cloned().collect()).unwrap();
        for op in ops {
            let before = snapshot(&inc);
            let cs = match op {
                Op::Upsert(s) => {
                    let n = make_node(&s);
                    nodes.insert(n.name.clone(), n.clone());
                    inc.upsert_node(n).unwrap()
                }
                Op::Remove(slot) => {
                    let name = format!("n{slot}");
                    if nodes.remove(&name).is_none() {
                        prop_assert!(inc.remove_node(&name).is_err());
                        continue;
                    }
                    inc.remove_node(&name).unwrap()
                }
            };
            let full = Engine::new(Arc::clone(&policy), nodes.values().cloned().collect()).unwrap();
            let after = snapshot(&inc);
            prop_assert_eq!(&after, &snapshot(&full));
            for (name, (filter, peers)) in &after {
                match before.get(name) {
                    Some((f0, p0)) => {
                        if f0 != filter {
                            prop_assert!(cs.filters.contains(name), "filter of {} changed unreported", name);
                        }
                        if p0 != peers {
                            prop_assert!(cs.peers.contains(name), "peers of {} changed unreported", name);
                        }
                    }
                    None => prop_assert!(cs.filters.contains(name) && cs.peers.contains(name)),
                }
            }
        }
    }

    #[test]
    fn compilation_is_deterministic(
        rules in prop::collection::vec(rule(), 0..8),
        initial in prop::collection::vec(node_spec(), 0..10),
    ) {
        let policy = Arc::new(parse_policy(&policy_text(&rules)).unwrap());
        let nodes = dedup_nodes(initial);
        let a = Engine::new(Arc::clone(&policy), nodes.clone()).unwrap();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let b = Engine::new(Arc::clone(&policy), reversed).unwrap();
        for n in &nodes {
            let fa = serde_json::to_string(&a.filter(&n.name).unwrap()).unwrap();
            let fb = serde_json::to_string(&b.filter(&n.name).unwrap()).unwrap();
            prop_assert_eq!(fa, fb);
        }
    }

    /// The compiled filter and the query path agree on every packet.
    #[test]
    fn filter_agrees_with_queries(
        rules in prop::collection::vec(rule(), 0..8),
        initial in prop::collection::vec(node_spec(), 1..10),
        port in prop_oneof![Just(22u16), Just(80), Just(443), Just(5432), Just(8050), Just(9090), Just(53)],
    ) {
        let policy = Arc::new(parse_policy(&policy_text(&rules)).unwrap());
        let nodes = dedup_nodes(initial);
        let e = Engine::new(policy, nodes.clone()).unwrap();
        for d in &nodes {
            let f = e.filter(&d.name).unwrap();
            for s in &nodes {
                let q = e.query(&s.name, &d.name, port, gatehouse_policy::QueryProto::Tcp).unwrap();
                for p in &q.pairs {
                    prop_assert_eq!(f.allows(p.src_ip, p.dst_ip, 6, port).is_some(), !p.rules.is_empty());
                }
            }
        }
    }
}
