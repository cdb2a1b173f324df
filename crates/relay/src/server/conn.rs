//! One client connection: handshake, then a single task that reads frames,
//! forwards packets and writes what is queued for the client.

use super::{Client, CloseReason, RelayServer};
use crate::frame::{self, Frame, MAX_CLIENT_INFO, MAX_FRAME, PROTOCOL_VERSION};
use crate::handshake::{self, ServerInfo};
use crate::ratelimit::{Rate, TokenBucket};
use crate::wire::Wire;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, timeout};

/// Spare room for a read while the client is quiet (an idle client should
/// cost little memory), and when it is busy.
const READ_IDLE: usize = 1 << 10;
const READ_BUSY: usize = 64 << 10;
/// Bytes written to a client per batch.
const WRITE_BUDGET: usize = 256 << 10;
/// PeerGone(NotHere) replies: one a second, a burst of three.
const NOT_HERE: Rate = Rate {
    per_sec: 1,
    burst: 3,
};

async fn write_frames(server: &RelayServer, wire: &mut Wire, frames: &[Frame]) -> bool {
    let mut out = BytesMut::new();
    for f in frames {
        frame::encode(f, &mut out);
    }
    matches!(
        timeout(server.config.handshake_timeout, wire.write(out.freeze())).await,
        Ok(Ok(()))
    )
}

/// Reads one frame during the handshake.
async fn read_frame(
    wire: &mut Wire,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Frame, &'static str> {
    loop {
        match frame::decode(buf, max) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(_) => return Err("malformed_handshake"),
        }
        buf.reserve(READ_IDLE);
        match wire.read(buf).await {
            Ok(0) | Err(_) => return Err("eof_in_handshake"),
            Ok(_) => {}
        }
    }
}

/// Serves one DERP connection to its end. `buf` holds bytes already read
/// from the stream (a fast-start client's ClientInfo may be there).
pub(crate) async fn serve(
    server: Arc<RelayServer>,
    mut wire: Wire,
    remote: SocketAddr,
    mut buf: BytesMut,
) {
    let hs = server.config.handshake_timeout;
    if !write_frames(
        &server,
        &mut wire,
        &[handshake::server_key_frame(&server.key)],
    )
    .await
    {
        server.metrics.refuse("io");
        return;
    }
    let ci = match timeout(hs, read_frame(&mut wire, &mut buf, MAX_CLIENT_INFO)).await {
        Ok(Ok(f)) => f,
        Ok(Err(why)) => {
            server.metrics.refuse(why);
            return;
        }
        Err(_) => {
            server.metrics.refuse("handshake_timeout");
            return;
        }
    };
    let (key, info) = match handshake::open_client_info(&server.key, &ci) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "relay: handshake refused");
            server.metrics.refuse("bad_client_info");
            wire.close().await;
            return;
        }
    };
    if server.shutting_down.load(Ordering::Acquire) {
        server.metrics.refuse("shutting_down");
        wire.close().await;
        return;
    }
    if !server.admission.admits(&key) {
        tracing::info!(%remote, %key, "relay: refused a key that is not a node of this network");
        server.metrics.refuse("not_admitted");
        wire.close().await;
        return;
    }
    let client = server.register(key, info.can_ack_pings);
    // The set may have changed between the check and the registration.
    if !server.admission.admits(&key) {
        server.unregister(&client);
        server.metrics.refuse("not_admitted");
        wire.close().await;
        return;
    }
    let rate = server.config.rate_limit;
    let mut first = vec![handshake::server_info_frame(
        &server.key,
        &key,
        &ServerInfo {
            version: PROTOCOL_VERSION,
            rate_bytes_per_sec: rate.map_or(0, |r| r.per_sec),
            burst_bytes: rate.map_or(0, |r| r.burst),
        },
    )];
    if info.can_ack_pings
        && let Some(h) = server
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    {
        first.push(Frame::Health(h));
    }
    if !write_frames(&server, &mut wire, &first).await {
        server.unregister(&client);
        server.metrics.close("write_error");
        return;
    }
    server.metrics.accepted.inc();
    tracing::debug!(%remote, %key, version = info.version, "relay: client connected");
    let why = run(&server, &client, &mut wire, buf).await;
    server.unregister(&client);
    server.metrics.close(why);
    tracing::debug!(%remote, %key, reason = why, "relay: client disconnected");
    wire.close().await;
}

fn keepalive_interval(server: &RelayServer) -> Duration {
    let jitter = server.config.keepalive_jitter;
    let extra = if jitter.is_zero() {
        Duration::ZERO
    } else {
        jitter.mul_f64(rand::random::<f64>())
    };
    server.config.keepalive + extra
}

