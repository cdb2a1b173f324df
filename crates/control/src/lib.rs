//! The Gatehouse coordination server. It owns users, nodes, pre-auth keys,
//! OAuth clients, the policy, node names and addresses, the mesh CA, the
//! audit log, and the map streams that tell each node its peers and packet
//! filter. It leaves the data plane to nodes (`gatehouse node`) and policy
//! semantics to `gatehouse-policy`; its wire format is `gatehouse-proto`.
//!
//! Protocol: `docs/protocol/control.md`.

#![forbid(unsafe_code)]

mod admin;
mod admission;
mod audit;
mod auth;
pub mod ca;
pub mod clock;
mod error;
mod extract;
pub mod hub;
pub mod limit;
mod machine;
mod metrics;
mod openapi;
mod pages;
pub mod relay;
pub mod secret;
mod server;
pub mod signin;
pub mod store;
mod stream;
mod tailscale;
mod waiting;

use crate::ca::MeshCa;
use crate::hub::Hub;
use crate::store::{Store, TokenRow};
use gatehouse_policy::check_policy;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use admin::openapi_json;
pub use server::Running;

/// The policy a new network starts with: default deny, people reach their
/// own devices and the HTTP(S) of service proxies; only admins own the
/// operator tag, which owns the proxies' tag.
pub const STARTER_POLICY: &str = r#"// Gatehouse policy (Tailscale policy-file syntax). Access is denied unless a
// rule below allows it. Replace with: gatehouse admin policy set FILE
{
  "tagOwners": {
    "tag:k8s-operator": [],
    "tag:k8s": ["tag:k8s-operator"],
  },
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:k8s:80,443"]},
  ],
}
"#;

/// Control's connection limits: every node holds a connection for its map
/// stream, so the cap is higher than a web listener's.
pub const DEFAULT_LIMITS: gatehouse_limits::Limits = gatehouse_limits::Limits {
    max_connections: 32_768,
    ..gatehouse_limits::Limits::DEFAULT
};

/// How control runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// State directory (database, CA, admin token).
    pub state_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Network name (second label of node names).
    pub network: String,
    /// DNS suffix: node names are `<host>.<network>.<suffix>`.
    pub suffix: String,
    /// Extra DNS names and addresses control's certificate covers.
    pub advertise: Vec<String>,
    /// The relays nodes are given.
    pub relay: relay::RelayMode,
    /// Lifetime of node keys (machine certificates).
    pub node_key_lifetime: Duration,
    /// Lifetime of nodes' serving certificates.
    pub serving_cert_lifetime: Duration,
    /// Interval between keepalives on map streams.
    pub keepalive: Duration,
    /// How long an ephemeral node may stay offline before it is removed.
    pub ephemeral_grace: Duration,
    /// Refused requests a source address may make per minute before it is
    /// answered 429 (0: no limit).
    pub refusals_per_minute: u32,
    /// Audit entries older than this are deleted (`None`: kept forever).
    pub audit_max_age: Option<Duration>,
    /// At most this many audit entries are kept (the oldest go first).
    pub audit_max_entries: u64,
    /// How often retention is applied to the audit log.
    pub audit_prune_every: Duration,
    /// Host name patterns (`*` matches any run of characters) reserved for
    /// tagged nodes: a user's device cannot take such a name.
    pub tagged_names: Vec<String>,
    /// The listener's connection cap and timeouts.
    pub limits: gatehouse_limits::Limits,
    /// Where control reads the time.
    pub clock: Arc<dyn clock::Clock>,
    /// Sign-in through an OpenID provider (`None`: devices without a key
    /// wait for an administrator's approval).
    pub oidc: Option<signin::OidcConfig>,
}

