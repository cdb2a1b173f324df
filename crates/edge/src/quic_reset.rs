//! The keys behind the edge's QUIC stateless resets.
//!
//! A QUIC server gives each connection ID it issues a stateless reset
//! token, `HMAC(key, connection ID)`. When a packet arrives for a
//! connection the endpoint does not know (because the process that had it
//! crashed and a new one took the port), the endpoint answers with that
//! token, and the peer, which kept the token from the handshake, closes the
//! connection at once instead of waiting out its idle timeout. quinn also
//! answers only packets whose connection ID carries its keyed check value
//! (so that random packets get no answer). Both keys are random per process
//! by default, so a restarted edge could not reset anything. The edge
//! derives them instead from material that survives a restart and never
//! leaves the edge: the private key of its tunnel TLS certificate, through
//! HKDF-SHA256 with a fixed salt and one label per key (the TLS key cannot
//! be recovered from the derived keys or the tokens). A new certificate key
//! gives new tokens: connections made before a key rotation then end by
//! idle timeout after a crash, as before.

use rustls::pki_types::PrivateKeyDer;
use std::sync::Arc;
use std::time::Duration;

const SALT: &[u8] = b"gatehouse edge: QUIC stateless reset keys, v1";
const RESET_INFO: &[u8] = b"stateless reset token key";
const CID_INFO: &[u8] = b"connection id check key";

/// The derived keys could not be made (never, for ring's HKDF-SHA256 and
/// these output sizes; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("deriving the QUIC stateless reset keys")]
pub struct ResetKeyError(#[source] ring::error::Unspecified);

/// Output length of an HKDF expansion into a plain byte array.
struct Len(usize);

impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// An endpoint configuration whose stateless reset tokens and connection
/// ID checks are derived from `tls_key`, the edge's tunnel TLS key: the
/// same after a restart.
pub fn endpoint_config(
    tls_key: &PrivateKeyDer<'_>,
) -> Result<quinn::EndpointConfig, ResetKeyError> {
    let (reset, cid_key) = derive(tls_key)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    config
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        })
        // Every packet for an unknown connection gets its reset: quinn's
        // default of one per 20 ms for the whole endpoint would, after a
        // crash, answer a fraction of a fleet's connections and leave the
        // rest to their idle timeout. A reset is always smaller than the
        // packet that caused it, so answering each one amplifies nothing.
        .min_reset_interval(Duration::ZERO);
    Ok(config)
}

