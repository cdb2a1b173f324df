//! Cross-check of the control transport (`gatehouse-ts2021`) against
//! Tailscale's own Rust implementation, over TCP on loopback: their client
//! (`ts_control_noise`) through our server's handshake, and our client
//! through a server made of their handshake (`ts_noise`) and their record
//! codec. Messages of several records each way, so the nonce counts past
//! zero (their codec's nonce is big-endian, as Tailscale's Go code).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{SinkExt, StreamExt};
use gatehouse_ts2021::upgrade::decode_handshake_header;
use gatehouse_ts2021::{MachinePrivateKey, MachinePublicKey, accept, connect};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use ts_capabilityversion::CapabilityVersion;
use ts_control_noise::{BiCodec, Handshake};

/// Fails a test that would otherwise hang; nothing here is timed.
const DEADLINE: Duration = Duration::from_secs(60);

fn message() -> Vec<u8> {
    let mut m = b"hello from the client; ".to_vec();
    m.extend((0..10_000u32).map(|i| (i % 251) as u8));
    m.extend_from_slice(b"; bye");
    m
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (c.unwrap(), s.unwrap().0)
}

#[tokio::test]
async fn their_client_our_server() {
    tokio::time::timeout(DEADLINE, async {
        let (client_io, server_io) = tcp_pair().await;
        let server_key = MachinePrivateKey::generate();
        let theirs = ts_keys::MachineKeyPair::random();
        let version = CapabilityVersion::CURRENT;
        let (handshake, header) = Handshake::initialize(
            &format!("Tailscale Control Protocol v{version}"),
            &theirs,
            &ts_keys::MachinePublicKey::from_bytes(server_key.public().0),
            version,
        );

        // Our server, given the header's text as control's upgrade handler
        // is; it echoes what it reads.
        let server = tokio::spawn(async move {
            let init = decode_handshake_header(header.as_bytes()).unwrap();
            let (stream, client) = accept(server_io, &init, &server_key).await.unwrap();
            let (mut r, mut w) = tokio::io::split(stream);
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
            client
        });

        let mut conn = handshake.complete(client_io, &theirs).await.unwrap();
        let sent = message();
        conn.write_all(&sent).await.unwrap();
        conn.flush().await.unwrap();
        let mut echoed = vec![0u8; sent.len()];
        conn.read_exact(&mut echoed).await.unwrap();
        assert!(echoed == sent, "our server echoed other bytes");
        conn.shutdown().await.unwrap();

        let client = server.await.unwrap();
        assert_eq!(
            client.machine_key,
            MachinePublicKey(theirs.public.to_x25519_dalek().to_bytes())
        );
        assert_eq!(client.version, u16::from(version));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn our_client_their_server() {
    tokio::time::timeout(DEADLINE, async {
        let (client_io, mut server_io) = tcp_pair().await;
        let theirs = ts_keys::MachineKeyPair::random();
        let their_public = MachinePublicKey(theirs.public.to_x25519_dalek().to_bytes());
        let ours = MachinePrivateKey::generate();
        let version = 142u16;

        // Their server: the Noise responder and the record codec, with
        // controlbase's framing around the handshake messages.
        let server = tokio::spawn(async move {
            let mut init = [0u8; 101];
            server_io.read_exact(&mut init).await.unwrap();
            assert_eq!(&init[2..5], &[1, 0, 96]);
            let version = u16::from_be_bytes([init[0], init[1]]);
            let prologue = format!("Tailscale Control Protocol v{version}");
            let received = ts_noise::ik::ReceivedHandshake::new(
                &mut init[5..],
                prologue.as_bytes(),
                &theirs.to_x25519_dalek(),
            )
            .expect("their server accepts our initiation");
            let client_key = received.peer_static_pub.to_bytes();
            let mut response = [0u8; 51];
            response[..3].copy_from_slice(&[2, 0, 48]);
            let session = received.finish(&mut response[3..]);
            server_io.write_all(&response).await.unwrap();

            let mut framed = Framed::new(server_io, BiCodec::from(session));
            let want = message().len();
            let mut got = Vec::new();
            while got.len() < want {
                let chunk = framed.next().await.unwrap().unwrap();
                got.extend_from_slice(&chunk);
            }
            framed.send(&got[..]).await.unwrap();
            (client_key, got)
        });

        let mut stream = connect(client_io, &ours, their_public, version)
            .await
            .unwrap();
        let sent = message();
        stream.write_all(&sent).await.unwrap();
        stream.flush().await.unwrap();
        let mut echoed = vec![0u8; sent.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert!(echoed == sent, "their server echoed other bytes");

        let (client_key, got) = server.await.unwrap();
        assert_eq!(client_key, ours.public().0);
        assert!(got == sent, "their server received other bytes");
    })
    .await
    .unwrap();
}
