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
    /// Connection limits of the public and route API listeners; each flag
    /// replaces the config file's `limits:` value (docs/public-tier.md).
    #[command(flatten)]
    limits: crate::limit_flags::LimitFlags,
    #[command(subcommand)]
    command: Option<EdgeCommand>,
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
                    gatehouse_ops::parse_duration(&d)
                        .context("--expires-in")?
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

fn serve(config: Option<PathBuf>, limits: crate::limit_flags::LimitFlags) -> Result<()> {
    let Some(path) = config else {
        bail!("give --config edge.yaml (or a subcommand)");
    };
    crate::logging::init();
    let mut cfg = EdgeConfig::load(&path).with_context(|| format!("loading {}", path.display()))?;
    cfg.limits = limits.over(cfg.limits);
    cfg.limits()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(gatehouse_edge::run(
        cfg,
        Some(path),
        crate::logging::shutdown_signal(),
    ))?;
    Ok(())
}
