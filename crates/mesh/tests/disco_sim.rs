//! Path choice in the sans-IO core, on a simulated clock: two cores with
//! disco keys and a home relay, a UDP network that can be cut, and a relay
//! that forwards by key. Data goes through the relay first, moves to the
//! direct path when pongs prove it, falls back when the direct path goes
//! silent (same session), and follows a peer that roams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_disco::NodePublicKey;
use gatehouse_mesh::packet::build;
use gatehouse_mesh::testing::TestNode;
use gatehouse_mesh::{Core, Path, PeerStatus};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const REGION: u16 = 5;
const STEP: Duration = Duration::from_millis(50);

struct Node {
    core: Core,
    addr: SocketAddr,
    key: NodePublicKey,
}

struct Sim {
    now: Instant,
    nodes: Vec<Node>,
    specs: Vec<TestNode>,
    udp_up: bool,
    /// Datagrams in flight: delivered on the next step.
    udp: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    relay: Vec<(NodePublicKey, NodePublicKey, Vec<u8>)>,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        let specs = vec![
            TestNode::new("a", 1, Some("alice@example.com"), &[]),
            TestNode::new("b", 2, Some("alice@example.com"), &[]),
        ];
        let mut nodes: Vec<Node> = specs
            .iter()
            .enumerate()
            .map(|(i, n)| Node {
                core: Core::new(n.private_key, n.addresses.clone(), now).unwrap(),
                addr: SocketAddr::from(([192, 0, 2, i as u8 + 1], 41641)),
                key: gatehouse_mesh::public_key(&n.private_key).parse().unwrap(),
            })
            .collect();
        let discos: Vec<String> = nodes
            .iter()
            .map(|n| n.core.disco_public().to_string())
            .collect();
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        for (i, n) in nodes.iter_mut().enumerate() {
            let j = 1 - i;
            let mut p = specs[j].peer(Some(addrs[j]));
            p.disco_key = Some(discos[j].clone());
            p.home_relay = Some(REGION);
            n.core.set_peers(&[p], now);
            n.core.set_disco_endpoints(vec![addrs[i]]);
        }
        Sim {
            now,
            nodes,
            specs,
            udp_up: false,
            udp: Vec::new(),
            relay: Vec::new(),
        }
    }

    /// `from` sends one IP packet to the other node.
    fn send(&mut self, from: usize) {
        let (src, dst) = (self.specs[from].ip(), self.specs[1 - from].ip());
        let p = build::udp(src, dst, 4000, 443, b"data");
        let now = self.now;
        self.nodes[from].core.handle_packet(&p, now);
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        for (from, to, d) in std::mem::take(&mut self.udp) {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == to) {
                n.core.handle_datagram(Path::Direct(from), &d, now);
            }
        }
        for (from, to, d) in std::mem::take(&mut self.relay) {
            if let Some(n) = self.nodes.iter_mut().find(|n| n.key == to) {
                n.core.handle_relay_datagram(REGION, from, &d, now);
            }
        }
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            if n.core.poll_timeout().is_some_and(|t| t <= now) {
                n.core.handle_timeout(now);
            }
            while n.core.poll_event().is_some() {}
            while let Some(t) = n.core.poll_transmit() {
                match t.path {
                    Path::Direct(to) if self.udp_up => self.udp.push((n.addr, to, t.payload)),
                    Path::Relay(r) => {
                        assert_eq!(r, REGION);
                        self.relay.push((n.key, t.to.unwrap(), t.payload));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Both nodes send a packet every step for `d`.
    fn traffic_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.send(0);
            self.send(1);
            self.step();
        }
    }

    /// Traffic until `cond` holds on node `i`'s view of its peer, at most
    /// `limit` of simulated time; returns the simulated time it took.
    fn until(&mut self, i: usize, limit: Duration, cond: impl Fn(&PeerStatus) -> bool) -> Duration {
        let start = self.now;
        while !cond(&self.peer(i)) {
            assert!(
                self.now - start < limit,
                "condition not reached: {:#?}",
                self.peer(i)
            );
            self.send(0);
            self.send(1);
            self.step();
        }
        self.now - start
    }

    fn peer(&self, i: usize) -> PeerStatus {
        self.nodes[i].core.peers().remove(0)
    }
}

