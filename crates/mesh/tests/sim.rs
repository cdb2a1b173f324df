//! Simulation: several sans-IO cores wired through an in-memory network
//! with a fake clock, latency, loss, reordering, duplication and an
//! endpoint that moves. Deterministic: a seeded generator decides every
//! loss and delay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_mesh::packet::{self, build};
use gatehouse_mesh::testing::{TestNode, filters};
use gatehouse_mesh::{Core, Event, Path};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const POLICY: &str = r#"{
  "tagOwners": {"tag:blog": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:80,443"]}],
}"#;

/// xorshift64*: deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
}

#[derive(Default)]
struct Conditions {
    loss: u64,
    duplicate: u64,
    /// Extra random delay up to this, which reorders datagrams.
    jitter: Duration,
}

struct SimNode {
    core: Core,
    addr: SocketAddr,
    delivered: Vec<Vec<u8>>,
    /// Answers to this node's pings: (address, sequence, round trip).
    pongs: Vec<(std::net::IpAddr, u16, Duration)>,
}

type InFlight = Reverse<(Instant, u64, SocketAddr, SocketAddr, Vec<u8>)>;

struct Sim {
    now: Instant,
    nodes: Vec<SimNode>,
    net: BinaryHeap<InFlight>,
    seq: u64,
    rng: Rng,
    cond: Conditions,
    sent: u64,
}

const LATENCY: Duration = Duration::from_millis(10);

