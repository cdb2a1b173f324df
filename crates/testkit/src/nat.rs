//! Real NAT in network namespaces (root only): a "WAN" namespace with a
//! bridge standing in for the internet (control and relays live there),
//! and per site a router namespace that masquerades a private network onto
//! the WAN, with one host namespace behind it. Sites can also sit on the
//! WAN with no NAT. Everything is removed on drop.
//!
//! ```text
//!   wan (10.77.0.1/24, bridge)
//!    ├── router 0 (10.77.0.10) ── NAT ── host 0 (192.168.100.2)
//!    ├── router 1 (10.77.0.11) ── NAT ── host 1 (192.168.101.2)
//!    └── …
//! ```
//!
//! NAT kinds, as RFC 4787 names them: `EndpointIndependent` is Linux's
//! masquerade (it keeps the source port when it can, so the mapping a STUN
//! server sees is the one peers see); `Symmetric` is masquerade with
//! `fully-random` ports (address-and-port-dependent mapping: each
//! destination sees another port, so hole punching cannot work).

use crate::process::{must, sh};
use std::net::Ipv4Addr;

/// How a site reaches the WAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Masquerade keeping ports: endpoint-independent mapping.
    EndpointIndependent,
    /// Masquerade with random ports per destination.
    Symmetric,
    /// No NAT: the host's address is on the WAN's routes (its router only
    /// forwards).
    Public,
}

/// A WAN and its sites.
#[derive(Debug)]
pub struct Topology {
    id: u32,
    kinds: Vec<NatKind>,
}

/// The WAN namespace's address (where control runs).
pub const WAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

impl Topology {
    /// Builds the WAN and one site per kind.
    pub fn new(kinds: &[NatKind]) -> Self {
        // Unique per topology: several tests of one process build theirs
        // at once. Interface names stay within 15 characters.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let id = (std::process::id() % 1_000) * 10 + n;
        let t = Topology {
            id,
            kinds: kinds.to_vec(),
        };
        let wan = t.wan();
        let _ = sh(&["ip", "netns", "del", &wan]);
        must(&["ip", "netns", "add", &wan]);
        must(&["ip", "-n", &wan, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &wan, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &wan,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &wan, "link", "set", "br0", "up"]);
        // The WAN routes between public sites' networks.
        must(&[
            "ip",
            "netns",
            "exec",
            &wan,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for i in 0..kinds.len() {
            t.add_site(i);
        }
        t
    }

    fn wan(&self) -> String {
        format!("ghwan{}", self.id)
    }

    /// The namespace of site `i`'s router.
    pub fn router(&self, i: usize) -> String {
        format!("ghr{}-{i}", self.id)
    }

    /// The namespace of site `i`'s host.
    pub fn host(&self, i: usize) -> String {
        format!("ghh{}-{i}", self.id)
    }

    /// The WAN namespace (control, relays).
    pub fn wan_ns(&self) -> String {
        self.wan()
    }

    /// Site `i`'s public (WAN) address: its router's.
    pub fn public_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 10 + u8::try_from(i).unwrap_or(0))
    }

