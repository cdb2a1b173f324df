//! Durable state: one SQL database (SQLite by default) accessed through
//! sqlx's `Any` driver with portable SQL (`$n` placeholders, `BIGINT`
//! integers for times and flags, `TEXT` for JSON), and a schema migrated in
//! order at start.

use crate::clock::Clock;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::Path;
use std::sync::Arc;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored JSON column did not parse.
    #[error("corrupt stored value in {column}: {source}")]
    Corrupt {
        /// Column.
        column: &'static str,
        /// Cause.
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; never edit one that has shipped.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (login TEXT PRIMARY KEY, created_at BIGINT NOT NULL);
CREATE TABLE nodes (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  user_login TEXT,
  tags TEXT NOT NULL,
  ipv4 TEXT NOT NULL UNIQUE,
  ipv6 TEXT NOT NULL UNIQUE,
  wg_key TEXT NOT NULL UNIQUE,
  cert_fingerprint TEXT NOT NULL UNIQUE,
  serving_cert TEXT NOT NULL,
  endpoints TEXT NOT NULL,
  ephemeral BIGINT NOT NULL,
  auth_key_id TEXT,
  created_at BIGINT NOT NULL,
  key_expiry BIGINT NOT NULL,
  last_seen BIGINT
);
CREATE TABLE auth_keys (
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  user_login TEXT,
  tags TEXT NOT NULL,
  reusable BIGINT NOT NULL,
  ephemeral BIGINT NOT NULL,
  created_by TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  uses BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE TABLE oauth_clients (
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  scopes TEXT NOT NULL,
  tags TEXT NOT NULL,
  description TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT
);
CREATE TABLE api_tokens (
  id TEXT PRIMARY KEY,
  secret_hash TEXT NOT NULL,
  kind TEXT NOT NULL,
  client_id TEXT,
  scopes TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT,
  revoked_at BIGINT
);
CREATE TABLE policies (
  version BIGINT PRIMARY KEY,
  text TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  created_by TEXT NOT NULL
);
CREATE TABLE audit (
  id BIGINT PRIMARY KEY,
  at BIGINT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL
);
",
    ),
    (
        2,
        // The shared name a replica serves with its siblings.
        "ALTER TABLE nodes ADD COLUMN service TEXT;",
    ),
    (
        3,
        // Names a tagged node has held: a user's device cannot take them.
        r"
CREATE TABLE tagged_names (name TEXT PRIMARY KEY, tags TEXT NOT NULL, since BIGINT NOT NULL);
INSERT INTO tagged_names (name, tags, since)
  SELECT name, tags, created_at FROM nodes WHERE tags <> '[]' ON CONFLICT DO NOTHING;
INSERT INTO tagged_names (name, tags, since)
  SELECT service, tags, created_at FROM nodes WHERE service IS NOT NULL AND tags <> '[]' ON CONFLICT DO NOTHING
",
    ),
    (
        4,
        // Which client a node runs (JSON `ClientInfo`; NULL: a Gatehouse
        // node registered before this was recorded).
        "ALTER TABLE nodes ADD COLUMN client TEXT;",
    ),
];

/// The protocol a node speaks to control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// `gatehouse node` (the native protocol, a machine certificate).
    #[default]
    Gatehouse,
    /// A Tailscale client (Tailscale's control protocol, a machine key).
    Tailscale,
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientKind::Gatehouse => "gatehouse",
            ClientKind::Tailscale => "tailscale",
        })
    }
}

