//! The `gatehouse` binary: command-line parsing and wiring of the library
//! crates. No business logic lives here.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod edge_cmd;
mod logging;
mod policy_cmd;
mod tunnel_cmd;

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
    /// Run the public edge, or manage its tunnels (`gatehouse edge tunnel create NAME`).
    Edge(edge_cmd::EdgeArgs),
    /// The outbound-only connector and its tools (ingress rules, TCP access).
    #[command(subcommand)]
    Tunnel(tunnel_cmd::TunnelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Edge(args) => edge_cmd::run(args),
        Command::Tunnel(cmd) => tunnel_cmd::run(cmd),
    }
}
