//! Registration: what a client sends to `/machine/register` and the reply.

use crate::hostinfo::Hostinfo;
use crate::key::{NlPublic, NodePublic};
use crate::node::{CapVer, Login, User};
use crate::wire::{bytes, gotime};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Credentials in a registration request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RegisterAuth {
    /// A pre-authorized key (`tailscale up --auth-key`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
}

/// A request to register (or re-key, or log out) a node key.
///
/// Signature fields of old clients, the tailnet hint and tailnet-lock
/// re-signing are not modelled; their fields are ignored when read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RegisterRequest {
    /// The client's capability version.
    pub version: CapVer,
    /// The node key to register.
    pub node_key: NodePublic,
    /// The node key it replaces, when rotating (zero otherwise).
    pub old_node_key: NodePublic,
    /// The client's tailnet-lock key.
    #[serde(rename = "NLKey")]
    pub nl_key: NlPublic,
    /// Credentials, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegisterAuth>,
    /// Requested key expiry; a time in the past with the current node key
    /// logs the node out. `None` is Go's zero time: no request.
    #[serde(with = "gotime")]
    pub expiry: Option<OffsetDateTime>,
    /// An `AuthURL` from an earlier reply: wait until it is visited.
    pub followup: String,
    /// The client's host information.
    pub hostinfo: Option<Hostinfo>,
    /// Whether the node should be deleted when it goes away.
    #[serde(skip_serializing_if = "is_false")]
    pub ephemeral: bool,
    /// The node's own node-key signature, re-signed (tailnet lock).
    #[serde(with = "bytes")]
    pub node_key_signature: Vec<u8>,
}

/// The reply to a registration request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RegisterResponse {
    /// The user the node belongs to.
    pub user: User,
    /// The login that registered it.
    pub login: Login,
    /// The node key has expired and must be replaced.
    pub node_key_expired: bool,
    /// The node is authorized.
    pub machine_authorized: bool,
    /// Where the user has to go to authorize the node (pending until then).
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    /// The current node-key signature to re-sign (tailnet lock).
    #[serde(with = "bytes")]
    pub node_key_signature: Vec<u8>,
    /// Why registration failed; other fields are then to be ignored.
    pub error: String,
}

impl RegisterResponse {
    /// A refusal with a message for the user.
    pub fn error(message: impl Into<String>) -> Self {
        RegisterResponse {
            error: message.into(),
            ..RegisterResponse::default()
        }
    }
}
