//! `gatehouse control`: run the coordination server.

use anyhow::{Context, Result};
use clap::Args;
use gatehouse_control::ControlConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// State directory (database, mesh CA, admin token).
    #[arg(long, env = "GATEHOUSE_STATE", default_value = "gatehouse-control")]
    state: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "GATEHOUSE_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Network name: nodes are named <host>.<network>.<domain>.
    #[arg(long, env = "GATEHOUSE_NETWORK", default_value = "gatehouse")]
    network: String,
    /// DNS suffix of the network.
    #[arg(long, env = "GATEHOUSE_DOMAIN", default_value = "internal")]
    domain: String,
    /// Extra DNS names or addresses nodes use to reach control (the first is in the join string).
    #[arg(long)]
    advertise: Vec<String>,
    /// UDP address of the embedded relay's STUN responder.
    #[arg(long, default_value = "0.0.0.0:3478", conflicts_with_all = ["relay_map", "no_relay"])]
    stun_listen: SocketAddr,
    /// Hand nodes the relays of this map (YAML or JSON, Tailscale's DERP
    /// map shape: regions with id, code, name, nodes) instead of running
    /// the embedded relay; re-read on SIGHUP.
    #[arg(long, conflicts_with = "no_relay")]
    relay_map: Option<PathBuf>,
    /// Run no relay and hand nodes none: peers reach each other only at
    /// the endpoints they announce.
    #[arg(long)]
    no_relay: bool,
    /// Node key lifetime: `180d`, `720h`, … A device whose key expired
    /// registers again (a key-less device signs in again).
    #[arg(long, default_value = "180d", value_parser = gatehouse_control::parse_key_lifetime)]
    key_expiry: Duration,
    /// Node key lifetime in days (older spelling of --key-expiry).
    #[arg(long, hide = true, conflicts_with = "key_expiry")]
    key_days: Option<u64>,
    /// Lifetime of nodes' serving certificates, in hours.
    #[arg(long, default_value_t = 168)]
    cert_hours: u64,
    /// Refused requests (bad credentials; bad registrations or token
    /// requests) a source address may make per minute before it is answered
    /// 429 with Retry-After. 0 turns the limit off.
    #[arg(long, default_value_t = 30)]
    refusals_per_minute: u32,
    /// Audit entries older than this many days are deleted (0: keep them forever).
    #[arg(long, default_value_t = 90)]
    audit_max_age_days: u64,
    /// At most this many audit entries are kept; the oldest go first.
    #[arg(long, default_value_t = 100_000)]
    audit_max_entries: u64,
    /// Host names reserved for tagged nodes (`*` matches any run of
    /// characters; repeatable): a user's device cannot take them. Names a
    /// tagged node has held are reserved too. `--tagged-names ''` reserves
    /// none by pattern.
    #[arg(long, default_values_t = ["k8s-*".to_string()])]
    tagged_names: Vec<String>,
    /// Connection limits of control's listener (every node holds one
    /// connection for its map stream: the default cap is 32768).
    #[command(flatten)]
    limits: crate::limit_flags::LimitFlags,
    /// Sign people in through this OpenID provider (its issuer URL): a
    /// device without a pre-auth key joins for the person who signs in on
    /// its page.
    #[arg(long, env = "GATEHOUSE_OIDC_ISSUER", requires_all = ["oidc_client_id", "oidc_client_secret_file"])]
    oidc_issuer: Option<String>,
    /// Control's client id at the provider.
    #[arg(long, env = "GATEHOUSE_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// File holding control's client secret at the provider.
    #[arg(long, env = "GATEHOUSE_OIDC_CLIENT_SECRET_FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// Trust only this CA bundle (PEM) for the provider's HTTPS.
    #[arg(long)]
    oidc_ca_file: Option<PathBuf>,
    /// The ID-token claim that names the person (an `email` counts only
    /// when `email_verified` is true).
    #[arg(long, default_value = "email")]
    oidc_login_claim: String,
    /// Scopes asked for besides `openid` (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = ["email".to_string(), "profile".to_string()])]
    oidc_scopes: Vec<String>,
    /// Only people whose login is in one of these domains may sign in
    /// (comma-separated; with --oidc-allowed-users, either list admits).
    #[arg(long, value_delimiter = ',')]
    oidc_allowed_domains: Vec<String>,
    /// Only these logins may sign in (comma-separated).
    #[arg(long, value_delimiter = ',')]
    oidc_allowed_users: Vec<String>,
    /// The ID-token claim holding the person's groups (handed to the edge
    /// for Access rules).
    #[arg(long, default_value = "groups")]
    oidc_groups_claim: String,
    /// Public host names whose edge may send people here to sign in for
    /// Access rules (comma-separated; `*.example.com` matches any name
    /// below example.com). Empty: no Access sign-ins.
    #[arg(long, value_delimiter = ',', requires = "oidc_issuer")]
    access_hosts: Vec<String>,
    /// Print the admin API's OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

