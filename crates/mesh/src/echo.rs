//! ICMP and ICMPv6 echo messages: reading the ones that arrive from peers,
//! and writing requests and replies with valid checksums (kernels on the
//! other side check them).
//!
//! The data plane uses them for its own path-level ping: a node answers an
//! echo request addressed to it from a peer itself, in every mode, and
//! recognises the answers to the requests it sent (see
//! `docs/decisions/0021-node-on-the-mesh.md`). Parsing takes arbitrary
//! bytes and returns `None` for anything that is not a well-formed echo
//! message; nothing here panics on input.

use crate::packet::{self, proto};
use std::net::IpAddr;

/// Length of the ICMP echo header (type, code, checksum, identifier, sequence).
pub const HEADER_LEN: usize = 8;

/// One echo request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo<'a> {
    /// Sender.
    pub src: IpAddr,
    /// Receiver.
    pub dst: IpAddr,
    /// A request (else a reply).
    pub request: bool,
    /// Identifier.
    pub id: u16,
    /// Sequence number.
    pub seq: u16,
    /// The data after the header, echoed back by the receiver.
    pub data: &'a [u8],
}

/// Reads an echo request or reply (IPv4 ICMP or ICMPv6, code 0, not a
/// fragment). Checksums are not verified: WireGuard authenticated the
/// packet already.
pub fn parse(p: &[u8]) -> Option<Echo<'_>> {
    let info = packet::parse(p).ok()?;
    if info.later_fragment || !(info.is_echo_request() || info.is_echo_reply()) {
        return None;
    }
    let t = p.get(info.transport..info.len)?;
    if t.len() < HEADER_LEN || t[1] != 0 {
        return None;
    }
    // A first fragment of a larger message carries only part of the data:
    // it cannot be echoed faithfully.
    if is_first_fragment(p) {
        return None;
    }
    Some(Echo {
        src: info.src,
        dst: info.dst,
        request: info.is_echo_request(),
        id: u16::from_be_bytes([t[4], t[5]]),
        seq: u16::from_be_bytes([t[6], t[7]]),
        data: &t[HEADER_LEN..],
    })
}

fn is_first_fragment(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        // More-fragments flag.
        Some(4) => p.get(6).is_some_and(|b| b & 0x20 != 0),
        // Only ICMPv6 right after the fixed header: no extension headers,
        // so no fragment header either.
        Some(6) => p.get(6) != Some(&proto::ICMPV6),
        _ => false,
    }
}

impl Echo<'_> {
    /// The answer to this request: addresses swapped, same identifier,
    /// sequence and data.
    pub fn reply(&self) -> Vec<u8> {
        build(self.dst, self.src, false, self.id, self.seq, self.data)
    }
}

/// Writes an echo request or reply from `src` to `dst` (one family; a
/// mixed pair gives IPv6 with the IPv4 address mapped).
pub fn build(src: IpAddr, dst: IpAddr, request: bool, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let v4 = src.is_ipv4() && dst.is_ipv4();
    let (protocol, ty) = match (v4, request) {
        (true, true) => (proto::ICMP, 8),
        (true, false) => (proto::ICMP, 0),
        (false, true) => (proto::ICMPV6, 128),
        (false, false) => (proto::ICMPV6, 129),
    };
    let mut t = Vec::with_capacity(HEADER_LEN + data.len());
    t.extend_from_slice(&[ty, 0, 0, 0]);
    t.extend_from_slice(&id.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(data);
    let sum = if v4 {
        checksum(0, &t)
    } else {
        let (s, d) = (v6(src), v6(dst));
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&s);
        pseudo.extend_from_slice(&d);
        pseudo.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto::ICMPV6]);
        checksum(sum_words(0, &pseudo), &t)
    };
    t[2..4].copy_from_slice(&sum.to_be_bytes());
    packet::build::ip(src, dst, protocol, &t)
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn sum_words(mut sum: u32, b: &[u8]) -> u32 {
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum = sum.wrapping_add(u32::from(w));
    }
    sum
}

