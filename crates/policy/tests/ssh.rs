//! Tailscale SSH: what each device's SSH policy holds for a given `ssh`
//! section, how it changes as devices come and go, and `sshTests`.
//!
//! The expected grants follow what Tailscale's coordination server sends
//! devices for the same rules (principals, the `SSHUsers` map, check before
//! accept, the `localpart:` rules).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_policy::{
    CheckPeriod, Engine, Node, PolicyRefused, SshAction, SshExpect, SshGrant, check_policy,
    first_match, parse_inventory, parse_policy, run_tests,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

const INVENTORY: &str = "nodes:
  - {name: alice-laptop, user: alice@example.com, addresses: [100.64.0.1, 'fd7a:115c:a1e0::1']}
  - {name: alice-desktop, user: alice@example.com, addresses: [100.64.0.2, 'fd7a:115c:a1e0::2']}
  - {name: bob-phone, user: bob@example.org, addresses: [100.64.0.3, 'fd7a:115c:a1e0::3']}
  - {name: carol-tablet, user: carol@example.com, addresses: [100.64.0.4, 'fd7a:115c:a1e0::4']}
  - {name: web, user: alice@example.com, tags: [tag:server], addresses: [100.64.0.10, 'fd7a:115c:a1e0::a']}
  - {name: db, tags: [tag:prod], addresses: [100.64.0.11, 'fd7a:115c:a1e0::b']}
  - {name: ci, tags: [tag:ci, tag:prod], addresses: [100.64.0.12, 'fd7a:115c:a1e0::c']}
";

fn policy_text(ssh: &str) -> String {
    policy_with(ssh, "")
}

fn policy_with(ssh: &str, ssh_tests: &str) -> String {
    format!(
        r#"{{
  "groups": {{"group:dev": ["alice@example.com", "bob@example.org"], "group:empty": []}},
  "tagOwners": {{"tag:server": [], "tag:prod": [], "tag:ci": [], "tag:unused": []}},
  "ssh": [{ssh}],
  "sshTests": [{ssh_tests}],
}}"#
    )
}

fn engine(ssh: &str) -> Engine {
    let policy = parse_policy(&policy_text(ssh)).unwrap_or_else(|e| panic!("{e}\n{ssh}"));
    Engine::new(Arc::new(policy), parse_inventory(INVENTORY).unwrap()).unwrap()
}

/// A grant as one readable line: `sources | users | action`, the sources
/// named by device (every address of each device must be there).
fn show(e: &Engine, g: &SshGrant) -> String {
    let mut names = BTreeSet::new();
    for n in e.nodes() {
        let has: Vec<bool> = n
            .addresses
            .iter()
            .map(|a| g.principals.contains(a))
            .collect();
        if has.iter().any(|h| *h) {
            assert!(
                has.iter().all(|h| *h),
                "{} is a principal by only some addresses",
                n.name
            );
            names.insert(n.name.clone());
        }
    }
    let mut sorted = g.principals.to_vec();
    sorted.sort();
    assert_eq!(sorted[..], g.principals[..], "principals are sorted");
    let action = match g.action {
        SshAction::Accept => "accept".to_string(),
        SshAction::Check {
            period: CheckPeriod::Always,
        } => "check always".to_string(),
        SshAction::Check {
            period: CheckPeriod::Every(d),
        } => format!("check {}s", d.as_secs()),
    };
    format!(
        "{} | {} | {action}",
        names.into_iter().collect::<Vec<_>>().join(","),
        serde_json::to_string(&g.users).unwrap()
    )
}

/// Every node's grants, nodes without any left out.
fn all(e: &Engine) -> BTreeMap<String, Vec<String>> {
    e.nodes()
        .map(|n| {
            let lines = e
                .ssh_rules(&n.name)
                .unwrap()
                .iter()
                .map(|g| show(e, g))
                .collect::<Vec<_>>();
            (n.name.clone(), lines)
        })
        .filter(|(_, l)| !l.is_empty())
        .collect()
}

fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(n, l)| (n.to_string(), l.iter().map(|s| s.to_string()).collect()))
        .collect()
}

const ALICE: &str = "alice-desktop,alice-laptop";
const MEMBERS: &str = "alice-desktop,alice-laptop,bob-phone,carol-tablet";

