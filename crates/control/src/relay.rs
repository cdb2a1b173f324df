//! The relays nodes are given (docs/decisions/0029-paths-through-nat.md):
//! control's own embedded relay by default, a relay map of standalone
//! relays, or none.

use gatehouse_proto::control::{RelayMap, RelayNode, RelayRegion};
use std::net::SocketAddr;

/// Packets the embedded relay queues per destination before dropping the
/// oldest. Tailscale's relay keeps 32; a node's user-space TCP sends a
/// whole window in one burst and recovers from loss slowly, so bursts are
/// absorbed instead of dropped.
pub const EMBEDDED_QUEUE_DEPTH: usize = 512;

/// The region id of control's embedded relay in the map nodes get.
pub const EMBEDDED_REGION: u16 = 900;

/// Which relays control hands to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayMode {
    /// Control serves a relay at `/derp` on its own listener and a STUN
    /// responder on `stun`; the map has one region for them.
    Embedded {
        /// UDP address of the STUN responder (port 0 picks one).
        stun: SocketAddr,
    },
    /// These relays (standalone ones); control serves none.
    Map(RelayMap),
    /// No relays: nodes reach each other only at announced endpoints.
    Off,
}

/// The map for control's embedded relay reached at `host:port`, its STUN
/// responder on `stun_port`.
pub fn embedded_map(host: &str, port: u16, stun_port: u16) -> RelayMap {
    RelayMap {
        regions: vec![RelayRegion {
            id: EMBEDDED_REGION,
            code: "control".into(),
            name: "Control's embedded relay".into(),
            nodes: vec![RelayNode {
                name: "control".into(),
                host: host.to_string(),
                port,
                stun_port: Some(stun_port),
            }],
        }],
    }
}

/// Why a relay map was refused.
#[derive(Debug, thiserror::Error)]
pub enum RelayMapError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It is not a relay map (YAML or JSON).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Cause.
        source: serde_yaml_ng::Error,
    },
    /// It parses but is not usable.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Reads and checks a relay map file (YAML, of which JSON is a subset).
pub fn load_map(path: &std::path::Path) -> Result<RelayMap, RelayMapError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RelayMapError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut map: RelayMap =
        serde_yaml_ng::from_str(&text).map_err(|source| RelayMapError::Parse {
            path: shown.clone(),
            source,
        })?;
    check_map(&map).map_err(|why| RelayMapError::Invalid { path: shown, why })?;
    map.regions.sort_by_key(|r| r.id);
    Ok(map)
}

/// Refuses a map nodes could not use: no region, duplicate or zero region
/// ids, duplicate codes or relay names, a region without relays, a host
/// that is neither a DNS name nor an address, port 0.
pub fn check_map(map: &RelayMap) -> Result<(), String> {
    if map.regions.is_empty() {
        return Err("the relay map has no region (use --no-relay to run without relays)".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut codes = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for r in &map.regions {
        let at = format!("region {} ({:?})", r.id, r.code);
        if r.id == 0 {
            return Err(format!("{at}: region ids start at 1"));
        }
        if !ids.insert(r.id) {
            return Err(format!("{at}: the id is used twice"));
        }
        if !gatehouse_names::is_label(&r.code) {
            return Err(format!("{at}: the code must be a DNS label"));
        }
        if !codes.insert(r.code.as_str()) {
            return Err(format!("{at}: the code is used twice"));
        }
        if r.nodes.is_empty() {
            return Err(format!("{at}: no relay in the region"));
        }
        for n in &r.nodes {
            let at = format!("{at}, relay {:?}", n.name);
            if n.name.is_empty() || !names.insert(n.name.as_str()) {
                return Err(format!("{at}: relay names must be present and unique"));
            }
            if n.host.parse::<std::net::IpAddr>().is_err() && !gatehouse_names::is_name(&n.host) {
                return Err(format!(
                    "{at}: host {:?} is neither a DNS name nor an address",
                    n.host
                ));
            }
            if n.port == 0 || n.stun_port == Some(0) {
                return Err(format!("{at}: port 0"));
            }
        }
    }
    Ok(())
}

/// The embedded relay's private key, kept in the state directory.
pub(crate) fn load_or_create_key(
    state_dir: &std::path::Path,
) -> Result<gatehouse_relay::PrivateKey, crate::ControlError> {
    crate::state_key(state_dir, "relay.key", || {
        gatehouse_relay::PrivateKey::generate().to_bytes()
    })
    .map(gatehouse_relay::PrivateKey::from_bytes)
}

/// Control's embedded relay: it admits the nodes that are in the mesh now
/// (registered, key not expired), asking the hub on each connection.
pub(crate) fn embedded(
    key: gatehouse_relay::PrivateKey,
    app: std::sync::Weak<crate::App>,
) -> Option<std::sync::Arc<gatehouse_relay::RelayServer>> {
    let admit = move |k: &gatehouse_relay::NodePublicKey| {
        app.upgrade()
            .is_some_and(|app| app.hub.is_member(&k.to_base64()))
    };
    let config = gatehouse_relay::RelayConfig {
        queue_depth: EMBEDDED_QUEUE_DEPTH,
        ..gatehouse_relay::RelayConfig::default()
    };
    match gatehouse_relay::RelayServer::new(key, config, std::sync::Arc::new(admit)) {
        Ok(r) => Some(r),
        // The default configuration is always valid.
        Err(e) => {
            tracing::error!(error = %e, "embedded relay");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(yaml: &str) -> Result<RelayMap, String> {
        let m: RelayMap = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        check_map(&m).map(|()| m)
    }

    #[test]
    fn a_map_of_standalone_relays_is_accepted() {
        let m = map(
            "regions:\n- id: 1\n  code: fra\n  nodes:\n  - {name: fra1, host: relay.example.com, port: 443, stun_port: 3478}\n- id: 2\n  code: home\n  nodes: [{name: h, host: 192.0.2.1, port: 8443}]\n",
        )
        .unwrap();
        assert_eq!(m.regions.len(), 2);
        assert_eq!(m.regions[0].nodes[0].stun_port, Some(3478));
        // JSON is YAML too.
        map(r#"{"regions":[{"id":7,"code":"x","nodes":[{"name":"a","host":"a.example","port":443}]}]}"#).unwrap();
    }

    #[test]
    fn unusable_maps_are_refused_saying_why() {
        for (yaml, why) in [
            ("regions: []\n", "no region"),
            (
                "regions:\n- {id: 0, code: a, nodes: [{name: a, host: a.example, port: 1}]}\n",
                "start at 1",
            ),
            (
                "regions:\n- {id: 1, code: a, nodes: [{name: a, host: a.example, port: 1}]}\n- {id: 1, code: b, nodes: [{name: b, host: a.example, port: 1}]}\n",
                "used twice",
            ),
            ("regions:\n- {id: 1, code: a, nodes: []}\n", "no relay"),
            (
                "regions:\n- {id: 1, code: a, nodes: [{name: a, host: 'bad host', port: 1}]}\n",
                "neither",
            ),
            (
                "regions:\n- {id: 1, code: a, nodes: [{name: a, host: a.example, port: 0}]}\n",
                "port 0",
            ),
            (
                "regions:\n- {id: 1, code: 'no code', nodes: [{name: a, host: a.example, port: 1}]}\n",
                "DNS label",
            ),
        ] {
            let e = map(yaml).unwrap_err();
            assert!(e.contains(why), "{yaml}: {e}");
        }
    }
}
