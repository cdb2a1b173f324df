//! Admission of a new node, shared by both protocols (the native one and
//! Tailscale's): the pre-auth key is checked (known, unrevoked, unexpired,
//! unused if one-off, its tags still owned by its minter), the name is
//! checked against names reserved for tagged nodes and shared names, then
//! the name and addresses are allocated and the node is stored, spending
//! one use of the key. A refusal is audited once, by the caller.

use crate::App;
use crate::audit::audit;
use crate::auth::{Minter, check_tag_ownership, key_minter_tags};
use crate::error::ApiErr;
use crate::metrics::Metrics;
use crate::secret::{self, Kind};
use crate::store::{ClientInfo, KeyRow, NodeRow};

/// A refused registration: who presented what, and the answer.
enum Refusal {
    /// A credential or request refused on its merits: audited.
    Refused { actor: String, err: ApiErr },
    /// Control failed (storage): answered, not audited as a refusal.
    Failed(ApiErr),
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::Failed(e.into())
    }
}

fn refused(actor: &str, err: ApiErr) -> Refusal {
    Refusal::Refused {
        actor: actor.to_string(),
        err,
    }
}

/// Who lets a node in.
pub(crate) enum Authority<'a> {
    /// A pre-auth key (its text).
    Key(&'a str),
    /// An administrator approving a device that asked interactively: the
    /// node belongs to `user`.
    Approval {
        /// The administrator, as the audit log names them.
        actor: String,
        /// The person the device belongs to.
        user: String,
    },
}

/// What a new node asks for, whatever protocol it speaks.
pub(crate) struct Candidate<'a> {
    /// Who lets it in.
    pub authority: Authority<'a>,
    /// The host name it asks for.
    pub hostname: &'a str,
    /// Whether it asks to share `hostname` with other replicas.
    pub shared_name: bool,
    /// Its WireGuard public key (base64).
    pub wg_key: &'a str,
    /// How it will prove who it is afterwards.
    pub credential: Credential<'a>,
    /// What it runs.
    pub client: ClientInfo,
}

/// How a node proves who it is after registering.
pub(crate) enum Credential<'a> {
    /// A machine certificate control signs (the native protocol), and the
    /// serving certificate of its name.
    Certificates {
        /// PEM CSR of the machine certificate.
        machine_csr: &'a str,
        /// PEM CSR of the serving certificate.
        serving_csr: &'a str,
    },
    /// Its Noise machine key (Tailscale's control protocol), as `mkey:<hex>`.
    MachineKey(String),
}

/// A node just stored, with what the native protocol hands back.
#[derive(Debug, Clone)]
pub(crate) struct Admitted {
    /// The node.
    pub row: NodeRow,
    /// Its machine certificate (PEM), for the native protocol.
    pub machine_cert: Option<String>,
}

