//! `gatehouse reach query|list`.
//!
//! Exit codes: `query` 0 allow, 1 deny; `list` 0; 2 invalid input
//! (a malformed manifest, an unknown endpoint, bad arguments).

use crate::inputs::{borrowed, read_inputs};
use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use gatehouse_reach::{Analysis, Endpoint, Proto, Side, Verdict};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ReachCommand {
    /// May FROM open PORT to TO? Prints `allow` or `deny` (exit 0 / 1).
    Query(QueryArgs),
    /// Every allowed connection, one `src => dst : conns` line each, sorted.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Manifest files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Source: NAMESPACE/WORKLOAD, `external` or an IPv4 address.
    #[arg(long)]
    from: String,
    /// Destination: NAMESPACE/WORKLOAD, NAMESPACE/SERVICE (the port is then
    /// the Service port), `external` or an IPv4 address.
    #[arg(long)]
    to: String,
    /// PORT or PORT/PROTO (tcp, udp, sctp); TCP when no protocol is given.
    #[arg(long)]
    port: String,
    /// Also print the policies and rules that decide.
    #[arg(long)]
    explain: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Manifest files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print JSON (`[{"src", "dst", "conn"}]`).
    #[arg(long)]
    json: bool,
}

/// Runs a reach subcommand and maps the outcome to the exit-code contract.
pub fn run(cmd: ReachCommand) -> ExitCode {
    let result = match cmd {
        ReachCommand::Query(a) => query(&a),
        ReachCommand::List(a) => list(&a).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(paths: &[PathBuf]) -> Result<Analysis> {
    let inputs = read_inputs(paths)?;
    let a = Analysis::load(&borrowed(&inputs))?;
    for w in &a.engine.cluster().warnings {
        eprintln!("warning: {}: {}", w.at, w.message);
    }
    Ok(a)
}

fn parse_port(s: &str) -> Result<(u16, Proto)> {
    let (p, proto) = match s.split_once('/') {
        Some((p, proto)) => (
            p,
            Proto::parse(proto).ok_or_else(|| anyhow!("unknown protocol {proto:?}"))?,
        ),
        None => (s, Proto::Tcp),
    };
    let port: u16 = p
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("invalid port {p:?}"))?;
    Ok((port, proto))
}

fn query(a: &QueryArgs) -> Result<ExitCode> {
    let an = load(&a.paths)?;
    let (port, proto) = parse_port(&a.port)?;
    let src = an.endpoint(&a.from)?;
    // The destination: a workload (port = container port), else a Service
    // (port = Service port, mapped to each backend's container port).
    let targets: Vec<(Endpoint, u16, String)> = match an.endpoint(&a.to) {
        Ok(e) => vec![(e, port, a.to.clone())],
        Err(werr) => {
            let Some((ns, name)) = a.to.split_once('/') else {
                return Err(werr.into());
            };
            let backends = an
                .service_backends(ns, name, port, proto)
                .map_err(|_| anyhow!("{werr}"))?;
            if backends.is_empty() {
                bail!("Service {} selects no workload in the manifests", a.to);
            }
            let ws = &an.engine.cluster().workloads;
            backends
                .into_iter()
                .map(|(i, p)| (Endpoint::Workload(i), p, ws[i].display()))
                .collect()
        }
    };
    let verdicts: Vec<(String, u16, Verdict)> = targets
        .into_iter()
        .map(|(dst, p, name)| (name, p, an.engine.query(src, dst, proto, p)))
        .collect();
    let allowed = verdicts.iter().all(|(_, _, v)| v.allowed);
    println!("{}", if allowed { "allow" } else { "deny" });
    if a.explain {
        for (name, p, v) in &verdicts {
            println!(
                "{} {} => {name} port {p}/{}",
                if v.allowed { "allow" } else { "deny" },
                a.from,
                proto.name()
            );
            explain("egress of the source", &v.egress);
            explain("ingress of the destination", &v.ingress);
        }
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn explain(what: &str, s: &Side) {
    if !s.checked {
        println!("  {what}: outside the cluster, not checked");
        return;
    }
    let verdict = if s.allowed { "allows" } else { "denies" };
    if s.isolated_by.is_empty() {
        println!("  {what}: {verdict} (no policy isolates it)");
    } else {
        println!("  {what}: {verdict}; default-deny because of:");
        for p in &s.isolated_by {
            println!("    - {p}");
        }
    }
    for r in &s.allowed_by {
        println!(
            "    allowed by {} {}[{}] at {}",
            r.policy,
            r.section.name(),
            r.index,
            r.at
        );
    }
    for r in &s.denied_by {
        println!(
            "    denied by {} {}[{}] at {}",
            r.policy,
            r.section.name(),
            r.index,
            r.at
        );
    }
    if !s.isolated_by.is_empty() && s.allowed_by.is_empty() {
        println!("    no rule of those policies admits this connection");
    }
}

fn list(a: &ListArgs) -> Result<()> {
    let an = load(&a.paths)?;
    let conns = an.engine.list();
    if a.json {
        let v: Vec<serde_json::Value> = conns
            .iter()
            .map(|c| serde_json::json!({"src": &*c.src, "dst": &*c.dst, "conn": c.conns.to_string()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for c in &conns {
            if let Err(e) = writeln!(out, "{c}") {
                // A closed pipe (`| head`) is not an error of ours.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        if let Err(e) = out.flush() {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
        }
    }
    Ok(())
}
