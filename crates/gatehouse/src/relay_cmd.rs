//! `gatehouse relay --config relay.yaml`: a standalone relay (DERP over
//! HTTPS, STUN) admitting the nodes control knows (docs/relay.md).

use anyhow::{Context, Result};
use clap::Args;
use gatehouse_relay::config::RelayFile;
use gatehouse_relay::standalone::Standalone;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Relay configuration (YAML).
    #[arg(long, env = "GATEHOUSE_RELAY_CONFIG")]
    config: PathBuf,
}

pub async fn run(args: RelayArgs) -> Result<()> {
    let mut file = RelayFile::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    file.control.credential =
        crate::secrets::secret_value("control.credential", &file.control.credential)?;
    let (region, hostname) = (file.region.clone(), file.hostname.clone());
    let relay = Standalone::bind(file).await?;
    let addr = relay.local_addr().context("the relay's address")?;
    println!(
        "gatehouse relay: region {} ({}, {}) on https://{hostname}:{}",
        region.id,
        region.code,
        region.name,
        addr.port()
    );
    println!(
        "  relay key    {}",
        relay.server().public_key().to_nodekey_string()
    );
    println!("  certificate  {}", relay.pin());
    if let Some(s) = relay.stun_addr() {
        println!("  STUN         {s}");
    }
    if let Some(o) = relay.ops_addr() {
        println!("  ops          http://{o}/metrics");
    }
    relay.run(crate::logging::shutdown_signal()).await?;
    Ok(())
}
