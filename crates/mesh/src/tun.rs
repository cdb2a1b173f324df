//! TUN mode (root only): a TUN device holding the node's mesh addresses,
//! with routes for the mesh prefixes, so the kernel's TCP/IP stack and
//! ordinary sockets serve the mesh.
//!
//! The routes come from the address prefixes: IPv4 addresses get the
//! shared-address space control allocates from (100.64.0.0/10), IPv6
//! addresses their /48 (control's unique local prefix); the kernel adds the
//! connected routes for both.

use crate::stack::MTU;
use std::io;
use std::net::IpAddr;

/// Prefix length of the IPv4 mesh range (100.64.0.0/10).
pub const V4_PREFIX: u8 = 10;
/// Prefix length of the IPv6 mesh range (control's ULA /48).
pub const V6_PREFIX: u8 = 48;

/// Makes and configures the device.
pub fn open(name: &str, addresses: &[IpAddr]) -> io::Result<tun_rs::AsyncDevice> {
    let mut b = tun_rs::DeviceBuilder::new()
        .name(name)
        .mtu(u16::try_from(MTU).unwrap_or(1280));
    for a in addresses {
        match a {
            IpAddr::V4(v4) => b = b.ipv4(*v4, V4_PREFIX, None),
            IpAddr::V6(v6) => b = b.ipv6(*v6, V6_PREFIX),
        }
    }
    b.build_async()
}
