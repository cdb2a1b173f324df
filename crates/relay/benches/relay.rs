//! The relay's costs, each against a baseline in the same run:
//!
//! 1. CPU per GiB relayed: two clients exchange 1400-byte packets through
//!    the relay (TLS both ways), against a plain TLS forwarder that copies
//!    the same bytes from one TLS connection to another, and against one
//!    direct TLS connection. Only the server's threads are counted (its
//!    own runtime, threads named `relay-srv`), the clients run elsewhere.
//!    The sender keeps at most 24 packets in flight (below the relay's
//!    per-destination queue of 32), for all three.
//! 2. Memory per idle client: a relay in a child process of its own; its
//!    RSS after 100 clients, and after N more (10,000 under `cargo bench`).
//!
//! Run: `cargo bench -p gatehouse-relay --bench relay`. Under `cargo test
//! --benches` it moves 4 MiB through each path and connects 200 idle
//! clients, checking every byte and every handshake.
//! `GATEHOUSE_BENCH_BYTES=N` and `GATEHOUSE_BENCH_CLIENTS=N` change the sizes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::{Bytes, BytesMut};
use gatehouse_relay::client::{ClientConfig, Connection};
use gatehouse_relay::{Frame, NodePublicKey, PrivateKey, RelayConfig, RelayServer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PACKET: usize = 1400;
const WINDOW: u64 = 24;
const SERVER_THREAD: &str = "relay-srv";

/// CPU seconds of this process's threads named `name`.
fn thread_cpu(name: &str) -> f64 {
    let tick = 100.0;
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let (u, s): (f64, f64) = (f[11].parse().unwrap(), f[12].parse().unwrap());
        total += (u + s) / tick;
    }
    total
}

fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap()
}

/// Two relay clients; `a` sends `bytes` to `b` in packets. Returns the
/// server's CPU seconds.
async fn through_relay(bytes: u64, srv: &tokio::runtime::Runtime) -> f64 {
    let pki = common::pki();
    let server = RelayServer::new(
        PrivateKey::generate(),
        RelayConfig::default(),
        Arc::new(|_: &NodePublicKey| true),
    )
    .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::server_tls(&pki, None));
    let s = Arc::clone(&server);
    srv.spawn(async move {
        let listener = TcpListener::from_std(std_listener).unwrap();
        loop {
            let (tcp, remote) = listener.accept().await.unwrap();
            let (acc, s) = (acceptor.clone(), Arc::clone(&s));
            tokio::spawn(async move {
                let tls = acc.accept(tcp).await.unwrap();
                s.serve_connection(tls, remote).await;
            });
        }
    });
    let cfg = ClientConfig::new(
        format!("https://127.0.0.1:{}", addr.port()),
        common::client_tls(&pki),
    );
    let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
    let mut a = Connection::connect(&cfg, &ka).await.unwrap();
    let mut b = Connection::connect(&cfg, &kb).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = Arc::clone(&got);
    let recv = tokio::spawn(async move {
        let mut total = 0u64;
        while total < bytes {
            if let Frame::RecvPacket { packet, .. } = b.recv().await.unwrap() {
                assert_eq!(packet.len(), PACKET);
                total += packet.len() as u64;
                g.store(total / PACKET as u64, Ordering::Release);
            }
        }
        total
    });
    let packets = bytes / PACKET as u64;
    let payload = Bytes::from(vec![0x5a; PACKET]);
    let dst = kb.public();
    let cpu0 = thread_cpu(SERVER_THREAD);
    let mut sent = 0u64;
    while sent < packets {
        let room = (got.load(Ordering::Acquire) + WINDOW)
            .saturating_sub(sent)
            .min(packets - sent);
        if room == 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let mut out = BytesMut::with_capacity(room as usize * (PACKET + 37));
        for _ in 0..room {
            gatehouse_relay::frame::encode_send_packet(&mut out, &dst, &payload);
        }
        a.send_raw(out.freeze()).await.unwrap();
        sent += room;
    }
    assert_eq!(recv.await.unwrap(), packets * PACKET as u64);
    let cpu = thread_cpu(SERVER_THREAD) - cpu0;
    assert_eq!(server.metrics().packets_relayed.get(), packets);
    cpu
}

