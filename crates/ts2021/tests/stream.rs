//! The async stream over real byte streams (`tokio::io::duplex` and TCP on
//! loopback): handshakes, data both ways, refusals, bad records ending
//! only their connection, and every case of the early payload.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use gatehouse_ts2021::{
    ClientHandshake, ClientInfo, Error, HandshakeError, MachinePrivateKey, MachinePublicKey,
    NoiseStream, Transport, accept, accept_with_early_payload, connect,
};
use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};

const VERSION: u16 = 142;
/// Fails a test that would otherwise hang; nothing here is timed.
const DEADLINE: Duration = Duration::from_secs(60);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("deadline")
}

type Accepted<T> = Result<(NoiseStream<T>, ClientInfo), Error>;

/// The server side of a raw connection: reads the initiation from the
/// stream (as a test stand-in for the upgrade header), then accepts.
async fn serve<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    key: &MachinePrivateKey,
    early: Option<&[u8]>,
) -> Accepted<T> {
    let mut init = [0u8; 101];
    io.read_exact(&mut init).await?;
    match early {
        Some(json) => accept_with_early_payload(io, &init, key, json).await,
        None => accept(io, &init, key).await,
    }
}

async fn pair<T: AsyncRead + AsyncWrite + Unpin>(
    client_io: T,
    server_io: T,
    version: u16,
    early: Option<&[u8]>,
) -> (Result<NoiseStream<T>, Error>, Accepted<T>, MachinePublicKey) {
    let server = MachinePrivateKey::generate();
    let client = MachinePrivateKey::generate();
    let (c, s) = within(async {
        tokio::join!(
            connect(client_io, &client, server.public(), version),
            serve(server_io, &server, early)
        )
    })
    .await;
    (c, s, client.public())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Both ends send `len` bytes at once, then shut down; each must read
/// exactly the other's bytes up to the end of stream.
async fn exchange<T>(client: NoiseStream<T>, server: NoiseStream<T>, len: usize)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let run = |s: NoiseStream<T>, send: Vec<u8>| {
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(s);
            let writer = async move {
                w.write_all(&send).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let reader = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(writer, reader).1
        })
    };
    let (to_server, to_client) = (pattern(len, 1), pattern(len, 2));
    let c = run(client, to_server.clone());
    let s = run(server, to_client.clone());
    let (got_c, got_s) = within(async { (c.await.unwrap(), s.await.unwrap()) }).await;
    assert!(got_s == to_server, "server received other bytes");
    assert!(got_c == to_client, "client received other bytes");
}

#[tokio::test]
async fn duplex_handshake_and_a_mebibyte_each_way() {
    let (a, b) = duplex(64 * 1024);
    let (c, s, client_key) = pair(a, b, VERSION, None).await;
    let (client, server) = (c.unwrap(), s.unwrap());
    let (server, info) = server;
    assert_eq!(info.machine_key, client_key);
    assert_eq!(info.version, VERSION);
    assert_eq!(server.peer(), client_key);
    assert_eq!(client.version(), VERSION);
    assert_eq!(client.handshake_hash(), server.handshake_hash());
    exchange(client, server, 1 << 20).await;
}

#[tokio::test]
async fn tcp_handshake_and_data_each_way() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client_io, server_io) = within(async {
        let (c, s) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (c.unwrap(), s.unwrap().0)
    })
    .await;
    let (c, s, client_key) = pair(client_io, server_io, VERSION, None).await;
    let (server, info) = s.unwrap();
    assert_eq!(info.machine_key, client_key);
    exchange(c.unwrap(), server, 300_000).await;
}

