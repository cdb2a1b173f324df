//! A node's map stream, whatever protocol it speaks: the full map, then
//! each delta the hub computes for it, keep-alives while nothing changes,
//! and a goodbye when control stops. The protocol front ends differ only in
//! how a message is encoded ([`MapEncoding`]).

use crate::App;
use crate::error::ApiErr;
use crate::hub::StreamHandle;
use crate::store::NodeRow;
use axum::body::Body;
use bytes::Bytes;
use gatehouse_proto::control::{FullMap, MapDelta};
use std::convert::Infallible;
use std::sync::Arc;

/// How one protocol writes the stream's messages.
pub(crate) trait MapEncoding: Send + 'static {
    /// The first message: everything.
    fn full(&mut self, m: FullMap) -> Bytes;
    /// A change.
    fn delta(&mut self, d: MapDelta) -> Bytes;
    /// Nothing changed for a while.
    fn keepalive(&mut self) -> Bytes;
    /// Control is stopping, with `streams` streams open: a last message
    /// (a reconnect hint), or none and the stream just ends.
    fn goodbye(&mut self, streams: usize) -> Option<Bytes>;
}

/// A map stream being served; closing it (the client went away) frees its
/// slot.
struct Streaming<E: MapEncoding> {
    app: Arc<App>,
    handle: StreamHandle,
    first: Option<Bytes>,
    ephemeral: bool,
    encoding: E,
    /// Control's shutdown signal.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The goodbye was sent: the stream ends.
    said_goodbye: bool,
}

/// Opens `node`'s map stream (replacing any it had): the response body.
pub(crate) async fn open<E: MapEncoding>(
    app: &Arc<App>,
    node: &NodeRow,
    mut encoding: E,
) -> Result<Body, ApiErr> {
    let (full, handle) = app
        .hub
        .open_stream(&node.id)
        .ok_or_else(|| ApiErr::unauthorized("unknown, deleted or expired node"))?;
    app.store.touch_node(&node.id, app.now()).await?;
    app.metrics.streams.inc();
    let s = Streaming {
        app: Arc::clone(app),
        handle,
        first: Some(encoding.full(full)),
        ephemeral: node.ephemeral,
        encoding,
        stopping: app.stopping.subscribe(),
        said_goodbye: false,
    };
    Ok(Body::from_stream(futures::stream::unfold(s, next_message)))
}

impl<E: MapEncoding> Drop for Streaming<E> {
    fn drop(&mut self) {
        self.app.hub.close_stream(&self.handle);
        self.app.metrics.streams.dec();
        if self.ephemeral {
            let app = Arc::clone(&self.app);
            let id = self.handle.node_id.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    tokio::time::sleep(app.config.ephemeral_grace).await;
                    let online = app
                        .hub
                        .list()
                        .iter()
                        .any(|(p, _, online)| p.id == id && *online);
                    if !online
                        && app.hub.node(&id).is_some()
                        && let Err(e) = app
                            .delete_node(&id, "control", "ephemeral node went offline")
                            .await
                    {
                        tracing::warn!(node = %id, error = %e, "deleting an ephemeral node");
                    }
                });
            }
        }
    }
}

async fn next_message<E: MapEncoding>(
    mut s: Streaming<E>,
) -> Option<(Result<Bytes, Infallible>, Streaming<E>)> {
    if let Some(first) = s.first.take() {
        s.app.metrics.map_messages.inc();
        return Some((Ok(first), s));
    }
    if s.said_goodbye {
        return None;
    }
    let keepalive = s.app.config.keepalive;
    loop {
        if *s.stopping.borrow_and_update() {
            s.said_goodbye = true;
            let streams = s.app.hub.stream_count();
            let last = s.encoding.goodbye(streams)?;
            return Some((Ok(last), s));
        }
        tokio::select! {
            r = s.stopping.changed() => if r.is_err() { return None },
            () = s.handle.notify.notified() => {
                match s.app.hub.delta(&mut s.handle) {
                    Err(_) => return None,
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => {
                        s.app.metrics.map_messages.inc();
                        let msg = s.encoding.delta(d);
                        return Some((Ok(msg), s));
                    }
                }
            }
            () = tokio::time::sleep(keepalive) => {
                let msg = s.encoding.keepalive();
                return Some((Ok(msg), s));
            }
        }
    }
}
