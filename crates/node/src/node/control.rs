//! The control connection: the map stream (reconnecting with jittered
//! backoff, or after control's hint), endpoint announcements, and the map
//! applied to the data plane and the applications.

use super::Inner;
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

    /// Ready once a map arrived and the certificate in use is valid.
    pub(super) fn update_ready(&self) {
        let now = SystemTime::now();
        let cert_ok = self.certs.info().is_some_and(|i| i.not_after > now);
        let ready = cert_ok && self.map.current().is_some();
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