/// Waits for SIGTERM or SIGINT, re-reading the relay map on each SIGHUP:
/// a map that does not load is refused whole and the old one stays.
async fn reload_relay_map_on_hangup(running: &gatehouse_control::Running, path: &std::path::Path) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return crate::logging::shutdown_signal().await;
    };
    let stop = crate::logging::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = hup.recv() => {
                let loaded = gatehouse_control::relay::load_map(path)
                    .map_err(|e| e.to_string())
                    .and_then(|map| running.set_relay_map(map));
                match loaded {
                    Ok(()) => tracing::info!(path = %path.display(), "relay map reloaded"),
                    Err(e) => tracing::error!(error = %e, "relay map refused; the previous one stays"),
                }
            }
        }
    }
}

pub async fn run(a: ControlArgs) -> Result<()> {
    if a.openapi {
        println!("{}", gatehouse_control::openapi_json());
        return Ok(());
    }
    let mut cfg = ControlConfig::new(a.state.clone(), a.listen);
    cfg.network = a.network;
    cfg.suffix = a.domain;
    cfg.advertise = a.advertise;
    cfg.relay = if a.no_relay {
        gatehouse_control::relay::RelayMode::Off
    } else if let Some(path) = &a.relay_map {
        gatehouse_control::relay::RelayMode::Map(gatehouse_control::relay::load_map(path)?)
    } else {
        gatehouse_control::relay::RelayMode::Embedded {
            stun: a.stun_listen,
        }
    };
    cfg.node_key_lifetime = match a.key_days {
        Some(days) => Duration::from_secs(days.saturating_mul(86_400)),
        None => a.key_expiry,
    };
    if let Some(issuer) = a.oidc_issuer {
        let (Some(id), Some(secret_file)) = (a.oidc_client_id, a.oidc_client_secret_file) else {
            anyhow::bail!("--oidc-issuer needs --oidc-client-id and --oidc-client-secret-file");
        };
        let secret = std::fs::read_to_string(&secret_file).with_context(|| {
            format!(
                "--oidc-client-secret-file: reading {}",
                secret_file.display()
            )
        })?;
        let secret = secret.trim();
        if secret.is_empty() {
            anyhow::bail!(
                "--oidc-client-secret-file: {} is empty",
                secret_file.display()
            );
        }
        let mut oidc = gatehouse_control::signin::OidcConfig::new(&issuer, &id, secret);
        oidc.ca_file = a.oidc_ca_file;
        oidc.login_claim = a.oidc_login_claim;
        oidc.scopes = a.oidc_scopes;
        oidc.allowed_domains = a.oidc_allowed_domains;
        oidc.allowed_users = a.oidc_allowed_users;
        oidc.groups_claim = a.oidc_groups_claim;
        oidc.access_hosts = a.access_hosts;
        cfg.oidc = Some(oidc);
    }
    cfg.serving_cert_lifetime = Duration::from_secs(a.cert_hours * 3600);
    cfg.refusals_per_minute = a.refusals_per_minute;
    cfg.audit_max_age =
        (a.audit_max_age_days > 0).then(|| Duration::from_secs(a.audit_max_age_days * 86_400));
    cfg.audit_max_entries = a.audit_max_entries;
    cfg.tagged_names = a
        .tagged_names
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    cfg.limits = a
        .limits
        .over(Default::default())
        .resolve(&gatehouse_control::DEFAULT_LIMITS)
        .context("connection limits")?;
    let domain = cfg.domain();
    let (running, info) = gatehouse_control::start(cfg)
        .await
        .context("starting control")?;
    println!(
        "gatehouse control: serving network {domain} on {}",
        info.url
    );
    println!("  mesh CA      sha256:{}", info.ca_fingerprint);
    println!("  join string  {}", info.join);
    match &info.new_admin_token {
        Some(t) => {
            println!("  admin token  {t}");
            println!(
                "               (shown once; saved to {})",
                info.admin_token_file.display()
            );
        }
        None => println!("  admin token  in {}", info.admin_token_file.display()),
    }
    println!(
        "  admin API    {}/api/v1 (OpenAPI at /api/v1/openapi.json)",
        info.url
    );
    match (&running.stun_addr, running.relay_map().regions.len()) {
        (Some(stun), _) => println!("  relay        {}/derp, STUN on udp {stun}", info.url),
        (None, 0) => println!("  relay        none (--no-relay)"),
        (None, n) => println!("  relay        {n} region(s) from the relay map"),
    }
    println!(
        "  try          gatehouse admin --state {} nodes list",
        a.state.display()
    );
    match &a.relay_map {
        Some(path) => reload_relay_map_on_hangup(&running, path).await,
        None => crate::logging::shutdown_signal().await,
    }
    println!("gatehouse control: stopping");
    running.shutdown().await;
    Ok(())
}
