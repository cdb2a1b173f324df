//! The control protocol (`docs/protocol/control.md`): registration, the map
//! stream, and the admin API's request and response bodies.

use gatehouse_filter::NodeFilter;
use gatehouse_filter::ssh::SshGrant;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Body of `POST /machine/v1/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The pre-auth key.
    pub auth_key: String,
    /// Requested host name (reduced to a DNS label by control).
    pub hostname: String,
    /// The node's WireGuard public key, base64.
    pub wireguard_key: String,
    /// PEM CSR for the machine (client) certificate.
    pub machine_csr: String,
    /// PEM CSR for the serving certificate of the node's DNS name.
    pub serving_csr: String,
    /// Serve the requested host name together with the other replicas
    /// asking for it: the node gets a name of its own as usual and is also
    /// a member of the shared name `hostname` (tagged nodes only; every
    /// node holding that name must have the same tags).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_name: bool,
    /// The node's software version (shown to administrators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Response to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    /// The node's id.
    pub node_id: String,
    /// Its host name (unique in the network).
    pub name: String,
    /// Its fully-qualified DNS name.
    pub fqdn: String,
    /// Its mesh addresses.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub addresses: Vec<IpAddr>,
    /// PEM machine certificate: the node's credential towards control.
    pub machine_cert: String,
    /// PEM serving certificate for `fqdn`.
    pub serving_cert: String,
    /// PEM mesh CA certificate.
    pub ca_cert: String,
    /// When the node key expires (unix seconds).
    pub key_expiry: i64,
}

/// Body of `POST /machine/v1/register/interactive`: a node without a
/// pre-auth key asks to join and waits for its approval (an administrator's,
/// or the sign-in of the person who opens the URL it is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InteractiveRegisterRequest {
    /// Requested host name (reduced to a DNS label by control).
    pub hostname: String,
    /// The node's WireGuard public key, base64.
    pub wireguard_key: String,
    /// PEM CSR for the machine (client) certificate.
    pub machine_csr: String,
    /// PEM CSR for the serving certificate of the node's DNS name.
    pub serving_csr: String,
    /// The node's software version (shown to administrators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The code of an earlier answer: wait (up to a minute) for its
    /// approval. Empty on the first request, which is answered at once.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub wait: String,
}

/// Answer to an interactive registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InteractiveRegisterResponse {
    /// The code the node waits under.
    pub code: String,
    /// The page where the node is approved (sign-in, or the administrator's
    /// command).
    pub auth_url: String,
    /// The registration, once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<RegisterResponse>,
}

/// Body of `POST /machine/v1/endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndpointsRequest {
    /// Addresses where the node can be reached directly (local and
    /// reflexive ones; never loopback or link-local).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub endpoints: Vec<SocketAddr>,
    /// The node's disco public key (`discokey:<hex>`), which authenticates
    /// its path discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<String>,
    /// The relay region it is connected to (its home relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<u16>,
}

impl EndpointsRequest {
    /// Only direct endpoints (no disco key, no home relay).
    pub fn direct(endpoints: Vec<SocketAddr>) -> Self {
        EndpointsRequest {
            endpoints,
            disco_key: None,
            home_relay: None,
        }
    }
}

/// Body of `POST /machine/v1/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewRequest {
    /// PEM CSR for a new serving certificate.
    pub serving_csr: String,
}

/// Response to a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewResponse {
    /// PEM serving certificate.
    pub serving_cert: String,
}

/// A node as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Peer {
    /// Node id.
    pub id: String,
    /// Host name.
    pub name: String,
    /// Fully-qualified DNS name.
    pub fqdn: String,
    /// WireGuard public key, base64.
    pub wireguard_key: String,
    /// Mesh addresses.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub addresses: Vec<IpAddr>,
    /// Known direct endpoints.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub endpoints: Vec<SocketAddr>,
    /// Its disco public key (`discokey:<hex>`), if it announced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<String>,
    /// The relay region where it can be reached (its home relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<u16>,
    /// Owning user (untagged nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tags (tagged nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When its key expires (unix seconds).
    pub key_expiry: i64,
    /// The shared name (a DNS label under the mesh domain) this node serves
    /// with its other replicas, if it registered for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Whether it holds a map stream to control now (`None`: not said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

/// The receiving node's own information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfNode {
    /// The node as peers see it.
    #[serde(flatten)]
    pub node: Peer,
    /// Its current PEM serving certificate.
    pub serving_cert: String,
}

