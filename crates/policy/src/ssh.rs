//! Tailscale SSH: the policy's `ssh` rules and what each device receives.
//!
//! A device running Tailscale SSH decides an incoming session alone, from an
//! ordered list of rules control hands it (`tailcfg.SSHPolicy`): the first
//! rule whose principals include the connecting address and whose user map
//! gives a local user for the requested login wins, and its action applies;
//! no match means the session is refused. [`Engine::ssh_rules`] compiles that
//! list for one device as [`SshGrant`]s, with the semantics of Tailscale's
//! coordination server:
//!
//! - principals are the addresses of the source devices (a user's untagged
//!   devices, a group's members' untagged devices, a tag's devices,
//!   `autogroup:member`, `autogroup:tagged`);
//! - a rule reaches a device through a `tag:` or `autogroup:tagged`
//!   destination it carries, a user destination that owns it, or
//!   `autogroup:self`, which admits only the device's own user's devices
//!   among the sources;
//! - the user map is `{"root": "root"}` when `root` is listed, else
//!   `{"root": ""}` (root refused) as soon as anything else is listed;
//!   `autogroup:nonroot` adds `{"*": "="}` (any other login, as itself);
//!   literal logins map to themselves;
//! - `localpart:*@domain` adds, per source user of that domain, a rule
//!   mapping the local part of their login to itself, from that user's
//!   devices only; such a rule also reaches the source devices themselves
//!   (each from its own user's source devices), as Tailscale's does;
//! - rules keep policy order, except that `check` rules come before `accept`
//!   rules.

use crate::engine::{Engine, EngineError, NodeId, identity_selects};
use crate::hujson::Pos;
use crate::inventory::Node;
use crate::model::{Policy, Target};
pub use gatehouse_filter::ssh::{
    CheckPeriod, DEFAULT_CHECK_PERIOD, MAX_CHECK_PERIOD, Principals, SshAction, SshGrant,
    first_match,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Which local users a rule admits (its `users` field, parsed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshUsers {
    /// `root` is listed.
    pub root: bool,
    /// `autogroup:nonroot` is listed: any login but root, as itself.
    pub nonroot: bool,
    /// Literal local user names, in file order without duplicates.
    pub names: Vec<String>,
    /// Domains of `localpart:*@domain` entries (lower case).
    pub localpart_domains: Vec<String>,
}

impl SshUsers {
    /// The rule's local-user map in Tailscale's `SSHUsers` form.
    pub fn map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if self.nonroot {
            m.insert("*".to_string(), "=".to_string());
        }
        m.insert(
            "root".to_string(),
            if self.root { "root" } else { "" }.to_string(),
        );
        for n in &self.names {
            m.insert(n.clone(), n.clone());
        }
        m
    }

    /// The local part of `login` if a `localpart:*@domain` entry covers it.
    pub fn localpart_of(&self, login: &str) -> Option<String> {
        let (local, domain) = login.rsplit_once('@')?;
        self.localpart_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
            .then(|| local.to_string())
    }
}

/// One `ssh` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRule {
    /// Index in `ssh`.
    pub index: usize,
    /// Where it starts in the file.
    pub pos: Pos,
    /// `accept` or `check` (with its period).
    pub action: SshAction,
    /// Sources: users, groups, tags, `autogroup:member`, `autogroup:tagged`.
    pub src: Vec<Target>,
    /// Destinations: tags, `autogroup:tagged`, `autogroup:self`, a user.
    pub dst: Vec<Target>,
    /// Local users admitted.
    pub users: SshUsers,
    /// Environment variable names (or `*`/`?` patterns) a client may set.
    pub accept_env: Vec<String>,
}

/// One `sshTests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTest {
    /// Index in `sshTests`.
    pub index: usize,
    /// Where it starts.
    pub pos: Pos,
    /// The source: a user, group, tag, host alias or single IP.
    pub src: Target,
    /// Destinations: tags, users, groups, `autogroup:self`,
    /// `autogroup:member`, `autogroup:tagged`, host aliases or single IPs.
    pub dst: Vec<SshTestDst>,
    /// Logins the source must be let in as (by `accept` or `check`).
    pub accept: Vec<String>,
    /// Logins the source must be refused.
    pub deny: Vec<String>,
    /// Logins the source must be let in as only after a check.
    pub check: Vec<String>,
}

/// One destination of an `sshTests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTestDst {
    /// As written.
    pub text: String,
    /// Where it is.
    pub pos: Pos,
    /// What it names.
    pub target: Target,
}

