//! From HuJSON text to a validated [`Policy`]: every name resolved, every
//! value checked, each error pointing at its JSON path, line and column.

use crate::hujson::{self, Member, Pos, Spanned, Value};
use crate::model::{
    AppGrant, Dst, Owner, Policy, PolicyTest, Rule, RuleId, RuleKind, Target, TestDst,
};
use crate::ports::{PortRange, ProtoSet, parse_ports, parse_proto, proto};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Why a policy was refused: where (JSON path, line, column) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// JSON path of the offending key or value, e.g. `acls[2].dst[0]`;
    /// empty for syntax errors.
    pub path: String,
    /// Position in the file.
    pub pos: Pos,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.pos, self.message)
        } else {
            write!(f, "{} ({}): {}", self.path, self.pos, self.message)
        }
    }
}

type Result<T> = std::result::Result<T, PolicyError>;

/// Top-level sections Gatehouse evaluates.
const SECTIONS: &[&str] = &[
    "groups",
    "hosts",
    "tagOwners",
    "acls",
    "grants",
    "tests",
    "ssh",
    "sshTests",
];

/// Top-level sections of Tailscale's policy file that are accepted (so
/// existing files load) but do not affect reachability here.
const IGNORED_SECTIONS: &[&str] = &[
    "nodeAttrs",
    "autoApprovers",
    "postures",
    "ipsets",
    "derpMap",
    "disableIPv4",
    "OneCGNATRoute",
    "randomizeClientPort",
];

/// Autogroups that may own tags but are not packet-filter targets.
const OWNER_AUTOGROUPS: &[&str] = &[
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:it-admin",
    "autogroup:network-admin",
    "autogroup:billing-admin",
    "autogroup:auditor",
    "autogroup:member",
    "autogroup:tagged",
];

/// Parses and validates a policy file. The policy's `tests` and `sshTests`
/// are parsed but not run; see [`crate::run_tests`].
pub fn parse_policy(text: &str) -> Result<Policy> {
    let root = hujson::parse(text).map_err(|e| PolicyError {
        path: String::new(),
        pos: e.pos,
        message: e.message,
    })?;
    let members = as_object(&root, "")?;
    let mut sections: BTreeMap<&'static str, &Member> = BTreeMap::new();
    for m in members {
        if m.key.starts_with('#') {
            continue;
        }
        if let Some(name) = SECTIONS.iter().find(|s| s.eq_ignore_ascii_case(&m.key)) {
            if sections.insert(name, m).is_some() {
                return Err(key_err(
                    m,
                    &m.key,
                    "section given twice (keys are case-insensitive)",
                ));
            }
        } else if !IGNORED_SECTIONS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&m.key))
        {
            return Err(key_err(
                m,
                &m.key,
                &format!(
                    "unknown section {:?}; known: {}",
                    m.key,
                    [SECTIONS, IGNORED_SECTIONS].concat().join(", ")
                ),
            ));
        }
    }
    let mut cx = Cx::default();
    if let Some(m) = sections.get("groups") {
        cx.groups(&m.value)?;
    }
    if let Some(m) = sections.get("hosts") {
        cx.hosts(&m.value)?;
    }
    if let Some(m) = sections.get("tagOwners") {
        cx.tag_owners(&m.value)?;
    }
    if let Some(m) = sections.get("acls") {
        for (i, item) in as_array(&m.value, "acls")?.iter().enumerate() {
            let rule = cx.acl(item, i)?;
            cx.policy.rules.push(rule);
        }
    }
    if let Some(m) = sections.get("grants") {
        for (i, item) in as_array(&m.value, "grants")?.iter().enumerate() {
            cx.grant(item, i)?;
        }
    }
    if let Some(m) = sections.get("tests") {
        for (i, item) in as_array(&m.value, "tests")?.iter().enumerate() {
            let t = cx.test(item, i)?;
            cx.policy.tests.push(t);
        }
    }
    // `null` stands for an absent section, as in Tailscale.
    if let Some(m) = sections.get("ssh").filter(|m| m.value.value != Value::Null) {
        for (i, item) in as_array(&m.value, "ssh")?.iter().enumerate() {
            let r = cx.ssh_rule(item, i)?;
            cx.policy.ssh.push(r);
        }
    }
    if let Some(m) = sections
        .get("sshTests")
        .filter(|m| m.value.value != Value::Null)
    {
        for (i, item) in as_array(&m.value, "sshTests")?.iter().enumerate() {
            let t = cx.ssh_test(item, i)?;
            cx.policy.ssh_tests.push(t);
        }
    }
    Ok(cx.policy)
}