impl ControlConfig {
    /// Defaults for a state dir and listen address.
    pub fn new(state_dir: PathBuf, listen: SocketAddr) -> Self {
        ControlConfig {
            state_dir,
            listen,
            network: "gatehouse".into(),
            suffix: "internal".into(),
            advertise: Vec::new(),
            // STUN beside control's listener, on a port of its own.
            relay: relay::RelayMode::Embedded {
                stun: SocketAddr::new(listen.ip(), 0),
            },
            node_key_lifetime: Duration::from_secs(180 * 86_400),
            serving_cert_lifetime: Duration::from_secs(7 * 86_400),
            keepalive: Duration::from_secs(25),
            ephemeral_grace: Duration::from_secs(60),
            refusals_per_minute: 30,
            audit_max_age: Some(Duration::from_secs(90 * 86_400)),
            audit_max_entries: 100_000,
            audit_prune_every: Duration::from_secs(60),
            tagged_names: vec!["k8s-*".into()],
            limits: DEFAULT_LIMITS,
            clock: Arc::new(clock::SystemClock),
            oidc: None,
        }
    }

    /// `<network>.<suffix>`.
    pub fn domain(&self) -> String {
        format!("{}.{}", self.network, self.suffix)
    }
}

/// A node key lifetime as `--key-expiry` and `gatehouse.yaml` write it:
/// `180d`, or a duration (`720h`, `90m`). Zero is refused: it would expire
/// every device at once.
pub fn parse_key_lifetime(s: &str) -> Result<Duration, String> {
    let d = match s.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|n| Duration::from_secs(n.saturating_mul(86_400)))
            .map_err(|e| format!("invalid number of days {days:?}: {e}"))?,
        None => gatehouse_ops::parse_duration(s).map_err(|e| e.to_string())?,
    };
    if d.is_zero() {
        return Err("a key lifetime of zero would expire every device at once".into());
    }
    Ok(d)
}