/// One `ssh` rule's sources: the nodes they select and, ready to share
/// between grants, their addresses (all, per user, tagged), sorted.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSources {
    pub(crate) nodes: BTreeSet<NodeId>,
    pub(crate) all: Principals,
    pub(crate) by_user: BTreeMap<String, Principals>,
    pub(crate) tagged: Principals,
}

/// Per `ssh` rule, its sources; kept up to date as nodes come and go.
#[derive(Debug, Clone, Default)]
pub(crate) struct SshIndex {
    rules: Vec<RuleSources>,
}

/// Whether rule `r`'s sources select node `n` (by identity only: SSH
/// sources are never addresses).
fn src_selects(policy: &Policy, r: usize, n: &Node) -> bool {
    policy.ssh[r]
        .src
        .iter()
        .any(|t| identity_selects(policy, t, n))
}

/// Whether a non-`autogroup:self` destination selects node `n` (validation
/// leaves only tags, users and the autogroups of devices).
fn dst_selects(policy: &Policy, t: &Target, n: &Node) -> bool {
    identity_selects(policy, t, n)
}

fn has_self(rule: &SshRule) -> bool {
    rule.dst.contains(&Target::SelfDevices)
}

fn other_dsts(rule: &SshRule) -> impl Iterator<Item = &Target> {
    rule.dst.iter().filter(|t| **t != Target::SelfDevices)
}

fn sorted(mut addrs: Vec<IpAddr>) -> Principals {
    addrs.sort_unstable();
    addrs.dedup();
    addrs.into()
}

impl SshIndex {
    /// Rule `r`'s sources.
    pub(crate) fn rule(&self, r: usize) -> &RuleSources {
        static NONE: std::sync::OnceLock<RuleSources> = std::sync::OnceLock::new();
        self.rules
            .get(r)
            .unwrap_or_else(|| NONE.get_or_init(RuleSources::default))
    }

    /// Resolves every rule's sources over the engine's nodes.
    pub(crate) fn build(e: &Engine) -> SshIndex {
        let policy = e.policy();
        let mut index = SshIndex {
            rules: vec![RuleSources::default(); policy.ssh.len()],
        };
        for (r, rs) in index.rules.iter_mut().enumerate() {
            rs.nodes = e
                .live_node_ids()
                .filter(|id| e.get(*id).is_some_and(|n| src_selects(policy, r, n)))
                .collect();
            rs.refresh(e);
        }
        index
    }

    /// Node `id` changed from `old` to `new` (either may be absent); `e`
    /// already holds `new`. Touches only the rules the node is or was a
    /// source of, and in those only its own addresses and its users' lists.
    pub(crate) fn update(
        &mut self,
        e: &Engine,
        id: NodeId,
        old: Option<&Node>,
        new: Option<&Node>,
    ) {
        let policy = e.policy();
        for (r, rs) in self.rules.iter_mut().enumerate() {
            let was = rs.nodes.remove(&id);
            let is = new.is_some_and(|n| src_selects(policy, r, n));
            if is {
                rs.nodes.insert(id);
            }
            if !(was || is) {
                continue;
            }
            let out = if was { old } else { None };
            let into = if is { new } else { None };
            let edit = |list: &Principals, pick: &dyn Fn(&Node) -> bool| -> Principals {
                let gone: Vec<IpAddr> = out
                    .filter(|n| pick(n))
                    .map(|n| n.addresses.clone())
                    .unwrap_or_default();
                let mut v: Vec<IpAddr> =
                    list.iter().copied().filter(|a| !gone.contains(a)).collect();
                v.extend(
                    into.filter(|n| pick(n))
                        .into_iter()
                        .flat_map(|n| n.addresses.iter().copied()),
                );
                sorted(v)
            };
            rs.all = edit(&rs.all, &|_| true);
            rs.tagged = edit(&rs.tagged, &|n| n.is_tagged());
            let users: BTreeSet<&str> = [out, into]
                .into_iter()
                .flatten()
                .filter_map(Node::identity_user)
                .collect();
            for u in users {
                let addrs: Vec<IpAddr> = e
                    .user_node_ids(u)
                    .filter(|i| rs.nodes.contains(i))
                    .filter_map(|i| e.get(i))
                    .flat_map(|n| n.addresses.iter().copied())
                    .collect();
                if addrs.is_empty() {
                    rs.by_user.remove(u);
                } else {
                    rs.by_user.insert(u.to_string(), sorted(addrs));
                }
            }
        }
    }
}

