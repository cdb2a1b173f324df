//! The native map stream's messages, as Tailscale's `MapResponse`s: the
//! same full map and deltas (`Hub::open_stream`, `Hub::delta`), in
//! Tailscale's field names and forms.

use gatehouse_proto::control::{DnsConfig, FullMap, MapDelta, Peer, RelayMap};
use gatehouse_tailcfg::{
    DerpMap, DerpNode, DerpRegion, Hostinfo, Login, MapResponse, Node, NodePublic, SshAction,
    SshPolicy, SshPrincipal, SshRule, User, UserProfile,
};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// The login Tailscale clients show for tagged devices (they belong to no
/// person).
const TAGGED_DEVICES: &str = "tagged-devices";

/// Tailscale's numeric ID for a node id or user login: the first 63 bits of
/// its SHA-256 (stable across restarts and replicas, never negative).
pub(crate) fn id_of(kind: &str, name: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let id = i64::from_be_bytes(b) & i64::MAX;
    id.max(1)
}

pub(crate) fn node_id(id: &str) -> i64 {
    id_of("node", id)
}

fn user_login(user: Option<&str>, tagged: bool) -> &str {
    match user {
        Some(u) if !tagged => u,
        _ => TAGGED_DEVICES,
    }
}

fn user_id(login: &str) -> i64 {
    id_of("user", login)
}

fn display_name(login: &str) -> String {
    if login == TAGGED_DEVICES {
        "Tagged Devices".into()
    } else {
        login.split('@').next().unwrap_or(login).to_string()
    }
}

/// The `User` and `Login` a registration answer names.
pub(crate) fn owner(user: Option<&str>, tagged: bool) -> (User, Login) {
    let login = user_login(user, tagged);
    let id = user_id(login);
    (
        User {
            id,
            display_name: display_name(login),
            ..User::default()
        },
        Login {
            id,
            login_name: login.to_string(),
            display_name: display_name(login),
            ..Login::default()
        },
    )
}

fn profile(login: &str) -> UserProfile {
    UserProfile {
        id: user_id(login),
        login_name: login.to_string(),
        display_name: display_name(login),
        ..UserProfile::default()
    }
}

/// A Tailscale node key as control stores WireGuard keys (base64).
pub(crate) fn wg_key_of(k: &NodePublic) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.as_bytes())
}

fn node_key(wg_base64: &str) -> NodePublic {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(wg_base64)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map_or(NodePublic::ZERO, NodePublic::from_bytes)
}

fn time_of(unix: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()
}

/// A node as Tailscale clients see it.
pub(crate) fn node(p: &Peer) -> Node {
    let addresses: Vec<IpNet> = p.addresses.iter().map(|a| IpNet::from(*a)).collect();
    let login = user_login(p.user.as_deref(), !p.tags.is_empty());
    Node {
        id: node_id(&p.id),
        stable_id: p.id.clone(),
        name: format!("{}.", p.fqdn),
        user: user_id(login),
        key: node_key(&p.wireguard_key),
        key_expiry: time_of(p.key_expiry),
        disco_key: p
            .disco_key
            .as_deref()
            .and_then(|k| k.parse().ok())
            .unwrap_or(gatehouse_tailcfg::DiscoPublic::ZERO),
        allowed_ips: Some(addresses.clone()),
        addresses,
        endpoints: p.endpoints.clone(),
        home_derp: p.home_relay.map_or(0, i32::from),
        hostinfo: Some(Hostinfo {
            hostname: p.name.clone(),
            ..Hostinfo::default()
        }),
        tags: p.tags.clone(),
        online: p.online,
        machine_authorized: true,
        ..Node::default()
    }
}

/// Capabilities control gives every Tailscale device about itself.
/// Captive-portal detection is off: it probes Tailscale's own servers,
/// which a self-hosted network neither needs nor may reach.
const SELF_CAPS: &[&str] = &["disable-captive-portal-detection"];

/// The device's own node: as peers see it, with its capabilities.
pub(crate) fn self_node(p: &Peer) -> Node {
    let mut n = node(p);
    for cap in SELF_CAPS {
        n.cap_map.insert((*cap).to_string(), Vec::new());
    }
    n
}

/// The relay map in Tailscale's form. Only these regions are used (no
/// Tailscale-run relays).
pub(crate) fn derp_map(relays: &RelayMap) -> DerpMap {
    let regions = relays
        .regions
        .iter()
        .map(|r| {
            let id = i32::from(r.id);
            let nodes = r
                .nodes
                .iter()
                .map(|n| {
                    let ip = n.host.parse::<std::net::IpAddr>().ok();
                    DerpNode {
                        name: n.name.clone(),
                        region_id: id,
                        host_name: n.host.clone(),
                        ipv4: ip
                            .filter(std::net::IpAddr::is_ipv4)
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                        ipv6: ip
                            .filter(std::net::IpAddr::is_ipv6)
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                        derp_port: i32::from(n.port),
                        // Tailscale: 0 is the default port (3478), -1 none.
                        stun_port: n.stun_port.map_or(-1, i32::from),
                        ..DerpNode::default()
                    }
                })
                .collect();
            (
                id,
                DerpRegion {
                    region_id: id,
                    region_code: r.code.clone(),
                    region_name: if r.name.is_empty() {
                        r.code.clone()
                    } else {
                        r.name.clone()
                    },
                    nodes,
                    ..DerpRegion::default()
                },
            )
        })
        .collect();
    DerpMap {
        regions,
        omit_default_regions: true,
        ..DerpMap::default()
    }
}

