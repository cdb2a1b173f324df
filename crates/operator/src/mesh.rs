//! What the operator asks of control: one-off, pre-authorised auth keys
//! with tags (minted with the operator's OAuth client, so control's
//! `tagOwners` decides), the node list (is a proxy online with its
//! certificate?) and node deletion.

use futures::future::BoxFuture;
use gatehouse_client::{AdminClient, ClientError, Join, JoinError};
use gatehouse_proto::control::{CreateKey, NodeInfo};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why control could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Control refused (bad credentials, tag not owned, …): retrying will
    /// not help until someone changes something.
    #[error("control refused: {0}")]
    Refused(String),
    /// The join string is not valid: retrying will not help either.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// Control could not be reached or answered strangely.
    #[error("control unavailable")]
    Unavailable(#[source] ClientError),
}

impl From<ClientError> for MeshError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { status, message } if (400..500).contains(&status) => {
                MeshError::Refused(format!("{message} ({status})"))
            }
            other => MeshError::Unavailable(other),
        }
    }
}

/// A freshly minted key: `key` is shown once and goes into the proxy's
/// Secret only.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedKey {
    /// The key's public id.
    pub id: String,
    /// The whole key.
    pub key: String,
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Control as the operator sees it.
pub trait Mesh: Send + Sync + std::fmt::Debug {
    /// Mints a one-off, pre-authorised key for nodes tagged `tags`.
    fn mint_key(&self, tags: &[String]) -> BoxFuture<'_, Result<MintedKey, MeshError>>;
    /// Revokes a key that was not used.
    fn revoke_key(&self, id: &str) -> BoxFuture<'_, Result<(), MeshError>>;
    /// Every node, as control lists it now.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, MeshError>>;
    /// Every node, possibly as listed a moment ago (readiness checks of
    /// many Ingresses share one answer).
    fn recent_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, MeshError>> {
        self.nodes()
    }
    /// Deletes a node (id or name).
    fn delete_node(&self, id: &str) -> BoxFuture<'_, Result<(), MeshError>>;
    /// The join string nodes register with.
    fn join(&self) -> String;
}

/// How long a minted key stays usable: the proxy pod must start within it.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Control reached with an OAuth client's credentials (client-credentials
/// grant; the access token is reused until shortly before it expires).
pub struct ControlMesh {
    join: Join,
    join_text: String,
    ca: String,
    secret: String,
    token: Mutex<Option<(AdminClient, Instant)>>,
    node_cache: Mutex<Option<(Instant, Vec<NodeInfo>)>>,
    node_ttl: Duration,
}

/// How long one answer of control's node list serves the readiness checks
/// of every Ingress.
pub const NODE_LIST_TTL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for ControlMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMesh")
            .field("control", &self.join.url())
            .finish_non_exhaustive()
    }
}

impl ControlMesh {
    /// Connects to control at `join` (its CA is fetched and pinned) with the
    /// OAuth client secret `secret`.
    ///
    /// # Errors
    /// When the join string is invalid or control's CA cannot be fetched.
    pub async fn connect(join_text: &str, secret: &str) -> Result<Self, MeshError> {
        let join = Join::parse(join_text.trim())?;
        let ca = gatehouse_client::fetch_pinned_ca(&join).await?;
        Ok(ControlMesh {
            join_text: join_text.trim().to_string(),
            join,
            ca,
            secret: secret.trim().to_string(),
            token: Mutex::new(None),
            node_cache: Mutex::new(None),
            node_ttl: NODE_LIST_TTL,
        })
    }

    /// Sets how long one node list serves readiness checks (default
    /// [`NODE_LIST_TTL`]; zero asks control every time).
    pub fn with_node_list_ttl(mut self, ttl: Duration) -> Self {
        self.node_ttl = ttl;
        self
    }

    async fn client(&self) -> Result<AdminClient, MeshError> {
        if let Ok(g) = self.token.lock()
            && let Some((c, until)) = g.as_ref()
            && Instant::now() < *until
        {
            return Ok(c.clone());
        }
        let t = AdminClient::oauth_token(
            &self.join,
            &self.ca,
            &self.secret,
            Some("auth_keys:write devices:read devices:write"),
        )
        .await?;
        let client = AdminClient::new(self.join.clone(), &self.ca, &t.access_token)?;
        let life = Duration::from_secs(u64::try_from(t.expires_in).unwrap_or(0));
        let until = Instant::now() + life.saturating_sub(Duration::from_secs(60));
        if let Ok(mut g) = self.token.lock() {
            *g = Some((client.clone(), until));
        }
        Ok(client)
    }
}

impl Mesh for ControlMesh {
    fn mint_key(&self, tags: &[String]) -> BoxFuture<'_, Result<MintedKey, MeshError>> {
        let req = CreateKey {
            user: None,
            tags: tags.to_vec(),
            reusable: false,
            ephemeral: false,
            expiry_seconds: Some(i64::try_from(KEY_LIFETIME.as_secs()).unwrap_or(86_400)),
        };
        Box::pin(async move {
            let info = self.client().await?.create_key(&req).await?;
            let key = info.key.ok_or_else(|| {
                MeshError::Unavailable(ClientError::Decode("control returned no key".into()))
            })?;
            Ok(MintedKey { id: info.id, key })
        })
    }

    fn revoke_key(&self, id: &str) -> BoxFuture<'_, Result<(), MeshError>> {
        let id = id.to_string();
        Box::pin(async move { Ok(self.client().await?.revoke_key(&id).await?) })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, MeshError>> {
        Box::pin(async move { Ok(self.client().await?.nodes().await?) })
    }

    fn recent_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, MeshError>> {
        Box::pin(async move {
            if let Ok(g) = self.node_cache.lock()
                && let Some((at, nodes)) = g.as_ref()
                && at.elapsed() < self.node_ttl
            {
                return Ok(nodes.clone());
            }
            let nodes = self.client().await?.nodes().await?;
            if let Ok(mut g) = self.node_cache.lock() {
                *g = Some((Instant::now(), nodes.clone()));
            }
            Ok(nodes)
        })
    }

    fn delete_node(&self, id: &str) -> BoxFuture<'_, Result<(), MeshError>> {
        let id = id.to_string();
        if let Ok(mut g) = self.node_cache.lock() {
            *g = None;
        }
        Box::pin(async move {
            match self.client().await?.delete_node(&id).await {
                Ok(()) | Err(ClientError::Api { status: 404, .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn join(&self) -> String {
        self.join_text.clone()
    }
}