/// DNS configuration for the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// The network's domain: `<network>.<suffix>`.
    pub domain: String,
    /// The resolver nodes run for mesh names.
    pub nameserver: IpAddr,
    /// Search domains.
    pub search: Vec<String>,
}

/// The relays of a network, shaped like Tailscale's DERP map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayMap {
    /// Regions, sorted by id.
    #[serde(default)]
    pub regions: Vec<RelayRegion>,
}

/// A relay region: relays that share their clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayRegion {
    /// Region id (1–65535), unique in the map.
    pub id: u16,
    /// Short code shown to people (`home`, `fra`).
    pub code: String,
    /// Longer name.
    #[serde(default)]
    pub name: String,
    /// Its relays, tried in order.
    pub nodes: Vec<RelayNode>,
}

/// One relay server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RelayNode {
    /// Its name (unique in the map).
    pub name: String,
    /// Host name (or address) for TLS and for dialling.
    pub host: String,
    /// HTTPS port of `GET /derp`.
    pub port: u16,
    /// UDP port of its STUN responder, if it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun_port: Option<u16>,
}

/// A message of the map stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MapMessage {
    /// The whole map; always the first message of a stream.
    Full(FullMap),
    /// Changes since the previous message.
    Delta(MapDelta),
    /// Nothing changed; the stream is alive.
    Keepalive,
    /// Control is shutting down gracefully (a restart, an upgrade): the
    /// stream ends after this message, and the node should open a new one
    /// after `after_ms` milliseconds (control spreads the delays) instead
    /// of backing off as after a failure.
    Reconnect {
        /// Suggested delay before reconnecting, in milliseconds.
        after_ms: u64,
    },
}

/// The whole map of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullMap {
    /// The node itself.
    #[serde(rename = "self")]
    pub self_node: SelfNode,
    /// Every node it may reach or be reached by, sorted by id.
    pub peers: Vec<Peer>,
    /// Its compiled inbound packet filter.
    pub filter: NodeFilter,
    /// Its SSH policy (who may open SSH sessions to it, as which local
    /// users), in the order its SSH server checks the rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<SshGrant>,
    /// DNS configuration.
    pub dns: DnsConfig,
    /// The relays nodes connect to.
    #[serde(default)]
    pub relays: RelayMap,
}

/// Changes to a node's map. Absent fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapDelta {
    /// New self information.
    #[serde(default, rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_node: Option<SelfNode>,
    /// Peers added or changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_upsert: Vec<Peer>,
    /// Ids of peers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers_removed: Vec<String>,
    /// A new packet filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<NodeFilter>,
    /// A new SSH policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Vec<SshGrant>>,
    /// New DNS configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// A new relay map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<RelayMap>,
    /// Peers that came online (`true`) or went offline, by id.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub online: std::collections::BTreeMap<String, bool>,
}

impl MapDelta {
    /// Whether the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.self_node.is_none()
            && self.peers_upsert.is_empty()
            && self.peers_removed.is_empty()
            && self.filter.is_none()
            && self.ssh.is_none()
            && self.online.is_empty()
            && self.dns.is_none()
            && self.relays.is_none()
    }
}

/// A node's view of its map, kept up to date by applying messages.
#[derive(Debug, Clone, PartialEq)]
pub struct MapState {
    /// The node itself.
    pub self_node: SelfNode,
    /// Peers by id.
    pub peers: std::collections::BTreeMap<String, Peer>,
    /// The inbound filter.
    pub filter: NodeFilter,
    /// The SSH policy.
    pub ssh: Vec<SshGrant>,
    /// DNS configuration.
    pub dns: DnsConfig,
    /// The relays.
    pub relays: RelayMap,
}

impl MapState {
    /// Starts from a full map.
    pub fn from_full(m: FullMap) -> Self {
        MapState {
            self_node: m.self_node,
            peers: m.peers.into_iter().map(|p| (p.id.clone(), p)).collect(),
            filter: m.filter,
            ssh: m.ssh,
            dns: m.dns,
            relays: m.relays,
        }
    }

    /// Applies a message: a full map replaces, a delta patches.
    pub fn apply(&mut self, msg: MapMessage) {
        match msg {
            MapMessage::Full(m) => *self = MapState::from_full(m),
            MapMessage::Delta(d) => {
                if let Some(s) = d.self_node {
                    self.self_node = s;
                }
                for id in d.peers_removed {
                    self.peers.remove(&id);
                }
                for p in d.peers_upsert {
                    self.peers.insert(p.id.clone(), p);
                }
                if let Some(f) = d.filter {
                    self.filter = f;
                }
                if let Some(s) = d.ssh {
                    self.ssh = s;
                }
                for (id, on) in d.online {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.online = Some(on);
                    }
                }
                if let Some(dns) = d.dns {
                    self.dns = dns;
                }
                if let Some(r) = d.relays {
                    self.relays = r;
                }
            }
            MapMessage::Keepalive | MapMessage::Reconnect { .. } => {}
        }
    }
}

