//! Evaluation semantics of the policy file, case by case, written from
//! Tailscale's public documentation of ACLs, grants, autogroups and tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_policy::{
    Engine, Expect, Node, QueryProto, RuleId, RuleKind, parse_inventory, parse_policy, run_tests,
};
use std::sync::Arc;

const NODES: &str = r#"
nodes:
  - {name: alice-laptop, user: alice@example.com, addresses: [100.64.0.1, "fd7a:115c:a1e0::1"]}
  - {name: alice-phone, user: alice@example.com, addresses: [100.64.0.2, "fd7a:115c:a1e0::2"]}
  - {name: bob-laptop, user: bob@example.com, addresses: [100.64.0.3, "fd7a:115c:a1e0::3"]}
  - {name: carol-laptop, user: carol@example.com, addresses: [100.64.0.4]}
  - {name: alice-server, user: alice@example.com, tags: [tag:server], addresses: [100.64.0.5, "fd7a:115c:a1e0::5"]}
  - {name: web, tags: [tag:web], addresses: [100.64.0.10, "fd7a:115c:a1e0::a"]}
  - {name: db, tags: [tag:db], addresses: [100.64.0.11, "fd7a:115c:a1e0::b"]}
  - {name: router, tags: [tag:web, tag:db], addresses: [100.64.0.12]}
"#;

const PREAMBLE: &str = r#"
  "groups": {"group:eng": ["alice@example.com", "bob@example.com"], "group:none": []},
  "hosts": {"printer": "100.64.0.4", "lan": "192.168.1.0/24", "nas": "192.168.1.5", "mesh4": "100.64.0.0/10"},
  "tagOwners": {"tag:web": [], "tag:db": [], "tag:server": ["alice@example.com"]},
"#;

fn engine(sections: &str) -> Engine {
    let text = format!("{{ {PREAMBLE} {sections} }}");
    let policy = parse_policy(&text).unwrap_or_else(|e| panic!("{e}"));
    Engine::new(Arc::new(policy), parse_inventory(NODES).unwrap()).unwrap()
}

