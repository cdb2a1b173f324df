//! The relay map (`DERPMap`): regions, and the relay servers in each.

use crate::wire::{is_zero, null_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The relay servers a client may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DerpMap {
    /// Home-region preferences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_params: Option<DerpHomeParams>,
    /// Region ID → region (JSON object keys are the decimal IDs).
    #[serde(deserialize_with = "null_default")]
    pub regions: BTreeMap<i32, DerpRegion>,
    /// Whether the client should drop its built-in default regions.
    #[serde(rename = "omitDefaultRegions", skip_serializing_if = "is_false")]
    pub omit_default_regions: bool,
}

/// Home-region preferences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DerpHomeParams {
    /// Region ID → latency multiplier when choosing a home.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub region_score: BTreeMap<i32, f64>,
}

/// A relay region: servers that share one ID and are interchangeable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DerpRegion {
    /// Region ID (1–899 are Tailscale's own; 900+ are for self-hosting).
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Short code (`nyc`).
    pub region_code: String,
    /// Long name (`New York City`).
    pub region_name: String,
    /// Latitude in degrees.
    #[serde(skip_serializing_if = "is_zero")]
    pub latitude: f64,
    /// Longitude in degrees.
    #[serde(skip_serializing_if = "is_zero")]
    pub longitude: f64,
    /// Whether clients should avoid it as a home.
    #[serde(skip_serializing_if = "is_false")]
    pub avoid: bool,
    /// Whether clients should neither measure it nor make it home.
    #[serde(skip_serializing_if = "is_false")]
    pub no_measure_no_home: bool,
    /// Servers, in order of preference.
    #[serde(deserialize_with = "null_default")]
    pub nodes: Vec<DerpNode>,
}

/// One relay server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DerpNode {
    /// Unique name (`1a`).
    pub name: String,
    /// Its region.
    #[serde(rename = "RegionID")]
    pub region_id: i32,
    /// Host name for TLS and, without `ipv4`/`ipv6`, for DNS.
    pub host_name: String,
    /// Name expected in the certificate, if not `host_name`; or
    /// `sha256-raw:<hex>`, pinning the SHA-256 of the server's certificate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cert_name: String,
    /// IPv4 address to dial (`none` disables IPv4).
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty")]
    pub ipv4: String,
    /// IPv6 address to dial (`none` disables IPv6).
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty")]
    pub ipv6: String,
    /// STUN port: 0 means 3478, -1 means none.
    #[serde(rename = "STUNPort", skip_serializing_if = "is_zero")]
    pub stun_port: i32,
    /// Whether it only does STUN.
    #[serde(rename = "STUNOnly", skip_serializing_if = "is_false")]
    pub stun_only: bool,
    /// HTTPS port of the relay: 0 means 443.
    #[serde(rename = "DERPPort", skip_serializing_if = "is_zero")]
    pub derp_port: i32,
    /// Skip certificate verification (tests only).
    #[serde(skip_serializing_if = "is_false")]
    pub insecure_for_tests: bool,
    /// Address to send STUN to, overriding the above (tests only).
    #[serde(rename = "STUNTestIP", skip_serializing_if = "String::is_empty")]
    pub stun_test_ip: String,
    /// Whether port 80 is open for captive-portal checks.
    #[serde(skip_serializing_if = "is_false")]
    pub can_port80: bool,
}