fn err(v: &Spanned, path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_string(),
        pos: v.pos,
        message: message.into(),
    }
}

fn key_err(m: &Member, path: &str, message: &str) -> PolicyError {
    PolicyError {
        path: path.to_string(),
        pos: m.key_pos,
        message: message.to_string(),
    }
}

fn as_object<'a>(v: &'a Spanned, path: &str) -> Result<&'a [Member]> {
    match &v.value {
        Value::Object(m) => Ok(m),
        other => Err(err(
            v,
            path,
            format!("expected an object, found {}", other.kind()),
        )),
    }
}

fn as_array<'a>(v: &'a Spanned, path: &str) -> Result<&'a [Spanned]> {
    match &v.value {
        Value::Array(items) => Ok(items),
        other => Err(err(
            v,
            path,
            format!("expected an array, found {}", other.kind()),
        )),
    }
}

fn as_str<'a>(v: &'a Spanned, path: &str) -> Result<&'a str> {
    match &v.value {
        Value::String(s) => Ok(s),
        other => Err(err(
            v,
            path,
            format!("expected a string, found {}", other.kind()),
        )),
    }
}

fn strings<'a>(v: &'a Spanned, path: &str) -> Result<Vec<(String, &'a Spanned, &'a str)>> {
    as_array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = format!("{path}[{i}]");
            let s = as_str(item, &p)?;
            Ok((p, item, s))
        })
        .collect()
}

/// Picks the known fields of an entry (case-insensitively, with aliases),
/// refusing unknown ones. `fields` lists `(canonical, aliases)`.
fn fields<'a>(
    v: &'a Spanned,
    path: &str,
    fields: &[(&'static str, &[&str])],
) -> Result<BTreeMap<&'static str, (String, &'a Spanned)>> {
    let mut out = BTreeMap::new();
    for m in as_object(v, path)? {
        if m.key.starts_with('#') {
            continue;
        }
        let p = format!("{path}.{}", m.key);
        let Some((name, _)) = fields.iter().find(|(name, aliases)| {
            name.eq_ignore_ascii_case(&m.key)
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(&m.key))
        }) else {
            let known: Vec<&str> = fields.iter().map(|f| f.0).collect();
            return Err(key_err(
                m,
                &p,
                &format!(
                    "unknown field {:?}; expected one of: {}",
                    m.key,
                    known.join(", ")
                ),
            ));
        };
        if out.insert(*name, (p.clone(), &m.value)).is_some() {
            return Err(key_err(m, &p, &format!("field {name:?} given twice")));
        }
    }
    Ok(out)
}

fn required<'a>(
    f: &BTreeMap<&'static str, (String, &'a Spanned)>,
    entry: &Spanned,
    path: &str,
    name: &str,
) -> Result<(String, &'a Spanned)> {
    f.get(name)
        .map(|(p, v)| (p.clone(), *v))
        .ok_or_else(|| err(entry, path, format!("missing required field {name:?}")))
}

/// Whether the name after `tag:` is valid: a letter, then letters, digits, dashes.
fn valid_tag(tag: &str) -> std::result::Result<(), &'static str> {
    let Some(name) = tag.strip_prefix("tag:") else {
        return Err("tags start with \"tag:\"");
    };
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => return Err("tag names must start with a letter, after 'tag:'"),
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(())
    } else {
        Err("tag names can only contain letters, numbers, or dashes")
    }
}

