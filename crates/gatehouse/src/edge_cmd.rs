//! `gatehouse edge [--config F]` and `gatehouse edge tunnel create|revoke|list`.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gatehouse_edge::config::EdgeConfig;
use gatehouse_edge::tokens::TokenStore;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EdgeArgs {
    /// Edge configuration (YAML); re-read on SIGHUP.
    #[arg(long, env = "GATEHOUSE_EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitFlags,
    #[command(subcommand)]
    command: Option<EdgeCommand>,
}

/// Connection limits of the public and route API listeners; each one
/// replaces the config file's `limits:` value (docs/public-tier.md).
#[derive(Debug, Args)]
struct LimitFlags {
    /// Connections open at once per listener; more are closed at once.
    #[arg(long, env = "GATEHOUSE_EDGE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time for a TLS handshake (e.g. 10s).
    #[arg(long, env = "GATEHOUSE_EDGE_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<String>,
    /// Time for a whole request head (e.g. 30s).
    #[arg(long, env = "GATEHOUSE_EDGE_HEADER_READ_TIMEOUT")]
    header_read_timeout: Option<String>,
    /// Time a connection may stay with no request in flight (e.g. 60s).
    #[arg(long, env = "GATEHOUSE_EDGE_IDLE_TIMEOUT")]
    idle_timeout: Option<String>,
}

impl LimitFlags {
    fn apply(self, cfg: &mut EdgeConfig) -> Result<()> {
        let l = &mut cfg.limits;
        if let Some(n) = self.max_connections {
            l.max_connections = Some(n);
        }
        for (flag, slot) in [
            (self.handshake_timeout, &mut l.handshake_timeout),
            (self.header_read_timeout, &mut l.header_read_timeout),
            (self.idle_timeout, &mut l.idle_timeout),
        ] {
            if flag.is_some() {
                *slot = flag;
            }
        }
        cfg.limits.limits()?;
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum EdgeCommand {
    /// Manage tunnels and their tokens.
    #[command(subcommand)]
    Tunnel(TunnelAdmin),
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// The tunnel store file (default: `tokens:` of --config).
    #[arg(long, env = "GATEHOUSE_TUNNEL_STORE")]
    tokens: Option<PathBuf>,
    /// Edge configuration naming the tunnel store.
    #[arg(long, env = "GATEHOUSE_EDGE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TunnelAdmin {
    /// Create a tunnel and print its token (shown once; only a hash is stored).
    Create {
        /// Tunnel name (a-z, 0-9, '-').
        name: String,
        /// Lifetime of the token (e.g. 2160h); without it the token lives until revoked.
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a tunnel: its token is refused and live connections close.
    Revoke {
        /// Tunnel name.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tunnels.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl StoreArgs {
    fn path(&self) -> Result<PathBuf> {
        if let Some(t) = &self.tokens {
            return Ok(t.clone());
        }
        let Some(c) = &self.config else {
            bail!("give --tokens FILE or --config edge.yaml");
        };
        Ok(EdgeConfig::load(c)?.tokens)
    }
}

pub fn run(args: EdgeArgs) -> ExitCode {
    let result = match args.command {
        Some(EdgeCommand::Tunnel(t)) => admin(t),
        None => serve(args.config, args.limits),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn admin(cmd: TunnelAdmin) -> Result<()> {
    match cmd {
        TunnelAdmin::Create {
            name,
            expires_in,
            store,
        } => {
            let path = store.path()?;
            let mut s = TokenStore::load(&path)?;
            let lifetime = match expires_in {
                Some(d) => Some(
                    gatehouse_tunnel::ingress::parse_duration(&d)
                        .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?
                        .as_secs(),
                ),
                None => None,
            };
            let now = gatehouse_edge::tokens::now_unix();
            let token = s.create(&name, rand::random(), rand::random(), now, lifetime)?;
            s.save(&path)?;
            println!("{}", token.encode());
        }
        TunnelAdmin::Revoke { name, store } => {
            let path = store.path()?;
            let mut s = TokenStore::load(&path)?;
            s.revoke(&name)?;
            s.save(&path)?;
            println!("revoked {name}");
        }
        TunnelAdmin::List { store } => {
            let s = TokenStore::load(&store.path()?)?;
            let now = gatehouse_edge::tokens::now_unix();
            for t in &s.tunnels {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_unix.is_some_and(|e| now >= e) {
                    "expired"
                } else {
                    "active"
                };
                let expires = t.expires_unix.map_or("-".to_owned(), |e| e.to_string());
                println!("{}\t{}\t{}\texpires={}", t.name, t.id, state, expires);
            }
        }
    }
    Ok(())
}

fn serve(config: Option<PathBuf>, limits: LimitFlags) -> Result<()> {
    let Some(path) = config else {
        bail!("give --config edge.yaml (or a subcommand)");
    };
    crate::logging::init();
    let mut cfg = EdgeConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
    limits.apply(&mut cfg)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(gatehouse_edge::run(
        cfg,
        Some(path),
        crate::logging::shutdown_signal(),
    ))?;
    Ok(())
}
