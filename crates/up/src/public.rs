//! The public tier of the stack: an edge for the config's public hostnames
//! (certificates from the local public CA, path rules from the config) and
//! a connector that dials it and sends each hostname's requests to the
//! service's backend. The tunnel token is created once, kept in the state
//! directory (0600; the edge's store keeps only its hash) and reused.

use crate::UpError;
use crate::pki::{Leaf, PublicCa, TUNNEL_NAME};
use crate::state::{StateDir, write, write_private};
use gatehouse_edge::RunningEdge;
use gatehouse_edge::config::{
    AccessConfig, CertFiles, EdgeConfig, HostConfig, Listen as EdgeListen,
};
use gatehouse_edge::tokens::{TokenStore, now_unix};
use gatehouse_proto::Token;
use gatehouse_stack::{Listen, Service, edge_rules};
use gatehouse_tunnel::{ConnectorConfig, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The tunnel's name in the edge's store.
pub const TUNNEL: &str = "up";
/// Connections the connector keeps to the edge.
pub const CONNECTIONS: usize = 2;

/// The running public tier.
#[derive(Debug)]
pub struct PublicTier {
    /// The edge.
    pub edge: RunningEdge,
    /// The local public CA certificate (for `curl --cacert`).
    pub ca_cert: PathBuf,
    /// Whether this start made the CA.
    pub ca_created: bool,
    /// Certificates by public hostname.
    pub leaves: BTreeMap<String, Leaf>,
    connector: JoinHandle<Result<(), gatehouse_tunnel::ConnectorError>>,
    stop: oneshot::Sender<()>,
}

fn token(state: &StateDir) -> Result<Token, UpError> {
    let store_path = state.public().join("tunnels.json");
    let token_path = state.public().join("tunnel.token");
    let mut store =
        TokenStore::load(&store_path).map_err(|e| UpError::state("the tunnel tokens", e))?;
    let now = now_unix();
    if let Ok(text) = std::fs::read_to_string(&token_path)
        && store.verify(text.trim(), now).is_ok_and(|n| n == TUNNEL)
        && let Ok(t) = Token::parse(text.trim())
    {
        return Ok(t);
    }
    // The token was lost or revoked: a new one replaces it.
    let _ = store.revoke(TUNNEL);
    let t = store
        .create(TUNNEL, rand::random(), rand::random(), now, None)
        .map_err(|e| UpError::state("minting the tunnel token", e))?;
    store
        .save(&store_path)
        .map_err(|e| UpError::state("saving the tunnel tokens", e))?;
    write_private(&token_path, &format!("{}\n", t.encode()))?;
    Ok(t)
}

/// Where a local client reaches a listener bound to `addr`.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn ingress_yaml(services: &[(Service, String)]) -> String {
    let mut y = String::from(
        "# Written by gatehouse up at each start: the connector's ingress rules.\ningress:\n",
    );
    for (s, backend) in services {
        if let Some(p) = &s.public {
            y.push_str(&format!(
                "  - hostname: {}\n    service: {backend}\n",
                p.hostname
            ));
        }
    }
    y.push_str("  - service: http_status:404\n");
    y
}

/// The edge's Access section when a public side has an identity rule:
/// people sign in at control (trusted through the mesh CA), the edge's
/// session key lives beside its other state.
fn access(
    state: &StateDir,
    services: &[(Service, String)],
    control_url: &str,
) -> Option<AccessConfig> {
    let needed = services
        .iter()
        .any(|(s, _)| s.public.as_ref().is_some_and(|p| p.identity.is_some()));
    needed.then(|| AccessConfig {
        control: control_url.to_string(),
        jwks: None,
        ca: Some(state.mesh_ca()),
        session_lifetime: None,
        key: Some(state.public().join("access.key")),
        service_tokens: Vec::new(),
    })
}

