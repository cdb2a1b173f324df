//! Who is calling: the admin token or an OAuth access token, its scopes and
//! tags, and which tags a key's minter owns under the policy.

use crate::App;
use crate::audit::audit;
use crate::error::{ApiErr, ApiResult};
use crate::secret::{self, Kind};
use crate::store::KeyRow;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use gatehouse_policy::{Owner, Policy};
use std::sync::Arc;

/// Every scope a token may carry.
pub(crate) const SCOPES: &[&str] = &[
    "devices:read",
    "devices:write",
    "auth_keys:read",
    "auth_keys:write",
    "auth_keys:all",
    "policy:read",
    "policy:write",
    "users:read",
    "users:write",
    "audit:read",
];

/// Who is calling the admin API.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// `admin` or `oauth:<client id>`.
    pub actor: String,
    scopes: Vec<String>,
    /// The admin token (every scope, owns every tag).
    pub admin: bool,
    /// Tags of the OAuth client.
    pub tags: Vec<String>,
}

impl Caller {
    pub(crate) fn has(&self, scope: &str) -> bool {
        if self.admin {
            return true;
        }
        let write = scope.replace(":read", ":write");
        self.scopes.iter().any(|s| s == scope || *s == write)
    }

    /// Refuses unless the caller holds `scope` (a `:write` scope includes `:read`).
    pub fn require(&self, scope: &str) -> ApiResult<()> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiErr::forbidden(format!(
                "this credential lacks the {scope} scope"
            )))
        }
    }

    /// Whether the caller may list and revoke `key`: the admin and holders
    /// of `auth_keys:all` see every key; an OAuth client, the keys it minted.
    pub(crate) fn sees_key(&self, key: &KeyRow) -> bool {
        self.has("auth_keys:all") || key.created_by == self.actor
    }

    pub(crate) fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiErr::forbidden(
                "only the admin token may manage OAuth clients",
            ))
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiErr;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiErr::unauthorized("missing Authorization: Bearer <token>"))?;
        let (kind, parsed) = if let Some(p) = secret::parse(Kind::Admin, header) {
            ("admin", p)
        } else if let Some(p) = secret::parse(Kind::Token, header) {
            ("oauth", p)
        } else {
            audit(app, "anonymous", "api.auth", "", false, "malformed token").await;
            return Err(ApiErr::unauthorized("malformed token"));
        };
        let (id, secret_part) = parsed;
        let row = app.store.token(id).await?;
        let valid = row.as_ref().is_some_and(|t| {
            t.kind == kind
                && secret::verify(secret_part, &t.secret_hash)
                && t.revoked_at.is_none()
                && t.expires_at.is_none_or(|e| e > app.now())
        });
        let Some(row) = row.filter(|_| valid) else {
            audit(
                app,
                "anonymous",
                "api.auth",
                id,
                false,
                "unknown, revoked or expired token",
            )
            .await;
            return Err(ApiErr::unauthorized("unknown, revoked or expired token"));
        };
        if kind == "admin" {
            return Ok(Caller {
                actor: "admin".into(),
                scopes: Vec::new(),
                admin: true,
                tags: Vec::new(),
            });
        }
        let client_id = row.client_id.clone().unwrap_or_default();
        let client = app
            .store
            .oauth(&client_id)
            .await?
            .filter(|c| c.revoked_at.is_none())
            .ok_or_else(|| ApiErr::unauthorized("the token's OAuth client is revoked"))?;
        Ok(Caller {
            actor: format!("oauth:{client_id}"),
            scopes: row.scopes,
            admin: false,
            tags: client.tags,
        })
    }
}

/// Who minted a key, for deciding which tags it may carry.
pub(crate) enum Minter<'a> {
    Admin,
    OAuth(&'a [String]),
}

/// Whether `minter` may apply `tags` under `policy`: every tag must be
/// declared; the admin owns them all; an OAuth client owns a tag it carries
/// or whose owners include one of its tags.
pub(crate) fn check_tag_ownership(
    policy: &Policy,
    minter: &Minter<'_>,
    tags: &[String],
) -> Result<(), String> {
    for t in tags {
        let Some(owners) = policy.tag_owners.get(t) else {
            return Err(format!("{t} is not declared in the policy's tagOwners"));
        };
        let owned = match minter {
            Minter::Admin => true,
            Minter::OAuth(client_tags) => {
                client_tags.contains(t)
                    || owners
                        .iter()
                        .any(|o| matches!(o, Owner::Tag(ot) if client_tags.contains(ot)))
            }
        };
        if !owned {
            return Err(format!(
                "{t} is not owned by the key's creator (see tagOwners)"
            ));
        }
    }
    Ok(())
}

/// The minter of a stored key, loaded for an ownership check.
pub(crate) async fn key_minter_tags(app: &App, created_by: &str) -> ApiResult<Option<Vec<String>>> {
    match created_by.strip_prefix("oauth:") {
        None => Ok(None),
        Some(id) => {
            let c = app
                .store
                .oauth(id)
                .await?
                .filter(|c| c.revoked_at.is_none())
                .ok_or_else(|| {
                    ApiErr::unauthorized("the OAuth client that minted this key is revoked")
                })?;
            Ok(Some(c.tags))
        }
    }
}
