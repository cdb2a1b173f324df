//! `gatehouse render CATALOG --target T [--netpol N] -o DIR`.
//!
//! Exit codes: 0 files written; 2 invalid catalog or arguments, or a file
//! could not be written.

use anyhow::{Context, Result, anyhow};
use clap::{Args, ValueEnum};
use gatehouse_render::{CatalogError, NetpolKind, Target, parse_catalog, render};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TargetArg {
    /// Tailscale operator Ingresses, cloudflared, Tailscale ACL snippet.
    Tailscale,
    /// Gatehouse Ingresses (class `gatehouse`), connector, policy snippet.
    Gatehouse,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetpolArg {
    /// CiliumNetworkPolicy (cilium.io/v2).
    Cilium,
    /// NetworkPolicy (networking.k8s.io/v1).
    Kubernetes,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The exposure catalog (YAML; see docs/exposures.md).
    catalog: PathBuf,
    /// Which access stack to generate for.
    #[arg(long, value_enum)]
    target: TargetArg,
    /// Which network-policy API to generate.
    #[arg(long, value_enum, default_value = "cilium")]
    netpol: NetpolArg,
    /// Output directory (created if missing; files in it are overwritten).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

/// Renders the catalog into the output directory.
pub fn run(a: RenderArgs) -> ExitCode {
    match render_files(&a) {
        Ok(n) => {
            eprintln!("wrote {n} files to {}", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn render_files(a: &RenderArgs) -> Result<usize> {
    let name = a.catalog.display().to_string();
    let text = std::fs::read_to_string(&a.catalog).with_context(|| format!("reading {name}"))?;
    let catalog = parse_catalog(&text).map_err(|e| match e {
        CatalogError::Syntax {
            line,
            column,
            message,
        } => anyhow!("{name}:{line}:{column}: {message}"),
        e @ CatalogError::Invalid { .. } => anyhow!("{name}: {e}"),
    })?;
    let target = match a.target {
        TargetArg::Tailscale => Target::Tailscale,
        TargetArg::Gatehouse => Target::Gatehouse,
    };
    let netpol = match a.netpol {
        NetpolArg::Cilium => NetpolKind::Cilium,
        NetpolArg::Kubernetes => NetpolKind::Kubernetes,
    };
    let source = a
        .catalog
        .file_name()
        .map_or_else(|| name.clone(), |f| f.to_string_lossy().into_owned());
    let files = render(&catalog, target, netpol, &source);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for (file, content) in &files {
        let p = a.out.join(file);
        std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(files.len())
}