fn valid_group(group: &str) -> bool {
    group.strip_prefix("group:").is_some_and(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    })
}

fn valid_user(user: &str) -> bool {
    match user.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && !user.contains(char::is_whitespace)
                && !user.contains(':')
        }
        None => false,
    }
}

fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name.parse::<IpAddr>().is_err()
}

/// Parses an IP address or a canonical prefix.
fn parse_net(s: &str) -> std::result::Result<Option<IpNet>, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Some(IpNet::from(ip)));
    }
    if s.contains('/') {
        return match s.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => Ok(Some(n)),
            Ok(n) => Err(format!(
                "prefix {s:?} has host bits set; did you mean {:?}?",
                n.trunc().to_string()
            )),
            Err(_) => Err(format!("invalid IP prefix {s:?}")),
        };
    }
    Ok(None)
}

/// Which side of a rule a target is on (some targets are valid on one only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
    TestSrc,
    TestDst,
}

#[derive(Default)]
struct Cx {
    policy: Policy,
}

impl Cx {
    fn groups(&mut self, v: &Spanned) -> Result<()> {
        for m in as_object(v, "groups")? {
            let path = format!("groups[{:?}]", m.key);
            if !valid_group(&m.key) {
                return Err(key_err(
                    m,
                    &path,
                    &format!(
                        "invalid group name {:?}: groups are named \"group:<name>\"",
                        m.key
                    ),
                ));
            }
            let mut members = Vec::new();
            for (p, item, s) in strings(&m.value, &path)? {
                if s.starts_with("group:") {
                    return Err(err(
                        item,
                        &p,
                        format!("{s:?}: groups cannot contain other groups"),
                    ));
                }
                if !valid_user(s) {
                    return Err(err(
                        item,
                        &p,
                        format!("{s:?}: group members must be user logins (name@domain)"),
                    ));
                }
                members.push(s.to_string());
            }
            self.policy.groups.insert(m.key.clone(), members);
        }
        Ok(())
    }

