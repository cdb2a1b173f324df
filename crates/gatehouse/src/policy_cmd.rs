//! `gatehouse policy test|query|filter`.
//!
//! Exit codes (a stable contract): 0 success; 1 a policy test failed;
//! 2 invalid input (policy, inventory, arguments).

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use gatehouse_policy::{
    Engine, Expect, Node, NodeFilter, Policy, QueryProto, parse_inventory, parse_policy,
    query_identity, run_tests,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy and run its `tests`: exit 0 if all hold, 1 if one fails, 2 if invalid.
    Test(TestArgs),
    /// May SRC reach DST:PORT? Prints `accept` or `deny` on the first line.
    Query(QueryArgs),
    /// Print the compiled inbound packet filter of one node.
    Filter(FilterArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Policy file (HuJSON).
    policy: PathBuf,
    /// Inventory of nodes (YAML or JSON); without it, each identity a test
    /// names is evaluated through a representative device.
    #[arg(long, env = "GATEHOUSE_INVENTORY")]
    inventory: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Policy file (HuJSON).
    policy: PathBuf,
    /// Inventory of nodes (YAML or JSON).
    #[arg(long, env = "GATEHOUSE_INVENTORY")]
    inventory: PathBuf,
    /// Source: node name, user, group:, tag:, host alias or IP.
    #[arg(long)]
    src: String,
    /// Destination and port: NODE:PORT, HOST:PORT, IP:PORT or [IPv6]:PORT.
    #[arg(long)]
    dst: String,
    /// Protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    proto: ProtoArg,
    /// Also print the rule(s) responsible, per address pair.
    #[arg(long)]
    explain: bool,
    /// Print the answer as JSON (after the first line).
    #[arg(long)]
    json: bool,
}

/// How `policy filter` prints a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FilterFormat {
    /// One line per rule.
    Text,
    /// The compiled filter as JSON.
    Json,
    /// Tailscale's `[]FilterRule` JSON, as control sends it to a Tailscale client.
    Tailscale,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Policy file (HuJSON).
    policy: PathBuf,
    /// Inventory of nodes (YAML or JSON).
    #[arg(long, env = "GATEHOUSE_INVENTORY")]
    inventory: PathBuf,
    /// The node whose inbound filter to print.
    #[arg(long)]
    node: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: FilterFormat,
    /// Print JSON (the same as `--format json`).
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

/// Runs a policy subcommand and maps the outcome to the exit-code contract.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    let result = match cmd {
        PolicyCommand::Test(a) => test(&a),
        PolicyCommand::Query(a) => query(&a).map(|()| ExitCode::SUCCESS),
        PolicyCommand::Filter(a) => filter(&a).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_policy(path: &Path) -> Result<Arc<Policy>> {
    let text = read(path)?;
    let policy = parse_policy(&text).with_context(|| path.display().to_string())?;
    Ok(Arc::new(policy))
}

fn load_inventory(path: &Path) -> Result<Vec<Node>> {
    let text = read(path)?;
    parse_inventory(&text).with_context(|| path.display().to_string())
}

fn test(a: &TestArgs) -> Result<ExitCode> {
    let policy = load_policy(&a.policy)?;
    let nodes = match &a.inventory {
        Some(p) => load_inventory(p)?,
        None => Vec::new(),
    };
    let report = run_tests(&policy, &nodes)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.failures {
            let expect = match f.expect {
                Expect::Accept => "accept",
                Expect::Deny => "deny",
            };
            println!(
                "FAIL tests[{}] (line {}): src {} {expect} {:?}",
                f.test, f.line, f.src, f.dst
            );
            for r in &f.reasons {
                println!("  - {r}");
            }
        }
        for f in &report.ssh_failures {
            println!(
                "FAIL sshTests[{}] (line {}): src {} {} {:?} on {:?}",
                f.test,
                f.line,
                f.src,
                f.expect.as_str(),
                f.user,
                f.dst
            );
            for r in &f.reasons {
                println!("  - {r}");
            }
        }
        if report.passed() {
            println!(
                "ok: policy is valid; {} tests, {} sshTests, {} assertions passed",
                policy.tests.len(),
                policy.ssh_tests.len(),
                report.assertions
            );
        } else {
            println!(
                "{} of {} assertions failed: the policy would be refused",
                report.failed(),
                report.assertions
            );
        }
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Splits `DST:PORT` (IPv6 as `[addr]:port`).
fn split_dst(s: &str) -> Result<(&str, u16)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => rest
            .split_once("]:")
            .ok_or_else(|| anyhow!("--dst {s:?}: expected [IPv6]:PORT"))?,
        None => s
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("--dst {s:?}: expected DST:PORT"))?,
    };
    let port = port
        .parse::<u16>()
        .with_context(|| format!("--dst {s:?}: {port:?} is not a port number"))?;
    if host.is_empty() {
        bail!("--dst {s:?}: missing destination");
    }
    Ok((host, port))
}