impl Sim {
    fn new(specs: &[TestNode], seed: u64) -> Self {
        let now = Instant::now();
        let filters = filters(POLICY, specs);
        let addrs: Vec<SocketAddr> = (0..specs.len())
            .map(|i| SocketAddr::from(([192, 0, 2, i as u8 + 1], 51820)))
            .collect();
        let mut nodes = Vec::new();
        for (i, n) in specs.iter().enumerate() {
            let mut core = Core::new(n.private_key, n.addresses.clone(), now).unwrap();
            let peers: Vec<_> = specs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, p)| p.peer(Some(addrs[j])))
                .collect();
            core.set_peers(&peers, now);
            core.set_filter(&filters[i]);
            nodes.push(SimNode {
                core,
                addr: addrs[i],
                delivered: Vec::new(),
                pongs: Vec::new(),
            });
        }
        Sim {
            now,
            nodes,
            net: BinaryHeap::new(),
            seq: 0,
            rng: Rng(seed),
            cond: Conditions::default(),
            sent: 0,
        }
    }

    /// Moves every queued datagram onto the network.
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].addr;
            while let Some(t) = self.nodes[i].core.poll_transmit() {
                let Path::Direct(to) = t.path else { continue };
                self.sent += 1;
                if self.rng.percent(self.cond.loss) {
                    continue;
                }
                let copies = if self.rng.percent(self.cond.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let jitter_ms = self.cond.jitter.as_millis() as u64;
                    let extra = if jitter_ms > 0 {
                        self.rng.next() % jitter_ms
                    } else {
                        0
                    };
                    let at = self.now + LATENCY + Duration::from_millis(extra);
                    self.seq += 1;
                    self.net
                        .push(Reverse((at, self.seq, from, to, t.payload.clone())));
                }
            }
            while let Some(ev) = self.nodes[i].core.poll_event() {
                match ev {
                    Event::Packet(p) => self.nodes[i].delivered.push(p),
                    Event::Pong { addr, seq, rtt, .. } => {
                        self.nodes[i].pongs.push((addr, seq, rtt))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Advances the clock to the next delivery or timer, and runs it.
    fn step(&mut self) {
        self.flush();
        let next_net = self.net.peek().map(|Reverse((t, ..))| *t);
        let next_timer = self
            .nodes
            .iter()
            .filter_map(|n| n.core.poll_timeout())
            .min();
        let Some(next) = [next_net, next_timer].into_iter().flatten().min() else {
            return;
        };
        self.now = self.now.max(next);
        while let Some(Reverse((t, ..))) = self.net.peek()
            && *t <= self.now
        {
            let Some(Reverse((_, _, from, to, payload))) = self.net.pop() else {
                break;
            };
            if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == to) {
                n.core
                    .handle_datagram(Path::Direct(from), &payload, self.now);
            }
        }
        for n in &mut self.nodes {
            if n.core.poll_timeout().is_some_and(|t| t <= self.now) {
                n.core.handle_timeout(self.now);
            }
        }
        self.flush();
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Node `from` sends one UDP packet carrying `seq` to node `to`'s port.
    fn send_udp(&mut self, from: usize, to: usize, port: u16, seq: u32) {
        let src = self.nodes[from].core.addresses()[0];
        let dst = self.nodes[to].core.addresses()[0];
        let p = build::udp(src, dst, 40000, port, &seq.to_be_bytes());
        self.nodes[from].core.handle_packet(&p, self.now);
    }

    fn seqs(&self, node: usize) -> Vec<u32> {
        self.nodes[node]
            .delivered
            .iter()
            .map(|p| {
                let i = packet::parse(p).unwrap();
                assert_eq!(i.proto, packet::proto::UDP);
                let body = &p[p.len() - 4..];
                u32::from_be_bytes(body.try_into().unwrap())
            })
            .collect()
    }
}

fn nodes() -> Vec<TestNode> {
    vec![
        TestNode::new("laptop", 1, Some("alice@example.com"), &[]),
        TestNode::new("blog", 2, Some("alice@example.com"), &["tag:blog"]),
        TestNode::new("other", 3, Some("bob@example.com"), &[]),
    ]
}

#[test]
fn clean_network_delivers_everything_in_order() {
    let mut sim = Sim::new(&nodes(), 1);
    for s in 0..50 {
        sim.send_udp(0, 1, 443, s);
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(200));
    // Boringtun queues packets sent during the handshake and flushes them after.
    assert_eq!(sim.seqs(1), (0..50).collect::<Vec<_>>());
    let st = sim.nodes[1].core.counters();
    assert_eq!(st.filter.accepted, 50);
    assert_eq!(st.handshakes, 1);
}

#[test]
fn handshakes_and_data_survive_loss() {
    for seed in 1..=5 {
        let mut sim = Sim::new(&nodes(), seed);
        sim.cond.loss = 40;
        for s in 0..200 {
            sim.send_udp(0, 1, 443, s);
            sim.run_for(Duration::from_millis(100));
        }
        let got = sim.seqs(1);
        // Nothing arrives twice or corrupted, and after the handshake (which
        // the core's retry timer completes despite loss) most packets do.
        let unique: BTreeSet<u32> = got.iter().copied().collect();
        assert_eq!(unique.len(), got.len(), "seed {seed}: duplicates delivered");
        assert!(got.iter().all(|s| *s < 200));
        assert!(
            got.len() > 40,
            "seed {seed}: only {} of 200 arrived",
            got.len()
        );
        assert!(
            sim.nodes[0]
                .core
                .peers()
                .iter()
                .any(|p| p.name == "blog" && p.last_handshake.is_some())
        );
    }
}

#[test]
fn reordering_and_duplicates_are_absorbed() {
    let mut sim = Sim::new(&nodes(), 7);
    // Establish the session first, then send bursts through a jittery network.
    sim.send_udp(0, 1, 443, 0);
    sim.run_for(Duration::from_millis(200));
    sim.cond.jitter = Duration::from_millis(30);
    sim.cond.duplicate = 30;
    for s in 1..500 {
        sim.send_udp(0, 1, 443, s);
        if s % 10 == 0 {
            sim.run_for(Duration::from_millis(1));
        }
    }
    sim.run_for(Duration::from_millis(500));
    let got = sim.seqs(1);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..500).collect::<Vec<_>>(),
        "every packet once, whatever the order"
    );
    assert_ne!(got, sorted, "the network did reorder");
}

#[test]
fn peer_that_moves_is_followed() {
    let mut sim = Sim::new(&nodes(), 3);
    sim.send_udp(0, 1, 443, 0);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.seqs(1), vec![0]);
    // blog's address changes (a new network); control has not told anyone.
    let moved = SocketAddr::from(([198, 51, 100, 9], 40404));
    sim.nodes[1].addr = moved;
    // blog talks first (a reply flow: laptop opened it), from its new address.
    let (laptop_ip, blog_ip) = (
        sim.nodes[0].core.addresses()[0],
        sim.nodes[1].core.addresses()[0],
    );
    let reply = build::udp(blog_ip, laptop_ip, 443, 40000, &7u32.to_be_bytes());
    let now = sim.now;
    sim.nodes[1].core.handle_packet(&reply, now);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.nodes[0].delivered.len(),
        1,
        "the reply to laptop's flow arrived"
    );
    let path = sim.nodes[0]
        .core
        .peers()
        .into_iter()
        .find(|p| p.name == "blog")
        .unwrap()
        .path;
    assert_eq!(path, Some(Path::Direct(moved)));
    // laptop's next packets go to the new address.
    for s in 1..10 {
        sim.send_udp(0, 1, 443, s);
    }
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.seqs(1), (0..10).collect::<Vec<_>>());
}

