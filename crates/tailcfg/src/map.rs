//! The map poll: what a client sends to `/machine/map` (`MapRequest`) and
//! the stream of `MapResponse`s it gets back.
//!
//! In a `MapResponse` an absent field means "unchanged" (the first
//! response of a stream is complete, later ones carry only what changed),
//! so every field is an `Option` (or empty) and omitted when `None`. A
//! present but empty list is different from an absent one where Tailscale
//! says so: `PacketFilter: []` blocks everything, `Health: []` clears the
//! health messages.

use crate::derp::DerpMap;
use crate::dns::DnsConfig;
use crate::filter::FilterRule;
use crate::hostinfo::Hostinfo;
use crate::key::{DiscoPublic, NodePublic};
use crate::node::{CapVer, Node, NodeId, PeerChange, UserProfile};
use crate::ssh::SshPolicy;
use crate::wire::{addr_ports, bytes, gotime, is_zero, null_default, opt_ip};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use time::OffsetDateTime;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The kind of an endpoint in `MapRequest.EndpointTypes` (an integer on
/// the wire).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct EndpointType(pub i32);

impl EndpointType {
    /// Unknown.
    pub const UNKNOWN: EndpointType = EndpointType(0);
    /// A local interface address.
    pub const LOCAL: EndpointType = EndpointType(1);
    /// Learned with STUN.
    pub const STUN: EndpointType = EndpointType(2);
    /// A port mapping (UPnP, NAT-PMP, PCP).
    pub const PORTMAPPED: EndpointType = EndpointType(3);
    /// The STUN address with the local port (hard NAT).
    pub const STUN4_LOCAL_PORT: EndpointType = EndpointType(4);
    /// Configured explicitly.
    pub const EXPLICIT_CONF: EndpointType = EndpointType(5);
}

/// What a client sends to `POST /machine/map`: its current state, and
/// whether it wants one response or a stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct MapRequest {
    /// The client's capability version.
    pub version: CapVer,
    /// `zstd` or empty: whether response frames are compressed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub compress: String,
    /// Whether the client wants keep-alive responses.
    #[serde(skip_serializing_if = "is_false")]
    pub keep_alive: bool,
    /// The client's node key.
    pub node_key: NodePublic,
    /// The client's disco key.
    pub disco_key: DiscoPublic,
    /// Whether to stream responses (a long poll); with version 68 and
    /// later, a streaming request's host information and endpoints are to
    /// be ignored.
    #[serde(skip_serializing_if = "is_false")]
    pub stream: bool,
    /// The client's host information.
    pub hostinfo: Option<Hostinfo>,
    /// A previous session to resume.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// The last sequence number processed in that session.
    #[serde(skip_serializing_if = "is_zero")]
    pub map_session_seq: i64,
    /// The client's UDP endpoints.
    #[serde(with = "addr_ports", skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<SocketAddr>,
    /// The kind of each endpoint, in the same order.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoint_types: Vec<EndpointType>,
    /// The client's tailnet-lock head.
    #[serde(rename = "TKAHead", skip_serializing_if = "String::is_empty")]
    pub tka_head: String,
    /// Fetch without updating endpoints (always false from version 68).
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Whether the peer list may be left out; with `!stream` it is an
    /// endpoint update answered by status alone.
    #[serde(skip_serializing_if = "is_false")]
    pub omit_peers: bool,
    /// Debug and warning flags (`warn-ip-forwarding-off`, …).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub debug_flags: Vec<String>,
    /// An opaque test handle for the connection.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connection_handle_for_test: String,
}

impl MapRequest {
    /// How the responses to this request are framed.
    pub fn compression(&self) -> crate::frame::Compression {
        crate::frame::Compression::from_request(&self.compress)
    }

    /// Whether this is an endpoint update answered by the HTTP status
    /// alone (`!Stream && OmitPeers && !ReadOnly`).
    pub fn is_lite_update(&self) -> bool {
        !self.stream && self.omit_peers && !self.read_only
    }
}

