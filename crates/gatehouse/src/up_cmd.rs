//! `gatehouse up [-c gatehouse.yaml]` and `gatehouse status`: the
//! one-machine stack and its status (wiring of `gatehouse-up`).

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use gatehouse_client::{AdminClient, Join};
use gatehouse_up::{Options, Plan};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The stack config (gatehouse.yaml); default: the built-in demo.
    #[arg(short = 'c', long = "config", env = "GATEHOUSE_STACK")]
    config: Option<PathBuf>,
    /// State directory (default: the config's `state`; `./.gatehouse` for the demo).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Listen on free ports instead of the configured ones (chosen on the
    /// first start and kept in the state directory for the next).
    #[arg(long)]
    any_ports: bool,
    /// Check the config and its policy, print what would run, start nothing.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The stack config (gatehouse.yaml); default: the built-in demo.
    #[arg(short = 'c', long = "config", env = "GATEHOUSE_STACK")]
    config: Option<PathBuf>,
    /// State directory of the running `gatehouse up` (default: the config's).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Ask control instead of a local `gatehouse up`: its join string.
    #[arg(long, env = "GATEHOUSE_CONTROL", requires = "token")]
    control: Option<String>,
    /// Admin token for --control.
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn plan(config: &Option<PathBuf>, state: &Option<PathBuf>) -> Result<Plan> {
    Plan::load(&Options {
        config: config.clone(),
        state: state.clone(),
        any_ports: false,
    })
    .map_err(|e| anyhow!("{e}"))
}

pub async fn up(a: UpArgs) -> Result<()> {
    let plan = Plan::load(&Options {
        config: a.config.clone(),
        state: a.state.clone(),
        any_ports: a.any_ports,
    })
    .map_err(|e| anyhow!("{e}"))?;
    if a.check {
        let private = plan
            .config
            .services
            .iter()
            .filter(|s| s.private.is_some())
            .count();
        let public = plan
            .config
            .services
            .iter()
            .filter(|s| s.public.is_some())
            .count();
        println!(
            "{}: OK: network {}, {} services ({private} private, {public} public), policy {}, state {}",
            plan.config_label,
            plan.config.mesh_domain(),
            plan.config.services.len(),
            plan.policy_label,
            plan.show(&plan.state)
        );
        return Ok(());
    }
    let stack = tokio::select! {
        r = gatehouse_up::start(plan) => r.map_err(|e| anyhow!("{e}"))?,
        () = crate::logging::shutdown_signal() => bail!("interrupted while starting"),
    };
    print!("{}", stack.summary());
    println!("ready in {:.2} s", stack.ready_after().as_secs_f64());
    crate::logging::shutdown_signal().await;
    println!("gatehouse up: stopping");
    stack.shutdown().await;
    println!("gatehouse up: stopped");
    Ok(())
}

/// `gatehouse status`: exits 1 when a serve node is not online or the
/// tunnel has no live connection.
pub async fn status(a: StatusArgs) -> Result<std::process::ExitCode> {
    let plan = plan(&a.config, &a.state)?;
    let st = match (&a.control, &a.token) {
        (Some(c), Some(t)) => {
            let join = Join::parse(c)?;
            let ca = gatehouse_client::fetch_pinned_ca(&join)
                .await
                .context("fetching control's CA (the join string must carry its sha256)")?;
            let admin = AdminClient::new(join, &ca, t)?;
            gatehouse_up::status_from_control(&plan, &admin, c)
                .await
                .map_err(|e| anyhow!("{e}"))?
        }
        _ => gatehouse_up::status::query(&plan.state).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.to_text());
    }
    let down = st.services.iter().any(|s| {
        s.proxy
            .as_ref()
            .is_some_and(|p| p.ready == Some(false) || p.online == Some(false))
            || (s.public_url.is_some() && s.tunnel == Some(0))
    });
    Ok(if down {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
