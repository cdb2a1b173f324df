//! `gatehouse node`: run a mesh node (`up`) and talk to a running one over
//! its local socket (`status`, `ping`, `down`).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use gatehouse_node::api::{self, ApiRequest, ApiResponse, NodeStatus};
use gatehouse_node::limits::Limits;
use gatehouse_node::serve::route::{Route, parse_route};
use gatehouse_node::{NodeConfig, PlaneKind};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The default limits of a node's `serve` listeners.
const SERVE_DEFAULTS: Limits = Limits::DEFAULT;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Join the mesh (first time: register with --control, and --authkey or an approval) and run until stopped.
    Up(Box<UpArgs>),
    /// Show the running node: its name, addresses, control connection, certificate and peers.
    Status {
        #[command(flatten)]
        local: LocalArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Round trip to a peer through the data plane (name, DNS name or mesh address).
    Ping {
        #[command(flatten)]
        local: LocalArgs,
        /// The peer.
        peer: String,
        /// How many pings.
        #[arg(short = 'c', long, default_value_t = 1)]
        count: u32,
    },
    /// Stop the running node.
    Down {
        #[command(flatten)]
        local: LocalArgs,
    },
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The node's state directory.
    #[arg(long, env = "GATEHOUSE_NODE_STATE", default_value = "gatehouse-node")]
    state: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Control's join string (URL#sha256:<CA hash>); needed to register.
    #[arg(long, env = "GATEHOUSE_CONTROL")]
    control: Option<String>,
    /// Pre-auth key, or `file:PATH` to read it from a file (keeps it out of
    /// the process list). Without one, an unregistered node prints the URL
    /// where it is approved (by signing in, or by an administrator) and
    /// waits. A registered node ignores it.
    #[arg(long, env = "GATEHOUSE_AUTHKEY", hide_env_values = true)]
    authkey: Option<String>,
    /// Host name to ask for (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Serve the host name together with other replicas registered for it
    /// (tagged auth keys only): the node gets a name of its own, and the
    /// host name resolves to every replica.
    #[arg(long)]
    shared_name: bool,
    /// State directory: keys and certificates (mode 0600) and the local socket.
    #[arg(long, env = "GATEHOUSE_NODE_STATE", default_value = "gatehouse-node")]
    state: PathBuf,
    /// Serve HTTPS on the node's name: [exact:]PATH=BACKEND, BACKEND = http://host:port,
    /// h2c://host:port or a local port (repeatable; longest prefix wins, exact first).
    #[arg(long = "serve", value_parser = parse_route)]
    serve: Vec<Route>,
    /// With --serve: redirect HTTP on port 80 to HTTPS.
    #[arg(long)]
    redirect_http: bool,
    /// With --serve: connections open at once on each listener; more are closed at once
    /// (default 4096).
    #[arg(long, env = "GATEHOUSE_SERVE_MAX_CONNECTIONS")]
    serve_max_connections: Option<usize>,
    /// With --serve: time a client may take for its TLS handshake (default 10s).
    #[arg(long, env = "GATEHOUSE_SERVE_HANDSHAKE_TIMEOUT")]
    serve_handshake_timeout: Option<String>,
    /// With --serve: time a client may take to send a whole request head (default 30s).
    #[arg(long, env = "GATEHOUSE_SERVE_HEADER_READ_TIMEOUT")]
    serve_header_read_timeout: Option<String>,
    /// With --serve: time a connection may stay open with no request in flight (default 60s).
    #[arg(long, env = "GATEHOUSE_SERVE_IDLE_TIMEOUT")]
    serve_idle_timeout: Option<String>,
    /// Local SOCKS5 and HTTP CONNECT proxy into the mesh, e.g. 127.0.0.1:1080.
    #[arg(long)]
    socks5: Option<SocketAddr>,
    /// Local resolver for mesh names (UDP and TCP), e.g. 127.0.0.1:5353.
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// Prometheus metrics, /healthz and /readyz, e.g. 127.0.0.1:9100.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Local address of the data plane, announced to control as the node's endpoint(s):
    /// the mesh's UDP socket (default 0.0.0.0:0: every interface, any port) or the
    /// loopback plane's TCP listener (default 127.0.0.1:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The data plane: `mesh` (WireGuard, user-space TCP/IP, no privileges) or
    /// `loopback` (kernel TCP with mutual TLS between nodes on one machine).
    #[arg(long, value_enum, default_value_t = DataPlane::Mesh)]
    data_plane: DataPlane,
    /// Root only: carry the mesh through a TUN device (default name gatehouse0) and the
    /// kernel's TCP/IP instead of the user-space stack; ordinary programs reach mesh
    /// addresses directly.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "gatehouse0")]
    tun: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataPlane {
    /// WireGuard mesh.
    Mesh,
    /// Kernel TCP + mutual TLS, one machine.
    Loopback,
}

pub async fn run(cmd: NodeCommand) -> Result<()> {
    match cmd {
        NodeCommand::Up(a) => up(*a).await,
        NodeCommand::Status { local, json } => status(local, json).await,
        NodeCommand::Ping { local, peer, count } => ping(local, peer, count).await,
        NodeCommand::Down { local } => down(local).await,
    }
}

fn system_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

async fn up(a: UpArgs) -> Result<()> {
    let mut cfg = NodeConfig::new(a.state.clone(), &a.hostname.unwrap_or_else(system_hostname));
    cfg.control = a.control;
    cfg.authkey = a
        .authkey
        .map(|k| crate::secrets::secret_value("--authkey", &k))
        .transpose()?;
    cfg.shared_name = a.shared_name;
    cfg.routes = a.serve;
    cfg.redirect_http = a.redirect_http;
    cfg.serve_limits = gatehouse_limits::LimitsConfig {
        max_connections: a.serve_max_connections,
        handshake_timeout: a.serve_handshake_timeout,
        header_read_timeout: a.serve_header_read_timeout,
        idle_timeout: a.serve_idle_timeout,
        ..Default::default()
    }
    .resolve(&SERVE_DEFAULTS)
    .context("serve limits")?;
    cfg.socks5 = a.socks5;
    cfg.dns = a.dns;
    cfg.metrics = a.metrics;
    cfg.plane = match (a.data_plane, a.tun) {
        (DataPlane::Mesh, None) => PlaneKind::Mesh,
        (DataPlane::Mesh, Some(name)) => PlaneKind::MeshTun(name),
        (DataPlane::Loopback, None) => PlaneKind::Loopback,
        (DataPlane::Loopback, Some(_)) => bail!("--tun needs the mesh data plane"),
    };
    cfg.listen = a.listen.unwrap_or_else(|| match cfg.plane {
        PlaneKind::Loopback => SocketAddr::from(([127, 0, 0, 1], 0)),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    });
    // Control refusing the node's key (expired, or the node deleted) ends
    // one run: the node registers again, as at its first start, and runs
    // anew, in this process. A run that never got ready waits before the
    // next registration; registering again also waits out control being
    // unreachable (the first start fails at once instead).
    let mut again = gatehouse_ops::Retries::new(REREGISTER_BASE, REREGISTER_CAP);
    let mut registering_again = false;
    loop {
        let started = tokio::select! {
            r = gatehouse_node::start(cfg.clone()) => r,
            () = crate::logging::shutdown_signal() => return Ok(()),
        };
        let node = match started {
            Ok(node) => node,
            Err(e) if registering_again && e.is_transient() => {
                let delay = again.next_delay();
                tracing::warn!(error = %gatehouse_ops::chain(&e), retry_in_ms = delay.as_millis(), "registering again: control is not reachable");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = crate::logging::shutdown_signal() => return Ok(()),
                }
                continue;
            }
            Err(e) => return Err(e).context("starting the node"),
        };
        banner(&node, &a.state);
        let (end, was_ready) = run_node(&node).await;
        node.shutdown().await;
        let refused = match end {
            RunEnd::Stopped => {
                if was_ready {
                    println!("gatehouse node: stopping");
                }
                return Ok(());
            }
            RunEnd::Refused(r) => r,
        };
        if let Some(e) = &refused.unmarked {
            bail!(
                "control no longer accepts this node's key ({}), and its saved identity could not be marked expired ({e}): remove it from {} and start the node again to register anew",
                refused.reason,
                a.state.display()
            );
        }
        println!("gatehouse node: control no longer accepts this node's key; registering again");
        registering_again = true;
        if was_ready {
            again.reset();
        } else {
            tokio::select! {
                () = tokio::time::sleep(again.next_delay()) => {}
                () = crate::logging::shutdown_signal() => return Ok(()),
            }
        }
    }
}