/// A request to the client to prove it is there, or to run a ping or a
/// control-to-node request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct PingRequest {
    /// Where to answer (unique per request).
    #[serde(rename = "URL")]
    pub url: String,
    /// Answer over the Noise channel rather than TLS.
    #[serde(rename = "URLIsNoise", skip_serializing_if = "is_false")]
    pub url_is_noise: bool,
    /// Log the ping on success.
    #[serde(skip_serializing_if = "is_false")]
    pub log: bool,
    /// Ping kinds, comma-separated (`disco,TSMP`), or `c2n`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub types: String,
    /// The ping target, when the kinds need one.
    #[serde(
        rename = "IP",
        with = "opt_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub ip: Option<IpAddr>,
    /// The HTTP request of a `c2n` ping.
    #[serde(with = "bytes", skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<u8>,
}

/// Debug settings control may push.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Debug {
    /// Sleep this many seconds (to slow a spinning client).
    #[serde(skip_serializing_if = "is_zero")]
    pub sleep_seconds: f64,
    /// Turn off the client's log upload.
    #[serde(skip_serializing_if = "is_false")]
    pub disable_log_tail: bool,
    /// Exit with this code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// A health message shown in the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DisplayMessage {
    /// One-line title.
    pub title: String,
    /// Longer text.
    pub text: String,
    /// `high`, `medium` or `low`.
    pub severity: String,
    /// Whether it affects connectivity.
    #[serde(skip_serializing_if = "is_false")]
    pub impacts_connectivity: bool,
}

/// One message of the map stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct MapResponse {
    /// Handle of a resumable session (first response only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// Sequence number within the session.
    #[serde(skip_serializing_if = "is_zero")]
    pub seq: i64,
    /// A keep-alive: everything else but `ping_request` and
    /// `control_time` is ignored.
    #[serde(skip_serializing_if = "is_false")]
    pub keep_alive: bool,
    /// Ask the client to prove it is there (or to ping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_request: Option<PingRequest>,
    /// A URL for the client to open.
    #[serde(rename = "PopBrowserURL", skip_serializing_if = "String::is_empty")]
    pub pop_browser_url: String,
    /// The client's own node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// The relay map.
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<DerpMap>,
    /// Every peer, sorted by ID (full maps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Node>>,
    /// Peers added or changed, sorted by ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_changed: Option<Vec<Node>>,
    /// Peers removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_removed: Option<Vec<NodeId>>,
    /// Partial peer updates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_changed_patch: Option<Vec<PeerChange>>,
    /// Peer ID → seen now (`true`) or gone (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_seen_change: Option<BTreeMap<NodeId, bool>>,
    /// Peer ID → online.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_change: Option<BTreeMap<NodeId, bool>>,
    /// DNS configuration.
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// The tailnet's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Whether clients should report their services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collect_services: Option<bool>,
    /// The whole packet filter (same as `packet_filters["base"]`); an
    /// empty list blocks every inbound packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// Named parts of the packet filter, concatenated by the client; a
    /// `None` value deletes the part, and the key `*` with `None` clears
    /// every part first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_filters: Option<BTreeMap<String, Option<Vec<FilterRule>>>>,
    /// New or changed user profiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_profiles: Option<Vec<UserProfile>>,
    /// Health problems control sees (empty: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// Structured health messages by ID (`None` deletes one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_messages: Option<BTreeMap<String, Option<DisplayMessage>>>,
    /// The SSH policy.
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<SshPolicy>,
    /// Control's clock.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub control_time: Option<OffsetDateTime>,
    /// Per-tailnet data-plane audit log ID.
    #[serde(
        rename = "DomainDataPlaneAuditLogID",
        skip_serializing_if = "String::is_empty"
    )]
    pub domain_data_plane_audit_log_id: String,
    /// Debug settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
}

impl MapResponse {
    /// The packet-filter key that stands for the legacy `PacketFilter`.
    pub const BASE_FILTER: &'static str = "base";

    /// A keep-alive message.
    pub fn keep_alive() -> Self {
        MapResponse {
            keep_alive: true,
            ..MapResponse::default()
        }
    }

    /// Sets the whole packet filter as the `"base"` part.
    pub fn with_base_filter(mut self, rules: Vec<FilterRule>) -> Self {
        self.packet_filters = Some(BTreeMap::from([(
            Self::BASE_FILTER.to_owned(),
            Some(rules),
        )]));
        self
    }
}