#[test]
fn relay_first_then_direct_then_fallback_then_roaming() {
    let mut sim = Sim::new();
    let b_addr = sim.nodes[1].addr;
    // No UDP at all: the handshake and data go through the relay.
    sim.traffic_for(Duration::from_secs(2));
    for i in 0..2 {
        let p = sim.peer(i);
        assert_eq!(p.path, Some(Path::Relay(REGION)), "{p:#?}");
        assert!(p.reachable && p.rx_bytes > 0, "{p:#?}");
    }
    let c = sim.nodes[0].core.counters();
    assert!(c.disco_pings_sent > 0 && c.call_me_maybe_sent > 0);
    assert_eq!(c.direct_rx_bytes, 0);
    let handshakes = c.handshakes;

    // UDP works: the next discovery round's pongs prove the direct path.
    sim.udp_up = true;
    sim.until(0, Duration::from_secs(15), |p| {
        p.path == Some(Path::Direct(b_addr))
    });
    let p = sim.peer(0);
    assert!(p.latency.is_some(), "{p:#?}");
    // Heartbeats keep it trusted as long as traffic runs.
    sim.traffic_for(Duration::from_secs(20));
    assert_eq!(sim.peer(0).path, Some(Path::Direct(b_addr)));

    // UDP cut: trust lapses, data falls back to the relay, same session.
    sim.udp_up = false;
    sim.until(0, Duration::from_secs(10), |p| {
        p.path == Some(Path::Relay(REGION))
    });
    let rx = sim.peer(1).rx_bytes;
    sim.traffic_for(Duration::from_secs(2));
    assert!(sim.peer(1).rx_bytes > rx, "data flows through the relay");
    assert_eq!(sim.nodes[0].core.counters().handshakes, handshakes);
    assert!(sim.nodes[0].core.counters().path_changes >= 2);

    // UDP back, then B moves to a new address (control does not know):
    // A follows once the new address answers its pings.
    sim.udp_up = true;
    sim.until(0, Duration::from_secs(15), |p| {
        p.path == Some(Path::Direct(b_addr))
    });
    let moved = SocketAddr::from(([198, 51, 100, 7], 4000));
    sim.nodes[1].addr = moved;
    sim.until(0, Duration::from_secs(20), |p| {
        p.path == Some(Path::Direct(moved))
    });
    assert_eq!(sim.nodes[0].core.counters().handshakes, handshakes);
}

#[test]
fn disco_from_strangers_and_forgeries_is_dropped() {
    let mut sim = Sim::new();
    sim.udp_up = true;
    sim.traffic_for(Duration::from_secs(1));
    let before = sim.nodes[1].core.counters();
    // A disco packet sealed by a key no peer has.
    let stranger = gatehouse_disco::DiscoPrivateKey::generate();
    let to = sim.nodes[1].core.disco_public();
    let ping = gatehouse_disco::Message::Ping {
        tx_id: [1; 12],
        node_key: None,
        padding: 0,
    };
    let forged = gatehouse_disco::disco::seal_to(&stranger, &to, &ping);
    let now = sim.now;
    let a_addr = sim.nodes[0].addr;
    let core = &mut sim.nodes[1].core;
    core.handle_datagram(Path::Direct(a_addr), &forged, now);
    // A's real disco key on a packet that does not authenticate.
    let mut tampered = forged.clone();
    tampered[6..38].copy_from_slice(sim.nodes[0].core.disco_public().as_bytes());
    let core = &mut sim.nodes[1].core;
    core.handle_datagram(Path::Direct(a_addr), &tampered, now);
    let after = core.counters();
    assert_eq!(after.bad_disco, before.bad_disco + 2);
    assert_eq!(after.disco_pongs_sent, before.disco_pongs_sent);
    assert!(core.poll_transmit().is_none(), "nothing answered");
}
