//! DNS configuration pushed to clients (`DNSConfig`, `dnstype.Resolver`).

use crate::wire::null_default;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn is_false(b: &bool) -> bool {
    !*b
}

/// One DNS resolver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Resolver {
    /// An IP address (port 53), `IP:port`, or a DoH URL.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Suggested addresses of a DoH/DoT resolver named by host.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub bootstrap_resolution: Vec<IpAddr>,
    /// Whether to keep using it while an exit node is in use.
    #[serde(skip_serializing_if = "is_false")]
    pub use_with_exit_node: bool,
}

impl Resolver {
    /// A plain resolver at an address.
    pub fn at(addr: impl ToString) -> Self {
        Resolver {
            addr: addr.to_string(),
            ..Resolver::default()
        }
    }
}

/// An extra MagicDNS record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DnsRecord {
    /// Fully qualified name (the trailing dot is optional).
    pub name: String,
    /// Record type; empty means A or AAAA by the value.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    /// The address.
    pub value: String,
}

/// The DNS configuration of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DnsConfig {
    /// Global resolvers, in order of preference.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resolvers: Vec<Resolver>,
    /// Split DNS: name suffix → resolvers. An empty list keeps the suffix
    /// on the client's own resolver (for `extra_records`).
    #[serde(
        deserialize_with = "routes",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub routes: BTreeMap<String, Vec<Resolver>>,
    /// Resolvers for split-DNS configurations that need a default.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub fallback_resolvers: Vec<Resolver>,
    /// Search domains (without trailing dots).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub domains: Vec<String>,
    /// MagicDNS on.
    #[serde(skip_serializing_if = "is_false")]
    pub proxied: bool,
    /// Names control helps get certificates for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cert_domains: Vec<String>,
    /// Extra records served by MagicDNS.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Suffixes an exit node's DNS proxy must not answer.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exit_node_filtered_set: Vec<String>,
}

fn routes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<Resolver>>, D::Error> {
    let m = Option::<BTreeMap<String, Option<Vec<Resolver>>>>::deserialize(d)?;
    Ok(m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}
