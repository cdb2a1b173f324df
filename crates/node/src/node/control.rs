//! The control connection: the map stream (reconnecting with jittered
//! backoff, or after control's hint), endpoint announcements, and the map
//! applied to the data plane and the applications.

use super::state::{mark_expired, unix};
use super::{Inner, Refused};
use crate::api::ControlStatus;
use crate::netmap::Netmap;
use crate::plane::DataPlane;
use gatehouse_client::ClientError;
use gatehouse_ops::Retries;
use gatehouse_proto::control::{MapMessage, MapState, Peer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// First reconnect delay after losing control.
const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// Longest reconnect delay: a control restart costs nodes at most this much
/// once it listens again (each wait is drawn from the upper half, so nodes
/// spread out).
const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// Longest wait control may ask for before a reconnect.
const RECONNECT_HINT_CAP: Duration = Duration::from_secs(30);

/// How a map stream ended without an error.
enum StreamEnd {
    /// The node is stopping.
    Stopped,
    /// Control closed the stream.
    Closed,
    /// Control is restarting and asked for a reconnect after this delay.
    Reconnect(Duration),
}
/// A map stream silent for this long is considered dead (control sends
/// keepalives every 25 seconds by default).
const MAP_SILENCE: Duration = Duration::from_secs(90);

impl<P: DataPlane + std::fmt::Debug> Inner<P> {
    pub(super) fn set_control(&self, f: impl FnOnce(&mut ControlStatus)) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// Ready once a map arrived and the certificate in use is valid, until
    /// control refuses the node's identity.
    pub(super) fn update_ready(&self) {
        let now = SystemTime::now();
        let cert_ok = self.certs.info().is_some_and(|i| i.not_after > now);
        let refused = self.refused_tx.borrow().is_some();
        let ready = cert_ok && self.map.current().is_some() && !refused;
        self.ready_tx.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    pub(super) async fn control_loop(self: Arc<Self>) {
        let mut backoff = Retries::new(RECONNECT_BASE, RECONNECT_CAP);
        let mut state: Option<MapState> = None;
        loop {
            let result = self.run_stream(&mut state, &mut backoff).await;
            self.metrics.control_connected.set(0);
            let (error, delay) = match result {
                Ok(StreamEnd::Stopped) => return,
                Ok(StreamEnd::Reconnect(after)) => {
                    tracing::info!(
                        after_ms = after.as_millis(),
                        "control: restarting; reconnecting"
                    );
                    backoff.reset();
                    ("control is restarting".to_string(), after)
                }
                Ok(StreamEnd::Closed) => {
                    let e = "control closed the map stream".to_string();
                    tracing::warn!(error = %e, "control: map stream lost; reconnecting");
                    (e, backoff.next_delay())
                }
                Err(e) => {
                    if let Some(reason) = self.refusal(&e) {
                        self.identity_refused(reason);
                        return;
                    }
                    let e = gatehouse_ops::chain(&e);
                    tracing::warn!(error = %e, "control: map stream lost; reconnecting");
                    (e, backoff.next_delay())
                }
            };
            self.set_control(|c| {
                c.connected = false;
                c.last_error = Some(error);
            });
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Whether a failed call means control no longer accepts the node's
    /// identity: control answered `401` (an administrator expired the key
    /// or deleted the node), or the call failed after the key's lifetime
    /// ended (control then refuses the machine certificate in the TLS
    /// handshake, which says no more than that). Any other failure is
    /// transient and retried.
    pub(super) fn refusal(&self, e: &ClientError) -> Option<String> {
        if e.is_unauthorized() {
            return Some(gatehouse_ops::chain(e));
        }
        let expiry = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .key_expiry;
        (expiry <= unix(SystemTime::now())).then(|| {
            format!(
                "the node's key expired (at {expiry}, unix time); control refuses it: {}",
                gatehouse_ops::chain(e)
            )
        })
    }

    /// Control refused the node's identity: stop using it (the control
    /// loop ends, the node is no longer ready), mark the saved identity
    /// expired so no start loads it again, and tell the owner of the
    /// [`RunningNode`](super::RunningNode), which registers again. Once.
    pub(super) fn identity_refused(&self, reason: String) {
        let first = self.refused_tx.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            let unmarked = {
                let mut id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
                mark_expired(&self.cfg.state_dir, &mut id, unix(SystemTime::now())).err()
            };
            *r = Some(Refused {
                reason: reason.clone(),
                unmarked,
            });
            true
        });
        if !first {
            return;
        }
        tracing::warn!(
            %reason,
            "control: the node's key was expired or the node removed by control; its saved identity is marked expired"
        );
        if let Some(Some(e)) = self
            .refused_tx
            .borrow()
            .as_ref()
            .map(|r| r.unmarked.clone())
        {
            tracing::error!(error = %e, "the refused identity could not be marked expired in the state directory");
        }
        self.metrics.control_connected.set(0);
        self.set_control(|c| {
            c.connected = false;
            c.last_error = Some(reason);
        });
        self.update_ready();
    }

    async fn run_stream(
        &self,
        state: &mut Option<MapState>,
        backoff: &mut Retries,
    ) -> Result<StreamEnd, ClientError> {
        let mut stream = tokio::select! {
            () = self.cancel.cancelled() => return Ok(StreamEnd::Stopped),
            s = self.client.map() => s?,
        };
        self.set_control(|c| c.streams += 1);
        let mut first = true;
        let announce = self.plane.announce_wanted();
        loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => return Ok(StreamEnd::Stopped),
                n = tokio::time::timeout(MAP_SILENCE, stream.next()) => n,
                () = wanted(announce.as_deref()), if !first => {
                    self.announce_endpoints();
                    continue;
                }
            };
            let msg = match next {
                Err(_) => return Err(ClientError::Http("map stream silent too long".into())),
                Ok(r) => match r? {
                    Some(MapMessage::Reconnect { after_ms }) => {
                        let after = Duration::from_millis(after_ms).min(RECONNECT_HINT_CAP);
                        return Ok(StreamEnd::Reconnect(after));
                    }
                    Some(m) => m,
                    None => return Ok(StreamEnd::Closed),
                },
            };
            if first {
                if !matches!(msg, MapMessage::Full(_)) {
                    return Err(ClientError::Decode(
                        "first map message is not a full map".into(),
                    ));
                }
                first = false;
                backoff.reset();
                self.metrics.control_connected.set(1);
                self.set_control(|c| {
                    c.connected = true;
                    c.last_error = None;
                });
                tracing::info!("control: map stream open");
                self.announce_endpoints();
            }
            self.metrics.map_messages.inc();
            self.set_control(|c| c.map_messages += 1);
            self.apply(state, msg);
        }
    }

    fn announce_endpoints(&self) {
        let client = self.client.clone();
        // Loopback reaches only this machine: announce it only to a control
        // on this machine (whose other nodes are here too); control refuses
        // it from anywhere else.
        let local = client.control_is_local();
        let plane = Arc::clone(&self.plane);
        let turn = Arc::clone(&self.announcing);
        tokio::spawn(async move {
            let _turn = turn.lock().await;
            let mut body = plane.announcement();
            body.endpoints
                .retain(|ep| local || !ep.ip().to_canonical().is_loopback());
            if let Err(e) = client.set_endpoints(&body).await {
                tracing::warn!(error = %e, "control: announcing endpoints");
            }
        });
    }

    fn apply(&self, state: &mut Option<MapState>, msg: MapMessage) {
        match msg {
            MapMessage::Keepalive | MapMessage::Reconnect { .. } => return,
            MapMessage::Full(f) => *state = Some(MapState::from_full(f)),
            MapMessage::Delta(d) => match state.as_mut() {
                Some(s) => s.apply(MapMessage::Delta(d)),
                None => return,
            },
        }
        let Some(s) = state.as_ref() else { return };
        self.adopt_cert_from_map(&s.self_node.serving_cert);
        let peers: Vec<Peer> = s.peers.values().cloned().collect();
        self.plane.apply(&peers, &s.filter);
        self.plane.apply_relays(&s.relays);
        self.map_tx
            .send_replace(Some(Arc::new(Netmap::new(s.clone()))));
        self.update_ready();
    }
}

/// Resolves when the data plane asks for a new announcement (never, for
/// one that does not).
async fn wanted(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}
