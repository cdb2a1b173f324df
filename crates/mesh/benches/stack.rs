//! The user-space TCP/IP stack with idle connections, sharded vs not, in
//! one run: two stacks wired back to back in memory (no WireGuard, no
//! sockets), `N` idle connections open between them, then one bulk
//! transfer over one more connection. smoltcp visits every socket of an
//! interface per packet and per poll, so idle sockets slow one interface
//! down; spread over 64 interfaces, each packet meets a 64th of them.
//!
//! Run: `cargo bench -p gatehouse-mesh --bench stack`. Under
//! `cargo test --benches` it moves a little data through a few sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_mesh::stack::bench::transfer;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (mut idles, bytes): (Vec<usize>, usize) = if full {
        (vec![1, 1_000, 10_000], 256 << 20)
    } else {
        (vec![1, 50], 1 << 20)
    };
    // GATEHOUSE_BENCH_IDLE=N: only that case (to compare shard counts quickly).
    if let Some(n) = std::env::var("GATEHOUSE_BENCH_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        idles = vec![n];
    }
    let sharded = gatehouse_mesh::stack::SHARDS;
    println!(
        "smoltcp 0.14, one thread, {} MiB over one connection beside N idle ones",
        bytes >> 20
    );
    println!("| idle connections | 1 interface | {sharded} interfaces | sharded / unsharded |");
    println!("|---|---|---|---|");
    for idle in idles {
        let mut cells = Vec::new();
        let mut rates = Vec::new();
        for shards in [1, sharded] {
            let d = transfer(shards, idle, bytes);
            assert!(!d.is_zero(), "the transfer did not run");
            let gbps = bytes as f64 * 8.0 / d.as_secs_f64() / 1e9;
            rates.push(gbps);
            cells.push(format!("{gbps:.2} Gb/s"));
        }
        println!(
            "| {idle} | {} | {} | {:.1}× |",
            cells[0],
            cells[1],
            rates[1] / rates[0]
        );
    }
}