#[test]
fn filter_drops_what_policy_does_not_allow() {
    let mut sim = Sim::new(&nodes(), 5);
    sim.send_udp(0, 1, 22, 1); // laptop -> blog:22, not allowed
    sim.send_udp(2, 1, 443, 2); // bob's node -> blog:443, not allowed
    sim.send_udp(0, 1, 80, 3); // allowed
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.seqs(1), vec![3]);
    let c = sim.nodes[1].core.counters();
    assert_eq!((c.filter.accepted, c.filter.denied), (1, 2));
    // blog may answer laptop's flow, but cannot open one to laptop.
    let (laptop_ip, blog_ip) = (
        sim.nodes[0].core.addresses()[0],
        sim.nodes[1].core.addresses()[0],
    );
    let now = sim.now;
    sim.nodes[1].core.handle_packet(
        &build::udp(blog_ip, laptop_ip, 80, 40000, &9u32.to_be_bytes()),
        now,
    );
    sim.nodes[1].core.handle_packet(
        &build::udp(blog_ip, laptop_ip, 80, 5555, &10u32.to_be_bytes()),
        now,
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.seqs(0), vec![9]);
    assert_eq!(sim.nodes[0].core.counters().filter.replies, 1);
}

#[test]
fn spoofed_source_address_is_dropped() {
    let mut sim = Sim::new(&nodes(), 11);
    // bob's node claims laptop's address (allowed by blog's filter).
    let laptop_ip = sim.nodes[0].core.addresses()[0];
    let blog_ip = sim.nodes[1].core.addresses()[0];
    let p = build::udp(laptop_ip, blog_ip, 1, 443, &1u32.to_be_bytes());
    let now = sim.now;
    let blog = nodes_with_ip(&sim, 1, laptop_ip);
    sim.nodes[2].core.set_peers(&[blog], now);
    sim.nodes[2].core.handle_packet(&p, now);
    sim.run_for(Duration::from_secs(1));
    assert!(sim.nodes[1].delivered.is_empty());
    assert_eq!(sim.nodes[1].core.counters().filter.spoofed, 1);
}

/// blog as a peer, with an extra address so that the sender routes `ip` to it.
fn nodes_with_ip(sim: &Sim, idx: usize, ip: std::net::IpAddr) -> gatehouse_proto::control::Peer {
    let mut p = sim.nodes[0]
        .core
        .peers()
        .into_iter()
        .find(|p| p.name == "blog")
        .map(|s| gatehouse_proto::control::Peer {
            id: s.id,
            name: s.name,
            fqdn: String::new(),
            wireguard_key: s.key,
            addresses: s.addresses,
            endpoints: vec![sim.nodes[idx].addr],
            disco_key: None,
            home_relay: None,
            user: None,
            tags: vec![],
            key_expiry: 0,
            service: None,
            online: None,
        })
        .unwrap();
    p.addresses.push(ip);
    p
}

