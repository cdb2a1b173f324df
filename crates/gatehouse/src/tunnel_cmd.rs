//! `gatehouse tunnel run|ingress|access`: the connector and its tools.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use gatehouse_ops::Backoff;
use gatehouse_ops::parse_duration;
use gatehouse_proto::Token;
use gatehouse_tunnel::ingress::Ingress;
use gatehouse_tunnel::ingress::url::Url;
use gatehouse_tunnel::{ConnectorConfig, Transport};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Run the connector: dial the edges and serve requests by the ingress rules.
    Run(RunArgs),
    /// Check ingress rules (cloudflared-compatible output).
    #[command(subcommand)]
    Ingress(IngressCommand),
    /// Client side of raw TCP services.
    #[command(subcommand)]
    Access(AccessCommand),
}

#[derive(Debug, Subcommand)]
pub enum IngressCommand {
    /// Validate the ingress rules of a config file: prints `OK` or the error.
    Validate {
        /// Config file with `ingress:` rules.
        #[arg(long, env = "GATEHOUSE_TUNNEL_CONFIG")]
        config: PathBuf,
    },
    /// Print which rule matches a URL: `Matched rule #N` (0-based).
    Rule {
        /// Config file with `ingress:` rules.
        #[arg(long, env = "GATEHOUSE_TUNNEL_CONFIG")]
        config: PathBuf,
        /// The URL, e.g. https://app.example.com/path.
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Listen locally and carry each TCP connection through the edge.
    Tcp(AccessTcpArgs),
}

#[derive(Debug, Args)]
pub struct AccessTcpArgs {
    /// Public hostname of the TCP service.
    #[arg(long)]
    hostname: String,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1:2222")]
    url: SocketAddr,
    /// Edge HTTPS address (default: the hostname resolved, port 443).
    #[arg(long)]
    edge: Option<String>,
    /// PEM file of CAs to verify the edge with (default: the system's).
    #[arg(long)]
    cacert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Auto,
    Quic,
    Tcp,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Tunnel token printed by `gatehouse edge tunnel create`, or `file:PATH`
    /// to read it from a file.
    #[arg(long, env = "GATEHOUSE_TUNNEL_TOKEN", hide_env_values = true)]
    token: String,
    /// Config file with cloudflared-style `ingress:` rules (reloaded on SIGHUP and on change).
    #[arg(long, env = "GATEHOUSE_TUNNEL_CONFIG")]
    config: PathBuf,
    /// Edge tunnel address host:port; repeat for several edges.
    #[arg(
        long = "edge",
        required = true,
        env = "GATEHOUSE_EDGE",
        value_delimiter = ','
    )]
    edges: Vec<String>,
    /// Name in the edge's tunnel certificate (default: the first edge's host).
    #[arg(long)]
    edge_name: Option<String>,
    /// PEM file of the CA that signed the edge's tunnel certificate (default: the system's roots).
    #[arg(long, env = "GATEHOUSE_EDGE_CA")]
    edge_ca: Option<PathBuf>,
    /// Transport: QUIC with TLS/TCP fallback, or one of them only.
    #[arg(long, value_enum, default_value = "auto")]
    transport: TransportArg,
    /// Number of connections, spread over the edge addresses.
    #[arg(long, default_value_t = 4)]
    ha_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    #[arg(long, default_value = "30s")]
    grace_period: String,
    /// Address for /ready and /metrics.
    #[arg(long, env = "GATEHOUSE_METRICS")]
    metrics: Option<SocketAddr>,
    /// Longest delay between reconnection attempts.
    #[arg(long, default_value = "2s")]
    max_retry_delay: String,
    /// Longest wait for a connection's handshake (then, in auto mode, TLS/TCP is tried).
    #[arg(long, default_value = "5s")]
    handshake_timeout: String,
}

