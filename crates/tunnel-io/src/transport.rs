//! Transport pieces both ends share: QUIC transport settings, the raw
//! handshake frames of the TLS/TCP fallback, and HTTP/2 stream opening.

use crate::stream::{BoxError, FrameReader, FrameWriter, StreamError, TunnelBody, h2pipe};
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use gatehouse_proto::{Frame, HEADER_LEN, MAX_PAYLOAD};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Path of the control stream on the HTTP/2 fallback.
pub const H2_CONTROL_PATH: &str = "/_gatehouse/control";
/// Path of request streams on the HTTP/2 fallback.
pub const H2_STREAM_PATH: &str = "/_gatehouse/stream";

/// Flow-control window of one request stream on the HTTP/2 fallback, as
/// QUIC's (`quic_transport`): one stream may have this much in flight.
pub const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Flow-control window of a whole HTTP/2 fallback connection, as QUIC's.
pub const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame either end of the fallback accepts (the protocol's
/// default is 16 KiB): a body crosses in a quarter as many frames.
pub const H2_MAX_FRAME: u32 = 64 * 1024;

/// QUIC transport settings: keep-alives every `heartbeat`, a connection is
/// dead after three heartbeats of silence; the peer may open
/// `peer_streams` bidirectional streams at once (the connector lets the edge
/// open many; the edge lets the connector open only its control stream).
pub fn quic_transport(heartbeat: Duration, peer_streams: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(heartbeat));
    if let Ok(idle) = quinn::IdleTimeout::try_from(heartbeat.saturating_mul(3)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(peer_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.initial_rtt(Duration::from_millis(100));
    t.stream_receive_window(quinn::VarInt::from_u32(2 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(QUIC_MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtud));
    Arc::new(t)
}

/// The largest QUIC packet (UDP payload) either end sends, or tells its
/// peer it accepts, once path MTU discovery has found the path allows it.
/// quinn's default stops at 1,452 bytes (Ethernet); paths with larger MTUs
/// (jumbo frames, loopback, some overlays) then carry a bulk transfer in
/// fewer, larger packets, and a 1,500-byte path still ends at 1,452.
///
/// It must stay at or below 6,550: quinn hands up to ten packets of the
/// current size to the kernel in one segmentation-offload send, which is
/// one UDP datagram of at most 65,507 bytes before the kernel splits it. A
/// larger value makes those sends fail; QUIC then reads them as lost, and
/// black-hole detection drops the connection to 1,200-byte packets.
pub const QUIC_MAX_UDP_PAYLOAD: u16 = 6_500;

/// Send priority of the control stream on QUIC, above request streams (0):
/// heartbeats and liveness probes do not queue behind bulk bodies.
pub const CONTROL_PRIORITY: i32 = 1;

/// Request streams the edge may open at once on a new QUIC connection.
/// quinn keeps state for every stream the peer is allowed to open (about
/// 70 bytes each, allocated up front), so a connection starts with a small
/// allowance and [`grown_stream_limit`] raises it as requests arrive.
pub const CONNECTOR_STREAMS_INITIAL: u32 = 128;

/// The most request streams the edge may have open at once on one QUIC
/// connection.
pub const CONNECTOR_STREAMS_MAX: u32 = 1 << 16;

/// The new stream allowance of a connection allowing `limit` streams with
/// `inflight` open, when it should grow: doubled once three quarters are in
/// use, so the edge rarely waits for credit, up to
/// [`CONNECTOR_STREAMS_MAX`]. Allowances never shrink.
pub fn grown_stream_limit(limit: u32, inflight: usize) -> Option<u32> {
    let used = u64::try_from(inflight).unwrap_or(u64::MAX);
    (used.saturating_mul(4) >= u64::from(limit) * 3 && limit < CONNECTOR_STREAMS_MAX)
        .then(|| limit.saturating_mul(2).min(CONNECTOR_STREAMS_MAX))
}

/// Kernel buffer size asked for each direction of the QUIC UDP socket. The
/// default (about 200 KiB) overflows during a bulk transfer: the dropped
/// datagrams are lost packets to QUIC, whose congestion controller then
/// slows the whole connection down. The kernel caps the value at
/// `net.core.rmem_max` / `wmem_max`.
pub const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A QUIC endpoint on a UDP socket bound to `bind`, with larger socket
/// buffers ([`UDP_SOCKET_BUFFER`], best effort). A client endpoint
/// (`server: None`) on an IPv6 address is made dual-stack where the system
/// allows it. `config` carries what the caller sets on the endpoint (the
/// edge: its stateless reset keys); the largest UDP payload is set here.
pub fn quic_endpoint(
    bind: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
    mut config: quinn::EndpointConfig,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() && server.is_none() {
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!(error = %e, "UDP socket not dual-stack");
        }
    }
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(UDP_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(UDP_SOCKET_BUFFER)),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "UDP {what} buffer size not set");
        }
    }
    socket.bind(&bind.into())?;
    config
        .max_udp_payload_size(QUIC_MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    quinn::Endpoint::new(config, server, socket.into(), Arc::new(quinn::TokioRuntime))
}

