//! One serve node per private service: registered with a one-off key the
//! stack mints for the service's tags (only when the node has no identity
//! yet), identity kept in `<state>/nodes/<service>/`, serving HTTPS on its
//! mesh name in front of the service's backend. A second `up` reuses the
//! identities: no registration, same names and addresses. A node whose
//! identity no longer fits the config (other tags or host name), whose key
//! expired (or was expired by an administrator) or that control no longer
//! knows is registered again.

use crate::UpError;
use crate::state::StateDir;
use gatehouse_client::{AdminClient, Identity};
use gatehouse_node::{NodeConfig, RunningNode};
use gatehouse_proto::control::{CreateKey, NodeInfo};
use gatehouse_stack::Service;

/// A running service node.
#[derive(Debug)]
pub struct ServiceNode {
    /// The service.
    pub service: String,
    /// The node.
    pub node: RunningNode,
    /// Whether this start registered it.
    pub registered: bool,
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Whether a saved identity still fits the service, as control knows it
/// (a node whose key expired does not: control refuses it).
fn fits(id: &Identity, host: &str, s: &Service, known: &[NodeInfo], now: i64) -> bool {
    known.iter().any(|n| {
        n.node.id == id.node_id
            && sorted(&n.node.tags) == sorted(&s.tags)
            && n.node.key_expiry > now
    }) && id.name == host
        && id.key_expiry > now
}

/// Prepares a service's node: drops an identity that no longer fits and
/// mints a key when it must register. Returns the key, if minted.
async fn prepare(
    admin: &AdminClient,
    state: &StateDir,
    s: &Service,
    host: &str,
    known: &[NodeInfo],
) -> Result<Option<String>, UpError> {
    let dir = state.node(&s.name);
    let saved = Identity::load(&dir).map_err(|e| UpError::state("a node's identity", e))?;
    if let Some(id) = &saved {
        if fits(id, host, s, known, crate::status::unix_now()) {
            return Ok(None);
        }
        tracing::info!(service = %s.name, node = %id.fqdn, "the saved node no longer fits the config, or its key expired; registering again");
        if known.iter().any(|n| n.node.id == id.node_id) {
            admin
                .delete_node(&id.node_id)
                .await
                .map_err(|e| UpError::control(format!("removing node {}", id.fqdn), e))?;
        }
        let f = dir.join("node.json");
        std::fs::remove_file(&f).map_err(|source| UpError::Io {
            what: format!("removing {}", f.display()),
            source,
        })?;
    }
    // A stale node of an earlier stack holding the name (tagged, offline):
    // the stack owns its service names.
    for n in known {
        if n.node.name == host && !n.node.tags.is_empty() && !n.online {
            tracing::info!(service = %s.name, node = %n.node.fqdn, "removing a stale service node holding the name");
            admin
                .delete_node(&n.node.id)
                .await
                .map_err(|e| UpError::control(format!("removing node {}", n.node.fqdn), e))?;
        }
    }
    let key = admin
        .create_key(&CreateKey {
            user: None,
            tags: s.tags.clone(),
            reusable: false,
            ephemeral: false,
            expiry_seconds: Some(600),
        })
        .await
        .map_err(|e| UpError::control(format!("minting a key for {}", s.name), e))?;
    key.key
        .map(Some)
        .ok_or_else(|| UpError::Control("control returned no key".into()))
}

/// Starts the node of every private service.
pub async fn start(
    admin: &AdminClient,
    state: &StateDir,
    join: &str,
    services: &[(Service, String)],
) -> Result<Vec<ServiceNode>, UpError> {
    let known = admin
        .nodes()
        .await
        .map_err(|e| UpError::control("listing nodes", e))?;
    let mut configs = Vec::new();
    for (s, backend) in services {
        let Some(host) = s.mesh_hostname() else {
            continue;
        };
        let authkey = prepare(admin, state, s, &host, &known).await?;
        let route = gatehouse_node::serve::route::parse_route(&format!("/={backend}"))
            .map_err(|e| UpError::state(format!("service {}", s.name), e))?;
        let mut cfg = NodeConfig::new(state.node(&s.name), &host);
        cfg.control = Some(join.to_string());
        cfg.routes = vec![route];
        let registered = authkey.is_some();
        cfg.authkey = authkey;
        configs.push((s.name.clone(), cfg, registered));
    }
    let started = futures::future::join_all(configs.into_iter().map(
        |(service, cfg, registered)| async move {
            let node = gatehouse_node::start(cfg)
                .await
                .map_err(|e| UpError::Node {
                    service: service.clone(),
                    source: e.into(),
                })?;
            Ok::<_, UpError>(ServiceNode {
                service,
                node,
                registered,
            })
        },
    ))
    .await;
    let mut nodes = Vec::new();
    let mut first_error = None;
    for r in started {
        match r {
            Ok(n) => nodes.push(n),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        for n in nodes {
            n.node.shutdown().await;
        }
        return Err(e);
    }
    Ok(nodes)
}
