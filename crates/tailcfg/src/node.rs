//! Nodes as a client sees them (`Node`, `PeerChange`) and the people they
//! belong to (`User`, `Login`, `UserProfile`).

use crate::dns::Resolver;
use crate::hostinfo::Hostinfo;
use crate::key::{DiscoPublic, MachinePublic, NodePublic};
use crate::wire::{CapMap, addr_ports, bytes, cap_map, gotime, is_zero, null_default, opt_cap_map};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use time::OffsetDateTime;

/// A node's numeric ID (`tailcfg.NodeID`): positive, unique per control.
pub type NodeId = i64;
/// A user's numeric ID (`tailcfg.UserID`).
pub type UserId = i64;
/// A login's numeric ID (`tailcfg.LoginID`).
pub type LoginId = i64;
/// A capability version (`tailcfg.CapabilityVersion`).
pub type CapVer = i64;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A device in the tailnet, as sent in `MapResponse.Node` (the client
/// itself) and `Peers`/`PeersChanged`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Node {
    /// Numeric ID.
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// String form of the ID, stable for the node's life.
    #[serde(rename = "StableID")]
    pub stable_id: String,
    /// MagicDNS name, fully qualified with a trailing dot
    /// (`host.example.ts.net.`).
    pub name: String,
    /// The user who owns the node (for tagged nodes, the tagged-devices
    /// user).
    pub user: UserId,
    /// The user who shared the node, if not its owner.
    #[serde(skip_serializing_if = "is_zero")]
    pub sharer: UserId,
    /// WireGuard public key.
    pub key: NodePublic,
    /// When the node key expires (`None`: never).
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<OffsetDateTime>,
    /// Tailnet-lock signature of the node key.
    #[serde(with = "bytes", skip_serializing_if = "Vec::is_empty")]
    pub key_signature: Vec<u8>,
    /// Machine key.
    #[serde(skip_serializing_if = "MachinePublic::is_zero")]
    pub machine: MachinePublic,
    /// Disco key (a peer without one is ignored unless `IsWireGuardOnly`).
    #[serde(skip_serializing_if = "DiscoPublic::is_zero")]
    pub disco_key: DiscoPublic,
    /// The node's own addresses (`/32`, `/128`).
    #[serde(deserialize_with = "null_default")]
    pub addresses: Vec<IpNet>,
    /// Prefixes routed to the node; `None` means the same as `addresses`
    /// (clients of capability version 112 and later).
    #[serde(rename = "AllowedIPs", skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpNet>>,
    /// UDP endpoints (public from STUN, and local).
    #[serde(with = "addr_ports", skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<SocketAddr>,
    /// The home relay as `127.3.3.40:<region>`, for clients older than
    /// capability version 111; newer ones read `home_derp`.
    #[serde(rename = "DERP", skip_serializing_if = "String::is_empty")]
    pub legacy_derp: String,
    /// Home relay region ID (0: unknown).
    #[serde(rename = "HomeDERP", skip_serializing_if = "is_zero")]
    pub home_derp: i32,
    /// The node's host information.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// When the node was created.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub created: Option<OffsetDateTime>,
    /// The node's capability version, if known.
    #[serde(skip_serializing_if = "is_zero")]
    pub cap: CapVer,
    /// ACL tags (`tag:…`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    /// Subnet routes this node is the primary router for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub primary_routes: Vec<IpNet>,
    /// When the node was last online (not set while online).
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<OffsetDateTime>,
    /// Whether the node is connected to control (`None`: unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Whether the node is authorized.
    #[serde(skip_serializing_if = "is_false")]
    pub machine_authorized: bool,
    /// Node capabilities and attributes.
    #[serde(with = "cap_map", skip_serializing_if = "CapMap::is_empty")]
    pub cap_map: CapMap,
    /// Whether the node is outside tailnet lock and may only reach peer APIs.
    #[serde(rename = "UnsignedPeerAPIOnly", skip_serializing_if = "is_false")]
    pub unsigned_peer_api_only: bool,
    /// Display name (filled in by the client, not by control).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub computed_name: String,
    /// Display name with the host name (filled in by the client).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub computed_name_with_host: String,
    /// Per-node data-plane audit log ID.
    #[serde(
        rename = "DataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub data_plane_audit_log_id: String,
    /// Whether the node key has expired.
    #[serde(skip_serializing_if = "is_false")]
    pub expired: bool,
    /// The IPv4 address this peer knows the client by, if not its own.
    #[serde(
        rename = "SelfNodeV4MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v4_masq_addr_for_this_peer: Option<IpAddr>,
    /// The IPv6 address this peer knows the client by, if not its own.
    #[serde(
        rename = "SelfNodeV6MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v6_masq_addr_for_this_peer: Option<IpAddr>,
    /// A plain WireGuard peer: no disco, no relay, reached at `endpoints`.
    #[serde(skip_serializing_if = "is_false")]
    pub is_wire_guard_only: bool,
    /// Whether the node may not initiate connections.
    #[serde(skip_serializing_if = "is_false")]
    pub is_jailed: bool,
    /// DNS servers to use through this node as an exit node
    /// (`IsWireGuardOnly` nodes).
    #[serde(
        rename = "ExitNodeDNSResolvers",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exit_node_dns_resolvers: Vec<Resolver>,
}

/// A partial update of one peer (`MapResponse.PeersChangedPatch`): each
/// field present replaces the peer's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct PeerChange {
    /// The peer.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// New home relay region.
    #[serde(rename = "DERPRegion", skip_serializing_if = "is_zero")]
    pub derp_region: i32,
    /// New capability version.
    #[serde(skip_serializing_if = "is_zero")]
    pub cap: CapVer,
    /// New capability map.
    #[serde(with = "opt_cap_map", skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<CapMap>,
    /// New endpoints.
    #[serde(with = "addr_ports", skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<SocketAddr>,
    /// New node key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<NodePublic>,
    /// New node-key signature.
    #[serde(with = "bytes", skip_serializing_if = "Vec::is_empty")]
    pub key_signature: Vec<u8>,
    /// New disco key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<DiscoPublic>,
    /// New online state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// New last-seen time.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<OffsetDateTime>,
    /// New key expiry.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<OffsetDateTime>,
}

/// A user, as in `RegisterResponse.User`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct User {
    /// Numeric ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Display name.
    pub display_name: String,
    /// Profile picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// When the user was created.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub created: Option<OffsetDateTime>,
}

/// A login at an identity provider, as in `RegisterResponse.Login`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Login {
    /// Numeric ID.
    #[serde(rename = "ID")]
    pub id: LoginId,
    /// Identity provider (`google`, `github`, `oidc`, …).
    pub provider: String,
    /// Email-ish login name.
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Profile picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
}

/// What a client shows for a user (`MapResponse.UserProfiles`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct UserProfile {
    /// The user's numeric ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Email-ish login name.
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Profile picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// Groups the user is in, as control chooses to report them.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
}
