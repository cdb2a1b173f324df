//! Map frames at scale: a full map of N peers (each with host information,
//! endpoints, tags and capabilities) and a one-peer delta, framed the way
//! Tailscale clients ask (zstd) and plain. The baseline, measured in the
//! same run, is writing the same message as JSON alone: the ratio is what
//! framing and compression add. Reading is measured the same way (zstd
//! frame against JSON parsing alone).
//!
//! Run: `cargo bench -p gatehouse-tailcfg --bench frames`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_tailcfg::{
    Compression, FrameDecoder, FrameEncoder, Hostinfo, MapResponse, NetInfo, Node, NodePublic,
    PeerChange, Service, from_json,
};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn peer(i: u32) -> Node {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_le_bytes());
    key[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
    let v4 = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(100, 64, 0, 1)) + i);
    Node {
        id: i64::from(i) + 1,
        stable_id: format!("n{i:08x}"),
        name: format!("node-{i}.example.ts.net."),
        user: i64::from(i % 500) + 1,
        key: NodePublic::from_bytes(key),
        disco_key: gatehouse_tailcfg::DiscoPublic::from_bytes(key),
        addresses: vec![
            format!("{v4}/32").parse().unwrap(),
            format!("fd7a:115c:a1e0::{:x}/128", i + 1).parse().unwrap(),
        ],
        endpoints: vec![
            format!("203.0.113.{}:{}", i % 250, 41641 + i % 100)
                .parse()
                .unwrap(),
            format!("10.{}.{}.{}:41641", i % 200, (i / 200) % 250, i % 250)
                .parse()
                .unwrap(),
        ],
        home_derp: 900 + (i % 3) as i32,
        hostinfo: Some(Hostinfo {
            os: if i % 3 == 0 { "linux" } else { "macOS" }.into(),
            hostname: format!("node-{i}"),
            ipn_version: "1.102.3-t0123abcd".into(),
            services: vec![
                Service {
                    proto: "peerapi4".into(),
                    port: 40000 + (i % 1000) as u16,
                    description: String::new(),
                },
                Service {
                    proto: "peerapi6".into(),
                    port: 40000 + (i % 1000) as u16,
                    description: String::new(),
                },
            ],
            net_info: Some(NetInfo {
                preferred_derp: 900,
                ..NetInfo::default()
            }),
            ..Hostinfo::default()
        }),
        created: Some(time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)),
        cap: 142,
        tags: if i % 4 == 0 {
            vec!["tag:k8s".into()]
        } else {
            Vec::new()
        },
        online: Some(i % 5 != 0),
        machine_authorized: true,
        cap_map: BTreeMap::from([("https://tailscale.com/cap/file-sharing".into(), vec![])]),
        ..Node::default()
    }
}

fn full_map(n: u32) -> MapResponse {
    MapResponse {
        node: Some(peer(n + 1)),
        peers: Some((0..n).map(peer).collect()),
        domain: "example.com".into(),
        collect_services: Some(false),
        ..MapResponse::default()
    }
}

fn delta() -> MapResponse {
    MapResponse {
        peers_changed_patch: Some(vec![PeerChange {
            node_id: 42,
            endpoints: vec!["203.0.113.9:41641".parse().unwrap()],
            derp_region: 901,
            ..PeerChange::default()
        }]),
        ..MapResponse::default()
    }
}

fn median(f: &mut dyn FnMut(), runs: usize) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn measure(label: &str, msg: &MapResponse, runs: usize) {
    let json = serde_json::to_vec(msg).unwrap();
    let mut zenc = FrameEncoder::new(Compression::Zstd).unwrap();
    let mut penc = FrameEncoder::new(Compression::None).unwrap();
    let zframe = zenc.encode(msg).unwrap();

    let write_json = median(
        &mut || drop(black_box(serde_json::to_vec(msg).unwrap())),
        runs,
    );
    let write_plain = median(&mut || drop(black_box(penc.encode(msg).unwrap())), runs);
    let write_zstd = median(&mut || drop(black_box(zenc.encode(msg).unwrap())), runs);
    let read_json = median(
        &mut || drop(black_box(from_json::<MapResponse>(&json).unwrap())),
        runs,
    );
    let read_zstd = median(
        &mut || {
            let mut d = FrameDecoder::new(Compression::Zstd);
            d.push(&zframe);
            black_box(d.next_response().unwrap().unwrap());
        },
        runs,
    );
    // The frame reads back as the message.
    let mut d = FrameDecoder::new(Compression::Zstd);
    d.push(&zframe);
    assert_eq!(d.next_response().unwrap().as_ref(), Some(msg));

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("{label}:");
    println!(
        "  size: JSON {} B, zstd frame {} B ({:.1}x smaller)",
        json.len(),
        zframe.len(),
        json.len() as f64 / zframe.len() as f64
    );
    println!("  write JSON alone (baseline): {}", us(write_json));
    println!(
        "  write plain frame: {} ({:.2}x), zstd frame: {} ({:.2}x)",
        us(write_plain),
        ratio(write_plain, write_json),
        us(write_zstd),
        ratio(write_zstd, write_json)
    );
    println!(
        "  read JSON alone (baseline): {}; read zstd frame: {} ({:.2}x)",
        us(read_json),
        us(read_zstd),
        ratio(read_zstd, read_json)
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep it quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (sizes, runs): (&[u32], usize) = if quick {
        (&[10], 1)
    } else {
        (&[100, 1_000, 10_000], 11)
    };
    for &n in sizes {
        measure(&format!("full map, {n} peers"), &full_map(n), runs);
    }
    measure("one-peer patch", &delta(), if quick { 1 } else { 1001 });
    measure(
        "keep-alive",
        &MapResponse::keep_alive(),
        if quick { 1 } else { 1001 },
    );
}