/// Starts the edge and the connector; returns once the edge listens (the
/// connector connects in the background: see [`PublicTier::live`]).
pub async fn start(
    state: &StateDir,
    listen: &Listen,
    services: &[(Service, String)],
    control_url: &str,
) -> Result<PublicTier, UpError> {
    let dir = state.public();
    let mut names: BTreeSet<String> = services
        .iter()
        .filter_map(|(s, _)| s.public.as_ref().map(|p| p.hostname.clone()))
        .collect();
    names.insert(TUNNEL_NAME.to_string());
    let ca = PublicCa::load_or_create(&dir, &names)?;
    let mut leaves = BTreeMap::new();
    for n in &names {
        leaves.insert(n.clone(), ca.leaf(&dir, n)?);
    }
    let files = |l: &Leaf| CertFiles {
        cert: l.cert.clone(),
        key: l.key.clone(),
    };
    let tunnel_leaf = leaves
        .remove(TUNNEL_NAME)
        .ok_or_else(|| UpError::State("no tunnel certificate".into()))?;
    let hostnames = services
        .iter()
        .filter_map(|(s, _)| {
            let p = s.public.as_ref()?;
            Some(HostConfig {
                hostname: p.hostname.clone(),
                tunnel: TUNNEL.into(),
                tls: leaves.get(&p.hostname).map(files),
                default: None,
                rules: edge_rules(p),
            })
        })
        .collect();
    let token = token(state)?;
    let cfg = EdgeConfig {
        listen: EdgeListen {
            https: listen.https,
            http: Some(listen.http),
            tunnel: listen.tunnel,
            admin: None,
        },
        tunnel_tls: files(&tunnel_leaf),
        tokens: dir.join("tunnels.json"),
        heartbeat: None,
        acme: None,
        hostnames,
        route_api: None,
        limits: Default::default(),
        access: access(state, services, control_url),
    };
    cfg.routes()
        .map_err(|e| UpError::state("the edge's configuration", e))?;
    let edge = gatehouse_edge::start(cfg, None)
        .await
        .map_err(|e| UpError::StartFailed {
            what: "the edge".into(),
            source: e.into(),
        })?;
    let ingress = dir.join("ingress.yaml");
    write(&ingress, &ingress_yaml(services))?;
    let conn = ConnectorConfig {
        token,
        edges: vec![reachable(edge.tunnel)],
        edge_server_name: TUNNEL_NAME.into(),
        edge_ca: Some(ca.cert.clone()),
        transport: Transport::Auto,
        ha_connections: CONNECTIONS,
        grace_period: Duration::from_secs(5),
        config_path: ingress,
        metrics_addr: None,
        backoff: gatehouse_ops::Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(2),
        },
        handshake_timeout: Duration::from_secs(5),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let connector = tokio::spawn(gatehouse_tunnel::run(conn, async move {
        let _ = stopped.await;
    }));
    Ok(PublicTier {
        edge,
        ca_cert: ca.cert,
        ca_created: ca.created,
        leaves,
        connector,
        stop,
    })
}

impl PublicTier {
    /// Live connector connections at the edge.
    pub fn live(&self) -> usize {
        self.edge.live_connections()
    }

    /// Whether the connector stopped (it only stops on an error before
    /// shutdown).
    pub fn connector_stopped(&self) -> bool {
        self.connector.is_finished()
    }

    /// Stops the connector (draining its requests), then the edge.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.connector).await;
        self.edge.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_rules_send_each_hostname_to_its_backend() {
        let cfg = gatehouse_stack::StackConfig::demo();
        let services: Vec<(Service, String)> = cfg
            .services
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    format!("http://127.0.0.1:{}", 1000 + s.name.len()),
                )
            })
            .collect();
        let y = ingress_yaml(&services);
        let ing = gatehouse_tunnel::ingress::Ingress::parse(&y).unwrap();
        let (_, r) = ing.find("blog.example.com", "/");
        assert_eq!(r.service.to_string(), "http://127.0.0.1:1004");
        let (_, r) = ing.find("grafana.example.com", "/");
        assert_eq!(r.service.to_string(), "http_status:404");
    }

    #[test]
    fn the_token_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let a = token(&state).unwrap();
        let b = token(&state).unwrap();
        assert_eq!(a.encode(), b.encode());
        let store = std::fs::read_to_string(state.public().join("tunnels.json")).unwrap();
        assert!(!store.contains(&a.encode()), "the store keeps only a hash");
    }
}
