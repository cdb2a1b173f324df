//! A device's compiled SSH policy, as its SSH server enforces it
//! (Tailscale SSH: control hands each device an ordered list of rules; the
//! first rule whose principals include the connecting address and whose
//! user map gives a local user for the requested login decides). The policy
//! engine (`gatehouse-policy`) compiles these from the policy's `ssh`
//! section; control carries them to devices.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a `check` approval lasts when the rule gives no `checkPeriod`.
pub const DEFAULT_CHECK_PERIOD: Duration = Duration::from_secs(12 * 3600);

/// The longest `checkPeriod` Tailscale accepts (one week).
pub const MAX_CHECK_PERIOD: Duration = Duration::from_secs(168 * 3600);

/// What a matching SSH session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum SshAction {
    /// Let it in (with agent and port forwarding, as Tailscale's accept does).
    Accept,
    /// Hold it until the user re-authenticates with control, then let it
    /// in; an approval lasts `period`.
    Check {
        /// How long an approval lasts.
        period: CheckPeriod,
    },
}

/// How long a `check` approval lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckPeriod {
    /// `"always"`: every session is checked.
    Always,
    /// A duration (`"12h"` by default, at most `"168h"`).
    Every(Duration),
}

/// One rule of a device's SSH policy: sessions from `principals` asking for
/// a login that `users` maps to a local user get `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshGrant {
    /// The `ssh` rule it comes from (index in `ssh`).
    pub rule: usize,
    /// Addresses of the source devices, sorted (IPv4 first); shared
    /// between the grants of one rule.
    pub principals: Principals,
    /// Requested login → local user, in Tailscale's `SSHUsers` form: `"*"`
    /// is every login not listed, `"="` means "as itself" (never root), and
    /// an empty value refuses that login.
    pub users: BTreeMap<String, String>,
    /// What a matching session gets.
    #[serde(flatten)]
    pub action: SshAction,
    /// Environment variables the client may pass (`acceptEnv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_env: Vec<String>,
}

impl SshGrant {
    /// The local user a session from `src` asking for `login` gets under
    /// this grant, as Tailscale SSH maps it; `None` if the grant does not
    /// match. `"="` maps a login to itself except root.
    pub fn local_user(&self, src: IpAddr, login: &str) -> Option<String> {
        if !self.principals.contains(&src) {
            return None;
        }
        self.maps_login(login)
    }

    /// The local user this grant's user map gives `login`, whatever the
    /// source.
    pub fn maps_login(&self, login: &str) -> Option<String> {
        if login.is_empty() {
            return None;
        }
        let v = self.users.get(login).or_else(|| self.users.get("*"))?;
        match v.as_str() {
            "" => None,
            "=" if login == "root" => None,
            "=" => Some(login.to_string()),
            other => Some(other.to_string()),
        }
    }
}

/// The first grant of a device's SSH policy that lets `src` in as `login`
/// (Tailscale SSH evaluates them in order).
pub fn first_match<'a>(grants: &'a [SshGrant], src: IpAddr, login: &str) -> Option<&'a SshGrant> {
    grants.iter().find(|g| g.local_user(src, login).is_some())
}

/// A shared, sorted list of source addresses.
pub type Principals = Arc<[IpAddr]>;
