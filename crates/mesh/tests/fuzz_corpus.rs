//! Replays the committed fuzz corpus (`fuzz/corpus/mesh_*`) through the same
//! code the fuzz targets run, so every `cargo test` checks those inputs
//! never panic. `GATEHOUSE_MESH_WRITE_CORPUS=1` (re)writes the seed inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use gatehouse_disco::{DiscoPrivateKey, Message, NodePublicKey, disco, stun};
use gatehouse_mesh::echo;
use gatehouse_mesh::fuzzing::{self, NODE_IP, NODE_KEY, PEER_IP, PEER_KEY};
use gatehouse_mesh::fuzzing::{NODE_DISCO, PEER_DISCO};
use gatehouse_mesh::packet::{build, tcp_flags};
use std::path::{Path, PathBuf};

fn peer_node_key() -> NodePublicKey {
    NodePublicKey(*PublicKey::from(&StaticSecret::from(PEER_KEY)).as_bytes())
}

/// A disco packet the fuzzed node's peer sealed to it (a fixed nonce, so
/// the seed is the same on every run).
fn disco_from_peer(msg: &Message) -> Vec<u8> {
    let peer = DiscoPrivateKey::from_bytes(PEER_DISCO);
    let node = DiscoPrivateKey::from_bytes(NODE_DISCO).public();
    disco::seal(&peer.public(), &peer.shared(&node), &[0x11; 24], msg)
}

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name)
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    if std::env::var_os("GATEHOUSE_MESH_WRITE_CORPUS").is_some() {
        write_seeds();
    }
    let d = dir(name);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {name}");
    out.into_iter().map(|(_, b)| b).collect()
}

fn write_seeds() {
    let v6a: std::net::IpAddr = "fd7a:115c:a1e0::1".parse().unwrap();
    let v6b: std::net::IpAddr = "fd7a:115c:a1e0::2".parse().unwrap();
    let mut ext = vec![17u8, 0, 0, 0, 0, 0, 0, 0];
    ext.extend_from_slice(&[0x12, 0x34, 0x00, 0x50, 0, 8, 0, 0]);
    let packets: Vec<(&str, Vec<u8>)> = vec![
        (
            "tcp4-syn",
            build::tcp(PEER_IP, NODE_IP, 40000, 443, tcp_flags::SYN, b""),
        ),
        (
            "tcp4-data",
            build::tcp(
                PEER_IP,
                NODE_IP,
                40000,
                80,
                tcp_flags::ACK,
                b"GET / HTTP/1.1\r\n",
            ),
        ),
        ("udp6", build::udp(v6a, v6b, 5353, 53, b"q")),
        ("udp6-ext", build::ip(v6a, v6b, 60, &ext)),
        ("icmp4-echo", build::echo_request(PEER_IP, NODE_IP, 9)),
        ("icmp6-echo", build::echo_request(v6a, v6b, 9)),
        (
            "truncated",
            build::tcp(PEER_IP, NODE_IP, 1, 2, 0, b"")[..24].to_vec(),
        ),
    ];
    std::fs::create_dir_all(dir("mesh_packet")).unwrap();
    for (n, p) in &packets {
        std::fs::write(dir("mesh_packet").join(n), p).unwrap();
    }
    // A real handshake initiation from the peer, and other message shapes.
    let peer = StaticSecret::from(PEER_KEY);
    let node_pub = PublicKey::from(&StaticSecret::from(NODE_KEY));
    let mut t = Tunn::new(peer, node_pub, None, None, 7, None);
    let mut buf = vec![0u8; 256];
    let init = match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        r => panic!("{r:?}"),
    };
    let mut data = vec![4u8, 0, 0, 0, 0, 1, 0, 0];
    data.extend_from_slice(&[0u8; 8]);
    data.extend_from_slice(&[0xaa; 48]);
    let datagrams: Vec<(&str, Vec<u8>)> = vec![
        ("handshake-init", init.clone()),
        ("handshake-init-bad-mac", {
            let mut x = init;
            x[120] ^= 1;
            x
        }),
        (
            "response-shape",
            [vec![2u8, 0, 0, 0], vec![0x11; 88]].concat(),
        ),
        (
            "cookie-shape",
            [vec![3u8, 0, 0, 0, 0, 1, 0, 0], vec![0x22; 56]].concat(),
        ),
        ("data-no-session", data),
        ("ip-packet", packets[0].1.clone()),
        ("short", vec![1, 0]),
        (
            "disco-ping",
            disco_from_peer(&Message::Ping {
                tx_id: [5; 12],
                node_key: Some(peer_node_key()),
                padding: 0,
            }),
        ),
        (
            "disco-pong",
            disco_from_peer(&Message::Pong {
                tx_id: [6; 12],
                src: "192.0.2.2:41641".parse().unwrap(),
            }),
        ),
        (
            "disco-call-me-maybe",
            disco_from_peer(&Message::CallMeMaybe {
                endpoints: vec![
                    "192.0.2.1:41641".parse().unwrap(),
                    "[2001:db8::1]:1".parse().unwrap(),
                ],
            }),
        ),
        (
            "disco-wrong-node-key",
            disco_from_peer(&Message::Ping {
                tx_id: [5; 12],
                node_key: Some(NodePublicKey([8; 32])),
                padding: 3,
            }),
        ),
        (
            "stun-response",
            stun::binding_response(&[1; 12], "192.0.2.2:41641".parse().unwrap()),
        ),
        ("stun-request", stun::binding_request(&[2; 12])),
    ];
    std::fs::create_dir_all(dir("mesh_datagram")).unwrap();
    for (n, p) in &datagrams {
        std::fs::write(dir("mesh_datagram").join(n), p).unwrap();
    }
    let mut bad_code = echo::build(PEER_IP, NODE_IP, true, 1, 1, b"");
    bad_code[21] = 1;
    let echoes: Vec<(&str, Vec<u8>)> = vec![
        (
            "request4",
            echo::build(PEER_IP, NODE_IP, true, 0x4242, 1, b"ping data"),
        ),
        ("reply6", echo::build(v6a, v6b, false, 7, 65535, b"")),
        ("request6", echo::build(v6a, v6b, true, 7, 2, &[0xee; 56])),
        ("bad-code", bad_code),
        ("ext-header-v6", {
            let mut t = vec![58u8, 0, 0, 0, 0, 0, 0, 0];
            t.extend_from_slice(&echo::build(v6a, v6b, true, 3, 3, b"x")[40..]);
            build::ip(v6a, v6b, 60, &t)
        }),
        ("not-echo", build::udp(PEER_IP, NODE_IP, 1, 2, b"x")),
    ];
    std::fs::create_dir_all(dir("mesh_echo")).unwrap();
    for (n, p) in &echoes {
        std::fs::write(dir("mesh_echo").join(n), p).unwrap();
    }
}

#[test]
fn packet_corpus() {
    for b in corpus("mesh_packet") {
        fuzzing::packet(&b);
    }
}

#[test]
fn datagram_corpus() {
    for b in corpus("mesh_datagram") {
        fuzzing::datagram(&b);
    }
}

#[test]
fn echo_corpus() {
    for b in corpus("mesh_echo") {
        fuzzing::echo(&b);
    }
}