/// First wait before registering again after a run that never got ready
/// (control refused the new identity too) or while control is not
/// reachable; doubles up to the cap.
const REREGISTER_BASE: std::time::Duration = std::time::Duration::from_secs(1);
const REREGISTER_CAP: std::time::Duration = std::time::Duration::from_secs(60);

/// How one run of a node ended.
enum RunEnd {
    /// Stopped: a signal or `gatehouse node down`.
    Stopped,
    /// Control refused the node's identity.
    Refused(gatehouse_node::Refused),
}

/// Waits for the node to get ready (printing `ready`), then for its end;
/// also says whether it got ready.
async fn run_node(node: &gatehouse_node::RunningNode) -> (RunEnd, bool) {
    let mut ready = false;
    loop {
        tokio::select! {
            r = node.ready(), if !ready => {
                if !r {
                    return (RunEnd::Stopped, ready);
                }
                println!("ready");
                ready = true;
            }
            r = node.refused() => return (RunEnd::Refused(r), ready),
            () = node.stopped() => return (RunEnd::Stopped, ready),
            () = crate::logging::shutdown_signal() => return (RunEnd::Stopped, ready),
        }
    }
}

/// What `node up` prints once the node runs: its name and addresses, and
/// each listener.
fn banner(node: &gatehouse_node::RunningNode, state: &std::path::Path) {
    let id = &node.identity;
    let addrs: Vec<String> = id.addresses.iter().map(ToString::to_string).collect();
    println!("gatehouse node: {} ({})", id.fqdn, addrs.join(", "));
    for r in &node.status().serve {
        println!("  serve        https://{}  {r}", id.fqdn);
    }
    if let Some(s) = node.bound.socks5 {
        println!("  socks5       {s} (SOCKS5 and HTTP CONNECT)");
    }
    if let Some(d) = node.bound.dns {
        println!("  dns          {d}");
    }
    if let Some(m) = node.bound.metrics {
        println!("  metrics      http://{m}/metrics");
    }
    println!("  data plane   {}", plane_line(&node.status().plane));
    println!("  state        {}", state.display());
}