impl RuleSources {
    fn refresh(&mut self, e: &Engine) {
        let mut all = Vec::new();
        let mut by_user: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut tagged = Vec::new();
        for n in self.nodes.iter().filter_map(|id| e.get(*id)) {
            all.extend(n.addresses.iter().copied());
            match n.identity_user() {
                Some(u) => by_user
                    .entry(u.to_string())
                    .or_default()
                    .extend(n.addresses.iter().copied()),
                None => tagged.extend(n.addresses.iter().copied()),
            }
        }
        self.all = sorted(all);
        self.by_user = by_user.into_iter().map(|(u, a)| (u, sorted(a))).collect();
        self.tagged = sorted(tagged);
    }
}

/// Builds grants for one rule: a common grant, and where the user has a
/// `localpart:` match, one mapping the local part.
struct Emitter<'a> {
    rule: &'a SshRule,
    base: BTreeMap<String, String>,
    out: Vec<SshGrant>,
}

impl Emitter<'_> {
    fn emit(&mut self, principals: Option<&Principals>, user: Option<&str>) {
        let Some(principals) = principals.filter(|p| !p.is_empty()) else {
            return;
        };
        let grant = |users: BTreeMap<String, String>| SshGrant {
            rule: self.rule.index,
            principals: Arc::clone(principals),
            users,
            action: self.rule.action,
            accept_env: self.rule.accept_env.clone(),
        };
        self.out.push(grant(self.base.clone()));
        if let Some(lp) = user.and_then(|u| self.rule.users.localpart_of(u)) {
            self.out.push(grant(BTreeMap::from([(lp.clone(), lp)])));
        }
    }
}

impl Engine {
    /// The SSH policy of node `name`: the grants its Tailscale SSH server
    /// evaluates in order, first match wins. Deterministic for a given
    /// policy and set of nodes, whatever their insertion order.
    pub fn ssh_rules(&self, name: &str) -> Result<Vec<SshGrant>, EngineError> {
        let id = self
            .id_of(name)
            .ok_or_else(|| EngineError::UnknownNode(name.into()))?;
        Ok(self.ssh_rules_of(id))
    }

    /// Nodes whose SSH policy differs between `self` (the engine before a
    /// policy change) and `newer` (after it), by name; nodes only in
    /// `newer` count when they have SSH rules.
    pub fn ssh_changes(&self, newer: &Engine) -> BTreeSet<String> {
        newer
            .nodes()
            .filter(|n| {
                let before = self.ssh_rules(&n.name).unwrap_or_default();
                newer.ssh_rules(&n.name).unwrap_or_default() != before
            })
            .map(|n| n.name.clone())
            .collect()
    }

    pub(crate) fn ssh_rules_of(&self, id: NodeId) -> Vec<SshGrant> {
        let Some(n) = self.get(id) else {
            return Vec::new();
        };
        let mut grants = Vec::new();
        for (r, rule) in self.policy().ssh.iter().enumerate() {
            let src = self.ssh_sources(r);
            if src.nodes.is_empty() {
                continue;
            }
            let mut em = Emitter {
                rule,
                base: rule.users.map(),
                out: Vec::new(),
            };
            let own_user = n.identity_user();
            if has_self(rule)
                && let Some(u) = own_user
            {
                em.emit(src.by_user.get(u), Some(u));
            }
            let mut others = other_dsts(rule).peekable();
            if others.peek().is_some() {
                let localpart = !rule.users.localpart_domains.is_empty();
                if others.any(|t| dst_selects(self.policy(), t, n)) {
                    if localpart {
                        // One pair of grants per source user (by login),
                        // then the tagged sources.
                        for (u, p) in &src.by_user {
                            em.emit(Some(p), Some(u));
                        }
                        em.emit(Some(&src.tagged), None);
                    } else {
                        em.emit(Some(&src.all), None);
                    }
                } else if localpart && src.nodes.contains(&id) {
                    // A source device that is no destination still gets the
                    // rule, from its own user's source devices (or, tagged,
                    // from itself).
                    match own_user {
                        Some(u) => em.emit(src.by_user.get(u), Some(u)),
                        None => em.emit(Some(&sorted(n.addresses.clone())), None),
                    }
                }
            }
            grants.extend(em.out);
        }
        // Check rules first, then accept rules, each in policy order.
        grants.sort_by_key(|g| matches!(g.action, SshAction::Accept));
        grants
    }