pub fn run(cmd: TunnelCommand) -> ExitCode {
    let result = match cmd {
        TunnelCommand::Ingress(IngressCommand::Validate { config }) => validate(&config),
        TunnelCommand::Ingress(IngressCommand::Rule { config, url }) => rule(&config, &url),
        TunnelCommand::Run(args) => run_connector(args),
        TunnelCommand::Access(AccessCommand::Tcp(args)) => access_tcp(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_ingress(config: &PathBuf) -> Result<Result<Ingress, String>> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    Ok(Ingress::parse(&text).map_err(|e| gatehouse_ops::chain(&e)))
}

/// On stderr, so that stdout stays cloudflared's: the rules that validate
/// but that `gatehouse tunnel run` answers with an error.
fn warn_refused(ing: &Ingress) {
    for (i, r, why) in ing.refused() {
        let host = if r.hostname.is_empty() {
            String::new()
        } else {
            format!("hostname {}, ", r.hostname)
        };
        eprintln!(
            "warning: Rule #{} ({host}service {}) will not be served: {why}",
            i + 1,
            r.service
        );
    }
}

fn validate(config: &PathBuf) -> Result<ExitCode> {
    println!("Validating rules from {}", config.display());
    match read_ingress(config)? {
        Ok(ing) => {
            println!("OK");
            warn_refused(&ing);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn rule(config: &PathBuf, url: &str) -> Result<ExitCode> {
    // Read as cloudflared reads it: Go's URL syntax, so a host name may be
    // Unicode (`https://môô.example.com`), matched as written and, through
    // the rules' punycode forms, as its ASCII spelling.
    let parsed = Url::parse(url).with_context(|| format!("{url} is not a valid URL"))?;
    if parsed.hostname().is_empty() && parsed.scheme.is_empty() {
        bail!("{url} doesn't have a hostname, consider adding a scheme");
    }
    println!("Using rules from {}", config.display());
    let ing = match read_ingress(config)? {
        Ok(i) => i,
        Err(e) => {
            println!("Validation failed: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let path = if parsed.opaque { "" } else { &parsed.raw_path };
    let (idx, r) = ing.find(parsed.hostname(), path);
    println!("Matched rule #{idx}");
    if !r.hostname.is_empty() {
        println!("\thostname: {}", r.hostname);
    }
    if let Some(p) = &r.path {
        println!("\tpath: {}", p.as_str());
    }
    println!("\tservice: {}", r.service);
    if let Some(why) = &r.refusal {
        eprintln!("warning: gatehouse tunnel run will not serve this rule: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let v: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .collect();
    if v.is_empty() {
        bail!("{addr} resolves to no address");
    }
    Ok(v)
}

fn run_connector(a: RunArgs) -> Result<ExitCode> {
    crate::logging::init();
    let token = crate::secrets::secret_value("--token", &a.token)?;
    let token = Token::parse(&token).context("--token")?;
    let mut edges = Vec::new();
    for e in &a.edges {
        edges.extend(resolve(e)?);
    }
    let edge_name = match a.edge_name {
        Some(n) => n,
        None => a.edges[0]
            .rsplit_once(':')
            .map_or(a.edges[0].as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let cfg = ConnectorConfig {
        token,
        edges,
        edge_server_name: edge_name,
        edge_ca: a.edge_ca,
        transport: match a.transport {
            TransportArg::Auto => Transport::Auto,
            TransportArg::Quic => Transport::Quic,
            TransportArg::Tcp => Transport::Tcp,
        },
        ha_connections: a.ha_connections,
        grace_period: parse_duration(&a.grace_period).context("--grace-period")?,
        config_path: a.config,
        metrics_addr: a.metrics,
        backoff: Backoff {
            max: parse_duration(&a.max_retry_delay).context("--max-retry-delay")?,
            ..Backoff::default()
        },
        handshake_timeout: parse_duration(&a.handshake_timeout).context("--handshake-timeout")?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(gatehouse_tunnel::run(
        cfg,
        crate::logging::shutdown_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn access_tcp(a: AccessTcpArgs) -> Result<ExitCode> {
    crate::logging::init();
    let edge = match &a.edge {
        Some(e) => resolve(e)?[0],
        None => resolve(&format!("{}:443", a.hostname))?[0],
    };
    let roots = match &a.cacert {
        Some(p) => gatehouse_ops::tls::load_roots(p)?,
        None => gatehouse_ops::tls::system_roots(),
    };
    let cfg = gatehouse_tunnel::access::AccessConfig {
        hostname: a.hostname,
        edge,
        listen: a.url,
        roots,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        tokio::select! {
            r = gatehouse_tunnel::access::serve(cfg) => r.map_err(anyhow::Error::from),
            _ = crate::logging::shutdown_signal() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
