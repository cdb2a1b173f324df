//! The `gatehouse` binary: command-line parsing and wiring of the library
//! crates. No business logic lives here.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod inputs;
mod lint_cmd;
mod policy_cmd;
mod reach_cmd;
mod render_cmd;

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
    /// Report the known traps in Kubernetes manifests (rule id, file:line, why, fix).
    Lint(lint_cmd::LintArgs),
    /// Who can reach what, from Kubernetes manifests and network policies.
    #[command(subcommand)]
    Reach(reach_cmd::ReachCommand),
    /// Generate Ingresses, network policies, connector rules and ACLs from an exposure catalog.
    Render(render_cmd::RenderArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Lint(args) => lint_cmd::run(args),
        Command::Reach(cmd) => reach_cmd::run(cmd),
        Command::Render(args) => render_cmd::run(args),
    }
}