/// The same bytes through a TLS forwarder (`hops == 2`: client → server →
/// client) or one TLS connection (`hops == 1`), in 1400-byte writes with
/// the same window. Returns the server's CPU seconds.
async fn through_tls(bytes: u64, hops: u8, srv: &tokio::runtime::Runtime) -> f64 {
    let pki = common::pki();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(common::server_tls(&pki, None));
    let got = Arc::new(AtomicU64::new(0));
    let g = Arc::clone(&got);
    srv.spawn(async move {
        let listener = TcpListener::from_std(std_listener).unwrap();
        let (t1, _) = listener.accept().await.unwrap();
        let mut src = acceptor.accept(t1).await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        if hops == 1 {
            let mut total = 0u64;
            while total < bytes {
                let n = src.read(&mut buf).await.unwrap();
                total += n as u64;
                g.store(total / PACKET as u64, Ordering::Release);
            }
            return;
        }
        let (t2, _) = listener.accept().await.unwrap();
        let mut dst = acceptor.accept(t2).await.unwrap();
        // Ends when the clients go (a reset included).
        while let Ok(n @ 1..) = src.read(&mut buf).await {
            if dst.write_all(&buf[..n]).await.is_err() || dst.flush().await.is_err() {
                return;
            }
        }
    });
    let connector = tokio_rustls::TlsConnector::from(common::client_tls(&pki));
    let dial = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        connector
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    let mut a = dial().await;
    let recv = if hops == 2 {
        let mut b = dial().await;
        let g = Arc::clone(&got);
        Some(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            while total < bytes {
                total += b.read(&mut buf).await.unwrap() as u64;
                g.store(total / PACKET as u64, Ordering::Release);
            }
        }))
    } else {
        None
    };
    let packets = bytes / PACKET as u64;
    let payload = vec![0x5a; PACKET];
    let cpu0 = thread_cpu(SERVER_THREAD);
    let mut sent = 0u64;
    while sent < packets {
        let room = (got.load(Ordering::Acquire) + WINDOW)
            .saturating_sub(sent)
            .min(packets - sent);
        if room == 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let mut out = Vec::with_capacity(room as usize * PACKET);
        for _ in 0..room {
            out.extend_from_slice(&payload);
        }
        a.write_all(&out).await.unwrap();
        a.flush().await.unwrap();
        sent += room;
    }
    if let Some(r) = recv {
        r.await.unwrap();
    } else {
        while got.load(Ordering::Acquire) < packets {
            tokio::task::yield_now().await;
        }
    }
    thread_cpu(SERVER_THREAD) - cpu0
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The child: a relay admitting everyone, on the certificate in `dir`;
/// prints its port and serves until killed.
fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cert = std::fs::read(format!("{dir}/cert.pem")).unwrap();
        let key = std::fs::read(format!("{dir}/key.pem")).unwrap();
        let chain: Vec<_> = rustls_pemfile::certs(&mut cert.as_slice())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pemfile::private_key(&mut key.as_slice())
            .unwrap()
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let server = RelayServer::new(
            PrivateKey::generate(),
            RelayConfig::default(),
            Arc::new(|_: &NodePublicKey| true),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        loop {
            let (tcp, remote) = listener.accept().await.unwrap();
            let (acc, s) = (acceptor.clone(), Arc::clone(&server));
            tokio::spawn(async move {
                if let Ok(tls) = acc.accept(tcp).await {
                    s.serve_connection(tls, remote).await;
                }
            });
        }
    });
}

/// Connects `n` clients (a few at a time) and keeps them.
async fn connect_many(cfg: &ClientConfig, n: usize, keep: &mut Vec<Connection>) {
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < 64 {
            let cfg = cfg.clone();
            set.spawn(async move {
                Connection::connect(&cfg, &PrivateKey::generate())
                    .await
                    .unwrap()
            });
            started += 1;
        }
        keep.push(set.join_next().await.unwrap().unwrap());
    }
}

async fn idle_memory(clients: usize) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki();
    std::fs::write(dir.path().join("cert.pem"), &pki.leaf_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &pki.key_pem).unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("GATEHOUSE_RELAY_BENCH_CHILD", dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        out.read_exact(&mut b).await.unwrap();
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let port: u16 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    let mut cfg = ClientConfig::new(
        format!("https://127.0.0.1:{port}"),
        common::client_tls(&pki),
    );
    cfg.connect_timeout = Duration::from_secs(60);
    let mut keep = Vec::new();
    connect_many(&cfg, 100, &mut keep).await;
    let before = (rss_kib(pid, "VmRSS:"), rss_kib(pid, "RssAnon:"));
    let t = Instant::now();
    connect_many(&cfg, clients, &mut keep).await;
    let took = t.elapsed();
    // Every client handshaken; one ping round trip on each would cost
    // memory of its own, so the count of handshakes is the check.
    assert_eq!(keep.len(), clients + 100);
    let after = (rss_kib(pid, "VmRSS:"), rss_kib(pid, "RssAnon:"));
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 * 1024.0 / clients as f64 / 1024.0;
    println!();
    println!(
        "Idle clients on one relay process ({clients} after 100, connected in {:.1} s)",
        took.as_secs_f64()
    );
    println!("| | before | after | per idle client |");
    println!("|---|---|---|---|");
    println!(
        "| RSS | {} KiB | {} KiB | {:.1} KiB |",
        before.0,
        after.0,
        per(after.0, before.0)
    );
    println!(
        "| anonymous RSS | {} KiB | {} KiB | {:.1} KiB |",
        before.1,
        after.1,
        per(after.1, before.1)
    );
    child.kill().await.unwrap();
}

fn main() {
    if let Ok(dir) = std::env::var("GATEHOUSE_RELAY_BENCH_CHILD") {
        child(&dir);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let bytes = env(
        "GATEHOUSE_BENCH_BYTES",
        if full { 1 << 30 } else { 4 << 20 },
    );
    // Whole packets only.
    let bytes = bytes / PACKET as u64 * PACKET as u64;
    let clients = env("GATEHOUSE_BENCH_CLIENTS", if full { 10_000 } else { 200 }) as usize;
    let rounds = if full { 3 } else { 1 };
    let srv = server_runtime();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{} MiB in {PACKET}-byte packets, at most {WINDOW} in flight; server CPU (its own thread) per GiB",
        bytes >> 20
    );
    println!(
        "| round | relay (DERP) | TLS forwarder (2 hops) | one TLS hop | relay / forwarder | relay / one hop |"
    );
    println!("|---|---|---|---|---|---|");
    for r in 1..=rounds {
        let relay = rt.block_on(through_relay(bytes, &srv)) / gib;
        let fwd = rt.block_on(through_tls(bytes, 2, &srv)) / gib;
        let one = rt.block_on(through_tls(bytes, 1, &srv)) / gib;
        println!(
            "| {r} | {relay:.2} s | {fwd:.2} s | {one:.2} s | {:.2} | {:.2} |",
            relay / fwd.max(1e-9),
            relay / one.max(1e-9)
        );
    }
    rt.block_on(idle_memory(clients));
}
