//! Semantics that follow Tailscale's behaviour where its documentation is
//! thin: `autogroup:self` with `*`, `user:*@domain`, `autogroup:danger-all`,
//! empty grants, nodes whose tag the policy no longer declares, and grants
//! routed `via` tagged subnet routers and exit nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_policy::{
    Engine, IpSet, QueryProto, RuleId, RuleKind, check_policy, parse_inventory, parse_policy,
    run_tests,
};
use std::net::IpAddr;
use std::sync::Arc;

const NODES: &str = r#"
nodes:
  - {name: alice-laptop, user: alice@example.com, addresses: [100.64.0.1, "fd7a:115c:a1e0::1"]}
  - {name: alice-phone, user: alice@example.com, addresses: [100.64.0.2]}
  - {name: bob-laptop, user: bob@example.org, addresses: [100.64.0.3]}
  - {name: carol-laptop, user: carol@example.com, addresses: [100.64.0.4]}
  - {name: alice-server, user: alice@example.com, tags: [tag:server], addresses: [100.64.0.5]}
  - {name: web, tags: [tag:web], addresses: [100.64.0.10]}
  - {name: router-a, tags: [tag:router], addresses: [100.64.0.20], routes: [10.33.0.0/16]}
  - {name: router-b, tags: [tag:other-router], addresses: [100.64.0.21], routes: [10.33.0.0/16, 192.168.1.0/24]}
  - {name: exit, tags: [tag:exit], addresses: [100.64.0.30, "fd7a:115c:a1e0::30"], routes: [0.0.0.0/0, "::/0"]}
  - {name: exit-b, tags: [tag:other-router], addresses: [100.64.0.31], routes: [0.0.0.0/0]}
"#;

const PREAMBLE: &str = r#"
  "groups": {"group:eng": ["alice@example.com"]},
  "hosts": {"lan": "10.33.0.0/16", "ten": "10.0.0.0/8"},
  "tagOwners": {"tag:web": [], "tag:server": [], "tag:router": [], "tag:other-router": [], "tag:exit": []},
"#;

fn engine(sections: &str) -> Engine {
    let text = format!("{{ {PREAMBLE} {sections} }}");
    let policy = parse_policy(&text).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(Arc::new(policy), parse_inventory(NODES).unwrap()).unwrap()
}

