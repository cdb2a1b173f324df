//! What a client says about its host (`Hostinfo`, `NetInfo`), sent in
//! register and map requests and passed on to peers in `Node.Hostinfo`.
//!
//! Every field Go omits when zero is optional here; fields not modelled
//! are kept in `other` so a peer receives what the client sent.

use crate::wire::{Extra, null_default};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A summary of a client's host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Hostinfo {
    /// The client's version (`1.102.3-t…`).
    #[serde(rename = "IPNVersion", skip_serializing_if = "String::is_empty")]
    pub ipn_version: String,
    /// Log ID of the frontend.
    #[serde(rename = "FrontendLogID", skip_serializing_if = "String::is_empty")]
    pub frontend_log_id: String,
    /// Log ID of the backend.
    #[serde(rename = "BackendLogID", skip_serializing_if = "String::is_empty")]
    pub backend_log_id: String,
    /// Operating system (`linux`, `windows`, `macOS`, `iOS`, `android`, …).
    #[serde(rename = "OS", skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// OS version (kernel version on Linux).
    #[serde(rename = "OSVersion", skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// Whether the client runs in a container (unknown if absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
    /// The kind of environment (`kn`, `k8s`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub env: String,
    /// Linux distribution.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro: String,
    /// Distribution version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro_version: String,
    /// Distribution code name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro_code_name: String,
    /// The embedding application of a `tsnet` client.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// Whether a desktop was detected (Linux).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desktop: Option<bool>,
    /// Packaging (`choco`, `appstore`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub package: String,
    /// Device model (`Pixel 3a`, `iPhone12,3`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_model: String,
    /// Push-notification token of mobile clients: for control only, not
    /// meant for peers.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub push_device_token: String,
    /// The host's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Whether the host blocks incoming connections.
    #[serde(skip_serializing_if = "is_false")]
    pub shields_up: bool,
    /// Whether the node is in the map because it is shared in.
    #[serde(skip_serializing_if = "is_false")]
    pub sharee_node: bool,
    /// Whether the user opted out of logs and support.
    #[serde(skip_serializing_if = "is_false")]
    pub no_logs_no_support: bool,
    /// Whether the node wants Funnel wiring even while it is off.
    #[serde(skip_serializing_if = "is_false")]
    pub wire_ingress: bool,
    /// Whether the node has a Funnel endpoint on.
    #[serde(skip_serializing_if = "is_false")]
    pub ingress_enabled: bool,
    /// Whether the node accepts remote updates.
    #[serde(skip_serializing_if = "is_false")]
    pub allows_update: bool,
    /// Machine type (`uname -m`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub machine: String,
    /// `GOARCH` of the binary.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_arch: String,
    /// `GOARM`, `GOAMD64`, … of the binary.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_arch_var: String,
    /// Go version the binary was built with.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_version: String,
    /// Routes the client offers to route (subnet router, exit node).
    #[serde(
        rename = "RoutableIPs",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routable_ips: Vec<IpNet>,
    /// Tags the client asks for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_tags: Vec<String>,
    /// MAC addresses for Wake-on-LAN.
    #[serde(
        rename = "WoLMACs",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub wol_macs: Vec<String>,
    /// Services the host offers (including its peer API ports).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub services: Vec<Service>,
    /// The host's network state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_info: Option<NetInfo>,
    /// SSH host keys, when the node runs Tailscale SSH.
    #[serde(
        rename = "sshHostKeys",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ssh_host_keys: Vec<String>,
    /// Cloud the host runs in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cloud: String,
    /// Whether the client runs in user-space networking mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace: Option<bool>,
    /// Whether its subnet router runs in user space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace_router: Option<bool>,
    /// Whether it runs the app-connector service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_connector: Option<bool>,
    /// Hash of the services list it last fetched.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub services_hash: String,
    /// Whether it relays traffic for other peers.
    #[serde(skip_serializing_if = "is_false")]
    pub peer_relay: bool,
    /// The exit node it uses (a stable node ID), if any.
    #[serde(rename = "ExitNodeID", skip_serializing_if = "String::is_empty")]
    pub exit_node_id: String,
    /// Where the host is, when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Fields not modelled here, kept as sent.
    #[serde(flatten)]
    pub other: Extra,
}

/// A service a host offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Service {
    /// `tcp`, `udp`, `peerapi4`, `peerapi6`, `peerapi-dns-proxy`.
    pub proto: String,
    /// Port.
    pub port: u16,
    /// Process name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A host's declared location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Location {
    /// Country name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
    /// ISO 3166-1 alpha-2 code.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country_code: String,
    /// City.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub city: String,
    /// City code.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub city_code: String,
    /// Latitude in degrees.
    #[serde(skip_serializing_if = "crate::wire::is_zero")]
    pub latitude: f64,
    /// Longitude in degrees.
    #[serde(skip_serializing_if = "crate::wire::is_zero")]
    pub longitude: f64,
    /// Exit-node priority.
    #[serde(skip_serializing_if = "crate::wire::is_zero")]
    pub priority: i64,
}

/// A host's network state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetInfo {
    /// Whether NAT mappings vary by destination ("hard" NAT).
    #[serde(
        rename = "MappingVariesByDestIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Whether IPv6 to the internet works.
    #[serde(rename = "WorkingIPv6", skip_serializing_if = "Option::is_none")]
    pub working_ipv6: Option<bool>,
    /// Whether the OS supports IPv6.
    #[serde(rename = "OSHasIPv6", skip_serializing_if = "Option::is_none")]
    pub os_has_ipv6: Option<bool>,
    /// Whether UDP to the internet works.
    #[serde(rename = "WorkingUDP", skip_serializing_if = "Option::is_none")]
    pub working_udp: Option<bool>,
    /// Whether ICMPv4 works.
    #[serde(rename = "WorkingICMPv4", skip_serializing_if = "Option::is_none")]
    pub working_icmpv4: Option<bool>,
    /// Whether a port mapping is open.
    #[serde(skip_serializing_if = "is_false")]
    pub have_port_map: bool,
    /// Whether UPnP is present.
    #[serde(rename = "UPnP", skip_serializing_if = "Option::is_none")]
    pub upnp: Option<bool>,
    /// Whether NAT-PMP is present.
    #[serde(rename = "PMP", skip_serializing_if = "Option::is_none")]
    pub pmp: Option<bool>,
    /// Whether PCP is present.
    #[serde(rename = "PCP", skip_serializing_if = "Option::is_none")]
    pub pcp: Option<bool>,
    /// The home relay region (0: none or unknown).
    #[serde(rename = "PreferredDERP", skip_serializing_if = "crate::wire::is_zero")]
    pub preferred_derp: i32,
    /// `wired`, `wifi`, `mobile`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_type: String,
    /// Latency to each region (`"<id>-v4"`) in seconds.
    #[serde(
        rename = "DERPLatency",
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub derp_latency: BTreeMap<String, f64>,
    /// Linux firewall mode.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firewall_mode: String,
    /// Fields not modelled here, kept as sent.
    #[serde(flatten)]
    pub other: Extra,
}
