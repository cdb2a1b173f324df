//! What the node serves itself: `serve` on connections the data plane
//! accepts, and the local API (`gatehouse node status|ping|down`).

use super::state::unix;
use super::{Inner, spawn_conn};
use crate::api::{ApiRequest, ApiResponse, CertStatus, NodeStatus, PeerStatus, PlaneSummary};
use crate::plane::DataPlane;
use crate::serve;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl<P: DataPlane + std::fmt::Debug> Inner<P> {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        loop {
            let conn = tokio::select! {
                () = self.cancel.cancelled() => return,
                c = self.plane.accept() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            match (conn.local.port(), &self.serve) {
                (443, Some(cfg)) => {
                    // Over the cap, the connection is closed at once.
                    let Some(slot) = cfg.gate.admit() else {
                        tracing::debug!(remote = %conn.remote, "serve: listener full, connection closed");
                        continue;
                    };
                    let who = self.map.current().and_then(|m| m.caller(conn.remote.ip()));
                    spawn_conn(
                        &self.cancel,
                        serve::handle(conn.stream, slot, conn.remote, who, Arc::clone(cfg)),
                    );
                }
                (80, Some(cfg)) if self.cfg.redirect_http => {
                    let Some(slot) = cfg.redirect_gate.admit() else {
                        tracing::debug!(remote = %conn.remote, "serve: redirect listener full, connection closed");
                        continue;
                    };
                    spawn_conn(
                        &self.cancel,
                        serve::handle_redirect(conn.stream, slot, conn.remote, Arc::clone(cfg)),
                    );
                }
                (port, _) => {
                    tracing::debug!(remote = %conn.remote, port, "nothing serves this port");
                }
            }
        }
    }

    pub(super) async fn handle_api(&self, req: ApiRequest) -> ApiResponse {
        match req {
            ApiRequest::Status => ApiResponse::Status(Box::new(self.status())),
            ApiRequest::Down => {
                tracing::info!("stopping (local API)");
                self.cancel.cancel();
                ApiResponse::Ok
            }
            ApiRequest::Ping { peer } => self.ping(&peer).await,
        }
    }

    pub(super) async fn ping(&self, what: &str) -> ApiResponse {
        let Some(map) = self.map.current() else {
            return ApiResponse::Error {
                error: "no map from control yet".into(),
            };
        };
        let Some(peer) = map
            .find(what)
            .filter(|p| p.id != map.state.self_node.node.id)
        else {
            return ApiResponse::Error {
                error: format!("{what} is not a peer of this node"),
            };
        };
        let addr: Option<IpAddr> = what
            .parse::<IpAddr>()
            .ok()
            .or_else(|| peer.addresses.iter().copied().find(IpAddr::is_ipv4))
            .or_else(|| peer.addresses.first().copied());
        let Some(addr) = addr else {
            return ApiResponse::Error {
                error: format!("{} has no address", peer.fqdn),
            };
        };
        // A disco ping says which path the pong took; peers without path
        // discovery (or a data plane without it) get the WireGuard-level
        // probe.
        let answer = match self.plane.path_ping(addr).await {
            Ok((rtt, via)) => Ok((rtt, Some(via))),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                self.plane.ping(addr).await.map(|rtt| (rtt, None))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((rtt, via)) => ApiResponse::Pong {
                peer: peer.fqdn.clone(),
                addr,
                rtt_ms: rtt.as_secs_f64() * 1000.0,
                via,
            },
            Err(e) => ApiResponse::Error {
                error: format!("{}: {e}", peer.fqdn),
            },
        }
    }

    pub(super) fn status(&self) -> NodeStatus {
        let id = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let map = self.map.current();
        let plane = self.plane.status();
        let me = map.as_ref().map(|m| m.state.self_node.node.clone());
        let mut peers: Vec<PeerStatus> = map
            .as_ref()
            .map(|m| {
                m.state
                    .peers
                    .values()
                    .map(|p| PeerStatus {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        fqdn: p.fqdn.clone(),
                        addresses: p.addresses.clone(),
                        user: p.user.clone(),
                        tags: p.tags.clone(),
                        endpoints: p.endpoints.clone(),
                        path: plane.peers.get(&p.id).cloned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let certificate = self.certs.info().map(|i| CertStatus {
            serial: i.serial.clone(),
            not_after: unix(i.not_after),
            renew_at: unix(i.renew_at()),
            renewals: self.renewals.load(Ordering::Relaxed),
        });
        NodeStatus {
            ready: *self.ready_tx.borrow(),
            node_id: id.node_id.clone(),
            name: me.as_ref().map_or(id.name.clone(), |m| m.name.clone()),
            fqdn: me.as_ref().map_or(id.fqdn.clone(), |m| m.fqdn.clone()),
            addresses: me
                .as_ref()
                .map_or(id.addresses.clone(), |m| m.addresses.clone()),
            user: me.as_ref().and_then(|m| m.user.clone()),
            tags: me.as_ref().map(|m| m.tags.clone()).unwrap_or_default(),
            control: self
                .control
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            certificate,
            peers,
            plane: PlaneSummary {
                kind: plane.kind,
                listen: plane.listen,
                refused: plane.refused,
                public_key: plane.public_key,
                tun: plane.tun,
                home_relay: plane.home_relay,
                relays: plane.relays,
                reflexive: plane.reflexive,
            },
            serve: self
                .serve
                .as_ref()
                .map(|s| s.routes.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            socks5: self.bound.socks5,
            dns: self.bound.dns,
            metrics: self.bound.metrics,
        }
    }
}
