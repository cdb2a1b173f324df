//! WireGuard implementations side by side, in one run: boringtun 0.7 and
//! gotatun 0.10 (ring backend), one thread each.
//!
//! - handshake: a fresh pair of sessions, initiation → response → first
//!   keepalive, i.e. everything until both ends can send data;
//! - data: encrypt on one side and decrypt on the other, 1,280-byte packets
//!   (the mesh MTU) and 1,420-byte packets (WireGuard's usual MTU); Gb/s of
//!   plaintext through both steps.
//!
//! Run: `cargo bench -p gatehouse-mesh --bench wireguard`. Under
//! `cargo test --benches` it runs a few packets and checks they come back intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

const A_KEY: [u8; 32] = [1; 32];
const B_KEY: [u8; 32] = [2; 32];

fn payload(len: usize) -> Vec<u8> {
    // An IPv4 header with the right total length, so both libraries accept
    // the decrypted packet; the rest is filler.
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    for (i, b) in p.iter_mut().enumerate().skip(20) {
        *b = (i * 31 % 251) as u8;
    }
    p
}

mod bt {
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    pub fn pair() -> (Tunn, Tunn) {
        let (a, b) = (StaticSecret::from(A_KEY), StaticSecret::from(B_KEY));
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        (
            Tunn::new(a, pb, None, None, 1, None),
            Tunn::new(b, pa, None, None, 2, None),
        )
    }

    /// A full handshake; returns the sessions ready for data.
    pub fn handshake() -> (Tunn, Tunn) {
        let (mut a, mut b) = pair();
        let mut buf = vec![0u8; 2048];
        let mut buf2 = vec![0u8; 2048];
        let init = match a.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("init: {r:?}"),
        };
        let resp = match b.decapsulate(None, &init, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("response: {r:?}"),
        };
        let ka = match a.decapsulate(None, &resp, &mut buf) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("keepalive: {r:?}"),
        };
        match b.decapsulate(None, &ka, &mut buf2) {
            TunnResult::Done => {}
            r => panic!("keepalive in: {r:?}"),
        }
        (a, b)
    }

    /// Moves `n` packets; returns the time and checks the last one.
    pub fn data(n: usize, len: usize) -> Duration {
        let (mut a, mut b) = handshake();
        let p = payload(len);
        let mut enc = vec![0u8; len + 64];
        let mut dec = vec![0u8; len + 64];
        let start = Instant::now();
        for i in 0..n {
            let c = match a.encapsulate(&p, &mut enc) {
                TunnResult::WriteToNetwork(c) => c,
                r => panic!("encapsulate: {r:?}"),
            };
            match b.decapsulate(None, c, &mut dec) {
                TunnResult::WriteToTunnelV4(d, _) => {
                    if i == n - 1 {
                        assert_eq!(d, &p[..]);
                    }
                    black_box(d);
                }
                r => panic!("decapsulate: {r:?}"),
            }
        }
        start.elapsed()
    }
}

mod gt {
    use super::*;
    use bytes::BytesMut;
    use gotatun::noise::index_table::IndexTable;
    use gotatun::noise::rate_limiter::RateLimiter;
    use gotatun::noise::{Tunn, TunnResult};
    use gotatun::packet::{Packet, WgKind};
    use gotatun::x25519::{PublicKey, StaticSecret};
    use std::sync::Arc;

    pub fn pair() -> (Tunn, Tunn) {
        let (a, b) = (StaticSecret::from(A_KEY), StaticSecret::from(B_KEY));
        let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
        let la = Arc::new(RateLimiter::new(&pa, 100));
        let lb = Arc::new(RateLimiter::new(&pb, 100));
        (
            Tunn::new(a, pb, None, None, IndexTable::from_os_rng(), la),
            Tunn::new(b, pa, None, None, IndexTable::from_os_rng(), lb),
        )
    }

    fn wire(k: WgKind) -> WgKind {
        // What a socket does: bytes out, bytes in, parsed again.
        let p: Packet = k.into();
        Packet::from_bytes(BytesMut::from(p.as_ref()))
            .try_into_wg()
            .unwrap()
    }

    pub fn handshake() -> (Tunn, Tunn) {
        let (mut a, mut b) = pair();
        let init = a.format_handshake_initiation(false).unwrap();
        let resp = match b.handle_incoming_packet(wire(init.into())) {
            TunnResult::WriteToNetwork(p) => p,
            r => panic!("response: {r:?}"),
        };
        let ka = match a.handle_incoming_packet(wire(resp)) {
            TunnResult::WriteToNetwork(p) => p,
            r => panic!("keepalive: {r:?}"),
        };
        match b.handle_incoming_packet(wire(ka)) {
            TunnResult::WriteToTunnel(p) if p.is_empty() => {}
            TunnResult::Done => {}
            r => panic!("keepalive in: {r:?}"),
        }
        (a, b)
    }

    pub fn data(n: usize, len: usize) -> Duration {
        let (mut a, mut b) = handshake();
        let p = payload(len);
        let start = Instant::now();
        for i in 0..n {
            // The plaintext arrives in a buffer of its own, as from a stack or a TUN read.
            let pkt = Packet::from_bytes(BytesMut::from(&p[..]));
            let c = a.handle_outgoing_packet(pkt, None).expect("session");
            let parsed = match c {
                WgKind::Data(d) => WgKind::Data(d),
                k => panic!("not data: {k:?}"),
            };
            match b.handle_incoming_packet(parsed) {
                TunnResult::WriteToTunnel(d) => {
                    if i == n - 1 {
                        assert_eq!(d.as_ref(), &p[..]);
                    }
                    black_box(d);
                }
                r => panic!("decapsulate: {r:?}"),
            }
        }
        start.elapsed()
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (hs, pkts) = if full { (2_000, 400_000) } else { (5, 50) };
    println!(
        "WireGuard implementations, one thread ({} handshakes, {} packets per size)",
        hs, pkts
    );
    println!("| implementation | handshake | 1,280 B enc+dec | 1,420 B enc+dec |");
    println!("|---|---|---|---|");
    for round in 0..2 {
        for name in ["boringtun 0.7", "gotatun 0.10"] {
            let start = Instant::now();
            for _ in 0..hs {
                if name.starts_with("boring") {
                    black_box(bt::handshake());
                } else {
                    black_box(gt::handshake());
                }
            }
            let per_hs = start.elapsed() / hs as u32;
            let mut cells = Vec::new();
            for len in [1280, 1420] {
                let d = if name.starts_with("boring") {
                    bt::data(pkts, len)
                } else {
                    gt::data(pkts, len)
                };
                cells.push(format!("{:.2} Gb/s", gbps(pkts * len, d)));
            }
            if full || round == 0 {
                println!(
                    "| {name} | {:.0} µs | {} | {} |",
                    per_hs.as_secs_f64() * 1e6,
                    cells[0],
                    cells[1]
                );
            }
        }
        if !full {
            break;
        }
    }
}
