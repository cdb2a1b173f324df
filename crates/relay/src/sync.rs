//! How a standalone relay learns which node keys to admit: it polls
//! control's admin API (`GET /api/v1/nodes`, scope `devices:read`) and
//! admits each node's WireGuard key until the key's expiry. Control's
//! embedded relay does not need this: it reads its own node set.

use crate::server::{KeySet, RelayServer};
use gatehouse_client::{AdminClient, ClientError, Join, JoinError};
use gatehouse_disco::NodePublicKey;
use gatehouse_proto::control::NodeInfo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Why the node list could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The join string.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// Talking to control.
    #[error("asking control for its nodes")]
    Control(#[source] ClientError),
}

/// The credential the relay presents.
#[derive(Clone)]
enum Credential {
    /// An OAuth client secret, exchanged for short-lived access tokens.
    OAuth(String),
    /// An access token or the admin token, used as is.
    Token(String),
}

/// A source of the admitted keys: control's admin API.
pub struct ControlSource {
    join: Join,
    credential: Credential,
    ca_pem: Option<String>,
    token: Option<(String, Instant)>,
}

impl std::fmt::Debug for ControlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSource")
            .field("join", &self.join)
            .finish_non_exhaustive()
    }
}

impl ControlSource {
    /// Control at `join` (a join string, whose CA pin is trusted), asked
    /// with `credential`: an OAuth client secret (`gh-oauth-…`, with
    /// `devices:read`) or a token.
    pub fn new(join: &str, credential: &str) -> Result<Self, SyncError> {
        let credential = credential.trim().to_owned();
        let credential = if credential.starts_with("gh-oauth-") {
            Credential::OAuth(credential)
        } else {
            Credential::Token(credential)
        };
        Ok(Self {
            join: Join::parse(join)?,
            credential,
            ca_pem: None,
            token: None,
        })
    }

    async fn client(&mut self) -> Result<AdminClient, SyncError> {
        let ca = match &self.ca_pem {
            Some(ca) => ca.clone(),
            None => {
                let ca = gatehouse_client::fetch_pinned_ca(&self.join)
                    .await
                    .map_err(SyncError::Control)?;
                self.ca_pem = Some(ca.clone());
                ca
            }
        };
        let token = match &self.credential {
            Credential::Token(t) => t.clone(),
            Credential::OAuth(secret) => match &self.token {
                Some((t, until)) if Instant::now() < *until => t.clone(),
                _ => {
                    let r = AdminClient::oauth_token(&self.join, &ca, secret, Some("devices:read"))
                        .await
                        .map_err(SyncError::Control)?;
                    // Renew at two thirds of the lifetime.
                    let life =
                        Duration::from_secs(u64::try_from(r.expires_in).unwrap_or(0) * 2 / 3);
                    self.token = Some((r.access_token.clone(), Instant::now() + life));
                    r.access_token
                }
            },
        };
        AdminClient::new(self.join.clone(), &ca, &token).map_err(SyncError::Control)
    }

    /// The keys control has now, each with its expiry.
    pub async fn fetch(&mut self) -> Result<Vec<(NodePublicKey, Option<SystemTime>)>, SyncError> {
        let client = self.client().await?;
        match client.nodes().await {
            Ok(nodes) => Ok(keys_of(&nodes)),
            Err(e) => {
                // A refused token is fetched again next time.
                self.token = None;
                Err(SyncError::Control(e))
            }
        }
    }
}

/// The admitted keys of a node list: every node's WireGuard key, until it
/// expires. A key that does not parse is skipped (and logged).
pub fn keys_of(nodes: &[NodeInfo]) -> Vec<(NodePublicKey, Option<SystemTime>)> {
    nodes
        .iter()
        .filter_map(|n| match n.node.wireguard_key.parse::<NodePublicKey>() {
            Ok(k) => {
                let expiry = u64::try_from(n.node.key_expiry)
                    .ok()
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                Some((k, expiry))
            }
            Err(e) => {
                tracing::warn!(node = %n.node.name, error = %e, "relay: skipping a node whose key does not parse");
                None
            }
        })
        .collect()
}

/// Keeps `keys` equal to control's node set, every `every`: after each
/// fetch, clients no longer admitted (removed, expired) are disconnected;
/// the expiry of keys is checked at the same pace even while control is
/// unreachable. The last known set stays in force while control cannot be
/// reached (the data plane keeps working through a control outage); before
/// the first fetch nobody is admitted. `ready` turns true after the first
/// fetch.
pub async fn keep_in_sync(
    mut source: ControlSource,
    keys: Arc<KeySet>,
    server: Arc<RelayServer>,
    every: Duration,
    ready: Arc<AtomicBool>,
) {
    let mut last_ok = Instant::now();
    let mut unhealthy = false;
    loop {
        match source.fetch().await {
            Ok(set) => {
                let n = set.len();
                let removed = keys.replace(set);
                ready.store(true, Ordering::Release);
                last_ok = Instant::now();
                if unhealthy {
                    server.set_health(None);
                    unhealthy = false;
                }
                tracing::debug!(nodes = n, removed, "relay: node keys from control");
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot fetch node keys from control; keeping the last known set");
                if !unhealthy && last_ok.elapsed() > 6 * every {
                    server.set_health(Some("relay cannot reach the control server".into()));
                    unhealthy = true;
                }
            }
        }
        let closed = server.revalidate();
        if closed > 0 {
            tracing::info!(closed, "relay: disconnected clients no longer admitted");
        }
        tokio::time::sleep(every).await;
    }
}