/// What a node runs, as it last said.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    /// The protocol it speaks.
    #[serde(default)]
    pub kind: ClientKind,
    /// Its operating system (`linux`, `macOS`, `iOS`, …), if it said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Its client's version, if it said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// A stored node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Id.
    pub id: String,
    /// Host name (unique).
    pub name: String,
    /// Owning user.
    pub user: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// IPv4 address.
    pub ipv4: String,
    /// IPv6 address.
    pub ipv6: String,
    /// WireGuard public key (base64).
    pub wg_key: String,
    /// The machine's credential: the SHA-256 of its machine certificate
    /// (hex), or `mkey:` and its machine key (Tailscale's control protocol).
    pub cert_fingerprint: String,
    /// Current serving certificate (PEM).
    pub serving_cert: String,
    /// Known endpoints.
    pub endpoints: Vec<String>,
    /// Removed when offline.
    pub ephemeral: bool,
    /// Key it registered with.
    pub auth_key_id: Option<String>,
    /// Registration time.
    pub created_at: i64,
    /// Key expiry.
    pub key_expiry: i64,
    /// Last contact.
    pub last_seen: Option<i64>,
    /// The shared name it serves with other replicas.
    pub service: Option<String>,
    /// What it runs.
    pub client: ClientInfo,
}

/// A stored pre-auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// User of registered nodes.
    pub user: Option<String>,
    /// Tags of registered nodes.
    pub tags: Vec<String>,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Minted by.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
    /// Registrations made.
    pub uses: i64,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

/// A stored OAuth client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthRow {
    /// Client id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Description.
    pub description: String,
    /// Creation time.
    pub created_at: i64,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

/// A stored API token (admin token or OAuth access token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// `admin` or `oauth`.
    pub kind: String,
    /// OAuth client it was issued to.
    pub client_id: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

/// An audit entry as stored.
pub type AuditRow = gatehouse_proto::control::AuditEntry;

fn json_list(row: &AnyRow, column: &'static str) -> Result<Vec<String>> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { column, source })
}

