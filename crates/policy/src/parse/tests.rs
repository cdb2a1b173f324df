//! Validation cases, written from the semantics of Tailscale's policy file.

use super::*;

/// A minimal valid preamble: groups, hosts and tags the cases refer to.
fn with(sections: &str) -> String {
    format!(
        r#"{{
  "groups": {{"group:eng": ["alice@example.com", "bob@example.com"], "group:empty": []}},
  "hosts": {{"db": "100.64.0.50", "corp": "10.0.0.0/8", "v6host": "fd7a:115c:a1e0::99"}},
  "tagOwners": {{"tag:web": ["group:eng"], "tag:k8s": ["tag:k8s-operator"], "tag:k8s-operator": []}},
  {sections}
}}"#
    )
}

fn ok(sections: &str) -> Policy {
    match parse_policy(&with(sections)) {
        Ok(p) => p,
        Err(e) => panic!("unexpected error: {e}\n{sections}"),
    }
}

/// Asserts the policy is refused with an error at `path` mentioning `needle`.
fn refused(sections: &str, path: &str, needle: &str) -> PolicyError {
    let e = parse_policy(&with(sections)).expect_err(sections);
    assert_eq!(e.path, path, "wrong path for: {e}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
    e
}

fn acl(src: &str, dst: &str) -> String {
    format!(r#""acls": [{{"action": "accept", "src": [{src}], "dst": [{dst}]}}]"#)
}

#[test]
fn accepts_a_full_policy() {
    let p = ok(r#"
      "acls": [
        {"action": "accept", "src": ["group:eng", "tag:web"], "dst": ["tag:web:80,443", "db:5432"]},
        {"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "udp"},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*", "autogroup:internet:*"]},
        {"action": "accept", "src": ["100.64.0.0/10"], "dst": ["[fd7a:115c:a1e0::1]:22", "fd7a:115c:a1e0::/48:8000-8100"]},
      ],
      "grants": [{"src": ["autogroup:tagged"], "dst": ["corp"], "ip": ["tcp:443", "icmp:*", "8080"], "app": {"example.com/cap/admin": [{"level": 3}]}}],
      "tests": [{"src": "alice@example.com", "accept": ["tag:web:443"], "deny": ["db:22"]}],
      "ssh": [], "nodeAttrs": [],
    "#);
    assert_eq!(p.rules.len(), 5);
    assert_eq!(p.app_grants.len(), 1);
    assert_eq!(p.tests.len(), 1);
    let r0 = &p.rules[0];
    assert_eq!(
        r0.src,
        vec![
            Target::Group("group:eng".into()),
            Target::Tag("tag:web".into())
        ]
    );
    assert_eq!(
        r0.dst[0].ports,
        vec![PortRange::single(80), PortRange::single(443)]
    );
    assert_eq!(
        r0.dst[1].target,
        Target::Host("db".into(), "100.64.0.50/32".parse().unwrap())
    );
    assert_eq!(r0.dst[0].protos, ProtoSet::default_set());
    assert_eq!(p.rules[1].dst[0].protos, ProtoSet::of(&[17]));
    assert_eq!(
        p.rules[3].dst[0].target,
        Target::Cidr("fd7a:115c:a1e0::1/128".parse().unwrap())
    );
    assert_eq!(
        p.rules[3].dst[1].target,
        Target::Cidr("fd7a:115c:a1e0::/48".parse().unwrap())
    );
    // Each grant ip entry applies to every dst.
    assert_eq!(p.rules[4].dst.len(), 3);
    assert_eq!(p.rules[4].dst[0].protos, ProtoSet::of(&[6]));
    assert_eq!(p.rules[4].dst[2].protos, ProtoSet::default_set());
    assert_eq!(
        p.app_grants[0].app["example.com/cap/admin"],
        vec![serde_json::json!({"level": 3})]
    );
    assert_eq!(p.tag_owners["tag:k8s-operator"], vec![]);
    assert_eq!(
        p.tag_owners["tag:k8s"],
        vec![Owner::Tag("tag:k8s-operator".into())]
    );
}

#[test]
fn legacy_fields_and_case_insensitive_keys() {
    let p = parse_policy(
        r#"{"ACLs": [{"Action": "accept", "Users": ["a@x.com"], "Ports": ["*:22"]}],
            "Tests": [{"user": "a@x.com", "allow": ["100.64.0.1:22"]}]}"#,
    )
    .unwrap();
    assert_eq!(p.rules[0].src, vec![Target::User("a@x.com".into())]);
    assert_eq!(p.tests[0].accept.len(), 1);
}

#[test]
fn empty_policy_is_valid_and_denies_everything() {
    let p = parse_policy("{}").unwrap();
    assert!(p.rules.is_empty());
    let p = parse_policy("// nothing\n{ /* at all */ }").unwrap();
    assert!(p.rules.is_empty());
}

#[test]
fn syntax_errors_carry_positions() {
    let e = parse_policy("{\n  \"acls\": [\n    {\"action\": \"accept\",,}\n  ]\n}").unwrap_err();
    assert_eq!(e.pos, Pos { line: 3, col: 25 });
    assert!(e.to_string().starts_with("line 3, column 25:"), "{e}");
    let e = parse_policy("[]").unwrap_err();
    assert!(e.message.contains("expected an object"));
}

#[test]
fn error_display_names_path_position_and_value() {
    let e = refused(
        &acl(r#""a@x.com""#, r#""tag:web:http""#),
        "acls[0].dst[0]",
        "named port",
    );
    let text = e.to_string();
    assert!(
        text.starts_with("acls[0].dst[0] (line 5, column "),
        "{text}"
    );
    assert!(text.contains("\"http\""), "{text}");
}

#[test]
fn unknown_keys_are_refused() {
    refused(r#""aclz": []"#, "aclz", "unknown section");
    refused(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "dsts": []}]"#,
        "acls[0].dsts",
        "unknown field",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "dst": ["tag:web:80"]}]"#,
        "tests[0].dst",
        "unknown field",
    );
    // Keys starting with '#' are comments.
    ok(
        r##""#note": "x", "acls": [{"#why": "x", "action": "accept", "src": ["*"], "dst": ["*:*"]}]"##,
    );
}