fn time_of(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Judges a registration and, if it passes, stores the node; a refusal is
/// audited (naming the credential presented) and counted.
pub(crate) async fn register(app: &App, c: Candidate<'_>) -> Result<Admitted, ApiErr> {
    let hostname = c.hostname.to_string();
    match admit(app, c).await {
        Ok(admitted) => Ok(admitted),
        Err(Refusal::Failed(e)) => Err(e),
        Err(Refusal::Refused { actor, err }) => {
            audit(
                app,
                &actor,
                "node.register",
                &hostname,
                false,
                &err.to_string(),
            )
            .await;
            Metrics::outcome(&app.metrics.registrations, false);
            Err(err)
        }
    }
}

/// What a node gets: its owner or tags, and what it spends.
struct Grant {
    user: Option<String>,
    tags: Vec<String>,
    ephemeral: bool,
    /// The pre-auth key to spend one use of.
    key_id: Option<String>,
    /// Who the audit log names.
    actor: String,
}

async fn admit(app: &App, c: Candidate<'_>) -> Result<Admitted, Refusal> {
    let grant = match &c.authority {
        Authority::Key(text) => check_key(app, text, &c).await?,
        Authority::Approval { actor, user } => check_approval(app, actor, user, &c).await?,
    };
    let _serial = app.register_lock.lock().await;
    store_node(app, c, grant).await
}

/// An administrator's approval: the user must exist, and the name must not
/// be reserved for tagged nodes.
async fn check_approval(
    app: &App,
    actor: &str,
    user: &str,
    c: &Candidate<'_>,
) -> Result<Grant, Refusal> {
    if !app.store.user_exists(user).await? {
        return Err(refused(
            actor,
            ApiErr::bad(format!("no user {user}; create it first")),
        ));
    }
    if let Some(err) = reserved_for_tags(app, c.hostname).await? {
        return Err(refused(actor, err));
    }
    Ok(Grant {
        user: Some(user.to_string()),
        tags: Vec::new(),
        ephemeral: false,
        key_id: None,
        actor: actor.to_string(),
    })
}

/// The pre-auth key of a registration, if it may register this node: known,
/// unrevoked, unexpired, unused if one-off, its tags still owned by its
/// minter, and the name asked for allowed to its owner. Also the actor the
/// audit log names (`key:<id>`).
async fn check_key(app: &App, text: &str, c: &Candidate<'_>) -> Result<Grant, Refusal> {
    let Some((key_id, key_secret)) = secret::parse(Kind::AuthKey, text) else {
        return Err(refused(
            "anonymous",
            ApiErr::unauthorized("invalid auth key"),
        ));
    };
    let actor = format!("key:{key_id}");
    let key = app.store.key(key_id).await?;
    let Some(key) = key.filter(|k| secret::verify(key_secret, &k.secret_hash)) else {
        return Err(refused(&actor, ApiErr::unauthorized("invalid auth key")));
    };
    let t = app.now();
    if key.revoked_at.is_some() {
        return Err(refused(&actor, ApiErr::unauthorized("auth key revoked")));
    }
    if key.expires_at <= t {
        return Err(refused(&actor, ApiErr::unauthorized("auth key expired")));
    }
    if !key.reusable && key.uses > 0 {
        return Err(refused(
            &actor,
            ApiErr::unauthorized("auth key already used (it is a one-off key)"),
        ));
    }
    // Tags must still be owned by the key's creator under today's policy.
    let minter_tags = key_minter_tags(app, &key.created_by)
        .await
        .map_err(|e| refused(&actor, e))?;
    let minter = match &minter_tags {
        None => Minter::Admin,
        Some(tags) => Minter::OAuth(tags),
    };
    check_tag_ownership(&app.hub.policy(), &minter, &key.tags)
        .map_err(|e| refused(&actor, ApiErr::forbidden(e)))?;
    if key.tags.is_empty() && key.user.is_none() {
        return Err(refused(
            &actor,
            ApiErr::bad("the key has neither a user nor tags"),
        ));
    }
    // (A user's key asking for a shared name is refused for that, later.)
    if key.tags.is_empty()
        && !c.shared_name
        && let Some(err) = reserved_for_tags(app, c.hostname).await?
    {
        return Err(refused(&actor, err));
    }
    Ok(grant_of(key, actor))
}

fn grant_of(key: KeyRow, actor: String) -> Grant {
    Grant {
        user: key.user,
        tags: key.tags,
        ephemeral: key.ephemeral,
        key_id: Some(key.id),
        actor,
    }
}

/// Allocates the node's name and addresses, signs its certificates (native
/// nodes) and stores it, spending one use of its key. The caller holds the
/// registration lock.
async fn store_node(app: &App, c: Candidate<'_>, grant: Grant) -> Result<Admitted, Refusal> {
    let Grant {
        user,
        tags,
        ephemeral,
        key_id,
        actor,
    } = grant;
    let t = app.now();
    if app.hub.has_wireguard_key(c.wg_key) {
        return Err(refused(
            &actor,
            ApiErr::conflict("this WireGuard key is already registered"),
        ));
    }
    let service = if c.shared_name {
        Some(shared_name(app, c.hostname, &tags, user.as_deref()).map_err(|e| refused(&actor, e))?)
    } else {
        None
    };
    let (name, v4, v6) = app.hub.allocate(c.hostname);
    let id = format!("n{}", secret::mint(Kind::Token).id);
    let fqdn = format!("{name}.{}", app.config.domain());
    let key_expiry =
        t + i64::try_from(app.config.node_key_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let (machine_cert, credential, serving_cert) = match c.credential {
        Credential::Certificates {
            machine_csr,
            serving_csr,
        } => {
            let machine_cert = app
                .ca
                .sign_machine(machine_csr, &id, time_of(key_expiry))
                .map_err(|e| refused(&actor, ApiErr::bad(format!("machine_csr: {e}"))))?;
            let lifetime = time::Duration::seconds(
                i64::try_from(app.config.serving_cert_lifetime.as_secs()).unwrap_or(86_400),
            );
            let names = serving_names(&fqdn, service.as_deref(), &app.config.domain());
            let serving_cert = app
                .ca
                .sign_serving(serving_csr, &names, lifetime)
                .map_err(|e| refused(&actor, ApiErr::bad(format!("serving_csr: {e}"))))?;
            let fingerprint = crate::ca::pem_to_der(&machine_cert)
                .map(|d| crate::ca::der_fingerprint(&d))
                .ok_or_else(|| {
                    Refusal::Failed(ApiErr::internal("issued certificate does not parse"))
                })?;
            (Some(machine_cert), fingerprint, serving_cert)
        }
        Credential::MachineKey(mkey) => (None, mkey, String::new()),
    };
    let row = NodeRow {
        id: id.clone(),
        name: name.clone(),
        user: user.clone(),
        tags: tags.clone(),
        ipv4: v4.to_string(),
        ipv6: v6.to_string(),
        wg_key: c.wg_key.to_string(),
        cert_fingerprint: credential,
        serving_cert,
        endpoints: Vec::new(),
        ephemeral,
        auth_key_id: key_id.clone(),
        created_at: t,
        key_expiry,
        last_seen: Some(t),
        service: service.clone(),
        client: c.client,
    };
    if !app.store.register_node(&row, key_id.as_deref(), t).await? {
        return Err(refused(
            &actor,
            ApiErr::unauthorized("auth key already used, revoked or expired"),
        ));
    }
    if let Err(e) = app.hub.add_node(row.clone()) {
        // Cannot happen for checked tags; undo rather than keep a node the mesh lacks.
        app.store.delete_node(&id).await?;
        return Err(refused(&actor, ApiErr::bad(e.to_string())));
    }
    Metrics::outcome(&app.metrics.registrations, true);
    audit(
        app,
        &actor,
        "node.register",
        &id,
        true,
        &format!(
            "name={name} tags={:?} user={:?} shared_name={service:?} client={}",
            tags, user, row.client.kind
        ),
    )
    .await;
    Ok(Admitted { row, machine_cert })
}

/// Whether `pattern` (with `*` matching any run of characters) matches `name`.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Why a user's device may not take `hostname`, if it is reserved for
/// tagged nodes: it matches a configured pattern (`--tagged-names`), or a
/// tagged node has held it.
pub(crate) async fn reserved_for_tags(
    app: &App,
    hostname: &str,
) -> Result<Option<ApiErr>, crate::store::StoreError> {
    let label = gatehouse_names::to_label(hostname);
    if let Some(p) = app
        .config
        .tagged_names
        .iter()
        .find(|p| glob_matches(p, &label))
    {
        return Ok(Some(ApiErr::conflict(format!(
            "the name {label} is reserved for tagged nodes (pattern {p:?}); choose another hostname"
        ))));
    }
    Ok(app.store.tagged_name(&label).await?.map(|tags| {
        ApiErr::conflict(format!(
            "the name {label} belongs to tagged nodes ({}); choose another hostname",
            tags.join(",")
        ))
    }))
}

/// The shared name a replica asks for, if it may have it: only tagged nodes
/// share names, and every node already holding the name (as its own or as
/// its shared name) must be a replica of it with the same tags, so no node
/// takes over another's name.
fn shared_name(
    app: &App,
    hostname: &str,
    tags: &[String],
    user: Option<&str>,
) -> Result<String, ApiErr> {
    if tags.is_empty() || user.is_some() {
        return Err(ApiErr::bad(
            "only tagged nodes share a name (the auth key has a user)",
        ));
    }
    let label = gatehouse_names::to_label(hostname);
    let mut want: Vec<&String> = tags.iter().collect();
    want.sort();
    for (service, holder_tags) in app.hub.name_holders(&label) {
        let mut have: Vec<&String> = holder_tags.iter().collect();
        have.sort();
        if service.as_deref() != Some(label.as_str()) || have != want {
            return Err(ApiErr::conflict(format!(
                "the name {label} is held by a node that is not a replica with tags {tags:?}"
            )));
        }
    }
    Ok(label)
}

/// The names a serving certificate covers: the node's FQDN and, for a
/// replica, its shared name's.
pub(crate) fn serving_names(fqdn: &str, service: Option<&str>, domain: &str) -> Vec<String> {
    let mut names = vec![fqdn.to_string()];
    if let Some(s) = service {
        let shared = format!("{s}.{domain}");
        if shared != fqdn {
            names.push(shared);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::glob_matches;

    #[test]
    fn globs() {
        assert!(glob_matches("k8s-*", "k8s-grafana"));
        assert!(glob_matches("k8s-*", "k8s-"));
        assert!(!glob_matches("k8s-*", "k8s"));
        assert!(!glob_matches("k8s-*", "my-k8s-grafana"));
        assert!(glob_matches("*-ui", "admin-ui"));
        assert!(glob_matches("a*b*c", "a-b-c"));
        assert!(!glob_matches("a*b*c", "a-c-b"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact-1"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("ab*ba", "aba"));
    }
}