/// Admin API: a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// Login.
    pub login: String,
    /// Creation time (unix seconds).
    pub created_at: i64,
}

/// Admin API: create a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateUser {
    /// Login (`name@domain`).
    pub login: String,
}

/// Admin API: a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    /// The node as peers see it.
    #[serde(flatten)]
    pub node: Peer,
    /// Registration time (unix seconds).
    pub created_at: i64,
    /// Last time it talked to control (unix seconds).
    pub last_seen: Option<i64>,
    /// Whether it has a map stream open now.
    pub online: bool,
    /// Whether it is removed when it goes offline.
    pub ephemeral: bool,
    /// The protocol it speaks to control: `gatehouse` or `tailscale`.
    #[serde(default)]
    pub client: String,
    /// Its operating system, as it said (empty: unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Its client's version, as it said (empty: unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Admin API: a device waiting for approval (it asked to join without a
/// pre-auth key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingDevice {
    /// The code in its approval URL.
    pub code: String,
    /// The host name it asks for.
    pub hostname: String,
    /// Its operating system, as it said.
    #[serde(default)]
    pub os: String,
    /// Its client's version, as it said.
    #[serde(default)]
    pub version: String,
    /// Seconds it has been waiting.
    pub waiting_seconds: u64,
}

/// Admin API: approve a waiting device for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApproveDevice {
    /// The person (an existing user) the device belongs to.
    pub user: String,
}

/// Admin API: create a pre-auth key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateKey {
    /// User the registered nodes belong to (required for untagged nodes).
    #[serde(default)]
    pub user: Option<String>,
    /// Tags applied to registered nodes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Usable many times.
    #[serde(default)]
    pub reusable: bool,
    /// Nodes registered with it are removed when they go offline.
    #[serde(default)]
    pub ephemeral: bool,
    /// Lifetime in seconds (default one day, at most 90 days).
    #[serde(default)]
    pub expiry_seconds: Option<i64>,
}

/// Admin API: a pre-auth key (never its secret, except once at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyInfo {
    /// Key id (the public part of the key).
    pub id: String,
    /// The whole key; present only in the creation response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// User of registered nodes.
    pub user: Option<String>,
    /// Tags of registered nodes.
    pub tags: Vec<String>,
    /// Usable many times.
    pub reusable: bool,
    /// Ephemeral nodes.
    pub ephemeral: bool,
    /// Who minted it (`admin` or `oauth:<client id>`).
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
    /// Number of registrations made with it.
    pub uses: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// Admin API: create an OAuth client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateOAuthClient {
    /// Scopes it may be granted.
    pub scopes: Vec<String>,
    /// Its tags (which decide, with `tagOwners`, the tags it may apply).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
}

/// Admin API: an OAuth client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OAuthClientInfo {
    /// Client id.
    pub id: String,
    /// The client secret; present only in the creation response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: String,
    /// Creation time.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// OAuth token response (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// Granted scopes, space-separated.
    pub scope: String,
}

/// Admin API: a new admin token (`POST /api/v1/admin/token`); every earlier
/// admin token stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminToken {
    /// The new token, shown this once.
    pub token: String,
}

/// Admin API: an audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Time (unix seconds).
    pub at: i64,
    /// Who acted (`admin`, `oauth:<id>`, `node:<id>`, `key:<id>`, `anonymous`).
    pub actor: String,
    /// What was attempted, e.g. `node.register`.
    pub action: String,
    /// What it applied to.
    pub target: String,
    /// `ok` or `refused`.
    pub outcome: String,
    /// Details, e.g. the reason of a refusal.
    pub detail: String,
}

/// Admin API: an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_messages_are_tagged() {
        let k = serde_json::to_string(&MapMessage::Keepalive).unwrap();
        assert_eq!(k, r#"{"type":"keepalive"}"#);
        let d = serde_json::to_string(&MapMessage::Delta(MapDelta {
            peers_removed: vec!["n1".into()],
            ..MapDelta::default()
        }))
        .unwrap();
        assert_eq!(d, r#"{"type":"delta","peers_removed":["n1"]}"#);
        let back: MapMessage = serde_json::from_str(&d).unwrap();
        assert!(matches!(back, MapMessage::Delta(x) if x.peers_removed == ["n1"]));
    }
}