    /// What a change of node `old` into `new` can alter in the rules'
    /// sources, taken before the change.
    pub(crate) fn ssh_sources_before(
        &self,
        old: Option<&Node>,
        new: Option<&Node>,
    ) -> Vec<SourcesBefore> {
        let policy = self.policy();
        let users: BTreeSet<&str> = [old, new]
            .into_iter()
            .flatten()
            .filter_map(Node::identity_user)
            .collect();
        (0..policy.ssh.len())
            .filter(|r| {
                [old, new]
                    .into_iter()
                    .flatten()
                    .any(|n| src_selects(policy, *r, n))
            })
            .map(|r| {
                let src = self.ssh_sources(r);
                SourcesBefore {
                    rule: r,
                    all: Arc::clone(&src.all),
                    tagged: Arc::clone(&src.tagged),
                    users: users
                        .iter()
                        .map(|u| (u.to_string(), src.by_user.get(*u).cloned()))
                        .collect(),
                }
            })
            .collect()
    }

    /// The nodes, other than the one that changed, whose SSH policy differs
    /// now from when `before` was taken. A node's SSH policy depends only
    /// on its own identity and on the rules' source lists, so it changed
    /// exactly when what it receives from one rule changed: the grants of
    /// the rule's destinations (from `all`, or for `localpart:` rules from
    /// every user's list and the tagged list), or its user's list for
    /// `autogroup:self` and the `localpart:` rule a source device receives.
    pub(crate) fn ssh_changed_since(&self, before: Vec<SourcesBefore>) -> BTreeSet<NodeId> {
        let policy = self.policy();
        let mut out = BTreeSet::new();
        for b in before {
            let rule = &policy.ssh[b.rule];
            let now = self.ssh_sources(b.rule);
            let localpart = !rule.users.localpart_domains.is_empty();
            let users: Vec<&str> = b
                .users
                .iter()
                .filter(|(u, p)| p.as_ref() != now.by_user.get(u))
                .map(|(u, _)| u.as_str())
                .collect();
            let dsts_changed = if localpart {
                // Compare what the destinations receive, not the lists: a
                // device moving from a user without a local-part match to
                // the tagged sources can leave the grants as they were.
                let mut old_by_user: BTreeMap<&str, &Principals> =
                    now.by_user.iter().map(|(u, p)| (u.as_str(), p)).collect();
                for (u, p) in &b.users {
                    match p {
                        Some(p) => old_by_user.insert(u, p),
                        None => old_by_user.remove(u.as_str()),
                    };
                }
                let new_by_user = now.by_user.iter().map(|(u, p)| (u.as_str(), p));
                localpart_part(rule, old_by_user.into_iter(), &b.tagged)
                    != localpart_part(rule, new_by_user, &now.tagged)
            } else {
                b.all != now.all
            };
            if dsts_changed {
                for t in other_dsts(rule) {
                    match t {
                        Target::Tag(tag) => out.extend(self.tag_node_ids(tag)),
                        Target::User(u) => out.extend(self.user_node_ids(u)),
                        Target::Tagged => out.extend(self.tagged_node_ids()),
                        Target::Member => out.extend(self.untagged_node_ids()),
                        _ => {}
                    }
                }
            }
            let quirk = localpart && other_dsts(rule).next().is_some();
            for u in users {
                if has_self(rule) {
                    out.extend(self.user_node_ids(u));
                }
                if quirk {
                    out.extend(self.user_node_ids(u).filter(|i| now.nodes.contains(i)));
                }
            }
        }
        out
    }
}

/// What a `localpart:` rule gives its destinations, as (principals, local
/// part mapped) in grant order: per source user a grant with the rule's
/// map and, on a match, one with the local part, then the tagged sources.
fn localpart_part<'a>(
    rule: &SshRule,
    by_user: impl Iterator<Item = (&'a str, &'a Principals)>,
    tagged: &Principals,
) -> Vec<(Principals, Option<String>)> {
    let mut out = Vec::new();
    for (u, p) in by_user.filter(|(_, p)| !p.is_empty()) {
        out.push((Arc::clone(p), None));
        if let Some(lp) = rule.users.localpart_of(u) {
            out.push((Arc::clone(p), Some(lp)));
        }
    }
    if !tagged.is_empty() {
        out.push((Arc::clone(tagged), None));
    }
    out
}

/// One rule's source lists before a node change (see
/// [`Engine::ssh_sources_before`]).
#[derive(Debug)]
pub(crate) struct SourcesBefore {
    rule: usize,
    all: Principals,
    tagged: Principals,
    users: Vec<(String, Option<Principals>)>,
}