    /// Site `i`'s host address on its private network.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 100 + u8::try_from(i).unwrap_or(0), 2)
    }

    fn add_site(&self, i: usize) {
        let (wan, r, h) = (self.wan(), self.router(i), self.host(i));
        for ns in [&r, &h] {
            let _ = sh(&["ip", "netns", "del", ns]);
            must(&["ip", "netns", "add", ns]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // WAN side: a veth from the router into the bridge.
        let (rw, bw) = (
            format!("ghrw{}-{i}", self.id),
            format!("ghbw{}-{i}", self.id),
        );
        must(&[
            "ip", "link", "add", &rw, "type", "veth", "peer", "name", &bw,
        ]);
        must(&["ip", "link", "set", &rw, "netns", &r]);
        must(&["ip", "link", "set", &bw, "netns", &wan]);
        must(&["ip", "-n", &wan, "link", "set", &bw, "master", "br0"]);
        must(&["ip", "-n", &wan, "link", "set", &bw, "up"]);
        let public = format!("{}/24", self.public_addr(i));
        must(&["ip", "-n", &r, "addr", "add", &public, "dev", &rw]);
        must(&["ip", "-n", &r, "link", "set", &rw, "up"]);
        // LAN side: router to host.
        let (rl, hl) = (
            format!("ghrl{}-{i}", self.id),
            format!("ghhl{}-{i}", self.id),
        );
        must(&[
            "ip", "link", "add", &rl, "type", "veth", "peer", "name", &hl,
        ]);
        must(&["ip", "link", "set", &rl, "netns", &r]);
        must(&["ip", "link", "set", &hl, "netns", &h]);
        let lan = 100 + i;
        must(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("192.168.{lan}.1/24"),
            "dev",
            &rl,
        ]);
        must(&["ip", "-n", &r, "link", "set", &rl, "up"]);
        must(&[
            "ip",
            "-n",
            &h,
            "addr",
            "add",
            &format!("{}/24", self.host_addr(i)),
            "dev",
            &hl,
        ]);
        must(&["ip", "-n", &h, "link", "set", &hl, "up"]);
        must(&[
            "ip",
            "-n",
            &h,
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{lan}.1"),
        ]);
        must(&[
            "ip",
            "netns",
            "exec",
            &r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let wan_addr = WAN_ADDR.to_string();
        must(&["ip", "-n", &r, "route", "add", "default", "via", &wan_addr]);
        let masquerade = match self.kinds[i] {
            NatKind::EndpointIndependent => "masquerade",
            NatKind::Symmetric => "masquerade fully-random",
            NatKind::Public => "",
        };
        let mut rules = String::from(
            "table ip gh {\n  chain filt { type filter hook forward priority 0; policy accept; }\n  chain masq { type nat hook postrouting priority 100; policy accept;\n",
        );
        if !masquerade.is_empty() {
            rules.push_str(&format!("    oifname \"{rw}\" {masquerade}\n"));
        }
        rules.push_str("  }\n");
        if !masquerade.is_empty() {
            // A home router's firewall: nothing unsolicited from the WAN
            // reaches the router itself. Dropped before connection tracking
            // confirms it, such a datagram leaves no entry behind that
            // would take the public port of a mapping made later.
            rules.push_str(&format!(
                "  chain inp {{ type filter hook input priority 0; policy accept;\n    iifname \"{rw}\" ct state new drop\n  }}\n"
            ));
        }
        rules.push_str("}\n");
        nft(&r, &rules);
        if self.kinds[i] == NatKind::Public {
            // The WAN routes the host's private network to its router.
            must(&[
                "ip",
                "-n",
                &wan,
                "route",
                "add",
                &format!("192.168.{lan}.0/24"),
                "via",
                &self.public_addr(i).to_string(),
            ]);
        }
    }

    /// Drops every UDP datagram site `i`'s router would forward (both
    /// ways): only TCP crosses it.
    pub fn block_udp(&self, i: usize) {
        nft(
            &self.router(i),
            "add rule ip gh filt meta l4proto udp drop\n",
        );
    }

    /// Forwards UDP again through site `i`'s router.
    pub fn unblock_udp(&self, i: usize) {
        nft(&self.router(i), "flush chain ip gh filt\n");
    }

    /// Gives site `i` a new public address (its NAT's mappings are lost, as
    /// when a phone moves between networks): the router's WAN address
    /// becomes `10.77.0.<n>` and its connection tracking is flushed.
    pub fn change_public_addr(&self, i: usize, n: u8) {
        let r = self.router(i);
        let rw = format!("ghrw{}-{i}", self.id);
        must(&["ip", "-n", &r, "addr", "flush", "dev", &rw]);
        must(&[
            "ip",
            "-n",
            &r,
            "addr",
            "add",
            &format!("10.77.0.{n}/24"),
            "dev",
            &rw,
        ]);
        // Mappings made from the old address are gone.
        let _ = sh(&["ip", "netns", "exec", &r, "conntrack", "-F"]);
    }
}

fn nft(ns: &str, rules: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    }
    let status = child.wait().unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    assert!(status.success(), "nft in {ns} refused:\n{rules}");
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 0..self.kinds.len() {
            let _ = sh(&["ip", "netns", "del", &self.host(i)]);
            let _ = sh(&["ip", "netns", "del", &self.router(i)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.wan()]);
    }
}