#[test]
fn actions_other_than_accept_are_refused() {
    refused(
        r#""acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]"#,
        "acls[0].action",
        "action=\"deny\" is not supported",
    );
    refused(
        r#""acls": [{"action": "drop", "src": ["*"], "dst": ["*:*"]}]"#,
        "acls[0].action",
        "not supported",
    );
    refused(
        r#""acls": [{"src": ["*"], "dst": ["*:*"]}]"#,
        "acls[0]",
        "missing required field \"action\"",
    );
    refused(
        r#""acls": [{"action": "accept", "dst": ["*:*"]}]"#,
        "acls[0]",
        "\"src\"",
    );
    refused(
        r#""acls": [{"action": "accept", "src": ["*"]}]"#,
        "acls[0]",
        "\"dst\"",
    );
    refused(
        r#""acls": [{"action": "accept", "src": [], "dst": ["*:*"]}]"#,
        "acls[0].src",
        "at least one",
    );
}

#[test]
fn destination_port_forms() {
    let p = ok(&acl(
        r#""*""#,
        r#""tag:web:*", "tag:web:22", "tag:web:80,443", "tag:web:8000-8100", "tag:web:22,8000-8100""#,
    ));
    let ports: Vec<String> = p.rules[0]
        .dst
        .iter()
        .map(|d| crate::ports::format_ports(&d.ports))
        .collect();
    assert_eq!(
        ports,
        vec!["*", "22", "80,443", "8000-8100", "22,8000-8100"]
    );
}

