//! `gatehouse reach query|list|matrix|diff`.
//!
//! Exit codes: `query` 0 allow, 1 deny; `list` and `matrix` 0; `diff` 0 when
//! nothing changes, 1 when cells change; 2 invalid input (a malformed
//! manifest or config, an unknown endpoint, bad arguments).

use crate::inputs::{borrowed, read_inputs};
use anyhow::{Context, Result, anyhow, bail};
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
    /// Who (users, groups, tags, the internet) reaches which service and
    /// public path, through the mesh policy, the edge's path rules and the
    /// cluster's network policies at once.
    Matrix(MatrixArgs),
    /// Every cell of the access matrix that differs between two configs or
    /// two policies (exit 1 when some do).
    Diff(DiffArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// The stack config (gatehouse.yaml); the built-in demo when absent.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Kubernetes manifests (files or directories): adds the network layer
    /// for services with a `kubernetes:` placement.
    #[arg(long)]
    manifests: Vec<PathBuf>,
    /// Explain one cell: ROW and COLUMN labels (e.g. bob@example.com "grafana (mesh)").
    #[arg(long, num_args = 2, value_names = ["ROW", "COLUMN"])]
    explain: Option<Vec<String>>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Before: a stack config (.yaml) or a policy file (.hujson/.json, with --config).
    old: PathBuf,
    /// After: same kind as OLD.
    new: PathBuf,
    /// The stack config the policies apply to (when OLD and NEW are policies).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Kubernetes manifests for the network layer.
    #[arg(long)]
    manifests: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
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
        ReachCommand::Matrix(a) => matrix(&a).map(|()| ExitCode::SUCCESS),
        ReachCommand::Diff(a) => diff(&a),
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
            // Neither a workload nor a usable Service: say both.
            let backends = an
                .service_backends(ns, name, port, proto)
                .map_err(|serr| anyhow!("{werr}; as a Service: {serr}"))?;
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

fn network(paths: &[PathBuf]) -> Result<Option<Analysis>> {
    if paths.is_empty() {
        Ok(None)
    } else {
        load(paths).map(Some)
    }
}

fn compute(
    stack: &crate::stack_input::Stack,
    net: Option<&Analysis>,
) -> Result<gatehouse_reach::matrix::Matrix> {
    Ok(gatehouse_reach::matrix::compute(
        &stack.config.matrix_input(),
        std::sync::Arc::clone(&stack.policy),
        net,
    )?)
}

fn print_layers(layers: &[gatehouse_reach::matrix::LayerVerdict]) {
    for l in layers {
        let layer = match l.layer {
            gatehouse_reach::matrix::Layer::Mesh => "mesh",
            gatehouse_reach::matrix::Layer::Edge => "edge",
            gatehouse_reach::matrix::Layer::Network => "network",
        };
        println!(
            "  {layer:<8} {:<5} {}",
            if l.allow { "allow" } else { "deny" },
            l.reason
        );
    }
}

fn matrix(a: &MatrixArgs) -> Result<()> {
    let stack = crate::stack_input::load_stack(a.config.as_deref())?;
    let net = network(&a.manifests)?;
    let m = compute(&stack, net.as_ref())?;
    if let Some(cell) = &a.explain {
        let (row, col) = (&cell[0], &cell[1]);
        let c = m.cell(row, col).ok_or_else(|| {
            anyhow!(
                "no cell {row:?} x {col:?}; rows: {}; columns: {}",
                m.rows.join(", "),
                m.columns
                    .iter()
                    .map(|c| c.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        match a.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(c)?),
            _ => {
                println!("{} {row} -> {col}", if c.allow { "allow" } else { "deny" });
                print_layers(&c.layers);
            }
        }
        return Ok(());
    }
    match a.format {
        Format::Text => print!("{}", m.to_text()),
        Format::Markdown => print!("{}", m.to_markdown()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&m)?),
    }
    Ok(())
}

fn is_policy(p: &std::path::Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("hujson" | "json")
    )
}

fn diff(a: &DiffArgs) -> Result<ExitCode> {
    let net = network(&a.manifests)?;
    let (old, new) = if is_policy(&a.old) && is_policy(&a.new) {
        let base = crate::stack_input::load_stack(a.config.as_deref())?;
        let with = |p: &PathBuf| -> Result<crate::stack_input::Stack> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let policy =
                gatehouse_policy::parse_policy(&text).with_context(|| p.display().to_string())?;
            Ok(crate::stack_input::Stack {
                policy: std::sync::Arc::new(policy),
                config: base.config.clone(),
            })
        };
        (with(&a.old)?, with(&a.new)?)
    } else if !is_policy(&a.old) && !is_policy(&a.new) {
        (
            crate::stack_input::load_stack(Some(&a.old))?,
            crate::stack_input::load_stack(Some(&a.new))?,
        )
    } else {
        bail!("OLD and NEW must both be configs (.yaml) or both policies (.hujson/.json)");
    };
    let changes = gatehouse_reach::matrix::Matrix::diff(
        &compute(&old, net.as_ref())?,
        &compute(&new, net.as_ref())?,
    );
    let show = |b: Option<bool>| match b {
        Some(true) => "allow",
        Some(false) => "deny",
        None => "absent",
    };
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&changes)?),
        Format::Markdown => {
            println!("| identity | target | before | after |\n|---|---|---|---|");
            for c in &changes {
                println!(
                    "| {} | {} | {} | {} |",
                    c.row,
                    c.column,
                    show(c.before),
                    show(c.after)
                );
            }
        }
        Format::Text => {
            if changes.is_empty() {
                println!("no cell changes");
            }
            for c in &changes {
                println!(
                    "{} -> {}: {} => {}",
                    c.row,
                    c.column,
                    show(c.before),
                    show(c.after)
                );
                print_layers(&c.layers);
            }
        }
    }
    Ok(if changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