#[test]
fn ping_is_answered_by_the_peers_data_plane_whatever_its_filter() {
    let mut sim = Sim::new(&nodes(), 13);
    let blog_ip = sim.nodes[1].core.addresses()[0];
    let blog_v6 = sim.nodes[1].core.addresses()[1];
    // bob's node may reach nothing on blog, yet blog's data plane answers.
    let now = sim.now;
    let first = sim.nodes[2].core.ping(blog_ip, now).unwrap();
    sim.run_for(Duration::from_millis(200));
    // Handshake (one round trip) then the echo (another).
    assert_eq!(sim.nodes[2].pongs, vec![(blog_ip, first, LATENCY * 4)]);
    let now = sim.now;
    let second = sim.nodes[2].core.ping(blog_v6, now).unwrap();
    assert_ne!(first, second);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[2].pongs[1], (blog_v6, second, LATENCY * 2));
    let c = sim.nodes[1].core.counters();
    assert_eq!(c.echo_answered, 2);
    assert_eq!(
        c.filter.accepted + c.filter.denied,
        0,
        "no echo went to the filter"
    );
    assert!(
        sim.nodes[1].delivered.is_empty(),
        "no echo reached the stack"
    );
    assert!(
        sim.nodes[2].delivered.is_empty(),
        "answers are consumed by the core"
    );
    assert_eq!(sim.nodes[2].core.pings_in_flight(), 0);

    // No peer has the address; and an unanswered ping is forgotten.
    let nobody: std::net::IpAddr = "100.64.9.9".parse().unwrap();
    assert!(matches!(
        sim.nodes[2].core.ping(nobody, now),
        Err(gatehouse_mesh::PingError::NoRoute(_))
    ));
    sim.cond.loss = 100;
    let now = sim.now;
    sim.nodes[2].core.ping(blog_ip, now).unwrap();
    sim.run_for(gatehouse_mesh::PING_TIMEOUT + Duration::from_secs(2));
    assert_eq!(sim.nodes[2].pongs.len(), 2);
    assert_eq!(sim.nodes[2].core.pings_in_flight(), 0);
}

#[test]
fn echo_requests_are_answered_with_what_they_carried() {
    let mut sim = Sim::new(&nodes(), 17);
    let (laptop_ip, blog_ip) = (
        sim.nodes[0].core.addresses()[0],
        sim.nodes[1].core.addresses()[0],
    );
    // An ordinary echo request (as the kernel's ping sends in TUN mode).
    let req = gatehouse_mesh::echo::build(laptop_ip, blog_ip, true, 4242, 3, b"payload");
    let now = sim.now;
    sim.nodes[0].core.handle_packet(&req, now);
    sim.run_for(Duration::from_millis(200));
    // Not one of the core's own pings: the answer goes to the stack (the
    // flow laptop opened admits it).
    assert_eq!(sim.nodes[0].delivered.len(), 1);
    let reply = &sim.nodes[0].delivered[0];
    assert!(gatehouse_mesh::echo::checksum_ok(reply));
    let e = gatehouse_mesh::echo::parse(reply).unwrap();
    assert_eq!(
        (e.src, e.dst, e.request, e.id, e.seq, e.data),
        (blog_ip, laptop_ip, false, 4242, 3, &b"payload"[..])
    );
    assert!(sim.nodes[0].pongs.is_empty());
    assert_eq!(sim.nodes[0].core.counters().filter.replies, 1);
}

#[test]
fn a_peer_that_restarts_on_a_new_endpoint_is_reached_at_once() {
    let specs = nodes();
    let mut sim = Sim::new(&specs, 19);
    sim.send_udp(0, 1, 443, 0);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.seqs(1), vec![0]);
    let handshakes = sim.nodes[0].core.counters().handshakes;

    // blog restarts: same key, no sessions, a new UDP port; control tells
    // laptop the new endpoint.
    let moved = SocketAddr::from(([192, 0, 2, 2], 40001));
    let now = sim.now;
    let mut core = Core::new(specs[1].private_key, specs[1].addresses.clone(), now).unwrap();
    let f = filters(POLICY, &specs);
    core.set_peers(
        &[
            specs[0].peer(Some(sim.nodes[0].addr)),
            specs[2].peer(Some(sim.nodes[2].addr)),
        ],
        now,
    );
    core.set_filter(&f[1]);
    sim.nodes[1].core = core;
    sim.nodes[1].addr = moved;
    sim.nodes[1].delivered.clear();
    let peers = vec![
        specs[1].peer(Some(moved)),
        specs[2].peer(Some(sim.nodes[2].addr)),
    ];
    sim.nodes[0].core.set_peers(&peers, now);

    // Well within WireGuard's 15 s before it would try a new handshake.
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[0].core.counters().handshakes, handshakes + 1);
    sim.send_udp(0, 1, 443, 1);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.seqs(1), vec![1]);

    // The same map again changes nothing: no further handshake.
    let now = sim.now;
    sim.nodes[0].core.set_peers(&peers, now);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[0].core.counters().handshakes, handshakes + 1);
}
