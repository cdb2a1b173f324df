//! `sshTests`: assertions about who may open a Tailscale SSH session to which
//! devices as which login, checked against the SSH policy each destination
//! device would receive, evaluated as its SSH server does (first matching
//! rule wins).
//!
//! Like `tests`, an assertion holds only if it holds for every address of
//! every device the source stands for, towards every device the destination
//! stands for; identities with no device are evaluated through a
//! representative device. Network access (acls, grants) does not enter:
//! Tailscale's `sshTests` check the `ssh` rules alone.

use crate::engine::{Engine, EngineError, NodeId};
use crate::eval::TestReport;
use crate::inventory::Node;
use crate::model::{Policy, Target};
use crate::ssh::{SshAction, SshGrant, SshTest, first_match};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

/// What an `sshTests` entry expected for a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SshExpect {
    /// Listed under `accept`: let in (with or without a check).
    Accept,
    /// Listed under `deny`: refused.
    Deny,
    /// Listed under `check`: let in only after a check.
    Check,
}

impl SshExpect {
    /// The list's name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            SshExpect::Accept => "accept",
            SshExpect::Deny => "deny",
            SshExpect::Check => "check",
        }
    }
}

/// A failed `sshTests` assertion: one login towards one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshTestFailure {
    /// Index in `sshTests`.
    pub test: usize,
    /// Line of the entry.
    pub line: u32,
    /// The source as written.
    pub src: String,
    /// Expected outcome.
    pub expect: SshExpect,
    /// The login asked for.
    pub user: String,
    /// The destination as written.
    pub dst: String,
    /// Why it failed, one line per offending (source address, device).
    pub reasons: Vec<String>,
}

/// Runs the policy's `sshTests` against `nodes`, adding to `report`.
pub(crate) fn run_ssh_tests(
    policy: &Arc<Policy>,
    nodes: &[Node],
    report: &mut TestReport,
) -> Result<(), EngineError> {
    if policy.ssh_tests.is_empty() {
        return Ok(());
    }
    let mut identities: Vec<&Target> = Vec::new();
    for t in &policy.ssh_tests {
        identities.push(&t.src);
        identities.extend(t.dst.iter().map(|d| &d.target));
    }
    let engine = Engine::with_representatives(Arc::clone(policy), nodes, &identities)?;
    for t in &policy.ssh_tests {
        engine.run_ssh_test(t, report)?;
    }
    Ok(())
}

impl Engine {
    /// `ssh[2] (line 30)`
    fn ssh_rule_label(&self, index: usize) -> String {
        match self.policy().ssh.get(index) {
            Some(r) => format!("ssh[{index}] (line {})", r.pos.line),
            None => format!("ssh[{index}]"),
        }
    }

    /// Why no grant lets `src` in as `login`, naming the near misses.
    fn ssh_why_not(&self, grants: &[SshGrant], src: IpAddr, login: &str) -> String {
        let mut other_users = BTreeSet::new();
        let mut other_sources = BTreeSet::new();
        for g in grants {
            if g.principals.contains(&src) {
                other_users.insert(g.rule);
            } else if g.maps_login(login).is_some() {
                other_sources.insert(g.rule);
            }
        }
        let show = |set: &BTreeSet<usize>| -> String {
            set.iter()
                .map(|i| self.ssh_rule_label(*i))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut parts = Vec::new();
        if !other_users.is_empty() {
            parts.push(format!(
                "this source may log in only as other users by {}",
                show(&other_users)
            ));
        }
        if !other_sources.is_empty() {
            parts.push(format!(
                "{login:?} is allowed only from other sources by {}",
                show(&other_sources)
            ));
        }
        if parts.is_empty() {
            "no ssh rule reaches this device from this source".into()
        } else {
            parts.join("; ")
        }
    }

    /// Devices an `sshTests` destination stands for; `src_user` is the
    /// source's user, which `autogroup:self` refers to.
    fn ssh_test_nodes(&self, t: &Target, src_user: Option<&str>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = match t {
            Target::SelfDevices => src_user
                .map(|u| self.user_node_ids(u).collect())
                .unwrap_or_default(),
            Target::Member => self.untagged_node_ids().collect(),
            Target::Tagged => self.tagged_node_ids().collect(),
            other => self
                .endpoints(other)
                .into_iter()
                .filter_map(|e| e.node)
                .collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn run_ssh_test(&self, t: &SshTest, report: &mut TestReport) -> Result<(), EngineError> {
        let srcs = self.endpoints(&t.src);
        let src_text = t.src.to_string();
        if srcs.is_empty() {
            return Err(EngineError::Unresolved(format!(
                "sshTests[{}]: src {src_text:?} resolved to no addresses",
                t.index
            )));
        }
        let src_user = match &t.src {
            Target::User(u) => Some(u.as_str()),
            _ => None,
        };
        let lists = [
            (SshExpect::Accept, &t.accept),
            (SshExpect::Deny, &t.deny),
            (SshExpect::Check, &t.check),
        ];
        for (expect, logins) in lists {
            for login in logins {
                for d in &t.dst {
                    report.assertions += 1;
                    let mut reasons = Vec::new();
                    let dsts = self.ssh_test_nodes(&d.target, src_user);
                    if dsts.is_empty() {
                        reasons.push(format!("{:?} resolved to no devices", d.text));
                    }
                    for dn in dsts {
                        let Some(dep) = self.node_endpoint(dn) else {
                            continue;
                        };
                        let grants = self.ssh_rules_of(dn);
                        for s in &srcs {
                            for a in &s.addrs {
                                let m = first_match(&grants, *a, login);
                                let who = format!("{} ({a})", s.label);
                                match (expect, m) {
                                    (SshExpect::Accept | SshExpect::Check, None) => {
                                        reasons.push(format!(
                                            "{who} cannot log in to {} as {login:?}: {}",
                                            dep.label,
                                            self.ssh_why_not(&grants, *a, login)
                                        ));
                                    }
                                    (SshExpect::Deny, Some(g)) => reasons.push(format!(
                                        "{who} can log in to {} as {login:?}, allowed by {}",
                                        dep.label,
                                        self.ssh_rule_label(g.rule)
                                    )),
                                    (SshExpect::Check, Some(g))
                                        if g.action == SshAction::Accept =>
                                    {
                                        reasons.push(format!(
                                            "{who} logs in to {} as {login:?} without a check, by {}",
                                            dep.label,
                                            self.ssh_rule_label(g.rule)
                                        ));
                                    }
                                    _ => {}
                                }
                            }
                        }
                    }
                    if !reasons.is_empty() {
                        report.ssh_failures.push(SshTestFailure {
                            test: t.index,
                            line: t.pos.line,
                            src: src_text.clone(),
                            expect,
                            user: login.clone(),
                            dst: d.text.clone(),
                            reasons,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
