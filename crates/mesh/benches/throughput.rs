//! End-to-end TCP throughput between two `Mesh` instances in user-space
//! mode over loopback UDP (WireGuard, the filter, smoltcp on both ends),
//! against kernel TCP over loopback as the baseline, in the same run.
//!
//! Run: `cargo bench -p gatehouse-mesh --bench throughput`. Under
//! `cargo test --benches` it moves one MiB through each and checks it.
//! `GATEHOUSE_BENCH_BYTES=N` sets the size of the transfer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_mesh::testing::{TestNode, start_all};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const POLICY: &str = r#"{
  "tagOwners": {"tag:blog": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:443"]}],
}"#;

async fn send(mut w: impl AsyncWrite + Unpin, bytes: usize) {
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
}

async fn drain(mut r: impl AsyncRead + Unpin) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let expect = vec![0x5au8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        // memcmp, not a byte loop: the check must not dominate the receiver.
        assert!(buf[..n] == expect[..n], "corrupted data");
        total += n;
    }
}

async fn mesh(bytes: usize) -> Duration {
    let nodes = [
        TestNode::new("laptop", 1, Some("alice@example.com"), &[]),
        TestNode::new("blog", 2, Some("alice@example.com"), &["tag:blog"]),
    ];
    let meshes = start_all(POLICY, &nodes).await.unwrap();
    let (laptop, blog) = (&meshes[0], &meshes[1]);
    let dst = SocketAddr::new(nodes[1].ip(), 443);
    let (c, a) = tokio::join!(laptop.connect(dst), blog.accept());
    let (c, a) = (c.unwrap(), a.unwrap());
    let start = Instant::now();
    let (_, got) = tokio::join!(send(c, bytes), drain(a.stream));
    let took = start.elapsed();
    assert_eq!(got, bytes);
    for m in meshes {
        m.shutdown().await;
    }
    took
}

async fn kernel(bytes: usize) -> Duration {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, a) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
    let (c, (a, _)) = (c.unwrap(), a.unwrap());
    let start = Instant::now();
    let (_, got) = tokio::join!(send(c, bytes), drain(a));
    let took = start.elapsed();
    assert_eq!(got, bytes);
    took
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (bytes, rounds) = if full { (1 << 30, 3) } else { (1 << 20, 1) };
    let bytes = std::env::var("GATEHOUSE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(bytes);
    println!(
        "One TCP flow, {} MiB, two tokio worker threads",
        bytes >> 20
    );
    println!("| round | mesh (user space, loopback UDP) | kernel TCP loopback | mesh / kernel |");
    println!("|---|---|---|---|");
    for r in 1..=rounds {
        let m = gbps(bytes, mesh(bytes).await);
        let k = gbps(bytes, kernel(bytes).await);
        println!("| {r} | {m:.2} Gb/s | {k:.2} Gb/s | {:.2} |", m / k);
    }
}
