//! `gatehouse operator`: run the Kubernetes operator (`run`), print the
//! ProxyClass CRD (`crd`), or be the entry point of a proxy pod (`proxy`).
//! The proxy image's build (feature `proxy`) has only `proxy`.

use anyhow::{Context as _, Result};
#[cfg(feature = "operator")]
use clap::ValueEnum;
use clap::{Args, Subcommand};
#[cfg(feature = "operator")]
use gatehouse_operator::{
    Context, Settings,
    edge::{EdgeRoutes, HttpEdge},
    mesh::ControlMesh,
};
use gatehouse_proxy_boot::{self as boot, BootConfig};
#[cfg(feature = "operator")]
use gatehouse_render::NetpolKind;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "operator")]
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Serve Ingresses of class gatehouse (in a cluster, or with a kubeconfig).
    #[cfg(feature = "operator")]
    Run(Box<RunArgs>),
    /// Print the ProxyClass CustomResourceDefinition (YAML).
    #[cfg(feature = "operator")]
    Crd,
    /// Entry point of a proxy pod: keep the node's state in its Secret and run `gatehouse node`.
    Proxy(ProxyArgs),
}

#[cfg(feature = "operator")]
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Netpol {
    /// CiliumNetworkPolicy when the cluster serves cilium.io/v2, else NetworkPolicy.
    Auto,
    /// Always CiliumNetworkPolicy.
    Cilium,
    /// Always NetworkPolicy.
    Kubernetes,
}

#[cfg(feature = "operator")]
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespace of the operator, the proxies and the connector.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gatehouse")]
    namespace: String,
    /// Image of the proxies.
    #[arg(long, env = "GATEHOUSE_PROXY_IMAGE")]
    image: String,
    /// Control's join string (URL#sha256:…).
    #[arg(long, env = "GATEHOUSE_CONTROL")]
    control: String,
    /// File holding the OAuth client secret (scopes auth_keys:write, devices:read, devices:write).
    #[arg(long, env = "GATEHOUSE_OAUTH_SECRET_FILE")]
    oauth_secret_file: PathBuf,
    /// The edge's route API (https://edge:9443); without it no public route is registered.
    #[arg(long, env = "GATEHOUSE_EDGE_API")]
    edge_api: Option<String>,
    /// CA of the edge's route API (default: the system's roots).
    #[arg(long, env = "GATEHOUSE_EDGE_CA")]
    edge_ca: Option<PathBuf>,
    /// File holding the tunnel token the route API authenticates.
    #[arg(long, env = "GATEHOUSE_TUNNEL_TOKEN_FILE")]
    tunnel_token_file: Option<PathBuf>,
    /// Tunnel name written into the connector's rules.
    #[arg(long, default_value = "gatehouse")]
    tunnel: String,
    /// The connector's ConfigMap.
    #[arg(long, default_value = "gatehouse-connector")]
    connector_config_map: String,
    /// Network-policy kind.
    #[arg(long, value_enum, default_value = "auto")]
    netpol: Netpol,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Lease used for leader election; `none` disables it.
    #[arg(long, default_value = "gatehouse-operator")]
    lease: String,
    /// This replica's identity in the lease.
    #[arg(long, env = "POD_NAME", default_value = "gatehouse-operator")]
    identity: String,
    /// Reconciles run at once (0: no limit).
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The proxy's Secret.
    #[arg(long)]
    secret: String,
    /// The node's state directory.
    #[arg(long)]
    state: PathBuf,
    /// The pod's name (its StatefulSet ordinal picks the auth key).
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// The node's command line (`node up …`), after `--`.
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

pub fn run(cmd: OperatorCommand) -> ExitCode {
    match cmd {
        #[cfg(feature = "operator")]
        OperatorCommand::Crd => match gatehouse_operator::crd::crd_yaml() {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "operator")]
        OperatorCommand::Run(a) => crate::run_async(operator(*a)),
        OperatorCommand::Proxy(a) => {
            crate::logging::init();
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(proxy(a)) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(feature = "operator")]
fn read_secret(p: &PathBuf) -> Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

#[cfg(feature = "operator")]
async fn operator(a: RunArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let secret = read_secret(&a.oauth_secret_file)?;
    let mesh = ControlMesh::connect(&a.control, &secret)
        .await
        .context("reaching control")?;
    let edge: Option<Arc<dyn EdgeRoutes>> = match (&a.edge_api, &a.tunnel_token_file) {
        (Some(url), Some(tf)) => {
            let ca = match &a.edge_ca {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            Some(Arc::new(HttpEdge::new(
                url,
                ca.as_deref(),
                &read_secret(tf)?,
            )?))
        }
        (None, None) => None,
        _ => anyhow::bail!("--edge-api and --tunnel-token-file go together"),
    };
    let mut s = Settings::new(&a.namespace, &a.image);
    s.tunnel = a.tunnel;
    s.connector_config_map = a.connector_config_map;
    s.cluster_domain = a.cluster_domain;
    s.concurrency = a.concurrency;
    s.netpol = match a.netpol {
        Netpol::Auto => None,
        Netpol::Cilium => Some(NetpolKind::Cilium),
        Netpol::Kubernetes => Some(NetpolKind::Kubernetes),
    };
    let ctx = Arc::new(Context::new(client, Arc::new(mesh), edge, s));
    tracing::info!(namespace = %a.namespace, "gatehouse operator starting");
    gatehouse_operator::reconcile::ensure_connector_config(&ctx).await?;
    if a.lease == "none" {
        gatehouse_operator::run::controller(ctx, crate::logging::shutdown_signal()).await;
    } else {
        gatehouse_operator::run::with_leader_election(
            ctx,
            &a.lease,
            &a.identity,
            crate::logging::shutdown_signal(),
        )
        .await?;
    }
    Ok(())
}

async fn proxy(a: ProxyArgs) -> Result<i32> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let program = std::env::current_exe().context("finding this binary")?;
    let cfg = BootConfig {
        secret: a.secret,
        state: a.state,
        pod_name: a.pod_name,
        program,
        args: a.args,
        sync_every: Duration::from_secs(2),
    };
    Ok(boot::run(client, cfg, crate::logging::shutdown_signal()).await?)
}