/// The steady state; returns why the connection ends.
async fn run(
    server: &Arc<RelayServer>,
    client: &Arc<Client>,
    wire: &mut Wire,
    mut rbuf: BytesMut,
) -> &'static str {
    let now = Instant::now();
    let mut bucket = server
        .config
        .rate_limit
        .map(|r| TokenBucket::new(r, now.into_std()));
    let mut not_here = TokenBucket::new(NOT_HERE, now.into_std());
    let keepalive = tokio::time::sleep(keepalive_interval(server));
    tokio::pin!(keepalive);
    let mut busy = false;
    let mut wbuf = BytesMut::new();
    // Frames already read with the handshake come first.
    let mut pending = !rbuf.is_empty();
    loop {
        if !pending {
            let want = match frame::needed(&rbuf, MAX_FRAME) {
                Ok(Some(n)) if n > rbuf.len() => n - rbuf.len(),
                _ if busy => READ_BUSY,
                _ => READ_IDLE,
            };
            if rbuf.capacity() - rbuf.len() < want {
                rbuf.reserve(want);
            }
            tokio::select! {
                biased;
                () = client.wake.notified() => {}
                r = wire.read(&mut rbuf) => match r {
                    Ok(0) => return "eof",
                    Err(_) => return "read_error",
                    Ok(n) => {
                        busy = n >= READ_IDLE;
                        pending = true;
                    }
                },
                () = &mut keepalive => client.push_control(Frame::KeepAlive),
            }
        }
        if pending {
            pending = false;
            loop {
                match frame::decode(&mut rbuf, MAX_FRAME) {
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(key = %client.key, error = %e, "relay: malformed frame");
                        return "malformed";
                    }
                    Ok(Some(f)) => {
                        if let Err(why) = handle(server, client, f, &mut bucket, &mut not_here) {
                            return why;
                        }
                    }
                }
            }
            if rbuf.is_empty() && rbuf.capacity() > 4 * READ_IDLE {
                rbuf = BytesMut::new();
            }
        }
        // Write what is queued, then honour a close.
        loop {
            let (n, bytes, more) = client.drain(&mut wbuf, WRITE_BUDGET);
            if wbuf.is_empty() {
                break;
            }
            let out = wbuf.split().freeze();
            match timeout(server.config.write_timeout, wire.write(out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return "write_error",
                Err(_) => return "write_timeout",
            }
            server.metrics.packets_relayed.inc_by(n);
            server.metrics.bytes_relayed.inc_by(bytes);
            keepalive
                .as_mut()
                .reset(Instant::now() + keepalive_interval(server));
            if !more {
                break;
            }
        }
        if wbuf.capacity() > READ_BUSY {
            wbuf = BytesMut::new();
        }
        match client.closing() {
            CloseReason::Open => {}
            CloseReason::Revoked => return "revoked",
            CloseReason::Shutdown => return "shutdown",
        }
    }
}

/// One frame from the client.
fn handle(
    server: &Arc<RelayServer>,
    client: &Arc<Client>,
    f: Frame,
    bucket: &mut Option<TokenBucket>,
    not_here: &mut TokenBucket,
) -> Result<(), &'static str> {
    match f {
        Frame::SendPacket { dst, packet } => {
            let now = std::time::Instant::now();
            let cost = frame::HEADER_LEN + 32 + packet.len();
            if let Some(b) = bucket
                && !b.take(cost, now)
            {
                server.metrics.drop_packet("rate_limited");
                return Ok(());
            }
            server.note_sender(client);
            let disco = gatehouse_disco::disco::looks_like_disco(&packet)
                && packet.len() >= gatehouse_disco::disco::MIN_LEN;
            if !server.forward(client, dst, packet, disco) && disco && not_here.take(1, now) {
                client.push_control(Frame::PeerGone {
                    key: dst,
                    reason: frame::PeerGoneReason::NotHere,
                });
            }
        }
        Frame::NotePreferred(p) => {
            let was = client.preferred.swap(p, Ordering::AcqRel);
            match (was, p) {
                (false, true) => server.metrics.home_clients.inc(),
                (true, false) => server.metrics.home_clients.dec(),
                _ => 0,
            };
        }
        Frame::Ping(d) => {
            let mut q = client.lock();
            // One pong in flight at most; more pings are dropped.
            if !q.control.iter().any(|f| matches!(f, Frame::Pong(_))) {
                q.control.push_back(Frame::Pong(d));
            }
        }
        Frame::Mesh(ty) => {
            tracing::debug!(key = %client.key, ty, "relay: mesh frame from a client");
            return Err("mesh_frame");
        }
        // Anything else from a client (its own Pongs included) is skipped,
        // as Tailscale's server skips unknown frames.
        _ => {}
    }
    Ok(())
}
