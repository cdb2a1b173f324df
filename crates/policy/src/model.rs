//! The validated policy: what a policy file means once every name is
//! resolved and every value checked.

use crate::hujson::Pos;
use crate::ports::{PortRange, ProtoSet};
use crate::ssh::{SshRule, SshTest};
pub use gatehouse_filter::{RuleId, RuleKind};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// A validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `group:name` → member logins.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Host alias → network.
    pub hosts: BTreeMap<String, IpNet>,
    /// `tag:name` → owners.
    pub tag_owners: BTreeMap<String, Vec<Owner>>,
    /// Every `acls` and `grants` entry, normalised to one form, in file order
    /// (acls first). Evaluation is their union; order does not matter.
    pub rules: Vec<Rule>,
    /// Application capabilities granted by `grants[].app`, carried for later
    /// layers.
    pub app_grants: Vec<AppGrant>,
    /// The policy's own assertions.
    pub tests: Vec<PolicyTest>,
    /// Tailscale SSH rules (`ssh`), in file order.
    pub ssh: Vec<SshRule>,
    /// Assertions about Tailscale SSH access (`sshTests`).
    pub ssh_tests: Vec<SshTest>,
}

/// Who may apply a tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Owner {
    /// A user login.
    User(String),
    /// A `group:`.
    Group(String),
    /// A `tag:` (devices or OAuth clients carrying it).
    Tag(String),
    /// An `autogroup:` such as `autogroup:admin` or `autogroup:member`.
    Autogroup(String),
}

/// What a `src`/`dst` entry selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `*`: every mesh address (and, as a destination, any address).
    All,
    /// A user login: that user's untagged devices.
    User(String),
    /// `group:name`: the untagged devices of its members.
    Group(String),
    /// `tag:name`: devices carrying the tag.
    Tag(String),
    /// A host alias and the network it names.
    Host(String, IpNet),
    /// A literal address or prefix.
    Cidr(IpNet),
    /// `user:*@domain`: the untagged devices of every user whose login is
    /// in that domain (the text after `@`, as written).
    Domain(String),
    /// `autogroup:member`: every untagged device.
    Member,
    /// `autogroup:tagged`: every tagged device.
    Tagged,
    /// `autogroup:self` (destination only): the source user's own devices.
    SelfDevices,
    /// `autogroup:internet` (destination only): public internet via exit nodes.
    Internet,
    /// `autogroup:danger-all` (source only): every address, in and out of
    /// the mesh.
    DangerAll,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str("*"),
            Target::User(u) => f.write_str(u),
            Target::Group(g) => f.write_str(g),
            Target::Tag(t) => f.write_str(t),
            Target::Host(h, _) => f.write_str(h),
            Target::Cidr(n) => {
                if n.prefix_len() == n.max_prefix_len() {
                    write!(f, "{}", n.addr())
                } else {
                    write!(f, "{n}")
                }
            }
            Target::Domain(d) => write!(f, "user:*@{d}"),
            Target::Member => f.write_str("autogroup:member"),
            Target::Tagged => f.write_str("autogroup:tagged"),
            Target::SelfDevices => f.write_str("autogroup:self"),
            Target::Internet => f.write_str("autogroup:internet"),
            Target::DangerAll => f.write_str("autogroup:danger-all"),
        }
    }
}

/// One destination of a rule, with the ports and protocols it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dst {
    /// What is reached.
    pub target: Target,
    /// Ports opened (meaningful for TCP, UDP and SCTP).
    pub ports: Vec<PortRange>,
    /// Protocols opened.
    pub protos: ProtoSet,
}

/// An `acls` or `grants` entry in one normalised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Where it comes from.
    pub id: RuleId,
    /// Where it starts in the file.
    pub pos: Pos,
    /// Sources.
    pub src: Vec<Target>,
    /// Destinations.
    pub dst: Vec<Dst>,
    /// A grant's `via` tags: when present, the rule admits traffic only
    /// through nodes carrying one of them that route its destinations
    /// (subnet routes, or `autogroup:internet` through exit nodes).
    pub via: Vec<String>,
}

impl Rule {
    /// A one-line summary, e.g. `acls[0] (line 12): group:eng -> tag:prod:80,443`.
    pub fn summary(&self) -> String {
        let src: Vec<String> = self.src.iter().map(ToString::to_string).collect();
        let dst: Vec<String> = self
            .dst
            .iter()
            .map(|d| {
                let base = format!("{}:{}", d.target, crate::ports::format_ports(&d.ports));
                if d.protos == ProtoSet::default_set() {
                    base
                } else {
                    format!("{base}/{}", d.protos.names().join("+"))
                }
            })
            .collect();
        let via = if self.via.is_empty() {
            String::new()
        } else {
            format!(" via {}", self.via.join(", "))
        };
        format!(
            "{} (line {}): {} -> {}{via}",
            self.id,
            self.pos.line,
            src.join(", "),
            dst.join(", ")
        )
    }
}

/// Application capabilities of one grant: capability name → parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppGrant {
    /// The grant.
    pub id: RuleId,
    /// Sources.
    #[serde(serialize_with = "ser_targets")]
    pub src: Vec<Target>,
    /// Destinations.
    #[serde(serialize_with = "ser_targets")]
    pub dst: Vec<Target>,
    /// `domain/path` capability name → list of parameter objects.
    pub app: BTreeMap<String, Vec<serde_json::Value>>,
}

fn ser_targets<S: serde::Serializer>(t: &[Target], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(t.iter().map(ToString::to_string))
}

/// One `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// Index in `tests`.
    pub index: usize,
    /// Where it starts.
    pub pos: Pos,
    /// The source identity.
    pub src: Target,
    /// Protocols checked (default TCP).
    pub protos: ProtoSet,
    /// Destinations that must be reachable.
    pub accept: Vec<TestDst>,
    /// Destinations that must not be reachable.
    pub deny: Vec<TestDst>,
}

/// A `target:port` in a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDst {
    /// As written.
    pub text: String,
    /// Where it is.
    pub pos: Pos,
    /// The destination.
    pub target: Target,
    /// The one port.
    pub port: u16,
}
