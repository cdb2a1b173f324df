//! Validation of `ssh` and `sshTests`, written from Tailscale's documented
//! rules and from how its coordination server answers policy files.

use super::*;
use crate::ssh::{CheckPeriod, SshAction, SshUsers};
use std::time::Duration;

fn with(sections: &str) -> String {
    format!(
        r#"{{
  "groups": {{"group:eng": ["alice@example.com", "bob@example.org"], "group:empty": []}},
  "hosts": {{"srv": "100.64.0.16", "net": "10.0.0.0/8"}},
  "tagOwners": {{"tag:server": [], "tag:prod": []}},
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

fn refused(sections: &str, path: &str, needle: &str) {
    let e = parse_policy(&with(sections)).expect_err(sections);
    assert_eq!(e.path, path, "wrong path for: {e}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
}

fn rule(src: &str, dst: &str, users: &str) -> String {
    format!(
        r#""ssh": [{{"action": "accept", "src": [{src}], "dst": [{dst}], "users": [{users}]}}]"#
    )
}

#[test]
fn parses_a_rule() {
    let p = ok(r#""ssh": [
        {"action": "check", "src": ["group:eng", "tag:prod"], "dst": ["tag:server", "autogroup:tagged"],
         "users": ["root", "autogroup:nonroot", "ubuntu", "localpart:*@example.com", "ubuntu"],
         "checkPeriod": "20h", "acceptEnv": ["GIT_*", "TERM"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
    ]"#);
    assert_eq!(p.ssh.len(), 2);
    let r = &p.ssh[0];
    assert_eq!(r.index, 0);
    assert_eq!(
        r.action,
        SshAction::Check {
            period: CheckPeriod::Every(Duration::from_secs(20 * 3600))
        }
    );
    assert_eq!(
        r.src,
        vec![
            Target::Group("group:eng".into()),
            Target::Tag("tag:prod".into())
        ]
    );
    assert_eq!(
        r.dst,
        vec![Target::Tag("tag:server".into()), Target::Tagged]
    );
    assert_eq!(
        r.users,
        SshUsers {
            root: true,
            nonroot: true,
            names: vec!["ubuntu".into()],
            localpart_domains: vec!["example.com".into()],
        }
    );
    assert_eq!(r.accept_env, vec!["GIT_*", "TERM"]);
    assert_eq!(p.ssh[1].action, SshAction::Accept);
    assert_eq!(p.ssh[1].dst, vec![Target::SelfDevices]);
}

#[test]
fn null_and_empty_sections() {
    assert!(ok(r#""ssh": null, "sshTests": null"#).ssh.is_empty());
    assert!(ok(r#""ssh": [], "sshTests": []"#).ssh.is_empty());
    // Keys match case-insensitively, like the other sections.
    assert_eq!(
        ok(&rule(r#""tag:prod""#, r#""tag:server""#, r#""root""#).replace("\"ssh\"", "\"SSH\""))
            .ssh
            .len(),
        1
    );
    refused(r#""ssh": {}"#, "ssh", "expected an array");
    refused(r#""ssh": [], "SSH": []"#, "SSH", "given twice");
}

#[test]
fn actions() {
    let action = |a: &str| {
        format!(
            r#""ssh": [{{"action": {a}, "src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"]}}]"#
        )
    };
    // Surrounding white space is ignored; the case is not.
    assert_eq!(ok(&action(r#"" accept""#)).ssh[0].action, SshAction::Accept);
    for bad in ["deny", "Accept", "ACCEPT", "drop"] {
        refused(
            &action(&format!("{bad:?}")),
            "ssh[0].action",
            &format!("{bad:?} is not a valid action"),
        );
    }
    refused(
        &action(r#""""#),
        "ssh[0].action",
        "action must be specified",
    );
    refused(&action("null"), "ssh[0]", "action must be specified");
    refused(
        r#""ssh": [{"src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"]}]"#,
        "ssh[0]",
        "action must be specified",
    );
}

#[test]
fn check_periods() {
    let period = |action: &str, p: &str| {
        format!(
            r#""ssh": [{{"action": {action:?}, "checkPeriod": {p}, "src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"]}}]"#
        )
    };
    let got = |p: &str| match ok(&period("check", p)).ssh[0].action {
        SshAction::Check { period } => period,
        SshAction::Accept => panic!("not a check"),
    };
    let h = |n: u64| CheckPeriod::Every(Duration::from_secs(n * 3600));
    assert_eq!(got("null"), h(12), "null is the default");
    assert_eq!(got(r#""1h""#), h(1));
    assert_eq!(got(r#""168h""#), h(168), "the maximum is inclusive");
    assert_eq!(got(r#""always""#), CheckPeriod::Always);
    // Tailscale takes short periods, down to zero.
    assert_eq!(got(r#""30s""#), CheckPeriod::Every(Duration::from_secs(30)));
    assert_eq!(got(r#""0s""#), CheckPeriod::Every(Duration::ZERO));
    assert_eq!(
        got(r#""1h30m""#),
        CheckPeriod::Every(Duration::from_secs(5400))
    );
    let no_period = r#""ssh": [{"action": "check", "src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"]}]"#;
    assert_eq!(
        ok(no_period).ssh[0].action,
        SshAction::Check { period: h(12) }
    );
    let p = "ssh[0].checkPeriod";
    refused(&period("check", r#""168h0m1s""#), p, "above the max (168h)");
    refused(&period("check", r#""200h""#), p, "above the max (168h)");
    refused(
        &period("check", r#""-1m""#),
        p,
        "must be a positive duration",
    );
    refused(
        &period("check", r#""abc""#),
        p,
        "time: invalid duration \"abc\"",
    );
    refused(&period("check", r#""12""#), p, "missing unit");
    refused(&period("check", r#""1d""#), p, "unknown unit \"d\"");
    refused(&period("check", "12"), p, "expected a string");
    refused(
        &period("accept", r#""1h""#),
        p,
        "only valid with action \"check\"",
    );
}

#[test]
fn users() {
    let users = |u: &str| {
        ok(&rule(r#""tag:prod""#, r#""tag:server""#, u)).ssh[0]
            .users
            .clone()
    };
    let u = users(r#"" root", "\tubuntu", "autogroup:nonroot""#);
    assert!(u.root && u.nonroot);
    assert_eq!(u.names, vec!["ubuntu"]);
    // Anything else is a literal local user name, as Tailscale takes it,
    // including names that look like selectors and malformed localpart forms.
    let u = users(
        r#""autogroup:member", "group:foo", "tag:foo", "localpart:", "localpart:foo", "localpart:*@", "localpart:foo@example.com", "🚀""#,
    );
    assert_eq!(
        u.names,
        vec![
            "autogroup:member",
            "group:foo",
            "tag:foo",
            "localpart:",
            "localpart:foo",
            "localpart:*@",
            "localpart:foo@example.com",
            "🚀"
        ]
    );
    assert!(u.localpart_domains.is_empty());
    assert_eq!(
        users(r#""localpart:*@example.com", "localpart:*@corp.example.org""#).localpart_domains,
        vec!["example.com", "corp.example.org"]
    );
    let at = |i: usize| format!("ssh[0].users[{i}]");
    refused(
        &rule(r#""tag:prod""#, r#""tag:server""#, r#""""#),
        &at(0),
        "user \"\" is not valid",
    );
    refused(
        &rule(r#""tag:prod""#, r#""tag:server""#, r#""root", "*""#),
        &at(1),
        "user \"*\" is not valid",
    );
    refused(
        &rule(r#""tag:prod""#, r#""tag:server""#, r#""root", " ""#),
        &at(1),
        "user \"\" is not valid",
    );
    refused(
        &rule(r#""tag:prod""#, r#""tag:server""#, r#""localpart:*@*""#),
        &at(0),
        "lower-case DNS name",
    );
    refused(
        &rule(
            r#""tag:prod""#,
            r#""tag:server""#,
            r#""localpart:*@EXAMPLE.COM""#,
        ),
        &at(0),
        "lower-case DNS name",
    );
    refused(
        &rule(r#""tag:prod""#, r#""tag:server""#, ""),
        "ssh[0].users",
        "users must be specified",
    );
    for missing in [
        r#""ssh": [{"action": "accept", "src": ["tag:prod"], "dst": ["tag:server"]}]"#,
        r#""ssh": [{"action": "accept", "src": ["tag:prod"], "dst": ["tag:server"], "users": null}]"#,
    ] {
        refused(missing, "ssh[0]", "users must be specified");
    }
}

#[test]
fn accept_env() {
    let env = |e: &str| {
        format!(
            r#""ssh": [{{"action": "accept", "src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"], "acceptEnv": {e}}}]"#
        )
    };
    assert_eq!(
        ok(&env(r#"["**", "*X", "X*Y", "LC_?"]"#)).ssh[0].accept_env,
        vec!["**", "*X", "X*Y", "LC_?"]
    );
    assert!(ok(&env("null")).ssh[0].accept_env.is_empty());
    refused(
        &env(r#"["TERM", ""]"#),
        "ssh[0].acceptEnv[1]",
        "acceptEnv values cannot be empty",
    );
    refused(&env(r#""TERM""#), "ssh[0].acceptEnv", "expected an array");
}

#[test]
fn sources() {
    let src = |s: &str| {
        ok(&rule(s, r#""tag:server""#, r#""root""#)).ssh[0]
            .src
            .clone()
    };
    assert_eq!(
        src(
            r#"" alice@example.com", "group:eng", "tag:prod", "autogroup:member", "autogroup:tagged""#
        ),
        vec![
            Target::User("alice@example.com".into()),
            Target::Group("group:eng".into()),
            Target::Tag("tag:prod".into()),
            Target::Member,
            Target::Tagged,
        ]
    );
    // An empty or missing src is accepted and selects nothing.
    assert!(src("").is_empty());
    assert!(
        ok(r#""ssh": [{"action": "accept", "dst": ["tag:server"], "users": ["root"]}]"#).ssh[0]
            .src
            .is_empty()
    );
    let at = "ssh[0].src[0]";
    refused(
        &rule(r#""*""#, r#""tag:server""#, r#""root""#),
        at,
        "not allowed in ssh src",
    );
    refused(
        &rule(r#""autogroup:admin""#, r#""tag:server""#, r#""root""#),
        at,
        "\"autogroup:admin\" is not allowed in src",
    );
    refused(
        &rule(r#""autogroup:self""#, r#""tag:server""#, r#""root""#),
        at,
        "is not allowed in src",
    );
    refused(
        &rule(r#""srv""#, r#""tag:server""#, r#""root""#),
        at,
        "never addresses or host aliases",
    );
    refused(
        &rule(r#""100.64.0.1""#, r#""tag:server""#, r#""root""#),
        at,
        "never addresses",
    );
    refused(
        &rule(r#""tag:nope""#, r#""tag:server""#, r#""root""#),
        at,
        "tag not found",
    );
    refused(
        &rule(r#""group:nope""#, r#""tag:server""#, r#""root""#),
        at,
        "group not defined",
    );
    refused(
        &rule(r#""a@b@c""#, r#""tag:server""#, r#""root""#),
        at,
        "invalid user",
    );
}

#[test]
fn destinations() {
    let dst = |src: &str, d: &str| ok(&rule(src, d, r#""root""#)).ssh[0].dst.clone();
    assert_eq!(
        dst(
            r#""group:eng""#,
            r#""tag:server ", "autogroup:tagged", "autogroup:self""#
        ),
        vec![
            Target::Tag("tag:server".into()),
            Target::Tagged,
            Target::SelfDevices
        ]
    );
    // A user as destination only from that same user.
    assert_eq!(
        dst(r#""alice@example.com""#, r#""alice@example.com""#),
        vec![Target::User("alice@example.com".into())]
    );
    // Tags reach tagged devices.
    assert_eq!(
        dst(r#""tag:prod", "autogroup:tagged""#, r#""tag:server""#).len(),
        1
    );
    let at = "ssh[0].dst[0]";
    refused(
        &rule(r#""group:eng""#, r#""*""#, r#""root""#),
        at,
        "\"*\" cannot be an ssh destination",
    );
    refused(
        &rule(r#""group:eng""#, r#""srv""#, r#""root""#),
        at,
        "invalid dst \"srv\"",
    );
    refused(
        &rule(r#""group:eng""#, r#""net""#, r#""root""#),
        at,
        "invalid dst \"net\"",
    );
    refused(
        &rule(r#""group:eng""#, r#""100.64.0.16""#, r#""root""#),
        at,
        "addresses cannot be ssh destinations",
    );
    refused(
        &rule(r#""group:eng""#, r#""tag:server:22""#, r#""root""#),
        at,
        "take no port",
    );
    refused(
        &rule(r#""group:eng""#, r#""tag:nope""#, r#""root""#),
        at,
        "tag not found",
    );
    refused(
        &rule(r#""group:eng""#, r#""group:eng""#, r#""root""#),
        at,
        "groups cannot be ssh destinations",
    );
    refused(
        &rule(r#""group:eng""#, r#""autogroup:member""#, r#""root""#),
        at,
        "autogroup:member cannot be an ssh destination",
    );
    refused(
        &rule(r#""group:eng""#, r#""autogroup:internet""#, r#""root""#),
        at,
        "not allowed in ssh dst",
    );
    // Tailscale keeps user-owned devices to their own user.
    let same_user = "users in dst are only allowed from the same user";
    refused(
        &rule(
            r#""bob@example.org""#,
            r#""alice@example.com""#,
            r#""root""#,
        ),
        at,
        same_user,
    );
    refused(
        &rule(
            r#""alice@example.com", "bob@example.org""#,
            r#""alice@example.com""#,
            r#""root""#,
        ),
        at,
        same_user,
    );
    refused(
        &rule(r#""group:eng""#, r#""alice@example.com""#, r#""root""#),
        at,
        same_user,
    );
    refused(
        &rule(r#""tag:prod""#, r#""alice@example.com""#, r#""root""#),
        at,
        same_user,
    );
    refused(
        &rule(
            r#""autogroup:member""#,
            r#""alice@example.com""#,
            r#""root""#,
        ),
        at,
        same_user,
    );
    for bad in [
        r#""tag:prod""#,
        r#""autogroup:tagged""#,
        r#""alice@example.com", "tag:prod""#,
    ] {
        refused(
            &rule(bad, r#""autogroup:self""#, r#""root""#),
            "ssh[0]",
            "autogroup:self can only be used with users, groups, or supported autogroups",
        );
    }
    refused(
        &rule(
            r#""tag:prod""#,
            r#""tag:server", "autogroup:self""#,
            r#""root""#,
        ),
        "ssh[0]",
        "autogroup:self",
    );
}

#[test]
fn unknown_fields() {
    refused(
        r#""ssh": [{"action": "accept", "src": ["tag:prod"], "dst": ["tag:server"], "users": ["root"], "ports": ["22"]}]"#,
        "ssh[0].ports",
        "unknown field \"ports\"",
    );
    refused(r#""ssh": ["x"]"#, "ssh[0]", "expected an object");
}

fn ssh_test(body: &str) -> String {
    format!(
        r#"{}, "sshTests": [{body}]"#,
        rule(r#""group:eng""#, r#""tag:server""#, r#""root""#)
    )
}

#[test]
fn ssh_tests_parse() {
    let p = ok(&ssh_test(
        r#"{"src": " alice@example.com", "dst": ["tag:server", "autogroup:self", "autogroup:member", "autogroup:tagged", "bob@example.org", "group:eng", "srv", "100.64.0.16"], "accept": ["root"], "deny": ["mallory"], "check": [" ubuntu"]}"#,
    ));
    let t = &p.ssh_tests[0];
    assert_eq!(t.src, Target::User("alice@example.com".into()));
    assert_eq!(t.dst.len(), 8);
    assert_eq!(t.dst[1].target, Target::SelfDevices);
    assert_eq!(
        t.dst[6].target,
        Target::Host("srv".into(), "100.64.0.16/32".parse().unwrap())
    );
    assert_eq!(
        (t.accept.as_slice(), t.deny.as_slice(), t.check.as_slice()),
        (
            &["root".to_string()][..],
            &["mallory".to_string()][..],
            &["ubuntu".to_string()][..]
        )
    );
    for src in [
        r#""tag:prod""#,
        r#""group:eng""#,
        r#""100.64.0.17""#,
        r#""srv""#,
    ] {
        ok(&ssh_test(&format!(
            r#"{{"src": {src}, "dst": ["tag:server"], "deny": ["root"]}}"#
        )));
    }
    let dst = "sshTests[0].dst[0]";
    refused(
        &ssh_test(
            r#"{"src": "alice@example.com", "dst": ["autogroup:internet"], "accept": ["root"]}"#,
        ),
        dst,
        "disallowed element \"autogroup:internet\"",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["100.64.0.0/24"], "accept": ["root"]}"#),
        dst,
        "single addresses, not prefixes",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["net"], "accept": ["root"]}"#),
        dst,
        "single addresses, not prefixes",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["tag:server:22"], "accept": ["root"]}"#),
        dst,
        "take no port",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["tag:nope"], "accept": ["root"]}"#),
        dst,
        "tag not found",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["*"], "accept": ["root"]}"#),
        dst,
        "cannot be \"*\"",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": [], "accept": ["root"]}"#),
        "sshTests[0].dst",
        "at least one dst",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "accept": ["root"]}"#),
        "sshTests[0]",
        "at least one dst",
    );
    refused(
        &ssh_test(r#"{"src": "", "dst": ["tag:server"], "accept": ["root"]}"#),
        "sshTests[0].src",
        "non-empty src",
    );
    refused(
        &ssh_test(r#"{"dst": ["tag:server"], "accept": ["root"]}"#),
        "sshTests[0]",
        "non-empty src",
    );
    refused(
        &ssh_test(r#"{"src": "autogroup:member", "dst": ["tag:server"], "accept": ["root"]}"#),
        "sshTests[0].src",
        "do not support autogroups",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["tag:server"]}"#),
        "sshTests[0]",
        "at least one accept, deny or check",
    );
    refused(
        &ssh_test(r#"{"src": "alice@example.com", "dst": ["tag:server"], "accept": [""]}"#),
        "sshTests[0].accept[0]",
        "empty login",
    );
    refused(
        &ssh_test(
            r#"{"src": "alice@example.com", "dst": ["tag:server"], "accept": ["root"], "proto": "tcp"}"#,
        ),
        "sshTests[0].proto",
        "unknown field",
    );
}

#[test]
fn every_user_of_a_domain_as_a_source() {
    let p = ok(&rule(
        r#""user:*@example.com""#,
        r#""tag:prod""#,
        r#""root""#,
    ));
    assert_eq!(p.ssh[0].src, vec![Target::Domain("example.com".into())]);
    ok(&rule(
        r#""user:*@example.com""#,
        r#""autogroup:self""#,
        r#""root""#,
    ));
    refused(
        &rule(
            r#""user:*@example.com""#,
            r#""alice@example.com""#,
            r#""root""#,
        ),
        "ssh[0].dst[0]",
        "only allowed from the same user",
    );
}
