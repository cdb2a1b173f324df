//! Role builds (`--no-default-features --features ROLE`): each holds its
//! role's commands and refuses every other as unknown (the proxy build's
//! `operator` has only `proxy`). That the proxy and
//! connector builds do their jobs is shown by `local_cluster`, which runs
//! them as the images would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use gatehouse_testkit::roles;
use std::process::Command;

const COMMANDS: [&str; 14] = [
    "policy", "control", "admin", "node", "edge", "tunnel", "lint", "reach", "render", "operator",
    "doctor", "up", "status", "relay",
];

#[test]
fn each_role_build_holds_only_its_commands() {
    for (role, own) in [
        ("node", &["node"][..]),
        ("proxy", &["node", "operator"]),
        ("connector", &["tunnel"]),
        ("edge", &["edge"]),
    ] {
        let bin = roles::bin(role);
        for cmd in COMMANDS {
            let out = Command::new(&bin).args([cmd, "--help"]).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if own.contains(&cmd) {
                assert!(
                    out.status.success(),
                    "{role} build: `{cmd} --help`: {stderr}"
                );
            } else {
                assert_eq!(out.status.code(), Some(2), "{role} build has `{cmd}`");
                assert!(
                    stderr.contains(&format!("unrecognized subcommand '{cmd}'")),
                    "{role} build, `{cmd}`: {stderr}"
                );
            }
        }
    }
    let proxy = roles::bin("proxy");
    let help = |args: &[&str]| Command::new(&proxy).args(args).output().unwrap();
    assert!(help(&["operator", "proxy", "--help"]).status.success());
    for sub in ["run", "crd"] {
        let out = help(&["operator", sub, "--help"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "proxy build has `operator {sub}`"
        );
    }
    // The full build has them all.
    for cmd in COMMANDS {
        let out = Command::new(common::BIN)
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "full build: `{cmd} --help`");
    }
}
