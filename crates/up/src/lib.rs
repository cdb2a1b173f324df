//! The one-machine stack (`gatehouse up`): from one `gatehouse.yaml` (or the
//! built-in demo) it runs, in one process, control (SQLite), an edge and a
//! connector for the public hostnames (certificates from a local CA it
//! makes, since no ACME CA is reachable offline), one serve node per private
//! service, and small built-in backends; it creates the config's users, sets
//! its policy, and answers `gatehouse status` on a socket in its state
//! directory. Everything is checked before anything starts, and a second
//! start reuses the state. The components themselves belong to their crates;
//! this crate only plans, wires and reports.
//!
//! Usage and file layout: `docs/up.md`; design: `docs/decisions/0020-one-machine-stack.md`.

#![forbid(unsafe_code)]

mod echo;
mod nodes;
pub mod pki;
pub mod plan;
mod public;
pub mod state;
pub mod status;

pub use echo::answer as echo_answer;
pub use plan::{Options, Plan};
pub use status::{StackStatus, StatusError};

use crate::echo::Echo;
use crate::nodes::ServiceNode;
use crate::public::PublicTier;
use crate::state::{Ports, StateDir};
use crate::status::{CertState, ProxyState, ServiceStatus};
use gatehouse_client::{AdminClient, Join};
use gatehouse_control::ControlConfig;
use gatehouse_proto::control::CreateKey;
use gatehouse_stack::Listen;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long the components may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Why a stack did not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The config or the policy is refused (`file:line: key: message`).
    #[error("{0}")]
    Config(String),
    /// A file or socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The state directory holds something unusable.
    #[error("state: {0}")]
    State(String),
    /// Another `gatehouse up` runs with this state directory.
    #[error("a gatehouse up is already running with state {0}")]
    Running(String),
    /// Control answered something unusable.
    #[error("control: {0}")]
    Control(String),
    /// Control refused something or could not be reached.
    #[error("control: {what}")]
    ControlFailed {
        /// What was asked.
        what: String,
        /// Cause.
        source: Cause,
    },
    /// The state directory holds something unusable, or could not be
    /// written.
    #[error("state: {what}")]
    StateFailed {
        /// What was being done.
        what: String,
        /// Cause.
        source: Cause,
    },
    /// A service node did not start.
    #[error("the node of service {service}")]
    Node {
        /// The service.
        service: String,
        /// Why.
        source: Cause,
    },
    /// A component did not start or become ready.
    #[error("{what}: {message}")]
    Start {
        /// The component.
        what: String,
        /// Why.
        message: String,
    },
    /// A component failed to start.
    #[error("starting {what}")]
    StartFailed {
        /// The component.
        what: String,
        /// Cause.
        source: Cause,
    },
}

/// The cause of an [`UpError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl UpError {
    /// Control refused `what` (or could not be asked).
    pub fn control(what: impl Into<String>, e: impl Into<Cause>) -> Self {
        UpError::ControlFailed {
            what: what.into(),
            source: e.into(),
        }
    }

    /// The state directory: `what` failed.
    pub fn state(what: impl Into<String>, e: impl Into<Cause>) -> Self {
        UpError::StateFailed {
            what: what.into(),
            source: e.into(),
        }
    }
}

/// What the status socket reads from.
struct Live {
    nodes: Vec<ServiceNode>,
    public: Option<PublicTier>,
    echoes: BTreeMap<String, Echo>,
}

/// A running stack.
pub struct RunningStack {
    plan: Plan,
    state: StateDir,
    control: gatehouse_control::Running,
    join: String,
    new_admin_token: bool,
    live: Arc<Live>,
    status_task: JoinHandle<()>,
    ready_after: Duration,
    started: Instant,
    /// The user a device may join as, and the file holding its key.
    user_key: Option<(String, std::path::PathBuf)>,
}

impl std::fmt::Debug for RunningStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningStack")
            .field("state", &self.state.root)
            .field("join", &self.join)
            .finish_non_exhaustive()
    }
}

fn control_err(what: &str) -> impl FnOnce(gatehouse_client::ClientError) -> UpError + '_ {
    move |e| UpError::control(what, e)
}

/// Creates the config's users and sets its policy (when it differs).
async fn configure(admin: &AdminClient, plan: &Plan) -> Result<(), UpError> {
    let users = admin.users().await.map_err(control_err("listing users"))?;
    for u in &plan.config.users {
        if !users.iter().any(|x| &x.login == u) {
            admin
                .create_user(u)
                .await
                .map_err(control_err(&format!("creating user {u}")))?;
        }
    }
    let current = admin
        .policy()
        .await
        .map_err(control_err("reading the policy"))?;
    if current != plan.policy_text {
        admin.set_policy(&plan.policy_text).await.map_err(|e| {
            UpError::Config(format!(
                "{}: control refused the policy: {e}",
                plan.policy_label
            ))
        })?;
    }
    Ok(())
}