fn can(e: &Engine, src: &str, dst: &str, port: u16) -> bool {
    e.query(src, dst, port, QueryProto::Tcp)
        .unwrap_or_else(|err| panic!("{src} -> {dst}: {err}"))
        .accept
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn srcs(e: &Engine, node: &str) -> Vec<Vec<String>> {
    e.filter(node)
        .unwrap()
        .rules
        .iter()
        .map(|r| r.src_ips.to_strings())
        .collect()
}

const GRANT0: RuleId = RuleId {
    kind: RuleKind::Grant,
    index: 0,
};

#[test]
fn self_with_every_source_reaches_own_devices_only() {
    let e = engine(r#""acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self:22"]}]"#);
    assert!(can(&e, "alice-laptop", "alice-phone", 22));
    assert!(can(&e, "alice-phone", "alice-laptop", 22));
    assert!(!can(&e, "alice-laptop", "alice-phone", 80));
    assert!(!can(&e, "bob-laptop", "alice-phone", 22));
    // A tagged device gains nothing, as a source or a destination, even
    // when registered by the same user.
    assert!(!can(&e, "alice-server", "alice-laptop", 22));
    assert!(!can(&e, "alice-laptop", "alice-server", 22));
    assert!(e.filter("web").unwrap().rules.is_empty());
    assert_eq!(
        srcs(&e, "alice-phone"),
        vec![vec!["100.64.0.1", "100.64.0.2", "fd7a:115c:a1e0::1"]]
    );
    assert_eq!(srcs(&e, "bob-laptop"), vec![vec!["100.64.0.3"]]);
    // The same as listing autogroup:member.
    let m = engine(
        r#""acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:22"]}]"#,
    );
    for n in [
        "alice-laptop",
        "alice-phone",
        "bob-laptop",
        "alice-server",
        "web",
    ] {
        assert_eq!(e.filter(n).unwrap(), m.filter(n).unwrap(), "{n}");
        assert_eq!(e.peers(n).unwrap(), m.peers(n).unwrap(), "{n}");
    }
    // Incremental: a new device of bob's reaches bob's other one.
    let mut e = e;
    let cs = e
        .upsert_node(
            parse_inventory(
                "nodes: [{name: bob-phone, user: bob@example.org, addresses: [100.64.0.9]}]",
            )
            .unwrap()
            .remove(0),
        )
        .unwrap();
    assert!(cs.filters.contains("bob-laptop"));
    assert!(can(&e, "bob-phone", "bob-laptop", 22));
}

#[test]
fn every_user_of_a_domain() {
    let e = engine(
        r#""grants": [{"src": ["user:*@example.com"], "dst": ["tag:web"], "ip": ["tcp:443"]},
                      {"src": ["*"], "dst": ["user:*@example.org"], "ip": ["tcp:22"]}]"#,
    );
    assert!(can(&e, "alice-laptop", "web", 443));
    assert!(can(&e, "carol-laptop", "web", 443));
    assert!(!can(&e, "bob-laptop", "web", 443));
    // Tagged devices are in no user's devices.
    assert!(!can(&e, "alice-server", "web", 443));
    assert_eq!(
        srcs(&e, "web"),
        vec![vec![
            "100.64.0.1",
            "100.64.0.2",
            "100.64.0.4",
            "fd7a:115c:a1e0::1"
        ]]
    );
    assert!(can(&e, "web", "bob-laptop", 22));
    assert!(!can(&e, "web", "alice-laptop", 22));
    assert!(e.filter("alice-laptop").unwrap().rules.is_empty());
}

#[test]
fn danger_all_admits_every_address() {
    let e = engine(
        r#""grants": [{"src": ["autogroup:danger-all"], "dst": ["tag:web"], "ip": ["tcp:22"]}]"#,
    );
    let f = e.filter("web").unwrap();
    assert_eq!(f.rules.len(), 1);
    assert!(f.rules[0].src_ips.is_all());
    assert!(can(&e, "203.0.113.7", "web", 22));
    assert!(can(&e, "alice-server", "web", 22));
    assert!(!can(&e, "203.0.113.7", "web", 80));
}

#[test]
fn empty_grants_grant_nothing() {
    let e = engine(
        r#""grants": [{"src": [], "dst": ["*"], "ip": ["*"]}, {"src": ["*"], "dst": [], "ip": ["*"]}]"#,
    );
    for n in ["alice-laptop", "web", "router-a"] {
        assert!(e.filter(n).unwrap().rules.is_empty(), "{n}");
        assert!(e.peers(n).unwrap().is_empty(), "{n}");
    }
}

#[test]
fn undeclared_tag_keeps_its_identity() {
    // tag:web is carried by `web` but no longer declared.
    let text = format!(
        r#"{{ {} "acls": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:443"]}},
                        {{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:22"]}}],
             "tests": [{{"src": "alice@example.com", "accept": ["100.64.0.10:443"], "deny": ["100.64.0.10:22"]}}] }}"#,
        PREAMBLE.replace(r#""tag:web": [], "#, "")
    );
    let nodes = parse_inventory(NODES).unwrap();
    let policy = check_policy(&text, &nodes).unwrap();
    let report = run_tests(&policy, &nodes).unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.warnings.len(), 1, "{report:?}");
    assert!(report.warnings[0].contains("\"web\"") && report.warnings[0].contains("tag:web"));
    let e = Engine::new(policy, nodes).unwrap();
    assert_eq!(
        e.undeclared_tags(),
        vec![("web".to_string(), vec!["tag:web".to_string()])]
    );
    // Still a tagged node: autogroup:tagged selects it, its registering
    // user (none here) and user rules do not.
    assert!(can(&e, "alice-laptop", "web", 443));
    assert!(!can(&e, "alice-laptop", "web", 22));
    assert!(e.node("web").unwrap().is_tagged());
    // The policy cannot name the undeclared tag.
    let naming = text.replace("autogroup:tagged:443", "tag:web:443");
    assert!(
        parse_policy(&naming)
            .unwrap_err()
            .message
            .contains("tag not found")
    );
}

#[test]
fn via_grants_reach_subnets_through_their_routers_only() {
    let e = engine(
        r#""grants": [{"src": ["group:eng"], "dst": ["lan"], "ip": ["tcp:80"], "via": ["tag:router"]}]"#,
    );
    // The router carrying the via tag filters the forwarded traffic; the
    // other router of the same subnet, and every mesh node, get nothing.
    let f = e.filter("router-a").unwrap();
    assert_eq!(f.rules.len(), 1);
    assert!(f.rules[0].dst_ports.is_empty());
    assert_eq!(f.rules[0].routed.len(), 1);
    assert_eq!(f.rules[0].routed[0].nets.to_strings(), vec!["10.33.0.0/16"]);
    assert_eq!(f.rules[0].routed[0].ports.first, 80);
    assert_eq!(
        f.allows_routed(ip("100.64.0.1"), ip("10.33.4.4"), 6, 80),
        Some(GRANT0)
    );
    assert_eq!(
        f.allows_routed(ip("100.64.0.3"), ip("10.33.4.4"), 6, 80),
        None
    );
    assert_eq!(f.allows(ip("100.64.0.1"), ip("100.64.0.20"), 6, 80), None);
    for n in ["router-b", "exit", "alice-laptop", "web"] {
        assert!(e.filter(n).unwrap().rules.is_empty(), "{n}");
    }
    // The router is a peer of the sources.
    assert!(e.peers("alice-laptop").unwrap().contains("router-a"));
    assert!(!e.peers("alice-laptop").unwrap().contains("router-b"));
    // Queries answer through the router.
    let q = e
        .query("alice-laptop", "10.33.1.5", 80, QueryProto::Tcp)
        .unwrap();
    assert!(q.accept);
    assert_eq!(q.pairs[0].via, vec!["router-a".to_string()]);
    assert!(!can(&e, "bob-laptop", "10.33.1.5", 80));
    assert!(!can(&e, "alice-laptop", "10.33.1.5", 443));
    // Outside the routes (the rule's prefix is broader than none here).
    assert!(!can(&e, "alice-laptop", "10.34.0.1", 80));
}

#[test]
fn via_destination_as_written_and_only_where_routes_overlap() {
    // Broader than the route: the router gets the prefix as written.
    let e = engine(
        r#""grants": [{"src": ["group:eng"], "dst": ["ten"], "ip": ["*"], "via": ["tag:router"]}]"#,
    );
    let f = e.filter("router-a").unwrap();
    assert_eq!(f.rules[0].routed[0].nets.to_strings(), vec!["10.0.0.0/8"]);
    // It forwards only inside its routes.
    assert!(can(&e, "alice-laptop", "10.33.0.9", 80));
    assert!(!can(&e, "alice-laptop", "10.99.0.9", 80));
    // Disjoint from every route of the via routers: nothing.
    let e = engine(
        r#""grants": [{"src": ["group:eng"], "dst": ["192.168.1.0/24"], "ip": ["*"], "via": ["tag:router"]}]"#,
    );
    for n in ["router-a", "router-b"] {
        assert!(e.filter(n).unwrap().rules.is_empty(), "{n}");
    }
    assert!(!can(&e, "alice-laptop", "192.168.1.9", 80));
    // A via grant to a mesh destination opens nothing.
    let e = engine(
        r#""grants": [{"src": ["group:eng"], "dst": ["tag:web"], "ip": ["*"], "via": ["tag:router"]}]"#,
    );
    assert!(e.filter("web").unwrap().rules.is_empty());
    assert!(!can(&e, "alice-laptop", "web", 80));
}

#[test]
fn plain_grants_to_subnets_reach_every_router_of_them() {
    let e =
        engine(r#""grants": [{"src": ["group:eng"], "dst": ["10.33.0.0/16"], "ip": ["tcp:80"]}]"#);
    for n in ["router-a", "router-b"] {
        let f = e.filter(n).unwrap();
        assert_eq!(f.rules.len(), 1, "{n}");
        assert_eq!(f.rules[0].routed[0].nets.to_strings(), vec!["10.33.0.0/16"]);
    }
    assert!(e.filter("exit").unwrap().rules.is_empty());
    // Plain and via grants add up: bob through router-b only.
    let e = engine(
        r#""grants": [{"src": ["group:eng"], "dst": ["lan"], "ip": ["*"], "via": ["tag:router"]},
                      {"src": ["bob@example.org"], "dst": ["lan"], "ip": ["*"]}]"#,
    );
    assert_eq!(e.filter("router-a").unwrap().rules.len(), 2);
    let b = e.filter("router-b").unwrap();
    assert_eq!(b.rules.len(), 1);
    assert_eq!(b.rules[0].origin.index, 1);
}

#[test]
fn via_exit_nodes_carry_the_internet() {
    let e = engine(
        r#""grants": [{"src": ["autogroup:member"], "dst": ["autogroup:internet"], "ip": ["*"], "via": ["tag:exit"]}]"#,
    );
    let f = e.filter("exit").unwrap();
    assert_eq!(f.rules.len(), 1);
    let nets: &IpSet = &f.rules[0].routed[0].nets;
    for (a, public) in [
        ("8.8.8.8", true),
        ("2606:4700::1111", true),
        ("10.1.2.3", false),
        ("192.168.0.1", false),
        ("100.64.0.1", false),
        ("169.254.1.1", false),
        ("fd7a:115c:a1e0::1", false),
    ] {
        assert_eq!(nets.contains(ip(a)), public, "{a}");
    }
    // The other exit node lacks the via tag; routers are no exit nodes.
    for n in ["exit-b", "router-a", "router-b", "web"] {
        assert!(e.filter(n).unwrap().rules.is_empty(), "{n}");
    }
    let q = e
        .query("bob-laptop", "8.8.8.8", 53, QueryProto::Udp)
        .unwrap();
    assert!(q.accept);
    assert_eq!(q.pairs[0].via, vec!["exit".to_string()]);
    assert!(!can(&e, "alice-server", "8.8.8.8", 443));
    assert!(!can(&e, "bob-laptop", "10.33.0.1", 443));
    // Without via, every exit node.
    let e = engine(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:443"]}]"#,
    );
    for n in ["exit", "exit-b"] {
        assert_eq!(e.filter(n).unwrap().rules.len(), 1, "{n}");
    }
}

#[test]
fn routers_join_and_leave_incrementally() {
    let text = format!(
        r#"{{ {PREAMBLE} "grants": [{{"src": ["group:eng"], "dst": ["lan"], "ip": ["*"], "via": ["tag:router"]}}] }}"#
    );
    let policy = Arc::new(parse_policy(&text).unwrap());
    let all = parse_inventory(NODES).unwrap();
    let without: Vec<_> = all
        .iter()
        .filter(|n| n.name != "router-a")
        .cloned()
        .collect();
    let mut e = Engine::new(Arc::clone(&policy), without).unwrap();
    let router = all.iter().find(|n| n.name == "router-a").unwrap().clone();
    let cs = e.upsert_node(router.clone()).unwrap();
    assert!(cs.filters.contains("router-a"));
    assert!(cs.peers.contains("alice-laptop"));
    let full = Engine::new(Arc::clone(&policy), all).unwrap();
    assert_eq!(
        e.filter("router-a").unwrap(),
        full.filter("router-a").unwrap()
    );
    // Its routes withdrawn: no longer a router.
    let mut bare = router;
    bare.routes.clear();
    let cs = e.upsert_node(bare).unwrap();
    assert!(cs.peers.contains("alice-laptop"));
    assert!(e.filter("router-a").unwrap().rules.is_empty());
    assert!(!e.peers("alice-laptop").unwrap().contains("router-a"));
}