/// The Internet checksum of `b`, starting from a partial sum.
fn checksum(start: u32, b: &[u8]) -> u16 {
    let mut sum = sum_words(start, b);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the ICMP checksum of an echo message is right (for tests and
/// the fuzz target: what a kernel would check).
pub fn checksum_ok(p: &[u8]) -> bool {
    let Ok(info) = packet::parse(p) else {
        return false;
    };
    let Some(t) = p.get(info.transport..info.len) else {
        return false;
    };
    let start = if info.src.is_ipv4() {
        0
    } else {
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&v6(info.src));
        pseudo.extend_from_slice(&v6(info.dst));
        pseudo.extend_from_slice(&u32::try_from(t.len()).unwrap_or(u32::MAX).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, info.proto]);
        sum_words(0, &pseudo)
    };
    checksum(start, t) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn request_and_reply_round_trip_with_valid_checksums() {
        for (s, d) in [
            (a("100.64.0.1"), a("100.64.0.2")),
            (a("fd7a:115c:a1e0::1"), a("fd7a:115c:a1e0::2")),
        ] {
            let req = build(s, d, true, 0x1234, 7, b"gatehouse ping");
            assert!(checksum_ok(&req));
            let e = parse(&req).unwrap();
            assert_eq!(
                (e.src, e.dst, e.request, e.id, e.seq, e.data),
                (s, d, true, 0x1234, 7, &b"gatehouse ping"[..])
            );
            let rep = e.reply();
            assert!(checksum_ok(&rep));
            let r = parse(&rep).unwrap();
            assert_eq!(
                (r.src, r.dst, r.request, r.id, r.seq, r.data),
                (d, s, false, 0x1234, 7, &b"gatehouse ping"[..])
            );
        }
    }

    #[test]
    fn a_known_ipv4_checksum() {
        // Type 8, id 1, seq 1, no data: 0xffff - (0x0800 + 0x0001 + 0x0001).
        let p = build(a("10.0.0.1"), a("10.0.0.2"), true, 1, 1, b"");
        assert_eq!(&p[20..24], &[8, 0, 0xf7, 0xfd]);
    }

    #[test]
    fn refuses_what_is_not_an_echo() {
        let s = a("100.64.0.1");
        let d = a("100.64.0.2");
        assert!(parse(&packet::build::udp(s, d, 1, 2, b"x")).is_none());
        // Destination unreachable.
        assert!(
            parse(&packet::build::ip(
                s,
                d,
                proto::ICMP,
                &[3, 1, 0, 0, 0, 0, 0, 0]
            ))
            .is_none()
        );
        // Echo with a nonzero code.
        let mut p = build(s, d, true, 1, 1, b"");
        p[21] = 1;
        assert!(parse(&p).is_none());
        // Header cut short.
        let p = packet::build::ip(s, d, proto::ICMP, &[8, 0, 0, 0, 0, 1]);
        assert!(parse(&p).is_none());
        // First fragment of a longer message.
        let mut p = build(s, d, true, 1, 1, b"abcd");
        p[6] |= 0x20;
        assert!(parse(&p).is_none());
        assert!(parse(&[]).is_none());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(e) = parse(&bytes) {
                prop_assert!(checksum_ok(&e.reply()));
            }
        }

        #[test]
        fn replies_carry_what_was_asked(id in any::<u16>(), seq in any::<u16>(), data in proptest::collection::vec(any::<u8>(), 0..64), v4 in any::<bool>()) {
            let (s, d) = if v4 { (a("100.64.0.9"), a("100.64.0.3")) } else { (a("fd00::9"), a("fd00::3")) };
            let req = build(s, d, true, id, seq, &data);
            let rep = parse(&req).unwrap().reply();
            let r = parse(&rep).unwrap();
            prop_assert_eq!((r.src, r.dst, r.request, r.id, r.seq, r.data), (d, s, false, id, seq, &data[..]));
            prop_assert!(checksum_ok(&rep));
        }
    }
}
