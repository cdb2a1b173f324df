//! A network namespace with loopback and one way out that goes nowhere and
//! is watched: a veth pair whose far end sits alone in a second namespace
//! (a sink), carrying the default routes (IPv4 and IPv6) and the name
//! server (`/etc/netns/NAME/resolv.conf`, which `ip
//! netns exec` mounts over `/etc/resolv.conf`). Every TCP or UDP packet
//! sent that way, a DNS query included, is recorded by nftables with its
//! destination, so a test can assert that a client reached for nothing
//! beyond loopback. Root only; removed on drop.

use crate::process::{must, sh};

/// The watched interface.
const OUT: &str = "wayout0";
/// The name server the namespace is given (through [`OUT`]).
const NAMESERVER: &str = "198.18.0.53";

/// A namespace whose only way out is recorded.
#[derive(Debug)]
pub struct OfflineNetns {
    name: String,
    sink: String,
}

impl OfflineNetns {
    /// Creates the namespace (root).
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ghoff{}-{n}", std::process::id());
        let ns = OfflineNetns {
            sink: format!("{name}s"),
            name,
        };
        let (name, sink) = (ns.name.as_str(), ns.sink.as_str());
        let _ = sh(&["ip", "netns", "del", name]);
        let _ = sh(&["ip", "netns", "del", sink]);
        let etc = ns.etc_dir();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {NAMESERVER}\n"),
        )
        .unwrap();
        must(&["ip", "netns", "add", name]);
        must(&["ip", "netns", "add", sink]);
        must(&["ip", "-n", name, "link", "set", "lo", "up"]);
        must(&[
            "ip", "-n", name, "link", "add", OUT, "type", "veth", "peer", "name", "sink0", "netns",
            sink,
        ]);
        must(&["ip", "-n", sink, "link", "set", "sink0", "up"]);
        must(&["ip", "-n", name, "addr", "add", "198.18.0.2/15", "dev", OUT]);
        must(&[
            "ip",
            "-n",
            name,
            "addr",
            "add",
            "2001:db8::2/64",
            "dev",
            OUT,
            "nodad",
        ]);
        must(&["ip", "-n", name, "link", "set", OUT, "up"]);
        must(&["ip", "-n", name, "route", "add", "default", "dev", OUT]);
        must(&[
            "ip", "-n", name, "-6", "route", "add", "default", "dev", OUT,
        ]);
        let rules = format!(
            "table inet watch {{
  set seen4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; }}
  set seen6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; }}
  chain out {{
    type filter hook output priority 0; policy accept;
    oifname \"{OUT}\" meta nfproto ipv4 meta l4proto {{ tcp, udp }} add @seen4 {{ ip daddr . meta l4proto . th dport }}
    oifname \"{OUT}\" meta nfproto ipv6 meta l4proto {{ tcp, udp }} add @seen6 {{ ip6 daddr . meta l4proto . th dport }}
  }}
}}
"
        );
        // Not under /etc/netns/NAME: `ip netns exec` mounts every file
        // there over /etc.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), rules).unwrap();
        must(&[
            "ip",
            "netns",
            "exec",
            name,
            "nft",
            "-f",
            &file.path().display().to_string(),
        ]);
        ns
    }

    fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// The namespace's name (for `ip netns exec`, `Options::netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every destination a TCP or UDP packet was sent to on the way out,
    /// as nftables prints them (`198.18.0.53 . udp . 53`); empty when
    /// nothing tried to leave.
    pub fn escaped(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for set in ["seen4", "seen6"] {
            let o = sh(&[
                "ip", "netns", "exec", &self.name, "nft", "list", "set", "inet", "watch", set,
            ]);
            assert!(
                o.status.success(),
                "nft list set {set}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let text = String::from_utf8_lossy(&o.stdout);
            // elements = { a . udp . 53, b . tcp . 443 }
            if let Some((_, rest)) = text.split_once("elements = {") {
                let body = rest.split('}').next().unwrap_or_default();
                seen.extend(
                    body.split(',')
                        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                        .filter(|e| !e.is_empty()),
                );
            }
        }
        seen
    }
}

impl Default for OfflineNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OfflineNetns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "netns", "del", &self.sink]);
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}