#[test]
fn autogroup_self_with_root_and_nonroot() {
    for (users, map) in [
        (r#""root""#, r#"{"root":"root"}"#),
        (r#""autogroup:nonroot""#, r#"{"*":"=","root":""}"#),
        (
            r#""root", "autogroup:nonroot""#,
            r#"{"*":"=","root":"root"}"#,
        ),
        (r#""ubuntu""#, r#"{"root":"","ubuntu":"ubuntu"}"#),
        (
            r#""root", "ubuntu", "admin""#,
            r#"{"admin":"admin","root":"root","ubuntu":"ubuntu"}"#,
        ),
    ] {
        let e = engine(&format!(
            r#"{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": [{users}]}}"#
        ));
        // Each user's devices, from that user's devices only; tagged
        // devices get nothing (they have no user).
        let a = format!("{ALICE} | {map} | accept");
        let b = format!("bob-phone | {map} | accept");
        let c = format!("carol-tablet | {map} | accept");
        assert_eq!(
            all(&e),
            expect(&[
                ("alice-laptop", &[a.as_str()]),
                ("alice-desktop", &[a.as_str()]),
                ("bob-phone", &[b.as_str()]),
                ("carol-tablet", &[c.as_str()]),
            ]),
            "{users}"
        );
    }
}

#[test]
fn autogroup_self_takes_only_the_rules_users() {
    // A group's members reach their own devices; others get nothing.
    let e = engine(
        r#"{"action": "accept", "src": ["group:dev"], "dst": ["autogroup:self"], "users": ["root"]}"#,
    );
    let a = format!(r#"{ALICE} | {{"root":"root"}} | accept"#);
    assert_eq!(
        all(&e),
        expect(&[
            ("alice-laptop", &[a.as_str()]),
            ("alice-desktop", &[a.as_str()]),
            ("bob-phone", &[r#"bob-phone | {"root":"root"} | accept"#]),
        ])
    );
}

#[test]
fn sources_towards_tags() {
    let case = |src: &str, users: &str| {
        engine(&format!(
            r#"{{"action": "accept", "src": [{src}], "dst": ["tag:server"], "users": [{users}]}}"#
        ))
    };
    let members = format!(r#"{MEMBERS} | {{"root":"","ubuntu":"ubuntu"}} | accept"#);
    assert_eq!(
        all(&case(r#""autogroup:member""#, r#""ubuntu""#)),
        expect(&[("web", &[members.as_str()])])
    );
    assert_eq!(
        all(&case(r#""bob@example.org""#, r#""root""#)),
        expect(&[("web", &[r#"bob-phone | {"root":"root"} | accept"#])])
    );
    let dev = format!(r#"{ALICE},bob-phone | {{"root":"root"}} | accept"#);
    assert_eq!(
        all(&case(r#""group:dev""#, r#""root""#)),
        expect(&[("web", &[dev.as_str()])])
    );
    assert_eq!(
        all(&case(r#""tag:prod""#, r#""root""#)),
        expect(&[("web", &[r#"ci,db | {"root":"root"} | accept"#])])
    );
    // autogroup:tagged includes the destination itself.
    assert_eq!(
        all(&case(r#""autogroup:tagged""#, r#""root""#)),
        expect(&[("web", &[r#"ci,db,web | {"root":"root"} | accept"#])])
    );
    // An empty group selects nothing: no rule at all.
    assert!(all(&case(r#""group:empty""#, r#""root""#)).is_empty());
}

#[test]
fn destinations() {
    let line = r#"alice-desktop,alice-laptop,bob-phone,carol-tablet | {"root":"root"} | accept"#;
    let e = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server", "tag:prod"], "users": ["root"]}"#,
    );
    assert_eq!(
        all(&e),
        expect(&[("web", &[line]), ("db", &[line]), ("ci", &[line])])
    );
    let e = engine(
        r#"{"action": "accept", "src": ["tag:server"], "dst": ["autogroup:tagged"], "users": ["root"]}"#,
    );
    let web = r#"web | {"root":"root"} | accept"#;
    assert_eq!(
        all(&e),
        expect(&[("web", &[web]), ("db", &[web]), ("ci", &[web])])
    );
    // A user as destination: that user's own untagged devices, from them.
    let e = engine(
        r#"{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com"], "users": ["root"]}"#,
    );
    let a = format!(r#"{ALICE} | {{"root":"root"}} | accept"#);
    assert_eq!(
        all(&e),
        expect(&[
            ("alice-laptop", &[a.as_str()]),
            ("alice-desktop", &[a.as_str()])
        ])
    );
    // A tag no device carries reaches nothing.
    assert!(all(&engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:unused"], "users": ["root"]}"#
    ))
    .is_empty());
}

#[test]
fn check_rules_come_first() {
    let rule = |action: &str, extra: &str| {
        format!(
            r#"{{"action": {action:?}, "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["root"]{extra}}}"#
        )
    };
    for rules in [
        format!("{}, {}", rule("accept", ""), rule("check", "")),
        format!("{}, {}", rule("check", ""), rule("accept", "")),
    ] {
        assert_eq!(
            all(&engine(&rules)),
            expect(&[(
                "web",
                &[
                    r#"bob-phone | {"root":"root"} | check 43200s"#,
                    r#"bob-phone | {"root":"root"} | accept"#
                ]
            )])
        );
    }
    let e = engine(&format!(
        "{}, {}, {}",
        rule("accept", ""),
        rule("check", r#", "checkPeriod": "always""#),
        rule("check", r#", "checkPeriod": "1h""#)
    ));
    let rules = e.ssh_rules("web").unwrap();
    assert_eq!(
        rules.iter().map(|g| (g.rule, g.action)).collect::<Vec<_>>(),
        vec![
            (
                1,
                SshAction::Check {
                    period: CheckPeriod::Always
                }
            ),
            (
                2,
                SshAction::Check {
                    period: CheckPeriod::Every(Duration::from_secs(3600))
                }
            ),
            (0, SshAction::Accept),
        ]
    );
}

#[test]
fn rules_stay_apart() {
    // Two rules with the same sources and destinations are two grants, each
    // with its own users and acceptEnv, in policy order.
    let e = engine(
        r#"{"action": "accept", "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["root"], "acceptEnv": ["TERM"]},
           {"action": "accept", "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["ubuntu"], "acceptEnv": ["LC_*", "GIT_?"]}"#,
    );
    let g = e.ssh_rules("web").unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(
        (g[0].rule, g[0].accept_env.clone()),
        (0, vec!["TERM".to_string()])
    );
    assert_eq!(
        (g[1].rule, g[1].accept_env.clone()),
        (1, vec!["LC_*".to_string(), "GIT_?".to_string()])
    );
    assert_eq!(
        show(&e, &g[1]),
        r#"bob-phone | {"root":"","ubuntu":"ubuntu"} | accept"#
    );
}

#[test]
fn localpart_maps_each_user_to_their_login() {
    let e = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["localpart:*@example.com"]}"#,
    );
    let a_root = format!(r#"{ALICE} | {{"root":""}} | accept"#);
    let a_lp = format!(r#"{ALICE} | {{"alice":"alice"}} | accept"#);
    let b_root = r#"bob-phone | {"root":""} | accept"#;
    let c_root = r#"carol-tablet | {"root":""} | accept"#;
    let c_lp = r#"carol-tablet | {"carol":"carol"} | accept"#;
    assert_eq!(
        all(&e),
        expect(&[
            // Per source user: the rule's common map, then the local part
            // for users of the domain (bob is not).
            (
                "web",
                &[a_root.as_str(), a_lp.as_str(), b_root, c_root, c_lp]
            ),
            // Tailscale also hands each source device the rule, from its
            // own user's devices.
            ("alice-laptop", &[a_root.as_str(), a_lp.as_str()]),
            ("alice-desktop", &[a_root.as_str(), a_lp.as_str()]),
            ("bob-phone", &[b_root]),
            ("carol-tablet", &[c_root, c_lp]),
        ])
    );
    // With other users listed, the common map carries them.
    let e = engine(
        r#"{"action": "accept", "src": ["carol@example.com"], "dst": ["tag:server"], "users": ["localpart:*@example.com", "root", "autogroup:nonroot"]}"#,
    );
    let common = r#"carol-tablet | {"*":"=","root":"root"} | accept"#;
    assert_eq!(
        all(&e),
        expect(&[("web", &[common, c_lp]), ("carol-tablet", &[common, c_lp])])
    );
}

#[test]
fn localpart_with_tags_and_self() {
    // Tagged sources have no login: only the common map, and each tagged
    // source device gets the rule from itself.
    let e = engine(
        r#"{"action": "accept", "src": ["tag:prod"], "dst": ["tag:server"], "users": ["localpart:*@example.com"]}"#,
    );
    assert_eq!(
        all(&e),
        expect(&[
            ("web", &[r#"ci,db | {"root":""} | accept"#]),
            ("db", &[r#"db | {"root":""} | accept"#]),
            ("ci", &[r#"ci | {"root":""} | accept"#]),
        ])
    );
    let e = engine(
        r#"{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["localpart:*@example.com", "root"]}"#,
    );
    let a_root = format!(r#"{ALICE} | {{"root":"root"}} | check 43200s"#);
    let a_lp = format!(r#"{ALICE} | {{"alice":"alice"}} | check 43200s"#);
    assert_eq!(
        all(&e),
        expect(&[
            ("alice-laptop", &[a_root.as_str(), a_lp.as_str()]),
            ("alice-desktop", &[a_root.as_str(), a_lp.as_str()]),
            (
                "bob-phone",
                &[r#"bob-phone | {"root":"root"} | check 43200s"#]
            ),
            (
                "carol-tablet",
                &[
                    r#"carol-tablet | {"root":"root"} | check 43200s"#,
                    r#"carol-tablet | {"carol":"carol"} | check 43200s"#
                ]
            ),
        ])
    );
}

#[test]
fn several_rules_combine() {
    // Users reach their own devices as root and the server as non-root.
    let e = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]},
           {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]}"#,
    );
    let a = format!(r#"{ALICE} | {{"root":"root"}} | accept"#);
    let web = format!(r#"{MEMBERS} | {{"*":"=","root":""}} | accept"#);
    assert_eq!(
        all(&e),
        expect(&[
            ("web", &[web.as_str()]),
            ("alice-laptop", &[a.as_str()]),
            ("alice-desktop", &[a.as_str()]),
            ("bob-phone", &[r#"bob-phone | {"root":"root"} | accept"#]),
            (
                "carol-tablet",
                &[r#"carol-tablet | {"root":"root"} | accept"#]
            ),
        ])
    );
}

#[test]
fn no_ssh_section_means_no_rules() {
    let policy =
        parse_policy(r#"{"tagOwners": {"tag:server": [], "tag:prod": [], "tag:ci": []}}"#).unwrap();
    let e = Engine::new(Arc::new(policy), parse_inventory(INVENTORY).unwrap()).unwrap();
    assert!(e.ssh_rules("web").unwrap().is_empty());
    assert!(e.ssh_rules("nope").is_err());
}

#[test]
fn login_mapping_follows_tailscale_ssh() {
    let a: IpAddr = "100.64.0.1".parse().unwrap();
    let other: IpAddr = "100.64.0.9".parse().unwrap();
    let grant = |users: &[(&str, &str)]| SshGrant {
        rule: 0,
        principals: vec![a].into(),
        users: users
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        action: SshAction::Accept,
        accept_env: Vec::new(),
    };
    let nonroot = grant(&[("*", "="), ("root", "")]);
    assert_eq!(nonroot.local_user(a, "alice"), Some("alice".into()));
    assert_eq!(nonroot.local_user(a, "root"), None);
    assert_eq!(nonroot.local_user(other, "alice"), None);
    // "=" never maps root, even without a root entry.
    assert_eq!(grant(&[("*", "=")]).local_user(a, "root"), None);
    let root = grant(&[("root", "root")]);
    assert_eq!(root.local_user(a, "root"), Some("root".into()));
    assert_eq!(root.local_user(a, "alice"), None);
    assert_eq!(
        grant(&[("ubuntu", "ubuntu"), ("root", "")]).local_user(a, "ubuntu"),
        Some("ubuntu".into())
    );
    assert_eq!(root.local_user(a, ""), None);
    // First match wins.
    let grants = [grant(&[("root", "")]), root.clone()];
    assert_eq!(first_match(&grants, a, "root"), Some(&grants[1]));
    assert_eq!(first_match(&grants, a, "alice"), None);
}

#[test]
fn grants_serialise_as_plain_data() {
    let e = engine(
        r#"{"action": "check", "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["root"], "acceptEnv": ["TERM"]},
           {"action": "check", "checkPeriod": "always", "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["root"]},
           {"action": "accept", "src": ["bob@example.org"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]}"#,
    );
    let g = e.ssh_rules("web").unwrap();
    let json = serde_json::to_value(&g).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"rule": 0, "principals": ["100.64.0.3", "fd7a:115c:a1e0::3"], "users": {"root": "root"},
             "action": "check", "period": {"every": {"secs": 43200, "nanos": 0}}, "accept_env": ["TERM"]},
            {"rule": 1, "principals": ["100.64.0.3", "fd7a:115c:a1e0::3"], "users": {"root": "root"},
             "action": "check", "period": "always"},
            {"rule": 2, "principals": ["100.64.0.3", "fd7a:115c:a1e0::3"], "users": {"*": "=", "root": ""},
             "action": "accept"},
        ])
    );
    let back: Vec<SshGrant> = serde_json::from_value(json).unwrap();
    assert_eq!(back, g);
}

#[test]
fn compilation_ignores_insertion_order() {
    let ssh = r#"{"action": "accept", "src": ["autogroup:member", "tag:prod"], "dst": ["tag:server", "autogroup:tagged"], "users": ["localpart:*@example.com", "ubuntu"]},
                 {"action": "check", "src": ["group:dev"], "dst": ["autogroup:self"], "users": ["root"]}"#;
    let policy = Arc::new(parse_policy(&policy_text(ssh)).unwrap());
    let nodes = parse_inventory(INVENTORY).unwrap();
    let mut reversed = nodes.clone();
    reversed.reverse();
    let a = Engine::new(Arc::clone(&policy), nodes.clone()).unwrap();
    let b = Engine::new(policy, reversed).unwrap();
    for n in &nodes {
        assert_eq!(a.ssh_rules(&n.name).unwrap(), b.ssh_rules(&n.name).unwrap());
    }
}

// ---- change tracking ----

fn node(name: &str, user: Option<&str>, tags: &[&str], last: u8) -> Node {
    Node {
        name: name.into(),
        user: user.map(Into::into),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(100, 64, 1, last))],
        routes: Vec::new(),
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn inventory_changes_name_the_devices_whose_ssh_policy_changed() {
    let mut e = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]},
           {"action": "accept", "src": ["group:dev"], "dst": ["tag:server"], "users": ["ubuntu"]},
           {"action": "check", "src": ["tag:ci"], "dst": ["tag:prod"], "users": ["root"]}"#,
    );
    // A new device of alice: her devices (autogroup:self) and the server
    // (group:dev), not bob's or carol's devices.
    let cs = e
        .upsert_node(node("alice-new", Some("alice@example.com"), &[], 1))
        .unwrap();
    assert_eq!(
        cs.ssh,
        names(&["alice-desktop", "alice-laptop", "alice-new", "web"])
    );
    // carol is no member of group:dev: only her own devices.
    let cs = e
        .upsert_node(node("carol-new", Some("carol@example.com"), &[], 2))
        .unwrap();
    assert_eq!(cs.ssh, names(&["carol-new", "carol-tablet"]));
    // Tagging alice's new device takes it out of her devices and makes it a
    // tag:ci source towards the tag:prod devices.
    let cs = e
        .upsert_node(node("alice-new", Some("alice@example.com"), &["tag:ci"], 1))
        .unwrap();
    assert_eq!(
        cs.ssh,
        names(&[
            "alice-desktop",
            "alice-laptop",
            "alice-new",
            "ci",
            "db",
            "web"
        ])
    );
    // Removing it: the tag:prod devices; it is gone itself.
    let cs = e.remove_node("alice-new").unwrap();
    assert_eq!(cs.ssh, names(&["ci", "db"]));
    // A device with nothing to do with SSH changes nothing.
    let cs = e.upsert_node(node("lb", None, &["tag:server"], 3)).unwrap();
    assert_eq!(cs.ssh, names(&["lb"]), "a new destination gets rules");
    let cs = e.upsert_node(node("lb", None, &["tag:server"], 4)).unwrap();
    assert!(cs.ssh.is_empty(), "an address change of a destination only");
}

#[test]
fn policy_changes_name_the_devices_whose_ssh_policy_changed() {
    let before = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}"#,
    );
    let after = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]},
           {"action": "accept", "src": ["tag:prod"], "dst": ["tag:ci"], "users": ["root"]}"#,
    );
    assert_eq!(before.ssh_changes(&after), names(&["ci"]));
    assert!(before.ssh_changes(&before).is_empty());
    let nonroot = engine(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}"#,
    );
    assert_eq!(
        before.ssh_changes(&nonroot),
        names(&["alice-desktop", "alice-laptop", "bob-phone", "carol-tablet"])
    );
}

const USERS: &[&str] = &["u0@a.com", "u1@a.com", "u2@b.org"];
const TAGS: &[&str] = &["tag:t0", "tag:t1", "tag:t2"];
const SRCS: &[&str] = &[
    "u0@a.com",
    "u2@b.org",
    "group:g0",
    "group:g1",
    "tag:t0",
    "tag:t1",
    "autogroup:member",
    "autogroup:tagged",
];
const USER_SRCS: &[&str] = &["u0@a.com", "group:g0", "autogroup:member"];
const DSTS: &[&str] = &["tag:t0", "tag:t1", "tag:t2", "autogroup:tagged"];
const SSH_USERS: &[&str] = &["root", "autogroup:nonroot", "ubuntu", "localpart:*@a.com"];

#[derive(Debug, Clone)]
struct RuleSpec {
    check: bool,
    src: Vec<usize>,
    dst: Vec<usize>,
    users: Vec<usize>,
    own: bool,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        any::<bool>(),
        prop::collection::vec(0usize..64, 1..3),
        prop::collection::vec(0usize..64, 1..3),
        prop::collection::vec(0usize..64, 1..3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(check, src, dst, users, own)| RuleSpec {
            check,
            src,
            dst,
            users,
            own,
        })
}

fn random_policy(rules: &[RuleSpec]) -> String {
    let q = |list: &[&str], idx: &[usize]| {
        idx.iter()
            .map(|i| format!("{:?}", list[i % list.len()]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ssh: Vec<String> = rules
        .iter()
        .map(|r| {
            let (src, dst) = if r.own {
                (q(USER_SRCS, &r.src), r#""autogroup:self""#.to_string())
            } else {
                (q(SRCS, &r.src), q(DSTS, &r.dst))
            };
            format!(
                r#"{{"action": {:?}, "src": [{src}], "dst": [{dst}], "users": [{}]}}"#,
                if r.check { "check" } else { "accept" },
                q(SSH_USERS, &r.users)
            )
        })
        .collect();
    format!(
        r#"{{"groups": {{"group:g0": ["u0@a.com", "u1@a.com"], "group:g1": ["u2@b.org"]}},
            "tagOwners": {{"tag:t0": [], "tag:t1": [], "tag:t2": []}},
            "ssh": [{}]}}"#,
        ssh.join(",")
    )
}

#[derive(Debug, Clone)]
struct Spec {
    slot: u8,
    identity: u8,
}

fn make(s: &Spec) -> Node {
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
    Node {
        name: format!("n{}", s.slot),
        user,
        tags,
        addresses: vec![
            IpAddr::V4(Ipv4Addr::new(100, 64, 0, s.slot)),
            IpAddr::V6(Ipv6Addr::new(
                0xfd7a,
                0x115c,
                0xa1e0,
                0,
                0,
                0,
                0,
                u16::from(s.slot),
            )),
        ],
        routes: Vec::new(),
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..10, 0u8..(USERS.len() + 2 * TAGS.len()) as u8)
        .prop_map(|(slot, identity)| Spec { slot, identity })
}

#[derive(Debug, Clone)]
enum Op {
    Upsert(Spec),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![3 => spec().prop_map(Op::Upsert), 1 => (0u8..10).prop_map(Op::Remove)]
}

fn ssh_snapshot(e: &Engine) -> BTreeMap<String, Vec<SshGrant>> {
    e.nodes()
        .map(|n| (n.name.clone(), e.ssh_rules(&n.name).unwrap()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Kept up to date one node at a time, the SSH policies equal those of
    /// a fresh compilation, and the change set names exactly the devices
    /// whose SSH policy changed.
    #[test]
    fn ssh_changes_are_exact(
        rules in prop::collection::vec(rule_spec(), 1..6),
        initial in prop::collection::vec(spec(), 0..8),
        ops in prop::collection::vec(op(), 1..8),
    ) {
        let policy = Arc::new(parse_policy(&random_policy(&rules)).unwrap());
        let mut nodes: BTreeMap<String, Node> = initial.iter().map(|s| { let n = make(s); (n.name.clone(), n) }).collect();
        let mut inc = Engine::new(Arc::clone(&policy), nodes.values().cloned().collect()).unwrap();
        for op in ops {
            let before = ssh_snapshot(&inc);
            let cs = match op {
                Op::Upsert(s) => {
                    let n = make(&s);
                    nodes.insert(n.name.clone(), n.clone());
                    inc.upsert_node(n).unwrap()
                }
                Op::Remove(slot) => {
                    let name = format!("n{slot}");
                    if nodes.remove(&name).is_none() {
                        continue;
                    }
                    inc.remove_node(&name).unwrap()
                }
            };
            let after = ssh_snapshot(&inc);
            let full = Engine::new(Arc::clone(&policy), nodes.values().cloned().collect()).unwrap();
            prop_assert_eq!(&after, &ssh_snapshot(&full));
            let changed: BTreeSet<String> = after
                .iter()
                .filter(|(name, g)| before.get(*name).map_or(!g.is_empty(), |b| b != *g))
                .map(|(name, _)| name.clone())
                .collect();
            prop_assert_eq!(&cs.ssh, &changed);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the rules, a user-owned device admits sessions only from
    /// its own user's devices.
    #[test]
    fn user_devices_admit_only_their_user(
        rules in prop::collection::vec(rule_spec(), 1..6),
        initial in prop::collection::vec(spec(), 1..10),
    ) {
        let policy = Arc::new(parse_policy(&random_policy(&rules)).unwrap());
        let nodes: BTreeMap<String, Node> = initial.iter().map(|s| { let n = make(s); (n.name.clone(), n) }).collect();
        let e = Engine::new(policy, nodes.values().cloned().collect()).unwrap();
        for n in nodes.values() {
            let Some(user) = n.identity_user() else { continue };
            let own: BTreeSet<IpAddr> = nodes
                .values()
                .filter(|m| m.identity_user() == Some(user))
                .flat_map(|m| m.addresses.clone())
                .collect();
            for g in e.ssh_rules(&n.name).unwrap() {
                prop_assert!(g.principals.iter().all(|a| own.contains(a)), "{} admits {:?}", n.name, g.principals);
            }
        }
    }
}

// ---- sshTests ----

fn report(ssh: &str, tests: &str, nodes: &[Node]) -> gatehouse_policy::TestReport {
    let text = policy_with(ssh, tests);
    let policy = Arc::new(parse_policy(&text).unwrap_or_else(|e| panic!("{e}\n{text}")));
    run_tests(&policy, nodes).unwrap()
}

const RULES: &str = r#"
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root", "autogroup:nonroot"]},
    {"action": "check", "src": ["group:dev"], "dst": ["tag:server"], "users": ["root"]},
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["tag:prod"], "users": ["deploy"]}"#;

/// sshTests naming identities only: they hold with or without devices.
const IDENTITY_TESTS: &str = r#"
    {"src": "alice@example.com", "dst": ["autogroup:self", "alice@example.com"], "accept": ["root", "alice"]},
    {"src": "bob@example.org", "dst": ["tag:server"], "check": ["root"], "accept": ["bob", "root"], "deny": []},
    {"src": "group:dev", "dst": ["tag:server"], "accept": ["ubuntu"]},
    {"src": "carol@example.com", "dst": ["tag:server", "alice@example.com"], "deny": ["root", "carol"]},
    {"src": "tag:ci", "dst": ["tag:prod"], "accept": ["deploy"], "deny": ["root"]},
    {"src": "bob@example.org", "dst": ["alice@example.com"], "deny": ["root", "bob"]}"#;

#[test]
fn ssh_tests_pass() {
    let nodes = parse_inventory(INVENTORY).unwrap();
    let tests = format!(
        r#"{IDENTITY_TESTS},
        {{"src": "100.64.0.12", "dst": ["100.64.0.11"], "accept": ["deploy"]}},
        {{"src": "carol@example.com", "dst": ["100.64.0.3", "autogroup:tagged"], "deny": ["root"]}}"#
    );
    let r = report(RULES, &tests, &nodes);
    assert!(r.passed(), "{:#?}", r.ssh_failures);
    assert_eq!(r.assertions, 2 * 2 + 3 + 1 + 2 * 2 + 2 + 2 + 1 + 2);
    // Without an inventory, representative devices stand in.
    let r = report(RULES, IDENTITY_TESTS, &[]);
    assert!(r.passed(), "{:#?}", r.ssh_failures);
    assert_eq!(r.assertions, 2 * 2 + 3 + 1 + 2 * 2 + 2 + 2);
}

#[test]
fn ssh_tests_fail_with_reasons() {
    let nodes = parse_inventory(INVENTORY).unwrap();
    let r = report(
        RULES,
        r#"{"src": "bob@example.org", "dst": ["tag:server"], "check": ["ubuntu"], "accept": ["mallory"], "deny": ["root"]},
           {"src": "carol@example.com", "dst": ["tag:server"], "accept": ["root"]},
           {"src": "alice@example.com", "dst": ["tag:prod"], "accept": ["deploy"]},
           {"src": "carol@example.com", "dst": ["autogroup:tagged"], "deny": ["deploy", "root"]}"#,
        &nodes,
    );
    let got: Vec<(usize, SshExpect, &str, &str)> = r
        .ssh_failures
        .iter()
        .map(|f| (f.test, f.expect, f.user.as_str(), f.dst.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, SshExpect::Deny, "root", "tag:server"),
            (0, SshExpect::Check, "ubuntu", "tag:server"),
            (1, SshExpect::Accept, "root", "tag:server"),
            (2, SshExpect::Accept, "deploy", "tag:prod"),
        ]
    );
    assert_eq!(r.assertions, 3 + 1 + 1 + 2);
    assert!(!r.passed());
    assert_eq!(r.failed(), 4);
    let f = &r.ssh_failures;
    // One reason per source address (bob's phone has two).
    assert_eq!(f[0].reasons.len(), 2);
    assert!(
        f[0].reasons[0].contains("bob-phone (bob@example.org) (100.64.0.3) can log in to web (tag:server) as \"root\", allowed by ssh[1] (line 6)"),
        "{:?}",
        f[0].reasons
    );
    assert!(
        f[1].reasons[0].contains("without a check, by ssh[2]"),
        "{:?}",
        f[1].reasons
    );
    assert!(
        f[2].reasons[0].contains("cannot log in to web (tag:server) as \"root\": \"root\" is allowed only from other sources by ssh[1]"),
        "{:?}",
        f[2].reasons
    );
    // tag:prod has two devices; alice's two devices (two addresses each)
    // reach neither as deploy.
    assert_eq!(f[3].reasons.len(), 8);
    assert!(
        f[3].reasons
            .iter()
            .any(|r| r.contains("to ci (tag:ci,tag:prod)"))
    );
    // "mallory" is not root: autogroup:nonroot admits any other login.
    assert!(!got.iter().any(|g| g.2 == "mallory"));
}

#[test]
fn failing_ssh_tests_refuse_the_policy() {
    let nodes = parse_inventory(INVENTORY).unwrap();
    let text = policy_with(
        RULES,
        r#"{"src": "carol@example.com", "dst": ["tag:server"], "accept": ["root"]}"#,
    );
    match check_policy(&text, &nodes) {
        Err(PolicyRefused::TestsFailed(r)) => {
            assert_eq!(r.failed(), 1);
            assert!(
                PolicyRefused::TestsFailed(r)
                    .to_string()
                    .contains("1 of 1 policy test assertions failed")
            );
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    let ok = text.replace("\"accept\": [\"root\"]", "\"deny\": [\"root\"]");
    assert!(check_policy(&ok, &nodes).is_ok());
}

#[test]
fn ssh_tests_need_their_destinations() {
    let r = report(
        RULES,
        r#"{"src": "tag:ci", "dst": ["autogroup:self", "100.64.9.9"], "deny": ["root"]}"#,
        &parse_inventory(INVENTORY).unwrap(),
    );
    let reasons: Vec<&str> = r
        .ssh_failures
        .iter()
        .flat_map(|f| f.reasons.iter().map(String::as_str))
        .collect();
    assert_eq!(
        reasons,
        vec![
            "\"autogroup:self\" resolved to no devices",
            "\"100.64.9.9\" resolved to no devices"
        ]
    );
}