fn acls(rules: &[(&str, &str)]) -> Engine {
    let list: Vec<String> = rules
        .iter()
        .map(|(s, d)| format!(r#"{{"action": "accept", "src": [{s}], "dst": [{d}]}}"#))
        .collect();
    engine(&format!(r#""acls": [{}]"#, list.join(",")))
}

fn can(e: &Engine, src: &str, dst: &str, port: u16) -> bool {
    e.query(src, dst, port, QueryProto::Tcp)
        .unwrap_or_else(|err| panic!("{src} -> {dst}: {err}"))
        .accept
}

fn can_proto(e: &Engine, src: &str, dst: &str, port: u16, p: QueryProto) -> bool {
    e.query(src, dst, port, p).unwrap().accept
}

#[test]
fn deny_by_default() {
    let e = engine("");
    for (s, d) in [
        ("alice-laptop", "web"),
        ("web", "db"),
        ("bob-laptop", "alice-phone"),
    ] {
        assert!(!can(&e, s, d, 80));
        assert!(e.filter(d).unwrap().rules.is_empty());
    }
}

#[test]
fn union_of_rules_without_order() {
    let a = acls(&[
        (r#""group:eng""#, r#""tag:web:80""#),
        (r#""bob@example.com""#, r#""tag:web:443""#),
    ]);
    let b = acls(&[
        (r#""bob@example.com""#, r#""tag:web:443""#),
        (r#""group:eng""#, r#""tag:web:80""#),
    ]);
    for e in [&a, &b] {
        assert!(can(e, "bob-laptop", "web", 80));
        assert!(can(e, "bob-laptop", "web", 443));
        assert!(can(e, "alice-laptop", "web", 80));
        assert!(!can(e, "alice-laptop", "web", 443));
        assert!(!can(e, "bob-laptop", "web", 22));
    }
}

#[test]
fn users_select_only_their_untagged_devices() {
    let e = acls(&[(r#""alice@example.com""#, r#""tag:db:5432""#)]);
    assert!(can(&e, "alice-laptop", "db", 5432));
    assert!(can(&e, "alice-phone", "db", 5432));
    // A tagged device has no user identity, even if alice registered it.
    assert!(!can(&e, "alice-server", "db", 5432));
    assert!(!can(&e, "bob-laptop", "db", 5432));
    // As a destination too.
    let e = acls(&[(r#""tag:web""#, r#""alice@example.com:22""#)]);
    assert!(can(&e, "web", "alice-phone", 22));
    assert!(!can(&e, "web", "alice-server", 22));
}

#[test]
fn groups_select_their_members_devices() {
    let e = acls(&[
        (r#""group:eng""#, r#""tag:web:443""#),
        (r#""group:none""#, r#""*:*""#),
    ]);
    assert!(can(&e, "alice-phone", "web", 443));
    assert!(can(&e, "bob-laptop", "web", 443));
    assert!(!can(&e, "carol-laptop", "web", 443));
    assert!(can(&e, "group:eng", "web", 443));
    let e = acls(&[(r#""tag:web""#, r#""group:eng:22""#)]);
    assert!(can(&e, "web", "bob-laptop", 22));
    assert!(!can(&e, "web", "carol-laptop", 22));
}

#[test]
fn tags_select_every_device_carrying_them() {
    let e = acls(&[(r#""tag:web""#, r#""tag:db:5432""#)]);
    assert!(can(&e, "web", "db", 5432));
    assert!(can(&e, "web", "router", 5432));
    assert!(can(&e, "router", "db", 5432));
    assert!(!can(&e, "db", "web", 5432));
}

#[test]
fn hosts_and_prefixes() {
    let e = acls(&[
        (r#""printer""#, r#""tag:web:80""#),
        (r#""alice@example.com""#, r#""lan:*", "100.64.0.11:5432""#),
    ]);
    // printer is carol's laptop's address.
    assert!(can(&e, "carol-laptop", "web", 80));
    assert!(can(&e, "100.64.0.4", "web", 80));
    assert!(!can(&e, "bob-laptop", "web", 80));
    // A prefix outside the mesh (subnet behind a router).
    assert!(can(&e, "alice-laptop", "192.168.1.20", 22));
    assert!(!can(&e, "alice-laptop", "192.168.2.20", 22));
    // An IPv4 address destination opens only that address of the node.
    let f = e.filter("db").unwrap();
    assert_eq!(f.rules.len(), 1);
    assert!(f.rules[0].dst_ports.iter().all(|d| d.ip.is_ipv4()));
    assert!(can(&e, "alice-laptop", "100.64.0.11", 5432));
    assert!(!can(&e, "alice-laptop", "fd7a:115c:a1e0::b", 5432));
}

#[test]
fn prefix_source_includes_every_node_inside() {
    let e = acls(&[(r#""mesh4""#, r#""tag:db:5432""#)]);
    assert!(can(&e, "100.64.0.3", "db", 5432));
    // Over IPv6 the prefix does not match, so a dual-stack device is not
    // fully admitted.
    let out = e.query("bob-laptop", "db", 5432, QueryProto::Tcp).unwrap();
    assert!(!out.accept);
    assert!(
        out.pairs
            .iter()
            .any(|p| p.src_ip.is_ipv4() && !p.rules.is_empty())
    );
    assert!(
        out.pairs
            .iter()
            .any(|p| p.src_ip.is_ipv6() && p.rules.is_empty())
    );
    assert!(e.peers("db").unwrap().contains("bob-laptop"));
}

#[test]
fn wildcard_and_member_and_tagged() {
    let e = acls(&[(r#""*""#, r#""tag:web:80""#)]);
    for s in ["alice-laptop", "carol-laptop", "db", "192.0.2.1"] {
        assert!(can(&e, s, "web", 80), "{s}");
    }
    let e = acls(&[
        (r#""autogroup:member""#, r#""tag:web:80""#),
        (r#""autogroup:tagged""#, r#""tag:db:5432""#),
    ]);
    assert!(can(&e, "carol-laptop", "web", 80));
    assert!(!can(&e, "db", "web", 80));
    assert!(!can(&e, "alice-server", "web", 80));
    assert!(can(&e, "web", "db", 5432));
    assert!(can(&e, "alice-server", "db", 5432));
    assert!(!can(&e, "alice-laptop", "db", 5432));
    let e = acls(&[(r#""tag:web""#, r#""*:22""#)]);
    assert!(can(&e, "web", "alice-laptop", 22));
    assert!(can(&e, "web", "db", 22));
    assert!(can(&e, "web", "198.51.100.7", 22));
}

#[test]
fn autogroup_self_reaches_only_own_devices() {
    let e = acls(&[(r#""autogroup:member""#, r#""autogroup:self:*""#)]);
    assert!(can(&e, "alice-laptop", "alice-phone", 22));
    assert!(can(&e, "alice-phone", "alice-laptop", 3389));
    assert!(!can(&e, "bob-laptop", "alice-laptop", 22));
    assert!(!can(&e, "alice-laptop", "bob-laptop", 22));
    // Tagged devices are nobody's "self".
    assert!(!can(&e, "alice-laptop", "alice-server", 22));
    assert!(!can(&e, "alice-server", "alice-laptop", 22));
    let f = e.filter("alice-phone").unwrap();
    assert_eq!(
        f.rules[0].src_ips.to_strings(),
        vec![
            "100.64.0.1",
            "100.64.0.2",
            "fd7a:115c:a1e0::1",
            "fd7a:115c:a1e0::2"
        ]
    );
    // With a group source, only members get self access.
    let e = acls(&[(r#""group:eng""#, r#""autogroup:self:22""#)]);
    assert!(can(&e, "bob-laptop", "bob-laptop", 22));
    assert!(can(&e, "alice-laptop", "alice-phone", 22));
    assert!(e.filter("carol-laptop").unwrap().rules.is_empty());
}

#[test]
fn autogroup_internet_opens_no_mesh_node() {
    let e = acls(&[(r#""group:eng""#, r#""autogroup:internet:*""#)]);
    for n in ["web", "db", "alice-laptop"] {
        assert!(e.filter(n).unwrap().rules.is_empty());
    }
    assert!(can(&e, "bob-laptop", "8.8.8.8", 53));
    assert!(!can(&e, "bob-laptop", "192.168.1.1", 53));
    assert!(!can(&e, "bob-laptop", "100.64.0.10", 53));
    assert!(!can(&e, "carol-laptop", "8.8.8.8", 53));
}

#[test]
fn protocols_restrict_rules() {
    let e = engine(
        r#""acls": [
          {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:53"], "proto": "udp"},
          {"action": "accept", "src": ["carol@example.com"], "dst": ["tag:web:*"], "proto": "icmp"},
          {"action": "accept", "src": ["tag:db"], "dst": ["tag:web:80"]}]"#,
    );
    assert!(can_proto(&e, "bob-laptop", "web", 53, QueryProto::Udp));
    assert!(!can_proto(&e, "bob-laptop", "web", 53, QueryProto::Tcp));
    // ICMP (v4 only here: carol has no IPv6).
    assert!(can_proto(&e, "carol-laptop", "web", 0, QueryProto::Icmp));
    assert!(!can_proto(&e, "carol-laptop", "web", 80, QueryProto::Tcp));
    // No proto: TCP, UDP and ICMP (v4 and v6).
    for p in [QueryProto::Tcp, QueryProto::Udp] {
        assert!(can_proto(&e, "db", "web", 80, p));
    }
    assert!(can_proto(&e, "db", "web", 0, QueryProto::Icmp));
    let f = e.filter("web").unwrap();
    assert_eq!(
        f.rules[2].protos.names(),
        vec!["icmp", "tcp", "udp", "ipv6-icmp"]
    );
    // The filter itself enforces the protocol and port.
    let src = "100.64.0.11".parse().unwrap();
    let dst = "100.64.0.10".parse().unwrap();
    assert_eq!(
        f.allows(src, dst, 6, 80),
        Some(RuleId {
            kind: RuleKind::Acl,
            index: 2
        })
    );
    assert_eq!(f.allows(src, dst, 6, 81), None);
    assert_eq!(f.allows(src, dst, 47, 80), None);
}

#[test]
fn grants_open_ip_specs_on_every_destination() {
    let e = engine(
        r#""grants": [
          {"src": ["group:eng"], "dst": ["tag:web", "tag:db"], "ip": ["tcp:443", "udp:53"]},
          {"src": ["carol@example.com"], "dst": ["tag:db"], "ip": ["*"]},
          {"src": ["tag:web"], "dst": ["tag:db"], "ip": ["5432"]},
          {"src": ["*"], "dst": ["tag:web"], "app": {"example.com/cap/dashboard": [{"role": "viewer"}]}}]"#,
    );
    for d in ["web", "db"] {
        assert!(can(&e, "alice-laptop", d, 443));
        assert!(!can_proto(&e, "alice-laptop", d, 443, QueryProto::Udp));
        assert!(can_proto(&e, "alice-laptop", d, 53, QueryProto::Udp));
        assert!(!can(&e, "alice-laptop", d, 53));
    }
    assert!(can_proto(&e, "carol-laptop", "db", 9, QueryProto::Udp));
    assert!(can_proto(&e, "carol-laptop", "db", 0, QueryProto::Icmp));
    assert!(can_proto(&e, "web", "db", 5432, QueryProto::Udp));
    assert!(can_proto(&e, "web", "db", 0, QueryProto::Icmp));
    // App-only grants carry no network access.
    assert!(!can(&e, "carol-laptop", "web", 80));
    assert_eq!(e.policy().app_grants.len(), 1);
}

fn report(sections: &str, nodes: &[Node]) -> gatehouse_policy::TestReport {
    let text = format!("{{ {PREAMBLE} {sections} }}");
    let policy = Arc::new(parse_policy(&text).unwrap());
    run_tests(&policy, nodes).unwrap()
}

#[test]
fn tests_pass_and_fail_with_reasons() {
    let acl = r#""acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:80,443"]},
                          {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}],"#;
    let nodes = parse_inventory(NODES).unwrap();
    let good = format!(
        r#"{acl} "tests": [{{"src": "alice@example.com", "accept": ["tag:web:443", "tag:db:5432"], "deny": ["tag:web:22"]}}]"#
    );
    for inv in [&nodes[..], &[]] {
        let r = report(&good, inv);
        assert!(r.passed(), "{:?}", r.failures);
        assert_eq!(r.assertions, 3);
    }
    // An accept holds only if every member of the group may reach it.
    let bad = format!(
        r#"{acl} "tests": [{{"src": "group:eng", "accept": ["tag:web:443"], "deny": ["tag:db:5432"]}}]"#
    );
    for inv in [&nodes[..], &[]] {
        let r = report(&bad, inv);
        assert_eq!(r.failures.len(), 2, "{:?}", r.failures);
        let acc = &r.failures[0];
        assert_eq!(acc.expect, Expect::Accept);
        assert!(
            acc.reasons.iter().all(|x| x.contains("bob")),
            "{:?}",
            acc.reasons
        );
        assert!(
            acc.reasons[0].contains("opened only to other sources by acls[0]"),
            "{:?}",
            acc.reasons
        );
        let deny = &r.failures[1];
        assert_eq!(deny.expect, Expect::Deny);
        assert!(
            deny.reasons[0].contains("allowed by acls[1]"),
            "{:?}",
            deny.reasons
        );
    }
}

#[test]
fn tests_name_the_missing_port() {
    let r = report(
        r#""acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:web:80"]}],
           "tests": [{"src": "bob@example.com", "accept": ["tag:web:443"]}]"#,
        &[],
    );
    assert_eq!(r.failures.len(), 1);
    assert!(
        r.failures[0].reasons[0].contains("allowed other ports or protocols by acls[0]"),
        "{:?}",
        r.failures[0].reasons
    );
    let r = report(
        r#""tests": [{"src": "bob@example.com", "accept": ["tag:web:443"]}]"#,
        &[],
    );
    assert!(
        r.failures[0].reasons[0].contains("no acl or grant"),
        "{:?}",
        r.failures[0].reasons
    );
}

#[test]
fn tests_default_to_tcp_or_udp_and_honour_proto() {
    let acl = r#""acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["tag:web:53"], "proto": "udp"}],"#;
    let r = report(
        &format!(r#"{acl} "tests": [{{"src": "bob@example.com", "accept": ["tag:web:53"]}}]"#),
        &[],
    );
    assert!(r.passed(), "{:?}", r.failures);
    let r = report(
        &format!(
            r#"{acl} "tests": [{{"src": "bob@example.com", "proto": "tcp", "accept": ["tag:web:53"]}}]"#
        ),
        &[],
    );
    assert!(!r.passed());
    let r = report(
        &format!(
            r#"{acl} "tests": [{{"src": "bob@example.com", "proto": "tcp", "deny": ["tag:web:53"]}}]"#
        ),
        &[],
    );
    assert!(r.passed(), "{:?}", r.failures);
}

#[test]
fn tests_use_every_device_of_the_source() {
    // bob has one device that may, and one that may not, reach db.
    let nodes = parse_inventory(
        r#"nodes:
  - {name: bob-a, user: bob@example.com, addresses: [100.64.0.3]}
  - {name: bob-b, user: bob@example.com, addresses: [100.64.0.30]}
  - {name: db, tags: [tag:db], addresses: [100.64.0.11]}
"#,
    )
    .unwrap();
    let r = report(
        r#""acls": [{"action": "accept", "src": ["100.64.0.3"], "dst": ["tag:db:5432"]}],
           "tests": [{"src": "bob@example.com", "accept": ["tag:db:5432"]}]"#,
        &nodes,
    );
    assert_eq!(r.failures.len(), 1);
    assert!(
        r.failures[0].reasons[0].contains("bob-b"),
        "{:?}",
        r.failures
    );
    // Deny fails as soon as one address can reach.
    let r = report(
        r#""acls": [{"action": "accept", "src": ["100.64.0.3"], "dst": ["tag:db:5432"]}],
           "tests": [{"src": "bob@example.com", "deny": ["tag:db:5432"]}]"#,
        &nodes,
    );
    assert_eq!(r.failures.len(), 1);
    assert!(
        r.failures[0].reasons[0].contains("bob-a"),
        "{:?}",
        r.failures
    );
}

#[test]
fn tests_to_hosts_and_users() {
    let r = report(
        r#""acls": [{"action": "accept", "src": ["tag:web"], "dst": ["printer:631", "bob@example.com:22", "lan:80"]}],
           "tests": [{"src": "tag:web", "accept": ["printer:631", "bob@example.com:22", "nas:80"],
                      "deny": ["printer:22", "carol@example.com:22", "nas:81"]}]"#,
        &[],
    );
    assert!(r.passed(), "{:?}", r.failures);
    assert_eq!(r.assertions, 6);
    let r = report(
        r#""tests": [{"src": "tag:web", "accept": ["nas:80"]}]"#,
        &parse_inventory(NODES).unwrap(),
    );
    assert_eq!(r.failures.len(), 1);
    let text = format!("{{ {PREAMBLE} ");
    let expected_line = text.lines().count() as u32;
    assert_eq!(r.failures[0].line, expected_line);
}

#[test]
fn check_policy_refuses_whole() {
    use gatehouse_policy::{PolicyRefused, check_policy};
    let nodes = parse_inventory(NODES).unwrap();
    let good = format!(
        r#"{{ {PREAMBLE} "acls": [{{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]}}],
             "tests": [{{"src": "bob@example.com", "accept": ["tag:web:443"]}}] }}"#
    );
    assert_eq!(check_policy(&good, &nodes).unwrap().rules.len(), 1);
    let failing = good.replace(
        "\"accept\": [\"tag:web:443\"]",
        "\"accept\": [\"tag:web:22\"]",
    );
    assert!(
        matches!(check_policy(&failing, &nodes), Err(PolicyRefused::TestsFailed(r)) if r.failures.len() == 1)
    );
    let invalid = good.replace("accept\", \"src\"", "deny\", \"src\"");
    assert!(matches!(
        check_policy(&invalid, &nodes),
        Err(PolicyRefused::Invalid(_))
    ));
    // A node's tag that the policy no longer declares leaves the policy
    // valid: the node was tagged under an earlier policy (see tailscale_compat.rs).
    let undeclared = format!(r#"{{ {PREAMBLE} }}"#).replace(
        "\"tag:server\": [\"alice@example.com\"]",
        "\"tag:other\": []",
    );
    assert!(check_policy(&undeclared, &nodes).is_ok());
}

#[test]
fn filters_round_trip_through_json() {
    let e = engine(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:80"], "proto": "tcp"},
                    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:*"]}],
           "grants": [{"src": ["lan"], "dst": ["tag:web"], "ip": ["*"]}]"#,
    );
    let f = e.filter("web").unwrap();
    let text = serde_json::to_string(&f).unwrap();
    let back: gatehouse_policy::NodeFilter = serde_json::from_str(&text).unwrap();
    assert_eq!(back, f);
    assert!(
        serde_json::from_str::<gatehouse_policy::NodeFilter>(&text.replace("acls[1]", "rules[1]"))
            .is_err()
    );
}