/// The reset token key and the connection ID check key.
fn derive(tls_key: &PrivateKeyDer<'_>) -> Result<(ring::hmac::Key, u64), ResetKeyError> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(tls_key.secret_der());
    let reset = prk
        .expand(&[RESET_INFO], ring::hmac::HMAC_SHA256)
        .map_err(ResetKeyError)?
        .into();
    let mut cid = [0u8; 8];
    prk.expand(&[CID_INFO], Len(cid.len()))
        .and_then(|okm| okm.fill(&mut cid))
        .map_err(ResetKeyError)?;
    Ok((reset, u64::from_le_bytes(cid)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    fn token(k: &ring::hmac::Key, cid: &[u8]) -> Vec<u8> {
        ring::hmac::sign(k, cid).as_ref().to_vec()
    }

    fn key_der(k: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(k.serialize_der().into())
    }

    #[test]
    fn the_same_tls_key_gives_the_same_keys_and_another_key_others() {
        let a = rcgen::KeyPair::generate().unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        let cid = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let (ra1, ca1) = derive(&key_der(&a)).unwrap();
        let (ra2, ca2) = derive(&key_der(&a)).unwrap();
        let (rb, cb) = derive(&key_der(&b)).unwrap();
        assert_eq!(token(&ra1, &cid), token(&ra2, &cid));
        assert_eq!(ca1, ca2);
        assert_ne!(token(&ra1, &cid), token(&rb, &cid));
        assert_ne!(ca1, cb);
        assert_ne!(token(&ra1, &cid), token(&ra1, &[9u8; 8]));
        // Derived with a purpose of their own: not an HMAC keyed with the
        // TLS key, and the two keys differ.
        let raw = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_der(&a).secret_der());
        assert_ne!(token(&ra1, &cid), token(&raw, &cid));
        assert_ne!(token(&ra1, &cid)[..8], ca1.to_le_bytes());
    }

    /// An edge endpoint: with the derived keys, or quinn's random ones.
    fn edge(cert: &rcgen::CertifiedKey<rcgen::KeyPair>, derived: bool) -> quinn::Endpoint {
        let mut tls = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key_der(&cert.signing_key))
            .unwrap();
        tls.alpn_protocols = vec![b"test".to_vec()];
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
        ));
        server.transport_config(gatehouse_tunnel_io::transport::quic_transport(
            Duration::from_secs(10),
            1,
        ));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = if derived {
            endpoint_config(&key_der(&cert.signing_key)).unwrap()
        } else {
            quinn::EndpointConfig::default()
        };
        gatehouse_tunnel_io::transport::quic_endpoint(loopback, Some(server), config).unwrap()
    }

    /// A UDP relay standing for the edge's port: the client talks to it, and
    /// it forwards to whichever edge endpoint is current (a restarted edge
    /// process takes over the same port).
    async fn relay(target: Arc<Mutex<SocketAddr>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        client = Some(from);
                        let to = *target.lock().unwrap();
                        let _ = back.send_to(&a[..n], to).await;
                    }
                    Ok((n, from)) = back.recv_from(&mut b) => {
                        let current = from == *target.lock().unwrap();
                        if let (Some(c), true) = (client, current) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        (addr, task)
    }

    /// Connects a client through the relay, then swaps the edge for a new
    /// endpoint (the first one never answers again, as if its process had
    /// been killed) and returns how the client's connection ended.
    async fn crash_and_restart(same_key: bool) -> quinn::ConnectionError {
        let cert = rcgen::generate_simple_self_signed(vec!["edge.test".to_owned()]).unwrap();
        let first = edge(&cert, true);
        let target = Arc::new(Mutex::new(first.local_addr().unwrap()));
        let (front, _relay) = relay(target.clone()).await;
        let accept = {
            let first = first.clone();
            tokio::spawn(async move { first.accept().await.unwrap().await.unwrap() })
        };

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let tls = gatehouse_ops::tls::client_config(Some(roots), &[b"test"]).unwrap();
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        client.transport_config(gatehouse_tunnel_io::transport::quic_transport(
            Duration::from_millis(250),
            1,
        ));
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let connector = gatehouse_tunnel_io::transport::quic_endpoint(
            loopback,
            None,
            quinn::EndpointConfig::default(),
        )
        .unwrap();
        let conn = connector
            .connect_with(client, front, "edge.test")
            .unwrap()
            .await
            .unwrap();
        let server_side = accept.await.unwrap();
        // One round trip on a stream: the handshake is confirmed on both
        // sides, so the client sends only short-header packets from now on
        // (the kind a stateless reset answers).
        let echo = {
            let s = server_side.clone();
            tokio::spawn(async move {
                let (mut send, mut recv) = s.accept_bi().await.unwrap();
                let got = recv.read_to_end(16).await.unwrap();
                send.write_all(&got).await.unwrap();
                send.finish().unwrap();
            })
        };
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(16).await.unwrap(), b"ping");
        echo.await.unwrap();
        // The old process is gone without a word; a new one listens.
        let second = edge(&cert, same_key);
        *target.lock().unwrap() = second.local_addr().unwrap();
        let ended = conn.closed().await;
        drop(server_side);
        ended
    }

    #[tokio::test]
    async fn a_restarted_edge_resets_connections_of_the_crashed_one() {
        assert_eq!(
            crash_and_restart(true).await,
            quinn::ConnectionError::Reset,
            "the client accepted the new endpoint's stateless reset"
        );
    }

    #[tokio::test]
    async fn with_a_random_key_the_client_waits_for_its_idle_timeout() {
        // The baseline the derived key fixes: quinn's default key differs
        // per endpoint, so the reset is not recognised.
        assert_eq!(
            crash_and_restart(false).await,
            quinn::ConnectionError::TimedOut
        );
    }
}
