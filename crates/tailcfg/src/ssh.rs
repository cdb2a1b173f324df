//! Tailscale SSH policy (`SSHPolicy`): which connections a node's SSH
//! server accepts, rejects or sends for a check, and as which local user.

use crate::wire::{addr_ports, gotime, is_zero, null_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use time::OffsetDateTime;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The SSH policy of one node: the first rule that matches decides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshPolicy {
    /// Rules, in order.
    #[serde(deserialize_with = "null_default")]
    pub rules: Vec<SshRule>,
}

/// A match (principals and users) and what to do with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SshRule {
    /// When the rule stops applying.
    #[serde(with = "gotime", skip_serializing_if = "Option::is_none")]
    pub rule_expires: Option<OffsetDateTime>,
    /// Who the rule applies to (any one matches).
    #[serde(deserialize_with = "null_default")]
    pub principals: Vec<SshPrincipal>,
    /// Requested SSH user (or `*`) → local user; `=` keeps the requested
    /// name, an empty value makes the rule not match.
    #[serde(rename = "sshUsers", deserialize_with = "null_default")]
    pub ssh_users: BTreeMap<String, String>,
    /// What to do; absent means reject.
    pub action: Option<SshAction>,
    /// Environment variables the client may pass (`*` and `?` wildcards).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub accept_env: Vec<String>,
}

/// A connecting party: a node, an address, a user on any node, or anyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SshPrincipal {
    /// A node by stable ID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// A node by address.
    #[serde(rename = "nodeIP", skip_serializing_if = "String::is_empty")]
    pub node_ip: String,
    /// A user's login on any of their nodes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_login: String,
    /// Anyone.
    #[serde(skip_serializing_if = "is_false")]
    pub any: bool,
}

/// What to do with a matching connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SshAction {
    /// Shown to the user before the action.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Refuse the connection (wins over `accept`).
    #[serde(skip_serializing_if = "is_false")]
    pub reject: bool,
    /// Accept without further checks.
    #[serde(skip_serializing_if = "is_false")]
    pub accept: bool,
    /// Session length limit in nanoseconds (0: none).
    #[serde(skip_serializing_if = "is_zero")]
    pub session_duration: i64,
    /// Allow agent forwarding.
    #[serde(skip_serializing_if = "is_false")]
    pub allow_agent_forwarding: bool,
    /// A URL (over Noise to control) that answers the verdict: the `check`
    /// mode. `$SRC_NODE_IP`, `$SRC_NODE_ID`, `$DST_NODE_IP`,
    /// `$DST_NODE_ID`, `$SSH_USER` and `$LOCAL_USER` are expanded.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hold_and_delegate: String,
    /// Allow local port forwarding.
    #[serde(skip_serializing_if = "is_false")]
    pub allow_local_port_forwarding: bool,
    /// Allow remote port forwarding.
    #[serde(skip_serializing_if = "is_false")]
    pub allow_remote_port_forwarding: bool,
    /// Session recorders.
    #[serde(with = "addr_ports", skip_serializing_if = "Vec::is_empty")]
    pub recorders: Vec<SocketAddr>,
}

impl SshAction {
    /// Accept, with the forwarding Tailscale's `accept` action allows.
    pub fn accept() -> Self {
        SshAction {
            accept: true,
            allow_agent_forwarding: true,
            allow_local_port_forwarding: true,
            allow_remote_port_forwarding: true,
            ..SshAction::default()
        }
    }

    /// Reject, with a message.
    pub fn reject(message: impl Into<String>) -> Self {
        SshAction {
            reject: true,
            message: message.into(),
            ..SshAction::default()
        }
    }

    /// Ask control: the connection waits until `url` answers an action.
    pub fn check(url: impl Into<String>) -> Self {
        SshAction {
            hold_and_delegate: url.into(),
            allow_agent_forwarding: true,
            allow_local_port_forwarding: true,
            allow_remote_port_forwarding: true,
            ..SshAction::default()
        }
    }
}
