//! `gatehouse doctor [PATH…] [--cluster] [--control JOIN]`: the seed's traps
//! that apply, from manifests or from the cluster of the current kubeconfig.
//!
//! Exit codes: 0 no error-level finding; 1 at least one; 2 bad arguments,
//! unreadable paths or an unreachable cluster.

use crate::inputs::{borrowed, read_inputs};
use clap::Args;
use gatehouse_lint::Level;
use gatehouse_operator::doctor;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Manifest files or directories (offline).
    paths: Vec<PathBuf>,
    /// Read the cluster of the current kubeconfig instead of (or besides) files.
    #[arg(long)]
    cluster: bool,
    /// Check that control answers at this join string.
    #[arg(long, env = "GATEHOUSE_CONTROL")]
    control: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The operator's namespace (with --cluster: its ServiceAccount's
    /// permissions are checked).
    #[arg(long, default_value = "gatehouse")]
    namespace: String,
}

pub fn run(a: DoctorArgs) -> ExitCode {
    if a.paths.is_empty() && !a.cluster {
        eprintln!("error: give manifest paths, or --cluster");
        return ExitCode::from(2);
    }
    let mut inputs = match read_inputs(&a.paths) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let control = rt.block_on(async {
        let mut install = Vec::new();
        if a.cluster {
            let client = kube::Client::try_default().await?;
            inputs.extend(doctor::collect(&client).await?);
            install = doctor::check_install(&client, &a.namespace).await;
        }
        let mut c: Vec<doctor::Finding> = match &a.control {
            Some(j) => doctor::check_control(j).await.into_iter().collect(),
            None => Vec::new(),
        };
        c.extend(install);
        Ok::<_, kube::Error>(c)
    });
    let control = match control {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: reading the cluster: {}", gatehouse_ops::Chain(&e));
            return ExitCode::from(2);
        }
    };
    let mut findings = doctor::check_manifests(&borrowed(&inputs));
    findings.extend(control);
    if a.json {
        match serde_json::to_string_pretty(&findings) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        for f in &findings {
            println!(
                "{}: {}[{}]: {}\n  fix: {}",
                f.at,
                f.level.name(),
                f.rule,
                f.message,
                f.fix
            );
        }
        eprintln!("{} findings", findings.len());
    }
    if findings.iter().any(|f| f.level == Level::Error) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