async fn call(local: &LocalArgs, req: ApiRequest) -> Result<ApiResponse> {
    Ok(api::call(&local.state, &req).await?)
}

fn human(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let text = if s >= 86_400 {
        format!("{}d{}h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{}h{}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    };
    if secs < 0 {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

fn owner(user: &Option<String>, tags: &[String]) -> String {
    match user {
        Some(u) => u.clone(),
        None if !tags.is_empty() => tags.join(","),
        None => "-".into(),
    }
}

/// `mesh on 0.0.0.0:41641, key AbC…=`, `mesh (TUN gatehouse0) on …`,
/// `loopback on 127.0.0.1:40000`.
fn plane_line(p: &api::PlaneSummary) -> String {
    let listen: Vec<String> = p.listen.iter().map(ToString::to_string).collect();
    let mut s = p.kind.clone();
    if let Some(t) = &p.tun {
        s.push_str(&format!(" (TUN {t})"));
    }
    s.push_str(&format!(" on {}", listen.join(", ")));
    if let Some(k) = &p.public_key {
        s.push_str(&format!(", key {k}"));
    }
    if !p.reflexive.is_empty() {
        let r: Vec<String> = p.reflexive.iter().map(ToString::to_string).collect();
        s.push_str(&format!(", public {}", r.join(", ")));
    }
    if let Some(h) = &p.home_relay {
        let up = p.relays.get(h).is_some_and(|r| r.connected);
        s.push_str(&format!(
            ", home relay {h} ({})",
            if up { "connected" } else { "connecting" }
        ));
    }
    s
}

fn print_status(st: &NodeStatus) {
    let addrs: Vec<String> = st.addresses.iter().map(ToString::to_string).collect();
    println!(
        "{}  {}  {}  {}",
        st.fqdn,
        addrs.join(", "),
        owner(&st.user, &st.tags),
        if st.ready { "ready" } else { "not ready" }
    );
    let c = &st.control;
    let conn = if c.connected {
        format!("connected ({} map messages)", c.map_messages)
    } else {
        format!(
            "disconnected: {}",
            c.last_error.as_deref().unwrap_or("not yet connected")
        )
    };
    println!("control       {}  {conn}", c.url);
    if let Some(cert) = &st.certificate {
        println!(
            "certificate   expires {}, renews {} ({} renewals)",
            human(cert.not_after - now()),
            human(cert.renew_at - now()),
            cert.renewals
        );
    }
    println!(
        "data plane    {} ({} refused)",
        plane_line(&st.plane),
        st.plane.refused
    );
    for r in &st.serve {
        println!("serve         {r}");
    }
    if let Some(s) = st.socks5 {
        println!("socks5        {s}");
    }
    if let Some(d) = st.dns {
        println!("dns           {d}");
    }
    if st.peers.is_empty() {
        println!("no peers");
        return;
    }
    println!();
    let rows: Vec<[String; 7]> = st
        .peers
        .iter()
        .map(|p| {
            let path = p.path.clone().unwrap_or_default();
            [
                p.name.clone(),
                p.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                owner(&p.user, &p.tags),
                path_cell(&path),
                path.connections_in.to_string(),
                path.connections_out.to_string(),
                path.refused_in.to_string(),
            ]
        })
        .collect();
    let head = ["PEER", "ADDRESSES", "OWNER", "PATH", "IN", "OUT", "REFUSED"];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// A peer's path as `gatehouse node status` shows it: how data goes now
/// and its latency, whether the peer answers and since when (`-` before
/// the first handshake).
fn path_cell(p: &gatehouse_node::plane::PeerPath) -> String {
    let Some(via) = p
        .via
        .clone()
        .or_else(|| p.endpoint.map(|e| format!("direct {e}")))
    else {
        return "-".into();
    };
    let mut cell = via;
    if let Some(us) = p.latency_us {
        cell.push_str(&format!(" {:.1}ms", us as f64 / 1000.0));
    }
    if p.reachable {
        if let Some(since) = p.reachable_since {
            cell.push_str(&format!(", up {}", human(now() - since)));
        }
    } else {
        cell.push_str(", unreachable");
    }
    cell
}

async fn status(local: LocalArgs, json: bool) -> Result<()> {
    match call(&local, ApiRequest::Status).await? {
        ApiResponse::Status(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(())
        }
        ApiResponse::Error { error } => bail!("{error}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn ping(local: LocalArgs, peer: String, count: u32) -> Result<()> {
    for _ in 0..count.max(1) {
        match call(&local, ApiRequest::Ping { peer: peer.clone() }).await? {
            ApiResponse::Pong {
                peer,
                addr,
                rtt_ms,
                via,
            } => match via {
                Some(via) => println!("pong from {peer} ({addr}) via {via} in {rtt_ms:.2} ms"),
                None => println!("pong from {peer} ({addr}) in {rtt_ms:.2} ms"),
            },
            ApiResponse::Error { error } => bail!("{error}"),
            other => bail!("unexpected answer: {other:?}"),
        }
    }
    Ok(())
}

async fn down(local: LocalArgs) -> Result<()> {
    match call(&local, ApiRequest::Down).await? {
        ApiResponse::Ok => {
            println!("stopping the node with state {}", local.state.display());
            Ok(())
        }
        ApiResponse::Error { error } => bail!("{error}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}