/// The device's SSH policy in Tailscale's form. `check` rules (a recent
/// sign-in required) need a sign-in provider, which control does not have
/// yet: they refuse, saying why, rather than admit.
pub(crate) fn ssh_policy(grants: &[gatehouse_filter::ssh::SshGrant]) -> SshPolicy {
    use gatehouse_filter::ssh::SshAction as Action;
    SshPolicy {
        rules: grants
            .iter()
            .map(|g| SshRule {
                principals: g
                    .principals
                    .iter()
                    .map(|ip| SshPrincipal {
                        node_ip: ip.to_string(),
                        ..SshPrincipal::default()
                    })
                    .collect(),
                ssh_users: g.users.clone(),
                action: Some(match g.action {
                    Action::Accept => SshAction::accept(),
                    Action::Check { .. } => SshAction::reject(
                        "this rule needs a recent sign-in (check mode), which this control server cannot ask for yet",
                    ),
                }),
                accept_env: g.accept_env.clone(),
                ..SshRule::default()
            })
            .collect(),
    }
}

/// MagicDNS: clients answer the network's names themselves.
pub(crate) fn dns(d: &DnsConfig) -> gatehouse_tailcfg::DnsConfig {
    let mut domains = vec![d.domain.clone()];
    for s in &d.search {
        if !domains.contains(s) {
            domains.push(s.clone());
        }
    }
    gatehouse_tailcfg::DnsConfig {
        domains,
        proxied: true,
        ..gatehouse_tailcfg::DnsConfig::default()
    }
}

fn profiles<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Vec<UserProfile> {
    let logins: BTreeSet<&str> = peers
        .into_iter()
        .map(|p| user_login(p.user.as_deref(), !p.tags.is_empty()))
        .collect();
    logins.into_iter().map(profile).collect()
}

fn sorted(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.sort_by_key(|n| n.id);
    nodes
}

/// The first message of a stream: everything (`now`: control's clock,
/// Unix seconds).
pub(crate) fn full(m: &FullMap, now: i64) -> MapResponse {
    let me = &m.self_node.node;
    MapResponse {
        node: Some(self_node(me)),
        derp_map: Some(derp_map(&m.relays)),
        peers: Some(sorted(m.peers.iter().map(node).collect())),
        dns_config: Some(dns(&m.dns)),
        domain: m.dns.domain.clone(),
        collect_services: Some(false),
        user_profiles: Some(profiles(m.peers.iter().chain(std::iter::once(me)))),
        ssh_policy: Some(ssh_policy(&m.ssh)),
        control_time: time_of(now),
        ..MapResponse::default()
    }
    .with_base_filter(gatehouse_tailcfg::packet_filter(&m.filter))
}

/// A change: only what changed is set (a field left out means unchanged).
pub(crate) fn delta(d: &MapDelta) -> MapResponse {
    let mut r = MapResponse::default();
    let mut touched: Vec<&Peer> = d.peers_upsert.iter().collect();
    if let Some(me) = &d.self_node {
        r.node = Some(self_node(&me.node));
        touched.push(&me.node);
    }
    if !d.peers_upsert.is_empty() {
        r.peers_changed = Some(sorted(d.peers_upsert.iter().map(node).collect()));
    }
    if !touched.is_empty() {
        r.user_profiles = Some(profiles(touched));
    }
    if !d.peers_removed.is_empty() {
        r.peers_removed = Some(d.peers_removed.iter().map(|id| node_id(id)).collect());
    }
    if let Some(dns) = &d.dns {
        r.dns_config = Some(self::dns(dns));
        r.domain = dns.domain.clone();
    }
    if let Some(relays) = &d.relays {
        r.derp_map = Some(derp_map(relays));
    }
    if let Some(ssh) = &d.ssh {
        r.ssh_policy = Some(ssh_policy(ssh));
    }
    if !d.online.is_empty() {
        r.online_change = Some(d.online.iter().map(|(id, on)| (node_id(id), *on)).collect());
    }
    if let Some(f) = &d.filter {
        r = r.with_base_filter(gatehouse_tailcfg::packet_filter(f));
    }
    r
}

/// Keep-alives carry control's time too.
pub(crate) fn keep_alive(now: i64) -> MapResponse {
    MapResponse {
        control_time: time_of(now),
        ..MapResponse::keep_alive()
    }
}