    fn hosts(&mut self, v: &Spanned) -> Result<()> {
        for m in as_object(v, "hosts")? {
            let path = format!("hosts[{:?}]", m.key);
            if !valid_host_name(&m.key) {
                return Err(key_err(
                    m,
                    &path,
                    &format!(
                        "invalid host name {:?}: use letters, digits, '-', '_' and '.' (no '@' or ':')",
                        m.key
                    ),
                ));
            }
            let s = as_str(&m.value, &path)?;
            let net = match parse_net(s) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Err(err(
                        &m.value,
                        &path,
                        format!("{s:?} is not an IP address or prefix"),
                    ));
                }
                Err(e) => return Err(err(&m.value, &path, e)),
            };
            self.policy.hosts.insert(m.key.clone(), net);
        }
        Ok(())
    }

    fn tag_owners(&mut self, v: &Spanned) -> Result<()> {
        let members = as_object(v, "tagOwners")?;
        // Declare every tag first: owners may name tags declared later.
        for m in members {
            let path = format!("tagOwners[{:?}]", m.key);
            if let Err(e) = valid_tag(&m.key) {
                return Err(key_err(m, &path, &format!("invalid tag {:?}: {e}", m.key)));
            }
            self.policy.tag_owners.insert(m.key.clone(), Vec::new());
        }
        for m in members {
            let path = format!("tagOwners[{:?}]", m.key);
            let mut owners = BTreeSet::new();
            for (p, item, s) in strings(&m.value, &path)? {
                let owner = if s.starts_with("tag:") {
                    self.check_tag(s, item, &p)?;
                    Owner::Tag(s.into())
                } else if s.starts_with("group:") {
                    self.check_group(s, item, &p)?;
                    Owner::Group(s.into())
                } else if s.starts_with("autogroup:") {
                    if !OWNER_AUTOGROUPS.contains(&s) {
                        return Err(err(item, &p, format!("{s:?} cannot own tags")));
                    }
                    Owner::Autogroup(s.into())
                } else if valid_user(s) {
                    Owner::User(s.into())
                } else {
                    return Err(err(
                        item,
                        &p,
                        format!("{s:?}: tag owners are users, group:, tag: or autogroup: names"),
                    ));
                };
                owners.insert(owner);
            }
            self.policy
                .tag_owners
                .insert(m.key.clone(), owners.into_iter().collect());
        }
        Ok(())
    }

    fn check_tag(&self, s: &str, v: &Spanned, path: &str) -> Result<()> {
        valid_tag(s).map_err(|e| err(v, path, format!("invalid tag {s:?}: {e}")))?;
        if !self.policy.tag_owners.contains_key(s) {
            return Err(err(
                v,
                path,
                format!("tag not found: {s:?} (declare it in tagOwners before using it)"),
            ));
        }
        Ok(())
    }

    fn check_group(&self, s: &str, v: &Spanned, path: &str) -> Result<()> {
        if !self.policy.groups.contains_key(s) {
            return Err(err(v, path, format!("group not defined in policy: {s:?}")));
        }
        Ok(())
    }

    /// Parses one target name (no ports) for the given side.
    fn target(&self, s: &str, v: &Spanned, path: &str, side: Side) -> Result<Target> {
        let fail = |m: String| err(v, path, m);
        let t = if s == "*" {
            if matches!(side, Side::TestSrc | Side::TestDst) {
                return Err(fail("tests cannot use the \"*\" wildcard".into()));
            }
            Target::All
        } else if let Some(name) = s.strip_prefix("autogroup:") {
            if matches!(side, Side::TestSrc | Side::TestDst) {
                return Err(fail(format!("{s:?}: tests do not support autogroups")));
            }
            match (name, side) {
                ("member", _) => Target::Member,
                ("tagged", _) => Target::Tagged,
                ("self", Side::Dst) => Target::SelfDevices,
                ("internet", Side::Dst) => Target::Internet,
                ("danger-all", Side::Src) => Target::DangerAll,
                ("danger-all", _) => {
                    return Err(fail("cannot use autogroup:danger-all as a dst".into()));
                }
                ("self", _) => {
                    return Err(fail(format!("{s:?} not valid on the src side of a rule")));
                }
                ("internet", _) => {
                    return Err(fail(format!("{s:?} is only valid as a destination (dst)")));
                }
                _ => return Err(fail(format!("{s:?} is not supported in rules"))),
            }
        } else if let Some(rest) = s.strip_prefix("user:") {
            if matches!(side, Side::TestSrc | Side::TestDst) {
                return Err(fail(format!(
                    "{s:?}: tests name one user, not every user of a domain"
                )));
            }
            let Some(domain) = rest.strip_prefix("*@") else {
                return Err(fail(format!(
                    "{s:?}: the user: prefix selects every user of a domain, user:*@domain; name one user by login alone"
                )));
            };
            if !ssh::valid_domain(domain) {
                return Err(fail(format!(
                    "{s:?}: the domain after user:*@ must be a lower-case DNS name"
                )));
            }
            Target::Domain(domain.into())
        } else if s.starts_with("tag:") {
            self.check_tag(s, v, path)?;
            Target::Tag(s.into())
        } else if s.starts_with("group:") {
            self.check_group(s, v, path)?;
            Target::Group(s.into())
        } else if s.contains('@') {
            if !valid_user(s) {
                return Err(fail(format!("invalid user {s:?}: users are name@domain")));
            }
            Target::User(s.into())
        } else if let Some(net) = self.policy.hosts.get(s) {
            Target::Host(s.into(), *net)
        } else {
            match parse_net(s) {
                Ok(Some(n)) => Target::Cidr(n),
                Ok(None) => {
                    return Err(fail(format!(
                        "unknown target {s:?}: not a user, group:, tag:, autogroup:, host alias, IP or prefix"
                    )));
                }
                Err(e) => return Err(fail(e)),
            }
        };
        if side == Side::TestDst || side == Side::TestSrc {
            // A literal prefix is refused even when it is one address
            // (`100.64.0.16/32`): tests name hosts, users, tags or addresses.
            let is_prefix = match &t {
                Target::Cidr(n) => n.prefix_len() != n.max_prefix_len() || s.contains('/'),
                Target::Host(_, n) => n.prefix_len() != n.max_prefix_len(),
                _ => false,
            };
            if is_prefix {
                return Err(fail(format!(
                    "{s:?}: tests take single addresses, not prefixes"
                )));
            }
        }
        Ok(t)
    }

    /// Splits `target:ports` on the last colon (IPv6 may be bracketed).
    fn split_host_port<'s>(
        &self,
        s: &'s str,
        v: &Spanned,
        path: &str,
    ) -> Result<(&'s str, &'s str)> {
        if let Some(rest) = s.strip_prefix('[') {
            let Some((host, ports)) = rest.split_once("]:") else {
                return Err(err(v, path, format!("{s:?}: expected [IPv6]:ports")));
            };
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err(
                    v,
                    path,
                    format!("{s:?}: brackets are only for IPv6 addresses"),
                ));
            }
            return Ok((host, ports));
        }
        match s.rsplit_once(':') {
            Some((host, ports)) if !host.is_empty() => Ok((host, ports)),
            _ => Err(err(
                v,
                path,
                format!(
                    "{s:?}: destination must be target:ports (e.g. \"tag:web:443\" or \"*:*\")"
                ),
            )),
        }
    }

    fn dst_with_ports(
        &self,
        s: &str,
        v: &Spanned,
        path: &str,
        side: Side,
    ) -> Result<(Target, Vec<PortRange>)> {
        let (host, port_spec) = self.split_host_port(s, v, path)?;
        let ports = match parse_ports(port_spec) {
            Ok(p) => p,
            Err(e) => {
                // "tag:web" alone splits into "tag" + "web": say what is missing.
                if self.target(s, v, path, side).is_ok() {
                    return Err(err(
                        v,
                        path,
                        format!("{s:?}: missing port; write {s}:* or {s}:PORT"),
                    ));
                }
                return Err(err(v, path, format!("{s:?}: {e}")));
            }
        };
        if ports.iter().any(|p| p.first == 0 && *p != PortRange::ALL) {
            return Err(err(
                v,
                path,
                format!("{s:?}: first port must be >0, or use '*' for wildcard"),
            ));
        }
        let target = self.target(host, v, path, side)?;
        Ok((target, ports))
    }

    fn protos(&self, f: &BTreeMap<&'static str, (String, &Spanned)>) -> Result<Option<ProtoSet>> {
        let Some((p, v)) = f.get("proto") else {
            return Ok(None);
        };
        let s = as_str(v, p)?;
        match parse_proto(&s.to_ascii_lowercase()) {
            Some(n) => Ok(Some(ProtoSet::of(&[n]))),
            None => Err(err(
                v,
                p,
                format!("proto name {s:?} not known; use a protocol name or number 1-255"),
            )),
        }
    }

    /// The sources a rule with an `autogroup:self` destination may have:
    /// people (users, groups, `user:*@domain`, `autogroup:member`), and in
    /// `acls` (`star_ok`) also `*`, which `autogroup:self` narrows to each device's own
    /// user. Tags, addresses and the other autogroups are refused.
    fn check_self_sources(
        &self,
        src: &[Target],
        star_ok: bool,
        entry: &Spanned,
        path: &str,
    ) -> Result<()> {
        let ok = |t: &Target| match t {
            Target::User(_) | Target::Group(_) | Target::Domain(_) | Target::Member => true,
            Target::All => star_ok,
            _ => false,
        };
        if let Some(bad) = src.iter().find(|t| !ok(t)) {
            return Err(err(
                entry,
                path,
                format!(
                    "autogroup:self can only be used with users, groups, or supported autogroups (not {:?}{})",
                    bad.to_string(),
                    if *bad == Target::All {
                        "; in grants, list autogroup:member instead"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(())
    }

    /// A rule's sources; `empty_ok` for grants, where an empty list is
    /// valid and selects nothing.
    fn sources(
        &self,
        (p, v): &(String, &Spanned),
        side: Side,
        empty_ok: bool,
    ) -> Result<Vec<Target>> {
        let list = strings(v, p)?;
        if list.is_empty() && !empty_ok {
            return Err(err(v, p, "must list at least one source"));
        }
        list.iter()
            .map(|(ip, item, s)| self.target(s, item, ip, side))
            .collect()
    }

    fn acl(&self, entry: &Spanned, i: usize) -> Result<Rule> {
        let path = format!("acls[{i}]");
        let f = fields(
            entry,
            &path,
            &[
                ("action", &[]),
                ("src", &["users"]),
                ("dst", &["ports"]),
                ("proto", &[]),
                ("srcPosture", &[]),
            ],
        )?;
        let (ap, av) = required(&f, entry, &path, "action")?;
        let action = as_str(av, &ap)?;
        if action != "accept" {
            return Err(err(
                av,
                &ap,
                format!(
                    "action={action:?} is not supported: the only action is \"accept\" (access is denied by default)"
                ),
            ));
        }
        let src = self.sources(&required(&f, entry, &path, "src")?, Side::Src, false)?;
        let explicit = self.protos(&f)?;
        let protos = explicit.unwrap_or_else(ProtoSet::default_set);
        let (dp, dv) = required(&f, entry, &path, "dst")?;
        let list = strings(dv, &dp)?;
        if list.is_empty() {
            return Err(err(dv, &dp, "must list at least one destination"));
        }
        let mut dst = Vec::new();
        for (ip, item, s) in list {
            let (target, ports) = self.dst_with_ports(s, item, &ip, Side::Dst)?;
            if explicit.is_some() && !protos.has_ports() && ports != [PortRange::ALL] {
                return Err(err(
                    item,
                    &ip,
                    format!(
                        "{s:?}: protocol {} does not support specific ports, only \"*\"",
                        protos.names().join(",")
                    ),
                ));
            }
            if target == Target::SelfDevices {
                self.check_self_sources(&src, true, entry, &path)?;
            }
            dst.push(Dst {
                target,
                ports,
                protos,
            });
        }
        Ok(Rule {
            id: RuleId {
                kind: RuleKind::Acl,
                index: i,
            },
            pos: entry.pos,
            src,
            dst,
            via: Vec::new(),
        })
    }

    /// Parses one grant `ip` entry: `*`, `443`, `80-443`, `tcp:443`, `icmp:*`, `6:22`.
    fn grant_ip(&self, s: &str, v: &Spanned, path: &str) -> Result<(ProtoSet, Vec<PortRange>)> {
        if s == "*" {
            return Ok((ProtoSet::all(), vec![PortRange::ALL]));
        }
        let (protos, spec) = match s.split_once(':') {
            Some((p, spec)) => match parse_proto(&p.to_ascii_lowercase()) {
                Some(n) => (ProtoSet::of(&[n]), spec),
                None => {
                    return Err(err(v, path, format!("{s:?}: unknown protocol {p:?}")));
                }
            },
            None => (ProtoSet::default_set(), s),
        };
        let ports = parse_ports(spec).map_err(|e| err(v, path, format!("{s:?}: {e}")))?;
        if ports.iter().any(|p| p.first == 0 && *p != PortRange::ALL) {
            return Err(err(
                v,
                path,
                format!("{s:?}: first port must be >0, or use '*' for wildcard"),
            ));
        }
        if s.contains(':') && !protos.has_ports() && ports != [PortRange::ALL] {
            return Err(err(
                v,
                path,
                format!("{s:?}: this protocol does not support specific ports, only \"*\""),
            ));
        }
        Ok((protos, ports))
    }

    fn grant(&mut self, entry: &Spanned, i: usize) -> Result<()> {
        let path = format!("grants[{i}]");
        let f = fields(
            entry,
            &path,
            &[
                ("src", &[]),
                ("dst", &[]),
                ("ip", &[]),
                ("app", &[]),
                ("via", &[]),
                ("srcPosture", &[]),
            ],
        )?;
        // Empty `src` or `dst` lists are valid in a grant and grant nothing.
        let src = self.sources(&required(&f, entry, &path, "src")?, Side::Src, true)?;
        let (dp, dv) = required(&f, entry, &path, "dst")?;
        let list = strings(dv, &dp)?;
        let mut dst_targets = Vec::new();
        for (p, item, s) in &list {
            let t = self.target(s, item, p, Side::Dst).map_err(|e| {
                let with_ports = self
                    .split_host_port(s, item, p)
                    .is_ok_and(|(host, _)| self.target(host, item, p, Side::Dst).is_ok());
                if with_ports {
                    err(
                        item,
                        p,
                        format!("{s:?}: grant destinations take no ports; put them in \"ip\""),
                    )
                } else {
                    e
                }
            })?;
            if let Target::Cidr(n) | Target::Host(_, n) = &t
                && n.prefix_len() == 0
            {
                return Err(err(
                    item,
                    p,
                    format!(
                        "dst {s:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\""
                    ),
                ));
            }
            if t == Target::SelfDevices {
                self.check_self_sources(&src, false, entry, &path)?;
            }
            dst_targets.push(t);
        }
        let mut via = Vec::new();
        // `null` and `[]` both mean no routing restriction.
        if let Some((vp, vv)) = f.get("via").filter(|(_, v)| v.value != Value::Null) {
            for (p, item, s) in strings(vv, vp)? {
                if !s.starts_with("tag:") {
                    return Err(err(item, &p, format!("{s:?}: via can only be a tag")));
                }
                self.check_tag(s, item, &p)?;
                if !via.iter().any(|t| t == s) {
                    via.push(s.to_string());
                }
            }
        }
        let ip = match f.get("ip") {
            Some((p, v)) => strings(v, p)?
                .into_iter()
                .map(|(ip, item, s)| self.grant_ip(s, item, &ip))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let app = match f.get("app") {
            Some((p, v)) => self.app(v, p)?,
            None => BTreeMap::new(),
        };
        if ip.is_empty() && app.is_empty() {
            return Err(err(entry, &path, "ip and app can not both be empty"));
        }
        if !app.is_empty() && dst_targets.contains(&Target::Internet) {
            return Err(err(
                dv,
                &dp,
                "cannot use app grants with autogroup:internet",
            ));
        }
        let id = RuleId {
            kind: RuleKind::Grant,
            index: i,
        };
        if src.is_empty() || dst_targets.is_empty() {
            return Ok(());
        }
        if !ip.is_empty() {
            let mut dst = Vec::new();
            for t in &dst_targets {
                for (protos, ports) in &ip {
                    dst.push(Dst {
                        target: t.clone(),
                        ports: ports.clone(),
                        protos: *protos,
                    });
                }
            }
            self.policy.rules.push(Rule {
                id,
                pos: entry.pos,
                src: src.clone(),
                dst,
                via,
            });
        }
        if !app.is_empty() {
            self.policy.app_grants.push(AppGrant {
                id,
                src,
                dst: dst_targets,
                app,
            });
        }
        Ok(())
    }

    fn app(&self, v: &Spanned, path: &str) -> Result<BTreeMap<String, Vec<serde_json::Value>>> {
        let mut out = BTreeMap::new();
        for m in as_object(v, path)? {
            let p = format!("{path}[{:?}]", m.key);
            if let Err(e) = valid_capability(&m.key) {
                return Err(key_err(
                    m,
                    &p,
                    &format!("invalid capability name {:?}: {e}", m.key),
                ));
            }
            let items = as_array(&m.value, &p)?;
            let mut params = Vec::new();
            for (j, item) in items.iter().enumerate() {
                if !matches!(item.value, Value::Object(_)) {
                    return Err(err(
                        item,
                        &format!("{p}[{j}]"),
                        format!(
                            "capability parameters are objects, found {}",
                            item.value.kind()
                        ),
                    ));
                }
                params.push(item.value.to_json());
            }
            out.insert(m.key.clone(), params);
        }
        Ok(out)
    }

    fn test(&self, entry: &Spanned, i: usize) -> Result<PolicyTest> {
        let path = format!("tests[{i}]");
        let f = fields(
            entry,
            &path,
            &[
                ("src", &["user"]),
                ("proto", &[]),
                ("accept", &["allow"]),
                ("deny", &[]),
                ("srcPostureAttrs", &[]),
            ],
        )?;
        let (sp, sv) = required(&f, entry, &path, "src")?;
        let src_text = as_str(sv, &sp)?;
        let src = self.target(src_text, sv, &sp, Side::TestSrc)?;
        let protos = match self.protos(&f)? {
            None => ProtoSet::of(&[proto::TCP, proto::UDP]),
            Some(p) if p.only_ported() => p,
            Some(p) => {
                let (pp, pv) = required(&f, entry, &path, "proto")?;
                return Err(err(
                    pv,
                    &pp,
                    format!("tests check tcp, udp or sctp, not {}", p.names().join(",")),
                ));
            }
        };
        let mut lists = [Vec::new(), Vec::new()];
        for (k, name) in ["accept", "deny"].iter().enumerate() {
            let Some((lp, lv)) = f.get(name) else {
                continue;
            };
            for (p, item, s) in strings(lv, lp)? {
                let (target, ports) = self.dst_with_ports(s, item, &p, Side::TestDst)?;
                let port = match ports.as_slice() {
                    [r] if r.first == r.last => r.first,
                    _ => {
                        return Err(err(item, &p, format!("{s:?}: tests take exactly one port")));
                    }
                };
                lists[k].push(TestDst {
                    text: s.to_string(),
                    pos: item.pos,
                    target,
                    port,
                });
            }
        }
        let [accept, deny] = lists;
        if accept.is_empty() && deny.is_empty() {
            return Err(err(
                entry,
                &path,
                "a test needs at least one accept or deny entry",
            ));
        }
        Ok(PolicyTest {
            index: i,
            pos: entry.pos,
            src,
            protos,
            accept,
            deny,
        })
    }
}

/// The capabilities of Tailscale's own domain that a policy may grant
/// (Taildrive, peer relays, the web UI, the Kubernetes API proxy, tsidp,
/// setec); the others are set by control itself.
const USER_GRANTABLE_TAILSCALE_CAPS: &[&str] = &[
    "tailscale.com/cap/drive",
    "tailscale.com/cap/relay",
    "tailscale.com/cap/webui",
    "tailscale.com/cap/kubernetes",
    "tailscale.com/cap/tsidp",
    "tailscale.com/cap/secrets",
];

/// Capability names are `domain/path`: a DNS-style domain with a dot, then
/// a non-empty path.
fn valid_capability(name: &str) -> std::result::Result<(), &'static str> {
    if name.contains("://") {
        return Err("no scheme: write domain/path");
    }
    let Some((domain, rest)) = name.split_once('/') else {
        return Err("expected domain/path");
    };
    if domain.eq_ignore_ascii_case("tailscale.com")
        && !USER_GRANTABLE_TAILSCALE_CAPS.contains(&name)
    {
        return Err("capability name must not be in the tailscale.com domain");
    }
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !domain_ok {
        return Err("the domain must be a DNS name such as example.com");
    }
    if rest.is_empty()
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err("the path must be non-empty letters, digits, '-', '_', '.', '/'");
    }
    Ok(())
}

mod ssh;

#[cfg(test)]
mod ssh_tests;
#[cfg(test)]
mod tests;
