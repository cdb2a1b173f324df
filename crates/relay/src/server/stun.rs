//! The STUN responder: answers binding requests on a UDP socket with the
//! address they came from.

use super::RelayMetrics;
use gatehouse_disco::stun;
use tokio::net::UdpSocket;

/// Answers STUN binding requests on `socket` until the task is dropped.
/// Anything that is not a well-formed binding request is ignored (counted
/// in `metrics`), never answered.
pub async fn serve_stun(socket: UdpSocket, metrics: RelayMetrics) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            // ICMP errors from earlier answers surface here; keep serving.
            Err(e) => {
                tracing::debug!(error = %e, "stun: receive error");
                continue;
            }
        };
        match stun::parse_binding_request(&buf[..n]) {
            Ok(tx) => {
                let resp = stun::binding_response(&tx, from);
                if let Err(e) = socket.send_to(&resp, from).await {
                    tracing::debug!(%from, error = %e, "stun: send error");
                    continue;
                }
                metrics.stun_answered.inc();
            }
            Err(_) => {
                metrics.stun_ignored.inc();
            }
        }
    }
}