#[tokio::test]
async fn old_clients_are_told_and_refused() {
    let (a, b) = duplex(4096);
    let (c, s, _) = pair(a, b, 100, None).await;
    match s {
        Err(Error::Handshake(HandshakeError::UnsupportedVersion {
            version: 100,
            min: 113,
        })) => {}
        other => panic!("server: {:?}", other.map(|_| ())),
    }
    match c {
        Err(Error::Handshake(HandshakeError::Refused { message })) => {
            assert_eq!(message, "unsupported client version")
        }
        other => panic!("client: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_client_of_another_server_gets_no_answer() {
    let (client_io, mut server_io) = duplex(4096);
    let key = MachinePrivateKey::generate();
    let (c, s) = within(async {
        tokio::join!(
            connect(
                client_io,
                &key,
                MachinePrivateKey::generate().public(),
                VERSION
            ),
            async {
                let mut init = [0u8; 101];
                server_io.read_exact(&mut init).await.unwrap();
                accept(server_io, &init, &MachinePrivateKey::generate()).await
            }
        )
    })
    .await;
    assert!(matches!(
        s,
        Err(Error::Handshake(HandshakeError::Decrypt { .. }))
    ));
    match c {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::UnexpectedEof),
        other => panic!("client: {:?}", other.map(|_| ())),
    }
}

/// A server stream and a raw client (its transport and byte stream), for
/// sending exactly the bytes a test wants.
async fn raw_client(early: Option<&[u8]>) -> (NoiseStream<DuplexStream>, Transport, DuplexStream) {
    let (mut client_io, server_io) = duplex(64 * 1024);
    let server = MachinePrivateKey::generate();
    let (hs, init) = ClientHandshake::new(
        &MachinePrivateKey::generate(),
        server.public(),
        VERSION,
        MachinePrivateKey::generate(),
    )
    .unwrap();
    let (stream, _) = match early {
        Some(json) => accept_with_early_payload(server_io, &init, &server, json).await,
        None => accept(server_io, &init, &server).await,
    }
    .unwrap();
    let mut response = [0u8; 51];
    within(client_io.read_exact(&mut response)).await.unwrap();
    (stream, hs.finish(&response).unwrap(), client_io)
}

fn sealed(t: &mut Transport, data: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    t.seal_record(data, &mut out).unwrap();
    out
}

#[tokio::test]
async fn a_tampered_record_ends_reading() {
    let (mut server, mut t, mut io) = raw_client(None).await;
    let good = sealed(&mut t, b"good");
    let mut bad = sealed(&mut t, b"bad!");
    bad[4] ^= 0x80;
    io.write_all(&good).await.unwrap();
    io.write_all(&bad).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within(server.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"good");
    let e = within(server.read(&mut buf)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    io.write_all(&sealed(&mut t, b"later")).await.unwrap();
    assert!(within(server.read(&mut buf)).await.is_err(), "stays closed");
}

#[tokio::test]
async fn an_oversize_record_is_refused_from_its_header() {
    let (mut server, _, mut io) = raw_client(None).await;
    // Only the header is sent: waiting for the body would hang.
    io.write_all(&[4, 0x10, 0x00]).await.unwrap();
    let e = within(server.read(&mut [0u8; 16])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.to_string().contains("4099 bytes"), "{e}");
}

#[tokio::test]
async fn a_record_cut_by_the_end_of_stream_is_an_error() {
    let (mut server, mut t, mut io) = raw_client(None).await;
    let rec = sealed(&mut t, b"cut short");
    io.write_all(&rec[..10]).await.unwrap();
    drop(io);
    let e = within(server.read(&mut [0u8; 16])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn empty_records_are_skipped() {
    let (mut server, mut t, mut io) = raw_client(None).await;
    io.write_all(&sealed(&mut t, b"")).await.unwrap();
    io.write_all(&sealed(&mut t, b"")).await.unwrap();
    io.write_all(&sealed(&mut t, b"data")).await.unwrap();
    drop(io);
    let mut got = Vec::new();
    within(server.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"data");
}

#[tokio::test]
async fn a_server_reads_the_magic_as_data() {
    // Only the server sends an early payload; a client's bytes are data.
    let (mut server, mut t, mut io) = raw_client(None).await;
    let early = gatehouse_ts2021::encode_early_payload(b"{}").unwrap();
    io.write_all(&sealed(&mut t, &early)).await.unwrap();
    drop(io);
    let mut got = Vec::new();
    within(server.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, early);
    assert_eq!(within(server.early_payload()).await.unwrap(), None);
}

// The early payload, on the client side.

const CHALLENGE: &[u8] = br#"{"nodeKeyChallenge":"chalpub:0000000000000000000000000000000000000000000000000000000000000000"}"#;

/// A client and a server stream over a duplex, the server having sent
/// `early` (if any) with its response.
async fn with_early(
    early: Option<&[u8]>,
) -> (NoiseStream<DuplexStream>, NoiseStream<DuplexStream>) {
    let (a, b) = duplex(64 * 1024);
    let (c, s, _) = pair(a, b, VERSION, early).await;
    (c.unwrap(), s.unwrap().0)
}

#[tokio::test]
async fn early_payload_absent() {
    let (mut client, mut server) = with_early(None).await;
    server.write_all(b"first bytes of HTTP/2").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(within(client.early_payload()).await.unwrap(), None);
    let mut buf = [0u8; 64];
    let n = within(client.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"first bytes of HTTP/2");
}

#[tokio::test]
async fn early_payload_present_then_data() {
    let (mut client, mut server) = with_early(Some(CHALLENGE)).await;
    server.write_all(b"after").await.unwrap();
    server.flush().await.unwrap();
    assert_eq!(
        within(client.early_payload()).await.unwrap().as_deref(),
        Some(CHALLENGE)
    );
    let mut buf = [0u8; 64];
    let n = within(client.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"after");
}

#[tokio::test]
async fn early_payload_is_stripped_for_a_reader_that_does_not_ask() {
    let (mut client, mut server) = with_early(Some(CHALLENGE)).await;
    server.write_all(b"after").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(client.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"after");
    assert_eq!(
        client.early_payload().await.unwrap().as_deref(),
        Some(CHALLENGE)
    );
}

#[tokio::test]
async fn early_payload_empty_and_large() {
    let (mut client, mut server) = with_early(Some(b"")).await;
    server.shutdown().await.unwrap();
    assert_eq!(
        within(client.early_payload()).await.unwrap().as_deref(),
        Some(&b""[..])
    );
    assert_eq!(within(client.read(&mut [0u8; 8])).await.unwrap(), 0);

    // Spans 8 records (and stays within the duplex's buffer: the server
    // sends it before the client reads).
    let big = pattern(30_000, 9);
    let (mut client, mut server) = with_early(Some(&big)).await;
    server.write_all(b"tail").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(client.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"tail");
    assert_eq!(
        client.early_payload().await.unwrap().as_deref(),
        Some(&big[..])
    );
}

#[tokio::test]
async fn first_bytes_shorter_than_the_early_header_are_kept() {
    let (mut client, mut server) = with_early(None).await;
    server.write_all(b"abc").await.unwrap();
    server.flush().await.unwrap();
    server.write_all(b"defghijklmn").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(client.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"abcdefghijklmn");
}

#[tokio::test]
async fn early_payload_declared_too_large_is_refused() {
    let (mut client, mut server) = with_early(None).await;
    let mut header = b"\xff\xff\xffTS".to_vec();
    header.extend_from_slice(&((10u32 << 20) + 1).to_be_bytes());
    server.write_all(&header).await.unwrap();
    server.flush().await.unwrap();
    let e = within(client.early_payload()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(within(client.read(&mut [0u8; 8])).await.is_err());
}

#[tokio::test]
async fn early_payload_cut_by_the_end_of_stream_is_an_error() {
    let (mut client, mut server) = with_early(None).await;
    let mut msg = b"\xff\xff\xffTS".to_vec();
    msg.extend_from_slice(&100u32.to_be_bytes());
    msg.extend_from_slice(b"{\"nodeKey");
    server.write_all(&msg).await.unwrap();
    server.shutdown().await.unwrap();
    let e = within(client.read(&mut [0u8; 8])).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);

    let (mut client, mut server) = with_early(None).await;
    server.write_all(b"\xff\xff").await.unwrap();
    server.shutdown().await.unwrap();
    let e = within(client.early_payload()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_server_that_closes_at_once_is_a_clean_end() {
    let (mut client, mut server) = with_early(None).await;
    server.shutdown().await.unwrap();
    assert_eq!(within(client.early_payload()).await.unwrap(), None);
    assert_eq!(within(client.read(&mut [0u8; 8])).await.unwrap(), 0);
}

#[tokio::test]
async fn an_oversize_early_payload_is_not_sent() {
    let (_, server_io) = duplex(64);
    let (_, init) = ClientHandshake::new(
        &MachinePrivateKey::generate(),
        MachinePrivateKey::generate().public(),
        VERSION,
        MachinePrivateKey::generate(),
    )
    .unwrap();
    let huge = vec![b' '; (10 << 20) + 1];
    let r =
        accept_with_early_payload(server_io, &init, &MachinePrivateKey::generate(), &huge).await;
    assert!(matches!(r, Err(Error::EarlyPayload(_))));
}
