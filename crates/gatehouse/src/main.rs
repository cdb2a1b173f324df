//! The `gatehouse` binary: command-line parsing and wiring of the library
//! crates. No business logic lives here.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]
// Helpers shared by several commands go unused in builds that leave those out.
#![cfg_attr(not(feature = "full"), allow(dead_code))]

#[cfg(feature = "control")]
mod admin_cmd;
#[cfg(feature = "control")]
mod control_cmd;
#[cfg(feature = "operator")]
mod doctor_cmd;
#[cfg(feature = "edge")]
mod edge_cmd;
#[cfg(any(feature = "operator", feature = "tools"))]
mod inputs;
#[cfg(any(feature = "edge", feature = "control"))]
mod limit_flags;
#[cfg(feature = "tools")]
mod lint_cmd;
mod logging;
#[cfg(feature = "node")]
mod node_cmd;
#[cfg(feature = "proxy")]
mod operator_cmd;
#[cfg(feature = "tools")]
mod policy_cmd;
#[cfg(feature = "tools")]
mod reach_cmd;
#[cfg(feature = "relay")]
mod relay_cmd;
#[cfg(feature = "tools")]
mod render_cmd;
mod secrets;
#[cfg(feature = "tools")]
mod stack_input;
#[cfg(feature = "connector")]
mod tunnel_cmd;
#[cfg(feature = "up")]
mod up_cmd;

#[cfg(not(any(
    feature = "node",
    feature = "connector",
    feature = "edge",
    feature = "control",
    feature = "operator",
    feature = "proxy",
    feature = "relay",
    feature = "tools",
    feature = "up"
)))]
compile_error!(
    "build at least one command: features node, proxy, connector, edge, control, operator, relay, tools or up"
);

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Gatehouse: a self-hosted, zero-trust access layer for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[cfg(feature = "tools")]
    /// Check, query and compile an access policy (Tailscale policy-file syntax).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    #[cfg(feature = "control")]
    /// Run the coordination server of the private tier.
    Control(Box<control_cmd::ControlArgs>),
    #[cfg(feature = "control")]
    /// Administer a running control server (users, nodes, keys, OAuth, policy, audit, CA).
    Admin(admin_cmd::AdminArgs),
    #[cfg(feature = "relay")]
    /// Run a standalone relay (DERP over HTTPS, STUN) for the network's nodes.
    Relay(relay_cmd::RelayArgs),
    #[cfg(feature = "node")]
    /// Run a mesh node (serve, SOCKS5, DNS) and talk to a running one.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    #[cfg(feature = "edge")]
    /// Run the public edge, or manage its tunnels (`gatehouse edge tunnel create NAME`).
    Edge(edge_cmd::EdgeArgs),
    #[cfg(feature = "connector")]
    /// The outbound-only connector and its tools (ingress rules, TCP access).
    #[command(subcommand)]
    Tunnel(tunnel_cmd::TunnelCommand),
    #[cfg(feature = "tools")]
    /// Report the known traps in Kubernetes manifests (rule id, file:line, why, fix).
    Lint(lint_cmd::LintArgs),
    #[cfg(feature = "tools")]
    /// Who can reach what, from Kubernetes manifests and network policies.
    #[command(subcommand)]
    Reach(reach_cmd::ReachCommand),
    #[cfg(feature = "tools")]
    /// Generate Ingresses, network policies, connector rules and ACLs from an exposure catalog.
    Render(render_cmd::RenderArgs),
    #[cfg(feature = "proxy")]
    /// The Kubernetes operator: Ingress of class gatehouse to proxy, public route and network policy.
    #[command(subcommand)]
    Operator(operator_cmd::OperatorCommand),
    #[cfg(feature = "operator")]
    /// Report the seed's traps that apply to a cluster (manifests, or --cluster).
    Doctor(doctor_cmd::DoctorArgs),
    #[cfg(feature = "up")]
    /// Run a whole network on this machine from gatehouse.yaml (default: the built-in demo).
    Up(up_cmd::UpArgs),
    #[cfg(feature = "up")]
    /// Services of a running `gatehouse up` (or of a control server): URLs, certificates, proxies, tunnel, who may reach them.
    Status(up_cmd::StatusArgs),
}

/// A closed standard output (`gatehouse admin keys list | head -3`) ends
/// the program quietly and successfully, as it ends other command-line
/// tools, instead of with a panic message.
fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        let broken_pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
        if payload.starts_with("failed printing to stdout")
            && (payload.contains(&broken_pipe) || payload.contains("os error 32"))
        {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "tools")]
        Command::Policy(cmd) => policy_cmd::run(cmd),
        #[cfg(feature = "control")]
        Command::Control(a) => run_async(control_cmd::run(*a)),
        #[cfg(feature = "control")]
        Command::Admin(a) => run_async(admin_cmd::run(a)),
        #[cfg(feature = "relay")]
        Command::Relay(a) => run_async(relay_cmd::run(a)),
        #[cfg(feature = "node")]
        Command::Node(cmd) => run_async(node_cmd::run(cmd)),
        #[cfg(feature = "edge")]
        Command::Edge(args) => edge_cmd::run(args),
        #[cfg(feature = "connector")]
        Command::Tunnel(cmd) => tunnel_cmd::run(cmd),
        #[cfg(feature = "tools")]
        Command::Lint(args) => lint_cmd::run(args),
        #[cfg(feature = "tools")]
        Command::Reach(cmd) => reach_cmd::run(cmd),
        #[cfg(feature = "tools")]
        Command::Render(args) => render_cmd::run(args),
        #[cfg(feature = "proxy")]
        Command::Operator(cmd) => operator_cmd::run(cmd),
        #[cfg(feature = "operator")]
        Command::Doctor(args) => doctor_cmd::run(args),
        // Many components in one process: their warnings only, unless RUST_LOG says otherwise.
        #[cfg(feature = "up")]
        Command::Up(a) => run_async_logged("warn,gatehouse_up=info", up_cmd::up(a)),
        #[cfg(feature = "up")]
        Command::Status(a) => match run_async_code(up_cmd::status(a)) {
            Ok(code) => code,
            Err(code) => code,
        },
    }
}

/// Runs an async command that chooses its exit code; errors exit 2.
#[cfg(feature = "up")]
fn run_async_code(
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> Result<ExitCode, ExitCode> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("error: starting the runtime: {e}");
        ExitCode::from(2)
    })?;
    rt.block_on(fut).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

/// Runs an async command on a multi-threaded runtime with logging; errors
/// exit 1.
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_async_logged("info", fut)
}

/// [`run_async`] with another default log level.
fn run_async_logged(
    default_log: &str,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    logging::init_default(default_log);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
