//! `gatehouse admin`: the admin API from the command line.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use gatehouse_client::{AdminClient, Join};
use gatehouse_proto::control::{CreateKey, CreateOAuthClient};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Control's join string (URL#sha256:<CA hash>), e.g. as printed by `gatehouse control`.
    #[arg(long, env = "GATEHOUSE_CONTROL")]
    control: Option<String>,
    /// Admin or OAuth access token, or `file:PATH` to read it from a file.
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Control's state directory: read the join string and admin token from it.
    #[arg(long, env = "GATEHOUSE_STATE")]
    state: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Pre-auth keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// OAuth clients.
    #[command(subcommand)]
    Oauth(OauthCmd),
    /// The policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Recent audit log entries.
    Audit {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The mesh CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// The admin token.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Replace the admin token: the old one stops working at once. With
    /// --state the new one is written to <state>/admin.token (0600),
    /// otherwise it is printed once.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum UsersCmd {
    /// List users.
    List,
    /// Add a user (name@domain).
    Add { login: String },
    /// Delete a user without nodes.
    Delete { login: String },
}

#[derive(Debug, Subcommand)]
enum NodesCmd {
    /// List nodes.
    List,
    /// Delete a node (id or name): it leaves every peer's map at once.
    Delete { node: String },
    /// Expire a node's key now.
    Expire { node: String },
    /// List devices waiting for approval (they asked to join without a
    /// pre-auth key, e.g. the Tailscale app on a phone).
    Pending,
    /// Let a waiting device in, for a person: CODE is the last part of the
    /// URL the device shows.
    Approve {
        /// The code (or the whole URL the device shows).
        code: String,
        /// The person the device belongs to (an existing user).
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// List pre-auth keys.
    List,
    /// Mint a pre-auth key (printed once).
    Create {
        /// User the nodes belong to (untagged keys).
        #[arg(long)]
        user: Option<String>,
        /// Tag to apply (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Usable many times.
        #[arg(long)]
        reusable: bool,
        /// Nodes are removed when they go offline.
        #[arg(long)]
        ephemeral: bool,
        /// Lifetime in seconds.
        #[arg(long)]
        expiry: Option<i64>,
    },
    /// Revoke a key.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum OauthCmd {
    /// List OAuth clients.
    List,
    /// Create an OAuth client (its secret is printed once).
    Create {
        /// Scope (repeatable), e.g. devices:write, auth_keys:write.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Tag of the client (repeatable); decides which tags its keys may carry.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a client and its tokens.
    Revoke { id: String },
    /// Exchange a client secret for an access token (client-credentials grant).
    Token {
        /// The client secret.
        #[arg(long, env = "GATEHOUSE_OAUTH_SECRET", hide_env_values = true)]
        secret: String,
        /// Space-separated scopes (default: all of the client's).
        #[arg(long)]
        scope: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Print the current policy.
    Get,
    /// Replace the policy; refused whole if invalid or its tests fail.
    Set { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Print the mesh CA certificate (PEM) for clients to trust.
    Export,
}

fn read_trim(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// Control's join string and CA, from flags or a state directory.
async fn connect(a: &AdminArgs) -> Result<(Join, String)> {
    let join_text = match (&a.control, &a.state) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => read_trim(&s.join("join"))?,
        (None, None) => {
            bail!("say where control is: --control <join string> or --state <control state dir>")
        }
    };
    let join = Join::parse(&join_text)?;
    let ca = match (&a.state, &join.ca_sha256) {
        (Some(s), _) if s.join("ca.crt").exists() && a.control.is_none() => {
            read_trim(&s.join("ca.crt"))?
        }
        (_, Some(_)) => gatehouse_client::fetch_pinned_ca(&join).await?,
        _ => bail!("the join string needs its #sha256: CA pin"),
    };
    if let Some(pin) = &join.ca_sha256
        && gatehouse_client::ca_fingerprint(&ca)? != *pin
    {
        bail!("the CA in the state directory does not match the join string's pin");
    }
    Ok((join, ca))
}

fn token(a: &AdminArgs) -> Result<String> {
    match (&a.token, &a.state) {
        (Some(t), _) => crate::secrets::secret_value("--token", t),
        (None, Some(s)) => read_trim(&s.join("admin.token")),
        (None, None) => Err(anyhow!("a token is needed: --token or --state")),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn when(t: i64) -> String {
    let d = gatehouse_control::clock::unix_now() - t;
    match d {
        d if d < 0 => format!("in {}", human(-d)),
        d => format!("{} ago", human(d)),
    }
}

fn human(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn run(a: AdminArgs) -> Result<()> {
    let (join, ca) = connect(&a).await?;
    if let AdminCommand::Oauth(OauthCmd::Token { secret, scope }) = &a.command {
        let t = AdminClient::oauth_token(&join, &ca, secret, scope.as_deref()).await?;
        if a.json {
            return print_json(&t);
        }
        println!("{}", t.access_token);
        return Ok(());
    }
    if let AdminCommand::Ca(CaCmd::Export) = &a.command {
        print!("{ca}");
        if !ca.ends_with('\n') {
            println!();
        }
        return Ok(());
    }
    let api = AdminClient::new(join, &ca, &token(&a)?)?;
    match a.command {
        AdminCommand::Users(c) => users(&api, c, a.json).await?,
        AdminCommand::Nodes(c) => nodes(&api, c, a.json).await?,
        AdminCommand::Keys(c) => keys(&api, c, a.json).await?,
        AdminCommand::Oauth(c) => oauth(&api, c, a.json).await?,
        AdminCommand::Policy(c) => policy(&api, c).await?,
        AdminCommand::Audit { limit } => {
            let entries = api.audit(limit).await?;
            if a.json {
                return print_json(&entries);
            }
            for e in entries.iter().rev() {
                println!(
                    "{:>6} {:<10} {:<18} {:<16} {:<18} {:<8} {}",
                    e.id,
                    when(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.outcome,
                    e.detail
                );
            }
        }
        AdminCommand::Token(TokenCmd::Rotate) => {
            let t = api.rotate_admin_token().await?;
            match &a.state {
                Some(s) => {
                    let file = s.join("admin.token");
                    gatehouse_control::ca::write_private(&file, &format!("{}\n", t.token))
                        .with_context(|| {
                            format!(
                                "the old token is revoked; the new one could not be written to {} and is: {}",
                                file.display(),
                                t.token
                            )
                        })?;
                    println!("admin token replaced; the new one is in {}", file.display());
                }
                None if a.json => return print_json(&t),
                None => println!("{}", t.token),
            }
        }
        // Answered above, before a token is needed.
        AdminCommand::Ca(CaCmd::Export) => {}
    }
    Ok(())
}

/// `gatehouse admin users …`
async fn users(api: &AdminClient, cmd: UsersCmd, json: bool) -> Result<()> {
    match cmd {
        UsersCmd::List => {
            let users = api.users().await?;
            if json {
                return print_json(&users);
            }
            for u in users {
                println!("{:<40} created {}", u.login, when(u.created_at));
            }
        }
        UsersCmd::Add { login } => {
            api.create_user(&login).await?;
            println!("user {login} created");
        }
        UsersCmd::Delete { login } => {
            api.delete_user(&login).await?;
            println!("user {login} deleted");
        }
    }
    Ok(())
}

/// `gatehouse admin nodes …`
async fn nodes(api: &AdminClient, cmd: NodesCmd, json: bool) -> Result<()> {
    match cmd {
        NodesCmd::List => {
            let nodes = api.nodes().await?;
            if json {
                return print_json(&nodes);
            }
            println!(
                "{:<24} {:<16} {:<28} {:<8} {:<28} OWNER",
                "NAME", "ID", "ADDRESSES", "ONLINE", "CLIENT"
            );
            for n in nodes {
                let addrs: Vec<String> = n.node.addresses.iter().map(ToString::to_string).collect();
                let owner = if n.node.tags.is_empty() {
                    n.node.user.clone().unwrap_or_default()
                } else {
                    n.node.tags.join(",")
                };
                let client = [n.client.as_str(), n.os.as_str(), n.version.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "{:<24} {:<16} {:<28} {:<8} {:<28} {}",
                    n.node.name,
                    n.node.id,
                    addrs.first().cloned().unwrap_or_default(),
                    if n.online { "yes" } else { "no" },
                    client,
                    owner
                );
            }
        }
        NodesCmd::Delete { node } => {
            api.delete_node(&node).await?;
            println!("node {node} deleted");
        }
        NodesCmd::Expire { node } => {
            api.expire_node(&node).await?;
            println!("node {node} expired");
        }
        NodesCmd::Pending => {
            let waiting = api.registrations().await?;
            if json {
                return print_json(&waiting);
            }
            println!("{:<26} {:<24} {:<24} WAITING", "CODE", "HOSTNAME", "CLIENT");
            for d in waiting {
                println!(
                    "{:<26} {:<24} {:<24} {}s",
                    d.code,
                    d.hostname,
                    format!("{} {}", d.os, d.version).trim(),
                    d.waiting_seconds
                );
            }
        }
        NodesCmd::Approve { code, user } => {
            let code = code.rsplit('/').next().unwrap_or(&code).to_string();
            let n = api.approve(&code, &user).await?;
            if json {
                return print_json(&n);
            }
            println!("node {} ({}) approved for {user}", n.node.name, n.node.id);
        }
    }
    Ok(())
}

/// `gatehouse admin keys …`
async fn keys(api: &AdminClient, cmd: KeysCmd, json: bool) -> Result<()> {
    match cmd {
        KeysCmd::List => {
            let keys = api.keys().await?;
            if json {
                return print_json(&keys);
            }
            println!(
                "{:<14} {:<24} {:<20} {:<6} {:<10} EXPIRES",
                "ID", "OWNER", "BY", "USES", "STATE"
            );
            for k in keys {
                let owner = if k.tags.is_empty() {
                    k.user.clone().unwrap_or_default()
                } else {
                    k.tags.join(",")
                };
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else if k.expires_at <= gatehouse_control::clock::unix_now() {
                    "expired"
                } else if !k.reusable && k.uses > 0 {
                    "used"
                } else {
                    "active"
                };
                println!(
                    "{:<14} {:<24} {:<20} {:<6} {:<10} {}",
                    k.id,
                    owner,
                    k.created_by,
                    k.uses,
                    state,
                    when(k.expires_at)
                );
            }
        }
        KeysCmd::Create {
            user,
            tags,
            reusable,
            ephemeral,
            expiry,
        } => {
            let k = api
                .create_key(&CreateKey {
                    user,
                    tags,
                    reusable,
                    ephemeral,
                    expiry_seconds: expiry,
                })
                .await?;
            if json {
                return print_json(&k);
            }
            println!("{}", k.key.unwrap_or_default());
        }
        KeysCmd::Revoke { id } => {
            api.revoke_key(&id).await?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}

/// `gatehouse admin oauth …`
async fn oauth(api: &AdminClient, cmd: OauthCmd, json: bool) -> Result<()> {
    match cmd {
        // Answered before a token is needed (`run`).
        OauthCmd::Token { .. } => {}
        OauthCmd::List => {
            let cs = api.oauth_clients().await?;
            if json {
                return print_json(&cs);
            }
            for c in cs {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<14} {:<8} scopes={} tags={} {}",
                    c.id,
                    state,
                    c.scopes.join(","),
                    c.tags.join(","),
                    c.description
                );
            }
        }
        OauthCmd::Create {
            scopes,
            tags,
            description,
        } => {
            let c = api
                .create_oauth(&CreateOAuthClient {
                    scopes,
                    tags,
                    description,
                })
                .await?;
            if json {
                return print_json(&c);
            }
            println!("client id      {}", c.id);
            println!(
                "client secret  {}  (shown once)",
                c.secret.unwrap_or_default()
            );
        }
        OauthCmd::Revoke { id } => {
            api.revoke_oauth(&id).await?;
            println!("OAuth client {id} revoked");
        }
    }
    Ok(())
}

/// `gatehouse admin policy …`
async fn policy(api: &AdminClient, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Get => print!("{}", api.policy().await?),
        PolicyCmd::Set { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v = api.set_policy(&text).await?;
            println!("policy version {v} in effect");
        }
    }
    Ok(())
}