/// Each service with the backend URL its node and the connector use
/// (built-in backends started here).
async fn backends(
    plan: &Plan,
) -> Result<
    (
        Vec<(gatehouse_stack::Service, String)>,
        BTreeMap<String, Echo>,
    ),
    UpError,
> {
    let mut out = Vec::new();
    let mut echoes = BTreeMap::new();
    for s in &plan.config.services {
        let url = if s.backend == "builtin:echo" {
            let e = Echo::start(&s.name).await.map_err(|source| UpError::Io {
                what: format!("starting the echo backend of {}", s.name),
                source,
            })?;
            let url = format!("http://{}", e.addr);
            echoes.insert(s.name.clone(), e);
            url
        } else {
            s.backend.clone()
        };
        out.push((s.clone(), url));
    }
    Ok((out, echoes))
}

async fn wait_ready(live: &Live) -> Result<(), UpError> {
    let end = Instant::now() + READY_DEADLINE;
    for n in &live.nodes {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, n.node.ready()).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(UpError::Node {
                    service: n.service.clone(),
                    source: "stopped before it was ready".into(),
                });
            }
            Err(_) => {
                let st = n.node.status();
                return Err(UpError::Node {
                    service: n.service.clone(),
                    source: format!(
                        "not ready after {}s (control: {})",
                        READY_DEADLINE.as_secs(),
                        st.control.last_error.unwrap_or_else(|| "no map yet".into())
                    )
                    .into(),
                });
            }
        }
    }
    if let Some(p) = &live.public {
        while p.live() == 0 {
            if p.connector_stopped() || Instant::now() >= end {
                return Err(UpError::Start {
                    what: "the connector".into(),
                    message: format!(
                        "no tunnel connection to the edge after {}s",
                        READY_DEADLINE.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

async fn stop_live(live: Live) {
    for e in live.echoes.values() {
        e.stop();
    }
    if let Some(p) = live.public {
        p.shutdown().await;
    }
    futures::future::join_all(live.nodes.into_iter().map(|n| n.node.shutdown())).await;
}

/// Starts the stack a checked plan describes; returns once every service
/// answers (nodes ready, tunnel connected). On failure whatever was started
/// is stopped again.
pub async fn start(plan: Plan) -> Result<RunningStack, UpError> {
    let t0 = Instant::now();
    let state = StateDir::open(&plan.state)?;
    let status_listener = status::bind(&state.root).await?;
    let listen = state.resolve(&plan.listen);
    let mut ccfg = ControlConfig::new(state.control(), listen.control);
    ccfg.network = plan.config.network.clone();
    ccfg.suffix = plan.config.domain.clone();
    ccfg.oidc = plan.oidc.clone();
    if let Some(k) = plan.key_lifetime {
        ccfg.node_key_lifetime = k;
    }
    let (control, info) =
        gatehouse_control::start(ccfg)
            .await
            .map_err(|e| UpError::StartFailed {
                what: "control".into(),
                source: e.into(),
            })?;
    match start_rest(&plan, &state, &listen, &info).await {
        Ok((live, user_key)) => {
            let ports = Ports {
                control: Some(control.local_addr.port()),
                https: live.public.as_ref().map(|p| p.edge.https.port()),
                http: live
                    .public
                    .as_ref()
                    .and_then(|p| p.edge.http.map(|a| a.port())),
                tunnel: live.public.as_ref().map(|p| p.edge.tunnel.port()),
            };
            if let Err(e) = state.save_ports(&ports) {
                stop_live(live).await;
                control.shutdown().await;
                return Err(e);
            }
            let live = Arc::new(live);
            let ready_after = t0.elapsed();
            let started = Instant::now();
            let (p2, l2, j2) = (plan.clone(), Arc::clone(&live), info.join.clone());
            let status_task = tokio::spawn(status::serve(status_listener, move || {
                compute_status(&p2, &l2, &j2, started)
            }));
            Ok(RunningStack {
                plan,
                state,
                control,
                join: info.join,
                new_admin_token: info.new_admin_token.is_some(),
                live,
                status_task,
                ready_after,
                started,
                user_key,
            })
        }
        Err(e) => {
            control.shutdown().await;
            let _ = std::fs::remove_file(state.socket());
            Err(e)
        }
    }
}

async fn start_rest(
    plan: &Plan,
    state: &StateDir,
    listen: &Listen,
    info: &gatehouse_control::StartInfo,
) -> Result<(Live, Option<(String, std::path::PathBuf)>), UpError> {
    let join = Join::parse(&info.join).map_err(|e| UpError::control("its join string", e))?;
    let ca = std::fs::read_to_string(state.mesh_ca()).map_err(|source| UpError::Io {
        what: format!("reading {}", state.mesh_ca().display()),
        source,
    })?;
    let token = std::fs::read_to_string(state.admin_token()).map_err(|source| UpError::Io {
        what: format!("reading {}", state.admin_token().display()),
        source,
    })?;
    let admin = AdminClient::new(join, &ca, &token).map_err(control_err("admin client"))?;
    configure(&admin, plan).await?;
    let (services, echoes) = backends(plan).await?;
    let private: Vec<_> = services
        .iter()
        .filter(|(s, _)| s.private.is_some())
        .cloned()
        .collect();
    let (nodes, public) = tokio::join!(nodes::start(&admin, state, &info.join, &private), async {
        if plan.has_public() {
            public::start(state, listen, &services, &info.url)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    });
    let live = match (nodes, public) {
        (Ok(nodes), Ok(public)) => Live {
            nodes,
            public,
            echoes,
        },
        (nodes, public) => {
            // The whole chain: "starting the edge" alone does not say why.
            let err = match (&nodes, &public) {
                (Err(e), _) => Some(gatehouse_ops::error::chain(e)),
                (_, Err(e)) => Some(gatehouse_ops::error::chain(e)),
                _ => None,
            };
            stop_live(Live {
                nodes: nodes.unwrap_or_default(),
                public: public.ok().flatten(),
                echoes,
            })
            .await;
            return Err(UpError::Start {
                what: "starting the stack".into(),
                message: err.unwrap_or_default(),
            });
        }
    };
    if let Err(e) = wait_ready(&live).await {
        stop_live(live).await;
        return Err(e);
    }
    let user_key = match plan.config.users.first() {
        Some(u) => {
            let k = admin
                .create_key(&CreateKey {
                    user: Some(u.clone()),
                    tags: Vec::new(),
                    reusable: false,
                    ephemeral: false,
                    expiry_seconds: Some(86_400),
                })
                .await;
            match k {
                Ok(k) => match k.key {
                    // The key goes to a file only its owner reads, never
                    // onto a command line others can see in /proc.
                    Some(key) => {
                        let path = state.device_authkey();
                        if let Err(e) = state::write_private(&path, &format!("{key}\n")) {
                            stop_live(live).await;
                            return Err(e);
                        }
                        Some((u.clone(), path))
                    }
                    None => None,
                },
                Err(e) => {
                    stop_live(live).await;
                    return Err(UpError::control(format!("minting a key for {u}"), e));
                }
            }
        }
        None => None,
    };
    Ok((live, user_key))
}

/// A public URL of a service: its hostname (with the edge's port unless
/// 443) and the first path it serves.
fn public_url(p: &gatehouse_stack::Public, https: std::net::SocketAddr) -> String {
    let path = p.paths.first().map_or("/", String::as_str);
    if https.port() == 443 {
        format!("https://{}{path}", p.hostname)
    } else {
        format!("https://{}:{}{path}", p.hostname, https.port())
    }
}

fn compute_status(plan: &Plan, live: &Live, join: &str, started: Instant) -> StackStatus {
    let mut services = Vec::new();
    for s in &plan.config.services {
        let node = live.nodes.iter().find(|n| n.service == s.name);
        let mut st = ServiceStatus {
            name: s.name.clone(),
            backend_requests: live.echoes.get(&s.name).map(Echo::requests),
            reach: status::reach_of(&plan.matrix, &s.name),
            ..ServiceStatus::default()
        };
        if let Some(n) = node {
            let ns = n.node.status();
            st.private_url = Some(format!("https://{}/", n.node.identity.fqdn));
            st.mesh_cert = ns.certificate.as_ref().map(|c| CertState {
                ready: ns.ready,
                not_after: c.not_after,
            });
            st.proxy = Some(ProxyState {
                node: n.node.identity.fqdn.clone(),
                addresses: n.node.identity.addresses.clone(),
                ready: Some(ns.ready),
                online: Some(ns.control.connected),
            });
        }
        if let (Some(p), Some(tier)) = (&s.public, &live.public) {
            st.public_url = Some(public_url(p, tier.edge.https));
            st.public_cert = tier.leaves.get(&p.hostname).map(|l| CertState {
                ready: true,
                not_after: l.not_after,
            });
            st.tunnel = Some(tier.live());
        }
        services.push(st);
    }
    StackStatus {
        source: "up".into(),
        network: plan.config.mesh_domain(),
        control: join.to_string(),
        pid: Some(std::process::id()),
        uptime_seconds: Some(started.elapsed().as_secs()),
        edge: live.public.as_ref().map(|p| p.edge.https.to_string()),
        tunnel_connections: live.public.as_ref().map(PublicTier::live),
        tunnel_requests: live.public.as_ref().map(|p| p.edge.forwarded_requests()),
        services,
    }
}

impl RunningStack {
    /// How long the start took, until every service answered.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Control's join string.
    pub fn join(&self) -> &str {
        &self.join
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state.root
    }

    /// The current status (what `gatehouse status` shows).
    pub fn status(&self) -> StackStatus {
        compute_status(&self.plan, &self.live, &self.join, self.started)
    }

    /// What to print once the stack is up: where everything is, and the
    /// exact commands that reach each service.
    pub fn summary(&self) -> String {
        let plan = &self.plan;
        let st = self.status();
        let mesh_ca = plan.show(&self.state.mesh_ca());
        let mut o = self.summary_places(&mesh_ca);
        o.push('\n');
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "PRIVATE URL".into(),
            "PUBLIC URL".into(),
        ]];
        for s in &st.services {
            rows.push(vec![
                s.name.clone(),
                s.private_url.clone().unwrap_or_else(|| "-".into()),
                s.public_url.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        o.push_str(&status::render_table(&rows));
        if st.services.iter().any(|s| s.private_url.is_some()) {
            o.push_str(&self.summary_private(&st, &mesh_ca));
        }
        if let Some(p) = &self.live.public {
            o.push_str(&self.summary_public(&st, p));
        }
        let default_state = std::env::current_dir()
            .map(|d| d.join(".gatehouse"))
            .is_ok_and(|d| d == plan.state);
        o.push_str(&format!(
            "\n`gatehouse status{}` shows who may reach what; Ctrl-C stops everything.\n",
            if default_state {
                String::new()
            } else {
                format!(" --state {}", plan.show(&self.state.root))
            }
        ));
        o
    }

    /// The summary's first part: the network, and where its parts are.
    fn summary_places(&self, mesh_ca: &str) -> String {
        let plan = &self.plan;
        let show = |p: &std::path::Path| plan.show(p);
        let mut o = format!(
            "gatehouse up: network {} from {}\n",
            plan.config.mesh_domain(),
            plan.config_label
        );
        o.push_str(&format!("  state        {}\n", show(&self.state.root)));
        o.push_str(&format!("  control      {}\n", self.join));
        o.push_str(&format!(
            "  admin        gatehouse admin --state {} …  (token in {}{})\n",
            show(&self.state.control()),
            show(&self.state.admin_token()),
            if self.new_admin_token {
                ", created now"
            } else {
                ""
            }
        ));
        o.push_str(&format!("  mesh CA      {mesh_ca}\n"));
        let fresh = self.live.nodes.iter().filter(|n| n.registered).count();
        o.push_str(&format!(
            "  nodes        {} serve node(s): {fresh} registered now, {} reused from the state\n",
            self.live.nodes.len(),
            self.live.nodes.len() - fresh
        ));
        o.push_str(&format!("  policy       {}\n", plan.policy_label));
        if let Some(p) = &self.live.public {
            o.push_str(&format!(
                "  edge         https {}, http {}, tunnel {} (QUIC and TLS), {} connector connection(s)\n",
                p.edge.https,
                p.edge.http.map_or_else(|| "-".into(), |a| a.to_string()),
                p.edge.tunnel,
                p.live()
            ));
            o.push_str(&format!(
                "  public CA    {} ({}a local CA this stack made for the public hostnames: no ACME CA can be reached offline; trust it for testing only)\n",
                show(&p.ca_cert),
                if p.ca_created { "created now; " } else { "" }
            ));
        }
        o
    }

    /// How to reach the private services: join a device, then curl
    /// through its SOCKS5 proxy.
    fn summary_private(&self, st: &StackStatus, mesh_ca: &str) -> String {
        let plan = &self.plan;
        let show = |p: &std::path::Path| plan.show(p);
        let socks = plan.listen.socks5;
        let mut o = String::from("\nPrivate services: join a device to the mesh");
        match &self.user_key {
            Some((user, key)) => {
                o.push_str(&format!(
                    " as {user} (a one-off key, valid 24 h, in a file only you can read):\n  gatehouse node up --control '{}' --authkey file:{} --hostname laptop --state ./laptop --socks5 {socks}\n",
                    self.join,
                    plan.show(key)
                ));
            }
            None => o.push_str(&format!(
                " (the config has no users: add one with `gatehouse admin --state {} users add LOGIN` and mint a key with `keys create --user LOGIN`):\n  gatehouse node up --control '{}' --authkey KEY --hostname laptop --state ./laptop --socks5 {socks}\n",
                show(&self.state.control()),
                self.join
            )),
        }
        if plan.config.users.len() > 1 {
            o.push_str(&format!(
                "  (keys for the other users: gatehouse admin --state {} keys create --user LOGIN)\n",
                show(&self.state.control())
            ));
        }
        o.push_str("then, from that device:\n");
        for s in &st.services {
            if let Some(u) = &s.private_url {
                o.push_str(&format!(
                    "  curl --proxy socks5h://{socks} --cacert {mesh_ca} {u}\n"
                ));
            }
        }
        o
    }

    /// How to reach the public services through the edge.
    fn summary_public(&self, st: &StackStatus, p: &PublicTier) -> String {
        let plan = &self.plan;
        let mut o = String::from("\nPublic services, through the edge:\n");
        let port = p.edge.https.port();
        let ip = public::reachable(p.edge.https).ip();
        for s in &st.services {
            if let (Some(u), Some(svc)) = (
                &s.public_url,
                plan.config.services.iter().find(|x| x.name == s.name),
            ) && let Some(pubs) = &svc.public
            {
                o.push_str(&format!(
                    "  curl --resolve {}:{port}:{ip} --cacert {} {u}\n",
                    pubs.hostname,
                    plan.show(&p.ca_cert)
                ));
                if pubs.identity.is_some() {
                    o.push_str(
                        "    (behind a sign-in: a browser is sent to sign in, curl gets 401)\n",
                    );
                }
            }
        }
        o
    }

    /// Stops everything: the status socket, the connector and the edge, the
    /// nodes, the backends, control.
    pub async fn shutdown(self) {
        self.status_task.abort();
        let _ = self.status_task.await;
        let _ = std::fs::remove_file(self.state.socket());
        match Arc::try_unwrap(self.live) {
            Ok(live) => stop_live(live).await,
            Err(_) => tracing::warn!("components still referenced at shutdown"),
        }
        self.control.shutdown().await;
    }
}

/// The status of a stack as control knows it (when no `up` answers
/// locally): the services of `plan`, their nodes' presence in control's map
/// streams, and who may reach them under control's current policy.
/// Certificates and tunnel connections are not known there.
pub async fn status_from_control(
    plan: &Plan,
    admin: &AdminClient,
    join: &str,
) -> Result<StackStatus, UpError> {
    let nodes = admin.nodes().await.map_err(control_err("listing nodes"))?;
    let policy_text = admin
        .policy()
        .await
        .map_err(control_err("reading the policy"))?;
    let policy = gatehouse_policy::parse_policy(&policy_text)
        .map_err(|e| UpError::control("its policy", e))?;
    let matrix =
        gatehouse_reach::matrix::compute(&plan.config.matrix_input(), Arc::new(policy), None)
            .map_err(|e| UpError::control("its policy does not fit the services", e))?;
    let https = plan.listen.https;
    let services = plan
        .config
        .services
        .iter()
        .map(|s| {
            let mut st = ServiceStatus {
                name: s.name.clone(),
                reach: status::reach_of(&matrix, &s.name),
                ..ServiceStatus::default()
            };
            if let Some(host) = s.mesh_hostname() {
                let node = nodes.iter().find(|n| {
                    n.node.name == host && {
                        let (mut a, mut b) = (n.node.tags.clone(), s.tags.clone());
                        a.sort();
                        b.sort();
                        a == b
                    }
                });
                st.private_url = Some(format!("https://{host}.{}/", plan.config.mesh_domain()));
                st.proxy = Some(ProxyState {
                    node: node.map_or_else(
                        || format!("{host}.{}", plan.config.mesh_domain()),
                        |n| n.node.fqdn.clone(),
                    ),
                    addresses: node.map(|n| n.node.addresses.clone()).unwrap_or_default(),
                    ready: None,
                    online: Some(node.is_some_and(|n| n.online)),
                });
            }
            if let Some(p) = &s.public {
                st.public_url = Some(public_url(p, https));
            }
            st
        })
        .collect();
    Ok(StackStatus {
        source: "control".into(),
        network: plan.config.mesh_domain(),
        control: join.to_string(),
        services,
        ..StackStatus::default()
    })
}
