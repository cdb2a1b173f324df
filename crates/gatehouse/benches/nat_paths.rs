//! Paths through real NAT (root only: network namespaces, nftables
//! masquerade; the harness is the NAT tests' `tests/common/natnet.rs`),
//! with `gatehouse control` and `gatehouse node up` as release processes:
//!
//! 1. **Time to the first byte and to a direct path**: a node starts
//!    (`node up`, registration included) and fetches a small file from a
//!    peer's `serve` through its SOCKS5 as soon as it is ready. Behind
//!    symmetric NATs the first byte comes through the relay; behind
//!    endpoint-independent NATs, also the time until the path is direct
//!    (status polled every 20 ms).
//! 2. **One flow, three paths, same run**: a download through the relay
//!    (symmetric NATs), over the direct path disco found through
//!    endpoint-independent NATs, and over the direct-only plane as before
//!    relays (both nodes on public addresses, control with `--no-relay`).
//!
//! Run: `sudo cargo bench -p gatehouse --bench nat_paths` (256 MiB, 3
//! rounds; `-- --only first-byte` or `-- --only throughput` for one part). Under `cargo test --benches` it runs once with 16 MiB,
//! checking every byte.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic,
    clippy::print_stderr,
    dead_code
)]

#[path = "../tests/common/natnet.rs"]
mod natnet;

use gatehouse_testkit::nat::NatKind;
use natnet::Net;
use std::time::{Duration, Instant};

/// Starts node 1 (the server), then node 0, and fetches from 1 as soon as
/// 0 is ready: time from spawning node 0 to the first response, and (when
/// `direct`) to a direct path.
async fn first_byte(kinds: [NatKind; 2], direct: bool) -> (Duration, Option<Duration>) {
    let mut net = Net::without_nodes(&kinds, &[], &[]).await;
    net.start_node(1).await;
    let t0 = Instant::now();
    net.start_node(0).await;
    net.fetch_small(0, 1).await;
    let first = t0.elapsed();
    let to_direct = if direct {
        let deadline = Instant::now() + natnet::DEADLINE;
        loop {
            if net
                .via(0, 1)
                .await
                .is_some_and(|v| v.starts_with("direct "))
            {
                break Some(t0.elapsed());
            }
            assert!(Instant::now() < deadline, "no direct path");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        assert!(
            net.via(0, 1).await.is_some_and(|v| v.starts_with("relay ")),
            "behind symmetric NATs the path is the relay"
        );
        None
    };
    (first, to_direct)
}

/// Downloads `bytes` of the big file from node 1 to node 0 over the path
/// `kinds` and `control_args` lead to (after `prefix` is the path in use):
/// MiB/s.
async fn throughput(kinds: [NatKind; 2], control_args: &[&str], prefix: &str, bytes: u64) -> f64 {
    let mut net = Net::without_nodes(&kinds, &[], control_args).await;
    net.start_node(0).await;
    net.start_node(1).await;
    net.fetch_small(0, 1).await;
    net.wait_via(0, 1, prefix).await;
    let served = net.make_file("flow", bytes);
    let out = net.dir.path().join("download");
    let t = Instant::now();
    let status = net.curl(0, 1, "/flow", &out).wait().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success(), "download over {prefix} failed");
    assert!(natnet::same_file(&served, &out), "the download differs");
    assert!(
        net.via(0, 1).await.is_some_and(|v| v.starts_with(prefix)),
        "the path changed during the download"
    );
    bytes as f64 / (1 << 20) as f64 / secs
}

fn main() {
    if !gatehouse_testkit::process::is_root() {
        println!("nat_paths: skipped (needs root for network namespaces; CI runs as root)");
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    // `-- --only first-byte` or `-- --only throughput` runs one part.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let (rounds, bytes) = if full {
        (3, natnet::BIG)
    } else {
        (1, 16 << 20)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use NatKind::{EndpointIndependent as Eim, Public, Symmetric as Sym};
        if part("first-byte") {
        println!("Time from `node up` to the first byte from a peer, and to a direct path");
        println!("| round | symmetric NATs: first byte (relay) | endpoint-independent NATs: first byte | direct path |");
        println!("|---|---|---|---|");
        for r in 1..=rounds {
            let (relayed, _) = first_byte([Sym, Sym], false).await;
            let (first, direct) = first_byte([Eim, Eim], true).await;
            println!(
                "| {r} | {} ms | {} ms | {} ms |",
                relayed.as_millis(),
                first.as_millis(),
                direct.unwrap().as_millis()
            );
        }
        }
        if !part("throughput") {
            return;
        }
        println!();
        println!("One download of {} MiB, MiB/s", bytes >> 20);
        println!("| round | relayed (symmetric NATs) | direct through NAT (disco) | direct-only plane (public addresses, --no-relay) | relayed / direct | direct / direct-only |");
        println!("|---|---|---|---|---|---|");
        for r in 1..=rounds {
            let relayed = throughput([Sym, Sym], &[], "relay ", bytes).await;
            let direct = throughput([Eim, Eim], &[], "direct ", bytes).await;
            let before = throughput([Public, Public], &["--no-relay"], "direct ", bytes).await;
            println!(
                "| {r} | {relayed:.1} | {direct:.1} | {before:.1} | {:.2} | {:.2} |",
                relayed / direct,
                direct / before
            );
        }
    });
}