/// Writes one frame directly on a byte stream (handshake of the TCP fallback).
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), StreamError> {
    let mut buf = BytesMut::new();
    gatehouse_proto::encode(f, &mut buf).map_err(gatehouse_proto::CodecError::from)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads exactly one frame from a byte stream, never reading past it.
pub async fn read_raw<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, StreamError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD.min(64 * 1024) {
        return Err(
            gatehouse_proto::CodecError::from(gatehouse_proto::DecodeError::TooLarge(len)).into(),
        );
    }
    let mut buf = BytesMut::zeroed(HEADER_LEN + len);
    buf[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut buf[HEADER_LEN..]).await?;
    match gatehouse_proto::decode(&mut buf).map_err(gatehouse_proto::CodecError::from)? {
        Some(f) => Ok(f),
        None => Err(StreamError::Unexpected("partial")),
    }
}

/// Opens one stream on an HTTP/2 fallback connection (the edge is the
/// HTTP/2 client; the request body carries edge→connector frames and the
/// response body connector→edge frames).
pub fn open_h2(
    sender: &hyper::client::conn::http2::SendRequest<TunnelBody>,
    path: &str,
) -> Result<(FrameWriter, FrameReader), StreamError> {
    let (w, body) = h2pipe::writer();
    let req = http::Request::post(format!("http://gatehouse.tunnel{path}"))
        .body(body.boxed_unsync())
        .map_err(|e| StreamError::Body(Box::new(e)))?;
    let mut sender = sender.clone();
    let fut = sender.send_request(req);
    let io = |e: BoxError| std::io::Error::other(e);
    let s = futures::stream::once(fut)
        .map(move |res| match res {
            Ok(resp) if resp.status().is_success() => resp
                .into_body()
                .into_data_stream()
                .map_err(move |e| io(Box::new(e)))
                .boxed(),
            Ok(resp) => {
                let msg = format!("stream refused with {}", resp.status());
                futures::stream::once(async move { Err(std::io::Error::other(msg)) }).boxed()
            }
            Err(e) => futures::stream::once(async move { Err(std::io::Error::other(e)) }).boxed(),
        })
        .flatten();
    let reader = tokio_util::io::StreamReader::new(Box::pin(s));
    Ok((w, FrameReader::new(Box::new(reader))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_allowance_doubles_at_three_quarters_up_to_the_cap() {
        assert_eq!(grown_stream_limit(128, 0), None);
        assert_eq!(grown_stream_limit(128, 95), None);
        assert_eq!(grown_stream_limit(128, 96), Some(256));
        assert_eq!(grown_stream_limit(256, 200), Some(512));
        let mut limit = CONNECTOR_STREAMS_INITIAL;
        while let Some(n) = grown_stream_limit(limit, usize::MAX) {
            assert!(n > limit);
            limit = n;
        }
        assert_eq!(limit, CONNECTOR_STREAMS_MAX);
    }

    /// A bulk transfer from the connector's end on loopback (MTU 65,536):
    /// path MTU discovery raises the packet size above Ethernet's, and the
    /// offloaded sends of those larger packets all go out (a batch the
    /// kernel refuses is lost whole and trips black-hole detection).
    #[tokio::test]
    async fn bulk_transfer_uses_larger_packets_where_the_path_allows() {
        let cert = rcgen::generate_simple_self_signed(vec!["edge.test".to_owned()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut server_tls =
            rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![der.clone()], key)
                .unwrap();
        server_tls.alpn_protocols = vec![b"test".to_vec()];
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
        ));
        server.transport_config(quic_transport(Duration::from_secs(5), 1));
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let edge = quic_endpoint(loopback, Some(server), quinn::EndpointConfig::default()).unwrap();
        let edge_addr = edge.local_addr().unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client_tls = gatehouse_ops::tls::client_config(Some(roots), &[b"test"]).unwrap();
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
        ));
        client.transport_config(quic_transport(Duration::from_secs(5), 1));
        let connector = quic_endpoint(loopback, None, quinn::EndpointConfig::default()).unwrap();

        const TOTAL: usize = 64 << 20;
        let receiver = tokio::spawn(async move {
            let conn = edge.accept().await.unwrap().await.unwrap();
            let (_, mut recv) = conn.accept_bi().await.unwrap();
            let mut got = 0;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
                got += chunk.bytes.len();
            }
            got
        });
        let conn = connector
            .connect_with(client, edge_addr, "edge.test")
            .unwrap()
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let block = bytes::Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..TOTAL >> 20 {
            send.write_chunk(block.clone()).await.unwrap();
        }
        send.finish().unwrap();
        assert_eq!(receiver.await.unwrap(), TOTAL);

        let path = conn.stats().path;
        assert!(
            path.current_mtu > 1452,
            "packets stayed at {} bytes: {path:?}",
            path.current_mtu
        );
        assert!(path.current_mtu <= QUIC_MAX_UDP_PAYLOAD);
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
    }
}