fn to_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Next audit id (one writer: this process).
    audit_seq: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Where creation times are read.
    clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path, clock: Arc<dyn Clock>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Store {
            pool,
            audit_seq: Default::default(),
            clock,
        };
        store.migrate().await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM audit")
            .fetch_one(&store.pool)
            .await?;
        store
            .audit_seq
            .store(last.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(self.clock.now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// The schema version.
    pub async fn schema_version(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// A metadata value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Sets a metadata value.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("DELETE FROM meta WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- users

    /// Every user, by login.
    pub async fn users(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT login, created_at FROM users ORDER BY login")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("login")?, r.try_get("created_at")?)))
            .collect()
    }

    /// Whether a user exists.
    pub async fn user_exists(&self, login: &str) -> Result<bool> {
        let row = sqlx::query("SELECT login FROM users WHERE login = $1")
            .bind(login)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Creates a user; false if it exists.
    pub async fn create_user(&self, login: &str) -> Result<bool> {
        let n = sqlx::query("INSERT INTO users (login, created_at) SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM users WHERE login = $1)")
            .bind(login)
            .bind(self.clock.now())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Deletes a user; false if absent.
    pub async fn delete_user(&self, login: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM users WHERE login = $1")
            .bind(login)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    // ---- nodes

    fn node_row(r: &AnyRow) -> Result<NodeRow> {
        Ok(NodeRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            user: r.try_get("user_login")?,
            tags: json_list(r, "tags")?,
            ipv4: r.try_get("ipv4")?,
            ipv6: r.try_get("ipv6")?,
            wg_key: r.try_get("wg_key")?,
            cert_fingerprint: r.try_get("cert_fingerprint")?,
            serving_cert: r.try_get("serving_cert")?,
            endpoints: json_list(r, "endpoints")?,
            ephemeral: r.try_get::<i64, _>("ephemeral")? != 0,
            auth_key_id: r.try_get("auth_key_id")?,
            created_at: r.try_get("created_at")?,
            key_expiry: r.try_get("key_expiry")?,
            last_seen: r.try_get("last_seen")?,
            service: r.try_get("service")?,
            client: match r.try_get::<Option<String>, _>("client")? {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
                        column: "client",
                        source,
                    })?
                }
                None => ClientInfo::default(),
            },
        })
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::node_row).collect()
    }

    /// Registers a node, with a key atomically spent when one let it in: the
    /// key must still be usable (not revoked, not expired, unused if
    /// one-off). Returns false (and writes nothing) if it is not.
    pub async fn register_node(
        &self,
        node: &NodeRow,
        key_id: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if let Some(key_id) = key_id {
            let used = sqlx::query(
                "UPDATE auth_keys SET uses = uses + 1 WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND (reusable = 1 OR uses = 0)",
            )
            .bind(key_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if used != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        sqlx::query(
            "INSERT INTO nodes (id, name, user_login, tags, ipv4, ipv6, wg_key, cert_fingerprint, serving_cert, endpoints, ephemeral, auth_key_id, created_at, key_expiry, last_seen, service, client)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(node.user.clone())
        .bind(to_json(&node.tags))
        .bind(&node.ipv4)
        .bind(&node.ipv6)
        .bind(&node.wg_key)
        .bind(&node.cert_fingerprint)
        .bind(&node.serving_cert)
        .bind(to_json(&node.endpoints))
        .bind(flag(node.ephemeral))
        .bind(node.auth_key_id.clone())
        .bind(node.created_at)
        .bind(node.key_expiry)
        .bind(node.last_seen)
        .bind(node.service.clone())
        .bind(serde_json::to_string(&node.client).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        if !node.tags.is_empty() {
            for name in std::iter::once(&node.name).chain(node.service.as_ref()) {
                sqlx::query(
                    "INSERT INTO tagged_names (name, tags, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(to_json(&node.tags))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The tags of the tagged node that first held `name`, if one did.
    pub async fn tagged_name(&self, name: &str) -> Result<Option<Vec<String>>> {
        let row = sqlx::query("SELECT tags FROM tagged_names WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| json_list(&r, "tags")).transpose()
    }

    /// Deletes a node; false if absent.
    pub async fn delete_node(&self, id: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Sets a node's key expiry.
    pub async fn set_key_expiry(&self, id: &str, at: i64) -> Result<bool> {
        let n = sqlx::query("UPDATE nodes SET key_expiry = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Replaces a node's WireGuard key (a rotation).
    pub async fn set_wg_key(&self, id: &str, key: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET wg_key = $2 WHERE id = $1")
            .bind(id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records what a node runs.
    pub async fn set_client(&self, id: &str, client: &ClientInfo) -> Result<()> {
        sqlx::query("UPDATE nodes SET client = $2 WHERE id = $1")
            .bind(id)
            .bind(serde_json::to_string(client).unwrap_or_default())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces a node's endpoints.
    pub async fn set_endpoints(&self, id: &str, endpoints: &[String], now: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET endpoints = $2, last_seen = $3 WHERE id = $1")
            .bind(id)
            .bind(to_json(endpoints))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces a node's serving certificate.
    pub async fn set_serving_cert(&self, id: &str, pem: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET serving_cert = $2 WHERE id = $1")
            .bind(id)
            .bind(pem)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records contact with a node.
    pub async fn touch_node(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET last_seen = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- pre-auth keys

    fn key_row(r: &AnyRow) -> Result<KeyRow> {
        Ok(KeyRow {
            id: r.try_get("id")?,
            secret_hash: r.try_get("secret_hash")?,
            user: r.try_get("user_login")?,
            tags: json_list(r, "tags")?,
            reusable: r.try_get::<i64, _>("reusable")? != 0,
            ephemeral: r.try_get::<i64, _>("ephemeral")? != 0,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            uses: r.try_get("uses")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }

    /// Stores a new key.
    pub async fn insert_key(&self, k: &KeyRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_keys (id, secret_hash, user_login, tags, reusable, ephemeral, created_by, created_at, expires_at, uses, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&k.id)
        .bind(&k.secret_hash)
        .bind(k.user.clone())
        .bind(to_json(&k.tags))
        .bind(flag(k.reusable))
        .bind(flag(k.ephemeral))
        .bind(&k.created_by)
        .bind(k.created_at)
        .bind(k.expires_at)
        .bind(k.uses)
        .bind(k.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A key by id.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>> {
        let r = sqlx::query("SELECT * FROM auth_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(Self::key_row).transpose()
    }

    /// Every key, newest first.
    pub async fn keys(&self) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query("SELECT * FROM auth_keys ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::key_row).collect()
    }

    /// Revokes a key; false if absent or already revoked.
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE auth_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // ---- OAuth clients and API tokens

    fn oauth_row(r: &AnyRow) -> Result<OAuthRow> {
        Ok(OAuthRow {
            id: r.try_get("id")?,
            secret_hash: r.try_get("secret_hash")?,
            scopes: json_list(r, "scopes")?,
            tags: json_list(r, "tags")?,
            description: r.try_get("description")?,
            created_at: r.try_get("created_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }

    /// Stores a new OAuth client.
    pub async fn insert_oauth(&self, c: &OAuthRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO oauth_clients (id, secret_hash, scopes, tags, description, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&c.id)
        .bind(&c.secret_hash)
        .bind(to_json(&c.scopes))
        .bind(to_json(&c.tags))
        .bind(&c.description)
        .bind(c.created_at)
        .bind(c.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An OAuth client by id.
    pub async fn oauth(&self, id: &str) -> Result<Option<OAuthRow>> {
        let r = sqlx::query("SELECT * FROM oauth_clients WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(Self::oauth_row).transpose()
    }

    /// Every OAuth client.
    pub async fn oauth_clients(&self) -> Result<Vec<OAuthRow>> {
        let rows = sqlx::query("SELECT * FROM oauth_clients ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::oauth_row).collect()
    }

    /// Revokes an OAuth client and every token issued to it.
    pub async fn revoke_oauth(&self, id: &str, now: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE oauth_clients SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(n == 1)
    }

    /// Stores an API token.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, secret_hash, kind, client_id, scopes, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.kind)
        .bind(t.client_id.clone())
        .bind(to_json(&t.scopes))
        .bind(self.clock.now())
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An API token by id.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        let r = sqlx::query("SELECT * FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref()
            .map(|r| {
                Ok(TokenRow {
                    id: r.try_get("id")?,
                    secret_hash: r.try_get("secret_hash")?,
                    kind: r.try_get("kind")?,
                    client_id: r.try_get("client_id")?,
                    scopes: json_list(r, "scopes")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .transpose()
    }

    /// Replaces every active admin token with `t`, atomically.
    pub async fn rotate_admin_token(&self, t: &TokenRow, now: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE kind = 'admin' AND revoked_at IS NULL",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, secret_hash, kind, client_id, scopes, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.kind)
        .bind(t.client_id.clone())
        .bind(to_json(&t.scopes))
        .bind(now)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether an admin token exists.
    pub async fn has_admin_token(&self) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE kind = 'admin' AND revoked_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    // ---- policy

    /// The current policy text and version.
    pub async fn policy(&self) -> Result<Option<(i64, String)>> {
        let r = sqlx::query("SELECT version, text FROM policies ORDER BY version DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| Ok((r.try_get("version")?, r.try_get("text")?)))
            .transpose()
    }

    /// Stores a new policy version.
    pub async fn set_policy(&self, text: &str, by: &str) -> Result<i64> {
        let version = self.policy().await?.map_or(1, |(v, _)| v + 1);
        sqlx::query(
            "INSERT INTO policies (version, text, created_at, created_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(version)
        .bind(text)
        .bind(self.clock.now())
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(version)
    }

    // ---- audit

    /// Appends an audit entry (ids increase by one).
    pub async fn audit(&self, e: &AuditRow) -> Result<i64> {
        let id = self
            .audit_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        sqlx::query("INSERT INTO audit (id, at, actor, action, target, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(id)
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.outcome)
            .bind(&e.detail)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    /// Deletes audit entries older than `before` (Unix seconds), and all but
    /// the newest `keep`; returns how many went.
    pub async fn prune_audit(&self, before: Option<i64>, keep: u64) -> Result<u64> {
        let mut gone = 0;
        if let Some(before) = before {
            gone += sqlx::query("DELETE FROM audit WHERE at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        // Ids increase by one per entry, so the newest `keep` are a range.
        let newest = self.audit_seq.load(std::sync::atomic::Ordering::SeqCst);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        gone += sqlx::query("DELETE FROM audit WHERE id <= $1")
            .bind(newest.saturating_sub(keep))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(gone)
    }

    /// How many audit entries are stored.
    pub async fn audit_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The latest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT * FROM audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