#[test]
fn destination_errors() {
    refused(
        &acl(r#""*""#, r#""tag:web:ssh""#),
        "acls[0].dst[0]",
        "named port \"ssh\"",
    );
    refused(
        &acl(r#""*""#, r#""tag:web""#),
        "acls[0].dst[0]",
        "missing port",
    );
    refused(&acl(r#""*""#, r#""*""#), "acls[0].dst[0]", "target:ports");
    refused(
        &acl(r#""*""#, r#""tag:web:0""#),
        "acls[0].dst[0]",
        "first port must be >0",
    );
    refused(
        &acl(r#""*""#, r#""tag:web:70000""#),
        "acls[0].dst[0]",
        "invalid port",
    );
    refused(
        &acl(r#""*""#, r#""tag:web:90-80""#),
        "acls[0].dst[0]",
        "first port is greater",
    );
    refused(
        &acl(r#""*""#, r#""tag:web:80,""#),
        "acls[0].dst[0]",
        "empty port",
    );
    refused(
        &acl(r#""*""#, r#""[100.64.0.1]:80""#),
        "acls[0].dst[0]",
        "brackets",
    );
    refused(
        &acl(r#""*""#, r#""nosuchhost:80""#),
        "acls[0].dst[0]",
        "unknown target",
    );
    refused(
        &acl(r#""*""#, r#""10.0.0.1/8:80""#),
        "acls[0].dst[0]",
        "host bits set",
    );
}

#[test]
fn protocols() {
    let p = ok(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:*"], "proto": "icmp"},
                          {"action": "accept", "src": ["*"], "dst": ["tag:web:*"], "proto": "47"},
                          {"action": "accept", "src": ["*"], "dst": ["tag:web:5000"], "proto": "SCTP"}]"#,
    );
    assert_eq!(p.rules[0].dst[0].protos, ProtoSet::of(&[1]));
    assert_eq!(p.rules[1].dst[0].protos, ProtoSet::of(&[47]));
    assert_eq!(p.rules[2].dst[0].protos, ProtoSet::of(&[132]));
    refused(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:22"], "proto": "icmp"}]"#,
        "acls[0].dst[0]",
        "does not support specific ports",
    );
    refused(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "bogus"}]"#,
        "acls[0].proto",
        "not known",
    );
    refused(
        r#""acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "0"}]"#,
        "acls[0].proto",
        "not known",
    );
}

#[test]
fn groups_rules() {
    refused(
        r#""acls": [], "Groups": {}"#,
        "Groups",
        "section given twice",
    );
    let e = parse_policy(r#"{"groups": {"group:a": ["group:b"], "group:b": ["x@y.com"]}}"#)
        .unwrap_err();
    assert!(e.message.contains("cannot contain other groups"), "{e}");
    assert_eq!(e.path, r#"groups["group:a"][0]"#);
    let e = parse_policy(r#"{"groups": {"group:a": ["tag:x"]}}"#).unwrap_err();
    assert!(e.message.contains("user logins"), "{e}");
    let e = parse_policy(r#"{"groups": {"eng": ["x@y.com"]}}"#).unwrap_err();
    assert!(e.message.contains("group:<name>"), "{e}");
    refused(
        &acl(r#""group:nope""#, r#""*:*""#),
        "acls[0].src[0]",
        "group not defined in policy: \"group:nope\"",
    );
    // An empty group is allowed and selects nothing.
    ok(&acl(r#""group:empty""#, r#""*:*""#));
}

#[test]
fn hosts_rules() {
    let e = parse_policy(r#"{"hosts": {"a@b": "10.0.0.1"}}"#).unwrap_err();
    assert!(e.message.contains("invalid host name"), "{e}");
    let e = parse_policy(r#"{"hosts": {"a:b": "10.0.0.1"}}"#).unwrap_err();
    assert!(e.message.contains("invalid host name"), "{e}");
    let e = parse_policy(r#"{"hosts": {"a": "not-an-ip"}}"#).unwrap_err();
    assert_eq!(e.path, r#"hosts["a"]"#);
    assert!(e.message.contains("not an IP address"), "{e}");
    let e = parse_policy(r#"{"hosts": {"a": "10.0.0.1/8"}}"#).unwrap_err();
    assert!(e.message.contains("did you mean \"10.0.0.0/8\""), "{e}");
    let p = parse_policy(r#"{"hosts": {"my.host": "fd7a::/64"}}"#).unwrap();
    assert_eq!(p.hosts["my.host"], "fd7a::/64".parse::<IpNet>().unwrap());
}

#[test]
fn tags_must_be_declared_everywhere() {
    refused(
        &acl(r#""tag:nope""#, r#""*:*""#),
        "acls[0].src[0]",
        "tag not found: \"tag:nope\"",
    );
    refused(
        &acl(r#""*""#, r#""tag:nope:22""#),
        "acls[0].dst[0]",
        "tag not found",
    );
    refused(
        r#""grants": [{"src": ["tag:nope"], "dst": ["*"], "ip": ["*"]}]"#,
        "grants[0].src[0]",
        "tag not found",
    );
    refused(
        r#""tests": [{"src": "tag:nope", "accept": ["db:22"]}]"#,
        "tests[0].src",
        "tag not found",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["tag:nope:22"]}]"#,
        "tests[0].accept[0]",
        "tag not found",
    );
    let e = parse_policy(r#"{"tagOwners": {"tag:a": ["tag:b"]}}"#).unwrap_err();
    assert!(e.message.contains("tag not found"), "{e}");
    // Owners may name tags declared later in the same section.
    parse_policy(r#"{"tagOwners": {"tag:a": ["tag:b"], "tag:b": []}}"#).unwrap();
}

#[test]
fn tag_owner_rules() {
    let p = parse_policy(
        r#"{"groups": {"group:g": []}, "tagOwners": {"tag:a": ["x@y.com", "group:g", "autogroup:admin", "tag:a"], "tag:b": []}}"#,
    )
    .unwrap();
    assert_eq!(p.tag_owners["tag:a"].len(), 4);
    assert!(p.tag_owners["tag:b"].is_empty());
    let e = parse_policy(r#"{"tagOwners": {"tag:1abc": []}}"#).unwrap_err();
    assert!(e.message.contains("must start with a letter"), "{e}");
    let e = parse_policy(r#"{"tagOwners": {"tag:a_b": []}}"#).unwrap_err();
    assert!(e.message.contains("letters, numbers, or dashes"), "{e}");
    let e = parse_policy(r#"{"tagOwners": {"web": []}}"#).unwrap_err();
    assert!(e.message.contains("invalid tag"), "{e}");
    let e = parse_policy(r#"{"tagOwners": {"tag:a": ["autogroup:self"]}}"#).unwrap_err();
    assert!(e.message.contains("cannot own tags"), "{e}");
    let e = parse_policy(r#"{"tagOwners": {"tag:a": ["group:missing"]}}"#).unwrap_err();
    assert!(e.message.contains("group not defined"), "{e}");
}

#[test]
fn autogroup_rules() {
    refused(
        &acl(r#""autogroup:self""#, r#""*:*""#),
        "acls[0].src[0]",
        "not valid on the src side of a rule",
    );
    refused(
        &acl(r#""autogroup:internet""#, r#""*:*""#),
        "acls[0].src[0]",
        "only valid as a destination",
    );
    refused(
        &acl(r#""autogroup:admin""#, r#""*:*""#),
        "acls[0].src[0]",
        "not supported",
    );
    // autogroup:self needs user-like sources.
    ok(&acl(
        r#""alice@example.com", "group:eng", "autogroup:member""#,
        r#""autogroup:self:*""#,
    ));
    refused(
        &acl(r#""tag:web""#, r#""autogroup:self:*""#),
        "acls[0]",
        "autogroup:self can only be used",
    );
    // In acls, "*" narrows to each device's own user.
    let p = ok(&acl(r#""*""#, r#""autogroup:self:22""#));
    assert_eq!(p.rules[0].src, vec![Target::All]);
    ok(&acl(r#""user:*@example.com""#, r#""autogroup:self:22""#));
    // In grants, as in Tailscale, it is refused.
    refused(
        r#""grants": [{"src": ["*"], "dst": ["autogroup:self"], "ip": ["tcp:22"]}]"#,
        "grants[0]",
        "autogroup:self can only be used with users, groups, or supported autogroups (not \"*\"",
    );
    refused(
        &acl(r#""*", "tag:web""#, r#""autogroup:self:22""#),
        "acls[0]",
        "tag:web",
    );
    refused(
        &acl(r#""autogroup:danger-all""#, r#""autogroup:self:22""#),
        "acls[0]",
        "autogroup:danger-all",
    );
    refused(
        &acl(r#""autogroup:tagged""#, r#""autogroup:self:22""#),
        "acls[0]",
        "autogroup:tagged",
    );
    refused(
        &acl(r#""db""#, r#""autogroup:self:22""#),
        "acls[0]",
        "\"db\"",
    );
    refused(
        r#""grants": [{"src": ["tag:web"], "dst": ["autogroup:self"], "ip": ["*"]}]"#,
        "grants[0]",
        "autogroup:self can only be used",
    );
}

#[test]
fn domain_and_danger_all_selectors() {
    let p = ok(&acl(
        r#""user:*@example.com""#,
        r#""user:*@example.org:22""#,
    ));
    assert_eq!(p.rules[0].src, vec![Target::Domain("example.com".into())]);
    assert_eq!(
        p.rules[0].dst[0].target,
        Target::Domain("example.org".into())
    );
    assert_eq!(
        p.rules[0].summary(),
        "acls[0] (line 5): user:*@example.com -> user:*@example.org:22"
    );
    for bad in [
        r#""user:alice@example.com""#,
        r#""user:*@Example.com""#,
        r#""user:*@""#,
    ] {
        refused(&acl(bad, r#""*:*""#), "acls[0].src[0]", "user:");
    }
    let p = ok(
        r#""grants": [{"src": ["autogroup:danger-all"], "dst": ["tag:web"], "ip": ["tcp:22"]}]"#,
    );
    assert_eq!(p.rules[0].src, vec![Target::DangerAll]);
    ok(&acl(r#""autogroup:danger-all""#, r#""tag:web:22""#));
    refused(
        r#""grants": [{"src": ["*"], "dst": ["autogroup:danger-all"], "ip": ["*"]}]"#,
        "grants[0].dst[0]",
        "cannot use autogroup:danger-all as a dst",
    );
    refused(
        &acl(r#""*""#, r#""autogroup:danger-all:*""#),
        "acls[0].dst[0]",
        "cannot use autogroup:danger-all as a dst",
    );
}

#[test]
fn grant_rules() {
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"]}]"#,
        "grants[0]",
        "ip and app can not both be empty",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["tag:web:443"], "ip": ["*"]}]"#,
        "grants[0].dst[0]",
        "take no ports",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "ip": ["bogus:80"]}]"#,
        "grants[0].ip[0]",
        "unknown protocol",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "ip": ["icmp:8"]}]"#,
        "grants[0].ip[0]",
        "does not support specific ports",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "ip": ["http"]}]"#,
        "grants[0].ip[0]",
        "named port",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "app": {"https://x.com/cap": [{}]}}]"#,
        r#"grants[0].app["https://x.com/cap"]"#,
        "no scheme",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "app": {"nodomain": [{}]}}]"#,
        r#"grants[0].app["nodomain"]"#,
        "domain/path",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "app": {"example.com/cap": ["x"]}}]"#,
        r#"grants[0].app["example.com/cap"][0]"#,
        "objects",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["autogroup:internet"], "app": {"example.com/cap": [{}]}}]"#,
        "grants[0].dst",
        "autogroup:internet",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"], "via": ["db"]}]"#,
        "grants[0].via[0]",
        "via can only be a tag",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["corp"], "ip": ["*"], "via": ["autogroup:tagged"]}]"#,
        "grants[0].via[0]",
        "via can only be a tag",
    );
    refused(
        r#""grants": [{"src": ["*"], "dst": ["corp"], "ip": ["*"], "via": ["tag:web", "tag:nope"]}]"#,
        "grants[0].via[1]",
        "tag not found",
    );
    let p = ok(
        r#""grants": [{"src": ["*"], "dst": ["corp", "autogroup:internet"], "ip": ["tcp:80"], "via": ["tag:web", "tag:web"]}]"#,
    );
    assert_eq!(p.rules[0].via, vec!["tag:web".to_string()]);
    for via in ["null", "[]"] {
        let p = ok(&format!(
            r#""grants": [{{"src": ["*"], "dst": ["corp"], "ip": ["*"], "via": {via}}}]"#
        ));
        assert!(p.rules[0].via.is_empty());
    }
    // Every address is "*" or autogroup:internet, never a default route.
    for (dst, path) in [
        (r#""0.0.0.0/0""#, "grants[0].dst[0]"),
        (r#""tag:web", "::/0""#, "grants[0].dst[1]"),
    ] {
        let e = refused(
            &format!(r#""grants": [{{"src": ["*"], "dst": [{dst}], "ip": ["*"]}}]"#),
            path,
            "to allow all IP addresses, use \"*\" or \"autogroup:internet\"",
        );
        assert!(e.message.starts_with("dst \""), "{e}");
    }
    let e = refused(
        r#""grants": [{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"], "via": ["tag:web"]}]"#,
        "grants[0].dst[0]",
        "to allow all IP addresses",
    );
    assert_eq!(
        e.message,
        r#"dst "0.0.0.0/0": to allow all IP addresses, use "*" or "autogroup:internet""#
    );
    // Empty src or dst lists are valid and grant nothing.
    let p = ok(r#""grants": [{"src": [], "dst": ["*"], "ip": ["*"]},
                  {"src": ["*"], "dst": [], "ip": ["*"], "app": {"example.com/cap/x": [{}]}}]"#);
    assert!(p.rules.is_empty() && p.app_grants.is_empty());
    // ... but their entries are still checked.
    refused(
        r#""grants": [{"src": ["tag:nope"], "dst": [], "ip": ["*"]}]"#,
        "grants[0].src[0]",
        "tag not found",
    );
    // Capabilities of Tailscale's own domain, but those a policy may grant.
    refused(
        r#""grants": [{"src": ["*"], "dst": ["*"], "app": {"tailscale.com/cap/relay-target": [{}]}}]"#,
        r#"grants[0].app["tailscale.com/cap/relay-target"]"#,
        "capability name must not be in the tailscale.com domain",
    );
    ok(
        r#""grants": [{"src": ["*"], "dst": ["tag:web"], "app": {"tailscale.com/cap/drive": [{}], "tailscale.com/cap/kubernetes": [{}]}}]"#,
    );
    // An app-only grant opens no network access.
    let p =
        ok(r#""grants": [{"src": ["*"], "dst": ["tag:web"], "app": {"example.com/cap/x": [{}]}}]"#);
    assert!(p.rules.is_empty());
    assert_eq!(p.app_grants.len(), 1);
    // "*" opens every protocol; a bare port means TCP, UDP and ICMP.
    let p = ok(r#""grants": [{"src": ["*"], "dst": ["tag:web"], "ip": ["*", "80-443", "6:22"]}]"#);
    assert_eq!(p.rules[0].dst[0].protos, ProtoSet::all());
    assert_eq!(p.rules[0].dst[1].protos, ProtoSet::default_set());
    assert_eq!(
        p.rules[0].dst[1].ports,
        vec![PortRange {
            first: 80,
            last: 443
        }]
    );
    assert_eq!(p.rules[0].dst[2].protos, ProtoSet::of(&[6]));
}

#[test]
fn test_entry_rules() {
    let p = ok(
        r#""tests": [{"src": "group:eng", "proto": "udp", "accept": ["db:53", "[fd7a:115c:a1e0::99]:53"], "deny": ["alice@example.com:22"]}]"#,
    );
    assert_eq!(p.tests[0].protos, ProtoSet::of(&[17]));
    assert_eq!(p.tests[0].accept[0].port, 53);
    // Default: TCP or UDP.
    let p = ok(r#""tests": [{"src": "db", "accept": ["tag:web:80"]}]"#);
    assert_eq!(p.tests[0].protos, ProtoSet::of(&[6, 17]));
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["tag:web:80,443"]}]"#,
        "tests[0].accept[0]",
        "exactly one port",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["tag:web:*"]}]"#,
        "tests[0].accept[0]",
        "exactly one port",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["tag:web:1-5"]}]"#,
        "tests[0].accept[0]",
        "exactly one port",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["corp:80"]}]"#,
        "tests[0].accept[0]",
        "not prefixes",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["10.0.0.0/8:80"]}]"#,
        "tests[0].accept[0]",
        "not prefixes",
    );
    // A prefix of one address is still a prefix.
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["100.64.0.16/32:22"]}]"#,
        "tests[0].accept[0]",
        "not prefixes",
    );
    refused(
        r#""tests": [{"src": "user:*@x.com", "accept": ["db:22"]}]"#,
        "tests[0].src",
        "one user",
    );
    refused(
        r#""tests": [{"src": "a@x.com", "accept": ["autogroup:internet:80"]}]"#,
        "tests[0].accept[0]",
        "autogroups",
    );
    refused(
        r#""tests": [{"src": "autogroup:member", "accept": ["db:80"]}]"#,
        "tests[0].src",
        "autogroups",
    );
    refused(
        r#""tests": [{"src": "*", "accept": ["db:80"]}]"#,
        "tests[0].src",
        "wildcard",
    );
    refused(
        r#""tests": [{"src": "corp", "accept": ["db:80"]}]"#,
        "tests[0].src",
        "not prefixes",
    );
    refused(
        r#""tests": [{"src": "a@x.com"}]"#,
        "tests[0]",
        "at least one accept or deny",
    );
    refused(r#""tests": [{"accept": ["db:80"]}]"#, "tests[0]", "\"src\"");
    refused(
        r#""tests": [{"src": "a@x.com", "proto": "icmp", "accept": ["db:80"]}]"#,
        "tests[0].proto",
        "tcp, udp or sctp",
    );
}

#[test]
fn type_errors_point_at_values() {
    let e = refused(
        r#""acls": {"action": "accept"}"#,
        "acls",
        "expected an array, found an object",
    );
    assert_eq!(e.pos.line, 5);
    refused(
        r#""acls": [{"action": "accept", "src": "*", "dst": ["*:*"]}]"#,
        "acls[0].src",
        "expected an array",
    );
    refused(
        r#""acls": [{"action": "accept", "src": [1], "dst": ["*:*"]}]"#,
        "acls[0].src[0]",
        "expected a string, found a number",
    );
    refused(r#""acls": [7]"#, "acls[0]", "expected an object");
}