/// Why control could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Storage.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The CA.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// Files and sockets.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The stored state does not fit the configuration, or is corrupt.
    #[error("{0}")]
    State(String),
    /// The stored policy no longer validates.
    #[error("stored policy is not valid")]
    StoredPolicy(#[source] gatehouse_policy::PolicyRefused),
    /// The stored nodes do not fit the stored policy.
    #[error("stored nodes do not fit the stored policy")]
    StoredNodes(#[source] gatehouse_policy::EngineError),
}

impl App {
    /// Now, on control's clock (Unix seconds).
    pub fn now(&self) -> i64 {
        self.config.clock.now()
    }

    /// Deletes a node (storage, then the live mesh: it leaves its peers'
    /// maps at once) and audits it as `actor`'s act.
    pub(crate) async fn delete_node(
        &self,
        id: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), store::StoreError> {
        self.store.delete_node(id).await?;
        self.hub.remove_node(id);
        audit::audit(self, actor, "node.delete", id, true, detail).await;
        Ok(())
    }

    /// Expires a node's key now (storage, then the live mesh) and audits it
    /// as `actor`'s act.
    pub(crate) async fn expire_node(
        &self,
        id: &str,
        actor: &str,
        detail: &str,
    ) -> Result<(), store::StoreError> {
        let at = self.now();
        self.store.set_key_expiry(id, at).await?;
        self.hub.expire_node(id, at);
        audit::audit(self, actor, "node.expire", id, true, detail).await;
        Ok(())
    }

    /// Control's URL (`https://host:port`).
    pub fn url(&self) -> &str {
        self.url.get().map_or("", String::as_str)
    }
}

/// Shared state of a running control server.
#[derive(Debug)]
pub(crate) struct App {
    pub config: ControlConfig,
    pub store: Store,
    pub hub: Hub,
    pub ca: MeshCa,
    pub metrics: metrics::Metrics,
    /// The embedded relay (`RelayMode::Embedded`).
    pub relay: Option<Arc<gatehouse_relay::RelayServer>>,
    /// Refusals per source address.
    pub limiter: limit::RefusalLimiter,
    /// Serialises policy changes.
    pub policy_lock: tokio::sync::Mutex<()>,
    /// Serialises registrations (name and address allocation).
    pub register_lock: tokio::sync::Mutex<()>,
    /// Set when control is shutting down: map streams tell their nodes to
    /// come back soon, then end.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Control's Noise key (Tailscale's control protocol).
    pub noise_key: tailscale::MachinePrivateKey,
    /// Devices waiting for an administrator's approval.
    pub pending: waiting::Pending,
    /// Sign-ins through the OpenID provider in progress.
    pub signins: signin::SignIns,
    /// The key that signs Access grants for the edge.
    pub access_key: gatehouse_oidc::Signer,
    /// Control's URL, once it listens.
    pub url: std::sync::OnceLock<String>,
}

/// What the first start created and how to reach control.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// Control's URL.
    pub url: String,
    /// SHA-256 of the mesh CA certificate (hex).
    pub ca_fingerprint: String,
    /// The join string nodes use: `<url>#sha256:<fingerprint>`.
    pub join: String,
    /// The admin token, only when created by this start.
    pub new_admin_token: Option<String>,
    /// Where the admin token is saved.
    pub admin_token_file: PathBuf,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

fn random_ula() -> [u16; 3] {
    use rand::RngCore;
    let mut b = [0u8; 5];
    rand::rng().fill_bytes(&mut b);
    [
        0xfd00 | u16::from(b[0]),
        u16::from_be_bytes([b[1], b[2]]),
        u16::from_be_bytes([b[3], b[4]]),
    ]
}

/// Opens (or creates) control's state and starts serving.
pub async fn start(config: ControlConfig) -> Result<(Running, StartInfo), ControlError> {
    secure_state_dir(&config)?;
    let store = Store::open_sqlite(
        &config.state_dir.join("control.db"),
        Arc::clone(&config.clock),
    )
    .await?;
    let ula = network_prefix(&store, &config).await?;
    let dns_names: Vec<String> = config
        .advertise
        .iter()
        .filter(|a| a.parse::<IpAddr>().is_err())
        .cloned()
        .collect();
    let ca = MeshCa::load_or_create(&config.state_dir, &config.domain(), &dns_names)?;
    let token_file = config.state_dir.join("admin.token");
    let new_admin_token = ensure_admin_token(&store, &token_file).await?;
    let hub = load_hub(&store, &config, ula).await?;
    let relay_key = match config.relay {
        relay::RelayMode::Embedded { .. } => Some(relay::load_or_create_key(&config.state_dir)?),
        _ => None,
    };
    let noise_key = tailscale::MachinePrivateKey::from_bytes(state_key(
        &config.state_dir,
        tailscale::KEY_FILE,
        || tailscale::MachinePrivateKey::generate().to_bytes(),
    )?);
    let access_key = signin::load_access_key(&config.state_dir)?;
    let app = Arc::new_cyclic(|me: &std::sync::Weak<App>| {
        let relay = relay_key.and_then(|key| relay::embedded(key, me.clone()));
        App {
            metrics: metrics::Metrics::new(relay.as_ref().map(|r| r.metrics())),
            relay,
            limiter: limit::RefusalLimiter::new(config.refusals_per_minute),
            config,
            store,
            hub,
            ca,
            policy_lock: tokio::sync::Mutex::new(()),
            register_lock: tokio::sync::Mutex::new(()),
            stopping: tokio::sync::watch::Sender::new(false),
            noise_key,
            pending: waiting::Pending::default(),
            signins: signin::SignIns::default(),
            access_key,
            url: std::sync::OnceLock::new(),
        }
    });
    let running = server::serve(Arc::clone(&app)).await?;
    let url = running.url.clone();
    let fp = app.ca.fingerprint();
    let join_file = app.config.state_dir.join("join");
    std::fs::write(&join_file, format!("{url}#sha256:{fp}\n"))
        .map_err(io_err(format!("writing {}", join_file.display())))?;
    Ok((
        running,
        StartInfo {
            join: format!("{url}#sha256:{fp}"),
            url,
            ca_fingerprint: fp,
            new_admin_token,
            admin_token_file: token_file,
        },
    ))
}

/// A 32-byte private key kept in the state directory as hex (owner only),
/// created by `generate` on first start.
pub(crate) fn state_key(
    state_dir: &Path,
    file: &str,
    generate: impl FnOnce() -> [u8; 32],
) -> Result<[u8; 32], ControlError> {
    let path = state_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => hex::decode(text.trim())
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                ControlError::State(format!(
                    "{} does not hold a 32-byte hex key",
                    path.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            crate::ca::write_private(&path, &hex::encode(key))
                .map_err(io_err(format!("writing {}", path.display())))?;
            Ok(key)
        }
        Err(source) => Err(ControlError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Creates the state directory, owner only: the database holds credential
/// hashes, keys and the audit log, like the CA key beside it.
fn secure_state_dir(config: &ControlConfig) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("securing {}", config.state_dir.display())))
}

/// The network's IPv6 ULA prefix, chosen at random on first start; refuses
/// a state made for another network domain.
async fn network_prefix(store: &Store, config: &ControlConfig) -> Result<[u16; 3], ControlError> {
    let domain = config.domain();
    match store.meta("domain").await? {
        Some(d) if d != domain => {
            return Err(ControlError::State(format!(
                "state in {} belongs to network domain {d:?}, not {domain:?}",
                config.state_dir.display()
            )));
        }
        Some(_) => {}
        None => {
            store.set_meta("domain", &domain).await?;
            let ula = random_ula();
            store
                .set_meta(
                    "ula",
                    &format!("{:04x}:{:04x}:{:04x}", ula[0], ula[1], ula[2]),
                )
                .await?;
        }
    }
    let text = store
        .meta("ula")
        .await?
        .ok_or_else(|| ControlError::State("missing ULA prefix".into()))?;
    let corrupt = || ControlError::State(format!("corrupt ULA prefix {text:?}"));
    let mut parts = text.split(':').map(|p| u16::from_str_radix(p, 16));
    let mut next = || parts.next().and_then(Result::ok).ok_or_else(corrupt);
    let ula = [next()?, next()?, next()?];
    if parts.next().is_some() {
        return Err(corrupt());
    }
    Ok(ula)
}

/// Creates the admin token on first start (saved to `file`, 0600), and
/// returns it then.
async fn ensure_admin_token(store: &Store, file: &Path) -> Result<Option<String>, ControlError> {
    if store.has_admin_token().await? {
        return Ok(None);
    }
    let m = secret::mint(secret::Kind::Admin);
    store
        .insert_token(&TokenRow {
            id: m.id.clone(),
            secret_hash: m.hash.clone(),
            kind: "admin".into(),
            client_id: None,
            scopes: vec!["*".into()],
            expires_at: None,
            revoked_at: None,
        })
        .await?;
    ca::write_private(file, &format!("{}\n", m.text))
        .map_err(io_err(format!("writing {}", file.display())))?;
    Ok(Some(m.text))
}

/// The live mesh from the stored policy (the starter policy on first start)
/// and nodes.
async fn load_hub(
    store: &Store,
    config: &ControlConfig,
    ula: [u16; 3],
) -> Result<Hub, ControlError> {
    let policy_text = match store.policy().await? {
        Some((_, t)) => t,
        None => {
            store.set_policy(STARTER_POLICY, "control").await?;
            STARTER_POLICY.to_string()
        }
    };
    let rows = store.nodes().await?;
    let policy = check_policy(&policy_text, &[]).map_err(ControlError::StoredPolicy)?;
    Hub::new(
        config.domain(),
        gatehouse_proto::control::RelayMap::default(),
        ula,
        policy,
        rows,
        config.clock.now(),
    )
    .map_err(ControlError::StoredNodes)
}
