//! The `gatehouse` binary: command-line parsing and wiring of the library
//! crates. No business logic lives here.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin_cmd;
mod control_cmd;
mod doctor_cmd;
mod edge_cmd;
mod inputs;
mod lint_cmd;
mod logging;
mod node_cmd;
mod operator_cmd;
mod policy_cmd;
mod reach_cmd;
mod render_cmd;
mod stack_input;
mod tunnel_cmd;
mod up_cmd;

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
    /// Check, query and compile an access policy (Tailscale policy-file syntax).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Run the coordination server of the private tier.
    Control(control_cmd::ControlArgs),
    /// Administer a running control server (users, nodes, keys, OAuth, policy, audit, CA).
    Admin(admin_cmd::AdminArgs),
    /// Run a mesh node (serve, SOCKS5, DNS) and talk to a running one.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// Run the public edge, or manage its tunnels (`gatehouse edge tunnel create NAME`).
    Edge(edge_cmd::EdgeArgs),
    /// The outbound-only connector and its tools (ingress rules, TCP access).
    #[command(subcommand)]
    Tunnel(tunnel_cmd::TunnelCommand),
    /// Report the known traps in Kubernetes manifests (rule id, file:line, why, fix).
    Lint(lint_cmd::LintArgs),
    /// Who can reach what, from Kubernetes manifests and network policies.
    #[command(subcommand)]
    Reach(reach_cmd::ReachCommand),
    /// Generate Ingresses, network policies, connector rules and ACLs from an exposure catalog.
    Render(render_cmd::RenderArgs),
    /// The Kubernetes operator: Ingress of class gatehouse to proxy, public route and network policy.
    #[command(subcommand)]
    Operator(operator_cmd::OperatorCommand),
    /// Report the seed's traps that apply to a cluster (manifests, or --cluster).
    Doctor(doctor_cmd::DoctorArgs),
    /// Run a whole network on this machine from gatehouse.yaml (default: the built-in demo).
    Up(up_cmd::UpArgs),
    /// Services of a running `gatehouse up` (or of a control server): URLs, certificates, proxies, tunnel, who may reach them.
    Status(up_cmd::StatusArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Control(a) => run_async(control_cmd::run(a)),
        Command::Admin(a) => run_async(admin_cmd::run(a)),
        Command::Node(cmd) => run_async(node_cmd::run(cmd)),
        Command::Edge(args) => edge_cmd::run(args),
        Command::Tunnel(cmd) => tunnel_cmd::run(cmd),
        Command::Lint(args) => lint_cmd::run(args),
        Command::Reach(cmd) => reach_cmd::run(cmd),
        Command::Render(args) => render_cmd::run(args),
        Command::Operator(cmd) => operator_cmd::run(cmd),
        Command::Doctor(args) => doctor_cmd::run(args),
        // Many components in one process: their warnings only, unless RUST_LOG says otherwise.
        Command::Up(a) => run_async_logged("warn,gatehouse_up=info", up_cmd::up(a)),
        Command::Status(a) => match run_async_code(up_cmd::status(a)) {
            Ok(code) => code,
            Err(code) => code,
        },
    }
}

/// Runs an async command that chooses its exit code; errors exit 2.
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