fn query(a: &QueryArgs) -> Result<()> {
    let policy = load_policy(&a.policy)?;
    let nodes = load_inventory(&a.inventory)?;
    let (dst, port) = split_dst(&a.dst)?;
    let identities: Vec<_> = query_identity(&policy, &a.src).into_iter().collect();
    let engine = Engine::with_representatives(
        Arc::clone(&policy),
        &nodes,
        &identities.iter().collect::<Vec<_>>(),
    )?;
    let proto = match a.proto {
        ProtoArg::Tcp => QueryProto::Tcp,
        ProtoArg::Udp => QueryProto::Udp,
        ProtoArg::Icmp => QueryProto::Icmp,
    };
    let out = engine.query(&a.src, dst, port, proto)?;
    println!("{}", if out.accept { "accept" } else { "deny" });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if a.explain {
        if out.pairs.is_empty() {
            println!("  no address family in common between source and destination");
        }
        for p in &out.pairs {
            let head = format!(
                "{} {} -> {} {} port {port}",
                p.src, p.src_ip, p.dst, p.dst_ip
            );
            if p.rules.is_empty() {
                println!("  deny   {head}: {}", engine.why_not(p));
            } else {
                println!("  accept {head}");
                for r in &p.rules {
                    println!("         by {}", engine.rule_label(*r));
                }
                if !p.via.is_empty() {
                    println!("         through {}", p.via.join(", "));
                }
            }
        }
    }
    Ok(())
}

fn print_filter(f: &NodeFilter) {
    let addrs: Vec<String> = f.addresses.iter().map(ToString::to_string).collect();
    println!("node {} ({})", f.node, addrs.join(", "));
    if f.rules.is_empty() {
        println!("  (no rule: every inbound packet is dropped)");
    }
    for r in &f.rules {
        let dst: Vec<String> = r
            .dst_ports
            .iter()
            .map(|d| match d.ip {
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", d.ports),
                std::net::IpAddr::V4(ip) => format!("{ip}:{}", d.ports),
            })
            .collect();
        let routed: Vec<String> = r
            .routed
            .iter()
            .flat_map(|d| {
                d.nets
                    .to_strings()
                    .into_iter()
                    .map(move |n| format!("{n}:{}", d.ports))
            })
            .collect();
        let to = match (dst.is_empty(), routed.is_empty()) {
            (_, true) => format!("to {}", dst.join(",")),
            (true, false) => format!("forwarded to {}", routed.join(",")),
            (false, false) => format!("to {} and forwarded to {}", dst.join(","), routed.join(",")),
        };
        println!(
            "  {}: from {} {to} proto {}",
            r.origin,
            r.src_ips.to_strings().join(","),
            r.protos.names().join(",")
        );
    }
}

fn filter(a: &FilterArgs) -> Result<()> {
    let policy = load_policy(&a.policy)?;
    let nodes = load_inventory(&a.inventory)?;
    let engine = Engine::new(policy, nodes)?;
    let f = engine.filter(&a.node)?;
    let format = if a.json { FilterFormat::Json } else { a.format };
    match format {
        FilterFormat::Text => print_filter(&f),
        FilterFormat::Json => println!("{}", serde_json::to_string_pretty(&f)?),
        FilterFormat::Tailscale => {
            let rules = gatehouse_tailcfg::packet_filter(&f);
            println!("{}", serde_json::to_string_pretty(&rules)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_dst;

    #[test]
    fn splits_destinations() {
        assert_eq!(split_dst("web:443").unwrap(), ("web", 443));
        assert_eq!(split_dst("100.64.0.1:22").unwrap(), ("100.64.0.1", 22));
        assert_eq!(split_dst("[fd7a::1]:80").unwrap(), ("fd7a::1", 80));
        assert!(split_dst("web").is_err());
        assert!(split_dst("web:http").is_err());
        assert!(split_dst(":80").is_err());
    }
}
